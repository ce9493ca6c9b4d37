"""The reader against real, mostly corrupt ext4 images from e2fsprogs' regression tests.

Every image of ``shared/testdata/e2fsprogs`` is opened with a ``FileSource`` and, when it
opens, walked completely: every node is described (``node_record``, ``stat_record``),
every symlink target resolved, every regular file read in 1 MiB steps and every xattr
decoded.  Whatever the image holds, nothing but a ``CipherdumpError`` may escape, no
walk may run past a time bound, and hostile sizes must not drive memory.  The table
below encodes, per image, what the corpus README says a reader must do; ``debugfs`` is
the oracle for the clean images (names, inode numbers, modes, sizes, symlink targets,
xattr names and file contents).

The same checks run on ``ext4-view-rs/test_disk1.bin.zst`` (1 KiB blocks, htree
directories of 1,000 and 10,000 entries, symlinks of every length, holes, a v2-encrypted
directory), which must list completely and byte for byte as ``debugfs`` lists it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import posixpath
import re
import shutil
import stat
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

import timebound
from cipherdump.blockio import FileSource
from cipherdump.cli.main import cli
from cipherdump.engine.describe import fs_info, node_record, stat_record
from cipherdump.engine.views.image import Namespace, Problem
from cipherdump.errors import CipherdumpError, NotExt4Error
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.inode import InodeType
from shared_data import REPO, SHARED_TESTDATA

TESTDATA = SHARED_TESTDATA
CORPUS = TESTDATA / "e2fsprogs"
VIEW_RS = TESTDATA / "ext4-view-rs"

# What the reader must do with each image (from the table in CORPUS / "README.md").
OK = "OK"  # clean: must open and list with no error, exactly as debugfs lists it
OK_PLUS = "OK+"  # damaged on purpose: per-object CipherdumpErrors, the rest still read
KEYED = "KEYED"  # like OK+, and a known key exists (decryption is tested elsewhere)
REJECT = "REJECT"  # open fails with a one-line CipherdumpError
REJECT_OR_OK_PLUS = "REJECT|OK+"  # either refuse to open, or read like OK+
JOURNAL = "JOURNAL"  # has orphans: read as a mount leaves them (deleted or truncated)
# Needs recovery: opens with the journal replayed in memory, no warning about it, and
# lists as debugfs lists a copy that `e2fsck -fy` recovered; the image is not changed.
REPLAY = "REPLAY"

EXPECTATIONS: dict[str, str] = {
    # Encryption
    "f_bad_encryption": KEYED,
    "f_badsymlinks2": KEYED,
    "f_dup_de_crypt": OK_PLUS,
    "f_encrypted_lpf": OK_PLUS,
    "f_short_encrypted_dirent": OK_PLUS,
    # Casefold
    "f_bad_fname": OK_PLUS,
    # Inline data
    "d_inline_dump": OK,
    "f_idata_and_extents": OK_PLUS,
    "f_inlinedata_dirblocks": OK_PLUS,
    "f_inlinedata_flags": OK_PLUS,
    "f_inlinedata_repair": OK_PLUS,
    "f_inlinedir_bad_symlink": OK_PLUS,
    "f_inlinedir_detector": OK_PLUS,
    "f_trunc_dirent_header": OK_PLUS,
    "f_ea_value_crash": OK_PLUS,
    "f_write_ea_no_extra_isize": OK_PLUS,
    "f_write_ea_toobig_extra_isize": OK_PLUS,
    "f_write_ea_toosmall_extra_isize": OK_PLUS,
    # htree directories
    "f_h_normal": OK,
    "f_h_unsigned": OK,
    "f_h_badnode": OK_PLUS,
    "f_h_badroot": OK_PLUS,
    "f_htree_bad_csum": OK_PLUS,
    "f_htree_leaf_csum": OK_PLUS,
    "f_preen_htree_csum": OK_PLUS,
    "f_rehash_dir": OK,
    "f_dup_de": OK_PLUS,
    "f_many_subdirs": OK,
    # Other directory corruption
    "f_dup_de2": OK_PLUS,
    "f_baddir": OK_PLUS,
    "f_baddotdir": OK_PLUS,
    "f_salvage_dir": OK_PLUS,
    "f_dir_bad_csum": OK_PLUS,
    "f_corrupt_dirent_tail": OK_PLUS,
    "f_dirlink": OK_PLUS,
    "f_emptydir": OK_PLUS,
    "f_holedir": OK_PLUS,
    "f_holedir2": OK_PLUS,
    "f_holedir3": OK_PLUS,
    "f_hugedir_blocks": OK_PLUS,
    "f_toobig_extent_dir": OK_PLUS,
    "f_dir_bad_mode": OK_PLUS,
    # Extended attributes
    "f_valid_ea_in_inode": OK,
    "f_ea_checks": OK_PLUS,
    "f_special_ea": OK,
    "f_unsorted_EAs": OK,
    "f_ea_bad_csum": OK_PLUS,
    "f_ea_inode": OK_PLUS,
    "f_ea_inode_self_ref": OK_PLUS,
    "f_ea_inode_dir_ref": OK_PLUS,
    "f_ea_inode_fast_symlink": OK,
    "f_ea_inode_no_feature": OK_PLUS,
    "f_ea_signed_hash": OK,
    "f_ea_unsigned_hash": OK,
    "f_ea_zero_size": OK_PLUS,
    "f_inode_ea_collision": OK_PLUS,
    "f_zero_xattr": OK,
    "f_clear_xattr": OK_PLUS,
    "f_selinux": OK,
    "f_file_acl_high": OK_PLUS,
    "r_inline_xattr": OK,
    # Extent trees
    "f_extents": OK_PLUS,
    "f_extents2": OK_PLUS,
    "f_extent_too_deep": OK_PLUS,
    "f_extent_bad_node": OK_PLUS,
    "f_extent_int_bad_csum": OK_PLUS,
    "f_extent_int_bad_extent": OK_PLUS,
    "f_extent_int_bad_magic": OK_PLUS,
    "f_extent_leaf_bad_csum": OK_PLUS,
    "f_extent_leaf_bad_extent": OK_PLUS,
    "f_extent_leaf_bad_magic": OK_PLUS,
    "f_extent_interior_start_lblk": OK_PLUS,
    "f_ext_zero_len": OK_PLUS,
    "f_zeroed_ext_header": OK_PLUS,
    "f_uninit_ext_past_eof": OK,
    "f_uninit_ext_past_eof2": OK,
    "f_uninit_cat": OK,
    "f_collapse_extent_tree": OK,
    "f_compress_extent_tree_level": OK,
    "r_move_inode_int_extent": OK,
    "f_eofblocks": OK,
    # Block-mapped files
    "f_convert_bmap": OK,
    "f_convert_bmap_sparse": OK,
    "f_lotsbad": OK_PLUS,
    # Symlinks
    "f_badsymlinks": OK_PLUS,
    "f_fast_symlink_extents": OK_PLUS,
    "f_invalid_extent_symlink": OK_PLUS,
    "f_filetype": OK_PLUS,
    # Bigalloc
    "f_holedir4": OK_PLUS,
    "f_bigalloc_symlink_with_xattr": OK,
    "f_badcluster": OK_PLUS,
    "f_dup_ba": OK_PLUS,
    # Sparse files, fs-verity
    "f_big_sparse": OK_PLUS,
    "f_verity": OK,
    # Hostile / garbage inodes
    "f_bad_disconnected_inode": OK_PLUS,
    "f_messy_inode": OK_PLUS,
    "f_itable_collision": OK_PLUS,
    "f_ind_inode_collision": OK_PLUS,
    # Superblock / group descriptors / geometry
    "f_crashdisk": REJECT,
    "f_zero_super": REJECT,
    "f_zero_inode_size": REJECT,
    "f_desc_size_zero": REJECT,
    "f_desc_size_128": OK,
    "f_first_meta_bg_too_big": REJECT,
    "f_resize_inode_meta_bg": REJECT_OR_OK_PLUS,
    "f_sb_extra_isize": OK_PLUS,
    "f_8192_block": OK,
    "f_illitable": REJECT_OR_OK_PLUS,
    "f_illitable_flexbg": REJECT_OR_OK_PLUS,
    "f_misstable": REJECT_OR_OK_PLUS,
    "f_zero_group": REJECT,
    "f_boundscheck": REJECT,
    "f_hurd": OK,
    "f_okgroup": OK,
    # Not ext4 at all
    "f_detect_junk": REJECT,
    "f_detect_xfs": REJECT,
    # Checksums
    "f_super_bad_csum": REJECT,
    "f_bad_inode_csum": OK_PLUS,
    "f_bad_gdt_csum": OK_PLUS,
    "f_no_cache_corrupt_inode": OK_PLUS,
    "f_deleted_inode_bad_csum": OK,
    "f_uninit_checksum_bad": OK_PLUS,
    # Shared blocks
    "f_dup": OK_PLUS,
    "f_shared_blocks_ok": OK,
    # Journal / orphans
    # (Before the in-memory replay, the images needing recovery were JOURNAL: read as
    # they stood before replay, with a warning.  Fast commits and an external journal
    # device cannot be replayed from the image alone: refused, exit code 3.)
    "f_orphan": JOURNAL,
    "f_clear_orphan_file": REPLAY,
    "f_badorphan": OK_PLUS,
    "j_recover_fast_commit": REJECT,
    "j_recover_csum3_64bit": REPLAY,
    "f_jnl_64bit": REPLAY,
    "f_ext_journal": REJECT,
}

# Images with no ext2/3/4 superblock at byte 1024: the error must say so, not "corrupt".
NOT_EXT4 = {"f_detect_junk", "f_detect_xfs", "f_zero_super"}

# e2fsck's "Clearing orphaned inode N" lines name the orphans a mount finishes.
_E2FSCK_ORPHAN = re.compile(rb"^Clearing orphaned inode (\d+) ", re.M)
# What the one-line refusal of these REJECT images must say.
REJECT_REASONS = {
    "j_recover_fast_commit": "fast commits",
    "f_ext_journal": "on an external device",
}
E2FSCK = shutil.which("e2fsck")

# Objects known to be damaged in images the README calls OK: (image, path) -> why.
# (None at present: every OK image lists without a single error.)
KNOWN_BAD_IN_OK: dict[tuple[str, bytes], str] = {}

TIME_LIMIT = 60.0  # seconds per image, open + full walk (f_many_subdirs: ~8 s idle)
READ_STEP = 1 << 20
READ_CAP = 16 << 20  # bytes read per file: enough for every file in the corpus
MEMORY_CAP = 48 << 20  # peak traced allocation while walking a hostile image

# Images whose inodes claim huge sizes or logical blocks (4 TiB offsets, i_size ~1.8e19,
# lblk 2^32 - 15): walking them must not allocate in proportion to either.
HOSTILE_SIZES = [
    "f_big_sparse",
    "f_hugedir_blocks",
    "f_toobig_extent_dir",
    "f_messy_inode",
    "f_badsymlinks",
    "f_extent_too_deep",
    "f_extents2",
]


def _find_debugfs() -> str | None:
    found = shutil.which("debugfs")
    if found:
        return found
    for candidate in ("/usr/sbin/debugfs", "/sbin/debugfs"):
        if Path(candidate).is_file():
            return candidate
    return None


DEBUGFS = _find_debugfs()


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def corpus_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``corpus_image(name)``: the decompressed image, made once per session."""
    if not CORPUS.is_dir():
        pytest.skip(f"e2fsprogs test images not found at {CORPUS}")
    root = tmp_path_factory.mktemp("e2fsprogs")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            src = CORPUS / name
            out = root / f"{name}.img"
            if (src / "image.gz").is_file():
                with gzip.open(src / "image.gz") as fin, out.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            elif (src / "image.bz2").is_file():
                with bz2.open(src / "image.bz2") as fin, out.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            else:
                pytest.skip(f"{name}: no image.gz or image.bz2 in {src}")
            made[name] = out
        return made[name]

    yield get
    # 770 MB in all: do not leave it for pytest's basetemp rotation to keep.
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def view_rs_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``view_rs_image(stem)``: a decompressed ext4-view-rs test disk."""
    zstandard = pytest.importorskip("zstandard")
    root = tmp_path_factory.mktemp("ext4-view-rs")
    made: dict[str, Path] = {}

    def get(stem: str) -> Path:
        packed = VIEW_RS / f"{stem}.bin.zst"
        if not packed.is_file():
            pytest.skip(f"{packed} not found")
        if stem not in made:
            out = root / f"{stem}.bin"
            with packed.open("rb") as fin, out.open("wb") as fout:
                zstandard.ZstdDecompressor().copy_stream(fin, fout)
            made[stem] = out
        return made[stem]

    return get


# -- the time bound ------------------------------------------------------------------


class WalkTimeout(BaseException):
    """A walk ran past its bound (a BaseException, so no handler can swallow it)."""


def time_limit(seconds: float) -> AbstractContextManager[None]:
    message = f"still running after {seconds:.0f} s: a hang or a runaway loop"
    return timebound.time_limit(seconds, WalkTimeout, message)


# -- walking everything --------------------------------------------------------------


@dataclass
class Facts:
    """What the reader says about one object."""

    ino: int
    mode: int
    type: InodeType
    size: int
    target: bytes | None = None
    digest: str | None = None  # sha256 of the first READ_CAP bytes of a regular file
    xattr_names: list[bytes] | None = None


@dataclass
class Walked:
    nodes: dict[bytes, Facts] = field(default_factory=dict)  # by raw-name path
    errors: list[str] = field(default_factory=list)  # "path: message", one per failure


def walk_everything(fs: Filesystem) -> Walked:
    """Exercise every reader entry point on every reachable object.

    Only CipherdumpError is caught: anything else propagates and fails the test.
    """
    ns = Namespace(fs)
    out = Walked()
    raw_path = {b"/": b"/"}
    root = ns.root_node()
    for item in ns.walk(root, recursive=True):
        if isinstance(item, Problem):
            _check_error(item.error)
            out.errors.append(f"{item.path!r}: {item.error}")
            continue
        parent = posixpath.dirname(item.path)
        path = posixpath.join(raw_path.get(parent, parent), item.raw_name)
        raw_path[item.path] = path
        ino = item.inode
        facts = Facts(ino.ino, ino.mode, ino.type, ino.size)
        out.nodes[path] = facts

        def attempt(what: str, action: Callable[[], object], path: bytes = path) -> object:
            try:
                return action()
            except CipherdumpError as err:
                _check_error(err)
                out.errors.append(f"{path!r} ({what}): {err}")
                return None

        attempt("node_record", partial(node_record, ns, item))
        attempt("stat_record", partial(stat_record, ns, item))
        names = attempt("xattrs", partial(_xattr_names, ino))
        facts.xattr_names = names if isinstance(names, list) else None
        if ino.type is InodeType.SYMLINK:
            target = attempt("symlink", partial(ns.symlink_target, ino))
            facts.target = target if isinstance(target, bytes) else None
        elif ino.type is InodeType.FILE:
            digest = attempt("read", partial(_read_digest, ino))
            facts.digest = digest if isinstance(digest, str) else None
    return out


def root_entries(fs: Filesystem) -> tuple[set[bytes], set[bytes]]:
    """Names of the root's entries: those that read, and those that are Problems."""
    ns = Namespace(fs)
    good: set[bytes] = set()
    bad: set[bytes] = set()
    for item in ns.walk(ns.root_node(), recursive=False):
        if isinstance(item, Problem):
            if item.path != b"/":
                bad.add(item.path.removeprefix(b"/"))
        else:
            good.add(item.raw_name)
    return good, bad


