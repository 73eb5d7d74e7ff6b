"""End to end: a Pod stored by the API server (injected by our webhook) runs its sidecar locally.

The sidecar is started from the stored Pod's own container spec (devkit/openai_policy_devkit/pod_runner.py: a
tiny kubelet), with the Secret and ConfigMap volumes materialised from the API. The ``openai`` SDK
calls it; the key reaches the upstream, usage reaches ``kubectl get oaip``, and a policy change
reaches the running sidecar through Redis within seconds.
"""

from __future__ import annotations

import json
import sys
import time

import openai
import pytest
from kubernetes import config as k8s_config

from openai_policy_devkit.pod_runner import LocalPod
from openai_policy_operator import names
from tests.operator.cluster import (
    apply_policy,
    kubectl_get_row,
    label_for_injection,
    running_operator,
    wait_condition,
    wait_for,
)

REAL_KEY = "sk-test-real-key-from-the-secret"


@pytest.mark.timeout(180)
def test_sidecar_from_the_stored_pod_serves_the_sdk_and_reports(
    control_plane,
    crd,
    namespace,
    redis,
    fake_openai,
    tmp_path,
):
    with running_operator(control_plane, redis.url, tmp_path / "operator"):
        label_for_injection(control_plane, namespace)
        control_plane.kubectl(
            "create", "secret", "generic", "openai", "-n", namespace, f"--from-literal=api-key={REAL_KEY}"
        )
        apply_policy(
            control_plane,
            namespace,
            "agents",
            {
                "selector": {"matchLabels": {"app": "agent"}},
                "apiKey": {"secretRef": {"name": "openai"}},
                "upstream": {"baseURL": fake_openai.base_url},
                "models": {"allow": ["gpt-4o-mini*"]},
                "budget": {"limits": [{"window": "day", "usd": 5}]},
            },
        )
        wait_condition(control_plane, namespace, "agents", "Ready", "True", 5.0)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "agent", "namespace": namespace, "labels": {"app": "agent"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                    }
                ]
            },
        }
        control_plane.kubectl("create", "-f", "-", input=json.dumps(pod))

        api_client = k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))
        local = LocalPod(
            api_client,
            namespace,
            "agent",
            tmp_path / "pod",
            image_commands={"sidecar:test": [sys.executable, "-m", "openai_policy_sidecar"]},
        )
        try:
            local.start(probe_timeout=60)
            assert names.SIDECAR_NAME in local.containers
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{local.host_port(names.PROXY_PORT)}/v1",
                api_key=names.PLACEHOLDER_API_KEY,
                max_retries=0,
            )
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
            )
            assert reply.choices[0].message.content
            upstream = fake_openai.requests[-1]
            assert upstream.headers["authorization"] == f"Bearer {REAL_KEY}"

            started = time.monotonic()

            def reported() -> dict[str, str] | None:
                row = kubectl_get_row(control_plane, "oaip", "agents", "-n", namespace)
                return row if row.get("REQUESTS") == "1" and row.get("ENFORCING") == "1/1" else None

            row = wait_for(reported, 15.0, 0.2, "the sidecar's usage in kubectl get oaip")
            assert time.monotonic() - started < 15.0
            assert row["SPEND"].startswith("$") and row["SPEND"].endswith("day")
            wait_condition(control_plane, namespace, "agents", "Enforced", "True", 10.0)

            # The kill switch reaches the running sidecar (no restart) within 2 s.
            control_plane.kubectl(
                "patch",
                "oaip",
                "agents",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"spec": {"suspend": true}}',
            )
            started = time.monotonic()

            def refused() -> bool:
                try:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}]
                    )
                except openai.APIStatusError as error:
                    return error.status_code == 403 and "policy_suspended" in str(error.body)
                return False

            wait_for(refused, 2.0, 0.05, "the suspended policy to reach the running sidecar")
            assert time.monotonic() - started < 2.0
        finally:
            local.stop()
            api_client.close()
