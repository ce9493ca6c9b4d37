"""The filesystem object: superblock, group descriptors and inode lookup."""

from __future__ import annotations

from collections import OrderedDict

from cipherdump.blockio import ByteSource, Closable, open_source
from cipherdump.blockio.overlay import OverlaySource
from cipherdump.errors import (
    ChecksumError,
    CorruptError,
    InputError,
    NotExt4Error,
    UnsupportedError,
)
from cipherdump.ext4.inode import Inode
from cipherdump.ext4.journal import JournalInfo, load_journal
from cipherdump.ext4.orphans import NO_ORPHANS, Orphans, clip_runs, find_orphans
from cipherdump.ext4.volume import Run
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import fs_csum_seed
from cipherdump.ondisk.groupdesc import (
    EXT4_BG_INODE_UNINIT,
    GroupDesc,
    decode_group_desc,
    group_desc_csum,
)
from cipherdump.ondisk.inode import (
    InodePeek,
    RawInode,
    decode_inode,
    inode_record_csum,
    peek_inode,
)
from cipherdump.ondisk.superblock import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    Superblock,
    decode_superblock,
    superblock_csum_verify,
)

ROOT_INO = 2
EXT4_OS_HURD = 1  # s_creator_os
_INODE_CACHE_SIZE = 4096
_MAX_WARNINGS = 100
_MORE_WARNINGS = "more warnings like these were not kept"
# Inode-table reads: 64 KiB each (a multiple of every block size), at most 8 MiB kept.
_ITABLE_SPAN = 64 << 10
_ITABLE_CACHE_SPANS = 128


