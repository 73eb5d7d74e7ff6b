"""Derived figures (added latency, throughput ratios, RSS growth), the core path's targets, and Markdown.

Everything here is arithmetic on one run's results: no target is ever asserted by a test, and
nothing is compared with figures from another machine or another run.
"""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024
# "No growth" between 50k and 100k requests, with the tolerance this harness applies: CPython's
# allocator keeps arenas, so a steady process still moves by a few hundred KiB.
RSS_GROWTH_TOLERANCE_MIB = 1.0


def _run(results: dict[str, Any], target: str, concurrency: int) -> dict[str, Any] | None:
    return results.get("targets", {}).get(target, {}).get("runs", {}).get(f"c{concurrency}")


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Added latency at c=1, throughput ratios at c=32, RSS growth, for every sidecar-like target."""
    derived: dict[str, Any] = {}
    litellm32 = _run(results, "litellm", 32)
    for target, data in results.get("targets", {}).items():
        if target in ("direct", "litellm"):
            continue
        entry: dict[str, Any] = {}
        run1, run32 = _run(results, target, 1), _run(results, target, 32)
        paired = data.get("baseline_runs") or {}
        # Prefer the direct runs made right before this target's (same machine state) when present.
        direct1 = paired.get("c1") or _run(results, "direct", 1)
        direct32 = paired.get("c32") or _run(results, "direct", 32)
        entry["baseline"] = "paired direct runs" if paired else "the direct target"
        if run1 and direct1:
            entry["added_latency_c1_us"] = {
                "p50": round(run1["latency_us"]["p50"] - direct1["latency_us"]["p50"], 1),
                "p99": round(run1["latency_us"]["p99"] - direct1["latency_us"]["p99"], 1),
            }
            if direct1["latency_us"]["p50"]:
                # Issue 15: the time added at p50, in units of the direct p50 itself.
                entry["added_c1_p50_vs_direct_p50"] = round(
                    entry["added_latency_c1_us"]["p50"] / direct1["latency_us"]["p50"], 2
                )
        if run32 and direct32 and direct32["rps"]:
            entry["throughput_c32_vs_direct"] = round(run32["rps"] / direct32["rps"], 3)
        if run32 and litellm32 and litellm32["rps"]:
            entry["throughput_c32_vs_litellm"] = round(run32["rps"] / litellm32["rps"], 2)
        rss = data.get("rss") or {}
        samples = rss.get("samples") or []
        if len(samples) >= 2:
            entry["rss_mib_at_end"] = round(samples[-1]["rss_bytes"] / MIB, 1)
            entry["rss_growth_mib"] = round((samples[-1]["rss_bytes"] - samples[-2]["rss_bytes"]) / MIB, 2)
        derived[target] = entry
    return derived


def _check(name: str, measured: float | None, limit: float, *, at_least: bool, unit: str) -> dict[str, Any]:
    if measured is None:
        return {"target": name, "limit": limit, "unit": unit, "measured": None, "ok": None, "miss": None}
    ok = measured >= limit if at_least else measured <= limit
    miss = None if ok else round(abs(measured - limit), 3)
    return {"target": name, "limit": limit, "unit": unit, "measured": measured, "ok": ok, "miss": miss}


def targets(derived: dict[str, Any], rss_end_requests: int | None) -> list[dict[str, Any]]:
    """The core path's targets (added latency, throughput, RSS), checked for every sidecar target:
    with every stage on, the core targets must still hold. Issue 15's (zero-delay throughput and
    memory) are the added p50 against the direct p50, the share of direct at c=32 and the RSS."""
    checks = []
    for target, d in derived.items():
        checks.append(
            _check(
                f"{target}: added c=1 p50 / direct c=1 p50",
                d.get("added_c1_p50_vs_direct_p50"),
                1.5,
                at_least=False,
                unit="×",
            )
        )
        added = d.get("added_latency_c1_us", {})
        p50_limit = 1000.0 if target.endswith("-redis") else 500.0
        checks.append(
            _check(f"{target}: added latency c=1 p50", added.get("p50"), p50_limit, at_least=False, unit="µs")
        )
        checks.append(
            _check(f"{target}: added latency c=1 p99", added.get("p99"), 2000.0, at_least=False, unit="µs")
        )
        checks.append(
            _check(
                f"{target}: throughput c=32 vs direct",
                d.get("throughput_c32_vs_direct"),
                0.35 if target.endswith("-redis") else 0.5,  # issue 15: 35% with Redis, 50% in memory
                at_least=True,
                unit="×",
            )
        )
        checks.append(
            _check(
                f"{target}: throughput c=32 vs LiteLLM",
                d.get("throughput_c32_vs_litellm"),
                10.0,
                at_least=True,
                unit="×",
            )
        )
        label = f"after {rss_end_requests:,} requests" if rss_end_requests else "at end"
        checks.append(
            _check(f"{target}: RSS {label}", d.get("rss_mib_at_end"), 64.0, at_least=False, unit="MiB")
        )
        checks.append(
            _check(
                f"{target}: RSS growth over the last half",
                d.get("rss_growth_mib"),
                RSS_GROWTH_TOLERANCE_MIB,
                at_least=False,
                unit="MiB",
            )
        )
    return checks


def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1000:.2f}"


def _mib(value: int | None) -> str:
    return "–" if not value else f"{value / MIB:.1f}"


def _count(requests: int) -> str:
    return f"{requests / 1000:.0f}k" if requests >= 10_000 else str(requests)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    machine = results.get("machine", {})
    lines.append(
        f"Run {results.get('date')} · {machine.get('cores')} cores ({machine.get('cpu_model')}) · "
        f"load generator {results.get('generator')} · mode {results.get('mode')}"
    )
    lines.append("")
    lines.append(
        "| target | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
        "| proxy CPU µs/req (c=32) | RSS MiB (samples) | errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for target, data in results.get("targets", {}).items():
        if data.get("skipped"):
            lines.append(f"| {target} | skipped: {data['skipped']} |||||||||")
            continue
        r1, r32 = data["runs"].get("c1"), data["runs"].get("c32")
        cpu = (data.get("cpu_us_per_request") or {}).get("c32", {}).get("proxy")
        rss = data.get("rss") or {}
        samples = rss.get("samples") or []
        rss_text = " → ".join(f"{_count(s['requests'])}: {_mib(s['rss_bytes'])}" for s in samples) or "–"
        if rss.get("at_end_bytes"):
            end = f"end: {_mib(rss['at_end_bytes'])}"
            rss_text = f"{rss_text} ({end})" if samples else end
        errors = (
            sum(r["errors"] for r in data["runs"].values())
            + data.get("top_up_errors", 0)
            + data.get("warmup", {}).get("errors", 0)
        )
        lines.append(
            f"| {target} | {r1['rps'] if r1 else '–'} | {_ms(r1['latency_us']['p50'] if r1 else None)} "
            f"| {_ms(r1['latency_us']['p99'] if r1 else None)} | {r32['rps'] if r32 else '–'} "
            f"| {_ms(r32['latency_us']['p50'] if r32 else None)} | {_ms(r32['latency_us']['p99'] if r32 else None)} "
            f"| {'–' if cpu is None else round(cpu)} | {rss_text} | {errors} |"
        )
    derived = results.get("derived", {})
    if derived:
        lines.append("")
        lines.append(
            "| target | added c=1 p50 ms | added p50 / direct p50 | added c=1 p99 ms | c=32 vs direct "
            "| c=32 vs LiteLLM | RSS growth last half MiB |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for target, d in derived.items():
            added = d.get("added_latency_c1_us", {})
            vs_direct = d.get("throughput_c32_vs_direct")
            vs_litellm = d.get("throughput_c32_vs_litellm")
            lines.append(
                f"| {target} | {_ms(added.get('p50'))} | {d.get('added_c1_p50_vs_direct_p50', '–')}× "
                f"| {_ms(added.get('p99'))} "
                f"| {'–' if vs_direct is None else f'{vs_direct:.0%}'} "
                f"| {'–' if vs_litellm is None else f'{vs_litellm:.1f}×'} | {d.get('rss_growth_mib', '–')} |"
            )
    checks = results.get("targets_check", [])
    if checks:
        lines.append("")
        lines.append("| core target | limit | measured | verdict |")
        lines.append("|---|---:|---:|---|")
        for c in checks:
            verdict = (
                "n/a" if c["ok"] is None else ("met" if c["ok"] else f"missed by {c['miss']} {c['unit']}")
            )
            op = "≥" if "throughput" in c["target"] else "≤"
            measured = "–" if c["measured"] is None else f"{c['measured']} {c['unit']}"
            lines.append(f"| {c['target']} | {op} {c['limit']} {c['unit']} | {measured} | {verdict} |")
    notes = results.get("notes") or []
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines)
