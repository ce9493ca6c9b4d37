"""Plaintext extraction: write a decrypted copy of a subtree of an image into a directory.

``extract(ns, top, dest)`` gives ``dest`` the contents of ``top`` as ``cp -a top/. dest``
would (see :mod:`cipherdump.engine.plainwrite`, the writer shared with ``restore``):
regular files (sparse files stay sparse), directories, symlinks, FIFOs, device nodes and
sockets, hard links within the subtree, modes, owners, nanosecond timestamps,
``user.``/``trusted.``/``security.`` xattrs and POSIX ACLs.  The encryption context is
not copied: the copy is plaintext.

This module is the image side: a :class:`~cipherdump.engine.plainwrite.TreeSource` over
a :class:`~cipherdump.engine.views.image_keyed.KeyedNamespace`.  An object that cannot be decrypted
(no matching key, wrong key) or read is skipped and reported as an
:class:`ExtractProblem`; ciphertext is never written as if it were plaintext.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from cipherdump.engine.plainwrite import (
    ObjectMeta,
    WriteProblem,
    WriteResult,
    write_tree,
)
from cipherdump.engine.views.image import ImageNode, Problem
from cipherdump.engine.views.image_keyed import KeyedNamespace, Segment
from cipherdump.progress import OnProgress

__all__ = ["ExtractProblem", "ExtractResult", "ImageSource", "extract"]

# The writer's result types, under the names extract has always used.
ExtractProblem = WriteProblem
ExtractResult = WriteResult


class ImageSource:
    """An image's tree, with plaintext names and contents where a key matches."""

    def __init__(self, ns: KeyedNamespace) -> None:
        self.ns = ns

    def meta(self, node: ImageNode) -> ObjectMeta:
        inode = node.inode
        return ObjectMeta(
            ino=inode.ino,
            kind=inode.type.value,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size,
            links=inode.links,
            atime_ns=inode.atime_ns,
            mtime_ns=inode.mtime_ns,
            rdev=inode.rdev,
            encrypted=inode.is_encrypted,
            xattrs=tuple((x.index, x.name, x.value) for x in inode.xattrs),
        )

    def name(self, node: ImageNode) -> bytes:
        return node.name

    def iter_children(self, node: ImageNode) -> Iterator[ImageNode | Problem]:
        return self.ns.iter_children(node)

    def require_decryptable(self, node: ImageNode, where: str) -> None:
        self.ns.require_cipher(node.inode, where)

    def iter_segments(self, node: ImageNode) -> Iterator[Segment]:
        return self.ns.iter_segments(node.inode)

    def symlink_target(self, node: ImageNode) -> bytes:
        return self.ns.symlink_target(node.inode)


def extract(
    ns: KeyedNamespace,
    top: ImageNode,
    dest: str | bytes | os.PathLike[str],
    *,
    on_progress: OnProgress | None = None,
) -> ExtractResult:
    """Write the plaintext of ``top`` to ``dest``.

    A directory ``top`` fills ``dest`` (created if missing, merged if it exists; its
    own metadata goes onto ``dest``).  Any other ``top`` is written as ``dest``, or
    into ``dest`` under its name when ``dest`` is an existing directory.
    """
    return write_tree(ImageSource(ns), top, dest, on_progress=on_progress, shown_top=top.path)
