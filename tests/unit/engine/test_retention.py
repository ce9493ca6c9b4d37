"""Retention policies against a table of dated snapshots (restic's semantics).

Each case names a series of snapshot times (UTC unless the case gives a time zone), a
policy, and the snapshots it must keep; every other one must go.  The expected sets were
worked out by hand from the rules in cipherdump.engine.retention's docstring.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cipherdump.engine.retention import Dated, Duration, Policy, apply_policy
from cipherdump.errors import InputError


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


# Ten days at noon; 2024-01-01 is a Monday, so ISO week 1 is 01..07 and week 2 08..10.
A = [f"2024-01-{d:02d} 12:00" for d in range(1, 11)]
# Two a day, then one.
B = [
    "2024-03-01 08:00",
    "2024-03-01 20:00",
    "2024-03-02 08:00",
    "2024-03-02 20:00",
    "2024-03-03 09:00",
]
# Across years, months and a leap day.
C = [
    "2022-12-31 23:00",
    "2023-01-01 01:00",
    "2023-06-15 12:00",
    "2023-12-31 12:00",
    "2024-01-01 00:30",
    "2024-02-29 12:00",
]
# One dated in the future (a clock set wrong once).
D = ["2024-04-28 12:00", "2024-04-29 12:00", "2024-04-30 12:00", "2030-01-01 00:00"]
NOW = "2024-05-01 00:00"
# Tagged: a {x}, b {x, y}, c {y}, d {}.
E = {
    "2024-06-01 10:00": {"x"},
    "2024-06-02 10:00": {"x", "y"},
    "2024-06-03 10:00": {"y"},
    "2024-06-04 10:00": set(),
}
MINUS5 = timezone(timedelta(hours=-5))
PLUS2 = timezone(timedelta(hours=2))

W = Duration.parse
T = frozenset

CASES: list[tuple[str, list[str], Policy, list[str]]] = [
    ("last 1", A, Policy(last=1), A[9:]),
    ("last 3", A, Policy(last=3), A[7:]),
    ("last more than there are", A, Policy(last=20), A),
    ("last unlimited", A, Policy(last=-1), A),
    ("daily 3", A, Policy(daily=3), A[7:]),
    ("daily more than days", A, Policy(daily=20), A),
    ("daily unlimited", A, Policy(daily=-1), A),
    ("weekly 1", A, Policy(weekly=1), A[9:]),
    ("weekly 2: newest of each week", A, Policy(weekly=2), [A[6], A[9]]),
    ("weekly 3: the oldest too, counts left", A, Policy(weekly=3), [A[0], A[6], A[9]]),
    ("monthly 1", A, Policy(monthly=1), A[9:]),
    ("monthly 2: oldest kept, not filled", A, Policy(monthly=2), [A[0], A[9]]),
    ("yearly 5", A, Policy(yearly=5), [A[0], A[9]]),
    ("hourly 2", A, Policy(hourly=2), A[8:]),
    ("rules count independently", A, Policy(last=2, daily=4), A[6:]),
    ("rules overlap, union", A, Policy(last=1, weekly=2), [A[6], A[9]]),
    ("within 2d: strictly newer", A, Policy(within=W("2d")), A[8:]),
    ("within 2d1h", A, Policy(within=W("2d1h")), A[7:]),
    ("within 1m", A, Policy(within=W("1m")), A),
    ("within and last", A, Policy(within=W("1d"), last=3), A[7:]),
    ("daily 2, two a day", B, Policy(daily=2), [B[3], B[4]]),
    ("daily 3, buckets filled", B, Policy(daily=3), [B[1], B[3], B[4]]),
    ("daily 4, oldest in a kept day", B, Policy(daily=4), [B[0], B[1], B[3], B[4]]),
    ("hourly 10", B, Policy(hourly=10), B),
    ("last 1 and daily 1 agree", B, Policy(last=1, daily=1), [B[4]]),
    ("last 2 and daily 2 agree", B, Policy(last=2, daily=2), [B[3], B[4]]),
    ("yearly 2", C, Policy(yearly=2), [C[3], C[5]]),
    ("yearly 3", C, Policy(yearly=3), [C[0], C[3], C[5]]),
    ("monthly 3", C, Policy(monthly=3), [C[3], C[4], C[5]]),
    ("monthly 6", C, Policy(monthly=6), C),
    ("weekly 2, ISO weeks", C, Policy(weekly=2), [C[4], C[5]]),
    ("weekly 3, 31 Dec in week 52", C, Policy(weekly=3), [C[3], C[4], C[5]]),
    ("within 1y from a leap day", C, Policy(within=W("1y")), C[2:]),
    ("within 2m", C, Policy(within=W("2m")), C[3:]),
    ("within 1y1m3d4h", C, Policy(within=W("1y1m3d4h")), C[2:]),
    ("within 1y2m3d4h reaches all", C, Policy(within=W("1y2m3d4h")), C),
    ("within 0h keeps nothing", C, Policy(within=W("0h"), last=1), [C[5]]),
    (
        "future snapshot: within from the newest not in the future",
        D,
        Policy(within=W("1d")),
        [D[2], D[3]],
    ),
    ("future snapshot kept by last", D, Policy(last=1), [D[3]]),
    ("future snapshot, daily 2", D, Policy(daily=2), [D[2], D[3]]),
    ("keep-tag x", list(E), Policy(tags=(T({"x"}),)), list(E)[:2]),
    ("keep-tag x,y needs both", list(E), Policy(tags=(T({"x", "y"}),)), list(E)[1:2]),
    ("keep-tag x or y", list(E), Policy(tags=(T({"x"}), T({"y"}))), list(E)[:3]),
    ("keep-tag no match", list(E), Policy(tags=(T({"z"}),)), []),
    ("keep-tag and last", list(E), Policy(tags=(T({"y"}),), last=1), list(E)[1:]),
]

ZONED: list[tuple[str, list[str], Policy, timezone, list[str]]] = [
    (
        "yearly 2 at UTC-5: 00:30 UTC on New Year is still 2023",
        C,
        Policy(yearly=2),
        MINUS5,
        [C[4], C[5]],
    ),
    ("monthly 1 at UTC-5", C, Policy(monthly=1), MINUS5, [C[5]]),
    ("daily 3 at UTC+2", C, Policy(daily=3), PLUS2, [C[3], C[4], C[5]]),
    (
        "yearly 3 at UTC+2: 23:00 UTC on 31 Dec is the next year",
        C,
        Policy(yearly=3),
        PLUS2,
        [C[0], C[3], C[5]],
    ),
]


def _dated(times: list[str]) -> list[Dated]:
    return [Dated(t, ns(t), T(E.get(t, set()))) for t in times]


def _kept(times: list[str], policy: Policy, tz: timezone, now: str = NOW) -> set[str]:
    decisions = apply_policy(_dated(times), policy, tz=tz, now_ns=ns(now))
    assert len(decisions) == len(times)
    return {d.snapshot.id for d in decisions if d.keep}


@pytest.mark.parametrize(("name", "times", "policy", "kept"), CASES, ids=[c[0] for c in CASES])
def test_policy_table(name: str, times: list[str], policy: Policy, kept: list[str]) -> None:
    assert _kept(times, policy, UTC) == set(kept)


@pytest.mark.parametrize(
    ("name", "times", "policy", "tz", "kept"), ZONED, ids=[c[0] for c in ZONED]
)
def test_policy_time_zone(
    name: str, times: list[str], policy: Policy, tz: timezone, kept: list[str]
) -> None:
    assert _kept(times, policy, tz) == set(kept)


def test_all_in_the_future_measures_within_from_now() -> None:
    times = ["2030-01-01 00:00", "2030-01-02 00:00"]
    assert _kept(times, Policy(within=W("1d")), UTC) == set(times)


def test_abandoned_repository_keeps_its_last_within() -> None:
    # Nobody backed up for a year: --keep-within counts from the last snapshot, not now.
    assert _kept(D[:3], Policy(within=W("1d")), UTC, now="2025-06-01 00:00") == {D[2]}


def test_reasons_name_each_rule() -> None:
    decisions = apply_policy(_dated(A), Policy(last=1, weekly=3), tz=UTC, now_ns=ns(NOW))
    by_id = {d.snapshot.id: d.reasons for d in decisions}
    assert by_id[A[9]] == ("last 1", "weekly 3")
    assert by_id[A[6]] == ("weekly 3",)
    assert by_id[A[0]] == ("oldest, weekly 3 not filled",)
    assert by_id[A[5]] == ()
    assert [d.snapshot.id for d in decisions] == A[::-1]  # newest first


def test_empty_policy_is_empty() -> None:
    assert Policy().empty
    assert Policy(within=W("0h")).empty
    assert not Policy(last=1).empty
    assert not Policy(tags=(T({"x"}),)).empty
    assert not any(d.keep for d in apply_policy(_dated(A), Policy(), tz=UTC, now_ns=ns(NOW)))


@pytest.mark.parametrize("text", ["", "3x", "1d2y", "-1d", "d", "1.5d", "1 d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InputError):
        Duration.parse(text)


def test_durations() -> None:
    assert Duration.parse("1y2m3d4h") == Duration(1, 2, 3, 4)
    assert str(Duration.parse("2d")) == "2d"
    # Go's AddDate: 31 March less a month runs on into March.
    start = datetime(2023, 3, 31, 12, tzinfo=UTC)
    assert W("1m").before(start) == datetime(2023, 3, 3, 12, tzinfo=UTC)
    assert W("1d6h").before(start) == datetime(2023, 3, 30, 6, tzinfo=UTC)


def test_negative_counts_refused() -> None:
    with pytest.raises(InputError):
        Policy(daily=-2)
