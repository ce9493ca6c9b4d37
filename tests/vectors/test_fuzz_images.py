"""Mutation fuzzing of whole images: damaged metadata may only ever raise CipherdumpError.

Small valid images (three from the e2fsprogs corpus, and one made here with
``mkfs.ext4 -d`` when it is installed) get a few bytes flipped or overwritten, mostly in
their metadata: the superblock, the group descriptors, the used part of the inode tables,
directory blocks, extent index blocks, xattr blocks and symlink blocks, located by reading
the pristine image first.  Each mutant is opened from a ``MemorySource`` and walked
completely (every node described, every symlink resolved, every file read, every xattr
decoded) under a time bound.  Anything but a ``CipherdumpError`` is a reader bug.

Mutants are also backed up three times into one repository (fresh, incremental, and
reading everything): the three snapshots must agree and the repository pass ``check``.

Two classes of input get seeds and mutations of their own: a filesystem whose
metadata_csum was switched off by ``tune2fs`` (old checksum tails stay in directory
blocks, inside the last entry), and directory entries renamed to what ext4 forbids
(``.``, ``..``, empty, with NUL or '/', or a name length past the entry): every reader
must report such an entry, never list it nor drop it unseen, and ``clone`` must leave it
out of an image that e2fsck calls clean.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timebound
from cipherdump.blockio import MemorySource
from cipherdump.engine.describe import node_record, stat_record
from cipherdump.engine.views.image import Namespace, Problem
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.inode import InodeType
from cipherdump.ondisk.extent import EXT4_EXT_MAGIC
from shared_data import SHARED_TESTDATA

CORPUS = SHARED_TESTDATA / "e2fsprogs"

# Corpus images used as seeds: no checksums (so mutations reach deep), inline data,
# and one with metadata_csum (so the checksum paths see damage too).
CORPUS_SEEDS = ["f_valid_ea_in_inode", "d_inline_dump", "f_ea_signed_hash"]
MKFS_SEED = "mkfs"
CSUM_OFF_SEED = "mkfs-csum-off"

TIME_LIMIT = 5.0  # seconds per mutant; a clean walk of any seed takes well under 0.1 s
READ_CAP = 1 << 20  # bytes read per file
MAX_INODES_PER_GROUP = 64  # of each inode table, the part treated as "hot"


class Hang(Exception):
    """A mutant's walk ran past TIME_LIMIT (an Exception, so Hypothesis shrinks it)."""


def time_limit(seconds: float) -> AbstractContextManager[None]:
    return timebound.time_limit(seconds, Hang, f"walk still running after {seconds} s")


# -- seeds ---------------------------------------------------------------------------


def _mkfs_seed(workdir: Path, *, csum_off_later: bool = False) -> bytes | None:
    """A 2 MiB, 1 KiB-block ext4 made by ``mkfs.ext4 -d`` from a small varied tree.

    ``csum_off_later``: made with metadata_csum, then switched off by ``tune2fs``.
    """
    mkfs = shutil.which("mkfs.ext4") or next(
        (p for p in ("/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4") if Path(p).is_file()), None
    )
    if mkfs is None:
        return None
    root = workdir / "tree"
    if root.exists():
        shutil.rmtree(root)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big").mkdir()
    for i in range(120):  # a directory of several blocks
        (root / "big" / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"x" * (i % 7))
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "sub" / "multi").write_bytes(bytes(range(256)) * 300)  # ~75 blocks
    with (root / "sub" / "sparse").open("wb") as f:
        f.write(b"head")
        f.seek(200_000)
        f.write(b"tail")
    (root / "sub" / "deeper" / "leaf").write_bytes(b"leaf")
    os.symlink("small", root / "fast-link")
    os.symlink("t/" * 100, root / "slow-link")
    os.mkfifo(root / "fifo")
    image = workdir / ("csum-off.img" if csum_off_later else "mkfs.img")
    features = "^has_journal" + ("" if csum_off_later else ",^metadata_csum")
    res = subprocess.run(
        [mkfs, "-q", "-F", "-b", "1024", "-N", "256", "-O", features,
         "-E", "root_owner=0:0", "-d", str(root), str(image), "2M"],
        capture_output=True,
        check=False,
    )  # fmt: skip
    if res.returncode != 0:
        return None
    if csum_off_later:
        tune2fs = shutil.which("tune2fs")
        if tune2fs is None:
            return None
        res = subprocess.run([tune2fs, "-O", "^metadata_csum", str(image)],
                             capture_output=True, check=False)  # fmt: skip
        if res.returncode != 0:
            return None
    return image.read_bytes()


