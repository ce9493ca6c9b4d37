"""``dump --ciphertext`` -> ``restore --from-tar`` / ``--from-dir``: key-less copies made
outside the repository turn back into images the owners' keys unlock.

The oracle is the kernel: the restored image is mounted, the key added, and every
file, name, symlink target, mode, owner, time, xattr and hard link must be what the
kernel showed on the original (and what ``restore --to-image`` from the snapshot
gives).  Sockets have no tar form, so the tar round trip leaves them out.  The
directory copies are made from the dump by a small converter (members extracted by
GNU tar, records put back as xattrs) until the ciphertext view exists, then copied
again by ``cp -a``, ``rsync -aAX`` and ``tar --xattrs``; a copy that drops the xattrs
is refused, one line each.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kernelfs
from cipherdump.cli.main import cli
from cipherdump.engine import keyless_records as R
from cipherdump.ext4 import open_filesystem
from restore_checks import e2fsck_clean, kernel_views, reader_view

pytestmark = pytest.mark.kernel

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
CONFIGS = ["4k-v2-pad32", "1k-v1-pad4", "4k-stable-v2-pad32-lblk64", "1k-stable-v2-pad32-lblk32"]


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV, input=input)


def dumped(ki: kernelfs.KernelImage, tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    done = run("backup", "-r", str(repo), str(ki.image))
    assert done.exit_code == 0, done.output
    tar = tmp_path / "cipher.tar"
    done = run("dump", "-r", str(repo), "latest", "/", "--ciphertext", "-o", str(tar))
    assert done.exit_code == 0, done.output
    return repo, tar


def comparable(view: dict[bytes, kernelfs.NodeView], *, times: bool = True) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for path, n in view.items():
        if n.kind == "sock":
            continue
        n = dataclasses.replace(n, blocks=0, size=0 if n.kind == "dir" else n.size)
        if not times:
            n = dataclasses.replace(n, atime_ns=0, ctime_ns=0, crtime_ns=None)
            if n.kind == "dir":
                n = dataclasses.replace(n, mtime_ns=0)
        out[path] = n
    return out


def assert_like_original(ki: kernelfs.KernelImage, image: Path, *, times: bool = True,
                         inos: bool = True) -> None:  # fmt: skip
    ok, report = e2fsck_clean(image)
    assert ok, report
    no_key, with_key = kernel_views(ki, image)
    for label, want, got in (("no-key", ki.no_key, no_key), ("with-key", ki.with_key, with_key)):
        w, g = comparable(want, times=times), comparable(got, times=times)
        if not inos:
            w = {p: dataclasses.replace(n, ino=0) for p, n in w.items()}  # type: ignore[type-var]
            g = {p: dataclasses.replace(n, ino=0) for p, n in g.items()}  # type: ignore[type-var]
        assert set(g) == set(w), (label, sorted(set(g) ^ set(w))[:5])
        diff = [p for p in w if w[p] != g[p]]
        assert not diff, (label, diff[:3], [(w[p], g[p]) for p in diff[:2]])


@pytest.mark.parametrize("kernel_image", CONFIGS, indirect=True)
def test_tar_round_trip(kernel_image: kernelfs.KernelImage, tmp_path: Path) -> None:
    ki = kernel_image
    repo, tar = dumped(ki, tmp_path)
    # The archive says what it is, and GNU tar lists it.
    with tarfile.open(tar) as tf:
        assert "not plaintext" in tf.pax_headers["comment"]
        assert R.pax_keyword(R.FILESYSTEM) in tf.pax_headers
    subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True)
    out = tmp_path / "from-tar.img"
    done = run("restore", "--from-tar", str(tar), "--to-image", str(out))
    assert done.exit_code == 0, done.output
    assert_like_original(ki, out)
    # The same as a key-less restore from the snapshot (but the socket).
    direct = tmp_path / "direct.img"
    assert run("restore", "-r", str(repo), "latest", "--to-image", str(direct)).exit_code == 0
    a, b = kernel_views(ki, out), kernel_views(ki, direct)
    for got, want in zip(a, b, strict=True):
        assert comparable(got) == comparable(want)


def test_tar_from_standard_input(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> None:
    _repo, tar = dumped(kernel_image_v2, tmp_path)
    out = tmp_path / "stdin.img"
    done = run("restore", "--from-tar", "-", "--to-image", str(out), input=tar.read_bytes())
    assert done.exit_code == 0, done.output
    assert_like_original(kernel_image_v2, out)


def test_tar_of_a_subtree(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> None:
    """dump --ciphertext of a subtree keeps the directories above it (their contexts):
    the image is the one restore --to-image --path makes."""
    ki = kernel_image_v2
    repo, _tar = dumped(ki, tmp_path)
    sub = next(p for p, n in ki.no_key.items() if n.kind == "dir" and p != b"." and b"/" in p)
    path = "/enc/" + os.fsdecode(sub)
    tar = tmp_path / "sub.tar"
    done = run("dump", "-r", str(repo), "latest", path, "--ciphertext", "-o", str(tar))
    assert done.exit_code == 0, done.output
    out, direct = tmp_path / "sub.img", tmp_path / "direct.img"
    assert run("restore", "--from-tar", str(tar), "--to-image", str(out)).exit_code == 0
    done = run("restore", "-r", str(repo), "latest", "--path", path, "--to-image", str(direct))
    assert done.exit_code == 0, done.output
    ok, report = e2fsck_clean(out)
    assert ok, report
    a, b = kernel_views(ki, out), kernel_views(ki, direct)
    for got, want in zip(a, b, strict=True):
        assert comparable(got) == comparable(want)
    # Files of the subtree read with the key.
    assert any(n.kind == "reg" and n.sha256 is not None for n in a[1].values())


def errors(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("cipherdump: error")]


def test_bad_tars(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> None:
    ki = kernel_image_v2
    _repo, tar = dumped(ki, tmp_path)
    data = tar.read_bytes()
    out = tmp_path / "bad.img"
    # Truncated in the middle of a member, and just before the end-of-archive blocks.
    for cut in (len(data) // 2, len(data) - 10240):
        bad = tmp_path / f"cut{cut}.tar"
        bad.write_bytes(data[:cut])
        done = run("restore", "--from-tar", str(bad), "--to-image", str(out))
        assert done.exit_code == 3 and "truncated" in done.output, done.output
        assert len(errors(done)) == 1 and not out.exists()

    # Records removed or changed: rewritten with tarfile, one line an object.
    def rewrite(name: str, change: dict[str, str | None], where: str, glob: bool = True) -> Result:
        bad = tmp_path / name
        with (
            tarfile.open(tar) as src,
            tarfile.open(
                bad,
                "w",
                format=tarfile.PAX_FORMAT,
                pax_headers=dict(src.pax_headers) if glob else {},
            ) as dst,
        ):
            for m in src.getmembers():
                # tarfile writes sparse files out whole: their sparse records must go.
                for k in [k for k in m.pax_headers if k.startswith("GNU.sparse.")]:
                    del m.pax_headers[k]
                if where == "":
                    m.pax_headers.pop(
                        R.pax_keyword(R.FILESYSTEM), None
                    )  # merged in from the global header
                if m.name == where:
                    for k, v in change.items():
                        if v is None:
                            m.pax_headers.pop(k, None)
                        else:
                            m.pax_headers[k] = v
                f = src.extractfile(m) if m.isreg() else None
                dst.addfile(m, f)
        return run("restore", "--from-tar", str(bad), "--to-image", str(out))

    with tarfile.open(tar) as tf:
        small = next(m for m in tf.getmembers()
                     if m.isreg() and m.name.startswith("./enc/") and 0 < m.size <= 4096
                     and not m.sparse)  # fmt: skip
    done = rewrite("noctx.tar", {"CIPHERDUMP.context": None}, small.name)
    assert done.exit_code == 3, done.output
    lines = errors(done)
    assert len(lines) == 2 and "no context record" in lines[0], "\n".join(lines)
    assert small.name[1:] in lines[0]
    done = rewrite("size.tar", {"CIPHERDUMP.size": "99999"}, small.name)
    assert done.exit_code == 3 and "size record 99999" in errors(done)[0], done.output
    assert not out.exists()
    # No global header, so no filesystem record (members' copies of it are not read):
    # named, nothing guessed.
    done = rewrite("bare.tar", {}, "", glob=False)
    assert done.exit_code == 3 and "no filesystem record" in done.output, done.output


# -- directory copies -----------------------------------------------------------------


def tar_to_dir(tar: Path, dest: Path) -> None:
    """The converter: GNU tar extracts the members; the CIPHERDUMP records become
    user.cipherdump.* xattrs (trusted.cipherdump.* on symlinks and special files,
    where Linux allows no user xattrs), the filesystem record one of the root."""
    dest.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tar),
                    "-C", str(dest)], check=True, capture_output=True)  # fmt: skip
    with tarfile.open(tar) as tf:
        os.setxattr(dest, R.xattr_name(R.FILESYSTEM),
                    tf.pax_headers[R.pax_keyword(R.FILESYSTEM)].encode())  # fmt: skip
        for m in tf.getmembers():
            path = os.path.join(os.fsencode(dest), m.name.encode("utf-8", "surrogateescape"))
            ns = "user." if (m.isreg() or m.isdir() or m.islnk()) else "trusted."
            for record in R.ALL:
                value = m.pax_headers.get(R.pax_keyword(record))
                if value is None or record == R.FILESYSTEM:
                    continue
                raw = (base64.b64decode(value) if record in (R.CONTEXT, R.NAME, R.HASH, R.SYMLINK)
                       else value.encode())  # fmt: skip
                os.setxattr(path, ns + "cipherdump." + record, raw, follow_symlinks=False)
            # Extraction changed the times of directories: set them back.
            if m.isdir():
                ns_m = m.pax_headers.get("mtime")
                if ns_m is not None:
                    whole, _, frac = ns_m.partition(".")
                    t = int(whole) * 10**9 + int((frac + "0" * 9)[:9])
                    os.utime(path, ns=(t, t), follow_symlinks=False)


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32", "4k-stable-v2-pad32-lblk64",
                                          "1k-v1-pad4"], indirect=True)  # fmt: skip
def test_dir_copies(kernel_image: kernelfs.KernelImage, tmp_path: Path) -> None:
    ki = kernel_image
    _repo, tar = dumped(ki, tmp_path)
    view = tmp_path / "view"
    tar_to_dir(tar, view)
    copies = {"converted": view}
    copies["cp"] = tmp_path / "cp"
    subprocess.run(["cp", "-a", str(view), str(copies["cp"])], check=True)
    copies["rsync"] = tmp_path / "rsync"
    subprocess.run(["rsync", "-aAX", str(view) + "/", str(copies["rsync"])], check=True)
    copies["tar"] = tmp_path / "tarcopy"
    copies["tar"].mkdir()
    subprocess.run(f"tar --xattrs --xattrs-include='*' -C {view} -cf - . | tar --xattrs "
                   f"--xattrs-include='*' --numeric-owner -xpf - -C {copies['tar']}",
                   shell=True, check=True)  # fmt: skip
    if shutil.which("restic") is not None:
        env = {**os.environ, "RESTIC_PASSWORD": "pw", "RESTIC_REPOSITORY": str(tmp_path / "rr"),
               "RESTIC_CACHE_DIR": str(tmp_path / "rcache")}  # fmt: skip
        subprocess.run(["restic", "init", "-q"], env=env, check=True)
        # Backed up by its absolute path, the view's root is a node of its own, with its
        # xattrs (the filesystem record); restored below the target at that path.
        subprocess.run(["restic", "backup", "-q", str(view)], env=env, check=True)
        target = tmp_path / "restic"
        subprocess.run(["restic", "restore", "-q", "latest", "--target", str(target)],
                       env=env, check=True)  # fmt: skip
        copies["restic"] = target / str(view).lstrip("/")
    for label, copy in copies.items():
        out = tmp_path / f"{label}.img"
        done = run("restore", "--from-dir", str(copy), "--to-image", str(out))
        if label == "restic":
            # restic (0.14) restores no xattrs of symlinks: the encrypted ones are
            # refused, each named, and nothing is written.
            lines = errors(done)[:-1]
            symlinks = [p for p, n in ki.no_key.items() if n.kind == "lnk"]
            assert done.exit_code == 3 and len(lines) == len(symlinks), done.output
            assert all("encrypted symlink without its context" in x for x in lines), lines
            assert not out.exists()
            continue
        assert done.exit_code == 0, (label, done.output)
        # Copies keep contents, names, modes, owners and mtimes; not ctimes or birth
        # times (no tool can set them), and rsync -aAX makes hard links separate files,
        # joined again by their ino records.
        assert_like_original(ki, out, times=False)


def test_dir_copy_without_xattrs_is_refused(kernel_image_v2: kernelfs.KernelImage,
                                            tmp_path: Path) -> None:  # fmt: skip
    _repo, tar = dumped(kernel_image_v2, tmp_path)
    view = tmp_path / "view"
    tar_to_dir(tar, view)
    dropped = tmp_path / "dropped"
    subprocess.run(["rsync", "-a", str(view) + "/", str(dropped)], check=True)  # no -X
    out = tmp_path / "x.img"
    done = run("restore", "--from-dir", str(dropped), "--to-image", str(out))
    assert done.exit_code == 3 and "no filesystem record" in done.output, done.output
    os.setxattr(dropped, R.xattr_name(R.FILESYSTEM), os.getxattr(view, R.xattr_name(R.FILESYSTEM)))
    done = run("restore", "--from-dir", str(dropped), "--to-image", str(out))
    assert done.exit_code == 3, done.output
    lines = errors(done)
    # Every file and directory is named (twenty lines, then how many more).
    assert all("no flags record" in line for line in lines[:20]), lines
    assert "more" in lines[20] and lines[-1].endswith("nothing was written"), lines
    assert not out.exists()
    # One object without its size: named alone.
    one = next(p for p in (view / "enc").iterdir() if p.is_file() and not p.is_symlink()
               and os.stat(p).st_nlink == 1 and os.stat(p).st_size > 0)  # fmt: skip
    os.removexattr(one, R.xattr_name(R.SIZE))
    done = run("restore", "--from-dir", str(view), "--to-image", str(out))
    assert done.exit_code == 3
    lines = errors(done)
    assert len(lines) == 2 and "no size record" in lines[0] and one.name in lines[0], lines


@pytest.mark.parametrize("kernel_image", ["4k-stable-v2-pad32-lblk64"], indirect=True)
def test_inode_numbers_the_policy_needs(kernel_image: kernelfs.KernelImage,
                                        tmp_path: Path) -> None:  # fmt: skip
    """IV_INO_LBLK_64: the restored inodes keep their numbers (the image unlocks, as
    test_dir_copies shows); without its ino record a file is refused, saying why."""
    _repo, tar = dumped(kernel_image, tmp_path)
    view = tmp_path / "view"
    tar_to_dir(tar, view)
    one = next(p for p in (view / "enc").iterdir() if p.is_file() and not p.is_symlink()
               and os.stat(p).st_nlink == 1)  # fmt: skip
    os.removexattr(one, R.xattr_name(R.INO))
    out = tmp_path / "x.img"
    done = run("restore", "--from-dir", str(view), "--to-image", str(out))
    assert done.exit_code == 3, done.output
    lines = errors(done)
    assert len(lines) == 2 and one.name in lines[0] and "IV_INO_LBLK_64/32" in lines[0], lines
    assert "original inode number" in lines[0] and not out.exists()


@pytest.mark.parametrize("name", ["cf1k", "cf4k"])
def test_casefold_vectors_through_a_tar(shared_testdata: Path, tmp_path: Path, name: str) -> None:
    """Casefolded + encrypted directories (made by Linux 6.1): names and their stored
    hashes come back from the tar as restore --to-image writes them."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    src = tmp_path / f"{name}.img"
    packed = shared_testdata / "kernel-vectors-6.1" / f"{name}.img.zst"
    subprocess.run(["zstd", "-q", "-d", "-f", str(packed), "-o", str(src)], check=True)
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    assert run("backup", "-r", str(repo), str(src)).exit_code == 0
    tar, out, direct = tmp_path / "c.tar", tmp_path / "t.img", tmp_path / "d.img"
    assert (
        run("dump", "-r", str(repo), "latest", "/", "--ciphertext", "-o", str(tar)).exit_code == 0
    )
    done = run("restore", "--from-tar", str(tar), "--to-image", str(out))
    assert done.exit_code == 0, done.output
    assert run("restore", "-r", str(repo), "latest", "--to-image", str(direct)).exit_code == 0
    with open_filesystem(str(out)) as a, open_filesystem(str(direct)) as b:
        got, want = reader_view(a), reader_view(b)
    # Not carried by a tar: generation, project id; unwritten extents come back as holes.
    for view in (got, want):
        for rec in view.values():
            for key in ("generation", "project", "map"):
                rec.pop(key, None)
    sockets = {p for p, r in want.items() if r["mode"] & 0o170000 == 0o140000}
    assert set(got) == set(want) - sockets
    diff = [p for p in got if got[p] != want[p] and p != b"/"]
    assert not diff, [(p, got[p], want[p]) for p in diff[:2]]
