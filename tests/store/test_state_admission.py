"""admit(): rate limits and budget reservation in one store call, with the outcomes of the two calls."""

import asyncio
from datetime import UTC, datetime

import pytest

from openai_policy_api import BudgetSpec, RateLimitSpec
from openai_policy_store import (
    AdmitOutcome,
    BudgetLedger,
    MemoryStore,
    RateLimiter,
    RedisStore,
    admit,
    keyspace,
    new_reservation_id,
)
from openai_policy_store.lua import RATE_AND_RESERVE

REF = ("team-a", "chatbot")
NOW = datetime(2026, 11, 22, 14, 30, 45, 500_000, tzinfo=UTC)


def budget(**fields: object) -> BudgetSpec:
    return BudgetSpec.model_validate(fields)


def hourly(usd: float, **fields: object) -> BudgetSpec:
    return budget(limits=[{"window": "hour", "usd": usd}], **fields)


def rates(**fields: object) -> RateLimitSpec:
    return RateLimitSpec.model_validate(fields)


def pair(store, budget_spec: BudgetSpec, rate_spec: RateLimitSpec | None):  # noqa: ANN001, ANN201
    return RateLimiter(store, REF, rate_spec), BudgetLedger(store, REF, budget_spec)


async def hour_usage(ledger: BudgetLedger) -> tuple[int, int]:
    usage = {u.window: u for u in await ledger.usage(now=NOW)}["hour"]
    return usage.spent_micros, usage.reserved_micros


async def test_allowed_consumes_the_rate_limits_and_holds_the_money(store):
    limiter, ledger = pair(store, hourly(1), rates(requestsPerMinute=5, tokensPerMinute=1000))
    admission = await admit(limiter, ledger, None, 300, 200_000, now=NOW)
    assert isinstance(admission, AdmitOutcome)
    assert admission.rate_allowed and admission.rate is not None
    assert {(s.unit, s.remaining) for s in admission.rate.states} == {("requests", 4), ("tokens", 700)}
    # the tightest limit (tokens: 700 of 1000 left) is full again once 300 tokens drained: 18 s
    assert admission.rate.reset_seconds == pytest.approx(18.0)
    assert admission.reservation is not None and admission.reservation.amount_micros == 200_000
    assert admission.budget_exceeded is admission.rate_error is admission.budget_error is None
    assert await hour_usage(ledger) == (0, 200_000)
    await ledger.settle(admission.reservation, 150_000)
    assert await hour_usage(ledger) == (150_000, 0)
    # the same counters the limiter itself reads
    assert (await limiter.check(None, 0, now=NOW)).remaining == 3


async def test_rate_refusal_holds_no_money_and_consumes_nothing(store):
    limiter, ledger = pair(store, hourly(1), rates(tokensPerMinute=100))
    assert (await admit(limiter, ledger, None, 80, 1_000, now=NOW)).rate_allowed
    refused = await admit(limiter, ledger, None, 30, 1_000, now=NOW)
    assert not refused.rate_allowed and refused.rate is not None
    assert (refused.rate.unit, refused.rate.remaining, refused.rate.retryable) == ("tokens", 20, True)
    assert refused.reservation is None and refused.budget_exceeded is None
    assert await hour_usage(ledger) == (0, 1_000)  # only the first one's hold
    assert (await admit(limiter, ledger, None, 20, 1_000, now=NOW)).rate_allowed  # the 20 left


async def test_dry_run_reserves_even_when_the_rate_limits_refuse(store):
    limiter, ledger = pair(store, hourly(1), rates(requestsPerMinute=1))
    await admit(limiter, ledger, None, 0, 1_000, now=NOW)
    refused = await admit(limiter, ledger, None, 0, 2_000, reserve_when_rate_refused=True, now=NOW)
    assert not refused.rate_allowed
    assert refused.reservation is not None and refused.reservation.amount_micros == 2_000
    assert await hour_usage(ledger) == (0, 3_000)


async def test_budget_refusal_names_the_window_and_still_counts_the_request(store):
    limiter, ledger = pair(store, hourly(1), rates(requestsPerMinute=10))
    held = await admit(limiter, ledger, "alice", 0, 700_000, now=NOW)
    assert held.reservation is not None
    refused = await admit(limiter, ledger, "alice", 0, 400_000, now=NOW)
    assert refused.rate_allowed and refused.reservation is None
    exceeded = refused.budget_exceeded
    assert exceeded is not None
    assert (exceeded.window, exceeded.limit_micros, exceeded.spent_micros, exceeded.reserved_micros) == (
        "hour",
        1_000_000,
        0,
        700_000,
    )
    assert ledger.last_fraction_used >= 1.0
    assert await hour_usage(ledger) == (0, 700_000)  # nothing more held
    # as with check() then reserve(): the refused request counted towards the rate limit
    assert (await limiter.check(None, 0, now=NOW)).remaining == 7


async def test_without_rate_limits_only_the_budget_decides(store):
    limiter, ledger = pair(store, hourly(1), None)
    admission = await admit(limiter, ledger, "bob", 10_000, 1_000, now=NOW)
    assert admission.rate_allowed and admission.rate is not None and admission.rate.states == ()
    assert admission.reservation is not None


