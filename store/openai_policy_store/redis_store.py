"""Redis store: shared state for every replica, atomic by Lua scripts.

Every key of one policy carries the hash tag ``{namespace/name}`` (``keyspace``), so each
multi-key script touches one slot and works on Redis Cluster. Connections use short socket
timeouts and at most one retry: when Redis is down an operation raises :class:`StoreUnavailable`
within about a second instead of hanging a request.

URLs: ``redis://`` and ``rediss://`` (TLS; ``ssl_ca_file`` names the CA of a private server),
``redis+sentinel://host:port[,host:port...]/<master name>[/db]`` (the master a set of Sentinels
elects, followed across failovers) and ``redis+cluster://host:port[,host:port...]`` (Redis
Cluster: every multi-key script stays in one slot thanks to the policy's hash tag). Credentials
come from the URL, from ``username``/``password``, or from ``credential_file`` (two lines: user,
password), which is re-read for every new connection so that a rotated password mounted by the
kubelet is picked up without a restart. No ``CLIENT SETINFO`` is sent: a per-policy ACL user is
not allowed ``CLIENT``.

redis-py is imported when the first ``RedisStore`` is made, not with this module: a sidecar
without Redis (in-memory state) never loads it, which keeps ~6 MiB out of its RSS.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from openai_policy_api import TOP_SPENDERS_KEPT

from . import keyspace, lua
from .exceptions import StoreUnavailable
from .keyspace import TOP_KINDS
from .memory import _parse_heartbeats, document_generation
from .protocol import BucketLimit, BucketSpend, RateCounter, RateOutcome, Ref, ReserveOutcome, remaining
from .windows import current_buckets

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")


SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


def read_credential_file(path: Path) -> tuple[str, str]:
    """``(username, password)`` from a file of two lines; a single line is the default user's password."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) == 1:
        return "default", lines[0]
    if len(lines) != 2:
        raise ValueError(f"{path}: expected two lines (username, password)")
    return lines[0], lines[1]


class _FileCredentials:
    """A redis-py credential provider reading the file on every new connection (rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_credentials(self) -> tuple[str, str]:
        return read_credential_file(self.path)

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``host:port,host:port`` (credentials before ``@`` removed) as pairs."""
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        hosts.append((host, int(port) if port else default_port))
    return hosts


@dataclass(frozen=True)
class _RedisPy:
    """The parts of redis-py this store uses, imported together on first use."""

    client: type[Redis]
    pool: type[ConnectionPool]
    retry: Callable[[], Retry]  # a fresh policy: one retry, no backoff
    retry_on: tuple[type[BaseException], ...]
    # Errors that mean "the store is not usable right now" (as opposed to a bug in a script).
    unavailable: tuple[type[BaseException], ...]


@functools.cache
def _redis_py() -> _RedisPy:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError, RedisClusterException, TryAgainError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return _RedisPy(
        client=aioredis.Redis,
        pool=aioredis.ConnectionPool,
        retry=lambda: Retry(NoBackoff(), 1),
        retry_on=(RedisConnectionError, RedisTimeoutError),
        unavailable=(
            RedisConnectionError,  # includes BusyLoadingError and "no connection available"
            RedisTimeoutError,
            ReadOnlyError,  # a replica that has not been promoted yet
            TryAgainError,
            RedisClusterException,
            OSError,
            asyncio.TimeoutError,
        ),
    )


