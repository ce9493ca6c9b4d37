#!/usr/bin/env python3
"""Build ``examples/sample.img``, the README quick-start image, with the running kernel.

Run as root on Linux with loop devices and fscrypt (``CONFIG_FS_ENCRYPTION``)::

    sudo python examples/make_sample.py

It makes a 1 MiB ext4 image (1 KiB blocks, 64 inodes, no journal), mounts it, encrypts
``/home/alice`` with a v2 policy and ``/home/bob`` with a v1 policy, fills both, unmounts, checks
the image with ``e2fsck -fn``, and writes the two master keys next to it.  The keys are SHA-512 of
public labels: they are test material, not secrets.  See ``examples/README.md`` for the contents.

The UUID, hash seed, owners, modes and mtimes are fixed, but every run gives a different image:
the kernel draws a random nonce per encrypted inode, so ciphertext and no-key names change.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The live-tier harness does the kernel work.
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

import kernelfs  # noqa: E402

ALICE_LABEL = b"cipherdump sample: alice"
BOB_LABEL = b"cipherdump sample: bob"
UUID = "c1f4e2d0-5a3b-4c6d-8e9f-0a1b2c3d4e5f"
HASH_SEED = "5eed5eed-0000-4000-8000-00000000c0de"
MTIME_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
ALICE_UID, BOB_UID = 1000, 1001

README_TXT = b"""\
cipherdump sample image
=======================
/README.txt, /public and /home are not encrypted.
/home/alice is encrypted with a v2 policy (AES-256-XTS / AES-256-CTS, padding 32).
/home/bob is encrypted with a v1 policy (AES-256-XTS / AES-256-CTS, padding 16).
The master keys are SHA-512 of "cipherdump sample: alice" and "cipherdump sample: bob".
"""


def master_key(label: bytes) -> bytes:
    """64 bytes: the whole SHA-512 digest of a public label."""
    return hashlib.sha512(label).digest()


def write(path: Path, data: bytes, uid: int = 0, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def mkdir(path: Path, uid: int = 0, mode: int = 0o755) -> None:
    path.mkdir()
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def fix_times(root: Path) -> None:
    """Set every atime and mtime in ``root``: a fixed, recognisable date rather than "now"."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    os.utime(root, ns=(MTIME_NS, MTIME_NS))


def populate(mnt: Path, alice_key: bytes, bob_key: bytes) -> tuple[bytes, bytes]:
    write(mnt / "README.txt", README_TXT)

    mkdir(mnt / "public")
    write(mnt / "public" / "hello.txt", b"Hello from an unencrypted directory.\n")
    write(
        mnt / "public" / "numbers.csv",
        b"n,square\n" + b"".join(b"%d,%d\n" % (n, n * n) for n in range(1, 21)),
    )
    os.symlink("hello.txt", mnt / "public" / "latest")

    mkdir(mnt / "home")
    alice = mnt / "home" / "alice"
    bob = mnt / "home" / "bob"
    mkdir(alice, ALICE_UID, 0o700)
    mkdir(bob, BOB_UID, 0o700)

    identifier = kernelfs.add_key(mnt, alice_key)
    kernelfs.set_policy(
        alice, 2, kernelfs.MODE_AES_256_XTS, kernelfs.MODE_AES_256_CTS, kernelfs.PAD_32, identifier
    )
    descriptor = kernelfs.add_key(mnt, bob_key, kernelfs.key_descriptor(bob_key))
    kernelfs.set_policy(
        bob, 1, kernelfs.MODE_AES_256_XTS, kernelfs.MODE_AES_256_CTS, kernelfs.PAD_16, descriptor
    )

    write(alice / "diary.txt", b"Dear diary, today I encrypted my home directory.\n", ALICE_UID)
    os.link(alice / "diary.txt", alice / "diary-hardlink.txt")
    os.symlink("diary.txt", alice / "link-to-diary")
    mkdir(alice / "projects", ALICE_UID)
    mkdir(alice / "projects" / "cipherdump", ALICE_UID)
    write(
        alice / "projects" / "cipherdump" / "notes.md",
        b"# Notes\n\n- back up without keys\n- restore with or without keys\n",
        ALICE_UID,
    )
    # 64 KiB with 2 KiB of data in the middle: two allocated 1 KiB blocks, the rest holes.
    sparse = alice / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(64 * 1024)
        f.seek(32 * 1024)
        f.write(bytes(range(256)) * 8)
    os.chown(sparse, ALICE_UID, ALICE_UID)
    for path in (alice / "diary.txt", alice / "link-to-diary"):
        os.chown(path, ALICE_UID, ALICE_UID, follow_symlinks=False)

    write(bob / "todo.txt", b"1. buy milk\n2. rotate keys\n", BOB_UID)
    mkdir(bob / "secret", BOB_UID, 0o700)
    write(bob / "secret" / "plan.txt", b"The plan is to have no plan.\n", BOB_UID, 0o600)
    os.symlink("secret/plan.txt", bob / "plan-link")
    os.chown(bob / "plan-link", BOB_UID, BOB_UID, follow_symlinks=False)

    fix_times(mnt / "public")
    fix_times(mnt / "home")
    os.utime(mnt / "README.txt", ns=(MTIME_NS, MTIME_NS))
    os.utime(mnt / "lost+found", ns=(MTIME_NS, MTIME_NS))
    os.utime(mnt, ns=(MTIME_NS, MTIME_NS))
    return identifier, descriptor


