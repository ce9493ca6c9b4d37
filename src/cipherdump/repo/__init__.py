"""The backup repository: format and storage.

Owns: content-addressed blobs, pack files, the index, trees, snapshots, locks, the
repository key and its password wrapping, the integrity check, and the storage
backends behind the narrow :class:`~cipherdump.repo.backends.base.Backend` protocol.
The format contract is ``docs/repository-format.md``; change both together.

Must not import ``cipherdump.ext4``, ``cipherdump.fscrypt``, ``cipherdump.ondisk``,
``cipherdump.blockio``, ``cipherdump.engine`` or ``cipherdump.cli``: the repository
knows nothing about filesystems.  Tree nodes and snapshots carry engine metadata as
opaque values.  The repository key (:class:`~cipherdump.repo.crypto.MasterKey`) is the
sole trust boundary of this package; it has nothing to do with fscrypt keys.
"""

from __future__ import annotations

from cipherdump.repo.backends.base import Backend, FileInfo, FileType, Handle, ObjectMissing
from cipherdump.repo.backends.local import LocalBackend
from cipherdump.repo.backends.memory import MemoryBackend
from cipherdump.repo.check import CheckReport, Finding
from cipherdump.repo.crypto import Cipher, KdfParams
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.lock import LockedError
from cipherdump.repo.password import resolve_password
from cipherdump.repo.repository import Repository
from cipherdump.repo.snapshot import Snapshot
from cipherdump.repo.tree import Node, Tree

__all__ = [
    "Backend",
    "BlobType",
    "CheckReport",
    "Cipher",
    "FileInfo",
    "FileType",
    "Finding",
    "Handle",
    "Id",
    "KdfParams",
    "LocalBackend",
    "LockedError",
    "MemoryBackend",
    "Node",
    "ObjectMissing",
    "Repository",
    "Snapshot",
    "Tree",
    "resolve_password",
]
