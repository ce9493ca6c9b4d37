"""The keyed snapshot view: a snapshot's tree with plaintext names, symlink targets and
contents where a key given matches, decrypted in user space.

Names are decrypted with the parent directory's context and inode number, contents with
the file's, exactly as the kernel would on the original filesystem (the snapshot keeps
the inode numbers, contexts, block size and filesystem UUID that needs).  Every
decrypted name and symlink target is encrypted again and must give back the stored
ciphertext, so a wrong key is reported instead of producing garbage names.  Objects no
key given can decrypt keep their no-key names; reading their contents is a
:class:`KeyProblem`, never ciphertext passed off as plaintext.

It is the source ``restore --target`` writes from (:mod:`cipherdump.engine.restore_plain`)
and ``cat --key`` of a snapshot reads.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from cipherdump.engine.nodeattrs import bytes_attr, int_attr, list_attr
from cipherdump.engine.plainwrite import ObjectMeta
from cipherdump.engine.views.decrypt import InodeCiphers
from cipherdump.engine.views.image import Problem
from cipherdump.engine.views.image_keyed import Segment, invalid_name_reason
from cipherdump.engine.views.paths import child_path, resolve_path, show_path
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.errors import (
    CipherdumpError,
    CorruptError,
    KeyProblem,
    UnsupportedError,
)
from cipherdump.fscrypt.context import EncryptionContext, Policy, decode_context
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.keys import KeyRing
from cipherdump.fscrypt.symlink import decode_encrypted_symlink
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL

__all__ = ["KeyedSnapshotView", "PlainNode"]

# Plaintext decrypted per step: bounded memory for huge files.
_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class PlainNode:
    """A snapshot object with its plaintext name and path (no-key names where no key
    matched the parent)."""

    snap: SnapNode
    name: bytes
    path: bytes


class KeyedSnapshotView:
    """A snapshot's tree with plaintext names, targets and contents where a key matches.

    ``used`` collects the identifiers of keys that decrypted something and ``missing``
    the policies no key matched (for messages), as :class:`KeyedNamespace` does.
    """

    def __init__(self, view: SnapshotView, keyring: KeyRing) -> None:
        self.view = view
        self.keyring = keyring
        self.block_size = view.block_size
        uuid = view.facts.get("uuid")
        self.fs_uuid = uuid if isinstance(uuid, bytes) and len(uuid) == 16 else None
        self.used: set[bytes] = set()
        self._ciphers = InodeCiphers(
            keyring,
            block_size=self.block_size,
            fs_uuid=self.fs_uuid,
            missing_error=lambda policy: KeyProblem(f"no key for policy {policy.describe()}"),
        )
        # The policies no key matched (for messages).
        self.missing: dict[bytes, Policy] = self._ciphers.missing

    # -- keys --------------------------------------------------------------------------
    def _cipher(self, snap: SnapNode) -> InodeCipher | CipherdumpError:
        ino = int_attr(snap.attrs, "ino")

        def context() -> EncryptionContext:
            raw = bytes_attr(snap.attrs, "context")
            if raw is None:
                raise CorruptError(
                    "encrypt flag set but no encryption context",
                    structure="encryption context",
                    location=f"inode {ino}",
                )
            return decode_context(raw)

        return self._ciphers.get(ino, context)

    def cipher(self, snap: SnapNode, where: str = "") -> InodeCipher:
        got = self._cipher(snap)
        if isinstance(got, KeyProblem):
            raise KeyProblem(f"{where or 'inode ' + str(int_attr(snap.attrs, 'ino'))}: {got}")
        if isinstance(got, CipherdumpError):
            raise got
        key = self.keyring.find(got.policy)
        if key is not None:
            self.used.add(key.identifier)
        return got

    def names_decrypted(self, snap: SnapNode) -> bool:
        return not snap.is_encrypted or isinstance(self._cipher(snap), InodeCipher)

    # -- TreeSource --------------------------------------------------------------------
    def meta(self, node: PlainNode) -> ObjectMeta:
        a = node.snap.attrs
        rdev = 0
        dev = list_attr(a, "rdev")
        if len(dev) == 2 and isinstance(dev[0], int) and isinstance(dev[1], int):
            rdev = os.makedev(dev[0], dev[1])
        xattrs: list[tuple[int, bytes, bytes]] = []
        for item in list_attr(a, "xattrs"):
            if isinstance(item, tuple | list) and len(item) == 3:
                index, name, value = item
                if isinstance(index, int) and isinstance(name, bytes) and isinstance(value, bytes):
                    xattrs.append((index, name, value))
        return ObjectMeta(
            ino=int_attr(a, "ino"),
            kind=node.snap.kind,
            mode=int_attr(a, "mode"),
            uid=int_attr(a, "uid"),
            gid=int_attr(a, "gid"),
            size=int_attr(a, "size"),
            links=int_attr(a, "links", 1),
            atime_ns=int_attr(a, "atime_ns"),
            mtime_ns=int_attr(a, "mtime_ns"),
            rdev=rdev,
            encrypted=bool(int_attr(a, "flags") & EXT4_ENCRYPT_FL),
            xattrs=tuple(xattrs),
        )

    def name(self, node: PlainNode) -> bytes:
        return node.name

    def iter_children(self, node: PlainNode) -> Iterator[PlainNode | Problem]:
        """The entries of a directory with their plaintext names where a key matches,
        as they are read (a huge directory one part at a time, see
        :meth:`SnapshotView.iter_children`)."""
        parent = node.snap
        cipher = None
        if parent.is_encrypted and self.names_decrypted(parent):
            cipher = self.cipher(parent)
        ino = int_attr(parent.attrs, "ino")
        for kid in self.view.iter_children(parent):
            if kid.problem is not None:
                yield Problem(child_path(node.path, kid.name), kid.refuse())
                continue
            if cipher is None:
                yield PlainNode(kid, kid.name, posixpath.join(node.path, kid.name))
                continue
            try:
                name = self._decrypt_name(cipher, kid.raw_name, ino, int_attr(kid.attrs, "ino"))
            except CipherdumpError as err:
                yield Problem(posixpath.join(node.path, kid.name), err)
                continue
            yield PlainNode(kid, name, posixpath.join(node.path, name))

    def _decrypt_name(self, cipher: InodeCipher, ct: bytes, dir_ino: int, ino: int) -> bytes:
        where = f"directory inode {dir_ino}, entry inode {ino}"
        try:
            plain = cipher.decrypt_name(ct)
        except CorruptError as err:
            raise CorruptError(str(err), location=where) from None
        # The kernel pads with NULs to an exact length: re-encryption must give the
        # stored bytes back, or the key is wrong (or the name damaged).
        if not plain or cipher.encrypt_name(plain) != ct:
            raise KeyProblem(
                f"{where}: encrypted name does not decrypt to a valid plaintext "
                "(wrong key or damaged data)"
            )
        reason = invalid_name_reason(plain)
        if reason is not None:
            raise CorruptError(f"decrypted {reason} is not a valid file name", location=where)
        return plain

    def require_decryptable(self, node: PlainNode, where: str) -> None:
        self.cipher(node.snap, where)

    def symlink_target(self, node: PlainNode) -> bytes:
        a = node.snap.attrs
        stored = bytes_attr(a, "symlink")
        if not node.snap.is_encrypted:
            target = stored if stored is not None else bytes_attr(a, "target")
            if target is None:
                raise CorruptError("symlink without a target", location=_where(node))
            return target
        if stored is None:
            raise CorruptError(
                "encrypted symlink without its stored payload", location=_where(node)
            )
        # The snapshot keeps the ``i_size`` bytes of the payload, without the NUL after
        # them that the decoder looks for.
        ct = decode_encrypted_symlink(
            stored + b"\0", int_attr(a, "size"), self.block_size, location=_where(node)
        )
        cipher = self.cipher(node.snap, _where(node))
        plain = cipher.decrypt_name(ct)
        if not plain or cipher.encrypt_symlink_target(plain) != ct:
            raise KeyProblem(
                f"{_where(node)}: symlink target does not decrypt to a valid plaintext "
                "(wrong key or damaged data)"
            )
        return plain

    def iter_segments(self, node: PlainNode) -> Iterator[Segment]:
        snap = node.snap
        a = snap.attrs
        size = int_attr(a, "size")
        cipher = self.cipher(snap, _where(node)) if snap.is_encrypted else None
        if size == 0:
            return
        if bytes_attr(a, "inline") is not None:
            if cipher is not None:
                raise UnsupportedError(f"{_where(node)}: encrypted inline data is not supported")
            yield Segment(0, size, b"".join(self.view.iter_stored(snap, size)))
            return
        bs = self.block_size
        du = cipher.data_unit_size if cipher is not None else bs
        runs: list[tuple[int, int]] = []
        for e in list_attr(a, "extents"):
            if isinstance(e, tuple | list) and len(e) == 4:
                lblk, length, _pblk, unwritten = e
                if isinstance(lblk, int) and isinstance(length, int) and not unwritten:
                    runs.append((lblk * bs, (lblk + length) * bs))
        if "extents" not in a:
            runs = [(0, size)]
        runs.sort()
        pos = 0
        for start, end in runs:
            end = min(end, size)
            if start >= end or start < pos:
                continue
            if start > pos:
                yield Segment(pos, start - pos, None)
            off = start
            while off < end:
                want = min(_STEP, end - off)
                units = -(-want // du)
                raw = self.view.read_stored(snap, off, units * du)
                if cipher is not None:
                    raw = cipher.decrypt_data_units(off // du, raw)
                yield Segment(off, want, raw[:want])
                off += want
            pos = end
        if pos < size:
            yield Segment(pos, size - pos, None)

    # -- paths -------------------------------------------------------------------------
    def root(self) -> PlainNode:
        return PlainNode(self.view.root_node(), b"/", b"/")

    def resolve(self, path: bytes) -> PlainNode:
        """A typed path: plaintext names where a key matches, or the no-key names."""
        return resolve_path(
            self.root(),
            path,
            lookup=self._lookup,
            is_dir=lambda n: n.snap.is_dir,
            shown_path=lambda n: n.path,
        )

    def _lookup(self, parent: PlainNode, part: bytes) -> PlainNode:
        if parent.snap.is_encrypted and self.names_decrypted(parent.snap):
            for kid in self.iter_children(parent):
                if isinstance(kid, PlainNode) and kid.name == part:
                    return kid
        # No-key or raw names (and unencrypted directories).
        snap = self.view.lookup(parent.snap, part)
        name = snap.name
        if parent.snap.is_encrypted and self.names_decrypted(parent.snap):
            cipher = self.cipher(parent.snap)
            name = self._decrypt_name(
                cipher,
                snap.raw_name,
                int_attr(parent.snap.attrs, "ino"),
                int_attr(snap.attrs, "ino"),
            )
        return PlainNode(snap, name, posixpath.join(parent.path, name))

    def read_plaintext(self, node: PlainNode) -> Iterator[bytes]:
        """The whole file, holes as zeros, in pieces (for ``cat``)."""
        if node.snap.kind != "file":
            raise CipherdumpError(f"{show_path(node.path)}: not a regular file")
        for seg in self.iter_segments(node):
            if seg.data is not None:
                yield seg.data
                continue
            left = seg.length
            while left:
                n = min(left, _STEP)
                yield bytes(n)
                left -= n


def _where(node: PlainNode) -> str:
    return f"{show_path(node.path)} (inode {int_attr(node.snap.attrs, 'ino')})"
