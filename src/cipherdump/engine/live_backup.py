"""``backup --live``: a per-file consistent, key-less backup of a mounted ext4 filesystem
(see docs/live-backup.md for the argument).

A backup is a few *rounds*.  Each round:

1. checks the mount is still the one found (:meth:`LiveMount.check`), notes the start
   time T (:class:`StartTime`) and calls ``syncfs``;
2. opens the device afresh (``O_DIRECT``), with the journal's committed transactions
   replayed in memory and their copies read at once (``pin_journal``), and opens it
   again if the journal's tail moved past them meanwhile;
3. runs the ordinary backup walk with a :class:`LiveRound` as its ``live`` check: each
   object the walk reads is accepted only if :func:`live_check.rejection` finds
   nothing; a rejected one is left out of the round (a directory is kept, but not
   recorded for reuse, so that the next round lists it again).

The first round's parent is the usual parent snapshot; each later round's is the
previous round's result, unsaved, so that what was accepted is reused unread and only
the rejected objects (and the directories holding them) are read again.  Rounds stop
when nothing was rejected, or after ``retries`` more rounds.  In the last round a
still-rejected object is replaced by its node in the previous round (files) or the
parent snapshot (files and directories), if either has the same inode, else left out,
and named on the "changed during backup" list.  Only the result of the last round is
saved.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cipherdump.blockio import open_source
from cipherdump.blockio.livefs import (
    LiveMount,
    StartTime,
    live_stat,
    names_by_ino,
    open_dir_at,
)
from cipherdump.blockio.source import ByteSource
from cipherdump.blockio.throttle import RateLimitedSource
from cipherdump.engine.backup import BackupOptions, BackupResult, BackupStats, backup, find_parent
from cipherdump.engine.backup.run import ProblemFn, repo_sizes
from cipherdump.engine.live_check import Facts, Settled, disk_facts, live_facts, rejection
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import CipherdumpError, InputError, LiveMountError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.journal import journal_tail_kept
from cipherdump.progress import OnProgress
from cipherdump.repo import Id, Node, Repository, Snapshot
from cipherdump.repo.codec import Value
from cipherdump.repo.tree import NodeSpan

LIVE_MODE = "live, per-file consistent"
DEFAULT_RETRIES = 3
_OPEN_TRIES = 8
# An id for a round's unsaved snapshot (used as a parent only in memory).
_UNSAVED = Id(bytes(32))


@dataclass(slots=True)
class Changed:
    """An object that was still changing in the last round, and what was stored."""

    path: bytes  # display path: no-key names where encrypted, as without the key
    ino: int
    reason: str
    outcome: str  # "kept from the parent snapshot", "kept from round N", "left out", ...


@dataclass(slots=True)
class _LiveDir:
    fd: int
    names: dict[int, bytes] | None = None
    relisted: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    """A file accepted on the kernel's word, waiting for its inode's second read."""

    kid: ImageNode
    order: int
    disk: Facts
    live: Facts
    live_after: Facts
    limit_ns: int


@dataclass(slots=True)
class _Look:
    """The first look at an object: on disk and live, before its data was read."""

    disk: Facts
    live: Facts | None
    dir_fd: int
    name: bytes | None


class LiveRound:
    """One round's check of every object the backup walk reads (its ``live`` hook).

    The walk calls :meth:`before` ahead of reading an object (a file's data, a
    directory's entries) and :meth:`settle` (files) or :meth:`settle_dir` after; an
    object the kernel's and the device's views do not agree on is *rejected*: it is
    noted in :attr:`rejected` and left to the next round, or in the last round
    replaced as the module docstring says.  :meth:`absorb` takes a read error of an
    object in a round before the last as a sign that it changed under the reader."""

    def __init__(
        self,
        mount: LiveMount,
        fs: Filesystem,
        start: StartTime,
        *,
        last: bool,
        number: int,
        earlier: SnapshotView | None = None,
        parent: SnapshotView | None = None,
    ) -> None:
        self.mount = mount
        self.fs = fs
        self.ns = Namespace(fs)
        self.start = start
        self.last = last
        self.number = number
        self.earlier = earlier
        self.parent = parent
        self.rejected: dict[bytes, str] = {}
        self.changed: list[Changed] = []
        self.checked = 0
        self.top_path = b"/"  # the backed-up directory (set by the walk)
        self._dirs: dict[bytes, _LiveDir] = {}
        # Directory inode numbers by display path, as the walk met them.
        self._dir_inos: dict[bytes, int] = {}
        self._looks: dict[bytes, _Look] = {}
        # Files accepted but for their inode's second read, by containing directory.
        self._pending: dict[bytes, list[_Pending]] = {}

    # -- locating the live object ----------------------------------------------------
    def _live_dir(self, path: bytes) -> _LiveDir | None:
        """The kernel's directory at display path ``path``, reached from the mount's
        root by inode number (names differ when a user's key is loaded)."""
        got = self._dirs.get(path)
        if got is not None:
            return got
        if path == b"/":
            got = _LiveDir(os.dup(self.mount.root_fd))
        else:
            parent = self._live_dir(posixpath.dirname(path))
            if parent is None:
                return None
            ino = self._dir_inos.get(path)
            if ino is None:
                try:
                    ino = self.ns.resolve(path).inode.ino
                except CipherdumpError:
                    return None
            name = self._name_in(parent, ino)
            fd = open_dir_at(parent.fd, name) if name is not None else None
            if fd is None:
                return None
            got = _LiveDir(fd)
        # Only the directories on the current path stay open.
        for other in [p for p in self._dirs if not _is_ancestor(p, path)]:
            os.close(self._dirs.pop(other).fd)
        self._dirs[path] = got
        return got

    def _name_in(self, directory: _LiveDir, ino: int) -> bytes | None:
        if directory.names is None:
            directory.names = names_by_ino(directory.fd)
        name = directory.names.get(ino)
        if name is None and not directory.relisted:
            # Created since the listing was taken: list again (once: in a directory
            # whose entries keep changing, what is missing is rejected anyway).
            directory.names = names_by_ino(directory.fd)
            directory.relisted = True
            name = directory.names.get(ino)
        return name

    def close(self) -> None:
        for d in self._dirs.values():
            os.close(d.fd)
        self._dirs.clear()

    # -- the checks ------------------------------------------------------------------
    def before(self, kid: ImageNode) -> bool:
        """First look at ``kid``, before its data or entries are read; False if it is
        already rejected (then reading it can be skipped)."""
        self.checked += 1
        if kid.inode.is_dir:
            self._dir_inos[kid.path] = kid.inode.ino
        disk = disk_facts(kid.inode)
        directory = self._live_dir(posixpath.dirname(kid.path) if kid.path != b"/" else b"/")
        name = None
        live: Facts | None = None
        covered: str | None = None
        if directory is not None:
            if kid.path == b"/":
                name = b"."
            else:
                name = self._name_in(directory, kid.inode.ino)
            if name is not None:
                live, covered = self._stat(directory.fd, name)
        why = covered or rejection(disk, disk, live, live, self.start.limit_ns())
        if why is not None:
            self.rejected[kid.path] = why
            return False
        self._looks[kid.path] = _Look(
            disk, live, directory.fd if directory is not None else -1, name
        )
        return True

    def after(self, kid: ImageNode, order: int | None = None) -> bool:
        """Second look at ``kid``, once read: True if accepted.  With ``order`` (a
        file), the on-disk inode's second read is left to :meth:`verify_entries`,
        which reads those of a whole directory together."""
        if kid.path in self.rejected:
            return False
        look = self._looks.pop(kid.path, None)
        if look is None or look.name is None:
            self.rejected[kid.path] = "gone from the live filesystem"
            return False
        disk_after: Facts | None = look.disk
        if order is None:
            try:
                disk_after = disk_facts(self.fs.fresh_inode(kid.inode.ino))
            except CipherdumpError:
                disk_after = None
        live_after, covered = self._stat(look.dir_fd, look.name, generation=False)
        limit = self.start.limit_ns()
        why = covered or rejection(look.disk, disk_after, look.live, live_after, limit)
        if why is not None:
            self.rejected[kid.path] = why
            return False
        if order is not None:
            assert look.live is not None and live_after is not None
            pending = _Pending(kid, order, look.disk, look.live, live_after, limit)
            self._pending.setdefault(_parent_of(kid.path), []).append(pending)
        return True

    def verify_entries(self, path: bytes) -> list[tuple[bytes, int, Node | None]]:
        """The second on-disk read of the files of the directory ``path`` accepted so
        far (each read after its data was), together; the ones to take back, each
        with the node to store instead (None: none)."""
        pending = self._pending.pop(path, [])
        if not pending:
            return []
        fresh = self.fs.fresh_inodes([p.kid.inode.ino for p in pending])
        out: list[tuple[bytes, int, Node | None]] = []
        for p in pending:
            got = fresh.get(p.kid.inode.ino)
            disk_after = disk_facts(got) if isinstance(got, Inode) else None
            why = rejection(p.disk, disk_after, p.live, p.live_after, p.limit_ns)
            if why is None:
                continue
            self.rejected[p.kid.path] = why
            instead = self._instead(p.kid, p.order, dirs=False) if self.last else None
            out.append((p.kid.raw_name, p.kid.inode.ino, instead))
        return out

    def _stat(
        self, dir_fd: int, name: bytes, *, generation: bool = True
    ) -> tuple[Facts | None, str | None]:
        """The kernel's facts of ``name`` in ``dir_fd`` (None if gone), and a reason to
        reject it whatever they are (another filesystem is mounted on it: the kernel
        shows that one's root, not this object).  ``generation``: ask for it too (an
        open and an ioctl; once per object is enough: changing it changes ctime)."""
        st = live_stat(dir_fd, name, generation=generation)
        if st is None:
            return None, None
        if st.dev != self.mount.st_dev:
            return None, "another filesystem is mounted on it"
        return live_facts(st), None

    def settle(self, kid: ImageNode, order: int, node: Node | NodeSpan | None) -> Settled:
        """The node to store for the non-directory ``kid`` (``node`` is what the walk
        made of it, None if :meth:`before` rejected it and nothing was read)."""
        if node is not None and self.after(kid, order):
            return Settled(node, True)
        if not self.last:
            return Settled(None, False)
        return Settled(self._instead(kid, order, dirs=False), False)

    def settle_dir(self, kid: ImageNode, order: int, node: Node, accepted: bool) -> Settled:
        """The node to store for the directory ``kid``, walked as ``node``; ``accepted``
        is what :meth:`before` and :meth:`after` said around reading its entries."""
        if accepted:
            return Settled(node, True)
        if not self.last:
            # Its entries may be inconsistent, but the round is not the last: kept, so
            # that the files under it, each checked, are reused in the next.
            return Settled(node, False)
        if kid.path == self.top_path:
            self._note(kid, "kept as read (the backed-up directory itself)")
            return Settled(node, False)
        # What was named below it is replaced with it: it alone is named.
        below = kid.path + b"/"
        self.changed = [c for c in self.changed if not c.path.startswith(below)]
        return Settled(self._instead(kid, order, dirs=True), False)

    def absorb(self, path: bytes, err: CipherdumpError) -> bool:
        """Whether a read error of ``path`` is taken as a change (retried next round)."""
        if self.last or not isinstance(err, InputError):
            return False
        self.rejected.setdefault(path, f"could not be read as it was changing ({err})")
        return True

    def _instead(self, kid: ImageNode, order: int, *, dirs: bool) -> Node | None:
        """An earlier, accepted version of a rejected object: the previous round's
        (files only: a directory kept there may not have been accepted) or the parent
        snapshot's, if it is the same inode; None if neither has one."""
        sources: list[tuple[SnapshotView | None, str]] = [
            (None if dirs else self.earlier, f"kept from round {self.number}"),
            (self.parent, "kept from the parent snapshot"),
        ]
        for view, outcome in sources:
            if view is None:
                continue
            try:
                found = view.resolve(kid.path)
            except CipherdumpError:
                continue
            old = found.node
            attrs = old.attrs
            if attrs.get("ino") != kid.inode.ino or old.kind != kid.inode.type.value:
                continue
            if attrs.get("generation") != kid.inode.generation:
                continue
            self._note(kid, outcome)
            return replace(old, name=kid.raw_name, attrs={**attrs, "order": order})
        self._note(kid, "left out")
        return None

    def _note(self, kid: ImageNode, outcome: str) -> None:
        why = self.rejected.get(kid.path, "changing")
        self.changed.append(Changed(kid.path, kid.inode.ino, why, outcome))


def _parent_of(path: bytes) -> bytes:
    return posixpath.dirname(path) if path != b"/" else b"/"


def _is_ancestor(a: bytes, b: bytes) -> bool:
    return a == b or a == b"/" or b.startswith(a + b"/")


# -- opening the device for a round ------------------------------------------------------


def open_round_filesystem(mount: LiveMount, read_rate: int | None) -> Filesystem:
    """The mounted filesystem as its device holds it now, journal replayed in memory
    with every copy read at once; opened again if the journal reused a block before
    it was read (rare: only while the log wraps past the transactions read)."""
    for _ in range(_OPEN_TRIES):
        source: ByteSource = open_source(mount.device)
        if read_rate is not None:
            source = RateLimitedSource(source, read_rate)
        try:
            fs = Filesystem(source, owns_source=True, pin_journal=True)
        except BaseException:
            source.close()
            raise
        if journal_tail_kept(fs, fs.journal):
            return fs
        fs.close()
    raise LiveMountError(
        f"{mount.mount_point}: the journal kept wrapping while it was read "
        f"({_OPEN_TRIES} tries); try again when the filesystem is less busy"
    )


# -- the rounds ---------------------------------------------------------------------------


@dataclass(slots=True)
class LiveReport:
    """What the rounds found: the last round's changed list, and counts."""

    rounds: int = 0
    retried: int = 0  # objects rejected in some round before the last
    checked: int = 0
    # T of the first and of the last round (CLOCK_REALTIME, ns): every object stored
    # was, when read, unchanged since the T of its round; an object made before the
    # last round's T is in the snapshot unless it, or a directory above it, is named.
    first_start_ns: int = 0
    last_start_ns: int = 0
    changed: list[Changed] = field(default_factory=list)

    def attrs(self, mount_point: str) -> dict[str, Value]:
        return {
            "mode": LIVE_MODE,
            "mount_point": mount_point,
            "rounds": self.rounds,
            "retried": self.retried,
            "first_round_ns": self.first_start_ns,
            "last_round_ns": self.last_start_ns,
            "changed": [
                {"path": c.path, "ino": c.ino, "reason": c.reason, "outcome": c.outcome}
                for c in self.changed
            ],
        }

    def warnings(self) -> list[str]:
        return [
            f"changed during backup: {c.path.decode('utf-8', 'backslashreplace')} "
            f"({c.reason}; {c.outcome})"
            for c in self.changed
        ]


def run_rounds(
    mount: LiveMount,
    run: Callable[[Filesystem, LiveRound, tuple[Id, Snapshot] | None], Snapshot],
    repo: Repository,
    *,
    retries: int = DEFAULT_RETRIES,
    read_rate: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Snapshot, LiveReport]:
    """Run rounds until one rejects nothing or ``retries`` more have run; returns the
    last round's (unsaved) snapshot and the report.  ``run(fs, live, previous)`` is one
    backup walk (``previous``: the previous round's snapshot, None in the first)."""
    report = LiveReport()
    previous: tuple[Id, Snapshot] | None = None
    retried: set[bytes] = set()
    number = 0
    while True:
        last = number >= retries
        mount.check()
        start = StartTime.now()
        report.first_start_ns = report.first_start_ns or start.realtime_ns
        report.last_start_ns = start.realtime_ns
        mount.syncfs()
        fs = open_round_filesystem(mount, read_rate)
        earlier = SnapshotView(repo, *previous) if previous is not None else None
        # ``run`` sets live.parent: the parent snapshot is chosen on the first view.
        live = LiveRound(mount, fs, start, last=last, number=number, earlier=earlier)
        try:
            snapshot = run(fs, live, previous)
        finally:
            live.close()
            fs.close()
        mount.check()  # a mount gone during the round may have been read half-way
        report.rounds = number + 1
        report.checked += live.checked
        if not live.rejected or last:
            report.changed = live.changed
            report.retried = len(retried)
            return snapshot, report
        retried.update(live.rejected)
        repo.flush()
        previous = (_UNSAVED, snapshot)
        number += 1
        # Give a burst of writes a moment to end before looking again.
        sleep(min(0.1 * number, 0.3))


def snapshot_with_report(
    snapshot: Snapshot, report: LiveReport, mount_point: str, extra: Mapping[str, Value]
) -> Snapshot:
    """The last round's snapshot as it is saved: the mode and the changed list in its
    attrs, each changed object among its warnings, ``extra`` (stats) merged in."""
    attrs = dict(snapshot.attrs)
    warnings = attrs.get("warnings", ())
    listed = list(warnings) if isinstance(warnings, tuple | list) else []
    attrs["warnings"] = [*listed, *report.warnings()]
    attrs["live"] = report.attrs(mount_point)
    attrs.update(extra)
    return replace(snapshot, attrs=attrs)


__all__ = [
    "DEFAULT_RETRIES",
    "LIVE_MODE",
    "Changed",
    "LiveReport",
    "LiveRound",
    "live_backup",
    "open_round_filesystem",
    "run_rounds",
    "snapshot_with_report",
]


# -- the whole backup ---------------------------------------------------------------------


def live_backup(
    repo: Repository,
    mount: LiveMount,
    options: BackupOptions,
    *,
    retries: int = DEFAULT_RETRIES,
    read_rate: int | None = None,
    on_progress: OnProgress | None = None,
    on_problem: ProblemFn | None = None,
) -> tuple[BackupResult, LiveReport]:
    """Back up the filesystem mounted at ``mount`` (``options.path`` of it) as it is
    being used: per-object consistent, in rounds (see the module docstring); the
    snapshot saved records the mode and the objects that kept changing."""
    options = replace(options, jobs=1)
    before = repo_sizes(repo)
    results: list[BackupResult] = []
    # The parent snapshot is chosen once, on the first round's view of the device.
    chosen: list[tuple[Id, Snapshot] | None] = []

    def run(fs: Filesystem, live: LiveRound, previous: tuple[Id, Snapshot] | None) -> Snapshot:
        if not chosen:
            found = None
            if not options.no_parent:
                top = Namespace(fs).resolve(options.path)
                found = find_parent(repo, fs, top.path, options.parent)
            chosen.append(found)
            live.parent = SnapshotView(repo, found[0], found[1]) if found is not None else None
        else:
            live.parent = _parent_view(repo, chosen[0])
        opts = options if (previous or chosen[0]) else replace(options, no_parent=True)
        result = backup(
            repo,
            fs,
            opts,
            on_progress=on_progress,
            # Problems of rounds before the last are absorbed (see LiveRound.absorb).
            on_problem=on_problem,
            live=live,
            parent_snapshot=previous or chosen[0],
            save=False,
        )
        results.append(result)
        return result.snapshot

    snapshot, report = run_rounds(mount, run, repo, retries=retries, read_rate=read_rate)
    first, final = results[0], results[-1]
    stats = _combined_stats([r.stats for r in results])
    parent = chosen[0]
    snapshot = replace(snapshot, parent=parent[0] if parent is not None else None)
    snapshot = snapshot_with_report(
        snapshot,
        report,
        mount.mount_point,
        {"stats": {k: v for k, v in stats.as_dict().items() if k != "bytes_stored"}},
    )
    snap_id = repo.save_snapshot(snapshot)
    after = repo_sizes(repo)
    stats.bytes_stored = sum(size for key, size in after.items() if key not in before)
    warnings = [*final.warnings, *report.warnings()]
    result = BackupResult(
        snapshot_id=snap_id,
        snapshot=snapshot,
        parent_id=snapshot.parent,
        stats=stats,
        policies=final.policies,
        warnings=warnings,
        repository_warnings=first.repository_warnings,
    )
    return result, report


def _parent_view(repo: Repository, parent: tuple[Id, Snapshot] | None) -> SnapshotView | None:
    return SnapshotView(repo, parent[0], parent[1]) if parent is not None else None


def _combined_stats(rounds: list[BackupStats]) -> BackupStats:
    """The first round's counts of new, changed and removed objects (later rounds
    compare with the round before), with the data read and added in every round, and
    the last round's problems."""
    out = replace(rounds[0])
    for later in rounds[1:]:
        out.bytes_read += later.bytes_read
        out.bytes_added += later.bytes_added
        out.data_blobs_added += later.data_blobs_added
        out.tree_blobs_added += later.tree_blobs_added
    out.errors = rounds[-1].errors
    return out
