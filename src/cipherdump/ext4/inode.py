"""Inode views: metadata with Python names, data as runs with holes, xattrs, entries."""

from __future__ import annotations

import enum
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.ext4.directory import read_entries
from cipherdump.ext4.mapping import Run as Run
from cipherdump.ext4.mapping import map_runs
from cipherdump.ext4.xattr import Xattr, read_inode_body_xattrs, read_xattrs
from cipherdump.ondisk import features as F
from cipherdump.ondisk import inode as I
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION, EXT4_XATTR_INDEX_SYSTEM

if TYPE_CHECKING:
    from cipherdump.ext4.directory import Entry
    from cipherdump.ext4.fs import Filesystem


class FileType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    FIFO = "fifo"
    SOCKET = "socket"
    UNKNOWN = "unknown"


_FMT_TO_TYPE = {
    stat.S_IFREG: FileType.FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFCHR: FileType.CHARDEV,
    stat.S_IFBLK: FileType.BLOCKDEV,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCKET,
}

# A fast symlink keeps its target in i_block, whose 60 bytes bound the target length.
FAST_SYMLINK_MAX = 60


# Flag and feature bits asked for on every inode, as plain module constants.
_ENCRYPT_FL = I.EXT4_ENCRYPT_FL
_CASEFOLD_FL = I.EXT4_CASEFOLD_FL
_INLINE_DATA_FL = I.EXT4_INLINE_DATA_FL
_EXTENTS_FL = I.EXT4_EXTENTS_FL
_INDEX_FL = I.EXT4_INDEX_FL
_HUGE_FILE_FL = I.EXT4_HUGE_FILE_FL
_RO_COMPAT_HUGE_FILE = F.RO_COMPAT_HUGE_FILE
_S_IFMT = 0o170000


