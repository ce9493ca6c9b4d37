"""Retention policies: which snapshots of a group to keep, and why (``forget``).

The semantics are restic's, so that a policy written for restic means the same here:

* Snapshots are taken newest first.  Every rule counts on its own; a snapshot is kept
  if any rule keeps it, and each rule that keeps it is named as a reason.
* ``last n`` keeps the ``n`` newest.  ``hourly``/``daily``/``weekly``/``monthly``/
  ``yearly n`` keep the newest snapshot of each of the ``n`` newest hours (days, ISO
  weeks, months, years) that hold a snapshot; the buckets are read in local time, or
  in the time zone given (``--utc``).  A count of ``-1`` means without limit.
* When a bucket rule still has counts left at the group's oldest snapshot, that
  snapshot is kept too (even in a bucket already kept): history reaches back as far
  as it can while the policy has room for it.
* ``within`` keeps every snapshot newer than the newest snapshot that is not dated in
  the future, less the duration (years and months by the calendar, in the same time
  zone); so a clock set wrong once does not make every other snapshot look old, and a
  repository nobody backs up into any more keeps its last ones.
* ``tags`` keeps every snapshot that has all the tags of any one of the tag sets.
* A policy with no rule keeps everything, and callers refuse it (:attr:`Policy.empty`):
  a forgotten option must never mean "remove every snapshot".

Pure: no I/O, no repository; the CLI and tests hand in (id, time, tags) triples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from cipherdump.errors import InputError

# Bucket rules in restic's order, which is also the order reasons are given in.
BUCKETS = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True, slots=True)
class Duration:
    """``--keep-within``: years, months, days and hours, as ``1y2m3d4h``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = re.fullmatch(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?", text)
        if not text or match is None:
            raise InputError(
                f"not a duration: {text!r} (use years, months, days and hours, as 1y2m3d4h)"
            )
        y, mo, d, h = (int(g) if g else 0 for g in match.groups())
        return cls(y, mo, d, h)

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, moment: datetime) -> datetime:
        """``moment`` less this duration, by the calendar as Go's ``AddDate`` counts
        (restic's): a day past the month's end runs on into the next month, so 31 March
        less one month is 3 March (or 2 March in a leap year); then less the hours."""
        total_months = moment.year * 12 + (moment.month - 1) - self.years * 12 - self.months
        year, month = divmod(total_months, 12)
        first = moment.replace(year=year, month=month + 1, day=1)
        return first + timedelta(days=moment.day - 1 - self.days, hours=-self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


@dataclass(frozen=True, slots=True)
class Policy:
    """Counts of 0 leave a rule out; -1 is without limit."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("last", *BUCKETS):
            if getattr(self, name) < -1:
                raise InputError(f"--keep-{name} must be -1 (no limit) or more")

    @property
    def empty(self) -> bool:
        counts = (self.last, *(getattr(self, b) for b in BUCKETS))
        return not any(counts) and (self.within is None or self.within.zero) and not self.tags


@dataclass(frozen=True, slots=True)
class Dated:
    """One snapshot as the policy sees it."""

    id: str
    time_ns: int
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    snapshot: Dated
    keep: bool
    reasons: tuple[str, ...] = field(default=())


def _bucket(rule: str, moment: datetime) -> tuple[int, ...]:
    if rule == "hourly":
        return (moment.year, moment.month, moment.day, moment.hour)
    if rule == "daily":
        return (moment.year, moment.month, moment.day)
    if rule == "weekly":
        iso = moment.isocalendar()
        return (iso.year, iso.week)
    if rule == "monthly":
        return (moment.year, moment.month)
    return (moment.year,)


def _moment(time_ns: int, tz: tzinfo | None) -> datetime:
    """An aware datetime in ``tz`` (local time if None), exact to the microsecond
    (floats of nanoseconds would round 23:59:59.9999999 into the next day)."""
    seconds, rest = divmod(time_ns, 10**9)
    return datetime.fromtimestamp(seconds, tz).astimezone(tz) + timedelta(microseconds=rest // 1000)


def apply_policy(
    snapshots: Sequence[Dated], policy: Policy, *, tz: tzinfo | None, now_ns: int
) -> list[Decision]:
    """Decide for each snapshot of one group; returned newest first (ties by id).

    ``tz`` is the time zone buckets and ``within`` are read in (None: local time);
    ``now_ns`` is the present, past which a snapshot is dated in the future."""
    ordered = sorted(snapshots, key=lambda s: (-s.time_ns, s.id))
    local = [_moment(s.time_ns, tz) for s in ordered]
    latest: datetime | None = None
    for snap, moment in zip(ordered, local, strict=True):
        if snap.time_ns <= now_ns:
            latest = moment
            break
    if latest is None:
        latest = _moment(now_ns, tz)
    within_from = (
        policy.within.before(latest)
        if policy.within is not None and not policy.within.zero
        else None
    )
    left = {name: getattr(policy, name) for name in BUCKETS}
    last_bucket: dict[str, tuple[int, ...] | None] = dict.fromkeys(BUCKETS)
    decisions = []
    for nr, (snap, moment) in enumerate(zip(ordered, local, strict=True)):
        reasons: list[str] = []
        if policy.last == -1 or nr < policy.last:
            reasons.append("last snapshot" if policy.last == -1 else f"last {policy.last}")
        for tagset in policy.tags:
            if tagset <= snap.tags:
                reasons.append(f"tag {','.join(sorted(tagset))}")
        if within_from is not None and moment > within_from:
            reasons.append(f"within {policy.within}")
        oldest = nr == len(ordered) - 1
        for rule in BUCKETS:
            if not left[rule]:
                continue
            value = _bucket(rule, moment)
            same = value == last_bucket[rule]
            if not same or oldest:
                last_bucket[rule] = value
                if left[rule] > 0:
                    left[rule] -= 1
                count = getattr(policy, rule)
                reason = f"{rule} snapshot" if count == -1 else f"{rule} {count}"
                reasons.append(f"oldest, {reason} not filled" if same else reason)
        decisions.append(Decision(snap, bool(reasons), tuple(reasons)))
    return decisions
