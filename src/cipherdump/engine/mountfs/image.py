"""An image or unmounted device as its stored ciphertext (``mount --ciphertext``).

Encrypted names appear as their no-key names (as ``ls`` shows them without the key),
encrypted regular files read as their stored ciphertext in whole data units (so
``st_size`` is the padded size; ``user.cipherdump.size`` is the exact one), encrypted
symlinks read as the kernel's no-key target.  Inode numbers, owners, modes, times and
link counts are the source's, so hard links stay links.  Unencrypted objects appear as
they are.  Every object keeps its own xattrs and adds the key-less records where
``dump --ciphertext`` puts them (:mod:`.records`), the root the filesystem facts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property

from cipherdump.engine.describe import data_unit_size
from cipherdump.engine.keyless_records import FILESYSTEM, xattr_name
from cipherdump.engine.mountfs.model import Attr, MountNode, listing
from cipherdump.engine.mountfs.records import ObjectFacts, filesystem_record, object_xattrs
from cipherdump.engine.restore_image import TargetFacts
from cipherdump.engine.views.image import ImageNode, Namespace, Problem
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem
from cipherdump.ext4.inode import InodeType

__all__ = ["CiphertextImage"]

OnProblem = Callable[[bytes, CipherdumpError], None]


class CiphertextImage:
    """The ciphertext view of one filesystem; :attr:`root` is the node to mount.

    ``on_problem`` hears of each entry that cannot be shown (a damaged inode): the
    listing goes on without it.
    """

    def __init__(self, fs: Filesystem, *, on_problem: OnProblem | None = None) -> None:
        self.fs = fs
        self.ns = Namespace(fs)
        self.on_problem = on_problem
        self.filesystem = filesystem_record(TargetFacts.from_filesystem(fs))

    @cached_property
    def root(self) -> MountNode:
        return ImageEntry(self, self.ns.root_node(), is_root=True)

    def problem(self, path: bytes, err: CipherdumpError) -> None:
        if self.on_problem is not None:
            self.on_problem(path, err)


def facts_of(node: ImageNode) -> ObjectFacts:
    inode = node.inode
    kind = inode.type.value
    encrypted_link = kind == "symlink" and inode.is_encrypted
    return ObjectFacts(
        kind=kind,
        ino=inode.ino,
        flags=inode.flags,
        size=inode.size,
        links=inode.links,
        context=inode.encryption_context,
        raw_name=node.raw_name,
        name_encrypted=node.name_encrypted,
        stored_hash=node.stored_hash,
        symlink=inode.symlink_data() if encrypted_link else None,
    )


class ImageEntry(MountNode):
    def __init__(self, view: CiphertextImage, node: ImageNode, *, is_root: bool = False) -> None:
        self.view = view
        self.node = node
        self.is_root = is_root
        self._attr: Attr | None = None
        self._xattrs: dict[str, bytes] | None = None

    @property
    def _du(self) -> int:
        inode = self.node.inode
        return data_unit_size(inode) if inode.is_encrypted else 1

    def _visible_size(self) -> int:
        inode = self.node.inode
        if inode.type is InodeType.FILE and inode.is_encrypted:
            du = self._du
            return -(-inode.size // du) * du
        if inode.type is InodeType.SYMLINK and inode.is_encrypted:
            # Without the key the kernel reports the length of the no-key target.
            return len(self.readlink())
        return inode.size

    def attr(self) -> Attr:
        if self._attr is None:
            inode = self.node.inode
            self._attr = Attr(
                ino=inode.ino,
                mode=inode.mode,
                nlink=inode.links,
                uid=inode.uid,
                gid=inode.gid,
                size=self._visible_size(),
                blocks=inode.st_blocks,
                atime_ns=inode.atime_ns,
                mtime_ns=inode.mtime_ns,
                ctime_ns=inode.ctime_ns,
                rdev=inode.rdev,
            )
        return self._attr

    def children(self) -> Mapping[bytes, MountNode]:
        if not self.node.inode.is_dir:
            return super().children()
        view = self.view
        kids: list[tuple[bytes, MountNode]] = []
        for item in view.ns.iter_children(self.node):
            if isinstance(item, Problem):
                view.problem(item.path, item.error)
                continue
            kids.append((item.name, ImageEntry(view, item)))
        return listing(kids)

    def readlink(self) -> bytes:
        if self.node.inode.type is not InodeType.SYMLINK:
            return super().readlink()
        return self.view.ns.symlink_target(self.node.inode)

    def read(self, offset: int, size: int) -> bytes:
        inode = self.node.inode
        visible = self.attr().size
        end = min(offset + size, visible)
        if offset >= end:
            return b""
        if not inode.is_encrypted:
            return inode.read(offset, end - offset)
        if inode.has_inline_data:
            return inode.inline_data()[offset:end].ljust(end - offset, b"\0")
        # Whole data units: the stored bytes past i_size up to the unit's end too.
        return inode.read_raw(offset, end)

    def xattrs(self) -> Mapping[str, bytes]:
        # Asked for once per name by every listxattr/getxattr: made once per entry.
        if self._xattrs is None:
            self._xattrs = self._make_xattrs()
        return self._xattrs

    def _make_xattrs(self) -> dict[str, bytes]:
        inode = self.node.inode
        own = [(x.index, x.name, x.value) for x in inode.xattrs]
        out = object_xattrs(own, facts_of(self.node))
        if self.is_root:
            out[xattr_name(FILESYSTEM)] = self.view.filesystem
        return out
