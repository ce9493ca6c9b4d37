"""The one error tree of cipherdump.

Every failure that reaches a user is one of these, so the CLI can print a single line
and pick an exit code without ever showing a traceback::

    CipherdumpError
    ├── InputError               the thing we were asked to read is unusable
    │   ├── NotExt4Error         no ext2/3/4 superblock where one must be
    │   ├── CorruptError         a structure fails a sanity check (names it and its location)
    │   │   └── ChecksumError    a metadata_csum / crc mismatch
    │   ├── UnsupportedError     valid but beyond what we implement (unknown incompat feature,
    │   │                        unknown context version, cipher we do not have)
    │   ├── NotFoundError        a path or inode that does not exist
    │   └── LiveMountError       a live backup's mount is gone, remounted, or not ext4
    ├── KeyProblem               a key is missing, does not match, or is wrong
    ├── IntegrityError           a repository object fails authentication or its hash
    ├── BackendError             the storage under a repository failed
    ├── OutputError              what a restore or clone writes cannot be written
    └── RepositoryLockedError    another process holds the repository's lock

Errors raised for one inode or one directory entry carry enough context
(``structure`` and ``location``) for per-object reporting: a reader keeps going past
them where the rest of the filesystem is still readable.
"""

from __future__ import annotations


class CipherdumpError(Exception):
    """Base of every error cipherdump raises on purpose."""

    exit_code = 1


class InputError(CipherdumpError):
    """The input (image, device, path argument) cannot be used as asked."""

    exit_code = 3


class NotExt4Error(InputError):
    """No valid ext2/3/4 superblock was found."""


class CorruptError(InputError):
    """An on-disk structure is inconsistent.

    ``structure`` names what was being decoded (``"extent header"``), ``location`` says
    where (``"inode 12"``, ``"block 4711"``).
    """

    def __init__(self, message: str, *, structure: str = "", location: str = "") -> None:
        self.structure = structure
        self.location = location
        parts = [message]
        # "inode 12" already names the structure "inode": say it once.
        if structure and location.startswith(structure):
            where = location
        else:
            where = " ".join(p for p in (structure, location) if p)
        if where:
            parts.append(f"({where})")
        super().__init__(" ".join(parts))


class ChecksumError(CorruptError):
    """A metadata checksum does not match."""


class UnsupportedError(InputError):
    """Valid input that uses something cipherdump does not implement."""


class NotFoundError(InputError):
    """A path or inode does not exist."""


class LiveMountError(InputError):
    """The mount a live backup reads (``backup --live``) is not, or no longer, the one it
    started with: unmounted, remounted, on another device, not ext4, a bind mount of a
    subdirectory.  The backup stops: what it read of the device may be of two mounts."""


class KeyProblem(CipherdumpError):
    """A key is missing, matches no policy, or is wrong."""

    exit_code = 4


class IntegrityError(CipherdumpError):
    """A repository object failed authentication or its content hash."""

    exit_code = 5


class BackendError(CipherdumpError):
    """The storage behind a repository failed."""

    exit_code = 6


class OutputError(CipherdumpError):
    """The output of a restore or clone (a directory, an image file) cannot be written:
    its disk is full, read-only or failing.  Ends the run: every later write would fail
    the same way."""

    exit_code = 7


class RepositoryLockedError(CipherdumpError):
    """Another process holds the repository's exclusive lock (or a lock file that
    cannot be read stands in the way): nothing is wrong with the repository, and the
    same command will work once the lock is gone.  Its own code, so that scripts can
    wait and retry."""

    exit_code = 8
