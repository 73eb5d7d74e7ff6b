"""Per-policy Redis users, against a real control plane and a real password-protected Redis: the
operator (with exactly its RBAC, logged in to Redis as its own ACL user) creates each policy's
user and Secret, rotates the password without a gap, re-creates a user Redis lost, and deletes it
with the policy."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import redis as redis_py
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.retry import Retry

from openai_policy_devkit.redis_server import RedisServer
from openai_policy_store import acl, keyspace
from openai_policy_store.redis_store import RedisStore
from tests.operator.cluster import apply_policy, get_json, running_operator, wait_condition, wait_for

OPERATOR_PASSWORD = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def auth_redis():
    server = RedisServer(password=secrets.token_urlsafe(24), appendonly=True).start()
    admin = server.client()
    admin.execute_command(
        "ACL", "SETUSER", acl.OPERATOR_USER, *acl.operator_rules(), "on", f">{OPERATOR_PASSWORD}"
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def acl_operator(control_plane, crd, auth_redis, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("operator-acl")
    password_file = workdir / "redis-password"
    password_file.write_text(f"{acl.OPERATOR_USER}\n{OPERATOR_PASSWORD}\n")
    extra = (
        "--standalone",
        "--redis-password-file",
        str(password_file),
        "--redis-sidecar-credentials",
        "acl",
        "--redis-password-grace-seconds",
        "3",
    )
    with running_operator(control_plane, auth_redis.url, workdir, extra=extra) as info:
        yield info


def credential(control_plane, namespace: str, policy: str) -> tuple[str, str] | None:
    secret = get_json(control_plane, "secret", f"{policy}-redis-credential", "-n", namespace)
    if not secret:
        return None
    text = base64.b64decode(secret["data"]["credential"]).decode()
    user, password = text.split()
    return user, password


def login(server: RedisServer, user: str, password: str) -> redis_py.Redis:
    return redis_py.Redis(
        port=server.port, username=user, password=password, driver_info=None, retry=Retry(NoBackoff(), 0)
    )


def test_each_policy_gets_its_own_user_and_secret(control_plane, acl_operator, auth_redis):
    namespace = control_plane.create_namespace("acl")
    apply_policy(control_plane, namespace, "alpha", {"selector": {"matchLabels": {"app": "a"}}})
    apply_policy(control_plane, namespace, "beta", {"selector": {"matchLabels": {"app": "b"}}})
    wait_condition(control_plane, namespace, "alpha", "Ready", "True", 30)
    wait_for(lambda: credential(control_plane, namespace, "beta"), 30, 0.2, "beta's credential")
    user, password = credential(control_plane, namespace, "alpha")
    assert user == acl.sidecar_user(namespace, "alpha")
    secret = get_json(control_plane, "secret", "alpha-redis-credential", "-n", namespace)
    assert secret["metadata"]["ownerReferences"][0]["name"] == "alpha"
    client = login(auth_redis, user, password)
    document = json.loads(client.get(keyspace.policy_key(namespace, "alpha")))
    assert document["metadata"]["generation"] >= 1
    client.incrby(keyspace.spend_key(namespace, "alpha", "hour", "b"), 5)
    with pytest.raises(NoPermissionError):
        client.get(keyspace.policy_key(namespace, "beta"))
    with pytest.raises(NoPermissionError):
        client.set(keyspace.policy_key(namespace, "alpha"), "{}")
    with pytest.raises(NoPermissionError):
        client.flushall()
    # Nothing secret in the policy's status or the operator's log.
    status = json.dumps(get_json(control_plane, "oaip", "alpha", "-n", namespace).get("status"))
    logs = acl_operator["process"].logs()
    for secret_text in (password, OPERATOR_PASSWORD):
        assert secret_text not in status and secret_text not in logs


async def test_rotation_keeps_the_old_password_for_the_grace_then_drops_it(
    control_plane, acl_operator, auth_redis
):
    namespace = control_plane.create_namespace("rotate")
    apply_policy(control_plane, namespace, "gamma", {"selector": {"matchLabels": {"app": "g"}}})
    wait_for(lambda: credential(control_plane, namespace, "gamma"), 30, 0.2, "gamma's credential")
    user, old = credential(control_plane, namespace, "gamma")
    # A sidecar's store reading the mounted file: connected before, during and after the rotation.
    path = acl_operator["kubeconfig"].parent / f"credential-{namespace}"
    path.write_text(f"{user}\n{old}\n")
    store = RedisStore(auth_redis.url, credential_file=path)
    try:
        assert await store.get_policy_document((namespace, "gamma")) is not None
        control_plane.kubectl(
            "annotate", "oaip", "gamma", "-n", namespace, "openaipolicy.dev/rotate-redis-credential=1"
        )
        wait_for(lambda: credential(control_plane, namespace, "gamma")[1] != old, 30, 0.2, "a new password")
        new = credential(control_plane, namespace, "gamma")[1]
        assert login(auth_redis, user, old).ping()  # still valid during the grace
        assert login(auth_redis, user, new).ping()
        path.write_text(f"{user}\n{new}\n")  # the kubelet refreshes the mounted file
        await store.close()
        store = RedisStore(auth_redis.url, credential_file=path)  # new connections use the new one

        def old_refused() -> bool:
            try:
                login(auth_redis, user, old).ping()
            except AuthenticationError:
                return True
            return False

        wait_for(old_refused, 30, 0.2, "the old password to be dropped after the grace")
        assert await store.get_policy_document((namespace, "gamma")) is not None
    finally:
        await store.close()


def test_a_user_redis_lost_is_recreated_and_a_deleted_policy_loses_its_user(
    control_plane, acl_operator, auth_redis
):
    namespace = control_plane.create_namespace("lost")
    apply_policy(control_plane, namespace, "delta", {"selector": {"matchLabels": {"app": "d"}}})
    wait_for(lambda: credential(control_plane, namespace, "delta"), 30, 0.2, "delta's credential")
    user, password = credential(control_plane, namespace, "delta")
    admin = auth_redis.client()
    admin.execute_command("ACL", "DELUSER", user)  # as a Redis restart without persisted ACLs would

    def works() -> bool:
        try:
            return bool(login(auth_redis, user, password).ping())
        except AuthenticationError:
            return False

    wait_for(works, 30, 0.2, "the operator to re-create the user with the same password")
    control_plane.kubectl("delete", "oaip", "delta", "-n", namespace)
    wait_for(lambda: not admin.execute_command("ACL", "GETUSER", user), 30, 0.2, "the user to be deleted")
    wait_for(
        lambda: get_json(control_plane, "secret", "delta-redis-credential", "-n", namespace) is None,
        60,
        0.5,
        "the Secret to be garbage-collected",
    )
