"""Wiring: build the store, policy source, proxy and admin apps, and run them on their sockets.

``Sidecar`` is what the CLI runs and what tests start in-process (port 0 picks a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from openai_policy_store import MemoryStore, RedisStore, Store

from . import access_log
from .admin import admin_app
from .document_trust import DocumentTrust
from .durable import DurableState
from .genai_telemetry import GenAITelemetry
from .listeners import ADMIN_LIMITS, PROXY_LIMITS, GuardedRunner, ListenerLimits
from .metrics import Metrics
from .policy_source import KeySource, PolicySource
from .proxy import Proxy
from .report_loop import ReportLoop
from .tokens import prepare
from .upstream import Upstream

log = logging.getLogger("openai_policy_sidecar.server")
# How long stop() waits for the policy watcher and the report loop once cancelled.
TASK_STOP_SECONDS = 5.0


@dataclass
class SidecarConfig:
    policy_path: Path
    api_key_file: Path | None = None
    api_key: str | None = None  # from OPENAI_API_KEY when there is no key file
    redis_url: str | None = None
    # The policy's Redis user and password, from its Secret (mounted into this container only).
    redis_credential_file: Path | None = None
    listen: str = "127.0.0.1:8780"
    admin_listen: str = "0.0.0.0:8781"
    pod_name: str = "sidecar"
    poll_interval: float = 1.0
    report_interval: float = 1.0
    # Connection limits of the two listeners (see listeners.py); tests shorten the timeouts.
    proxy_limits: ListenerLimits = PROXY_LIMITS
    admin_limits: ListenerLimits = ADMIN_LIMITS
    # Set by the operator's injection (POD_NAMESPACE, OPENAI_POLICY_WORKLOAD): attribution only.
    namespace: str | None = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or None)
    workload: str | None = field(default_factory=lambda: os.environ.get("OPENAI_POLICY_WORKLOAD") or None)
    # The operator's public keys (--policy-keys): when set, only documents it signed are applied.
    policy_keys: str | None = None
    policy_name: str | None = field(default_factory=lambda: os.environ.get("OPENAI_POLICY_NAME") or None)
    # OTLP/HTTP endpoint for the GenAI metrics (genai_telemetry.py); None: off, nothing imported.
    otlp_endpoint: str | None = None
    otlp_interval: float = 30.0

    def attribution(self) -> dict[str, str | None]:
        return {"workload": self.workload, "namespace": self.namespace}

    def resource(self) -> dict[str, str]:
        """OpenTelemetry resource attributes of this sidecar (its pod, namespace and policy)."""
        found = {
            "k8s.pod.name": self.pod_name,
            "k8s.namespace.name": self.namespace,
            "openai_policy.policy": self.policy_name,
        }
        return {key: value for key, value in found.items() if value}


def split_host_port(address: str) -> tuple[str, int]:
    """``127.0.0.1:8780``, ``[::1]:8780`` or ``:8780`` (all interfaces)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(address: str) -> socket.socket:
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def document_trust(config: SidecarConfig) -> DocumentTrust | None:
    """The injection names the pod's namespace and policy; the documents must name the same."""
    if not config.policy_keys:
        return None
    ref = (config.namespace, config.policy_name) if config.namespace and config.policy_name else None
    return DocumentTrust(config.policy_keys, ref)


def make_store(redis_url: str | None, credential_file: Path | None = None) -> Store:
    if not redis_url:
        return MemoryStore()
    ca = credential_file.parent / "ca.crt" if credential_file is not None else None
    return RedisStore(
        redis_url,
        credential_file=credential_file,
        ssl_ca_file=str(ca) if ca is not None and ca.exists() else None,
    )


