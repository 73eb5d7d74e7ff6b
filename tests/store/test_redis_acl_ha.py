"""Sentinel and Cluster URLs, against real servers started here (Debian's redis-server binary)."""

import asyncio
import shutil
import subprocess
import time

import pytest

from openai_policy_api import BudgetSpec
from openai_policy_devkit.managed_process import free_port
from openai_policy_devkit.redis_server import RedisSentinel, RedisServer
from openai_policy_store import BudgetExceeded, BudgetLedger, RedisStore, StoreUnavailable, acl, keyspace

A = ("team-a", "chatbot")


async def exercise(store: RedisStore) -> None:
    """The sidecar's and the operator's calls: budget, usage, publication and its subscription."""
    ledger = BudgetLedger(store, A, BudgetSpec.model_validate({"limits": [{"window": "hour", "usd": 1}]}))
    await ledger.settle(await ledger.reserve(1000), 600)
    assert (await ledger.usage())[0].spent_micros == 600
    await store.incr_usage(A, {"requests": 1})
    assert (await store.read_usage(A))["requests"] == 1
    await store.publish_policy_document(A, {"metadata": {"generation": 2}})
    updates = store.policy_updates(A)
    assert await asyncio.wait_for(anext(updates), 5) == 2
    await updates.aclose()


async def test_a_sentinel_url_reaches_the_master_with_a_sidecar_credential(secured_redis, tmp_path):
    admin = RedisStore(secured_redis.admin_url)
    password = "sidecar-password-for-the-test"
    await admin.set_user(acl.sidecar_user(*A), acl.sidecar_rules(*A), add=[password])
    await admin.set_user(acl.OPERATOR_USER, acl.operator_rules(), add=["operator-password"])
    await admin.close()
    with RedisSentinel(secured_redis) as sentinel:
        operator = RedisStore(sentinel.url, username=acl.OPERATOR_USER, password="operator-password")
        try:
            await exercise(operator)
        finally:
            await operator.close()
        credential = tmp_path / "credential"
        credential.write_text(f"{acl.sidecar_user(*A)}\n{password}\n")
        sidecar = RedisStore(sentinel.url, credential_file=credential)
        try:
            assert await sidecar.get_policy_document(A) == {"metadata": {"generation": 2}}
            assert (await sidecar.read_spend(A))["hour"].spent_micros == 600
        finally:
            await sidecar.close()


@pytest.fixture
def cluster():
    """Three masters, no replicas: the smallest Redis Cluster ``redis-cli --cluster create`` accepts."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    servers = []
    try:
        for _ in range(3):
            server = RedisServer(port=free_port(), cluster=True)
            servers.append(server.start())
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for server in servers:  # wait until every node agrees the cluster is up
            client = server.client()
            for _ in range(100):
                if b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"):
                    break
                time.sleep(0.05)
        yield servers
    finally:
        for server in servers:
            server.close()


async def test_a_cluster_url_works_and_each_policy_stays_in_one_slot(cluster):
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in cluster)
    store = RedisStore(url)
    try:
        await exercise(store)
    finally:
        await store.close()
    assert keyspace.policy_tag(*A) in keyspace.spend_key(*A, "hour", "x")


async def test_store_down_bound_for_n_pods():
    """docs/security.md: with the store down, N pods spend at most N x localSharePercent of each
    limit on top of what Redis held (here: a limit already spent), and failClosed spends nothing."""
    pods = 3
    limit = 1_000_000  # $1 an hour
    with RedisServer(appendonly=True) as server:
        shares = []
        for mode in ("localShare", "failClosed"):
            spec = BudgetSpec.model_validate(
                {
                    "limits": [{"window": "hour", "usd": 1}],
                    "onStoreUnavailable": mode,
                    "localSharePercent": 10,
                }
            )
            stores = [RedisStore(server.url) for _ in range(pods)]
            ledgers = [BudgetLedger(store, (mode.lower(), "chatbot"), spec) for store in stores]
            try:
                await ledgers[0].settle(await ledgers[0].reserve(limit), limit)  # the limit is spent
                server.stop()
                spent = 0
                for ledger in ledgers:
                    while True:
                        try:
                            reservation = await ledger.reserve(30_000)
                        except (BudgetExceeded, StoreUnavailable):
                            break
                        await ledger.settle(reservation, 30_000)
                        spent += 30_000
                shares.append(spent)
                server.start()  # from its AOF: what Redis held is still there
                for ledger in ledgers:
                    await ledger.push_unsynced()
                usage = (await ledgers[0].usage())[0]
                assert usage.spent_micros == limit + spent
            finally:
                for store in stores:
                    await store.close()
        local_share, fail_closed = shares
        assert 0 < local_share <= pods * limit * 10 // 100
        assert fail_closed == 0


async def test_per_user_budgets_and_top_spenders_work_on_a_cluster(cluster):
    """A swept hold names its user's keys in the record rather than in KEYS: on a cluster they are
    in the slot of the policy's hash tag, so the script may touch them."""
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in cluster)
    store = RedisStore(url)
    try:
        spec = BudgetSpec.model_validate({"perUser": [{"window": "day", "usd": 1}]})
        ledger = BudgetLedger(store, A, spec, hold_seconds=0.2)
        await ledger.reserve(900_000, user="alice")  # never settled
        await asyncio.sleep(0.4)
        await ledger.settle(await ledger.reserve(10, user="bob", feature="search"), 10)
        await ledger.settle(await ledger.reserve(900_000, user="alice"), 5)  # the swept hold is back
        top = await ledger.top_spenders(10)
        assert top[("users", "day")] == [("bob", 10), ("alice", 5)]
        assert top[("features", "month")] == [("search", 10)]
    finally:
        await store.close()
