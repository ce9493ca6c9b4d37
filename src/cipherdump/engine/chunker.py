"""Fixed-offset chunking of a file's stored blocks.

A file's stored bytes are its blocks ``[0, n)``, where ``n`` covers ``i_size`` rounded up
to whole blocks (and any written block mapped past it).  Data units never exceed a block,
so whole blocks are whole data units: every chunk of an encrypted file is whole
ciphertext data units, exactly as on disk.

Chunk ``k`` is bytes ``[k * chunk_size, (k + 1) * chunk_size)`` of that range (the last
one shorter).  The boundaries depend only on the offset, never on the content, so
changing one block changes one chunk and equal chunks anywhere are stored once.  A chunk
with no written block in it (holes and unwritten extents only) is not stored at all;
inside a stored chunk, holes and unwritten blocks read as zeros, and the extent map kept
beside the chunks says which they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cipherdump.ext4 import Inode, Run

DEFAULT_CHUNK_SIZE = 1 << 20
# Data units are at most 64 KiB (the largest ext4 block), so any multiple of it keeps
# chunk boundaries on data-unit boundaries for every filesystem.
CHUNK_ALIGN = 64 * 1024


def check_chunk_size(chunk_size: int) -> int:
    if chunk_size <= 0 or chunk_size % CHUNK_ALIGN:
        raise ValueError(f"chunk size {chunk_size} is not a positive multiple of {CHUNK_ALIGN}")
    return chunk_size


def written_runs(inode: Inode) -> list[Run]:
    """The runs that hold data: mapped and not unwritten."""
    return [r for r in inode.runs if r.pblk is not None and not r.unwritten]


def stored_length(inode: Inode) -> int:
    """Bytes of the stored range: whole blocks over ``i_size`` and every written block."""
    bs = inode.fs.block_size
    blocks = -(-inode.size // bs)
    for run in written_runs(inode):
        blocks = max(blocks, run.lblk + run.length)
    return blocks * bs


def iter_chunks(
    inode: Inode,
    chunk_size: int,
    ahead: Callable[[list[tuple[int, int]]], None] | None = None,
    ahead_bytes: int = 0,
) -> Iterator[tuple[int, bytes]]:
    """``(chunk index, bytes)`` for every chunk holding at least one written block.

    Reads each written run once, in logical order, never more than one chunk at a time.
    ``ahead``, if given, is told the byte ranges ``(offset, length)`` of the source
    that the next ``ahead_bytes`` of reads will be, before they are read (a source
    without read-ahead of its own can then have them read meanwhile).
    """
    fs = inode.fs
    bs = fs.block_size
    per_chunk = chunk_size // bs
    total = stored_length(inode)
    # (chunk index, block offset in the chunk, physical block, blocks, chunk length)
    reads: list[tuple[int, int, int, int, int]] = []
    for run in written_runs(inode):
        lblk, left = run.lblk, run.length
        pblk = run.pblk
        assert pblk is not None
        while left:
            index = lblk // per_chunk
            offset = lblk - index * per_chunk
            n = min(left, per_chunk - offset)
            reads.append((index, offset, pblk, n, min(chunk_size, total - index * chunk_size)))
            lblk += n
            pblk += n
            left -= n
    # Bytes of source read before each read (and in all, last), to measure read-ahead.
    before = [0]
    for read in reads:
        before.append(before[-1] + read[3] * bs)
    hinted = 0  # reads before this one have been hinted
    current = -1
    buf = bytearray()
    for i, (index, offset, pblk, n, length) in enumerate(reads):
        # The read at hand is made now anyway; those after it, up to ahead_bytes on,
        # are hinted in batches whenever less than half of that is left hinted.
        if ahead is not None and before[max(hinted, i + 1)] - before[i + 1] < ahead_bytes // 2:
            stop = start = max(hinted, i + 1)
            while stop < len(reads) and before[stop] - before[i + 1] < ahead_bytes:
                stop += 1
            if stop > start:
                ahead([(reads[j][2] * bs, reads[j][3] * bs) for j in range(start, stop)])
            hinted = stop
        if index != current:
            if current >= 0:
                yield current, bytes(buf)
                current = -1
            if offset == 0 and n * bs == length:
                # The common case: one run covers the whole chunk; no copying.
                yield index, fs.read_block(pblk, n)
                continue
            current = index
            buf = bytearray(length)
        buf[offset * bs : (offset + n) * bs] = fs.read_block(pblk, n)
    if current >= 0:
        yield current, bytes(buf)
