"""Key-less restores and clones checked by a second kernel: Debian's Linux 6.1 under QEMU.

The host kernel has no casefolding, ESSIV or Adiantum, so for those images the only
kernel that can say whether ``clone`` and ``restore --to-image`` wrote them right is
one booted for the purpose (``tests/support/vm61``).  One guest boot checks, for every image of
``kernel-vectors-6.1`` and two casefolded encrypted directories that guest made with
index nodes (4 KiB and 1 KiB blocks), the original, its clone and its restore:

* listed without the key (no-key names) and with it, every file read in full (SHA-256),
  every symlink read; modes, sizes, link counts and hard-link groups;
* looked up by other spellings (case-insensitively in casefolded directories);
* and the guest's dmesg carries no ext4 warning or error.

Copies must equal their original in the same guest, and originals what the kernel that
wrote them recorded (the vectors' manifests).

One oracle: for casefolded encrypted directories with index nodes, e2fsck 1.47 and the
kernel disagree on the index-node limit (e2fsck calls the kernel's own cf1k corrupt).
The kernel is the reference: these tests never ask e2fsck about such directories.

HCTR2 is checked without its key only: Debian builds no HCTR2 module
(CONFIG_CRYPTO_HCTR2 is off), so this guest cannot decrypt it.  The host kernel tier
covers HCTR2 where the host has it; the no-key listing and the index are still checked.

The first run downloads the kernel package (about 70 MB) and makes the two big
directories in an extra boot; both are cached (``vm61.cache_dir()``).  Under TCG (no
usable KVM) a boot takes about 15 s plus the checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kernelfs
import vm61
from cipherdump.cli.main import cli
from cipherdump.ondisk.dirent import dx_node_limit, dx_root_limit

pytestmark = [pytest.mark.kernel, pytest.mark.kernel61vm]

VECTORS = ["cf1k", "cf4k", "essiv", "adiantum", "hctr2"]
NO_KEY_ONLY = {"hctr2": "Debian's Linux 6.1 has no HCTR2 (CONFIG_CRYPTO_HCTR2 is off)"}


@dataclass(frozen=True)
class BigDir:
    """A casefolded encrypted directory the guest kernel fills with hard links."""

    name: str
    block_size: int
    size_mb: int
    count: int
    name_len: int


# 255-byte names: 15 to a 4 KiB leaf and 3 to a 1 KiB one, so that even the copies,
# whose leaves are full, need index nodes (more than 507 and 123 leaves).
BIGS = [BigDir("big4k", 4096, 32, 8000, 255), BigDir("big1k", 1024, 16, 1000, 255)]
BIG_KEY = hashlib.sha512(b"cipherdump vm61 big directories").digest()
SOURCES = VECTORS + [b.name for b in BIGS]
KINDS = ["orig", "clone", "restore"]
CASEFOLD_INDEXED = ["cf1k", "big1k", "big4k"]  # casefolded encrypted dirs with index nodes


def _big_entry_name(i: int, length: int) -> bytes:
    """The name fsh.c's mkbig gives link ``i``."""
    name = bytearray(b"Entry-%05d-" % i)
    while len(name) < min(length, 255):
        name.append(b"MixedCase"[len(name) % 9])
    return bytes(name)


# --- preparing the guest's work ------------------------------------------------------------


def _require_vm() -> None:
    reason = vm61.missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Linux 6.1 guest tier must run)", pytrace=False)
    pytest.skip(reason)


def _manifest(shared: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared / "kernel-vectors-6.1" / f"{name}.json").read_text())
    return data


