"""Inode views: metadata with Python names, data as runs with holes, xattrs, entries."""

from __future__ import annotations

import enum
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.ext4.directory import Directory
from cipherdump.ext4.mapping import (
    FAST_SYMLINK_MAX,
    blocks_512,
    is_fast_symlink,
    map_runs,
    read_mapped,
)
from cipherdump.ext4.volume import Run as Run
from cipherdump.ext4.xattr import Xattr, read_inline_data, read_xattrs
from cipherdump.ondisk import features as F
from cipherdump.ondisk import inode as I
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION

if TYPE_CHECKING:
    from cipherdump.ext4.directory import Entry
    from cipherdump.ext4.volume import Volume


class InodeType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    FIFO = "fifo"
    SOCKET = "socket"
    UNKNOWN = "unknown"


_FMT_TO_TYPE = {
    stat.S_IFREG: InodeType.FILE,
    stat.S_IFDIR: InodeType.DIR,
    stat.S_IFLNK: InodeType.SYMLINK,
    stat.S_IFCHR: InodeType.CHARDEV,
    stat.S_IFBLK: InodeType.BLOCKDEV,
    stat.S_IFIFO: InodeType.FIFO,
    stat.S_IFSOCK: InodeType.SOCKET,
}

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
        "_directory",
        "_runs",
        "_xattrs",
        "fs",
        "ino",
        "raw",
        "type",
    )

    fs: Volume
    ino: int
    raw: I.RawInode
    #: The file type, from the mode's format bits (``UNKNOWN`` for none of the seven).
    type: InodeType

    def __init__(self, fs: Volume, ino: int, raw: I.RawInode) -> None:
        self.fs = fs
        self.ino = ino
        self.raw = raw
        # Set once here: walks ask every inode its type many times over.
        self.type = _FMT_TO_TYPE.get(raw.i_mode & _S_IFMT, InodeType.UNKNOWN)
        self._xattrs: list[Xattr] | None = None
        self._runs: list[Run] | None = None
        self._directory: Directory | None = None

    def __repr__(self) -> str:
        return f"<Inode {self.ino} {self.type.value} size={self.size}>"

    # -- metadata --------------------------------------------------------------------
    @property
    def mode(self) -> int:
        return self.raw.i_mode

    @property
    def is_dir(self) -> bool:
        return self.type is InodeType.DIR

    @property
    def is_file(self) -> bool:
        return self.type is InodeType.FILE

    @property
    def is_symlink(self) -> bool:
        return self.type is InodeType.SYMLINK

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
        return blocks_512(self.fs.sb, self.raw, self.fs.block_size)

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
        if self.type is not InodeType.CHARDEV and self.type is not InodeType.BLOCKDEV:
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
        return self.type is InodeType.DIR and self.raw.i_flags & _INDEX_FL != 0

    @property
    def is_fast_symlink(self) -> bool:
        """Target in ``i_block``, decided the way the kernel decides it
        (:func:`~cipherdump.ext4.mapping.is_fast_symlink`)."""
        return is_fast_symlink(self.fs.sb, self.raw)

    # -- xattrs ----------------------------------------------------------------------
    @property
    def xattrs(self) -> list[Xattr]:
        """All xattrs, in-inode first then the external block, values resolved."""
        xattrs = self._xattrs
        if xattrs is None:
            xattrs = self._xattrs = read_xattrs(self.fs, self.ino, self.raw)
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
            runs = self._runs = self.fs.orphan_runs(
                self.ino, map_runs(self.fs, self.ino, self.raw), self.raw.i_size
            )
        return runs

    def mapped_runs(self) -> list[Run]:
        return [r for r in self.runs if r.pblk is not None]

    def inline_data(self) -> bytes:
        """The bytes of an inline-data inode: ``i_block`` then ``system.data``."""
        return read_inline_data(self.fs, self.ino, self.raw)

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
        return read_mapped(self.fs, self.runs, start, end)

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
    @property
    def directory(self) -> Directory:
        """This directory's entries and htree root (read on first use, then kept)."""
        d = self._directory
        if d is None:
            d = self._directory = Directory(self.fs, self.ino, self.raw, lambda: self.runs)
        return d

    def entries(self) -> list[Entry]:
        """Directory entries (without the directory's own ``.`` and ``..``), raw name
        bytes, disk order.  Entries with names no directory may hold (another ``..``,
        an empty name) are kept for the caller to report: see ``dirent_name_problem``.

        Read once per inode view; the filesystem keeps recently used views.
        """
        return self.directory.entries()

    def iter_entries(self) -> Iterator[Entry]:
        """:meth:`entries` one at a time, a large directory not kept (see
        :meth:`~cipherdump.ext4.directory.Directory.iter_entries`)."""
        return self.directory.iter_entries()

    def forget_entries(self) -> None:
        """Let go of the entries read (a walk done with the directory): the
        filesystem keeps thousands of recent inode views, and a directory's listing
        kept with each would hold hundreds of megabytes of a large filesystem."""
        self._directory = None

    @property
    def entries_loaded(self) -> bool:
        """Whether :meth:`entries` has already read the directory."""
        return self._directory is not None and self._directory.loaded

    def entry_named(self, name: bytes) -> Entry | None:
        """The entry with exactly these name bytes, by a dictionary built on first use."""
        return self.directory.entry_named(name)
