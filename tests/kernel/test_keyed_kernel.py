"""Kernel round trips: trees written through the kernel with the key, read back by cipherdump
with the key after the key is removed and the filesystem unmounted.

Ground truth is the kernel's with-key view recorded before unmounting (``kernelfs``):
names, contents (SHA-256), symlink targets and metadata.  Three checks per image:

* the keyed view (names, targets, contents) equals that view and ``expected_files``;
* cipherdump's encryption of the plaintext equals the ciphertext on disk (contents by
  data unit, names, symlink targets), so the crypto is the kernel's, not just
  self-consistent;
* ``extract`` gives files equal to the view: names, contents, modes, owners,
  atime/mtime in ns, symlink targets, hard links, special files, user xattrs, and sparse
  files kept sparse.

Two sources of images: every named configuration of ``kernelfs`` (the full tree:
fragmented, sparse, unwritten, 1 MiB + 3, hard links, specials, xattrs, odd names),
and an enumeration of every policy the running kernel accepts, found by trying them:
versions 1 and 2, mode pairs (1,4) and (5,6), every padding, no flag / DIRECT_KEY /
IV_INO_LBLK_64 / IV_INO_LBLK_32, 512-byte data units, 1 KiB and 4 KiB blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kernelfs
from cipherdump.engine.extract import extract
from cipherdump.engine.views.image import ImageNode, Problem
from cipherdump.engine.views.image_keyed import KeyedNamespace
from cipherdump.errors import KeyProblem
from cipherdump.ext4 import Filesystem, Inode, open_filesystem
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from cipherdump.fscrypt.symlink import decode_encrypted_symlink
from conftest import KernelImageFactory

pytestmark = pytest.mark.kernel

FAST_CONFIGS = [
    "4k-v2-pad32",
    "4k-v1-pad4",
    "1k-v1-pad16",
    "1k-v2-pad8",
    "4k-stable-v2-pad32-lblk64",
    "1k-stable-v2-pad32-lblk32",
    "4k-v2-pad32-du512",
    "4k-inode128-v2-pad32",
]
SLOW_CONFIGS = [n for n in kernelfs.NAMED_CONFIGS if n not in FAST_CONFIGS]


# --- reading back ------------------------------------------------------------------------


def _keyed_walk(ns: KeyedNamespace, top: ImageNode) -> dict[bytes, ImageNode]:
    out: dict[bytes, ImageNode] = {}
    prefix = len(top.path) + 1
    for item in ns.walk(top, recursive=True):
        assert not isinstance(item, Problem), f"{item.path!r}: {item.error}"
        out[item.path[prefix:]] = item
    return out


def check_keyed_view(
    ns: KeyedNamespace, top: ImageNode, view: dict[bytes, kernelfs.NodeView]
) -> None:
    """Names, targets and contents through the keyed view equal the kernel's view."""
    nodes = _keyed_walk(ns, top)
    assert set(nodes) == set(view) - {b"."}
    for rel, node in nodes.items():
        want = view[rel]
        assert node.inode.ino == want.ino, rel
        if want.link_target is not None:
            assert ns.symlink_target(node.inode) == want.link_target, rel
        if want.sha256 is not None:
            plain = ns.read_plaintext(node.inode)
            assert hashlib.sha256(plain).hexdigest() == want.sha256, rel


def check_reencryption(ns: KeyedNamespace, top: ImageNode) -> int:
    """Encrypting the plaintext again gives exactly the bytes the kernel wrote."""
    checked = 0
    bs = ns.fs.block_size
    for item in [top, *_keyed_walk(ns, top).values()]:
        inode = item.inode
        if not inode.is_encrypted:
            continue
        cipher = ns.require_cipher(inode)
        if inode.is_dir:
            for entry in inode.entries():
                plain = ns.decrypt_entry_name(inode, entry)
                assert cipher.encrypt_name(plain) == entry.name
                checked += 1
        elif inode.is_symlink:
            ct = decode_encrypted_symlink(inode.symlink_storage(), inode.size, bs)
            assert cipher.encrypt_symlink_target(ns.symlink_target(inode)) == ct
            checked += 1
        elif inode.is_file:
            checked += _check_contents(ns, inode)
    return checked


