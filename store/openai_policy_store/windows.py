"""Calendar windows in the policy's time zone, and how long their keys live.

The one place where a moment becomes a bucket: its id (the key part), its start and its end.

* ``hour`` starts on the local hour (at :30 UTC in Asia/Kolkata), ``day`` at local midnight,
  ``week`` on Monday at local midnight (ISO weeks), ``month`` on the 1st at local midnight.
  Daylight-saving days last 23 or 25 hours; a month lasts its own length.
* An hour bucket also ends where the zone's UTC offset changes. On a fall-back night the local
  hour 01:00 happens twice; the two are two buckets, never one of two hours, and each bucket id
  carries the UTC offset it started at (``2026-11-01T01:00-04:00``, then ``...-05:00``).
* In UTC the ids keep their historical short form (``2026-11-22T14``, ``2026-11-22``,
  ``2026-11``; the new week ``2026-W48``), so spend counted before time zones existed continues.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo

from openai_policy_api import WINDOWS

from .protocol import BucketLimit

# How long a bucket's keys outlive the bucket: long enough for the operator to report the
# previous hour/day/week/month, short enough that Redis does not keep every bucket forever.
KEY_GRACE_SECONDS = {"hour": 24 * 3600, "day": 8 * 24 * 3600, "week": 15 * 24 * 3600, "month": 93 * 24 * 3600}
# Per-user and per-feature buckets: nothing reads them once they end (the operator reports the
# policy's buckets and the top spenders), so they go soon after; an hour covers a late settle.
SCOPED_GRACE_SECONDS = 3600

_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Bucket:
    """One window's bucket: its id and the UTC instants it covers, ``start <= t < end``."""

    window: str
    id: str
    start: datetime
    end: datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


@cache
def zone(name: str) -> tzinfo:
    """The tzinfo of an IANA name (``UTC`` is the fast built-in one)."""
    return UTC if name == "UTC" else ZoneInfo(name)


def _utc_bucket(window: str, now: datetime) -> Bucket:
    if window == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return Bucket(window, start.strftime("%Y-%m-%dT%H"), start, start + _HOUR)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return Bucket(window, day.strftime("%Y-%m-%d"), day, day + timedelta(days=1))
    if window == "week":
        start = day - timedelta(days=day.weekday())
        return Bucket(window, start.strftime("%G-W%V"), start, start + timedelta(days=7))
    if window == "month":
        start = day.replace(day=1)
        return Bucket(window, start.strftime("%Y-%m"), start, _next_month(start.date(), UTC))
    raise ValueError(f"unknown budget window {window!r}; expected one of {', '.join(WINDOWS)}")


def _offset(tz: tzinfo, moment: datetime) -> timedelta | None:
    return moment.astimezone(tz).utcoffset()


def _transition(tz: tzinfo, before: datetime, after: datetime) -> datetime:
    """The first whole second in ``(before, after]`` that has ``after``'s UTC offset (the zone's
    offsets differ at the two ends; an hour holds at most one transition)."""
    low, high = int(before.timestamp()), int(after.timestamp())
    target = _offset(tz, after)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(tz, datetime.fromtimestamp(middle, UTC)) == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _wall_start(tz: tzinfo, day: date) -> datetime:
    """The first instant whose local wall time is ``day`` 00:00 or later: local midnight, or the
    end of the gap when a daylight-saving jump skips midnight."""
    wall = datetime(day.year, day.month, day.day)
    found = [
        moment
        for fold in (0, 1)
        if (moment := wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)).astimezone(tz).replace(tzinfo=None)
        >= wall
    ]
    return min(found)


def _next_month(first: date, tz: tzinfo) -> datetime:
    following = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    return _wall_start(tz, following)


def _zoned_bucket(window: str, now: datetime, tz: tzinfo) -> Bucket:
    local = now.astimezone(tz)
    if window == "hour":
        offset = local.utcoffset()
        floor = now - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
        start = floor if _offset(tz, floor) == offset else _transition(tz, floor, now)
        end = floor + _HOUR
        if _offset(tz, end) != offset:
            end = _transition(tz, now, end)
    elif window == "day":
        start, end = _wall_start(tz, local.date()), _wall_start(tz, local.date() + timedelta(days=1))
    elif window == "week":
        monday = local.date() - timedelta(days=local.weekday())
        start, end = _wall_start(tz, monday), _wall_start(tz, monday + timedelta(days=7))
    elif window == "month":
        first = local.date().replace(day=1)
        start, end = _wall_start(tz, first), _next_month(first, tz)
    else:
        raise ValueError(f"unknown budget window {window!r}; expected one of {', '.join(WINDOWS)}")
    # The local start with its offset names one instant: unambiguous across a fall-back night.
    return Bucket(window, start.astimezone(tz).isoformat(timespec="minutes"), start, end)


def bucket_of(window: str, now: datetime | None = None, time_zone: str = "UTC") -> Bucket:
    """The bucket of ``window`` that ``now`` (default: the real clock) falls in, in ``time_zone``."""
    now = (now or utc_now()).astimezone(UTC)
    if time_zone == "UTC":
        return _utc_bucket(window, now)
    return _zoned_bucket(window, now, zone(time_zone))


def bucket_end(window: str, now: datetime, time_zone: str = "UTC") -> datetime:
    """The first instant after the bucket that ``now`` falls in."""
    return bucket_of(window, now, time_zone).end


def _ttl(end: datetime, grace: int) -> int:
    """Seconds until keys of a bucket ending at ``end`` may expire, on the real clock (so a ``now``
    in the past, as in tests, never yields a key that expires at once)."""
    return int(max(end.timestamp() - time.time(), 0.0)) + grace


def key_ttl_seconds(window: str, now: datetime, time_zone: str = "UTC") -> int:
    """Seconds until the bucket's keys may expire: bucket end + the window's grace."""
    return _ttl(bucket_end(window, now, time_zone), KEY_GRACE_SECONDS[window])


def current_buckets(
    limits: Mapping[str, int], now: datetime | None = None, time_zone: str = "UTC"
) -> tuple[BucketLimit, ...]:
    """Every window's bucket at ``now``; windows absent from ``limits`` are tracked but unlimited."""
    out = []
    for window in WINDOWS:
        bucket = bucket_of(window, now, time_zone)
        out.append(
            BucketLimit(
                window,
                bucket.id,
                limits.get(window),
                _ttl(bucket.end, KEY_GRACE_SECONDS[window]),
                start=bucket.start,
                end=bucket.end,
            )
        )
    return tuple(out)


def scoped_buckets(
    scope: str, limits: Mapping[str, int], policy: Sequence[BucketLimit]
) -> tuple[BucketLimit, ...]:
    """One user's (or feature's) buckets: those of the policy's windows it has a limit for (the
    same bucket ids), under ``scope`` (``keyspace.scope_part``), with the short scoped TTL."""
    return tuple(
        BucketLimit(
            b.window,
            b.bucket,
            limits[b.window],
            _ttl(b.end, SCOPED_GRACE_SECONDS) if b.end is not None else b.ttl_seconds,
            scope=scope,
            start=b.start,
            end=b.end,
        )
        for b in policy
        if b.window in limits
    )
