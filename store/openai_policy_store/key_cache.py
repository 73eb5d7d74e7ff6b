"""Memoised ``store_keys`` names for the hot path.

Every request asks both stores for the same handful of key names (spend and reserved per budget
window, one counter per rate limit); building each one formats a string. The names change only
when a bucket rolls over (each minute for rate limits, each hour for budgets) or a new user
appears, so they are kept in small dictionaries that are simply emptied when they grow past
``limit`` entries: memory stays bounded however many users or minutes go by.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import keyspace
from .protocol import BucketLimit, Ref


class KeyNames:
    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._budget: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        self._budget_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._rate: dict[tuple[str, str, str, str, str], str] = {}
        self._reservations: dict[tuple[str, str], tuple[str, str]] = {}

    def budget(self, ref: Ref, window: str, bucket: str) -> tuple[str, str]:
        """``(spend key, reserved key)`` of one window bucket."""
        cache_key = (ref[0], ref[1], window, bucket)
        names = self._budget.get(cache_key)
        if names is None:
            if len(self._budget) >= self.limit:
                self._budget.clear()
            names = self._budget[cache_key] = (
                keyspace.spend_key(ref[0], ref[1], window, bucket),
                keyspace.reserved_key(ref[0], ref[1], window, bucket),
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
                keyspace.reservations_key(ref[0], ref[1]),
                keyspace.reservation_deadlines_key(ref[0], ref[1]),
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

    def rate(self, ref: Ref, scope: str, unit: str, minute: str) -> str:
        """One per-minute rate-limit counter."""
        cache_key = (ref[0], ref[1], scope, unit, minute)
        name = self._rate.get(cache_key)
        if name is None:
            if len(self._rate) >= self.limit:
                self._rate.clear()
            name = self._rate[cache_key] = keyspace.ratelimit_key(ref[0], ref[1], scope, unit, minute)
        return name
