"""Key-less restore into an ext4 image: from a snapshot, or image to image (``clone``).

The target is made with ``mke2fs`` to match the source (block size, inode size, the
features the data needs, the UUID and the htree hash seed, so that no-key names list as
they did), or an existing unmounted image is added to.  The tree is then written by
:mod:`cipherdump.ext4.build` with the ciphertext, encrypted names, symlink payloads and
contexts copied as stored: no key is involved.

The target is locked (``flock``) for the whole run, so that a second writer is refused
rather than left to drop the first one's tree.  A new image is made as
``OUT.partial`` (mode 0600 from its creation: it holds the source's unencrypted files)
and renamed into place once complete and synced.

Policies with IV_INO_LBLK_64/32 bind contents and names to inode numbers and the
filesystem UUID: the original numbers and UUID must be kept, or the data could not be
decrypted; a target that cannot keep them is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cipherdump.blockio import TargetLock
from cipherdump.blockio.mounts import find_mounts
from cipherdump.engine.gctune import few_collections
from cipherdump.engine.keyless_ingest import Copy, Ingested, ingest
from cipherdump.engine.keyless_records import FILESYSTEM, pax_keyword, xattr_name
from cipherdump.engine.nodeattrs import bytes_attr, int_attr, list_attr
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.errors import (
    CipherdumpError,
    InputError,
    NotExt4Error,
    NotFoundError,
    OutputError,
)
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.ext4.build import (
    FilesystemTree,
    ImageWriter,
    NewInode,
    NewRun,
    Plan,
    PopulateStats,
    Populator,
    SrcNode,
    plan_tree,
)
from cipherdump.ext4.build.node import BlockReader
from cipherdump.fscrypt.context import decode_context
from cipherdump.ondisk import features as F
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_SYSTEM
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo import BlobType, Id, Repository, Snapshot
from cipherdump.repo.codec import Value

# Called with {"inodes", "inodes_total", "blocks", "blocks_total", "block_size"} at most
# every _PROGRESS_EVERY_S seconds and once at the end; the totals are the plan's estimate.
# Called with the path and the error of each entry left out of the image.
OnProblem = Callable[[bytes, CipherdumpError], None]
_PROGRESS_EVERY_S = 0.1

# Features that describe a filesystem's state, not its format, or that a fresh image
# must not get (quota: the usage e2fsck expects would not match what is written).
_SKIP_FEATURES = {"needs_recovery", "orphan_present", "quota", "journal_dev", "snapshot"}
_ROOT_INO = 2


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """What the target must match: from the source superblock (or snapshot facts)."""

    block_size: int
    inode_size: int
    inodes_count: int
    blocks_count: int
    blocks_per_group: int
    uuid: bytes
    hash_seed: bytes
    def_hash_version: int
    s_flags: int
    features: tuple[str, ...]
    log_groups_per_flex: int
    volume_name: bytes

    @classmethod
    def from_mapping(cls, f: Mapping[str, Value]) -> TargetFacts:
        feats = f.get("features", ())
        return cls(
            block_size=int_attr(f, "block_size", 4096),
            inode_size=int_attr(f, "inode_size", 256),
            inodes_count=int_attr(f, "inodes_count"),
            blocks_count=int_attr(f, "blocks_count"),
            blocks_per_group=int_attr(f, "blocks_per_group"),
            uuid=bytes_attr(f, "uuid") or bytes(16),
            hash_seed=bytes_attr(f, "hash_seed") or bytes(16),
            def_hash_version=int_attr(f, "def_hash_version", 1),
            s_flags=int_attr(f, "s_flags", 1),
            features=tuple(x for x in feats if isinstance(x, str))
            if isinstance(feats, tuple | list)
            else (),
            log_groups_per_flex=int_attr(f, "log_groups_per_flex"),
            volume_name=bytes_attr(f, "volume_name") or b"",
        )

    @classmethod
    def from_filesystem(cls, fs: Filesystem) -> TargetFacts:
        sb = fs.sb
        return cls(
            block_size=fs.block_size,
            inode_size=sb.inode_size,
            inodes_count=sb.s_inodes_count,
            blocks_count=sb.s_blocks_count,
            blocks_per_group=sb.s_blocks_per_group,
            uuid=sb.s_uuid,
            hash_seed=sb.s_hash_seed,
            def_hash_version=sb.s_def_hash_version,
            s_flags=sb.s_flags,
            features=tuple(sb.feature_names),
            log_groups_per_flex=sb.s_log_groups_per_flex,
            volume_name=sb.s_volume_name.rstrip(b"\0"),
        )


# The ``filesystem`` record of key-less copies (docs/keyless-records.md): the fields
# above as UTF-8 JSON, bytes in hex.
_FACT_BYTES = ("uuid", "hash_seed", "volume_name")


def facts_to_json(facts: TargetFacts) -> bytes:
    """The ``filesystem`` record of ``facts``."""
    rec: dict[str, Any] = {}
    for name in TargetFacts.__dataclass_fields__:
        value = getattr(facts, name)
        rec[name] = value.hex() if isinstance(value, bytes) else value
    rec["features"] = list(facts.features)
    return json.dumps(rec, sort_keys=True).encode()


def facts_from_json(raw: bytes, where: str) -> TargetFacts:
    """Read a ``filesystem`` record back; every field must be there (nothing is guessed)."""
    try:
        rec = json.loads(raw.decode("utf-8"))
        if not isinstance(rec, dict):
            raise ValueError("not an object")
        missing = [n for n in TargetFacts.__dataclass_fields__ if n not in rec]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        values: dict[str, Any] = {}
        for name in TargetFacts.__dataclass_fields__:
            value = rec[name]
            if name in _FACT_BYTES:
                values[name] = bytes.fromhex(value)
            elif name == "features":
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    raise ValueError("features is not a list of names")
                values[name] = tuple(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                values[name] = value
            else:
                raise ValueError(f"{name} is not a number")
        if len(values["uuid"]) != 16 or len(values["hash_seed"]) != 16:
            raise ValueError("uuid and hash_seed must be 16 bytes")
        if values["block_size"] not in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise ValueError(f"block size {values['block_size']}")
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: the filesystem record cannot be read: {err}") from None
    return TargetFacts(**values)


# -- the target image ----------------------------------------------------------------


def refuse_if_mounted(path: str) -> None:
    mounts = find_mounts(path)
    if mounts:
        raise InputError(
            f"{path}: the target is mounted on {mounts[0].mount_point}; unmount it first "
            "(an image is only ever written offline)"
        )


def make_image(
    out_path: str, facts: TargetFacts, *, size: int | None, keep_uuid: bool, min_inodes: int = 0,
    shown: str | None = None,
) -> None:  # fmt: skip
    """Format ``out_path`` (an existing file of the right size) with mke2fs to match
    ``facts``, with at least ``min_inodes``; errors name ``shown`` (or ``out_path``)."""
    mke2fs = shutil.which("mke2fs") or shutil.which("mkfs.ext4")
    if mke2fs is None:
        raise InputError("mke2fs (e2fsprogs) is needed to create the target image")
    bs = facts.block_size
    feats = [x for x in facts.features if x not in _SKIP_FEATURES and "_0x" not in x]
    ext = ["lazy_itable_init=0", "lazy_journal_init=0"]
    ext.append(f"hash_seed={uuidlib.UUID(bytes=facts.hash_seed)}")
    if "casefold" in feats:
        ext.append("encoding=utf8")
    argv = [mke2fs, "-F", "-q", "-t", "ext4", "-b", str(bs), "-I", str(facts.inode_size)]
    argv += ["-O", ",".join(["none", *feats]), "-E", ",".join(ext)]
    if size is None or size >= facts.blocks_count * bs:
        argv += ["-N", str(max(facts.inodes_count, min_inodes))]
        if facts.blocks_per_group:
            argv += ["-g", str(facts.blocks_per_group)]
    elif min_inodes:
        argv += ["-N", str(min_inodes)]
    if "flex_bg" in feats and facts.log_groups_per_flex:
        argv += ["-G", str(1 << facts.log_groups_per_flex)]
    if keep_uuid:
        argv += ["-U", str(uuidlib.UUID(bytes=facts.uuid))]
    if facts.volume_name:
        argv += ["-L", facts.volume_name.decode("utf-8", "replace")[:16]]
    argv.append(out_path)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        # mke2fs wraps its messages over several lines: one line, without its name.
        said = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
        said = said.removeprefix(os.path.basename(mke2fs) + ": ").removeprefix("mke2fs: ")
        raise OutputError(f"{shown or out_path}: mke2fs cannot make the image: {said}")


def _show_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def new_image_size(
    out_path: str, facts: TargetFacts, size: int | None, plan: Plan, inodes: int
) -> int:
    """The byte size of a new image, checked before anything is created."""
    bs = facts.block_size
    nbytes = (size if size is not None else facts.blocks_count * bs) // bs * bs
    # A lower bound of what mke2fs and the tree need: the tree's blocks with the
    # writer's margin, the inode tables, and 64 blocks of superblock, descriptors,
    # bitmaps and root (mke2fs adds a journal only where it has room for one).
    blocks = plan.blocks(bs)
    least = (blocks + blocks // 64 + 16 + -(-inodes * facts.inode_size // bs) + 64) * bs
    if nbytes < least:
        raise OutputError(
            f"{out_path}: a {_show_size(nbytes)} image is too small for this tree, "
            f"which needs at least about {_show_size(least)}"
        )
    if size is not None:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(out_path)))
        except OSError as e:
            raise OutputError(f"{out_path}: cannot check free space: {e.strerror}") from None
        room = st.f_bavail * st.f_frsize
        if nbytes > room:
            raise OutputError(
                f"{out_path}: --size {_show_size(nbytes)} is more than the "
                f"{_show_size(room)} free where the image would be"
            )
    return nbytes


def _check_existing(out_path: str, facts: TargetFacts, ties: bool) -> None:
    """Refuse an existing image the tree cannot go into as it is."""
    refuse_if_mounted(out_path)
    try:
        with open_filesystem(out_path) as fs:
            if fs.block_size != facts.block_size:
                raise InputError(
                    f"{out_path}: block size {fs.block_size} differs from the source's "
                    f"{facts.block_size}; encrypted data units follow the block size"
                )
            if ties and fs.uuid != facts.uuid:
                raise InputError(
                    f"{out_path}: its UUID differs from the source's, and the encryption "
                    "policy (IV_INO_LBLK_64/32) derives keys from the UUID; restore into "
                    "a new image instead"
                )
            for name, has in (
                ("encrypt", fs.sb.has_incompat(F.INCOMPAT_ENCRYPT)),
                ("casefold", fs.sb.has_incompat(F.INCOMPAT_CASEFOLD)),
                ("stable_inodes", fs.sb.has_compat(F.COMPAT_STABLE_INODES) or not ties),
            ):
                if name in facts.features and not has:
                    raise InputError(f"{out_path}: the target lacks the {name} feature")
    except NotExt4Error:
        raise InputError(
            f"{out_path}: exists and is not an ext4 image; remove it or name a new file"
        ) from None


def partial_path(out_path: str) -> str:
    """Where a new image is made before it is renamed to ``out_path``: a run killed
    half-way leaves this file (reused by the next run), never a broken ``out_path``."""
    return out_path + ".partial"


def _plan_and_write(
    out_path: str,
    root: SrcNode,
    source: Any,
    facts: TargetFacts,
    size: int | None,
    on_progress: OnProgress | None,
) -> tuple[PopulateStats, bool, bool]:
    """Plan the tree, make (or open) the target and write it: (stats, whether the target
    was created, whether inode numbers are kept).  The target is locked throughout."""
    with few_collections():
        plan = plan_tree(source, root, inode_size=facts.inode_size)
        ties = _ties(plan.contexts.values())
        if os.path.exists(out_path) and os.path.getsize(out_path) > 0:
            with TargetLock(out_path, create=False) as lock:
                if not lock.is_current():
                    raise OutputError(f"{out_path}: replaced while it was being opened")
                _check_existing(out_path, facts, ties)
                stats = _populate(out_path, root, source, plan, facts, created=False,
                                  ties=ties, on_progress=on_progress)  # fmt: skip
            return stats, False, ties
        # Inode numbers the policy needs must exist; others only need enough inodes.
        need = max(plan.inos) if ties else len(plan.inos) + 256
        nbytes = new_image_size(out_path, facts, size, plan, need)
        partial = partial_path(out_path)
        with TargetLock(partial, create=True, shown=out_path) as lock:
            try:
                if not lock.is_current():
                    raise OutputError(f"{partial}: replaced while it was being opened")
                lock.resize(nbytes)
                make_image(partial, facts, size=size, keep_uuid=True, min_inodes=need,
                           shown=out_path)  # fmt: skip
                stats = _populate(partial, root, source, plan, facts, created=True, ties=ties,
                                  on_progress=on_progress)  # fmt: skip
                _publish(partial, out_path)
            except BaseException:
                # A half-written new image is no use to anyone (an existing one is undone).
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
    return stats, True, ties


def _publish(partial: str, out_path: str) -> None:
    """Give the finished (and synced) image its name, never over another image."""
    if os.path.exists(out_path) and os.path.getsize(out_path) > 0:
        raise OutputError(f"{out_path}: appeared while the new image was being written")
    try:
        os.replace(partial, out_path)
        dfd = os.open(os.path.dirname(os.path.abspath(out_path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise OutputError(
            f"{out_path}: cannot rename the new image into place: {e.strerror}"
        ) from None


def _populate(
    out_path: str, root: SrcNode, tree: Any, plan: Plan, facts: TargetFacts, *, created: bool,
    ties: bool, on_progress: OnProgress | None,
) -> PopulateStats:  # fmt: skip
    with ImageWriter(out_path) as w:
        if created:
            w.set_hash_params(facts.hash_seed, facts.def_hash_version, facts.s_flags)

        inodes_total = len(plan.inos)
        blocks_total = plan.blocks(w.block_size)
        last = 0.0

        def progress(stats: PopulateStats, name: bytes, *, force: bool = False) -> None:
            nonlocal last
            now = time.monotonic()
            if on_progress is None or (not force and now - last < _PROGRESS_EVERY_S):
                return
            last = now
            # The plan's totals are estimates (the root is there already, directory
            # blocks are guessed); the final event says what was done.
            bs = w.block_size
            on_progress(
                Progress(
                    bytes_done=stats.blocks * bs,
                    bytes_total=(stats.blocks if force else max(blocks_total, stats.blocks)) * bs,
                    inodes_done=stats.inodes,
                    inodes_total=stats.inodes if force else max(inodes_total, stats.inodes),
                    path=name,
                    finished=force,
                )
            )

        pop = Populator(w, tree, require_inos=ties, on_progress=progress)
        pop.reserve(plan)
        pop.check_room(plan)
        try:
            stats = pop.run(root)
        except BaseException:
            if not created:
                pop.undo()
            raise
        progress(stats, b"", force=True)
        w.commit()
    return stats


def _summary(stats: PopulateStats, out_path: str, started: float, **extra: Any) -> dict[str, Any]:
    return {
        "image": out_path,
        "inodes": stats.inodes,
        "directories": stats.dirs,
        "files": stats.files,
        "symlinks": stats.symlinks,
        "specials": stats.specials,
        "hardlinks": stats.hardlinks,
        "blocks": stats.blocks,
        "bytes": stats.bytes,
        "inodes_renumbered": stats.inodes_moved,
        "problems": len(stats.problems),
        "seconds": round(time.monotonic() - started, 3),
        **extra,
    }


def _report(stats: PopulateStats, on_problem: OnProblem | None) -> None:
    for path, err in stats.problems:
        if on_problem is not None:
            on_problem(path, err)


def _ties(contexts: Iterable[bytes]) -> bool:
    for raw in contexts:
        try:
            if decode_context(raw).policy.ties_to_filesystem:
                return True
        except CipherdumpError:
            continue
    return False


# -- clone -------------------------------------------------------------------------


# How many nodes the planning walk keeps for the writing walk (about 1 KiB each), so
# that a directory's entries are read and decoded once, not twice.
_KEEP_NODES = 50_000


class _ChainTree:
    """A tree source restricted along a chain: each chain directory lists only the next.

    The planning walk and the writing walk ask for each directory's children once each:
    the first answer is kept (within a budget) and handed out again the second time.
    """

    def __init__(self, inner: Any, chain: dict[int, SrcNode]) -> None:
        self.inner = inner
        self.chain = chain  # inode number of a chain directory -> its one child
        self._kept: dict[int, list[SrcNode]] = {}
        self._budget = _KEEP_NODES

    def children(self, node: SrcNode) -> Iterable[SrcNode]:
        only = self.chain.get(node.ino)
        if only is not None:
            return [only]
        kept = self._kept.pop(node.ino, None)
        if kept is not None:
            self._budget += len(kept)
            return kept
        kids: Iterator[SrcNode] = iter(self.inner.children(node))
        head = list(itertools.islice(kids, self._budget + 1))
        if len(head) > self._budget:
            # Too many to keep: handed out as they are read, and read again next time.
            return itertools.chain(head, kids)
        self._kept[node.ino] = head
        self._budget -= len(head)
        return head

    def reader(self, node: SrcNode) -> BlockReader:
        r: BlockReader = self.inner.reader(node)
        return r


def clone_image(
    image: str, out_path: str, *, path: bytes | None = None, size: int | None = None,
    on_progress: OnProgress | None = None, on_problem: OnProblem | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Copy the tree of ``image`` (or the subtree at ``path``) into ``out_path``."""
    started = time.monotonic()
    if os.path.exists(out_path) and os.path.samefile(image, out_path):
        raise InputError("the source and the target are the same file")
    with open_filesystem(image) as fs:
        facts = TargetFacts.from_filesystem(fs)
        tree = FilesystemTree(fs)
        root = tree.node(fs.root, b"")
        chain: dict[int, SrcNode] = {}
        node = root
        for part in (p for p in (path or b"/").split(b"/") if p and p != b"."):
            kid = next((k for k in tree.children(node) if k.name == part), None)
            if kid is None:
                raise NotFoundError(f"{os.fsdecode(path or b'/')}: no such file in {image}")
            chain[node.ino] = kid
            node = kid
        stats, created, ties = _plan_and_write(
            out_path, root, _ChainTree(tree, chain), facts, size, on_progress
        )
    _report(stats, on_problem)
    return _summary(stats, out_path, started, source=image, created=created,
                    keeps_inode_numbers=ties)  # fmt: skip


