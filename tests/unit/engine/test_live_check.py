"""The acceptance test of a live backup (engine/live_check.py), on made-up facts."""

from __future__ import annotations

from dataclasses import replace

from cipherdump.engine.live_check import Facts, rejection

T = 1_800_000_000_000_000_000
BASE = Facts(
    ino=12,
    generation=7,
    mode=0o100600,
    links=1,
    uid=1000,
    gid=1000,
    size=8192,
    mtime_ns=T - 10_000_000_000,
    ctime_ns=T - 10_000_000_000,
)


def test_four_equal_looks_older_than_t_are_accepted() -> None:
    assert rejection(BASE, BASE, BASE, BASE, T) is None


def test_unknown_fields_are_not_compared() -> None:
    live = replace(BASE, generation=None, size=None)
    assert rejection(BASE, BASE, live, live, T) is None


def test_each_field_that_differs_is_named() -> None:
    for name, value in (
        ("ino", 13),
        ("generation", 8),
        ("mode", 0o100644),
        ("links", 2),
        ("uid", 0),
        ("gid", 0),
        ("size", 4096),
        ("mtime_ns", BASE.mtime_ns + 1),
        ("ctime_ns", BASE.ctime_ns + 1),
    ):
        other = replace(BASE, **{name: value})
        assert rejection(BASE, other, BASE, BASE, T) == (
            f"{name} differs on disk, before and after reading it"
        )
        assert rejection(BASE, BASE, BASE, other, T) == (
            f"{name} differs live, before and after reading it"
        )
        assert rejection(BASE, BASE, other, other, T) == f"{name} differs on disk and live"


def test_a_ctime_at_or_after_the_limit_is_rejected() -> None:
    late = replace(BASE, ctime_ns=T)
    assert rejection(late, late, late, late, T) == "changed after the round began (ctime)"
    just = replace(BASE, ctime_ns=T - 1)
    assert rejection(just, just, just, just, T) is None


def test_gone_or_unreadable() -> None:
    assert rejection(BASE, BASE, None, BASE, T) == "gone from the live filesystem"
    assert rejection(BASE, BASE, BASE, None, T) == "gone from the live filesystem"
    assert rejection(BASE, None, BASE, BASE, T) == "its inode could not be read again"
