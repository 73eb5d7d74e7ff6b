"""In-memory store: the same semantics as :class:`RedisStore`, for one replica or standalone use.

Atomicity comes from asyncio itself: every operation runs to completion without an ``await``
in its critical section, so no other task can interleave (the equivalent of a Lua script).
It is not thread-safe; use it from one event loop. Keys are the same ``keyspace`` names as in
Redis and expire on the same schedule (lazily on access, plus a periodic purge so memory stays
flat under a stream of per-minute and per-user keys).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from openai_policy_api import TOP_SPENDERS_KEPT

from . import keyspace
from .protocol import BucketLimit, BucketSpend, RateCounter, RateOutcome, Ref, ReserveOutcome, remaining
from .windows import current_buckets

_PURGE_EVERY = 1024  # writes between sweeps for expired keys


class _Reservation:
    __slots__ = ("amount", "buckets", "deadline", "scoped")

    def __init__(
        self, amount: int, buckets: dict[str, str], deadline: float, scoped: tuple[str, ...]
    ) -> None:
        self.amount = amount
        self.buckets = buckets  # window -> bucket at reservation time (the policy's buckets)
        self.deadline = deadline
        self.scoped = scoped  # reserved keys of the user's and feature's buckets (as lua.py records)


def drain_ms(level: int, limit: int) -> int:
    """Milliseconds until a bucket at ``level`` is empty again (rounded up)."""
    return -(-level // limit)


class MemoryStore:
    """A :class:`~openai_policy_store.protocol.Store` kept in this process."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ints: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._hashes: dict[str, dict[str, str]] = {}
        self._strings: dict[str, bytes] = {}
        self._levels: dict[str, tuple[int, int]] = {}  # rate-limit bucket -> (level, stamp ms)
        self._tops: dict[str, dict[str, int]] = {}  # top-spender set -> name -> micros
        self._reservations: dict[str, dict[str, _Reservation]] = {}
        # Per policy, (deadline, id) in deadline order: a sweep costs O(expired), not O(in flight).
        self._deadlines: dict[str, list[tuple[float, str]]] = {}
        self._subscribers: dict[str, set[asyncio.Queue[int]]] = {}
        self._writes = 0
        self._names = keyspace.KeyNames()
        self.closed = False

    # -- plumbing ---------------------------------------------------------------------------
    def _alive(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self._delete(key)
            return False
        return True

    def _delete(self, key: str) -> None:
        self._ints.pop(key, None)
        self._strings.pop(key, None)
        self._hashes.pop(key, None)
        self._levels.pop(key, None)
        self._tops.pop(key, None)
        self._expiry.pop(key, None)

    def _get(self, key: str) -> int:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self._delete(key)
            return 0
        return self._ints.get(key, 0)

    def _incr(self, key: str, amount: int, ttl_seconds: float | None = None) -> int:
        value = self._get(key) + amount
        self._ints[key] = value
        if ttl_seconds is not None:
            self._expiry[key] = self._clock() + ttl_seconds
        self._wrote()
        return value

    def _decr_reserved(self, key: str, amount: int) -> None:
        if amount <= 0 or key not in self._ints or not self._alive(key):
            return
        left = self._ints[key] - amount
        if left < 0:  # never negative; a missing key means zero
            self._delete(key)
        else:
            self._ints[key] = left

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            now = self._clock()
            for key in [k for k, deadline in self._expiry.items() if deadline <= now]:
                self._delete(key)

    def key_count(self) -> int:
        """Live keys (for tests of memory growth)."""
        return len(self._ints) + len(self._strings) + len(self._hashes) + len(self._levels) + len(self._tops)

    async def ping(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        self.closed = True

    # -- budgets ----------------------------------------------------------------------------
    def _sweep(self, ref: Ref, buckets: Sequence[BucketLimit]) -> None:
        key = self._names.reservations(ref)[0]
        heap = self._deadlines.get(key)
        if not heap:
            return
        records = self._reservations.get(key, {})
        now = self._clock()
        current = {b.window: b.bucket for b in buckets if not b.scope}
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            rec = records.pop(rid, None)
            if rec is None:  # settled or released meanwhile
                continue
            for window, bucket in rec.buckets.items():
                if current.get(window) == bucket:
                    self._decr_reserved(self._names.budget(ref, window, bucket)[1], rec.amount)
            for key in rec.scoped:
                self._decr_reserved(key, rec.amount)

    async def budget_reserve(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
    ) -> ReserveOutcome:
        return self._reserve(ref, buckets, amount_micros, reservation_id, hold_seconds)

    def _reserve(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
        commit: bool = True,
    ) -> ReserveOutcome:
        self._sweep(ref, buckets)
        names = [self._names.budget(ref, b.window, b.bucket, b.scope) for b in buckets]
        for b, (spend_key, _) in zip(buckets, names, strict=True):
            held = self._get(spend_key)
            if held < b.floor_micros:  # lost spend: put back what the caller last saw
                self._incr(spend_key, b.floor_micros - held, b.ttl_seconds)
        state = [
            (0, 0) if b.limit_micros is None else (self._get(spend_key), self._get(reserved_key))
            for b, (spend_key, reserved_key) in zip(buckets, names, strict=True)
        ]
        refused = next(
            (
                i
                for i, (b, (spent, reserved)) in enumerate(zip(buckets, state, strict=True))
                if b.limit_micros is not None and spent + reserved + amount_micros > b.limit_micros
            ),
            None,
        )
        if not commit:
            return ReserveOutcome(False, remaining=remaining(buckets, state), attempted=False)
        if refused is not None:
            b, (spent, reserved) = buckets[refused], state[refused]
            return ReserveOutcome(
                False,
                b.window,
                b.limit_micros or 0,
                spent,
                reserved,
                index=refused,
                remaining=remaining(buckets, state),
            )
        for b, (_, reserved_key) in zip(buckets, names, strict=True):
            self._incr(reserved_key, amount_micros, b.ttl_seconds)
        key = self._names.reservations(ref)[0]
        deadline = self._clock() + hold_seconds
        self._reservations.setdefault(key, {})[reservation_id] = _Reservation(
            amount_micros,
            {b.window: b.bucket for b in buckets if not b.scope},
            deadline,
            tuple(reserved_key for b, (_, reserved_key) in zip(buckets, names, strict=True) if b.scope),
        )
        heap = self._deadlines.setdefault(key, [])
        heapq.heappush(heap, (deadline, reservation_id))
        if len(heap) > 2 * len(self._reservations[key]) + 1024:
            # Settled ids linger in the heap until their deadline; compact so memory stays flat.
            live = self._reservations[key]
            self._deadlines[key] = heap = [entry for entry in heap if entry[1] in live]
            heapq.heapify(heap)
        after = [(spent, reserved + amount_micros) for spent, reserved in state]
        return ReserveOutcome(True, remaining=remaining(buckets, after))

    def _drop(self, ref: Ref, buckets: Sequence[BucketLimit], reservation_id: str) -> None:
        records = self._reservations.get(self._names.reservations(ref)[0])
        rec = records.pop(reservation_id, None) if records and reservation_id else None
        if rec is None:
            return
        for b in buckets:
            if not b.scope and rec.buckets.get(b.window) == b.bucket:
                self._decr_reserved(self._names.budget(ref, b.window, b.bucket)[1], rec.amount)
        for key in rec.scoped:
            self._decr_reserved(key, rec.amount)

    async def budget_settle(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        reservation_id: str,
        actual_micros: int,
        spenders: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        self._drop(ref, buckets, reservation_id)
        spent = [
            self._incr(self._names.budget(ref, b.window, b.bucket, b.scope)[0], actual_micros, b.ttl_seconds)
            for b in buckets
        ]
        if actual_micros > 0:
            for kind, name in spenders:
                for b in buckets:
                    if not b.scope:
                        self._top_add(
                            keyspace.top_key(*ref, kind, b.window, b.bucket),
                            name,
                            actual_micros,
                            b.ttl_seconds,
                        )
        return spent

    def _top_add(self, key: str, name: str, micros: int, ttl_seconds: float) -> None:
        """ZINCRBY, EXPIRE and the trim to the kept size, as lua.SETTLE does."""
        self._alive(key)  # an expired set starts again empty
        top = self._tops.setdefault(key, {})
        top[name] = top.get(name, 0) + micros
        if len(top) > TOP_SPENDERS_KEPT:
            del top[min(top, key=lambda member: (top[member], member))]
        self._expiry[key] = self._clock() + ttl_seconds
        self._wrote()

    async def top_spenders(
        self, ref: Ref, buckets: Sequence[BucketLimit], count: int
    ) -> dict[tuple[str, str], list[tuple[str, int]]]:
        out: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for b in buckets:
            if b.scope:
                continue
            for kind in keyspace.TOP_KINDS:
                key = keyspace.top_key(*ref, kind, b.window, b.bucket)
                top = self._tops.get(key, {}) if self._alive(key) else {}
                # Highest first; ties in reverse name order, as Redis's ZREVRANGE.
                ranked = sorted(top.items(), key=lambda item: (item[1], item[0]), reverse=True)
                out[(kind, b.window)] = ranked[:count]
        return out

    async def budget_release(self, ref: Ref, buckets: Sequence[BucketLimit], reservation_id: str) -> None:
        self._drop(ref, buckets, reservation_id)

    async def budget_read(self, ref: Ref, buckets: Sequence[BucketLimit]) -> list[BucketSpend]:
        self._sweep(ref, buckets)
        out = []
        for b in buckets:
            spend_key, reserved_key = self._names.budget(ref, b.window, b.bucket, b.scope)
            out.append(
                BucketSpend(
                    b.window,
                    b.bucket,
                    self._get(spend_key),
                    self._get(reserved_key),
                    b.limit_micros,
                    b.start,
                    b.end,
                )
            )
        return out

    async def budget_restore(self, ref: Ref, bucket: BucketLimit, spent_micros: int) -> int:
        key = self._names.budget(ref, bucket.window, bucket.bucket)[0]
        held = self._get(key)
        if held >= spent_micros:
            return 0
        self._incr(key, spent_micros - held, bucket.ttl_seconds)
        return spent_micros - held

    async def read_spend(self, ref: Ref, now: datetime | None = None) -> dict[str, BucketSpend]:
        return {s.window: s for s in await self.budget_read(ref, current_buckets({}, now))}

    # -- rate limits ------------------------------------------------------------------------
    async def rate_consume(
        self, ref: Ref, counters: Sequence[RateCounter], now_ms: int | None = None
    ) -> RateOutcome:
        return self._consume(ref, counters, now_ms)

    async def rate_and_reserve(
        self,
        ref: Ref,
        counters: Sequence[RateCounter],
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
        reserve_when_rate_refused: bool = False,
        now_ms: int | None = None,
    ) -> tuple[RateOutcome, ReserveOutcome]:
        rate = self._consume(ref, counters, now_ms)
        commit = rate.allowed or reserve_when_rate_refused
        return rate, self._reserve(ref, buckets, amount_micros, reservation_id, hold_seconds, commit)

    def _level(self, key: str, counter: RateCounter, now: int) -> int:
        """The bucket's level at ``now``: what was charged, less what drained since (lua.RATE)."""
        if not self._alive(key):
            return 0
        found = self._levels.get(key)
        if found is None:
            return 0
        level, stamp = found
        return max(0, level - max(0, now - stamp) * counter.limit)

    def _consume(self, ref: Ref, counters: Sequence[RateCounter], now_ms: int | None) -> RateOutcome:
        if not counters:
            return RateOutcome(True, None, ())
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        keys = [self._names.rate(ref, c.scope, c.unit) for c in counters]
        levels = tuple(self._level(k, c, now) for k, c in zip(keys, counters, strict=True))
        for index, (counter, level) in enumerate(zip(counters, levels, strict=True)):
            if level + counter.cost > counter.capacity:
                return RateOutcome(False, index, levels)
        after = []
        for key, counter, level in zip(keys, counters, levels, strict=True):
            new = level + counter.cost
            self._levels[key] = (new, now)
            # Gone once drained (plus a second of slack), as Redis's PX does.
            self._expiry[key] = self._clock() + (drain_ms(new, counter.limit) + 1000) / 1000
            self._wrote()
            after.append(new)
        return RateOutcome(True, None, tuple(after))

    # -- usage and heartbeats ---------------------------------------------------------------
    async def incr_usage(self, ref: Ref, counters: Mapping[str, int]) -> None:
        usage = self._hashes.setdefault(keyspace.usage_key(*ref), {})
        for field, amount in counters.items():
            usage[field] = str(int(usage.get(field, "0")) + int(amount))

    async def read_usage(self, ref: Ref) -> dict[str, int]:
        return {k: int(v) for k, v in self._hashes.get(keyspace.usage_key(*ref), {}).items()}

    async def write_heartbeat(self, ref: Ref, pod: str, payload: Mapping[str, Any]) -> None:
        self._hashes.setdefault(keyspace.heartbeats_key(*ref), {})[pod] = json.dumps(dict(payload))

    async def read_heartbeats(self, ref: Ref) -> dict[str, dict[str, Any]]:
        return _parse_heartbeats(self._hashes.get(keyspace.heartbeats_key(*ref), {}))

    async def remove_heartbeats(self, ref: Ref, pods: Sequence[str]) -> None:
        beats = self._hashes.get(keyspace.heartbeats_key(*ref), {})
        for pod in pods:
            beats.pop(pod, None)

    # -- policy publication -----------------------------------------------------------------
    async def get_policy_document(self, ref: Ref) -> dict[str, Any] | None:
        raw = self._strings.get(keyspace.policy_key(*ref))
        return json.loads(raw) if raw is not None else None

    async def publish_policy_document(self, ref: Ref, document: Mapping[str, Any]) -> None:
        generation = document_generation(document)
        self._strings[keyspace.policy_key(*ref)] = json.dumps(dict(document)).encode()
        for queue in self._subscribers.get(keyspace.policy_channel(*ref), ()):
            queue.put_nowait(generation)

    async def policy_updates(self, ref: Ref) -> AsyncIterator[int]:
        channel = keyspace.policy_channel(*ref)
        queue: asyncio.Queue[int] = asyncio.Queue()
        self._subscribers.setdefault(channel, set()).add(queue)
        try:
            current = await self.get_policy_document(ref)
            last = document_generation(current) if current else None
            if last is not None:
                yield last
            while True:
                generation = await queue.get()
                if generation != last:
                    last = generation
                    yield generation
        finally:
            self._subscribers[channel].discard(queue)

    # -- response cache ---------------------------------------------------------------------
    async def cache_get(self, ref: Ref, digest: str) -> bytes | None:
        key = keyspace.cache_key(*ref, digest)
        return self._strings.get(key) if self._alive(key) else None

    async def cache_set(self, ref: Ref, digest: str, value: bytes, ttl_seconds: float) -> None:
        key = keyspace.cache_key(*ref, digest)
        self._strings[key] = bytes(value)
        self._expiry[key] = self._clock() + ttl_seconds
        self._wrote()

    # -- context sizes of stored responses and conversations ---------------------------------
    async def context_size_get(self, ref: Ref, object_id: str) -> int | None:
        key = keyspace.context_size_key(*ref, object_id)
        return self._ints.get(key) if self._alive(key) else None

    async def context_size_set(self, ref: Ref, object_id: str, tokens: int, ttl_seconds: float) -> None:
        key = keyspace.context_size_key(*ref, object_id)
        self._ints[key] = tokens
        self._expiry[key] = self._clock() + ttl_seconds
        self._wrote()

    async def context_size_forget(self, ref: Ref, object_id: str) -> None:
        self._delete(keyspace.context_size_key(*ref, object_id))

    async def context_size_take(self, ref: Ref, object_id: str) -> int | None:
        size = await self.context_size_get(ref, object_id)
        await self.context_size_forget(ref, object_id)
        return size


def document_generation(document: Mapping[str, Any]) -> int:
    """``metadata.generation`` of a policy document (published documents must carry one)."""
    metadata = document.get("metadata") if isinstance(document, Mapping) else None
    generation = metadata.get("generation") if isinstance(metadata, Mapping) else None
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise ValueError("a published policy document needs an integer metadata.generation")
    return generation


def _parse_heartbeats(raw: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    beats: dict[str, dict[str, Any]] = {}
    for pod, text in raw.items():
        try:
            value = json.loads(text)
        except ValueError:
            continue  # a corrupt entry must not hide every other pod's heartbeat
        if isinstance(value, dict):
            beats[pod] = value
    return beats
