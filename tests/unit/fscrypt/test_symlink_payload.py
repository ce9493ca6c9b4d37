"""Encrypted symlink payloads and ciphertext lengths, against kernel-made images.

``shared/testdata/kernel-vectors`` records, for 111 symlinks the kernel created, the
stored bytes (``le16 len | ciphertext | NUL``), ``i_size``, whether the link is fast,
and the target, so the length rule of section 6.1 is checked on the kernel's output
as well (for names too: every entry's ``name_len`` against its plaintext length).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.errors import CorruptError
from cipherdump.fscrypt.names import FNAME_MIN_MSG_LEN, NAME_MAX, ciphertext_name_length
from cipherdump.fscrypt.symlink import (
    FAST_SYMLINK_AREA,
    decode_encrypted_symlink,
    encode_encrypted_symlink,
    is_fast_symlink_payload,
    max_symlink_ciphertext,
    symlink_ciphertext_length,
)
from shared_data import SHARED_TESTDATA

TESTDATA = SHARED_TESTDATA
VECTORS = TESTDATA / "kernel-vectors"


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _scenario_params() -> list[Any]:
    files = []
    if VECTORS.is_dir():
        files = [
            p
            for p in sorted(VECTORS.glob("*__*.json"))
            if not p.name.endswith("__image.json") and _load(p).get("entries")
        ]
    return [pytest.param(p, id=p.stem) for p in files] or [pytest.param(None, id="no-vectors")]


def _scenario(path: Path | None) -> tuple[int, int, Any]:
    """Block size, filename padding and the scenario data."""
    if path is None or not path.exists():
        pytest.skip(f"kernel test vectors not found at {VECTORS}")
    image = _load(path.with_name(path.name.split("__")[0] + "__image.json"))
    data = _load(path)
    padding = 4 << (int(data["policy"]["flags"], 16) & 3)
    return image["block_size"], padding, data


# --- kernel-made symlinks ---


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_symlinks(path: Path | None) -> None:
    block_size, padding, data = _scenario(path)
    symlinks = [o for o in data["objects"].values() if "symlink" in o]
    assert symlinks
    for obj in symlinks:
        link = obj["symlink"]
        stored = bytes.fromhex(link["stored_hex_i_size_plus_1"])
        i_size = obj["i_size"]
        ct = decode_encrypted_symlink(stored, i_size, block_size)
        assert len(ct) == link["le16_len_prefix"] == i_size - 2
        assert stored == encode_encrypted_symlink(ct)
        fast = link["storage"].startswith("fast")
        assert is_fast_symlink_payload(len(ct)) == fast
        # The same bytes as the whole storage area: i_block, or the zero-filled block.
        area = FAST_SYMLINK_AREA if fast else block_size
        assert decode_encrypted_symlink(stored.ljust(area, b"\0"), i_size, block_size) == ct
        target_len = len(link["target"].encode())
        assert target_len == link["target_len"] == link["with_key_lstat_size"]
        assert symlink_ciphertext_length(target_len, padding, block_size) == len(ct)


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_name_lengths(path: Path | None) -> None:
    """Section 6.1 on every name the kernel wrote (``name_len`` of each dirent)."""
    _, padding, data = _scenario(path)
    for entry in data["entries"]:
        assert entry["name_len"] == len(bytes.fromhex(entry["ciphertext_hex"]))
        assert ciphertext_name_length(entry["plaintext_len"], padding) == entry["name_len"]
    for entry in (data.get("htree") or {}).get("entries", []):
        plain_len = len(entry["plaintext"].encode())
        ct_len = len(bytes.fromhex(entry["ciphertext_hex"]))
        assert ciphertext_name_length(plain_len, padding) == ct_len


def test_kernel_longest_symlinks() -> None:
    """The kernel's limits: 4093 bytes of target on 4 KiB blocks, 1021 on 1 KiB."""
    found = 0
    for path, block_size in (
        (VECTORS / "4k__v2_aes256xts_cts_pad32.json", 4096),
        (VECTORS / "1k-stable__v2_aes256xts_cts_pad16.json", 1024),
    ):
        if not path.exists():
            continue
        data = _load(path)
        for obj in data["objects"].values():
            link = obj.get("symlink")
            if link and link["target_len"] == max_symlink_ciphertext(block_size):
                stored = bytes.fromhex(link["stored_hex_i_size_plus_1"])
                ct = decode_encrypted_symlink(stored, obj["i_size"], block_size)
                assert len(ct) == block_size - 3
                found += 1
    if not found:
        pytest.skip(f"kernel test vectors not found at {VECTORS}")


# --- synthetic payloads ---

CT = bytes(range(0x40, 0x60))  # 32 bytes


def test_worked_example() -> None:
    """Section 10 of the reference: symlink "link-short" -> "tiny.txt"."""
    stored = bytes.fromhex("2000852b07fbb504d1e291649c15317275d4def4424665a45af2340b742963bd73fa00")
    ct = decode_encrypted_symlink(stored, 34, 4096)
    assert ct.hex() == "852b07fbb504d1e291649c15317275d4def4424665a45af2340b742963bd73fa"
    assert encode_encrypted_symlink(ct) == stored


def test_encode_layout() -> None:
    assert encode_encrypted_symlink(CT) == b"\x20\x00" + CT + b"\x00"
    assert encode_encrypted_symlink(b"\x01" * 300)[:2] == (300).to_bytes(2, "little")


