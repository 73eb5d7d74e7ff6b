"""Streaming benchmark: many concurrent slow streams through one sidecar, against the same run direct.

    .venv/bin/python bench/streaming_bench.py [--streams 200,500,1000] [--seconds 12]
        [--targets direct,sidecar-redis,litellm] [--tiny] [--output FILE]

The upstream is the streaming profile of issue 15: the first chunk ~300 ms after the request,
then one every ~20 ms, 50 in all (`bench/streaming/main.go serve`, a small Go program built here
and cached outside the repository). The clients are the same program (`load`): N concurrent
streams, each client a closed loop on its own keep-alive connection. Per stream count, in one
run: `direct` (the upstream itself), `sidecar-redis` (one sidecar with a throwaway redis-server,
bench/policy-streaming.yaml, started fresh for each count) and `litellm` (the peer, same
profile). Reported: errors, time to first token, the gap between chunks and each chunk's delay
from upstream to client (the upstream writes its send time into the chunk), the sidecar's RSS
idle and with N streams open, and the CPU each process spent.
Writes a JSON file (bench/results/streaming-*.json) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
from run_sidecar_bench import top_frames  # noqa: E402
from sidecar_bench import litellm_peer, procstat, services  # noqa: E402

from openai_policy_devkit.managed_process import free_port  # noqa: E402
from openai_policy_devkit.redis_server import RedisServer  # noqa: E402

GO_SOURCE = BENCH / "streaming"
BIN_CACHE = Path.home() / ".cache" / "openai-policy-operator" / "bench"
POLICY = BENCH / "policy-streaming.yaml"
RESULTS = BENCH / "results"
MODEL_ALIAS = "gpt-4o-mini"
PINNED_MODEL = "gpt-4o-mini-2024-07-18"
TARGETS = ("direct", "sidecar-redis", "sidecar-memory", "litellm")
MIB = 1024 * 1024
# Issue 15, target 2, at 1,000 streams through one sidecar with Redis.
LIMITS = {"added_ttft_p99_ms": 5.0, "added_gap_p99_ms": 2.0, "rss_per_stream_kib": 25.0}


def build_tool(log: Callable[[str], None]) -> Path:
    """bench/streaming/main.go built once per source version (its hash names the binary)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update((GO_SOURCE / name).read_bytes())
    binary = BIN_CACHE / f"streambench-{digest.hexdigest()[:12]}"
    if binary.exists():
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise SystemExit("the streaming bench needs a Go toolchain (go on PATH) to build bench/streaming")
    BIN_CACHE.mkdir(parents=True, exist_ok=True)
    log(f"building {binary.name} (Go standard library only)")
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SOURCE, env=env, check=True, timeout=600)
    return binary


