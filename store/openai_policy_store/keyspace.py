"""Redis key names shared by the sidecar (writer) and the operator (reader).

Every key of one policy carries the hash tag ``{namespace/name}`` so that multi-key Lua
scripts touch a single Redis Cluster slot. Keys are derived from the policy's namespace and
name, not its UID: deleting and re-creating a policy continues the same spend counters, so a
delete/re-create cannot reset a monthly budget.

Every key name is built here; :class:`KeyNames` memoises the ones the request path asks for.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime

from .protocol import BucketLimit, Ref
from .windows import bucket_of

PREFIX = "oaip"


def policy_tag(namespace: str, name: str) -> str:
    """The Redis Cluster hash tag for one policy."""
    return "{" + f"{namespace}/{name}" + "}"


def _key(namespace: str, name: str, *parts: str) -> str:
    return ":".join((PREFIX, policy_tag(namespace, name), *parts))


def window_bucket(window: str, now: datetime | None = None, time_zone: str = "UTC") -> str:
    """The calendar bucket a moment falls in, e.g. ``2026-11-22T14`` for a UTC hour (``windows``)."""
    return bucket_of(window, now, time_zone).id


# Names the apps choose (users, features) that may stand in a key as they are: no ':', '*', '?',
# '[', '{', '|' or space can reach a key pattern, a hash tag or the reservation records.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._@+=-]{1,64}$")
# The longest user or feature name a budget accepts (longer ones are refused before any key exists).
MAX_NAME_LENGTH = 256


def scope_part(kind: str, name: str) -> str:
    """The key part of one user's (``kind`` user) or feature's budget buckets: ``user=alice``, or
    ``user#<digest>`` for a name that is long or carries other characters."""
    if _SAFE_NAME.match(name):
        return f"{kind}={name}"
    return f"{kind}#" + hashlib.sha256(name.encode()).hexdigest()[:32]


def scope_kind(scope: str) -> str:
    """``user`` or ``feature`` for a ``scope_part``; ``policy`` for the policy's own buckets ("")."""
    return scope.partition("=")[0].partition("#")[0] or "policy"


def spend_key(namespace: str, name: str, window: str, bucket: str, scope: str = "") -> str:
    """Settled spend in integer micro-dollars for one window bucket (a plain integer key); with a
    ``scope`` (``scope_part``), one user's or feature's."""
    if scope:
        return _key(namespace, name, "spend", scope, window, bucket)
    return _key(namespace, name, "spend", window, bucket)


def reserved_key(namespace: str, name: str, window: str, bucket: str, scope: str = "") -> str:
    """Micro-dollars reserved by calls in flight for one window bucket (a plain integer key)."""
    if scope:
        return _key(namespace, name, "reserved", scope, window, bucket)
    return _key(namespace, name, "reserved", window, bucket)


# The kinds of top-spender sets: ``users`` and ``features``.
TOP_KINDS = ("users", "features")


def top_key(namespace: str, name: str, kind: str, window: str, bucket: str) -> str:
    """Sorted set: user (``kind`` users) or feature name scored by its settled micro-dollars in one
    of the policy's window buckets (the top spenders), trimmed to ``TOP_SPENDERS_KEPT``."""
    return _key(namespace, name, "top", kind, window, bucket)


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
        self._budget: dict[tuple[str, str, str, str, str], tuple[str, str]] = {}
        self._budget_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._rate: dict[tuple[str, str, str, str], str] = {}
        self._reservations: dict[tuple[str, str], tuple[str, str]] = {}

    def budget(self, ref: Ref, window: str, bucket: str, scope: str = "") -> tuple[str, str]:
        """``(spend key, reserved key)`` of one window bucket (of the policy, or of one ``scope``)."""
        cache_key = (ref[0], ref[1], window, bucket, scope)
        names = self._budget.get(cache_key)
        if names is None:
            if len(self._budget) >= self.limit:
                self._budget.clear()
            names = self._budget[cache_key] = (
                spend_key(ref[0], ref[1], window, bucket, scope),
                reserved_key(ref[0], ref[1], window, bucket, scope),
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
        cache_key = (ref[0], ref[1], *(part for b in buckets for part in (b.window, b.bucket, b.scope)))
        names = self._budget_lists.get(cache_key)
        if names is None:
            if len(self._budget_lists) >= self.limit:
                self._budget_lists.clear()
            flat = list(self.reservations(ref))
            for b in buckets:
                flat.extend(self.budget(ref, b.window, b.bucket, b.scope))
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
