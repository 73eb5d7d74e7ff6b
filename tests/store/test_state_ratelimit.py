"""Per-minute rate limits (GCRA buckets), policy-wide and per user; refused checks consume nothing."""

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from openai_policy_api import RateLimitSpec
from openai_policy_store import MemoryStore, RateDecision, RateLimiter, RedisStore, StoreUnavailable
from openai_policy_store.rate_limits import LimitState, format_duration, user_scope

REF = ("team-a", "chatbot")
NOW = datetime(2026, 11, 22, 14, 30, 45, 500_000, tzinfo=UTC)  # 14.5 s before the minute ends


def limits(**fields) -> RateLimitSpec:
    return RateLimitSpec.model_validate(fields)


async def test_requests_per_minute(store):
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=3))
    decisions = [await limiter.check(None, 0, now=NOW) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert (refused.scope, refused.unit, refused.limit) == ("policy", "requests", 3)
    # one request's worth (a third of the minute) must drain before the next fits
    assert refused.reset_seconds == pytest.approx(20.0)
    assert refused.retryable
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",  # until the bucket is full again
        "retry-after": "20",
    }
    assert "retry-after" not in decisions[0].headers()
    assert not (await limiter.check(None, 0, now=NOW + timedelta(seconds=19.9))).allowed
    assert (await limiter.check(None, 0, now=NOW + timedelta(seconds=20))).allowed


async def test_no_burst_across_a_minute_boundary(store):
    """With one request a minute, a request at :59.5 and one at :00.5 of the next minute are a
    second apart: the second is refused, however the wall-clock minutes fall."""
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=1))
    before = datetime(2026, 11, 22, 14, 30, 59, 500_000, tzinfo=UTC)
    assert (await limiter.check(None, 0, now=before)).allowed
    refused = await limiter.check(None, 0, now=before + timedelta(seconds=1))
    assert not refused.allowed and refused.reset_seconds == pytest.approx(59.0)
    assert refused.headers()["retry-after"] == "59"
    assert not (await limiter.check(None, 0, now=before + timedelta(seconds=59.9))).allowed
    assert (await limiter.check(None, 0, now=before + timedelta(seconds=60))).allowed


async def test_no_token_burst_across_a_minute_boundary(store):
    limiter = RateLimiter(store, REF, limits(tokensPerMinute=1000))
    before = datetime(2026, 11, 22, 14, 30, 59, 900_000, tzinfo=UTC)
    assert (await limiter.check(None, 1000, now=before)).allowed
    after = before + timedelta(seconds=0.2)  # in the next wall-clock minute
    refused = await limiter.check(None, 1000, now=after)
    assert not refused.allowed and refused.remaining == 3  # 200 ms refill 3.33 tokens
    assert (await limiter.check(None, 3, now=after)).allowed


async def test_buckets_refill_continuously(store):
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=60))
    assert all([(await limiter.check(None, 0, now=NOW)).allowed for _ in range(60)])
    assert not (await limiter.check(None, 0, now=NOW)).allowed
    for second in range(1, 6):  # one request a second, exactly
        now = NOW + timedelta(seconds=second)
        assert (await limiter.check(None, 0, now=now)).allowed
        assert not (await limiter.check(None, 0, now=now)).allowed


async def test_store_clock_applies_without_now(store):
    """In production no ``now`` is passed: Redis uses its own TIME, memory its clock."""
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=1))
    assert (await limiter.check(None, 0)).allowed
    refused = await limiter.check(None, 0)
    assert not refused.allowed and 58 < refused.reset_seconds <= 60


async def test_memory_and_redis_decide_alike(redis):
    """The same random sequence of checks gives the same decisions, remainings and waits."""
    spec = limits(
        requestsPerMinute=7, tokensPerMinute=997, perUser={"requestsPerMinute": 3, "tokensPerMinute": 301}
    )
    rng = random.Random(13)
    steps = [
        (rng.choice([None, "ann", "bob"]), rng.randrange(0, 400), rng.randrange(0, 9000)) for _ in range(300)
    ]
    redis_store = RedisStore(redis.url)
    try:
        runs = []
        for store in (MemoryStore(), redis_store):
            limiter, now, seen = RateLimiter(store, REF, spec), NOW, []
            for user, tokens, step_ms in steps:
                now += timedelta(milliseconds=step_ms)
                d = await limiter.check(user, tokens, now=now)
                seen.append((d.allowed, d.scope, d.unit, d.remaining, d.reset_seconds, d.retryable, d.states))
            runs.append(seen)
        assert runs[0] == runs[1]
        assert 50 < sum(allowed for allowed, *_ in runs[0]) < 250  # both outcomes exercised
    finally:
        await redis_store.close()


