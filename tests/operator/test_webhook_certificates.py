"""The webhook's serving certificate is renewed under traffic without restarting the operator.

The certificate is signed by the cluster's CA (as cert-manager's or the chart's would be by theirs)
and replaced on disk the way a renewal arrives, while pods are admitted continuously with
failurePolicy Fail: a single failed admission call would show as a refused pod.
"""

from __future__ import annotations

import os
import shutil
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from openai_policy_devkit.control_plane import ApiError
from tests.operator.admission_cases import SMALL, pod
from tests.operator.cluster import (
    apply_policy,
    has_sidecar,
    label_for_injection,
    running_operator,
    wait_condition,
    wait_for,
)


def _install(source: Path, target: Path) -> None:
    """Replace ``target`` atomically, as the kubelet swaps a mounted Secret's files."""
    scratch = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, scratch)
    os.replace(scratch, target)


def _served_certificate(port: int) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port)))


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_renewed_certificate_is_served_without_a_restart_or_a_failed_admission(
    control_plane, crd, op_redis, tmp_path
):
    certs = tmp_path / "certs"
    certs.mkdir()
    first = control_plane.issue_serving_certificate(f"webhook-{os.getpid()}-a")
    shutil.copyfile(first.cert, certs / "tls.crt")
    shutil.copyfile(first.key, certs / "tls.key")
    shutil.copyfile(control_plane.ca_cert, certs / "ca.crt")
    extra = ("--standalone", "--failure-policy", "Fail", "--cert-check-interval", "0.2")
    with running_operator(control_plane, op_redis.url, tmp_path, extra=extra) as info:
        namespace = control_plane.create_namespace("cert-renewal")
        try:
            apply_policy(control_plane, namespace, "small", SMALL)
            wait_condition(control_plane, namespace, "small", "Ready", "True", 10.0)
            label_for_injection(control_plane, namespace)
            assert _served_certificate(info["port"]) == _der(first.cert)
            pid = info["process"].process.pid

            stop = threading.Event()
            outcomes: list[Any] = []

            def traffic() -> None:
                path = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
                while not stop.is_set():
                    body = pod(f"p-{len(outcomes)}")
                    try:
                        outcomes.append(has_sidecar(control_plane.api("POST", path, body)))
                    except ApiError as error:
                        outcomes.append(error)

            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            time.sleep(1.0)
            second = control_plane.issue_serving_certificate(f"webhook-{os.getpid()}-b")
            # Key first, then certificate: for a moment the pair on disk does not match.
            _install(second.key, certs / "tls.key")
            time.sleep(0.5)
            _install(second.cert, certs / "tls.crt")
            try:
                wait_for(lambda: _served_certificate(info["port"]) == _der(second.cert), 15.0, 0.2)
            except AssertionError:
                lines = [
                    line
                    for line in info["process"].logs().splitlines()
                    if not any(n in line for n in ("aiohttp.access", "Timer", "Webhook"))
                ]
                raise AssertionError(
                    "the renewed certificate is not served:\n" + "\n".join(lines[-40:])
                ) from None
            during = len(outcomes)
            time.sleep(1.0)
            stop.set()
            worker.join(30)

            failures = [o for o in outcomes if o is not True]
            assert not failures, failures[:5]
            assert during >= 10 and len(outcomes) > during, (during, len(outcomes))
            assert info["process"].process.poll() is None and info["process"].process.pid == pid
            logs = info["process"].logs()
            assert "webhook serving certificate reloaded" in logs
            assert "Restarting with the renewed SSL" not in logs  # kopf's listener restart never happened
        finally:
            control_plane.delete_namespace(namespace)
