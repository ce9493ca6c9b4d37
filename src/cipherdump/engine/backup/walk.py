"""The walk: a directory tree into trees, bottom-up, one process's share of it.

The walk goes through :class:`~cipherdump.engine.views.image.Namespace`, so names are
the raw bytes stored on disk and the no-key names Linux shows are computed on the way.
A directory's tree is saved once all its entries are, so memory holds only the
directories on the current path (a stack of :class:`.frame.Frame`), and an unchanged
directory encodes to the same tree blob and is stored once.

The walk owns the order of things and the problems; it asks the node maker for nodes,
the parent reuse for what it can take over, the read-ahead for hints, and the crew of
workers to take leaf directories.  In a live backup's round it also asks the live
check (``live``, :class:`~cipherdump.engine.live_check.LiveCheck`) about each object
it reads: the seam is the three methods under "the live check" below.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import time
from collections.abc import Callable

from cipherdump.engine.backup.frame import Frame, Same
from cipherdump.engine.backup.nodes import NodeMaker
from cipherdump.engine.backup.readahead import ReadAhead
from cipherdump.engine.backup.reuse import ParentReuse, RecordKeys
from cipherdump.engine.backup.tally import Tally
from cipherdump.engine.backup.workers import (
    Crew,
    DirDone,
    DirJob,
    WorkerEnd,
    WorkerFailed,
    WorkerPool,
    serve,
    worker_count,
)
from cipherdump.engine.dirtable import DirRecord, DirTable
from cipherdump.engine.live_check import LiveCheck
from cipherdump.engine.nodeattrs import fingerprint, int_attr
from cipherdump.engine.parent import Census, ParentIndex
from cipherdump.engine.policies import PolicyCensus
from cipherdump.engine.views.image import MAX_DEPTH, ImageNode, Namespace, Problem
from cipherdump.engine.views.paths import child_path
from cipherdump.errors import CipherdumpError, CorruptError, InputError, UnsupportedError
from cipherdump.ext4 import Filesystem
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo import Id, Node, Repository
from cipherdump.repo.codec import Value
from cipherdump.repo.pack import BlobTooLargeError
from cipherdump.repo.tree import NodeSpan

_PROGRESS_EVERY_S = 0.1
# Entries of a directory listed (their inodes decoded) at a time.
BATCH = 1024

ProblemFn = Callable[[bytes, CipherdumpError], None]


class Walk:
    """One backup's walk, and (forked) each worker's.

    ``parent_index``: the parent snapshot's, None in a full backup.  ``reread``: read
    every file (``--force``).  ``trust_parent_trees`` False: the index was repaired
    since the parent snapshot, so only chunk lists the index has in full are reused.
    ``jobs``: processes sharing the work, the coordinator included (0: pick, see
    :func:`.workers.worker_count`).
    """

    def __init__(
        self,
        repo: Repository,
        fs: Filesystem,
        chunk_size: int,
        *,
        parent_index: ParentIndex | None = None,
        reread: bool = False,
        trust_parent_trees: bool = True,
        jobs: int = 0,
        on_progress: OnProgress | None = None,
        on_problem: ProblemFn | None = None,
        live: LiveCheck | None = None,
    ) -> None:
        self.repo = repo
        # A live backup's round (see engine/live_backup.py): checks each object read.
        self.live = live
        self.fs = fs
        self.ns = Namespace(fs)
        self.chunk_size = chunk_size
        self.jobs = jobs
        self.on_progress = on_progress
        self.on_problem = on_problem
        sb = fs.sb
        self.tally = Tally.for_inodes(sb.s_inodes_count)
        self.policy_census = PolicyCensus(fs)
        self.readahead = ReadAhead(fs)
        self.parent_index = parent_index
        self.maker = NodeMaker(
            repo,
            fs,
            chunk_size,
            self.tally,
            self.policy_census,
            self.readahead,
            self.progress,
            parent_index,
            reread=reread,
        )
        self.keys = RecordKeys(fs, chunk_size)
        self.reuse = (
            None
            if parent_index is None
            else ParentReuse(
                repo,
                parent_index,
                self.maker,
                self.progress,
                encoded=not reread and trust_parent_trees,
            )
        )
        self.inodes_used = max(sb.s_inodes_count - sb.s_free_inodes_count, 1)
        used = max(sb.s_blocks_count - sb.s_free_blocks_count, 0)
        self._bytes_total = used * fs.block_size
        self._last_progress = 0.0
        self.crew: Crew | None = None

    # -- events ---------------------------------------------------------------------------
    def problem(self, path: bytes, err: CipherdumpError, frame: Frame | None = None) -> None:
        if self.live is not None and self.live.absorb(path, err):
            if frame is not None:
                frame.errors += 1  # read again in the next round
            return
        self.tally.stats.errors += 1
        if frame is not None:
            frame.errors += 1
        if self.on_problem is not None:
            self.on_problem(path, err)

    def progress(self, path: bytes, *, force: bool = False, finished: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        inodes_done, bytes_done = self.tally.inodes_done, self.tally.bytes_done
        if self.crew is not None:
            remote_inodes, remote_bytes = self.crew.remote_progress()
            inodes_done += remote_inodes
            bytes_done += remote_bytes
        total = bytes_done if finished else max(self._bytes_total, bytes_done)
        self.on_progress(
            Progress(
                inodes_done=inodes_done,
                inodes_total=max(self.inodes_used, inodes_done),
                bytes_done=bytes_done,
                bytes_total=total,
                path=path,
                finished=finished,
            )
        )

    # -- the whole walk ---------------------------------------------------------------------
    def run(self, top: ImageNode) -> tuple[Id, dict[str, Value]]:
        """Back up the directory ``top``; returns its tree id and its own attrs."""
        # Through a relay (S3) only when asked for: on the benchmark machine it did not
        # pay off (bench/RESULTS.md).
        relayed = self.jobs > 1 and self.repo.relays_for_forks
        workers = (
            worker_count(self.jobs, self.inodes_used, os.cpu_count())
            if (self.repo.shared_between_processes or relayed) and self.live is None
            else 0  # (a live check keeps its state in this process)
        )
        if workers:
            self.start_workers(workers)  # before any thread of ours starts
        try:
            self.readahead.start()
            self.readahead.hint_inode_tables()
            try:
                if self.live is None:
                    first = self.open_dir(top, 0, 0, self.tally.census)
                else:
                    first = self.open_live_dir(top, 0, 0, self.tally.census)
                tree_id, frame = self.walk(first)
                if self.live is not None and not frame.live_ok:
                    # The top is never left out: kept as read, and named.
                    self.live.settle_dir(top, 0, Node(top.raw_name, "dir"), False)
            finally:
                self.readahead.stop()
            if self.crew is not None:
                self.finish_workers()
        except WorkerFailed as failed:
            # Not a problem of one entry (which the walk would report and go past).
            if isinstance(failed.error, CipherdumpError):
                raise failed.error from None
            raise RuntimeError(f"a backup worker failed: {failed.error}") from None
        finally:
            if self.crew is not None:
                self.crew.pool.kill()
                self.crew = None
        return tree_id, frame.attrs

    def walk(self, first: Frame) -> tuple[Id, Frame]:
        """Back up the tree under the open directory ``first``; returns its tree id and
        its frame (its attrs and whether anything under it failed)."""
        stack = [first]
        maker = self.maker
        while True:
            frame = stack[-1]
            if frame.pos >= len(frame.kids) and frame.more is not None:
                self.next_batch(frame)
            if frame.pos < len(frame.kids):
                index = frame.pos
                kid = frame.kids[index]
                # Let go of the entry's inode once it is done: a directory of many
                # entries would otherwise hold every decoded inode until it closes.
                frame.kids[index] = None
                frame.pos += 1
                position = frame.base + index
                order = frame.order(position)
                if kid is None:
                    continue  # reused by list_with_reuse
                if isinstance(kid, Problem):
                    self.problem(kid.path, kid.error, frame)
                    continue
                if isinstance(kid, Same):
                    self.walk_same(kid, order, frame)
                    continue
                if kid.raw_name in frame.nodes:
                    self.problem(kid.path, _second_entry(frame), frame)
                    continue
                try:
                    if kid.inode.is_dir:
                        # In a reused directory the entry's position is its old one.
                        if frame.reuse is not None:
                            order = frame.orders.get(kid.raw_name, 0)
                        if self.crew is not None and self.crew.hand_out(kid, order, stack):
                            continue
                        census = None if frame.reuse is not None else frame.census
                        if self.live is None:
                            stack.append(self.open_dir(kid, order, len(stack), census))
                        else:
                            stack.append(self.open_live_dir(kid, order, len(stack), census))
                    elif self.live is not None:
                        frame.files += 1
                        self.make_live_node(kid, order, position, frame, self.live)
                    else:
                        frame.files += 1
                        frame.nodes[kid.raw_name] = maker.make_node(
                            kid, order, frame.census, frame.record_key(position)
                        )
                        frame.spill_if_large(maker.directory_writer)
                except InputError as err:  # the filesystem's: the repository's end the backup
                    self.problem(kid.path, err, frame)
                continue
            stack.pop()
            if self.live is not None:
                self.verify_live_entries(frame)
            tree_id = self.close_dir(frame)
            if not stack:
                return tree_id, frame
            if frame.errors:
                stack[-1].errors += 1  # a damaged subtree keeps the directories above from reuse
            node = Node(frame.node.raw_name, "dir", subtree=tree_id, attrs=frame.attrs)
            if self.live is None:
                stack[-1].nodes[frame.node.raw_name] = node
                stack[-1].spill_if_large(maker.directory_writer)
            else:
                self.settle_live_dir(frame, node, stack[-1])
            self.progress(frame.node.path)

    # -- one directory ------------------------------------------------------------------------
    def open_dir(self, node: ImageNode, order: int, depth: int, census: Census | None) -> Frame:
        """``census``: where the directory's own context is counted (None in a reused
        directory, whose census is the parent snapshot's)."""
        maker = self.maker
        attrs = maker.attrs_of(node, order, census)
        ino = node.inode
        if self.tally.first_visit(ino.ino):
            maker.classify_dir(ino, fingerprint(attrs))
        frame = Frame(node, attrs, [], spillable=self.live is None)
        seen_dirs = self.tally.seen_dirs
        if ino.ino in seen_dirs or depth > MAX_DEPTH:
            why = (
                f"directory inode {ino.ino} is reachable twice (cycle)"
                if ino.ino in seen_dirs
                else f"directory tree is deeper than {MAX_DEPTH} levels"
            )
            err = CorruptError(why, structure="directory tree")
            attrs["list_error"] = str(err)
            self.problem(node.path, err, frame)
            return frame
        seen_dirs.add(ino.ino)
        try:
            # Kept for the next run even when not compared now (first or forced run).
            frame.key, listed, frame.record_keys, frame.offsets = self.keys.of(
                ino, listing=self.reuse is not None
            )
        except CipherdumpError:
            frame.key, listed = None, []  # listed below, one problem per bad entry
        reuse = self.reuse
        if frame.key is not None and reuse is not None:
            rec = reuse.unchanged_dir(ino, frame.key)
            if rec is not None:
                reuse.reuse_dir(frame, rec, listed)
                return frame
        try:
            streamed = None if reuse is None else reuse.load_changed_dir(frame, listed)
            if streamed is not None:
                frame.kids = streamed
                self.readahead.hint_files(frame.kids, maker.known_file)
            elif reuse is not None and frame.reusable:
                frame.kids = reuse.list_with_reuse(frame, listed)
                self.readahead.hint_files(frame.kids, maker.known_file)
            else:
                frame.more = self.ns.iter_children(node)
                self.next_batch(frame)
        except InputError as err:
            attrs["list_error"] = str(err)
            self.problem(node.path, err, frame)
        return frame

    def next_batch(self, frame: Frame) -> None:
        """List the next :data:`BATCH` entries of ``frame`` (the walk is done with the
        ones before), and hint the data of those files."""
        assert frame.more is not None
        frame.base += len(frame.kids)
        frame.pos = 0
        frame.kids = []
        try:
            frame.kids += itertools.islice(frame.more, BATCH)
        except InputError as err:  # (the directory is read by the first batch)
            frame.attrs["list_error"] = str(err)
            self.problem(frame.node.path, err, frame)
            frame.more = None
        if len(frame.kids) < BATCH:
            frame.more = None
        self.readahead.hint_files(frame.kids, self.maker.known_file)

    # -- the live check (a live backup's round; see engine/live_backup.py) --------------------
    def open_live_dir(self, kid: ImageNode, order: int, depth: int, census: Census | None) -> Frame:
        """:meth:`open_dir` between the live check's two looks at the directory; a
        directory it rejects is walked, but not recorded for reuse."""
        live = self.live
        assert live is not None
        ok = live.before(kid)
        frame = self.open_dir(kid, order, depth, census)
        if frame.more is not None:
            # All its entries are listed before the second look (not a batch at a
            # time as the walk goes): the look must follow the whole listing.
            try:
                frame.kids += frame.more
            except InputError as err:
                frame.attrs["list_error"] = str(err)
                self.problem(frame.node.path, err, frame)
            frame.more = None
            self.readahead.hint_files(frame.kids, self.maker.known_file)
        frame.live_ok = live.after(kid) if ok else False
        if not frame.live_ok:
            frame.errors += 1
        return frame

    def make_live_node(
        self, kid: ImageNode, order: int, position: int, frame: Frame, live: LiveCheck
    ) -> None:
        """:meth:`.nodes.NodeMaker.make_node` between the live check's looks (skipped if
        the first already rejects); the node stored is the one the check settles on."""
        made: Node | NodeSpan | None = None
        if live.before(kid):
            made = self.maker.make_node(kid, order, frame.census, frame.record_key(position))
        settled = live.settle(kid, order, made)
        if settled.node is not None:
            frame.nodes[kid.raw_name] = settled.node
        if not settled.accepted:
            frame.errors += 1  # the directory is listed again next round
            # Another link of the same inode must not take over what was read of it.
            self.maker.links.pop(kid.inode.ino, None)

    def verify_live_entries(self, frame: Frame) -> None:
        """Before a directory's tree is saved: take back the files whose inodes the
        live check, reading them again together, finds changed."""
        assert self.live is not None
        for name, ino, instead in self.live.verify_entries(frame.node.path):
            frame.errors += 1
            self.maker.links.pop(ino, None)
            if instead is None:
                frame.nodes.pop(name, None)
            else:
                frame.nodes[name] = instead

    def settle_live_dir(self, frame: Frame, node: Node, up: Frame) -> None:
        """Put the node the live check settles on for the closed directory ``frame``
        in its containing directory ``up``."""
        live = self.live
        assert live is not None
        order = int_attr(frame.attrs, "order", 0)
        settled = live.settle_dir(frame.node, order, node, frame.live_ok)
        if settled.node is not None:
            up.nodes[frame.node.raw_name] = settled.node
        if not settled.accepted:
            up.errors += 1

    def walk_same(self, kid: Same, order: int, frame: Frame) -> None:
        """:meth:`walk`'s step for an entry whose node is reused as encoded, when
        :meth:`.reuse.ParentReuse.list_with_reuse` left it to the walk (see there)."""
        err: CipherdumpError
        if kid.raw_name in frame.nodes:
            err = _second_entry(frame)
        else:
            assert self.reuse is not None  # only it makes a Same
            frame.files += 1
            try:
                frame.nodes[kid.raw_name] = self.reuse.reuse_node(
                    kid.entry.ino, kid.inode, kid.span, order, frame
                )
                frame.spill_if_large(self.maker.directory_writer)
                self.progress(frame.node.path)
                return
            except InputError as caught:
                err = caught
        name = self.ns.display_name(frame.node.inode, kid.entry)
        self.problem(posixpath.join(frame.node.path, name), err, frame)

    def close_dir(self, frame: Frame) -> Id:
        """Save (or reuse) the directory's tree and record it in the directory table."""
        tally = self.tally
        frame.node.inode.forget_entries()
        if frame.pending:
            assert self.crew is not None
            self.crew.collect(frame, tally.dir_records)
        try:
            if frame.reuse is None:
                spilled, frame.spill = frame.spill, None
                tree_id = self.maker.save_tree(frame.nodes.items(), spilled)
                if spilled is not None:
                    for name in spilled.duplicates:
                        self.problem(self.path_of(frame, name), _second_entry(frame), frame)
            else:
                assert self.reuse is not None
                tree_id = self.reuse.tree_of(frame)
        except BlobTooLargeError as err:
            # The directory's own node is kept, marked, with an empty tree: the rest of
            # the backup goes on, and a listing of the snapshot reports it.
            why = UnsupportedError(f"its entries cannot be stored: {err}")
            self.problem(frame.node.path, why, frame)
            frame.attrs["list_error"] = str(why)
            frame.census.clear()
            tree_id = self.maker.save_tree(())
        for key, n in frame.census.items():
            tally.census[key] = tally.census.get(key, 0) + n
        if frame.key is not None and not frame.errors:
            ino = frame.node.inode
            tally.dir_records.append(
                DirRecord(
                    ino.ino,
                    ino.generation,
                    frame.files,
                    fingerprint(frame.attrs),
                    frame.key,
                    tree_id,
                    tuple(sorted(frame.census.items(), key=lambda kv: str(kv[0]))),
                )
            )
        return tree_id

    def path_of(self, frame: Frame, raw_name: bytes) -> bytes:
        """The path of the entry ``raw_name`` of ``frame``'s directory (its no-key
        name found by a search: for the rare problem of a spilled large directory)."""
        directory = frame.node.inode
        name = raw_name
        if directory.is_encrypted:
            entry = next((e for e in directory.entries() if e.name == raw_name), None)
            if entry is not None:
                name = self.ns.display_name(directory, entry)
        return child_path(frame.node.path, name)

    def ancestors(self, top: ImageNode) -> list[Value]:
        """The directories from ``/`` down to the one holding ``top``, metadata and
        contexts."""
        out: list[Value] = []
        parts = [p for p in top.path.split(b"/") if p]
        for depth in range(len(parts)):
            prefix = b"/" + b"/".join(parts[:depth])
            node = self.ns.resolve(prefix)
            out.append(
                {"name": node.raw_name, "kind": "dir", "attrs": self.maker.attrs_of(node, 0, None)}
            )
        return out

    # -- the coordinator's side of the workers (see .workers) ------------------------------------
    def start_workers(self, count: int) -> None:
        relay = self.repo.prepare_fork()  # (for S3: the workers' uploads go through us)
        pool = WorkerPool(count, lambda conn: serve(conn, self), relay)
        self.crew = Crew(pool, self.on_problem, self._waited)

    def _waited(self) -> None:
        self.repo.refresh_lock()
        self.progress(b"")

    def finish_workers(self) -> None:
        """Have every worker save what it holds; merge what they counted."""
        assert self.crew is not None
        ends = self.crew.finish()
        self.crew = None
        for end in ends:
            self.tally.merge(end.tally)
            if self.parent_index is not None:
                self.parent_index.merge_loaded(end.loaded)
            for warning in end.warnings:
                self.fs.warn(warning)
            self.repo.absorb_index_files(end.index_files)

    # -- a worker's side (in a forked copy of the coordinator's Walk) -----------------------------
    def start_worker(self, on_progress: Callable[[Progress], None], on_problem: ProblemFn) -> None:
        self.crew = None
        self.repo.become_worker()
        reopen: Callable[[], None] | None = getattr(self.fs.source, "reopen", None)
        if reopen is not None:
            reopen()  # the byte source: a file descriptor (and buffer) of its own
        self.tally.reset()
        self.on_progress = on_progress
        self.on_problem = on_problem
        self.readahead.start()

    def run_job(self, job: DirJob) -> DirDone:
        """Back up one directory the coordinator handed out."""
        self.tally.seen_dirs.update(job.ancestors)  # as the coordinator's walk knows them
        node = ImageNode(
            job.path,
            job.name,
            job.raw_name,
            self.fs.inode(job.ino),
            job.name_encrypted,
            job.stored_hash,
        )
        census: Census = {}
        try:
            first = self.open_dir(node, job.order, job.depth, census if job.count_census else None)
        except InputError as err:  # as the walk takes it: a problem of this entry
            self.problem(job.path, err)
            return DirDone(job.number, None, {}, 1, census, DirTable())
        tree_id, frame = self.walk(first)
        records = self.tally.dir_records
        self.tally.dir_records = DirTable()
        return DirDone(job.number, tree_id.raw, frame.attrs, frame.errors, census, records)

    def end_worker(self) -> WorkerEnd:
        self.readahead.stop()
        self.progress(b"", force=True)
        self.repo.flush()
        loaded = self.parent_index.loaded_files() if self.parent_index is not None else {}
        return WorkerEnd(self.tally, loaded, self.fs.warnings, self.repo.index_files_saved())


def _second_entry(frame: Frame) -> CorruptError:
    """The problem of an entry with the name of an earlier one of ``frame``'s directory
    (found as it is walked, or by the writer of a spilled directory as it stores it)."""
    return CorruptError(
        "a second entry with the same name",
        structure="directory entry",
        location=f"directory inode {frame.node.inode.ino}",
    )
