"""Build real fscrypt-encrypted ext4 images with the running kernel, and record what it shows.

This is the live test tier's harness.  cipherdump reads the on-disk format without keys; the only
trustworthy reference for "what the filesystem contains" is the kernel itself, so these helpers
make images with ``mkfs.ext4``, loop-mount them, encrypt directories through the fscrypt ioctls,
populate them, and record the kernel's view both with the key (plaintext names) and without it
(no-key names, ENOKEY on open).

Needs root, loop devices, ``mkfs.ext4``/``debugfs`` and a kernel with fscrypt
(``kernel_capabilities()`` probes all of it once).  Every loop device and mount point this module
creates is registered so that ``cleanup_leftovers()`` can undo it even after a crash in a test; the
context managers undo their own work in ``finally`` blocks.

Names and paths are ``bytes`` throughout: encrypted directories hold names that are not valid UTF-8.
"""

from __future__ import annotations

from kernelfs.devices import (
    Caps,
    cleanup_leftovers,
    debugfs_context,
    debugfs_is_inline,
    extent_depth,
    htree_index_limits,
    htree_levels,
    kernel_capabilities,
    live_resources,
    loop_device,
    make_image,
    mounted,
    read_uuid,
    require_kernel,
)
from kernelfs.recipes import (
    INLINE_PLAIN_TREE,
    NAMED_CONFIGS,
    ImageConfig,
    KernelImage,
    build_kernel_image,
)
from kernelfs.trees import (
    ATIME_NS,
    BAD_UTF8_NAME,
    DEFAULT_TREE,
    LONG_NAME,
    LONG_TARGET,
    MEDIUM_TARGET,
    MTIME_NS,
    SHORT_TARGET,
    UTF8_NAME,
    TreeInfo,
    TreeSpec,
    build_tree,
    expected_files,
    pattern,
)
from kernelfs.uapi import (
    FLAG_DIRECT_KEY,
    FLAG_IV_INO_LBLK_32,
    FLAG_IV_INO_LBLK_64,
    MODE_AES_256_CTS,
    MODE_AES_256_XTS,
    PAD_4,
    PAD_8,
    PAD_16,
    PAD_32,
    KeyStatus,
    PolicySpec,
    add_key,
    encode_policy,
    get_nonce,
    get_policy_ex,
    key_descriptor,
    key_status,
    master_key_from_label,
    remove_key,
    set_policy,
)
from kernelfs.views import NodeView, by_ino, snapshot_view

__all__ = [
    "ATIME_NS",
    "BAD_UTF8_NAME",
    "DEFAULT_TREE",
    "FLAG_DIRECT_KEY",
    "FLAG_IV_INO_LBLK_32",
    "FLAG_IV_INO_LBLK_64",
    "INLINE_PLAIN_TREE",
    "LONG_NAME",
    "LONG_TARGET",
    "MEDIUM_TARGET",
    "MODE_AES_256_CTS",
    "MODE_AES_256_XTS",
    "MTIME_NS",
    "NAMED_CONFIGS",
    "PAD_4",
    "PAD_8",
    "PAD_16",
    "PAD_32",
    "SHORT_TARGET",
    "UTF8_NAME",
    "Caps",
    "ImageConfig",
    "KernelImage",
    "KeyStatus",
    "NodeView",
    "PolicySpec",
    "TreeInfo",
    "TreeSpec",
    "add_key",
    "build_kernel_image",
    "build_tree",
    "by_ino",
    "cleanup_leftovers",
    "debugfs_context",
    "debugfs_is_inline",
    "encode_policy",
    "expected_files",
    "extent_depth",
    "get_nonce",
    "get_policy_ex",
    "htree_index_limits",
    "htree_levels",
    "kernel_capabilities",
    "key_descriptor",
    "key_status",
    "live_resources",
    "loop_device",
    "make_image",
    "master_key_from_label",
    "mounted",
    "pattern",
    "read_uuid",
    "remove_key",
    "require_kernel",
    "set_policy",
    "snapshot_view",
]
