"""Where a sidecar's memory goes: RSS after each layer of its start-up, in a fresh process.

    .venv/bin/python bench/memory_breakdown.py [--encoding o200k_base|cl100k_base] [--redis]
        [--output FILE]

A child interpreter imports the sidecar's stack one layer at a time (the order its own imports
follow), then builds the sidecar for a policy whose models use one encoding, starts it (with a
throwaway redis-server when --redis) and runs the tidy-up it runs once serving
(``runtime.settle_after_start``), reading ``/proc/self/status`` after each step: VmRSS, and its
anonymous part (the process's own heap: what a pod pays alone) and file-backed part (shared
libraries and mapped files, shared with other processes using the same files). The figure after
100,000 requests comes from ``bench/run_sidecar_bench.py`` (its RSS phase).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
from sidecar_bench import services  # noqa: E402

from openai_policy_devkit.redis_server import RedisServer  # noqa: E402

# A model of each encoding (tokens.encoding_name_for_model): the policy allows and pins only it.
MODELS = {"o200k_base": "gpt-4o-mini", "cl100k_base": "gpt-4"}

CHILD = r"""
import json, sys, time
from pathlib import Path

def status():
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            found[key] = int(value.split()[0]) * 1024
        elif key == "Threads":  # malloc arenas are per thread: MALLOC_ARENA_MAX matters with many
            found[key] = int(value)
    return found

steps = []
def step(name):
    steps.append({"step": name, **status()})

step("python")
import asyncio, json as _json, logging
step("asyncio, json, logging")
import aiohttp, aiohttp.web
step("aiohttp")
import uvloop
step("uvloop")
import pydantic, openai_policy_api
step("pydantic + openai_policy_api")
import redis.asyncio
step("redis")
import openai_policy_store
step("openai_policy_store")
import prometheus_client
step("prometheus_client")
import cryptography.hazmat.primitives.asymmetric.ed25519
step("cryptography")
import tiktoken, tiktoken_ext.openai_public
step("tiktoken (module)")
import orjson
step("orjson")
from openai_policy_sidecar import server, runtime, tokens
from openai_policy_sidecar.__main__ import main as _main
step("openai_policy_sidecar modules")
config = server.SidecarConfig(policy_path=Path(sys.argv[1]), api_key="sk-memory-breakdown",
    redis_url=sys.argv[2] or None, listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
sidecar = server.Sidecar(config)
sidecar.load()
step("policy loaded, encodings: " + ",".join(tokens.loaded_encodings()))
async def serve():
    await sidecar.start()
    step("listening (apps, pools, store connection)")
    runtime.settle_after_start()
    step("after gc.freeze + malloc_trim")
    await sidecar.stop()
uvloop.run(serve())
print(json.dumps(steps))
"""


def measure(encoding: str, redis: bool, workdir: Path) -> list[dict]:
    model = MODELS[encoding]
    policy = workdir / "policy.yaml"
    policy.write_text(
        json.dumps(
            {
                "apiVersion": "openaipolicy.dev/v1alpha1",
                "kind": "OpenAIPolicy",
                "metadata": {"name": "memory", "namespace": "default"},
                "spec": {
                    "upstream": {"baseURL": "http://127.0.0.1:9/v1"},
                    "models": {"allow": [model]},
                    "budget": {"limits": [{"window": "day", "usd": 100}]},
                },
            }
        )
    )
    server = RedisServer().start() if redis else None
    try:
        env = services.child_env()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(policy), server.url if server else ""],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
        )
    finally:
        if server is not None:
            server.close()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(steps: list[dict]) -> str:
    mib = 1024 * 1024
    lines = [
        "| step | RSS MiB | + MiB | anon MiB | file MiB | threads |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    previous = 0
    for item in steps:
        lines.append(
            f"| {item['step']} | {item['VmRSS'] / mib:.1f} | {(item['VmRSS'] - previous) / mib:+.1f} "
            f"| {item['RssAnon'] / mib:.1f} | {item['RssFile'] / mib:.1f} | {item['Threads']} |"
        )
        previous = item["VmRSS"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoding", choices=sorted(MODELS), action="append")
    parser.add_argument("--redis", action="store_true", help="start the sidecar with a redis-server")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {"redis": args.redis, "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"), "runs": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for encoding in args.encoding or sorted(MODELS, reverse=True):
            steps = measure(encoding, args.redis, Path(workdir))
            results["runs"][encoding] = steps
            print(f"\n{encoding} ({MODELS[encoding]}){' with Redis' if args.redis else ''}\n")
            print(table(steps))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