def _keys(manifest: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for d in manifest["dirs"]:
        spec = d.get("key_spec")
        if not spec:
            continue
        line = (
            f"v1 {spec['hex']} {d['master_key_hex']}"
            if spec["type"] == "descriptor"
            else f"v2 {d['master_key_hex']}"
        )
        if line not in lines:
            lines.append(line)
    return lines


def _name(lookup: dict[str, Any]) -> bytes:
    """A manifest lookup's name (as hex where it is not UTF-8)."""
    return bytes.fromhex(lookup["name_hex"]) if "name_hex" in lookup else lookup["name"].encode()


def _lookups(manifest: dict[str, Any]) -> list[bytes]:
    paths = [d["path"].encode() + b"/" + _name(lk) for d in manifest["dirs"]
             for lk in d.get("lookups", [])]  # fmt: skip
    for big in manifest.get("big_dirs", {}):
        spellings = (b"Entry-0000.dat", b"entry-0123.DAT", b"ENTRY-2999.DAT", b"Entry-3000.dat")
        paths += [big.encode() + b"/" + n for n in spellings]
    return paths


def _big_lookups(big: BigDir) -> list[bytes]:
    out = [b"cf_enc/Readme.TXT", b"cf_enc/README.txt", b"cf_enc/big/TARGET.bin"]
    for i in (0, 17, big.count // 2, big.count - 1, big.count):
        name = _big_entry_name(i, big.name_len)
        out += [b"cf_enc/Big/" + name, b"cf_enc/Big/" + name.upper(), b"cf_enc/BIG/" + name.lower()]
    return out


def _unzstd(packed: Path, out: Path) -> Path:
    subprocess.run(["zstd", "-q", "-d", "-f", str(packed), "-o", str(out)], check=True)
    return out


def _make_bigs(kernel: vm61.Kernel, fsh: Path, work: Path) -> dict[str, Path]:
    """The big directories, made by the guest kernel (one boot), or from the cache."""
    key = hashlib.sha256(
        kernel.package.encode()
        + (vm61.HERE / "fsh.c").read_bytes()
        + (vm61.HERE / "init.sh").read_bytes()
        + repr(BIGS).encode()
    ).hexdigest()[:16]
    cached = vm61.cache_dir() / "vm61-bigdirs" / key
    out = {b.name: work / f"{b.name}.img" for b in BIGS}
    if all((cached / f"{n}.img").exists() for n in out):
        for n, p in out.items():
            subprocess.run(["cp", "--sparse=always", str(cached / f"{n}.img"), str(p)], check=True)
        return out
    jobs = ""
    for b in BIGS:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", str(b.block_size), "-N", "256",
             "-O", "encrypt,casefold", str(out[b.name]), f"{b.size_mb}M"],
            check=True, capture_output=True,
        )  # fmt: skip
        jobs += f"mkbig {b.name} {b.name} {BIG_KEY.hex()} {b.count} {b.name_len}\n"
    initrd = vm61.build_initramfs(kernel, fsh, jobs, {}, work / "initrd-mkbig")
    run = vm61.boot(kernel, initrd, [(n, p, False) for n, p in out.items()], work / "mkbig")
    for b in BIGS:
        report = run.files.get(f"{b.name}.mkbig", b"").decode(errors="replace")
        assert "rc=0" in report, (b.name, report, run.files.get(f"{b.name}.error"))
    assert not _ext4_complaints(run.files["dmesg.txt"].decode(errors="replace"))
    cached.mkdir(parents=True, exist_ok=True)
    for n, p in out.items():
        subprocess.run(["cp", "--sparse=always", str(p), str(cached / f"{n}.img")], check=True)
    return out


def _copy(kind: str, src: Path, out: Path, work: Path) -> None:
    """``clone`` or ``backup`` + ``restore --to-image`` through the CLI."""
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
    runner = CliRunner()
    if kind == "clone":
        steps = [["clone", str(src), str(out)]]
    else:
        repo = work / f"repo-{src.stem}"
        steps = [
            ["init", "-r", str(repo)],
            ["backup", "-r", str(repo), str(src)],
            ["restore", "-r", str(repo), "latest", "--to-image", str(out)],
        ]
    for args in steps:
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, (args, result.output)


def _ext4_complaints(dmesg: str) -> list[str]:
    return [
        line
        for line in dmesg.splitlines()
        if "EXT4-fs" in line and re.search(r"warning|error|corrupt", line, re.I)
    ]


@dataclass
class GuestRun:
    boot: vm61.Boot
    images: dict[str, Path]  # label "<source>-<kind>" -> image file
    manifests: dict[str, dict[str, Any]]
    big_inodes: dict[str, int]  # source -> inode of cf_enc/Big

    def text(self, name: str) -> str:
        return self.boot.files.get(name, b"").decode(errors="replace")


@pytest.fixture(scope="session")
def guest(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestRun]:
    _require_vm()
    work = tmp_path_factory.mktemp("vm61")
    kernel = vm61.prepare_kernel()
    fsh = vm61.build_fsh(work / "fsh")
    originals = {
        n: _unzstd(shared_testdata / "kernel-vectors-6.1" / f"{n}.img.zst", work / f"{n}.img")
        for n in VECTORS
    }
    originals.update(_make_bigs(kernel, fsh, work))
    manifests = {n: _manifest(shared_testdata, n) for n in VECTORS}
    images: dict[str, Path] = {}
    files: dict[str, bytes] = {}
    jobs = ""
    for src, image in originals.items():
        images[f"{src}-orig"] = image
        for kind in KINDS[1:]:
            out = work / f"{src}-{kind}.img"
            _copy(kind, image, out, work)
            images[f"{src}-{kind}"] = out
        if src in manifests:
            keys = [] if src in NO_KEY_ONLY else _keys(manifests[src])
            lookups = _lookups(manifests[src])
        else:
            keys = [f"v2 {BIG_KEY.hex()}"]
            lookups = _big_lookups(next(b for b in BIGS if b.name == src))
        files[f"{src}.keys"] = "".join(k + "\n" for k in keys).encode()
        files[f"{src}.lookups"] = "".join(vm61.escape(p) + "\n" for p in lookups).encode()
        for kind in KINDS:
            jobs += f"check {src}-{kind} {src}-{kind} {src}\n"
    initrd = vm61.build_initramfs(kernel, fsh, jobs, files, work / "initrd-check")
    boot = vm61.boot(kernel, initrd, [(label, p, True) for label, p in images.items()], work)
    print(f"vm61: Linux 6.1 guest ({boot.accel}) ran {len(images)} checks in {boot.seconds:.0f} s")
    big_inodes = {"cf1k": 38, "cf4k": 38}  # cf_enc/Big, as the manifests say
    for b in BIGS:
        big_inodes[b.name] = _inode_of_big(images[f"{b.name}-orig"])
    yield GuestRun(boot, images, manifests, big_inodes)


