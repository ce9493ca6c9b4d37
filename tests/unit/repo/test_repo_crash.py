"""A writer killed with SIGKILL at random points leaves a repository that checks clean,
and the next writer succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from cipherdump.repo import (
    BlobType,
    KdfParams,
    LocalBackend,
    Node,
    Repository,
    Snapshot,
    Tree,
)
from shared_data import REPO

KDF = KdfParams.insecure_for_tests()

# The writer: many small blobs into 8 KiB packs, index deltas every 2 packs, a tree
# every 20 blobs and a snapshot every 100, forever (until killed).  Every 7th chunk
# repeats, so dedup paths run too.
WRITER = r"""
import os, sys, random
from cipherdump.repo import BlobType, LocalBackend, Node, Repository, Snapshot, Tree
repo = Repository.open(LocalBackend(sys.argv[1]), b"pw", index_every_packs=2)
print("ready", flush=True)
rng = random.Random(int(sys.argv[2]))
ids, n = [], 0
while True:
    n += 1
    data = b"repeat %d" % (n % 5) if n % 7 == 0 else rng.randbytes(rng.randrange(200, 3000))
    ids.append(repo.save_blob(BlobType.DATA, data))
    if n % 20 == 0:
        tree = repo.save_tree(Tree.of([Node(b"f%d" % n, "file", content=tuple(ids))]))
        ids = []
    if n % 100 == 0:
        repo.save_snapshot(Snapshot(tree, time_ns=n, hostname="crash"))
"""


def _check_clean(backend: LocalBackend) -> None:
    with Repository.open(backend, b"pw") as repo:
        report = repo.check(read_data=True)
        assert report.ok, report.text()
        for snap_id, snap in repo.list_snapshots():
            assert repo.load_tree(snap.tree).nodes, snap_id


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend.create(root)
    Repository.init(backend, b"pw", kdf=KDF, pack_size=8192).close()
    rng = random.Random(1234)
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    delays = [0.0, 0.05, 0.2, 0.5, 1.0] + [rng.uniform(0, 1.2) for _ in range(3)]
    for iteration, delay in enumerate(delays):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(iteration)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            if delay:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == b"ready"
                time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, "the writer died on its own"
        _check_clean(backend)
    # The next writer succeeds, reusing what was indexed, and the result checks clean.
    with Repository.open(backend, b"pw") as repo:
        blob = repo.save_blob(BlobType.DATA, b"after the crashes")
        tree = repo.save_tree(Tree.of([Node(b"after", "file", content=(blob,))]))
        repo.save_snapshot(Snapshot(tree, time_ns=10**12))
        assert repo.find_snapshot("latest")[1].time_ns == 10**12
    _check_clean(backend)
    with Repository.open(backend, b"pw") as repo:
        assert len(repo.list_snapshots()) >= 2  # at least some killed runs got one written
