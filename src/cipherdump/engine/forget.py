"""``forget`` and ``tag``: which snapshots go, and tags changed on those that stay.

Snapshots are grouped (by default by host, filesystem UUID and path, as restic groups by
host and paths), the retention policy (:mod:`.retention`) is applied to each group on
its own, and the snapshots it does not keep are removed.  Only snapshot files are
removed: the data they alone used stays until ``prune``.

``tag`` saves each changed snapshot again with its new tags (its id is the hash of its
file, so it gets a new id) and then removes the old file; an interruption between the
two leaves both, which is a duplicate, never a loss.  The new snapshot records the id
of the one it replaces (attr ``original``), as restic does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import tzinfo

from cipherdump.engine.policies import uuid_text
from cipherdump.engine.retention import Dated, Decision, Policy, apply_policy
from cipherdump.errors import InputError
from cipherdump.repo import Id, Repository, Snapshot

GROUP_FIELDS = ("host", "uuid", "path", "tags")


def parse_group_by(text: str) -> tuple[str, ...]:
    """``--group-by``: a comma-separated subset of :data:`GROUP_FIELDS`; empty is one
    group of every snapshot."""
    fields = tuple(f for f in (p.strip() for p in text.split(",")) if f)
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad:
        raise InputError(
            f"--group-by: unknown field {bad[0]!r} (use {', '.join(GROUP_FIELDS)}, "
            "comma-separated, or '' for one group)"
        )
    return fields


def group_key(snap: Snapshot, fields: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """What a snapshot is grouped by, as (field, text) pairs."""
    out = []
    for name in fields:
        if name == "host":
            value = snap.hostname
        elif name == "uuid":
            facts = snap.attrs.get("fs")
            raw = facts.get("uuid") if isinstance(facts, Mapping) else None
            value = uuid_text(raw) if isinstance(raw, bytes) else ""
        elif name == "path":
            path = snap.attrs.get("path", b"/")
            value = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else ""
        else:
            value = ",".join(sorted(snap.tags))
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    key: tuple[tuple[str, str], ...]
    decisions: list[Decision]  # newest first


def plan_forget(
    snapshots: Iterable[tuple[Id, Snapshot]],
    policy: Policy,
    group_by: Sequence[str],
    *,
    tz: tzinfo | None,
    now_ns: int,
) -> list[GroupPlan]:
    """Apply ``policy`` to each group; groups in the order of their keys."""
    groups: dict[tuple[tuple[str, str], ...], list[Dated]] = {}
    for sid, snap in snapshots:
        dated = Dated(sid.hex, snap.time_ns, frozenset(snap.tags))
        groups.setdefault(group_key(snap, group_by), []).append(dated)
    return [
        GroupPlan(key, apply_policy(members, policy, tz=tz, now_ns=now_ns))
        for key, members in sorted(groups.items())
    ]


def remove_snapshots(
    repo: Repository, ids: Iterable[Id], on_removed: Callable[[Id], None] | None = None
) -> int:
    """Remove snapshot files (the repository's exclusive lock is held); returns how many."""
    count = 0
    for sid in ids:
        repo.remove_snapshot(sid)
        count += 1
        if on_removed is not None:
            on_removed(sid)
    return count


@dataclass(frozen=True, slots=True)
class TagChange:
    old: Id
    new: Id | None  # None when the tags did not change (or in a dry run)
    tags: tuple[str, ...]


def retag(
    repo: Repository,
    targets: Sequence[tuple[Id, Snapshot]],
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    set_to: Sequence[str] | None = None,
    dry_run: bool = False,
) -> list[TagChange]:
    """Change the tags of each target; a snapshot whose tags come out the same is left
    alone.  Tags keep their order, new ones appended; empty tags are refused."""
    for tag in (*add, *remove, *(set_to or ())):
        if not tag or "," in tag:
            raise InputError(f"bad tag {tag!r}: tags are non-empty and hold no comma")
    changes = []
    for sid, snap in targets:
        tags = list(set_to) if set_to is not None else list(snap.tags)
        tags += [t for t in add if t not in tags]
        tags = [t for t in dict.fromkeys(tags) if t not in remove]
        if tuple(tags) == snap.tags:
            changes.append(TagChange(sid, None, snap.tags))
            continue
        new_id = None
        if not dry_run:
            attrs = dict(snap.attrs)
            # The first original, if this snapshot replaced another already.
            attrs.setdefault("original", sid.raw)
            new_id = repo.save_snapshot(replace(snap, tags=tuple(tags), attrs=attrs))
            repo.remove_snapshot(sid)
        changes.append(TagChange(sid, new_id, tuple(tags)))
    return changes
