"""What only real pods show: a kubelet starting containers in order, the filesystems of separate
containers, two operator replicas electing a leader, a rolling update, a Redis pod restart.

Runs on the cluster the run script prepared (e2e/node/run.sh in ``make test``, e2e/kind/run.sh);
skips with the reason where there is none. The disruptive checks (Redis restart, leader killed,
operator rolled) come last, each waiting until the release is whole again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.environments import SIDECAR, ClusterEnvironment
from e2e.kube import condition, get_json, pods_with_label, wait_for
from e2e.upstream import FAKE_NAME, FAKE_PORT
from e2e.workload import APP_LABEL, Workload, client_records, deploy, label_for_injection, stored_pod

KEY = "sk-e2e-real-pods-" + secrets.token_hex(12)
OPERATOR = "app.kubernetes.io/component=operator"
REDIS = "app.kubernetes.io/component=redis"

pytestmark = pytest.mark.timeout(600)


class Governed:
    """One governed Deployment (the e2e app on the SDK, its sidecar injected) in its own namespace."""

    def __init__(self, env: ClusterEnvironment) -> None:
        self.env = env
        self.cluster = env.cluster
        self.namespace = env.create_namespace("e2e-real-pods")
        self.upstream = env.upstream(self.namespace)
        self.workload = Workload(
            self.namespace,
            api_key=KEY,
            upstream=self.upstream.base_url,
            budget_usd=100,
            client_args=["--interval", "0.5", "--max-tokens", "20"],
            image=env.app_image,
        )
        label_for_injection(self.cluster, self.namespace)
        deploy(self.cluster, self.workload)
        self.pod_name = stored_pod(self.cluster, self.namespace)["metadata"]["name"]
        self.env.run_pod({"metadata": {"namespace": self.namespace, "name": self.pod_name}})

    def pod(self) -> dict[str, Any]:
        return get_json(self.cluster, "pod", self.pod_name, "-n", self.namespace) or {}

    def logs(self, container: str) -> str:
        return self.cluster.kubectl(
            "logs", self.pod_name, "-n", self.namespace, "-c", container, check=False
        ).stdout

    def policy(self) -> dict[str, Any]:
        return get_json(self.cluster, "oaip", self.workload.policy, "-n", self.namespace) or {}


@pytest.fixture(scope="module")
def env(environment: ClusterEnvironment) -> ClusterEnvironment:
    return environment


@pytest.fixture(scope="module")
def governed(env: ClusterEnvironment) -> Governed:
    return Governed(env)


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _log_times(text: str, needle: str) -> list[float]:
    times = []
    for line in text.splitlines():
        if needle in line and line.startswith("{"):
            times.append(float(json.loads(line)["time"]))
    return times


def test_app_starts_only_after_the_sidecars_startup_probe_passes(governed: Governed) -> None:
    pod = governed.pod()
    spec_sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR)
    assert spec_sidecar["restartPolicy"] == "Always" and spec_sidecar["startupProbe"]
    sidecar = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == SIDECAR)
    app = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "app")
    assert sidecar["started"] is True and sidecar["restartCount"] == 0
    assert _time(app["state"]["running"]["startedAt"]) >= _time(sidecar["state"]["running"]["startedAt"])
    # The sidecar's own clock: it was listening before the app's process began at all ...
    listening = _log_times(governed.logs(SIDECAR), "sidecar listening on")
    started = [r["time"] for r in _records_with_event(governed.logs("app"), "start")]
    assert listening and started, "no start lines to compare"
    assert started[0] >= listening[0], f"app started at {started[0]}, sidecar listening at {listening[0]}"
    # ... so the app's first call got the proxy's answer, not a refused connection.
    first = wait_for(lambda: client_records(governed.logs("app"))[:1], 60, "the app's first call")[0]
    assert first.get("ok") or first.get("status") is not None, first  # an answer, not a connection error


def _records_with_event(logs: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in logs.splitlines():
        if line.startswith("{") and f'"event":"{event}"' in line.replace(" ", ""):
            out.append(json.loads(line))
    return out


def _container_root(pod: dict[str, Any], name: str) -> Path:
    """A running container's filesystem as its own processes see it, from the node's side: the
    root of a process in the container's cgroup (the kubelet names it after the container's id)."""
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    container_id = next(s for s in statuses if s["name"] == name)["containerID"].split("://", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and container_id in (proc / "cgroup").read_text():
                return proc / "root"
        except OSError:
            continue
    raise AssertionError(f"no process of container {name} ({container_id[:12]}) on this node")


def _files_holding(root: Path, digest: str) -> list[str]:
    """Files under root (not /proc, /sys, /dev) whose content is the key, compared by SHA-256."""
    hits = []
    for top, dirs, files in os.walk(root):
        relative = "/" + os.path.relpath(top, root).lstrip(".")
        if relative in ("/proc", "/sys", "/dev"):
            dirs[:] = []
            continue
        for name in files:
            path = Path(top) / name
            try:
                if path.is_symlink() or path.stat().st_size > 4096:
                    continue
                if hashlib.sha256(path.read_bytes().strip()).hexdigest() == digest:
                    hits.append(str(Path(relative) / name))
            except OSError:
                continue
    return hits


@pytest.mark.skipif(
    os.environ.get("OPENAI_POLICY_E2E_CLUSTER") != "node",
    reason="reads the containers' filesystems from the node's side (the project's own node only)",
)
def test_the_key_file_is_in_the_sidecar_container_and_in_no_other(governed: Governed) -> None:
    """Not through kubectl exec: the chart's admission policy refuses exec into the sidecar."""
    pod = governed.pod()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    in_sidecar = _files_holding(_container_root(pod, SIDECAR), digest)
    assert in_sidecar, "the sidecar has no file with the key"
    in_app = _files_holding(_container_root(pod, "app"), digest)
    assert in_app == [], f"the app's filesystem holds the key at {in_app}"


