"""The operator against a real control plane and a real Redis.

One operator process serves the whole module. It runs with a ServiceAccount kubeconfig bound to
exactly the rules of ``openai_policy_operator.rbac`` (so every test here also proves the RBAC is
sufficient), and the API server reaches its webhook over TLS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from openai_policy_api import load_policy
from openai_policy_operator import names
from tests.operator.cluster import (
    apply_policy,
    condition,
    create_pod,
    events,
    get_configmap,
    get_json,
    has_sidecar,
    kubectl_get_row,
    label_for_injection,
    wait_condition,
    wait_for,
)

# ---- reconciliation ---------------------------------------------------------------------------


def test_policy_ready_with_configmap_within_2s(control_plane, namespace, operator):
    started = time.monotonic()
    apply_policy(
        control_plane,
        namespace,
        "fast",
        {"selector": {"matchLabels": {"app": "x"}}, "apiKey": {"secretRef": {"name": "openai"}}},
    )
    wait_condition(control_plane, namespace, "fast", "Ready", "True", 2.0)
    configmap = wait_for(lambda: get_configmap(control_plane, namespace, "fast-policy"), 2.0)
    assert time.monotonic() - started < 2.0
    policy = get_json(control_plane, "oaip", "fast", "-n", namespace)
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]
    rendered = load_policy(configmap["data"]["policy.yaml"])
    assert rendered.metadata.generation == 1 and rendered.ref == (namespace, "fast")
    assert policy["status"]["observedGeneration"] == 1


def test_status_is_patched_only_when_something_changed(control_plane, namespace, operator):
    apply_policy(control_plane, namespace, "quiet", {"budget": {"limits": [{"window": "month", "usd": 5}]}})
    wait_condition(control_plane, namespace, "quiet", "Ready", "True", 5.0)
    time.sleep(1.5)  # let the first timer tick settle the status
    version = get_json(control_plane, "oaip", "quiet", "-n", namespace)["metadata"]["resourceVersion"]
    time.sleep(3.0)  # three more ticks (--status-interval 1) with nothing new to report
    assert get_json(control_plane, "oaip", "quiet", "-n", namespace)["metadata"]["resourceVersion"] == version


def test_redis_restart_republishes_and_recovers(control_plane, namespace, operator):
    redis_server = operator["redis"]
    apply_policy(control_plane, namespace, "durable", {})
    wait_condition(control_plane, namespace, "durable", "Ready", "True", 5.0)
    key = f"oaip:{{{namespace}/durable}}:policy"
    assert redis_server.client().get(key)
    redis_server.stop()
    try:
        found = wait_condition(control_plane, namespace, "durable", "Ready", "False", 10.0)
        assert found["reason"] in ("StoreUnavailable", "PublishFailed")
    finally:
        redis_server.start()  # same port, empty: nothing persisted
    wait_for(lambda: redis_server.client().get(key), 10.0, 0.1, "the policy re-published after the restart")
    wait_condition(control_plane, namespace, "durable", "Ready", "True", 10.0)


def test_change_publishes_new_generation_within_2s(control_plane, namespace, operator):
    apply_policy(control_plane, namespace, "live", {"requests": {"maxOutputTokens": 100}})
    wait_condition(control_plane, namespace, "live", "Ready", "True", 5.0)
    client = operator["redis"].client()
    key = f"oaip:{{{namespace}/live}}:policy"
    assert json.loads(client.get(key))["metadata"]["generation"] == 1
    pubsub = client.pubsub()
    pubsub.subscribe(f"oaip:{{{namespace}/live}}:policy-updates")
    started = time.monotonic()
    control_plane.kubectl(
        "patch",
        "oaip",
        "live",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"requests": {"maxOutputTokens": 200}}}',
    )

    def published() -> dict[str, Any] | None:
        raw = client.get(key)
        doc = json.loads(raw) if raw else None
        return doc if doc and doc["metadata"]["generation"] == 2 else None

    doc = wait_for(published, 2.0, 0.02, "generation 2 in Redis")
    assert time.monotonic() - started < 2.0
    assert doc["spec"]["requests"]["maxOutputTokens"] == 200
    messages = [m for m in iter(lambda: pubsub.get_message(timeout=0.2), None) if m["type"] == "message"]
    assert any(m["data"] in (b"2", "2") for m in messages), messages
    pubsub.close()


def test_selector_conflict_marks_the_newer_policy(control_plane, namespace, operator):
    apply_policy(control_plane, namespace, "older", {"selector": {"matchLabels": {"app": "web"}}})
    wait_condition(control_plane, namespace, "older", "Ready", "True", 5.0)
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    apply_policy(control_plane, namespace, "newer", {"selector": {}})
    found = wait_condition(
        control_plane, namespace, "newer", "Ready", "False", 5.0, reason="SelectorConflict"
    )
    assert "older" in found["message"]
    assert condition(control_plane, namespace, "older", "Ready")["status"] == "True"
    wait_for(
        lambda: any(
            e["reason"] == "SelectorConflict" and e["involvedObject"]["name"] == "newer"
            for e in events(control_plane, namespace)
        ),
        5.0,
        0.2,
        "a SelectorConflict Event",
    )
    # The conflict resolves by itself when the older policy goes away.
    control_plane.kubectl("delete", "oaip", "older", "-n", namespace)
    wait_condition(control_plane, namespace, "newer", "Ready", "True", 10.0)


# ---- injection --------------------------------------------------------------------------------


def test_deployment_pod_is_stored_with_the_sidecar(control_plane, namespace, operator):
    label_for_injection(control_plane, namespace)
    apply_policy(
        control_plane,
        namespace,
        "web",
        {
            "selector": {"matchLabels": {"app": "web"}},
            "apiKey": {"secretRef": {"name": "openai", "key": "token"}},
        },
    )
    wait_condition(control_plane, namespace, "web", "Ready", "True", 5.0)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "app:1",
                            "env": [{"name": "OPENAI_API_KEY", "value": "sk-own"}],
                        }
                    ]
                },
            },
        },
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    pods = wait_for(
        lambda: (get_json(control_plane, "pods", "-n", namespace, "-l", "app=web") or {}).get("items"),
        30.0,
        0.2,
        "the Deployment's pod",
    )
    pod = pods[0]
    assert pod["metadata"]["annotations"][names.INJECTED_ANNOTATION] == "web"
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == names.SIDECAR_NAME and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "sidecar:test"
    assert "/var/run/secrets/openai-policy/token" in sidecar["args"]
    assert operator["redis"].url in sidecar["args"]
    workload = {e["name"]: e.get("value") for e in sidecar["env"]}["OPENAI_POLICY_WORKLOAD"]
    assert workload == "web"
    app = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8780/v1"
    assert env["OPENAI_API_KEY"] == names.PLACEHOLDER_API_KEY
    assert all(m["name"] != names.API_KEY_VOLUME for m in app.get("volumeMounts", []))
    wait_for(
        lambda: any(e["reason"] == "APIKeyEnvReplaced" for e in events(control_plane, namespace)),
        10.0,
        0.2,
        "an APIKeyEnvReplaced Event",
    )
    # The status counts the injected pod.
    wait_for(
        lambda: (
            (get_json(control_plane, "oaip", "web", "-n", namespace) or {})
            .get("status", {})
            .get("pods", {})
            .get("injected")
            == 1
        ),
        10.0,
        0.2,
        "pods.injected == 1",
    )


def test_unlabelled_namespace_is_untouched(control_plane, operator):
    plain = control_plane.create_namespace("plain")
    try:
        apply_policy(control_plane, plain, "all", {})
        wait_condition(control_plane, plain, "all", "Ready", "True", 5.0)
        assert not has_sidecar(create_pod(control_plane, plain, "p"))
    finally:
        control_plane.delete_namespace(plain)


def test_opt_out_ambiguous_and_dry_run(control_plane, namespace, operator):
    label_for_injection(control_plane, namespace)
    apply_policy(control_plane, namespace, "one", {"selector": {"matchLabels": {"team": "a"}}})
    wait_condition(control_plane, namespace, "one", "Ready", "True", 5.0)
    time.sleep(1.1)  # creationTimestamp has one-second resolution: make "two" the newer one
    apply_policy(control_plane, namespace, "two", {"selector": {"matchLabels": {"tier": "b"}}})
    # A pod labelled team=a and tier=b would match both: the newer policy says so.
    wait_condition(control_plane, namespace, "two", "Ready", "False", 5.0, reason="SelectorConflict")

    opted_out = create_pod(
        control_plane, namespace, "opted-out", {"team": "a"}, {names.INJECT_ANNOTATION: "false"}
    )
    assert not has_sidecar(opted_out)
    unmatched = create_pod(control_plane, namespace, "unmatched", {"team": "z"})
    assert not has_sidecar(unmatched)
    ambiguous = create_pod(control_plane, namespace, "ambiguous", {"team": "a", "tier": "b"})
    assert not has_sidecar(ambiguous)
    wait_for(
        lambda: [
            e
            for e in events(control_plane, namespace)
            if e["reason"] == "AmbiguousPolicy" and e["involvedObject"]["name"] == "ambiguous"
        ],
        10.0,
        0.2,
        "an AmbiguousPolicy Event",
    )
    chosen = create_pod(
        control_plane, namespace, "chosen", {"team": "a", "tier": "b"}, {names.POLICY_ANNOTATION: "two"}
    )
    assert has_sidecar(chosen) and chosen["metadata"]["annotations"][names.INJECTED_ANNOTATION] == "two"

    dry = create_pod(control_plane, namespace, "dry", {"team": "a"}, extra=("--dry-run=server",))
    assert has_sidecar(dry)
    assert get_json(control_plane, "pod", "dry", "-n", namespace) is None


def test_operator_namespace_is_never_injected(control_plane, operator):
    system_ns = operator["system_ns"]
    label_for_injection(control_plane, system_ns)
    apply_policy(control_plane, system_ns, "self", {"selector": {"matchLabels": {"app": "operator-like"}}})
    wait_condition(control_plane, system_ns, "self", "Ready", "True", 5.0)
    assert not has_sidecar(create_pod(control_plane, system_ns, "operator-like", {"app": "operator-like"}))


# ---- status from the field --------------------------------------------------------------------


def sidecar_reports(
    redis_url: str, ref: tuple[str, str], counters: dict[str, int], generation: int = 1
) -> None:
    """Write usage and a heartbeat exactly as a sidecar does, through the state store."""
    from openai_policy_store import RedisStore, UsageWriter

    async def write() -> None:
        store = RedisStore(redis_url)
        try:
            writer = UsageWriter(store, ref)
            writer.add(counters)
            await writer.flush()
            await writer.heartbeat(
                "web-abc",
                {
                    "generation": generation,
                    "keyLoaded": True,
                    "lastError": None,
                    "mode": "enforce",
                    "suspended": False,
                    "circuit": "closed",
                },
            )
        finally:
            await store.close()

    asyncio.run(write())


def spend(redis_url: str, ref: tuple[str, str], budget_spec: dict[str, Any], usd: str) -> None:
    """Reserve and settle a call's cost through the budget ledger, as a sidecar does."""
    from openai_policy_api import load_spec
    from openai_policy_store import BudgetLedger, RedisStore
    from openai_policy_store.money import usd_to_micros

    async def write() -> None:
        store = RedisStore(redis_url)
        try:
            ledger = BudgetLedger(store, ref, load_spec({"budget": budget_spec}).budget)
            reservation = await ledger.reserve(usd_to_micros(usd))
            await ledger.settle(reservation, usd_to_micros(usd))
        finally:
            await store.close()

    asyncio.run(write())