# -- restore from a snapshot ------------------------------------------------------------


def _as_hash(value: Value | None) -> tuple[int, int] | None:
    if isinstance(value, tuple | list) and len(value) == 2:
        h, minor = value
        if isinstance(h, int) and isinstance(minor, int):
            return h, minor
    return None


def snapnode_spec(node: SnapNode) -> NewInode:
    a = node.attrs
    xattrs: list[tuple[int, bytes, bytes]] = []
    for item in list_attr(a, "xattrs"):
        if isinstance(item, tuple | list) and len(item) == 3:
            index, name, value = item
            if isinstance(index, int) and isinstance(name, bytes) and isinstance(value, bytes):
                if node.is_dir and index == EXT4_XATTR_INDEX_SYSTEM and name == b"data":
                    continue
                xattrs.append((index, name, value))
    rdev = _as_hash(a.get("rdev"))
    crtime = a.get("crtime_ns")
    return NewInode(
        mode=int_attr(a, "mode"),
        uid=int_attr(a, "uid"),
        gid=int_attr(a, "gid"),
        size=int_attr(a, "size"),
        links=int_attr(a, "links", 1),
        flags=int_attr(a, "flags"),
        generation=int_attr(a, "generation"),
        version=int_attr(a, "version"),
        project_id=int_attr(a, "project_id"),
        atime_ns=int_attr(a, "atime_ns"),
        mtime_ns=int_attr(a, "mtime_ns"),
        ctime_ns=int_attr(a, "ctime_ns"),
        crtime_ns=crtime if isinstance(crtime, int) else None,
        context=bytes_attr(a, "context"),
        xattrs=tuple(xattrs),
        rdev=rdev,
    )


