"""Rate limits and budget reservation in one store call: one Redis round trip instead of two.

:func:`admit` does what ``RateLimiter.check`` followed by ``BudgetLedger.reserve`` do, with the
same outcomes, atomically: the rate limits are consumed all-or-none; only when they allow (or,
for a dry run, which forwards the call anyway, regardless) is the worst-case cost reserved. A
budget refusal leaves the rate limits consumed, as the two calls in a row do.

Failures come back as values rather than exceptions, because the caller needs to know *which*
part refused or could not be asked. When the store is unreachable each part falls back exactly
as its own call would: the limiter to its local counters unless it fails closed, the ledger to
its local share when the policy says ``localShare``; otherwise the error is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .budget import BudgetLedger, Reservation, new_reservation_id
from .exceptions import BudgetExceeded, StoreUnavailable
from .protocol import BucketLimit, RateCounter, ReserveOutcome
from .rate_limits import RateDecision, RateLimiter, decide, to_ms


@dataclass
class AdmitOutcome:
    """What :func:`admit` decided.

    ``rate``: the rate-limit decision, None when it could not be made (``rate_error``).
    ``reservation``: the money held; None when the budget refused (``budget_exceeded``), could not
    be asked (``budget_error``) or was not asked (the rate limits refused, not a dry run).
    """

    rate: RateDecision | None = None
    reservation: Reservation | None = None
    budget_exceeded: BudgetExceeded | None = None
    rate_error: StoreUnavailable | None = None
    budget_error: StoreUnavailable | None = None
    # The buckets asked for and, per bucket, what a new reservation may still take after this
    # call (None: unlimited), read in the same store call; empty when the store did not answer.
    buckets: tuple[BucketLimit, ...] = ()
    remaining: tuple[int | None, ...] = ()

    @property
    def rate_allowed(self) -> bool:
        return self.rate is not None and self.rate.allowed


async def admit(
    limiter: RateLimiter,
    ledger: BudgetLedger,
    user: str | None,
    tokens: int,
    amount_micros: int,
    *,
    feature: str | None = None,
    reserve_when_rate_refused: bool = False,
    now: datetime | None = None,
) -> AdmitOutcome:
    """Check ``tokens`` against the rate limits of ``user`` and the policy, then hold ``amount_micros``
    in the policy's budget and in ``user``'s and ``feature``'s where the policy limits them.

    Never raises :class:`StoreUnavailable` or :class:`BudgetExceeded` (see :class:`AdmitOutcome`).
    """
    if amount_micros < 0:
        raise ValueError("a reservation cannot be negative")
    if limiter.store is not ledger.store or tuple(limiter.ref) != tuple(ledger.ref):
        return await _one_by_one(
            limiter, ledger, user, feature, tokens, amount_micros, reserve_when_rate_refused, now
        )
    counters = limiter.counters(user, max(0, int(tokens)))
    buckets = ledger.buckets(now, user=user, feature=feature)
    reservation_id = new_reservation_id()
    try:
        rate_outcome, reserve_outcome = await ledger.store.rate_and_reserve(
            ledger.ref,
            counters,
            buckets,
            amount_micros,
            reservation_id,
            ledger.hold_seconds,
            reserve_when_rate_refused,
            to_ms(now),
        )
    except StoreUnavailable as error:
        return await _store_down(
            limiter, ledger, error, counters, user, feature, amount_micros, reserve_when_rate_refused, now
        )
    if ledger.unsynced_count:
        await ledger.push_unsynced()
    result = AdmitOutcome(rate=decide(counters, rate_outcome))
    _booked(
        result, ledger, reserve_outcome, reservation_id, amount_micros, buckets, user, feature, local=False
    )
    return result


def _booked(
    result: AdmitOutcome,
    ledger: BudgetLedger,
    outcome: ReserveOutcome,
    reservation_id: str,
    amount_micros: int,
    buckets: tuple[BucketLimit, ...],
    user: str | None,
    feature: str | None,
    *,
    local: bool,
) -> None:
    result.buckets, result.remaining = buckets, outcome.remaining
    if not outcome.attempted:
        return
    booked = ledger.book(outcome, reservation_id, amount_micros, buckets, user, feature, local=local)
    if isinstance(booked, BudgetExceeded):
        result.budget_exceeded = booked
    else:
        result.reservation = booked


async def _store_down(
    limiter: RateLimiter,
    ledger: BudgetLedger,
    error: StoreUnavailable,
    counters: list[RateCounter],
    user: str | None,
    feature: str | None,
    amount_micros: int,
    reserve_when_rate_refused: bool,
    now: datetime | None,
) -> AdmitOutcome:
    """The shared store did not answer: each part falls back as its own call would, or reports."""
    result = AdmitOutcome()
    if not counters:
        result.rate = RateDecision(allowed=True)
    elif limiter.may_fall_back:
        rate_outcome = await limiter.fallback.rate_consume(limiter.ref, counters, to_ms(now))
        result.rate = decide(counters, rate_outcome)
    else:
        result.rate_error = error
    if not ledger.may_fall_back:
        # Both calls would have hit the same dead store: report both (the caller counts each).
        result.budget_error = error
    elif result.rate_allowed or reserve_when_rate_refused:
        buckets = ledger.buckets(now, local=True, user=user, feature=feature)
        reservation_id = new_reservation_id()
        outcome = await ledger.fallback.budget_reserve(
            ledger.ref, buckets, amount_micros, reservation_id, ledger.hold_seconds
        )
        _booked(result, ledger, outcome, reservation_id, amount_micros, buckets, user, feature, local=True)
    return result


async def _one_by_one(
    limiter: RateLimiter,
    ledger: BudgetLedger,
    user: str | None,
    feature: str | None,
    tokens: int,
    amount_micros: int,
    reserve_when_rate_refused: bool,
    now: datetime | None,
) -> AdmitOutcome:
    """Limiter and ledger on different stores: the two calls in a row, with the same outcomes."""
    result = AdmitOutcome()
    try:
        result.rate = await limiter.check(user, tokens, now)
    except StoreUnavailable as error:
        result.rate_error = error
    if not (result.rate_allowed or reserve_when_rate_refused):
        return result
    try:
        result.reservation = await ledger.reserve(amount_micros, now, user=user, feature=feature)
        result.buckets, result.remaining = result.reservation.buckets, result.reservation.remaining
    except BudgetExceeded as exceeded:
        result.budget_exceeded = exceeded
    except StoreUnavailable as error:
        result.budget_error = error
    return result
