"""An ext4 image as the source of a tree to write (``clone``)."""

from __future__ import annotations

import bisect

from cipherdump.errors import CorruptError
from cipherdump.ext4.build.node import BlockReader, NewInode, NewRun
from cipherdump.ext4.build.populate import SrcNode
from cipherdump.ext4.fs import Filesystem
from cipherdump.ext4.inode import Inode, InodeType
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION, EXT4_XATTR_INDEX_SYSTEM


def inode_spec(inode: Inode) -> NewInode:
    """Everything of an inode's metadata that a copy keeps."""
    context: bytes | None = None
    xattrs: list[tuple[int, bytes, bytes]] = []
    for x in inode.xattrs:
        if x.index == EXT4_XATTR_INDEX_ENCRYPTION and x.name == b"c":
            context = x.value
        elif x.index == EXT4_XATTR_INDEX_SYSTEM and x.name == b"data" and inode.is_dir:
            continue  # an inline directory is written as blocks
        else:
            xattrs.append((x.index, x.name, x.value))
    return NewInode(
        mode=inode.mode,
        uid=inode.uid,
        gid=inode.gid,
        size=inode.size,
        links=inode.links,
        flags=inode.flags,
        generation=inode.generation,
        version=inode.raw.i_version,
        project_id=inode.project_id,
        atime_ns=inode.atime_ns,
        mtime_ns=inode.mtime_ns,
        ctime_ns=inode.ctime_ns,
        crtime_ns=inode.crtime_ns,
        context=context,
        xattrs=tuple(xattrs),
        rdev=inode.device,
    )


class FilesystemTree:
    """Nodes and data of a read-only :class:`Filesystem`, from any directory down."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs

    def node(self, inode: Inode, name: bytes, hash: tuple[int, int] | None = None) -> SrcNode:
        spec = inode_spec(inode)
        node = SrcNode(name=name, ino=inode.ino, spec=spec, handle=inode, hash=hash)
        if inode.type is InodeType.FILE:
            if inode.has_inline_data:
                node.inline = inode.raw.i_block
            else:
                node.runs = [
                    NewRun(r.lblk, r.length, r.unwritten) for r in inode.runs if r.pblk is not None
                ]
        elif inode.type is InodeType.SYMLINK:
            node.symlink = inode.symlink_data()
        return node

    def children(self, node: SrcNode) -> list[SrcNode]:
        inode = node.handle
        assert isinstance(inode, Inode)
        return [self.node(self.fs.inode(e.ino), e.name, e.hash) for e in inode.entries()]

    def reader(self, node: SrcNode) -> BlockReader:
        inode = node.handle
        assert isinstance(inode, Inode)
        runs = [r for r in inode.runs if r.pblk is not None]
        starts = [r.lblk for r in runs]
        fs = self.fs

        def read(lblk: int, count: int) -> bytes:
            out = bytearray()
            while count:
                i = bisect.bisect_right(starts, lblk) - 1
                if i < 0 or lblk >= runs[i].lblk + runs[i].length:
                    raise CorruptError(f"inode {inode.ino}: block {lblk} is not mapped")
                r = runs[i]
                n = min(count, r.lblk + r.length - lblk)
                pblk = r.pblk
                assert pblk is not None
                out += fs.read_block(pblk + lblk - r.lblk, n)
                lblk += n
                count -= n
            return bytes(out)

        return read