class SnapshotTree:
    """A snapshot as a tree source: nodes from its trees, data from its chunks."""

    def __init__(self, view: SnapshotView) -> None:
        self.view = view
        self.bs = view.block_size
        # Nodes no inode can be made of, by path (both walks meet them).
        self.problems: dict[bytes, CipherdumpError] = {}

    def node(self, snap: SnapNode) -> SrcNode:
        a = snap.attrs
        ino = int_attr(a, "ino")
        if ino == 0:
            raise InputError(f"{snap.path!r}: the snapshot keeps no inode number")
        src = SrcNode(snap.raw_name, ino, snapnode_spec(snap), snap, _as_hash(a.get("hash")))
        if snap.kind == "file":
            inline = bytes_attr(a, "inline")
            if inline is not None:
                src.inline = inline
            for e in list_attr(a, "extents"):
                if isinstance(e, tuple | list) and len(e) == 4:
                    lblk, length, _pblk, unwritten = e
                    if isinstance(lblk, int) and isinstance(length, int):
                        src.runs.append(NewRun(lblk, length, bool(unwritten)))
        elif snap.kind == "symlink":
            src.symlink = bytes_attr(a, "symlink")
        return src

    def children(self, node: SrcNode) -> Iterator[SrcNode]:
        snap = node.handle
        assert isinstance(snap, SnapNode)
        for k in self.view.iter_children(snap):
            if k.problem is None:
                yield self.node(k)
            else:
                self.problems[k.path] = k.refuse()

    def reader(self, node: SrcNode) -> BlockReader:
        snap = node.handle
        assert isinstance(snap, SnapNode)
        a = snap.attrs
        repo = self.view.repo
        chunk_size = int_attr(a, "chunk_size", self.view.chunk_size)
        blob_of: dict[int, Id] = {}
        indices = a.get("chunks", ())
        if isinstance(indices, tuple | list):
            for index, blob_id in zip(indices, snap.node.content, strict=False):
                if isinstance(index, int):
                    blob_of[index] = blob_id
        bs = self.bs
        cache: dict[int, bytes] = {}

        def chunk(index: int) -> bytes:
            data = cache.get(index)
            if data is None:
                blob = blob_of.get(index)
                data = repo.load_blob(BlobType.DATA, blob) if blob is not None else b""
                cache.clear()
                cache[index] = data
            return data

        def read(lblk: int, count: int) -> bytes:
            out = bytearray()
            pos, end = lblk * bs, (lblk + count) * bs
            while pos < end:
                index, off = divmod(pos, chunk_size)
                n = min(end - pos, chunk_size - off)
                piece = chunk(index)[off : off + n]
                out += piece.ljust(n, b"\0")
                pos += n
            return bytes(out)

        return read