def test_usage_appears_in_kubectl_get_within_15s(control_plane, namespace, operator):
    apply_policy(control_plane, namespace, "counted", {})
    wait_condition(control_plane, namespace, "counted", "Ready", "True", 5.0)
    sidecar_reports(
        operator["redis"].url,
        (namespace, "counted"),
        {"requests": 7, "tokens_input": 120, "tokens_output": 30, "refused:rate_limit_exceeded": 2},
    )
    started = time.monotonic()

    def row() -> dict[str, str] | None:
        found = kubectl_get_row(control_plane, "oaip", "counted", "-n", namespace)
        return found if found.get("REQUESTS") == "7" and found.get("BLOCKED") == "2" else None

    found = wait_for(row, 15.0, 0.2, "requests and blocked in kubectl get oaip")
    assert time.monotonic() - started < 15.0
    assert found["READY"] == "True"
    assert found["ENFORCING"] == "1/1"  # one sidecar reporting (a heartbeat counts as an injected pod too)
    status = get_json(control_plane, "oaip", "counted", "-n", namespace)["status"]
    assert status["usage"]["blockedByReason"] == {"rate_limit_exceeded": 2}
    assert status["pods"]["reporting"] == 1 and status["pods"]["upToDate"] == 1
    wait_condition(control_plane, namespace, "counted", "Enforced", "True", 5.0)