class Inode:
    """A read-only view of one inode.  Cheap to make; everything below is lazy.

    The block map (:attr:`runs`), the xattrs and the directory entries are read once,
    on first use, and kept with the view.
    """

    __slots__ = (
        "__weakref__",
        "_by_name",
        "_entries",
        "_runs",
        "_xattrs",
        "dx_root_hash",
        "fs",
        "ino",
        "raw",
        "type",
    )

    fs: Filesystem
    ino: int
    raw: I.RawInode
    #: The file type, from the mode's format bits (``UNKNOWN`` for none of the seven).
    type: FileType
    #: An indexed directory's hash version as its block 0 records it (None if that
    #: block holds no htree root), kept by whichever read that block first
    #: (:func:`~cipherdump.ext4.directory.read_entries` or ``dx_hash_version``); -1
    #: until then.  On a block device each read of the block waits for the disk.
    dx_root_hash: int | None

    def __init__(self, fs: Filesystem, ino: int, raw: I.RawInode) -> None:
        self.fs = fs
        self.ino = ino
        self.raw = raw
        # Set once here: walks ask every inode its type many times over.
        self.type = _FMT_TO_TYPE.get(raw.i_mode & _S_IFMT, FileType.UNKNOWN)
        self._xattrs: list[Xattr] | None = None
        self._runs: list[Run] | None = None
        self._entries: list[Entry] | None = None
        self._by_name: dict[bytes, Entry] | None = None
        self.dx_root_hash = -1

    def __repr__(self) -> str:
        return f"<Inode {self.ino} {self.type.value} size={self.size}>"

    # -- metadata --------------------------------------------------------------------
    @property
    def mode(self) -> int:
        return self.raw.i_mode

    @property
    def is_dir(self) -> bool:
        return self.type is FileType.DIR

    @property
    def is_file(self) -> bool:
        return self.type is FileType.FILE

    @property
    def is_symlink(self) -> bool:
        return self.type is FileType.SYMLINK

    @property
    def uid(self) -> int:
        return self.raw.i_uid

    @property
    def gid(self) -> int:
        return self.raw.i_gid

    @property
    def size(self) -> int:
        return self.raw.i_size

    @property
    def links(self) -> int:
        return self.raw.i_links_count

    @property
    def flags(self) -> int:
        return self.raw.i_flags

    @property
    def generation(self) -> int:
        return self.raw.i_generation

    @property
    def project_id(self) -> int:
        return self.raw.i_projid

    @property
    def in_use(self) -> bool:
        return self.raw.i_mode != 0 and self.raw.i_dtime == 0

    # The four timestamps: I.timestamp_ns, written out (they are asked for per file).
    @property
    def atime_ns(self) -> int:
        raw = self.raw
        secs = raw.i_atime - ((raw.i_atime & 0x80000000) << 1) + ((raw.i_atime_extra & 3) << 32)
        return secs * 1_000_000_000 + (raw.i_atime_extra >> 2)

    @property
    def mtime_ns(self) -> int:
        raw = self.raw
        secs = raw.i_mtime - ((raw.i_mtime & 0x80000000) << 1) + ((raw.i_mtime_extra & 3) << 32)
        return secs * 1_000_000_000 + (raw.i_mtime_extra >> 2)

    @property
    def ctime_ns(self) -> int:
        raw = self.raw
        secs = raw.i_ctime - ((raw.i_ctime & 0x80000000) << 1) + ((raw.i_ctime_extra & 3) << 32)
        return secs * 1_000_000_000 + (raw.i_ctime_extra >> 2)

    @property
    def crtime_ns(self) -> int | None:
        raw = self.raw
        if not raw.has_extra["crtime"]:
            return None
        secs = raw.i_crtime - ((raw.i_crtime & 0x80000000) << 1) + ((raw.i_crtime_extra & 3) << 32)
        return secs * 1_000_000_000 + (raw.i_crtime_extra >> 2)

    @property
    def blocks_512(self) -> int:
        """``st_blocks``: 512-byte units, whatever the huge_file encoding on disk."""
        raw = self.raw
        if not self.fs.sb.s_feature_ro_compat & _RO_COMPAT_HUGE_FILE:
            # Like the kernel: without huge_file, l_i_blocks_high means nothing.
            return raw.i_blocks & 0xFFFFFFFF
        if raw.i_flags & _HUGE_FILE_FL:
            return raw.i_blocks * (self.fs.block_size // 512)
        return raw.i_blocks

    @property
    def st_blocks(self) -> int:
        """``st_blocks`` as ``stat(2)`` reports it: :attr:`blocks_512`, plus, for a regular
        file with inline data, one sector per 512 bytes of it (ext4_file_getattr does so
        that tar and rsync do not take such files for sparse ones)."""
        if self.is_file and self.has_inline_data:
            return self.blocks_512 + (self.size + 511) // 512
        return self.blocks_512

    @property
    def device(self) -> tuple[int, int] | None:
        """(major, minor) of a character or block device node."""
        if self.type is not FileType.CHARDEV and self.type is not FileType.BLOCKDEV:
            return None
        b = self.raw.i_block
        old = int.from_bytes(b[0:4], "little")
        if old:
            return (old >> 8) & 0xFF, old & 0xFF
        new = int.from_bytes(b[4:8], "little")
        return (new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00)

    @property
    def rdev(self) -> int:
        dev = self.device
        if dev is None:
            return 0
        major, minor = dev
        return ((major & 0xFFF) << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12)

    # -- flags -----------------------------------------------------------------------
    @property
    def is_encrypted(self) -> bool:
        return self.raw.i_flags & _ENCRYPT_FL != 0

    @property
    def is_casefolded(self) -> bool:
        return self.raw.i_flags & _CASEFOLD_FL != 0

    @property
    def has_inline_data(self) -> bool:
        return self.raw.i_flags & _INLINE_DATA_FL != 0

    @property
    def uses_extents(self) -> bool:
        return self.raw.i_flags & _EXTENTS_FL != 0

    @property
    def is_indexed_dir(self) -> bool:
        return self.type is FileType.DIR and self.raw.i_flags & _INDEX_FL != 0

    @property
    def is_fast_symlink(self) -> bool:
        """Target in ``i_block``: decided the way the kernel decides it.

        Like ``ext4_inode_is_fast_symlink``: with the ea_inode feature by ``i_size``
        alone, otherwise by an ``i_blocks`` that counts nothing but the xattr block (one
        cluster).  Neither the extents flag nor the encrypt flag enters into it.
        """
        if self.type is not FileType.SYMLINK or self.raw.i_flags & _INLINE_DATA_FL:
            return False
        if self.fs.sb.has_incompat(F.INCOMPAT_EA_INODE):
            return 0 < self.size < FAST_SYMLINK_MAX
        ea_blocks = (self.fs.sb.cluster_size // 512) if self.raw.i_file_acl else 0
        return self.blocks_512 == ea_blocks

    # -- xattrs ----------------------------------------------------------------------
    @property
    def xattrs(self) -> list[Xattr]:
        """All xattrs, in-inode first then the external block, values resolved."""
        xattrs = self._xattrs
        if xattrs is None:
            xattrs = self._xattrs = read_xattrs(self)
        return xattrs

    def xattr(self, index: int, name: bytes) -> bytes | None:
        for x in self.xattrs:
            if x.index == index and x.name == name:
                return x.value
        return None

    @property
    def encryption_context(self) -> bytes | None:
        """The raw encryption context xattr value (name index 9, ``c``), verbatim."""
        return self.xattr(EXT4_XATTR_INDEX_ENCRYPTION, b"c")

    # -- data ------------------------------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        """The block map as runs over ``[0, blocks covering i_size)``, holes included.

        Mapped blocks past ``i_size`` (preallocation, verity metadata) are kept too,
        so that a backup can keep them; readers stop at ``i_size`` themselves.
        """
        runs = self._runs
        if runs is None:
            runs = self._runs = self.fs.orphan_runs(self.ino, map_runs(self), self.raw.i_size)
        return runs

    def mapped_runs(self) -> list[Run]:
        return [r for r in self.runs if r.pblk is not None]

    def inline_data(self) -> bytes:
        """The bytes of an inline-data inode: ``i_block`` then ``system.data``."""
        if not self.has_inline_data:
            raise UnsupportedError(f"inode {self.ino} has no inline data")
        if not self.fs.sb.has_incompat(F.INCOMPAT_INLINE_DATA):
            raise CorruptError(
                "inline_data flag on a filesystem without the inline_data feature",
                structure="inode",
                location=f"inode {self.ino}",
            )
        if self.uses_extents:
            raise CorruptError(
                "both inline_data and extents flags are set",
                structure="inode",
                location=f"inode {self.ino}",
            )
        # system.data always lives in the inode body (the kernel looks nowhere else), so
        # a damaged xattr block does not make the inline data unreadable.
        for x in read_inode_body_xattrs(self):
            if x.index == EXT4_XATTR_INDEX_SYSTEM and x.name == b"data":
                return self.raw.i_block + x.value
        raise CorruptError(
            "inline_data flag is set but the system.data xattr is missing",
            structure="inode",
            location=f"inode {self.ino}",
        )

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the file as stored: ciphertext for encrypted inodes, zeros for holes.

        Reads stop at ``i_size``.  For whole data units use :meth:`iter_blocks`.
        """
        size = self.size
        if length is None:
            length = size - offset
        end = min(size, offset + max(length, 0))
        if offset >= end:
            return b""
        if self.has_inline_data:
            data = self.inline_data()
            if len(data) < size:
                raise CorruptError(
                    f"inline data holds {len(data)} bytes, i_size says {size}",
                    structure="inode",
                    location=f"inode {self.ino}",
                )
            return data[offset:end]
        return self.read_raw(offset, end)

    def read_raw(self, start: int, end: int) -> bytes:
        """Stored bytes of [start, end) by block map, not capped at ``i_size``; holes and
        unwritten extents read as zeros."""
        bs = self.fs.block_size
        out = bytearray()
        first = start // bs
        last = (end - 1) // bs
        for run in self.runs:
            if run.lblk + run.length <= first or run.lblk > last:
                continue
            lo = max(run.lblk, first)
            hi = min(run.lblk + run.length - 1, last)
            want_pos = lo * bs
            cur = first * bs + len(out)
            if want_pos > cur:
                out += bytes(want_pos - cur)
            count = hi - lo + 1
            if run.pblk is None or run.unwritten:
                out += bytes(count * bs)
            else:
                out += self.fs.read_block(run.pblk + (lo - run.lblk), count)
        total = (last - first + 1) * bs
        if len(out) < total:
            out += bytes(total - len(out))
        skip = start - first * bs
        return bytes(out[skip : skip + (end - start)])

    def iter_blocks(self, max_blocks: int = 256) -> Iterator[tuple[Run, bytes]]:
        """Yield (run piece, bytes) for every mapped, written block range, in order."""
        for run in self.runs:
            if run.pblk is None or run.unwritten:
                continue
            done = 0
            while done < run.length:
                n = min(max_blocks, run.length - done)
                piece = Run(run.lblk + done, n, run.pblk + done, False)
                yield piece, self.fs.read_block(piece.pblk or 0, n)
                done += n

    # -- symlinks --------------------------------------------------------------------
    def symlink_data(self) -> bytes:
        """The stored bytes of a symlink (``i_size`` bytes; encrypted: len+ct payload).

        An unencrypted target must be what the kernel and e2fsck accept: a C string of
        exactly ``i_size`` bytes (no NUL inside it, a NUL or the end of its storage
        right after it), kept in ``i_block`` only when shorter than 60 bytes, and in a
        mapped first block otherwise.  Anything else raises CorruptError rather than
        handing back bytes no ``symlink()`` call could have written.
        """
        if not self.is_symlink:
            raise UnsupportedError(f"inode {self.ino} is not a symlink")
        where = f"inode {self.ino}"
        size = self.size
        if size == 0 or size >= self.fs.block_size:
            raise CorruptError(
                f"symlink size {size} is invalid", structure="symlink", location=where
            )
        if self.is_fast_symlink:
            # The target (or length + ciphertext) and its NUL must fit the 60 bytes.
            if size >= FAST_SYMLINK_MAX:
                raise CorruptError(
                    f"fast symlink of {size} bytes is longer than i_block",
                    structure="symlink",
                    location=where,
                )
        elif not self.has_inline_data and not any(
            r.lblk == 0 and r.pblk is not None for r in self.runs
        ):
            raise CorruptError("symlink block 0 is a hole", structure="symlink", location=where)
        storage = self.symlink_storage()
        if len(storage) < size:
            raise CorruptError("symlink data is short", structure="symlink", location=where)
        data = bytes(storage[:size])
        if not self.is_encrypted:
            nul = data.find(b"\0")
            if nul >= 0:
                raise CorruptError(
                    f"target has a NUL byte at offset {nul}, before i_size {size}",
                    structure="symlink",
                    location=where,
                )
            if len(storage) > size and storage[size] != 0:
                raise CorruptError(
                    f"target goes on past i_size {size} (no NUL after it)",
                    structure="symlink",
                    location=where,
                )
        return data

    def symlink_storage(self) -> bytes:
        """The whole area a symlink's bytes live in: ``i_block`` (fast), the first data
        block (slow) or the inline data, including what follows ``i_size`` (for an
        encrypted target, the NUL after the ciphertext)."""
        if not self.is_symlink:
            raise UnsupportedError(f"inode {self.ino} is not a symlink")
        if self.has_inline_data:
            return self.inline_data()
        if self.is_fast_symlink:
            return self.raw.i_block
        return self.read_raw(0, self.fs.block_size)

    # -- directories -----------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Directory entries (without the directory's own ``.`` and ``..``), raw name
        bytes, disk order.  Entries with names no directory may hold (another ``..``,
        an empty name) are kept for the caller to report: see ``dirent_name_problem``.

        Read once per inode view; the filesystem keeps recently used views.
        """
        if self._entries is None:
            self._entries = read_entries(self)
        return self._entries

    @property
    def entries_loaded(self) -> bool:
        """Whether :meth:`entries` has already read the directory."""
        return self._entries is not None

    def entry_named(self, name: bytes) -> Entry | None:
        """The entry with exactly these name bytes, by a dictionary built on first use."""
        if self._by_name is None:
            self._by_name = {}
            for e in self.entries():
                self._by_name.setdefault(e.name, e)
        return self._by_name.get(name)