def _inode_of_big(image: Path) -> int:
    """The one directory under cf_enc with more than a thousand entries."""
    from cipherdump.ext4 import open_filesystem

    with open_filesystem(str(image)) as fs:
        root = {e.name: e.ino for e in fs.inode(2).entries()}
        enc = fs.inode(root[b"cf_enc"])
        for e in enc.entries():
            sub = fs.inode(e.ino)
            if sub.is_dir and len(sub.entries()) > 1000:
                return e.ino
    raise AssertionError(f"{image}: no big directory")


# --- reading what the guest wrote ------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    kind: str
    mode: str
    nlink: int
    size: int
    ino: int
    data: str


def _walk(text: str) -> dict[bytes, Obj]:
    out: dict[bytes, Obj] = {}
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) == 3:  # opendir/readdir/lstat failed
            out[b"!" + f[0].encode() + b":" + vm61.unescape(f[2])] = Obj(f[0], "", 0, 0, 0, f[1])
        else:
            kind, mode, nlink, size, ino, data, path = f
            out[vm61.unescape(path)] = Obj(kind, mode, int(nlink), int(size), int(ino), data)
    return out


def _comparable(walk: dict[bytes, Obj]) -> dict[bytes, tuple[object, ...]]:
    """Path -> what must be equal in a copy: not inode numbers (a copy may renumber) but
    which paths share an inode; not directory sizes (a copy fills its blocks its own way)."""
    first: dict[int, bytes] = {}
    for path in sorted(walk):
        first.setdefault(walk[path].ino, path)
    return {
        p: (o.kind, o.mode, o.nlink, 0 if o.kind == "dir" else o.size, o.data,
            first[o.ino] if o.kind not in ("dir", "") else p)
        for p, o in walk.items()
    }  # fmt: skip


def _lookups_resolved(text: str, walk: dict[bytes, Obj]) -> list[tuple[bytes, str]]:
    """(path looked up, the first path of the inode found, or the error)."""
    by_ino: dict[int, bytes] = {}
    for path in sorted(walk):
        by_ino.setdefault(walk[path].ino, path)
    out = []
    for line in text.splitlines():
        result, path = line.split("\t")
        found = (
            result
            if result.startswith("ERR")
            else by_ino.get(int(result), b"?").decode(errors="backslashreplace")
        )
        out.append((vm61.unescape(path), found))
    return out


# --- the tests --------------------------------------------------------------------------------


def test_guest_booted_and_loaded_its_modules(guest: GuestRun) -> None:
    assert not guest.text("insmod.txt"), guest.text("insmod.txt")
    dmesg = guest.text("dmesg.txt")
    assert "Linux version 6.1." in dmesg
    for label in guest.images:
        assert f"cipherdump-vm: end {label}" in dmesg, label
        assert not guest.text(f"{label}.error"), (label, guest.text(f"{label}.error"))


def _segment(dmesg: str, label: str) -> str:
    start = dmesg.index(f"cipherdump-vm: begin {label} ")
    return dmesg[start : dmesg.index(f"cipherdump-vm: end {label}", start)]


@pytest.mark.parametrize("label", [f"{s}-{k}" for s in SOURCES for k in KINDS])
def test_kernel_finds_nothing_wrong(guest: GuestRun, label: str) -> None:
    """Mounting, listing, looking up and reading gave no ext4 warning or error (dx_probe
    reports an index limit it does not expect as 'dx entry: limit ... != node limit')."""
    complaints = _ext4_complaints(_segment(guest.text("dmesg.txt"), label))
    assert not complaints, complaints
    for name in (f"{label}.nokey.walk", f"{label}.key.walk"):
        errors = [ln for ln in guest.text(name).splitlines() if ln.split("\t")[0] in
                  ("opendir", "readdir", "lstat")]  # fmt: skip
        assert not errors, (name, errors[:5])


