"""``dump``: tar archives of snapshots, read back by GNU tar and Python's tarfile.

The oracle is the kernel: the plaintext archive of a key-less backup, dumped with the
owner's key, must hold what the kernel showed with the key (contents, modes, owners,
nanosecond mtimes, user xattrs, hard links, devices and FIFOs) and the sparse files'
data ranges as the kernel reports them with SEEK_DATA/SEEK_HOLE; GNU tar extracts it to
the same tree.  ACLs go through an unencrypted image made by the kernel, dumped without
a key.  Without a key an encrypted tree is refused unless --ciphertext is given.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import cipherdump
import kernelfs
from cipherdump.cli.main import cli

pytestmark = pytest.mark.kernel

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV)


def backed_up(image: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    done = run("backup", "-r", str(repo), str(image))
    assert done.exit_code == 0, done.output
    return repo


def key_file(ki: kernelfs.KernelImage, tmp_path: Path) -> Path:
    key = tmp_path / "master.key"
    key.write_bytes(ki.master_key)
    return key


def data_map(path: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the data of a file, as the kernel reports it."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out


def kernel_maps(
    ki: kernelfs.KernelImage, tmp_path: Path, files: list[bytes]
) -> dict[bytes, list[tuple[int, int]]]:
    copy = tmp_path / "original-copy.img"
    shutil.copyfile(ki.image, copy)
    with kernelfs.mounted(copy) as mnt:
        kernelfs.add_key(mnt, ki.master_key)
        enc = os.path.join(os.fsencode(mnt), ki.config.encrypted_dir)
        return {f: data_map(os.path.join(enc, f)) for f in files}


def pax_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * 1_000_000_000
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def check_members(
    tf: tarfile.TarFile, prefix: bytes, want: dict[bytes, kernelfs.NodeView]
) -> dict[bytes, tarfile.TarInfo]:
    """Every kernel object is a member with its metadata and contents."""
    members = {raw(m.name).rstrip(b"/"): m for m in tf.getmembers()}
    first_of: dict[int, bytes] = {}
    for rel, node in sorted(want.items()):
        name = prefix if rel == b"." else prefix + b"/" + rel
        if node.kind == "sock":
            assert name not in members, name
            continue
        m = members[name]
        assert m.mode == stat.S_IMODE(node.mode), name
        assert (m.uid, m.gid) == (node.uid, node.gid), name
        assert pax_ns(m) == node.mtime_ns, name
        xattrs = {
            raw(k[len("SCHILY.xattr.") :]): raw(v)
            for k, v in m.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        assert xattrs == dict(node.xattrs), name
        if m.islnk():
            assert node.nlink > 1 and first_of[node.ino] == raw(m.linkname), name
            continue
        if node.nlink > 1 and node.kind != "dir":
            first_of[node.ino] = name
        if node.kind == "reg":
            assert m.isreg() and m.size == node.size, name
            f = tf.extractfile(m)
            assert f is not None
            assert hashlib.sha256(f.read()).hexdigest() == node.sha256, name
        elif node.kind == "lnk":
            assert m.issym() and raw(m.linkname) == node.link_target, name
        elif node.kind == "dir":
            assert m.isdir(), name
        elif node.kind == "fifo":
            assert m.isfifo(), name
        else:
            assert m.ischr() if node.kind == "chr" else m.isblk(), name
            assert (m.devmajor, m.devminor) == (os.major(node.rdev), os.minor(node.rdev)), name
    names = {
        prefix if r == b"." else prefix + b"/" + r for r, n in want.items() if n.kind != "sock"
    }
    assert set(members) == names
    return members


def test_plaintext_dump_with_key(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> None:
    ki = kernel_image_v2
    repo = backed_up(ki.image, tmp_path)
    out = tmp_path / "plain.tar"
    done = run("dump", "-r", str(repo), "latest", "/enc", "--key", str(key_file(ki, tmp_path)),
               "--output", str(out))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "socket" in done.output  # left out, with a warning
    assert not list(tmp_path.glob(".plain.tar.*"))  # no temporary file left
    with tarfile.open(out) as tf:
        members = check_members(tf, b"enc", ki.with_key)
        # Sparse files are GNU sparse 1.0 whose data ranges are the kernel's.
        sparse = [ki.tree.sparse, ki.tree.fragmented]
        maps = kernel_maps(ki, tmp_path, [p for p in sparse if p is not None])
        for rel, want in maps.items():
            m = members[b"enc/" + rel]
            assert m.pax_headers.get("GNU.sparse.major") == "1", rel
            got = [(o, n) for o, n in (m.sparse or []) if n]
            merged: list[tuple[int, int]] = []
            for o, n in got:
                if merged and merged[-1][0] + merged[-1][1] == o:
                    merged[-1] = (merged[-1][0], merged[-1][1] + n)
                else:
                    merged.append((o, n))
            assert merged == want, rel
    # GNU tar extracts the same tree: contents, modes, owners, ns mtimes, xattrs, links.
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf",
         str(out), "-C", str(dest)], check=True, capture_output=True,
    )  # fmt: skip
    got = kernelfs.snapshot_view(dest, b"enc")
    for rel, node in ki.with_key.items():
        if node.kind == "sock":
            assert rel not in got
            continue
        g = got[rel]
        assert (g.mode, g.uid, g.gid, g.mtime_ns, g.link_target, g.xattrs) == (
            node.mode, node.uid, node.gid, node.mtime_ns, node.link_target, node.xattrs
        ), rel  # fmt: skip
        if node.kind != "dir":
            assert (g.size, g.sha256, g.rdev) == (node.size, node.sha256, node.rdev), rel
    by_ino = kernelfs.by_ino(got)
    for rel, node in ki.with_key.items():
        if node.kind == "reg" and node.nlink > 1:
            assert len(by_ino[got[rel].ino]) == node.nlink, rel
    for rel, want in maps.items():
        assert data_map(os.path.join(os.fsencode(dest), b"enc", rel)) == want, rel


def test_dump_without_key_is_refused(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> None:
    repo = backed_up(kernel_image_v2.image, tmp_path)
    out = tmp_path / "x.tar"
    done = run("dump", "-r", str(repo), "latest", "/", "--output", str(out))
    assert done.exit_code == 4, done.output
    assert len(done.output.strip().splitlines()) == 1
    assert "--ciphertext" in done.output and not out.exists()
    assert not list(tmp_path.glob(".x.tar.*"))
    # An unencrypted file alone is fine without a key.
    done = run("dump", "-r", str(repo), "latest", "/plain.txt", "--output", str(out))
    assert done.exit_code == 0, done.output
    with tarfile.open(out) as tf:
        (m,) = tf.getmembers()
        f = tf.extractfile(m)
        assert m.name == "plain.txt" and f is not None and f.read() == b"not encrypted\n"


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_NO_ID = 0xFFFFFFFF
ACCESS_ACL = _acl((1, 6, _NO_ID), (2, 4, 1234), (4, 4, _NO_ID), (8, 6, 4321), (0x10, 6, _NO_ID),
                  (0x20, 0, _NO_ID))  # fmt: skip
DEFAULT_ACL = _acl((1, 7, _NO_ID), (2, 5, 1234), (4, 5, _NO_ID), (0x10, 5, _NO_ID),
                   (0x20, 5, _NO_ID))  # fmt: skip


def test_acls_as_gnu_tar_text(tmp_path: Path) -> None:
    """ACLs set through the kernel come out as SCHILY.acl text that GNU tar applies."""
    kernelfs.require_kernel()
    image = kernelfs.make_image(tmp_path / "acl.img", 16)
    with kernelfs.mounted(image, options=("acl",)) as mnt:
        d = mnt / "shared"
        d.mkdir()
        (d / "f").write_bytes(b"data")
        os.setxattr(d / "f", "system.posix_acl_access", ACCESS_ACL)
        os.setxattr(d, "system.posix_acl_default", DEFAULT_ACL)
        os.setxattr(d, "system.posix_acl_access", ACCESS_ACL)
        want = {
            p: (os.getxattr(mnt / p, "system.posix_acl_access"), os.stat(mnt / p).st_mode)
            for p in ("shared", "shared/f")
        }
        want_default = os.getxattr(d, "system.posix_acl_default")
    repo = backed_up(image, tmp_path)
    out = tmp_path / "acl.tar"
    done = run("dump", "-r", str(repo), "latest", "/shared", "--output", str(out))
    assert done.exit_code == 0, done.output
    with tarfile.open(out) as tf:
        m = tf.getmember("shared/f")
        assert m.pax_headers["SCHILY.acl.access"] == (
            "user::rw-,user:1234:r--,group::r--,group:4321:rw-,mask::rw-,other::---"
        )
        assert tf.getmember("shared").pax_headers["SCHILY.acl.default"].startswith("user::rwx,")
    image2 = kernelfs.make_image(tmp_path / "x.img", 16)
    with kernelfs.mounted(image2, options=("acl",)) as mnt:
        subprocess.run(["tar", "--acls", "--numeric-owner", "-xpf", str(out), "-C", str(mnt)],
                       check=True, capture_output=True)  # fmt: skip
        for p, (acl, mode) in want.items():
            assert os.getxattr(mnt / p, "system.posix_acl_access") == acl, p
            assert os.stat(mnt / p).st_mode == mode, p
        assert os.getxattr(mnt / "shared", "system.posix_acl_default") == want_default


def test_refuses_a_terminal_and_leaves_no_partial_output(
    kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    repo = backed_up(kernel_image_v2.image, tmp_path)
    # A missing path: one line, no output file, no temporary file.
    out = tmp_path / "y.tar"
    done = run("dump", "-r", str(repo), "latest", "/nope", "--ciphertext", "-o", str(out))
    assert done.exit_code == 3 and "no such file" in done.output, done.output
    assert not out.exists() and not list(tmp_path.glob(".y.tar.*"))
    script = (
        "import sys; from cipherdump.cli.main import main; "
        f"sys.argv=['cipherdump','dump','-r',{str(repo)!r},'latest','/plain.txt']; main()"
    )
    proc = subprocess.run(
        ["script", "-qec", f"python3 -c \"{script}\"", "/dev/null"],
        capture_output=True, timeout=120,
        env={**os.environ, **ENV, "PYTHONPATH": str(Path(cipherdump.__file__).parents[1])},
    )  # fmt: skip
    if b"refusing" not in proc.stdout + proc.stderr and shutil.which("script") is None:
        pytest.skip("script(1) is not installed")
    assert b"refusing to write a tar archive to a terminal" in proc.stdout + proc.stderr


def test_a_dump_failing_midway_leaves_the_old_output(
    kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    """--output is renamed into place only when complete: damage met after members were
    written fails the dump (one line, the damage's exit code) and leaves FILE as it was."""
    repo = backed_up(kernel_image_v2.image, tmp_path)
    biggest = max((p for p in (repo / "data").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)  # fmt: skip
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    out = tmp_path / "old.tar"
    out.write_bytes(b"old")
    done = run("dump", "-r", str(repo), "latest", "/", "--ciphertext", "-o", str(out))
    assert done.exit_code == 5, done.output
    assert len(done.output.strip().splitlines()) == 1
    assert out.read_bytes() == b"old" and not list(tmp_path.glob(".old.tar.*"))
