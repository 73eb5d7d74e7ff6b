"""Per-user budgets through the sidecar, with the real ``openai`` SDK against the fake upstream:
100 concurrent calls of one user against a small day limit (one sidecar, and two sharing a real
Redis), the refusal naming the user, another user still served, and the remaining-budget headers
on a plain, a streamed, a cached and a refused answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable

import openai
import pytest

from openai_policy_devkit.sidecar import (
    SidecarProcess,
    async_client,
    concurrently,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)
from openai_policy_store import keyspace

CONCURRENCY = 100
MODEL = "gpt-4o"
USER_LIMIT_USD = 0.001
POLICY_LIMIT_USD = 50
# At the bundled prices (the fake bills with the same table) a call of a few input tokens cut at
# 5 output tokens costs about $0.00008: about a dozen of alice's 100 calls fit in her $0.001 day.
SPEC = {
    "budget": {
        "limits": [{"window": "day", "usd": POLICY_LIMIT_USD}],
        "perUser": [{"window": "day", "usd": USER_LIMIT_USD}],
        "timeZone": "America/New_York",
    },
    "requests": {"maxOutputTokens": 5},
    "cache": {"enabled": True},
}
LIMIT = int(USER_LIMIT_USD * 1_000_000)
DECIMAL = re.compile(r"^[0-9]+\.[0-9]{6}$")
REMAINING = "x-openai-policy-budget-remaining-"


def ask(client: openai.AsyncOpenAI, user: str, index: int = 0, **extra: object) -> Awaitable[object]:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"question {index}"}], user=user, **extra
    )


async def fire(base_urls: list[str]) -> list[str | BaseException]:
    clients = [async_client(url, max_retries=0) for url in base_urls]
    return await concurrently(lambda i: ask(clients[i % len(clients)], "alice", i), CONCURRENCY)


def check(outcomes: list[str | BaseException], fake) -> int:
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    ok, refused = outcomes.count("ok"), outcomes.count("budget_exceeded")
    assert ok + refused == CONCURRENCY and 0 < ok < CONCURRENCY, outcomes
    billed = fake.billed_micros()
    assert billed <= LIMIT, f"the fake billed {billed} micros for alice, past her {LIMIT}"
    return ok


async def test_one_user_cannot_spend_past_their_day_under_100_concurrent_calls(tmp_path, fake_openai):
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **SPEC))
    async with running_sidecar(path) as sidecar:
        check(await fire([sidecar.base_url]), fake_openai)
        await quiesce(sidecar)
        ledger = sidecar.source.snapshot.ledger
        buckets = ledger.buckets(user="alice")
        spends = await ledger.store.budget_read(ledger.ref, buckets)
        recorded = {
            keyspace.scope_kind(b.scope): s for b, s in zip(buckets, spends, strict=True) if b.window == "day"
        }
        assert recorded["user"].spent_micros == fake_openai.billed_micros() <= LIMIT
        assert recorded["user"].reserved_micros == 0
        client = async_client(sidecar.base_url, max_retries=0)
        long_question = [{"role": "user", "content": "why " * 200}]  # its hold is past what is left
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model=MODEL, messages=long_question, user="alice")
        message = refused.value.body["message"]
        assert refused.value.code == "budget_exceeded"
        assert "day budget of user 'alice' ($0.001) is spent" in message and "bob" not in message
        # Another user's calls still pass: alice's spend is hers alone.
        await ask(client, "bob")


async def test_two_sidecars_sharing_redis_hold_one_user_budget(tmp_path, fake_openai, redis):
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **SPEC))
    sidecars = [
        SidecarProcess(
            path,
            tmp_path / f"sidecar-{i}.log",
            env_key="sk-shared-test-key",
            redis_url=redis.url,
            pod=f"pod-{i}",
        )
        for i in range(2)
    ]
    try:
        for sidecar in sidecars:
            sidecar.wait_healthy()
        check(await fire([s.base_url for s in sidecars]), fake_openai)
        await ask(async_client(sidecars[1].base_url, max_retries=0), "bob")
    finally:
        for sidecar in sidecars:
            sidecar.stop()
    client = redis.client()
    [alice] = client.keys("*:spend:user=alice:day:*")
    assert b"-05:00" in alice or b"-04:00" in alice  # the day of America/New_York
    assert int(client.get(alice)) <= LIMIT
    assert client.ttl(alice) > 0


async def test_every_answer_carries_the_remaining_budget(tmp_path, fake_openai):
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **SPEC))
    async with running_sidecar(path) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        plain = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], user="carol", temperature=0
        )
        policy_day = plain.headers[REMAINING + "day"]
        user_day = plain.headers[REMAINING + "user-day"]
        assert DECIMAL.match(policy_day) and DECIMAL.match(user_day)
        # Read after this call's hold: less than the limit, by about one call's worst case.
        assert USER_LIMIT_USD - 0.0002 < float(user_day) < USER_LIMIT_USD
        assert POLICY_LIMIT_USD - 0.1 < float(policy_day) < POLICY_LIMIT_USD
        assert REMAINING + "hour" not in plain.headers  # no limit, no header
        assert REMAINING + "feature-day" not in plain.headers
        await quiesce(sidecar)

        streamed = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}], user="carol", stream=True
        )
        async for _ in streamed.parse():
            pass
        assert float(streamed.headers[REMAINING + "user-day"]) < float(user_day)
        await quiesce(sidecar)

        hit = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], user="carol", temperature=0
        )
        assert hit.headers["x-openai-policy-cache"] == "hit"
        assert DECIMAL.match(hit.headers[REMAINING + "user-day"])
        await quiesce(sidecar)

        refused = None
        for index in range(20):
            try:
                await ask(client, "carol", index)
            except openai.RateLimitError as error:
                refused = error
                break
        assert refused is not None and refused.code == "budget_exceeded"
        left = refused.response.headers[REMAINING + "user-day"]
        assert DECIMAL.match(left) and float(left) < 0.0002  # less than one call's worst case is left
        assert float(refused.response.headers[REMAINING + "day"]) > 40


async def test_a_user_name_too_long_for_a_budget_is_refused(tmp_path, fake_openai):
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **SPEC))
    async with running_sidecar(path) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            await ask(client, "u" * 257)
        assert refused.value.code == "invalid_request" and "at most 256" in refused.value.body["message"]
        assert fake_openai.billed_micros() == 0
        await ask(client, "u" * 256)


async def test_a_rate_limit_refusal_carries_the_remaining_budget_too(tmp_path, fake_openai):
    spec = {**SPEC, "rateLimits": {"requestsPerMinute": 1}}
    path = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **spec))
    async with running_sidecar(path) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        first = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], user="dave"
        )
        await quiesce(sidecar)
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(client, "dave")
        assert refused.value.code == "rate_limit_exceeded"
        headers = refused.value.response.headers
        # Nothing held for the refused call: what remains is what the first call left.
        assert DECIMAL.match(headers[REMAINING + "user-day"])
        assert float(headers[REMAINING + "user-day"]) >= float(first.headers[REMAINING + "user-day"])
