"""Lazy, read-only views of an ext4 filesystem on a byte source.

Owns: opening a filesystem (superblock, group descriptors, feature checks), inodes and
their metadata, block maps as runs with explicit holes, directories as raw name bytes,
extended attributes; and, in ``cipherdump.ext4.build``, the offline writer that adds
trees to an unmounted image.  Knows nothing of fscrypt beyond "this inode has the
encrypt flag and a context xattr"; must not import ``cipherdump.fscrypt``, ``cipherdump.repo`` or
anything above.
"""

from cipherdump.ext4.fs import Filesystem, open_filesystem
from cipherdump.ext4.inode import Inode, InodeType, Run

__all__ = ["Filesystem", "Inode", "InodeType", "Run", "open_filesystem"]
