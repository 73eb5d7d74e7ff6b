"""Calendar windows (UTC) and how long their keys live."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from openai_policy_api import WINDOWS

from .keyspace import window_bucket
from .protocol import BucketLimit

# How long a bucket's keys outlive the bucket: long enough for the operator to report the
# previous hour/day/month, short enough that Redis does not keep every bucket forever.
KEY_GRACE_SECONDS = {"hour": 24 * 3600, "day": 8 * 24 * 3600, "month": 93 * 24 * 3600}


def utc_now() -> datetime:
    return datetime.now(UTC)


def bucket_end(window: str, now: datetime) -> datetime:
    """The first instant after the bucket that ``now`` falls in."""
    now = now.astimezone(UTC)
    if window == "hour":
        return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if window == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if window == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    raise ValueError(f"unknown budget window {window!r}")


def key_ttl_seconds(window: str, now: datetime) -> int:
    """Seconds until the bucket's keys may expire: bucket end + grace, measured on the real clock
    (so a ``now`` in the past, as in tests, never yields a key that expires at once)."""
    remaining = bucket_end(window, now).timestamp() - time.time()
    return int(max(remaining, 0.0)) + KEY_GRACE_SECONDS[window]


def current_buckets(limits: dict[str, int], now: datetime | None = None) -> tuple[BucketLimit, ...]:
    """Every window's bucket at ``now``; windows absent from ``limits`` are tracked but unlimited."""
    now = now or utc_now()
    return tuple(
        BucketLimit(window, window_bucket(window, now), limits.get(window), key_ttl_seconds(window, now))
        for window in WINDOWS
    )
