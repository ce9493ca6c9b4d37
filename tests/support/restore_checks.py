"""Checks shared by the clone and restore-to-image tests: e2fsck, kernel views, reader views."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kernelfs
from cipherdump.ext4 import Filesystem, Inode, open_filesystem


def e2fsck_clean(image: Path) -> tuple[bool, str]:
    proc = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False, timeout=300
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def _comparable(view: dict[bytes, kernelfs.NodeView]) -> dict[bytes, kernelfs.NodeView]:
    # st_blocks follows the target's allocation (a fragmented file may come out contiguous,
    # needing no extent block), and a directory's size the way its blocks were filled.
    return {
        path: dataclasses.replace(n, blocks=0, size=0 if n.kind == "dir" else n.size)
        for path, n in view.items()
    }


def kernel_views(
    ki: kernelfs.KernelImage, image: Path
) -> tuple[dict[bytes, kernelfs.NodeView], dict[bytes, kernelfs.NodeView]]:
    """(no-key view, with-key view) of the encrypted directory of a restored image."""
    enc = ki.config.encrypted_dir
    with kernelfs.mounted(image) as mnt:
        no_key = kernelfs.snapshot_view(mnt, enc)
    with kernelfs.mounted(image) as mnt:
        descriptor = (
            kernelfs.key_descriptor(ki.master_key) if ki.config.policy.version == 1 else None
        )
        kernelfs.add_key(mnt, ki.master_key, descriptor)
        with_key = kernelfs.snapshot_view(mnt, enc)
    return no_key, with_key


def assert_same_as_original(ki: kernelfs.KernelImage, image: Path) -> None:
    """e2fsck is clean; the no-key and with-key kernel views equal the original's."""
    ok, report = e2fsck_clean(image)
    assert ok, report
    no_key, with_key = kernel_views(ki, image)
    for label, want, got in (("no-key", ki.no_key, no_key), ("with-key", ki.with_key, with_key)):
        want, got = _comparable(want), _comparable(got)
        assert set(got) == set(want), (label, sorted(set(got) ^ set(want))[:5])
        diff = [p for p in want if want[p] != got[p]]
        assert not diff, (label, diff[:3], [(want[p], got[p]) for p in diff[:2]])


def _logical_map(ino: Inode) -> list[tuple[int, int, bool, bool]]:
    """Runs as (lblk, length, hole, unwritten), adjacent ones of one kind merged."""
    out: list[tuple[int, int, bool, bool]] = []
    for r in ino.runs:
        kind = (r.pblk is None, r.unwritten)
        if out and out[-1][2:] == kind and out[-1][0] + out[-1][1] == r.lblk:
            out[-1] = (out[-1][0], out[-1][1] + r.length, *kind)
        else:
            out.append((r.lblk, r.length, *kind))
    return out


def _record(fs: Filesystem, ino: Inode, stored_hash: tuple[int, int] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "ino": ino.ino,
        "mode": ino.mode,
        "uid": ino.uid,
        "gid": ino.gid,
        "flags": ino.flags & ~0x81000,  # without extents/index: layout, not content
        "times": (ino.atime_ns, ino.mtime_ns, ino.ctime_ns, ino.crtime_ns),
        "links": ino.links,
        "xattrs": sorted((x.index, x.name, x.value) for x in ino.xattrs),
        "hash": stored_hash,
        "generation": ino.generation,
        "project": ino.project_id,
    }
    if ino.is_file:
        rec["size"] = ino.size
        data = hashlib.sha256()
        for _run, block in ino.iter_blocks():
            data.update(block)
        rec["stored"] = data.hexdigest()
        rec["map"] = _logical_map(ino)
    elif ino.is_symlink:
        rec["symlink"] = ino.symlink_data()
    elif ino.is_dir:
        # Inline directories are written as blocks: layout, not content.
        rec["flags"] &= ~0x10000000
        rec["xattrs"] = [x for x in rec["xattrs"] if x[:2] != (7, b"data")]
    else:
        rec["rdev"] = ino.device
    return rec


