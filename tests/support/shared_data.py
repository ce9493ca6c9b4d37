"""Where the shared test data is: ``<repo>/../shared/testdata``, or
``$CIPHERDUMP_SHARED/testdata`` when that variable is set.

Tests that need it skip with the reason when it is absent; CI runs the default suite
once with ``CIPHERDUMP_SHARED=/nonexistent`` to prove that a fresh clone with nothing
beside it passes.  What unit tests cannot do without is copied, small, into
``tests/data/`` with its provenance.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CIPHERDUMP_SHARED") or REPO.parent / "shared")
SHARED_TESTDATA = SHARED / "testdata"
# Small copies of shared data that unit tests rely on (see tests/data/README.md).
LOCAL_DATA = REPO / "tests" / "data"
