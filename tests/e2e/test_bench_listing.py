"""The listing micro-benchmark still runs, and its two paths still agree (it exits with an
error when the encoded file nodes differ)."""

from __future__ import annotations

import subprocess
import sys

from shared_data import REPO

BENCH = REPO / "bench" / "bench_listing.py"


def test_bench_listing_runs_on_the_sample() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--repeat", "1", "--names", "20"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for what in ("dirhash", "names", "file nodes"):
        assert what in proc.stdout
