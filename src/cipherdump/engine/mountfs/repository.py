"""The repository as a mounted tree::

    snapshots/<id>/     each snapshot's filesystem from its /, by short id (the 8
                        hex digits ``snapshots`` prints; longer where two share them)
    snapshots/latest -> <id> of the newest snapshot
    latest           -> snapshots/<id> of the newest snapshot
    ids/<full id>    -> ../snapshots/<id>
    hosts/<host>/<id> and hosts/<host>/latest -> ../../snapshots/<id>
    tags/<tag>/<id>   and tags/<tag>/latest   -> ../../snapshots/<id>

The list of snapshots is read again when it is at least :data:`REFRESH_SECONDS` old and
a directory of the layout is listed, never more often.  A snapshot's tree is built on
first use and kept while the snapshot exists.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cipherdump.engine.dirtable import TABLE_ATTRS
from cipherdump.engine.mountfs.model import Attr, MountNode
from cipherdump.engine.mountfs.snapshot import BlobCache, SnapshotTree
from cipherdump.engine.nodeattrs import blake2b
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import CipherdumpError
from cipherdump.fscrypt.keys import KeyRing
from cipherdump.repo import Id, Repository, Snapshot

__all__ = ["REFRESH_SECONDS", "RepositoryLayout"]

REFRESH_SECONDS = 60.0

OnProblem = Callable[[bytes, CipherdumpError], None]
KeysFor = Callable[[SnapshotView], KeyRing | None]


@dataclass(frozen=True, slots=True)
class _Listed:
    id: Id
    snapshot: Snapshot
    name: bytes  # under snapshots/


def _short_names(snaps: list[tuple[Id, Snapshot]]) -> list[bytes]:
    """Each snapshot's name under ``snapshots/``: its 8-digit short id, longer where
    two snapshots share one (until the names differ)."""
    width = 8
    while width < 64:
        names = [sid.hex[:width] for sid, _ in snaps]
        if len(set(names)) == len(names):
            break
        width += 4
    return [sid.hex[:width].encode() for sid, _ in snaps]


class RepositoryLayout:
    """The mounted repository; :attr:`root` is its top directory.

    ``keys_for`` gives the keyring for a snapshot (None: show it key-less); it is asked
    once per snapshot, when its tree is first used.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        cache_bytes: int,
        keys_for: KeysFor | None = None,
        on_problem: OnProblem | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.cache = BlobCache(repo, cache_bytes)
        self.keys_for = keys_for
        self.on_problem = on_problem
        self.clock = clock
        self.uid, self.gid = os.getuid(), os.getgid()
        self._listed: list[_Listed] = []
        self._loaded_at: float | None = None
        self._trees: dict[Id, SnapshotTree | CipherdumpError] = {}
        self.reported: set[Id] = set()  # snapshots that cannot be opened, named once
        self.root: MountNode = _Dir(self, b"/", self._top)
        self.loads = 0  # how often the list was read (tests)

    # -- the snapshot list -------------------------------------------------------------
    def listed(self) -> list[_Listed]:
        now = self.clock()
        if self._loaded_at is None or now - self._loaded_at >= REFRESH_SECONDS:
            damaged: list[CipherdumpError] = []
            snaps = self.repo.list_snapshots(damaged, drop_attrs=TABLE_ATTRS)
            for err in damaged:
                self.problem(b"/snapshots", err)
            names = _short_names(snaps)
            self._listed = [_Listed(i, s, n) for (i, s), n in zip(snaps, names, strict=True)]
            self._loaded_at = now
            self.loads += 1
            alive = {item.id for item in self._listed}
            for gone in [sid for sid in self._trees if sid not in alive]:
                del self._trees[gone]
        return self._listed

    def problem(self, path: bytes, err: CipherdumpError) -> None:
        if self.on_problem is not None:
            self.on_problem(path, err)

    def tree(self, item: _Listed) -> SnapshotTree:
        got = self._trees.get(item.id)
        if got is None:
            try:
                view = SnapshotView(self.repo, item.id, item.snapshot)
                ring = self.keys_for(view) if self.keys_for is not None else None
                got = SnapshotTree(view, self.cache, keyring=ring, on_problem=self.on_problem)
            except CipherdumpError as err:
                got = err
            self._trees[item.id] = got
        if isinstance(got, CipherdumpError):
            raise got
        return got

    # -- the directories ---------------------------------------------------------------
    def _top(self) -> dict[bytes, MountNode]:
        listed = self.listed()
        out: dict[bytes, MountNode] = {
            b"snapshots": _Dir(self, b"/snapshots", self._snapshots),
            b"ids": _Dir(self, b"/ids", self._ids),
            b"hosts": _Dir(self, b"/hosts", lambda: self._groups(b"/hosts", "host")),
            b"tags": _Dir(self, b"/tags", lambda: self._groups(b"/tags", "tag")),
        }
        if listed:
            out[b"latest"] = _Link(self, b"/latest", b"snapshots/" + listed[-1].name)
        return out

    def _snapshots(self) -> dict[bytes, MountNode]:
        listed = self.listed()
        out: dict[bytes, MountNode] = {}
        for item in listed:
            out[item.name] = _SnapshotDir(self, item)
        if listed:
            out[b"latest"] = _Link(self, b"/snapshots/latest", listed[-1].name)
        return out

    def _ids(self) -> dict[bytes, MountNode]:
        return {
            item.id.hex.encode(): _Link(
                self, b"/ids/" + item.id.hex.encode(), b"../snapshots/" + item.name
            )
            for item in self.listed()
        }

    def _groups(self, base: bytes, by: str) -> dict[bytes, MountNode]:
        groups: dict[bytes, list[_Listed]] = {}
        for item in self.listed():
            keys = [item.snapshot.hostname] if by == "host" else list(item.snapshot.tags)
            for text in keys:
                # A name no directory can hold is left out (no host, a tag with '/').
                if text and "/" not in text and text not in (".", ".."):
                    groups.setdefault(os.fsencode(text), []).append(item)
        out: dict[bytes, MountNode] = {}
        for key, items in sorted(groups.items()):
            path = base + b"/" + key

            def members(items: list[_Listed] = items, path: bytes = path) -> dict[bytes, MountNode]:
                kids: dict[bytes, MountNode] = {
                    i.name: _Link(self, path + b"/" + i.name, b"../../snapshots/" + i.name)
                    for i in items
                }
                kids[b"latest"] = _Link(
                    self, path + b"/latest", b"../../snapshots/" + items[-1].name
                )
                return kids

            out[key] = _Dir(self, path, members)
        return out

    def newest_ns(self) -> int:
        listed = self._listed
        return listed[-1].snapshot.time_ns if listed else 0


