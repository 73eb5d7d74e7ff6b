"""The operator bench's instruments: a watch on every OpenAIPolicy, a simulated sidecar fleet that
reports through Redis, the API server's admission histograms, and /proc readings.

Kept apart from bench/operator_bench.py (the run's plan and phases) so that each reads on its own.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import json
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openai_policy_api import load_policy
from openai_policy_store import BudgetLedger, RedisStore, UsageWriter
from openai_policy_store.money import usd_to_micros

# ---- the API server, as admin, over kept-alive connections -----------------------------------------


def admin_ssl(kubeconfig: Path) -> tuple[str, int, ssl.SSLContext]:
    """(host, port, TLS context) of the admin kubeconfig the devkit control plane writes."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    directory = Path(tempfile.mkdtemp(prefix="oaip-bench-tls-"))
    files = {}
    for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
        path = directory / key
        path.write_bytes(base64.b64decode(cluster.get(key) or user[key]))
        path.chmod(0o600)
        files[key] = str(path)
    context = ssl.create_default_context(cafile=files["certificate-authority-data"])
    context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
    host, _, port = cluster["server"].removeprefix("https://").rpartition(":")
    return host, int(port), context


class ApiClient:
    """One kept-alive HTTPS connection (per thread: http.client is not thread-safe)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.host, self.port, self.context = admin_ssl(kubeconfig)
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)
            self._local.connection = connection
        return connection

    def request(self, method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            connection = self._connection()
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                text = response.read().decode(errors="replace")
                break
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        if raw:
            return response.status, text
        return response.status, (json.loads(text) if text else {})


# ---- the watch: when each policy became Ready, and when its status showed a figure -----------------


def ready_true(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def shown_figures(status: Mapping[str, Any]) -> tuple[int, int]:
    """(status.usage.requests, the month's spend in micro-dollars): what the freshness phase changes."""
    requests = int((status.get("usage") or {}).get("requests") or 0)
    month: Mapping[str, Any] = next((w for w in status.get("spend") or [] if w.get("window") == "month"), {})
    return requests, usd_to_micros(month.get("usd") or "0")


@dataclass
class PolicyWatch:
    """A watch on every OpenAIPolicy of the cluster, in a thread; times are ``time.monotonic()``.

    ``ready_at[ref]``: when the first event showing Ready=True arrived. ``expect(ref, requests,
    micros)`` arms a figure; ``shown_at[ref]`` is when the first event showing at least both arrived.
    """

    api: ApiClient
    path: str
    ready_at: dict[tuple[str, str], float] = field(default_factory=dict)
    shown_at: dict[tuple[str, str], float] = field(default_factory=dict)
    events: int = 0
    reconnects: int = 0
    _wanted: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _latest: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False

    def start(self) -> PolicyWatch:
        status, listing = self.api.request("GET", self.path)
        assert status == 200, listing
        self._rv = listing["metadata"]["resourceVersion"]
        threading.Thread(target=self._run, name="policy-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop = True

    def expect(self, ref: tuple[str, str], requests: int, micros: int) -> None:
        with self._lock:
            self.shown_at.pop(ref, None)
            self._wanted[ref] = (requests, micros)
            latest = self._latest.get(ref)
            if latest is not None and latest[0] >= requests and latest[1] >= micros:
                self.shown_at[ref] = time.monotonic()

    def wait_ready(self, ref: tuple[str, str], timeout: float) -> float | None:
        with self._lock:
            self._lock.wait_for(lambda: ref in self.ready_at, timeout)
            return self.ready_at.get(ref)

    def _run(self) -> None:
        while not self._stop:
            connection = http.client.HTTPSConnection(self.api.host, self.api.port, context=self.api.context)
            try:
                connection.request(
                    "GET",
                    f"{self.path}?watch=1&allowWatchBookmarks=true&resourceVersion={self._rv}",
                    headers={"Accept": "application/json"},
                )
                response = connection.getresponse()
                while not self._stop:
                    line = response.readline()
                    if not line:
                        break
                    self._event(json.loads(line))
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                connection.close()
            self.reconnects += 1

    def _event(self, event: Mapping[str, Any]) -> None:
        now = time.monotonic()
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        if meta.get("resourceVersion"):
            self._rv = meta["resourceVersion"]
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return
        ref = (meta.get("namespace", ""), meta.get("name", ""))
        status = body.get("status") or {}
        figures = shown_figures(status)
        with self._lock:
            self.events += 1
            self._latest[ref] = figures
            if ref not in self.ready_at and ready_true(status):
                self.ready_at[ref] = now
            wanted = self._wanted.get(ref)
            if wanted and ref not in self.shown_at and figures[0] >= wanted[0] and figures[1] >= wanted[1]:
                self.shown_at[ref] = now
            self._lock.notify_all()


# ---- the sidecar fleet: what each sidecar writes to Redis, through the store's own functions ---------


def heartbeat(pod: str, namespace: str, workload: str, generation: int = 1) -> dict[str, Any]:
    """A sidecar's heartbeat (sidecar/openai_policy_sidecar/report_loop.py ``heartbeat_payload``)."""
    return {
        "pod": pod,
        "generation": generation,
        "keyLoaded": True,
        "lastError": None,
        "untrustedDocument": None,
        "time": int(time.time()),
        "mode": "enforce",
        "suspended": False,
        "circuit": "closed",
        "workload": workload,
        "namespace": namespace,
    }


class SidecarFleet:
    """Every simulated pod beats into its policy's heartbeats; ``report`` books usage and spend.

    Runs its own event loop in a thread. Real sidecars beat every second; here each pod beats
    every ``period`` seconds (spread evenly), well inside the operator's 30 s staleness: enough
    for the operator to count it as reporting, without the load generator eating a core.
    """

    def __init__(self, redis_url: str, policies: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self.redis_url = redis_url
        self.specs = policies  # ref -> policy body, for its budget
        self.pods: dict[tuple[str, str], list[str]] = {}
        self.period = 10.0
        self.beats = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sidecar-fleet", daemon=True)
        self._thread.start()
        self.store: RedisStore = self._call(self._open())
        self._beating: concurrent.futures.Future[None] | None = None

    async def _open(self) -> RedisStore:
        return RedisStore(self.redis_url)

    def _call(self, coroutine: Any, timeout: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def add_pods(self, ref: tuple[str, str], pods: Iterable[str]) -> None:
        self.loop.call_soon_threadsafe(lambda: self.pods.setdefault(ref, []).extend(pods))

    def start_beating(self, period: float) -> None:
        self.period = period
        if self._beating is None:
            self._beating = asyncio.run_coroutine_threadsafe(self._beat_forever(), self.loop)

    async def _beat_forever(self) -> None:
        while True:
            started = time.monotonic()
            everyone = [(ref, pod) for ref, pods in list(self.pods.items()) for pod in pods]
            slots = max(1, int(self.period / 0.1))
            for slot in range(slots):  # spread the round over the period, 10 slots a second
                await asyncio.gather(
                    *(self._beat(ref, pod) for ref, pod in everyone[slot::slots]), return_exceptions=True
                )
                await asyncio.sleep(max(0.0, started + (slot + 1) * 0.1 - time.monotonic()))
            await asyncio.sleep(max(0.0, started + self.period - time.monotonic()))

    async def _beat(self, ref: tuple[str, str], pod: str) -> None:
        await UsageWriter(self.store, ref).heartbeat(pod, heartbeat(pod, ref[0], pod.rsplit("-", 1)[0]))
        self.beats += 1

    def report(self, refs: Iterable[tuple[str, str]], requests: int, cost_micros: int) -> dict[Any, float]:
        """For each policy, as one sidecar's report tick after ``requests`` calls costing
        ``cost_micros`` in all: usage counters flushed (UsageWriter) and the cost reserved and
        settled in the budget (BudgetLedger). Returns ref -> when its writes completed (monotonic)."""
        return self._call(self._report(list(refs), requests, cost_micros))

    async def _report(self, refs: list[tuple[str, str]], requests: int, cost: int) -> dict[Any, float]:
        done: dict[Any, float] = {}
        semaphore = asyncio.Semaphore(64)

        async def one(ref: tuple[str, str]) -> None:
            async with semaphore:
                policy = load_policy(self.specs[ref])
                ledger = BudgetLedger(self.store, ref, policy.spec.budget)
                reservation = await ledger.reserve(cost)
                await ledger.settle(reservation, cost)
                writer = UsageWriter(self.store, ref)
                writer.add({"requests": requests, "tokens_input": 40 * requests, "cost_micros": cost})
                await writer.flush()
                done[ref] = time.monotonic()

        await asyncio.gather(*(one(ref) for ref in refs))
        return done

    def close(self) -> None:
        try:
            self._call(self._shutdown(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _shutdown(self) -> None:
        """Stop beating (every beat in flight finished or cancelled), then close the store."""
        for task in asyncio.all_tasks(self.loop):
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(
            *(t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()),
            return_exceptions=True,
        )
        await self.store.close()


# ---- the API server's own measurements ---------------------------------------------------------------

Histogram = dict[float, float]  # upper bound (le) -> cumulative count


def histograms(metrics_text: str, name: str, must: Mapping[str, str]) -> Histogram:
    """A histogram's cumulative buckets, summed over the series whose labels include ``must``."""
    buckets: Histogram = {}
    prefix = f"{name}_bucket{{"
    for line in metrics_text.splitlines():
        if not line.startswith(prefix):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[len(prefix) : line.rindex("}")]))
        if any(labels.get(k) != v for k, v in must.items()):
            continue
        bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_delta(before: Histogram, after: Histogram) -> list[tuple[float, float]]:
    return sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)


def histogram_summary(before: Histogram, after: Histogram) -> dict[str, Any]:
    """Count, quantiles as bucket upper bounds (what the histogram can prove), and the same quantiles
    interpolated linearly inside the bucket (as Prometheus' histogram_quantile does: an estimate)."""
    counts = histogram_delta(before, after)
    total = counts[-1][1] if counts else 0.0
    out: dict[str, Any] = {"count": int(total), "buckets_le": {str(b): int(c) for b, c in counts}}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        out[f"{name}_le"] = out[f"{name}_interpolated"] = None
        if not total:
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in counts:
            if cumulative >= rank:
                out[f"{name}_le"] = bound
                inside = cumulative - below
                if bound != float("inf") and inside:
                    out[f"{name}_interpolated"] = lower + (bound - lower) * (rank - below) / inside
                break
            lower, below = bound, cumulative
    return out


# ---- /proc ----------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sample(pids: Mapping[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """Each process's CPU (percent of one core) over ``seconds`` and its RSS at the end."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return {
        name: {
            "cpu_percent": round(100 * (cpu_seconds(pid) - before[name]) / wall, 1),
            "rss_mib": round(rss_mib(pid), 1),
        }
        for name, pid in pids.items()
    }


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 4)

    return {"count": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 4)}
