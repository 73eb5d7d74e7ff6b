"""The kind flavour's in-cluster fake upstream, checked without a cluster: its Deployment, as the
API server stores it, runs under LocalPod from nothing but its ConfigMap (the modules are laid out
as a package by the volume's items), and records what it is sent.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from kubernetes import config as k8s_config

from e2e.kube import apply, pods_with_label, wait_for
from e2e.stack import SIDECAR_IMAGE, image_commands
from e2e.upstream import FAKE_NAME, FAKE_PORT, InClusterUpstream
from openai_policy_devkit.fake_openai_admin import answers_health
from openai_policy_devkit.pod_runner import LocalPod

pytestmark = pytest.mark.skipif(
    os.environ.get("OPENAI_POLICY_E2E_CLUSTER", "local") != "local",
    reason="checks the kind flavour's manifests on the local control plane",
)


@pytest.mark.timeout(120)
def test_in_cluster_fake_runs_from_its_configmap(control_plane, namespace, tiktoken_cache_dir, tmp_path):
    upstream = InClusterUpstream(control_plane, namespace, SIDECAR_IMAGE)
    assert upstream.base_url == f"http://{FAKE_NAME}.{namespace}.svc.cluster.local:{FAKE_PORT}/v1"
    apply(control_plane, upstream.manifests())
    pod = wait_for(
        lambda: next(iter(pods_with_label(control_plane, namespace, f"app={FAKE_NAME}")), None),
        60,
        "the fake's Pod",
    )
    api_client = k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    # Not the repo's copy: the process gets the modules from the mounted ConfigMap only.
    local = LocalPod(
        api_client,
        namespace,
        pod["metadata"]["name"],
        tmp_path / "pod",
        image_commands=image_commands(),
        extra_env={"PYTHONPATH": "", "PYTHONSAFEPATH": "1"},
    )
    try:
        local.start()
        port = local.host_port(FAKE_PORT)

        def healthy() -> bool:
            assert local.containers["fake"].process.poll() is None, local.logs("fake")
            return answers_health(port)

        wait_for(healthy, 30, "the fake to answer", 0.1)
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Authorization": "Bearer sk-x", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["model"] == "gpt-4o-mini"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/requests", timeout=5) as response:
            (recorded,) = json.loads(response.read())
        assert recorded["path"] == "/v1/chat/completions"
        assert {k.lower(): v for k, v in recorded["headers"].items()}["authorization"] == "Bearer sk-x"
        # It could only have imported them from the volume: cwd is not the repo and PYTHONSAFEPATH is set.
        code_dir = local.volumes["code"].path
        assert (code_dir / "openai_policy_devkit" / "fake_openai.py").is_file()
    finally:
        local.stop()
        api_client.close()