def _layout_ino(path: bytes) -> int:
    """Inode numbers of the layout's own entries: below 1024, apart from snapshots'."""
    if path == b"/":
        return 1
    digest = blake2b(path, digest_size=8).digest()
    return 2 + int.from_bytes(digest, "little") % 1022


class _Dir(MountNode):
    def __init__(
        self, layout: RepositoryLayout, path: bytes, make: Callable[[], Mapping[bytes, MountNode]]
    ) -> None:
        self.layout = layout
        self.path = path
        self.make = make

    @property
    def volatile(self) -> bool:
        return True

    def attr(self) -> Attr:
        t = self.layout.newest_ns()
        return Attr(
            ino=_layout_ino(self.path),
            mode=stat.S_IFDIR | 0o555,
            nlink=2,
            uid=self.layout.uid,
            gid=self.layout.gid,
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
        )

    def children(self) -> Mapping[bytes, MountNode]:
        return self.make()


class _Link(MountNode):
    def __init__(self, layout: RepositoryLayout, path: bytes, target: bytes) -> None:
        self.layout = layout
        self.path = path
        self.target = target

    def attr(self) -> Attr:
        t = self.layout.newest_ns()
        return Attr(
            ino=_layout_ino(self.path),
            mode=stat.S_IFLNK | 0o777,
            uid=self.layout.uid,
            gid=self.layout.gid,
            size=len(self.target),
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
        )

    def readlink(self) -> bytes:
        return self.target


class _SnapshotDir(MountNode):
    """``snapshots/<id>``: the snapshot's ``/``, built when first used."""

    def __init__(self, layout: RepositoryLayout, item: _Listed) -> None:
        self.layout = layout
        self.item = item

    def _root(self) -> MountNode:
        return self.layout.tree(self.item).root

    def attr(self) -> Attr:
        try:
            return self._root().attr()
        except CipherdumpError as err:
            # Listed anyway (so that snapshots/ still lists); using it fails with EIO.
            if self.item.id not in self.layout.reported:
                self.layout.reported.add(self.item.id)
                self.layout.problem(b"/snapshots/" + self.item.name, err)
            return _Dir(self.layout, b"/snapshots/" + self.item.name, dict).attr()

    def children(self) -> Mapping[bytes, MountNode]:
        return self._root().children()

    def lookup(self, name: bytes) -> MountNode:
        return self._root().lookup(name)

    def xattrs(self) -> Mapping[str, bytes]:
        return self._root().xattrs()