@pytest.fixture(scope="session")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in CORPUS_SEEDS:
        packed = CORPUS / name / "image.gz"
        if packed.is_file():
            out[name] = gzip.decompress(packed.read_bytes())
    made = _mkfs_seed(tmp_path_factory.mktemp("fuzz-seed"))
    if made is not None:
        out[MKFS_SEED] = made
    made = _mkfs_seed(tmp_path_factory.mktemp("fuzz-seed"), csum_off_later=True)
    if made is not None:
        out[CSUM_OFF_SEED] = made
    return out


def hot_ranges(image: bytes) -> list[tuple[int, int]]:
    """Byte ranges ``[lo, hi)`` of the metadata of a valid image, found by reading it."""
    fs = Filesystem(MemorySource(image))
    bs = fs.block_size
    sb = fs.sb
    ranges = [(1024, 2048)]
    gdt_start = (1 if bs == 1024 else 0) + 1
    gdt_len = -(-sb.group_count * sb.desc_size // bs)
    ranges.append((gdt_start * bs, (gdt_start + gdt_len) * bs))
    isz = sb.inode_size
    for gd in fs.groups:
        lo = gd.bg_inode_table * bs
        ranges.append((lo, lo + min(sb.s_inodes_per_group, MAX_INODES_PER_GROUP) * isz))
    for ino in fs.iter_used_inodes()[:500]:
        try:
            inode = fs.inode(ino)
        except CipherdumpError:
            continue
        blocks: list[int] = []
        if inode.raw.i_file_acl:
            blocks.append(inode.raw.i_file_acl)
        if inode.uses_extents:
            blocks += _extent_index_blocks(inode)
        if inode.is_dir or (inode.is_symlink and not inode.is_fast_symlink):
            try:
                for run in inode.mapped_runs()[:16]:
                    blocks += [run.pblk + k for k in range(min(run.length, 8)) if run.pblk]
            except CipherdumpError:
                pass
        ranges += [(b * bs, (b + 1) * bs) for b in blocks if fs.block_in_range(b)]
    return sorted(set(ranges))


def _extent_index_blocks(inode: Inode) -> list[int]:
    """Blocks the root of an extent tree points to, when the tree has depth > 0."""
    magic, entries, _max, depth = struct.unpack_from("<HHHH", inode.raw.i_block)
    if magic != EXT4_EXT_MAGIC or depth == 0:
        return []
    out = []
    for i in range(min(entries, 4)):
        _blk, lo, hi = struct.unpack_from("<IIH", inode.raw.i_block, 12 + 12 * i)
        out.append(hi << 32 | lo)
    return out


# -- mutations -----------------------------------------------------------------------

_WORDS = [0, 1, 2, 12, 0x7F, 0x80, 0xFF, 0x400, 0x1000, 0x7FFF, 0x8000, 0xFFFF,
          0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xF30A, 0xEF53, 0xEA020000]  # fmt: skip


# An edit: (offset, bytes, xor).  With xor the bytes are XORed in (a bit flip),
# otherwise they overwrite what is there.
Edit = tuple[int, bytes, bool]


@st.composite
def mutations(draw: st.DrawFn, ranges: list[tuple[int, int]], size: int) -> list[Edit]:
    """1-8 edits: mostly inside metadata, one in ten anywhere in the first 256 KiB."""
    edits: list[Edit] = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 9)) == 0:
            lo, hi = 0, min(size, 256 << 10)
        else:
            lo, hi = draw(st.sampled_from(ranges))
        off = draw(st.integers(lo, max(lo, hi - 1)))
        kind = draw(st.sampled_from(["flip", "byte", "le16", "le32"]))
        if kind == "flip":
            edits.append((off, bytes([1 << draw(st.integers(0, 7))]), True))
        elif kind == "byte":
            edits.append((off, bytes([draw(st.integers(0, 255))]), False))
        else:
            width = 2 if kind == "le16" else 4
            word = draw(st.sampled_from(_WORDS) | st.integers(0, (1 << 8 * width) - 1))
            edits.append((off, (word & ((1 << 8 * width) - 1)).to_bytes(width, "little"), False))
    return edits