# Name indexes debugfs knows a prefix for; it prints the others as the bare name.
_DEBUGFS_PREFIXED = {1, 2, 3, 4, 6, 7, 8}


def _xattr_names(inode: Inode) -> list[bytes]:
    """Xattr names as debugfs prints them."""
    return [x.full_name if x.index in _DEBUGFS_PREFIXED else x.name for x in inode.xattrs]


def _read_digest(inode: Inode) -> str:
    h = hashlib.sha256()
    pos = 0
    limit = min(inode.size, READ_CAP)
    while pos < limit:
        chunk = inode.read(pos, min(READ_STEP, limit - pos))
        assert chunk, f"inode {inode.ino}: read at {pos} returned nothing before i_size"
        assert len(chunk) <= READ_STEP
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def _check_error(err: CipherdumpError) -> None:
    """A per-object error must be a one-line message a user can act on."""
    text = str(err)
    assert text.strip(), f"{type(err).__name__} with an empty message"
    assert "\n" not in text, f"multi-line error message: {text!r}"


def open_image(path: Path) -> Filesystem:
    return Filesystem(FileSource(str(path)), owns_source=True)


# -- debugfs, the oracle -------------------------------------------------------------

_LS_P = re.compile(rb"^/(\d+)/(\d+)/(\d+)/(\d+)/(.*?)/(\d*)/$", re.M | re.S)
_FAST_LINK = re.compile(rb'^Fast link dest: "(.*)"$', re.M)
# "  user.foo (3) = ..." or, for a name with unprintable bytes, "  75 73 65 ... (80)".
_EA_NAME = re.compile(rb"^  (?:((?:[0-9a-f]{2} )+) |(\S+) )\((\d+)\)", re.M)


