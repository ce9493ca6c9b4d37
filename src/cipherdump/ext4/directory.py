"""Directory reading: linear and htree blocks, inline directories, raw name bytes.

Htree directories are read block by block like the kernel's linear readdir: index
blocks hide behind a fake entry with inode 0 spanning the block, so a linear scan sees
every leaf entry exactly once and survives damaged index nodes.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CipherdumpError, CorruptError
from cipherdump.ext4.xattr import read_inline_data
from cipherdump.ondisk.csum import crc32c_le, inode_csum_seed
from cipherdump.ondisk.dirent import (
    DIRENT_TAIL_SIZE,
    DX_NODE_COUNT_OFFSET,
    DX_ROOT_COUNT_OFFSET,
    DirentTuple,
    decode_dx_root,
    dx_csum_check,
    dx_node_limit,
    dx_root_limit,
    has_csum_tail,
    rec_len_from_disk,
    scan_dirents,
)
from cipherdump.ondisk.inode import (
    EXT4_CASEFOLD_FL,
    EXT4_ENCRYPT_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    RawInode,
)
from cipherdump.ondisk.records import record_maker

if TYPE_CHECKING:
    from cipherdump.ext4.volume import Run, Volume

# Directories of more bytes than this (about 25,000 entries) are not kept in memory
# once read (see Directory.iter_entries).
STREAM_FROM = 1 << 20
# Bound on directory size in blocks; a real directory of millions of entries stays far
# below it, a hostile i_size does not drive the loop.
_MAX_DIR_BLOCKS = 1 << 24


@dataclass(frozen=True, slots=True)
class Entry:
    """A directory entry: raw name bytes, inode number, dirent file type.

    ``hash`` is the (hash, minor_hash) stored in casefold+encrypt directories.
    ``offset`` is where the entry starts in the directory's bytes (block entries: from
    the start of block 0; inline ones: in ``i_block`` and then the ``system.data``
    xattr), so that entries sort into disk order by it; -1 if not known.  An entry
    keeps its offset when others are added or removed beside it (unless an htree leaf
    is split), which is what makes it a stable position (see the ``order`` node attr).
    It takes no part in comparisons: an entry is what it says, wherever it sits.
    """

    name: bytes
    ino: int
    file_type: int
    hash: tuple[int, int] | None = None
    offset: int = field(default=-1, compare=False)


_make_entry = record_maker(Entry)


# What Directory keeps of its htree root before block 0 was read.
_UNREAD = object()


class Directory:
    """One directory: its entries, read once, and its htree root's hash version.

    Made from the volume, the inode number, the record and the block map (a function,
    so that the map is computed only when a block is read and shared with the inode
    view).  The hash version is kept by whichever reads block 0 first, listing the
    entries or asking :meth:`hash_version`; either order gives the same answers.
    """

    __slots__ = ("_by_name", "_entries", "_root_hash", "_runs", "fs", "ino", "raw")

    def __init__(self, vol: Volume, ino: int, raw: RawInode, runs: Callable[[], list[Run]]) -> None:
        self.fs = vol
        self.ino = ino
        self.raw = raw
        self._runs = runs
        self._entries: list[Entry] | None = None
        self._by_name: dict[bytes, Entry] | None = None
        # The dx_root's hash version (None: block 0 holds no htree root), or _UNREAD.
        self._root_hash: object = _UNREAD

    # The inode facts the readers below ask for.
    @property
    def runs(self) -> list[Run]:
        return self._runs()

    @property
    def size(self) -> int:
        return self.raw.i_size

    @property
    def generation(self) -> int:
        return self.raw.i_generation

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.raw.i_mode)

    @property
    def is_indexed_dir(self) -> bool:
        return self.is_dir and bool(self.raw.i_flags & EXT4_INDEX_FL)

    @property
    def is_encrypted(self) -> bool:
        return bool(self.raw.i_flags & EXT4_ENCRYPT_FL)

    @property
    def is_casefolded(self) -> bool:
        return bool(self.raw.i_flags & EXT4_CASEFOLD_FL)

    @property
    def has_inline_data(self) -> bool:
        return bool(self.raw.i_flags & EXT4_INLINE_DATA_FL)

    def inline_data(self) -> bytes:
        return read_inline_data(self.fs, self.ino, self.raw)

    # -- entries -----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Entries without the directory's own ``.`` and ``..``, raw name bytes, disk
        order; read on first use."""
        if self._entries is None:
            self._entries = read_entries(self)
        return self._entries

    def iter_entries(self) -> Iterator[Entry]:
        """:meth:`entries` one at a time; a directory over :data:`STREAM_FROM` bytes
        not yet read is read as it is iterated and not kept (a million entries would
        hold about 190 MB), so each iteration reads it again."""
        if self._entries is None and self.size > STREAM_FROM and not self.has_inline_data:
            return iter_read_entries(self)
        return iter(self.entries())

    @property
    def loaded(self) -> bool:
        """Whether :meth:`entries` has already read the directory."""
        return self._entries is not None

    def entry_named(self, name: bytes) -> Entry | None:
        """The entry with exactly these name bytes, by a dictionary built on first use."""
        if self._by_name is None:
            self._by_name = {}
            for e in self.entries():
                self._by_name.setdefault(e.name, e)
        return self._by_name.get(name)

    # -- htree -------------------------------------------------------------------------
    def keep_root(self, block0: bytes) -> None:
        """Keep the hash version of block 0's htree root (read by whoever read it)."""
        root = decode_dx_root(block0)
        self._root_hash = root.hash_version if root is not None else None

    def hash_version(self, default: int) -> int:
        """The hash version recorded in the htree root, or ``default`` if unreadable."""
        if self._root_hash is _UNREAD:
            runs = [r for r in self.runs if r.lblk == 0 and r.pblk is not None]
            if not runs or runs[0].pblk is None:
                return default
            try:
                self.keep_root(self.fs.read_block(runs[0].pblk))
            except CorruptError:
                return default
        version = self._root_hash
        return version if isinstance(version, int) else default

    def htree_find(
        self, hash_of: Callable[[int], int], match: Callable[[Entry], bool]
    ) -> Entry | None:
        """An entry found through the htree index, or None: see :func:`htree_find`."""
        return htree_find(self, hash_of, match)