def apply(image: bytes, edits: list[Edit]) -> bytes:
    buf = bytearray(image)
    for off, new, xor in edits:
        new = new[: max(0, len(buf) - off)]
        if xor:
            for k, b in enumerate(new):
                buf[off + k] ^= b
        else:
            buf[off : off + len(new)] = new
    return bytes(buf)


# -- the walk ------------------------------------------------------------------------


def exercise(image: bytes) -> None:
    """Open and walk everything; CipherdumpError is the only acceptable failure."""
    try:
        fs = Filesystem(MemorySource(image))
    except CipherdumpError:
        return
    ns = Namespace(fs)
    try:
        root = ns.root_node()
    except CipherdumpError:
        return
    for item in ns.walk(root, recursive=True):
        if isinstance(item, Problem):
            assert isinstance(item.error, CipherdumpError)
            continue
        inode = item.inode
        steps: list[Callable[[], object]] = [
            partial(node_record, ns, item),
            partial(stat_record, ns, item),
            partial(getattr, inode, "xattrs"),
        ]
        if inode.type is InodeType.SYMLINK:
            steps.append(partial(ns.symlink_target, inode))
        elif inode.type is InodeType.FILE:
            steps.append(partial(_read_some, inode))
        for step in steps:
            with suppress(CipherdumpError):
                step()


def _read_some(inode: Inode) -> None:
    pos = 0
    limit = min(inode.size, READ_CAP)
    while pos < limit:
        chunk = inode.read(pos, min(256 << 10, limit - pos))
        assert chunk, f"inode {inode.ino}: empty read at {pos} before i_size"
        pos += len(chunk)


# -- tests ---------------------------------------------------------------------------

