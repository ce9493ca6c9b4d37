"""Keyed en- and decryption for one encrypted inode: its data units, names or target.

An :class:`InodeCipher` is built from the master key, the inode's context, its inode
number, the filesystem UUID (IV_INO_LBLK_* only) and the block size.  Which half is used
depends on the inode:

* regular file: :meth:`~InodeCipher.decrypt_data_units` and friends (contents mode);
* directory: :meth:`~InodeCipher.decrypt_name` for the names *of its entries* (so names
  use the directory's context and inode number) and :meth:`~InodeCipher.casefold_dirhash`;
* symlink: :meth:`~InodeCipher.decrypt_symlink_target` (its own context and number).

Keys are derived on first use, so building one is cheap.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.fscrypt.context import EncryptionContext, Policy
from cipherdump.fscrypt.dirhash import casefold, casefold_dirhash
from cipherdump.fscrypt.kdf import (
    derive_dirhash_key,
    derive_inode_hash_key,
    derive_mode_key,
    hashed_ino,
    mode_spec,
)
from cipherdump.fscrypt.keys import MasterKey
from cipherdump.fscrypt.modes import ContentsCipher, NamesCipher, contents_cipher, names_cipher
from cipherdump.fscrypt.names import FNAME_MIN_MSG_LEN, NAME_MAX, ciphertext_name_length
from cipherdump.fscrypt.symlink import max_symlink_ciphertext

__all__ = ["InodeCipher", "encrypted_name_size"]

_U32 = 0xFFFFFFFF


def encrypted_name_size(policy: Policy, length: int, max_len: int = NAME_MAX) -> int:
    """Ciphertext length of a ``length``-byte name under ``policy`` (see :mod:`.names`)."""
    return ciphertext_name_length(length, policy.padding, max_len)


class InodeCipher:
    """En- and decryption under one inode's key (see the module docstring)."""

    __slots__ = (
        "_contents",
        "_context",
        "_dirhash_key",
        "_du",
        "_fs_uuid",
        "_hashed_ino",
        "_master_key",
        "_names",
        "block_size",
        "ino",
    )

    def __init__(
        self,
        master_key: MasterKey,
        context: EncryptionContext,
        *,
        ino: int,
        block_size: int,
        fs_uuid: bytes | None = None,
    ) -> None:
        policy = context.policy
        if policy.ties_to_filesystem and (fs_uuid is None or len(fs_uuid) != 16):
            raise ValueError(f"{policy.describe()} needs the 16-byte filesystem UUID")
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        self._master_key = master_key
        self._context = context
        self.ino = ino
        self.block_size = block_size
        self._fs_uuid = None if fs_uuid is None else bytes(fs_uuid)
        self._du = policy.data_unit_size(block_size)
        self._contents: ContentsCipher | None = None
        self._names: NamesCipher | None = None
        self._hashed_ino: int | None = None
        self._dirhash_key: bytes | None = None

    def __repr__(self) -> str:
        return f"InodeCipher(ino={self.ino}, {self._context.policy.describe()})"

    @property
    def context(self) -> EncryptionContext:
        return self._context

    @property
    def policy(self) -> Policy:
        return self._context.policy

    @property
    def data_unit_size(self) -> int:
        return self._du

    # -- IVs ------------------------------------------------------------------------

    def _base(self, index: int) -> int:
        """The 64-bit first IV word for data unit ``index`` (0 for names)."""
        policy = self._context.policy
        if policy.iv_ino_lblk_64:
            if index > _U32 or self.ino > _U32:
                raise UnsupportedError(
                    f"IV_INO_LBLK_64 needs 32-bit inode and unit numbers (ino {self.ino}, "
                    f"unit {index})"
                )
            return (self.ino << 32) | index
        if policy.iv_ino_lblk_32:
            if index > _U32:
                raise UnsupportedError(f"IV_INO_LBLK_32 needs 32-bit unit numbers (unit {index})")
            return (self._get_hashed_ino() + index) & _U32
        if index >= 1 << 64:
            raise ValueError(f"data unit index {index} does not fit in 64 bits")
        return index

    def _ivs(self, first: int, count: int, iv_size: int) -> list[bytes]:
        if first < 0:
            raise ValueError("data unit index must not be negative")
        policy = self._context.policy
        tail = bytes(iv_size - 8)
        if policy.direct_key:
            # DIRECT_KEY shares one key per mode, so the nonce goes into the IV; only
            # modes with a 32-byte IV (Adiantum) have room for it.
            if iv_size < 24:
                raise CorruptError(
                    f"DIRECT_KEY needs a mode with a 32-byte IV ({policy.describe()})",
                    structure="encryption context",
                    location=f"inode {self.ino}",
                )
            tail = self._context.nonce + bytes(iv_size - 24)
        if not policy.ties_to_filesystem:
            if first + count > 1 << 64:
                raise ValueError("data unit index does not fit in 64 bits")
            pack = struct.Struct("<Q").pack
            return [pack(i) + tail for i in range(first, first + count)]
        return [struct.pack("<Q", self._base(i)) + tail for i in range(first, first + count)]

    def _get_hashed_ino(self) -> int:
        if self._hashed_ino is None:
            self._hashed_ino = hashed_ino(derive_inode_hash_key(self._master_key), self.ino)
        return self._hashed_ino

    @property
    def hashed_ino(self) -> int:
        """``ci_hashed_ino`` (IV_INO_LBLK_32 policies)."""
        return self._get_hashed_ino()

    # -- contents -------------------------------------------------------------------

    def _contents_cipher(self) -> ContentsCipher:
        if self._contents is None:
            mode = self._context.policy.contents_mode
            key = derive_mode_key(self._master_key, self._context, mode, fs_uuid=self._fs_uuid)
            self._contents = contents_cipher(mode, key)
        return self._contents

    def _crypt_units(self, first_index: int, data: bytes | memoryview, *, encrypt: bool) -> bytes:
        du = self._du
        if len(data) % du:
            raise ValueError(f"{len(data)} bytes is not a whole number of {du}-byte data units")
        cipher = self._contents_cipher()
        iv_size = mode_spec(self._context.policy.contents_mode).iv_size
        ivs: Sequence[bytes] = self._ivs(first_index, len(data) // du, iv_size)
        return cipher.crypt_units(ivs, data, du, encrypt=encrypt)

    def decrypt_data_units(self, first_index: int, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt consecutive data units starting at unit ``first_index`` of the file."""
        return self._crypt_units(first_index, ciphertext, encrypt=False)

    def encrypt_data_units(self, first_index: int, plaintext: bytes | memoryview) -> bytes:
        return self._crypt_units(first_index, plaintext, encrypt=True)

    def decrypt_data_unit(self, index: int, ciphertext: bytes | memoryview) -> bytes:
        if len(ciphertext) != self._du:
            raise ValueError(f"a data unit is {self._du} bytes, got {len(ciphertext)}")
        return self._crypt_units(index, ciphertext, encrypt=False)

    def encrypt_data_unit(self, index: int, plaintext: bytes | memoryview) -> bytes:
        if len(plaintext) != self._du:
            raise ValueError(f"a data unit is {self._du} bytes, got {len(plaintext)}")
        return self._crypt_units(index, plaintext, encrypt=True)

    # -- names and symlink targets --------------------------------------------------

    def _names_cipher(self) -> NamesCipher:
        if self._names is None:
            mode = self._context.policy.filenames_mode
            key = derive_mode_key(self._master_key, self._context, mode, fs_uuid=self._fs_uuid)
            self._names = names_cipher(mode, key)
        return self._names

    def _name_iv(self) -> bytes:
        iv_size = mode_spec(self._context.policy.filenames_mode).iv_size
        return self._ivs(0, 1, iv_size)[0]

    def decrypt_name(self, ciphertext: bytes) -> bytes:
        """Decrypt a dirent name of this directory; the result stops at the first NUL."""
        if len(ciphertext) < FNAME_MIN_MSG_LEN:
            raise CorruptError(
                f"encrypted name of {len(ciphertext)} bytes is shorter than {FNAME_MIN_MSG_LEN}",
                structure="encrypted name",
                location=f"directory inode {self.ino}",
            )
        plain = self._names_cipher().decrypt(self._name_iv(), bytes(ciphertext))
        return plain.split(b"\0", 1)[0]

    def encrypt_name(self, plaintext: bytes, *, max_len: int = NAME_MAX) -> bytes:
        """Encrypt a name for this directory: NUL-pad by the policy, cap at ``max_len``."""
        if b"\0" in plaintext:
            raise ValueError("a name cannot contain NUL")
        size = encrypted_name_size(self._context.policy, len(plaintext), max_len)
        padded = bytes(plaintext) + b"\0" * (size - len(plaintext))
        return self._names_cipher().encrypt(self._name_iv(), padded)

    def decrypt_symlink_target(self, ciphertext: bytes) -> bytes:
        """Decrypt this symlink's target ciphertext (the bytes after the le16 length)."""
        target = self.decrypt_name(ciphertext)
        if not target:
            raise CorruptError(
                "encrypted symlink target decrypts to an empty string",
                structure="symlink target",
                location=f"inode {self.ino}",
            )
        return target

    def encrypt_symlink_target(self, target: bytes) -> bytes:
        """Ciphertext of this symlink's target (capped at block size - 3 bytes)."""
        return self.encrypt_name(target, max_len=max_symlink_ciphertext(self.block_size))

    # -- casefolded directories -----------------------------------------------------

    def casefold_dirhash(self, name: bytes) -> tuple[int, int]:
        """(hash, minor_hash) ext4 stores for ``name`` in this casefolded directory."""
        if self._dirhash_key is None:
            self._dirhash_key = derive_dirhash_key(self._master_key, self._context)
        return casefold_dirhash(self._dirhash_key, casefold(name))