def restore_to_image(
    repo: Repository,
    snapshot_id: Id,
    snapshot: Snapshot,
    out_path: str,
    *,
    path: bytes | None,
    size: int | None,
    on_progress: OnProgress | None = None,
    on_problem: OnProblem | None = None,
) -> dict[str, Any]:
    """Write the snapshot (or the subtree at ``path``, with its ancestors) into an image.

    Returns a JSON-ready summary.
    """
    started = time.monotonic()
    view = SnapshotView(repo, snapshot_id, snapshot)
    facts = TargetFacts.from_mapping(view.facts)
    tree = SnapshotTree(view)
    root_snap = view.root_node()
    root = tree.node(root_snap)
    chain: dict[int, SrcNode] = {}
    parts = [p for p in (path or b"/").split(b"/") if p and p != b"."]
    node = root
    for k in range(len(parts)):
        snap = view.resolve(b"/" + b"/".join(parts[: k + 1]))
        kid = tree.node(snap)
        chain[node.ino] = kid
        node = kid
    stats, created, ties = _plan_and_write(
        out_path, root, _ChainTree(tree, chain), facts, size, on_progress
    )
    stats.problems[:0] = tree.problems.items()
    _report(stats, on_problem)
    return _summary(stats, out_path, started, snapshot=snapshot_id.hex, created=created,
                    path=os.fsdecode(path or b"/"), keeps_inode_numbers=ties)  # fmt: skip