async def test_redis_buckets_expire_once_drained(redis):
    store = RedisStore(redis.url)
    try:
        limiter = RateLimiter(store, REF, limits(requestsPerMinute=4))
        assert (await limiter.check(None, 0)).allowed
        client = redis.client()
        (key,) = [k for k in client.keys("*") if b"ratelimit" in k]
        # one request of four a minute drains in 15 s (plus a second of slack)
        assert 14_000 < client.pttl(key) <= 16_000
    finally:
        await store.close()


async def test_refused_check_consumes_nothing(store):
    limiter = RateLimiter(store, REF, limits(tokensPerMinute=100))
    assert (await limiter.check(None, 80, now=NOW)).allowed
    refused = await limiter.check(None, 30, now=NOW)
    assert not refused.allowed and (refused.unit, refused.remaining) == ("tokens", 20)
    assert (await limiter.check(None, 20, now=NOW)).allowed  # exactly the 20 left
    assert not (await limiter.check(None, 1, now=NOW)).allowed


async def test_per_user_limits_are_separate_and_policy_limit_is_shared(store):
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=5, perUser={"requestsPerMinute": 2}))
    assert (await limiter.check("alice", 0, now=NOW)).allowed
    assert (await limiter.check("alice", 0, now=NOW)).allowed
    refused = await limiter.check("alice", 0, now=NOW)
    assert not refused.allowed and refused.scope == "user:alice"
    # alice's refusal did not consume the policy-wide counter: bob and anonymous still get 3
    assert (await limiter.check("bob", 0, now=NOW)).allowed
    assert (await limiter.check("bob", 0, now=NOW)).allowed
    assert (await limiter.check(None, 0, now=NOW)).allowed
    refused = await limiter.check("carol", 0, now=NOW)
    assert not refused.allowed and refused.scope == "policy"


async def test_per_user_tokens(store):
    limiter = RateLimiter(
        store, REF, limits(tokensPerMinute=1000, perUser={"requestsPerMinute": 100, "tokensPerMinute": 300})
    )
    allowed = await limiter.check("alice", 250, now=NOW)
    headers = allowed.headers()
    # the tightest counter of each unit is reported
    assert headers["x-ratelimit-remaining-tokens"] == "50" and headers["x-ratelimit-limit-tokens"] == "300"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    refused = await limiter.check("alice", 100, now=NOW)
    assert (refused.allowed, refused.scope, refused.unit) == (False, "user:alice", "tokens")
    assert (await limiter.check("bob", 300, now=NOW)).allowed


async def test_request_larger_than_the_limit_is_not_retryable(store):
    limiter = RateLimiter(store, REF, limits(tokensPerMinute=100))
    refused = await limiter.check(None, 500, now=NOW)
    assert not refused.allowed and not refused.retryable
    assert (await limiter.check(None, 100, now=NOW)).allowed


async def test_no_limits_allows_without_touching_the_store(store):
    for spec in (None, RateLimitSpec()):
        decision = await RateLimiter(store, REF, spec).check("alice", 10**9)
        assert decision.allowed and decision.headers() == {}


async def test_concurrent_checks_allow_exactly_the_limit(store):
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=20))
    decisions = await asyncio.gather(*(limiter.check(None, 0, now=NOW) for _ in range(60)))
    assert sum(d.allowed for d in decisions) == 20


def test_user_scope_is_safe_for_keys():
    assert user_scope("alice@example.com") == "user:alice@example.com"
    odd = user_scope("a user with spaces and {braces}")
    assert odd.startswith("user:#") and "{" not in odd and " " not in odd
    assert user_scope("x" * 500) != user_scope("x" * 499)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (0, "0ms"), (7, "7s"), (14.2, "15s"), (60, "1m0s")]
)
def test_reset_format(seconds, text):
    assert format_duration(seconds) == text


def test_retry_after_is_at_least_one_second():
    decision = RateDecision(
        False, "policy", "requests", 1, 0, 0.2, True, (LimitState("policy", "requests", 1, 0, 0.2),)
    )
    assert decision.headers()["retry-after"] == "1"
    assert decision.headers()["x-ratelimit-reset-requests"] == "200ms"


async def test_store_down_raises_by_default_or_falls_back_locally():
    store = RedisStore("redis://127.0.0.1:1/0", connect_timeout=0.2, socket_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            await RateLimiter(store, REF, limits(requestsPerMinute=1)).check(None, 0, now=NOW)
        local = RateLimiter(store, REF, limits(requestsPerMinute=1), fail_closed=False)
        assert (await local.check(None, 0, now=NOW)).allowed
        assert not (await local.check(None, 0, now=NOW)).allowed
    finally:
        await store.close()


async def test_memory_counters_expire():
    clock = [1000.0]
    store = MemoryStore(clock=lambda: clock[0])
    limiter = RateLimiter(store, REF, limits(requestsPerMinute=100, perUser={"requestsPerMinute": 100}))
    for i in range(3000):
        await limiter.check(f"user-{i}", 0, now=NOW)
        clock[0] += 0.1
    # 3000 users over 300 s: counters older than their TTL are purged, memory stays bounded
    assert store.key_count() < 2 * 1300