@pytest.mark.parametrize("length", [0, 1, 15, 0x10000])
def test_encode_rejects_impossible_ciphertexts(length: int) -> None:
    with pytest.raises(ValueError, match="symlink ciphertext"):
        encode_encrypted_symlink(b"\x01" * length)


def _corrupt(stored: bytes, i_size: int, block_size: int, match: str) -> None:
    with pytest.raises(CorruptError, match=match) as info:
        decode_encrypted_symlink(stored, i_size, block_size, location="inode 42")
    assert info.value.structure == "encrypted symlink"
    assert info.value.location == "inode 42"
    assert "inode 42" in str(info.value)


def test_decode_rejections() -> None:
    good = encode_encrypted_symlink(CT)
    _corrupt(b"", 0, 4096, "cannot hold")
    _corrupt(b"\x20\x00", 34, 4096, "cannot hold")
    _corrupt(b"\x00\x00" + CT + b"\0", 2, 4096, "length is 0")
    _corrupt(b"\x0f\x00" + CT[:15] + b"\0", 17, 4096, "below the minimum")
    _corrupt(good, 35, 4096, "i_size 35")
    _corrupt(good, 33, 4096, "i_size 33")
    _corrupt(good[:-1], 34, 4096, "do not fit")  # no room for the NUL
    _corrupt(good[:20], 34, 4096, "do not fit")  # ciphertext cut off
    # 1021 bytes is the most a 1 KiB block takes; the length field says 1022.
    long = b"\xfe\x03" + b"\x01" * 1022 + b"\0"
    _corrupt(long, 1024, 1024, "exceeds 1021")
    # A fast symlink's i_block holds at most 57 bytes of ciphertext.
    ct58 = encode_encrypted_symlink(b"\x02" * 58)
    _corrupt(ct58[:FAST_SYMLINK_AREA], 60, 4096, "do not fit")


def test_decode_limits() -> None:
    ct57 = b"\x02" * 57
    area = encode_encrypted_symlink(ct57)
    assert len(area) == FAST_SYMLINK_AREA
    assert decode_encrypted_symlink(area, 59, 4096) == ct57
    assert is_fast_symlink_payload(57) and not is_fast_symlink_payload(58)
    ct_max = b"\x03" * 1021
    assert decode_encrypted_symlink(encode_encrypted_symlink(ct_max), 1023, 1024) == ct_max
    assert decode_encrypted_symlink(encode_encrypted_symlink(CT[:16]), 18, 1024) == CT[:16]


def test_ciphertext_name_length_rule() -> None:
    assert ciphertext_name_length(1, 4) == FNAME_MIN_MSG_LEN
    assert ciphertext_name_length(16, 32) == 32
    assert ciphertext_name_length(17, 4) == 20
    assert ciphertext_name_length(17, 16) == 32
    assert ciphertext_name_length(33, 8) == 40
    assert ciphertext_name_length(240, 32) == NAME_MAX  # 256 capped at 255
    assert ciphertext_name_length(255, 4) == NAME_MAX
    assert symlink_ciphertext_length(4093, 32, 4096) == 4093
    assert symlink_ciphertext_length(4080, 32, 4096) == 4093  # 4096 capped at bs - 3
    assert symlink_ciphertext_length(1000, 16, 1024) == 1008
    assert max_symlink_ciphertext(4096) == 4093


@pytest.mark.parametrize(
    ("plain_len", "padding", "limit"),
    [(0, 4, 255), (256, 4, 255), (10, 12, 255), (10, 64, 255), (10, 4, 15), (4094, 4, 4093)],
)
def test_ciphertext_name_length_rejects(plain_len: int, padding: int, limit: int) -> None:
    with pytest.raises(ValueError):
        ciphertext_name_length(plain_len, padding, limit)


# --- hypothesis ---


@settings(max_examples=500)
@given(
    stored=st.binary(max_size=80),
    i_size=st.integers(min_value=0, max_value=100),
    block_size=st.sampled_from([1024, 2048, 4096, 65536]),
)
def test_decode_arbitrary_raises_only_corrupt(stored: bytes, i_size: int, block_size: int) -> None:
    try:
        ct = decode_encrypted_symlink(stored, i_size, block_size)
    except CorruptError:
        return
    assert FNAME_MIN_MSG_LEN <= len(ct) == i_size - 2 < len(stored) - 2


@settings(max_examples=200)
@given(
    ct=st.binary(min_size=FNAME_MIN_MSG_LEN, max_size=1021),
    block_size=st.sampled_from([1024, 4096]),
    tail=st.binary(max_size=8),
)
def test_round_trip(ct: bytes, block_size: int, tail: bytes) -> None:
    stored = encode_encrypted_symlink(ct)
    assert decode_encrypted_symlink(stored + tail, len(ct) + 2, block_size) == ct


@settings(max_examples=300)
@given(
    plain_len=st.integers(min_value=1, max_value=NAME_MAX),
    padding=st.sampled_from([4, 8, 16, 32]),
)
def test_name_length_properties(plain_len: int, padding: int) -> None:
    n = ciphertext_name_length(plain_len, padding)
    assert max(plain_len, FNAME_MIN_MSG_LEN) <= n <= NAME_MAX
    assert n % padding == 0 or n == NAME_MAX
    assert n - max(plain_len, FNAME_MIN_MSG_LEN) < padding
