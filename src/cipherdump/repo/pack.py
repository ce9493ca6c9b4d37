"""Pack files: sealed blobs back to back, then a sealed header, then a trailer.

Layout::

    blob 0 .. blob n-1      each seal(plaintext or zstd(plaintext), aad = blob aad)
    header                  seal(n entries of 48 bytes, aad = trailer)
    trailer (12 bytes)      header length u32 LE | "CDpk" | version u16 LE | reserved u16 LE

Entry (48 bytes, little-endian), shared with index files::

    0  1  blob type (0 data, 1 tree)
    1  1  flags: bit 0 = zstd-compressed before sealing; other bits zero
    2  2  reserved, zero
    4  4  offset of the sealed blob in the pack
    8  4  length of the sealed blob
    12 4  length of the plaintext
    16 32 blob id

Blob aad: ``"CDbl" | type u8 | blob id (32)``, which binds each sealed blob to its id.

A version-2 pack is named by the unkeyed BLAKE3 of its sealed header and trailer only.
That still pins every byte, given the key: the trailer is the header's aad, the header
lists every blob's type, id, offset and length, the entries must tile the pack, and
each blob is sealed with its type and id as aad.  Hashing every byte again, as the
name of a version-1 pack does (BLAKE3 of all its bytes), would cost as much CPU as
sealing with AES-GCM does.  Writers write version 2; version-1 packs are still read
and checked, and one repository may hold both.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

import zstandard

from cipherdump.errors import CorruptError, IntegrityError, UnsupportedError
from cipherdump.repo.crypto import SEAL_OVERHEAD, FileHasher, MasterKey, file_id
from cipherdump.repo.envelope import HEADER_SIZE, Magic, decode_header, encode_header
from cipherdump.repo.ids import BlobType, Id

PACK_VERSION = 2

ENTRY = struct.Struct("<BBHIII32s")
ENTRY_SIZE = ENTRY.size
TRAILER_SIZE = 4 + HEADER_SIZE
FLAG_ZSTD = 0x01
MAX_BLOB_SIZE = 256 * 1024 * 1024
# Trees (most of what is compressed) shrink to 0.379 of their size at level 1 and 0.378
# at level 3, which takes 2.5 times as long (the benchmark's 198 trees: 24 against 59 ms).
_ZSTD_LEVEL = 1


class BlobTooLargeError(UnsupportedError):
    """A blob over :data:`MAX_BLOB_SIZE`: in practice only a tree of one node that large
    (data chunks are far smaller, and a large directory's tree is stored in parts)."""


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob lives inside a pack, and how it is stored."""

    type: BlobType
    flags: int
    offset: int
    length: int
    raw_length: int
    id: Id

    def encode(self) -> bytes:
        return ENTRY.pack(
            self.type, self.flags, 0, self.offset, self.length, self.raw_length, self.id.raw
        )

    @classmethod
    def decode(cls, data: bytes | memoryview, at: int, what: str) -> PackEntry:
        type_, flags, reserved, offset, length, raw_length, raw_id = ENTRY.unpack_from(data, at)
        if type_ not in (BlobType.DATA, BlobType.TREE) or flags & ~FLAG_ZSTD or reserved:
            raise CorruptError("bad blob entry", structure=what, location=f"offset {at}")
        if length < SEAL_OVERHEAD or raw_length > MAX_BLOB_SIZE:
            raise CorruptError("bad blob lengths", structure=what, location=f"offset {at}")
        return cls(BlobType(type_), flags, offset, length, raw_length, Id(raw_id))


def blob_aad(blob_type: BlobType, blob_id: Id) -> bytes:
    return b"CDbl" + bytes([blob_type]) + blob_id.raw


def compress_blob(
    plaintext: bytes, compress: bool, compressor: zstandard.ZstdCompressor | None = None
) -> tuple[int, bytes]:
    """(flags, body to seal) for one blob.  Compression is kept only if it helps;
    ``compressor`` (made at :data:`_ZSTD_LEVEL`) saves making one per blob."""
    if compress:
        zstd = compressor or zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        packed = zstd.compress(plaintext)
        if len(packed) < len(plaintext):
            return FLAG_ZSTD, packed
    return 0, plaintext


def open_blob(key: MasterKey, entry: PackEntry, sealed: bytes | memoryview, where: str) -> bytes:
    """Authenticate, decrypt, decompress, and verify the id of one blob."""
    what = f"{entry.type.name.lower()} blob {entry.id} in {where}"
    body = key.open(sealed, blob_aad(entry.type, entry.id), what)
    if entry.flags & FLAG_ZSTD:
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=entry.raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: cannot decompress: {exc}") from None
    if len(body) != entry.raw_length:
        raise IntegrityError(f"{what}: {len(body)} bytes, index says {entry.raw_length}")
    if key.blob_id(body) != entry.id:
        raise IntegrityError(f"{what}: content does not match its id")
    return body


@runtime_checkable
class InPlaceFile(Protocol):
    """What a pack's file may offer so that blobs are sealed straight into its buffers
    (see :class:`~cipherdump.repo.direct_file.DirectAppendFile`)."""

    def reserve(self, length: int) -> memoryview | None:
        """A writable view of the file's next ``length`` bytes, or None."""
        ...

    def advance(self, length: int) -> None:
        """Make the ``length`` bytes just filled in part of the file."""
        ...


class PackWriter:
    """Assembles one pack in a temporary file (hashing it as it grows, if version 1).

    Only one copy of the pack is ever assembled: in a file the backend keeps in place
    (a spool, on the local backend), or in a temporary file that :meth:`finish` hands
    to the backend as a stream.
    """

    def __init__(
        self,
        key: MasterKey,
        spool_dir: str | None = None,
        file: BinaryIO | None = None,
        *,
        version: int = PACK_VERSION,
    ) -> None:
        """``file``: an empty file to assemble the pack in (a backend's spool), else a
        temporary file in ``spool_dir``.  ``version`` 1 only to make the packs of the
        first writers (tests, benchmarks)."""
        if version not in (1, PACK_VERSION):
            raise ValueError(f"no pack version {version}")
        self._key = key
        self._version = version
        self._file: BinaryIO = (
            file if file is not None else tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115
        )
        self._in_place = self._file if isinstance(self._file, InPlaceFile) else None
        self._hasher = FileHasher() if version == 1 else None
        # Each blob's entry as the header holds it, and its fields by id: a PackEntry
        # (a frozen dataclass, ~1 µs to make) is made only when one is asked for, as a
        # backup of small files adds a blob per file.
        self._encoded: list[bytes] = []
        self._by_id: dict[Id, tuple[BlobType, int, int, int, int]] = {}
        self._zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self.size = 0

    def __len__(self) -> int:
        return len(self._encoded)

    def add(self, blob_type: BlobType, blob_id: Id, plaintext: bytes, compress: bool) -> None:
        if len(plaintext) > MAX_BLOB_SIZE:
            raise BlobTooLargeError(
                f"a {blob_type.name.lower()} blob of {len(plaintext)} bytes is over the "
                f"{MAX_BLOB_SIZE} bytes one blob may hold"
            )
        flags, body = compress_blob(plaintext, True, self._zstd) if compress else (0, plaintext)
        length = len(body) + SEAL_OVERHEAD
        aad = blob_aad(blob_type, blob_id)
        if not self._seal_in_place(body, aad, length):
            nonce, sealed = self._key.seal_parts(body, aad)
            self._write(nonce)
            self._write(sealed)
        offset, raw_length = self.size - length, len(plaintext)
        self._encoded.append(
            ENTRY.pack(blob_type, flags, 0, offset, length, raw_length, blob_id.raw)
        )
        self._by_id[blob_id] = (blob_type, flags, offset, length, raw_length)

    def _seal_in_place(self, body: bytes, aad: bytes, length: int) -> bool:
        """Seal straight into the file's buffer if the file has ``length`` bytes of room
        there (no sealed copy to allocate and copy in); False if it has not."""
        in_place = self._in_place
        view = in_place.reserve(length) if in_place is not None else None
        if in_place is None or view is None:
            return False
        try:
            self._key.seal_into(body, aad, view)
            if self._hasher is not None:
                self._hasher.update(view)
        finally:
            view.release()
        in_place.advance(length)
        self.size += length
        return True

    def get(self, blob_id: Id) -> PackEntry | None:
        fields = self._by_id.get(blob_id)
        if fields is None:
            return None
        blob_type, flags, offset, length, raw_length = fields
        return PackEntry(blob_type, flags, offset, length, raw_length, blob_id)

    def read(self, entry: PackEntry) -> bytes:
        """Read back a sealed blob of this unfinished pack."""
        self._file.seek(entry.offset)
        data = self._file.read(entry.length)
        self._file.seek(0, 2)
        return data

    def finish(self, *, flush: bool = True) -> tuple[Id, BinaryIO, bytes]:
        """Append header and trailer; return (pack id, file at offset 0, the pack's
        entries encoded as its header and index files hold them).

        ``flush=False`` leaves flushing the file to whoever takes it next (a spool's
        commit flushes it anyway): a file written around the page cache waits there for
        its last writes, which a thread of the store's can do instead of the walk."""
        header = b"".join(self._encoded)
        trailer_len = struct.pack("<I", len(header) + SEAL_OVERHEAD)
        trailer = trailer_len + encode_header(Magic.PACK, self._version)
        tail = self._key.seal(header, trailer) + trailer
        self._write(tail)
        if flush:
            self._file.flush()
        self._file.seek(0)
        pack_id = self._hasher.id() if self._hasher is not None else file_id(tail)
        return pack_id, self._file, header

    def close(self) -> None:
        self._file.close()

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.size += len(data)


def pack_name(data: bytes, what: str) -> Id:
    """The name a whole pack's bytes must have: by the trailer's version, the BLAKE3
    of all of them (version 1) or of its sealed header and trailer (version 2)."""
    header_len, version = decode_trailer(data[-TRAILER_SIZE:], len(data), what)
    if version == 1:
        return file_id(data)
    return file_id(memoryview(data)[len(data) - TRAILER_SIZE - header_len :])


def decode_trailer(trailer: bytes, pack_size: int, what: str) -> tuple[int, int]:
    """(sealed header's length, pack version) from the last 12 bytes of a pack."""
    if len(trailer) != TRAILER_SIZE:
        raise CorruptError("pack too short for its trailer", structure=what)
    version = decode_header(trailer[4:], Magic.PACK, what, PACK_VERSION)
    (header_len,) = struct.unpack_from("<I", trailer)
    if not SEAL_OVERHEAD <= header_len <= pack_size - TRAILER_SIZE:
        raise CorruptError(f"bad pack header length {header_len}", structure=what)
    if (header_len - SEAL_OVERHEAD) % ENTRY_SIZE:
        raise CorruptError(f"pack header length {header_len} is not whole entries", structure=what)
    return int(header_len), version


def decode_pack_header(
    key: MasterKey, sealed_header: bytes | memoryview, trailer: bytes, pack_size: int, what: str
) -> list[PackEntry]:
    """Decrypt and parse a pack header; entries must tile the pack exactly."""
    plain = key.open(sealed_header, trailer, f"{what} header")
    entries = [PackEntry.decode(plain, at, what) for at in range(0, len(plain), ENTRY_SIZE)]
    expected = 0
    for entry in entries:
        if entry.offset != expected:
            raise CorruptError("blob entries do not tile the pack", structure=what)
        expected += entry.length
    if expected + len(sealed_header) + TRAILER_SIZE != pack_size:
        raise CorruptError("pack size does not match its header", structure=what)
    return entries


def iter_pack(key: MasterKey, data: bytes, what: str) -> Iterator[tuple[PackEntry, memoryview]]:
    """Parse a whole pack held in memory: (entry, sealed blob) for each blob."""
    view = memoryview(data)
    header_len, _ = decode_trailer(data[-TRAILER_SIZE:], len(data), what)
    end = len(data) - TRAILER_SIZE
    entries = decode_pack_header(
        key, view[end - header_len : end], data[-TRAILER_SIZE:], len(data), what
    )
    for entry in entries:
        yield entry, view[entry.offset : entry.offset + entry.length]
