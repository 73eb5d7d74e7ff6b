"""The chart, installed with helm into the local control plane, and its operator run locally.

What runs is what the chart renders: ``helm install`` stores the operator Deployment, the
controller-manager creates its Pods, and :class:`~openai_policy_devkit.pod_runner.LocalPod` runs one of
them (its args, env and volumes as stored) with the chart's ServiceAccount credentials, so the
chart's RBAC is what the operator has. Three things stand in for what a node and its network
would do, and nothing else:

* the image entrypoints are the console scripts installed in this virtualenv;
* the webhook's serving certificate is re-issued for 127.0.0.1 by the control plane's CA (the
  chart's is for the Service's DNS names, which nothing resolves here), written into the chart's
  own TLS Secret before the operator starts;
* the chart's MutatingWebhookConfiguration keeps its rules and selectors, but its clientConfig
  points at the operator's port on 127.0.0.1 instead of the Service (no kube-proxy routes a
  ClusterIP here).
"""

from __future__ import annotations

import base64
import secrets
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config

from e2e.kube import get_json, pods_with_label, wait_for
from openai_policy_devkit.control_plane import ControlPlane
from openai_policy_devkit.pod_runner import LocalPod

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "openai-policy-operator"
IMAGE_TAG = "local"
OPERATOR_IMAGE = f"openai-policy-operator:{IMAGE_TAG}"
SIDECAR_IMAGE = f"openai-policy-sidecar:{IMAGE_TAG}"
WEBHOOK_POD_PORT = 9443  # values.yaml operator.ports.webhook
HEALTH_POD_PORT = 8080  # values.yaml operator.ports.health
BIN = Path(sys.executable).parent


def image_commands() -> dict[str, list[str]]:
    """Each image's ENTRYPOINT (see the Dockerfiles), as installed in this virtualenv."""
    return {
        OPERATOR_IMAGE: [str(BIN / "openai-policy-operator")],
        SIDECAR_IMAGE: [str(BIN / "openai-policy-sidecar")],
    }


