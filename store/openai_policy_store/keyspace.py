"""Redis key names shared by the sidecar (writer) and the operator (reader).

Every key of one policy carries the hash tag ``{namespace/name}`` so that multi-key Lua
scripts touch a single Redis Cluster slot. Keys are derived from the policy's namespace and
name, not its UID: deleting and re-creating a policy continues the same spend counters, so a
delete/re-create cannot reset a monthly budget.

Every key name is built here; :class:`KeyNames` memoises the ones the request path asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from openai_policy_api import WINDOWS

from .protocol import BucketLimit, Ref

PREFIX = "oaip"


def policy_tag(namespace: str, name: str) -> str:
    """The Redis Cluster hash tag for one policy."""
    return "{" + f"{namespace}/{name}" + "}"


def _key(namespace: str, name: str, *parts: str) -> str:
    return ":".join((PREFIX, policy_tag(namespace, name), *parts))


def window_bucket(window: str, now: datetime | None = None) -> str:
    """The calendar bucket (UTC) a moment falls in, e.g. ``2026-11-22T14`` for an hour."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if window == "hour":
        return now.strftime("%Y-%m-%dT%H")
    if window == "day":
        return now.strftime("%Y-%m-%d")
    if window == "month":
        return now.strftime("%Y-%m")
    raise ValueError(f"unknown budget window {window!r}; expected one of {', '.join(WINDOWS)}")


def spend_key(namespace: str, name: str, window: str, bucket: str) -> str:
    """Settled spend in integer micro-dollars for one window bucket (a plain integer key)."""
    return _key(namespace, name, "spend", window, bucket)


def reserved_key(namespace: str, name: str, window: str, bucket: str) -> str:
    """Micro-dollars reserved by calls in flight for one window bucket (a plain integer key)."""
    return _key(namespace, name, "reserved", window, bucket)


def reservations_key(namespace: str, name: str) -> str:
    """Hash: reservation id -> ``amount|window|bucket|window|bucket...`` for calls in flight."""
    return _key(namespace, name, "reservations")


def reservation_deadlines_key(namespace: str, name: str) -> str:
    """Sorted set: reservation id scored by the epoch millisecond after which it is swept back."""
    return _key(namespace, name, "reservation-deadlines")


def usage_key(namespace: str, name: str) -> str:
    """A hash of monotonically increasing usage counters, written by sidecars, read by the operator.

    Its fields are those of ``usage_counts.UsageCounts``.
    """
    return _key(namespace, name, "usage")


def heartbeats_key(namespace: str, name: str) -> str:
    """A hash: pod name -> JSON heartbeat (generation applied, key loaded, last error, time...)."""
    return _key(namespace, name, "heartbeats")


def policy_key(namespace: str, name: str) -> str:
    """The compiled policy document (JSON) most recently published by the operator."""
    return _key(namespace, name, "policy")


def policy_channel(namespace: str, name: str) -> str:
    """Pub/sub channel on which the operator announces a new policy generation."""
    return _key(namespace, name, "policy-updates")


def ratelimit_key(namespace: str, name: str, scope: str, unit: str) -> str:
    """A rate-limit bucket (GCRA: ``level:stamp``); scope is ``policy`` or ``user:<id>``, unit
    ``requests``/``tokens``. The ``gcra`` suffix keeps it apart from per-minute counters of older
    sidecars during a rollout (they hold a plain integer)."""
    return _key(namespace, name, "ratelimit", scope, unit, "gcra")


def cache_key(namespace: str, name: str, digest: str) -> str:
    """A cached response, addressed by the SHA-256 of the request's canonical form."""
    return _key(namespace, name, "cache", digest)


def context_size_key(namespace: str, name: str, object_id: str) -> str:
    """The context size (input + output tokens) a stored response or conversation carries into
    the next request that names it (``response_sizes``)."""
    return _key(namespace, name, "context", object_id)


class KeyNames:
    """Memoised key names for the hot path.

    Every request asks the store for the same handful of key names (spend and reserved per
    budget window, one counter per rate limit); building each one formats a string. The names
    change only when a budget bucket rolls over (each hour) or
    a new user appears, so they are kept in small dictionaries that are simply emptied when they
    grow past ``limit`` entries: memory stays bounded however many users or minutes go by.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._budget: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        self._budget_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._rate: dict[tuple[str, str, str, str], str] = {}
        self._reservations: dict[tuple[str, str], tuple[str, str]] = {}

    def budget(self, ref: Ref, window: str, bucket: str) -> tuple[str, str]:
        """``(spend key, reserved key)`` of one window bucket."""
        cache_key = (ref[0], ref[1], window, bucket)
        names = self._budget.get(cache_key)
        if names is None:
            if len(self._budget) >= self.limit:
                self._budget.clear()
            names = self._budget[cache_key] = (
                spend_key(ref[0], ref[1], window, bucket),
                reserved_key(ref[0], ref[1], window, bucket),
            )
        return names

    def reservations(self, ref: Ref) -> tuple[str, str]:
        """``(reservations hash, reservation deadlines zset)`` of one policy."""
        cache_key = (ref[0], ref[1])
        names = self._reservations.get(cache_key)
        if names is None:
            if len(self._reservations) >= self.limit:
                self._reservations.clear()
            names = self._reservations[cache_key] = (
                reservations_key(ref[0], ref[1]),
                reservation_deadlines_key(ref[0], ref[1]),
            )
        return names

    def budget_list(self, ref: Ref, buckets: Sequence[BucketLimit]) -> tuple[str, ...]:
        """The budget scripts' KEYS: reservations, deadlines, then spend and reserved per bucket."""
        cache_key = (ref[0], ref[1], *(part for b in buckets for part in (b.window, b.bucket)))
        names = self._budget_lists.get(cache_key)
        if names is None:
            if len(self._budget_lists) >= self.limit:
                self._budget_lists.clear()
            flat = list(self.reservations(ref))
            for b in buckets:
                flat.extend(self.budget(ref, b.window, b.bucket))
            names = self._budget_lists[cache_key] = tuple(flat)
        return names

    def rate(self, ref: Ref, scope: str, unit: str) -> str:
        """One rate-limit bucket."""
        cache_key = (ref[0], ref[1], scope, unit)
        name = self._rate.get(cache_key)
        if name is None:
            if len(self._rate) >= self.limit:
                self._rate.clear()
            name = self._rate[cache_key] = ratelimit_key(ref[0], ref[1], scope, unit)
        return name
