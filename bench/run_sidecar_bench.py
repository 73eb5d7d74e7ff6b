"""Sidecar benchmark (the core path; every stage on behind --all-stages): one run, one machine, one fake.

    .venv/bin/python bench/run_sidecar_bench.py [--quick] [--targets direct,sidecar-memory,...]
        [--all-stages] [--profile] [--load-generator auto|wrk|python] [--output FILE]

Targets, all against the same fake upstream (devkit/openai_policy_devkit/fake_openai.py, zero delay):
  direct           the fake itself                     (the floor)
  sidecar-memory   openai-policy-sidecar, in-memory state, bench/policy-core.yaml
  sidecar-redis    the same with --redis-url (a throwaway redis-server)
  litellm          the LiteLLM proxy from bench/.venv (installed on first use)
With --all-stages (every resilience, cache and guardrail stage on, bench/policy-all-stages.yaml):
  all-stages-memory / all-stages-redis   unique prompts: the cache-miss path
  cache-hit-memory  / cache-hit-redis    one repeated deterministic prompt: the cache-hit path

Per target: warm-up, c=1 and c=32 runs (requests/s, p50/p99), the CPU each process spent per
request, and for sidecars the RSS after warm-up and after 50,000 and 100,000 requests served.
Writes a JSON file (bench/results/) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# sidecar_bench sits beside this script (on sys.path when run as `python bench/run_sidecar_bench.py`);
# openai_policy_devkit (fake upstream, redis-server, process helpers) is installed in the venv.
from sidecar_bench import litellm_peer, loadgen, procstat, report, services  # noqa: E402

from openai_policy_devkit.redis_server import RedisServer  # noqa: E402

CORE_POLICY = BENCH / "policy-core.yaml"
ALL_STAGES_POLICY = BENCH / "policy-all-stages.yaml"
RESULTS = BENCH / "results"
MODEL_ALIAS = "gpt-4o-mini"
PINNED_MODEL = "gpt-4o-mini-2024-07-18"  # what policy-core.yaml pins the alias to
CORE_TARGETS = ("direct", "sidecar-memory", "sidecar-redis", "litellm")
ALL_STAGES_TARGETS = ("all-stages-memory", "all-stages-redis", "cache-hit-memory", "cache-hit-redis")


def request_body(unique: bool) -> bytes:
    """A small chat completion: the alias (pinned by the policy), max_tokens above the clamp (1000 > 256),
    temperature 0 (cacheable when the policy's cache is on). `unique` leaves the placeholder the load
    generator replaces with a per-request counter."""
    marker = loadgen.UNIQUE_PLACEHOLDER if unique else "0"
    return json.dumps(
        {
            "model": MODEL_ALIAS,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
                {"role": "user", "content": f"Say hello to the benchmark, request {marker}."},
            ],
            "max_tokens": 1000,
            "temperature": 0,
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Plan:
    """How much load each phase sends. Measured runs are time-boxed (full) or counted (quick)."""

    warmup_requests: int
    run_requests: int  # 0: time only
    run_seconds: float
    rss_samples: tuple[int, ...]  # RSS is sampled once the process has served this many requests
    litellm_run_seconds: float
    litellm_warmup_requests: int  # LiteLLM serves tens of requests per second: a shorter warm-up
    repeats: int  # measured runs per concurrency; each figure is the median over them

    @classmethod
    def full(cls, seconds: float, rss_requests: int, repeats: int) -> Plan:
        return cls(
            warmup_requests=3000,
            run_requests=0,
            run_seconds=seconds,
            rss_samples=(rss_requests // 2, rss_requests),
            litellm_run_seconds=seconds,
            litellm_warmup_requests=200,
            repeats=repeats,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            warmup_requests=50,
            run_requests=150,
            run_seconds=20.0,
            rss_samples=(400, 600),
            litellm_run_seconds=5.0,
            litellm_warmup_requests=20,
            repeats=1,
        )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.plan = Plan.quick() if args.quick else Plan.full(args.seconds, args.rss_requests, args.repeats)
        self.load = loadgen.make_load(args.load_generator, services.CLIENT_KEY)
        self.fake: services.Service | None = None
        self.notes: list[str] = []
        self.profiled = {t.strip() for t in (args.profile or "").split(",") if t.strip()}

    def log(self, message: str) -> None:
        print(f"[{dt.datetime.now(dt.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    # -- one load run, with CPU accounting of the processes involved ---------------------------------

    def measure(
        self,
        url: str,
        concurrency: int,
        proxy_pid: int | None,
        *,
        max_requests: int,
        max_seconds: float,
        unique: bool,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        assert self.fake is not None
        pids = {"fake": self.fake.pid, **({"proxy": proxy_pid} if proxy_pid else {})}
        before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
        result = self.load.run(
            url + "/chat/completions",
            request_body(unique),
            concurrency,
            max_requests=max_requests,
            max_seconds=max_seconds,
            unique=unique,
            workdir=self.workdir,
        )
        served = max(result.requests, 1)
        cpu = {
            name: round((procstat.cpu_seconds(pid) - before[name]) / served * 1e6, 1)
            for name, pid in pids.items()
        }
        cpu["generator"] = round(result.generator_cpu_s / served * 1e6, 1)
        return result.to_json(), cpu

    # -- one target ----------------------------------------------------------------------------------

    def median_run(
        self, attempts: list[tuple[dict[str, Any], dict[str, float]]]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Combine repeated runs: each figure (req/s, each percentile, CPU/request) is the median of
        its own values over the runs; every run's req/s, p50 and p99 are kept for the record."""
        first, _ = attempts[0]
        if len(attempts) == 1:
            return first, attempts[0][1]
        runs = [attempt[0] for attempt in attempts]
        combined = dict(first)
        combined["requests"] = sum(run["requests"] for run in runs)
        combined["errors"] = sum(run["errors"] for run in runs)
        combined["duration_s"] = round(sum(run["duration_s"] for run in runs), 3)
        combined["rps"] = statistics.median(run["rps"] for run in runs)
        combined["latency_us"] = {
            key: statistics.median(run["latency_us"][key] for run in runs) for key in first["latency_us"]
        }
        combined["generator_cpu_s"] = round(sum(run["generator_cpu_s"] for run in runs), 3)
        combined["repeats"] = [
            {"rps": run["rps"], "p50_us": run["latency_us"]["p50"], "p99_us": run["latency_us"]["p99"]}
            for run in runs
        ]
        cpu = {
            key: round(statistics.median(attempt[1][key] for attempt in attempts), 1)
            for key in attempts[0][1]
        }
        return combined, cpu

    def repeated(
        self,
        url: str,
        concurrency: int,
        proxy_pid: int | None,
        run_seconds: float,
        *,
        unique: bool,
        paired: bool,
    ) -> tuple[tuple[dict[str, Any], dict[str, float]], dict[str, Any] | None]:
        """`repeats` runs of the target; when paired, each preceded by a run of the fake alone
        (interleaved A B A B ..., so that both see the same drift of a shared machine)."""
        assert self.fake is not None
        target_runs, baseline_runs = [], []
        for _ in range(self.plan.repeats):
            if paired:
                baseline_runs.append(
                    self.measure(
                        self.fake.url,
                        concurrency,
                        None,
                        max_requests=self.plan.run_requests,
                        max_seconds=run_seconds,
                        unique=False,
                    )
                )
            target_runs.append(
                self.measure(
                    url,
                    concurrency,
                    proxy_pid,
                    max_requests=self.plan.run_requests,
                    max_seconds=run_seconds,
                    unique=unique,
                )
            )
        baseline = self.median_run(baseline_runs)[0] if baseline_runs else None
        return self.median_run(target_runs), baseline

    def run_target(
        self,
        target: str,
        url: str,
        proxy_pid: int | None,
        *,
        unique: bool,
        rss: bool,
        run_seconds: float,
        warmup_requests: int | None = None,
        paired: bool = True,
    ) -> dict[str, Any]:
        plan = self.plan
        served = 0
        data: dict[str, Any] = {
            "url": url,
            "runs": {},
            "cpu_us_per_request": {},
            "loadavg_before": procstat.loadavg(),
        }
        warmup = plan.warmup_requests if warmup_requests is None else warmup_requests
        self.log(f"{target}: warm-up ({warmup} requests)")
        warm, _ = self.measure(url, 32, proxy_pid, max_requests=warmup, max_seconds=300, unique=unique)
        served += warm["requests"]
        data["warmup"] = {"requests": warm["requests"], "errors": warm["errors"]}
        if rss and proxy_pid:
            # RSS first, right after warm-up, so that the samples fall at the requested counts
            # (the measured runs below would otherwise overshoot 50,000 on their own).
            data["rss"] = {"after_warmup_bytes": procstat.rss_bytes(proxy_pid), "samples": []}
            for mark in plan.rss_samples:
                for _ in range(10):  # bounded: each top-up run is counted, so one or two suffice
                    if served >= mark:
                        break
                    top_up, _ = self.measure(
                        url, 32, proxy_pid, max_requests=mark - served, max_seconds=900, unique=unique
                    )
                    served += top_up["requests"]
                    data["top_up_errors"] = data.get("top_up_errors", 0) + top_up["errors"]
                sample = {"requests": served, "rss_bytes": procstat.rss_bytes(proxy_pid)}
                data["rss"]["samples"].append(sample)
                self.log(f"{target}: RSS after {served} requests: {sample['rss_bytes'] / report.MIB:.1f} MiB")
        for concurrency in (1, 32):
            # With `paired`, the fake alone is measured in turns with the target: on a shared
            # 2-core machine the load of other processes drifts over minutes, and the ratios
            # (added latency, share of direct throughput) use these paired runs.
            (result, cpu), baseline = self.repeated(
                url, concurrency, proxy_pid, run_seconds, unique=unique, paired=paired
            )
            if baseline is not None:
                data.setdefault("baseline_runs", {})[f"c{concurrency}"] = baseline
            served += result["requests"]
            data["runs"][f"c{concurrency}"] = result
            data["cpu_us_per_request"][f"c{concurrency}"] = cpu
            self.log(
                f"{target}: c={concurrency}: {result['requests']} requests, {result['rps']} req/s, "
                f"p50 {result['latency_us']['p50'] / 1000:.2f} ms, p99 {result['latency_us']['p99'] / 1000:.2f} ms, "
                f"errors {result['errors']}, CPU µs/req {cpu}"
                + (
                    f" (paired direct: {data['baseline_runs'][f'c{concurrency}']['rps']} req/s)"
                    if paired
                    else ""
                )
            )
        if proxy_pid:
            data.setdefault("rss", {"samples": []})["at_end_bytes"] = procstat.rss_bytes(proxy_pid)
        data["served"] = served
        data["loadavg_after"] = procstat.loadavg()
        return data

    # -- probes: the path does what the policy says before we time it -------------------------------

    def probe(self, url: str, *expect_models: str) -> dict[str, Any]:
        status, _headers, body = services.post_json(url + "/chat/completions", request_body(False))
        reply = json.loads(body) if body else {}
        model = reply.get("model")
        if status != 200 or model not in expect_models:
            raise RuntimeError(
                f"probe of {url}: HTTP {status}, model {model!r} (want one of {expect_models!r}): {body[:300]!r}"
            )
        return {"status": status, "model": model, "usage": reply.get("usage", {}).get("total_tokens")}

    def cache_probe(self, url: str) -> dict[str, Any]:
        """Two identical deterministic requests: with the cache stage on, the second is a cache hit."""
        first = services.post_json(url + "/chat/completions", request_body(False))
        second = services.post_json(url + "/chat/completions", request_body(False))
        header = second[1].get("x-openai-policy-cache")
        return {
            "first_status": first[0],
            "second_status": second[0],
            "cache_header": header,
            "wired": header == "hit",
        }

    # -- the whole run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        results: dict[str, Any] = {
            "schema": 1,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "machine": procstat.machine(),
            "generator": self.load.name,
            "plan": self.plan.__dict__ | {"rss_samples": list(self.plan.rss_samples)},
            "request": json.loads(request_body(False)),
            "policy": str(CORE_POLICY.relative_to(REPO)),
            "targets": {},
        }
        self.fake = services.start_fake(self.workdir)
        self.log(f"fake upstream at {self.fake.url}")
        try:
            for target in self.selected_targets():
                results["targets"][target] = self.run_one(target, results)
        finally:
            if self.fake is not None:
                self.fake.stop()
        results["derived"] = report.derive(results)
        rss_end = None if args.quick else self.plan.rss_samples[-1]
        results["targets_check"] = report.targets(results["derived"], rss_end)
        results["notes"] = self.notes
        return results

    def selected_targets(self) -> list[str]:
        chosen = [t.strip() for t in self.args.targets.split(",") if t.strip()]
        if self.args.no_litellm:
            chosen = [t for t in chosen if t != "litellm"]
        if self.args.all_stages:
            chosen += [t for t in ALL_STAGES_TARGETS if t not in chosen]
        unknown = sorted(set(chosen) - set(CORE_TARGETS) - set(ALL_STAGES_TARGETS))
        if unknown:
            raise SystemExit(f"unknown targets: {', '.join(unknown)}")
        return chosen

    def run_one(self, target: str, results: dict[str, Any]) -> dict[str, Any]:
        assert self.fake is not None
        seconds = self.plan.run_seconds
        if target == "direct":
            data = self.run_target(
                target, self.fake.url, None, unique=False, rss=False, run_seconds=seconds, paired=False
            )
            data["probe"] = self.probe(self.fake.url, MODEL_ALIAS)
            return data
        if target == "litellm":
            return self.run_litellm(results)
        policy_template = CORE_POLICY if target.startswith("sidecar-") else ALL_STAGES_POLICY
        unique = target.startswith("all-stages-")
        with self.sidecar(target, policy_template, redis=target.endswith("-redis")) as sidecar:
            data: dict[str, Any] = {"policy": str(policy_template.relative_to(REPO))}
            data["probe"] = self.probe(sidecar.url, PINNED_MODEL)
            if target in ALL_STAGES_TARGETS:
                data["cache_probe"] = self.cache_probe(sidecar.url)
                if not data["cache_probe"]["wired"]:
                    self.notes.append(
                        f"{target}: the sidecar's cache stage is NOT on (no "
                        f"`x-openai-policy-cache: hit` on a repeated deterministic request): these figures are "
                        f"the core path under an all-stages policy, not an all-stages run."
                    )
            data |= self.run_target(
                target, sidecar.url, sidecar.pid, unique=unique, rss=not self.args.no_rss, run_seconds=seconds
            )
            if target in self.profiled:
                data["profile"] = self.profile(target, sidecar)
            data["sidecar_counted"] = counted = services.sidecar_counters(sidecar.admin_url)
            # Every request the load generator saw answered must have been metered by the sidecar
            # (probes and the profiling run add a few more, never fewer).
            if counted["requests"] < data["served"] or counted["refusals"]:
                self.notes.append(
                    f"{target}: the sidecar counted {counted['requests']} requests "
                    f"({counted['refusals']} refused) for {data['served']} served by the harness"
                )
        return data

    @contextlib.contextmanager
    def sidecar(self, target: str, template: Path, *, redis: bool):  # -> Iterator[services.Service]
        redis_server = RedisServer().start() if redis else None
        policy = services.write_policy(
            template, self.fake.url if self.fake else "", self.workdir / f"{target}.yaml"
        )
        sidecar = None
        try:
            sidecar = services.start_sidecar(
                target, policy, self.workdir, redis_url=redis_server.url if redis_server else None
            )
            self.log(f"{target}: sidecar pid {sidecar.pid} at {sidecar.url}")
            yield sidecar
        except Exception:
            if sidecar is not None:
                self.log(f"{target}: sidecar log tail:\n{sidecar.log_tail()}")
            raise
        finally:
            if sidecar is not None:
                sidecar.stop()
            if redis_server is not None:
                redis_server.close()

    def run_litellm(self, results: dict[str, Any]) -> dict[str, Any]:
        assert self.fake is not None
        try:
            version = litellm_peer.ensure_venv(self.args.litellm_spec, log=self.log)
        except Exception as error:  # no registry, no venv: report it, keep the other figures
            self.notes.append(f"litellm skipped: could not install {self.args.litellm_spec}: {error}")
            return {"skipped": f"install failed: {error}"}
        results["litellm_version"] = version
        self.log(f"litellm {version}: starting (this takes a while)")
        service = litellm_peer.start_litellm(self.workdir, self.fake.url, MODEL_ALIAS, PINNED_MODEL)
        try:
            # LiteLLM reports the model group the client asked for (the alias), not the dated model it sent.
            data = {"version": version, "probe": self.probe(service.url, PINNED_MODEL, MODEL_ALIAS)}
            data |= self.run_target(
                "litellm",
                service.url,
                service.pid,
                unique=False,
                rss=False,
                run_seconds=self.plan.litellm_run_seconds,
                warmup_requests=self.plan.litellm_warmup_requests,
                paired=False,
            )
            if "litellm" in self.profiled:
                data["profile"] = self.profile("litellm", service)
            return data
        finally:
            service.stop()

    def profile(self, target: str, sidecar: services.Service) -> dict[str, Any]:
        """py-spy (from bench/.venv) on the running proxy during an extra c=32 run (not counted)."""
        import subprocess

        py_spy = litellm_peer.profiler_path("py-spy")
        if py_spy is None:
            return {"skipped": "py-spy is not installed in bench/.venv"}
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"profile-{target}.txt"
        seconds = max(5, int(self.plan.run_seconds))
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(sidecar.pid),
                "--duration",
                str(seconds),
                "--subprocesses",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.0)
        self.measure(sidecar.url, 32, sidecar.pid, max_requests=0, max_seconds=seconds, unique=False)
        spy_out, _ = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed: {spy_out[-500:]}"}
        return {"collapsed_stacks": str(out.relative_to(REPO)), "top": top_frames(out)}


