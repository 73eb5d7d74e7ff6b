"""Where the e2e flow runs: a real cluster with real pods, the chart installed there with real images.

The flow (e2e/test_local.py) talks to an :class:`Environment` only: a kubectl, namespaces, the
upstream, and a handle on the workload's running Pod. ``OPENAI_POLICY_E2E_CLUSTER`` names the
cluster: ``node`` (the project's own one-node cluster, e2e/node/run.sh, in ``make test``) or
``kind`` (e2e/kind/run.sh); each sets it together with KUBECONFIG and the chart's release and
namespace. Without one, the e2e tests skip and say why (OPENAI_POLICY_E2E_SKIP).
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Protocol

from e2e.kube import KubeconfigCluster, Kubectl, get_json, pods_with_label, wait_for
from e2e.upstream import InClusterUpstream, Upstream

SIDECAR = "openai-policy-proxy"
ADMIN_PORT = 8781  # the sidecar's /metrics


class RunningPod(Protocol):
    def logs(self, container: str) -> str: ...

    def sidecar_instance(self) -> tuple[Any, ...]:
        """Identifies the sidecar's running process; it changes if the sidecar restarts."""
        ...

    def sidecar_metrics(self) -> str: ...

    def stop(self) -> list[int]:
        """Stop what this handle started; returns local pids to check (none on a cluster)."""
        ...


class Environment(Protocol):
    cluster: Kubectl
    sidecar_image: str
    app_image: str  # the governed app's: Python and the openai SDK (e2e/app/Dockerfile)
    # Seconds a Secret change may take to reach a mounted file: instant locally, but a kubelet
    # refreshes Secret volumes only on its sync period (about a minute by default).
    secret_propagation_seconds: float

    def create_namespace(self, prefix: str) -> str: ...

    def upstream(self, namespace: str) -> Upstream: ...

    def run_pod(self, pod: dict[str, Any]) -> RunningPod: ...

    def diagnostics(self) -> str: ...

    def operator_logs(self) -> str: ...

    def close(self) -> None: ...


# ---- a real cluster: the chart installed by e2e/node/run.sh or e2e/kind/run.sh, real pods -----------


class ClusterRunningPod:
    def __init__(self, cluster: Kubectl, namespace: str, name: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name

    def logs(self, container: str) -> str:
        return self.cluster.kubectl(
            "logs", self.name, "-n", self.namespace, "-c", container, check=False
        ).stdout

    def sidecar_instance(self) -> tuple[Any, ...]:
        pod = get_json(self.cluster, "pod", self.name, "-n", self.namespace) or {}
        statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
        status = next((s for s in statuses if s.get("name") == SIDECAR), {})
        return (status.get("containerID"), status.get("restartCount"))

    def sidecar_metrics(self) -> str:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}:{ADMIN_PORT}/proxy/metrics"
        return self.cluster.kubectl("get", "--raw", path).stdout

    def stop(self) -> list[int]:
        return []  # the namespace's deletion removes it


class ClusterEnvironment:
    secret_propagation_seconds = 150.0

    def __init__(self, cluster: KubeconfigCluster, namespace: str, release: str) -> None:
        self.cluster = cluster
        self.release_namespace = namespace
        self.release = release
        self.namespaces: list[str] = []
        self.sidecar_image = self._sidecar_image()
        self.app_image = os.environ.get("OPENAI_POLICY_E2E_APP_IMAGE", "openai-policy-e2e-app:e2e")

    def _sidecar_image(self) -> str:
        """The image the chart's operator injects (its --sidecar-image flag); the app runs on it too."""
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        found = get_json(self.cluster, "deployments", "-n", self.release_namespace, "-l", selector) or {}
        items = found.get("items") or []
        if len(items) != 1:
            raise RuntimeError(
                f"expected one operator Deployment of release {self.release} in "
                f"{self.release_namespace}, found {len(items)}"
            )
        args = items[0]["spec"]["template"]["spec"]["containers"][0].get("args", [])
        return next(a.split("=", 1)[1] for a in args if a.startswith("--sidecar-image="))

    def create_namespace(self, prefix: str) -> str:
        name = f"{prefix[:40].rstrip('-')}-{secrets.token_hex(3)}"
        self.cluster.kubectl("create", "namespace", name)
        self.namespaces.append(name)
        wait_for(
            lambda: get_json(self.cluster, "serviceaccount", "default", "-n", name),
            60,
            f"the default ServiceAccount of {name}",
        )
        return name

    def upstream(self, namespace: str) -> Upstream:
        upstream = InClusterUpstream(self.cluster, namespace, self.sidecar_image)
        upstream.deploy()
        return upstream

    def run_pod(self, pod: dict[str, Any]) -> RunningPod:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]

        def app_running() -> bool:
            current = get_json(self.cluster, "pod", name, "-n", namespace) or {}
            statuses = (current.get("status") or {}).get("containerStatuses") or []
            return any(s.get("name") == "app" and "running" in (s.get("state") or {}) for s in statuses)

        wait_for(app_running, 180, f"Pod {namespace}/{name} to run its app", 1.0)
        return ClusterRunningPod(self.cluster, namespace, name)

    def diagnostics(self) -> str:
        return "---- operator logs (tail) ----\n" + self.operator_logs(tail=100)

    def operator_logs(self, tail: int = -1) -> str:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        pods = pods_with_label(self.cluster, self.release_namespace, selector)
        return "\n".join(
            self.cluster.kubectl(
                "logs", p["metadata"]["name"], "-n", self.release_namespace, f"--tail={tail}", check=False
            ).stdout
            for p in pods
        )

    def close(self) -> None:
        for name in self.namespaces:
            self.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


CLUSTERS = ("node", "kind")


def cluster_from_environment() -> ClusterEnvironment | str:
    """The cluster the run scripts prepared, or the reason there is none."""
    flavour = os.environ.get("OPENAI_POLICY_E2E_CLUSTER", "")
    if flavour not in CLUSTERS:
        return os.environ.get(
            "OPENAI_POLICY_E2E_SKIP",
            "no real cluster: run `make test` (as root: e2e/node/run.sh brings up a real node) or e2e/kind/run.sh",
        )
    return ClusterEnvironment(
        KubeconfigCluster(),
        os.environ["OPENAI_POLICY_E2E_NAMESPACE"],
        os.environ["OPENAI_POLICY_E2E_RELEASE"],
    )
