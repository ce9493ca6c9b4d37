"""Replaying a jbd2 journal in memory, as the kernel's ``fs/jbd2/recovery.c`` does on
mount, but into an overlay {filesystem block -> journal block} instead of onto the disk.

Three passes, as the kernel's: a scan that follows the log from ``s_start`` and verifies
it, ending at the first transaction that is not whole and committed; the revoke records
of the committed transactions; then the overlay, in log order so that the latest copy of
a block wins, leaving out every copy a revoke in the same or a later transaction hides.

A hostile or damaged log never hangs or raises out of :func:`plan_replay`: the log is
read at most once around its ring, and a transaction that cannot be trusted ends the
replay before it, with a warning saying so.
"""

from __future__ import annotations

import bisect
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cipherdump.errors import CorruptError, InputError, UnsupportedError
from cipherdump.ext4.mapping import map_runs
from cipherdump.ondisk import features as F
from cipherdump.ondisk import jbd2 as J
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL

if TYPE_CHECKING:
    from cipherdump.ext4.volume import Volume

_MASK = 0xFFFFFFFF
# The ext4 fast-commit area's first tag: EXT4_FC_TAG_HEAD (le16 tag, le16 length, then
# le32 features and le32 tid).  It belongs to the log only if its tid is the next one.
_EXT4_FC_TAG_HEAD = 0x0009


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What replaying the journal changes: ``overlay`` maps a filesystem block to the
    journal's logical block holding its newest copy, and whether that copy is escaped."""

    overlay: dict[int, tuple[int, bool]] = field(repr=False)
    first_transaction: int
    end_transaction: int  # the first transaction not replayed
    transactions: int
    replayed: int  # block copies written by the replay (a block may count twice)
    revokes: int
    revoke_hits: int
    discarded_blocks: int  # data blocks of the uncommitted last transaction
    warnings: tuple[str, ...]


@dataclass(slots=True)
class _Transaction:
    sequence: int
    entries: list[tuple[J.BlockTag, int]] = field(default_factory=list)
    revokes: list[int] = field(default_factory=list)


class _Ring:
    """Positions in the log ring ``[s_first, log_end)``."""

    def __init__(self, jsb: J.JournalSuperblock) -> None:
        self.first = jsb.s_first
        self.last = jsb.log_end
        self.size = self.last - self.first

    def advance(self, pos: int, n: int = 1) -> int:
        return self.first + (pos + n - self.first) % self.size


def plan_replay(
    jsb: J.JournalSuperblock, read_block: Callable[[int], bytes], fs_blocks: int
) -> ReplayPlan:
    """Plan the replay of the log of ``jsb``; ``read_block(lblk)`` reads logical block
    ``lblk`` of the journal (raising InputError if it cannot), ``fs_blocks`` bounds the
    filesystem block numbers a tag may name."""
    warnings: list[str] = []
    committed, discarded = _scan(jsb, read_block, fs_blocks, warnings)
    revoked = _collect_revokes(committed)
    return _build_overlay(jsb, committed, revoked, discarded, read_block, warnings)


