"""No-key names against what Linux 6.18 and 6.1 listed without the key.

The kernel is the only ground truth here: ``nokey_name`` / ``nokey_readlink`` in
``shared/testdata/kernel-vectors`` are exactly what ``readdir`` / ``readlink``
returned after the key was removed, and ``kernel-vectors-6.1`` adds casefolded
directories (where the embedded hash is the one stored in the dirent).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.errors import CorruptError
from cipherdump.fscrypt.names import ciphertext_name_length
from cipherdump.fscrypt.nokey import (
    NOKEY_NAME_MAX,
    NOKEY_NAME_MAX_ENCODED,
    NOKEY_PREFIX_SIZE,
    NoKeyName,
    decode_nokey_name,
    encode_nokey_name,
    encode_nokey_symlink,
    nokey_name_of,
)
from cipherdump.fscrypt.symlink import decode_encrypted_symlink, symlink_ciphertext_length
from cipherdump.ondisk.dirhash import ext4_dirhash
from shared_data import SHARED_TESTDATA

TESTDATA = SHARED_TESTDATA
VECTORS = TESTDATA / "kernel-vectors"
VECTORS_61 = TESTDATA / "kernel-vectors-6.1"


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _scenario_files() -> list[Path]:
    if not VECTORS.is_dir():
        return []
    return [p for p in sorted(VECTORS.glob("*__*.json")) if not p.name.endswith("__image.json")]


def _scenario_params() -> list[Any]:
    """Scenarios in which the kernel created entries (the others are checked below)."""
    files = [p for p in _scenario_files() if _load(p).get("entries")]
    return [pytest.param(p, id=p.stem) for p in files] or [pytest.param(None, id="no-vectors")]


def test_empty_scenarios_are_refused_policies() -> None:
    files = _scenario_files()
    if not files:
        pytest.skip(f"kernel test vectors not found at {VECTORS}")
    for path in files:
        data = _load(path)
        if not data.get("entries"):
            refused = not data["set_policy"]["ok"]
            assert refused or set(data["errors_creating"].values()) == {"ENOPKG"}, path.name


def _manifest_params() -> list[Any]:
    names = ("cf4k", "cf1k", "essiv", "hctr2", "adiantum")
    if not VECTORS_61.is_dir():
        return [pytest.param(None, id="no-vectors-6.1")]
    return [pytest.param(VECTORS_61 / f"{n}.json", id=n) for n in names]


class Image:
    """What a scenario needs from its ``<image>__image.json``."""

    def __init__(self, scenario: Path) -> None:
        image = _load(scenario.with_name(scenario.name.split("__")[0] + "__image.json"))
        self.seed = bytes.fromhex(image["hash_seed_hex"])
        self.version: int = image["def_hash_version"]
        self.signed = image["dirhash_signedness"] == "signed"
        self.dir_index: bool = image["features"]["dir_index(compat 0x20)"]
        self.block_size: int = image["block_size"]

    def dirhash(self, ciphertext: bytes) -> tuple[int, int]:
        """The hash ext4 puts in a no-key name (section 7.2: htree readdir or 0, 0)."""
        if not self.dir_index:
            return 0, 0
        return ext4_dirhash(ciphertext, self.version, self.seed, self.signed)


def _scenario(path: Path | None) -> tuple[Image, Any]:
    if path is None or not path.exists():
        pytest.skip(f"kernel test vectors not found at {VECTORS}")
    return Image(path), _load(path)


def _raw(name: str) -> bytes:
    return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4))


def _check_name(name: str, ciphertext: bytes, dirhash: tuple[int, int]) -> NoKeyName:
    encoded = name.encode()
    assert encode_nokey_name(ciphertext, dirhash) == encoded
    decoded = decode_nokey_name(encoded)
    assert decoded is not None
    assert decoded.encode() == encoded
    assert decoded.dirhash == dirhash
    assert decoded.is_long == (len(ciphertext) > NOKEY_PREFIX_SIZE)
    assert decoded.matches(ciphertext)
    assert decoded.matches(ciphertext, stored_hash=dirhash)
    assert decoded == nokey_name_of(ciphertext, dirhash)
    return decoded


# --- Linux 6.18 vectors ---


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_dir_entries(path: Path | None) -> None:
    image, data = _scenario(path)
    for entry in data["entries"]:
        ct = bytes.fromhex(entry["ciphertext_hex"])
        assert entry["nokey_matches_dirent"] is True
        decoded = _check_name(entry["nokey_name"], ct, image.dirhash(ct))
        assert len(decoded.raw()) == entry["nokey_decoded_len"] == len(_raw(entry["nokey_name"]))


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_subdir_and_htree_entries(path: Path | None) -> None:
    image, data = _scenario(path)
    entries = list((data.get("subdir") or {}).get("entries", []))
    htree = data.get("htree") or {}
    entries += htree.get("entries", [])
    for entry in entries:
        ct = bytes.fromhex(entry["ciphertext_hex"])
        _check_name(entry["nokey_name"], ct, image.dirhash(ct))
    if htree:
        assert htree["indexed"] == image.dir_index


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_names_match_exactly_one_entry(path: Path | None) -> None:
    """Within one directory a no-key name identifies one dirent, never a neighbour."""
    _, data = _scenario(path)
    groups = [data["entries"], (data.get("htree") or {}).get("entries", [])]
    for entries in groups:
        cts = [bytes.fromhex(e["ciphertext_hex"]) for e in entries]
        for entry in entries:
            decoded = decode_nokey_name(entry["nokey_name"].encode())
            assert decoded is not None
            assert sum(decoded.matches(ct) for ct in cts) == 1


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_zeroed_dirhash_lookups(path: Path | None) -> None:
    """Short names resolve with any embedded hash (7.3); decoding never needs it."""
    _, data = _scenario(path)
    by_ino = {e["ino"]: e for e in data["entries"]}
    by_ino.update({e["ino"]: e for e in (data.get("htree") or {}).get("entries", [])})
    records = list(data.get("nokey_lookup_with_zeroed_dirhash") or [])
    records += (data.get("htree") or {}).get("zeroed_dirhash_lookups", [])
    for record in records:
        entry = by_ino[record["ino"]]
        ct = bytes.fromhex(entry["ciphertext_hex"])
        zeroed = decode_nokey_name(encode_nokey_name(ct, (0, 0)))
        assert zeroed is not None
        assert len(zeroed.raw()) == record["decoded_len"]
        assert zeroed.matches(ct)
        if not zeroed.is_long:
            assert record["zeroed_dirhash_lookup"] == {"ok": True, "result": record["ino"]}


@pytest.mark.parametrize("path", _scenario_params())
def test_kernel_symlink_targets(path: Path | None) -> None:
    image, data = _scenario(path)
    symlinks = [o for o in data["objects"].values() if "symlink" in o]
    assert symlinks
    for obj in symlinks:
        link = obj["symlink"]
        stored = bytes.fromhex(link["stored_hex_i_size_plus_1"])
        ct = decode_encrypted_symlink(stored, obj["i_size"], image.block_size)
        assert encode_nokey_symlink(ct) == link["nokey_readlink"].encode()
        assert len(link["nokey_readlink"]) == link["nokey_lstat_size"]
        decoded = decode_nokey_name(link["nokey_readlink"].encode())
        assert decoded is not None
        assert decoded.dirhash == (0, 0)
        assert decoded.matches(ct)


def test_reference_worked_example() -> None:
    """Section 10 of the reference (values from 4k__v2_aes256xts_cts_pad32)."""
    ct = bytes.fromhex("b93ba8302808abd5fc30203298c774dcddebc67d6aa8e5bb7a7c2c575e509f4c")
    name = b"fKW5bLB7E8y5O6gwKAir1fwwIDKYx3Tc3evGfWqo5bt6fCxXXlCfTA"
    assert encode_nokey_name(ct, (0x6CB9A57C, 0xCC137BB0)) == name
    link_ct = bytes.fromhex("852b07fbb504d1e291649c15317275d4def4424665a45af2340b742963bd73fa")
    assert (
        encode_nokey_symlink(link_ct) == b"AAAAAAAAAACFKwf7tQTR4pFknBUxcnXU3vRCRmWkWvI0C3QpY71z-g"
    )


# --- Linux 6.1 manifests (casefold, ESSIV, HCTR2, Adiantum) ---


def _manifest(path: Path | None) -> Any:
    if path is None or not path.exists():
        pytest.skip(f"Linux 6.1 vectors not found at {VECTORS_61}")
    return _load(path)


def _encrypted_entries(data: Any) -> list[tuple[Any, Any, bytes]]:
    """(entry, its top-level encrypted dir, plaintext name bytes) below encrypted dirs."""
    dirs = {d["path"]: d for d in data["dirs"] if d.get("encrypted")}
    out = []
    for entry in data["entries"]:
        top, _, rest = entry["path"].partition("/")
        if top in dirs and rest:
            path = (
                bytes.fromhex(entry["path_hex"]) if "path_hex" in entry else entry["path"].encode()
            )
            out.append((entry, dirs[top], path.rsplit(b"/", 1)[1]))
    return out


@pytest.mark.parametrize("path", _manifest_params())
def test_kernel_61_nokey_names(path: Path | None) -> None:
    data = _manifest(path)
    block_size = int(data["superblock"]["Block size"])
    entries = _encrypted_entries(data)
    assert entries
    for entry, top, plain in entries:
        padding = top["policy"]["padding"]
        name = entry["nokey_name"].encode()
        decoded = decode_nokey_name(name)
        assert decoded is not None, entry["path"]
        assert decoded.encode() == name
        ct_len = ciphertext_name_length(len(plain), padding)
        assert decoded.is_long == (ct_len > NOKEY_PREFIX_SIZE)
        if decoded.is_long:
            assert len(decoded.raw()) == NOKEY_NAME_MAX
            assert len(name) == NOKEY_NAME_MAX_ENCODED
        else:
            assert len(decoded.ciphertext_prefix) == ct_len
        if top.get("casefold"):
            # SipHash-derived: bit 0 cleared and the EOF value avoided, like every dirhash.
            assert decoded.hash & 1 == 0 and decoded.hash != 0xFFFFFFFE
        if "nokey_target" in entry:
            target = decode_nokey_name(entry["nokey_target"].encode())
            assert target is not None
            assert target.dirhash == (0, 0)
            target_len = len(entry["target"].encode())
            target_ct = symlink_ciphertext_length(target_len, padding, block_size)
            assert target.is_long == (target_ct > NOKEY_PREFIX_SIZE)
            if not target.is_long:
                assert len(target.ciphertext_prefix) == target_ct
                assert (
                    encode_nokey_symlink(target.ciphertext_prefix) == entry["nokey_target"].encode()
                )


@pytest.mark.parametrize("path", _manifest_params())
def test_kernel_61_htree_readdir_order(path: Path | None) -> None:
    """htree readdir returns entries in (hash, minor_hash) order: the decoded fields agree."""
    data = _manifest(path)
    by_dir: dict[str, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    for entry, _, _ in _encrypted_entries(data):
        decoded = decode_nokey_name(entry["nokey_name"].encode())
        assert decoded is not None
        parent = entry["path"].rsplit("/", 1)[0]
        by_dir[parent].append((entry["nokey_readdir_index"], decoded.dirhash))
    for big_dir, rows in data.get("big_dirs", {}).items():
        parent = f"big_dirs:{big_dir}"
        for name, _ino, nokey, index in rows["entries"]:
            decoded = decode_nokey_name(nokey.encode())
            assert decoded is not None, name
            by_dir[parent].append((index, decoded.dirhash))
        assert len(by_dir[parent]) == rows["count"]
    assert by_dir
    for parent, rows in by_dir.items():
        hashes = [h for _, h in sorted(rows)]
        assert hashes == sorted(hashes), parent


# --- synthetic cases ---


def test_lengths() -> None:
    for ct_len, chars in ((16, 32), (32, 54), (148, 208), (149, 210), (150, 252), (255, 252)):
        assert len(encode_nokey_name(bytes(ct_len), (1, 2))) == chars
    assert len(encode_nokey_symlink(b"\xab" * 4093)) == NOKEY_NAME_MAX_ENCODED


def test_dot_names_pass_through() -> None:
    assert encode_nokey_name(b".", (5, 6)) == b"."
    assert encode_nokey_name(b"..", None) == b".."
    assert decode_nokey_name(b".") is None
    assert decode_nokey_name(b"..") is None


def test_short_ciphertext_is_corrupt() -> None:
    for ct in (b"", b"x", bytes(15)):
        with pytest.raises(CorruptError, match="shorter than 16"):
            encode_nokey_name(ct, None)


def test_dirhash_none_is_zero_and_range_checked() -> None:
    ct = bytes(range(16))
    assert encode_nokey_name(ct, None) == encode_nokey_name(ct, (0, 0))
    for bad in ((-1, 0), (0, 1 << 32)):
        with pytest.raises(ValueError, match="32-bit"):
            encode_nokey_name(ct, bad)


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@pytest.mark.parametrize(
    ("size", "valid"),
    [
        (0, False),
        (8, False),
        (9, True),
        (100, True),
        (157, True),
        (158, False),
        (188, False),
        (189, True),
    ],
)
def test_decoded_size_rules(size: int, valid: bool) -> None:
    raw = bytes((i * 7) & 0xFF for i in range(size))
    decoded = decode_nokey_name(_b64(raw))
    assert (decoded is not None) == valid
    if decoded is not None:
        assert decoded.raw() == raw


@pytest.mark.parametrize(
    "name",
    [
        _b64(bytes(40)) + b"==",  # padding is not accepted
        _b64(bytes(40)).replace(b"A", b"+", 1),  # standard-alphabet characters
        _b64(bytes(40)).replace(b"A", b"/", 1),
        _b64(bytes(40)).replace(b"A", b".", 1),
        _b64(bytes(40))[:-1] + b"B",  # non-zero unused low bits
        _b64(bytes(42)) + b"A",  # 4k + 1 characters (Linux <= 6.18 took this one)
        b"A" * (NOKEY_NAME_MAX_ENCODED + 1),
        b"A" * 256,
        _b64(bytes(40)) + b"\0",
        b"",
    ],
)
def test_decode_rejects(name: bytes) -> None:
    assert decode_nokey_name(name) is None


def test_long_form_matching() -> None:
    ct = bytes(range(200))
    name = nokey_name_of(ct, (10, 20))
    assert name.is_long and name.ciphertext is None
    assert name.long_digest == hashlib.sha256(ct[NOKEY_PREFIX_SIZE:]).digest()
    assert name.matches(ct)
    assert not name.matches(ct[:-1])  # digest differs
    assert not name.matches(ct[:NOKEY_PREFIX_SIZE])  # not longer than 149
    assert not name.matches(b"\xff" + ct[1:])  # prefix differs
    assert name.matches(ct, stored_hash=(10, 20))
    assert not name.matches(ct, stored_hash=(10, 21))
    # Two ciphertexts sharing 149 bytes are told apart by the digest.
    other = ct[:NOKEY_PREFIX_SIZE] + b"\x00" * 51
    assert not name.matches(other)
    assert nokey_name_of(other, (10, 20)).matches(other)


def test_short_form_matching() -> None:
    ct = bytes(range(16, 48))
    name = nokey_name_of(ct, (0, 0))
    assert name.ciphertext == ct
    assert name.matches(ct)
    assert not name.matches(ct + b"\0")
    assert not name.matches(ct[:-1])
    assert not name.matches(ct, stored_hash=(2, 0))


def test_nokey_name_validation() -> None:
    with pytest.raises(ValueError):
        NoKeyName(1 << 32, 0, b"x" * 16)
    with pytest.raises(ValueError):
        NoKeyName(0, -1, b"x" * 16)
    with pytest.raises(ValueError):
        NoKeyName(0, 0, b"")
    with pytest.raises(ValueError):
        NoKeyName(0, 0, b"x" * 150)
    with pytest.raises(ValueError):
        NoKeyName(0, 0, b"x" * 148, bytes(32))
    with pytest.raises(ValueError):
        NoKeyName(0, 0, b"x" * 149, bytes(31))
    assert NoKeyName(0, 0, b"x" * 149, bytes(32)).is_long


# --- hypothesis ---

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_never_raises(name: bytes) -> None:
    result = decode_nokey_name(name)
    assert result is None or isinstance(result, NoKeyName)


@settings(max_examples=500)
@given(st.text(alphabet=_ALPHABET, max_size=260))
def test_decode_alphabet_strings_is_canonical(text: str) -> None:
    name = text.encode()
    result = decode_nokey_name(name)
    if result is not None:
        assert result.encode() == name
        assert 9 <= len(result.raw()) <= 157 or len(result.raw()) == NOKEY_NAME_MAX


@settings(max_examples=300)
@given(
    ct=st.binary(min_size=16, max_size=600),
    dirhash=st.tuples(
        st.integers(min_value=0, max_value=0xFFFFFFFF),
        st.integers(min_value=0, max_value=0xFFFFFFFF),
    ),
)
def test_encode_decode_round_trip(ct: bytes, dirhash: tuple[int, int]) -> None:
    name = encode_nokey_name(ct, dirhash)
    assert len(name) <= NOKEY_NAME_MAX_ENCODED
    decoded = decode_nokey_name(name)
    assert decoded is not None
    assert decoded.dirhash == dirhash
    assert decoded.matches(ct)
    assert decoded.matches(ct, stored_hash=dirhash)
    assert decoded.encode() == name