@dataclass(frozen=True)
class DebugfsEntry:
    ino: int
    mode: int
    size: int | None  # None for directories (ls -p prints no size)


def debugfs_batch(image: Path, commands: list[str], scratch: Path) -> list[bytes]:
    """Run ``commands`` in one debugfs process; one stdout section per command."""
    assert DEBUGFS is not None
    if not commands:
        return []
    script = scratch / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    res = subprocess.run(
        [DEBUGFS, "-f", str(script), str(image)], capture_output=True, timeout=300, check=False
    )
    parts = re.split(rb"^debugfs: .*\n", res.stdout, flags=re.M)[1:]
    assert len(parts) == len(commands), res.stderr.decode(errors="replace")[-2000:]
    return parts


def parse_ls_p(text: bytes) -> list[tuple[bytes, DebugfsEntry]]:
    out = []
    for m in _LS_P.finditer(text):
        ino, mode = int(m.group(1)), int(m.group(2), 8)
        size = int(m.group(6)) if m.group(6) else None
        out.append((m.group(5), DebugfsEntry(ino, mode, size)))
    return out


def debugfs_tree(image: Path, scratch: Path, *, recursive: bool) -> dict[bytes, DebugfsEntry]:
    """Every entry (inode 0 excluded) by raw-name path, directory level by level."""
    out: dict[bytes, DebugfsEntry] = {}
    frontier = [(b"/", 2)]
    seen = {2}
    while frontier:
        texts = debugfs_batch(image, [f"ls -p <{ino}>" for _, ino in frontier], scratch)
        following = []
        for (base, _), text in zip(frontier, texts, strict=True):
            for name, entry in parse_ls_p(text):
                if name in (b".", b"..") or entry.ino == 0:
                    continue
                path = posixpath.join(base, name)
                out[path] = entry
                if recursive and stat.S_ISDIR(entry.mode) and entry.ino not in seen:
                    seen.add(entry.ino)
                    following.append((path, entry.ino))
        frontier = following
    return out


