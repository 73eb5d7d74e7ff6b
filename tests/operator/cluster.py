"""Helpers for tests against a real control plane: apply and read resources, wait for
conditions, and run the operator as a subprocess with exactly its RBAC rules."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from openai_policy_devkit.control_plane import ApiError
from openai_policy_devkit.managed_process import free_port
from openai_policy_operator import names, rbac

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "openaipolicies.openaipolicy.dev.yaml"


def wait_for(
    check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class OperatorProcess:
    """``openai-policy-operator`` as a subprocess, logging to a file the failures show."""

    def __init__(self, argv: list[str], kubeconfig: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "openai_policy_operator", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def wait_established(control_plane, crd_name: str) -> None:
    # Polled rather than `kubectl wait`, which fails while a fresh CRD has no conditions at all.
    def established() -> bool:
        body = get_json(control_plane, "crd", crd_name) or {}
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (body.get("status") or {}).get("conditions") or []
        )

    wait_for(established, 30.0, 0.1, f"CRD {crd_name} to be established")


@contextlib.contextmanager
def running_operator(
    control_plane,
    redis_url: str,
    workdir: Path,
    *,
    extra: tuple[str, ...] = ("--standalone",),
    hook: str | None = None,
    validating: bool = False,
) -> Iterator[dict[str, Any]]:
    """An operator process authenticated as a ServiceAccount holding exactly our RBAC rules.

    ``validating``: it also registers its validating webhook (the admission rules' fallback for
    clusters without ValidatingAdmissionPolicy)."""
    suffix = secrets.token_hex(3)
    system_ns = control_plane.create_namespace("oaip-system")
    role = f"openai-policy-operator-test-{suffix}"
    hook = hook or f"openai-policy-injector-test-{suffix}"
    validating_hook = f"openai-policy-validator-test-{suffix}" if validating else None
    if validating_hook:
        extra = (*extra, "--manage-validating-webhook-configuration", validating_hook)
    control_plane.kubectl("create", "serviceaccount", "operator", "-n", system_ns)
    manifests = [
        rbac.cluster_role(role, webhook_configuration=hook, validating_configuration=validating_hook),
        rbac.cluster_role_binding(role, system_ns, "operator"),
    ]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    kubeconfig = control_plane.service_account_kubeconfig(system_ns, "operator")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = OperatorProcess(
        [
            *extra,
            "--redis-url",
            redis_url,
            "--operator-namespace",
            system_ns,
            "--webhook-listen",
            f"127.0.0.1:{port}",
            "--cert-dir",
            str(workdir / "certs"),
            "--manage-webhook-configuration",
            hook,
            "--status-interval",
            "1",
            "--sidecar-image",
            "sidecar:test",
        ],
        kubeconfig,
        workdir / "operator.log",
    )

    def webhook_ready() -> bool:
        assert proc.process.poll() is None, f"operator exited:\n{proc.logs()}"
        result = control_plane.kubectl("get", "mutatingwebhookconfiguration", hook, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        config = json.loads(result.stdout)["webhooks"][0]["clientConfig"]
        ready = bool(config.get("caBundle")) and str(port) in config.get("url", "")
        if validating_hook:
            ready = ready and bool(get_json(control_plane, "validatingwebhookconfiguration", validating_hook))
        return ready

    try:
        wait_for(webhook_ready, 60, 0.2, "the operator to register its webhook")
        # Warm up: one policy handled end to end means the watches are established, so the
        # timing promises the tests check measure the operator, not its start-up.
        apply_policy(control_plane, system_ns, "warm-up", {"selector": {"matchLabels": {"app": "warm-up"}}})
        wait_for(
            lambda: (condition(control_plane, system_ns, "warm-up", "Ready") or {}).get("status") == "True",
            60,
            0.1,
            "the warm-up policy to become Ready",
        )
        yield {
            "process": proc,
            "kubeconfig": kubeconfig,
            "system_ns": system_ns,
            "port": port,
            "service_account": f"system:serviceaccount:{system_ns}:operator",
            "webhook": hook,
            "validating_webhook": validating_hook,
            "certfile": workdir / "certs" / "tls.crt",
        }
    finally:
        proc.stop()
        control_plane.kubectl(
            "delete", "mutatingwebhookconfiguration", hook, "--ignore-not-found", check=False
        )
        if validating_hook:
            control_plane.kubectl(
                "delete", "validatingwebhookconfiguration", validating_hook, "--ignore-not-found", check=False
            )
        control_plane.kubectl(
            "delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False
        )
        control_plane.delete_namespace(system_ns)
        print(proc.logs()[-20000:])  # shown by pytest for a failing test


def apply_policy(control_plane, namespace: str, name: str, spec: dict[str, Any]) -> None:
    doc = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(doc))


def get_json(control_plane, *args: str) -> dict[str, Any] | None:
    result = control_plane.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def api_get(control_plane, path: str) -> dict[str, Any] | None:
    """A GET straight to the API server (no kubectl process: quick enough to poll timing promises)."""
    try:
        return control_plane.api("GET", path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def get_policy(control_plane, namespace: str, name: str) -> dict[str, Any] | None:
    return api_get(control_plane, f"/apis/{names.API_VERSION}/namespaces/{namespace}/{names.PLURAL}/{name}")


def get_configmap(control_plane, namespace: str, name: str) -> dict[str, Any] | None:
    return api_get(control_plane, f"/api/v1/namespaces/{namespace}/configmaps/{name}")


def condition(control_plane, namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
    body = get_policy(control_plane, namespace, name) or {}
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def wait_condition(
    control_plane,
    namespace: str,
    name: str,
    ctype: str,
    status: str,
    timeout: float,
    reason: str | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = condition(control_plane, namespace, name, ctype)
        if found and found["status"] == status and (reason is None or found["reason"] == reason):
            return found
        return None

    return wait_for(check, timeout, 0.05, f"{ctype}={status} on {namespace}/{name}")


def events(control_plane, namespace: str) -> list[dict[str, Any]]:
    return (get_json(control_plane, "events", "-n", namespace) or {}).get("items", [])


def kubectl_get_row(control_plane, *args: str) -> dict[str, str]:
    """The printer columns of ``kubectl get`` for one object, by header (values may contain spaces)."""
    lines = control_plane.kubectl("get", *args).stdout.splitlines()
    header, values = lines[0], lines[1]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): values[a:b].strip() for a, b in zip(starts, bounds, strict=True)}


def label_for_injection(control_plane, namespace: str) -> None:
    control_plane.kubectl(
        "label", "namespace", namespace, f"{names.NAMESPACE_INJECTION_LABEL}=enabled", "--overwrite"
    )


def create_pod(
    control_plane,
    namespace: str,
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    result = control_plane.kubectl("create", *extra, "-f", "-", "-o", "json", input=json.dumps(pod))
    return json.loads(result.stdout)


def has_sidecar(pod: dict[str, Any]) -> bool:
    return any(c["name"] == names.SIDECAR_NAME for c in pod["spec"].get("initContainers") or [])