class RedisStore:
    """A :class:`~openai_policy_store.protocol.Store` in Redis (``redis://`` / ``rediss://`` URL)."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        operation_timeout: float = 3.0,
        max_connections: int = 64,
        username: str | None = None,
        password: str | None = None,
        credential_file: Path | None = None,
        ssl_ca_file: str | None = None,
    ) -> None:
        self.url = url
        self.scheme = urlsplit(url).scheme
        self.operation_timeout = operation_timeout
        self._redis_py = redis_py = _redis_py()
        self._unavailable = redis_py.unavailable
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # One retry absorbs a pooled connection that a Redis restart closed; more would
            # only delay the StoreUnavailable a caller needs to hear about.
            "retry": redis_py.retry(),
            "retry_on_error": list(redis_py.retry_on),
            "driver_info": None,
        }
        if credential_file is not None:
            self._options["credential_provider"] = _FileCredentials(credential_file)
        elif password is not None:
            self._options["username"] = username
            self._options["password"] = password
        if ssl_ca_file:
            self._options["ssl_ca_certs"] = ssl_ca_file
        self._max_connections = max_connections
        # At most ``max_connections`` calls hold a connection at once; more wait for a free one
        # (within the operation timeout). The semaphore does what BlockingConnectionPool does, at a
        # fraction of its cost per call (a condition variable and a timer each time); the plain
        # pool under it never runs out, so it never raises "Too many connections".
        self._slots = asyncio.Semaphore(max_connections)
        self._client = self._new_client()
        self._reserve = self._client.register_script(lua.RESERVE)
        self._settle = self._client.register_script(lua.SETTLE)
        self._read = self._client.register_script(lua.READ)
        self._rate = self._client.register_script(lua.RATE)
        self._rate_and_reserve = self._client.register_script(lua.RATE_AND_RESERVE)
        self._restore = self._client.register_script(lua.RESTORE)
        self._names = keyspace.KeyNames()

    def _url_credentials(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        found: dict[str, Any] = {}
        if parts.password is not None and "password" not in self._options:
            found = {"username": unquote(parts.username or "") or None, "password": unquote(parts.password)}
        return found

    def _new_client(self, **extra: Any) -> Any:
        """A client for this URL: a pooled one, one following Sentinel's master, or a Cluster client."""
        options = {**self._options, **extra}
        parts = urlsplit(self.url)
        if self.scheme == SENTINEL_SCHEME:
            from redis.asyncio.sentinel import Sentinel

            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ValueError(
                    "a redis+sentinel:// URL names the master: redis+sentinel://host:port/mymaster"
                )
            options.update(self._url_credentials())
            options.pop("retry", None)
            sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
            sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                _hosts(parts.netloc, 26379), sentinel_kwargs=sentinel_options, **options
            )
            db = int(path[1]) if len(path) > 1 else 0
            return sentinels.master_for(path[0], db=db, max_connections=self._max_connections)
        if self.scheme == CLUSTER_SCHEME:
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            options.update(self._url_credentials())
            for unsupported in ("retry", "retry_on_error", "health_check_interval"):
                options.pop(unsupported, None)
            nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
            return RedisCluster(startup_nodes=nodes, max_connections=self._max_connections, **options)
        pool = self._redis_py.pool.from_url(self.url, max_connections=self._max_connections, **options)
        return self._redis_py.client(connection_pool=pool)

    async def _run(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.operation_timeout), self._slots:
                return await call()
        except self._unavailable as error:
            raise StoreUnavailable(
                f"redis unavailable during {what}: {error or type(error).__name__}"
            ) from error

    async def ping(self) -> bool:
        try:
            return bool(await self._run("ping", self._client.ping))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()

    # -- budgets ----------------------------------------------------------------------------
    def _budget_keys(self, ref: Ref, buckets: Sequence[BucketLimit]) -> list[str]:
        return list(self._names.budget_list(ref, buckets))

    @staticmethod
    def _reserve_args(
        buckets: Sequence[BucketLimit], amount_micros: int, reservation_id: str, hold_seconds: float
    ) -> list[str | int]:
        args: list[str | int] = [int(amount_micros), reservation_id, int(hold_seconds * 1000), len(buckets)]
        for b in buckets:
            args += [
                _script_name(b),
                b.bucket,
                -1 if b.limit_micros is None else int(b.limit_micros),
                int(b.ttl_seconds),
            ]
        return args

    @staticmethod
    def _floors(buckets: Sequence[BucketLimit]) -> list[str | int]:
        return [int(b.floor_micros) for b in buckets]

    @staticmethod
    def _reserve_outcome(
        buckets: Sequence[BucketLimit], head: Sequence[Any], state: Sequence[Any]
    ) -> ReserveOutcome:
        """From reserve()'s reply: ``head`` (state, refused i, spent, reserved), ``state`` (spent,
        reserved per bucket)."""
        held = [(int(state[2 * i]), int(state[2 * i + 1])) for i in range(len(buckets))]
        left = remaining(buckets, held)
        ok, index = int(head[0]), int(head[1])
        if ok == 1:
            return ReserveOutcome(True, remaining=left)
        if ok < 0:
            return ReserveOutcome(False, remaining=left, attempted=False)
        refused = buckets[index - 1]
        return ReserveOutcome(
            False,
            refused.window,
            int(refused.limit_micros or 0),
            int(head[2]),
            int(head[3]),
            index=index - 1,
            remaining=left,
        )

    async def budget_reserve(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
    ) -> ReserveOutcome:
        args = self._reserve_args(buckets, amount_micros, reservation_id, hold_seconds)
        args += self._floors(buckets)
        keys = self._budget_keys(ref, buckets)
        out = await self._run("budget reserve", lambda: self._reserve(keys=keys, args=args))
        return self._reserve_outcome(buckets, out[:4], out[4:])

    async def rate_and_reserve(
        self,
        ref: Ref,
        counters: Sequence[RateCounter],
        buckets: Sequence[BucketLimit],
        amount_micros: int,
        reservation_id: str,
        hold_seconds: float,
        reserve_when_rate_refused: bool = False,
        now_ms: int | None = None,
    ) -> tuple[RateOutcome, ReserveOutcome]:
        keys = self._budget_keys(ref, buckets)
        keys += [self._names.rate(ref, c.scope, c.unit) for c in counters]
        args = self._reserve_args(buckets, amount_micros, reservation_id, hold_seconds)
        args += ["" if now_ms is None else int(now_ms), len(counters)]
        args += self._rate_args(counters)
        args.append("1" if reserve_when_rate_refused else "0")
        args += self._floors(buckets)
        out = await self._run(
            "rate limit and budget reserve", lambda: self._rate_and_reserve(keys=keys, args=args)
        )
        allowed, index, m = bool(out[0]), int(out[1]), len(counters)
        rate = RateOutcome(allowed, None if allowed else index - 1, tuple(int(v) for v in out[6 : 6 + m]))
        return rate, self._reserve_outcome(buckets, out[2:6], out[6 + m :])

    async def _settle_or_release(
        self,
        what: str,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        reservation_id: str,
        actual_micros: int,
        spenders: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        args: list[str | int] = [reservation_id, int(actual_micros), len(buckets)]
        for b in buckets:
            args += [_script_name(b), b.bucket, int(b.ttl_seconds)]
        keys = self._budget_keys(ref, buckets)
        tops = [(kind, name, b) for kind, name in spenders for b in buckets if not b.scope]
        args += [TOP_SPENDERS_KEPT, len(tops)]
        for kind, name, b in tops:
            keys.append(keyspace.top_key(*ref, kind, b.window, b.bucket))
            args += [name, int(b.ttl_seconds)]
        out = await self._run(what, lambda: self._settle(keys=keys, args=args))
        return [int(v) for v in out[1:]]

    async def budget_settle(
        self,
        ref: Ref,
        buckets: Sequence[BucketLimit],
        reservation_id: str,
        actual_micros: int,
        spenders: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        return await self._settle_or_release(
            "budget settle", ref, buckets, reservation_id, actual_micros, spenders
        )

    async def top_spenders(
        self, ref: Ref, buckets: Sequence[BucketLimit], count: int
    ) -> dict[tuple[str, str], list[tuple[str, int]]]:
        wanted = [(kind, b) for b in buckets if not b.scope for kind in TOP_KINDS]

        async def call() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for kind, b in wanted:
                    pipe.zrevrange(
                        keyspace.top_key(*ref, kind, b.window, b.bucket), 0, count - 1, withscores=True
                    )
                return list(await pipe.execute())

        found = await self._run("top spenders read", call)
        return {
            (kind, b.window): [(_text(name), int(score)) for name, score in rows]
            for (kind, b), rows in zip(wanted, found, strict=True)
        }

    async def budget_release(self, ref: Ref, buckets: Sequence[BucketLimit], reservation_id: str) -> None:
        await self._settle_or_release("budget release", ref, buckets, reservation_id, 0)

    async def budget_read(self, ref: Ref, buckets: Sequence[BucketLimit]) -> list[BucketSpend]:
        args: list[str | int] = [len(buckets)]
        for b in buckets:
            args += [_script_name(b), b.bucket]
        keys = self._budget_keys(ref, buckets)
        values = await self._run("budget read", lambda: self._read(keys=keys, args=args))
        return [
            BucketSpend(
                b.window, b.bucket, int(values[2 * i]), int(values[2 * i + 1]), b.limit_micros, b.start, b.end
            )
            for i, b in enumerate(buckets)
        ]

    async def read_spend(self, ref: Ref, now: datetime | None = None) -> dict[str, BucketSpend]:
        return {s.window: s for s in await self.budget_read(ref, current_buckets({}, now))}

    async def budget_restore(self, ref: Ref, bucket: BucketLimit, spent_micros: int) -> int:
        key = self._names.budget(ref, bucket.window, bucket.bucket)[0]
        args: list[str | int] = [int(spent_micros), int(bucket.ttl_seconds)]
        added = await self._run("budget restore", lambda: self._restore(keys=[key], args=args))
        return int(added)

    # -- rate limits ------------------------------------------------------------------------
    @staticmethod
    def _rate_args(counters: Sequence[RateCounter]) -> list[str | int]:
        args: list[str | int] = []
        for c in counters:
            args += [int(c.capacity), int(c.cost), int(c.limit)]
        return args

    async def rate_consume(
        self, ref: Ref, counters: Sequence[RateCounter], now_ms: int | None = None
    ) -> RateOutcome:
        if not counters:
            return RateOutcome(True, None, ())
        keys = [self._names.rate(ref, c.scope, c.unit) for c in counters]
        args: list[str | int] = ["" if now_ms is None else int(now_ms), *self._rate_args(counters)]
        out = await self._run("rate limit", lambda: self._rate(keys=keys, args=args))
        allowed, index = bool(out[0]), int(out[1])
        return RateOutcome(allowed, None if allowed else index - 1, tuple(int(v) for v in out[2:]))

    # -- usage and heartbeats ---------------------------------------------------------------
    async def incr_usage(self, ref: Ref, counters: Mapping[str, int]) -> None:
        if not counters:
            return
        key = keyspace.usage_key(*ref)

        async def call() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for field, amount in counters.items():
                    pipe.hincrby(key, field, int(amount))
                await pipe.execute()

        await self._run("usage flush", call)

    async def read_usage(self, ref: Ref) -> dict[str, int]:
        raw = await self._run("usage read", lambda: self._client.hgetall(keyspace.usage_key(*ref)))
        return {_text(k): int(v) for k, v in raw.items()}

    async def write_heartbeat(self, ref: Ref, pod: str, payload: Mapping[str, Any]) -> None:
        text = json.dumps(dict(payload))
        await self._run("heartbeat", lambda: self._client.hset(keyspace.heartbeats_key(*ref), pod, text))

    async def read_heartbeats(self, ref: Ref) -> dict[str, dict[str, Any]]:
        raw = await self._run("heartbeat read", lambda: self._client.hgetall(keyspace.heartbeats_key(*ref)))
        return _parse_heartbeats({_text(k): _text(v) for k, v in raw.items()})

    async def remove_heartbeats(self, ref: Ref, pods: Sequence[str]) -> None:
        if pods:
            await self._run(
                "heartbeat remove", lambda: self._client.hdel(keyspace.heartbeats_key(*ref), *pods)
            )

    # -- policy publication -----------------------------------------------------------------
    async def get_policy_document(self, ref: Ref) -> dict[str, Any] | None:
        raw = await self._run("policy read", lambda: self._client.get(keyspace.policy_key(*ref)))
        return json.loads(raw) if raw is not None else None

    async def publish_policy_document(self, ref: Ref, document: Mapping[str, Any]) -> None:
        generation = document_generation(document)
        text = json.dumps(dict(document))

        async def call() -> None:
            if self.scheme == CLUSTER_SCHEME:
                # Cluster pipelines carry no PUBLISH. Written first, announced second: a subscriber
                # reads the stored document on every announcement, so it never sees one too early.
                await self._client.set(keyspace.policy_key(*ref), text)
                await self._client.publish(keyspace.policy_channel(*ref), str(generation))
                return
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(keyspace.policy_key(*ref), text)
                pipe.publish(keyspace.policy_channel(*ref), str(generation))
                await pipe.execute()

        await self._run("policy publish", call)

    async def policy_updates(
        self, ref: Ref, *, reconnect_delay: float = 0.5, max_reconnect_delay: float = 10.0
    ) -> AsyncIterator[int]:
        """Yield the stored generation on every (re)subscription, then each published one.

        Survives Redis restarts: it resubscribes with backoff and re-reads the stored document,
        so a generation published while it was disconnected is not missed.
        """
        channel = keyspace.policy_channel(*ref)
        last: int | None = None
        delay = reconnect_delay
        while True:
            client = self._new_client(health_check_interval=5)
            pubsub = None
            try:
                if self.scheme == CLUSTER_SCHEME:
                    await client.initialize()  # the slot map, to find the channel's node
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                document = await client.get(keyspace.policy_key(*ref))
                delay = reconnect_delay
                generation = _stored_generation(document)
                if generation is not None and generation != last:
                    last = generation
                    yield generation
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    try:
                        generation = int(_text(message["data"]))
                    except ValueError:
                        log.warning("ignoring a malformed policy generation on %s", channel)
                        continue
                    if generation != last:
                        last = generation
                        yield generation
            except self._unavailable as error:
                log.warning("policy subscription on %s lost (%s); retrying in %.1fs", channel, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_reconnect_delay)
            finally:
                try:
                    if pubsub is not None:
                        await pubsub.aclose()
                    await client.aclose()
                except self._unavailable:
                    pass

    # -- ACL users (the operator's connection) ---------------------------------------------
    async def set_user(
        self, username: str, rules: Sequence[str], *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> None:
        """``ACL SETUSER``: enable the user with ``rules``, add passwords, remove ones (by hash)."""
        args = [*rules, "on", *(f">{p}" for p in add), *(f"!{h.lstrip('#')}" for h in remove)]
        await self._run(
            "acl setuser", lambda: self._client.execute_command("ACL", "SETUSER", username, *args)
        )

    async def delete_user(self, username: str) -> None:
        await self._run("acl deluser", lambda: self._client.execute_command("ACL", "DELUSER", username))

    async def user_password_hashes(self, username: str) -> list[str] | None:
        """The ``#sha256`` hashes of a user's passwords; None when the user does not exist."""
        raw = await self._run("acl getuser", lambda: self._client.execute_command("ACL", "GETUSER", username))
        if not raw:
            return None
        fields = dict(raw) if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
        passwords = fields.get(b"passwords", fields.get("passwords")) or []
        return ["#" + _text(p) for p in passwords]

    # -- response cache ---------------------------------------------------------------------
    async def cache_get(self, ref: Ref, digest: str) -> bytes | None:
        value = await self._run("cache get", lambda: self._client.get(keyspace.cache_key(*ref, digest)))
        # The client does not decode responses: values come back as the bytes stored.
        return value.encode() if isinstance(value, str) else value

    async def cache_set(self, ref: Ref, digest: str, value: bytes, ttl_seconds: float) -> None:
        key = keyspace.cache_key(*ref, digest)
        ttl_ms = max(1, int(ttl_seconds * 1000))
        await self._run("cache set", lambda: self._client.set(key, value, px=ttl_ms))

    # -- context sizes of stored responses and conversations ---------------------------------
    async def context_size_get(self, ref: Ref, object_id: str) -> int | None:
        key = keyspace.context_size_key(*ref, object_id)
        value = await self._run("context size get", lambda: self._client.get(key))
        try:
            return int(value) if value is not None else None
        except ValueError:  # not written by a sidecar: unknown, so the caller reserves the window
            return None

    async def context_size_set(self, ref: Ref, object_id: str, tokens: int, ttl_seconds: float) -> None:
        key = keyspace.context_size_key(*ref, object_id)
        ttl_ms = max(1, int(ttl_seconds * 1000))
        await self._run("context size set", lambda: self._client.set(key, tokens, px=ttl_ms))

    async def context_size_forget(self, ref: Ref, object_id: str) -> None:
        key = keyspace.context_size_key(*ref, object_id)
        await self._run("context size forget", lambda: self._client.delete(key))

    async def context_size_take(self, ref: Ref, object_id: str) -> int | None:
        key = keyspace.context_size_key(*ref, object_id)
        value = await self._run("context size take", lambda: self._client.getdel(key))  # Redis >= 6.2
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


def _stored_generation(raw: bytes | str | None) -> int | None:
    """The generation of a stored document; None when absent or unreadable (never kills a subscription)."""
    if raw is None:
        return None
    try:
        return document_generation(json.loads(raw))
    except ValueError:
        log.warning("ignoring a stored policy document without a readable metadata.generation")
        return None


def _script_name(bucket: BucketLimit) -> str:
    """A bucket's name in the budget scripts: its window, or '=' for a user's or feature's (lua.py)."""
    return "=" if bucket.scope else bucket.window


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
