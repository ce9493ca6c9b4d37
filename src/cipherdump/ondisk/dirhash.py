"""The ext4 directory-index (htree) hash functions, as the kernel computes them.

ext4 hashes the bytes stored in a directory entry.  In an encrypted directory those
are the ciphertext, so the hash of every name can be recomputed without any key
(except in casefolded + encrypted directories, whose SipHash is keyed; see below).

Hash versions (``DX_HASH_*`` in the kernel, stored in the htree root's
``hash_version`` and in the superblock's ``s_def_hash_version``):

====  ===================  ===============================================
 0    legacy               32-bit, ignores the seed, ``minor_hash`` is 0
 1    half-MD4             3-round reduced MD4 over 32-byte chunks (mkfs default)
 2    TEA                  16 rounds of TEA over 16-byte chunks
 3-5  the same, unsigned   bytes taken as 0..255 instead of -128..127
 6    SipHash-2-4          casefold + encrypt only; keyed, not computable here
====  ===================  ===============================================

The root of an index on disk records 0, 1 or 2; the kernel adds 3 when the
superblock's ``s_flags`` has ``EXT2_FLAGS_UNSIGNED_HASH`` (0x2) set.
:func:`ext4_dirhash` does that mapping through its ``signed`` argument.

Casefolded directories that are *not* encrypted hash the casefolded name; callers
that want that must casefold first.  This module hashes exactly the bytes given.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from cipherdump.errors import UnsupportedError

DX_HASH_LEGACY: Final = 0
DX_HASH_HALF_MD4: Final = 1
DX_HASH_TEA: Final = 2
DX_HASH_LEGACY_UNSIGNED: Final = 3
DX_HASH_HALF_MD4_UNSIGNED: Final = 4
DX_HASH_TEA_UNSIGNED: Final = 5
DX_HASH_SIPHASH: Final = 6

#: ``s_flags`` bits that say how ``char`` was signed on the machine that ran mkfs.
EXT2_FLAGS_SIGNED_HASH: Final = 0x0001
EXT2_FLAGS_UNSIGNED_HASH: Final = 0x0002

#: The end-of-directory marker of 32-bit htree positions; no name may hash to it.
EXT4_HTREE_EOF_32BIT: Final = 0x7FFFFFFF

HASH_SEED_SIZE: Final = 16

HASH_VERSION_NAMES: Final[dict[int, str]] = {
    DX_HASH_LEGACY: "legacy",
    DX_HASH_HALF_MD4: "half_md4",
    DX_HASH_TEA: "tea",
    DX_HASH_LEGACY_UNSIGNED: "legacy_unsigned",
    DX_HASH_HALF_MD4_UNSIGNED: "half_md4_unsigned",
    DX_HASH_TEA_UNSIGNED: "tea_unsigned",
    DX_HASH_SIPHASH: "siphash",
}

_M32: Final = 0xFFFFFFFF
_MD4_INIT: Final = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_K2: Final = 0x5A827999  # octal 013240474631 in the kernel
_K3: Final = 0x6ED9EBA1  # octal 015666365641
_TEA_DELTA: Final = 0x9E3779B9

# A byte as the kernel's ``(int)(signed char)c``: what x86 compilers make of ``char``.
_SIGNED_BYTE: Final = tuple(b - 256 if b >= 0x80 else b for b in range(256))
_UNSIGNED_BYTE: Final = tuple(range(256))
_BE_WORDS: Final = tuple(struct.Struct(f">{n}I") for n in range(9))


def hash_version_name(version: int) -> str:
    return HASH_VERSION_NAMES.get(version, f"hash-{version}")


def effective_hash_version(version: int, signed: bool) -> int:
    """The version the kernel really runs: 0..2 become 3..5 on unsigned filesystems.

    Versions 3 and above are returned unchanged (they already say how bytes are read).
    """
    if DX_HASH_LEGACY <= version <= DX_HASH_TEA and not signed:
        return version + 3
    return version


def is_signed_filesystem(s_flags: int) -> bool:
    """Whether a superblock's ``s_flags`` asks for the signed hash variants.

    The unsigned variants are used when ``EXT2_FLAGS_UNSIGNED_HASH`` is set.  With
    neither flag set the kernel follows the ``char`` of the CPU that mounts the
    filesystem (signed on x86, unsigned on arm64) and records it on a read-write
    mount; this function assumes signed, as on x86.
    """
    return not s_flags & EXT2_FLAGS_UNSIGNED_HASH


def _str2hashbuf(name: bytes, start: int, num: int, signed: bool) -> list[int]:
    """``str2hashbuf_{signed,unsigned}``: ``num`` message words from ``name[start:]``.

    Every word starts as ``pad`` (the remaining length repeated in each byte, built
    with shifts and ORs exactly as the kernel does, so lengths past 255 overlap) and
    takes up to four bytes, each shifted in from the right; unused words are ``pad``.
    """
    remaining = len(name) - start
    if remaining >= num * 4:
        # A whole chunk (every word of most names): no pad word; see below for the sign.
        whole: tuple[int, ...] = _BE_WORDS[num].unpack_from(name, start)
        if signed:
            return [(w - ((w & 0x00808080) << 1)) & 0xFFFFFFFF for w in whole]
        return list(whole)
    pad = (remaining | (remaining << 8)) & _M32
    pad = (pad | (pad << 16)) & _M32
    used = min(remaining, num * 4)
    full = used // 4
    # Four whole bytes push ``pad`` out entirely, so such a word is the bytes read
    # big-endian.  Sign-extending byte j (0 = first) of a word subtracts 1 << 8 * (4 - j)
    # when it is >= 0x80: bit 7 of bytes 1..3 moved up by one bit; byte 0's borrow
    # falls off the 32-bit word.
    words = list(_BE_WORDS[full].unpack_from(name, start))
    if signed:
        words = [(w - ((w & 0x00808080) << 1)) & _M32 for w in words]
    if full < num:
        table = _SIGNED_BYTE if signed else _UNSIGNED_BYTE
        val = pad
        for i in range(start + full * 4, start + used):
            val = (table[name[i]] + (val << 8)) & _M32
        words.append(val)
        words.extend([pad] * (num - full - 1))
    return words


def _half_md4(name: bytes, state: tuple[int, int, int, int], signed: bool) -> tuple[int, int]:
    """(hash, minor_hash) of the half-MD4 variants: ``half_md4_transform`` over every
    32-byte chunk of ``name`` (``str2hashbuf`` words), from ``state``.

    The kernel's ``half_md4_transform`` is unrolled here, once per chunk: 24 reduced MD4
    steps, each ``a = rotl32(a + f(b, c, d) + word + K, s)`` with (a, b, c, d) rotating
    as in MD4, added into the state.  It runs for every name of a directory scan, so
    the mask and the round constants (``_M32``, ``_K2``, ``_K3``) are written as
    literals (constants cost less than global look-ups) and a whole chunk, the usual
    case (encrypted names are padded to 16 or 32 bytes), is read in one unpack.

    Only the sum ``t`` is cut to 32 bits before it is rotated: a, b, c and d may carry
    a few bits above bit 31 out of the rotation, and nothing below bit 32 depends on
    them (sums carry upwards only, the logical operations work bit by bit), so they
    vanish in the next masked sum and in the state's.
    """
    h0, h1, h2, h3 = state
    size = len(name)
    for start in range(0, size, 32):
        if size - start >= 32:
            w0, w1, w2, w3, w4, w5, w6, w7 = _BE_WORDS[8].unpack_from(name, start)
            if signed:  # see _str2hashbuf
                w0 = (w0 - ((w0 & 0x00808080) << 1)) & 0xFFFFFFFF
                w1 = (w1 - ((w1 & 0x00808080) << 1)) & 0xFFFFFFFF
                w2 = (w2 - ((w2 & 0x00808080) << 1)) & 0xFFFFFFFF
                w3 = (w3 - ((w3 & 0x00808080) << 1)) & 0xFFFFFFFF
                w4 = (w4 - ((w4 & 0x00808080) << 1)) & 0xFFFFFFFF
                w5 = (w5 - ((w5 & 0x00808080) << 1)) & 0xFFFFFFFF
                w6 = (w6 - ((w6 & 0x00808080) << 1)) & 0xFFFFFFFF
                w7 = (w7 - ((w7 & 0x00808080) << 1)) & 0xFFFFFFFF
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = _str2hashbuf(name, start, 8, signed)
        a, b, c, d = h0, h1, h2, h3
        # Round 1, F(x, y, z) = z ^ (x & (y ^ z)).
        t = (a + (d ^ (b & (c ^ d))) + w0) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + (c ^ (a & (b ^ c))) + w1) & 0xFFFFFFFF
        d = (t << 7) | (t >> 25)
        t = (c + (b ^ (d & (a ^ b))) + w2) & 0xFFFFFFFF
        c = (t << 11) | (t >> 21)
        t = (b + (a ^ (c & (d ^ a))) + w3) & 0xFFFFFFFF
        b = (t << 19) | (t >> 13)
        t = (a + (d ^ (b & (c ^ d))) + w4) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + (c ^ (a & (b ^ c))) + w5) & 0xFFFFFFFF
        d = (t << 7) | (t >> 25)
        t = (c + (b ^ (d & (a ^ b))) + w6) & 0xFFFFFFFF
        c = (t << 11) | (t >> 21)
        t = (b + (a ^ (c & (d ^ a))) + w7) & 0xFFFFFFFF
        b = (t << 19) | (t >> 13)
        # Round 2, G(x, y, z) = (x & y) + ((x ^ y) & z).
        t = (a + ((b & c) + ((b ^ c) & d)) + w1 + 0x5A827999) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + ((a & b) + ((a ^ b) & c)) + w3 + 0x5A827999) & 0xFFFFFFFF
        d = (t << 5) | (t >> 27)
        t = (c + ((d & a) + ((d ^ a) & b)) + w5 + 0x5A827999) & 0xFFFFFFFF
        c = (t << 9) | (t >> 23)
        t = (b + ((c & d) + ((c ^ d) & a)) + w7 + 0x5A827999) & 0xFFFFFFFF
        b = (t << 13) | (t >> 19)
        t = (a + ((b & c) + ((b ^ c) & d)) + w0 + 0x5A827999) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + ((a & b) + ((a ^ b) & c)) + w2 + 0x5A827999) & 0xFFFFFFFF
        d = (t << 5) | (t >> 27)
        t = (c + ((d & a) + ((d ^ a) & b)) + w4 + 0x5A827999) & 0xFFFFFFFF
        c = (t << 9) | (t >> 23)
        t = (b + ((c & d) + ((c ^ d) & a)) + w6 + 0x5A827999) & 0xFFFFFFFF
        b = (t << 13) | (t >> 19)
        # Round 3, H(x, y, z) = x ^ y ^ z.
        t = (a + (b ^ c ^ d) + w3 + 0x6ED9EBA1) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + (a ^ b ^ c) + w7 + 0x6ED9EBA1) & 0xFFFFFFFF
        d = (t << 9) | (t >> 23)
        t = (c + (d ^ a ^ b) + w2 + 0x6ED9EBA1) & 0xFFFFFFFF
        c = (t << 11) | (t >> 21)
        t = (b + (c ^ d ^ a) + w6 + 0x6ED9EBA1) & 0xFFFFFFFF
        b = (t << 15) | (t >> 17)
        t = (a + (b ^ c ^ d) + w1 + 0x6ED9EBA1) & 0xFFFFFFFF
        a = (t << 3) | (t >> 29)
        t = (d + (a ^ b ^ c) + w5 + 0x6ED9EBA1) & 0xFFFFFFFF
        d = (t << 9) | (t >> 23)
        t = (c + (d ^ a ^ b) + w0 + 0x6ED9EBA1) & 0xFFFFFFFF
        c = (t << 11) | (t >> 21)
        t = (b + (c ^ d ^ a) + w4 + 0x6ED9EBA1) & 0xFFFFFFFF
        b = (t << 15) | (t >> 17)
        h0 = (h0 + a) & 0xFFFFFFFF
        h1 = (h1 + b) & 0xFFFFFFFF
        h2 = (h2 + c) & 0xFFFFFFFF
        h3 = (h3 + d) & 0xFFFFFFFF
    return h1, h2


def _tea_transform(buf: list[int], words: list[int]) -> None:
    """The kernel's ``TEA_transform``: 16 TEA rounds, added into ``buf[0:2]``."""
    total = 0
    b0, b1 = buf[0], buf[1]
    a, b, c, d = words
    for _ in range(16):
        total = (total + _TEA_DELTA) & _M32
        b0 = (b0 + ((((b1 << 4) + a) ^ (b1 + total) ^ ((b1 >> 5) + b)) & _M32)) & _M32
        b1 = (b1 + ((((b0 << 4) + c) ^ (b0 + total) ^ ((b0 >> 5) + d)) & _M32)) & _M32
    buf[0] = (buf[0] + b0) & _M32
    buf[1] = (buf[1] + b1) & _M32


