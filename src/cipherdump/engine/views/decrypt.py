"""The cipher of each encrypted inode, made once per view and kept: the one place the
keyed views (image and snapshot) turn an encryption context and a key ring into an
:class:`InodeCipher`, or into the error that says why they cannot.

A cipher is made from its inode's context (derived keys, one HKDF or AES-ECB run per
inode), so a walk that reads a directory's names and then its files asks for the same
inode many times.  Errors are kept too: a missing key is reported once per policy, not
once per read.
"""

from __future__ import annotations

from collections.abc import Callable

from cipherdump.errors import CipherdumpError, KeyProblem, UnsupportedError
from cipherdump.fscrypt.context import EncryptionContext, Policy
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.keys import KeyRing

# How many inodes' ciphers (or errors) a view keeps.  A walk needs only the directories
# on its path and the file it reads; the bound keeps memory flat on filesystems with
# millions of encrypted inodes, and when it is reached the cache simply starts over.
CIPHER_CACHE_SIZE = 65536


class InodeCiphers:
    """Ciphers by inode number for one filesystem (or one snapshot of it).

    ``missing`` collects the policies no key matched, by key identifier or descriptor,
    for the warnings a command prints at the end.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        block_size: int,
        fs_uuid: bytes | None,
        missing_error: Callable[[Policy], KeyProblem],
    ) -> None:
        self.keyring = keyring
        self.block_size = block_size
        self.fs_uuid = fs_uuid
        self.missing: dict[bytes, Policy] = {}
        self._missing_error = missing_error
        self._cache: dict[int, InodeCipher | CipherdumpError] = {}

    def get(
        self, ino: int, context: Callable[[], EncryptionContext]
    ) -> InodeCipher | CipherdumpError:
        """The cipher of inode ``ino``, or the error (a :class:`KeyProblem` when no key
        matches); ``context`` decodes the inode's context when it is not known yet."""
        cached = self._cache.get(ino)
        if cached is not None:
            return cached
        result: InodeCipher | CipherdumpError
        try:
            ctx = context()
            key = self.keyring.find(ctx.policy)
            if key is None:
                self.missing.setdefault(ctx.policy.key_spec, ctx.policy)
                result = self._missing_error(ctx.policy)
            else:
                result = InodeCipher(
                    key, ctx, ino=ino, block_size=self.block_size, fs_uuid=self.fs_uuid
                )
        except CipherdumpError as err:
            result = err
        except ValueError as err:  # e.g. an IV_INO_LBLK policy without the UUID
            result = UnsupportedError(f"inode {ino}: {err}")
        if len(self._cache) >= CIPHER_CACHE_SIZE:
            self._cache.clear()
        self._cache[ino] = result
        return result
