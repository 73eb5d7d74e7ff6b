"""The Store protocol and the value types its methods exchange.

A store offers *semantic* atomic operations (reserve across budget windows, consume rate-limit
counters all-or-none...), not raw get/set: each is one Lua script in Redis and one
await-free critical section in memory, so both stores are atomic in the same way.

Reservation tracking (how a crash cannot leak reserved money forever): every reservation is
recorded individually with a deadline (``hold_seconds``, default 15 minutes, see
``BudgetLedger``). Reserving (and reading) first sweeps reservations whose deadline has passed:
their amount leaves the ``reserved`` counters of the current buckets. So the money reserved by
a pod that died mid-call comes back after the hold, while the ``reserved`` counter stays one
plain integer per bucket that the operator can read. Settling a reservation that was swept still
adds its real cost to ``spent`` (spent is the truth), and only subtracts what is still reserved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

Ref = tuple[str, str]  # (namespace, policy name)


@dataclass(frozen=True)
class BucketLimit:
    """One budget window's current bucket, its limit (None: unlimited, tracked only) and key TTL."""

    window: str
    bucket: str
    limit_micros: int | None
    ttl_seconds: int
    # The settled spend this bucket is known to hold at least (what a sidecar last saw). A store
    # holding less has lost it (a wipe, a restart without persistence): a reservation first puts it
    # back, so that a wiped store cannot hand out the budget a second time.
    floor_micros: int = 0
    # "" for the policy's own bucket; ``keyspace.scope_part`` of a user or feature for theirs.
    scope: str = ""
    # The UTC instants the bucket covers (``windows.Bucket``); None when not known (a bucket read back).
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class ReserveOutcome:
    """Result of an atomic reservation attempt; on refusal, the first bucket that would overflow
    (``index`` into the buckets asked for: its window, and its scope for a user's or feature's).

    ``remaining``: per bucket asked for, what a new reservation may still take after this one
    (limit - spent - reserved, never negative), None for an unlimited bucket; read in the same
    store call. ``attempted``: False when the rate limits refused and nothing was reserved
    (``remaining`` is then what the buckets held).
    """

    ok: bool
    window: str | None = None
    limit_micros: int = 0
    spent_micros: int = 0
    reserved_micros: int = 0
    index: int | None = None
    remaining: tuple[int | None, ...] = ()
    attempted: bool = True


def remaining(buckets: Sequence[BucketLimit], held: Sequence[tuple[int, int]]) -> tuple[int | None, ...]:
    """Per bucket, limit - spent - reserved (never negative; None without a limit), from the
    ``(spent, reserved)`` a reservation read: the one rule both stores answer with."""
    return tuple(
        None if b.limit_micros is None else max(0, b.limit_micros - spent - reserved)
        for b, (spent, reserved) in zip(buckets, held, strict=True)
    )


@dataclass(frozen=True)
class BucketSpend:
    """One budget window's current bucket as read: settled spend, money reserved by calls in
    flight and the window's limit (None: unlimited, tracked only).

    The one record of a window's spend: the store reads it, the ledger reports it and the
    operator turns it into ``status.spend``.
    """

    window: str
    bucket: str
    spent_micros: int
    reserved_micros: int = 0
    limit_micros: int | None = None
    start: datetime | None = None
    end: datetime | None = None

    @property
    def remaining_micros(self) -> int | None:
        """What a new reservation may still take: the limit less spent and reserved."""
        if self.limit_micros is None:
            return None
        return max(0, self.limit_micros - self.spent_micros - self.reserved_micros)

    @property
    def percent(self) -> int | None:
        """Settled spend as a whole percent of the limit (integer arithmetic: floor)."""
        if not self.limit_micros:
            return None
        return self.spent_micros * 100 // self.limit_micros


@dataclass(frozen=True)
class RateCounter:
    """One rate limit to check and, if every limit of the request allows, charge: ``limit`` units
    per ``period_ms``, ``increment`` units for this request.

    The bucket is GCRA (a leaky bucket as a meter): its level, in unit-milliseconds, drains at
    ``limit`` per millisecond, so ``limit`` units are regained over one period, continuously. A
    request fits when ``level + increment * period_ms <= limit * period_ms``. Every quantity is an
    integer, so Lua and Python compute the same decision to the unit.
    """

    scope: str  # "policy" or "user:<id>"
    unit: str  # "requests" or "tokens"
    limit: int
    increment: int
    period_ms: int = 60_000

    @property
    def capacity(self) -> int:
        return self.limit * self.period_ms

    @property
    def cost(self) -> int:
        return self.increment * self.period_ms


@dataclass(frozen=True)
class RateOutcome:
    """``levels``: each bucket's level (unit-milliseconds) after the request (allowed) or as found
    (refused, nothing charged), at the store's ``now``."""

    allowed: bool
    refused_index: int | None
    levels: tuple[int, ...]