SEED_NAMES = [*CORPUS_SEEDS, MKFS_SEED, CSUM_OFF_SEED]
_FAST = settings(
    max_examples=50,
    deadline=None,  # the time bound is TIME_LIMIT, enforced by an alarm
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def _seed(seeds: dict[str, bytes], name: str) -> tuple[bytes, list[tuple[int, int]]]:
    if name not in seeds:
        pytest.skip(f"seed image {name} unavailable (shared testdata or mkfs.ext4 missing)")
    image = seeds[name]
    return image, hot_ranges(image)


def test_seeds_walk_cleanly(seeds: dict[str, bytes]) -> None:
    """The unmutated seeds read without a single per-object error."""
    if not seeds:
        pytest.skip("no seed images")
    for name, image in seeds.items():
        fs = Filesystem(MemorySource(image))
        ns = Namespace(fs)
        items = list(ns.walk(ns.root_node(), recursive=True))
        assert items, name
        assert not [i for i in items if isinstance(i, Problem)], name
        assert len(hot_ranges(image)) > 3, name


@pytest.mark.parametrize("name", SEED_NAMES)
@_FAST
@given(data=st.data())
def test_mutated_image_raises_only_cipherdump_errors(
    name: str, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    image, ranges = _seed(seeds, name)
    edits = data.draw(mutations(ranges, len(image)), label="edits")
    with time_limit(TIME_LIMIT):
        exercise(apply(image, edits))


@pytest.mark.slow
@pytest.mark.parametrize("name", SEED_NAMES)
@settings(_FAST, max_examples=1000)
@given(data=st.data())
def test_mutated_image_many(name: str, seeds: dict[str, bytes], data: st.DataObject) -> None:
    image, ranges = _seed(seeds, name)
    edits = data.draw(mutations(ranges, len(image)), label="edits")
    with time_limit(TIME_LIMIT):
        exercise(apply(image, edits))


# -- crafted hostile maps ------------------------------------------------------------


def test_extent_tree_reusing_blocks_is_refused(seeds: dict[str, bytes]) -> None:
    """A depth-1 extent tree whose 336 extents all map the same 100 blocks of empty
    directory entries: every block parses, so only a bound on the mapping stops the
    root from being read 33,600 blocks long (or, one level deeper, billions)."""
    if MKFS_SEED not in seeds:
        pytest.skip("mkfs.ext4 unavailable")
    image = bytearray(seeds[MKFS_SEED])
    fs = Filesystem(MemorySource(bytes(image)))
    bs, count = fs.block_size, fs.sb.s_blocks_count
    area, leaves = count - 120, [count - 5 + i for i in range(4)]
    assert not any(image[area * bs : count * bs]), "the chosen blocks must be free"
    empty_block = struct.pack("<IHBB", 0, bs, 0, 0).ljust(bs, b"\0")
    for b in range(area, area + 100):
        image[b * bs : (b + 1) * bs] = empty_block
    per_leaf = (bs - 12) // 12
    for i, leaf in enumerate(leaves):
        node = struct.pack("<HHHHI", EXT4_EXT_MAGIC, per_leaf, per_leaf, 0, 0)
        for k in range(per_leaf):
            node += struct.pack("<IHHI", (i * per_leaf + k) * 100, 100, 0, area)
        image[leaf * bs : leaf * bs + len(node)] = node
    root = struct.pack("<HHHHI", EXT4_EXT_MAGIC, 4, 4, 1, 0)
    for i, leaf in enumerate(leaves):
        root += struct.pack("<IIHH", i * per_leaf * 100, leaf, 0, 0)
    at = fs.groups[0].bg_inode_table * bs + (2 - 1) * fs.sb.inode_size
    image[at + 0x28 : at + 0x28 + 60] = root.ljust(60, b"\0")
    image[at + 0x04 : at + 0x08] = struct.pack("<I", 0xFFFFFFFF)  # i_size: huge
    image[at + 0x6C : at + 0x70] = struct.pack("<I", 0xFFFF)

    fs = Filesystem(MemorySource(bytes(image)))
    ns = Namespace(fs)
    with time_limit(TIME_LIMIT):
        items = list(ns.walk(ns.root_node(), recursive=True))
    assert len(items) == 1 and isinstance(items[0], Problem), items
    assert "more blocks than the filesystem has" in str(items[0].error)


# -- names ext4 forbids ------------------------------------------------------------------

# What a live entry's name becomes: (new name_len, bytes written at the name).  The
# entry keeps its rec_len; a name_len past it makes the whole block unreadable.
_BAD_NAMES: dict[str, tuple[int | None, bytes]] = {
    "dot": (1, b"."),
    "dotdot": (2, b".."),
    "empty": (0, b""),
    "nul": (None, b"\0"),
    "slash": (None, b"/"),
    "long": (255, b""),
}


def live_entries(image: bytes) -> list[tuple[int, int, bytes]]:
    """(directory inode, byte offset in the image, name) of every entry of every
    directory but its own '.' and '..', found by reading the pristine image."""
    fs = Filesystem(MemorySource(image))
    bs = fs.block_size
    out: list[tuple[int, int, bytes]] = []
    for ino in fs.iter_used_inodes():
        inode = fs.inode(ino)
        if not inode.is_dir or inode.has_inline_data:
            continue
        for run in inode.runs:
            if run.pblk is None:
                continue
            for k in range(run.length):
                base = (run.pblk + k) * bs
                pos = 0
                while pos < bs:
                    e_ino, rec_len, name_len = struct.unpack_from("<IHB", image, base + pos)
                    if rec_len < 8:
                        break
                    name = image[base + pos + 8 : base + pos + 8 + name_len]
                    if e_ino and name_len and name not in (b".", b".."):
                        out.append((ino, base + pos, name))
                    pos += rec_len
    return out


def rename_entry(image: bytes, at: int, name: bytes, kind: str) -> bytes:
    buf = bytearray(image)
    name_len, new = _BAD_NAMES[kind]
    if name_len is None:  # a NUL or '/' in the middle of the old name
        buf[at + 8 + len(name) // 2] = new[0]
    else:
        buf[at + 6] = name_len
        buf[at + 8 : at + 8 + len(new)] = new
    return bytes(buf)


@st.composite
def renamings(
    draw: st.DrawFn, entries: list[tuple[int, int, bytes]]
) -> tuple[int, int, bytes, str]:
    ino, at, name = draw(st.sampled_from(entries))
    kind = draw(st.sampled_from(sorted(_BAD_NAMES)))
    if kind in ("nul", "slash") and len(name) < 2:
        kind = "dotdot"
    return ino, at, name, kind


@pytest.mark.parametrize("name", [MKFS_SEED, CSUM_OFF_SEED])
@settings(_FAST, max_examples=30)
@given(data=st.data())
def test_forbidden_names_are_reported(
    name: str, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    """A renamed entry is never listed and never dropped unseen: the walk yields a
    problem inside its directory (the entry, or the whole directory)."""
    image, _ranges = _seed(seeds, name)
    _dir, at, old, kind = data.draw(renamings(live_entries(image)), label="renaming")
    mutant = rename_entry(image, at, old, kind)
    with time_limit(TIME_LIMIT):
        exercise(mutant)
        fs = Filesystem(MemorySource(mutant))
        ns = Namespace(fs)
        items = list(ns.walk(ns.root_node(), recursive=True))
    problems = [i for i in items if isinstance(i, Problem)]
    assert problems, (kind, old)
    listed = [i for i in items if not isinstance(i, Problem)]
    for item in listed:
        assert item.raw_name not in (b"", b".", b".."), item.path
        assert b"/" not in item.raw_name and b"\0" not in item.raw_name, item.path


@pytest.mark.parametrize("kind", sorted(_BAD_NAMES))
def test_clone_leaves_forbidden_names_out(
    seeds: dict[str, bytes], kind: str, tmp_path: Path
) -> None:
    """clone of an image with a renamed entry in its big directory: the entry (or, when
    its block no longer parses, the directory's listing) is a problem; the copy is clean."""
    from cipherdump.engine.restore_image import clone_image

    image, _ranges = _seed(seeds, MKFS_SEED)
    fs = Filesystem(MemorySource(image))
    big = fs.root.entry_named(b"big")
    assert big is not None
    _dir, at, old = next(e for e in live_entries(image) if e[0] == big.ino)
    src = tmp_path / "src.img"
    src.write_bytes(rename_entry(image, at, old, kind))
    out = tmp_path / "out.img"
    problems: list[bytes] = []
    try:
        summary = clone_image(str(src), str(out), on_problem=lambda p, e: problems.append(p))
    except CipherdumpError:
        assert kind == "long", "only an unreadable directory may stop the clone"
        return
    assert summary["problems"] == len(problems) >= 1
    assert all(p.startswith(b"/big/") for p in problems), problems
    proc = subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# -- journals ------------------------------------------------------------------------

# Images whose journal needs recovery: mutants of their log (the journal superblock,
# descriptor, revoke and commit blocks, and the data copies) are replayed in memory.
# f_jnl_64bit: 64-bit tags, revokes, no checksums; f_clear_orphan_file: checksum v3.
JOURNAL_SEEDS = ["f_jnl_64bit", "f_clear_orphan_file"]


@pytest.fixture(scope="session")
def journal_seeds() -> dict[str, tuple[bytes, list[tuple[int, int]]]]:
    out: dict[str, tuple[bytes, list[tuple[int, int]]]] = {}
    for name in JOURNAL_SEEDS:
        packed = CORPUS / name / "image.gz"
        if packed.is_file():
            image = gzip.decompress(packed.read_bytes())
            out[name] = (image, journal_ranges(image))
    return out


def journal_ranges(image: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the journal's superblock and of every block of its live log."""
    from cipherdump.ext4.journal import _JournalFile

    fs = Filesystem(MemorySource(image), replay=False)
    journal = _JournalFile(fs, fs.sb.s_journal_inum)
    jsb = journal.superblock
    bs = fs.block_size
    assert fs.needs_recovery and jsb.s_start, "a journal seed must need recovery"
    full = Filesystem(MemorySource(image))
    assert full.journal is not None and full.journal.replay is not None
    last = max(lblk for lblk, _ in full.journal.replay.overlay.values()) + 2
    lblks = [0, *range(jsb.s_start, min(last, jsb.log_end))]
    return [(journal.pblk(n) * bs, (journal.pblk(n) + 1) * bs) for n in lblks]


@pytest.mark.parametrize("name", JOURNAL_SEEDS)
@_FAST
@given(data=st.data())
def test_mutated_journal_replays_or_raises_only_cipherdump_errors(
    name: str, journal_seeds: dict[str, tuple[bytes, list[tuple[int, int]]]], data: st.DataObject
) -> None:
    """A damaged log ends the replay at its last good transaction (with a warning), or
    the source is refused with a CipherdumpError; nothing else, and never a hang."""
    if name not in journal_seeds:
        pytest.skip(f"journal seed {name} unavailable")
    image, ranges = journal_seeds[name]
    edits = data.draw(mutations(ranges, len(image)), label="edits")
    with time_limit(TIME_LIMIT):
        exercise(apply(image, edits))


@pytest.mark.slow
@pytest.mark.parametrize("name", JOURNAL_SEEDS)
@settings(_FAST, max_examples=1000)
@given(data=st.data())
def test_mutated_journal_many(
    name: str, journal_seeds: dict[str, tuple[bytes, list[tuple[int, int]]]], data: st.DataObject
) -> None:
    if name not in journal_seeds:
        pytest.skip(f"journal seed {name} unavailable")
    image, ranges = journal_seeds[name]
    edits = data.draw(mutations(ranges, len(image)), label="edits")
    with time_limit(TIME_LIMIT):
        exercise(apply(image, edits))


def test_journal_seeds_replay_cleanly(
    journal_seeds: dict[str, tuple[bytes, list[tuple[int, int]]]],
) -> None:
    for name, (image, ranges) in journal_seeds.items():
        fs = Filesystem(MemorySource(image))
        assert fs.journal_replayed and not any("journal" in w for w in fs.warnings), name
        assert len(ranges) > 10, name


# -- backups of mutants ----------------------------------------------------------------


def back_up_three_ways(image: bytes) -> None:
    """Back a mutant up, then again with that snapshot as the parent, then again
    reading everything: only CipherdumpError may escape; what each run cannot read is a
    problem it reports, and the three snapshots have the same root tree (an incremental
    backup that reuses what it finds unchanged stores what a fresh one stores, damage
    and all); the repository passes ``check``."""
    from cipherdump.engine.backup import BackupOptions, backup
    from cipherdump.repo import KdfParams, MemoryBackend, Repository

    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    try:
        fs = Filesystem(MemorySource(image))
    except CipherdumpError:
        return
    trees = []
    with fs:
        for options in (BackupOptions(), BackupOptions(), BackupOptions(force_reread=True)):
            try:
                result = backup(repo, fs, options, on_problem=lambda path, err: None)
            except CipherdumpError:
                assert not trees, "a backup that went through once must go through again"
                return
            trees.append(result.snapshot.tree)
    assert trees[1] == trees[0] and trees[2] == trees[0]
    report = repo.check(read_data=True)
    assert report.ok, report.errors


def _back_up_a_mutant(name: str, seeds: dict[str, bytes], data: st.DataObject) -> None:
    image, ranges = _seed(seeds, name)
    edits = data.draw(mutations(ranges, len(image)), label="edits")
    with time_limit(3 * TIME_LIMIT):  # three backups
        back_up_three_ways(apply(image, edits))


@pytest.mark.parametrize("name", SEED_NAMES)
@settings(_FAST, max_examples=25)
@given(data=st.data())
def test_backups_of_a_mutated_image_agree(
    name: str, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    _back_up_a_mutant(name, seeds, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEED_NAMES)
@settings(_FAST, max_examples=400)
@given(data=st.data())
def test_backups_of_a_mutated_image_agree_many(
    name: str, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    _back_up_a_mutant(name, seeds, data)
