"""rediss:// with a private CA, against a real redis-server listening only on TLS."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_policy_api import BudgetSpec
from openai_policy_devkit.control_plane_pki import KeyPair, issue_certificate
from openai_policy_devkit.managed_process import free_port
from openai_policy_store import BudgetLedger, RedisStore, StoreUnavailable

REF = ("team", "tls")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, KeyPair]]:
    """A redis-server with its plain port closed and a TLS port whose certificate a test CA signs."""
    ca = issue_certificate(tmp_path / "pki", "ca", "/CN=redis-test-ca", "ca", None)
    server = issue_certificate(tmp_path / "pki", "redis", "/CN=redis", "server", ca, ("IP:127.0.0.1",))
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
        "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not open its TLS port"
                time.sleep(0.05)
        yield port, ca
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_store_over_tls_with_the_servers_ca_holds_the_budget(tls_redis) -> None:
    port, ca = tls_redis
    store = RedisStore(f"rediss://127.0.0.1:{port}/0", ssl_ca_file=str(ca.cert))
    try:
        ledger = BudgetLedger(
            store, REF, BudgetSpec.model_validate({"limits": [{"window": "day", "usd": 1}]})
        )
        hold = await ledger.reserve(400_000)
        await ledger.settle(hold, 250_000)
        (day,) = [w for w in await ledger.usage() if w.window == "day"]
        assert day.spent_micros == 250_000
    finally:
        await store.close()


async def test_without_the_ca_the_server_is_not_trusted(tls_redis) -> None:
    port, _ = tls_redis
    store = RedisStore(f"rediss://127.0.0.1:{port}/0")
    try:
        ledger = BudgetLedger(
            store, REF, BudgetSpec.model_validate({"limits": [{"window": "day", "usd": 1}]})
        )
        with pytest.raises(StoreUnavailable):
            await ledger.reserve(400_000)
    finally:
        await store.close()
