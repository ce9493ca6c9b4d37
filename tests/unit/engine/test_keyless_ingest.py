"""The ingest layer of restore --from-tar/--from-dir on synthetic copies: names, hard
links, inode numbers and the one-line refusals (the kernel tests cover real copies)."""

from __future__ import annotations

import os

import pytest

from cipherdump.engine import keyless_records as R
from cipherdump.engine.keyless_ingest import CopiedEntry, CopyRefused, ingest
from cipherdump.fscrypt.context import Policy, encode_context
from cipherdump.fscrypt.nokey import encode_nokey_name
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL

BS = 4096
POLICY = Policy(2, 1, 4, 2, bytes(16))
TIED = Policy(2, 1, 4, 2 | 0x08, bytes(16))  # IV_INO_LBLK_64


def ctx(policy: Policy = POLICY) -> bytes:
    return encode_context(policy, os.urandom(16))


def entry(path: bytes, kind: str = "file", **records: bytes) -> CopiedEntry:
    mode = {"file": 0o100644, "dir": 0o040755, "symlink": 0o120777}[kind]
    e = CopiedEntry(path, kind, mode, 0, 0, 1, 1, 1, size=BS if kind == "file" else 0)
    e.records = dict(records)
    if kind == "file":
        e.read_at = lambda off, n: b"\x01" * n
    return e


def enc(path: bytes, kind: str = "file", policy: Policy = POLICY, **records: bytes) -> CopiedEntry:
    extra = {R.SIZE: b"10"} if kind == "file" else {}
    return entry(path, kind, flags=str(EXT4_ENCRYPT_FL).encode(), context=ctx(policy),
                 **{**extra, **records})  # fmt: skip


def tree(*kids: CopiedEntry, policy: Policy = POLICY) -> list[CopiedEntry]:
    return [entry(b"", "dir", flags=b"0"), enc(b"e", "dir", policy), *kids]


def test_short_names_come_from_the_nokey_name_long_ones_from_the_record() -> None:
    short, long = bytes(range(16, 48)), bytes(range(200))
    nk_short = encode_nokey_name(short, None)
    nk_long = encode_nokey_name(long, None)
    got = ingest(tree(enc(b"e/" + nk_short), enc(b"e/" + nk_long, name=long)), BS, "t")
    names = {k.name for k in got.children[next(iter(k.ino for k in got.children[2]))]}
    assert names == {short, long}


def test_a_hard_link_whose_shared_name_record_names_the_other_link() -> None:
    a, b = bytes(range(200)), bytes(range(1, 201))
    one = enc(b"e/" + encode_nokey_name(a, None), name=a, ino=b"20")
    other = enc(b"e/" + encode_nokey_name(b, None), name=a, ino=b"20")  # the shared xattr
    with pytest.raises(CopyRefused) as err:
        ingest(tree(one, other), BS, "t")
    (line,) = err.value.lines
    assert line.startswith("/e/") and "another link" in line


def test_links_by_ino_records_are_one_inode() -> None:
    ct = bytes(range(16, 48))
    a = enc(b"e/" + encode_nokey_name(ct, None), ino=b"30")
    b = enc(b"e/" + encode_nokey_name(ct[::-1], None), ino=b"30")
    got = ingest(tree(a, b), BS, "t")
    kids = next(v for k, v in got.children.items() if k != 2)
    assert [k.ino for k in kids] == [30, 30] and kids[0].spec.links == 2


def test_refusals_one_line_an_object() -> None:
    ct = bytes(range(16, 48))
    nk = encode_nokey_name(ct, None)
    no_flags = entry(b"plain")
    no_ctx = entry(b"e/" + nk, flags=b"0", size=b"10")
    bad_size = enc(b"e/" + encode_nokey_name(ct[::-1], None), size=b"9999")
    renamed = enc(b"e/not-a-nokey-name!")
    with pytest.raises(CopyRefused) as err:
        ingest(tree(no_flags, no_ctx, bad_size, renamed), BS, "t")
    lines = err.value.lines
    assert len(lines) == 4
    assert "no flags record" in lines[0] and "no context record" in lines[1]
    assert "size record 9999" in lines[2] and "not a no-key name" in lines[3]


def test_tied_policies_need_inode_numbers() -> None:
    ct = bytes(range(16, 48))
    ok = enc(b"e/" + encode_nokey_name(ct, None), policy=TIED, ino=b"40")
    missing = enc(b"e/" + encode_nokey_name(ct[::-1], None), policy=TIED)
    root, top = entry(b"", "dir", flags=b"0"), enc(b"e", "dir", policy=TIED, ino=b"12")
    with pytest.raises(CopyRefused) as err:
        ingest([root, top, ok, missing], BS, "t")
    (line,) = err.value.lines
    assert "IV_INO_LBLK_64/32" in line and "original inode number" in line
    got = ingest([root, top, ok], BS, "t")
    assert [k.ino for k in got.children[12]] == [40]
