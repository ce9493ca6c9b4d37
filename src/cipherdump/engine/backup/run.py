"""One backup run: from the filesystem and options to a saved snapshot.

Finds the parent snapshot (:func:`find_parent`), decides how far it can be trusted,
runs the walk (:mod:`.walk`), and saves the snapshot with its directory table,
policies, warnings and counts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cipherdump import __version__
from cipherdump.engine.backup.tally import BackupStats
from cipherdump.engine.backup.walk import Walk
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE, check_chunk_size
from cipherdump.engine.dirtable import TABLE_ATTRS
from cipherdump.engine.gctune import few_collections
from cipherdump.engine.live_check import LiveCheck
from cipherdump.engine.nodeattrs import NODE_ATTRS_VERSION
from cipherdump.engine.parent import ParentIndex
from cipherdump.engine.policies import uuid_text
from cipherdump.engine.views.image import Namespace
from cipherdump.errors import CipherdumpError, InputError
from cipherdump.ext4 import Filesystem
from cipherdump.progress import OnProgress
from cipherdump.repo import BlobType, FileType, Id, Repository, Snapshot
from cipherdump.repo.codec import Value

SNAPSHOT_FORMAT = 1


# -- options, results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupOptions:
    """``path`` is a directory as typed (no-key names allowed); ``parent`` a snapshot
    reference, ``None`` for the latest snapshot of the same filesystem and path;
    ``source_name`` the device or image as the user named it (kept as the snapshot's
    ``source``)."""

    path: bytes = b"/"
    parent: str | None = None
    no_parent: bool = False
    force_reread: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Processes sharing the work, the coordinator included (see workers.worker_count);
    # 0 picks one worker per CPU (at most four) for a filesystem of more than a few
    # thousand inodes, else none.
    jobs: int = 0
    source_name: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackupResult:
    snapshot_id: Id
    snapshot: Snapshot
    parent_id: Id | None
    stats: BackupStats
    policies: list[dict[str, Value]]
    warnings: list[str]  # the filesystem's, then the repository's
    repository_warnings: list[str] = field(default_factory=list)


ProblemFn = Callable[[bytes, CipherdumpError], None]


# -- superblock facts -----------------------------------------------------------------------------


def filesystem_facts(fs: Filesystem) -> dict[str, Value]:
    """What a restore needs to know about the filesystem backed up."""
    sb = fs.sb
    return {
        "uuid": sb.s_uuid,
        "volume_name": sb.s_volume_name.rstrip(b"\0"),
        "block_size": fs.block_size,
        "cluster_size": sb.cluster_size,
        "inode_size": sb.inode_size,
        "inodes_count": sb.s_inodes_count,
        "inodes_per_group": sb.s_inodes_per_group,
        "blocks_count": sb.s_blocks_count,
        "blocks_per_group": sb.s_blocks_per_group,
        "first_data_block": sb.s_first_data_block,
        "first_ino": sb.first_ino,
        "rev_level": sb.s_rev_level,
        "feature_compat": sb.s_feature_compat,
        "feature_incompat": sb.s_feature_incompat,
        "feature_ro_compat": sb.s_feature_ro_compat,
        "features": list(sb.feature_names),
        "hash_seed": sb.s_hash_seed,
        "def_hash_version": sb.s_def_hash_version,
        "hash_unsigned": sb.dirhash_unsigned,
        "s_flags": sb.s_flags,
        "encoding": sb.s_encoding,
        "encoding_flags": sb.s_encoding_flags,
        "csum_seed": fs.csum_seed,
        "desc_size": sb.desc_size,
        "log_groups_per_flex": sb.s_log_groups_per_flex,
        "min_extra_isize": sb.s_min_extra_isize,
        "want_extra_isize": sb.s_want_extra_isize,
        "mkfs_time": sb.s_mkfs_time,
        "lpf_ino": sb.s_lpf_ino,
        # Public salt of e4crypt passphrases: lets a keyed restore derive e4crypt keys.
        "encrypt_pw_salt": sb.s_encrypt_pw_salt,
        # The filesystem needed recovery and was read with its journal replayed in memory.
        "journal_replayed": _journal_replayed(fs),
    }


def _journal_replayed(fs: Filesystem) -> dict[str, Value] | None:
    plan = fs.journal.replay if fs.journal is not None else None
    if plan is None:
        return None
    return {
        "transactions": plan.transactions,
        "blocks": len(plan.overlay),
        "first_transaction": plan.first_transaction,
        "end_transaction": plan.end_transaction,
    }


# -- the parent snapshot ------------------------------------------------------------


def find_parent(
    repo: Repository,
    fs: Filesystem,
    path: bytes,
    ref: str | None,
    warnings: list[str] | None = None,
) -> tuple[Id, Snapshot] | None:
    """The snapshot named by ``ref``, or the latest of the same filesystem UUID and path
    (damaged snapshot files are passed over, each with a line in ``warnings``)."""
    if ref is not None:
        return repo.find_snapshot(ref)
    damaged: list[CipherdumpError] = []
    snaps = repo.list_snapshots(damaged, drop_attrs=TABLE_ATTRS)
    if warnings is not None:
        warnings += [f"{err} (a damaged snapshot, passed over; run check)" for err in damaged]
    for snap_id, snap in reversed(snaps):
        facts = snap.attrs.get("fs")
        if (
            isinstance(facts, Mapping)
            and facts.get("uuid") == fs.uuid
            and snap.attrs.get("path") == path
            and snap.attrs.get("format") == SNAPSHOT_FORMAT
        ):
            return snap_id, repo.load_snapshot(snap_id)  # now with its directory table
    return None


def repo_sizes(repo: Repository) -> dict[tuple[FileType, str], int]:
    sizes: dict[tuple[FileType, str], int] = {}
    for file_type in (FileType.PACK, FileType.INDEX, FileType.SNAPSHOT):
        for info in repo.backend.list(file_type):
            sizes[(file_type, info.name)] = info.size
    return sizes


def backup(
    repo: Repository,
    fs: Filesystem,
    options: BackupOptions | None = None,
    *,
    on_progress: OnProgress | None = None,
    on_problem: ProblemFn | None = None,
    live: LiveCheck | None = None,
    parent_snapshot: tuple[Id, Snapshot] | None = None,
    save: bool = True,
) -> BackupResult:
    """Back up ``fs`` (``options.path`` of it) into ``repo`` as a new snapshot.

    A live backup's round (see :mod:`cipherdump.engine.live_backup`) passes its check
    as ``live``, the previous round's snapshot as ``parent_snapshot`` (instead of the
    one :func:`find_parent` picks) and ``save=False``: the snapshot is returned unsaved
    (with an all-zero id), for the next round or for the caller to save."""
    options = options or BackupOptions()
    chunk_size = check_chunk_size(options.chunk_size)
    top = Namespace(fs).resolve(options.path)
    if not top.inode.is_dir:
        raise InputError(f"{options.path.decode('utf-8', 'backslashreplace')}: not a directory")
    if live is not None:
        live.top_path = top.path
    before = repo_sizes(repo)
    warnings: list[str] = []
    # The index of a repository of ten million blobs in ~100 MiB, not ~700.
    repo.use_lean_index()
    missing = repo.missing_packs()
    if missing:
        # Snapshots may name blobs of those packs, the parent too: reusing its trees or
        # chunk lists would carry the loss into this snapshot.  Everything is read, and
        # what is gone is stored again.
        warnings.append(
            f"the index names {len(missing)} pack(s) the repository does not have (the "
            f"first: {missing[0].hex}): earlier snapshots may have lost data (run check); "
            "this backup reads everything and stores it again"
        )
    # An index file passed over as damaged is as good as lost: a parent tree the index
    # still has may name data blobs only that file listed.  (Its own warning is the
    # repository's, given when the index loaded.)
    lossy = bool(missing or repo.damaged_index_files())
    if lossy and not missing:
        warnings.append("this backup reads everything and stores it again (a damaged index)")
    parent = (
        None
        if options.no_parent or lossy
        else parent_snapshot or find_parent(repo, fs, top.path, options.parent, warnings)
    )
    if parent is not None and not repo.has_blob(BlobType.TREE, parent[1].tree):
        warnings.append(
            f"the parent snapshot {parent[0].hex[:8]} names trees the index does not have "
            "(index files lost?): this backup reads everything; run check"
        )
        parent = None
    repairs = repo.index_repairs()
    parent_index: ParentIndex | None = None
    trust_parent_trees = True
    if parent is not None:
        parent_index = ParentIndex(repo, parent[1])
        # A repair since the parent (repair packs, say) may have dropped blobs its
        # trees name.  Each file's chunk list is still reused only if the index has
        # every chunk, but a directory's tree, or a node's encoding, would be taken
        # over unread with whatever it names: not this time.
        seen = parent[1].attrs.get("index_repairs")
        known = set(seen) if isinstance(seen, tuple | list) else set()
        trust_parent_trees = set(repairs) <= known
    job = Walk(
        repo,
        fs,
        chunk_size,
        parent_index=parent_index,
        reread=options.force_reread,
        trust_parent_trees=trust_parent_trees,
        jobs=options.jobs,
        on_progress=on_progress,
        on_problem=on_problem,
        live=live,
    )
    tally = job.tally
    job.progress(top.path, force=True)
    with few_collections():
        tree_id, top_attrs = job.run(top)
    if parent_index is not None:
        files, dirs = parent_index.removed(tally.seen, tally.seen_dirs, tally.unmatched)
        tally.stats.files_removed += files
        tally.stats.dirs_removed += dirs
    policies = job.policy_census.summary(tally.census)
    table, dir_census = tally.dir_records.encode()
    attrs: dict[str, Value] = {
        "format": SNAPSHOT_FORMAT,
        "node_attrs": NODE_ATTRS_VERSION,
        "cipherdump_version": __version__,
        "source": options.source_name,
        "path": top.path,
        "fs": filesystem_facts(fs),
        "chunk_size": chunk_size,
        "top": {"name": top.raw_name, "kind": "dir", "attrs": top_attrs},
        "ancestors": job.ancestors(top),
        "policies": list(policies),
        "warnings": list(fs.warnings),
        "dirs": table,
        "dir_census": dir_census,
        "index_repairs": list(repairs),
    }
    snapshot = Snapshot(
        tree=tree_id,
        time_ns=time.time_ns(),
        hostname=options.hostname,
        tags=options.tags,
        parent=parent[0] if parent is not None else None,
        # bytes_stored is known only once the snapshot is saved; the result has it.
        attrs={
            **attrs,
            "stats": {k: v for k, v in tally.stats.as_dict().items() if k != "bytes_stored"},
        },
    )
    if not save:
        return BackupResult(
            snapshot_id=Id(bytes(32)),
            snapshot=snapshot,
            parent_id=snapshot.parent,
            stats=tally.stats,
            policies=policies,
            warnings=[*fs.warnings, *warnings],
            repository_warnings=warnings,
        )
    snap_id = repo.save_snapshot(snapshot)
    after = repo_sizes(repo)
    tally.stats.bytes_stored = sum(size for key, size in after.items() if key not in before)
    job.progress(top.path, force=True, finished=True)
    return BackupResult(
        snapshot_id=snap_id,
        snapshot=snapshot,
        parent_id=snapshot.parent,
        stats=tally.stats,
        policies=policies,
        warnings=[*fs.warnings, *warnings],
        repository_warnings=warnings,
    )


def snapshot_summary(snap_id: Id, snap: Snapshot) -> dict[str, Any]:
    """A snapshot as ``snapshots --json`` shows it."""
    attrs = snap.attrs
    facts = attrs.get("fs")
    stats = attrs.get("stats")
    out: dict[str, Any] = {
        "id": snap_id.hex,
        "short_id": snap_id.short,
        "time_ns": snap.time_ns,
        "hostname": snap.hostname,
        "tags": list(snap.tags),
        "parent": snap.parent.hex if snap.parent is not None else None,
        "source": attrs.get("source", ""),
        "path": attrs.get("path", b"/"),
    }
    if isinstance(facts, Mapping) and isinstance(facts.get("uuid"), bytes):
        uuid = facts["uuid"]
        assert isinstance(uuid, bytes)
        out["fs_uuid"] = uuid_text(uuid)
    if isinstance(stats, Mapping):
        out["stats"] = dict(stats)
    if isinstance(facts, Mapping) and isinstance(facts.get("journal_replayed"), Mapping):
        replayed = facts["journal_replayed"]
        assert isinstance(replayed, Mapping)
        out["journal_replayed"] = dict(replayed)
    live = attrs.get("live")
    if isinstance(live, Mapping):  # a live backup (see engine/live_backup.py)
        out["live"] = dict(live)
    policies = attrs.get("policies")
    if isinstance(policies, tuple):
        out["policies"] = [
            {
                k: (v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v)
                for k, v in p.items()
            }
            for p in policies
            if isinstance(p, Mapping)
        ]
    return out
