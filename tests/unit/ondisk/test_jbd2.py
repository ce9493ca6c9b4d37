"""jbd2 decoding (ondisk.jbd2) and the in-memory replay plan (ext4.journal) on synthetic
journals: every tag format, revokes across transactions, escapes, torn and hostile logs.

The journals here are made by a small encoder of this file; kernel-made journals, the
reference, are in tests/kernel/test_journal_kernel.py.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.errors import CipherdumpError, CorruptError, UnsupportedError
from cipherdump.ext4.journal import ReplayPlan, fast_commit_pending, plan_replay
from cipherdump.ondisk import jbd2 as J
from cipherdump.ondisk.csum import crc32c_le

BS = 1024
UUID = bytes(range(16))
V2, V3, B64 = (
    J.JBD2_FEATURE_INCOMPAT_CSUM_V2,
    J.JBD2_FEATURE_INCOMPAT_CSUM_V3,
    J.JBD2_FEATURE_INCOMPAT_64BIT,
)
REVOKE = J.JBD2_FEATURE_INCOMPAT_REVOKE
MAGIC = struct.pack(">I", J.JBD2_MAGIC_NUMBER)


def crc32_be_reference(crc: int, data: bytes) -> int:
    """The kernel's bitwise crc32_be, slowly."""
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


@dataclass
class Log:
    """A journal being written: block 0 the superblock, the ring from block 1."""

    compat: int = 0
    incompat: int = REVOKE
    maxlen: int = 64
    start: int = 1
    sequence: int = 10
    num_fc: int = 0
    blocks: dict[int, bytes] = field(default_factory=dict)
    pos: int = 0
    seq: int = 0
    crc: int = 0xFFFFFFFF
    time: int = 1000

    def __post_init__(self) -> None:
        self.pos, self.seq = self.start, self.sequence

    @property
    def seed(self) -> int:
        return crc32c_le(0xFFFFFFFF, UUID)

    @property
    def csum(self) -> bool:
        return bool(self.incompat & (V2 | V3))

    def put(self, block: bytes) -> int:
        at = self.pos
        self.blocks[at] = block
        end = self.maxlen - (
            self.num_fc if self.incompat & J.JBD2_FEATURE_INCOMPAT_FAST_COMMIT else 0
        )
        self.pos = at + 1 if at + 1 < end else 1
        return at

    def header(self, kind: int, seq: int | None = None) -> bytearray:
        b = bytearray(BS)
        struct.pack_into(">III", b, 0, J.JBD2_MAGIC_NUMBER, kind, self.seq if seq is None else seq)
        return b

    def tail(self, b: bytearray) -> bytes:
        if self.csum:
            struct.pack_into(">I", b, BS - 4, 0)
            struct.pack_into(">I", b, BS - 4, crc32c_le(self.seed, bytes(b)))
        return bytes(b)

    def descriptor(self, writes: list[tuple[int, bytes]], *, same_uuid: bool = True) -> None:
        d = self.header(J.JBD2_DESCRIPTOR_BLOCK)
        at = 12
        datas = []
        for i, (blk, data) in enumerate(writes):
            flags = J.JBD2_FLAG_SAME_UUID if (same_uuid or i) else 0
            if i == len(writes) - 1:
                flags |= J.JBD2_FLAG_LAST_TAG
            if data[:4] == MAGIC:
                flags |= J.JBD2_FLAG_ESCAPE
                data = b"\0\0\0\0" + data[4:]
            c = crc32c_le(crc32c_le(self.seed, struct.pack(">I", self.seq)), data)
            hi = blk >> 32
            if self.incompat & V3:
                struct.pack_into(">IIII", d, at, blk & 0xFFFFFFFF, flags, hi, c)
            else:
                tag = struct.pack(
                    ">IHH", blk & 0xFFFFFFFF, c & 0xFFFF if self.incompat & V2 else 0, flags
                )
                if self.incompat & B64:
                    tag += struct.pack(">I", hi)
                d[at : at + len(tag)] = tag
            at += J.tag_bytes(self.incompat)
            if not flags & J.JBD2_FLAG_SAME_UUID:
                d[at : at + 16] = UUID
                at += 16
            datas.append(data)
        block = self.tail(d)
        self.crc = crc32_be_reference(self.crc, block) if self.compat else self.crc
        self.put(block)
        for data in datas:
            if self.compat:
                self.crc = crc32_be_reference(self.crc, data)
            self.put(data)

    def revoke(self, blocks: list[int]) -> None:
        r = self.header(J.JBD2_REVOKE_BLOCK)
        size = 8 if self.incompat & B64 else 4
        at = 16
        for blk in blocks:
            r[at : at + size] = blk.to_bytes(size, "big")
            at += size
        struct.pack_into(">I", r, 12, at)
        self.put(self.tail(r))

    def commit(self) -> None:
        c = self.header(J.JBD2_COMMIT_BLOCK)
        self.time += 1
        struct.pack_into(">QI", c, 48, self.time, 0)
        if self.compat:
            struct.pack_into(">BB", c, 12, J.JBD2_CRC32_CHKSUM, 4)
            struct.pack_into(">I", c, 16, self.crc)
            self.crc = 0xFFFFFFFF
        if self.csum:
            struct.pack_into(">I", c, 16, crc32c_le(self.seed, bytes(c)))
        self.put(bytes(c))
        self.seq += 1

    def superblock(self) -> bytes:
        sb = bytearray(BS)
        struct.pack_into(">III", sb, 0, J.JBD2_MAGIC_NUMBER, J.JBD2_SUPERBLOCK_V2, 0)
        struct.pack_into(">IIIIII", sb, 12, BS, self.maxlen, 1, self.sequence, self.start, 0)
        struct.pack_into(">III", sb, 0x24, self.compat, self.incompat, 0)
        sb[0x30:0x40] = UUID
        struct.pack_into(">I", sb, 0x40, 1)
        if self.csum:
            sb[0x50] = J.JBD2_CRC32C_CHKSUM
        struct.pack_into(">I", sb, 0x54, self.num_fc)
        if self.csum:
            struct.pack_into(">I", sb, 0xFC, J.journal_superblock_csum(bytes(sb)))
        return bytes(sb)

    def plan(self, fs_blocks: int = 1 << 40) -> ReplayPlan:
        jsb = J.decode_journal_superblock(self.superblock())
        return plan_replay(jsb, lambda lblk: self.blocks.get(lblk, bytes(BS)), fs_blocks)


