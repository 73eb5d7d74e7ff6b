"""Rotation of the policy-signing key under traffic, as docs/security.md describes it: the new
public key is added to the trusted set (sidecars given both), then the operator signs with the
new key; once every pod has been rolled onto a set without the old key, a document signed with
the old key is refused whatever generation it claims.

Real Redis, in-process sidecars over the fake upstream, SDK requests from 8 concurrent workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from openai_policy_devkit.sidecar import (
    async_client,
    rejected,
    running_sidecar,
    signed_policy_document,
    until,
    upstream_spec,
    write_document,
)
from openai_policy_store import RedisStore
from openai_policy_store.signing import Signer, generate_seed_line

HELLO = [{"role": "user", "content": "hello"}]
REF = ("default", "demo")
WORKERS = 8


def spec(fake: Any, max_output: int) -> dict[str, Any]:
    return upstream_spec(fake, requests={"maxOutputTokens": max_output})


async def test_signing_key_rotation_under_traffic(tmp_path, fake_openai, redis):
    old_key = Signer.from_text(generate_seed_line()).keys[0]
    new_key = Signer.from_text(generate_seed_line()).keys[0]
    before = Signer((old_key,))  # the operator before the rotation
    during = Signer((new_key, old_key))  # signs with the new key; sidecars are given both
    after = Signer((new_key,))  # the old key removed from the trusted set
    assert during.public_keys == f"{after.public_keys},{before.public_keys}"

    store = RedisStore(redis.url)
    try:
        # Step 1 of the rotation: the pod runs with both keys trusted, its policy still signed
        # with the old one.
        policy = write_document(
            tmp_path / "policy.yaml", signed_policy_document(before, spec(fake_openai, 40))
        )
        async with running_sidecar(policy, redis_url=redis.url, policy_keys=during.public_keys) as sidecar:
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            stop = asyncio.Event()
            done: list[int] = []
            failures: list[BaseException] = []

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
                        done.append(1)
                    except Exception as error:  # noqa: BLE001 - every failure is reported below
                        failures.append(error)

            workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
            try:
                await asyncio.sleep(1.0)
                assert done, "no request went through before the rotation"
                # Step 2: the operator signs with the new key, and the policy changes.
                await store.publish_policy_document(
                    REF, signed_policy_document(during, spec(fake_openai, 20), generation=2, signed_at=2)
                )
                await until(lambda: sidecar.source.snapshot.generation == 2, timeout=15.0)
                assert sidecar.source.snapshot.source == "store"
                assert sidecar.source.snapshot.spec.requests.max_output_tokens == 20
                applied_at = len(fake_openai.requests)
                await asyncio.sleep(1.0)  # traffic continues on the new document
            finally:
                stop.set()
                await asyncio.gather(*workers)
            assert not failures, (
                f"{len(failures)} of {len(done) + len(failures)} requests failed: {failures[:3]}"
            )
            sent = [r.json.get("max_completion_tokens") for r in fake_openai.requests]
            assert sent[0] == 40 and set(sent) <= {40, 20}
            assert len(sent) > applied_at + WORKERS and set(sent[applied_at + WORKERS :]) == {20}
            assert not rejected(sidecar, "store", "unknown_key")

        # Step 3: pods rolled onto the new trusted set only (their ConfigMap carries the new-key
        # document). A document signed with the old key, with a higher generation, is refused.
        write_document(
            policy, signed_policy_document(during, spec(fake_openai, 20), generation=2, signed_at=2)
        )
        async with running_sidecar(policy, redis_url=redis.url, policy_keys=after.public_keys) as sidecar:
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            await until(lambda: sidecar.source.snapshot.generation == 2, timeout=15.0)
            stale = signed_policy_document(before, spec(fake_openai, 999), generation=9, signed_at=9)
            await store.publish_policy_document(REF, stale)
            await until(lambda: rejected(sidecar, "store", "unknown_key") == 1, timeout=15.0)
            await asyncio.sleep(0.5)  # several polls
            assert sidecar.source.snapshot.generation == 2
            assert sidecar.source.snapshot.spec.requests.max_output_tokens == 20
            fake_openai.requests.clear()
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert fake_openai.requests[-1].json["max_completion_tokens"] == 20
    finally:
        await store.close()
