"""docs/keyless-records.md names the same xattrs and PAX keywords as the module."""

from __future__ import annotations

from pathlib import Path

from cipherdump.engine import keyless_records as records

DOC = Path(__file__).resolve().parents[3] / "docs" / "keyless-records.md"


def test_every_record_is_in_the_documented_table() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")][1:]
    table = {row.split("|")[1].strip(): row for row in rows}
    assert list(table) == list(records.ALL)
    for record, row in table.items():
        assert f"`{records.xattr_name(record)}`" in row
        assert f"`{records.pax_keyword(record)}`" in row


def test_names_are_user_xattrs_that_copies_keep() -> None:
    assert all(records.xattr_name(r).startswith("user.") for r in records.ALL)
