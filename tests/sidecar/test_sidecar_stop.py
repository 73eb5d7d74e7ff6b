"""Stopping a sidecar ends its background loops even when a store call swallowed the cancellation.

redis-py, cancelled in the middle of a command, can raise a connection or timeout error instead of
CancelledError; the store turns that into StoreUnavailable, which the report loop and the policy
watcher catch to survive outages. They then looped on while stop() awaited them: a full test run
hung in teardown until pytest's timeout (tests/sidecar/test_signing_rotation.py, 1 run in 3 under
load). Here the store calls do exactly that, deterministically.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from openai_policy_devkit.sidecar import TEST_KEY, upstream_spec, write_policy
from openai_policy_sidecar.server import TASK_STOP_SECONDS, Sidecar, SidecarConfig
from openai_policy_store.exceptions import StoreUnavailable


def swallowing_call(started: asyncio.Event):
    """A store call that hangs, and on cancellation raises StoreUnavailable as redis-py's did."""

    async def call(*_args: object, **_kwargs: object) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise StoreUnavailable("redis unavailable during heartbeat: Connection lost") from None

    return call


async def started_sidecar(tmp_path: Path, fake_openai: Any) -> Sidecar:
    """Started by hand (not running_sidecar): these tests call stop() themselves."""
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    sidecar = Sidecar(
        SidecarConfig(
            policy_path=policy,
            api_key=TEST_KEY,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            pod_name="test-pod",
            poll_interval=0.05,
            report_interval=0.05,
        )
    )
    await sidecar.start()
    return sidecar


async def test_stop_ends_loops_whose_store_call_turned_the_cancel_into_an_error(
    tmp_path, fake_openai, caplog
):
    sidecar = await started_sidecar(tmp_path, fake_openai)
    heartbeat_started, poll_started = asyncio.Event(), asyncio.Event()
    sidecar.store.write_heartbeat = swallowing_call(heartbeat_started)  # type: ignore[method-assign]
    sidecar.source.poll_store = swallowing_call(poll_started)  # type: ignore[method-assign]
    await asyncio.wait_for(asyncio.gather(heartbeat_started.wait(), poll_started.wait()), 10)
    tasks = list(sidecar._tasks)

    # The last report of stop() writes a heartbeat too: let that one through.
    async def quick(*_args: object, **_kwargs: object) -> None:
        return None

    caplog.set_level(logging.ERROR, logger="openai_policy_sidecar.server")
    stopping = asyncio.create_task(sidecar.stop())
    await asyncio.sleep(0)  # stop() has cancelled the loops
    sidecar.store.write_heartbeat = quick  # type: ignore[method-assign]
    done, _ = await asyncio.wait({stopping}, timeout=TASK_STOP_SECONDS * 3)
    assert stopping in done, "stop() hung waiting for its background loops"
    stopping.result()
    assert all(task.done() for task in tasks), [t for t in tasks if not t.done()]
    assert "did not stop" not in caplog.text


async def test_stop_itself_can_be_cancelled(tmp_path, fake_openai):
    """A caller's timeout around stop() is not swallowed (it was: suppress(CancelledError))."""
    sidecar = await started_sidecar(tmp_path, fake_openai)
    forever = asyncio.Event()

    async def never_ends() -> None:
        while not forever.is_set():
            try:
                await forever.wait()
            except asyncio.CancelledError:
                continue  # a loop that ignores cancellation altogether

    stubborn = asyncio.create_task(never_ends())
    sidecar._tasks.append(stubborn)
    try:
        stopping = asyncio.create_task(sidecar.stop())
        await asyncio.sleep(0.2)
        stopping.cancel()
        done, _ = await asyncio.wait({stopping}, timeout=2)
        assert stopping in done and stopping.cancelled(), "stop() swallowed its own cancellation"
    finally:
        forever.set()
        stubborn.cancel()
        await sidecar.stop()