@pytest.mark.parametrize("kind", KINDS[1:])
@pytest.mark.parametrize("source", SOURCES)
def test_copy_equals_original_in_the_kernel(guest: GuestRun, source: str, kind: str) -> None:
    passes = ["nokey"] if source in NO_KEY_ONLY else ["nokey", "key"]
    for p in passes:
        want_walk = _walk(guest.text(f"{source}-orig.{p}.walk"))
        got_walk = _walk(guest.text(f"{source}-{kind}.{p}.walk"))
        assert want_walk, (source, p, "the original listed nothing")
        want, got = _comparable(want_walk), _comparable(got_walk)
        assert set(got) == set(want), (p, sorted(set(got) ^ set(want))[:5])
        diff = [path for path in want if want[path] != got[path]]
        assert not diff, (p, [(path, want[path], got[path]) for path in diff[:3]])
        want_lk = _lookups_resolved(guest.text(f"{source}-orig.{p}.lookups"), want_walk)
        got_lk = _lookups_resolved(guest.text(f"{source}-{kind}.{p}.lookups"), got_walk)
        assert want_lk and got_lk == want_lk, p


@pytest.mark.parametrize("source", VECTORS)
def test_original_as_its_kernel_recorded(guest: GuestRun, source: str) -> None:
    """The harness sees what the kernel that wrote the vector saw: its lookups (other
    spellings, case-insensitive in casefolded dirs), inode numbers and contents."""
    manifest = guest.manifests[source]
    for p in ["nokey"] if source in NO_KEY_ONLY else ["nokey", "key"]:
        got = dict(
            line.split("\t")[::-1] for line in guest.text(f"{source}-orig.{p}.lookups").splitlines()
        )
        for d in manifest["dirs"]:
            for lk in d.get("lookups", []):
                want = lk["with_key" if p == "key" else "without_key"]
                path = vm61.escape(d["path"].encode() + b"/" + _name(lk))
                assert got[path] == str(want), (p, path)
    nokey = _walk(guest.text(f"{source}-orig.nokey.walk"))
    want_nokey = {
        bytes.fromhex(e["nokey_path_hex"]) if "nokey_path_hex" in e else e["nokey_path"].encode()
        for e in manifest["entries"]
    }
    for big, rows in manifest.get("big_dirs", {}).items():
        parent = next(e for e in manifest["entries"] if e["path"] == big)["nokey_path"].encode()
        column = rows["columns"].index("nokey_name")
        want_nokey |= {parent + b"/" + row[column].encode() for row in rows["entries"]}
    assert {p for p in nokey if not p.startswith(b"lost+found/")} == want_nokey
    if source in NO_KEY_ONLY:
        return
    walk = _walk(guest.text(f"{source}-orig.key.walk"))
    files = [e for e in manifest["entries"] if e["type"] == "file"]
    assert files
    for e in files:
        path = bytes.fromhex(e["path_hex"]) if "path_hex" in e else e["path"].encode()
        assert (walk[path].ino, walk[path].data) == (e["inode"], e["sha256"]), path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", CASEFOLD_INDEXED)
def test_casefold_index_nodes_have_the_kernel_limits(
    guest: GuestRun, source: str, kind: str
) -> None:
    """The big casefolded encrypted directories have index nodes in the originals and in
    every copy, all with the limits Linux computes (root: '.' and '..' without a hash;
    node: a fake dirent with the 8-byte hash), as debugfs reads them."""
    image = guest.images[f"{source}-{kind}"]
    bs = next((b.block_size for b in BIGS if b.name == source), 1024)
    limits = kernelfs.htree_index_limits(image, guest.big_inodes[source])
    assert len(limits) >= 2, limits  # the root and at least one index node
    assert limits[0][1] == dx_root_limit(bs, csum=True)
    assert {lim for _count, lim in limits[1:]} == {dx_node_limit(bs, csum=True, hashed=True)}
    # What the kernel itself wrote, independently of cipherdump's formula.
    assert {lim for _c, lim in limits} == {4096: {507, 509}, 1024: {123, 125}}[bs]


def test_big_directories_were_looked_up_case_insensitively(guest: GuestRun) -> None:
    for b in BIGS:
        walk = _walk(guest.text(f"{b.name}-orig.key.walk"))
        got = _lookups_resolved(guest.text(f"{b.name}-orig.key.lookups"), walk)
        found = {path: res for path, res in got}
        name = _big_entry_name(17, b.name_len)
        for spelling in (name, name.upper()):
            assert (
                found[b"cf_enc/Big/" + spelling]
                == "cf_enc/Big/" + _big_entry_name(0, b.name_len).decode()
            ), spelling
        assert found[b"cf_enc/Big/" + _big_entry_name(b.count, b.name_len)] == "ERR 2"
        assert found[b"cf_enc/README.txt"] == "cf_enc/Readme.TXT"
