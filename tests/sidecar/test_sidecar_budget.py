"""The hard budget under concurrency: 200 requests at once, one sidecar or three sharing Redis.

Every request's real cost is known from the fake's usage log and the policy's prices. Two
properties must hold: the real spend never passes the limit, and the budget is actually used
(the refusals did not start earlier than one request's cost before the limit).
"""

from __future__ import annotations

from collections.abc import Awaitable

from openai_policy_api import load_policy
from openai_policy_devkit.sidecar import (
    SidecarProcess,
    async_client,
    concurrently,
    policy_document,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.pricing import PriceTable

CONCURRENCY = 200
MODEL = "gpt-4o-mini"
LIMIT_USD = 5
# Output dominates the price and the reply is always cut at maxOutputTokens, so a call's real
# cost is (almost exactly) its worst case: the limit can be filled to within one call.
SPEC = {
    "budget": {"limits": [{"window": "hour", "usd": LIMIT_USD}]},
    "requests": {"maxOutputTokens": 5},
    "pricing": {"models": {MODEL: {"inputPerMillion": 1, "outputPerMillion": 10_000}}},
}


def _spec(fake) -> dict:
    return upstream_spec(fake, **SPEC)


async def _fire(base_urls: list[str]) -> tuple[int, int, list[BaseException]]:
    clients = [async_client(base_url=url, api_key="sk-placeholder", max_retries=2) for url in base_urls]

    def one(index: int) -> Awaitable[object]:
        return clients[index % len(clients)].chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"question number {index}"}]
        )

    outcomes = await concurrently(one, CONCURRENCY)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return outcomes.count("ok"), outcomes.count("budget_exceeded"), errors


def _real_spend(fake, prices: PriceTable) -> tuple[int, int]:
    """(total real cost of every answered call, the largest single call's cost), in micros."""
    costs = [
        prices.cost_micros(
            MODEL,
            u["prompt_tokens"],
            (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            u["completion_tokens"],
        )
        for u in fake.usage_log
    ]
    return sum(costs), max(costs)


def _check(fake, ok: int, refused: int, errors: list[BaseException]) -> int:
    assert errors == []
    assert ok + refused == CONCURRENCY
    assert 0 < ok < CONCURRENCY and len(fake.usage_log) == ok
    prices = PriceTable.for_policy(load_policy(policy_document(_spec(fake))).spec)
    spent, one_call = _real_spend(fake, prices)
    limit = LIMIT_USD * 1_000_000
    assert spent <= limit, f"spent {spent} micros past the limit of {limit}"
    assert limit - spent < one_call * 1.01, f"only {spent} of {limit} micros used: refused too early"
    return spent


async def test_budget_holds_under_200_concurrent_requests_one_sidecar(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", _spec(fake_openai))
    async with running_sidecar(policy) as sidecar:
        ok, refused, errors = await _fire([sidecar.base_url])
        spent = _check(fake_openai, ok, refused, errors)
        await quiesce(sidecar)
        [hour] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "hour"]
        assert (hour.spent_micros, hour.reserved_micros) == (spent, 0)


async def test_budget_holds_across_three_sidecars_sharing_redis(tmp_path, fake_openai, redis):
    policy = write_policy(tmp_path / "policy.yaml", _spec(fake_openai))
    sidecars = [
        SidecarProcess(
            policy,
            tmp_path / f"sidecar-{i}.log",
            env_key="sk-shared-test-key",
            redis_url=redis.url,
            pod=f"pod-{i}",
        )
        for i in range(3)
    ]
    try:
        for sidecar in sidecars:
            sidecar.wait_healthy()
        ok, refused, errors = await _fire([s.base_url for s in sidecars])
        spent = _check(fake_openai, ok, refused, errors)
    finally:
        for sidecar in sidecars:
            sidecar.stop()
    # Every pod settled into the one shared ledger, and reported usage and heartbeats.
    client = redis.client()
    spend_keys = [k for k in client.keys("*spend:hour*")]
    assert len(spend_keys) == 1 and int(client.get(spend_keys[0])) == spent
    usage = {k.decode(): int(v) for k, v in client.hgetall(next(iter(client.keys("*usage")))).items()}
    assert usage["requests"] == CONCURRENCY and usage["refused:budget_exceeded"] == refused
    assert usage["cost_micros"] == spent
    beats = client.hgetall(next(iter(client.keys("*heartbeats"))))
    assert {k.decode() for k in beats} == {"pod-0", "pod-1", "pod-2"}
