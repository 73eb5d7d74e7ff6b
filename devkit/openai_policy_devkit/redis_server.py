"""A throwaway redis-server on a free loopback port, with stop/start/restart for fault tests.

By default no persistence and no authentication: a restart loses the data, as a crashed Redis
without AOF would. ``password=`` protects the default user (``requirepass``, as the chart's
Redis does), ``appendonly=True`` keeps an AOF with ``appendfsync everysec`` (the chart's
persistence), so that a restart replays it. ``RedisSentinel`` runs a Sentinel watching one.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from openai_policy_devkit.managed_process import ManagedProcess, ProcessFailed, free_port


class RedisServer:
    """`.url` is "redis://127.0.0.1:PORT/0"; the port stays the same across restarts."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 10.0,
        password: str | None = None,
        appendonly: bool = False,
        cluster: bool = False,
        replica_of: RedisServer | None = None,
    ) -> None:
        self.replica_of = replica_of  # a replica of that (unauthenticated) server, for failover tests
        self.cluster = cluster  # a Redis Cluster node (the cluster is formed by redis-cli)
        self.bus_port: int | None = None
        self.password = password
        self.appendonly = appendonly
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise RuntimeError(
                "redis-server is not installed: run `make test` (or apt-get install redis-server)"
            )
        self.binary = found
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="oaip-redis-"))
        self.log_path = self.workdir / "redis.log"
        self._process: ManagedProcess | None = None
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> RedisServer:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", "",  # stdout, which ManagedProcess sends to redis.log
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        if self.cluster:
            self.bus_port = self.bus_port or free_port()  # default port+10000 may not exist
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / "nodes.conf")]
            argv += ["--cluster-port", str(self.bus_port)]
        self._process = ManagedProcess("redis-server", argv, self.log_path)
        self._process.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._answers_ping():
            self._process.check_alive()
            if time.monotonic() > deadline:
                self._process.stop()
                raise ProcessFailed(
                    self._process.failure_message(f"redis-server not answering on {self.port}")
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    @property
    def admin_url(self) -> str:
        """The URL with the default user's password (the whole server: tests' own use only)."""
        if self.password is None:
            return self.url
        return f"redis://default:{self.password}@127.0.0.1:{self.port}/0"

    def restart(self) -> None:
        """Stop and start on the same port (data is lost unless ``appendonly``)."""
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        """A synchronous client, closed when the server is closed."""
        client = redis.Redis.from_url(self.admin_url, socket_timeout=5, socket_connect_timeout=5)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop the server, close clients made by client(), and remove the temporary directory."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _answers_ping(self) -> bool:
        # A raw socket, not redis-py: no retries or pools to reason about while it starts.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password is not None:
                    sock.sendall(b"AUTH " + self.password.encode() + b"\r\n")
                    if not sock.recv(16).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisSentinel:
    """One redis-server in Sentinel mode watching ``master`` under the name ``mymaster``.

    ``.url`` is the ``redis+sentinel://`` URL a RedisStore takes. One Sentinel with quorum 1 is
    enough to show a client following the master it names. ``down_after_ms`` and
    ``failover_timeout_ms`` set Sentinel's ``down-after-milliseconds`` and ``failover-timeout``
    (Sentinel's defaults, 30 s and 180 s, unless given) for failover tests.
    """

    def __init__(
        self,
        master: RedisServer,
        *,
        name: str = "mymaster",
        start_timeout: float = 10.0,
        down_after_ms: int | None = None,
        failover_timeout_ms: int | None = None,
    ) -> None:
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master = master
        self.name = name
        self.port = free_port()
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="oaip-sentinel-"))
        self.log_path = self.workdir / "sentinel.log"
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"

    def start(self) -> RedisSentinel:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1",
        ]
        if self.master.password is not None:
            lines.append(f"sentinel auth-pass {self.name} {self.master.password}")
        if self.down_after_ms is not None:
            lines.append(f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}")
        if self.failover_timeout_ms is not None:
            lines.append(f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}")
        config = self.workdir / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        argv = [self.master.binary, str(config), "--sentinel", "--daemonize", "no", "--logfile", ""]
        self._process = ManagedProcess("redis-sentinel", argv, self.log_path)
        self._process.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._knows_master():
            self._process.check_alive()
            if time.monotonic() > deadline:
                self._process.stop()
                raise ProcessFailed(self._process.failure_message(f"sentinel not ready on {self.port}"))
            time.sleep(0.05)
        return self

    def _knows_master(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(f"SENTINEL get-master-addr-by-name {self.name}\r\n".encode())
                return str(self.master.port).encode() in sock.recv(128)
        except OSError:
            return False

    def close(self) -> None:
        if self._process is not None:
            self._process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
