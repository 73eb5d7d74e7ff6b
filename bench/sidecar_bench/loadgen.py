"""Load generators: Debian's `wrk` (preferred) and a lean asyncio fallback with the same interface.

Why wrk: it is C on epoll, one thread drives 32 keep-alive connections at well over 50k req/s
while using a fraction of one core, so on a 2-core machine it does not itself become what is
measured. The fallback (raw asyncio sockets, no HTTP library) exists so that the smoke test and a
machine without wrk still work; it costs far more CPU per request, so its absolute figures are
lower and its ratios are only indicative.

A run ends after `max_requests` responses or `max_seconds`, whichever comes first (0 requests:
time only). Both generators are closed-loop: each connection sends its next request as soon as
the previous answer arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
UNIQUE_PLACEHOLDER = "@N@"


@dataclass
class RunResult:
    """One load run against one target at one concurrency."""

    concurrency: int
    requests: int
    errors: int  # non-2xx answers plus socket errors and timeouts
    duration_s: float
    rps: float
    latency_us: dict[str, float]  # p50, p90, p99, p999, mean, max
    generator: str
    generator_cpu_s: float = 0.0  # CPU the load generator itself used (user + system)
    error_detail: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class WrkLoad:
    """Runs `wrk -t1 -cN` with wrk_post.lua; counts via the script's marker line plus SIGINT."""

    name = "wrk"

    def __init__(self, api_key: str = "sk-placeholder") -> None:
        self.binary = shutil.which("wrk") or "wrk"
        self.api_key = api_key
        self._runs = 0

    def run(
        self,
        url: str,
        body: bytes,
        concurrency: int,
        *,
        max_requests: int = 0,
        max_seconds: float = 10.0,
        unique: bool = False,
        workdir: Path,
    ) -> RunResult:
        self._runs += 1
        body_file = workdir / f"body-{self._runs}.json"
        body_file.write_bytes(body)
        env = {
            **os.environ,
            "BENCH_BODY_FILE": str(body_file),
            "BENCH_REQUESTS": str(max_requests),
            "BENCH_UNIQUE": "1" if unique else "0",
            "BENCH_RUN_TAG": f"{os.getpid()}-{time.time_ns()}",
            "BENCH_API_KEY": self.api_key,
        }
        seconds = max(1, int(round(max_seconds)))
        argv = [
            self.binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_SCRIPT),
            url,
        ]
        cpu_before = _children_cpu()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        result_line = None
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + seconds + 30  # bounded even if wrk misbehaves
        for line in proc.stdout:  # ends when wrk exits (it exits after -d at the latest)
            lines.append(line.rstrip())
            if line.startswith("BENCH_LIMIT_REACHED") and proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # wrk stops, joins its thread and prints its summary
            elif line.startswith("BENCH_RESULT "):
                result_line = line[len("BENCH_RESULT ") :]
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.wait(timeout=30)
        cpu = _children_cpu() - cpu_before
        if result_line is None:
            raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
        data = json.loads(result_line)
        errors = data["errors"]
        total_errors = sum(int(v) for v in errors.values())
        duration = data["duration_us"] / 1e6
        return RunResult(
            concurrency=concurrency,
            requests=int(data["requests"]),
            errors=total_errors,
            duration_s=round(duration, 3),
            rps=round(data["requests"] / duration, 1) if duration > 0 else 0.0,
            latency_us={k: float(v) for k, v in data["latency_us"].items() if k != "min" and k != "stdev"},
            generator=self.name,
            generator_cpu_s=round(cpu, 3),
            error_detail={k: int(v) for k, v in errors.items() if v},
        )


class PythonLoad:
    """Raw asyncio HTTP/1.1 keep-alive client: pre-encoded request bytes, minimal response parsing."""

    name = "python-asyncio"

    def __init__(self, api_key: str = "sk-placeholder") -> None:
        self.api_key = api_key

    def run(
        self,
        url: str,
        body: bytes,
        concurrency: int,
        *,
        max_requests: int = 0,
        max_seconds: float = 10.0,
        unique: bool = False,
        workdir: Path,
    ) -> RunResult:
        del workdir  # nothing to write
        started_cpu = time.process_time()
        latencies, errors, duration = asyncio.run(
            self._run(url, body, concurrency, max_requests, max_seconds, unique)
        )
        cpu = time.process_time() - started_cpu
        latencies.sort()
        return RunResult(
            concurrency=concurrency,
            requests=len(latencies) + errors,
            errors=errors,
            duration_s=round(duration, 3),
            rps=round((len(latencies) + errors) / duration, 1) if duration > 0 else 0.0,
            latency_us=summarise_us(latencies),
            generator=self.name,
            generator_cpu_s=round(cpu, 3),
            error_detail={"status_or_socket": errors} if errors else {},
        )

    async def _run(
        self, url: str, body: bytes, concurrency: int, max_requests: int, max_seconds: float, unique: bool
    ) -> tuple[list[float], int, float]:
        parts = urlsplit(url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
        ).encode()
        tag = f"{os.getpid()}-{time.time_ns()}"
        latencies: list[float] = []
        state = {"sent": 0, "errors": 0}
        deadline = time.monotonic() + max_seconds

        def next_request() -> bytes | None:
            if max_requests and state["sent"] >= max_requests:
                return None
            if time.monotonic() >= deadline:
                return None
            state["sent"] += 1
            payload = (
                body.replace(UNIQUE_PLACEHOLDER.encode(), f"{tag}-{state['sent']}".encode())
                if unique
                else body
            )
            return head + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload

        async def connection() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while (request := next_request()) is not None:
                    start = time.perf_counter_ns()
                    writer.write(request)
                    status = await _read_response(reader)
                    elapsed_us = (time.perf_counter_ns() - start) / 1000
                    if 200 <= status < 300:
                        latencies.append(elapsed_us)
                    else:
                        state["errors"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                state["errors"] += 1
            finally:
                writer.close()

        began = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(concurrency)))
        return latencies, state["errors"], time.perf_counter() - began


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked body); return its status code."""
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


def summarise_us(sorted_latencies: list[float]) -> dict[str, float]:
    """Percentiles (nearest rank) of latencies already sorted, in microseconds."""
    if not sorted_latencies:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "mean": 0.0, "max": 0.0}
    n = len(sorted_latencies)

    def pct(p: float) -> float:
        return round(sorted_latencies[min(n - 1, max(0, int(round(p / 100 * n + 0.5)) - 1))], 1)

    return {
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p999": pct(99.9),
        "mean": round(sum(sorted_latencies) / n, 1),
        "max": round(sorted_latencies[-1], 1),
    }


def make_load(kind: str, api_key: str) -> WrkLoad | PythonLoad:
    """`auto` picks wrk when installed (see the module doc for why)."""
    if kind == "wrk" or (kind == "auto" and wrk_available()):
        if not wrk_available():
            raise RuntimeError("wrk is not installed: apt-get install wrk (or use --load-generator python)")
        return WrkLoad(api_key)
    return PythonLoad(api_key)
