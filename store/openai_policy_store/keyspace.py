"""Redis key names shared by the sidecar (writer) and the operator (reader).

Every key of one policy carries the hash tag ``{namespace/name}`` so that multi-key Lua
scripts touch a single Redis Cluster slot. Keys are derived from the policy's namespace and
name, not its UID: deleting and re-creating a policy continues the same spend counters, so a
delete/re-create cannot reset a monthly budget.
"""

from __future__ import annotations

from datetime import UTC, datetime

PREFIX = "oaip"
WINDOWS = ("hour", "day", "month")


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


def ratelimit_key(namespace: str, name: str, scope: str, unit: str, minute: str) -> str:
    """A per-minute rate-limit counter; scope is ``policy`` or ``user:<id>``, unit ``requests``/``tokens``."""
    return _key(namespace, name, "ratelimit", scope, unit, minute)


def cache_key(namespace: str, name: str, digest: str) -> str:
    """A cached response, addressed by the SHA-256 of the request's canonical form."""
    return _key(namespace, name, "cache", digest)
