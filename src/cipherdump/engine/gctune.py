"""Fewer cyclic garbage collections during long walks.

A backup (or a restore, or a check) allocates millions of small container objects:
attrs dicts, nodes, records, inodes, most of which live until their directory is
saved.  At CPython's default threshold (a collection of the youngest generation
every 700 net allocations) a 1 GiB backup of 30,000 files ran some 300 collections
per process, each scanning everything still young, for about 0.5 s of CPU in all
(measured with ``gc.callbacks``).  Nothing these walks make needs the cycle collector
to be freed promptly (reference counting frees it), so they collect rarely, and
never rescan what existed before they started (the imported modules, the loaded
index).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# Net allocations of tracked objects between collections of the youngest generation:
# a few megabytes of garbage at worst, if some of it were cyclic.
_YOUNG_THRESHOLD = 50_000


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Collect rarely inside the block; the thresholds are restored after it.  Forked
    processes started inside inherit the setting."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(_YOUNG_THRESHOLD, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
