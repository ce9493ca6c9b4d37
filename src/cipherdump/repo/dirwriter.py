"""A large directory's tree, stored from nodes that are not all held at once.

:func:`~cipherdump.repo.tree.save_directory` takes a directory's nodes together, and a
directory of a million entries then holds a million node objects (about 1 KB each)
until its tree is written.  A :class:`DirectoryWriter` takes them a batch at a time in
any order, encodes each batch at once, and keeps them as sorted runs in an unnamed
temporary file; :meth:`DirectoryWriter.finish` merges the runs in name order and
stores the parts one by one.  The blobs are byte for byte those ``save_directory``
stores for the same nodes (the same encoding, the same content-defined cuts), so
they deduplicate with trees stored either way.

The runs are sealed (AES-GCM) with a key made for the writer and kept only in its
memory: a node holds names and metadata, which are not to rest unencrypted outside
the repository, even in a temporary file.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cipherdump.repo import tree
from cipherdump.repo.ids import Id
from cipherdump.repo.tree import (
    Node,
    NodeSpan,
    Tree,
    encode_tree,
    ends_part,
    join_rows,
    located_row,
    part_node,
)

# Nodes kept encoded in memory before they are sorted and written as one run: a run's
# records take about 250 bytes a node, so this bounds the buffer to tens of MiB and a
# million nodes to a few dozen runs (each merged through one chunk in memory).
RUN_NODES = 65536
# Plaintext bytes of records sealed together (the unit read back while merging).
_CHUNK = 1 << 18
_RECORD = struct.Struct("<II")  # name length, node length; then name, node, row

# (name, node encoding, layout row as u32 words) of one node.
Row = tuple[bytes, bytes, bytes]
# (name, node encoding, layout row) of one node, as the merge gives it.
_Item = tuple[bytes, bytes, Sequence[int]]
_name = operator.itemgetter(0)


class DirectoryWriter:
    """Stores one directory's tree as :func:`~cipherdump.repo.tree.save_directory`
    would, from nodes given in batches (:meth:`add`), holding at most
    :data:`RUN_NODES` of them (encoded) and one part at a time.

    ``save`` stores a tree blob's plaintext and returns its id.  A name given twice
    keeps the node given first; the others are listed in :attr:`duplicates` by
    :meth:`finish` (the caller reports them).  :meth:`close` (or :meth:`finish`)
    drops the temporary file.
    """

    def __init__(
        self,
        locate: Sequence[str],
        save: Callable[[bytes], Id],
        limit: int,
        *,
        run_nodes: int | None = None,
        tmpdir: str | None = None,
    ) -> None:
        self.locate = tuple(locate)
        self.save = save
        self.limit = limit
        self.run_nodes = RUN_NODES if run_nodes is None else run_nodes
        self.tmpdir = tmpdir
        self.duplicates: list[bytes] = []
        self._buffer: list[Row] = []
        # Per run, the (offset, length) of its sealed chunks in the file.
        self._runs: list[list[tuple[int, int]]] = []
        self._file: IO[bytes] | None = None
        self._end = 0
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._sealed = 0  # chunks sealed: each one's nonce

    # -- taking nodes -----------------------------------------------------------------
    def add(self, pairs: Iterable[tuple[bytes, Node | NodeSpan | bytes]]) -> None:
        """Take ``(name, node)`` pairs (as ``save_directory`` takes them); they are
        encoded now, so the caller may drop its node objects."""
        locate, buffer = self.locate, self._buffer
        for name, node in pairs:
            data, row = located_row(node, locate)
            buffer.append((name, data, struct.pack(f"<{len(row)}I", *row)))
            if len(buffer) >= self.run_nodes:
                self._write_run()

    def _write_run(self) -> None:
        buffer = self._buffer
        if not buffer:
            return
        buffer.sort(key=_name)  # stable: of equal names, the first given stays first
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.tmpdir)  # noqa: SIM115 (closed by close)
        chunks: list[tuple[int, int]] = []
        out = bytearray()
        pack = _RECORD.pack
        for name, data, row in buffer:
            out += pack(len(name), len(data))
            out += name
            out += data
            out += row
            if len(out) >= _CHUNK:
                chunks.append(self._seal(out))
                out = bytearray()
        if out:
            chunks.append(self._seal(out))
        self._runs.append(chunks)
        buffer.clear()

    def _seal(self, plain: bytearray) -> tuple[int, int]:
        assert self._file is not None
        nonce = self._sealed.to_bytes(12, "little")
        self._sealed += 1
        sealed = self._aead.encrypt(nonce, bytes(plain), None)
        os.pwrite(self._file.fileno(), sealed, self._end)
        at = (self._end, len(sealed))
        self._end += len(sealed)
        return at

    def _read_run(self, chunks: list[tuple[int, int]], first: int) -> Iterator[Row]:
        """A run's records in order; ``first``: the nonce of its first chunk."""
        assert self._file is not None
        fd = self._file.fileno()
        width = 4 * 2 * len(self.locate)
        unpack = _RECORD.unpack_from
        head = _RECORD.size
        for n, (offset, length) in enumerate(chunks):
            sealed = os.pread(fd, length, offset)
            if len(sealed) != length:
                raise OSError(f"the temporary file of a directory's nodes is short at {offset}")
            plain = self._aead.decrypt((first + n).to_bytes(12, "little"), sealed, None)
            pos = 0
            while pos < len(plain):
                name_len, data_len = unpack(plain, pos)
                pos += head
                name = plain[pos : pos + name_len]
                pos += name_len
                data = plain[pos : pos + data_len]
                pos += data_len
                yield name, data, plain[pos : pos + width]
                pos += width

    # -- storing ------------------------------------------------------------------------
    def finish(self, last: Iterable[tuple[bytes, Node | NodeSpan | bytes]] = ()) -> Id:
        """Take the last nodes and store the directory; returns its tree's id."""
        try:
            self.add(last)
            if not self._runs:
                rows: Iterable[Row] = sorted(self._buffer, key=_name)
            else:
                self._write_run()
                firsts = itertools.accumulate((len(c) for c in self._runs), initial=0)
                readers = [self._read_run(c, f) for c, f in zip(self._runs, firsts, strict=False)]
                rows = heapq.merge(*readers, key=_name)
            return self._store(self._unique(rows))
        finally:
            self.close()

    def close(self) -> None:
        self._buffer = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def _unique(self, rows: Iterable[Row]) -> Iterator[_Item]:
        """(name, node encoding, layout row) in name order, names kept once."""
        previous: bytes | None = None
        for name, data, row in rows:
            if name == previous:
                self.duplicates.append(name)
                continue
            previous = name
            yield name, data, struct.unpack(f"<{len(row) // 4}I", row)

    def _store(self, rows: Iterator[_Item]) -> Id:
        """Cut the nodes (in name order) into parts where ``split_parts`` cuts them,
        storing each part once the directory is known to be chunked."""
        head: list[list[_Item]] = []  # parts, until the directory is over CHUNK_FROM
        index: list[Node] = []
        part: list[_Item] = []
        count = 0
        for item in rows:
            part.append(item)
            count += 1
            size = len(part)
            if size >= tree.PART_MIN and (size >= tree.PART_MAX or ends_part(item[0])):
                head.append(part)
                part = []
                if count > tree.CHUNK_FROM:
                    for done in head:
                        self._save_part(done, index)
                    head.clear()
        if part:
            head.append(part)
        if count <= tree.CHUNK_FROM:
            whole = [item for p in head for item in p]
            data = _join(whole, self.locate)
            if len(data) <= self.limit or len(whole) < 2:
                return self.save(data)
            head = [whole[: len(whole) // 2], whole[len(whole) // 2 :]]
        for done in head:
            self._save_part(done, index)
        return self.save(encode_tree(Tree(tuple(index), chunked=True)))

    def _save_part(self, part: list[_Item], index: list[Node]) -> None:
        """Store a part, halved until it fits in the limit (as ``save_directory``)."""
        data = _join(part, self.locate)
        if len(data) > self.limit and len(part) > 1:
            half = len(part) // 2
            self._save_part(part[:half], index)
            self._save_part(part[half:], index)
            return
        index.append(part_node(part[0][0], self.save(data), len(part)))


def _join(items: list[_Item], locate: tuple[str, ...]) -> bytes:
    return join_rows([(data, row) for _, data, row in items], locate)