def _scan(
    jsb: J.JournalSuperblock,
    read_block: Callable[[int], bytes],
    fs_blocks: int,
    warnings: list[str],
) -> tuple[list[_Transaction], int]:
    """Pass 1: the committed transactions from ``s_start`` on, and how many data blocks
    the uncommitted one after them had."""
    ring = _Ring(jsb)
    incompat = jsb.s_feature_incompat
    seed = jsb.csum_seed
    v2or3 = jsb.csum_v2or3
    pos = jsb.s_start
    walked = 0
    committed: list[_Transaction] = []
    current = _Transaction(jsb.s_sequence)
    need_check_commit_time = False
    last_commit_time = 0
    crc32_sum = _MASK

    def stop(why: str) -> None:
        warnings.append(
            f"journal transaction {current.sequence}: {why}; replayed up to the one before it"
        )

    while True:
        if walked >= ring.size:
            stop("the log runs all the way round the journal")
            break
        try:
            block = read_block(pos)
        except InputError as exc:
            stop(f"log block {pos} cannot be read ({exc})")
            break
        here = pos
        pos = ring.advance(pos)
        walked += 1
        header = J.decode_header(block)
        if header is None or header.h_sequence != current.sequence:
            break  # the end of the log
        kind = header.h_blocktype
        if kind == J.JBD2_DESCRIPTOR_BLOCK:
            if v2or3 and not J.block_tail_csum_verify(block, seed):
                # Perhaps a stale block from before the log last wrapped (the kernel
                # decides at the commit block, by its time).
                need_check_commit_time = True
            tags = J.decode_descriptor_tags(block, incompat)
            if walked + len(tags) > ring.size:
                stop(f"descriptor block {here} has {len(tags)} tags, more than the log holds")
                break
            bad = next((t.t_blocknr for t in tags if t.t_blocknr >= fs_blocks), None)
            if bad is not None:
                stop(f"it names block {bad}, outside the filesystem ({fs_blocks} blocks)")
                break
            data_at: list[int] = []
            for tag in tags:
                data_at.append(pos)
                current.entries.append((tag, pos))
                pos = ring.advance(pos)
                walked += 1
            if jsb.checksum_v1 and not need_check_commit_time:
                try:
                    crc32_sum = J.crc32_be(crc32_sum, block)
                    for at in data_at:
                        crc32_sum = J.crc32_be(crc32_sum, read_block(at))
                except InputError as exc:
                    stop(f"a data block cannot be read ({exc})")
                    break
            continue
        if kind == J.JBD2_COMMIT_BLOCK:
            commit = J.decode_commit(block)
            commit_time = commit.h_commit_sec
            if need_check_commit_time:
                if commit_time >= last_commit_time:
                    stop("a descriptor or revoke block fails its checksum")
                # Else older than the transaction before: stale blocks, the log's end.
                break
            ok = True
            if jsb.checksum_v1:
                found = commit.h_chksum[0]
                ok = (
                    crc32_sum == found
                    and commit.h_chksum_type == J.JBD2_CRC32_CHKSUM
                    and commit.h_chksum_size == J.JBD2_CRC32_CHKSUM_SIZE
                ) or (commit.h_chksum_type == 0 and commit.h_chksum_size == 0 and found == 0)
                crc32_sum = _MASK
            if ok and v2or3:
                ok = J.commit_block_csum_verify(block, seed)
            if not ok:
                if commit_time >= last_commit_time:
                    stop("its commit block fails its checksum")
                break
            last_commit_time = commit_time
            committed.append(current)
            current = _Transaction((current.sequence + 1) & _MASK)
            continue
        if kind == J.JBD2_REVOKE_BLOCK:
            if v2or3 and not J.block_tail_csum_verify(block, seed):
                need_check_commit_time = True
            try:
                current.revokes.extend(J.decode_revoke(block, incompat))
            except CorruptError as exc:
                stop(f"revoke block {here}: {exc}")
                break
            continue
        break  # an unknown block type ends the log, as in the kernel
    return committed, len(current.entries)


def _collect_revokes(committed: list[_Transaction]) -> dict[int, int]:
    """Pass 2: for each revoked block, the index of the last committed transaction that
    revokes it.  A copy of that block in a transaction up to that one is not replayed."""
    revoked: dict[int, int] = {}
    for index, txn in enumerate(committed):
        for blk in txn.revokes:
            revoked[blk] = index
    return revoked


