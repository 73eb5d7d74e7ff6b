"""Remembered context sizes through a real Redis: the per-policy ACL user of a sidecar may keep
its own and reaches no other policy's; a store that cannot answer never fails the request (the
caller then holds the context window)."""

from __future__ import annotations

import secrets

from openai_policy_store import RedisStore, acl
from openai_policy_store.response_sizes import ContextSizes

A = ("team-a", "chatbot")
B = ("team-b", "batch")


async def _sidecar_store(server, admin: RedisStore, ref: tuple[str, str], tmp_path) -> RedisStore:
    password = secrets.token_urlsafe(24)
    await admin.set_user(acl.sidecar_user(*ref), acl.sidecar_rules(*ref), add=[password])
    credential = tmp_path / f"credential-{ref[1]}"
    credential.write_text(f"{acl.sidecar_user(*ref)}\n{password}\n")
    return RedisStore(server.url, credential_file=credential)


async def test_a_sidecar_user_keeps_its_own_sizes_and_reaches_no_other(secured_redis, tmp_path) -> None:
    admin = RedisStore(secured_redis.admin_url)
    store_a = await _sidecar_store(secured_redis, admin, A, tmp_path)
    store_b = await _sidecar_store(secured_redis, admin, B, tmp_path)
    try:
        mine = ContextSizes(store_a, A)
        assert await mine.remember("resp_1", 4_200)
        assert await mine.get("resp_1") == 4_200
        await mine.forget("resp_1")
        assert await mine.get("resp_1") is None
        assert await mine.remember("conv_1", 77)
        assert await mine.take("conv_1") == 77  # GETDEL, allowed to the sidecar's user
        assert await mine.get("conv_1") is None and await mine.take("conv_1") is None
        await ContextSizes(admin, B).remember("resp_2", 10)
        # Policy A's credential cannot read or write B's keys: refused by Redis, never an error
        # on the request path (unknown: the caller holds the context window).
        assert await ContextSizes(store_a, B).get("resp_2") is None
        assert not await ContextSizes(store_a, B).remember("resp_2", 1)
        assert await ContextSizes(store_b, B).get("resp_2") == 10
    finally:
        for store in (store_a, store_b, admin):
            await store.close()


async def test_a_store_that_is_gone_answers_unknown(redis) -> None:
    store = RedisStore(redis.url, operation_timeout=0.5)
    sizes = ContextSizes(store, A)
    assert await sizes.remember("resp_1", 5)
    redis.close()
    try:
        assert await sizes.get("resp_1") is None
        assert not await sizes.remember("resp_1", 6)
        await sizes.forget("resp_1")  # logged, not raised
    finally:
        await store.close()
