"""An unmounted ext4 image opened for writing: bitmaps, descriptors, counts, commit.

The writer loads the superblock, every group descriptor and (lazily) the bitmaps into
memory, allocates from them, and writes everything back with its checksums on
:meth:`ImageWriter.commit`.  Inode records, extent blocks, directory and data blocks go
straight to the image as they are made, into blocks the on-disk bitmaps call free and,
where the image has them, inode slots in a group's unused tail (``bg_itable_unused``),
which e2fsck and the kernel do not look at: until the commit nothing on disk refers
to what was written.  Records of *held* inodes (the directory that links the new tree
in) wait for the commit, which orders its writes so that a kill at any point leaves
the previous content intact (see :meth:`ImageWriter.commit`).
"""

from __future__ import annotations

import re
import struct

from cipherdump.blockio import Closable, FileSink
from cipherdump.errors import CipherdumpError, InputError, UnsupportedError
from cipherdump.ext4.fs import Filesystem
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import crc32c_le, inode_csum_seed
from cipherdump.ondisk.groupdesc import (
    EXT4_BG_BLOCK_UNINIT,
    EXT4_BG_INODE_UNINIT,
    bitmap_csums_set,
    group_desc_csum_set,
    set_group_counts,
)
from cipherdump.ondisk.inode import inode_csum_set
from cipherdump.ondisk.superblock import SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, superblock_csum_set

_NOT_FULL = re.compile(b"[^\xff]")
_NOT_EMPTY = re.compile(b"[^\x00]")


class NoSpaceError(CipherdumpError):
    """The target image has no room left (blocks or inodes)."""


class _Group:
    __slots__ = ("block_bitmap", "dirty", "flags", "free_blocks", "free_inodes", "hidden_dirs",
                 "hidden_inodes", "inode_bitmap", "used_dirs")  # fmt: skip

    def __init__(self) -> None:
        self.block_bitmap: bytearray | None = None
        self.inode_bitmap: bytearray | None = None
        self.dirty = False
        self.flags = 0
        self.free_blocks = 0
        self.free_inodes = 0
        self.used_dirs = 0
        # Inodes (and directories) taken in the group's unused tail: the descriptor
        # counts them only once the tail is lowered over them.
        self.hidden_inodes = 0
        self.hidden_dirs = 0


