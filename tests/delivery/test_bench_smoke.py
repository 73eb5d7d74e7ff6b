"""Smoke test of the benchmark harness (bench/run_sidecar_bench.py --quick): direct and the in-memory
sidecar only, a few hundred requests each, no LiteLLM and no Redis.

It checks that the harness produces sane output — counts, percentiles in order, ratios computed,
RSS sampled, Markdown printed — never how fast anything is: timings depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "run_sidecar_bench.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, tiktoken_cache_dir: Path) -> tuple[dict, str]:
    output = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tiktoken_cache_dir)}
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--targets",
            "direct,sidecar-memory",
            "--output",
            str(output),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(output.read_text()), completed.stdout


def test_both_targets_ran_every_phase_without_errors(quick_run):
    results, _ = quick_run
    assert results["mode"] == "quick"
    assert set(results["targets"]) == {"direct", "sidecar-memory"}
    for name, target in results["targets"].items():
        assert set(target["runs"]) == {"c1", "c32"}, name
        for key, run in target["runs"].items():
            # Quick mode counts requests; with wrk the answers already in flight when the count is
            # reached are counted too (at most one per connection).
            wanted = results["plan"]["run_requests"]
            assert wanted <= run["requests"] < wanted + run["concurrency"], (name, key, run["requests"])
            assert run["errors"] == 0, (name, key, run)
            assert run["concurrency"] == int(key[1:])
            assert run["rps"] > 0 and run["duration_s"] > 0
            latency = run["latency_us"]
            assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], (
                name,
                key,
                latency,
            )


def test_sidecar_applied_the_policy_and_was_sampled(quick_run):
    results, _ = quick_run
    sidecar = results["targets"]["sidecar-memory"]
    assert sidecar["probe"]["model"] == "gpt-4o-mini-2024-07-18"  # the pin was applied on the way
    assert results["targets"]["direct"]["probe"]["model"] == "gpt-4o-mini"
    samples = sidecar["rss"]["samples"]
    assert len(samples) == len(results["plan"]["rss_samples"])
    for sample, mark in zip(samples, results["plan"]["rss_samples"], strict=True):
        assert mark <= sample["requests"] < mark + 32
    assert all(s["rss_bytes"] > 10 * 1024 * 1024 for s in samples)  # a live Python process, not a zero
    counted = sidecar["sidecar_counted"]  # the sidecar's own metrics: everything metered, nothing refused
    assert counted["requests"] >= sidecar["served"] and counted["refusals"] == 0
    assert set(counted["requests_by_status"]) == {"200"} and counted["cost_usd"] > 0
    cpu = sidecar["cpu_us_per_request"]["c32"]
    assert cpu["proxy"] > 0 and cpu["fake"] > 0


def test_derived_figures_and_target_checks_are_computed(quick_run):
    results, stdout = quick_run
    derived = results["derived"]["sidecar-memory"]
    sidecar = results["targets"]["sidecar-memory"]
    run1 = sidecar["runs"]["c1"]["latency_us"]
    paired1 = sidecar["baseline_runs"]["c1"]["latency_us"]  # the direct run made just before it
    assert derived["baseline"] == "paired direct runs"
    assert derived["added_latency_c1_us"]["p50"] == pytest.approx(run1["p50"] - paired1["p50"], abs=0.2)
    assert derived["throughput_c32_vs_direct"] == pytest.approx(
        sidecar["runs"]["c32"]["rps"] / sidecar["baseline_runs"]["c32"]["rps"], rel=0.01
    )
    assert derived["throughput_c32_vs_direct"] > 0
    assert "throughput_c32_vs_litellm" not in derived  # no LiteLLM in this run
    checks = {c["target"]: c for c in results["targets_check"]}
    assert checks["sidecar-memory: throughput c=32 vs LiteLLM"]["ok"] is None
    assert isinstance(checks["sidecar-memory: added latency c=1 p50"]["ok"], bool)
    assert "| sidecar-memory |" in stdout and "| direct |" in stdout and "core target" in stdout


STREAMING = REPO / "bench" / "streaming_bench.py"


@pytest.fixture(scope="module")
def streaming_run(tmp_path_factory: pytest.TempPathFactory, tiktoken_cache_dir: Path) -> tuple[dict, str]:
    """bench/streaming_bench.py --tiny: 5 and 10 short streams, direct and through a sidecar with Redis."""
    output = tmp_path_factory.mktemp("streaming") / "streaming.json"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tiktoken_cache_dir)}
    completed = subprocess.run(
        [sys.executable, str(STREAMING), "--tiny", "--output", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the first run builds the Go upstream and client
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(output.read_text()), completed.stdout


def test_streaming_bench_relayed_every_stream_whole(streaming_run):
    results, _ = streaming_run
    assert results["mode"] == "tiny" and list(results["levels"]) == ["5", "10"]
    chunks = results["profile"]["chunks"]
    for streams, level in results["levels"].items():
        assert set(level) == {"direct", "sidecar-redis"}, streams
        for target, run in level.items():
            assert run["errors"] == 0 and run["error_detail"] == {}, (streams, target, run["error_detail"])
            assert run["measured_streams"] >= int(streams), (streams, target)  # each client, at least once
            assert run["chunks"] == run["measured_streams"] * chunks  # no stream lost or cut a chunk
            for key in ("ttft_us", "gap_us", "chunk_delay_us"):
                figures = run[key]
                assert 0 <= figures["p50"] <= figures["p99"] <= figures["max"], (streams, target, key)
            assert run["ttft_us"]["count"] == run["measured_streams"]
            assert run["gap_us"]["count"] == run["measured_streams"] * (chunks - 1)
            # The profile's first chunk comes after first_chunk_ms: a TTFT below it is a broken clock.
            assert run["ttft_us"]["p50"] >= results["profile"]["first_chunk_ms"] * 1000
            assert run["cpu_cores"]["upstream"] > 0 and run["cpu_cores"]["client"] > 0


def test_streaming_bench_measured_the_sidecar_it_ran(streaming_run):
    results, stdout = streaming_run
    for streams, level in results["levels"].items():
        sidecar = level["sidecar-redis"]
        assert sidecar["probe"]["model"] == "gpt-4o-mini-2024-07-18"  # the policy's pin applied
        counted = sidecar["sidecar_counted"]  # every stream metered by the sidecar itself
        assert counted["requests"] >= sidecar["measured_streams"] + sidecar["warmup_streams"]
        assert counted["refusals"] == 0 and set(counted["requests_by_status"]) == {"200"}
        assert counted["runtime"] == {"event_loop": "uvloop", "http_parser": "c"}  # the fast paths measured
        assert sidecar["cpu_cores"]["proxy"] > 0
        rss = sidecar["rss"]
        assert rss["idle_bytes"] > 10 * 1024 * 1024 and rss["open_samples"] > 0
        row = results["derived"]["sidecar-redis"][streams]
        assert row["added_ttft_p99_ms"] == pytest.approx(
            (sidecar["ttft_us"]["p99"] - level["direct"]["ttft_us"]["p99"]) / 1000, abs=0.01
        )
        assert "rss_per_stream_kib" in row
    checks = {c["target"].rsplit(": ", 1)[1]: c for c in results["targets_check"]}
    assert set(checks) == {"errors", "added_ttft_p99_ms", "added_gap_p99_ms", "rss_per_stream_kib"}
    assert all(isinstance(c["ok"], bool) for c in checks.values())
    assert "| 10 | sidecar-redis |" in stdout and "streaming target" in stdout
