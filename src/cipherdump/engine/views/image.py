"""The names a user sees: plaintext where unencrypted, the kernel's no-key names where not.

Linux shows an entry of an encrypted directory, without the key, as a base64url string
of the directory hash and the ciphertext name.  The hash depends on the directory's
layout and this filesystem's hash seed (see fscrypt-on-disk.md, 7.2), so it is
computed here, where the ext4 facts and the fscrypt encoding meet.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cipherdump.engine.views.paths import child_path, resolve_path, show_path
from cipherdump.errors import CipherdumpError, CorruptError, NotFoundError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.directory import Entry
from cipherdump.fscrypt.nokey import decode_nokey_name, encode_nokey_name, encode_nokey_symlink
from cipherdump.fscrypt.symlink import decode_encrypted_symlink
from cipherdump.ondisk.dirent import dirent_name_problem
from cipherdump.ondisk.dirhash import ext4_dirhash, ext4_dirhashes, is_signed_filesystem

# Deeper than any real tree; stops walks through directory hard-link cycles early
# even when cycle detection by inode number is fooled by corruption.
MAX_DEPTH = 4096
# Entries of a directory named together (their no-key names hashed in one go).
_NAMES_BATCH = 4096


@dataclass(frozen=True, slots=True)
class ImageNode:
    """One object as a user sees it.

    ``path`` is the display path from the listed root (bytes; no-key names where
    encrypted), ``raw_name`` the name bytes stored in the parent directory, and
    ``name_encrypted`` whether the parent encrypts its names.
    """

    path: bytes
    name: bytes
    raw_name: bytes
    inode: Inode
    name_encrypted: bool
    stored_hash: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """An object that could not be read; listing goes on past it."""

    path: bytes
    error: CipherdumpError


def bad_entry(reason: str, dir_ino: int) -> CorruptError:
    """The error for an entry whose name no directory may hold (see dirent_name_problem)."""
    return CorruptError(reason, structure="directory entry", location=f"directory inode {dir_ino}")


class Namespace:
    """Display names and path resolution over one filesystem, without any key."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        sb = fs.sb
        self._seed = sb.s_hash_seed
        self._signed = is_signed_filesystem(sb.s_flags)
        # The hash version each directory's no-key names use (None: no hash), per
        # directory inode: worked out once, not per entry.
        self._name_hash_versions: dict[int, int | None] = {}

    # -- names -----------------------------------------------------------------------
    def _name_hash_version(self, directory: Inode) -> int | None:
        """The hash version behind the no-key names of ``directory``, None for none."""
        fs = self.fs
        if not fs.dir_index:
            return None
        single_block = directory.size == fs.block_size
        if not (directory.is_indexed_dir or single_block or directory.has_inline_data):
            return None
        version = fs.sb.s_def_hash_version
        if directory.is_indexed_dir:
            version = directory.directory.hash_version(version)
        return version

    def dirhash_for(self, directory: Inode, entry: Entry) -> tuple[int, int] | None:
        """The dirhash the kernel puts into a no-key name of ``entry``."""
        if entry.hash is not None:
            return entry.hash  # casefold+encrypt: the stored hash
        version = self._hash_version_of(directory)
        if version is None:
            return None
        return ext4_dirhash(entry.name, version, self._seed, self._signed)

    def _hash_version_of(self, directory: Inode) -> int | None:
        """:meth:`_name_hash_version`, worked out once per directory."""
        versions = self._name_hash_versions
        ino = directory.ino
        if ino in versions:
            return versions[ino]
        version = versions[ino] = self._name_hash_version(directory)
        return version

    def display_name(self, directory: Inode, entry: Entry) -> bytes:
        if not directory.is_encrypted:
            return entry.name
        return encode_nokey_name(entry.name, self.dirhash_for(directory, entry))

    def display_names(self, directory: Inode, entries: Sequence[Entry]) -> list[bytes]:
        """:meth:`display_name` of each of ``entries``, their hashes computed together
        (see :func:`~cipherdump.ondisk.dirhash.ext4_dirhashes`): listing a directory
        costs a sixth of what hashing name after name does."""
        if not directory.is_encrypted:
            return [e.name for e in entries]
        version = self._hash_version_of(directory)
        if version is None:
            return [encode_nokey_name(e.name, e.hash) for e in entries]
        unstored = [e.name for e in entries if e.hash is None]
        hashes = iter(ext4_dirhashes(unstored, version, self._seed, self._signed))
        return [
            encode_nokey_name(e.name, e.hash if e.hash is not None else next(hashes))
            for e in entries
        ]

    def symlink_target(self, inode: Inode) -> bytes:
        """The target as ``readlink`` shows it without the key."""
        if not inode.is_encrypted:
            return inode.symlink_data()
        ct = decode_encrypted_symlink(
            inode.symlink_storage(), inode.size, self.fs.block_size, location=f"inode {inode.ino}"
        )
        return encode_nokey_symlink(ct)

    # -- listing ---------------------------------------------------------------------
    def root_node(self) -> ImageNode:
        root = self.fs.root
        return ImageNode(b"/", b"/", b"/", root, False)

    def children(self, node: ImageNode) -> list[ImageNode]:
        """Every entry of the directory ``node``; raises on the first unreadable one."""
        out: list[ImageNode] = []
        for item in self.iter_children(node):
            if isinstance(item, Problem):
                raise item.error
            out.append(item)
        return out

    def iter_children(self, node: ImageNode) -> Iterator[ImageNode | Problem]:
        """Every entry of the directory ``node``, an entry whose inode cannot be read
        as a :class:`Problem` of its own.

        An unreadable directory raises: nothing of it can be listed.  One bad inode
        (checksum mismatch, number out of range) or one impossible name must not hide
        its siblings.
        """
        directory = node.inode
        # A batch at a time: a large directory is read as it is listed, not kept.
        entries = directory.iter_entries()
        while batch := list(itertools.islice(entries, _NAMES_BATCH)):
            yield from self._children(node, batch)

    def _children(self, node: ImageNode, entries: list[Entry]) -> Iterator[ImageNode | Problem]:
        """:meth:`iter_children` of some of ``node``'s entries."""
        directory = node.inode
        base = node.path
        try:
            names: list[bytes] | None = self.display_names(directory, entries)
        except CipherdumpError:
            names = None  # name by name below, so that the listing stops where it did
        for i, e in enumerate(entries):
            bad = dirent_name_problem(e.name, encrypted=directory.is_encrypted)
            if bad is not None:
                # No path can hold such a name (e2fsck: "illegal characters", "entry '..'
                # is a link to ..."); listing it would show an entry that does not exist.
                # Checked first: a ciphertext too short for a no-key name is named by its
                # bytes, and its siblings are still listed.
                yield Problem(child_path(base, e.name), bad_entry(bad, directory.ino))
                continue
            name = names[i] if names is not None else self.display_name(directory, e)
            path = child_path(base, name)
            try:
                child = self.fs.inode(e.ino)
            except CipherdumpError as err:
                yield Problem(path, err)
                continue
            yield ImageNode(path, name, e.name, child, directory.is_encrypted, e.hash)

    def walk(self, top: ImageNode, *, recursive: bool) -> Iterator[ImageNode | Problem]:
        """Children of ``top`` (all descendants when ``recursive``), depth first.

        Per-object failures are yielded as :class:`Problem` and the walk goes on.
        """
        seen: set[int] = {top.inode.ino}
        # An explicit stack, not recursion: a legitimately deep tree must not hit
        # Python's recursion limit.
        stack: list[Iterator[ImageNode | Problem]] = [self._listing(top)]
        while stack:
            kid = next(stack[-1], None)
            if kid is None:
                stack.pop()
                continue
            yield kid
            if isinstance(kid, Problem) or not recursive or not kid.inode.is_dir:
                continue
            if kid.inode.ino in seen or len(stack) > MAX_DEPTH:
                why = (
                    f"directory inode {kid.inode.ino} is reachable twice (cycle)"
                    if kid.inode.ino in seen
                    else f"directory tree is deeper than {MAX_DEPTH} levels"
                )
                yield Problem(kid.path, CorruptError(why, structure="directory tree"))
                continue
            seen.add(kid.inode.ino)
            stack.append(self._listing(kid))

    def _listing(self, node: ImageNode) -> Iterator[ImageNode | Problem]:
        """The children of ``node``, or one Problem for ``node`` if it is unreadable."""
        try:
            kids = list(self.iter_children(node))
        except CipherdumpError as err:
            kids = [Problem(node.path, err)]
        return iter(kids)

    # -- lookup ----------------------------------------------------------------------
    def resolve(self, path: bytes) -> ImageNode:
        """Resolve a path typed by a user: plaintext names, or no-key names in
        encrypted directories (as ``ls`` shows them on the live system)."""
        return resolve_path(
            self.root_node(),
            path,
            lookup=self._lookup,
            is_dir=lambda n: n.inode.is_dir,
            shown_path=lambda n: n.path,
        )

    def _lookup(self, parent: ImageNode, name: bytes) -> ImageNode:
        directory = parent.inode
        match = self._htree_lookup(directory, name)
        if match is None:
            match = self._scan_lookup(directory, name)
        if match is None:
            raise NotFoundError(f"{show_path(posixpath.join(parent.path, name))}: no such file")
        shown = self.display_name(directory, match)
        return ImageNode(
            posixpath.join(parent.path, shown),
            shown,
            match.name,
            self.fs.inode(match.ino),
            directory.is_encrypted,
            match.hash,
        )

    def _htree_lookup(self, directory: Inode, name: bytes) -> Entry | None:
        """``name`` found through the directory's htree (one leaf read, not all of it).

        None when the directory has no usable index, its entries are already read, or
        the index does not lead to the name; :meth:`_scan_lookup` then decides.
        """
        if not directory.is_indexed_dir or directory.entries_loaded:
            return None
        seed, signed = self._seed, self._signed

        def hash_of(text: bytes) -> Callable[[int], int]:
            return lambda version: ext4_dirhash(text, version, seed, signed)[0]

        found = directory.directory.htree_find(hash_of(name), lambda e: e.name == name)
        if found is not None or not directory.is_encrypted:
            return found
        wanted = decode_nokey_name(name)
        if wanted is None:
            return None
        ciphertext = wanted.ciphertext
        if ciphertext is not None:
            return directory.directory.htree_find(
                hash_of(ciphertext), lambda e: e.name == ciphertext
            )
        # A long no-key name: its embedded hash is the htree hash and picks the leaf.
        return directory.directory.htree_find(
            lambda _version: wanted.hash, lambda e: wanted.matches(e.name, e.hash)
        )

    def _scan_lookup(self, directory: Inode, name: bytes) -> Entry | None:
        """``name`` among all the directory's entries: plaintext, then no-key forms."""
        match = directory.entry_named(name)
        if match is None and directory.is_encrypted:
            wanted = decode_nokey_name(name)
            if wanted is not None:
                if wanted.ciphertext is not None:
                    # Short form: the whole ciphertext is in the name.
                    match = directory.entry_named(wanted.ciphertext)
                else:
                    match = next(
                        (e for e in directory.entries() if wanted.matches(e.name, e.hash)), None
                    )
        return match
