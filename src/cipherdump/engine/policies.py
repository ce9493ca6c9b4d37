"""The encryption policies of a backup, and what each means for a restore.

Every encrypted inode is counted under its policy (the ioctl struct of its context,
nonce aside).  For each policy the summary says where a key-less restore works (any
ext4 with the same block size; or, for IV_INO_LBLK_64/32, only a filesystem with the
same UUID and inode numbers) and whether cipherdump could decrypt it with the key.
"""

from __future__ import annotations

from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem
from cipherdump.fscrypt.context import (
    contents_mode_implemented,
    decode_context,
    filenames_mode_implemented,
    mode_name,
)
from cipherdump.repo.codec import Value


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The sizes of v1 and v2 contexts, whose last 16 bytes are the nonce.
_CONTEXT_SIZES = (28, 40)


class PolicyCensus:
    """Counts encrypted inodes per policy and says how each can be restored."""

    def __init__(self, fs: Filesystem) -> None:
        self._fs = fs
        # Census key by context without its nonce (the last 16 bytes of every context
        # version): nothing decode_context checks depends on the nonce, and a
        # filesystem holds few policies and many inodes.
        self._keys: dict[bytes, bytes | str] = {}

    def add(self, counts: dict[bytes | str, int], context: bytes) -> None:
        """Count one encrypted inode: by its policy (the ioctl struct), or by why its
        context cannot be decoded."""
        cacheable = len(context) in _CONTEXT_SIZES
        key = self._keys.get(context[:-16]) if cacheable else None
        if key is None:
            try:
                key = decode_context(context).policy.encode()
            except CipherdumpError as err:
                key = str(err)
            if cacheable and len(self._keys) < 4096:
                self._keys[context[:-16]] = key
        counts[key] = counts.get(key, 0) + 1

    def summary(self, counts: dict[bytes | str, int]) -> list[dict[str, Value]]:
        out: list[dict[str, Value]] = []
        bs = self._fs.block_size
        uuid = uuid_text(self._fs.uuid)
        policies = [(k, n) for k, n in counts.items() if isinstance(k, bytes)]
        errors = sorted((k, n) for k, n in counts.items() if isinstance(k, str))
        for key, count in sorted(policies, key=lambda kv: -kv[1]):
            # The context of a policy is its ioctl struct plus a nonce; any nonce decodes.
            ctx_version = 1 if key[0] == 0 else key[0]
            policy = decode_context(bytes([ctx_version]) + key[1:] + bytes(16)).policy
            decryptable = contents_mode_implemented(
                policy.contents_mode
            ) and filenames_mode_implemented(policy.filenames_mode)
            notes: list[str] = []
            if policy.ties_to_filesystem:
                flag = "IV_INO_LBLK_64" if policy.iv_ino_lblk_64 else "IV_INO_LBLK_32"
                notes.append(
                    f"key-less restore only into a filesystem with UUID {uuid} and the "
                    f"same inode numbers ({flag} ties ciphertext to both)"
                )
            elif policy.log2_data_unit_size:
                notes.append(
                    f"key-less restore into any ext4 with the encrypt feature "
                    f"(data units of {policy.data_unit_size(bs)} bytes are pinned)"
                )
            else:
                notes.append(
                    f"key-less restore into any ext4 with the encrypt feature and "
                    f"{bs}-byte blocks (the data unit is the block size)"
                )
            if decryptable:
                notes.append("cipherdump can decrypt it with the key")
            else:
                missing = [
                    mode_name(m)
                    for m, ok in (
                        (policy.contents_mode, contents_mode_implemented(policy.contents_mode)),
                        (policy.filenames_mode, filenames_mode_implemented(policy.filenames_mode)),
                    )
                    if not ok
                ]
                notes.append(
                    f"cipherdump cannot decrypt {' and '.join(missing)}: key-less restore only"
                )
            out.append(
                {
                    "policy": policy.describe(),
                    "version": policy.version,
                    "contents_mode": mode_name(policy.contents_mode),
                    "filenames_mode": mode_name(policy.filenames_mode),
                    "flags": policy.flag_names(),
                    "data_unit_size": policy.data_unit_size(bs),
                    "key": policy.key_spec,
                    "inodes": count,
                    "ties_to_filesystem": policy.ties_to_filesystem,
                    "decryptable": decryptable,
                    "restore": "; ".join(notes),
                }
            )
        for message, count in errors:
            out.append(
                {
                    "policy": "unreadable context",
                    "inodes": count,
                    "decryptable": False,
                    "restore": f"context kept verbatim; cipherdump cannot use it: {message}",
                }
            )
        return out
