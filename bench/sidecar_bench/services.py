"""The processes under test: the fake upstream, redis-server, the sidecar, and the LiteLLM proxy.

All listen on loopback ports picked free; each is a ManagedProcess (logged to a file, killed with
the harness if the harness dies) and is stopped by the harness when its stage is over.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from openai_policy_devkit.managed_process import ManagedProcess, ProcessFailed, free_port, tail

REPO = Path(__file__).resolve().parents[2]
BENCH_KEY = "sk-bench-upstream-key-not-real"
# What the load generator sends as its key, to every target: the fake accepts any key, the sidecar
# replaces it, and LiteLLM takes it as its master key (it refuses to start without a strong one).
CLIENT_KEY = "sk-bench-" + secrets.token_hex(24)  # random per run: LiteLLM refuses weak master keys


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def post_json(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One POST, for probes (cache header, sanity): (status, lower-cased headers, body)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


class Service:
    """A child process plus the URL it serves; `wait_ready` polls a health URL."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.process = ManagedProcess(name, argv, self.log_path, env=env, cwd=REPO)
        self.url = ""  # base URL of the OpenAI-compatible API, ending in /v1
        self.admin_url = ""  # the sidecar's /healthz, /readyz, /metrics

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def start(self) -> None:
        self.process.start()

    def wait_ready(self, health_url: str, timeout: float, *, any_answer: bool = False) -> None:
        """Until `health_url` answers 200 (or, with any_answer, answers at all: the fake wants a key)."""
        deadline = time.monotonic() + timeout
        while not ((status := http_status(health_url)) == 200 or (any_answer and status is not None)):
            self.process.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    self.process.failure_message(f"{self.name} not ready after {timeout:.0f}s")
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def stop(self) -> None:
        self.process.stop(timeout=15)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.setdefault("TIKTOKEN_CACHE_DIR", str(Path.home() / ".cache" / "openai-policy-operator" / "tiktoken"))
    # This tree's packages, not whichever copy the venv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / d) for d in ("api", "store", "sidecar", "devkit")] + [str(REPO)]
    )
    env.update(extra)
    return env


def start_fake(workdir: Path) -> Service:
    """The fake OpenAI upstream, zero delay, no per-request records (python -m openai_policy_devkit.fake_openai)."""
    port = free_port()
    service = Service(
        "fake-openai",
        [sys.executable, "-m", "openai_policy_devkit.fake_openai", "--port", str(port)],
        workdir,
        env=child_env(),
    )
    service.url = f"http://127.0.0.1:{port}/v1"
    service.start()
    service.wait_ready(f"http://127.0.0.1:{port}/v1/models", timeout=30, any_answer=True)
    return service


def write_policy(template: Path, upstream_url: str, destination: Path) -> Path:
    """The policy YAML of bench/ with spec.upstream.baseURL pointed at the fake."""
    document: dict[str, Any] = yaml.safe_load(template.read_text())
    document.setdefault("spec", {}).setdefault("upstream", {})["baseURL"] = upstream_url
    destination.write_text(yaml.safe_dump(document, sort_keys=False))
    return destination


def sidecar_command() -> list[str]:
    script = Path(sys.executable).with_name("openai-policy-sidecar")  # the console script itself
    return [str(script)] if script.exists() else [sys.executable, "-m", "openai_policy_sidecar"]


def start_sidecar(
    name: str, policy_path: Path, workdir: Path, redis_url: str | None = None, log_level: str = "INFO"
) -> Service:
    """`openai-policy-sidecar` as users run it; its JSON access log goes to <name>.log (kept: it is
    part of the per-request cost we measure)."""
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    key_file = workdir / "upstream-api-key"
    key_file.write_text(BENCH_KEY + "\n")
    argv = [
        *sidecar_command(),
        "--policy",
        str(policy_path),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--api-key-file",
        str(key_file),
        "--log-level",
        log_level,
    ]
    if redis_url:
        argv += ["--redis-url", redis_url]
    service = Service(name, argv, workdir, env=child_env(POD_NAME=f"bench-{name}"))
    service.url = f"http://127.0.0.1:{port}/v1"
    service.admin_url = f"http://127.0.0.1:{admin_port}"
    service.start()
    service.wait_ready(f"http://127.0.0.1:{admin_port}/readyz", timeout=60)
    return service


def sidecar_counters(admin_url: str) -> dict[str, Any]:
    """What the sidecar itself counted (its Prometheus text): requests by status, refusals, cost."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    by_status: dict[str, float] = {}
    refusals = 0.0
    cost = 0.0
    added = {"sum": 0.0, "count": 0.0}
    runtime: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("openai_policy_sidecar_runtime_info{"):  # which loop and HTTP parser ran
            runtime = dict(part.split("=", 1) for part in line.split("{", 1)[1].split("}", 1)[0].split(","))
            runtime = {key: value.strip('"') for key, value in runtime.items()}
        for part in added:
            if line.startswith(f"openai_policy_added_latency_seconds_{part}{{"):
                added[part] += float(line.rsplit(" ", 1)[1])
        if line.startswith("openai_policy_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            by_status[status] = by_status.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("openai_policy_refusals_total{"):
            refusals += float(line.rsplit(" ", 1)[1])
        elif line.startswith("openai_policy_cost_usd_total{"):
            cost += float(line.rsplit(" ", 1)[1])
    return {
        "requests_by_status": {k: int(v) for k, v in by_status.items()},
        "requests": int(sum(by_status.values())),
        "refusals": int(refusals),
        "cost_usd": round(cost, 6),
        "runtime": runtime,
        # the sidecar's own measure of the time it adds (upstream excluded), mean over its life
        "self_reported_added_latency_mean_us": round(added["sum"] / added["count"] * 1e6, 1)
        if added["count"]
        else None,
    }
