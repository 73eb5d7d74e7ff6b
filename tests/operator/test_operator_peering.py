"""Two operator replicas: one reconciles and reports (kopf peering), both serve the webhook."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid

import yaml

from openai_policy_operator import names
from tests.operator.cluster import (
    apply_policy,
    get_json,
    label_for_injection,
    running_operator,
    wait_condition,
    wait_established,
    wait_for,
)


def install_peering(control_plane, name: str) -> None:
    crds = subprocess.run(
        [sys.executable, "-m", "openai_policy_operator.peering", "--crds-only"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    control_plane.kubectl("apply", "-f", "-", input=crds)
    for doc in yaml.safe_load_all(crds):
        wait_established(control_plane, doc["metadata"]["name"])
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(peering))


def admission_review(port: int, certfile, namespace: str, pod: dict) -> dict:
    """POST an AdmissionReview to one replica directly, verifying its certificate."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "dryRun": True,
            "userInfo": {"username": "test"},
            "object": pod,
        },
    }
    context = ssl.create_default_context(cafile=str(certfile))
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/{names.WEBHOOK_ID}",
        method="POST",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.loads(response.read())["response"]


def test_one_replica_leads_every_replica_serves_the_webhook(
    control_plane,
    crd,
    namespace,
    redis,
    tmp_path,
):
    peering = f"oaip-test-{secrets.token_hex(3)}"
    install_peering(control_plane, peering)
    try:
        run_two_replicas(control_plane, namespace, redis, tmp_path, peering)
    finally:
        control_plane.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", check=False)


def run_two_replicas(control_plane, namespace: str, redis, tmp_path, peering: str) -> None:
    extra = ("--peering", peering)
    with (
        running_operator(control_plane, redis.url, tmp_path / "a", extra=extra) as first,
        running_operator(control_plane, redis.url, tmp_path / "b", extra=extra) as second,
    ):
        replicas = [first, second]
        follower = wait_for(
            lambda: next(
                (r for r in replicas if "Pausing operations in favour of" in r["process"].logs()), None
            ),
            20.0,
            0.2,
            "one replica to pause",
        )
        leader = first if follower is second else second
        assert "Pausing operations in favour of" not in leader["process"].logs()

        # kopf peering is best effort in the first instant: events listed just before the pause may
        # still be handled once by the follower (harmless: reconciling is idempotent). From then on
        # only the leader reconciles and reports.
        time.sleep(1.0)
        follower_seen, leader_seen = len(follower["process"].logs()), len(leader["process"].logs())
        label_for_injection(control_plane, namespace)
        apply_policy(control_plane, namespace, "shared", {})
        wait_condition(control_plane, namespace, "shared", "Ready", "True", 5.0)
        time.sleep(1.5)  # a status tick or two
        assert "Handler 'reconcile' succeeded" in leader["process"].logs()[leader_seen:]
        after = follower["process"].logs()[follower_seen:]
        assert "Handler 'reconcile' succeeded" not in after and "Timer 'report'" not in after

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }
        for replica in replicas:
            response = admission_review(replica["port"], replica["certfile"], namespace, pod)
            assert response["allowed"] is True
            patch = json.loads(base64.b64decode(response["patch"]))
            assert any(op["path"].startswith("/spec/initContainers") for op in patch)

        # A leader that stops hands over at once (it withdraws from the peering on exit).
        leader["process"].stop()
        wait_for(
            lambda: "Resuming operations after the pause" in follower["process"].logs(),
            20.0,
            0.2,
            "the follower to resume",
        )
        control_plane.kubectl(
            "patch", "oaip", "shared", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}'
        )
        wait_condition(control_plane, namespace, "shared", "Suspended", "True", 10.0)
        started = time.monotonic()
        wait_for(
            lambda: (
                (get_json(control_plane, "oaip", "shared", "-n", namespace) or {})
                .get("status", {})
                .get("observedGeneration")
                == 2
            ),
            10.0,
            0.1,
            "observedGeneration 2",
        )
        assert time.monotonic() - started < 10.0
