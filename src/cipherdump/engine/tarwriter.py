"""Writing a POSIX.1-2001 (PAX) tar stream, as GNU tar and Python's ``tarfile`` read it.

Every member is a ustar header, preceded by an extended header (``x``) whenever a
value does not fit ustar: names that are long or not ASCII (then ``hdrcharset=BINARY``
when they are not UTF-8 either), nanosecond times, large sizes and ids, xattrs
(``SCHILY.xattr.*``), ACLs (``SCHILY.acl.*``) and cipherdump's own records.  Sparse
files are GNU sparse 1.0: ``GNU.sparse.major=1``, ``minor=0``, ``name``, ``realsize``
in the extended header, and the map (decimal lines, padded to a block) at the start of
the member's data, followed by the data of the mapped ranges only.

The writer checks that each member's data is exactly the size its header announced:
a short or long source is an error, never a shifted archive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from cipherdump.errors import CorruptError

BLOCK = 512
#: ustar type flags.
REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE = b"0", b"1", b"2", b"3"
BLKTYPE, DIRTYPE, FIFOTYPE = b"4", b"5", b"6"
_MAX_OCTAL = {8: 0o7777777, 12: 0o77777777777}

PaxRecords = list[tuple[bytes, bytes]]


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN KEY=VALUE\\n"`` record; LEN counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax_time(ns: int) -> bytes:
    """Seconds with nine decimals (``-1.500000000`` for 1.5 s before the epoch)."""
    sign, a = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{a // 1_000_000_000}.{a % 1_000_000_000:09d}".encode()


def parse_pax_time(text: str) -> int:
    """Nanoseconds of a PAX time value (ValueError when it is not one)."""
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(text)
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if neg else ns


def sparse_map_block(entries: list[tuple[int, int]]) -> bytes:
    """The GNU sparse 1.0 map at the head of a member's data, padded to a block."""
    text = f"{len(entries)}\n" + "".join(f"{o}\n{n}\n" for o, n in entries)
    raw = text.encode()
    return raw + bytes(-len(raw) % BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _fits(value: int, width: int) -> bool:
    return 0 <= value <= _MAX_OCTAL[width]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class TarWriter:
    """Members written one after another to ``out``; :meth:`close` ends the archive."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0
        self._serial = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self, n: int) -> None:
        if n % BLOCK:
            self._write(bytes(BLOCK - n % BLOCK))

    def _header(
        self, name: bytes, typeflag: bytes, *, mode: int = 0, uid: int = 0, gid: int = 0,
        size: int = 0, mtime: int = 0, linkname: bytes = b"", devmajor: int = 0,
        devminor: int = 0,
    ) -> bytes:  # fmt: skip
        h = bytearray(BLOCK)
        h[0:100] = name[:100].ljust(100, b"\0")
        h[100:108] = _octal(mode & 0o7777, 8)
        h[108:116] = _octal(uid if _fits(uid, 8) else 0, 8)
        h[116:124] = _octal(gid if _fits(gid, 8) else 0, 8)
        h[124:136] = _octal(size if _fits(size, 12) else 0, 12)
        h[136:148] = _octal(mtime if _fits(mtime, 12) else 0, 12)
        h[148:156] = b" " * 8
        h[156:157] = typeflag
        h[157:257] = linkname[:100].ljust(100, b"\0")
        h[257:265] = b"ustar\x0000"
        h[329:337] = _octal(devmajor if _fits(devmajor, 8) else 0, 8)
        h[337:345] = _octal(devminor if _fits(devminor, 8) else 0, 8)
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    def _extended(self, typeflag: bytes, name: bytes, records: PaxRecords) -> None:
        body = b"".join(pax_record(k, v) for k, v in records)
        self._serial += 1
        base = name.rstrip(b"/").rsplit(b"/", 1)[-1][:60] or b"root"
        shown = (b"PaxHeaders.%d/" % self._serial) + base
        self._write(self._header(shown, typeflag, mode=0o644, size=len(body)))
        self._write(body)
        self._pad(len(body))

    def global_header(self, records: PaxRecords) -> None:
        """A global extended header (``g``): records that hold for the whole archive."""
        self._extended(b"g", b"GlobalHead", records)

    def add(
        self, name: bytes, typeflag: bytes, *, mode: int, uid: int, gid: int, mtime_ns: int,
        size: int = 0, linkname: bytes = b"", rdev: tuple[int, int] = (0, 0),
        pax: PaxRecords | None = None, data: Iterable[bytes] = (),
        sparse: list[tuple[int, int]] | None = None,
    ) -> int:  # fmt: skip
        """One member.  ``size`` is the file's size (its ``realsize`` when ``sparse``
        gives the mapped ``(offset, length)`` ranges, whose bytes ``data`` then yields
        in order).  Returns the data bytes written."""
        records: PaxRecords = []
        stored = size
        head_name = name
        if sparse is not None:
            map_block = sparse_map_block(sparse)
            stored = len(map_block) + sum(n for _, n in sparse)
            parent, _, base = name.rpartition(b"/")
            head_name = (parent + b"/" if parent else b"") + b"GNUSparseFile.0/" + base
            records += [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", name),
                (b"GNU.sparse.realsize", b"%d" % size),
            ]
        elif len(name) > 100 or not name.isascii():
            records.append((b"path", name))
        if len(linkname) > 100 or not linkname.isascii():
            records.append((b"linkpath", linkname))
        if not (_is_utf8(name) and _is_utf8(linkname)):
            records.insert(0, (b"hdrcharset", b"BINARY"))
        secs = mtime_ns // 1_000_000_000
        if mtime_ns % 1_000_000_000 or not _fits(secs, 12):
            records.append((b"mtime", pax_time(mtime_ns)))
        for key, value, width in ((b"uid", uid, 8), (b"gid", gid, 8), (b"size", stored, 12)):
            if not _fits(value, width):
                records.append((key, b"%d" % value))
        records += pax or []
        if records:
            self._extended(b"x", name, records)
        self._write(self._header(
            head_name, typeflag, mode=mode, uid=uid, gid=gid, size=stored, mtime=secs,
            linkname=linkname, devmajor=rdev[0], devminor=rdev[1],
        ))  # fmt: skip
        if not stored:
            return 0
        done = 0
        if sparse is not None:
            self._write(map_block)
            done = len(map_block)
        for piece in data:
            if done + len(piece) > stored:
                raise CorruptError(
                    f"{name.decode('utf-8', 'backslashreplace')}: more data than its size"
                )
            self._write(piece)
            done += len(piece)
        if done != stored:
            raise CorruptError(
                f"{name.decode('utf-8', 'backslashreplace')}: {stored - done} bytes short "
                "of its size"
            )
        self._pad(stored)
        return stored

    def close(self) -> None:
        """The end of the archive: two zero blocks."""
        self._write(bytes(2 * BLOCK))