class ImageWriter(Closable):
    """Allocation state and raw writes of one image.  Use as a context manager."""

    def __init__(self, path: str) -> None:
        self.sink = FileSink(path)
        try:
            self.fs = Filesystem(self.sink)
            self._check()
        except BaseException:
            self.sink.close()
            raise
        sb = self.fs.sb
        self.sb = sb
        self.block_size = sb.block_size
        self.inode_size = sb.inode_size
        self.csum_seed = self.fs.csum_seed
        self.metadata_csum = sb.metadata_csum
        self.gdt_csum = sb.metadata_csum or sb.has_ro_compat(F.RO_COMPAT_GDT_CSUM)
        # 32 bytes of extra fields hold every one the writer sets (times, crtime, projid).
        self.extra_isize = 32 if self.inode_size >= 160 else 0
        self.groups: list[_Group] = []
        for gd in self.fs.groups:
            g = _Group()
            g.flags = gd.bg_flags
            g.free_blocks = gd.bg_free_blocks_count
            g.free_inodes = gd.bg_free_inodes_count
            g.used_dirs = gd.bg_used_dirs_count
            self.groups.append(g)
        self._sb_raw = bytearray(sb.raw)
        self._block_cursor = 0
        self._inode_cursor = sb.first_ino  # next hidden slot to try
        self._visible_cursor = sb.first_ino  # next slot of any kind, once those run out
        self.reserved_inodes: set[int] = set()
        self._held: dict[int, bytes | None] = {}
        self._free_later: list[tuple[int, int]] = []

    def _check(self) -> None:
        sb = self.fs.sb
        if self.fs.needs_recovery:
            raise InputError(f"{self.sink.name}: the journal needs recovery; run e2fsck first")
        if sb.has_ro_compat(F.RO_COMPAT_BIGALLOC):
            raise UnsupportedError("writing to bigalloc filesystems is not supported")
        if sb.has_incompat(F.INCOMPAT_META_BG):
            raise UnsupportedError("writing to meta_bg filesystems is not supported")
        if not sb.has_incompat(F.INCOMPAT_EXTENTS):
            raise UnsupportedError("the target filesystem lacks the extent feature")
        if self.fs.warnings:
            raise InputError(f"{self.sink.name}: " + "; ".join(self.fs.warnings))

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        self.sink.close()

    # -- geometry ----------------------------------------------------------------------
    @property
    def blocks_per_group(self) -> int:
        return self.sb.s_blocks_per_group

    @property
    def inodes_per_group(self) -> int:
        return self.sb.s_inodes_per_group

    def group_start(self, g: int) -> int:
        return self.sb.s_first_data_block + g * self.blocks_per_group

    def group_blocks(self, g: int) -> int:
        return min(self.blocks_per_group, self.sb.s_blocks_count - self.group_start(g))

    @property
    def free_blocks(self) -> int:
        return sum(g.free_blocks for g in self.groups)

    @property
    def free_inodes(self) -> int:
        return sum(g.free_inodes for g in self.groups)

    # -- bitmaps -----------------------------------------------------------------------
    def _block_bitmap(self, g: int) -> bytearray:
        grp = self.groups[g]
        if grp.block_bitmap is None:
            bs = self.block_size
            if grp.flags & EXT4_BG_BLOCK_UNINIT and self.gdt_csum:
                grp.block_bitmap = self._uninit_block_bitmap(g)
            else:
                grp.block_bitmap = bytearray(self.fs.read_block(self.fs.groups[g].bg_block_bitmap))
            # Bits past the group's blocks, up to the bitmap block's end, are always set.
            self._set_bits(grp.block_bitmap, self.group_blocks(g), bs * 8)
        return grp.block_bitmap

    def _uninit_block_bitmap(self, g: int) -> bytearray:
        """What a BLOCK_UNINIT group's bitmap means: its own metadata blocks in use."""
        fs, sb = self.fs, self.sb
        bm = bytearray(self.block_size)
        start = self.group_start(g)
        end = start + self.group_blocks(g)
        if fs.group_has_super(g):
            per = self.block_size // sb.desc_size
            gdt = (sb.group_count + per - 1) // per
            self._set_bits(bm, 0, 1 + gdt + sb.s_reserved_gdt_blocks)
        itable_blocks = -(-self.inodes_per_group * self.inode_size // self.block_size)
        for gd in fs.groups:
            for blk, n in (
                (gd.bg_block_bitmap, 1),
                (gd.bg_inode_bitmap, 1),
                (gd.bg_inode_table, itable_blocks),
            ):
                lo, hi = max(blk, start), min(blk + n, end)
                if lo < hi:
                    self._set_bits(bm, lo - start, hi - start)
        return bm

    def _inode_bitmap(self, g: int) -> bytearray:
        grp = self.groups[g]
        if grp.inode_bitmap is None:
            if grp.flags & EXT4_BG_INODE_UNINIT and self.gdt_csum:
                grp.inode_bitmap = bytearray(self.block_size)
            else:
                grp.inode_bitmap = bytearray(self.fs.read_block(self.fs.groups[g].bg_inode_bitmap))
                if self.gdt_csum:
                    # Nothing in the unused tail is in use; a bit set there is left by a
                    # run killed before its commit, and its inode is free again.
                    tail = self.inodes_per_group - self.fs.groups[g].bg_itable_unused
                    self._set_bits(grp.inode_bitmap, tail, self.inodes_per_group, value=False)
            self._set_bits(grp.inode_bitmap, self.inodes_per_group, self.block_size * 8)
        return grp.inode_bitmap

    @staticmethod
    def _set_bits(bm: bytearray, lo: int, hi: int, value: bool = True) -> None:
        i = lo
        while i < hi and i & 7:
            bm[i >> 3] = bm[i >> 3] | (1 << (i & 7)) if value else bm[i >> 3] & ~(1 << (i & 7))
            i += 1
        whole = (hi - i) >> 3
        if whole > 0:
            bm[i >> 3 : (i >> 3) + whole] = (b"\xff" if value else b"\0") * whole
            i += whole << 3
        while i < hi:
            bm[i >> 3] = bm[i >> 3] | (1 << (i & 7)) if value else bm[i >> 3] & ~(1 << (i & 7))
            i += 1

    # -- inode allocation ---------------------------------------------------------------
    def inode_is_free(self, ino: int) -> bool:
        if ino < 1 or ino > self.sb.s_inodes_count:
            return False
        g, i = divmod(ino - 1, self.inodes_per_group)
        return not self._inode_bitmap(g)[i >> 3] >> (i & 7) & 1

    def inode_is_hidden(self, ino: int) -> bool:
        """Whether ``ino`` lies where e2fsck and the kernel do not look before the commit:
        in its group's unused tail of the inode table as the image has it on disk."""
        if not self.gdt_csum:
            return False
        g, i = divmod(ino - 1, self.inodes_per_group)
        gd = self.fs.groups[g]
        if gd.bg_flags & EXT4_BG_INODE_UNINIT:
            return True
        return i >= self.inodes_per_group - gd.bg_itable_unused

    def alloc_inode(self, want: int | None, *, is_dir: bool, exact: bool = False) -> int:
        """Take inode ``want`` if it is free (and not reserved for another), else any.

        A free slot below a group's unused tail (a deleted file's) is taken only when
        ``exact`` asks for that number or no hidden slot is left: a record written there
        is seen by e2fsck at once, as an unattached inode until the commit links it.
        """
        if (
            want is not None
            and want >= self.sb.first_ino
            and self.inode_is_free(want)
            and (exact or self.inode_is_hidden(want))
        ):
            self._take_inode(want, is_dir)
            return want
        for hidden_only in (True, False):
            ino = self._find_inode(hidden_only)
            if ino is not None:
                self._take_inode(ino, is_dir)
                return ino
        raise NoSpaceError(f"{self.sink.name}: no free inode left")

    def _find_inode(self, hidden_only: bool) -> int | None:
        ino = self._inode_cursor if hidden_only else self._visible_cursor
        limit = self.sb.s_inodes_count
        while ino <= limit:
            g = (ino - 1) // self.inodes_per_group
            grp = self.groups[g]
            if grp.free_inodes == 0:
                ino = (g + 1) * self.inodes_per_group + 1
                continue
            if (
                ino not in self.reserved_inodes
                and self.inode_is_free(ino)
                and (not hidden_only or self.inode_is_hidden(ino))
            ):
                if hidden_only:
                    self._inode_cursor = ino + 1
                else:
                    self._visible_cursor = ino + 1
                return ino
            ino += 1
        return None

    def _take_inode(self, ino: int, is_dir: bool) -> None:
        g, i = divmod(ino - 1, self.inodes_per_group)
        bm = self._inode_bitmap(g)
        bm[i >> 3] |= 1 << (i & 7)
        grp = self.groups[g]
        grp.free_inodes -= 1
        if is_dir:
            grp.used_dirs += 1
        if self.inode_is_hidden(ino):
            grp.hidden_inodes += 1
            grp.hidden_dirs += is_dir
        grp.dirty = True

    # -- block allocation ----------------------------------------------------------------
    def alloc_blocks(self, count: int, goal: int | None = None) -> list[tuple[int, int]]:
        """``count`` blocks as ``(start, length)`` runs, contiguous where possible."""
        out: list[tuple[int, int]] = []
        if count <= 0:
            return out
        if count > self.free_blocks:
            raise NoSpaceError(
                f"{self.sink.name}: needs {count} more blocks, {self.free_blocks} are free"
            )
        pos = self._block_cursor if goal is None else goal
        ngroups = len(self.groups)
        first = self.sb.s_first_data_block
        pos = max(pos, first)
        scanned = 0
        while count:
            g = (pos - first) // self.blocks_per_group
            if g >= ngroups:
                g, pos = 0, first
            grp = self.groups[g]
            if grp.free_blocks == 0:
                pos = self.group_start(g + 1)
                scanned += 1
                if scanned > 2 * ngroups + 2:
                    raise NoSpaceError(f"{self.sink.name}: no free block left")
                continue
            bm = self._block_bitmap(g)
            nbits = self.group_blocks(g)
            bit = pos - self.group_start(g)
            found = self._find_free(bm, bit, nbits)
            if found is None:
                pos = self.group_start(g + 1)
                scanned += 1
                if scanned > 2 * ngroups + 2:
                    raise NoSpaceError(f"{self.sink.name}: no free block left")
                continue
            run_end = self._run_end(bm, found, min(nbits, found + count))
            n = run_end - found
            self._set_bits(bm, found, run_end)
            grp.free_blocks -= n
            grp.flags &= ~EXT4_BG_BLOCK_UNINIT
            grp.dirty = True
            start = self.group_start(g) + found
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((start, n))
            count -= n
            pos = start + n
        self._block_cursor = pos
        return out

    def free_after_commit(self, start: int, length: int) -> None:
        """Free a run only once the held records no longer point to it."""
        self._free_later.append((start, length))

    def free_block_run(self, start: int, length: int) -> None:
        while length:
            g = (start - self.sb.s_first_data_block) // self.blocks_per_group
            bit = start - self.group_start(g)
            n = min(length, self.group_blocks(g) - bit)
            self._set_bits(self._block_bitmap(g), bit, bit + n, value=False)
            self.groups[g].free_blocks += n
            self.groups[g].dirty = True
            start += n
            length -= n

    @staticmethod
    def _find_free(bm: bytearray, bit: int, nbits: int) -> int | None:
        while bit < nbits:
            if bit & 7:
                if not bm[bit >> 3] >> (bit & 7) & 1:
                    return bit
                bit += 1
                continue
            m = _NOT_FULL.search(bm, bit >> 3, (nbits + 7) >> 3)
            if m is None:
                return None
            byte = bm[m.start()]
            bit = m.start() << 3
            while byte & 1:
                byte >>= 1
                bit += 1
            return bit if bit < nbits else None
        return None

    @staticmethod
    def _run_end(bm: bytearray, bit: int, limit: int) -> int:
        while bit < limit:
            if bit & 7 == 0:
                m = _NOT_EMPTY.search(bm, bit >> 3, (limit + 7) >> 3)
                nxt = limit if m is None else m.start() << 3
                if nxt > bit:
                    bit = min(nxt, limit)
                    continue
            if bm[bit >> 3] >> (bit & 7) & 1:
                return bit
            bit += 1
        return limit

    # -- raw writes ----------------------------------------------------------------------
    def write_blocks(self, pblk: int, data: bytes | bytearray | memoryview) -> None:
        self.sink.write_at(pblk * self.block_size, data)

    def read_block(self, pblk: int) -> bytes:
        return self.fs.read_block(pblk)

    def inode_offset(self, ino: int) -> int:
        g, i = divmod(ino - 1, self.inodes_per_group)
        return self.fs.groups[g].bg_inode_table * self.block_size + i * self.inode_size

    def inode_seed(self, ino: int, generation: int) -> int:
        return inode_csum_seed(self.csum_seed, ino, generation)

    def hold_inode(self, ino: int) -> None:
        """Keep the records of ``ino`` in memory until :meth:`commit` writes them last."""
        self._held.setdefault(ino, None)

    def write_inode_record(self, ino: int, record: bytearray, generation: int) -> None:
        if self.metadata_csum:
            inode_csum_set(record, self.inode_seed(ino, generation), self.inode_size)
        self.write_raw_inode(ino, bytes(record))

    def write_raw_inode(self, ino: int, record: bytes) -> None:
        if ino in self._held:
            self._held[ino] = bytes(record)
            return
        self.sink.write_at(self.inode_offset(ino), record)

    def read_inode_record(self, ino: int) -> bytearray:
        held = self._held.get(ino)
        if held is not None:
            return bytearray(held)
        return bytearray(self.sink.read_at(self.inode_offset(ino), self.inode_size))

    # -- superblock fields ---------------------------------------------------------------
    def set_hash_params(self, seed: bytes, def_hash_version: int, s_flags_hash: int) -> None:
        """Make the target hash names as the source did (so no-key names stay equal)."""
        self._sb_raw[0xEC:0xFC] = seed
        self._sb_raw[0xFC] = def_hash_version
        (flags,) = struct.unpack_from("<I", self._sb_raw, 0x160)
        flags = (flags & ~3) | (s_flags_hash & 3)
        struct.pack_into("<I", self._sb_raw, 0x160, flags)

    @property
    def hash_seed(self) -> bytes:
        return bytes(self._sb_raw[0xEC:0xFC])

    @property
    def def_hash_version(self) -> int:
        return self._sb_raw[0xFC]

    @property
    def hash_signed(self) -> bool:
        (flags,) = struct.unpack_from("<I", self._sb_raw, 0x160)
        return not flags & 2

    # -- commit ------------------------------------------------------------------------
    def commit(self) -> None:
        """Make what was written part of the filesystem, in an order a kill cannot hurt.

        1. fsync: every new block and inode record is on disk; nothing refers to them.
        2. Bitmaps, descriptors (counts, flags, checksums) and superblock counters, with
           each group's unused tail left as it was, so that new inodes stay out of
           sight; fsync.  Killed here, e2fsck only finds blocks and inodes marked in use
           that nothing uses, and counts to lower (space leaked, nothing else).
        3. The held records: one inode-sized write links the new tree in; fsync.
        4. The unused tails lowered over the new inodes and the runs the held records
           no longer use freed; fsync.  Killed between 3 and 4, e2fsck finds entries
           that name inodes in an unused tail: it lowers ``bg_itable_unused``, starts
           again and then only frees the old runs (``e2fsck -p`` does all of it).

        Each step writes only the blocks it changes, so that the window of step 4 is
        the write of the descriptor blocks.
        """
        self._clear_revealed_slots()
        self.sink.sync()
        self._flush(reveal=False)
        self.sink.sync()
        held, self._held = self._held, {}
        for ino, record in held.items():
            if record is not None:
                self.sink.write_at(self.inode_offset(ino), record)
        self.sink.sync()
        # One descriptor block per 16 to 128 groups: usually a single write reveals all.
        self._flush(reveal=True)
        self.sink.sync()
        if self._free_later:
            for start, length in self._free_later:
                self.free_block_run(start, length)
            self._free_later.clear()
            self._flush(reveal=True)
            self.sink.sync()

    def _clear_revealed_slots(self) -> None:
        """Zero the free slots that lowering a tail will uncover (a killed run's records,
        or whatever an image never initialised): e2fsck would take them for inodes."""
        ipg, isz = self.inodes_per_group, self.inode_size
        for g, grp in enumerate(self.groups):
            if not grp.dirty or not self.gdt_csum:
                continue
            gd = self.fs.groups[g]
            start = 0 if gd.bg_flags & EXT4_BG_INODE_UNINIT else ipg - gd.bg_itable_unused
            ibm = self._inode_bitmap(g)
            end = self._last_used(ibm) + 1
            if end <= start:
                continue
            base = gd.bg_inode_table * self.block_size
            table = self.sink.read_at(base + start * isz, (end - start) * isz)
            for i in range(start, end):
                if ibm[i >> 3] >> (i & 7) & 1:
                    continue
                rec = table[(i - start) * isz : (i - start + 1) * isz]
                if _NOT_EMPTY.search(rec):
                    self.sink.write_at(base + i * isz, bytes(isz))

    def _last_used(self, ibm: bytearray) -> int:
        used = ibm[: self.inodes_per_group // 8]
        nonzero = len(used.rstrip(b"\0"))
        if not nonzero:
            return -1
        return ((nonzero - 1) << 3) + used[nonzero - 1].bit_length() - 1

    def _flush(self, *, reveal: bool) -> None:
        """Write bitmaps, descriptors and the superblock with their checksums; with
        ``reveal`` False each group's ``bg_itable_unused`` stays as it is on disk."""
        sb = self.sb
        ds = sb.desc_size
        per_block = self.block_size // ds
        gdt: dict[int, bytearray] = {}
        for g, grp in enumerate(self.groups):
            if not grp.dirty:
                continue
            blk_index, slot = divmod(g, per_block)
            if blk_index not in gdt:
                gdt[blk_index] = bytearray(self.read_block(self.fs.group_desc_block(blk_index)))
            raw = memoryview(gdt[blk_index])[slot * ds : (slot + 1) * ds]
            desc = bytearray(raw)
            gd = self.fs.groups[g]
            bbm = self._block_bitmap(g)
            ibm = self._inode_bitmap(g)
            self._write_changed(gd.bg_block_bitmap, bbm)
            self._write_changed(gd.bg_inode_bitmap, ibm)
            ipg = self.inodes_per_group
            used = ibm[: ipg // 8]
            # The highest inode in use decides how much of the table is unused.
            last = self._last_used(ibm)
            flags = grp.flags
            if last >= 0:
                flags &= ~EXT4_BG_INODE_UNINIT
            if sb.metadata_csum:
                bcsum = crc32c_le(self.csum_seed, bytes(bbm[: self.blocks_per_group // 8]))
                icsum = crc32c_le(self.csum_seed, bytes(used))
                bitmap_csums_set(desc, ds, block_bitmap_csum=bcsum, inode_bitmap_csum=icsum)
            unused = ipg - (last + 1) if self.gdt_csum else 0
            if flags & EXT4_BG_INODE_UNINIT:
                unused = ipg
            free_inodes, used_dirs = grp.free_inodes, grp.used_dirs
            if not reveal:
                # New inodes stay in the tail until the link to them is on disk (a group
                # that was INODE_UNINIT has a tail of the whole table), and out of the
                # counts too: e2fsck wants no more unused inodes than free ones.  Their
                # bits are set, so that nothing else takes them meanwhile.
                old = self.fs.groups[g]
                on_disk = ipg if old.bg_flags & EXT4_BG_INODE_UNINIT else old.bg_itable_unused
                unused = max(unused, on_disk) if self.gdt_csum else 0
                free_inodes += grp.hidden_inodes
                used_dirs -= grp.hidden_dirs
            set_group_counts(
                desc, ds, free_blocks=grp.free_blocks, free_inodes=free_inodes,
                used_dirs=used_dirs, flags=flags, itable_unused=unused,
            )  # fmt: skip
            if self.gdt_csum:
                group_desc_csum_set(
                    desc, g, metadata_csum=sb.metadata_csum, csum_seed=self.csum_seed,
                    uuid=sb.s_uuid,
                )  # fmt: skip
            raw[:] = desc
        for blk_index, data in gdt.items():
            self._write_changed(self.fs.group_desc_block(blk_index), data)
        raw_sb = self._sb_raw
        free_blocks = self.free_blocks
        struct.pack_into("<I", raw_sb, 0x0C, free_blocks & 0xFFFFFFFF)
        if sb.is_64bit:
            struct.pack_into("<I", raw_sb, 0x158, free_blocks >> 32)
        hidden = 0 if reveal else sum(g.hidden_inodes for g in self.groups)
        struct.pack_into("<I", raw_sb, 0x10, self.free_inodes + hidden)
        if sb.metadata_csum:
            superblock_csum_set(raw_sb)
        new_sb = bytes(raw_sb[:SUPERBLOCK_SIZE])
        if self.sink.read_at(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE) != new_sb:
            self.sink.write_at(SUPERBLOCK_OFFSET, new_sb)

    def _write_changed(self, pblk: int, data: bytes | bytearray) -> None:
        if self.sink.read_at(pblk * self.block_size, len(data)) != data:
            self.write_blocks(pblk, data)
