"""Attacks on what a sidecar applies: forged policy documents (store and file) and forged cache entries.

Each test runs the attack against a sidecar given the operator's public keys (as an injected one
is) over a real Redis, and shows that it fails: the forged document is not applied, no request
reaches the attacker's server, the refusal is counted, logged without the document, and reported
in /readyz and the heartbeat the operator turns into status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from openai_policy_devkit.sidecar import (
    TEST_KEY,
    SidecarProcess,
    admin_get,
    async_client,
    policy_document,
    rejected,
    running_sidecar,
    signed_policy_document,
    until,
    upstream_spec,
    write_document,
)
from openai_policy_sidecar.response_cache import CachedResponse
from openai_policy_store import RedisStore, keyspace
from openai_policy_store.signing import Signer, generate_seed_line

HELLO = [{"role": "user", "content": "hello"}]
REF = ("default", "demo")
MARKER = "org-FORGED-do-not-log"  # in every forged document: must never reach a log line


@pytest.fixture
def signer() -> Signer:
    return Signer.from_text(generate_seed_line())


@contextlib.asynccontextmanager
async def attacker_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI look-alike that records every request (and the Authorization it carried)."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "authorization": request.headers.get("Authorization")})
        return web.json_response({"error": {"message": "stolen", "type": "x", "param": None, "code": None}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


def forged_spec(evil_url: str) -> dict[str, Any]:
    return {"upstream": {"baseURL": evil_url, "organization": MARKER}}


async def test_a_forged_store_document_with_a_higher_generation_is_not_applied(
    tmp_path, fake_openai, redis, signer, caplog
):
    caplog.set_level(logging.INFO)
    policy = write_document(
        tmp_path / "policy.yaml", signed_policy_document(signer, upstream_spec(fake_openai))
    )
    attacker = Signer.from_text(generate_seed_line())
    store = RedisStore(redis.url)
    try:
        async with (
            attacker_server() as (evil_url, seen),
            running_sidecar(policy, redis_url=redis.url, policy_keys=signer.public_keys) as sidecar,
        ):
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            genuine = signed_policy_document(signer, upstream_spec(fake_openai), generation=2)
            tampered = json.loads(json.dumps(genuine))
            tampered["spec"] = forged_spec(evil_url)  # a genuine signature over another spec
            forgeries = {
                "unsigned": policy_document(forged_spec(evil_url), generation=99),
                "unknown_key": signed_policy_document(attacker, forged_spec(evil_url), generation=99),
                "bad_signature": tampered,
            }
            for reason, forged in forgeries.items():
                await store.publish_policy_document(REF, forged)
                await until(lambda reason=reason: rejected(sidecar, "store", reason) == 1)
                await asyncio.sleep(0.5)  # several polls: still counted once
                assert rejected(sidecar, "store", reason) == 1
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)
                assert sidecar.source.snapshot.generation == 1 and sidecar.source.snapshot.source == "file"

            assert seen == [], "a request reached the attacker's server"
            status, detail = await admin_get(sidecar, "/readyz")
            assert status == 200 and detail["policy"]["signed"] is True
            assert "untrusted policy document from the store" in detail["policy"]["lastError"]
            # The heartbeat carries the refusal to the operator, which puts it into the status.
            await asyncio.sleep(0.5)  # one report tick
            beat = (await store.read_heartbeats(REF))["test-pod"]
            assert "untrusted policy document" in beat["untrustedDocument"]
            text = caplog.text + json.dumps(detail) + json.dumps(beat)
            assert MARKER not in text and evil_url not in text
            assert TEST_KEY not in text

            # The operator's next genuine document is applied, whatever the forged generation was.
            await store.publish_policy_document(REF, genuine)
            await until(lambda: sidecar.source.snapshot.generation == 2)
            assert sidecar.source.snapshot.source == "store"
    finally:
        await store.close()


async def test_an_edited_policy_file_is_refused_counted_and_reported(
    tmp_path, fake_openai, redis, signer, caplog
):
    caplog.set_level(logging.INFO)
    policy = write_document(
        tmp_path / "policy.yaml",
        signed_policy_document(
            signer, upstream_spec(fake_openai, budget={"limits": [{"window": "day", "usd": 0.000001}]})
        ),
    )
    async with (
        asyncio.timeout(30),
        running_sidecar(policy, redis_url=redis.url, policy_keys=signer.public_keys) as sidecar,
    ):
        # A namespace editor rewrites the ConfigMap: a huge generation, no budget, another upstream.
        edited = policy_document({**forged_spec("http://127.0.0.1:9/v1")}, generation=10**9)
        write_document(policy, edited)
        await until(lambda: rejected(sidecar, "file", "unsigned") == 1)
        assert sidecar.source.snapshot.generation == 1
        assert sidecar.source.snapshot.spec.budget.limits, "the budget is still in force"
        _, detail = await admin_get(sidecar, "/readyz")
        assert "untrusted policy document from the file (unsigned)" in detail["policy"]["lastError"]
        # A signed document of another policy (e.g. the namespace's bigger one) is refused too.
        other = signed_policy_document(signer, upstream_spec(fake_openai), name="big", generation=5)
        write_document(policy, other)
        await until(lambda: rejected(sidecar, "file", "wrong_policy") == 1)
        assert sidecar.source.snapshot.generation == 1
        assert MARKER not in caplog.text


async def test_a_re_created_policy_supersedes_whatever_the_generation(tmp_path, fake_openai, redis, signer):
    old = signed_policy_document(signer, upstream_spec(fake_openai), generation=7, uid="old-uid")
    policy = write_document(tmp_path / "policy.yaml", old)
    store = RedisStore(redis.url)
    try:
        async with running_sidecar(policy, redis_url=redis.url, policy_keys=signer.public_keys) as sidecar:
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            # Deleted and re-created with suspend: true; the new incarnation starts at generation 1.
            recreated = signed_policy_document(
                signer,
                upstream_spec(fake_openai, suspend=True),
                generation=1,
                uid="new-uid",
                created="2026-01-01T00:05:00Z",
                signed_at=2,
            )
            started = asyncio.get_running_loop().time()
            await store.publish_policy_document(REF, recreated)
            await until(lambda: sidecar.source.facts.uid == "new-uid", timeout=2.0)
            assert asyncio.get_running_loop().time() - started <= 2.0
            with pytest.raises(openai.PermissionDeniedError):
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            # Replaying the old incarnation's signed document (higher generation) does not roll back.
            await store.publish_policy_document(REF, old)
            await asyncio.sleep(0.6)
            assert sidecar.source.facts.uid == "new-uid" and sidecar.source.snapshot.spec.suspend
    finally:
        await store.close()


async def test_standalone_applies_its_file_and_nothing_from_the_store(tmp_path, fake_openai, redis, signer):
    policy = write_document(tmp_path / "policy.yaml", policy_document(upstream_spec(fake_openai)))
    store = RedisStore(redis.url)
    try:
        async with running_sidecar(policy, redis_url=redis.url) as sidecar:
            await store.publish_policy_document(
                REF, signed_policy_document(signer, upstream_spec(fake_openai, suspend=True), generation=5)
            )
            await asyncio.sleep(0.8)
            assert sidecar.source.snapshot.generation == 1 and not sidecar.source.snapshot.spec.suspend
            _, detail = await admin_get(sidecar, "/readyz")
            assert detail["policy"]["signed"] is False
    finally:
        await store.close()


def test_a_sidecar_process_refuses_an_unsigned_policy_file_at_start(tmp_path, fake_openai, signer):
    policy = write_document(tmp_path / "policy.yaml", policy_document(forged_spec(fake_openai.base_url)))
    key = tmp_path / "key"
    key.write_text(TEST_KEY)
    process = SidecarProcess(policy, tmp_path / "log", api_key_file=key, policy_keys=signer.public_keys)
    assert process.process.wait(timeout=30) == 2
    log = process.log()
    assert "refused (unsigned)" in log and MARKER not in log and TEST_KEY not in log
    process.stop()


async def test_a_forged_cache_entry_is_a_miss_counted_and_saves_nothing(tmp_path, fake_openai, redis, signer):
    spec = upstream_spec(fake_openai, cache={"enabled": True, "ttlSeconds": 300})
    policy = write_document(tmp_path / "policy.yaml", signed_policy_document(signer, spec))
    body = {"model": "gpt-4o", "messages": HELLO, "temperature": 0}
    payload = {
        "id": "chatcmpl-forged",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "FORGED"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10**6, "completion_tokens": 10**6, "total_tokens": 2 * 10**6},
    }
    forged = CachedResponse(
        status=200,
        content_type="application/json",
        body=json.dumps(payload).encode(),
        model="gpt-4o",
        usage={"input_tokens": 10**6, "output_tokens": 10**6},  # a million tokens "saved" per hit
    ).to_bytes()
    attacker = aioredis.from_url(redis.url)
    try:
        async with running_sidecar(policy, redis_url=redis.url, policy_keys=signer.public_keys) as sidecar:
            registry = sidecar.metrics.registry
            client = async_client(base_url=sidecar.base_url, api_key="x", max_retries=0)
            first = await client.chat.completions.create(**body)
            pattern = keyspace.cache_key(*REF, "*")
            keys: list[bytes] = []
            for _ in range(40):  # the entry is stored after the reply went out
                keys = [k async for k in attacker.scan_iter(match=pattern)]
                if keys:
                    break
                await asyncio.sleep(0.05)
            (key,) = keys
            # What an attacker who reaches Redis writes: an entry in the old format, and one shaped
            # like a sealed entry with a MAC made without the policy's key.
            for attempt, value in enumerate((forged, b"oapm1" + bytes(32) + forged), 1):
                await attacker.set(key, value, px=300_000)
                reply = await client.chat.completions.create(**body)
                assert reply.choices[0].message.content == first.choices[0].message.content != "FORGED"
                assert registry.get_sample_value("openai_policy_cache_forged_total") == attempt
                await asyncio.sleep(0.2)  # the sidecar re-stores its own entry after the reply
            assert not registry.get_sample_value("openai_policy_cache_hits_total")
            # Its own sealed entry is a hit; what it reports as saved is that call's real cost.
            again = await client.chat.completions.create(**body)
            assert again.choices[0].message.content == first.choices[0].message.content
            await until(
                lambda: registry.get_sample_value("openai_policy_cache_hits_total") == 1
            )  # recorded after the reply
            saved = sum(
                s.value
                for m in registry.collect()
                if m.name == "openai_policy_cache_saved_usd"
                for s in m.samples
                if s.name.endswith("_total")
            )
            assert saved < 0.01, saved
    finally:
        await attacker.aclose()
