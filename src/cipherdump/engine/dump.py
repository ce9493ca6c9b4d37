"""``dump``: a file or subtree of a snapshot as a PAX tar stream.

Two kinds of archive, never mixed up:

* **Plaintext** (:func:`dump_plain`, with keys, or for trees that hold nothing
  encrypted): members named ``NAME/...`` after the dumped object (``./...`` for ``/``),
  modes, numeric owners, nanosecond times, ``SCHILY.xattr.*`` (user, trusted, security)
  and ``SCHILY.acl.access``/``default`` in the text form GNU tar and star use, hard
  links as links, device nodes and FIFOs, sparse files as GNU sparse 1.0.  Objects no
  key given decrypts are left out and reported, as ``restore --target`` does; their
  ciphertext is never written.
* **Ciphertext** (:func:`dump_ciphertext`, ``--ciphertext``, no key): the filesystem
  as stored, rooted at ``./`` with the chain of directories down to the dumped path
  (their contexts are needed to restore it), encrypted names as their no-key names and
  encrypted files as their stored whole data units, with the ``CIPHERDUMP.*`` records of
  docs/keyless-records.md on every member and ``CIPHERDUMP.filesystem`` in a global
  header.  ``restore --from-tar`` makes an image of it.

Sockets have no tar type: they are left out with a warning, as GNU tar does.  The data
of a member is checked against its header's size; an error after a header was written
ends the dump (the archive could not be completed honestly).
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from cipherdump.engine import keyless_records as R
from cipherdump.engine.nodeattrs import bytes_attr, int_attr, list_attr
from cipherdump.engine.restore_image import TargetFacts, facts_to_json
from cipherdump.engine.tarwriter import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    PaxRecords,
    TarWriter,
    pax_time,
)
from cipherdump.engine.views.image import Problem
from cipherdump.engine.views.paths import show_path
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView, PlainNode
from cipherdump.errors import CipherdumpError, KeyProblem, UnsupportedError
from cipherdump.ondisk.acl import acl_to_text, decode_ext4_acl
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_POSIX_ACL_ACCESS,
    EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT,
    EXT4_XATTR_INDEX_SYSTEM,
    PREFIXES,
)
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.codec import Value

__all__ = ["DumpResult", "dump_ciphertext", "dump_plain", "first_encrypted"]

# Xattr name indices kept as SCHILY.xattr (user, trusted, security).
_SCHILY_XATTRS = (1, 4, 6)
_ACLS = {
    EXT4_XATTR_INDEX_POSIX_ACL_ACCESS: b"SCHILY.acl.access",
    EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT: b"SCHILY.acl.default",
}
_STEP = 1 << 20
_TYPES = {"fifo": FIFOTYPE, "chardev": CHRTYPE, "blockdev": BLKTYPE}
#: The comment of a ciphertext archive's global header, for whoever opens it.
CIPHERTEXT_COMMENT = (
    b"cipherdump dump --ciphertext: encrypted files hold ciphertext in whole data units "
    b"under no-key names; not plaintext. Restore with: cipherdump restore --from-tar"
)


_N = TypeVar("_N", PlainNode, SnapNode)  # what a walk visits


@dataclass
class DumpResult:
    #: Objects left out: (path, why).
    problems: list[tuple[bytes, CipherdumpError]] = field(default_factory=list)
    #: What a tar cannot hold (sockets, some xattrs): (path, why), for warnings.
    skipped: list[tuple[bytes, str]] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes: int = 0


def data_ranges(a: Mapping[str, Value], size: int, block_size: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges of a file that hold data, below ``size``: its
    written extents (holes and unwritten extents read as zeros), in order."""
    if size <= 0:
        return []
    if bytes_attr(a, "inline") is not None or "extents" not in a:
        return [(0, size)]
    runs: list[tuple[int, int]] = []
    for e in list_attr(a, "extents"):
        if isinstance(e, tuple | list) and len(e) == 4:
            lblk, length, _pblk, unwritten = e
            if isinstance(lblk, int) and isinstance(length, int) and not unwritten:
                runs.append((lblk * block_size, (lblk + length) * block_size))
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in sorted(runs):
        end = min(end, size)
        if start >= end or start < pos:
            continue
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + end - start)
        else:
            out.append((start, end - start))
        pos = end
    return out


