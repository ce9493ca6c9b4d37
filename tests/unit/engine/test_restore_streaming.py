"""Restores read a directory stored in parts (a chunked tree) one part at a time.

With the part sizes lowered, every directory of the sample image of more than two
entries is chunked.  ``SnapshotView.iter_children`` must give the entries
``children`` gives, having loaded only the parts it has reached; a restore into an
image and a keyed walk of the snapshot go through it, so that a directory of millions
of entries is never held whole (issue 19).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_backup_unit import latest_view

from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.restore_image import restore_to_image
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import Id, KdfParams, MemoryBackend, Repository, Tree
from cipherdump.repo import tree as tree_module
from restore_checks import assert_reader_views_equal
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.fixture
def repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[Repository]:
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 2)
    monkeypatch.setattr(tree_module, "PART_BITS", 1)
    monkeypatch.setattr(tree_module, "PART_MIN", 1)
    monkeypatch.setattr(tree_module, "PART_MAX", 2)
    repository = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    with open_filesystem(str(SAMPLE)) as fs:
        backup(repository, fs, BackupOptions(source_name="sample", jobs=1))
    yield repository
    repository.close()


def test_iter_children_loads_one_part_at_a_time(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = latest_view(repo)
    loaded: list[Id] = []
    load = repo.load_tree_index

    def counting(tree_id: Id) -> Tree:
        loaded.append(tree_id)
        return load(tree_id)

    monkeypatch.setattr(repo, "load_tree_index", counting)
    chunked = 0
    for item in view.walk(view.root_node(), recursive=True):
        node = getattr(item, "node", None)
        if not getattr(item, "is_dir", False) or node is None or node.subtree is None:
            continue
        index = load(node.subtree)
        if not index.chunked:
            continue
        chunked += 1
        want = sorted(k.raw_name for k in view.children(item))
        loaded.clear()
        kids = view.iter_children(item)
        first = next(kids)
        assert len(loaded) == 2  # the index and the first part, not every part
        got = [first.raw_name, *(k.raw_name for k in kids)]
        assert len(loaded) == 1 + len(index.nodes) > 2
        assert sorted(got) == want
    assert chunked > 0


def test_a_restored_image_of_chunked_directories_reads_as_the_image(
    repo: Repository, tmp_path: Path
) -> None:
    view = latest_view(repo)
    out = tmp_path / "out.img"
    restore_to_image(repo, view.id, view.snapshot, str(out), path=None, size=None)
    assert_reader_views_equal(SAMPLE, out)
