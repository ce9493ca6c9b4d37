"""Reading a key-less copy back: tar members or copied files, with their records, as
the nodes a restored image is written from.

``restore --from-tar`` (:mod:`cipherdump.engine.keyless_tar`) and ``restore --from-dir``
(:mod:`cipherdump.engine.keyless_dir`) each turn their input into :class:`CopiedEntry`
objects: what the copy holds of one name (metadata, xattrs, the records of
docs/keyless-records.md, and a way to read its bytes).  :func:`ingest` checks them and
makes the writer's :class:`~cipherdump.ext4.build.SrcNode` of each, the same for both.

Nothing is guessed.  Every record missing where it is needed, or contradicting the
copy or another record, is one line in :class:`CopyRefused`, and then nothing is
written:

* every regular file and directory needs ``flags`` (a view and a dump put it on all of
  them): a copy that dropped its xattrs is refused, not restored as an unencrypted
  tree of ciphertext;
* an object under an encrypted directory needs its ``context`` (regular files,
  directories and symlinks; device nodes, FIFOs and sockets are never encrypted);
* an encrypted file needs ``size``, and its copy must hold exactly the whole data
  units that size takes;
* an encrypted symlink needs ``symlink`` (its stored payload);
* names in an encrypted directory are the copy's no-key names: the raw name is the
  ``name`` record when the no-key name matches it, else the ciphertext the no-key name
  holds whole (names of up to 149 bytes of ciphertext).  Hard links share one inode's
  xattrs, so ``name`` is only ever taken where it matches the entry's own no-key name;
  a hard link with a longer name cannot be restored from a copy that keeps xattrs per
  inode;
* with an IV_INO_LBLK_64/32 policy, every encrypted inode needs its ``ino``: the
  policy derives the keys of its contents and names from the inode number.

Copies that did not keep holes hold zeros where an encrypted file had none: an
encrypted block that is all zeros is written as a hole (a written block of ciphertext
is never all zeros; the kernel reads a hole as zeros, which a zero ciphertext block
would not decrypt to).
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cipherdump.engine import keyless_records as R
from cipherdump.errors import CipherdumpError, InputError
from cipherdump.ext4.build import NewInode, NewRun, SrcNode
from cipherdump.fscrypt.context import decode_context
from cipherdump.fscrypt.nokey import decode_nokey_name
from cipherdump.ondisk.acl import xattr_acl_to_ext4
from cipherdump.ondisk.inode import EXT4_CASEFOLD_FL, EXT4_ENCRYPT_FL

__all__ = ["CopiedEntry", "Copy", "CopyRefused", "Ingested", "ext4_xattr", "ingest"]

#: Reads ``n`` bytes at ``offset`` of a copied file (zeros past its end).
ReadAt = Callable[[int, int], bytes]
_FIRST_FREE_INO = 12  # 11 is a new image's lost+found
_SHOWN_PROBLEMS = 20
_XATTR_PREFIXES = ((b"user.", 1), (b"trusted.", 4), (b"security.", 6))
_ACL_NAMES = {b"system.posix_acl_access": 2, b"system.posix_acl_default": 3}
_ENCRYPTABLE = ("file", "dir", "symlink")


class CopyRefused(InputError):
    """Records missing or inconsistent: ``lines`` names each (one line an object)."""

    def __init__(self, source: str, lines: list[str]) -> None:
        self.lines = lines
        more = len(lines) - _SHOWN_PROBLEMS
        self.shown = lines[:_SHOWN_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        super().__init__(
            f"{source}: {len(lines)} object(s) cannot be restored without guessing "
            "(see above); nothing was written"
        )


@dataclass(slots=True)
class CopiedEntry:
    """One name of a copy.  ``path`` is relative (``b""`` is the root); ``size`` the
    copy's size; ``ranges`` the ``(offset, length)`` the copy holds data in (None: all
    of it); ``identity`` is the same for names of one inode in the copy (a hard link)."""

    path: bytes
    kind: str  # file dir symlink fifo chardev blockdev socket
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    crtime_ns: int | None = None
    size: int = 0
    target: bytes = b""
    rdev: tuple[int, int] | None = None
    #: ``(name index, name, value)`` as ext4 stores them (ACLs in ext4's form).
    xattrs: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: Record name -> value: binary records raw, numbers as decimal text.
    records: dict[str, bytes] = field(default_factory=dict)
    identity: object = None
    read_at: ReadAt | None = None
    ranges: list[tuple[int, int]] | None = None

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]


def ext4_xattr(full: bytes, value: bytes) -> tuple[int, bytes, bytes] | None:
    """The ext4 form of an xattr as Linux names it; None when ext4 has no place for it."""
    acl = _ACL_NAMES.get(full)
    if acl is not None:
        return acl, b"", xattr_acl_to_ext4(value)
    for prefix, index in _XATTR_PREFIXES:
        if full.startswith(prefix):
            return index, full[len(prefix) :], value
    return None


@dataclass(slots=True)
class Copy:
    """A copy, read: its entries, the filesystem record (None: absent), and how
    messages name it."""

    entries: list[CopiedEntry]
    filesystem: bytes | None
    shown: str


@dataclass(slots=True)
class Ingested:
    """The checked copy: the root, each directory's children, each node's reader."""

    root: SrcNode
    children: dict[int, list[SrcNode]]
    readers: dict[int, tuple[ReadAt, int]]  # ino -> (read_at, copy size)
    renumbered: int = 0


def _number(entry: CopiedEntry, record: str, c: _Checker) -> int | None:
    raw = entry.records.get(record)
    if raw is None:
        return None
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit():
        c.fail(entry, f"{record} record {text!r} is not a number")
        return None
    return int(text)


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


class _Checker:
    def __init__(self, entries: list[CopiedEntry], block_size: int) -> None:
        self.bs = block_size
        self.problems: list[str] = []
        self.failed: set[bytes] = set()
        self.by_path = {e.path: e for e in entries}
        self.entries = entries
        self.ties = False

    def fail(self, entry: CopiedEntry, why: str) -> None:
        # One line an object: the first thing wrong with it (what follows from it,
        # such as a size that only an encrypted file may round up, is no news).
        if entry.path not in self.failed:
            self.failed.add(entry.path)
            self.problems.append(f"{_show(entry.path)}: {why}")

    def flags(self, e: CopiedEntry) -> int:
        flags = _number(e, R.FLAGS, self)
        context = e.records.get(R.CONTEXT)
        if flags is None and e.kind in ("file", "dir"):
            # Every file and directory of a view or dump carries it: without it the
            # copy lost its xattrs, and an encrypted tree would pass for a plain one.
            self.fail(e, f"no flags record ({R.xattr_name(R.FLAGS)}): the copy dropped the "
                         "records (copy with xattrs: cp -a, rsync -aAX, tar --xattrs)")  # fmt: skip
            return EXT4_ENCRYPT_FL if context is not None else 0
        if flags is None:
            return EXT4_ENCRYPT_FL if context is not None else 0
        if bool(flags & EXT4_ENCRYPT_FL) != (context is not None) and e.kind in _ENCRYPTABLE:
            self.fail(e, "the flags record and the context record disagree about encryption")
        return flags

    def check_context(self, e: CopiedEntry, parent_encrypted: bool) -> bytes | None:
        context = e.records.get(R.CONTEXT)
        if context is None:
            if parent_encrypted and e.kind == "symlink":
                self.fail(e, f"an encrypted symlink without its context record: Linux keeps "
                             f"no {R.XATTR_PREFIX}* xattrs on symlinks, and the copy did not "
                             f"keep trusted.cipherdump.{R.CONTEXT} (as root, cp -a, rsync -aAX "
                             "and tar --xattrs do)")  # fmt: skip
            elif parent_encrypted and e.kind in _ENCRYPTABLE:
                self.fail(
                    e,
                    f"no context record ({R.xattr_name(R.CONTEXT)}) under an encrypted "
                    "directory: the copy dropped it (or was not made from the ciphertext view)",
                )
            return None
        try:
            if decode_context(context).policy.ties_to_filesystem:
                self.ties = True
        except CipherdumpError as err:
            self.fail(e, f"the context record cannot be read: {err}")
        return context

    def raw_name(self, e: CopiedEntry, parent_flags: int) -> tuple[bytes, tuple[int, int] | None]:
        """The entry's name as its directory stores it, and its stored hash."""
        name = e.name
        if not parent_flags & EXT4_ENCRYPT_FL:
            return name, None
        nokey = decode_nokey_name(name)
        if nokey is None:
            self.fail(e, "not a no-key name, in an encrypted directory (renamed in the copy?)")
            return name, None
        stored: tuple[int, int] | None = None
        if parent_flags & EXT4_CASEFOLD_FL:
            # Casefolded + encrypted: the no-key name embeds the hash the entry stores.
            stored = nokey.dirhash
            rec = e.records.get(R.HASH)
            if rec is not None and (len(rec) != 8 or struct.unpack("<II", rec) != stored):
                self.fail(e, "the hash record disagrees with the hash in its no-key name")
        rec_name = e.records.get(R.NAME)
        if rec_name is not None and nokey.matches(rec_name):
            return rec_name, stored
        if nokey.ciphertext is not None:
            return nokey.ciphertext, stored
        if rec_name is None:
            self.fail(e, f"a long no-key name, and no name record ({R.xattr_name(R.NAME)})")
        else:
            self.fail(e, "its name record does not match its long no-key name "
                         "(a hard link's shared xattr names another link)")  # fmt: skip
        return name, stored


