"""The whole recipe: named image configurations, built once with the kernel, with the
kernel's views with and without the key."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kernelfs.devices import extent_depth, htree_levels, make_image, mounted, read_uuid
from kernelfs.trees import DEFAULT_TREE, TreeInfo, TreeSpec, build_tree
from kernelfs.uapi import (
    FLAG_IV_INO_LBLK_32,
    FLAG_IV_INO_LBLK_64,
    PAD_4,
    PAD_8,
    PAD_16,
    PAD_32,
    KeyStatus,
    PolicySpec,
    add_key,
    get_nonce,
    get_policy_ex,
    key_descriptor,
    key_status,
    master_key_from_label,
    remove_key,
    set_policy,
)
from kernelfs.views import NodeView, snapshot_view

# --- the whole recipe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """Everything that determines a kernel-built image; hashable, so it keys the session cache."""

    policy: PolicySpec = field(default_factory=PolicySpec)
    tree: TreeSpec = DEFAULT_TREE
    block_size: int = 4096
    size_mib: int = 32
    inode_size: int | None = None
    stable_inodes: bool = False
    extra_features: tuple[str, ...] = ()
    key_label: str = "cipherdump kernelfs test key"
    encrypted_dir: bytes = b"enc"
    # An unencrypted tree beside the encrypted one (names and contents in plaintext, and on an
    # ``inline_data`` filesystem small files and directories that the kernel stores inline).
    plain_tree: TreeSpec | None = None
    plain_dir: bytes = b"plain"

    @property
    def features(self) -> tuple[str, ...]:
        feats = ["encrypt", *self.extra_features]
        if self.stable_inodes or self.policy.needs_stable_inodes:
            feats.append("stable_inodes")
        return tuple(feats)

    @property
    def label(self) -> str:
        parts = [f"{self.block_size // 1024}k", self.policy.label]
        if self.inode_size:
            parts.append(f"i{self.inode_size}")
        if self.tree.big_dir_entries:
            parts.append(f"big{self.tree.big_dir_entries}")
        parts += [f for f in self.extra_features if not f.startswith("^")]
        if self.plain_tree is not None:
            parts.append("plain")
        return "_".join(parts)


def _named_configs() -> dict[str, ImageConfig]:
    v2, v1 = PolicySpec(version=2), PolicySpec(version=1)
    named: dict[str, ImageConfig] = {}
    for bs in (4096, 1024):
        for pad, pad_flag in ((4, PAD_4), (8, PAD_8), (16, PAD_16), (32, PAD_32)):
            for pol in (v1, v2):
                spec = PolicySpec(version=pol.version, flags=pad_flag)
                named[f"{bs // 1024}k-v{pol.version}-pad{pad}"] = ImageConfig(
                    policy=spec, block_size=bs
                )
        for lblk, flag in (("lblk64", FLAG_IV_INO_LBLK_64), ("lblk32", FLAG_IV_INO_LBLK_32)):
            named[f"{bs // 1024}k-stable-v2-pad32-{lblk}"] = ImageConfig(
                policy=PolicySpec(flags=PAD_32 | flag), block_size=bs
            )
    named["4k-v2-pad32-du512"] = ImageConfig(policy=PolicySpec(log2_data_unit_size=9))
    named["4k-inode128-v2-pad32"] = ImageConfig(policy=v2, inode_size=128)
    named["4k-v2-pad32-bigdir"] = ImageConfig(policy=v2, tree=TreeSpec(big_dir_entries=10_000))
    named["1k-v2-pad32-bigdir"] = ImageConfig(
        policy=v2, block_size=1024, size_mib=64, tree=TreeSpec(big_dir_entries=10_000)
    )
    named["4k-inline-v2-pad32"] = ImageConfig(
        policy=v2, extra_features=("inline_data",), plain_tree=INLINE_PLAIN_TREE
    )
    return named


# The unencrypted tree of the inline_data configuration: files of 0, 1, 40 (in i_block) and 100
# bytes (i_block + system.data), small and empty directories (inline), 255-byte and non-UTF-8
# names in plaintext, and larger files, symlinks, specials, sparse and fragmented files beside them.
INLINE_PLAIN_TREE = TreeSpec(file_sizes=(0, 1, 40, 100, 4097))


# Ready-made configurations by name, for ``@pytest.mark.parametrize("kernel_image", [...],
# indirect=True)``.  Every padding x v1/v2 x 1 KiB/4 KiB, IV_INO_LBLK_64/32 on stable_inodes,
# 512-byte data units, 128-byte inodes (context in an xattr block), the big htree dirs, and an
# ``inline_data`` filesystem with an unencrypted tree of inline files and directories.
NAMED_CONFIGS: dict[str, ImageConfig] = _named_configs()


@dataclass(frozen=True)
class KernelImage:
    """A built, unmounted, clean image and the kernel's two views of its encrypted tree.

    Treat ``image`` as read-only: it is shared by every test of the session.  Views are keyed by
    paths relative to the encrypted directory (``config.encrypted_dir``; ``b"."`` is that
    directory itself).  ``outside_view`` covers the unencrypted rest of the filesystem.
    """

    config: ImageConfig
    image: Path
    master_key: bytes
    key_spec: bytes  # v1 descriptor (8 bytes) or v2 identifier (16 bytes)
    policy: bytes  # the ioctl policy struct as GET_POLICY_EX returns it
    dir_nonce: bytes
    uuid: uuid.UUID
    tree: TreeInfo
    with_key: dict[bytes, NodeView]
    no_key: dict[bytes, NodeView]
    outside_view: dict[bytes, NodeView]
    extent_depths: dict[bytes, int]  # fragmented file and big dir -> extent tree depth
    htree_levels: int | None  # big dir's htree indirect levels (None: no big dir)
    # What ``build_tree`` made in ``config.plain_dir`` (paths relative to it), if asked for.
    plain_tree: TreeInfo | None = None


def build_kernel_image(workdir: Path, config: ImageConfig = ImageConfig()) -> KernelImage:
    """Make an image per ``config``: encrypt one directory, fill it, and record both views.

    Steps: mkfs; mount; add the key; ``mkdir enc`` + SET_POLICY; ``build_tree``; an unencrypted
    file beside it (and ``config.plain_tree`` in ``config.plain_dir``); view with the key; remove
    the key; unmount; remount (no key) and view again; unmount; then read extent depths with
    debugfs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"{config.label}.img"
    extra: list[str] = []
    if config.tree.big_dir_entries:
        # The mkfs default inode ratio leaves far too few inodes for a big directory.
        extra += ["-N", str(config.tree.big_dir_entries + 1024)]
    make_image(image, config.size_mib, config.block_size, config.features, config.inode_size, extra)
    pol = config.policy
    master_key = master_key_from_label(config.key_label)
    enc_rel = config.encrypted_dir
    with mounted(image) as mnt:
        descriptor = key_descriptor(master_key) if pol.version == 1 else None
        key_spec = add_key(mnt, master_key, descriptor)
        enc = mnt / os.fsdecode(enc_rel)
        enc.mkdir()
        set_policy(
            enc,
            pol.version,
            pol.contents_mode,
            pol.filenames_mode,
            pol.flags,
            key_spec,
            pol.log2_data_unit_size,
        )
        policy = get_policy_ex(enc)
        dir_nonce = get_nonce(enc)
        tree = build_tree(enc, config.tree)
        (mnt / "plain.txt").write_bytes(b"not encrypted\n")
        plain_tree = None
        if config.plain_tree is not None:
            plain = mnt / os.fsdecode(config.plain_dir)
            plain.mkdir()
            plain_tree = build_tree(plain, config.plain_tree)
        with_key = snapshot_view(mnt, enc_rel)
        # The key is still in use by cached inodes; removal may report "files busy" (flag 1),
        # which is fine: the unmount below forgets the key regardless.
        remove_key(mnt, key_spec)
    with mounted(image) as mnt:
        if key_status(mnt, key_spec).status != KeyStatus.ABSENT:
            raise RuntimeError("key still present after remount")
        no_key = snapshot_view(mnt, enc_rel)
        outside_view = snapshot_view(mnt)
    depths: dict[bytes, int] = {}
    levels = None
    if tree.fragmented is not None:
        depths[tree.fragmented] = extent_depth(image, tree.inodes[tree.fragmented])
    if tree.big_dir is not None:
        depths[tree.big_dir] = extent_depth(image, tree.inodes[tree.big_dir])
        levels = htree_levels(image, tree.inodes[tree.big_dir])
    return KernelImage(
        config=config,
        image=image,
        master_key=master_key,
        key_spec=key_spec,
        policy=policy,
        dir_nonce=dir_nonce,
        uuid=read_uuid(image),
        tree=tree,
        with_key=with_key,
        no_key=no_key,
        outside_view=outside_view,
        extent_depths=depths,
        htree_levels=levels,
        plain_tree=plain_tree,
    )