# Blocks of a directory read at once (at most).
_DIR_READ_BLOCKS = 64


def read_entries(dir_inode: Directory) -> list[Entry]:
    return list(iter_read_entries(dir_inode))


def iter_read_entries(dir_inode: Directory) -> Iterator[Entry]:
    """The entries, block by block as they are read (a bad block raises when it is
    reached, after the entries before it)."""
    if not dir_inode.is_dir:
        raise CorruptError(
            "not a directory", structure="directory", location=f"inode {dir_inode.ino}"
        )
    fs = dir_inode.fs
    hashed = dir_inode.is_encrypted and dir_inode.is_casefolded
    filetype = fs.has_filetype
    where = f"directory inode {dir_inode.ino}"
    if dir_inode.has_inline_data:
        data = dir_inode.inline_data()
        # The first 4 bytes of i_block hold the parent inode; entries follow.
        parent = struct.unpack_from("<I", data, 0)[0]
        raw_entries: list[DirentTuple] = [(parent, b"..", 2, 0, 4, None)]
        raw_entries += scan_dirents(
            data[4:60],
            block_size=fs.block_size,
            where=where,
            filetype=filetype,
            hashed=hashed,
            base=4,
        )
        if len(data) > 60:
            raw_entries += scan_dirents(
                data[60:],
                block_size=fs.block_size,
                where=where + " (system.data)",
                filetype=filetype,
                hashed=hashed,
                base=60,
            )
        yield from _public(raw_entries, inline=True)
        return
    seed = (
        inode_csum_seed(fs.csum_seed, dir_inode.ino, dir_inode.generation)
        if fs.sb.metadata_csum
        else None
    )
    dots: set[tuple[int, bytes]] | None = None
    bs = fs.block_size
    nblocks = 0
    for run in dir_inode.runs:
        if run.pblk is None:
            continue  # holes in directories read as nothing (the kernel skips them too)
        if run.unwritten:
            continue
        span = b""  # blocks run.pblk + first .. of the run, read at once
        first = 0
        for k in range(run.length):
            nblocks += 1
            if nblocks > _MAX_DIR_BLOCKS:
                raise CorruptError("directory is implausibly large", location=where)
            lblk = run.lblk + k
            if lblk * bs >= dir_inode.size:
                break
            if (k - first + 1) * bs > len(span):
                # One read for the rest of the run (within the size, a few at most):
                # on a device each read waits for the disk.
                first = k
                count = min(run.length - k, _DIR_READ_BLOCKS, -(-dir_inode.size // bs) - lblk)
                span = fs.read_block(run.pblk + k, count)
            block = span[(k - first) * bs : (k - first + 1) * bs]
            at = f"{where} block {lblk}"
            if _is_dx_node(block, bs, lblk, dir_inode.is_indexed_dir):
                limit = dx_node_limit(bs, seed is not None, hashed)
                _check_dx(fs, block, DX_NODE_COUNT_OFFSET, limit, seed, at)
                continue
            if lblk == 0 and dir_inode.is_indexed_dir:
                # Block 0 of an htree holds '.', '..' and the dx_root behind '..'; the
                # rest of the block may be stale bytes from before indexing.
                dir_inode.keep_root(block)
                if _is_dx_root(block, bs):
                    limit = dx_root_limit(bs, seed is not None)
                    _check_dx(fs, block, DX_ROOT_COUNT_OFFSET, limit, seed, at)
                    continue
                # Not a root: the index flag is wrong, and block 0 is an ordinary leaf
                # whose entries count (the kernel's readdir falls back to a linear read).
                fs.warn(f"{at}: not laid out as an htree root (entries read in full)")
            raw = _leaf_entries(block, bs, seed, at, filetype, hashed, lblk * bs)
            if raw:
                if dots is None:
                    dots = _dots(raw[0])  # (from the first entry of all)
                yield from _without(raw, dots)


def _leaf_entries(
    block: bytes,
    bs: int,
    seed: int | None,
    at: str,
    filetype: bool,
    hashed: bool,
    base: int,
) -> list[DirentTuple]:
    """The entries of one leaf block, its checksum tail verified when ``seed`` is given.

    The tail is looked for only with metadata_csum on (``seed`` given), as the kernel
    does: after ``tune2fs -O ^metadata_csum`` a block keeps its old tail bytes, but the
    last entry's ``rec_len`` now spans them, so they are slack inside that entry.
    """
    end = bs
    if seed is not None:
        if not has_csum_tail(block):
            raise ChecksumError(
                "directory block has no checksum tail",
                structure="directory block",
                location=at,
            )
        (stored,) = struct.unpack_from("<I", block, bs - 4)
        want = crc32c_le(seed, block[: bs - DIRENT_TAIL_SIZE])
        if stored != want:
            raise ChecksumError(
                f"checksum 0x{stored:08x} != computed 0x{want:08x}",
                structure="directory block",
                location=at,
            )
        end = bs - DIRENT_TAIL_SIZE
    return scan_dirents(
        block[:end],
        block_size=bs,
        where=at,
        filetype=filetype,
        hashed=hashed,
        base=base,
    )


def _check_dx(
    fs: Volume, block: bytes, count_offset: int, limit: int, seed: int | None, at: str
) -> None:
    """Verify an htree index block's limit (``limit``, what the kernel's dx_probe
    demands) and checksum (with ``seed``).  A full scan does not need the index, so a
    mismatch stops nothing: it is a warning (the kernel would refuse lookups in the
    directory until e2fsck rebuilds the index)."""
    (stored_limit,) = struct.unpack_from("<H", block, count_offset)
    if stored_limit != limit:
        # One warning a block: where the checksum sits follows from the limit.
        fs.warn(f"{at}: htree index limit {stored_limit} != {limit} (entries read in full)")
        return
    if seed is None:
        return
    found = dx_csum_check(block, count_offset, seed)
    if found is None:
        fs.warn(f"{at}: htree index has no room for its checksum (entries read in full)")
    elif found[0] != found[1]:
        fs.warn(
            f"{at}: htree index checksum 0x{found[0]:08x} != computed 0x{found[1]:08x} "
            "(entries read in full)"
        )


def _is_dx_root(block: bytes, bs: int) -> bool:
    """Block 0 laid out as an htree root: '.' of 12 bytes, then '..' spanning the rest
    of the block with an 8-byte dx_root_info behind it (get_dx_countlimit)."""
    dot = rec_len_from_disk(struct.unpack_from("<H", block, 4)[0], bs)
    dotdot = rec_len_from_disk(struct.unpack_from("<H", block, 16)[0], bs)
    reserved_zero = struct.unpack_from("<I", block, 0x18)[0]
    return dot == 12 and dotdot == bs - 12 and not reserved_zero and block[0x1D] == 8


def _is_dx_node(block: bytes, bs: int, lblk: int, indexed: bool) -> bool:
    """An htree interior node: a fake entry with inode 0 whose rec_len spans the block."""
    if not indexed or lblk == 0:
        return False
    inode, rec_len = struct.unpack_from("<IH", block, 0)
    return inode == 0 and rec_len_from_disk(rec_len, bs) == bs and block[6] == 0


def _public(raw: list[DirentTuple], *, inline: bool = False) -> list[Entry]:
    """The entries but the directory's own ``.`` and ``..``: in a block directory the
    entry at offset 0 and the one right after it (in an htree, block 0 is not scanned),
    in an inline one the parent number in front.  Any other entry named so, or with an
    empty name, is kept for the callers to report: e2fsck flags it, the kernel's readdir
    shows it, and dropping it silently would hide its inode."""
    if inline:
        dots = {(0, b"..")}
    else:
        dots = _dots(raw[0]) if raw else set()
    return _without(raw, dots)


def _dots(first: DirentTuple) -> set[tuple[int, bytes]]:
    """(offset, name) of a block directory's own ``.`` and ``..``, given its first
    entry (see :func:`_public`)."""
    dotdot = first[3] + first[4] if first[3] == 0 else 12
    return {(0, b"."), (dotdot, b"..")}


def _without(raw: list[DirentTuple], dots: set[tuple[int, bytes]]) -> list[Entry]:
    return [
        _make_entry(name, ino, ft, stored, offset)
        for ino, name, ft, offset, _rec_len, stored in raw
        if not ((name == b"." or name == b"..") and (offset, name) in dots)
    ]


# -- htree lookup -------------------------------------------------------------------------

_DX_COUNT = struct.Struct("<HH")
_DX_HASH = struct.Struct("<I")
_DX_BLOCK_MASK = 0x0FFFFFFF  # dx_get_block: the top bits of an index block number are flags
_DX_MAX_LEVELS = 3  # 2 without largedir, 3 with it


def htree_find(
    dir_inode: Directory, hash_of: Callable[[int], int], match: Callable[[Entry], bool]
) -> Entry | None:
    """An entry of an indexed directory found through its htree, or None.

    ``hash_of`` maps the dx_root's hash version to the hash the wanted name has under
    it (it may raise :class:`CipherdumpError` or ValueError if that version cannot be
    computed); ``match`` tells the wanted entry.  Only the index path to one leaf is
    read, and the leaves after it while their index hash continues the wanted one.

    None means "not found this way": the index was absent, inconsistent or unreadable,
    or the entry was not where the index says.  Callers then scan the whole directory,
    which settles the answer (and raises what a damaged directory raises), so a found
    entry is always one the full scan also yields.
    """
    fs = dir_inode.fs
    if (
        not dir_inode.is_indexed_dir
        or not fs.dir_index
        or dir_inode.has_inline_data
        or dir_inode.is_casefolded
    ):
        return None
    bs = fs.block_size
    size_blocks = dir_inode.size // bs
    runs = [r for r in dir_inode.runs if r.pblk is not None and not r.unwritten]
    where = f"directory inode {dir_inode.ino}"

    def read(lblk: int) -> bytes | None:
        if lblk >= size_blocks:
            return None
        for r in runs:
            if r.lblk <= lblk < r.lblk + r.length and r.pblk is not None:
                return fs.read_block(r.pblk + lblk - r.lblk)
        return None

    try:
        root = read(0)
        if root is None:
            return None
        info = decode_dx_root(root)
        if info is None or info.info_length != 8 or info.indirect_levels >= _DX_MAX_LEVELS:
            return None
        target = hash_of(info.hash_version)
        block, off = root, 0x18 + info.info_length
        # Descend: in each index block the last entry whose hash is <= target.
        for level in range(info.indirect_levels + 1):
            limit, count = _DX_COUNT.unpack_from(block, off)
            if count == 0 or count > limit or off + 8 * limit > bs:
                return None
            lo, hi = 1, count - 1
            while lo <= hi:
                mid = (lo + hi) >> 1
                if _DX_HASH.unpack_from(block, off + 8 * mid)[0] > target:
                    hi = mid - 1
                else:
                    lo = mid + 1
            at = lo - 1
            child = _DX_HASH.unpack_from(block, off + 8 * at + 4)[0] & _DX_BLOCK_MASK
            if level < info.indirect_levels:
                node = read(child) if child else None
                if node is None or not _is_dx_node(node, bs, child, True):
                    return None
                block, off = node, 8
        # Scan the leaf, then the next ones of this index block while the hash goes on
        # (bit 0 of an index hash marks a collision run continuing from the block before).
        seed = (
            inode_csum_seed(fs.csum_seed, dir_inode.ino, dir_inode.generation)
            if fs.sb.metadata_csum
            else None
        )
        filetype = fs.has_filetype
        hashed = dir_inode.is_encrypted and dir_inode.is_casefolded
        while True:
            leaf = read(child) if child else None
            if leaf is None or _is_dx_node(leaf, bs, child, True):
                return None
            at_leaf = f"{where} block {child}"
            for t in _leaf_entries(leaf, bs, seed, at_leaf, filetype, hashed, child * bs):
                if t[1] != b"." and t[1] != b"..":
                    entry = Entry(t[1], t[0], t[2], t[5], t[3])
                    if match(entry):
                        return entry
            at += 1
            if at >= count:
                return None
            next_hash = _DX_HASH.unpack_from(block, off + 8 * at)[0]
            if next_hash & ~1 != target:
                return None
            child = _DX_HASH.unpack_from(block, off + 8 * at + 4)[0] & _DX_BLOCK_MASK
    except (CipherdumpError, ValueError, struct.error):
        return None
