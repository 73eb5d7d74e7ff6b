"""The generated CRD in a real API server: invalid policies are refused with actionable
messages, the examples apply, defaults are filled in, `kubectl explain` teaches the fields, and
`kubectl get oaip` shows the status columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_policy_api import (
    BudgetSpec,
    PodsStatus,
    PolicyError,
    PolicyStatus,
    UsageStatus,
    WindowSpend,
    load_policy,
    load_policy_file,
    summarize,
)
from openai_policy_api.base import doc
from openai_policy_operator import crd
from tests.operator.cluster import wait_established

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def cluster(control_plane: Any) -> Any:
    """The control plane with the committed CRD applied and established."""
    control_plane.kubectl("apply", "-f", str(ROOT / crd.CRD_PATH))
    wait_established(control_plane, crd.CRD_NAME)
    return control_plane


@pytest.fixture(scope="module")
def policy_namespace(cluster: Any) -> Iterator[str]:
    name = cluster.create_namespace("crd-validation")
    yield name
    cluster.delete_namespace(name)


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(cluster: Any, namespace: str, document: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)


# (case id, spec, what the API server's message must contain: the field path and the words)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "usd-zero",
        {"budget": {"limits": [{"window": "month", "usd": 0}]}},
        ["spec.budget.limits[0].usd", "should be greater than 0"],
    ),
    (
        "usd-negative",
        {"budget": {"limits": [{"window": "hour", "usd": -50}]}},
        ["spec.budget.limits[0].usd", "should be greater than 0"],
    ),
    (
        "usd-text",
        {"budget": {"limits": [{"window": "day", "usd": "ten"}]}},
        ["spec.budget.limits[0].usd", "must be of type number"],
    ),
    (
        "window-unknown",
        {"budget": {"limits": [{"window": "year", "usd": 5}]}},
        ["spec.budget.limits[0].window", 'Unsupported value: "year"', '"hour", "day", "week", "month"'],
    ),
    (
        "window-twice",
        {"budget": {"limits": [{"window": "month", "usd": 5}, {"window": "month", "usd": 9}]}},
        ["spec.budget.limits", "each window (hour, day, week, month) may appear at most once"],
    ),
    (
        "alert-over-100",
        {"budget": {"alertAtPercent": 150}},
        ["spec.budget.alertAtPercent", "less than or equal to 100"],
    ),
    (
        "downgrade-below-alert",
        {"models": {"fallback": "gpt-4o-mini"}, "budget": {"alertAtPercent": 90, "downgradeAtPercent": 80}},
        ["spec.budget.downgradeAtPercent", "must be greater than budget.alertAtPercent"],
    ),
    (
        "downgrade-below-default-alert",
        {"models": {"fallback": "gpt-4o-mini"}, "budget": {"downgradeAtPercent": 50}},
        ["spec.budget.downgradeAtPercent", "must be greater than budget.alertAtPercent (80 unless set)"],
    ),
    (
        "downgrade-without-fallback",
        {"budget": {"downgradeAtPercent": 90}},
        ["spec.budget.downgradeAtPercent", "requires models.fallback"],
    ),
    (
        "pin-not-allowed",
        {"models": {"allow": ["gpt-4o-*"], "pin": {"gpt-4o": "gpt-4.1-2025-04-14"}}},
        ["spec.models.pin", "must be allowed by models.allow"],
    ),
    (
        "pin-not-allowed-exact",
        {"models": {"allow": ["gpt-4o"], "pin": {"gpt-4o": "gpt-4o-2024-08-06"}}},
        ["spec.models.pin", "must be allowed by models.allow"],
    ),
    (
        "pin-target-wildcard",
        {"models": {"pin": {"gpt-4o": "gpt-4o-*"}}},
        ["spec.models.pin", "must be an exact model id without wildcards"],
    ),
    (
        "fallback-not-allowed",
        {"models": {"allow": ["gpt-4o", "o[34]-mini"], "fallback": "gpt-4o-mini"}},
        ["spec.models.fallback", "models.fallback must be allowed by models.allow"],
    ),
    (
        "fallback-dot-is-not-a-wildcard",
        {"models": {"allow": ["gpt-4.1"], "fallback": "gpt-4x1"}},
        ["spec.models.fallback", "models.fallback must be allowed by models.allow"],
    ),
    (
        "allow-unclosed-bracket",
        {"models": {"allow": ["o[34-mini"]}},
        ["spec.models.allow[0]", "a closed '[...]'"],
    ),
    ("allow-empty", {"models": {"allow": []}}, ["spec.models.allow", "should have at least 1 items"]),
    (
        "allow-duplicate",
        {"models": {"allow": ["gpt-4o", "gpt-4o"]}},
        ["spec.models.allow[1]", "Duplicate value"],
    ),
    (
        "allow-spaces",
        {"models": {"allow": ["gpt 4o"]}},
        ["spec.models.allow[0]", "must be a model id or wildcard"],
    ),
    (
        "mode-unknown",
        {"mode": "enforcing"},
        ["spec.mode", 'Unsupported value: "enforcing"', '"enforce", "dryRun"'],
    ),
    ("suspend-text", {"suspend": "yes"}, ["spec.suspend", "must be of type boolean"]),
    (
        "secret-name-invalid",
        {"apiKey": {"secretRef": {"name": "Bad_Name"}}},
        ["spec.apiKey.secretRef.name", "must be a lowercase DNS name"],
    ),
    (
        "secret-name-missing",
        {"apiKey": {"secretRef": {"key": "api-key"}}},
        ["spec.apiKey.secretRef.name", "Required value"],
    ),
    (
        "base-url-no-scheme",
        {"upstream": {"baseURL": "api.openai.com/v1"}},
        ["spec.upstream.baseURL", "must be an http:// or https:// URL"],
    ),
    ("timeout-zero", {"requests": {"timeoutSeconds": 0}}, ["spec.requests.timeoutSeconds", "greater than 0"]),
    (
        "max-output-tokens-zero",
        {"requests": {"maxOutputTokens": 0}},
        ["spec.requests.maxOutputTokens", "greater than or equal to 1"],
    ),
    (
        "max-output-tokens-text",
        {"requests": {"maxOutputTokens": "500"}},
        ["spec.requests.maxOutputTokens", "must be of type integer"],
    ),
    (
        "rpm-negative",
        {"rateLimits": {"requestsPerMinute": -1}},
        ["spec.rateLimits.requestsPerMinute", "greater than or equal to 1"],
    ),
    (
        "retry-attempts-zero",
        {"retries": {"maxAttempts": 0}},
        ["spec.retries.maxAttempts", "greater than or equal to 1"],
    ),
    (
        "retry-base-above-max",
        {"retries": {"baseDelaySeconds": 90, "maxDelaySeconds": 60}},
        ["spec.retries.baseDelaySeconds", "must not be greater than retries.maxDelaySeconds"],
    ),
    (
        "queue-concurrency-zero",
        {"queue": {"maxConcurrent": 0}},
        ["spec.queue.maxConcurrent", "greater than or equal to 1"],
    ),
    ("cache-ttl-zero", {"cache": {"ttlSeconds": 0}}, ["spec.cache.ttlSeconds", "greater than or equal to 1"]),
    (
        "pii-action-unknown",
        {"safety": {"pii": {"action": "mask"}}},
        ["spec.safety.pii.action", 'Unsupported value: "mask"', '"off", "flag", "redact", "block"'],
    ),
    (
        "pii-type-unknown",
        {"safety": {"pii": {"types": ["email", "passport"]}}},
        ["spec.safety.pii.types[1]", 'Unsupported value: "passport"'],
    ),
    (
        "moderation-checks-nothing",
        {"safety": {"moderation": {"action": "block", "input": False}}},
        ["spec.safety.moderation.action", "must check input, output or both"],
    ),
    (
        "price-negative",
        {"pricing": {"models": {"my-ft": {"inputPerMillion": -1, "outputPerMillion": 2}}}},
        ["spec.pricing.models.my-ft.inputPerMillion", "greater than or equal to 0"],
    ),
    (
        "selector-in-without-values",
        {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
        [
            "spec.selector.matchExpressions[0].values",
            "must list at least one value when operator is In or NotIn",
        ],
    ),
    (
        "store-choice-unknown",
        {"budget": {"onStoreUnavailable": "failOpen"}},
        ["spec.budget.onStoreUnavailable", '"failClosed", "localShare"'],
    ),
    ("unknown-field", {"budgt": {"limits": []}}, ['unknown field "spec.budgt"']),
    ("unknown-nested-field", {"budget": {"limit": []}}, ['unknown field "spec.budget.limit"']),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_policy_is_refused_with_an_actionable_message(
    cluster: Any, policy_namespace: str, spec: dict[str, Any], expected: list[str]
) -> None:
    document = policy("invalid", spec)
    result = apply(cluster, policy_namespace, document)
    assert result.returncode != 0, f"the API server accepted {spec}"
    for words in expected:
        assert words in result.stderr, f"{words!r} not in: {result.stderr}"
    # The model refuses the same document, so a sidecar reading it by file refuses it too.
    with pytest.raises(PolicyError):
        load_policy(document)


def test_wildcards_in_cel_rules_match_like_the_model(cluster: Any, policy_namespace: str) -> None:
    spec = {
        "models": {
            "allow": ["o[34]-mini*", "gpt-4?1*", "ft:gpt-4o-mini:acme::*", "o[!1]"],
            "pin": {"o3-mini": "o3-mini-2025-01-31", "ft": "ft:gpt-4o-mini:acme::abc123", "o": "o3"},
            "fallback": "gpt-4.1-mini",
        }
    }
    document = policy("wildcards", spec)
    load_policy(document)
    apply(cluster, policy_namespace, document).check_returncode()


def test_at_least_twenty_invalid_cases() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_applies_and_the_api_server_fills_the_models_defaults(
    cluster: Any, policy_namespace: str, path: Path
) -> None:
    cluster.kubectl("apply", "-n", policy_namespace, "-f", str(path))
    expected = load_policy_file(path)
    stored = json.loads(
        cluster.kubectl("get", "oaip", expected.metadata.name, "-n", policy_namespace, "-o", "json").stdout
    )
    assert stored["spec"] == expected.to_document()["spec"]
    # What the API server stored reads back as the same policy.
    assert load_policy(stored).spec == expected.spec


def test_empty_spec_gets_every_default(cluster: Any, policy_namespace: str) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        policy_namespace,
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "openaipolicy.dev/v1alpha1",
                "kind": "OpenAIPolicy",
                "metadata": {"name": "no-spec"},
            }
        ),
    )
    stored = json.loads(
        cluster.kubectl("get", "oaip", "no-spec", "-n", policy_namespace, "-o", "json").stdout
    )
    spec = stored["spec"]
    assert spec["requests"]["timeoutSeconds"] == 30 and spec["requests"]["maxOutputTokens"] == 500
    assert spec["circuitBreaker"] == {"enabled": True, "failureThreshold": 5, "recoverySeconds": 60}
    assert spec["retries"]["maxDelaySeconds"] == 60 and spec["queue"]["maxDepth"] == 1000
    assert spec["budget"]["onStoreUnavailable"] == "failClosed" and spec["logging"] == {"prompts": False}
    assert load_policy(stored).to_document()["spec"] == spec


def test_kubectl_explain_shows_the_model_description(cluster: Any) -> None:
    out = cluster.kubectl("explain", "openaipolicy.spec.budget").stdout
    flat = " ".join(out.split())
    assert " ".join(doc(BudgetSpec).split("\n\n")[0].split()) in flat
    for field in (
        "limits",
        "alertAtPercent",
        "downgradeAtPercent",
        "onStoreUnavailable",
        "localSharePercent",
    ):
        assert field in out
    short = cluster.kubectl("explain", "oaip.spec.budget.limits.usd").stdout
    assert "US dollars" in short


def test_kubectl_get_shows_ready_pods_spend_requests_blocked(cluster: Any, policy_namespace: str) -> None:
    cluster.kubectl("apply", "-n", policy_namespace, "-f", str(ROOT / "examples" / "cheap-fallback.yaml"))
    status = PolicyStatus(
        observed_generation=1,
        conditions=[
            {
                "type": "Ready",
                "status": "True",
                "reason": "Published",
                "message": "policy published",
                "lastTransitionTime": "2026-11-22T14:00:00Z",
                "observedGeneration": 1,
            }
        ],
        pods=PodsStatus(injected=2, reporting=2, up_to_date=2, generations=[{"generation": 1, "pods": 2}]),
        spend=[
            WindowSpend(
                window="month",
                bucket="2026-11",
                usd="1.234567",
                limit_usd="800",
                remaining_usd="798.765433",
                percent=0,
            )
        ],
        usage=UsageStatus(requests=42, blocked=3, blocked_by_reason={"budget_exceeded": 3}),
        last_report_time="2026-11-22T14:01:00Z",
    )
    status.summary = summarize(status)
    body = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    cluster.kubectl(
        "patch",
        "oaip",
        "cheap-fallback",
        "-n",
        policy_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(body),
    )
    table = cluster.kubectl("get", "oaip", "cheap-fallback", "-n", policy_namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "ENFORCING", "SPEND", "REQUESTS", "BLOCKED", "AGE"]
    assert table[1].split()[:7] == ["cheap-fallback", "True", "2/2", "$1.23/$800.00", "month", "42", "3"]
    wide = cluster.kubectl("get", "oaip", "cheap-fallback", "-n", policy_namespace, "-o", "wide").stdout
    assert "MODE" in wide and "enforce" in wide
    # The status the API server kept reads back into the model unchanged.
    stored = json.loads(
        cluster.kubectl("get", "oaip", "cheap-fallback", "-n", policy_namespace, "-o", "json").stdout
    )
    assert load_policy(stored).status == status


def test_short_name_and_category(cluster: Any, policy_namespace: str) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=openaipolicy.dev", "-o", "wide").stdout
    assert "oaip" in resources and "OpenAIPolicy" in resources
    cluster.kubectl("get", "openai", "-n", policy_namespace)