class Sampler:
    """RSS of one process every `interval` seconds, in a thread, with the time of each sample."""

    def __init__(self, pid: int | None, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval):
            if self.pid:
                self.samples.append((time.monotonic() - start, procstat.rss_bytes(self.pid)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss in self.samples if start <= at <= end]


class StreamingBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.tool = build_tool(self.log)
        self.upstream: services.Service | None = None
        self.notes: list[str] = []

    def log(self, message: str) -> None:
        print(f"[{dt.datetime.now(dt.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    @property
    def stream_seconds(self) -> float:
        return (self.args.first_ms + self.args.chunks * self.args.interval_ms) / 1000

    def start_upstream(self) -> services.Service:
        port = free_port()
        argv = [str(self.tool), "serve", "-listen", f"127.0.0.1:{port}"]
        argv += ["-first-ms", str(self.args.first_ms), "-interval-ms", str(self.args.interval_ms)]
        argv += ["-chunks", str(self.args.chunks)]
        service = services.Service("stream-upstream", argv, self.workdir, env={"GOMAXPROCS": "2"})
        service.url = f"http://127.0.0.1:{port}/v1"
        service.start()
        service.wait_ready(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        return service

    # -- one load run ------------------------------------------------------------------------------

    def load(self, url: str, streams: int, seconds: float, warmup: float, proxy_pid: int | None) -> dict:
        assert self.upstream is not None
        argv = [str(self.tool), "load", "-url", url, "-streams", str(streams), "-seconds", str(seconds)]
        argv += ["-warmup", str(warmup), "-key", services.CLIENT_KEY, "-model", MODEL_ALIAS]
        argv += ["-chunks", str(self.args.chunks), "-spread", str(self.stream_seconds)]
        pids = {"upstream": self.upstream.pid, **({"proxy": proxy_pid} if proxy_pid else {})}
        cpu_before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
        idle_rss = procstat.rss_bytes(proxy_pid) if proxy_pid else None
        started = time.monotonic()
        with Sampler(proxy_pid) as sampler:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 180)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        cpu = {name: procstat.cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu["client"] = result["generator_cpu_s"]
        result["cpu_seconds"] = {name: round(value, 3) for name, value in cpu.items()}
        result["wall_s"] = round(wall, 3)
        result["cpu_cores"] = {name: round(value / wall, 3) for name, value in cpu.items()}
        # Approximate: the measured streams' content chunks scaled to the whole run (warm-up and
        # the finish, usage and [DONE] events left out); two runs of different stream lengths give
        # the exact split per stream and per chunk (cpu_seconds, README).
        relayed = max(result["chunks"], 1) * wall / max(result["duration_s"] - warmup, 1e-3)
        result["cpu_us_per_chunk"] = {name: round(value / relayed * 1e6, 1) for name, value in cpu.items()}
        if proxy_pid:
            # Every stream is open from warm-up to the end of the run (closed loop, starts spread):
            # samples in that window are the RSS with N streams open.
            window = sampler.between(warmup + 0.5, seconds)
            result["rss"] = {
                "idle_bytes": idle_rss,
                "open_median_bytes": int(statistics.median(window)) if window else None,
                "open_max_bytes": max(window) if window else None,
                "open_samples": len(window),
            }
        return result

    # -- targets -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def sidecar(self, name: str, redis: bool) -> Iterator[services.Service]:
        assert self.upstream is not None
        redis_server = RedisServer().start() if redis else None
        policy = services.write_policy(POLICY, self.upstream.url, self.workdir / f"{name}.yaml")
        sidecar = None
        try:
            sidecar = services.start_sidecar(
                name, policy, self.workdir, redis_url=redis_server.url if redis_server else None
            )
            yield sidecar
        except Exception:
            if sidecar is not None:
                self.log(f"{name}: sidecar log tail:\n{sidecar.log_tail()}")
            raise
        finally:
            if sidecar is not None:
                sidecar.stop()
            if redis_server is not None:
                redis_server.close()

    def probe(self, url: str, *models: str) -> dict[str, Any]:
        body = json.dumps({"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, _headers, raw = services.post_json(url + "/chat/completions", body)
        model = json.loads(raw).get("model") if raw else None
        if status != 200 or model not in models:
            raise RuntimeError(f"probe of {url}: HTTP {status}, model {model!r}: {raw[:300]!r}")
        return {"status": status, "model": model}

    def run_level(self, streams: int, litellm: services.Service | None) -> dict[str, Any]:
        args = self.args
        level: dict[str, Any] = {}
        assert self.upstream is not None
        for target in self.targets():
            self.log(f"{streams} streams: {target}")
            if target == "direct":
                level[target] = self.load(self.upstream.url, streams, args.seconds, args.warmup, None)
            elif target.startswith("sidecar-"):
                with self.sidecar(target, redis=target.endswith("-redis")) as sidecar:
                    probe = self.probe(sidecar.url, PINNED_MODEL)
                    # A few streams first (imports, pools, tokenizer warm), then idle RSS, then the run.
                    self.load(sidecar.url, min(streams, 20), 1.0, 0.0, None)
                    time.sleep(0.5)
                    spy = self.start_profiler(sidecar.pid, streams) if args.profile else None
                    result = self.load(sidecar.url, streams, args.seconds, args.warmup, sidecar.pid)
                    if spy is not None:
                        result["profile"] = self.finish_profiler(*spy)
                    result["probe"] = probe
                    result["sidecar_counted"] = services.sidecar_counters(sidecar.admin_url)
                    level[target] = result
            elif target == "litellm" and litellm is not None:
                try:
                    self.load(litellm.url, min(streams, 20), 1.0, 0.0, None)
                    level[target] = self.load(litellm.url, streams, args.seconds, args.warmup, litellm.pid)
                except Exception as error:
                    self.notes.append(f"litellm at {streams} streams: {error}")
            summary = level.get(target)
            if summary:
                self.log(
                    f"  {target}: {summary['measured_streams']} streams, errors {summary['errors']}, "
                    f"ttft p50/p99 {summary['ttft_us'].get('p50', 0) / 1000:.1f}/"
                    f"{summary['ttft_us'].get('p99', 0) / 1000:.1f} ms, gap p99 "
                    f"{summary['gap_us'].get('p99', 0) / 1000:.2f} ms, CPU cores {summary['cpu_cores']}"
                )
        return level

    def start_profiler(self, pid: int, streams: int) -> tuple[subprocess.Popen[str], Path]:
        """py-spy (bench/.venv, installed with LiteLLM) on the sidecar during the measured run."""
        py_spy = litellm_peer.profiler_path("py-spy")
        if py_spy is None:
            litellm_peer.ensure_venv(self.args.litellm_spec, log=self.log)
            py_spy = litellm_peer.profiler_path("py-spy")
        assert py_spy is not None
        out = RESULTS / f"profile-streaming-{streams}.txt"
        RESULTS.mkdir(exist_ok=True)
        seconds = max(2, int(self.args.seconds - self.args.warmup))
        argv = [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
        argv += ["--format", "raw", "--output", str(out), "--nonblocking"]
        # Sampling starts with the measured streams (after the warm-up), not with the ramp.
        delayed = ["sh", "-c", f'sleep {self.args.warmup} && exec "$0" "$@"', *argv]
        return subprocess.Popen(delayed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out

    def finish_profiler(self, spy: subprocess.Popen[str], out: Path) -> dict[str, Any]:
        output, _ = spy.communicate(timeout=120)
        if spy.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed: {output[-500:]}"}
        return {"collapsed_stacks": str(out.relative_to(REPO)), "top": top_frames(out)}

    def targets(self) -> list[str]:
        chosen = [t.strip() for t in self.args.targets.split(",") if t.strip()]
        unknown = sorted(set(chosen) - set(TARGETS))
        if unknown:
            raise SystemExit(f"unknown targets: {', '.join(unknown)}")
        return chosen

    def run(self) -> dict[str, Any]:
        args = self.args
        levels = [int(n) for n in args.streams.split(",")]
        results: dict[str, Any] = {
            "schema": 1,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "tiny" if args.tiny else "full",
            "machine": procstat.machine(),
            "profile": {
                "first_chunk_ms": args.first_ms,
                "chunk_interval_ms": args.interval_ms,
                "chunks": args.chunks,
                "seconds_per_run": args.seconds,
                "warmup_s": args.warmup,
            },
            "policy": str(POLICY.relative_to(REPO)),
            "levels": {},
        }
        self.upstream = self.start_upstream()
        litellm = None
        try:
            if "litellm" in self.targets():
                try:
                    results["litellm_version"] = litellm_peer.ensure_venv(args.litellm_spec, log=self.log)
                    litellm = litellm_peer.start_litellm(
                        self.workdir, self.upstream.url, MODEL_ALIAS, PINNED_MODEL
                    )
                except Exception as error:  # the peer is for comparison: report it, keep our figures
                    self.notes.append(f"litellm skipped: {error}")
            for streams in levels:
                results["levels"][str(streams)] = self.run_level(streams, litellm)
        finally:
            if litellm is not None:
                litellm.stop()
            self.upstream.stop()
        results["derived"] = derive(results)
        results["targets_check"] = check(results["derived"], max(levels))
        results["notes"] = self.notes
        return results


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Each proxy against the direct run at the same stream count: added TTFT, gap and chunk delay."""
    derived: dict[str, Any] = {}
    for streams, level in results["levels"].items():
        direct = level.get("direct")
        for target, run in level.items():
            if target == "direct":
                continue
            row: dict[str, Any] = {"errors": run["errors"], "measured_streams": run["measured_streams"]}
            if direct:
                for key, name in (("ttft_us", "ttft"), ("gap_us", "gap"), ("chunk_delay_us", "chunk_delay")):
                    for q in ("p50", "p99"):
                        if q in run[key] and q in direct[key]:
                            row[f"added_{name}_{q}_ms"] = round((run[key][q] - direct[key][q]) / 1000, 2)
            rss = run.get("rss")
            if rss and rss.get("open_median_bytes") and rss.get("idle_bytes"):
                growth = rss["open_median_bytes"] - rss["idle_bytes"]
                row["rss_idle_mib"] = round(rss["idle_bytes"] / MIB, 1)
                row["rss_open_mib"] = round(rss["open_median_bytes"] / MIB, 1)
                row["rss_per_stream_kib"] = round(growth / int(streams) / 1024, 1)
            row["cpu_cores"] = run["cpu_cores"]
            derived.setdefault(target, {})[streams] = row
    return derived


def check(derived: dict[str, Any], streams: int) -> list[dict[str, Any]]:
    row = derived.get("sidecar-redis", {}).get(str(streams))
    if row is None:
        return []
    checks: list[tuple[str, Any, float]] = [("errors", row["errors"], 0)]
    checks += [(name, row.get(name), limit) for name, limit in LIMITS.items()]
    return [
        {
            "target": f"sidecar-redis at {streams} streams: {name}",
            "value": value,
            "limit": limit,
            "ok": None if value is None else value <= limit,
        }
        for name, value, limit in checks
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Streaming bench {results['date']} ({results['mode']}), profile {results['profile']}",
        "",
        "| streams | target | streams measured | errors | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms "
        "| chunk delay p50 ms | chunk delay p99 ms | CPU cores (upstream / proxy / client) | RSS idle → open MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for streams, level in results["levels"].items():
        for target, run in level.items():
            cores = run["cpu_cores"]
            rss = run.get("rss") or {}
            rss_text = (
                f"{rss['idle_bytes'] / MIB:.1f} → {rss['open_median_bytes'] / MIB:.1f}"
                if rss.get("idle_bytes") and rss.get("open_median_bytes")
                else "–"
            )
            ms = {
                key: {q: run[key].get(q, 0) / 1000 for q in ("p50", "p99")}
                for key in ("ttft_us", "gap_us", "chunk_delay_us")
            }
            lines.append(
                f"| {streams} | {target} | {run['measured_streams']} | {run['errors']} "
                f"| {ms['ttft_us']['p50']:.1f} | {ms['ttft_us']['p99']:.1f} "
                f"| {ms['gap_us']['p50']:.2f} | {ms['gap_us']['p99']:.2f} "
                f"| {ms['chunk_delay_us']['p50']:.2f} | {ms['chunk_delay_us']['p99']:.2f} "
                f"| {cores.get('upstream', 0):.2f} / {cores.get('proxy', 0):.2f} / {cores.get('client', 0):.2f} "
                f"| {rss_text} |"
            )
    lines += [
        "",
        "| target | streams | added TTFT p50 / p99 ms | added gap p50 / p99 ms | "
        "added chunk delay p50 / p99 ms | RSS per open stream KiB |",
        "|---|---:|---|---|---|---:|",
    ]
    for target, rows in results["derived"].items():
        for streams, row in rows.items():
            lines.append(
                f"| {target} | {streams} | {row.get('added_ttft_p50_ms')} / {row.get('added_ttft_p99_ms')} "
                f"| {row.get('added_gap_p50_ms')} / {row.get('added_gap_p99_ms')} "
                f"| {row.get('added_chunk_delay_p50_ms')} / {row.get('added_chunk_delay_p99_ms')} "
                f"| {row.get('rss_per_stream_kib', '–')} |"
            )
    if results["targets_check"]:
        lines += ["", "| streaming target | value | limit | met |", "|---|---:|---:|---|"]
        for item in results["targets_check"]:
            met = "–" if item["ok"] is None else ("yes" if item["ok"] else "**no**")
            lines.append(f"| {item['target']} | {item['value']} | {item['limit']} | {met} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="200,500,1000", help="comma-separated concurrent stream counts")
    parser.add_argument(
        "--targets", default="direct,sidecar-redis,litellm", help=f"from {', '.join(TARGETS)}"
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="no stream starts after this (per run)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="streams starting before this are not measured"
    )
    parser.add_argument("--first-ms", type=int, default=300)
    parser.add_argument("--interval-ms", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument(
        "--tiny", action="store_true", help="harness check: 5 and 10 streams, short streams, no LiteLLM"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the sidecar during each measured run: bench/results/profile-streaming-N.txt",
    )
    parser.add_argument("--litellm-spec", default=litellm_peer.DEFAULT_SPEC)
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.streams, args.seconds, args.warmup = "5,10", 2.0, 0.5
        args.first_ms, args.interval_ms, args.chunks = 50, 10, 5
        args.targets = ",".join(t for t in args.targets.split(",") if t.strip() != "litellm")
    return args


def main(argv: list[str] | None = None, printer: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="oaip-streaming-bench-"))
    try:
        results = StreamingBench(args, workdir).run()
        output = args.output
        if output is None:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            output = RESULTS / f"streaming-{'tiny-' if args.tiny else ''}{stamp}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        printer(markdown(results))
        printer(f"\nresults: {output}")
        if args.keep_workdir:
            printer(f"logs: {workdir}")
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
