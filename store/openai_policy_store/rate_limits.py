"""Rate limits: requests and tokens per minute, for the policy as a whole and per user.

Each limit is a GCRA bucket (``protocol.RateCounter``): capacity is the per-minute limit, and it
refills continuously at limit/60 per second. Fixed wall-clock minutes would let a burst straddle a
minute's end at twice the rate (with ``requestsPerMinute: 1``, two requests a second apart);
here, once a bucket is spent, the next request waits for what it needs to drain, whatever the
clock says. Buckets are checked and charged all-or-none by the store, in one atomic step (with
the budget reservation too, see ``admit``): a refused request consumes nothing. Time is the
store's (Redis's ``TIME``), so pods whose clocks disagree still agree on every bucket.

The headers follow OpenAI's meaning: ``x-ratelimit-remaining-*`` is what could pass now, and
``x-ratelimit-reset-*`` the time until the bucket is full again; a refusal's ``Retry-After`` is
the time until this request fits.

A request without a user identity is limited by the policy-wide limits only.

When the shared store is down, :class:`StoreUnavailable` propagates by default so that the caller
applies the policy's ``onStoreUnavailable``; with ``fail_closed=False`` the limiter falls back to
in-memory buckets of its own (each pod then enforces the full limits alone).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .exceptions import StoreUnavailable
from .memory import MemoryStore, drain_ms
from .protocol import RateCounter, RateOutcome, Ref, Store

if TYPE_CHECKING:
    from openai_policy_api import RateLimitSpec

_SAFE_USER = re.compile(r"^[A-Za-z0-9._@+=-]{1,64}$")


@dataclass(frozen=True)
class LimitState:
    """One counter after the check: the scope and unit it limits, its limit and what is left."""

    scope: str
    unit: str
    limit: int
    remaining: int
    reset_seconds: float = 0.0  # until the bucket is full again


@dataclass(frozen=True)
class RateDecision:
    """The outcome of a check. When refused, scope/unit/limit/remaining name the limit that refused
    and ``reset_seconds`` is the wait until this request fits; when allowed, the tightest limit and
    the time until it is full again. ``retryable`` is False when the request alone exceeds a limit
    (waiting cannot help: e.g. more tokens than the per-minute token limit)."""

    allowed: bool
    scope: str | None = None
    unit: str | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float = 0.0
    retryable: bool = True
    states: tuple[LimitState, ...] = ()

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.reset_seconds))

    def headers(self) -> dict[str, str]:
        """OpenAI-style headers: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
        tightest counter of each unit, plus ``retry-after`` (whole seconds) when refused."""
        headers: dict[str, str] = {}
        for unit in ("requests", "tokens"):
            states = [s for s in self.states if s.unit == unit]
            if not states:
                continue
            tightest = min(states, key=lambda s: (s.remaining, s.limit))
            headers[f"x-ratelimit-limit-{unit}"] = str(tightest.limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(tightest.remaining)
            headers[f"x-ratelimit-reset-{unit}"] = format_duration(tightest.reset_seconds)
        if not self.allowed:
            headers["retry-after"] = str(self.retry_after_seconds)
        return headers


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``7s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def user_scope(user: str) -> str:
    """``user:<id>``; ids that are long or carry unusual characters are replaced by a digest."""
    if _SAFE_USER.match(user):
        return f"user:{user}"
    return "user:#" + hashlib.sha256(user.encode()).hexdigest()[:32]


class RateLimiter:
    """Rate limits of one policy (``spec.rate_limits``; None: no limits)."""

    def __init__(
        self, store: Store, ref: Ref, rate_limits: RateLimitSpec | None, *, fail_closed: bool = True
    ) -> None:
        self.store = store
        self.ref = ref
        self.rate_limits = rate_limits
        self.fail_closed = fail_closed
        self._fallback = store if isinstance(store, MemoryStore) else MemoryStore()

    def counters(self, user: str | None, tokens: int) -> list[RateCounter]:
        limits = self.rate_limits
        if limits is None:
            return []
        counters: list[RateCounter] = []
        if limits.requests_per_minute is not None:
            counters.append(RateCounter("policy", "requests", limits.requests_per_minute, 1))
        if limits.tokens_per_minute is not None:
            counters.append(RateCounter("policy", "tokens", limits.tokens_per_minute, tokens))
        per_user = limits.per_user
        if per_user is not None and user:
            scope = user_scope(user)
            counters.append(RateCounter(scope, "requests", per_user.requests_per_minute, 1))
            if per_user.tokens_per_minute is not None:
                counters.append(RateCounter(scope, "tokens", per_user.tokens_per_minute, tokens))
        return counters

    async def check(self, user: str | None, tokens: int, now: datetime | None = None) -> RateDecision:
        """Count this request (and its ``tokens``) against every applicable limit, or refuse it.

        ``now``: the store's clock unless given (tests step time with it)."""
        counters = self.counters(user, max(0, int(tokens)))
        if not counters:
            return RateDecision(allowed=True)
        now_ms = to_ms(now)
        try:
            outcome = await self.store.rate_consume(self.ref, counters, now_ms)
        except StoreUnavailable:
            if not self.may_fall_back:
                raise
            outcome = await self._fallback.rate_consume(self.ref, counters, now_ms)
        return decide(counters, outcome)

    @property
    def may_fall_back(self) -> bool:
        return not self.fail_closed and self._fallback is not self.store

    @property
    def fallback(self) -> MemoryStore:
        return self._fallback


def to_ms(now: datetime | None) -> int | None:
    """A datetime as epoch milliseconds for the store; None leaves the store's clock in charge."""
    return None if now is None else math.floor(now.timestamp() * 1000)


def _seconds(ms: int) -> float:
    return ms / 1000


def decide(counters: list[RateCounter], outcome: RateOutcome) -> RateDecision:
    """The decision for ``counters`` from the bucket levels the store answered."""
    if not counters:
        return RateDecision(allowed=True)
    states = tuple(
        LimitState(
            c.scope,
            c.unit,
            c.limit,
            max(0, (c.capacity - level) // c.period_ms),
            _seconds(drain_ms(level, c.limit)),
        )
        for c, level in zip(counters, outcome.levels, strict=True)
    )
    if outcome.allowed:
        tightest = min(states, key=lambda s: s.remaining / s.limit if s.limit else 0.0)
        return RateDecision(
            True,
            tightest.scope,
            tightest.unit,
            tightest.limit,
            tightest.remaining,
            tightest.reset_seconds,
            True,
            states,
        )
    index = outcome.refused_index or 0
    refused, counter = states[index], counters[index]
    retryable = counter.increment <= counter.limit
    # The wait until the bucket has drained enough for this request (when it ever can).
    over = outcome.levels[index] + counter.cost - counter.capacity
    wait = _seconds(drain_ms(over, counter.limit)) if retryable else refused.reset_seconds
    return RateDecision(
        False, refused.scope, refused.unit, refused.limit, refused.remaining, wait, retryable, states
    )