def _legacy_hash(name: bytes, table: tuple[int, ...]) -> int:
    """``dx_hack_hash_{signed,unsigned}``: the pre-htree-seed hash (no minor hash)."""
    hash0, hash1 = 0x12A3FE2D, 0x37ABE8F9
    for byte in name:
        value = (hash1 + (hash0 ^ ((table[byte] * 7152373) & _M32))) & _M32
        if value & 0x80000000:
            value = (value - 0x7FFFFFFF) & _M32
        hash1, hash0 = hash0, value
    return (hash0 << 1) & _M32


# Initial states by seed: a filesystem has one seed, hashed for every name.
_STATES: dict[bytes, tuple[int, int, int, int]] = {}


def _initial_state(seed: bytes) -> list[int]:
    return list(_initial_words(seed))


def _initial_words(seed: bytes) -> tuple[int, int, int, int]:
    """The state a seed starts every name's hash from (kept per seed)."""
    key = bytes(seed)
    state = _STATES.get(key)
    if state is None:
        if len(seed) != HASH_SEED_SIZE:
            raise ValueError(f"hash seed must be {HASH_SEED_SIZE} bytes, not {len(seed)}")
        w0, w1, w2, w3 = struct.unpack("<4I", key)
        # An all-zero seed means "no seed": the kernel then starts from MD4's constants.
        state = (w0, w1, w2, w3) if w0 | w1 | w2 | w3 else _MD4_INIT
        if len(_STATES) >= 64:
            _STATES.clear()
        _STATES[key] = state
    return state