def _padded(size: int, unit: int) -> int:
    return -(-size // unit) * unit


def ingest(entries: list[CopiedEntry], block_size: int, source: str) -> Ingested:
    """Check the copy and make the writer's nodes (:class:`CopyRefused` when a record
    is missing or inconsistent)."""
    c = _Checker(entries, block_size)
    root_entry = c.by_path.get(b"")
    if root_entry is None or root_entry.kind != "dir":
        raise CopyRefused(source, [f"{source}: no root directory in the copy"])
    # Names of one inode: by the copy's hard links, and by equal ino records (a copy
    # made without -H has separate files for the links of one inode).
    group_of: dict[int, list[CopiedEntry]] = {}
    ino_of: dict[int, int] = {}  # id(entry) -> source inode number (or synthetic)
    first_by_identity: dict[object, CopiedEntry] = {}
    given: dict[int, CopiedEntry] = {}
    pending: list[CopiedEntry] = []
    for e in entries:
        first = first_by_identity.get(e.identity) if e.identity is not None else None
        number = _number(e, R.INO, c)
        if first is not None:
            known = ino_of.get(id(first))
            if number is not None and known is not None and number != known:
                c.fail(e, f"a hard link of {_show(first.path)} with another ino record")
            ino_of[id(e)] = known if known is not None else -1
            if known is None:
                pending.append(e)
            continue
        if e.identity is not None:
            first_by_identity[e.identity] = e
        if number is None:
            pending.append(e)
            ino_of[id(e)] = -1
            continue
        other = given.get(number)
        if other is not None and (e.kind == "dir" or other.kind == "dir" or e.kind != other.kind):
            c.fail(e, f"ino record {number} is also that of {_show(other.path)}")
        given.setdefault(number, e)
        ino_of[id(e)] = number
    # Names without a number get the lowest numbers no record uses.
    free = _FIRST_FREE_INO
    synthetic: dict[object, int] = {}
    for e in pending:
        key = e.identity if e.identity is not None else id(e)
        if key not in synthetic:
            while free in given:
                free += 1
            synthetic[key] = free
            free += 1
        ino_of[id(e)] = synthetic[key]
    ino_of[id(root_entry)] = 2
    for e in entries:
        group_of.setdefault(ino_of[id(e)], []).append(e)

    nodes: dict[int, SrcNode] = {}
    readers: dict[int, tuple[ReadAt, int]] = {}
    children: dict[int, list[SrcNode]] = {}
    flags_of: dict[bytes, int] = {}
    needs_ino: list[CopiedEntry] = []
    # Parents before children: sorted by depth, then in the copy's order.
    order = sorted(entries, key=lambda e: e.path.count(b"/") + (1 if e.path else 0))
    for e in order:
        ino = ino_of[id(e)]
        parent_path = e.path.rpartition(b"/")[0] if b"/" in e.path else b""
        if e.path and parent_path not in c.by_path:
            c.fail(e, "its directory is not in the copy")
            continue
        parent_flags = flags_of.get(parent_path, 0) if e.path else 0
        context = c.check_context(e, bool(parent_flags & EXT4_ENCRYPT_FL))
        flags = c.flags(e)
        if e.kind == "dir":
            flags_of[e.path] = flags
        name, stored_hash = c.raw_name(e, parent_flags) if e.path else (b"", None)
        node = nodes.get(ino)
        if node is None:
            if context is not None and e.records.get(R.INO) is None:
                needs_ino.append(e)
            node = _make_node(c, e, ino, name, stored_hash, flags, context,
                              len(group_of[ino]), readers)  # fmt: skip
            if node is None:
                continue
            nodes[ino] = node
        else:
            node = SrcNode(name, ino, node.spec, node.handle, stored_hash, node.runs,
                           node.symlink, node.inline)  # fmt: skip
        if e.path:
            children.setdefault(ino_of[id(c.by_path[parent_path])], []).append(node)
        if e.kind == "dir":
            children.setdefault(ino, [])
    if c.ties:
        for e in needs_ino:
            c.fail(e, f"no ino record ({R.xattr_name(R.INO)}): its encryption policy "
                      "(IV_INO_LBLK_64/32) derives keys from the original inode number, "
                      "which must be kept")  # fmt: skip
    if c.problems:
        raise CopyRefused(source, c.problems)
    renumbered = len(synthetic)
    return Ingested(nodes[2], children, readers, renumbered)


def _make_node(
    c: _Checker, e: CopiedEntry, ino: int, name: bytes, stored_hash: tuple[int, int] | None,
    flags: int, context: bytes | None, links: int, readers: dict[int, tuple[ReadAt, int]],
) -> SrcNode | None:  # fmt: skip
    size = e.size
    symlink: bytes | None = None
    runs: list[NewRun] = []
    if e.kind == "file":
        recorded = _number(e, R.SIZE, c)
        if context is not None:
            if recorded is None:
                c.fail(e, f"no size record ({R.xattr_name(R.SIZE)}): an encrypted file's "
                          "copy holds whole data units, not its exact size")  # fmt: skip
                return None
            try:
                unit = decode_context(context).policy.data_unit_size(c.bs)
            except CipherdumpError:
                return None  # reported with the context
            if _padded(recorded, unit) != e.size:
                c.fail(e, f"size record {recorded} takes {_padded(recorded, unit)} bytes of "
                          f"{unit}-byte data units, but the copy holds {e.size}")  # fmt: skip
                return None
            size = recorded
        elif recorded is not None and recorded != e.size:
            c.fail(e, f"size record {recorded} but the copy holds {e.size} bytes")
            return None
        if e.read_at is None:
            c.fail(e, "the copy has no data for it")
            return None
        runs = _runs(e, c.bs, encrypted=context is not None)
        readers[ino] = (e.read_at, e.size)
    elif e.kind == "symlink":
        if context is not None:
            symlink = e.records.get(R.SYMLINK)
            if symlink is None:
                c.fail(e, f"an encrypted symlink without its symlink record "
                          f"({R.xattr_name(R.SYMLINK)})")  # fmt: skip
                return None
        else:
            symlink = e.target
        size = len(symlink)
    elif e.kind in ("dir", "fifo", "chardev", "blockdev", "socket"):
        size = 0
    else:
        c.fail(e, f"a {e.kind} cannot be restored")
        return None
    spec = NewInode(
        mode=e.mode, uid=e.uid, gid=e.gid, size=size, links=links, flags=flags,
        atime_ns=e.atime_ns, mtime_ns=e.mtime_ns, ctime_ns=e.ctime_ns, crtime_ns=e.crtime_ns,
        context=context, xattrs=tuple(e.xattrs), rdev=e.rdev,
    )  # fmt: skip
    return SrcNode(name, ino, spec, e, stored_hash, runs, symlink)


def _runs(e: CopiedEntry, bs: int, *, encrypted: bool) -> list[NewRun]:
    """The blocks to write: those the copy holds data in (all-zero blocks of an
    encrypted file are holes, see the module docstring)."""
    assert e.read_at is not None
    ranges = e.ranges if e.ranges is not None else ([(0, e.size)] if e.size else [])
    spans: list[tuple[int, int]] = []  # [first block, end block)
    for off, n in sorted(ranges):
        if n <= 0:
            continue
        first, end = off // bs, -(-min(off + n, e.size) // bs)
        if spans and first <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        elif first < end:
            spans.append((first, end))
    runs: list[NewRun] = []

    def add(b: int) -> None:
        if runs and runs[-1].lblk + runs[-1].length == b:
            runs[-1] = NewRun(runs[-1].lblk, runs[-1].length + 1)
        else:
            runs.append(NewRun(b, 1))

    zero = bytes(bs)
    step = 256
    for first, end in spans:
        if not encrypted:
            runs.append(NewRun(first, end - first))
            continue
        for k in range(first, end, step):
            n = min(step, end - k)
            data = e.read_at(k * bs, n * bs)
            for j in range(n):
                if data[j * bs : (j + 1) * bs] != zero:
                    add(k + j)
    return runs


def kind_of(mode: int) -> str:
    """The node kind of an ``st_mode``."""
    return {
        stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
        stat.S_IFIFO: "fifo", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev",
        stat.S_IFSOCK: "socket",
    }.get(stat.S_IFMT(mode), "unknown")  # fmt: skip
