"""Spend survives a wiped or restarted Redis: 200 requests over three real sidecar processes (each
logged in as the policy's ACL user), with a FLUSHALL, or a Redis restart from its AOF, while
calls are in flight.

The bound: spend lost in a wipe is at most what the requests in flight at that moment cost. Every
settle returns the bucket's new total to the sidecar that made it; each later reservation sends
that total along as the bucket's floor, and a store holding less (wiped) is raised to it before
anything is admitted. What the wipe loses is the reservations of the calls in flight (they settle
afterwards, into the restored counter). So: real spend <= limit + the worst case of the calls in
flight at the wipe (here at most ``IN_FLIGHT`` calls, the clients' concurrency).

Without the floors (the store as it was) the same run spends past that: after the wipe the budget
starts again from zero (the control test below shows it).
"""

from __future__ import annotations

import asyncio
import secrets

import openai
import pytest

from openai_policy_api import load_policy
from openai_policy_devkit.sidecar import (
    SidecarProcess,
    async_client,
    policy_document,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.pricing import PriceTable
from openai_policy_store import BudgetExceeded, BudgetLedger, RedisStore, acl

REQUESTS = 200
IN_FLIGHT = 24  # the clients' concurrency: at most this many calls are in flight at the wipe
MODEL = "gpt-4o-mini"
LIMIT_USD = 4
SPEC = {
    "budget": {"limits": [{"window": "hour", "usd": LIMIT_USD}]},
    "requests": {"maxOutputTokens": 5},
    "pricing": {"models": {MODEL: {"inputPerMillion": 1, "outputPerMillion": 10_000}}},
}
REF = ("default", "demo")  # policy_document's defaults
PASSWORD = secrets.token_urlsafe(24)
WIPE_AFTER = 40  # answered calls before the wipe: their spend (~$2) is what a wipe would forget


async def _fire(base_urls: list[str]) -> list[str]:
    clients = [async_client(base_url=u, api_key="sk-placeholder", max_retries=0) for u in base_urls]
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(index: int) -> str:
        async with gate:
            try:
                await clients[index % len(clients)].chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"question {index}"}]
                )
            except openai.APIStatusError as error:
                return str(error.code or error.status_code)
            return "ok"

    return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


def _costs(fake) -> tuple[int, int]:
    prices = PriceTable.for_policy(load_policy(policy_document(upstream_spec(fake, **SPEC))).spec)
    costs = [prices.cost_micros(MODEL, u["prompt_tokens"], 0, u["completion_tokens"]) for u in fake.usage_log]
    return sum(costs), max(costs)


async def _run(tmp_path, fake, server, wipe) -> tuple[int, int, list[str]]:
    admin = RedisStore(server.admin_url)
    password = PASSWORD
    await admin.set_user(acl.sidecar_user(*REF), acl.sidecar_rules(*REF), add=[password])
    await admin.close()
    credential = tmp_path / "credential"
    credential.write_text(f"{acl.sidecar_user(*REF)}\n{password}\n")
    fake.add_fault("latency", times=None, seconds=0.05)
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake, **SPEC))
    sidecars = [
        SidecarProcess(
            policy,
            tmp_path / f"sidecar-{i}.log",
            env_key="sk-durable-test-key",
            redis_url=server.url,
            pod=f"pod-{i}",
            redis_credential_file=credential,
        )
        for i in range(3)
    ]

    async def wipe_midway() -> None:
        while len(fake.usage_log) < WIPE_AFTER:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(wipe)

    try:
        for sidecar in sidecars:
            sidecar.wait_healthy()
        wiper = asyncio.create_task(wipe_midway())
        outcomes = await _fire([s.base_url for s in sidecars])
        await wiper
    finally:
        for sidecar in sidecars:
            sidecar.stop()
    spent, one_call = _costs(fake)
    return spent, one_call, outcomes


def _assert_bound(spent: int, one_call: int, outcomes: list[str]) -> None:
    limit = LIMIT_USD * 1_000_000
    assert outcomes.count("ok") > WIPE_AFTER and "budget_exceeded" in outcomes, outcomes
    assert spent <= limit + IN_FLIGHT * one_call, (
        f"spent {spent} micros: more than the limit {limit} + {IN_FLIGHT} calls in flight"
    )


async def test_a_flushall_midway_loses_at_most_the_calls_in_flight(tmp_path, fake_openai, secured_redis):
    spent, one_call, outcomes = await _run(
        tmp_path, fake_openai, secured_redis, lambda: secured_redis.client().flushall()
    )
    _assert_bound(spent, one_call, outcomes)


async def test_a_redis_restart_from_its_aof_midway_keeps_the_budget(tmp_path, fake_openai, secured_redis):
    def restart() -> None:
        secured_redis.restart()
        # Users live in memory: the operator re-creates the policy's user with the password it
        # delivered, at its next tick (tests/operator/test_redis_users.py); here, at once.
        client = secured_redis.client()
        client.execute_command(
            "ACL", "SETUSER", acl.sidecar_user(*REF), *acl.sidecar_rules(*REF), "on", f">{PASSWORD}"
        )

    spent, one_call, outcomes = await _run(tmp_path, fake_openai, secured_redis, restart)
    _assert_bound(spent, one_call, outcomes)
    # The restart replayed the AOF: the spend is there.
    client = secured_redis.client()
    [key] = client.keys("*spend:hour*")
    assert int(client.get(key)) >= (LIMIT_USD * 1_000_000) // 2


async def test_the_floor_is_what_stops_a_wiped_store_from_handing_out_the_budget_again(secured_redis):
    """In one process, against the real Redis: a ledger that has seen the spend (floors) puts it back
    at its next reservation; a ledger that has seen nothing (the store as it was: no floors) would
    be admitted a whole budget again by the wiped store."""
    store = RedisStore(secured_redis.admin_url)
    try:
        budget = load_policy(policy_document(SPEC)).spec.budget
        seen = BudgetLedger(store, REF, budget)
        while True:
            try:
                await seen.settle(await seen.reserve(500_000), 500_000)
            except BudgetExceeded:
                break
        secured_redis.client().flushall()
        blind = BudgetLedger(store, REF, budget)
        first = await blind.reserve(500_000)  # the old behaviour: the wipe reopened the budget
        await blind.release(first)
        with pytest.raises(BudgetExceeded):
            await seen.reserve(500_000)  # the floor went back first
        with pytest.raises(BudgetExceeded):
            await blind.reserve(500_000)  # and now holds for everyone
        assert (await store.read_spend(REF))["hour"].spent_micros == LIMIT_USD * 1_000_000
    finally:
        await store.close()