def iter_reader_view(
    fs: Filesystem, top: Inode | None = None
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """What cipherdump reads of every object: raw names, stored hashes, contexts,
    xattrs, symlink payloads, ciphertext and metadata (paths of raw name bytes), one
    object at a time, depth first with children in name order: two filesystems whose
    directories are laid out differently yield the same sequence.  A directory's record
    holds its entries (name, type, hash) sorted; the root's ``lost+found`` is left out
    of the walk (the target's is its own)."""
    stack: list[tuple[bytes, int, tuple[int, int] | None]] = [(b"", (top or fs.root).ino, None)]
    while stack:
        path, number, stored_hash = stack.pop()
        ino = fs.inode(number)
        rec = _record(fs, ino, stored_hash)
        if ino.is_dir:
            entries = sorted((e.name, e.file_type, e.hash, e.ino) for e in ino.entries())
            rec["entries"] = [e[:3] for e in entries]
            kids = [
                (path + b"/" + name, child, h)
                for name, _ft, h, child in entries
                if name not in (b".", b"..") and not (path == b"" and name == b"lost+found")
            ]
            del entries
            kids.reverse()
            stack += kids
        yield path or b"/", rec


def reader_view(fs: Filesystem, top: Inode | None = None) -> dict[bytes, dict[str, Any]]:
    """:func:`iter_reader_view` as one mapping of path to record."""
    return dict(iter_reader_view(fs, top))


def assert_reader_views_equal_streaming(original: Path, restored: Path) -> int:
    """:func:`assert_reader_views_equal` one object at a time, for trees too big to hold
    twice as records; returns how many objects were compared."""
    count = 0
    with open_filesystem(str(original)) as a, open_filesystem(str(restored)) as b:
        for (pa, want), (pb, got) in itertools.zip_longest(
            iter_reader_view(a), iter_reader_view(b), fillvalue=(b"<end>", {})
        ):
            assert pa == pb, (pa, pb)
            if pa == b"/":
                for view in (want, got):
                    view["entries"] = [e for e in view["entries"] if e[0] != b"lost+found"]
                    view.pop("links")
            assert want == got, (
                pa,
                {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v},
            )
            count += 1
    return count


def assert_reader_views_equal(original: Path, restored: Path) -> None:
    with open_filesystem(str(original)) as a, open_filesystem(str(restored)) as b:
        want, got = reader_view(a), reader_view(b)
    want[b"/"]["entries"] = [e for e in want[b"/"]["entries"] if e[0] != b"lost+found"]
    got[b"/"]["entries"] = [e for e in got[b"/"]["entries"] if e[0] != b"lost+found"]
    for view in (want, got):
        view[b"/"].pop("links")  # the target's lost+found is its own
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:5]
    diff = [p for p in want if want[p] != got[p]]
    assert not diff, [(p, want[p], got[p]) for p in diff[:2]]


# Inode of cf_enc/Big in the casefold vectors of kernel-vectors-6.1 (their manifests say so).
CASEFOLD_BIG_DIR = 38


def assert_casefold_htree_limits_as_kernel(original: Path, copy: Path) -> None:
    """The htree of the vectors' big casefolded encrypted directory has, in the copy, the
    root and index-node limits Linux 6.1 wrote (debugfs shows them as stored): 125 per
    1 KiB index node there, not 126, as every dirent of such a directory counts a hash."""
    want = {limit for _count, limit in kernelfs.htree_index_limits(original, CASEFOLD_BIG_DIR)}
    got = kernelfs.htree_index_limits(copy, CASEFOLD_BIG_DIR)
    assert got and {limit for _count, limit in got} <= want, (want, got)
    if len(want) > 1:  # the original has index nodes: so must the copy, to test them
        assert len({limit for _count, limit in got}) == 2, got
    with open_filesystem(str(copy)) as fs:
        fs.inode(CASEFOLD_BIG_DIR).entries()
        assert not fs.warnings, fs.warnings
