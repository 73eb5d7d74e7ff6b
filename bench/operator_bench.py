"""Operator benchmark: apply->Ready with 100 policies, webhook latency over 1,000 pods, operator RSS.

    KUBEBUILDER_ASSETS=... .venv/bin/python bench/operator_bench.py [--policies 100] [--pods 1000]
                                                                   [--out bench/results/operator.json]

Everything runs on this machine (etcd, kube-apiserver, kube-controller-manager, redis-server, the
operator and this load generator share the cores). Webhook latency is what the API server reports
(apiserver_admission_webhook_admission_duration_seconds, a histogram: percentiles are bucket upper
bounds) next to the client's pod-create latency (admission included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The same control plane and Redis the tests use.
from openai_policy_devkit.control_plane import ControlPlane
from openai_policy_devkit.managed_process import free_port
from openai_policy_devkit.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]

GROUPS = 10  # namespaces; each holds policies/GROUPS policies with disjoint selectors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def webhook_histogram(cp: ControlPlane) -> dict[float, float]:
    text = cp.kubectl("get", "--raw", "/metrics").stdout
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if (
            line.startswith("apiserver_admission_webhook_admission_duration_seconds_bucket")
            and 'operation="CREATE"' in line
            and 'type="admit"' in line
        ):
            le = re.search(r'le="([^"]+)"', line).group(1)
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0) + float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_percentile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    counts = sorted((b, after.get(b, 0) - before.get(b, 0)) for b in after)
    total = counts[-1][1] if counts else 0
    if not total:
        return None
    return next(bound for bound, cumulative in counts if cumulative >= q * total)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--status-interval", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cp = ControlPlane(os.environ.get("KUBEBUILDER_ASSETS")).start()
    redis = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="oaip-operator-bench-"))
    log_path = workdir / "operator.log"
    operator = None
    try:
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "openaipolicies.openaipolicy.dev.yaml"))
        deadline = time.monotonic() + 60
        while not any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (
                cp.api(
                    "GET",
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/openaipolicies.openaipolicy.dev",
                ).get("status")
                or {}
            ).get("conditions")
            or []
        ):
            assert time.monotonic() < deadline, "CRD not established"
            time.sleep(0.1)
        time.sleep(1)
        port = free_port()
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openai_policy_operator",
                    "--standalone",
                    "--redis-url",
                    redis.url,
                    "--webhook-listen",
                    f"127.0.0.1:{port}",
                    "--manage-webhook-configuration",
                    "oaip-bench",
                    "--status-interval",
                    str(args.status_interval),
                    "--cert-dir",
                    str(workdir / "certs"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while cp.kubectl("get", "mutatingwebhookconfiguration", "oaip-bench", check=False).returncode:
            assert operator.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        rss_idle = rss_kib(operator.pid)

        namespaces = [
            cp.create_namespace(f"bench-{g}", labels={"openaipolicy.dev/injection": "enabled"})
            for g in range(GROUPS)
        ]
        ready_times: list[float] = []
        for i in range(args.policies):
            ns, app = namespaces[i % GROUPS], f"app-{i // GROUPS}"
            body = {
                "apiVersion": "openaipolicy.dev/v1alpha1",
                "kind": "OpenAIPolicy",
                "metadata": {"name": f"p{i}", "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": {"app": app}},
                    "budget": {"limits": [{"window": "month", "usd": 100}]},
                },
            }
            path = f"/apis/openaipolicy.dev/v1alpha1/namespaces/{ns}/openaipolicies"
            started = time.monotonic()
            cp.api("POST", path, body)
            while True:
                status = cp.api("GET", f"{path}/p{i}").get("status") or {}
                if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])):
                    break
                if time.monotonic() - started > 30:
                    raise TimeoutError(f"policy p{i} not Ready in 30 s")
                time.sleep(0.01)
            ready_times.append(time.monotonic() - started)

        before = webhook_histogram(cp)
        cpu_before, wall_before = cpu_seconds(operator.pid), time.monotonic()

        def create(i: int) -> float:
            ns = namespaces[i % GROUPS]
            app = f"app-{(i // GROUPS) % (args.policies // GROUPS)}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"pod-{i}", "namespace": ns, "labels": {"app": app}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            }
            started = time.monotonic()
            stored = cp.api("POST", f"/api/v1/namespaces/{ns}/pods", pod)
            elapsed = time.monotonic() - started
            assert stored["spec"]["initContainers"][0]["name"] == "openai-policy-proxy", stored
            return elapsed

        with ThreadPoolExecutor(4) as pool:
            create_times = list(pool.map(create, range(args.pods)))
        pods_wall = time.monotonic() - wall_before
        after = webhook_histogram(cp)
        time.sleep(2 * args.status_interval)  # let the status timers count the injected pods
        cpu_after, wall_after = cpu_seconds(operator.pid), time.monotonic()
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "policies": args.policies,
            "pods": args.pods,
            "status_interval_s": args.status_interval,
            "apply_to_ready_s": {
                "p50": percentile(ready_times, 0.5),
                "p99": percentile(ready_times, 0.99),
                "max": max(ready_times),
                "mean": statistics.mean(ready_times),
            },
            "webhook_apiserver_s": {
                "p50_le": histogram_percentile(before, after, 0.5),
                "p99_le": histogram_percentile(before, after, 0.99),
            },
            "pod_create_s": {
                "p50": percentile(create_times, 0.5),
                "p99": percentile(create_times, 0.99),
                "throughput_per_s": args.pods / pods_wall,
                "client_threads": 4,
            },
            "operator_rss_mib": {"idle": rss_idle / 1024, "loaded": rss_kib(operator.pid) / 1024},
            "operator_cpu_percent_during_pods_and_timers": 100
            * (cpu_after - cpu_before)
            / (wall_after - wall_before),
        }
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
        redis.close()
        cp.stop()


if __name__ == "__main__":
    main()
