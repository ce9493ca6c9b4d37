"""The names under which key-less copies outside a repository carry what a restore needs.

Two exports leave cipherdump without keys: the ciphertext view (``mount --ciphertext``,
``mount`` of a snapshot without keys), whose files other tools copy with their xattrs,
and ``dump --ciphertext``, a tar stream.  The way back (``restore --from-dir``,
``restore --from-tar``) must find the same facts in both, so they are named once, here.
docs/keyless-records.md describes the values.
"""

from __future__ import annotations

from typing import Final

#: Prefix of every xattr the views add.  ``user.`` so that ``cp -a``, ``rsync -aAX``,
#: ``tar --xattrs`` and restic keep them as ordinary user xattrs.
XATTR_PREFIX: Final = "user.cipherdump."

#: Exact ``i_size``, decimal ASCII (a view's ``st_size`` is the padded, whole-unit size).
SIZE: Final = "size"
#: The encryption context xattr value (ext4 index 9, name ``c``), raw bytes.
CONTEXT: Final = "context"
#: The entry's name as stored in its encrypted directory: raw ciphertext bytes.
NAME: Final = "name"
#: ``le32 hash || le32 minor_hash`` of an entry in a casefolded + encrypted directory.
HASH: Final = "hash"
#: A symlink's stored payload (``le16 length || ciphertext``), raw bytes.
SYMLINK: Final = "symlink"
#: The source inode number, decimal ASCII (IV_INO_LBLK policies tie ciphertext to it).
INO: Final = "ino"
#: ``i_flags``, decimal ASCII (casefold, inline data, ... which copies drop).
FLAGS: Final = "flags"

#: On the root only (views: an xattr of the mount's root; tar: a global PAX header): the
#: filesystem facts a restored image must match, as UTF-8 JSON with the fields of
#: ``engine.restore_image.TargetFacts`` (``uuid``, ``hash_seed``, ``volume_name`` in hex).
FILESYSTEM: Final = "filesystem"

#: The records a view or tar may carry, in the order they are listed.
ALL: Final = (SIZE, CONTEXT, NAME, HASH, SYMLINK, INO, FLAGS, FILESYSTEM)

#: PAX record keyword prefix of ``dump --ciphertext``; binary values are base64
#: (RFC 4648, with padding), numbers decimal.
PAX_PREFIX: Final = "CIPHERDUMP."


def xattr_name(record: str) -> str:
    """The xattr under which a view shows ``record`` (e.g. ``user.cipherdump.size``)."""
    return XATTR_PREFIX + record


def pax_keyword(record: str) -> str:
    """The PAX keyword under which ``dump --ciphertext`` writes ``record``."""
    return PAX_PREFIX + record