class LocalStack:
    """helm install + the operator's Pod run locally. ``start()``/``stop()``, or use ``with``."""

    def __init__(
        self,
        control_plane: ControlPlane,
        redis_url: str,
        workdir: Path,
        *,
        release: str | None = None,
        namespace: str | None = None,
        status_interval: int = 1,
        log: Callable[[str], None] = lambda message: None,
        redis_operator_password: str | None = None,
    ) -> None:
        self.cp = control_plane
        self.redis_url = redis_url
        # With a password: the chart's external-Redis mode with redis.existingSecret, the operator
        # logging in as its ACL user and every policy's sidecars as their own.
        self.redis_operator_password = redis_operator_password
        self.workdir = workdir
        suffix = secrets.token_hex(3)
        # Unique names: the chart's cluster-scoped objects must not collide with another install.
        self.release = release or f"e2e-{suffix}"
        self.namespace = namespace or f"openai-policy-system-{suffix}"
        self.status_interval = status_interval
        self.log = log
        self.api_client: Any = None
        self.operator: LocalPod | None = None
        self.webhook_configuration = ""
        self.installed = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalStack:
        try:
            self.install()
            self.start_operator()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, uninstall: bool = True) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        if self.installed and uninstall:
            self.cp.helm(
                "uninstall",
                self.release,
                "--namespace",
                self.namespace,
                "--wait",
                "--timeout",
                "60s",
                check=False,
            )
            self.installed = False
        if self.api_client is not None:
            self.api_client.close()
            self.api_client = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps --------------------------------------------------------------------------

    def install(self) -> None:
        self.log(f"helm install {self.release} {CHART.relative_to(ROOT)} --namespace {self.namespace}")
        auth: list[str] = []
        if self.redis_operator_password is not None:
            secret = f"{self.release}-redis-credentials"
            self.cp.kubectl("create", "namespace", self.namespace)
            self.cp.kubectl(
                "create", "secret", "generic", secret, "-n", self.namespace,
                "--from-file", f"operator-password={self._password_file()}",
            )  # fmt: skip
            auth = ["--set", f"redis.existingSecret={secret}"]
        self.cp.helm(
            "install",
            self.release,
            str(CHART),
            "--namespace",
            self.namespace,
            "--create-namespace",
            "--set",
            f"operator.image.tag={IMAGE_TAG}",
            "--set",
            f"sidecar.image.tag={IMAGE_TAG}",
            # The external-Redis mode of the chart: our redis-server instead of the bundled Deployment.
            "--set",
            f"redis.url={self.redis_url}",
            "--set",
            f"operator.statusIntervalSeconds={self.status_interval}",
            *auth,
        )
        self.installed = True
        self.api_client = k8s_config.new_client_from_config(config_file=str(self.cp.kubeconfig))

    def _password_file(self) -> Path:
        path = self.workdir / "redis-operator-password"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.redis_operator_password or "")
        path.chmod(0o600)
        return path

    def operator_pod(self, timeout: float = 60.0) -> dict[str, Any]:
        """One of the operator Pods the controller-manager created from the chart's Deployment."""
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        return wait_for(
            lambda: next(iter(pods_with_label(self.cp, self.namespace, selector)), None),
            timeout,
            "the chart's operator Pod to be created",
        )

    def start_operator(self) -> None:
        pod = self.operator_pod()
        spec = pod["spec"]
        tls_secret = next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
        self._serve_tls_on_loopback(tls_secret)
        # The operator authenticates exactly as the chart's ServiceAccount would in a cluster.
        kubeconfig = self.cp.service_account_kubeconfig(self.namespace, spec["serviceAccountName"])
        self.log(
            f"starting the operator from Pod {pod['metadata']['name']} as "
            f"system:serviceaccount:{self.namespace}:{spec['serviceAccountName']}"
        )
        self.operator = LocalPod(
            self.api_client,
            self.namespace,
            pod["metadata"]["name"],
            self.workdir / "operator",
            image_commands=image_commands(),
            extra_env={"KUBECONFIG": str(kubeconfig)},
        )
        self.operator.start()
        port = self.operator.host_port(WEBHOOK_POD_PORT)
        wait_for(lambda: self._webhook_answers(port), 60, "the operator's webhook to serve TLS", interval=0.2)
        self._point_webhook_at(port)

    # -- the loopback stand-ins for Service routing ---------------------------------------

    def _serve_tls_on_loopback(self, secret_name: str) -> None:
        pair = self.cp.issue_serving_certificate(f"{self.release}-webhook")
        data = {
            "tls.crt": pair.cert.read_bytes(),
            "tls.key": pair.key.read_bytes(),
            "ca.crt": self.cp.ca_cert.read_bytes(),
        }
        secret = self.cp.api("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{secret_name}")
        secret["data"] = {key: base64.b64encode(value).decode() for key, value in data.items()}
        self.cp.api("PUT", f"/api/v1/namespaces/{self.namespace}/secrets/{secret_name}", secret)

    def _webhook_answers(self, port: int) -> bool:
        assert self.operator is not None
        process = self.operator.containers["operator"].process
        if process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {process.returncode}:\n{self.operator_logs()[-5000:]}"
            )
        context = ssl.create_default_context(cafile=str(self.cp.ca_cert))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                    return True
        except OSError:
            return False

    def _point_webhook_at(self, port: int) -> None:
        selector = f"app.kubernetes.io/instance={self.release}"
        found = get_json(self.cp, "mutatingwebhookconfigurations", "-l", selector) or {}
        items = found.get("items") or []
        assert len(items) == 1, f"expected the chart's one MutatingWebhookConfiguration, found {len(items)}"
        config = items[0]
        self.webhook_configuration = config["metadata"]["name"]
        ca_bundle = base64.b64encode(self.cp.ca_cert.read_bytes()).decode()
        for hook in config["webhooks"]:
            path = hook["clientConfig"].get("service", {}).get("path", "/")
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
        self.cp.api(
            "PUT",
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
            f"{self.webhook_configuration}",
            config,
        )

    # -- introspection ------------------------------------------------------------------

    def operator_logs(self) -> str:
        return (
            self.operator.logs("operator") if self.operator and "operator" in self.operator.containers else ""
        )

    def pids(self) -> list[int]:
        return self.operator.pids() if self.operator else []
