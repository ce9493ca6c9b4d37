"""The PAX writer, read back by Python's tarfile (GNU tar reads dump's archives in
tests/kernel/test_dump_kernel.py); the ACL text form both ways."""

from __future__ import annotations

import io
import tarfile

import pytest

from cipherdump.engine.tarwriter import (
    DIRTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    TarWriter,
    parse_pax_time,
    pax_record,
    pax_time,
)
from cipherdump.errors import CorruptError
from cipherdump.ondisk.acl import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    acl_from_text,
    acl_to_text,
    encode_ext4_acl,
    ext4_acl_to_xattr,
    xattr_acl_to_ext4,
)


@pytest.mark.parametrize("value", [b"", b"x", b"y" * 7, b"z" * 90, b"w" * 995])
def test_pax_record_counts_its_own_length(value: bytes) -> None:
    rec = pax_record(b"k", value)
    length, _, rest = rec.partition(b" ")
    assert int(length) == len(rec) and rest == b"k=" + value + b"\n"


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0.000000000"), (1_500_000_000_987_654_321, "1500000000.987654321"),
     (-1_500_000_000, "-1.500000000")],
)  # fmt: skip
def test_pax_times(ns: int, text: str) -> None:
    assert pax_time(ns) == text.encode() and parse_pax_time(text) == ns
    assert parse_pax_time("12.5") == 12_500_000_000


def test_tarfile_reads_what_the_writer_writes() -> None:
    out = io.BytesIO()
    w = TarWriter(out)
    w.global_header([(b"comment", b"hello")])
    w.add(b"d", DIRTYPE, mode=0o750, uid=5, gid=6, mtime_ns=1_000_000_001)
    name = b"d/" + b"n" * 150 + b"\xff"  # long and not UTF-8
    w.add(name, REGTYPE, mode=0o644, uid=2**31, gid=7, mtime_ns=2_000_000_000, size=5,
          data=[b"ab", b"cde"], pax=[(b"SCHILY.xattr.user.bin", bytes(range(256)))])  # fmt: skip
    w.add(b"d/link", LNKTYPE, mode=0o644, uid=0, gid=0, mtime_ns=0, linkname=name)
    w.add(b"d/sym", SYMTYPE, mode=0o777, uid=0, gid=0, mtime_ns=0, linkname=b"t" * 300)
    w.add(b"d/sparse", REGTYPE, mode=0o600, uid=0, gid=0, mtime_ns=0, size=3 * 4096,
          sparse=[(4096, 4096), (12288, 0)], data=[b"s" * 4096])  # fmt: skip
    w.close()
    out.seek(0)
    with tarfile.open(fileobj=out, errors="surrogateescape") as tf:
        assert tf.pax_headers["comment"] == "hello"
        d, f, link, sym, sparse = tf.getmembers()
        assert (d.name, d.mode, d.uid, d.gid, d.pax_headers["mtime"]) == (
            "d",
            0o750,
            5,
            6,
            "1.000000001",
        )
        assert f.name.encode("utf-8", "surrogateescape") == name and f.uid == 2**31
        data = tf.extractfile(f)
        assert data is not None and data.read() == b"abcde"
        value = f.pax_headers["SCHILY.xattr.user.bin"]
        assert value.encode("utf-8", "surrogateescape") == bytes(range(256))
        assert link.islnk() and link.linkname.encode("utf-8", "surrogateescape") == name
        assert sym.issym() and sym.linkname == "t" * 300
        assert sparse.name == "d/sparse" and sparse.size == 3 * 4096
        assert sparse.sparse == [(4096, 4096), (12288, 0)]
        got = tf.extractfile(sparse)
        assert got is not None and got.read() == bytes(4096) + b"s" * 4096 + bytes(4096)


def test_short_or_long_data_is_refused() -> None:
    w = TarWriter(io.BytesIO())
    with pytest.raises(CorruptError, match="short"):
        w.add(b"f", REGTYPE, mode=0, uid=0, gid=0, mtime_ns=0, size=3, data=[b"ab"])
    with pytest.raises(CorruptError, match="more data"):
        w.add(b"g", REGTYPE, mode=0, uid=0, gid=0, mtime_ns=0, size=1, data=[b"ab"])


def test_acl_text_both_ways() -> None:
    entries = [(ACL_USER_OBJ, 6, None), (ACL_USER, 4, 1234), (ACL_GROUP_OBJ, 4, None),
               (ACL_GROUP, 6, 4321), (ACL_MASK, 6, None), (ACL_OTHER, 0, None)]  # fmt: skip
    text = acl_to_text(entries)
    assert text == "user::rw-,user:1234:r--,group::r--,group:4321:rw-,mask::rw-,other::---"
    assert acl_from_text(text) == entries
    # star's form: a name and the numeric id after it; comments as getfacl prints them.
    assert acl_from_text("user::rw-,user:alice:r--:1234\t#effective:r--,group::r--,"
                         "group:x:rw-:4321,mask::rw-,other::---") == entries  # fmt: skip
    with pytest.raises(CorruptError):
        acl_from_text("user:alice:r--")  # a name without its number: not guessed
    ext4 = encode_ext4_acl(entries)
    assert xattr_acl_to_ext4(ext4_acl_to_xattr(ext4)) == ext4