def debugfs_contents(image: Path, inos: list[int], scratch: Path) -> dict[int, bytes]:
    """``dump <ino>`` for each inode; the stored bytes up to i_size."""
    outdir = scratch / "dump"
    outdir.mkdir(exist_ok=True)
    debugfs_batch(image, [f"dump <{i}> {outdir / str(i)}" for i in inos], scratch)
    return {i: (outdir / str(i)).read_bytes() for i in inos if (outdir / str(i)).exists()}


def debugfs_targets(image: Path, inos: list[int], scratch: Path) -> dict[int, bytes]:
    """Symlink targets: ``Fast link dest`` from ``stat``, else the dumped block."""
    texts = debugfs_batch(image, [f"stat <{i}>" for i in inos], scratch)
    out: dict[int, bytes] = {}
    slow = []
    for i, text in zip(inos, texts, strict=True):
        m = _FAST_LINK.search(text)
        if m:
            out[i] = m.group(1)
        else:
            slow.append(i)
    out.update(debugfs_contents(image, slow, scratch))
    return out


def debugfs_xattr_names(image: Path, inos: list[int], scratch: Path) -> dict[int, list[bytes]]:
    texts = debugfs_batch(image, [f"ea_list <{i}>" for i in inos], scratch)
    return {
        i: sorted(
            bytes.fromhex(m.group(1).decode()) if m.group(1) else m.group(2)
            for m in _EA_NAME.finditer(t)
        )
        for i, t in zip(inos, texts, strict=True)
    }


