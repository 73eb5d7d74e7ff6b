"""The kubectl plugin (plugin/openai_policy_kubectl), found by the real kubectl on PATH, against a real
API server and operator (its tests that need none are in tests/plugin)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from openai_policy_api import BudgetSpec
from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, write_policy
from openai_policy_operator import names, rbac
from openai_policy_store import BudgetLedger, RedisStore
from openai_policy_store.windows import bucket_of
from tests.operator.cluster import (
    apply_policy,
    create_pod,
    events,
    get_policy,
    label_for_injection,
    wait_condition,
    wait_for,
)

BUDGET = {"limits": [{"window": "day", "usd": 5}]}


def plugin(control_plane, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``kubectl oaip ARGS`` exactly as a user runs it: kubectl finds ``kubectl-oaip`` on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), str(control_plane.assets), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "KUBECONFIG": str(kubeconfig or control_plane.kubeconfig)}
    return subprocess.run(
        ["kubectl", "oaip", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_kubectl_lists_both_plugin_names(control_plane):
    path = os.pathsep.join([str(Path(sys.executable).parent), str(control_plane.assets), os.environ["PATH"]])
    listed = subprocess.run(
        [str(control_plane.assets / "kubectl"), "plugin", "list", "--name-only"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        check=False,
    ).stdout.split()
    assert {"kubectl-oaip", "kubectl-openaipolicy"} <= set(listed)


def test_status_shows_windows_conditions_and_pods(control_plane, operator):
    namespace = control_plane.create_namespace("plugin-status")
    apply_policy(
        control_plane, namespace, "team", {"selector": {"matchLabels": {"app": "x"}}, "budget": BUDGET}
    )
    wait_condition(control_plane, namespace, "team", "Ready", "True", 30)

    one = plugin(control_plane, "status", "team", "-n", namespace)
    assert one.returncode == 0, one.stderr
    assert f"OpenAIPolicy {namespace}/team" in one.stdout
    assert "Ready=True" in one.stdout and "Suspended: no" in one.stdout
    window = next(line for line in one.stdout.splitlines() if line.strip().startswith("day "))
    assert "$5" in window and "0%" in window

    every = plugin(control_plane, "status", "-A")
    row = next(line.split() for line in every.stdout.splitlines() if line.startswith(namespace))
    assert row[1:3] == ["team", "True"] and row[-1] == "no"

    missing = plugin(control_plane, "status", "nope", "-n", namespace)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_suspend_and_resume_record_the_reason_the_user_and_an_event(control_plane, operator):
    namespace = control_plane.create_namespace("plugin-suspend")
    apply_policy(control_plane, namespace, "team", {"budget": BUDGET})
    wait_condition(control_plane, namespace, "team", "Ready", "True", 30)

    done = plugin(control_plane, "suspend", "team", "-n", namespace, "--reason", "runaway retry loop")
    assert done.returncode == 0, done.stderr
    policy = get_policy(control_plane, namespace, "team")
    assert policy["spec"]["suspend"] is True
    annotations = policy["metadata"]["annotations"]
    assert annotations["openaipolicy.dev/suspend-reason"] == "runaway retry loop"
    assert annotations["openaipolicy.dev/suspended-by"] == "kubernetes-admin"  # the admin certificate's CN
    shown = plugin(control_plane, "status", "team", "-n", namespace).stdout
    assert (
        "Suspended: yes" in shown
        and "Suspended by kubernetes-admin at" in shown
        and "runaway retry loop" in shown
    )
    suspended = [e for e in events(control_plane, namespace) if e["reason"] == "Suspended"]
    assert suspended and "runaway retry loop" in suspended[0]["message"]
    assert suspended[0]["involvedObject"]["uid"] == policy["metadata"]["uid"]

    done = plugin(control_plane, "resume", "team", "-n", namespace, "--reason", "loop fixed in v2")
    assert done.returncode == 0, done.stderr
    policy = get_policy(control_plane, namespace, "team")
    assert policy["spec"]["suspend"] is False
    assert "openaipolicy.dev/suspend-reason" not in (policy["metadata"].get("annotations") or {})
    assert any(
        e["reason"] == "Resumed" and "loop fixed" in e["message"] for e in events(control_plane, namespace)
    )

    no_reason = plugin(control_plane, "suspend", "team", "-n", namespace)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr


def _account_with(control_plane, namespace: str, name: str, rules: list[dict]) -> Path:
    """A ServiceAccount holding exactly ``rules`` in ``namespace``; returns its kubeconfig."""
    control_plane.kubectl("create", "serviceaccount", name, "-n", namespace)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    for doc in (role, binding):
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    return control_plane.service_account_kubeconfig(namespace, name)


def test_the_plugin_acts_with_the_callers_own_rbac(control_plane, operator):
    """The chart's view role reads but cannot pull the switch; its edit role can, Event included."""
    namespace = control_plane.create_namespace("plugin-rbac")
    apply_policy(control_plane, namespace, "team", {"budget": BUDGET})
    viewer = _account_with(control_plane, namespace, "viewer", rbac.view_rules())
    editor = _account_with(control_plane, namespace, "platform", rbac.edit_rules())

    assert plugin(control_plane, "status", "team", "-n", namespace, kubeconfig=viewer).returncode == 0
    refused = plugin(control_plane, "suspend", "team", "-n", namespace, "--reason", "x", kubeconfig=viewer)
    assert refused.returncode == 1 and "forbidden" in refused.stderr.lower()
    assert not get_policy(control_plane, namespace, "team")["spec"].get("suspend")

    done = plugin(
        control_plane, "suspend", "team", "-n", namespace, "--reason", "incident 42", kubeconfig=editor
    )
    assert done.returncode == 0 and "warning" not in done.stdout, done.stdout + done.stderr
    policy = get_policy(control_plane, namespace, "team")
    assert policy["spec"]["suspend"] is True
    assert policy["metadata"]["annotations"]["openaipolicy.dev/suspended-by"] == (
        f"system:serviceaccount:{namespace}:platform"
    )
    assert any(
        e["reason"] == "Suspended" and "incident 42" in e["message"] for e in events(control_plane, namespace)
    )


