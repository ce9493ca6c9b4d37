"""``restore --from-tar``: a key-less tar (``dump --ciphertext``) as copied entries.

Records are the ``CIPHERDUMP.*`` PAX keywords (binary values base64), or, for a tar
made by ``tar --xattrs`` of a ciphertext view, the ``user.cipherdump.*`` xattrs it keeps
as ``SCHILY.xattr.*``; the filesystem record is the global header's
``CIPHERDUMP.filesystem`` (or the root's xattr).  Archives are read with Python's
``tarfile`` (PAX, GNU and ustar members, GNU sparse files); the data is read in place
by offset.  Standard input is copied to a temporary file first (mode 0600, unlinked at
once), as both walks of the restore read the archive.  A truncated archive, a member
whose data runs past its end or an archive without its end-of-archive blocks is
refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from cipherdump.engine import keyless_records as R
from cipherdump.engine.keyless_ingest import (
    CopiedEntry,
    Copy,
    CopyRefused,
    ReadAt,
    ext4_xattr,
)
from cipherdump.errors import CipherdumpError, InputError
from cipherdump.ondisk.acl import acl_from_text, encode_ext4_acl

__all__ = ["open_tar_copy"]

_BINARY = (R.CONTEXT, R.NAME, R.HASH, R.SYMLINK)
_XATTR_RECORD = b"SCHILY.xattr." + R.XATTR_PREFIX.encode()
_ACLS = {"SCHILY.acl.access": 2, "SCHILY.acl.default": 3}


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _ns(pax: Mapping[str, str], key: str, fallback: int) -> int:
    from cipherdump.engine.tarwriter import parse_pax_time

    text = pax.get(key)
    if text is None:
        return fallback
    try:
        return parse_pax_time(text)
    except ValueError:
        return fallback


def _norm(name: bytes) -> bytes | None:
    """A member name as a path below the root (``b""`` for it); None for one that
    climbs out."""
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        return None
    return b"/".join(parts)


def _reader(fd: int, offset: int, size: int, sparse: list[tuple[int, int]] | None) -> ReadAt:
    if sparse is None:

        def read(off: int, n: int) -> bytes:
            got = os.pread(fd, max(0, min(n, size - off)), offset + off) if off < size else b""
            return got.ljust(n, b"\0")

        return read
    # Data of the mapped ranges lies one after another from ``offset``.
    spans: list[tuple[int, int, int]] = []  # (logical offset, length, archive offset)
    at = offset
    for o, n in sparse:
        if n:
            spans.append((o, n, at))
            at += n

    def read_sparse(off: int, n: int) -> bytes:
        out = bytearray(n)
        end = off + n
        for o, length, where in spans:
            lo, hi = max(o, off), min(o + length, end)
            if lo < hi:
                out[lo - off : hi - off] = os.pread(fd, hi - lo, where + lo - o)
        return bytes(out)

    return read_sparse


def _records(m: tarfile.TarInfo, e: CopiedEntry, problems: list[str], where: str) -> None:
    pax = m.pax_headers
    for record in R.ALL:
        if record == R.FILESYSTEM:
            continue
        value = pax.get(R.pax_keyword(record))
        if value is None:
            continue
        if record in _BINARY:
            try:
                e.records[record] = base64.b64decode(value.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                problems.append(f"{where}: the {R.pax_keyword(record)} record is not base64")
        else:
            e.records[record] = value.encode("ascii", "replace")
    for key, value in pax.items():
        full = _raw(key)
        if full.startswith(_XATTR_RECORD):
            e.records.setdefault(full[len(_XATTR_RECORD) :].decode("ascii", "replace"),
                                 _raw(value))  # fmt: skip
        elif full.startswith(b"SCHILY.xattr."):
            try:
                x = ext4_xattr(full[len(b"SCHILY.xattr.") :], _raw(value))
            except CipherdumpError as err:
                problems.append(f"{where}: {err}")
                continue
            if x is None:
                problems.append(f"{where}: xattr {key[13:]!r} has no place in ext4")
            else:
                e.xattrs.append(x)
        elif key in _ACLS:
            try:
                e.xattrs.append((_ACLS[key], b"", encode_ext4_acl(acl_from_text(value))))
            except CipherdumpError as err:
                problems.append(f"{where}: {key}: {err}")


def _kind(m: tarfile.TarInfo) -> str | None:
    for test, kind in (
        (m.isreg, "file"), (m.isdir, "dir"), (m.issym, "symlink"), (m.isfifo, "fifo"),
        (m.ischr, "chardev"), (m.isblk, "blockdev"),
    ):  # fmt: skip
        if test():
            return kind
    return None


_TYPE_BITS = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000, "fifo": 0o010000,
              "chardev": 0o020000, "blockdev": 0o060000}  # fmt: skip


def _read(fd: int, shown: str) -> Copy:
    size = os.fstat(fd).st_size
    f = os.fdopen(os.dup(fd), "rb")
    f.seek(0)  # the duplicate shares the offset a spool was left at
    problems: list[str] = []
    entries: list[CopiedEntry] = []
    by_path: dict[bytes, CopiedEntry] = {}
    try:
        tf = tarfile.open(fileobj=f, mode="r:", errors="surrogateescape")  # noqa: SIM115 (f is closed below; tf holds nothing else)
        for m in tf:
            name = _norm(_raw(m.name))
            where = f"{shown}: member {m.name!r}"
            if name is None:
                problems.append(f"{where}: its name climbs out of the archive")
                continue
            if name in by_path:
                problems.append(f"{where}: appears twice")
                continue
            if m.islnk():
                target = _norm(_raw(m.linkname))
                first = by_path.get(target) if target is not None else None
                if first is None or first.kind == "dir":
                    problems.append(f"{where}: a hard link to {m.linkname!r}, not a file before it")
                    continue
                e = CopiedEntry(name, first.kind, first.mode, first.uid, first.gid,
                                first.mtime_ns, first.atime_ns, first.ctime_ns, first.crtime_ns,
                                first.size, first.target, first.rdev, first.xattrs,
                                dict(first.records), first.identity, first.read_at,
                                first.ranges)  # fmt: skip
                # This link's own name and hash; the inode's records are the first's.
                own = CopiedEntry(name, "file", 0, 0, 0, 0, 0, 0)
                _records(m, own, problems, where)
                for record in (R.NAME, R.HASH, R.INO):
                    e.records.pop(record, None)
                    if record in own.records:
                        e.records[record] = own.records[record]
                if R.INO not in own.records and R.INO in first.records:
                    e.records[R.INO] = first.records[R.INO]
                entries.append(e)
                by_path[name] = e
                continue
            kind = _kind(m)
            if kind is None:
                problems.append(f"{where}: a member of type {m.type!r}, which ext4 has not")
                continue
            mtime = _ns(m.pax_headers, "mtime", int(m.mtime) * 1_000_000_000)
            pax = m.pax_headers
            crtime = _ns(pax, "LIBARCHIVE.creationtime", -1)
            e = CopiedEntry(
                name, kind, (m.mode & 0o7777) | _TYPE_BITS[kind], m.uid, m.gid, mtime,
                _ns(pax, "atime", mtime), _ns(pax, "ctime", mtime),
                None if crtime == -1 and "LIBARCHIVE.creationtime" not in pax else crtime,
            )  # fmt: skip
            _records(m, e, problems, where)
            if kind == "symlink":
                e.target = _raw(m.linkname)
            elif kind in ("chardev", "blockdev"):
                e.rdev = (m.devmajor, m.devminor)
            elif kind == "file":
                # typeshed calls it a list of ints; tarfile makes (offset, size) pairs.
                given: Any = m.sparse
                sparse = [(int(o), int(n)) for o, n in given] if given is not None else None
                stored = sum(n for _, n in sparse) if sparse is not None else m.size
                if m.offset_data + stored > size:
                    problems.append(
                        f"{where}: truncated: its data ends at byte {m.offset_data + stored} "
                        f"of an archive of {size}"
                    )
                    continue
                e.size = m.size
                e.read_at = _reader(fd, m.offset_data, m.size, sparse)
                e.ranges = [(o, n) for o, n in sparse if n] if sparse is not None else None
                e.identity = name
            entries.append(e)
            by_path[name] = e
        end = tf.offset
        filesystem = tf.pax_headers.get(R.pax_keyword(R.FILESYSTEM))
    except tarfile.TarError as err:
        if "unexpected end of data" in str(err):
            raise InputError(f"{shown}: truncated: the archive ends inside a member") from None
        raise InputError(f"{shown}: not a readable tar archive: {err}") from None
    except (ValueError, EOFError) as err:
        # tarfile lets some damage through as these (a sparse map that is not one).
        raise InputError(f"{shown}: not a readable tar archive: damaged member ({err})") from None
    finally:
        f.close()
    if not entries:
        raise InputError(f"{shown}: an empty archive")
    tail = os.pread(fd, 1024, end)
    if len(tail) < 1024 or tail.count(0) != 1024:
        problems.append(f"{shown}: truncated: no end-of-archive blocks after the last member")
    if problems:
        raise CopyRefused(shown, problems)
    root = by_path.get(b"")
    fs_record = _raw(filesystem) if filesystem is not None else None
    if fs_record is None and root is not None:
        fs_record = root.records.get(R.FILESYSTEM)
    return Copy(entries, fs_record, shown)


@contextlib.contextmanager
def open_tar_copy(path: str, spool_dir: str) -> Iterator[Copy]:
    """The archive at ``path`` (``-``: standard input, copied into ``spool_dir``)."""
    if path == "-":
        try:
            spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (the with below)
        except OSError as err:
            raise InputError(f"{spool_dir}: cannot spool standard input: {err.strerror}") from None
        with spool:
            try:
                shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
                spool.flush()
            except OSError as err:
                raise InputError(f"standard input: {err.strerror or err}") from None
            yield _read(spool.fileno(), "standard input")
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from None
    try:
        yield _read(fd, path)
    finally:
        os.close(fd)