def ext4_dirhash(name: bytes, version: int, seed: bytes, signed: bool) -> tuple[int, int]:
    """``(hash, minor_hash)`` of ``name`` exactly as ext4 computes it.

    ``version`` is the htree hash version (0..5); for 0..2 ``signed`` picks the signed
    or unsigned variant as the filesystem's ``s_flags`` would (see
    :func:`is_signed_filesystem`); 3..5 are always unsigned.  ``seed`` is the
    superblock's 16-byte ``s_hash_seed`` as stored (four little-endian words); all
    zeros selects the default MD4 state.  The seed does not affect the legacy hash.

    The result's ``hash`` always has bit 0 clear and is never ``0xFFFFFFFE`` (the
    kernel moves that value to ``0xFFFFFFFC``, away from the end-of-directory marker).

    Raises :class:`UnsupportedError` for SipHash (version 6, keyed by the directory's
    fscrypt dirhash key; such entries store their hash in the dirent instead) and for
    unknown versions.
    """
    # effective_hash_version, written out: this runs once per name of a listing.
    effective = version + 3 if DX_HASH_LEGACY <= version <= DX_HASH_TEA and not signed else version
    minor_hash = 0
    if effective in (DX_HASH_HALF_MD4, DX_HASH_HALF_MD4_UNSIGNED):  # the usual one first
        hash_, minor_hash = _half_md4(name, _initial_words(seed), effective == DX_HASH_HALF_MD4)
    elif effective in (DX_HASH_LEGACY, DX_HASH_LEGACY_UNSIGNED):
        if len(seed) != HASH_SEED_SIZE:
            raise ValueError(f"hash seed must be {HASH_SEED_SIZE} bytes, not {len(seed)}")
        hash_ = _legacy_hash(name, _SIGNED_BYTE if effective == DX_HASH_LEGACY else _UNSIGNED_BYTE)
    elif effective in (DX_HASH_TEA, DX_HASH_TEA_UNSIGNED):
        buf = _initial_state(seed)
        for start in range(0, len(name), 16):
            _tea_transform(buf, _str2hashbuf(name, start, 4, effective == DX_HASH_TEA))
        hash_, minor_hash = buf[0], buf[1]
    elif effective == DX_HASH_SIPHASH:
        raise UnsupportedError(
            "SipHash directory hashes (casefolded encrypted directories) need the "
            "directory's key; use the hash stored in the directory entry"
        )
    else:
        raise UnsupportedError(f"unknown directory hash version {version}")
    hash_ &= ~1 & _M32
    if hash_ == EXT4_HTREE_EOF_32BIT << 1:
        hash_ = (EXT4_HTREE_EOF_32BIT - 1) << 1
    return hash_, minor_hash