async def test_per_user_limits_are_keyed_like_the_limiter(store):
    limiter, ledger = pair(store, hourly(1), rates(perUser={"requestsPerMinute": 1}))
    assert (await admit(limiter, ledger, "carol", 0, 10, now=NOW)).rate_allowed
    refused = await admit(limiter, ledger, "carol", 0, 10, now=NOW)
    assert not refused.rate_allowed and refused.rate is not None and refused.rate.scope == "user:carol"
    assert not (await limiter.check("carol", 0, now=NOW)).allowed
    assert (await admit(limiter, ledger, "dave", 0, 10, now=NOW)).rate_allowed


async def test_concurrent_admissions_never_overspend(store):
    limiter, ledger = pair(store, hourly(0.01), rates(requestsPerMinute=1_000_000))

    async def one() -> bool:
        admission = await admit(limiter, ledger, None, 10, 1_000)
        return admission.reservation is not None

    held = await asyncio.gather(*(one() for _ in range(50)))
    assert sum(held) == 10  # $0.01 = 10,000 micros = 10 holds of 1,000


async def test_negative_amount_is_a_programming_error(store):
    limiter, ledger = pair(store, hourly(1), None)
    with pytest.raises(ValueError):
        await admit(limiter, ledger, None, 0, -1)


async def test_limiter_and_ledger_on_different_stores_still_work():
    limiter = RateLimiter(MemoryStore(), REF, rates(requestsPerMinute=1))
    ledger = BudgetLedger(MemoryStore(), REF, hourly(1))
    assert (await admit(limiter, ledger, None, 0, 5, now=NOW)).reservation is not None
    refused = await admit(limiter, ledger, None, 0, 5, now=NOW)
    assert not refused.rate_allowed and refused.reservation is None


def test_combined_script_touches_only_keys_of_one_policy():
    # every key the script reads is passed in KEYS (hash-tagged): nothing is built inside Lua
    assert "redis.call('GET', KEYS[" in RATE_AND_RESERVE
    assert ".. '{" not in RATE_AND_RESERVE and "oaip:" not in RATE_AND_RESERVE


def test_reservation_ids_are_unique_and_short():
    ids = {new_reservation_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) <= 24 for i in ids)


# -- store unavailable --------------------------------------------------------------------------


async def test_fail_closed_reports_both_parts_without_raising(redis):
    store = RedisStore(redis.url)
    limiter, ledger = pair(store, hourly(1), rates(requestsPerMinute=10))
    try:
        assert (await admit(limiter, ledger, None, 0, 1_000)).reservation is not None
        redis.stop()
        down = await admit(limiter, ledger, None, 0, 1_000)
        assert down.rate is None and down.rate_error is not None
        assert down.reservation is None and down.budget_error is not None
    finally:
        await store.close()


async def test_local_share_falls_back_like_reserve(redis):
    store = RedisStore(redis.url)
    spec = hourly(1, onStoreUnavailable="localShare", localSharePercent=10)
    limiter = RateLimiter(store, REF, rates(requestsPerMinute=10), fail_closed=False)
    ledger = BudgetLedger(store, REF, spec)
    try:
        redis.stop()
        local = await admit(limiter, ledger, None, 0, 60_000)
        assert local.rate_allowed and local.rate_error is None and local.budget_error is None
        assert local.reservation is not None and local.reservation.local
        refused = await admit(limiter, ledger, None, 0, 60_000)  # over 10% of $1
        assert refused.budget_exceeded is not None and refused.budget_exceeded.limit_micros == 100_000
        await ledger.settle(local.reservation, 50_000)
        redis.start()
        back = await admit(limiter, ledger, None, 0, 1_000)
        assert back.reservation is not None and not back.reservation.local
        assert ledger.unsynced_count == 0  # the outage's spend was pushed on the way
        hour = keyspace.spend_key(*REF, "hour", back.reservation.windows["hour"])
        assert int(redis.client().get(hour)) == 50_000
    finally:
        await store.close()


async def test_rate_limits_and_reservation_are_one_redis_command(redis):
    """The GCRA buckets and the budget hold are one script call: one round trip per request."""
    store = RedisStore(redis.url)
    limiter, ledger = pair(
        store, hourly(1), rates(requestsPerMinute=5, tokensPerMinute=1000, perUser={"requestsPerMinute": 2})
    )
    sent: list[str] = []
    original = store._client.execute_command

    async def counting(*args, **options):  # noqa: ANN002, ANN003, ANN202
        sent.append(str(args[0]).upper())
        return await original(*args, **options)

    try:
        assert (await admit(limiter, ledger, "erin", 10, 1_000)).rate_allowed  # loads the script once
        store._client.execute_command = counting
        admission = await admit(limiter, ledger, "erin", 10, 1_000)
        assert admission.rate_allowed and admission.reservation is not None
        assert sent == ["EVALSHA"]
    finally:
        await store.close()