def proxy_app(proxy: Proxy) -> web.Application:
    # The body limit is the policy's (maxBodyBytes, checked in read_body), which may change at
    # runtime; aiohttp's own limit only has to stay out of the way.
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = make_store(config.redis_url, config.redis_credential_file)
        self.source = PolicySource(
            config.policy_path,
            KeySource(config.api_key_file, config.api_key),
            self.store,
            self.metrics,
            watch_store=config.redis_url is not None,
            poll_interval=config.poll_interval,
            trust=document_trust(config),
        )
        self.upstream = Upstream()
        shared = config.redis_url is not None
        # Queue, circuit breakers, response cache (Redis-backed when shared) and moderation
        # verdicts: one each for the life of the sidecar, retuned by every policy reload.
        self.durable = DurableState(
            self.store, self.metrics, self.upstream, self.source.keys, shared_cache=shared
        )
        attribution = config.attribution()
        self.telemetry = (
            GenAITelemetry(config.otlp_endpoint, config.otlp_interval, config.resource())
            if config.otlp_endpoint
            else None
        )
        self.proxy = Proxy(
            self.source,
            self.upstream,
            self.metrics,
            durable=self.durable,
            attribution=attribution,
            telemetry=self.telemetry,
        )
        self.report_loop = ReportLoop(
            self.source,
            self.metrics,
            config.pod_name,
            config.report_interval,
            durable=self.durable,
            attribution=attribution,
        )
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        assert self.proxy_address is not None
        return f"http://{self.proxy_address[0]}:{self.proxy_address[1]}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        host = "127.0.0.1" if self.admin_address[0] in ("0.0.0.0", "::") else self.admin_address[0]
        return f"http://{host}:{self.admin_address[1]}"

    def load(self) -> None:
        """Load policy and key (raises PolicyError / OSError on a bad or missing policy file)."""
        self.source.load_initial()
        # Load both encodings now (≈0.5 s each), not on the first request that needs them.
        snapshot = self.source.snapshot
        prepare(snapshot.spec.models if snapshot else None, dry_run=bool(snapshot and snapshot.dry_run))

    async def start(self) -> None:
        if self.source.snapshot is None:
            self.load()
        assert self.source.snapshot is not None
        self.durable.sync(self.source.snapshot)  # the queue/breaker gauges exist before the first request
        proxy_sock = bind(self.config.listen)
        admin_sock = bind(self.config.admin_listen)
        self.proxy_address = proxy_sock.getsockname()[:2]
        self.admin_address = admin_sock.getsockname()[:2]
        admin = admin_app(
            self.source, self.store, self.config.redis_url is not None, self.metrics, self.report_loop
        )
        for name, app, sock, limits in (
            ("proxy", proxy_app(self.proxy), proxy_sock, self.config.proxy_limits),
            ("admin", admin, admin_sock, self.config.admin_limits),
        ):
            # access_log=None: our own access line replaces aiohttp's; it must never log headers.
            runner = GuardedRunner(app, limits, name, self.metrics, access_log=None, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, sock, backlog=limits.backlog).start()
            server = runner.server
            assert server is not None
            self.metrics.connections_open.labels(listener=name).set_function(
                functools.partial(lambda s: len(s.connections), server)
            )
            self._runners.append(runner)
        self._tasks = [
            asyncio.create_task(self.source.run(), name="policy-watch"),
            asyncio.create_task(self.report_loop.run(), name="usage-report"),
        ]
        log.info("sidecar listening on %s (admin %s)", self.url, self.admin_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # asyncio.wait, not ``await task``: it neither raises the tasks' errors nor swallows a
        # cancellation of stop() itself, and a task that will not end cannot hang the shutdown.
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=TASK_STOP_SECONDS)
            for task in stuck:
                log.error("background task %s did not stop within %ss", task.get_name(), TASK_STOP_SECONDS)
        self._tasks = []
        for runner in reversed(self._runners):
            await runner.cleanup()  # stops accepting, lets requests in flight finish
        self._runners = []
        await self.report_loop.tick()  # last counters of this process
        access_log.flush()
        await self.upstream.close()
        with contextlib.suppress(Exception):
            await self.store.close()
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown)  # the last export is a blocking POST

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
