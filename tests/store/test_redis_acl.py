"""Redis ACLs as the operator sets them, against a real redis-server: each policy's sidecar user can
do everything the sidecar does and nothing else; without a credential nothing at all.

Every attack is run twice: against Redis as the chart ran it before (no password, no users), where
it works, and against Redis with the chart's password and the per-policy users, where Redis
refuses it.
"""

import asyncio
import secrets

import pytest
import redis as redis_py
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from openai_policy_api import BudgetSpec, RateLimitSpec
from openai_policy_store import BudgetLedger, RateLimiter, RedisStore, UsageWriter, acl, admit, keyspace
from openai_policy_store.windows import current_buckets

A = ("team-a", "chatbot")
B = ("team-b", "batch")


def budget(usd: float) -> BudgetSpec:
    return BudgetSpec.model_validate({"limits": [{"window": "hour", "usd": usd}]})


async def make_user(admin: RedisStore, ref: tuple[str, str]) -> str:
    password = secrets.token_urlsafe(24)
    await admin.set_user(acl.sidecar_user(*ref), acl.sidecar_rules(*ref), add=[password])
    return password


def sync_client(server, username: str | None = None, password: str | None = None) -> redis_py.Redis:
    # No retries: a refusal is the answer, not a reason to try again.
    return redis_py.Redis(
        port=server.port,
        username=username,
        password=password,
        socket_timeout=5,
        driver_info=None,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
async def admin(secured_redis):
    store = RedisStore(secured_redis.admin_url)
    try:
        yield store
    finally:
        await store.close()


async def test_a_sidecar_user_can_do_everything_the_sidecar_does(secured_redis, admin, tmp_path):
    password = await make_user(admin, A)
    await admin.publish_policy_document(A, {"metadata": {"generation": 3}})
    credential = tmp_path / "credential"
    credential.write_text(f"{acl.sidecar_user(*A)}\n{password}\n")
    store = RedisStore(secured_redis.url, credential_file=credential)
    try:
        assert await store.ping()
        ledger = BudgetLedger(store, A, budget(1))
        limiter = RateLimiter(store, A, RateLimitSpec.model_validate({"requestsPerMinute": 50}))
        outcome = await admit(limiter, ledger, "u1", 10, 1000)
        assert outcome.rate_allowed and outcome.reservation is not None, outcome
        await ledger.settle(outcome.reservation, 700)
        await ledger.release(await ledger.reserve(5))
        assert (await ledger.usage())[0].spent_micros == 700
        assert (await limiter.check("u1", 1)).allowed
        writer = UsageWriter(store, A)
        writer.add({"requests": 1})
        await writer.flush()
        await writer.heartbeat("pod-1", {"generation": 3})
        assert (await store.get_policy_document(A)) == {"metadata": {"generation": 3}}
        await store.cache_set(A, "d" * 64, b"cached", 60)
        assert await store.cache_get(A, "d" * 64) == b"cached"
        assert await store.budget_restore(A, current_buckets({})[0], 900) == 200
        updates = store.policy_updates(A)
        assert await asyncio.wait_for(anext(updates), 5) == 3
        await updates.aclose()
        # A fresh server has no script cache: SCRIPT LOAD after NOSCRIPT is allowed too.
        sync_client(secured_redis, "default", secured_redis.password).script_flush()
        again = await admit(limiter, ledger, "u1", 1, 10)
        assert again.rate_allowed and again.reservation is not None, again
    finally:
        await store.close()


# (name, command): what a governed app (or any pod) would send to Redis to lift a budget or lock
# every governed pod out.
ATTACKS = [
    ("config set requirepass", ("CONFIG", "SET", "requirepass", "locked-out")),
    ("client kill", ("CLIENT", "KILL", "TYPE", "normal")),
    ("flushall", ("FLUSHALL",)),
    ("flushdb", ("FLUSHDB",)),
    ("keys", ("KEYS", "*")),
    ("delete spend", ("DEL", keyspace.spend_key(*A, "hour", "2026-11-30T02"))),
    ("delete reservations", ("DEL", keyspace.reservations_key(*A))),
    ("delete rate limit", ("DEL", keyspace.ratelimit_key(*A, "policy", "requests"))),
    ("forge policy", ("SET", keyspace.policy_key(*A), '{"metadata": {"generation": 99}}')),
]


def test_without_a_credential_redis_refuses_the_app(secured_redis):
    client = sync_client(secured_redis)
    for name, command in ATTACKS:
        with pytest.raises(AuthenticationError):
            client.execute_command(*command)
        assert sync_client(secured_redis, "default", secured_redis.password).ping(), name


def test_the_same_attacks_worked_on_redis_without_auth(redis):
    """The control: Redis as the chart deployed it before carries out every one of them."""
    for name, command in reversed(ATTACKS):  # requirepass last: it locks everyone out
        sync_client(redis).execute_command(*command)
        if name == "config set requirepass":
            with pytest.raises(AuthenticationError):
                sync_client(redis).ping()  # every governed pod is now locked out


# What a stolen sidecar credential of policy A must not do.
FORBIDDEN_WITH_A = [
    ("config set requirepass", ("CONFIG", "SET", "requirepass", "locked-out")),
    ("config get", ("CONFIG", "GET", "*")),
    ("client kill", ("CLIENT", "KILL", "TYPE", "normal")),
    ("client list", ("CLIENT", "LIST")),
    ("flushall", ("FLUSHALL",)),
    ("flushdb", ("FLUSHDB",)),
    ("keys", ("KEYS", "*")),
    ("scan", ("SCAN", "0")),
    ("acl setuser", ("ACL", "SETUSER", "me", "on", ">x", "+@all", "~*")),
    ("acl list", ("ACL", "LIST")),
    ("shutdown", ("SHUTDOWN", "NOSAVE")),
    ("replicaof", ("REPLICAOF", "127.0.0.1", "1")),
    ("eval", ("EVAL", "return redis.call('FLUSHALL')", "0")),
    ("B's spend", ("DEL", keyspace.spend_key(*B, "hour", "2026-11-30T02"))),
    ("B's reservations", ("HGETALL", keyspace.reservations_key(*B))),
    ("B's cache", ("SET", keyspace.cache_key(*B, "d" * 64), "forged")),
    ("B's policy", ("GET", keyspace.policy_key(*B))),
    ("B's channel", ("PUBLISH", keyspace.policy_channel(*B), "99")),
    ("own policy written", ("SET", keyspace.policy_key(*A), '{"metadata": {"generation": 99}}')),
    ("own policy deleted", ("DEL", keyspace.policy_key(*A))),
    ("own channel published", ("PUBLISH", keyspace.policy_channel(*A), "99")),
    ("another prefix", ("SET", "other:key", "1")),
]


async def test_policy_a_credential_is_refused_outside_policy_a(secured_redis, admin):
    password = await make_user(admin, A)
    await make_user(admin, B)
    await admin.publish_policy_document(B, {"metadata": {"generation": 1}})
    client = sync_client(secured_redis, acl.sidecar_user(*A), password)
    assert client.ping()
    for name, command in FORBIDDEN_WITH_A:
        with pytest.raises(NoPermissionError):
            client.execute_command(*command)
            pytest.fail(f"{name} was allowed")
    assert await admin.get_policy_document(B) == {"metadata": {"generation": 1}}


def test_the_same_credential_less_reach_worked_across_policies_before(redis):
    """The control: without users, any client reads and rewrites another policy's keys."""
    client = sync_client(redis)
    client.set(keyspace.policy_key(*B), '{"metadata": {"generation": 99}}')
    client.delete(keyspace.spend_key(*B, "hour", "2026-11-30T02"))
    assert client.get(keyspace.policy_key(*B)) is not None


async def test_a_script_loaded_with_a_credential_is_still_bound_by_its_acl(secured_redis, admin):
    """SCRIPT LOAD is allowed (redis-py needs it after a restart): the script's own calls are checked."""
    password = await make_user(admin, A)
    client = sync_client(secured_redis, acl.sidecar_user(*A), password)
    sha = client.script_load("return redis.call('DEL', KEYS[1])")
    with pytest.raises(ResponseError, match="(?i)permission|no permissions"):
        client.evalsha(sha, 1, keyspace.spend_key(*B, "hour", "2026-11-30T02"))
    with pytest.raises(ResponseError, match="(?i)permission|no permissions"):
        client.eval("return redis.call('FLUSHALL')", 0)


async def test_subscribing_to_another_policy_channel_is_refused(secured_redis, admin):
    password = await make_user(admin, A)
    pubsub = sync_client(secured_redis, acl.sidecar_user(*A), password).pubsub()
    with pytest.raises(NoPermissionError):
        pubsub.subscribe(keyspace.policy_channel(*B))
        pubsub.get_message(timeout=1)


def test_patterns_are_built_from_names_only():
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        acl.sidecar_rules("team-a", "*")
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        acl.sidecar_user("team-a", "x y")