def check_without_keys(image: Path) -> None:
    """Remount (which forgets the keys) and confirm the kernel hides both homes."""
    with kernelfs.mounted(image) as mnt:
        for home in ("alice", "bob"):
            names = os.listdir(mnt / "home" / home)
            assert "diary.txt" not in names and "todo.txt" not in names, names
            files = [n for n in names if (mnt / "home" / home / n).is_file()]
            try:
                (mnt / "home" / home / files[0]).read_bytes()
            except OSError as exc:
                assert exc.errno == errno.ENOKEY, exc
            else:
                raise AssertionError(f"{home}'s files are readable without the key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "sample.img")
    args = parser.parse_args()
    caps = kernelfs.kernel_capabilities()
    if not caps.ok:
        print(caps.reason, file=sys.stderr)
        return 2

    image: Path = args.output
    alice_key, bob_key = master_key(ALICE_LABEL), master_key(BOB_LABEL)
    tmp = image.with_suffix(".img.tmp")
    kernelfs.make_image(
        tmp,
        1,
        block_size=1024,
        features=("encrypt", "^has_journal", "^resize_inode"),
        inode_size=256,
        extra_mkfs_args=("-N", "64", "-U", UUID, "-L", "cipherdump", "-m", "0"),
        extended_options=(f"hash_seed={HASH_SEED}",),
    )
    try:
        with kernelfs.mounted(tmp) as mnt:
            identifier, descriptor = populate(mnt, alice_key, bob_key)
        check_without_keys(tmp)
        fsck = subprocess.run(["e2fsck", "-fn", str(tmp)], capture_output=True, text=True)
        if fsck.returncode != 0:
            print(fsck.stdout, fsck.stderr, file=sys.stderr)
            raise SystemExit("e2fsck -fn found problems")
        if tmp.stat().st_size > 1024 * 1024:
            raise SystemExit("sample image larger than 1 MiB")
        tmp.replace(image)
    finally:
        tmp.unlink(missing_ok=True)

    (HERE / "alice.key").write_bytes(alice_key)
    (HERE / "bob.key").write_bytes(bob_key)
    print(f"wrote {image} ({image.stat().st_size} bytes), UUID {UUID}")
    print(f"alice: v2 identifier {identifier.hex()}, key {HERE / 'alice.key'}")
    print(f"bob:   v1 descriptor {descriptor.hex()}, key {HERE / 'bob.key'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