def test_why_answers_with_the_webhooks_rules(control_plane, operator):
    namespace = control_plane.create_namespace("plugin-why")
    label_for_injection(control_plane, namespace)
    apply_policy(control_plane, namespace, "chat", {"selector": {"matchLabels": {"app": "chat"}}})
    wait_condition(control_plane, namespace, "chat", "Ready", "True", 30)
    create_pod(control_plane, namespace, "chat-1", labels={"app": "chat"})  # injected by the real webhook
    create_pod(control_plane, namespace, "batch-1", labels={"app": "batch"})
    create_pod(
        control_plane,
        namespace,
        "chat-out",
        labels={"app": "chat"},
        annotations={names.INJECT_ANNOTATION: "false"},
    )

    injected = plugin(control_plane, "why", "chat-1", "-n", namespace)
    assert injected.returncode == 0, injected.stderr
    assert "carries the sidecar (policy chat)" in injected.stdout and "(PolicyMatched)" in injected.stdout
    assert "has no sidecar" in plugin(control_plane, "why", "batch-1", "-n", namespace).stdout
    assert "(NoMatchingPolicy)" in plugin(control_plane, "why", "batch-1", "-n", namespace).stdout
    assert "(OptedOut)" in plugin(control_plane, "why", "chat-out", "-n", namespace).stdout

    # A second policy selecting the same pods: the answer changes with the cluster, not the pod.
    apply_policy(control_plane, namespace, "chat-2", {"selector": {"matchLabels": {"app": "chat"}}})
    later = plugin(control_plane, "why", "chat-1", "-n", namespace).stdout
    assert "carries the sidecar (policy chat)" in later and "(AmbiguousPolicy)" in later

    off = control_plane.create_namespace("plugin-why-off")
    create_pod(control_plane, off, "app-1", labels={"app": "chat"})
    assert "(NamespaceNotEnabled)" in plugin(control_plane, "why", "app-1", "-n", off).stdout


def test_explain_refusal_finds_the_request_in_a_real_sidecars_log(tmp_path, fake_openai, control_plane):
    key = tmp_path / "api-key"
    key.write_text("sk-test-plugin-explain-0123456789\n")
    policy = write_policy(
        tmp_path / "policy.yaml", {**upstream_spec(fake_openai), "models": {"allow": ["gpt-4o-mini"]}}
    )
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as raised:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        request_id = raised.value.response.headers["x-openai-policy-request-id"]
        client.close()
        sidecar.stop()
        log = sidecar.log_path

    found = plugin(control_plane, "explain-refusal", request_id, "--log-file", str(log))
    assert found.returncode == 0, found.stderr
    assert f"Request {request_id}: Refused by the policy with 403 model_not_allowed." in found.stdout
    assert "Model asked for: gpt-4o" in found.stdout
    assert "Why: The model `gpt-4o` is not allowed by this policy." in found.stdout  # what the caller got
    assert "sk-test-plugin" not in found.stdout

    missing = plugin(control_plane, "explain-refusal", "req-does-not-exist", "--log-file", str(log))
    assert missing.returncode == 1 and "no sidecar log line has request id" in missing.stderr


def test_status_shows_window_bounds_and_top_spenders(control_plane, operator):
    namespace = control_plane.create_namespace("plugin-spenders")
    budget = {"limits": [{"window": "day", "usd": 5}], "timeZone": "America/New_York"}
    apply_policy(
        control_plane, namespace, "team", {"selector": {"matchLabels": {"app": "x"}}, "budget": budget}
    )
    wait_condition(control_plane, namespace, "team", "Ready", "True", 30)

    async def settle() -> None:  # what the sidecars' settles leave in the store
        store = RedisStore(operator["redis"].url)
        try:
            ledger = BudgetLedger(store, (namespace, "team"), BudgetSpec.model_validate(budget))
            for user, micros in (("alice", 2_500_000), ("bob", 400_000)):
                await ledger.settle(await ledger.reserve(micros, user=user, feature="chat"), micros)
        finally:
            await store.close()

    asyncio.run(settle())
    wait_for(
        lambda: (
            "Top users (day): alice $2.50, bob $0.40"
            in plugin(control_plane, "status", "team", "-n", namespace).stdout
        ),
        30,
        0.5,
        "kubectl oaip status to show the top spenders",
    )
    shown = plugin(control_plane, "status", "team", "-n", namespace).stdout
    assert "Top features (day): chat $2.90" in shown
    day = bucket_of("day", None, "America/New_York")
    header = next(line for line in shown.splitlines() if "WINDOW" in line)
    assert header.split()[:3] == ["WINDOW", "FROM", "UNTIL"]
    row = next(line for line in shown.splitlines() if line.strip().startswith("day "))
    assert day.start.strftime("%Y-%m-%dT%H:%M:%SZ") in row and day.end.strftime("%Y-%m-%dT%H:%M:%SZ") in row
    assert "$5" in row