def _sparse(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]] | None:
    """The GNU sparse map for ``ranges``, or None when the file has no hole."""
    if ranges == [(0, size)] or size == 0:
        return None
    out = list(ranges)
    if not out or out[-1][0] + out[-1][1] < size:
        out.append((size, 0))  # a hole at the end: the map still reaches the size
    return out


def _xattr_records(
    xattrs: Sequence[Value], where: str, skipped: list[tuple[bytes, str]], path: bytes
) -> PaxRecords:
    out: PaxRecords = []
    for item in xattrs:
        if not (isinstance(item, tuple | list) and len(item) == 3):
            continue
        index, name, value = item
        if not (isinstance(index, int) and isinstance(name, bytes) and isinstance(value, bytes)):
            continue
        if index in _SCHILY_XATTRS:
            out.append((b"SCHILY.xattr." + PREFIXES[index] + name, value))
        elif index in _ACLS and not name:
            try:
                text = acl_to_text(decode_ext4_acl(value))
            except CipherdumpError as err:
                skipped.append((path, f"{where}: its ACL is left out: {err}"))
                continue
            out.append((_ACLS[index], text.encode()))
        elif index == EXT4_XATTR_INDEX_SYSTEM and name == b"data":
            continue  # inline data: the member's data holds it
        else:
            full = PREFIXES.get(index, b"index%d." % index) + name
            skipped.append((path, f"xattr {show_path(full)} has no tar form; left out"))
    return out


def _times(a: Mapping[str, Value]) -> PaxRecords:
    return [(b"atime", pax_time(int_attr(a, "atime_ns")))]


