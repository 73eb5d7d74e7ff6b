"""The sidecar with a shared Redis store: policies published by the operator, readiness, outages."""

from __future__ import annotations

import asyncio

import openai
import pytest

from openai_policy_devkit.sidecar import (
    admin_get,
    async_client,
    running_sidecar,
    signed_policy_document,
    upstream_spec,
    write_document,
    write_policy,
)
from openai_policy_store import RedisStore
from openai_policy_store.signing import Signer, generate_seed_line

HELLO = [{"role": "user", "content": "hello"}]
REF = ("default", "demo")


async def _until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


async def test_a_newer_generation_published_in_the_store_is_applied(tmp_path, fake_openai, redis):
    signer = Signer.from_text(generate_seed_line())
    policy = write_document(
        tmp_path / "policy.yaml", signed_policy_document(signer, upstream_spec(fake_openai))
    )
    publisher = RedisStore(redis.url)
    try:
        async with running_sidecar(policy, redis_url=redis.url, policy_keys=signer.public_keys) as sidecar:
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)

            # The operator publishes generation 2 (the kill switch): applied without a restart.
            document = signed_policy_document(signer, upstream_spec(fake_openai, suspend=True), generation=2)
            await publisher.publish_policy_document(REF, document)
            await _until(lambda: sidecar.source.snapshot.generation == 2)
            assert sidecar.source.snapshot.source == "store"
            with pytest.raises(openai.PermissionDeniedError):
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)

            # An invalid generation 3 is refused; generation 2 stays, and /readyz says why.
            bad = signed_policy_document(
                signer,
                upstream_spec(fake_openai, budget={"limits": [{"window": "day", "usd": 0}]}),
                generation=3,
            )
            await publisher.publish_policy_document(REF, bad)
            await _until(lambda: sidecar.source.error is not None)
            assert sidecar.source.snapshot.generation == 2
            _, detail = await admin_get(sidecar, "/readyz")
            assert "generation 3" in detail["policy"]["lastError"]
            assert "spec.budget.limits[0].usd" in detail["policy"]["lastError"]

            # The mounted file lagging behind (generation 1 rewritten) does not roll back.
            write_document(policy, signed_policy_document(signer, upstream_spec(fake_openai)))
            await asyncio.sleep(0.6)
            assert sidecar.source.snapshot.generation == 2
    finally:
        await publisher.close()


async def test_store_outage_fails_closed_by_default_and_readyz_says_so(tmp_path, fake_openai, redis):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(fake_openai, budget={"limits": [{"window": "day", "usd": 10}]}),
    )
    async with running_sidecar(policy, redis_url=redis.url) as sidecar:
        client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert (await admin_get(sidecar, "/readyz"))[0] == 200
        redis.stop()
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.status_code == 503 and raised.value.code == "store_unavailable"
        assert len(fake_openai.requests) == 1
        status, detail = await admin_get(sidecar, "/readyz")
        assert status == 503 and detail["store"]["reachable"] is False


async def test_store_outage_with_local_share_keeps_serving_within_the_share(tmp_path, fake_openai, redis):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            budget={
                "limits": [{"window": "day", "usd": 10}],
                "onStoreUnavailable": "localShare",
                "localSharePercent": 10,
            },
        ),
    )
    async with running_sidecar(policy, redis_url=redis.url) as sidecar:
        client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
        redis.stop()
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices
