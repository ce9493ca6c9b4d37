"""The offline ext4 writer: adds inodes, blocks and directories to an unmounted image.

Owns: allocation (bitmaps, descriptors, counts), extent trees, directory blocks (linear
and htree, over raw name bytes), xattrs in the inode or a block, symlinks, special files
and every metadata_csum checksum.  Never needs a key: encrypted names, contents, symlink
targets and contexts are bytes copied as stored.  Must not import ``cipherdump.fscrypt``
or ``cipherdump.repo``.
"""

from cipherdump.ext4.build.directory import HashParams, NewEntry, layout_directory
from cipherdump.ext4.build.fs_source import FilesystemTree, inode_spec
from cipherdump.ext4.build.image import ImageWriter, NoSpaceError
from cipherdump.ext4.build.node import NewInode, NewRun
from cipherdump.ext4.build.populate import (
    Plan,
    PopulateStats,
    Populator,
    SrcNode,
    TreeSource,
    plan_tree,
)

__all__ = [
    "FilesystemTree",
    "HashParams",
    "ImageWriter",
    "NewEntry",
    "NewInode",
    "NewRun",
    "NoSpaceError",
    "Plan",
    "PopulateStats",
    "Populator",
    "SrcNode",
    "TreeSource",
    "inode_spec",
    "layout_directory",
    "plan_tree",
]
