"""Per-user and per-feature budgets, on the memory store and a real redis-server: held in the same
atomic call as the policy's (all or nothing), refused naming whose budget, swept back whoever
comes by, with TTLs and eviction so that many users leave bounded state; the remaining budget
read by the admitting call; and the top spenders kept by the settle."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime

import pytest

from openai_policy_api import TOP_SPENDERS_KEPT, BudgetSpec, RateLimitSpec
from openai_policy_store import (
    BudgetExceeded,
    BudgetLedger,
    MemoryStore,
    RateLimiter,
    RedisStore,
    acl,
    admit,
    keyspace,
)
from openai_policy_store.windows import SCOPED_GRACE_SECONDS

REF = ("team", "chat")


def budget(**spec: object) -> BudgetSpec:
    return BudgetSpec.model_validate(spec)


def limits(window: str, usd: float) -> list[dict[str, object]]:
    return [{"window": window, "usd": usd}]


def by_scope(usage):
    return {(u.window): u for u in usage}


async def read(ledger: BudgetLedger, user: str | None = None, feature: str | None = None):
    """(window, scope kind) -> BucketSpend for every bucket the ledger would hold."""
    buckets = ledger.buckets(user=user, feature=feature)
    spends = await ledger.store.budget_read(ledger.ref, buckets)
    return {(b.window, keyspace.scope_kind(b.scope)): s for b, s in zip(buckets, spends, strict=True)}


async def test_a_user_budget_refuses_that_user_only_naming_them(store):
    ledger = BudgetLedger(store, REF, budget(limits=limits("day", 10), perUser=limits("day", 1)))
    held = await ledger.reserve(600_000, user="alice")
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(600_000, user="alice")
    error = refused.value
    assert (error.kind, error.name, error.window) == ("user", "alice", "day")
    assert (error.limit_micros, error.spent_micros, error.reserved_micros) == (1_000_000, 0, 600_000)
    assert "user 'alice'" in str(error)
    # All or nothing: the refused call held nothing, neither in alice's bucket nor the policy's.
    state = await read(ledger, user="alice")
    assert state[("day", "user")].reserved_micros == 600_000
    assert state[("day", "policy")].reserved_micros == 600_000
    # Another user's budget is their own; a call without a user meets the policy's limits only.
    other = await ledger.reserve(600_000, user="bob")
    anonymous = await ledger.reserve(900_000)
    assert {b.scope for b in anonymous.buckets} == {""}
    await ledger.settle(held, 400_000)
    await ledger.release(other)
    await ledger.settle(anonymous, 100_000)
    state = await read(ledger, user="alice")
    assert (state[("day", "user")].spent_micros, state[("day", "user")].reserved_micros) == (400_000, 0)
    assert (state[("day", "policy")].spent_micros, state[("day", "policy")].reserved_micros) == (500_000, 0)
    bob = await read(ledger, user="bob")
    assert (bob[("day", "user")].spent_micros, bob[("day", "user")].reserved_micros) == (0, 0)


async def test_the_policy_limit_and_a_feature_limit_hold_with_the_user_s(store):
    ledger = BudgetLedger(
        store,
        REF,
        budget(limits=limits("hour", 1), perUser=limits("day", 5), perFeature=limits("week", 0.5)),
    )
    await ledger.reserve(400_000, user="alice", feature="search")
    with pytest.raises(BudgetExceeded) as feature:
        await ledger.reserve(200_000, user="bob", feature="search")
    assert (feature.value.kind, feature.value.name, feature.value.window) == ("feature", "search", "week")
    await ledger.reserve(500_000, user="bob", feature="summaries")
    with pytest.raises(BudgetExceeded) as policy:
        await ledger.reserve(200_000, user="carol")
    assert (policy.value.kind, policy.value.window) == (None, "hour")
    assert "this policy" in str(policy.value)


async def test_a_dead_pod_s_hold_on_a_user_comes_back_whoever_asks_next(store):
    ledger = BudgetLedger(store, REF, budget(perUser=limits("day", 1)), hold_seconds=0.2)
    await ledger.reserve(900_000, user="alice")  # never settled: the pod died
    await asyncio.sleep(0.4)
    # Bob's call sweeps the expired hold, alice's bucket included though his call never names it.
    await ledger.settle(await ledger.reserve(1, user="bob"), 1)
    state = await read(ledger, user="alice")
    assert state[("day", "user")].reserved_micros == 0
    await ledger.reserve(900_000, user="alice")


async def test_names_that_could_inject_a_key_are_digested():
    assert keyspace.scope_part("user", "alice@example.com") == "user=alice@example.com"
    for hostile in ("a:b", "*", "{team/other}", "x|y", "a b", "ü", "n" * 65):
        part = keyspace.scope_part("user", hostile)
        assert part.startswith("user#") and len(part) == 37, part
    store = MemoryStore()
    ledger = BudgetLedger(store, REF, budget(perUser=limits("day", 1)))
    held = await ledger.reserve(10, user="{team/other}:*")
    assert all(k.startswith("oaip:{team/chat}:") for k in store._ints)
    await ledger.settle(held, 10)


async def test_admit_reads_what_remains_in_the_same_call(store):
    ledger = BudgetLedger(store, REF, budget(limits=limits("day", 10), perUser=limits("hour", 2)))
    limiter = RateLimiter(store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 1}))
    first = await admit(limiter, ledger, "alice", 1, 1_500_000)
    assert first.reservation is not None
    left = {
        (b.window, keyspace.scope_kind(b.scope)): r
        for b, r in zip(first.buckets, first.remaining, strict=True)
    }
    assert left == {
        ("hour", "policy"): None,
        ("day", "policy"): 8_500_000,
        ("week", "policy"): None,
        ("month", "policy"): None,
        ("hour", "user"): 500_000,
    }
    # The rate limit refuses the next call: nothing is held, but the headers still have figures.
    second = await admit(limiter, ledger, "alice", 1, 1_000_000)
    assert not second.rate_allowed and second.reservation is None and second.budget_exceeded is None
    assert (
        dict(zip([b.window + b.scope for b in second.buckets], second.remaining, strict=True))[
            "houruser=alice"
        ]
        == 500_000
    )


async def test_top_spenders_are_the_highest_and_stay_bounded(store):
    ledger = BudgetLedger(store, REF, budget())
    for i in range(TOP_SPENDERS_KEPT + 20):
        held = await ledger.reserve(10_000, user=f"user-{i:03d}", feature=f"feature-{i % 3}")
        await ledger.settle(held, 1_000 + i)
    await ledger.settle(await ledger.reserve(10_000, user="user-000"), 5_000)
    top = await ledger.top_spenders(10)
    # user-000 was the lowest of 120 and was pushed out: it starts again from zero (the caveat).
    assert top[("users", "day")][0] == ("user-000", 5_000)
    assert [name for name, _ in top[("users", "day")][1:4]] == ["user-119", "user-118", "user-117"]
    assert len(top[("users", "month")]) == 10
    features = top[("features", "week")]
    assert [name for name, _ in features] == ["feature-2", "feature-1", "feature-0"]
    assert sum(micros for _, micros in features) == sum(1_000 + i for i in range(TOP_SPENDERS_KEPT + 20))
    if isinstance(store, MemoryStore):
        assert all(len(members) <= TOP_SPENDERS_KEPT for members in store._tops.values())


async def test_user_keys_expire_with_their_bucket_in_redis(redis):
    store = RedisStore(redis.url)
    try:
        ledger = BudgetLedger(store, REF, budget(perUser=limits("hour", 1), timeZone="Asia/Kolkata"))
        held = await ledger.reserve(100, user="alice")
        await ledger.settle(held, 100)
        client = redis.client()
        [hour] = [b for b in held.buckets if b.scope]
        assert hour.bucket.endswith("+05:30") and hour.bucket[14:16] == "00"
        for key in client.keys("*user=alice*"):
            ttl = client.ttl(key)
            assert 0 < ttl <= hour.end.timestamp() - time.time() + SCOPED_GRACE_SECONDS + 1, key
        tops = client.keys("*:top:users:*")
        assert len(tops) == 4 and all(client.ttl(k) > 0 for k in tops)
    finally:
        await store.close()


async def test_memory_store_forgets_users_whose_buckets_ended():
    now = [datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()]
    store = MemoryStore(clock=lambda: now[0])
    ledger = BudgetLedger(store, REF, budget(perUser=limits("hour", 1)))
    moment = datetime.fromtimestamp(now[0], UTC)
    for i in range(2000):
        await ledger.settle(await ledger.reserve(1, moment, user=f"u{i}"), 1)
    crowded = store.key_count()
    assert crowded > 2000
    now[0] += 10 * 24 * 3600  # every user's hour (and its grace) ended long ago
    later = datetime.fromtimestamp(now[0], UTC)
    for _ in range(2100):  # the periodic purge runs on writes
        await ledger.settle(await ledger.reserve(1, later, user="late"), 1)
    # The 2000 users' buckets are gone; what is left is a handful of the policy's and late's keys.
    assert not [k for k in store._ints if "user=u" in k]
    assert store.key_count() < 30, store.key_count()


async def test_an_acl_secured_sidecar_user_may_run_the_user_budget_scripts(secured_redis, tmp_path):
    admin = RedisStore(secured_redis.admin_url)
    password = secrets.token_urlsafe(24)
    await admin.set_user(acl.sidecar_user(*REF), acl.sidecar_rules(*REF), add=[password])
    credential = tmp_path / "credential"
    credential.write_text(f"{acl.sidecar_user(*REF)}\n{password}\n")
    store = RedisStore(secured_redis.url, credential_file=credential)
    try:
        ledger = BudgetLedger(store, REF, budget(perUser=limits("day", 1), perFeature=limits("day", 1)))
        limiter = RateLimiter(store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 50}))
        outcome = await admit(limiter, ledger, "alice", 1, 1000, feature="search")
        assert outcome.reservation is not None, outcome
        await ledger.settle(outcome.reservation, 700)
        assert (await ledger.top_spenders(10))[("users", "day")] == [("alice", 700)]
        operator = RedisStore(secured_redis.admin_url)
        try:
            top = await BudgetLedger(operator, REF, budget()).top_spenders(10)
            assert top[("features", "day")] == [("search", 700)]
        finally:
            await operator.close()
    finally:
        await store.close()
        await admin.close()


async def test_one_user_s_refusal_does_not_downgrade_everyone(store):
    ledger = BudgetLedger(store, REF, budget(perUser=limits("day", 1)))
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(2_000_000, user="alice")
    assert ledger.last_fraction_used == 0.0


async def test_user_and_feature_budgets_cost_no_extra_round_trip(redis):
    """One script call to admit (rate limits, the policy's, the user's and the feature's buckets)
    and one to settle, as with the policy's limits alone."""
    store = RedisStore(redis.url)
    try:
        ledger = BudgetLedger(
            store,
            REF,
            budget(limits=limits("day", 10), perUser=limits("day", 5), perFeature=limits("hour", 5)),
        )
        limiter = RateLimiter(store, REF, RateLimitSpec.model_validate({"requestsPerMinute": 1000}))
        await ledger.settle((await admit(limiter, ledger, "warm", 1, 10, feature="f")).reservation, 1)
        client = redis.client()
        client.config_resetstat()
        for i in range(10):
            outcome = await admit(limiter, ledger, f"user-{i}", 1, 1000, feature="search")
            await ledger.settle(outcome.reservation, 900)
        stats = client.info("commandstats")  # counts the scripts' own commands too
        assert stats["cmdstat_evalsha"]["calls"] == 20, stats
        # Anything else is a command the scripts run, not one sent on its own.
        scripted = {"get", "set", "incrby", "decrby", "expire", "exists", "del", "time", "hget", "hset"}
        scripted |= {"hdel", "zadd", "zrem", "zrangebyscore", "zincrby", "zremrangebyrank"}
        others = {name.removeprefix("cmdstat_") for name in stats} - {"evalsha", "config|resetstat", "info"}
        assert others <= scripted, others
    finally:
        await store.close()