def data(tag: int) -> bytes:
    return bytes([tag]) * BS


FORMATS = [
    pytest.param(0, REVOKE, id="32bit"),
    pytest.param(0, REVOKE | B64, id="64bit"),
    pytest.param(J.JBD2_FEATURE_COMPAT_CHECKSUM, REVOKE, id="csum-v1-32bit"),
    pytest.param(J.JBD2_FEATURE_COMPAT_CHECKSUM, REVOKE | B64, id="csum-v1-64bit"),
    pytest.param(0, REVOKE | V2, id="csum-v2-32bit"),
    pytest.param(0, REVOKE | V2 | B64, id="csum-v2-64bit"),
    pytest.param(0, REVOKE | V3, id="csum-v3-32bit"),
    pytest.param(0, REVOKE | V3 | B64, id="csum-v3-64bit"),
]


def test_tag_bytes_as_the_kernel_sizes_them() -> None:
    assert J.tag_bytes(0) == 8
    assert J.tag_bytes(B64) == 12
    assert J.tag_bytes(V2) == 10
    assert J.tag_bytes(V2 | B64) == 14
    assert J.tag_bytes(V3) == J.tag_bytes(V3 | B64) == 16


@given(st.integers(0, 0xFFFFFFFF), st.binary(max_size=64))
def test_crc32_be_is_the_kernels(crc: int, blob: bytes) -> None:
    assert J.crc32_be(crc, blob) == crc32_be_reference(crc, blob)


@pytest.mark.parametrize(("compat", "incompat"), FORMATS)
def test_every_tag_format_replays(compat: int, incompat: int) -> None:
    log = Log(compat=compat, incompat=incompat)
    big = (5 << 32) + 7 if incompat & B64 else 7
    log.descriptor([(3, data(1)), (big, data(2))], same_uuid=False)
    log.commit()
    log.descriptor([(3, data(3)), (4, MAGIC + data(4)[4:])])
    log.commit()
    plan = log.plan()
    assert plan.warnings == ()
    assert plan.transactions == 2 and plan.replayed == 4
    assert plan.first_transaction == 10 and plan.end_transaction == 12
    # The later copy of block 3 wins; the escaped block is marked for its magic.
    assert log.blocks[plan.overlay[3][0]] == data(3)
    assert log.blocks[plan.overlay[big][0]] == data(2)
    lblk, escaped = plan.overlay[4]
    assert escaped and log.blocks[lblk][:4] == b"\0\0\0\0"


