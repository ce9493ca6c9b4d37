"""Key-less backup of an ext4 filesystem (or one directory of it) into a repository.

The parts, each a module a newcomer can name:

* :mod:`.run`: one backup run: finds the parent snapshot, runs the walk, saves the
  snapshot (:func:`backup`, :class:`BackupOptions`, :class:`BackupResult`);
* :mod:`.walk`: the walk, a directory tree into trees bottom-up (:class:`.walk.Walk`);
* :mod:`.nodes`: the node maker, an entry's inode into a node and its data into
  chunks (:class:`.nodes.NodeMaker`);
* :mod:`.reuse`: reuse against the parent snapshot, the keys that decide it
  (:class:`.reuse.RecordKeys`) and what is taken over (:class:`.reuse.ParentReuse`),
  on top of :mod:`cipherdump.engine.parent` (what the parent snapshot keeps);
* :mod:`.readahead`: read-ahead hints to the filesystem's byte source
  (:class:`.readahead.ReadAhead`);
* :mod:`.workers`: worker processes that take leaf directories off the walk
  (:class:`.workers.Crew` on the coordinator's side, :func:`.workers.serve` on theirs);
* :mod:`.tally`: the one object holding a process's counters, reset in a worker and
  merged by the coordinator (:class:`.tally.Tally`);
* :mod:`.frame`: a directory while it is being backed up.

Layers (import-linter keeps them): run -> walk -> {workers, reuse} -> nodes ->
{readahead, tally, frame}.  The engine never prints: progress and per-object problems
go to callbacks.

Glossary (words that used to mean several things):

* **parent snapshot**: the earlier snapshot an incremental backup compares with
  (``--parent``; :class:`~cipherdump.engine.parent.ParentIndex`).  "Parent" means
  nothing else here: the directory holding an entry is its *containing directory*,
  and the process that started the backup is the *coordinator* (its forked helpers
  are *workers*).
* **filesystem**: what is backed up (:class:`~cipherdump.ext4.Filesystem`).  Its
  **byte source** (``fs.source``, :mod:`cipherdump.blockio`) is what its bytes are
  read from; the **source name** (``BackupOptions.source_name``, the snapshot's attr
  ``source``) is the device or image as the user named it.
* **record key**: per entry, a hash of every on-disk byte its node is made from (see
  :class:`.reuse.RecordKeys`); kept in the node as the attr ``source`` (its name in
  the repository format, which stays).  **entries key**: per directory, the hash of
  its facts and its entries' record keys.
* **fingerprint**: per inode, the fields that say a file's data is unchanged
  (:mod:`cipherdump.engine.nodeattrs`).
"""

from cipherdump.engine.backup.run import (
    SNAPSHOT_FORMAT,
    BackupOptions,
    BackupResult,
    backup,
    filesystem_facts,
    find_parent,
    snapshot_summary,
)
from cipherdump.engine.backup.tally import BackupStats
from cipherdump.engine.parent import ParentIndex

__all__ = [
    "SNAPSHOT_FORMAT",
    "BackupOptions",
    "BackupResult",
    "BackupStats",
    "ParentIndex",
    "backup",
    "filesystem_facts",
    "find_parent",
    "snapshot_summary",
]