def _check_contents(ns: KeyedNamespace, inode: Inode) -> int:
    cipher = ns.require_cipher(inode)
    bs = ns.fs.block_size
    du = cipher.data_unit_size
    plain = ns.read_plaintext(inode)
    units = 0
    for piece, ct in inode.iter_blocks():
        start = piece.lblk * bs
        if start >= inode.size:
            continue  # preallocated past EOF: no plaintext to compare with
        chunk = plain[start : start + len(ct)].ljust(len(ct), b"\0")
        assert cipher.encrypt_data_units(start // du, chunk) == ct, (inode.ino, piece)
        units += len(ct) // du
    return units


# --- extraction --------------------------------------------------------------------------


def check_extract(
    ns: KeyedNamespace,
    top: ImageNode,
    view: dict[bytes, kernelfs.NodeView],
    dest: Path,
    *,
    sparse: tuple[bytes, ...] = (),
) -> None:
    result = extract(ns, top, dest)
    assert not result.problems, result.problems
    # Reading the copy (for its SHA-256) moves atimes on a relatime filesystem, also of
    # hard links read under another name first: take them beforehand.
    atimes = _atimes(dest)
    got = kernelfs.snapshot_view(dest)
    assert set(got) == set(view)
    for rel, want in view.items():
        have = got[rel]
        assert have.mode == want.mode, rel
        assert (have.uid, have.gid) == (want.uid, want.gid), rel
        assert have.mtime_ns == want.mtime_ns, rel
        assert atimes[rel] == want.atime_ns, rel
        assert have.link_target == want.link_target, rel
        assert have.xattrs == want.xattrs, rel
        if want.kind == "reg":
            assert have.size == want.size and have.sha256 == want.sha256, rel
        if want.kind in ("chr", "blk"):
            assert have.rdev == want.rdev, rel
    assert _link_groups(got) == _link_groups(view)
    for rel in sparse:
        # Holes stay holes (the copy may sit on a filesystem with larger blocks, so
        # only "some of it is not allocated" holds everywhere); all-unwritten: nothing.
        have = got[rel]
        assert have.blocks * 512 < have.size, (rel, have.blocks, have.size)
        if view[rel].sha256 == hashlib.sha256(bytes(have.size)).hexdigest():
            assert have.blocks == 0, rel


def _atimes(root: Path) -> dict[bytes, int]:
    base = os.fsencode(root)
    out = {b".": os.lstat(base).st_atime_ns}
    stack = [b""]
    while stack:
        rel = stack.pop()
        names = sorted(os.listdir(os.path.join(base, rel) if rel else base))
        for name in names:
            child = os.path.join(rel, name) if rel else name
            st = os.lstat(os.path.join(base, child))
            out[child] = st.st_atime_ns
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
    return out


def _link_groups(view: dict[bytes, kernelfs.NodeView]) -> set[frozenset[bytes]]:
    return {
        frozenset(n.path for n in nodes)
        for nodes in kernelfs.by_ino(view).values()
        if nodes[0].kind != "dir"
    }


# --- named configurations: the full tree -------------------------------------------------


def _open(img: kernelfs.KernelImage) -> tuple[Filesystem, KeyedNamespace, ImageNode]:
    fs = open_filesystem(str(img.image))
    ns = KeyedNamespace(fs, KeyRing([MasterKey(img.master_key)]))
    return fs, ns, ns.resolve(b"/" + img.config.encrypted_dir)


def _run_named(name: str, kernel_images: KernelImageFactory, tmp_path: Path) -> None:
    img = kernel_images(kernelfs.NAMED_CONFIGS[name])
    fs, ns, top = _open(img)
    with fs:
        check_keyed_view(ns, top, img.with_key)
        expected = kernelfs.expected_files(img.config.tree, img.config.block_size)
        for rel, data in expected.items():
            assert ns.read_plaintext(ns.resolve(top.path + b"/" + rel).inode) == data, rel
        assert check_reencryption(ns, top) > 0
        sparse = tuple(p for p in (b"sparse.bin", b"falloc-only.bin") if p in expected)
        check_extract(ns, top, img.with_key, tmp_path / "out", sparse=sparse)


@pytest.mark.parametrize("name", FAST_CONFIGS)
def test_named_config_round_trip(
    name: str, kernel_images: KernelImageFactory, tmp_path: Path
) -> None:
    _run_named(name, kernel_images, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CONFIGS)
def test_named_config_round_trip_slow(
    name: str, kernel_images: KernelImageFactory, tmp_path: Path
) -> None:
    _run_named(name, kernel_images, tmp_path)


def test_wrong_key_is_an_identifier_mismatch(
    kernel_images: KernelImageFactory, tmp_path: Path
) -> None:
    img = kernel_images(kernelfs.NAMED_CONFIGS["4k-v2-pad32"])
    with open_filesystem(str(img.image)) as fs:
        ns = KeyedNamespace(fs, KeyRing([MasterKey(b"\x01" * 64)]))
        top = ns.resolve(b"/enc")
        assert not ns.names_decrypted(top.inode)
        with pytest.raises(KeyProblem, match="identifier mismatch"):
            extract(ns, top, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        # Below an unencrypted top, the encrypted directory is one skipped object.
        result = extract(ns, ns.root_node(), tmp_path / "all")
        assert [p.path for p in result.problems] == [b"enc"]
        assert "identifier mismatch" in str(result.problems[0].error)
        assert not (tmp_path / "all" / "enc").exists()
        assert (tmp_path / "all" / "plain.txt").read_bytes() == b"not encrypted\n"


# --- every policy the kernel accepts -----------------------------------------------------

PADS = (kernelfs.PAD_4, kernelfs.PAD_8, kernelfs.PAD_16, kernelfs.PAD_32)
FLAGS = (0, kernelfs.FLAG_DIRECT_KEY, kernelfs.FLAG_IV_INO_LBLK_64, kernelfs.FLAG_IV_INO_LBLK_32)
MODE_PAIRS = ((1, 4), (5, 6))
KEY = kernelfs.master_key_from_label("cipherdump keyed policy enumeration")


@dataclass(frozen=True)
class Combo:
    version: int
    modes: tuple[int, int]
    flags: int
    log2_du: int

    @property
    def label(self) -> str:
        pad = 4 << (self.flags & 3)
        extra = {0: "", 4: "-direct", 8: "-lblk64", 16: "-lblk32"}[self.flags & ~3]
        du = f"-du{1 << self.log2_du}" if self.log2_du else ""
        return f"v{self.version}-m{self.modes[0]}{self.modes[1]}-pad{pad}{extra}{du}"


def combos() -> list[Combo]:
    out = []
    for version in (1, 2):
        for modes in MODE_PAIRS:
            for pad in PADS:
                for flag in FLAGS:
                    for log2_du in (0, 9) if version == 2 else (0,):
                        out.append(Combo(version, modes, pad | flag, log2_du))
    return out


@dataclass
class PolicyImage:
    block_size: int
    image: Path
    accepted: dict[str, Combo]
    refused: dict[str, str]  # label -> errno name
    views: dict[str, dict[bytes, kernelfs.NodeView]]


def _populate(d: Path, contents: bool, bs: int) -> None:
    """Names of 1, 100 and 255 bytes, symlinks (fast, slow, longest for 1 KiB), a FIFO, a
    subdirectory and, where the contents mode works, files (sparse, hard-linked)."""

    def node(name: str, data: bytes) -> None:
        if contents:
            (d / name).write_bytes(data)
        else:
            os.mkfifo(d / name)

    node("a", b"x")
    node("n" * 100, kernelfs.pattern(bs + 1, 1))
    node("L" * 255, kernelfs.pattern(3, 2))
    os.symlink("a", d / "link-fast")
    os.symlink("t" * 200, d / "link-200")
    os.symlink("/" + "y" * 1020, d / "link-1021")
    os.mkfifo(d / "fifo")
    (d / "sub").mkdir()
    node("sub/inner", kernelfs.pattern(5000, 3))
    if contents:
        with open(d / "sparse", "wb") as f:
            f.seek(3 * bs + 7)
            f.write(kernelfs.pattern(bs, 4))
            f.truncate(64 * bs)
        os.link(d / "a", d / "sub/a-link")
    os.utime(d / "sub", ns=(kernelfs.ATIME_NS, kernelfs.MTIME_NS))


def _build_policy_image(root: Path, bs: int) -> PolicyImage:
    image = kernelfs.make_image(root / f"policies-{bs}.img", 48, bs, ("encrypt", "stable_inodes"))
    accepted: dict[str, Combo] = {}
    refused: dict[str, str] = {}
    views: dict[str, dict[bytes, kernelfs.NodeView]] = {}
    with kernelfs.mounted(image) as mnt:
        identifier = kernelfs.add_key(mnt, KEY)
        descriptor = kernelfs.add_key(mnt, KEY, kernelfs.key_descriptor(KEY))
        for combo in combos():
            d = mnt / combo.label
            d.mkdir()
            spec = identifier if combo.version == 2 else descriptor
            try:
                kernelfs.set_policy(
                    d, combo.version, *combo.modes, combo.flags, spec, combo.log2_du
                )
            except OSError as exc:
                refused[combo.label] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                d.rmdir()
                continue
            # ESSIV (mode 5) is not built into the test kernel: regular files get ENOPKG,
            # so that policy is checked on names, symlinks and FIFOs only.
            try:
                _populate(d, combo.modes[0] == 1, bs)
            except OSError as exc:
                refused[combo.label] = "populate: " + errno.errorcode.get(exc.errno or 0, "?")
                continue
            accepted[combo.label] = combo
        os.sync()
        for label in accepted:
            views[label] = kernelfs.snapshot_view(mnt, label)
        kernelfs.remove_key(mnt, identifier)
        kernelfs.remove_key(mnt, descriptor)
    return PolicyImage(bs, image, accepted, refused, views)


@pytest.fixture(scope="module", params=[4096, 1024], ids=["4k", "1k"])
def policy_image(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyImage]:
    kernelfs.require_kernel()
    yield _build_policy_image(tmp_path_factory.mktemp("policies"), request.param)


def test_policy_enumeration_is_what_the_kernel_documents(policy_image: PolicyImage) -> None:
    acc = policy_image.accepted
    # Every padding of v1 and v2 AES-256-XTS/CTS, and AES-128-CBC/CTS names.
    for v in (1, 2):
        for pad in (4, 8, 16, 32):
            assert f"v{v}-m14-pad{pad}" in acc
            assert f"v{v}-m56-pad{pad}" in acc
            assert f"v2-m14-pad{pad}-lblk64" in acc
            assert f"v2-m14-pad{pad}-lblk32" in acc
            assert f"v{v}-m14-pad{pad}-direct" not in acc  # DIRECT_KEY needs Adiantum
            assert f"v1-m14-pad{pad}-lblk64" not in acc
    assert "v2-m14-pad32-du512" in acc
    assert "v2-m14-pad32-lblk32-du512" not in acc  # LBLK_32 refuses sub-block units
    assert not any("m56" in k and "lblk" in k for k in acc)  # LBLK needs XTS contents


def test_policy_round_trip(policy_image: PolicyImage, tmp_path: Path) -> None:
    with open_filesystem(str(policy_image.image)) as fs:
        ns = KeyedNamespace(fs, KeyRing([MasterKey(KEY)]))
        units = 0
        for label in policy_image.accepted:
            top = ns.resolve(b"/" + label.encode())
            view = policy_image.views[label]
            check_keyed_view(ns, top, view)
            units += check_reencryption(ns, top)
            sparse = (b"sparse",) if b"sparse" in view else ()
            check_extract(ns, top, view, tmp_path / label, sparse=sparse)
        assert units > 0
        assert not ns.missing


@pytest.mark.parametrize("name", ["4k-v2-pad32"])
def test_extract_refuses_to_follow_symlinks_in_dest(
    name: str, kernel_images: KernelImageFactory, tmp_path: Path
) -> None:
    """A symlink already in DEST where a directory goes is not followed out of DEST."""
    img = kernel_images(kernelfs.NAMED_CONFIGS[name])
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "dir1")
    fs, ns, top = _open(img)
    with fs:
        result = extract(ns, top, dest)
    assert os.listdir(outside) == []
    assert [p.path for p in result.problems] == [b"dir1"]
    assert stat.S_ISLNK(os.lstat(dest / "dir1").st_mode)
    assert (dest / "a").read_bytes() == kernelfs.pattern(0, 0)
