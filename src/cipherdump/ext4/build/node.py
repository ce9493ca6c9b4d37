"""Writing one inode: its record, xattrs (in the inode or a block), data, symlink, device.

Everything is copied as stored: encrypted contents, names and symlink payloads are
bytes to this module, and the encryption context is just the xattr with name index 9.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.ext4.build.directory import DirLayout
from cipherdump.ext4.build.extents import split_extents, write_extent_tree
from cipherdump.ext4.build.image import ImageWriter
from cipherdump.ondisk.inode import (
    EXT4_EXTENTS_FL,
    EXT4_HUGE_FILE_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    InodeFields,
    encode_inode,
)
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_ENCRYPTION,
    EXT4_XATTR_INDEX_SYSTEM,
    EXT4_XATTR_MAGIC,
    encode_xattr_area,
    encode_xattr_block,
    xattr_area_fits,
)

FAST_SYMLINK_MAX_SIZE = 59  # i_size of the longest target kept in i_block (with its NUL)
# Flags a writer decides itself rather than copying.
_LAYOUT_FLAGS = EXT4_EXTENTS_FL | EXT4_INDEX_FL | EXT4_HUGE_FILE_FL

Xattr = tuple[int, bytes, bytes]
# Reads ``count`` stored blocks from logical block ``lblk`` of the source file.
BlockReader = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class NewInode:
    """The metadata of an inode to write (what a snapshot keeps of it)."""

    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    links: int = 1
    flags: int = 0
    generation: int = 0
    version: int = 0
    project_id: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    crtime_ns: int | None = None
    context: bytes | None = None
    xattrs: tuple[Xattr, ...] = field(default_factory=tuple)
    rdev: tuple[int, int] | None = None

    def all_xattrs(self) -> list[Xattr]:
        # The context first, as the kernel creates it first: it then stays in the inode.
        out: list[Xattr] = []
        if self.context is not None:
            out.append((EXT4_XATTR_INDEX_ENCRYPTION, b"c", self.context))
        out += list(self.xattrs)
        return out


@dataclass(frozen=True, slots=True)
class NewRun:
    """Logical run of a file: ``length`` blocks at ``lblk``; unwritten ones read as zeros."""

    lblk: int
    length: int
    unwritten: bool = False


def _place_xattrs(w: ImageWriter, items: list[Xattr]) -> tuple[list[Xattr], list[Xattr]]:
    """Split xattrs into those that stay in the inode and those for an xattr block."""
    room = w.inode_size - 128 - w.extra_isize - 4 if w.inode_size > 128 else 0
    if room <= 0:
        must = [x for x in items if x[0] == EXT4_XATTR_INDEX_SYSTEM and x[1] == b"data"]
        if must:
            raise UnsupportedError("inline data needs inodes larger than 128 bytes")
        return [], items
    if xattr_area_fits(items, room):
        return items, []
    inside: list[Xattr] = []
    # system.data (inline data) must be in the inode; then the context; then the rest.
    prio = sorted(
        items,
        key=lambda x: (
            0 if (x[0], x[1]) == (EXT4_XATTR_INDEX_SYSTEM, b"data") else
            1 if x[0] == EXT4_XATTR_INDEX_ENCRYPTION else 2
        ),
    )  # fmt: skip
    for x in prio:
        if xattr_area_fits([*inside, x], room):
            inside.append(x)
    outside = [x for x in items if x not in inside]
    return [x for x in items if x in inside], outside


def finish_inode(
    w: ImageWriter, ino: int, spec: NewInode, *, i_block: bytes, data_blocks: int, flags: int,
    size: int | None = None,
) -> None:  # fmt: skip
    """Write the inode record: xattrs placed, ``i_blocks`` counted, checksum set."""
    inside, outside = _place_xattrs(w, spec.all_xattrs())
    acl = 0
    blocks = data_blocks
    if outside:
        acl = w.alloc_blocks(1)[0][0]
        seed = w.csum_seed if w.metadata_csum else None
        try:
            block = encode_xattr_block(outside, w.block_size, acl, seed)
        except ValueError:
            raise UnsupportedError(
                f"inode {ino}: xattrs larger than one block (EA inodes) are not supported"
            ) from None
        w.write_blocks(acl, block)
        blocks += 1
    tail = b""
    if w.inode_size > 128:
        area_size = w.inode_size - 128 - w.extra_isize - 4
        area = encode_xattr_area(inside, area_size, base=0, in_block=False) if inside else b""
        tail = struct.pack("<I", EXT4_XATTR_MAGIC) + bytes(area) if inside else b""
    fields = InodeFields(
        i_mode=spec.mode,
        i_uid=spec.uid,
        i_gid=spec.gid,
        i_size=spec.size if size is None else size,
        atime_ns=spec.atime_ns,
        ctime_ns=spec.ctime_ns,
        mtime_ns=spec.mtime_ns,
        crtime_ns=spec.crtime_ns,
        i_links_count=spec.links,
        i_blocks=blocks * (w.block_size // 512),
        i_flags=flags,
        i_version=spec.version,
        i_block=i_block,
        i_generation=spec.generation,
        i_file_acl=acl,
        i_projid=spec.project_id,
    )
    if fields.i_blocks >= 1 << 32:
        raise UnsupportedError(f"inode {ino}: files of 2 TiB or more are not supported")
    record = encode_inode(fields, w.inode_size, w.extra_isize, tail)
    w.write_inode_record(ino, record, spec.generation)


def write_regular(
    w: ImageWriter, ino: int, spec: NewInode, runs: list[NewRun], read: BlockReader,
    *, inline: bytes | None = None,
) -> int:  # fmt: skip
    """A regular file: allocate and fill its runs; holes stay holes.  Returns blocks used."""
    if inline is not None:
        finish_inode(w, ino, spec, i_block=inline, data_blocks=0,
                     flags=spec.flags & ~_LAYOUT_FLAGS | EXT4_INLINE_DATA_FL)  # fmt: skip
        return 0
    mapped: list[tuple[int, int, int, bool]] = []
    total = 0
    for run in runs:
        pos = 0
        for start, n in w.alloc_blocks(run.length):
            if not run.unwritten:
                for off, data in _chunks(read, run.lblk + pos, n):
                    if len(data) != off[1] * w.block_size:
                        raise CorruptError(f"inode {ino}: short data for block {off[0]}")
                    w.write_blocks(start + off[0] - run.lblk - pos, data)
            mapped.append((run.lblk + pos, n, start, run.unwritten))
            pos += n
            total += n
    i_block, tree = write_extent_tree(w, ino, spec.generation, split_extents(mapped))
    flags = (spec.flags & ~(_LAYOUT_FLAGS | EXT4_INLINE_DATA_FL)) | EXT4_EXTENTS_FL
    finish_inode(w, ino, spec, i_block=i_block, data_blocks=total + tree, flags=flags)
    return total + tree


def _chunks(read: BlockReader, lblk: int, count: int) -> Iterator[tuple[tuple[int, int], bytes]]:
    step = 256
    for k in range(0, count, step):
        n = min(step, count - k)
        yield (lblk + k, n), read(lblk + k, n)


def write_symlink(w: ImageWriter, ino: int, spec: NewInode, stored: bytes) -> None:
    """A symlink with its stored bytes (encrypted: ``le16 length | ciphertext``)."""
    size = len(stored)
    flags = spec.flags & ~(_LAYOUT_FLAGS | EXT4_INLINE_DATA_FL)
    if size <= FAST_SYMLINK_MAX_SIZE:
        finish_inode(w, ino, spec, i_block=stored, data_blocks=0, flags=flags, size=size)
        return
    if size >= w.block_size:
        raise UnsupportedError(f"inode {ino}: symlink of {size} bytes exceeds one block")
    ((start, _),) = w.alloc_blocks(1)
    w.write_blocks(start, stored.ljust(w.block_size, b"\0"))
    i_block, tree = write_extent_tree(
        w, ino, spec.generation, split_extents([(0, 1, start, False)])
    )
    finish_inode(w, ino, spec, i_block=i_block, data_blocks=1 + tree,
                 flags=flags | EXT4_EXTENTS_FL, size=size)  # fmt: skip


def write_special(w: ImageWriter, ino: int, spec: NewInode) -> None:
    """FIFO, socket or device node: device numbers in ``i_block`` as the kernel stores them."""
    i_block = b""
    fmt = stat.S_IFMT(spec.mode)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK) and spec.rdev is not None:
        major, minor = spec.rdev
        if major < 256 and minor < 256:
            i_block = struct.pack("<II", (major << 8) | minor, 0)
        else:
            new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
            i_block = struct.pack("<III", 0, new, 0)
    flags = spec.flags & ~(_LAYOUT_FLAGS | EXT4_INLINE_DATA_FL)
    finish_inode(w, ino, spec, i_block=i_block, data_blocks=0, flags=flags, size=0)


def write_directory(w: ImageWriter, ino: int, spec: NewInode, layout: DirLayout) -> list[int]:
    """A directory from laid-out blocks; returns the physical blocks it uses."""
    n = len(layout.blocks)
    mapped: list[tuple[int, int, int, bool]] = []
    pos = 0
    pblks: list[int] = []
    for start, count in w.alloc_blocks(n):
        w.write_blocks(start, b"".join(layout.blocks[pos : pos + count]))
        mapped.append((pos, count, start, False))
        pblks += range(start, start + count)
        pos += count
    i_block, tree = write_extent_tree(w, ino, spec.generation, split_extents(mapped))
    flags = spec.flags & ~(_LAYOUT_FLAGS | EXT4_INLINE_DATA_FL) | EXT4_EXTENTS_FL
    if layout.indexed:
        flags |= EXT4_INDEX_FL
    finish_inode(w, ino, replace(spec, size=n * w.block_size), i_block=i_block,
                 data_blocks=n + tree, flags=flags)  # fmt: skip
    return pblks


def set_links(w: ImageWriter, ino: int, links: int, generation: int) -> None:
    """Rewrite the link count of an inode already written."""
    record = w.read_inode_record(ino)
    struct.pack_into("<H", record, 0x1A, links)
    w.write_inode_record(ino, record, generation)
