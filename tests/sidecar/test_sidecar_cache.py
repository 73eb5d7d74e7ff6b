"""The response cache, wired into the sidecar: hits are the original answer, cost nothing, never
reach the upstream, and a broken cache (Redis gone) only ever misses."""

from __future__ import annotations

import openai
import pytest

from openai_policy_devkit.sidecar import (
    async_client,
    quiesce,
    running_sidecar,
    settled_usage,
    upstream_spec,
    write_policy,
)

HELLO = [{"role": "user", "content": "what is a cache?"}]
BUDGET = {"limits": [{"window": "day", "usd": 5}]}


def cached_spec(fake, **extra: object) -> dict:
    return upstream_spec(fake, cache={"enabled": True, "ttlSeconds": 60}, budget=BUDGET, **extra)


def sample(sidecar, name: str, **labels: str) -> float:
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_plain_hit_is_the_original_answer_costs_nothing_and_never_reaches_the_upstream(
    tmp_path, fake_openai
):
    policy = write_policy(tmp_path / "policy.yaml", cached_spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        first = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, temperature=0
        )
        assert first.headers["x-openai-policy-cache"] == "miss"
        await quiesce(sidecar)  # stored once the first reply went out
        second = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, temperature=0, user="someone-else"
        )  # user does not change the answer
        assert second.headers["x-openai-policy-cache"] == "hit"
        assert second.http_response.content == first.http_response.content  # byte for byte
        assert len(fake_openai.requests) == 1
        await quiesce(sidecar)
        usage = await settled_usage(sidecar, 2)
        assert usage["cache_hits"] == 1
        assert usage["saved_micros"] == usage["cost_micros"] > 0  # the hit saved what the call cost
        [day] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day"]
        assert day.spent_micros == usage["cost_micros"] and day.reserved_micros == 0  # hit released its hold
        assert sample(sidecar, "openai_policy_cache_hits_total") == 1
        assert sample(sidecar, "openai_policy_cache_misses_total") == 1
        assert sample(sidecar, "openai_policy_cache_saved_usd_total", model="gpt-4o") > 0


async def test_a_streamed_hit_replays_the_same_events(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", cached_spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)

        async def raw() -> tuple[bytes, str]:
            async with client.chat.completions.with_streaming_response.create(
                model="gpt-4o", messages=HELLO, stream=True, seed=7
            ) as response:
                body = b"".join([chunk async for chunk in response.iter_bytes()])
                return body, response.headers["x-openai-policy-cache"]

        first, first_header = await raw()
        await quiesce(sidecar)
        second, second_header = await raw()
        assert (first_header, second_header) == ("miss", "hit")
        assert second == first and b"[DONE]" in second
        assert len(fake_openai.requests) == 1
        # A plain request for the same prompt is another entry (a stream is replayed as a stream).
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, seed=7)
        assert len(fake_openai.requests) == 2


async def test_non_deterministic_requests_are_not_cached_by_default(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", cached_spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
            assert "x-openai-policy-cache" not in raw.headers
        assert len(fake_openai.requests) == 2


async def test_while_the_circuit_is_open_a_cached_answer_is_served(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        cached_spec(
            fake_openai,
            retries={"maxAttempts": 1},
            circuitBreaker={"failureThreshold": 1, "recoverySeconds": 30},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        original = await client.chat.completions.create(model="gpt-4o", messages=HELLO, temperature=0)
        await quiesce(sidecar)
        fake_openai.add_fault("status", status=500)
        other = [{"role": "user", "content": "something else"}]
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o", messages=other, temperature=0)
        assert sidecar.report_loop.heartbeat_payload()["circuit"] == "open"
        served = await client.chat.completions.create(model="gpt-4o", messages=HELLO, temperature=0)
        assert served.model_dump() == original.model_dump()
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=other, temperature=0)
        assert raised.value.status_code == 503 and raised.value.code == "circuit_open"
        assert len(fake_openai.requests) == 2


async def test_with_redis_killed_the_cache_misses_and_the_request_still_succeeds(
    tmp_path, fake_openai, redis
):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, cache={"enabled": True}, budget={**BUDGET, "onStoreUnavailable": "localShare"}
        ),
    )
    async with running_sidecar(policy, redis_url=redis.url) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, temperature=0)
        await quiesce(sidecar)
        hit = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, temperature=0
        )
        assert hit.headers["x-openai-policy-cache"] == "hit"  # shared through Redis
        assert redis.client().keys("*cache*")
        redis.stop()
        degraded = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, temperature=0
        )
        assert degraded.headers["x-openai-policy-cache"] == "miss"
        assert degraded.parse().choices[0].message.content
        assert len(fake_openai.requests) == 2
        assert sidecar.durable.cache is not None and sidecar.durable.cache.errors >= 1