@dataclass(frozen=True, slots=True)
class _Head:
    """The ustar fields every member has."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int


class _Dump:
    """What both kinds of archive share: the writer, hard links, counts, progress."""

    def __init__(self, out: BinaryIO, on_progress: OnProgress | None) -> None:
        self.tar = TarWriter(out)
        self.result = DumpResult()
        self.links: dict[int, bytes] = {}
        self.on_progress = on_progress

    def add(self, arcname: bytes, typeflag: bytes, head: _Head, **kw: Any) -> None:
        self.tar.add(arcname, typeflag, mode=head.mode, uid=head.uid, gid=head.gid,
                     mtime_ns=head.mtime_ns, **kw)  # fmt: skip

    def event(self, path: bytes) -> None:
        if self.on_progress is not None:
            r = self.result
            done = r.files + r.dirs + r.symlinks + r.specials + r.hardlinks
            self.on_progress(Progress(r.bytes, inodes_done=done, path=path))

    def link_to(self, ino: int, links: int) -> bytes | None:
        """The member a hard-linked inode was written as, or None."""
        return self.links.get(ino) if links > 1 else None

    def written(self, ino: int, links: int, arcname: bytes, first: bytes | None) -> None:
        """A non-directory member is in the archive: later links of its inode point to
        it (only once written, so that none points to a member left out)."""
        if links > 1 and first is None:
            self.links[ino] = arcname


# -- plaintext ------------------------------------------------------------------------


def dump_plain(
    source: KeyedSnapshotView, top: PlainNode, out: BinaryIO, *,
    on_progress: OnProgress | None = None,
) -> DumpResult:  # fmt: skip
    """Write the plaintext tar of ``top`` to ``out`` (see the module docstring)."""
    d = _Dump(out, on_progress)
    top_name = b"." if top.path in (b"/", b"") else top.name

    def visit(
        node: PlainNode, arcname: bytes
    ) -> Iterator[tuple[PlainNode | Problem, bytes]] | None:
        try:
            return _plain_member(d, source, node, arcname)
        except KeyProblem as err:
            d.result.problems.append((node.path, err))
            return None

    _walk(d, (top, top_name), visit)
    d.tar.close()
    return d.result


def _walk(
    d: _Dump,
    first: tuple[_N, bytes],
    visit: Callable[[_N, bytes], Iterator[tuple[_N | Problem, bytes]] | None],
) -> None:
    """Depth first from ``first``, in member order: ``visit`` writes a node's member and
    gives its children (with their member names), or None; problems met in line are
    recorded."""
    stack: list[Iterator[tuple[_N | Problem, bytes]]] = [iter([first])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        node, arcname = item
        if isinstance(node, Problem):
            d.result.problems.append((node.path, node.error))
            continue
        kids = visit(node, arcname)
        if kids is not None:
            stack.append(kids)


def _plain_member(
    d: _Dump, source: KeyedSnapshotView, node: PlainNode, arcname: bytes
) -> Iterator[tuple[PlainNode | Problem, bytes]] | None:
    meta = source.meta(node)
    a = node.snap.attrs
    where = show_path(node.path)
    pax = _times(a) + _xattr_records(list(list_attr(a, "xattrs")), where, d.result.skipped,
                                     node.path)  # fmt: skip
    common = _Head(meta.mode, meta.uid, meta.gid, meta.mtime_ns)
    if meta.kind == "dir":
        if meta.encrypted:
            source.require_decryptable(node, where)
        kids = source.iter_children(node)  # names are decrypted before the header
        d.add(arcname + b"/", DIRTYPE, common, pax=pax)
        d.result.dirs += 1
        d.event(node.path)
        return ((k, arcname + b"/" + (k.name if isinstance(k, PlainNode) else b"")) for k in kids)
    first = d.link_to(meta.ino, meta.links)
    if first is not None:
        d.add(arcname, LNKTYPE, common, linkname=first, pax=pax)
        d.result.hardlinks += 1
    elif meta.kind == "file":
        if meta.encrypted:
            source.require_decryptable(node, where)
        ranges = data_ranges(a, meta.size, source.block_size)
        segments = source.iter_segments(node)
        data = (s.data for s in segments if s.data is not None)
        d.add(arcname, REGTYPE, common, size=meta.size, pax=pax, data=data,
                  sparse=_sparse(ranges, meta.size))  # fmt: skip
        d.result.files += 1
        d.result.bytes += meta.size
    elif meta.kind == "symlink":
        if meta.encrypted:
            source.require_decryptable(node, where)
        target = source.symlink_target(node)
        d.add(arcname, SYMTYPE, common, linkname=target, pax=pax)
        d.result.symlinks += 1
    elif meta.kind in _TYPES:
        rdev = (os.major(meta.rdev), os.minor(meta.rdev))
        d.add(arcname, _TYPES[meta.kind], common, rdev=rdev, pax=pax)
        d.result.specials += 1
    else:
        d.result.skipped.append((node.path, f"{where}: a {meta.kind} has no tar form; left out"))
        return None
    d.written(meta.ino, meta.links, arcname, first)
    d.event(node.path)
    return None


def first_encrypted(view: SnapshotView, top: SnapNode) -> bytes | None:
    """The path of the first encrypted object at or below ``top``, or None: what a dump
    without keys must refuse (reading the trees only, no data)."""
    if top.is_encrypted:
        return top.path
    if not top.is_dir:
        return None
    for kid in view.walk(top, recursive=True):
        if isinstance(kid, SnapNode) and kid.is_encrypted:
            return kid.path
    return None


# -- ciphertext -----------------------------------------------------------------------


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _records(snap: SnapNode) -> PaxRecords:
    """The CIPHERDUMP.* records of one member (docs/keyless-records.md)."""
    a = snap.attrs
    out: PaxRecords = [
        (R.pax_keyword(R.INO).encode(), b"%d" % int_attr(a, "ino")),
        (R.pax_keyword(R.FLAGS).encode(), b"%d" % int_attr(a, "flags")),
    ]
    context = bytes_attr(a, "context")
    if context is not None:
        out.append((R.pax_keyword(R.CONTEXT).encode(), _b64(context)))
    if a.get("name_encrypted"):
        out.append((R.pax_keyword(R.NAME).encode(), _b64(snap.raw_name)))
        stored = a.get("hash")
        if isinstance(stored, tuple | list) and len(stored) == 2:
            h, minor = stored
            if isinstance(h, int) and isinstance(minor, int):
                out.append((R.pax_keyword(R.HASH).encode(), _b64(struct.pack("<II", h, minor))))
    if snap.kind == "file":
        out.append((R.pax_keyword(R.SIZE).encode(), b"%d" % int_attr(a, "size")))
    elif snap.kind == "symlink" and snap.is_encrypted:
        stored = bytes_attr(a, "symlink")
        if stored is not None:
            out.append((R.pax_keyword(R.SYMLINK).encode(), _b64(stored)))
    return out


def dump_ciphertext(
    view: SnapshotView, path: bytes, out: BinaryIO, *, on_progress: OnProgress | None = None
) -> DumpResult:
    """Write the key-less tar of ``path`` of the snapshot (with its ancestors) to ``out``."""
    d = _Dump(out, on_progress)
    facts = TargetFacts.from_mapping(view.facts)
    d.tar.global_header(
        [
            (b"comment", CIPHERTEXT_COMMENT),
            (R.pax_keyword(R.FILESYSTEM).encode(), facts_to_json(facts)),
        ]
    )
    parts = [p for p in path.split(b"/") if p and p != b"."]
    root = view.root_node()
    chain = [root] + [view.resolve(b"/" + b"/".join(parts[: k + 1])) for k in range(len(parts))]
    top = chain[-1]
    names = [b"."]
    for snap in chain[1:]:
        names.append(names[-1] + b"/" + snap.name)
    for snap, arcname in zip(chain[:-1], names[:-1], strict=True):
        _cipher_member(d, view, snap, arcname)

    def visit(node: SnapNode, arcname: bytes) -> Iterator[tuple[SnapNode | Problem, bytes]] | None:
        if node.problem is not None:
            d.result.problems.append((node.path, node.refuse()))
            return None
        _cipher_member(d, view, node, arcname)
        if not node.is_dir:
            return None
        try:
            kids = view.children(node)
        except CipherdumpError as err:
            d.result.problems.append((node.path, err))
            return None
        return _named(kids, arcname)

    _walk(d, (top, names[-1]), visit)
    d.tar.close()
    return d.result


def _named(kids: list[SnapNode], parent: bytes) -> Iterator[tuple[SnapNode | Problem, bytes]]:
    """A directory's children with their member names (problems in line)."""
    for k in kids:
        yield (k if k.problem is None else Problem(k.path, k.refuse())), parent + b"/" + k.name