def test_exec_into_the_sidecar_is_refused(governed: Governed) -> None:
    refused = governed.cluster.kubectl(
        "exec", governed.pod_name, "-n", governed.namespace, "-c", SIDECAR, "--", "true", check=False
    )
    assert refused.returncode != 0 and "holds the API key" in refused.stderr, refused.stderr


STALL_SECONDS = 6.0


def test_pod_deletion_drains_an_inflight_stream_within_the_grace_period(env: ClusterEnvironment) -> None:
    """Deleting a pod mid-stream: the app gets SIGTERM first and finishes its stream through the
    sidecar, which the kubelet stops only after the app has exited; all within the grace period."""
    namespace = env.create_namespace("e2e-drain")
    upstream = env.upstream(namespace)
    # Every stream stalls after its first event, so one is always in flight.
    fault = {"kind": "stall_stream", "times": None, "after_events": 1, "seconds": STALL_SECONDS}
    env.cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/services/{FAKE_NAME}:{FAKE_PORT}/proxy/_fake/faults",
        "-f", "-", input=json.dumps(fault),
    )  # fmt: skip
    workload = Workload(
        namespace,
        api_key=KEY,
        upstream=upstream.base_url,
        budget_usd=100,
        client_args=["--stream", "--interval", "0", "--max-tokens", "20", "--timeout", "60"],
        image=env.app_image,
    )
    label_for_injection(env.cluster, namespace)
    deploy(env.cluster, workload)
    pod = stored_pod(env.cluster, namespace)["metadata"]["name"]
    env.run_pod({"metadata": {"namespace": namespace, "name": pod}})
    grace = (get_json(env.cluster, "pod", pod, "-n", namespace) or {})["spec"][
        "terminationGracePeriodSeconds"
    ]
    # The app's log, followed: it outlives the Pod object.
    follower = subprocess.Popen(
        [
            env.cluster.binary,
            f"--kubeconfig={env.cluster.kubeconfig}",
            "logs",
            "-f",
            pod,
            "-n",
            namespace,
            "-c",
            "app",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: [r for r in client_records(governed_logs(env, namespace, pod)) if r.get("ok")],
            60,
            "a first stream to finish",
            0.5,
        )
        time.sleep(1.0)  # the next stream has begun and stalls
        deleted_at, started = time.time(), time.monotonic()
        env.cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")
        wait_for(
            lambda: get_json(env.cluster, "pod", pod, "-n", namespace) is None,
            grace + 30,
            "the pod to go",
            0.5,
        )
        gone = time.monotonic() - started
        output, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    records = client_records(output)
    in_flight = [r for r in records if r["time"] < deleted_at < r["time"] + r["seconds"]]
    assert in_flight, f"no request was in flight at the deletion: {records[-3:]}"
    assert all(r.get("ok") and r.get("finish_reason") for r in in_flight), in_flight
    assert '"event":"stop"' in output, "the app did not exit on its own after draining"
    assert gone < grace, f"the pod took {gone:.1f} s to go, past its grace period of {grace} s"
    print(f"drain: pod gone {gone:.1f} s after deletion (grace {grace} s), the in-flight stream finished")


def governed_logs(env: ClusterEnvironment, namespace: str, pod: str) -> str:
    return env.cluster.kubectl("logs", pod, "-n", namespace, "-c", "app", check=False).stdout


def _selector(env: ClusterEnvironment, component: str) -> str:
    return f"app.kubernetes.io/instance={env.release},{component}"


def _release_pods(env: ClusterEnvironment, component: str) -> list[dict[str, Any]]:
    return pods_with_label(env.cluster, env.release_namespace, _selector(env, component))


def _redis(env: ClusterEnvironment, *command: str) -> str:
    pod = _release_pods(env, REDIS)[0]
    script = 'REDISCLI_AUTH="$(cat /run/secrets/redis-auth/password)" exec redis-cli --no-auth-warning "$@"'
    return env.cluster.kubectl(
        "exec", pod["metadata"]["name"], "-n", env.release_namespace, "-c", "redis", "--",
        "sh", "-c", script, "redis-cli", *command,
    ).stdout  # fmt: skip


def _durable_keys(env: ClusterEnvironment, namespace: str) -> dict[str, str]:
    """Each key of the namespace's policy that is meant to last (no TTL, or more than 10 min), by its DUMP."""
    out = {}
    for key in _redis(env, "--scan", "--pattern", f"*{namespace}*").split():
        ttl = int(_redis(env, "PTTL", key).strip())
        if ttl == -1 or ttl > 600_000:
            out[key] = _redis(env, "--no-raw", "DUMP", key)
    return out


def test_a_redis_pod_restart_keeps_spend(env: ClusterEnvironment, governed: Governed) -> None:
    wait_for(
        lambda: (
            float(next(w for w in governed.policy()["status"]["spend"] if w["window"] == "day")["usd"]) > 0
        ),
        60,
        "spend to be recorded",
        0.5,
    )
    # Freeze the spend: no app, no new calls, nothing for Redis to change.
    env.cluster.kubectl("scale", "deployment", APP_LABEL, "-n", governed.namespace, "--replicas=0")
    wait_for(
        lambda: not pods_with_label(env.cluster, governed.namespace, f"app={APP_LABEL}"),
        90,
        "the app to stop",
    )
    time.sleep(2)  # appendfsync everysec: the last writes reach the file within a second
    before = _durable_keys(env, governed.namespace)
    assert before, "no durable key of the policy in Redis"
    pod = _release_pods(env, REDIS)[0]
    uid = pod["metadata"]["uid"]
    env.cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", env.release_namespace)

    def restarted() -> bool:
        pods = _release_pods(env, REDIS)
        return bool(pods) and pods[0]["metadata"]["uid"] != uid and _ready(pods[0])

    wait_for(restarted, 120, "the Redis pod to come back", 1.0)
    after = _durable_keys(env, governed.namespace)
    assert {k: after.get(k) for k in before} == before, "Redis lost or changed spend across its restart"


def _ready(pod: dict[str, Any]) -> bool:
    found = condition(pod, "Ready")
    return bool(found and found.get("status") == "True")


def _operator_pods(env: ClusterEnvironment) -> list[dict[str, Any]]:
    pods = _release_pods(env, OPERATOR)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _logs(env: ClusterEnvironment, pod: str) -> str:
    return env.cluster.kubectl("logs", pod, "-n", env.release_namespace, check=False).stdout


def _leader(env: ClusterEnvironment) -> str | None:
    """The replica the others pause for: each follower logs whom it pauses in favour of."""
    names = {p["metadata"]["name"] for p in _operator_pods(env) if _ready(p)}
    for name in names:
        text = _logs(env, name)
        paused = text.rfind("Pausing operations in favour of")
        resumed = text.rfind("Resuming operations")
        if paused > resumed:
            line = text[paused:].splitlines()[0]
            leader = next((other for other in names if f"<Peer {other}:" in line), None)
            if leader:
                return leader
    return None


def _new_policy_is_reconciled(env: ClusterEnvironment, timeout: float) -> float:
    """Create a policy in a fresh namespace; return how long until the leader made it Ready."""
    namespace = env.create_namespace("e2e-leader")
    workload = Workload(namespace, api_key=KEY, budget_usd=1)
    started = time.monotonic()
    deploy(env.cluster, workload)

    def ready() -> bool:
        found = condition(get_json(env.cluster, "oaip", workload.policy, "-n", namespace) or {}, "Ready")
        return bool(found and found.get("status") == "True")

    wait_for(ready, timeout, f"policy {namespace}/{workload.policy} to be reconciled", 0.5)
    return time.monotonic() - started


def test_two_replicas_elect_one_leader_and_killing_it_hands_over(env: ClusterEnvironment) -> None:
    replicas = wait_for(
        lambda: [p for p in _operator_pods(env) if _ready(p)][:2] if len(_operator_pods(env)) >= 2 else None,
        120,
        "two operator replicas",
    )
    assert len(replicas) == 2
    leader = wait_for(lambda: _leader(env), 60, "one replica to pause in favour of the other")
    assert leader in {p["metadata"]["name"] for p in replicas}
    deleted = time.monotonic()
    env.cluster.kubectl("delete", "pod", leader, "-n", env.release_namespace, "--wait=false")
    # Gone, not just terminating: whatever reconciles the new policy is another replica.
    wait_for(
        lambda: get_json(env.cluster, "pod", leader, "-n", env.release_namespace) is None,
        120,
        "the leader to go",
    )
    seconds = _new_policy_is_reconciled(env, 120) + (time.monotonic() - deleted)
    print(f"handover: a new policy reconciled {seconds:.1f} s after the leader {leader} was deleted")


def test_a_rolling_update_of_the_operator_keeps_admission_working(
    env: ClusterEnvironment, governed: Governed
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "admission-",
            "namespace": governed.namespace,
            "labels": {"app": APP_LABEL},
        },
        "spec": governed.workload.deployment()["spec"]["template"]["spec"],
    }
    name = env.cluster.kubectl(
        "get", "deployment", "-n", env.release_namespace, "-l", _selector(env, OPERATOR),
        "-o", "jsonpath={.items[0].metadata.name}",
    ).stdout  # fmt: skip
    env.cluster.kubectl("rollout", "restart", f"deployment/{name}", "-n", env.release_namespace)
    outcomes: list[bool] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        created = env.cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod), check=False
        )
        injected = created.returncode == 0 and any(
            c["name"] == SIDECAR for c in json.loads(created.stdout)["spec"].get("initContainers", [])
        )
        outcomes.append(injected)
        status = env.cluster.kubectl(
            "rollout",
            "status",
            f"deployment/{name}",
            "-n",
            env.release_namespace,
            "--timeout=1s",
            check=False,
        )
        if status.returncode == 0 and len(outcomes) >= 5:
            break
        time.sleep(0.3)
    assert len(outcomes) >= 5, "the rollout ended before any admission was tried"
    print(
        f"rolling update: {len(outcomes)} admissions tried during the rollout, {outcomes.count(True)} injected"
    )
    assert all(outcomes), (
        f"{outcomes.count(False)} of {len(outcomes)} pods created during the rollout were not injected"
    )
