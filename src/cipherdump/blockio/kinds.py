"""What kind of file a path is, and which kinds cipherdump reads from and writes to.

A source is a regular file (an image) or a block device; anything else is refused
before it is opened for reading: a FIFO would block the open (and then every read)
until someone writes to it, and a character device such as ``/dev/zero`` never ends.
An image target (``clone``, ``restore --to-image``) is a regular file, new or existing,
on a writable filesystem; anything else is refused before any work is done.
"""

from __future__ import annotations

import os
import stat

from cipherdump.errors import OutputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISREG, "a regular file"),
)


def file_kind(mode: int) -> str:
    """``"a FIFO"``, ``"a directory"``, ...: the kind of a file for messages."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"a file of unknown type (mode 0o{mode:o})"


def is_source_kind(mode: int) -> bool:
    """Whether a file of ``mode`` can be read as a source: an image or a block device."""
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def check_image_target(path: str) -> None:
    """:class:`OutputError` unless ``path`` names an image file cipherdump can write:
    an existing regular file, or a new one in an existing directory on a filesystem
    mounted read-write.  Nothing is opened or created."""
    if not path:
        raise OutputError("the output image is named by an empty string")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{path}: {exc.strerror}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{path}: is {file_kind(st.st_mode)}; the output must be an image file "
                "(new, or an existing ext4 image)"
            )
        where = os.path.dirname(os.path.abspath(path))
    else:
        if os.path.islink(path):
            raise OutputError(f"{path}: is a symlink to nothing; name the image file itself")
        where = os.path.dirname(path) or "."
        try:
            parent = os.stat(where)
        except OSError as exc:
            raise OutputError(f"cannot create {path}: {where}: {exc.strerror}") from None
        if not stat.S_ISDIR(parent.st_mode):
            raise OutputError(f"cannot create {path}: {where} is not a directory")
    try:
        read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False  # not known here: the write itself will say
    if read_only:
        raise OutputError(f"{path}: cannot be written: read-only file system")