class Filesystem(Closable):
    """A read-only ext4 filesystem.  Use :func:`open_filesystem` to make one.

    ``warnings`` collects conditions that do not stop reading but that a user must
    hear about (dirty journal, descriptor checksum mismatches).
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        owns_source: bool = False,
        replay: bool = True,
        pin_journal: bool = False,
    ) -> None:
        self.source: ByteSource = source
        self._owns_source = owns_source
        # A mounted filesystem's journal keeps being written: its copies are read at
        # once (see OverlaySource), and journal_tail_kept tells whether in time.
        self._pin_journal = pin_journal
        self.journal: JournalInfo | None = None
        self.orphans: Orphans = NO_ORPHANS
        self._load()
        # Whether the source itself (not the replayed view) needs recovery: an image
        # writer must refuse such a target, whatever is replayed in memory.
        self._source_recover = self.sb.has_incompat(F.INCOMPAT_RECOVER)
        if replay:
            self._replay_journal()
        # As the kernel's mount does after replaying the journal.
        errno = self.journal.errno if self.journal is not None else 0
        self.orphans = find_orphans(self, journal_errno=errno)
        for message in self.orphans.warnings:
            self.warn(message)

    def _replay_journal(self) -> None:
        """Read everything through the journal's overlay from here on, when the journal
        needs recovery: the superblock and group descriptors are read again, through it.
        See :mod:`cipherdump.ext4.journal`; nothing is ever written."""
        info, overlay = load_journal(self)
        self.journal = info
        if overlay:
            self.source = OverlaySource(
                self.source, self.block_size, overlay, pin=self._pin_journal
            )
            self._load()
        if info is not None:
            for message in info.warnings:
                self.warn(message)

    def _load(self) -> None:
        """Read the superblock and group descriptors from ``self.source``."""
        source = self.source
        self.warnings: list[str] = []
        raw = source.read_at(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)
        if len(raw) < SUPERBLOCK_SIZE:
            raise NotExt4Error(f"{source.name}: too small to be an ext4 filesystem")
        self.sb: Superblock = decode_superblock(raw)
        sb = self.sb
        self.block_size = sb.block_size
        superblock_csum_verify(sb)
        self._check_features()
        if sb.s_blocks_count * self.block_size > source.size:
            # Truncated images are readable up to where they end; reads past it fail
            # per object, so say so once here.
            self.warnings.append(
                f"image is truncated: {source.size} bytes, filesystem claims "
                f"{sb.s_blocks_count * self.block_size}"
            )
        self.csum_seed = (
            sb.s_checksum_seed if sb.has_incompat(F.INCOMPAT_CSUM_SEED) else fs_csum_seed(sb.s_uuid)
        )
        self.groups: list[GroupDesc] = self._read_group_descs()
        self._inode_cache: OrderedDict[int, Inode] = OrderedDict()
        # Inode-table blocks read lately, by byte offset: the inodes of one directory
        # mostly share blocks, so a walk reads each block once, not once per inode.
        self._itable_blocks_cache: OrderedDict[int, bytes] = OrderedDict()
        # Superblock facts asked for once per inode load, derived once here.
        self._inode_size = sb.inode_size
        self._metadata_csum = sb.metadata_csum
        self._uninit_bg = sb.metadata_csum or sb.has_ro_compat(F.RO_COMPAT_GDT_CSUM)
        self._hurd = sb.s_creator_os == EXT4_OS_HURD

    # -- lifecycle -------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Note a condition met while reading that stops nothing (see ``warnings``), once;
        past :data:`_MAX_WARNINGS` only that there were more."""
        if message in self.warnings:
            return
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)
        elif self.warnings[-1] != _MORE_WARNINGS:
            self.warnings.append(_MORE_WARNINGS)

    def close(self) -> None:
        if self._owns_source:
            self.source.close()

    # -- facts -----------------------------------------------------------------------
    @property
    def uuid(self) -> bytes:
        return self.sb.s_uuid

    @property
    def needs_recovery(self) -> bool:
        """Does the source, as it is on disk, need its journal replayed?  (What is read
        is the replayed state: see ``journal``.)"""
        return self._source_recover

    @property
    def journal_replayed(self) -> bool:
        """Is what is read the state after an in-memory replay of the journal?"""
        return self.journal is not None and self.journal.replay is not None

    @property
    def has_filetype(self) -> bool:
        return self.sb.has_incompat(F.INCOMPAT_FILETYPE)

    @property
    def dir_index(self) -> bool:
        return self.sb.has_compat(F.COMPAT_DIR_INDEX)

    def _check_features(self) -> None:
        sb = self.sb
        if sb.has_incompat(F.INCOMPAT_JOURNAL_DEV):
            raise UnsupportedError("this is an external journal device, not a filesystem")
        unknown = sb.s_feature_incompat & ~F.READABLE_INCOMPAT
        if unknown:
            names = F.feature_names(0, unknown, 0)
            raise UnsupportedError(
                "filesystem uses incompatible features cipherdump cannot read: " + ", ".join(names)
            )

    # -- geometry --------------------------------------------------------------------
    def read_block(self, pblk: int, count: int = 1) -> bytes:
        """``count`` whole blocks from physical block ``pblk``; CorruptError if outside."""
        if pblk < 0 or count < 0 or pblk + count > self.sb.s_blocks_count:
            raise CorruptError(
                f"block {pblk}+{count} is outside the filesystem ({self.sb.s_blocks_count} blocks)"
            )
        want = count * self.block_size
        data = self.source.read_at(pblk * self.block_size, want)
        if len(data) != want:
            raise CorruptError(f"block {pblk} lies beyond the end of the image (truncated)")
        return data

    def orphan_runs(self, ino: int, runs: list[Run], size: int) -> list[Run]:
        """``runs`` of inode ``ino`` as the kernel's mount leaves them: an orphan being
        truncated keeps nothing past ``size``."""
        if ino in self.orphans.truncated:
            return clip_runs(runs, size, self.block_size)
        return runs

    def block_in_range(self, pblk: int, count: int = 1) -> bool:
        return self.sb.s_first_data_block <= pblk and pblk + count <= self.sb.s_blocks_count

    def _group_desc_block(self, index: int) -> int:
        """Physical block holding descriptor block ``index`` (meta_bg aware)."""
        sb = self.sb
        # The superblock always sits at byte 1024.  With 1 KiB blocks that is block 1,
        # even when bigalloc makes s_first_data_block 0; descriptors follow it.
        sb_block = 1 if self.block_size == 1024 else 0
        per_block = self.block_size // sb.desc_size
        if not sb.has_incompat(F.INCOMPAT_META_BG) or index < sb.s_first_meta_bg:
            return max(sb.s_first_data_block, sb_block) + 1 + index
        # With meta_bg, descriptor block i sits at the start of the first group of its
        # meta group (after a backup superblock if that group has one).
        group = index * per_block
        blk = sb.s_first_data_block + group * sb.s_blocks_per_group
        if group == 0:
            blk = max(blk, sb_block)
        if self._group_has_super(group):
            blk += 1
        return blk

    def group_desc_block(self, index: int) -> int:
        """Physical block of group descriptor block ``index`` (for the offline writer)."""
        return self._group_desc_block(index)

    def group_has_super(self, group: int) -> bool:
        """Does ``group`` hold a superblock copy (sparse_super rules)?"""
        return self._group_has_super(group)

    def _group_has_super(self, group: int) -> bool:
        if group == 0:
            return True
        if not self.sb.has_ro_compat(0x0001):  # sparse_super off: every group
            return True
        if group == 1:
            return True
        for base in (3, 5, 7):
            n = group
            while n % base == 0:
                n //= base
            if n == 1:
                return True
        return False

    def _read_group_descs(self) -> list[GroupDesc]:
        sb = self.sb
        count = sb.group_count
        ds = sb.desc_size
        per_block = self.block_size // ds
        nblocks = (count + per_block - 1) // per_block
        out: list[GroupDesc] = []
        bad_csums: list[int] = []
        check = sb.metadata_csum or sb.has_ro_compat(F.RO_COMPAT_GDT_CSUM)
        for i in range(nblocks):
            blk = self._group_desc_block(i)
            try:
                data = self.read_block(blk)
            except CorruptError:
                raise CorruptError(
                    "group descriptor block is outside the image",
                    structure="group descriptors",
                    location=f"block {blk}",
                ) from None
            for j in range(per_block):
                g = i * per_block + j
                if g >= count:
                    break
                raw = data[j * ds : (j + 1) * ds]
                gd = decode_group_desc(raw, ds)
                if check:
                    want = group_desc_csum(
                        raw,
                        g,
                        metadata_csum=sb.metadata_csum,
                        csum_seed=self.csum_seed,
                        uuid=sb.s_uuid,
                    )
                    if want != gd.bg_checksum:
                        bad_csums.append(g)
                if not self.block_in_range(gd.bg_inode_table, self._itable_blocks):
                    raise CorruptError(
                        f"inode table at block {gd.bg_inode_table} is outside the filesystem",
                        structure="group descriptor",
                        location=f"group {g}",
                    )
                out.append(gd)
        if bad_csums:
            shown = ", ".join(str(g) for g in bad_csums[:5])
            more = f" and {len(bad_csums) - 5} more" if len(bad_csums) > 5 else ""
            self.warnings.append(f"group descriptor checksum mismatch in group {shown}{more}")
        return out

    @property
    def _itable_blocks(self) -> int:
        sb = self.sb
        return (sb.s_inodes_per_group * sb.inode_size + self.block_size - 1) // self.block_size

    # -- inodes ----------------------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        """The inode numbered ``ino``; raises CorruptError for an invalid number or record."""
        cache = self._inode_cache
        cached = cache.get(ino)
        if cached is not None:
            cache.move_to_end(ino)
            return cached
        node = self._load_inode(ino)
        cache[ino] = node
        if len(cache) > _INODE_CACHE_SIZE:
            cache.popitem(last=False)
        return node

    def raw_inode(self, ino: int) -> RawInode:
        """The decoded, checked record of inode ``ino`` (through the inode cache)."""
        return self.inode(ino).raw

    def fresh_inodes(self, inos: list[int]) -> dict[int, Inode | CorruptError]:
        """:meth:`fresh_inode` of several inodes, reading each aligned span of the
        inode tables that holds any of them once (a directory's files mostly share
        a few): the inode, or the error met reading it."""
        sb = self.sb
        isz = self._inode_size
        spans: dict[int, bytes] = {}
        out: dict[int, Inode | CorruptError] = {}
        for ino in inos:
            if ino < 1 or ino > sb.s_inodes_count:
                out[ino] = CorruptError(f"inode number {ino} is out of range", structure="inode")
                continue
            group, index = divmod(ino - 1, sb.s_inodes_per_group)
            offset = self.groups[group].bg_inode_table * self.block_size + index * isz
            start = offset - offset % _ITABLE_SPAN
            span = spans.get(start)
            if span is None:
                span = spans[start] = self.source.read_at(start, _ITABLE_SPAN)
            raw = span[offset - start : offset - start + isz]
            try:
                if len(raw) != isz:
                    raise CorruptError("inode lies beyond the end of the image", structure="inode")
                out[ino] = Inode(self, ino, decode_inode(raw, isz, hurd=self._hurd))
            except CorruptError as err:
                out[ino] = err
        return out

    def fresh_inode(self, ino: int) -> Inode:
        """Inode ``ino`` read again from the source, past every cache (a live backup's
        second look at an inode after reading its data)."""
        sb = self.sb
        isz = self._inode_size
        if ino < 1 or ino > sb.s_inodes_count:
            raise CorruptError(
                f"inode number {ino} is outside 1..{sb.s_inodes_count}", structure="inode"
            )
        group, index = divmod(ino - 1, sb.s_inodes_per_group)
        offset = self.groups[group].bg_inode_table * self.block_size + index * isz
        raw = self.source.read_at(offset, isz)
        if len(raw) != isz:
            raise CorruptError("inode lies beyond the end of the image", structure="inode")
        rec = decode_inode(raw, isz, hurd=self._hurd)
        return Inode(self, ino, rec)

    def inode_record(self, ino: int) -> tuple[bytes, InodePeek]:
        """Inode ``ino``'s on-disk record and the few fields :func:`peek_inode` reads
        of it, neither decoded nor checked: for a walk that compares records with
        ones seen before and decodes (:meth:`inode`) only those that differ.  Raises
        CorruptError for an invalid number or a record beyond the image."""
        raw = self._record(ino)
        return raw, peek_inode(raw, hurd=self._hurd)

    def _record(self, ino: int) -> bytes:
        sb = self.sb
        if ino < 1 or ino > sb.s_inodes_count:
            raise CorruptError(
                f"inode number {ino} is outside 1..{sb.s_inodes_count}", structure="inode"
            )
        group, index = divmod(ino - 1, sb.s_inodes_per_group)
        gd = self.groups[group]
        isz = self._inode_size
        if gd.bg_flags & EXT4_BG_INODE_UNINIT and self._uninit_bg:
            return bytes(isz)  # never initialised: reads as a free inode
        raw = self._read_inode_record(gd.bg_inode_table * self.block_size + index * isz)
        if len(raw) != isz:
            raise CorruptError(
                "inode lies beyond the end of the image",
                structure="inode",
                location=f"inode {ino}",
            )
        return raw

    def _load_inode(self, ino: int) -> Inode:
        isz = self._inode_size
        raw = self._record(ino)
        rec = decode_inode(raw, isz, hurd=self._hurd)
        if self._metadata_csum and any(raw):
            want = inode_record_csum(
                raw, self.csum_seed, ino, rec.i_generation, isz, rec.i_extra_isize
            )
            if want != rec.i_checksum:
                raise ChecksumError(
                    f"checksum 0x{rec.i_checksum:x} != computed 0x{want:x}",
                    structure="inode",
                    location=f"inode {ino}",
                )
        return Inode(self, ino, rec)

    def _read_inode_record(self, offset: int) -> bytes:
        """The inode record at ``offset`` (shorter at the end of a truncated image).

        Inode tables are read and kept in aligned spans of :data:`_ITABLE_SPAN` bytes: a
        walk reads the inodes of one directory, which lie scattered over a stretch of
        the table, and one read per span instead of per block saves most of the reads
        (measured: 16,000 reads of 4 KiB for 30,000 inodes)."""
        isz = self._inode_size
        if self.block_size % isz:  # records would straddle blocks: no valid ext4 has that
            return self.source.read_at(offset, isz)
        start = offset - offset % _ITABLE_SPAN
        cache = self._itable_blocks_cache
        span = cache.get(start)
        if span is None:
            span = self.source.read_at(start, _ITABLE_SPAN)
            cache[start] = span
            if len(cache) > _ITABLE_CACHE_SPANS:
                cache.popitem(last=False)
        at = offset - start
        return span[at : at + isz]

    def inode_table_ranges(self, limit: int = 256 << 20) -> list[tuple[int, int]]:
        """Byte ranges ``(offset, length)`` of the inode tables' initialised parts, at
        most ``limit`` bytes in all: what a walk of every inode will read, for
        read-ahead hints."""
        sb = self.sb
        per_group, isz = sb.s_inodes_per_group, self._inode_size
        out: list[tuple[int, int]] = []
        for gd in self.groups:
            used = per_group
            if self._uninit_bg:
                if gd.bg_flags & EXT4_BG_INODE_UNINIT:
                    continue
                used -= min(gd.bg_itable_unused, per_group)
            length = min(used * isz, limit)
            if length > 0:
                out.append((gd.bg_inode_table * self.block_size, length))
                limit -= length
        return out

    @property
    def root(self) -> Inode:
        return self.inode(ROOT_INO)

    def iter_used_inodes(self) -> list[int]:
        """Numbers of inodes marked in use in the inode bitmaps (for whole-fs scans)."""
        sb = self.sb
        out: list[int] = []
        for g, gd in enumerate(self.groups):
            if gd.bg_flags & EXT4_BG_INODE_UNINIT and (
                sb.metadata_csum or sb.has_ro_compat(F.RO_COMPAT_GDT_CSUM)
            ):
                continue
            if not self.block_in_range(gd.bg_inode_bitmap):
                continue
            bitmap = self.read_block(gd.bg_inode_bitmap)
            base = g * sb.s_inodes_per_group
            deleted = self.orphans.deleted
            for i in range(sb.s_inodes_per_group):
                if bitmap[i >> 3] >> (i & 7) & 1:
                    ino = base + i + 1
                    if ino <= sb.s_inodes_count and ino not in deleted:
                        out.append(ino)
        return out


def open_filesystem(path: str) -> Filesystem:
    """Open an image file or block device read-only."""
    source = open_source(path)
    try:
        return Filesystem(source, owns_source=True)
    except InputError as err:
        source.close()
        # What is wrong at open time is wrong with this image: say which one, as the
        # user named it ("no ext2/3/4 superblock" alone names nothing).
        if not str(err).startswith(path):
            err.args = (f"{path}: {err}",)
        raise
    except BaseException:
        source.close()
        raise
