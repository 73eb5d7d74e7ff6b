"""A Sentinel failover, measured: master + one replica + one Sentinel (quorum 1,
down-after-milliseconds 500), a RedisStore on the ``redis+sentinel://`` URL, the master killed
(SIGKILL, as a node loss or an OOM kill); the store works again once the replica is promoted.

The figure in docs/security.md comes from this test:
``.venv/bin/python -m pytest tests/store/test_redis_sentinel_failover.py -q -s -p no:cacheprovider``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

from openai_policy_api import BudgetSpec
from openai_policy_devkit.redis_server import RedisSentinel, RedisServer
from openai_policy_store import BudgetLedger, RedisStore

A = ("team-a", "chatbot")
DOWN_AFTER_MS = 500
BOUND_SECONDS = 30.0  # a correctness bound, far above the measured figure (loaded CI, 2 cores)


def _command(port: int, command: str) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(command.encode() + b"\r\n")
            time.sleep(0.05)
            return sock.recv(65536)
    except OSError:
        return b""


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


async def test_the_store_follows_a_sentinel_failover():
    with RedisServer() as master, RedisServer(replica_of=master) as replica:
        _wait(
            lambda: b"master_link_status:up" in _command(replica.port, "INFO replication"),
            15,
            "the replica to sync",
        )
        with RedisSentinel(master, down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=5000) as sentinel:
            _wait(
                lambda: str(replica.port).encode() in _command(sentinel.port, "SENTINEL replicas mymaster"),
                20,
                "the Sentinel to discover the replica",
            )
            store = RedisStore(sentinel.url)
            budget = BudgetSpec.model_validate({"limits": [{"window": "hour", "usd": 1}]})
            ledger = BudgetLedger(store, A, budget)
            try:
                await ledger.settle(await ledger.reserve(1000), 600)
                # The write reached the replica before the master goes away (what WAIT would ensure).
                _wait(lambda: b"oaip" in _command(replica.port, "KEYS *"), 10, "the spend to be replicated")

                assert master.pid is not None
                os.kill(master.pid, signal.SIGKILL)
                killed = time.monotonic()
                failures = 0
                while True:
                    try:
                        await ledger.settle(await ledger.reserve(1000), 400)
                        break
                    except Exception:  # noqa: BLE001 - not failed over yet: retried until the bound
                        failures += 1
                        assert time.monotonic() - killed < BOUND_SECONDS, "no failover within the bound"
                        await asyncio.sleep(0.05)
                elapsed = time.monotonic() - killed
                print(
                    f"\nSentinel failover: the store worked again {elapsed:.2f} s after the master was "
                    f"killed (down-after-milliseconds {DOWN_AFTER_MS}; {failures} failed attempts)"
                )
                assert b"role:master" in _command(replica.port, "INFO replication")
                # The spend made before the failover is still counted on the promoted replica.
                assert (await ledger.usage())[0].spent_micros == 1000
            finally:
                await store.close()