@pytest.mark.parametrize(("compat", "incompat"), FORMATS)
def test_revokes_hide_copies_up_to_their_transaction(compat: int, incompat: int) -> None:
    log = Log(compat=compat, incompat=incompat)
    log.descriptor([(3, data(1)), (4, data(1)), (5, data(1))])
    log.commit()
    log.revoke([3, 4])  # transaction 11 revokes 3 and 4, 12 writes 4 again
    log.commit()
    log.descriptor([(4, data(2))])
    log.commit()
    log.revoke([5])  # in the uncommitted transaction 13: not applied
    log.descriptor([(6, data(3))])
    plan = log.plan()
    assert plan.transactions == 3 and plan.discarded_blocks == 1
    assert 3 not in plan.overlay
    assert log.blocks[plan.overlay[4][0]] == data(2)
    assert 5 in plan.overlay and 6 not in plan.overlay
    assert plan.revokes == 2 and plan.revoke_hits == 2


def test_the_log_wraps_to_s_first() -> None:
    log = Log(incompat=REVOKE | V3, maxlen=16, start=12)
    for i in range(3):  # 12 blocks in a ring of 15 from block 12
        log.descriptor([(100 + i, data(i)), (200 + i, data(i + 8))])
        log.commit()
    plan = log.plan()
    assert plan.transactions == 3 and plan.warnings == ()
    assert {log.blocks[plan.overlay[100 + i][0]][0] for i in range(3)} == {0, 1, 2}
    assert min(lblk for lblk, _ in plan.overlay.values()) == 2  # after s_first


def test_the_log_ends_before_the_fast_commit_area() -> None:
    fc = J.JBD2_FEATURE_INCOMPAT_FAST_COMMIT
    log = Log(incompat=REVOKE | V3 | fc, maxlen=20, start=12, num_fc=4)
    log.descriptor([(100, data(1)), (101, data(2))])
    log.commit()
    log.descriptor([(102, data(3))])
    log.commit()
    assert max(log.blocks) == 15  # the ring is [1, 16)
    plan = log.plan()
    assert plan.transactions == 2 and plan.overlay[102][0] == 2
    head = struct.pack("<HHII", 9, 8, 0, plan.end_transaction)
    jsb = J.decode_journal_superblock(log.superblock())
    assert jsb.log_end == 16
    assert fast_commit_pending(jsb, head + bytes(BS - 12), plan.end_transaction)
    stale = struct.pack("<HHII", 9, 8, 0, plan.end_transaction - 1)
    assert not fast_commit_pending(jsb, stale + bytes(BS - 12), plan.end_transaction)


@pytest.mark.parametrize("incompat", [REVOKE | V2, REVOKE | V3])
def test_a_bad_data_copy_is_left_out_and_named(incompat: int) -> None:
    log = Log(incompat=incompat)
    log.descriptor([(3, data(1)), (4, data(1))])
    log.commit()
    log.blocks[3] = data(9)  # the copy of block 4
    plan = log.plan()
    assert 3 in plan.overlay and 4 not in plan.overlay
    assert any("block 4 in transaction 10" in w for w in plan.warnings)


@pytest.mark.parametrize("incompat", [REVOKE | V2, REVOKE | V3])
def test_a_bad_commit_checksum_ends_the_replay_before_it(incompat: int) -> None:
    log = Log(incompat=incompat)
    log.descriptor([(3, data(1))])
    log.commit()
    log.descriptor([(4, data(2))])
    log.commit()
    commit = bytearray(log.blocks[6])
    commit[40] ^= 1
    log.blocks[6] = bytes(commit)
    plan = log.plan()
    assert plan.transactions == 1 and 4 not in plan.overlay
    assert any("transaction 11" in w and "commit block" in w for w in plan.warnings)


def test_a_bad_v1_checksum_ends_the_replay_before_it() -> None:
    log = Log(compat=J.JBD2_FEATURE_COMPAT_CHECKSUM)
    log.descriptor([(3, data(1))])
    log.commit()
    log.descriptor([(4, data(2))])
    log.commit()
    log.blocks[5] = data(7)  # transaction 11's data: its commit's crc32_be no longer adds up
    plan = log.plan()
    assert plan.transactions == 1 and set(plan.overlay) == {3}
    assert plan.warnings


def test_a_bad_descriptor_checksum_with_a_newer_commit_stops_with_a_warning() -> None:
    log = Log(incompat=REVOKE | V3)
    log.descriptor([(3, data(1))])
    log.commit()
    log.descriptor([(4, data(2))])
    log.commit()
    desc = bytearray(log.blocks[4])
    desc[100] ^= 1
    log.blocks[4] = bytes(desc)
    plan = log.plan()
    assert plan.transactions == 1 and any("fails its checksum" in w for w in plan.warnings)


