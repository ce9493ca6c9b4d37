"""A read-only source with some of its blocks read from elsewhere in itself.

This is how a journal is replayed without writing anything: every read of a block
the journal holds a newer copy of is answered from that copy, in memory, per read.
The source underneath is never written.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

from cipherdump.blockio.source import ByteSource, Closable
from cipherdump.errors import CorruptError

# The jbd2 magic: an escaped journal copy had these first four bytes replaced by zeros.
_JBD2_MAGIC = b"\xc0\x3b\x39\x98"


class OverlaySource(Closable):
    """``inner`` with block ``b`` (of ``block_size`` bytes) read from block
    ``blocks[b][0]`` of ``inner`` instead, its first four bytes set back to the jbd2
    magic when ``blocks[b][1]`` (an escaped copy).

    Other attributes (read-ahead hints, ``reopen``) are those of ``inner``: hints for
    the original places cost at most a useless read-ahead.

    ``pin``: read every copy now and answer from memory.  A journal in use (a mounted
    filesystem's, see docs/live-backup.md) reuses its blocks once their transactions
    are checkpointed, so a copy read later could be another transaction's block.
    """

    def __init__(
        self,
        inner: ByteSource,
        block_size: int,
        blocks: Mapping[int, tuple[int, bool]],
        *,
        pin: bool = False,
    ) -> None:
        self._inner = inner
        self._bs = block_size
        self._blocks = dict(blocks)
        self._sorted = sorted(self._blocks)
        self._pinned: dict[int, bytes] | None = None
        if pin:
            self._pinned = {blk: self._copy(blk) for blk in self._sorted}

    @property
    def inner(self) -> ByteSource:
        return self._inner

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def name(self) -> str:
        return self._inner.name

    def read_at(self, offset: int, length: int) -> bytes:
        data = self._inner.read_at(offset, length)
        if not data:
            return data
        bs = self._bs
        first, end = offset // bs, (offset + len(data) - 1) // bs + 1
        keys = self._sorted
        i = bisect.bisect_left(keys, first)
        if i == len(keys) or keys[i] >= end:
            return data
        out = bytearray(data)
        while i < len(keys) and keys[i] < end:
            blk = keys[i]
            i += 1
            copy = self._copy(blk)
            lo = max(blk * bs, offset)
            hi = min((blk + 1) * bs, offset + len(out))
            out[lo - offset : hi - offset] = copy[lo - blk * bs : hi - blk * bs]
        return bytes(out)

    def _copy(self, blk: int) -> bytes:
        if self._pinned is not None:
            return self._pinned[blk]
        pblk, escaped = self._blocks[blk]
        bs = self._bs
        copy = self._inner.read_at(pblk * bs, bs)
        if len(copy) != bs:
            raise CorruptError(
                f"the journal's copy of block {blk} lies beyond the end of the image",
                structure="journal",
                location=f"block {pblk}",
            )
        if escaped:
            copy = _JBD2_MAGIC + copy[4:]
        return copy

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: prefetch, reopen, windows.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def close(self) -> None:
        self._inner.close()