# -- restore from a key-less copy (tar or directory) ------------------------------------


class CopiedTree:
    """A key-less copy as a tree source: the nodes :func:`ingest` checked, data read
    from the copy (zeros past its end: the last block of a file)."""

    def __init__(self, ingested: Ingested, block_size: int) -> None:
        self.ingested = ingested
        self.bs = block_size

    def children(self, node: SrcNode) -> list[SrcNode]:
        return self.ingested.children.get(node.ino, [])

    def reader(self, node: SrcNode) -> BlockReader:
        read_at, _size = self.ingested.readers[node.ino]
        bs = self.bs

        def read(lblk: int, count: int) -> bytes:
            return read_at(lblk * bs, count * bs)

        return read


def restore_copy_to_image(
    copy: Copy, out_path: str, *, size: int | None, on_progress: OnProgress | None = None,
    on_problem: OnProblem | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write a key-less copy (``restore --from-tar``/``--from-dir``) into an image:
    the same image a key-less restore of the snapshot makes.  Raises
    :class:`~cipherdump.engine.keyless_ingest.CopyRefused` (before anything is
    written) when records are missing or inconsistent."""
    started = time.monotonic()
    if copy.filesystem is None:
        raise InputError(
            f"{copy.shown}: no filesystem record ({pax_keyword(FILESYSTEM)} / "
            f"{xattr_name(FILESYSTEM)} on the root): the block size, UUID and hash seed "
            "of the original cannot be guessed"
        )
    facts = facts_from_json(copy.filesystem, copy.shown)
    ingested = ingest(copy.entries, facts.block_size, copy.shown)
    tree = CopiedTree(ingested, facts.block_size)
    stats, created, ties = _plan_and_write(out_path, ingested.root, tree, facts, size, on_progress)
    _report(stats, on_problem)
    return _summary(stats, out_path, started, source=copy.shown, created=created,
                    keeps_inode_numbers=ties)  # fmt: skip