def _build_overlay(
    jsb: J.JournalSuperblock,
    committed: list[_Transaction],
    revoked: dict[int, int],
    discarded: int,
    read_block: Callable[[int], bytes],
    warnings: list[str],
) -> ReplayPlan:
    """Pass 3: the overlay, later transactions over earlier ones."""
    overlay: dict[int, tuple[int, bool]] = {}
    replayed = hits = 0
    incompat = jsb.s_feature_incompat
    seed = jsb.csum_seed
    verify = jsb.csum_v2or3
    bad_copies: list[str] = []
    for index, txn in enumerate(committed):
        for tag, lblk in txn.entries:
            blk = tag.t_blocknr
            if revoked.get(blk, -1) >= index:
                hits += 1
                continue
            if verify:
                try:
                    data = read_block(lblk)
                except InputError:
                    bad_copies.append(f"block {blk} (unreadable)")
                    continue
                if not J.block_tag_csum_verify(tag, data, txn.sequence, seed, incompat):
                    # As the kernel: this copy is not replayed, the others are.
                    bad_copies.append(f"block {blk} in transaction {txn.sequence}")
                    continue
            overlay[blk] = (lblk, bool(tag.t_flags & J.JBD2_FLAG_ESCAPE))
            replayed += 1
    if bad_copies:
        more = f" and {len(bad_copies) - 5} more" if len(bad_copies) > 5 else ""
        warnings.append(
            "the journal's copy of "
            + ", ".join(bad_copies[:5])
            + more
            + " fails its checksum and is not replayed; the filesystem may be inconsistent there"
        )
    revokes = sum(len(t.revokes) for t in committed)
    return ReplayPlan(
        overlay=overlay,
        first_transaction=jsb.s_sequence,
        end_transaction=(jsb.s_sequence + len(committed)) & _MASK,
        transactions=len(committed),
        replayed=replayed,
        revokes=revokes,
        revoke_hits=hits,
        discarded_blocks=discarded,
        warnings=tuple(warnings),
    )


def fast_commit_pending(jsb: J.JournalSuperblock, block: bytes, end_transaction: int) -> bool:
    """Does the fast-commit area, whose first block is ``block``, hold fast commits the
    kernel would replay after the log (its head tag names the next transaction)?"""
    if len(block) < 12:
        return False
    tag = int.from_bytes(block[0:2], "little")
    tid = int.from_bytes(block[8:12], "little")
    return tag == _EXT4_FC_TAG_HEAD and tid == end_transaction


# -- the journal of a filesystem ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """What ``info`` tells of a filesystem's journal, and what was replayed of it."""

    inum: int  # 0 for an external journal device
    size: int  # bytes; 0 if not known
    version: int  # 1 or 2; 0 if not known
    features: tuple[str, ...]
    clean: bool  # s_start == 0: nothing in the log
    replay: ReplayPlan | None  # set when the log was replayed in memory
    warnings: tuple[str, ...]
    errno: int = 0  # s_errno: an error the last mount recorded (the journal aborted)


def load_journal(fs: Volume) -> tuple[JournalInfo | None, dict[int, tuple[int, bool]]]:
    """The journal of ``fs`` (opened on its unreplayed source), and the overlay
    {filesystem block -> (physical block of the journal's copy, escaped)} the kernel's
    recovery on mount would write, when the filesystem needs recovery.

    UnsupportedError when the journal needs a replay we cannot do (an external journal
    device, pending fast commits); a journal that is damaged itself gives a warning and
    no overlay, as there is nothing trustworthy to replay."""
    sb = fs.sb
    if not sb.has_compat(F.COMPAT_HAS_JOURNAL):
        return None, {}
    recover = sb.has_incompat(F.INCOMPAT_RECOVER)
    if sb.s_journal_inum == 0:
        if recover:
            raise UnsupportedError(
                f"the journal needs recovery and is on an external device "
                f"(0x{sb.s_journal_dev:04x}), not in this image; run e2fsck with that device"
            )
        return JournalInfo(0, 0, 0, (), True, None, ()), {}
    try:
        journal = _JournalFile(fs, sb.s_journal_inum)
        jsb = journal.superblock
    except InputError as exc:
        if not recover:
            return JournalInfo(sb.s_journal_inum, 0, 0, (), True, None, ()), {}
        why = f"the journal needs recovery but cannot be replayed: {exc}"
        return JournalInfo(sb.s_journal_inum, 0, 0, (), False, None, (why,)), {}
    size = jsb.s_maxlen * jsb.s_blocksize
    version = 2 if jsb.h_blocktype == J.JBD2_SUPERBLOCK_V2 else 1
    features = tuple(jsb.feature_names)
    clean = jsb.s_start == 0
    if clean or not recover:
        notes: tuple[str, ...] = ()
        if not clean:
            # What e2fsck says; the kernel then throws the log away instead of replaying.
            notes = (
                "the superblock's needs_recovery flag is clear, but the journal has data;"
                " it is not replayed (as the kernel would not)",
            )
        notes += _errno_note(jsb)
        info = JournalInfo(
            sb.s_journal_inum, size, version, features, clean, None, notes, jsb.s_errno
        )
        return info, {}
    plan = plan_replay(jsb, journal.read, sb.s_blocks_count)
    if jsb.fast_commit:
        try:
            # The kernel's j_fc_first is j_last + 1: block log_end itself is unused.
            first_fc = journal.read(jsb.log_end + 1)
        except InputError:
            first_fc = b""
        if fast_commit_pending(jsb, first_fc, plan.end_transaction):
            raise UnsupportedError(
                "the journal holds fast commits, which cipherdump cannot replay;"
                " run e2fsck on a copy first"
            )
    try:
        overlay = {blk: (journal.pblk(lblk), esc) for blk, (lblk, esc) in plan.overlay.items()}
    except InputError as exc:  # pragma: no cover - every block was read in the scan
        why = f"the journal needs recovery but cannot be replayed: {exc}"
        return JournalInfo(sb.s_journal_inum, size, version, features, False, None, (why,)), {}
    notes = plan.warnings + _errno_note(jsb)
    info = JournalInfo(sb.s_journal_inum, size, version, features, False, plan, notes, jsb.s_errno)
    return info, overlay


