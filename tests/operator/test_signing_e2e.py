"""End to end with signing: an operator holding a signing key, the admission policies pinning the
sidecar's --policy-keys, and a sidecar run from the stored Pod's own container spec.

The attacks of someone who reaches Redis or edits the namespace's ConfigMaps, run against it:
a forged store document (higher generation, another upstream), an edited ``<policy>-policy``
ConfigMap, and a deleted and re-created policy (which restarts at generation 1).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import redis as redis_py
import yaml
from kubernetes import config as k8s_config

from openai_policy_devkit.pod_runner import LocalPod
from openai_policy_operator import admission_policy, names
from openai_policy_operator.__main__ import without_credentials
from openai_policy_operator.admission_rules import GuardSettings
from openai_policy_store import keyspace
from openai_policy_store.signing import Signer, generate_seed_line, verify_document
from tests.operator.admission_cases import assert_refused, create
from tests.operator.cluster import (
    apply_policy,
    condition,
    label_for_injection,
    running_operator,
    wait_condition,
    wait_for,
)

REAL_KEY = "sk-test-real-key-from-the-secret"
MARKER = "org-FORGED-do-not-log"
TEST_LABEL = "openaipolicy.dev/test-signing"
HELLO = [{"role": "user", "content": "hello"}]


class Recorder(BaseHTTPRequestHandler):
    """The attacker's server: records what reaches it (path and Authorization)."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        Recorder.seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST  # noqa: N815

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[str]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def _metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.timeout(240)
def test_forged_and_edited_documents_are_refused_and_a_re_created_policy_wins(
    control_plane, crd, namespace, redis, fake_openai, attacker, tmp_path
):
    seed = generate_seed_line()
    signer = Signer.from_text(seed)
    key_file = tmp_path / "signing.key"
    key_file.write_text(seed + "\n")
    suffix = f"s{secrets.token_hex(3)}"  # a string to YAML, never a number
    extra = ("--standalone", "--signing-key-file", str(key_file))
    with running_operator(control_plane, redis.url, tmp_path / "operator", extra=extra) as info:
        # The admission policies pin the --policy-keys the webhook writes (as the chart renders them).
        control_plane.kubectl("label", "namespace", namespace, f"{TEST_LABEL}={suffix}")
        docs = admission_policy.manifests(
            f"oaip-sign-{suffix}",
            GuardSettings(
                sidecar_repository="sidecar",
                proxy_port="8780",
                admin_port="8781",
                redis_url=without_credentials(redis.url),
                policy_keys=signer.public_keys,
            ),
            ["kube-system", info["system_ns"]],
            only_namespaces_labelled={TEST_LABEL: suffix},
        )
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        api_client = k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))
        store = redis_py.Redis.from_url(redis.url)
        local: LocalPod | None = None
        try:
            label_for_injection(control_plane, namespace)
            control_plane.kubectl(
                "create", "secret", "generic", "openai", "-n", namespace, f"--from-literal=api-key={REAL_KEY}"
            )
            spec = {
                "selector": {"matchLabels": {"app": "agent"}},
                "apiKey": {"secretRef": {"name": "openai"}},
                "upstream": {"baseURL": fake_openai.base_url},
                "budget": {"limits": [{"window": "day", "usd": 5}]},
            }
            apply_policy(control_plane, namespace, "agents", spec)
            wait_condition(control_plane, namespace, "agents", "Ready", "True", 10.0)

            # What the operator wrote is signed, in the ConfigMap and in the store.
            trusted = _trusted(signer)
            configmap = json.loads(
                control_plane.kubectl(
                    "get", "configmap", "agents-policy", "-n", namespace, "-o", "json"
                ).stdout
            )
            facts = verify_document(yaml.safe_load(configmap["data"][names.POLICY_FILE]), trusted)
            uid = json.loads(
                control_plane.kubectl("get", "oaip", "agents", "-n", namespace, "-o", "json").stdout
            )["metadata"]["uid"]
            assert facts.uid == uid and facts.generation == 1
            policy_key = keyspace.policy_key(namespace, "agents")
            verify_document(json.loads(store.get(policy_key)), trusted)

            # A hand-written sidecar trusting another key is refused by the API server itself.
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
            stored = json.loads(
                control_plane.kubectl("get", "pod", "agent", "-n", namespace, "-o", "json").stdout
            )
            (sidecar,) = [c for c in stored["spec"]["initContainers"] if c["name"] == names.SIDECAR_NAME]
            args = sidecar["args"]
            assert args[args.index("--policy-keys") + 1] == signer.public_keys
            forged_pod = json.loads(json.dumps(stored))
            forged_pod["metadata"] = {
                "name": "agent-forged",
                "labels": {"app": "agent"},
                "annotations": stored["metadata"]["annotations"],
            }
            forged_pod.pop("status", None)
            forged_pod["spec"].pop("nodeName", None)
            (forged_sidecar,) = [
                c for c in forged_pod["spec"]["initContainers"] if c["name"] == names.SIDECAR_NAME
            ]
            attacker_keys = Signer.from_text(generate_seed_line()).public_keys
            forged_sidecar["args"][forged_sidecar["args"].index("--policy-keys") + 1] = attacker_keys

            def refused_by_shape() -> bool:
                result = create(control_plane, namespace, forged_pod, f"-{secrets.token_hex(2)}")
                if result.returncode == 0:  # the policies are loaded asynchronously: not yet
                    control_plane.kubectl("delete", "-f", "-", input=result.stdout, check=False)
                    return False
                return "openai-policy sidecar-shape:" in result.stderr

            wait_for(refused_by_shape, 30.0, 0.5, "the ValidatingAdmissionPolicies to take effect")
            assert_refused(create(control_plane, namespace, forged_pod, "-x"), "sidecar-shape")

            local = LocalPod(
                api_client,
                namespace,
                "agent",
                tmp_path / "pod",
                image_commands={"sidecar:test": [sys.executable, "-m", "openai_policy_sidecar"]},
            )
            local.start(probe_timeout=60)
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{local.host_port(names.PROXY_PORT)}/v1",
                api_key=names.PLACEHOLDER_API_KEY,
                max_retries=0,
            )
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            admin = f"http://127.0.0.1:{local.host_port(names.ADMIN_PORT)}"

            # 1. Whoever reaches Redis writes a higher generation pointing at their server, again and
            #    again (the operator overwrites what it did not sign every status tick).
            forged = {
                "apiVersion": "openaipolicy.dev/v1alpha1",
                "kind": "OpenAIPolicy",
                "metadata": {"name": "agents", "namespace": namespace, "generation": 10**6},
                "spec": {"upstream": {"baseURL": attacker, "organization": MARKER}},
            }
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                store.set(policy_key, json.dumps(forged))
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
                time.sleep(0.2)
            assert Recorder.seen == [], "a request (and the key) reached the attacker's server"
            assert fake_openai.requests[-1].headers["authorization"] == f"Bearer {REAL_KEY}"
            metrics = _get(f"{admin}/metrics")
            assert _metric(metrics, "openai_policy_policy_documents_rejected_total", 'source="store"') >= 1
            enforced = wait_condition(control_plane, namespace, "agents", "Enforced", "False", 10.0)
            assert enforced["reason"] == "UntrustedPolicyDocument", enforced
            assert MARKER not in json.dumps(enforced) and attacker not in json.dumps(enforced)
            # The operator put its own document back.
            wait_for(
                lambda: _verifies(store.get(policy_key), trusted),
                5.0,
                0.2,
                "the operator to overwrite the forgery",
            )

            # 2. A namespace editor edits the ConfigMap: a huge generation, no budget, their server.
            edited = {**forged, "metadata": {**forged["metadata"], "generation": 10**9}}
            control_plane.kubectl(
                "patch",
                "configmap",
                "agents-policy",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                json.dumps({"data": {names.POLICY_FILE: yaml.safe_dump(edited)}}),
            )
            wait_for(
                lambda: (
                    _metric(
                        _get(f"{admin}/metrics"),
                        "openai_policy_policy_documents_rejected_total",
                        'source="file"',
                    )
                    >= 1
                ),
                20.0,
                0.2,
                "the sidecar to refuse the edited ConfigMap",
            )
            readyz = json.loads(_get(f"{admin}/readyz"))
            assert "untrusted policy document from the file" in readyz["policy"]["lastError"]
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert Recorder.seen == []
            sidecar_log = local.logs(names.SIDECAR_NAME)
            assert "untrusted policy document" in sidecar_log
            assert MARKER not in sidecar_log and REAL_KEY not in sidecar_log

            # 3. Delete and re-create the policy with suspend: true. It restarts at generation 1; the
            #    running sidecar (at generation 1 of the old uid, or later) must take it within 2 s.
            control_plane.kubectl("delete", "oaip", "agents", "-n", namespace)
            wait_for(
                lambda: condition(control_plane, namespace, "agents", "Ready") is None, 10.0, 0.1, "deletion"
            )
            apply_policy(control_plane, namespace, "agents", {**spec, "suspend": True})
            started = time.monotonic()

            def refused() -> bool:
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
                except openai.APIStatusError as error:
                    return error.status_code == 403 and "policy_suspended" in str(error.body)
                return False

            wait_for(refused, 2.0, 0.05, "the re-created, suspended policy to reach the running sidecar")
            assert time.monotonic() - started <= 2.0
        finally:
            if local is not None:
                local.stop()
            api_client.close()
            store.close()
            for doc in docs:
                control_plane.kubectl(
                    "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found", check=False
                )


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.read().decode()


def _verifies(raw: bytes | None, trusted: dict[str, Any]) -> bool:
    try:
        verify_document(json.loads(raw or b"null"), trusted)
    except Exception:
        return False
    return True


def _trusted(signer: Signer) -> dict[str, Any]:
    from openai_policy_store.signing import parse_public_keys

    return dict(parse_public_keys(signer.public_keys))
