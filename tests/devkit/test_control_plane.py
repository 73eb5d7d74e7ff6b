"""The local control plane is a real one: kubectl, CRDs, controllers, RBAC, webhooks on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_policy_devkit.control_plane import ApiError, ControlPlane, ControlPlaneError, find_assets
from openai_policy_devkit.managed_process import pid_alive

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.fixture.test
spec:
  group: fixture.test
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wdg]}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
"""


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Return check()'s first truthy result; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {check.__name__}")
        time.sleep(interval)


def test_kubectl_applies_a_crd_and_a_custom_resource(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", "crd/widgets.fixture.test", "--timeout=30s")
    crd = json.loads(control_plane.kubectl("get", "crd", "widgets.fixture.test", "-o", "json").stdout)
    assert crd["spec"]["group"] == "fixture.test"
    assert crd["spec"]["names"]["shortNames"] == ["wdg"]

    widget = {
        "apiVersion": "fixture.test/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(widget))
    read_back = json.loads(control_plane.kubectl("get", "wdg", "w1", "-n", namespace, "-o", "json").stdout)
    assert read_back["spec"] == {"size": 3}
    assert read_back["metadata"]["namespace"] == namespace

    # The API server enforces the CRD's schema.
    invalid = {**widget, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    result = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(invalid), check=False
    )
    assert result.returncode != 0
    assert "spec.size" in result.stderr


def test_deployment_yields_pods_and_owned_objects_are_garbage_collected(
    control_plane: ControlPlane, namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "app:test"}]},
            },
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(deployment))

    def pods() -> list[dict]:
        return control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dweb")[
            "items"
        ]

    created = eventually(lambda: len(pods()) == 2 and pods())
    owner = created[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"
    replica_set = control_plane.api(
        "GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets/{owner['name']}"
    )
    assert replica_set["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    # The ServiceAccount admission plugin ran: the pod got the namespace's default account.
    assert created[0]["spec"]["serviceAccountName"] == "default"

    control_plane.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")

    def replica_sets_left() -> list[dict]:
        return control_plane.api("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]

    eventually(lambda: not replica_sets_left() and not pods())


def test_controller_manager_publishes_the_root_ca(control_plane: ControlPlane, namespace: str) -> None:
    def root_ca() -> str | None:
        try:
            path = f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"
            return control_plane.api("GET", path)["data"]["ca.crt"]
        except ApiError as error:
            assert error.status == 404
            return None

    assert eventually(root_ca) == control_plane.ca_cert.read_text()


def test_service_account_kubeconfig_gets_exactly_what_rbac_grants(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")

    who = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert (
        json.loads(who.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:reader"
    )

    refused = control_plane.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr

    control_plane.kubectl(
        "create", "role", "read-configmaps", "--verb=get,list", "--resource=configmaps", "-n", namespace
    )
    control_plane.kubectl(
        "create", "rolebinding", "reader-reads", "--role=read-configmaps",
        f"--serviceaccount={namespace}:reader", "-n", namespace,
    )  # fmt: skip

    # RBAC reaches the authorizer through a watch: allow a moment.
    def allowed() -> bool:
        result = control_plane.kubectl(
            "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
        )
        return result.returncode == 0 and "kube-root-ca.crt" in result.stdout

    eventually(allowed, timeout=15)
    # Still nothing beyond the grant: not secrets, not other namespaces.
    for args in (("get", "secrets", "-n", namespace), ("get", "configmaps", "-n", "default")):
        result = control_plane.kubectl(*args, kubeconfig=kubeconfig, check=False)
        assert result.returncode != 0 and "Forbidden" in result.stderr, args


class _DenyingWebhook(BaseHTTPRequestHandler):
    """Validating webhook: refuses ConfigMaps whose name starts with "deny-"."""

    seen: list[str]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = review["request"]["name"]
        self.server.seen.append(name)  # type: ignore[attr-defined]
        allowed = not name.startswith("deny-")
        response = {"uid": review["request"]["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": f"webhook on 127.0.0.1 refused {name}"}
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook_server(control_plane: ControlPlane) -> Iterator[ThreadingHTTPServer]:
    pair = control_plane.issue_serving_certificate("test-webhook")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyingWebhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_api_server_calls_an_admission_webhook_on_loopback(
    control_plane: ControlPlane, namespace: str, webhook_server: ThreadingHTTPServer
) -> None:
    port = webhook_server.server_address[1]
    config_name = f"deny-configmaps-{namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [
            {
                "name": "deny.fixture.test",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate",
                    "caBundle": base64.b64encode(control_plane.ca_cert.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
            }
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(config))
    try:
        probes = iter(range(1000))

        # The API server picks the configuration up from a watch: probe until the hook is called.
        def hooked() -> bool:
            control_plane.kubectl("create", "configmap", f"probe-{next(probes)}", "-n", namespace)
            return bool(webhook_server.seen)  # type: ignore[attr-defined]

        eventually(hooked, timeout=15)
        refused = control_plane.kubectl("create", "configmap", "deny-me", "-n", namespace, check=False)
        assert refused.returncode != 0
        assert "webhook on 127.0.0.1 refused deny-me" in refused.stderr
        control_plane.kubectl("create", "configmap", "allow-me", "-n", namespace)
        assert {"deny-me", "allow-me"} <= set(webhook_server.seen)  # type: ignore[attr-defined]
    finally:
        control_plane.kubectl("delete", "validatingwebhookconfiguration", config_name, "--wait=false")


def test_namespace_deletion_completes(control_plane: ControlPlane) -> None:
    name = control_plane.create_namespace("deleted")
    control_plane.kubectl("create", "configmap", "leftover", "-n", name)
    control_plane.delete_namespace(name)

    def gone() -> bool:
        try:
            control_plane.api("GET", f"/api/v1/namespaces/{name}")
        except ApiError as error:
            return error.status == 404
        return False

    eventually(gone, timeout=60)


def test_helm_reaches_the_cluster(control_plane: ControlPlane) -> None:
    assert control_plane.helm("version", "--short").stdout.startswith("v3.")
    listed = control_plane.helm("list", "--all-namespaces", "--output", "json")
    assert json.loads(listed.stdout) == []


def test_a_second_control_plane_starts_quickly_and_leaves_no_process(kubebuilder_assets: Path) -> None:
    started = time.monotonic()
    with ControlPlane(kubebuilder_assets) as plane:
        start_seconds = time.monotonic() - started
        pids = plane.pids
        workdir = plane.workdir
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
        assert "kube-system" in plane.kubectl("get", "namespaces").stdout
    assert start_seconds < 30, f"control plane took {start_seconds:.1f}s to start"
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert plane.leftover_pids() == []
    assert workdir is not None and not workdir.exists()


def test_a_failed_start_reports_the_component_log_and_cleans_up(tmp_path: Path) -> None:
    for binary in ("kube-apiserver", "kube-controller-manager", "kubectl"):
        (tmp_path / binary).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / binary).chmod(0o755)
    (tmp_path / "etcd").write_text("#!/bin/sh\necho 'etcd: simulated failure to open data dir' >&2\nexit 3\n")
    (tmp_path / "etcd").chmod(0o755)

    plane = ControlPlane(tmp_path)
    with pytest.raises(ControlPlaneError) as failure:
        plane.start()
    try:
        message = str(failure.value)
        assert "etcd exited with code 3" in message
        assert "simulated failure to open data dir" in message
        assert plane.leftover_pids() == []
    finally:
        if plane.workdir is not None:
            shutil.rmtree(plane.workdir, ignore_errors=True)


def test_missing_assets_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(ControlPlaneError, match="make test"):
        find_assets()
    with pytest.raises(ControlPlaneError, match="lacks etcd, kube-apiserver"):
        find_assets(tmp_path)