def compare_with_debugfs(
    image: Path, walked: Walked, scratch: Path, *, recursive: bool, sample: int | None
) -> None:
    """Assert that the reader's view equals debugfs's for names, inodes, modes, sizes,
    symlink targets, xattr names and (a sample of, or all) file contents."""
    oracle = debugfs_tree(image, scratch, recursive=recursive)
    ours = (
        walked.nodes
        if recursive
        else {p: f for p, f in walked.nodes.items() if posixpath.dirname(p) == b"/"}
    )
    assert sorted(ours) == sorted(oracle)
    for path, want in oracle.items():
        got = ours[path]
        assert (got.ino, got.mode) == (want.ino, want.mode), path
        if want.size is not None:
            assert got.size == want.size, path
    files = sorted((p, f) for p, f in ours.items() if f.type is InodeType.FILE)
    links = sorted((p, f) for p, f in ours.items() if f.type is InodeType.SYMLINK)
    if sample is not None:
        files, links = _spread(files, sample), _spread(links, sample)
    files = [(p, f) for p, f in files if f.size <= READ_CAP]
    data = debugfs_contents(image, [f.ino for _, f in files], scratch)
    for path, f in files:
        # debugfs dumps the whole inline-data area of an inline file, past i_size.
        assert len(data[f.ino]) >= f.size, path
        assert f.digest == hashlib.sha256(data[f.ino][: f.size]).hexdigest(), path
    targets = debugfs_targets(image, [f.ino for _, f in links], scratch)
    for path, f in links:
        assert f.target == targets[f.ino], path
    everything = sorted(ours.items())
    if sample is not None:
        everything = _spread(everything, sample)
    eas = debugfs_xattr_names(image, [f.ino for _, f in everything], scratch)
    for path, f in everything:
        assert sorted(f.xattr_names or []) == eas[f.ino], path


