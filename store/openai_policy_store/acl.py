"""Redis ACL rules: who may touch which keys, built from ``keyspace`` (one source of key names).

Two kinds of users:

- **one per policy** for its sidecars: only that policy's hash-tagged keys and its update channel,
  only the commands the sidecar's store calls really send (including those its Lua scripts run,
  which Redis checks against the same rules), and the policy document read-only. Nothing that
  administers the server (``CONFIG``, ``FLUSH*``, ``KEYS``, ``SCAN``, ``CLIENT``, ``ACL``,
  ``DEBUG``, ``SHUTDOWN``...), so a stolen sidecar credential reaches one policy's counters and
  nothing else;
- **the operator**: every policy's keys and channels, plus ``ACL SETUSER/DELUSER/GETUSER`` to
  manage the per-policy users, and still no ``FLUSH*``, ``CONFIG``, ``KEYS`` or ``CLIENT KILL``.

Key and channel patterns are Redis glob patterns. Namespace and policy names are DNS labels
(``[a-z0-9-.]``), which carry no glob metacharacter, so a pattern built from them matches that
policy's keys and no other's; :func:`_literal` refuses anything else rather than escape it.
"""

from __future__ import annotations

import hashlib
import re

from . import keyspace

# Every command a sidecar's RedisStore sends, and every command its Lua scripts run.
SIDECAR_COMMANDS: tuple[str, ...] = (
    # connection: RESP3 handshake with credentials, health checks
    "hello",
    "auth",
    "ping",
    # scripts (redis-py's Script: EVALSHA, SCRIPT LOAD when the server lost its script cache)
    "evalsha",
    "script|load",
    # run by the budget and rate-limit scripts
    "get",
    "getdel",
    "set",
    "incrby",
    "decrby",
    "expire",
    "exists",
    "del",
    "time",
    "hget",
    "hset",
    "hdel",
    "zadd",
    "zrem",
    "zrangebyscore",
    # top spenders: kept by the settle script, read by the operator
    "zincrby",
    "zremrangebyrank",
    "zrevrange",
    # usage, heartbeats, cache, policy document
    "hincrby",
    "hgetall",
    # policy updates
    "subscribe",
    "unsubscribe",
)

# The operator: everything it reads and writes for status and publication, the restore of lost
# spend, and the ACL subcommands that manage the sidecars' users.
OPERATOR_COMMANDS: tuple[str, ...] = (
    *SIDECAR_COMMANDS,
    "publish",
    "multi",
    "exec",
    "discard",
    "acl|setuser",
    "acl|deluser",
    "acl|getuser",
    "acl|whoami",
)

OPERATOR_USER = "oaip-operator"
_SIDECAR_USER_PREFIX = "oaip-sidecar:"
_LITERAL = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def _literal(value: str) -> str:
    if not _LITERAL.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes name; refusing to build an ACL pattern from it")
    return value


def sidecar_user(namespace: str, name: str) -> str:
    """The Redis user of one policy's sidecars."""
    return f"{_SIDECAR_USER_PREFIX}{_literal(namespace)}/{_literal(name)}"


def is_sidecar_user(username: str) -> bool:
    return username.startswith(_SIDECAR_USER_PREFIX)


def sidecar_key_patterns(namespace: str, name: str) -> tuple[list[str], list[str]]:
    """``(read-write patterns, read-only patterns)`` of one policy's keys."""
    ns, nm = _literal(namespace), _literal(name)
    read_write = [
        keyspace.spend_key(ns, nm, "*", "*"),
        keyspace.reserved_key(ns, nm, "*", "*"),
        keyspace.top_key(ns, nm, "*", "*", "*"),
        keyspace.reservations_key(ns, nm),
        keyspace.reservation_deadlines_key(ns, nm),
        keyspace.usage_key(ns, nm),
        keyspace.heartbeats_key(ns, nm),
        keyspace.ratelimit_key(ns, nm, "*", "*"),
        keyspace.cache_key(ns, nm, "*"),
        keyspace.context_size_key(ns, nm, "*"),
    ]
    return read_write, [keyspace.policy_key(ns, nm)]


def sidecar_rules(namespace: str, name: str) -> list[str]:
    """The ACL SETUSER rules (without passwords) of one policy's sidecar user."""
    read_write, read_only = sidecar_key_patterns(namespace, name)
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in SIDECAR_COMMANDS),
        *(f"~{pattern}" for pattern in read_write),
        *(f"%R~{pattern}" for pattern in read_only),
        f"&{keyspace.policy_channel(namespace, name)}",
    ]


def operator_rules() -> list[str]:
    """The ACL rules of the operator's user: every policy's keys and channels."""
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in OPERATOR_COMMANDS),
        f"~{keyspace.PREFIX}:*",
        f"&{keyspace.PREFIX}:*",
    ]


def password_hash(password: str) -> str:
    """The form Redis keeps (``#<sha256>``): lets the operator add or drop a password by its hash."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()