def _function(frame: str) -> str:
    """'Proxy.handle (openai_policy_sidecar/proxy.py:64)' -> 'Proxy.handle (openai_policy_sidecar/proxy.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def top_frames(collapsed: Path, limit: int = 25) -> dict[str, list[dict[str, Any]]]:
    """From py-spy's raw (collapsed) stacks: the share of samples in which each function is on the
    stack (inclusive) and at the top of it (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [_function(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        top = sorted(table.items(), key=lambda item: -item[1])[:limit]
        return [{"function": frame, "share": round(count / samples, 3)} for frame, count in top]

    return {"samples": samples, "inclusive": ranked(inclusive), "self": ranked(own)} if samples else {}


def save(results: dict[str, Any], output: Path | None, quick: bool) -> Path:
    if output is None:
        RESULTS.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        output = RESULTS / f"sidecar-bench-{'quick-' if quick else ''}{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few hundred requests per target (harness check, not figures)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(CORE_TARGETS),
        help=f"comma-separated, from {', '.join(CORE_TARGETS + ALL_STAGES_TARGETS)}",
    )
    parser.add_argument("--no-litellm", action="store_true", help="drop the litellm target")
    parser.add_argument(
        "--all-stages",
        action="store_true",
        help="add the all-stages runs: every stage on (cache-miss path) and a cache-hit run",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured c=1 / c=32 run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measured runs per concurrency (full mode), interleaved with the paired direct "
        "runs; each figure is the median over the runs",
    )
    parser.add_argument(
        "--rss-requests",
        type=int,
        default=100_000,
        help="RSS is sampled at half this and at this many requests served",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS phase")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="sidecar-memory",
        default="",
        help="py-spy these targets (comma-separated; default sidecar-memory) during an extra "
        "c=32 run: collapsed stacks in bench/results/profile-*.txt, top functions in the JSON",
    )
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--litellm-spec", default=litellm_peer.DEFAULT_SPEC)
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON results file (default bench/results/...)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and configs of the run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, printer: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="oaip-bench-"))
    try:
        bench = Bench(args, workdir)
        results = bench.run()
        path = save(results, args.output, args.quick)
        printer(report.markdown(results))
        printer(f"\nresults: {path}")
        if args.keep_workdir:
            printer(f"logs: {workdir}")
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
