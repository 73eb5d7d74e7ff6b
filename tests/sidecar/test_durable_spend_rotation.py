"""Rotating a policy's Redis password under traffic: the operator's sequence (add the new password,
deliver it, drop the old one after a grace) against a real sidecar process and a real Redis, with
the sidecar's connections killed at each step to force it to log in again. No request fails."""

from __future__ import annotations

import asyncio
import secrets

from openai_policy_devkit.sidecar import SidecarProcess, async_client, upstream_spec, write_policy
from openai_policy_store import RedisStore, acl

REF = ("default", "demo")
MODEL = "gpt-4o-mini"


async def test_rotation_drops_no_request(tmp_path, fake_openai, secured_redis):
    user = acl.sidecar_user(*REF)
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    admin = RedisStore(secured_redis.admin_url)
    await admin.set_user(user, acl.sidecar_rules(*REF), add=[old])
    credential = tmp_path / "credential"
    credential.write_text(f"{user}\n{old}\n")
    spec = upstream_spec(fake_openai, budget={"limits": [{"window": "hour", "usd": 100}]})
    sidecar = SidecarProcess(
        write_policy(tmp_path / "policy.yaml", spec),
        tmp_path / "sidecar.log",
        env_key="sk-rotation-test-key",
        redis_url=secured_redis.url,
        redis_credential_file=credential,
    )
    client = async_client(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
    kill = secured_redis.client()
    failures: list[BaseException] = []
    answered = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
                answered += 1
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(error)

    try:
        sidecar.wait_healthy()
        workers = [asyncio.create_task(traffic()) for _ in range(8)]
        await asyncio.sleep(0.5)
        await admin.set_user(user, acl.sidecar_rules(*REF), add=[new])  # 1. Redis accepts both
        credential.write_text(f"{user}\n{new}\n")  # 2. the kubelet refreshes the mounted Secret
        kill.execute_command("CLIENT", "KILL", "USER", user)  # reconnect now, with the new one
        await asyncio.sleep(0.5)
        await admin.set_user(user, acl.sidecar_rules(*REF), remove=[acl.password_hash(old)])  # 3. grace over
        kill.execute_command("CLIENT", "KILL", "USER", user)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
    finally:
        sidecar.stop()
        await admin.close()
    assert failures == [] and answered > 20, (answered, failures[:3])
    hashes = secured_redis.client().execute_command("ACL", "GETUSER", user)
    assert acl.password_hash(old)[1:].encode() not in str(hashes).encode()