def _errno_note(jsb: J.JournalSuperblock) -> tuple[str, ...]:
    if not jsb.s_errno:
        return ()
    # The kernel's mount then marks the filesystem in error (and skips orphans).
    return (
        f"the journal records an error of the last mount (errno {jsb.s_errno});"
        " the filesystem should be checked",
    )


class _JournalFile:
    """The journal inode's blocks: logical block -> physical block through its map."""

    def __init__(self, fs: Volume, inum: int) -> None:
        self.fs = fs
        where = f"journal inode {inum}"
        inode = fs.raw_inode(inum)
        is_file = stat.S_ISREG(inode.i_mode)
        if not is_file or inode.i_flags & EXT4_ENCRYPT_FL or inode.i_links_count == 0:
            raise CorruptError("is not a regular file in use", structure=where)
        runs = fs.orphan_runs(inum, map_runs(fs, inum, inode), inode.i_size)
        self.runs = [r for r in runs if r.pblk is not None and not r.unwritten]
        self._starts = [r.lblk for r in self.runs]
        raw = self.read(0)
        jsb = J.decode_journal_superblock(raw)
        if jsb.s_blocksize != fs.block_size:
            raise CorruptError(
                f"journal block size {jsb.s_blocksize} is not the filesystem's {fs.block_size}",
                structure="journal superblock",
            )
        blocks = inode.i_size // fs.block_size
        if jsb.s_maxlen > blocks:
            raise CorruptError(
                f"journal of {jsb.s_maxlen} blocks in a file of {blocks}",
                structure="journal superblock",
            )
        self.superblock = jsb

    def pblk(self, lblk: int) -> int:
        i = bisect.bisect_right(self._starts, lblk) - 1
        if i >= 0:
            run = self.runs[i]
            if lblk < run.lblk + run.length and run.pblk is not None:
                pblk = run.pblk + lblk - run.lblk
                if self.fs.block_in_range(pblk):
                    return pblk
        raise CorruptError(
            f"logical block {lblk} is not mapped inside the filesystem", structure="journal"
        )

    def read(self, lblk: int) -> bytes:
        return self.fs.read_block(self.pblk(lblk))


def journal_tail_kept(fs: Volume, info: JournalInfo | None) -> bool:
    """Whether every transaction replayed from ``info`` is still in the log, read again
    from the source now: the journal superblock's tail (``s_sequence``, written before
    jbd2 reuses any block behind it) is still at or before the first transaction
    replayed.  A live backup pins the copies (see OverlaySource) and then asks this:
    if it is True, no copy was overwritten before it was read."""
    plan = info.replay if info is not None else None
    if info is None or plan is None:
        return True
    try:
        jsb = _JournalFile(fs, info.inum).superblock
    except InputError:
        return False
    if jsb.s_start == 0:
        return False  # emptied: the log wrapped past everything replayed
    behind = (plan.first_transaction - jsb.s_sequence) & _MASK
    return behind < 0x80000000