@runtime_checkable
class Store(Protocol):
    """What the sidecar and the operator need from shared state. Every method may raise StoreUnavailable."""

    async def ping(self) -> bool:
        """True when the store answers (never raises)."""
        ...

    async def close(self) -> None: ...

    # -- budgets ---------------------------------------------------------------------------
    async def budget_reserve(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
    ) -> ReserveOutcome:
        """Sweep expired reservations, then, iff spent+reserved+amount <= limit in EVERY bucket
        with a limit, add ``amount`` to every bucket's reserved counter and record the reservation."""
        ...

    async def budget_settle(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        reservation_id: str,
        actual_micros: int,
        spenders: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        """Drop the reservation (if still recorded) from reserved and add ``actual`` to spent.

        ``spenders``: ``(kind, name)`` pairs (kind ``users`` or ``features``) whose top-spender
        score in each of the policy's buckets grows by ``actual`` (see :meth:`top_spenders`).
        Returns the settled spend of each bucket after the settle."""
        ...

    async def top_spenders(
        self, ref: Ref, buckets: Sequence[BucketLimit], count: int
    ) -> dict[tuple[str, str], list[tuple[str, int]]]:
        """``(kind, window) -> [(name, micros), ...]``, highest first, at most ``count`` each, for
        the policy's buckets given. Each bucket keeps its ``TOP_SPENDERS_KEPT`` highest names: a
        name pushed out (the lowest) starts again from zero if it spends again, so the list is exact
        while fewer names than that spent in the bucket."""
        ...

    async def budget_release(self, ref: Ref, buckets: Sequence[BucketLimit], reservation_id: str) -> None:
        """Drop the reservation (if still recorded) without spending anything."""
        ...

    async def budget_read(self, ref: Ref, buckets: Sequence[BucketLimit]) -> list[BucketSpend]:
        """Sweep expired reservations, then read spent/reserved for each bucket (with its limit)."""
        ...

    async def budget_restore(self, ref: Ref, bucket: BucketLimit, spent_micros: int) -> int:
        """Raise a bucket's settled spend to ``spent_micros`` if it holds less (never lower it);
        the micro-dollars added. Used to put back spend a wiped store lost."""
        ...

    async def read_spend(self, ref: Ref, now: datetime | None = None) -> dict[str, BucketSpend]:
        """Spent/reserved for the current UTC bucket of every window (for the operator)."""
        ...

    # -- rate limits -----------------------------------------------------------------------
    async def rate_consume(
        self, ref: Ref, counters: Sequence[RateCounter], now_ms: int | None = None
    ) -> RateOutcome:
        """Iff every bucket has room for its request (see :class:`RateCounter`), charge them all;
        else change nothing. ``now_ms``: the store's clock (Redis: the server's ``TIME``, shared by
        every pod) unless given, which tests do to step time exactly."""
        ...

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
        """:meth:`rate_consume`, then :meth:`budget_reserve`, atomically and in one round trip.

        The reservation is attempted only when the rate limits allow (or ``reserve_when_rate_refused``,
        for dry runs, which forward the call anyway); when it was not, the outcome says so
        (``attempted`` False) and still carries what the buckets hold (``remaining``). A budget
        refusal does not undo the rate consumption (the request was made; OpenAI counts refused
        ones too).
        """
        ...

    # -- usage and heartbeats ----------------------------------------------------------------
    async def incr_usage(self, ref: Ref, counters: Mapping[str, int]) -> None: ...

    async def read_usage(self, ref: Ref) -> dict[str, int]: ...

    async def write_heartbeat(self, ref: Ref, pod: str, payload: Mapping[str, Any]) -> None: ...

    async def read_heartbeats(self, ref: Ref) -> dict[str, dict[str, Any]]: ...

    async def remove_heartbeats(self, ref: Ref, pods: Sequence[str]) -> None: ...

    # -- policy publication ----------------------------------------------------------------
    async def get_policy_document(self, ref: Ref) -> dict[str, Any] | None: ...

    async def publish_policy_document(self, ref: Ref, document: Mapping[str, Any]) -> None:
        """Store the document and announce its ``metadata.generation`` on the policy channel."""
        ...

    def policy_updates(self, ref: Ref) -> AsyncIterator[int]:
        """Yield the stored generation on (re)subscription, then each published generation."""
        ...

    # -- response cache --------------------------------------------------------------------
    async def cache_get(self, ref: Ref, digest: str) -> bytes | None: ...

    async def cache_set(self, ref: Ref, digest: str, value: bytes, ttl_seconds: float) -> None: ...

    # -- context sizes of stored responses and conversations (response_sizes) --------------
    async def context_size_get(self, ref: Ref, object_id: str) -> int | None: ...

    async def context_size_set(self, ref: Ref, object_id: str, tokens: int, ttl_seconds: float) -> None: ...

    async def context_size_forget(self, ref: Ref, object_id: str) -> None: ...

    async def context_size_take(self, ref: Ref, object_id: str) -> int | None:
        """Read and delete at once (a conversation's size while one of its turns is in flight)."""
        ...