def test_budget_alert_and_exceeded_conditions_and_events(control_plane, namespace, operator):
    budget = {"limits": [{"window": "day", "usd": 1}], "alertAtPercent": 50}
    apply_policy(control_plane, namespace, "capped", {"budget": budget})
    wait_condition(control_plane, namespace, "capped", "Ready", "True", 5.0)
    wait_condition(control_plane, namespace, "capped", "BudgetAlert", "False", 5.0)
    ref = (namespace, "capped")

    spend(operator["redis"].url, ref, budget, "0.60")
    wait_condition(control_plane, namespace, "capped", "BudgetAlert", "True", 15.0)
    assert condition(control_plane, namespace, "capped", "BudgetExceeded")["status"] == "False"

    spend(operator["redis"].url, ref, budget, "0.40")
    found = wait_condition(control_plane, namespace, "capped", "BudgetExceeded", "True", 15.0)
    assert found["reason"] == "LimitReached" and "$1.00 of $1.00" in found["message"]
    reasons = wait_for(
        lambda: (
            {e["reason"] for e in events(control_plane, namespace) if e["involvedObject"]["name"] == "capped"}
            >= {"AlertThresholdReached", "LimitReached"}
        ),
        10.0,
        0.2,
        "BudgetAlert and BudgetExceeded Events",
    )
    assert reasons
    status = get_json(control_plane, "oaip", "capped", "-n", namespace)["status"]
    day = next(w for w in status["spend"] if w["window"] == "day")
    assert day["usd"] == "1.00" and day["remainingUsd"] == "0.00" and day["percent"] == 100


