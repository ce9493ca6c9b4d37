"""How far a long job is: the one progress event every layer reports with.

Backup, restore (to an image and to plaintext), clone, extract, check, repair, prune
and stats each take ``on_progress: OnProgress | None`` and call it with a
:class:`Progress` now and then; what could not be done goes to an
``on_problem(path, error)`` callback or into the job's result, never into a progress
event.  Jobs never print: the command line turns
events into a progress bar (or ``-v`` lines).  This module sits beside ``errors`` at the
bottom of the layers, so that the repository can report with it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OnProgress", "Progress"]


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event.

    ``bytes_done`` of ``bytes_total`` (None when unknown) and ``inodes_done`` of
    ``inodes_total`` (objects: files, directories, links) so far; totals may be
    estimates that grow.  ``path`` is the object just handled, where there is one.
    ``finished`` marks the last event, whose totals are what was done.

    A job of several steps (prune: the index files, the snapshots, then the bytes to
    repack) names the step in ``phase``; each starts its counts over.  A step that
    counts things other than bytes and inodes (snapshots, index files, trees) counts
    them in ``items_done`` of ``items_total``, and ``phase`` names them.
    """

    bytes_done: int = 0
    bytes_total: int | None = None
    inodes_done: int = 0
    inodes_total: int | None = None
    path: bytes = b""
    finished: bool = False
    phase: str = ""
    items_done: int = 0
    items_total: int | None = None


OnProgress = Callable[[Progress], None]
