"""The node maker, through :class:`NodeMaker`: nodes of the sample image's entries,
what they count, and the parent snapshot's chunks reused for unchanged files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.backup.nodes import NodeMaker
from cipherdump.engine.backup.readahead import ReadAhead
from cipherdump.engine.backup.tally import Tally
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE
from cipherdump.engine.parent import ParentIndex
from cipherdump.engine.policies import PolicyCensus
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.repo import BlobType, KdfParams, MemoryBackend, Node, Repository
from cipherdump.repo.tree import NodeSpan
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.fixture
def repo() -> Iterator[Repository]:
    repository = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    yield repository
    repository.close()  # its pack being written has a temporary file


@pytest.fixture
def fs() -> Iterator[Filesystem]:
    with open_filesystem(str(SAMPLE)) as f:
        yield f


def _maker(
    repo: Repository, fs: Filesystem, parent: ParentIndex | None = None, *, reread: bool = False
) -> NodeMaker:
    return NodeMaker(
        repo,
        fs,
        DEFAULT_CHUNK_SIZE,
        Tally.for_inodes(fs.sb.s_inodes_count),
        PolicyCensus(fs),
        ReadAhead(fs),
        lambda path: None,
        parent,
        reread=reread,
    )


def _entries(fs: Filesystem) -> list[ImageNode]:
    ns = Namespace(fs)
    return [
        k
        for k in ns.walk(ns.resolve(b"/"), recursive=True)
        if isinstance(k, ImageNode) and not k.inode.is_dir
    ]


def test_new_files_are_read_and_stored_once(repo: Repository, fs: Filesystem) -> None:
    maker = _maker(repo, fs)
    census: dict[bytes | str, int] = {}
    nodes = [maker.make_node(k, n, census, None) for n, k in enumerate(_entries(fs))]
    s = maker.tally.stats
    # Alice's hard-linked file has two entries: one inode, read once.
    assert s.files_new == len(nodes) - 1 and s.files_unchanged == 0
    assert s.bytes_read > 0 and s.data_blobs_added > 0
    assert maker.tally.inodes_done == len(nodes) - 1
    assert census  # the encrypted files' policies
    assert all(isinstance(n, Node | NodeSpan) for n in nodes)
    tree = maker.save_tree((b"%d" % i, n) for i, n in enumerate(nodes))
    assert repo.has_blob(BlobType.TREE, tree) and s.tree_blobs_added == 1


def test_unchanged_files_keep_the_parent_snapshots_chunks(repo: Repository, fs: Filesystem) -> None:
    first = backup(repo, fs, BackupOptions(jobs=1))
    parent = ParentIndex(repo, first.snapshot)
    for directory in parent.dirs:
        parent.load_dir(directory.ino)
    maker = _maker(repo, fs, parent)
    for n, kid in enumerate(_entries(fs)):
        maker.make_node(kid, n, {}, None)
    s = maker.tally.stats
    assert s.files_unchanged == first.stats.files_new and s.files_new == 0
    assert s.bytes_read == 0 and s.bytes_reused > 0

    again = _maker(repo, fs, parent, reread=True)
    for n, kid in enumerate(_entries(fs)):
        again.make_node(kid, n, {}, None)
    assert again.tally.stats.bytes_read == s.bytes_reused
    assert again.tally.stats.bytes_added == 0  # read, but stored already


def test_a_record_key_is_kept_as_the_source_attr(repo: Repository, fs: Filesystem) -> None:
    maker = _maker(repo, fs)
    link = next(k for k in _entries(fs) if k.inode.is_symlink)
    node = maker.make_node(link, 3, {}, b"k" * 16)
    assert isinstance(node, Node)
    assert node.attrs["source"] == b"k" * 16 and node.attrs["order"] == 3