def _spread(items: list[tuple[bytes, Facts]], n: int) -> list[tuple[bytes, Facts]]:
    """``n`` items spread evenly over the sorted list (all if there are fewer)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


# -- the corpus ----------------------------------------------------------------------


def test_table_covers_every_image() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"e2fsprogs test images not found at {CORPUS}")
    present = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert present == set(EXPECTATIONS)


@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_image(name: str, corpus_image: Callable[[str], Path], tmp_path: Path) -> None:
    expect = EXPECTATIONS[name]
    image = corpus_image(name)
    with time_limit(TIME_LIMIT):
        try:
            fs = open_image(image)
        except CipherdumpError as err:
            _check_error(err)
            assert expect in (REJECT, REJECT_OR_OK_PLUS, JOURNAL), f"refused to open: {err}"
            if name in NOT_EXT4:
                assert isinstance(err, NotExt4Error), err
            assert REJECT_REASONS.get(name, "") in str(err)
            return
        with fs:
            assert expect != REJECT, f"opened an image that must be refused ({fs.warnings})"
            expect_1 = CORPUS / name / "expect.1"
            if expect_1.is_file():
                orphans = {int(n) for n in _E2FSCK_ORPHAN.findall(expect_1.read_bytes())}
                assert fs.orphans.deleted | fs.orphans.truncated == orphans
            if expect == JOURNAL:
                assert fs.orphans.count and not fs.warnings, fs.warnings
            if expect == REPLAY:
                assert fs.needs_recovery and fs.journal_replayed
                assert not any("journal" in w for w in fs.warnings), fs.warnings
            walked = walk_everything(fs)
    if expect == REPLAY and DEBUGFS is not None and E2FSCK is not None:
        before = hashlib.sha256(image.read_bytes()).hexdigest()
        recovered = tmp_path / "recovered.img"
        shutil.copyfile(image, recovered)
        subprocess.run([E2FSCK, "-fy", str(recovered)], capture_output=True, check=False)
        assert not walked.errors, walked.errors[:10]
        compare_with_debugfs(recovered, walked, tmp_path, recursive=True, sample=40)
        assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    if expect == OK:
        bad = [e for e in walked.errors if not any(k[0] == name for k in KNOWN_BAD_IN_OK)]
        assert not bad, bad[:10]
        if DEBUGFS is not None:
            big = len(walked.nodes) > 5000
            compare_with_debugfs(
                image, walked, tmp_path, recursive=not big, sample=40 if not big else 20
            )
    elif expect in (OK_PLUS, KEYED, REJECT_OR_OK_PLUS) and DEBUGFS is not None:
        # Damage stays local: the root lists the names debugfs lists (a bad entry shows
        # up as a per-object error, never as a silently missing name), unless the root
        # itself is unreadable.
        with open_image(image) as fs:
            try:
                good, failed = root_entries(fs)
            except CipherdumpError:
                return  # the root inode itself is unreadable: nothing to compare
        if good or failed:
            oracle = {p.removeprefix(b"/") for p in debugfs_tree(image, tmp_path, recursive=False)}
            assert good <= oracle
            # debugfs leaves out entries whose inode it cannot read; we report them.
            assert oracle <= good | failed


@pytest.mark.slow
@pytest.mark.skipif(DEBUGFS is None, reason="debugfs not installed")
@pytest.mark.parametrize("name", ["f_h_normal", "f_h_unsigned", "f_many_subdirs"])
def test_big_clean_image_full_listing(
    name: str, corpus_image: Callable[[str], Path], tmp_path: Path
) -> None:
    with open_image(corpus_image(name)) as fs:
        walked = walk_everything(fs)
    assert not walked.errors
    compare_with_debugfs(corpus_image(name), walked, tmp_path, recursive=True, sample=200)


@pytest.mark.parametrize("name", HOSTILE_SIZES)
def test_hostile_sizes_do_not_drive_memory(name: str, corpus_image: Callable[[str], Path]) -> None:
    image = corpus_image(name)
    tracemalloc.start()
    try:
        with time_limit(TIME_LIMIT), open_image(image) as fs:
            walk_everything(fs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CAP, f"peak {peak >> 20} MiB while walking {name}"


# -- the CLI on a few images -----------------------------------------------------------

# (image, exit code of `cipherdump ls -R --json`) as the CLI's docstring documents them:
# 0 all read, 1 some objects unreadable, 3 unusable input.
CLI_CASES = [
    ("f_valid_ea_in_inode", 0),
    ("d_inline_dump", 0),
    ("f_baddir", 1),
    ("f_badsymlinks2", 1),
    ("f_bad_inode_csum", 1),
    ("f_corrupt_dirent_tail", 1),
    ("f_jnl_64bit", 0),
    ("f_crashdisk", 3),
    ("f_detect_xfs", 3),
    ("f_boundscheck", 3),
]


def _run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("name", "code"), CLI_CASES)
def test_cli_ls_recursive_json(name: str, code: int, corpus_image: Callable[[str], Path]) -> None:
    rc, out, err = _run_cli("ls", "-R", "--json", str(corpus_image(name)))
    assert "Traceback" not in out + err
    assert "internal error" not in err
    assert rc == code, err
    if rc == 3:
        assert not out and err.count("\n") == 1 and err.startswith("cipherdump: error: ")
    if EXPECTATIONS[name] == JOURNAL:
        assert "cipherdump: warning:" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_cli_every_image(name: str, corpus_image: Callable[[str], Path]) -> None:
    image = str(corpus_image(name))
    for args in (("ls", "-R", "--json", image), ("info", image), ("stat", image, "/")):
        rc, out, err = _run_cli(*args)
        assert "Traceback" not in out + err
        assert rc in (0, 1, 3), (args, err)


# -- backups of the corpus ------------------------------------------------------------

SAMPLE = REPO / "examples" / "sample.img"
# The exit codes `backup` may give per expectation: a clean image is backed up whole; a
# damaged one with its bad objects reported (1) or, if it cannot be opened, refused (3).
BACKUP_CODES = {
    OK: {0},
    OK_PLUS: {0, 1},
    KEYED: {0, 1},
    REJECT: {3},
    REJECT_OR_OK_PLUS: {0, 1, 3},
    JOURNAL: {0, 1, 3},
    REPLAY: {0},
}


def _backup_all_into_one_repository(
    names: list[str], corpus_image: Callable[[str], Path], repo: Path
) -> None:
    """Back up every image of ``names`` into one repository, as a nightly job over many
    sources would: each gets its documented exit code and, when refused, one line;
    none leaves the repository damaged or unusable for the next source."""
    env = {
        "CIPHERDUMP_INSECURE_TEST_KDF": "1",
        "CIPHERDUMP_PASSWORD": "pw",
        "CIPHERDUMP_REPOSITORY": str(repo),
    }

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(
            result.exception
        )
        assert "Traceback" not in result.stdout + result.stderr
        assert "internal error" not in result.stderr
        return result.exit_code, result.stdout, result.stderr

    assert run("init")[0] == 0
    backed_up = 0
    for name in names:
        with time_limit(TIME_LIMIT):
            rc, out, err = run("backup", "--json", str(corpus_image(name)))
        assert rc in BACKUP_CODES[EXPECTATIONS[name]], (name, rc, err)
        if rc == 3:
            assert not out and err.startswith("cipherdump: error: ") and err.count("\n") == 1
        else:
            summary = json.loads(out.splitlines()[-1])
            assert len(summary["snapshot_id"]) == 64, name
            backed_up += 1
    rc, out, err = run("check", "--read-data", "--json")
    assert rc == 0, out + err
    rc, out, err = run("backup", "--json", str(SAMPLE))
    assert rc == 0, err
    snapshots = json.loads(run("snapshots", "--json")[1])
    assert len(snapshots) == backed_up + 1


def test_backups_of_some_damaged_images_keep_the_repository_sound(
    corpus_image: Callable[[str], Path], tmp_path: Path
) -> None:
    names = [name for name, _ in CLI_CASES]
    _backup_all_into_one_repository(names, corpus_image, tmp_path / "repo")


@pytest.mark.slow
def test_backups_of_every_image_keep_the_repository_sound(
    corpus_image: Callable[[str], Path], tmp_path: Path
) -> None:
    _backup_all_into_one_repository(sorted(EXPECTATIONS), corpus_image, tmp_path / "repo")


# -- ext4-view-rs test disks -----------------------------------------------------------


def test_view_rs_disk1_lists_completely(
    view_rs_image: Callable[[str], Path], tmp_path: Path
) -> None:
    image = view_rs_image("test_disk1")
    with time_limit(TIME_LIMIT), open_image(image) as fs:
        assert fs.block_size == 1024
        assert not fs.warnings
        walked = walk_everything(fs)
    assert not walked.errors
    paths = set(walked.nodes)
    assert len([p for p in paths if p.startswith(b"/big_dir/")]) == 10_000
    assert len([p for p in paths if p.startswith(b"/medium_dir/")]) == 1_000
    links = {p: f for p, f in walked.nodes.items() if f.type is InodeType.SYMLINK}
    assert {len(f.target or b"") for f in links.values()} >= {10, 59, 60, 1023}
    if DEBUGFS is None:
        pytest.skip("debugfs not installed: listing not compared")
    compare_with_debugfs(image, walked, tmp_path, recursive=True, sample=None)


def test_view_rs_journal_disk_is_replayed(
    view_rs_image: Callable[[str], Path], tmp_path: Path
) -> None:
    """A simulated power cut: read as `e2fsck -fy` recovers it (before the replay in
    memory, the state before replay was read, with a warning)."""
    image = view_rs_image("test_disk_4k_block_journal")
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    with open_image(image) as fs:
        assert fs.needs_recovery and fs.journal_replayed
        assert not any("journal" in w for w in fs.warnings), fs.warnings
        info = fs_info(fs)
        assert info["state"] == "clean"
        assert info["journal"]["replayed"]["transactions"] == 2
        walked = walk_everything(fs)
    assert not walked.errors
    rc, out, err = _run_cli("info", str(image))
    assert rc == 0, err
    assert re.search(r"^State:\s+clean \(journal replayed in memory\)$", out, re.M), out
    assert re.search(r"^Journal:\s+inode 8; 4 MiB, v2; .*replayed in memory: 2 trans", out, re.M)
    assert "journal" not in err
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    if DEBUGFS is None or E2FSCK is None:
        pytest.skip("debugfs or e2fsck not installed: listing not compared")
    recovered = tmp_path / "recovered.img"
    shutil.copyfile(image, recovered)
    subprocess.run([E2FSCK, "-fy", str(recovered)], capture_output=True, check=False)
    compare_with_debugfs(recovered, walked, tmp_path, recursive=True, sample=None)


# e2fsck's own findings (expect.1 of each image) about htree roots and index blocks that
# a reader checks: checksums, limits (as the kernel's dx_probe), and roots not laid out
# as roots.
_HTREE_FINDING = re.compile(
    rb"HTREE directory inode (\d+)(?:: (?:root|internal) node fails checksum| has an invalid "
    rb"root node|: block #\d+ has invalid limit)"
)


@pytest.mark.parametrize(
    "name", ["f_htree_bad_csum", "f_preen_htree_csum", "f_h_badroot", "f_h_normal"]
)
def test_damaged_htree_indexes_are_warnings_as_e2fsck_finds_them(
    name: str, corpus_image: Callable[[str], Path]
) -> None:
    """A full listing does not need the index, so a damaged one is a warning naming the
    directory, exactly the directories e2fsck names, and the listing is complete."""
    expect = (CORPUS / name / "expect.1").read_bytes()
    wanted = {int(m.group(1)) for m in _HTREE_FINDING.finditer(expect)}
    with open_image(corpus_image(name)) as fs:
        walked = walk_everything(fs)
        warned = {
            int(m.group(1)) for w in fs.warnings if (m := re.match(r"directory inode (\d+)", w))
        }
    assert warned == wanted, fs.warnings
    assert walked.nodes
    result = CliRunner().invoke(cli, ["ls", "-R", str(corpus_image(name))])
    for ino in wanted:
        assert f"warning: directory inode {ino} block" in result.output