def test_delete_removes_the_configmap(control_plane, namespace, operator):
    apply_policy(control_plane, namespace, "gone", {})
    wait_for(lambda: get_json(control_plane, "configmap", "gone-policy", "-n", namespace), 5.0)
    control_plane.kubectl("delete", "oaip", "gone", "-n", namespace)
    # The controller-manager's garbage collector learns about a new CRD at its next discovery
    # resync (every 30 s), so a CRD installed moments ago can take that long.
    wait_for(
        lambda: get_json(control_plane, "configmap", "gone-policy", "-n", namespace) is None,
        75.0,
        0.5,
        "garbage collection of the ConfigMap",
    )


def test_spend_survives_delete_and_recreate(control_plane, namespace, operator):
    budget = {"limits": [{"window": "month", "usd": 10}]}
    apply_policy(control_plane, namespace, "sticky", {"budget": budget})
    wait_condition(control_plane, namespace, "sticky", "Ready", "True", 5.0)
    spend(operator["redis"].url, (namespace, "sticky"), budget, "0.30")
    control_plane.kubectl("delete", "oaip", "sticky", "-n", namespace)
    apply_policy(control_plane, namespace, "sticky", {"budget": budget})

    def month_spend() -> str | None:
        status = (get_json(control_plane, "oaip", "sticky", "-n", namespace) or {}).get("status") or {}
        return next((w["usd"] for w in status.get("spend", []) if w["window"] == "month"), None)

    assert wait_for(lambda: month_spend() == "0.30", 10.0, 0.2, "the spend of the re-created policy")


# ---- RBAC -------------------------------------------------------------------------------------


def test_operator_service_account_cannot_read_secrets(control_plane, operator):
    for verb in ("get", "list", "watch"):
        result = control_plane.kubectl(
            "auth",
            "can-i",
            verb,
            "secrets",
            "--all-namespaces",
            "--as",
            operator["service_account"],
            check=False,
        )
        assert result.stdout.strip() == "no", (verb, result.stdout, result.stderr)
