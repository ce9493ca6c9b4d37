"""The keyed view: what the kernel shows once the owners' keys are added.

:class:`KeyedNamespace` is a :class:`~cipherdump.engine.views.image.Namespace` that holds a
:class:`~cipherdump.fscrypt.keys.KeyRing`.  Entries of an encrypted directory whose key is
in the ring get their plaintext names (decrypted with the *directory's* context, inode
number, the filesystem UUID and block size); where no key matches, the kernel's no-key
names are shown as before.  Paths may mix both spellings.  Symlink targets and file
contents are decrypted with the object's own context.

Nothing decrypted is handed out unchecked: every name and symlink target is encrypted
again and must give back the stored ciphertext (the kernel's NUL padding is exact), so
a wrong key -- possible only for v1, whose descriptors the kernel never checks --
raises :class:`~cipherdump.errors.KeyProblem` instead of producing garbage.  v2 keys are
found by their identifier, which is derived from the key, so a wrong v2 key can only
ever "match no policy".

Key bytes stay inside the fscrypt key objects; this module sees identifiers only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cipherdump.engine.views.decrypt import InodeCiphers
from cipherdump.engine.views.image import ImageNode, Namespace, Problem, bad_entry
from cipherdump.engine.views.paths import child_path
from cipherdump.errors import CipherdumpError, CorruptError, KeyProblem, UnsupportedError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.directory import Entry
from cipherdump.ext4.inode import InodeType
from cipherdump.fscrypt.context import EncryptionContext, Policy, decode_context
from cipherdump.fscrypt.dirhash import casefold
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.keys import KeyRing
from cipherdump.fscrypt.nokey import decode_nokey_name
from cipherdump.fscrypt.symlink import decode_encrypted_symlink
from cipherdump.ondisk.dirent import dirent_name_problem

__all__ = ["KeyedNamespace", "Segment", "invalid_name_reason"]

# Blocks decrypted per read: large enough to amortise the per-call cost, small enough
# to keep memory flat for huge files.
_CHUNK_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class Segment:
    """``length`` bytes of a file from ``offset``: plaintext ``data``, or a hole (None).

    Holes and unwritten (preallocated) extents are holes: they read as zeros and are
    never decrypted.
    """

    offset: int
    length: int
    data: bytes | None


def invalid_name_reason(name: bytes) -> str | None:
    """Why the plaintext ``name`` cannot be a single path component, or None if it can."""
    return dirent_name_problem(name, encrypted=False)


class KeyedNamespace(Namespace):
    """Names, targets and contents as the kernel shows them with the keys in ``keyring``.

    ``unverified_descriptors`` lists v1 descriptors that were paired with a key by hand
    (not by the SHA-512(SHA-512(key)) convention): such a pairing cannot be checked, so
    messages say so.  ``used`` collects the identifiers of keys that decrypted
    something; ``missing`` the key specs of policies no key matched (for messages).
    """

    def __init__(
        self,
        fs: Filesystem,
        keyring: KeyRing,
        *,
        unverified_descriptors: Iterable[bytes] = (),
    ) -> None:
        super().__init__(fs)
        self.keyring = keyring
        self.unverified_descriptors = frozenset(bytes(d) for d in unverified_descriptors)
        self.used: set[bytes] = set()
        self._ciphers = InodeCiphers(
            keyring,
            block_size=fs.block_size,
            fs_uuid=fs.uuid,
            missing_error=self.missing_key_error,
        )
        # The policies no key matched (for messages).
        self.missing: dict[bytes, Policy] = self._ciphers.missing
        # Hand-paired v1 descriptors whose key has decrypted a whole directory to valid
        # names (confirmed), or has failed to (rejected, with the error to repeat).
        self._confirmed: set[bytes] = set()
        self._rejected: dict[bytes, KeyProblem] = {}

    # -- keys ------------------------------------------------------------------------
    def context_of(self, inode: Inode) -> EncryptionContext:
        """The decoded context of an encrypted inode (CorruptError/UnsupportedError)."""
        raw = inode.encryption_context
        if raw is None:
            raise CorruptError(
                "encrypt flag set but no encryption context",
                structure="encryption context",
                location=f"inode {inode.ino}",
            )
        try:
            return decode_context(raw)
        except CorruptError as err:
            raise CorruptError(str(err), location=f"inode {inode.ino}") from None
        except UnsupportedError as err:
            raise UnsupportedError(f"{err} (inode {inode.ino})") from None

    def missing_key_error(self, policy: Policy) -> KeyProblem:
        """A message that names the key wanted and the keys given (identifier mismatch)."""
        kind = "identifier" if policy.version == 2 else "descriptor"
        given = [
            k.identifier.hex() if policy.version == 2 else k.descriptor.hex() for k in self.keyring
        ]
        if given:
            have = f"the keys given have {kind}s {', '.join(sorted(given))}"
        else:
            have = "no key was given"
        hint = ""
        if policy.version == 1 and given:
            hint = (
                "; a v1 descriptor is chosen by the tool that set the policy, so pair "
                "the key with it explicitly (--key DESCRIPTOR:FILE)"
            )
        return KeyProblem(f"no key for policy {policy.describe()} ({kind} mismatch: {have}){hint}")

    def cipher_for(self, inode: Inode) -> InodeCipher | None:
        """The cipher of an encrypted inode, or None when no key matches its policy.

        Raises CorruptError / UnsupportedError when the context cannot be read.
        """
        got = self._cipher_or_error(inode)
        if isinstance(got, KeyProblem):
            return None
        if isinstance(got, CipherdumpError):
            raise got
        return got

    def require_cipher(self, inode: Inode, where: str = "") -> InodeCipher:
        """Like :meth:`cipher_for`, raising :class:`KeyProblem` when no key matches.

        ``where`` (for example ``"directory home/bob"``) starts the message.
        """
        got = self._cipher_or_error(inode)
        if isinstance(got, KeyProblem):
            raise KeyProblem(f"{where or f'inode {inode.ino}'}: {got}")
        if isinstance(got, CipherdumpError):
            raise got
        return got

    def _cipher_or_error(self, inode: Inode) -> InodeCipher | CipherdumpError:
        return self._ciphers.get(inode.ino, lambda: self.context_of(inode))

    def _note_used(self, cipher: InodeCipher) -> None:
        key = self.keyring.find(cipher.policy)
        if key is not None:
            self.used.add(key.identifier)

    def _wrong_key(self, cipher: InodeCipher, what: str, location: str) -> KeyProblem:
        policy = cipher.policy
        if policy.version == 1 and policy.key_spec in self.unverified_descriptors:
            why = (
                f"the key paired with v1 descriptor {policy.key_spec.hex()} could not be "
                "verified (the descriptor is not derived from it) and is probably wrong"
            )
        elif policy.version == 1:
            why = "wrong key or damaged data"
        else:
            why = "damaged data or a wrong key"
        return KeyProblem(f"{location}: {what} does not decrypt to a valid plaintext ({why})")

    # -- names -----------------------------------------------------------------------
    def names_decrypted(self, directory: Inode) -> bool:
        """Whether entries of ``directory`` are shown in plaintext."""
        if not directory.is_encrypted:
            return True
        try:
            return self.cipher_for(directory) is not None
        except CipherdumpError:
            return False

    def name_decrypted(self, node: ImageNode) -> bool:
        """Whether ``node.name`` is a decrypted plaintext (not a no-key name)."""
        if not node.name_encrypted:
            return False
        nokey = decode_nokey_name(node.name)
        return not (nokey is not None and nokey.matches(node.raw_name))

    def decrypt_entry_name(self, directory: Inode, entry: Entry) -> bytes:
        """The plaintext of ``entry``'s name; KeyProblem / CorruptError when not valid."""
        cipher = self.require_cipher(directory, f"directory inode {directory.ino}")
        if self._needs_confirmation(cipher):
            self._confirm(directory, cipher)
        where = f"directory inode {directory.ino}, entry inode {entry.ino}"
        try:
            plain = cipher.decrypt_name(entry.name)
        except CorruptError as err:
            raise CorruptError(str(err), location=where) from None
        # The kernel pads with NULs to an exact length: re-encryption must give the
        # stored bytes back.  An empty result or any other difference means a wrong
        # key or damaged ciphertext, never a name to show.
        if not plain or cipher.encrypt_name(plain) != entry.name:
            raise self._wrong_key(cipher, "encrypted name", where)
        reason = invalid_name_reason(plain)
        if reason is not None:
            raise CorruptError(
                f"decrypted {reason} is not a valid file name",
                structure="encrypted name",
                location=where,
            )
        self._note_used(cipher)
        return plain

    def _needs_confirmation(self, cipher: InodeCipher) -> bool:
        policy = cipher.policy
        if policy.version != 1 or policy.key_spec not in self.unverified_descriptors:
            return False
        rejected = self._rejected.get(policy.key_spec)
        if rejected is not None:
            raise rejected
        return policy.key_spec not in self._confirmed

    def _confirm(self, directory: Inode, cipher: InodeCipher) -> None:
        """Check a hand-paired v1 key on a whole directory before showing any name.

        A wrong key gives names that are random bytes; those re-encrypt to the stored
        ciphertext whenever they happen to hold no NUL, so one name proves little.  A
        right key gives exact NUL padding for *every* name, and real directories hold
        names that are UTF-8, random bytes almost never are.
        """
        spec = cipher.policy.key_spec
        entries = directory.entries()
        if not entries:
            return
        utf8 = 0
        for e in entries:
            plain = cipher.decrypt_name(e.name) if len(e.name) >= 16 else b""
            if not plain or cipher.encrypt_name(plain) != e.name:
                break
            try:
                plain.decode("utf-8")
            except UnicodeDecodeError:
                continue
            utf8 += 1
        else:
            if utf8:
                self._confirmed.add(spec)
                return
        err = KeyProblem(
            f"wrong key: the key paired with v1 descriptor {spec.hex()} does not decrypt "
            f"directory inode {directory.ino} to valid names"
        )
        self._rejected[spec] = err
        raise err

    def display_name(self, directory: Inode, entry: Entry) -> bytes:
        if directory.is_encrypted and self.names_decrypted(directory):
            return self.decrypt_entry_name(directory, entry)
        return super().display_name(directory, entry)

    def display_names(self, directory: Inode, entries: Sequence[Entry]) -> list[bytes]:
        if directory.is_encrypted and self.names_decrypted(directory):
            return [self.decrypt_entry_name(directory, e) for e in entries]
        return super().display_names(directory, entries)

    def symlink_target(self, inode: Inode) -> bytes:
        """``readlink`` with the key: plaintext; the no-key form where no key matches."""
        if not inode.is_encrypted:
            return super().symlink_target(inode)
        where = f"inode {inode.ino}"
        ct = decode_encrypted_symlink(
            inode.symlink_storage(), inode.size, self.fs.block_size, location=where
        )
        cipher = self.cipher_for(inode)
        if cipher is None:
            return super().symlink_target(inode)
        plain = cipher.decrypt_name(ct)
        if not plain or cipher.encrypt_symlink_target(plain) != ct:
            raise self._wrong_key(cipher, "symlink target", where)
        if self._needs_confirmation(cipher) and not _is_utf8(plain):
            raise self._wrong_key(cipher, "symlink target", where)
        self._note_used(cipher)
        return plain

    # -- listing ---------------------------------------------------------------------
    def iter_children(self, node: ImageNode) -> Iterator[ImageNode | Problem]:
        """As :meth:`Namespace.iter_children`, with a name that cannot be decrypted
        reported as a :class:`Problem` of its own (under its no-key name)."""
        directory = node.inode
        if not (directory.is_encrypted and self.names_decrypted(directory)):
            yield from super().iter_children(node)
            return
        base = node.path
        for e in directory.entries():
            bad = dirent_name_problem(e.name, encrypted=True)
            if bad is not None:
                yield Problem(child_path(base, e.name), bad_entry(bad, directory.ino))
                continue
            try:
                name = self.decrypt_entry_name(directory, e)
            except CipherdumpError as err:
                nokey = Namespace.display_name(self, directory, e)
                yield Problem(posixpath.join(base, nokey), err)
                continue
            path = posixpath.join(base, name)
            try:
                child = self.fs.inode(e.ino)
            except CipherdumpError as err:
                yield Problem(path, err)
                continue
            yield ImageNode(path, name, e.name, child, directory.is_encrypted, e.hash)

    # -- lookup ----------------------------------------------------------------------
    def _lookup(self, parent: ImageNode, name: bytes) -> ImageNode:
        directory = parent.inode
        if directory.is_encrypted and self.names_decrypted(directory):
            match = self._plaintext_match(directory, name)
            if match is not None:
                # A typed name that encrypts to a stored one proves the key.
                self._confirmed.add(self.require_cipher(directory).policy.key_spec)
                shown = self.display_name(directory, match)
                return ImageNode(
                    posixpath.join(parent.path, shown),
                    shown,
                    match.name,
                    self.fs.inode(match.ino),
                    True,
                    match.hash,
                )
        return super()._lookup(parent, name)

    def _plaintext_match(self, directory: Inode, name: bytes) -> Entry | None:
        cipher = self.require_cipher(directory)
        try:
            ct = cipher.encrypt_name(name)
        except ValueError:
            return None  # no such plaintext can exist (empty, NUL, too long)
        match = directory.entry_named(ct)
        if match is not None or not directory.is_casefolded:
            return match
        # Casefolded directory: any spelling that folds to the same name matches.
        wanted = casefold(name)
        for e in directory.entries():
            try:
                plain = self.decrypt_entry_name(directory, e)
            except CipherdumpError:
                continue
            if casefold(plain) == wanted:
                return e
        return None

    # -- contents --------------------------------------------------------------------
    def iter_segments(self, inode: Inode) -> Iterator[Segment]:
        """The file's plaintext from 0 to ``i_size`` as data and hole segments.

        Encrypted data units are decrypted with the file's own key (KeyProblem when it
        is missing); holes and unwritten extents are holes, without decryption.
        """
        if inode.type is not InodeType.FILE:
            raise UnsupportedError(f"inode {inode.ino} is not a regular file")
        size = inode.size
        if size == 0:
            return
        cipher: InodeCipher | None = None
        if inode.is_encrypted:
            cipher = self.require_cipher(inode, f"inode {inode.ino}")
            if inode.has_inline_data:
                raise UnsupportedError(
                    f"inode {inode.ino}: encrypted inline data is not supported "
                    "(the kernel never writes it)"
                )
            self._note_used(cipher)
        elif inode.has_inline_data:
            yield Segment(0, size, inode.read(0, size))
            return
        yield from _segments(inode, cipher)

    def read_plaintext(self, inode: Inode) -> bytes:
        """The whole plaintext of a regular file (for small files and tests)."""
        out = bytearray()
        for seg in self.iter_segments(inode):
            out += seg.data if seg.data is not None else bytes(seg.length)
        return bytes(out)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _segments(inode: Inode, cipher: InodeCipher | None) -> Iterator[Segment]:
    fs = inode.fs
    bs = fs.block_size
    size = inode.size
    du = cipher.data_unit_size if cipher is not None else bs
    if bs % du:
        raise UnsupportedError(
            f"inode {inode.ino}: data unit of {du} bytes does not divide the {bs}-byte block"
        )
    pos = 0
    for run in inode.runs:
        start = run.lblk * bs
        if start >= size:
            break
        end = min((run.lblk + run.length) * bs, size)
        if start > pos:
            # The run list covers every block up to i_size; be safe if it did not.
            yield Segment(pos, start - pos, None)
        if run.pblk is None or run.unwritten:
            yield Segment(start, end - start, None)
            pos = end
            continue
        done = 0
        while start + done * bs < end:
            off = start + done * bs
            n = min(_CHUNK_BLOCKS, run.length - done, -(-(end - off) // bs))
            want = min(n * bs, end - off)
            # Only whole data units up to EOF need decrypting.
            units = -(-want // du)
            raw = fs.read_block(run.pblk + done, n)[: units * du]
            if cipher is not None:
                raw = cipher.decrypt_data_units(off // du, raw)
            yield Segment(off, want, raw[:want])
            done += n
        pos = end
    if pos < size:
        yield Segment(pos, size - pos, None)