# -- many names at once -------------------------------------------------------------------
#
# Listing a directory hashes every name, and half-MD4 in Python costs about 6 µs a name.
# ext4_dirhashes runs it on many names at once, each in a 64-bit lane of one big int
# per state word (SWAR): a step of the transform is then a dozen big-int operations for
# all the names together, about 0.8 µs a name with 100 to 300 names (measured).  The
# words of a lane stay below 2**32 after every step (each sum and rotation is masked),
# so sums (at most 2**35) and left rotations (at most 2**51) never reach the next
# lane, and the bits a right rotation moves below a lane's bottom land in the unused
# top of the lane beneath, which the mask clears.
_LANES_MIN = 8  # fewer names: the scalar transform is as fast
_LANES_MAX = 256  # more: the big ints outgrow the caches and each step slows down
_LANE_LAYOUTS: dict[int, struct.Struct] = {}


def ext4_dirhashes(
    names: Sequence[bytes], version: int, seed: bytes, signed: bool
) -> list[tuple[int, int]]:
    """``[ext4_dirhash(name, version, seed, signed) for name in names]``, computed for
    many names at once where the version is half-MD4 (see above)."""
    effective = version + 3 if DX_HASH_LEGACY <= version <= DX_HASH_TEA and not signed else version
    if effective not in (DX_HASH_HALF_MD4, DX_HASH_HALF_MD4_UNSIGNED) or len(names) < _LANES_MIN:
        return [ext4_dirhash(name, version, seed, signed) for name in names]
    state = _initial_words(seed)
    by_chunks: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        by_chunks.setdefault((len(name) + 31) // 32, []).append(i)
    out: list[tuple[int, int]] = [(0, 0)] * len(names)
    for chunks, where in by_chunks.items():
        for start in range(0, len(where), _LANES_MAX):
            part = where[start : start + _LANES_MAX]
            lanes = [names[i] for i in part]
            hashes = _half_md4_lanes(lanes, chunks, state, effective == DX_HASH_HALF_MD4)
            for i, (hash_, minor_hash) in zip(part, hashes, strict=True):
                hash_ &= 0xFFFFFFFE
                if hash_ == EXT4_HTREE_EOF_32BIT << 1:
                    hash_ = (EXT4_HTREE_EOF_32BIT - 1) << 1
                out[i] = (hash_, minor_hash)
    return out


def _lane_layout(n: int) -> struct.Struct:
    """``n`` little-endian 64-bit lanes of which the low 32 bits are used."""
    layout = _LANE_LAYOUTS.get(n)
    if layout is None:
        layout = _LANE_LAYOUTS[n] = struct.Struct("<" + "I4x" * n)
    return layout


def _half_md4_lanes(
    names: Sequence[bytes], chunks: int, state: tuple[int, int, int, int], signed: bool
) -> list[tuple[int, int]]:
    """:func:`_half_md4` of names of ``chunks`` 32-byte chunks each, one per lane."""
    n = len(names)
    layout = _lane_layout(n)
    ones = int.from_bytes(b"\x01\0\0\0\0\0\0\0" * n, "little")
    m = 0xFFFFFFFF * ones  # every lane's low 32 bits
    h0, h1, h2, h3 = (word * ones for word in state)
    k2, k3 = 0x5A827999 * ones, 0x6ED9EBA1 * ones
    whole_words = _BE_WORDS[8].unpack_from
    for chunk in range(chunks):
        start = chunk * 32
        rows: list[tuple[int, ...] | list[int]] = []
        whole: list[int] = []  # per lane, 1 if this chunk is 32 bytes of its name
        for name in names:
            if len(name) - start >= 32:
                rows.append(whole_words(name, start))
                whole.append(1)
            else:  # the last, short chunk: pad words, and bytes signed one by one
                rows.append(_str2hashbuf(name, start, 8, signed))
                whole.append(0)
        w0, w1, w2, w3, w4, w5, w6, w7 = words = [
            int.from_bytes(layout.pack(*column), "little") for column in zip(*rows, strict=True)
        ]
        if signed and any(whole):
            # Whole words take signed bytes as _half_md4 does, w - ((w & 0x00808080) << 1),
            # in their lanes only; 2**32 is added first so that no lane borrows.
            chosen = int.from_bytes(layout.pack(*whole), "little")
            high, borrow = chosen << 32, chosen * 0x00808080
            w0, w1, w2, w3, w4, w5, w6, w7 = ((w + high - ((w & borrow) << 1)) & m for w in words)
        a, b, c, d = h0, h1, h2, h3
        # Round 1.
        t = (a + (d ^ (b & (c ^ d))) + w0) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (c ^ (a & (b ^ c))) + w1) & m
        d = ((t << 7) | (t >> 25)) & m
        t = (c + (b ^ (d & (a ^ b))) + w2) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (a ^ (c & (d ^ a))) + w3) & m
        b = ((t << 19) | (t >> 13)) & m
        t = (a + (d ^ (b & (c ^ d))) + w4) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (c ^ (a & (b ^ c))) + w5) & m
        d = ((t << 7) | (t >> 25)) & m
        t = (c + (b ^ (d & (a ^ b))) + w6) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (a ^ (c & (d ^ a))) + w7) & m
        b = ((t << 19) | (t >> 13)) & m
        # Round 2.
        t = (a + ((b & c) + ((b ^ c) & d)) + w1 + k2) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + ((a & b) + ((a ^ b) & c)) + w3 + k2) & m
        d = ((t << 5) | (t >> 27)) & m
        t = (c + ((d & a) + ((d ^ a) & b)) + w5 + k2) & m
        c = ((t << 9) | (t >> 23)) & m
        t = (b + ((c & d) + ((c ^ d) & a)) + w7 + k2) & m
        b = ((t << 13) | (t >> 19)) & m
        t = (a + ((b & c) + ((b ^ c) & d)) + w0 + k2) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + ((a & b) + ((a ^ b) & c)) + w2 + k2) & m
        d = ((t << 5) | (t >> 27)) & m
        t = (c + ((d & a) + ((d ^ a) & b)) + w4 + k2) & m
        c = ((t << 9) | (t >> 23)) & m
        t = (b + ((c & d) + ((c ^ d) & a)) + w6 + k2) & m
        b = ((t << 13) | (t >> 19)) & m
        # Round 3.
        t = (a + (b ^ c ^ d) + w3 + k3) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (a ^ b ^ c) + w7 + k3) & m
        d = ((t << 9) | (t >> 23)) & m
        t = (c + (d ^ a ^ b) + w2 + k3) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (c ^ d ^ a) + w6 + k3) & m
        b = ((t << 15) | (t >> 17)) & m
        t = (a + (b ^ c ^ d) + w1 + k3) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (a ^ b ^ c) + w5 + k3) & m
        d = ((t << 9) | (t >> 23)) & m
        t = (c + (d ^ a ^ b) + w0 + k3) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (c ^ d ^ a) + w4 + k3) & m
        b = ((t << 15) | (t >> 17)) & m
        h0 = (h0 + a) & m
        h1 = (h1 + b) & m
        h2 = (h2 + c) & m
        h3 = (h3 + d) & m
    firsts = layout.unpack(h1.to_bytes(8 * n, "little"))
    seconds = layout.unpack(h2.to_bytes(8 * n, "little"))
    return list(zip(firsts, seconds, strict=True))