def _cipher_member(d: _Dump, view: SnapshotView, snap: SnapNode, arcname: bytes) -> None:
    a = snap.attrs
    where = show_path(snap.path)
    pax = _records(snap) + _times(a)
    pax.append((b"ctime", pax_time(int_attr(a, "ctime_ns"))))
    crtime = a.get("crtime_ns")
    if isinstance(crtime, int):
        # libarchive's keyword for the birth time.
        pax.append((b"LIBARCHIVE.creationtime", pax_time(crtime)))
    pax += _xattr_records(list(list_attr(a, "xattrs")), where, d.result.skipped, snap.path)
    mode = int_attr(a, "mode")
    common = _Head(mode, int_attr(a, "uid"), int_attr(a, "gid"), int_attr(a, "mtime_ns"))
    if snap.is_dir:
        name = b"./" if arcname == b"." else arcname + b"/"
        d.add(name, DIRTYPE, common, pax=pax)
        d.result.dirs += 1
        d.event(snap.path)
        return
    ino, links = int_attr(a, "ino"), int_attr(a, "links", 1)
    first = d.link_to(ino, links)
    if first is not None:
        d.add(arcname, LNKTYPE, common, linkname=first, pax=pax)
        d.result.hardlinks += 1
    elif snap.kind == "file":
        size = int_attr(a, "size")
        if snap.is_encrypted:
            du = view.data_unit_size(snap)
            size = -(-size // du) * du
        if bytes_attr(a, "inline") is not None:
            if snap.is_encrypted:
                raise UnsupportedError(f"{where}: encrypted inline data is not supported")
            ranges = [(0, size)] if size else []
            data: Iterator[bytes] = view.iter_stored(snap, size)
        else:
            ranges = data_ranges(a, size, view.block_size)
            data = _stored(view, snap, ranges)
        d.add(arcname, REGTYPE, common, size=size, pax=pax, data=data,
                  sparse=_sparse(ranges, size))  # fmt: skip
        d.result.files += 1
        d.result.bytes += size
    elif snap.kind == "symlink":
        if snap.is_encrypted:
            target = bytes_attr(a, "target") or b"?"
        else:
            target = bytes_attr(a, "symlink") or bytes_attr(a, "target") or b""
        d.add(arcname, SYMTYPE, common, linkname=target, pax=pax)
        d.result.symlinks += 1
    elif snap.kind in _TYPES:
        dev = list_attr(a, "rdev")
        rdev = (dev[0], dev[1]) if len(dev) == 2 else (0, 0)
        d.add(arcname, _TYPES[snap.kind], common, rdev=rdev, pax=pax)
        d.result.specials += 1
    else:
        d.result.skipped.append((snap.path, f"{where}: a {snap.kind} has no tar form; left out"))
        return
    d.written(ino, links, arcname, first)
    d.event(snap.path)


def _stored(view: SnapshotView, snap: SnapNode, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
    for off, n in ranges:
        pos = off
        while pos < off + n:
            step = min(_STEP, off + n - pos)
            yield view.read_stored(snap, pos, step)
            pos += step
