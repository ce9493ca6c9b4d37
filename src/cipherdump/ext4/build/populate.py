"""Writing a whole tree into an image: inode numbers, hard links, directories, root.

The tree comes from a :class:`TreeSource` (an ext4 image for ``clone``, a snapshot for
``restore``).  Inode numbers are kept where free (or required: then a taken number is an
error), hard links are written once and counted, and every directory is laid out after
its children so that it knows their numbers.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from cipherdump.errors import CipherdumpError, CorruptError, InputError, UnsupportedError
from cipherdump.ext4.build.directory import HashParams, NewEntry, layout_directory
from cipherdump.ext4.build.image import ImageWriter
from cipherdump.ext4.build.node import (
    BlockReader,
    NewInode,
    NewRun,
    set_links,
    write_directory,
    write_regular,
    write_special,
    write_symlink,
)
from cipherdump.ondisk import features as F
from cipherdump.ondisk.dirent import (
    EXT4_FT_BLKDEV,
    EXT4_FT_CHRDEV,
    EXT4_FT_DIR,
    EXT4_FT_FIFO,
    EXT4_FT_REG_FILE,
    EXT4_FT_SOCK,
    EXT4_FT_SYMLINK,
    EXT4_FT_UNKNOWN,
    dirent_name_problem,
)
from cipherdump.ondisk.inode import EXT4_CASEFOLD_FL, EXT4_ENCRYPT_FL

ROOT_INO = 2
LOST_FOUND = b"lost+found"
EXT4_LINK_MAX = 65000
_MAX_DEPTH = 4096

_FT = {
    stat.S_IFREG: EXT4_FT_REG_FILE,
    stat.S_IFDIR: EXT4_FT_DIR,
    stat.S_IFLNK: EXT4_FT_SYMLINK,
    stat.S_IFCHR: EXT4_FT_CHRDEV,
    stat.S_IFBLK: EXT4_FT_BLKDEV,
    stat.S_IFIFO: EXT4_FT_FIFO,
    stat.S_IFSOCK: EXT4_FT_SOCK,
}


@dataclass(slots=True)
class SrcNode:
    """One object of the source tree, as the writer needs it.

    ``handle`` is the source's own reference (for :meth:`TreeSource.children` and
    :meth:`TreeSource.reader`).  ``runs`` are the mapped runs of a regular file,
    ``symlink`` a symlink's stored bytes, ``inline`` the ``i_block`` of an inline file.
    """

    name: bytes
    ino: int
    spec: NewInode
    handle: object
    hash: tuple[int, int] | None = None
    runs: list[NewRun] = field(default_factory=list)
    symlink: bytes | None = None
    inline: bytes | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.spec.mode)


def name_refusal(parent: SrcNode, kid: SrcNode) -> str | None:
    """Why ``kid``'s name cannot be written into ``parent`` (a name the kernel would
    answer a listing of ``parent`` with an error for), or None."""
    return dirent_name_problem(kid.name, encrypted=bool(parent.spec.flags & EXT4_ENCRYPT_FL))


def _child(path: bytes, name: bytes) -> bytes:
    """The path of an entry, for messages: a name starting with '/' stays below."""
    return path + name if path.endswith(b"/") else path + b"/" + name


class TreeSource(Protocol):
    # An iterable, not a list: a source may hand out a huge directory's entries a few
    # at a time, and both walks below hold only the one they are at.
    def children(self, node: SrcNode) -> Iterable[SrcNode]: ...

    def reader(self, node: SrcNode) -> BlockReader: ...


#: An entry left out of the image: (its path, as raw name bytes; why).
EntryProblem = tuple[bytes, CipherdumpError]


@dataclass(slots=True)
class PopulateStats:
    inodes: int = 0
    dirs: int = 0
    files: int = 0
    hardlinks: int = 0
    symlinks: int = 0
    specials: int = 0
    blocks: int = 0
    bytes: int = 0
    inodes_moved: int = 0
    ino_map: dict[int, int] = field(default_factory=dict)
    problems: list[EntryProblem] = field(default_factory=list)


Progress = Callable[[PopulateStats, bytes], None]


@dataclass(slots=True)
class Plan:
    """One walk over the source: its inode numbers, contexts and data size."""

    inos: set[int] = field(default_factory=set)
    # One encryption context per policy (the last 16 bytes of a context are its nonce,
    # the rest its policy): every file has its own, and a plan must not hold millions.
    contexts: dict[bytes, bytes] = field(default_factory=dict)
    data_blocks: int = 0
    name_bytes: int = 0
    dirs: int = 0

    xattr_blocks: int = 0

    def blocks(self, block_size: int) -> int:
        return (
            self.data_blocks + 2 * self.dirs + 2 * self.name_bytes // block_size
            + self.xattr_blocks
        )  # fmt: skip


def plan_tree(source: TreeSource, root: SrcNode, *, inode_size: int = 256) -> Plan:
    """Walk the source once.  The root's ``lost+found`` is left out: the target keeps
    its own.  Only directories wait on the stack: a directory's other entries are
    counted as they are listed, so that a huge one is never held whole."""
    plan = Plan()

    def count(node: SrcNode) -> None:
        plan.inos.add(node.ino)
        context = node.spec.context
        if context is not None:
            plan.contexts.setdefault(context[:-16] if len(context) > 16 else context, context)
        if node.spec.xattrs or (context is not None and inode_size <= 128):
            plan.xattr_blocks += 1
        if not node.is_dir:
            plan.data_blocks += sum(r.length for r in node.runs)
            if node.symlink is not None and len(node.symlink) >= 60:
                plan.data_blocks += 1

    stack = [root]
    while stack:
        node = stack.pop()
        if node.ino in plan.inos:
            continue
        count(node)
        plan.dirs += 1
        for kid in source.children(node):
            if name_refusal(node, kid) is not None or (node is root and kid.name == LOST_FOUND):
                continue
            plan.name_bytes += len(kid.name) + 16
            if kid.is_dir:
                stack.append(kid)
            elif kid.ino not in plan.inos:
                count(kid)
    return plan


class Populator:
    """Writes a source tree under the root of an open :class:`ImageWriter`."""

    def __init__(
        self, w: ImageWriter, source: TreeSource, *, require_inos: bool = False,
        on_progress: Progress | None = None,
    ) -> None:  # fmt: skip
        self.w = w
        self.source = source
        self.require_inos = require_inos
        self.on_progress = on_progress
        self.stats = PopulateStats()
        # Of the files written so far: the targets of directories (a second name for
        # one is refused), and (names written, generation) of those written under more
        # than one name, or whose source says they have another link count than one.
        # Singly linked files, nearly all of a huge directory, are in neither.
        self._dir_targets: set[int] = set()
        self._links: dict[int, tuple[int, int]] = {}
        self._spec_links: dict[int, tuple[int, int]] = {}
        sb = w.sb
        self._dir_index = sb.has_compat(F.COMPAT_DIR_INDEX)
        self._max_levels = 2 if sb.has_incompat(F.INCOMPAT_LARGE_DIR) else 1
        self._filetype = sb.has_incompat(F.INCOMPAT_FILETYPE)

    # -- planning --------------------------------------------------------------------
    def reserve(self, plan: Plan) -> None:
        """Keep the source's inode numbers for their own nodes."""
        self.w.reserved_inodes = plan.inos  # read only there

    def check_room(self, plan: Plan) -> None:
        w = self.w
        inodes, blocks = len(plan.inos), plan.blocks(w.block_size)
        # Extent tree blocks and xattr blocks come on top: keep a margin of 1/64.
        need = blocks + blocks // 64 + 16
        if inodes > w.free_inodes or need > w.free_blocks:
            raise InputError(
                f"{w.sink.name}: not enough room: needs about {inodes} inodes and {need} "
                f"blocks, has {w.free_inodes} free inodes and {w.free_blocks} free blocks"
            )
        if self.require_inos:
            bad = sorted(i for i in w.reserved_inodes if i != ROOT_INO and not w.inode_is_free(i))
            if bad:
                raise InputError(
                    f"{w.sink.name}: inode numbers {', '.join(map(str, bad[:5]))} are taken or "
                    "out of range, and the encryption policy (IV_INO_LBLK_64/32) ties contents "
                    "and names to them; restore into a new image instead"
                )

    # -- writing ---------------------------------------------------------------------
    def run(self, root: SrcNode) -> PopulateStats:
        """Write ``root``'s metadata onto the target root and its tree below it."""
        w = self.w
        old_root = w.fs.root
        kept = [NewEntry(e.name, e.ino, e.file_type) for e in old_root.entries()]
        old_blocks = [(r.pblk, r.length) for r in old_root.runs if r.pblk is not None]
        taken = {e.name for e in kept}
        for kid in self.source.children(root):
            if kid.name in taken and kid.name != LOST_FOUND:
                shown = kid.name.decode("utf-8", "backslashreplace")
                raise InputError(
                    f"{w.sink.name}: {shown!r} already exists in the target's root directory"
                )
        self.stats.ino_map[root.ino] = ROOT_INO
        self._dir_targets.add(ROOT_INO)
        # The root's new record is the one write that links the new tree in: it waits
        # for the commit, and so does freeing the blocks the old record still uses.
        w.hold_inode(ROOT_INO)
        self._write_dir(root, ROOT_INO, ROOT_INO, kept, 0, b"/")
        for pblk, length in old_blocks:
            w.free_after_commit(pblk, length)
        # Extent blocks of the old root (none for a fresh root) are left allocated.
        for ino, (actual, generation) in self._links.items():
            if actual != self._spec_links.get(ino, (1, 0))[0]:
                set_links(w, ino, actual, generation)
        for ino, (_spec, generation) in self._spec_links.items():
            if ino not in self._links:
                set_links(w, ino, 1, generation)
        return self.stats

    def undo(self) -> None:
        """After a failure: clear the inode records written so far (bitmaps and counts
        are only written by the commit, so the image is as before apart from free
        blocks holding data nothing points to)."""
        for ino in self.stats.ino_map.values():
            if ino != ROOT_INO:
                self.w.write_raw_inode(ino, bytes(self.w.inode_size))

    def _hash_params(self, spec: NewInode) -> HashParams | None:
        if not self._dir_index:
            return None
        if spec.flags & EXT4_CASEFOLD_FL and not spec.flags & EXT4_ENCRYPT_FL:
            return None  # needs Unicode folding: written linear
        w = self.w
        return HashParams(w.def_hash_version, w.hash_seed, w.hash_signed)

    def _write_dir(
        self, node: SrcNode, ino: int, parent: int, kept: list[NewEntry], depth: int,
        path: bytes,
    ) -> None:  # fmt: skip
        if depth > _MAX_DEPTH:
            raise UnsupportedError(f"directory tree deeper than {_MAX_DEPTH} levels")
        w = self.w
        entries = list(kept)
        taken = {e.name for e in kept}
        subdirs = sum(1 for e in kept if e.file_type == EXT4_FT_DIR)
        written: set[bytes] = set()
        spec = node.spec
        hashed = bool(spec.flags & EXT4_ENCRYPT_FL and spec.flags & EXT4_CASEFOLD_FL)
        for kid in self.source.children(node):
            why = name_refusal(node, kid)
            if why is None and kid.name in written:
                why = "a second entry with the same name"  # as backup says
            if why is not None:
                self._problem(_child(path, kid.name), why, node.ino)
                continue
            written.add(kid.name)
            if kid.name in taken:
                if kid.name == LOST_FOUND and ino == ROOT_INO:
                    continue  # the target's own lost+found stays
                shown = kid.name.decode("utf-8", "backslashreplace")
                raise InputError(
                    f"{w.sink.name}: {shown!r} already exists in the target's root directory"
                )
            tgt = self.stats.ino_map.get(kid.ino)
            if tgt is not None and (kid.is_dir or tgt in self._dir_targets):
                # A directory has one name: met again (a loop, or a directory hard
                # link), writing it again would recurse until the inodes run out.
                self._problem(
                    _child(path, kid.name),
                    f"directory inode {kid.ino} is reachable twice (cycle)",
                    node.ino,
                )
                continue
            if tgt is not None:
                count = self._links.get(tgt, (1, kid.spec.generation))[0]
                self._links[tgt] = (count + 1, kid.spec.generation)
                self.stats.hardlinks += 1
            else:
                tgt = w.alloc_inode(kid.ino, is_dir=kid.is_dir, exact=self.require_inos)
                if tgt != kid.ino:
                    if self.require_inos:
                        raise InputError(f"inode {kid.ino} is not free in the target")
                    self.stats.inodes_moved += 1
                self.stats.ino_map[kid.ino] = tgt
                self.stats.inodes += 1
                if kid.is_dir:
                    self._dir_targets.add(tgt)
                    self._write_dir(kid, tgt, ino, [], depth + 1, _child(path, kid.name))
                    subdirs += 1
                else:
                    self._write_other(kid, tgt)
                    if kid.spec.links != 1:
                        self._spec_links[tgt] = (kid.spec.links, kid.spec.generation)
            ft = _FT.get(stat.S_IFMT(kid.spec.mode), EXT4_FT_UNKNOWN) if self._filetype else 0
            # Only casefolded encrypted directories write the stored hash.
            entries.append(NewEntry(kid.name, tgt, ft, kid.hash if hashed else None))
        layout = layout_directory(
            ino, parent, entries, block_size=w.block_size,
            csum_seed=w.inode_seed(ino, spec.generation) if w.metadata_csum else None,
            hashed=hashed, hash_params=self._hash_params(spec), max_levels=self._max_levels,
            filetype=self._filetype,
        )  # fmt: skip
        links = 2 + subdirs
        if links >= EXT4_LINK_MAX and w.sb.has_ro_compat(F.RO_COMPAT_DIR_NLINK):
            links = 1
        write_directory(w, ino, replace(spec, links=links), layout)
        self.stats.dirs += 1
        self.stats.blocks += len(layout.blocks)
        if self.on_progress is not None:
            self.on_progress(self.stats, node.name)

    def _problem(self, path: bytes, why: str, dir_ino: int) -> None:
        """An entry left out; ``dir_ino`` is the source's number of its directory."""
        err = CorruptError(why, structure="directory entry", location=f"directory inode {dir_ino}")
        self.stats.problems.append((path, err))

    def _write_other(self, kid: SrcNode, ino: int) -> None:
        w = self.w
        fmt = stat.S_IFMT(kid.spec.mode)
        if fmt == stat.S_IFREG:
            reader = self.source.reader(kid)
            used = write_regular(w, ino, kid.spec, kid.runs, reader, inline=kid.inline)
            self.stats.files += 1
            self.stats.blocks += used
            self.stats.bytes += kid.spec.size
        elif fmt == stat.S_IFLNK:
            if kid.symlink is None:
                raise InputError(f"symlink inode {kid.ino} has no stored target")
            write_symlink(w, ino, kid.spec, kid.symlink)
            self.stats.symlinks += 1
        else:
            write_special(w, ino, kid.spec)
            self.stats.specials += 1
