"""The upstream connection pool has no cap of its own: the policy's queue bounds upstream calls.

The pool was capped at 256 connections whatever spec.queue.maxConcurrent said, so the 257th
concurrent call (a long stream, typically) waited for a connection the policy had allowed."""

from __future__ import annotations

import asyncio

import aiohttp

from openai_policy_devkit.sidecar import running_sidecar, until, upstream_spec, write_policy

CALLS = 300  # more than the old cap of 256


async def test_the_pool_lets_through_every_call_the_queue_allows(tmp_path, fake_openai):
    fake_openai.add_fault("hang", times=None)  # every call stays open upstream
    spec = upstream_spec(
        fake_openai,
        queue={"maxConcurrent": 400, "maxDepth": 1000},
        requests={"timeoutSeconds": 120},
        retries={"maxAttempts": 1},
    )
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        url = f"http://127.0.0.1:{sidecar.proxy_address[1]}/v1/chat/completions"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            calls = [asyncio.create_task(client.post(url, json=body)) for _ in range(CALLS)]
            try:
                # All of them reach the upstream at once; with the old cap 256 did, the rest waited.
                await until(lambda: len(fake_openai.requests) >= CALLS, timeout=30)
            finally:
                fake_openai.release_hangs()
                await asyncio.gather(*calls, return_exceptions=True)