def test_an_uncommitted_last_transaction_is_discarded_silently() -> None:
    log = Log(incompat=REVOKE | V3)
    log.descriptor([(3, data(1))])
    log.commit()
    log.descriptor([(4, data(2)), (5, data(2))])
    plan = log.plan()
    assert plan.transactions == 1 and plan.discarded_blocks == 2 and plan.warnings == ()


def test_hostile_block_numbers_and_counts_end_the_replay() -> None:
    log = Log(incompat=REVOKE | V3)
    log.descriptor([(3, data(1))])
    log.commit()
    log.descriptor([(1 << 20, data(2))])
    log.commit()
    plan = log.plan(fs_blocks=1000)
    assert plan.transactions == 1 and any("outside the filesystem" in w for w in plan.warnings)
    log = Log(incompat=REVOKE)
    r = log.header(J.JBD2_REVOKE_BLOCK)
    struct.pack_into(">I", r, 12, 5000)
    log.put(bytes(r))
    log.commit()
    plan = log.plan()
    assert plan.transactions == 0 and any("r_count" in w for w in plan.warnings)


def test_a_log_of_only_descriptors_all_round_the_ring_stops() -> None:
    log = Log(incompat=REVOKE, maxlen=8)
    blocks = {
        i: bytes(log.header(J.JBD2_DESCRIPTOR_BLOCK, 10)[:12]) + bytes(BS - 12) for i in range(8)
    }
    jsb = J.decode_journal_superblock(log.superblock())
    # Tags of block 0 with neither LAST_TAG nor SAME_UUID: one tag per 24 bytes.
    plan = plan_replay(jsb, lambda n: blocks[n], 1 << 20)
    assert plan.transactions == 0 and plan.warnings


def test_superblock_checks() -> None:
    log = Log(incompat=REVOKE | V3)
    good = log.superblock()
    assert J.decode_journal_superblock(good).csum_v2or3
    bad = bytearray(good)
    bad[0x40] ^= 1
    with pytest.raises(CorruptError, match="checksum"):
        J.decode_journal_superblock(bytes(bad))
    with pytest.raises(UnsupportedError):
        J.decode_journal_superblock(Log(incompat=REVOKE | 0x400).superblock())
    with pytest.raises(CorruptError, match="both"):
        J.decode_journal_superblock(Log(incompat=V2 | V3).superblock())
    v1 = bytearray(Log(incompat=0x400).superblock())
    struct.pack_into(">I", v1, 4, J.JBD2_SUPERBLOCK_V1)
    assert J.decode_journal_superblock(bytes(v1)).s_feature_incompat == 0  # v1: no features
    with pytest.raises(CorruptError, match="log start"):
        J.decode_journal_superblock(Log(start=64).superblock())


def test_commit_header_fields() -> None:
    log = Log(compat=J.JBD2_FEATURE_COMPAT_CHECKSUM)
    log.descriptor([(3, data(1))])
    log.commit()
    c = J.decode_commit(log.blocks[3])
    assert c.h_sequence == 10 and c.h_commit_sec == 1001
    assert c.h_chksum_type == J.JBD2_CRC32_CHKSUM and c.h_chksum_size == 4
    assert c.h_chksum[0] == J.crc32_be(J.crc32_be(0xFFFFFFFF, log.blocks[1]), log.blocks[2])
    assert zlib.crc32(b"") == 0  # keep zlib imported for the reference's sake


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=BS), st.integers(0, 0x3F))
def test_arbitrary_blocks_raise_only_cipherdump_errors(raw: bytes, incompat: int) -> None:
    for decode in (
        J.decode_journal_superblock,
        J.decode_commit,
        lambda b: J.decode_revoke(b, incompat),
        lambda b: J.decode_descriptor_tags(b, incompat),
        J.decode_header,
    ):
        with contextlib.suppress(CipherdumpError):
            decode(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0, REVOKE | B64, REVOKE | V2, REVOKE | V3 | B64]),
    st.lists(
        st.tuples(st.integers(1, 31), st.integers(0, BS - 1), st.integers(0, 255)), max_size=8
    ),
)
def test_mutated_logs_never_raise(incompat: int, flips: list[tuple[int, int, int]]) -> None:
    log = Log(incompat=incompat, maxlen=32, start=20)
    for i in range(5):
        log.descriptor([(i, data(i)), (50 + i, MAGIC + data(i)[4:])])
        if i % 2:
            log.revoke([i - 1, 77])
        log.commit()
    for lblk, at, value in flips:
        b = bytearray(log.blocks.get(lblk, bytes(BS)))
        b[at] = value
        log.blocks[lblk] = bytes(b)
    plan = log.plan(fs_blocks=1000)
    assert plan.transactions <= 5
    assert all(0 <= blk < 1000 for blk in plan.overlay)
