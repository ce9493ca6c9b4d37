"""Read-ahead, through :class:`ReadAhead`: what is hinted to the filesystem's byte
source, in which order, and nothing when the byte source takes no hints."""

from __future__ import annotations

from cipherdump.blockio import MemorySource
from cipherdump.engine.backup.readahead import PREFETCH_GAP, ReadAhead, merge_ranges
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.ext4 import Filesystem
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


class HintedSource(MemorySource):
    """An image in memory that records the hints it is given."""

    def __init__(self, data: bytes, window: int | None = None) -> None:
        super().__init__(data)
        self.hints: list[tuple[int, int]] = []
        self.stream: list[tuple[int, int]] = []
        if window is not None:
            self.readahead_window = window

    def prefetch(self, offset: int, length: int) -> None:
        self.hints.append((offset, length))

    def prefetch_stream(self, offset: int, length: int) -> None:
        self.stream.append((offset, length))


def _files(fs: Filesystem) -> list[ImageNode]:
    ns = Namespace(fs)
    return [k for k in ns.walk(ns.resolve(b"/"), recursive=True) if isinstance(k, ImageNode)]


def _runs(kids: list[ImageNode], bs: int) -> list[tuple[int, int]]:
    out = []
    for kid in kids:
        if kid.inode.is_file and not kid.inode.has_inline_data:
            out += [(r.pblk * bs, r.length * bs) for r in kid.inode.runs if r.pblk is not None]
    return out


def test_a_byte_source_without_hints_gets_none() -> None:
    fs = Filesystem(MemorySource(SAMPLE.read_bytes()))
    readahead = ReadAhead(fs)
    readahead.start()
    readahead.hint_inode_tables()
    readahead.hint_files(_files(fs), lambda inode: False)
    assert readahead.stream_hint() is None
    readahead.stop()


def test_the_page_cache_gets_inode_tables_and_files_merged() -> None:
    source = HintedSource(SAMPLE.read_bytes())
    fs = Filesystem(source)
    kids = _files(fs)
    readahead = ReadAhead(fs)
    readahead.start()
    readahead.hint_inode_tables()
    readahead.hint_files(kids, lambda inode: False)
    assert readahead.stream_hint() is None  # the kernel reads ahead in big files
    readahead.stop()
    tables = fs.inode_table_ranges()
    assert source.hints[: len(tables)] == tables
    assert source.hints[len(tables) :] == merge_ranges(_runs(kids, fs.block_size), PREFETCH_GAP)
    assert source.stream == []


def test_known_files_are_not_hinted() -> None:
    source = HintedSource(SAMPLE.read_bytes())
    fs = Filesystem(source)
    readahead = ReadAhead(fs)
    readahead.start()
    readahead.hint_files(_files(fs), lambda inode: True)
    readahead.stop()
    assert source.hints == []


def test_a_byte_source_with_its_own_window_gets_that_much() -> None:
    source = HintedSource(SAMPLE.read_bytes(), window=4096)
    fs = Filesystem(source)
    readahead = ReadAhead(fs)
    readahead.start()
    readahead.hint_inode_tables()  # not into its window
    readahead.hint_files(_files(fs), lambda inode: False)
    assert readahead.stream_hint() is not None and readahead.stream_ahead == 4096
    readahead.stop()
    assert sum(length for _, length in source.hints) <= 4096
    assert source.hints
