"""Retries, circuit breaker, timeouts and the admission queue, wired into the sidecar.

Through the real ``openai`` SDK (its own retries off, so that every retry seen is the sidecar's)
against the fake upstream with scripted faults. Timings are small and assertions generous: the
machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
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
from openai_policy_sidecar.tokens import count_input_tokens

HELLO = [{"role": "user", "content": "hello there"}]
BUDGET = {"limits": [{"window": "day", "usd": 5}]}


def sample(sidecar, name: str, **labels: str) -> float:
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def day_window(sidecar):
    [day] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day"]
    return day


async def test_a_429_with_retry_after_is_retried_after_it_and_succeeds(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, budget=BUDGET))
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("status", status=429, retry_after=2)
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        started = time.monotonic()
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        elapsed = time.monotonic() - started
        reply = raw.parse()
        assert reply.choices[0].message.content
        assert 1.8 <= elapsed < 8, elapsed  # waited the server's Retry-After, not the backoff
        assert len(fake_openai.requests) == 2
        # The sidecar retried: the app's SDK must not retry on top.
        assert raw.headers["x-should-retry"] == "false"
        usage = await settled_usage(sidecar, 1)
        assert usage["retries"] == 1 and "errors" not in usage
        assert sample(sidecar, "openai_policy_retries_total", reason="429") == 1
        # One reservation for the whole retry sequence, settled at the real cost of the answer.
        await quiesce(sidecar)
        day = await day_window(sidecar)
        assert day.reserved_micros == 0 and day.spent_micros == usage["cost_micros"] > 0


async def test_retries_stop_at_max_attempts_and_the_last_answer_is_passed_on(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            retries={"maxAttempts": 2, "baseDelaySeconds": 0.05},
            circuitBreaker={"enabled": False},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("status", status=503, times=5)
        client = async_client(base_url=sidecar.base_url, max_retries=3)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.status_code == 503
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert len(fake_openai.requests) == 2  # two sidecar attempts, no SDK retry on top


async def test_the_circuit_opens_fails_fast_half_opens_and_closes(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            retries={"maxAttempts": 1},
            circuitBreaker={"failureThreshold": 3, "recoverySeconds": 1},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        fake_openai.add_fault("status", status=500, times=3)
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as raised:
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert raised.value.status_code == 500
        assert sample(sidecar, "openai_policy_circuit_state") == 2  # open
        assert sidecar.report_loop.heartbeat_payload()["circuit"] == "open"

        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert time.monotonic() - started < 0.5  # fails fast
        assert raised.value.status_code == 503 and raised.value.code == "circuit_open"
        assert 1 <= int(raised.value.response.headers["retry-after"]) <= 2
        assert len(fake_openai.requests) == 3  # never reached the upstream

        await asyncio.sleep(1.2)
        assert sample(sidecar, "openai_policy_circuit_state") == 1  # half-open: one probe allowed
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices
        assert sample(sidecar, "openai_policy_circuit_state") == 0
        assert sidecar.report_loop.heartbeat_payload()["circuit"] == "closed"
        assert sample(sidecar, "openai_policy_circuit_transitions_total", state="open") == 1
        usage = await settled_usage(sidecar, 5)
        assert usage["refused:circuit_open"] == 1


async def test_a_hung_upstream_is_cut_at_the_timeout(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, budget=BUDGET, requests={"timeoutSeconds": 0.5})
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("hang")
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        elapsed = time.monotonic() - started
        assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"
        assert 0.4 <= elapsed < 3, elapsed
        await quiesce(sidecar)
        day = await day_window(sidecar)
        assert day.reserved_micros == 0  # nothing billed, nothing held
        # The next request is not affected.
        assert (await client.chat.completions.create(model="gpt-4o", messages=HELLO)).choices


async def test_a_stalled_stream_is_cut_by_the_idle_timeout_and_settled(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, budget=BUDGET, requests={"maxOutputTokens": 100, "streamIdleTimeoutSeconds": 0.3}
        ),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("stall_stream", after_events=2, seconds=5)
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        received = 0
        started = time.monotonic()
        with pytest.raises(openai.APIError) as raised:
            async for _ in await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
                received += 1
        elapsed = time.monotonic() - started
        assert received >= 1 and elapsed < 3, (received, elapsed)
        assert "sent nothing" in str(raised.value)
        await quiesce(sidecar)
        day = await day_window(sidecar)
        # The stream was cut before its usage arrived: the worst case is charged, nothing leaks.
        input_tokens = count_input_tokens("chat.completions", fake_openai.requests[-1].json, "gpt-4o")
        snapshot = sidecar.source.snapshot
        assert day.reserved_micros == 0
        assert day.spent_micros == snapshot.prices.worst_case_micros(
            "gpt-4o", input_tokens, 100, tier=None
        )  # no service_tier asked: reserved (and, without usage, charged) at the dearest tier
        usage = await settled_usage(sidecar, 1)
        assert usage["errors"] == 1 and usage["cost_micros"] == day.spent_micros


async def test_a_burst_beyond_the_queue_gets_queue_full_while_admitted_requests_succeed(
    tmp_path, fake_openai
):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(fake_openai, queue={"maxConcurrent": 1, "maxDepth": 1, "maxWaitSeconds": 10}),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("latency", seconds=1.0, times=2)
        client = async_client(base_url=sidecar.base_url, max_retries=0)

        async def call(delay: float) -> object:
            await asyncio.sleep(delay)  # arrive in order: one in flight, one waiting, two too many
            try:
                return await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            except openai.APIStatusError as error:
                return error

        tasks = [asyncio.create_task(call(0.1 * i)) for i in range(4)]
        for _ in range(50):  # one waiting behind the one in flight
            if sample(sidecar, "openai_policy_queue_depth") == 1:
                break
            await asyncio.sleep(0.02)
        assert sample(sidecar, "openai_policy_queue_depth") == 1
        results = await asyncio.gather(*tasks)
        refused = [r for r in results if isinstance(r, openai.APIStatusError)]
        assert len(refused) == 2 and len(results) - len(refused) == 2, results
        for error in refused:
            assert error.status_code == 503 and error.code == "queue_full"
            assert int(error.response.headers["retry-after"]) >= 1
        assert len(fake_openai.requests) == 2
        assert sample(sidecar, "openai_policy_queue_depth") == 0
        usage = await settled_usage(sidecar, 4)
        assert usage["refused:queue_full"] == 2


async def test_a_waiter_whose_client_left_leaves_the_queue_and_releases_its_reservation(
    tmp_path, fake_openai
):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(fake_openai, budget=BUDGET, queue={"maxConcurrent": 1, "maxWaitSeconds": 10}),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("latency", seconds=1.0)
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        first = asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=HELLO))
        await asyncio.sleep(0.2)
        body = {"model": "gpt-4o", "messages": HELLO}
        async with aiohttp.ClientSession() as session:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await session.post(sidecar.base_url + "/chat/completions", json=body)
        await asyncio.sleep(0.3)
        assert sample(sidecar, "openai_policy_queue_depth") == 0  # it left while the first was running
        assert (await first).choices
        await quiesce(sidecar)
        assert len(fake_openai.requests) == 1
        day = await day_window(sidecar)
        assert day.reserved_micros == 0


async def test_a_policy_reload_retunes_the_queue(tmp_path, fake_openai):
    path = tmp_path / "policy.yaml"
    write_policy(path, upstream_spec(fake_openai, queue={"maxConcurrent": 1, "maxDepth": 0}))
    async with running_sidecar(path) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        fake_openai.add_fault("latency", seconds=0.5, times=4)
        results = await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o", messages=HELLO) for _ in range(2)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, openai.APIStatusError) for r in results) == 1
        write_policy(
            path, upstream_spec(fake_openai, queue={"maxConcurrent": 4, "maxDepth": 0}), generation=2
        )
        for _ in range(100):
            if sidecar.source.snapshot.generation == 2:
                break
            await asyncio.sleep(0.05)
        results = await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o", messages=HELLO) for _ in range(2)),
            return_exceptions=True,
        )
        assert not [r for r in results if isinstance(r, BaseException)], results


async def test_workload_and_namespace_attribute_the_heartbeat_and_the_access_line(
    tmp_path, fake_openai, monkeypatch, caplog
):
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    monkeypatch.setenv("OPENAI_POLICY_WORKLOAD", "checkout")
    caplog.set_level(logging.INFO, logger="openai_policy_sidecar.access")
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        await async_client(base_url=sidecar.base_url).chat.completions.create(model="gpt-4o", messages=HELLO)
        await quiesce(sidecar)
        heartbeat = sidecar.report_loop.heartbeat_payload()
        assert heartbeat["workload"] == "checkout" and heartbeat["namespace"] == "shop"
        assert heartbeat["circuit"] == "closed"
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "openai_policy_sidecar.access"]
    assert line["workload"] == "checkout" and line["namespace"] == "shop"
    assert line["retries"] == 0 and line["cache"] is None


async def test_a_policy_reload_retunes_the_circuit_breaker(tmp_path, fake_openai):
    path = tmp_path / "policy.yaml"
    write_policy(
        path,
        upstream_spec(
            fake_openai,
            retries={"maxAttempts": 1},
            circuitBreaker={"failureThreshold": 1, "recoverySeconds": 60},
        ),
    )
    async with running_sidecar(path) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        fake_openai.add_fault("status", status=500)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert sidecar.report_loop.heartbeat_payload()["circuit"] == "open"
        write_policy(path, upstream_spec(fake_openai, circuitBreaker={"enabled": False}), generation=2)
        for _ in range(100):
            if sidecar.source.snapshot.generation == 2:
                break
            await asyncio.sleep(0.05)
        assert (await client.chat.completions.create(model="gpt-4o", messages=HELLO)).choices
        assert sidecar.report_loop.heartbeat_payload()["circuit"] == "closed"
