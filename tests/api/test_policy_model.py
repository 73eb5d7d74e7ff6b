"""The OpenAIPolicy model alone: defaults, each validation, error messages, round trips."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from openai_policy_api import (
    DEFAULT_BASE_URL,
    PII_TYPES,
    BudgetLimit,
    BudgetSpec,
    LabelSelector,
    ModelsSpec,
    OpenAIPolicy,
    PodsStatus,
    PolicyError,
    PolicySpec,
    PolicyStatus,
    RateLimitSpec,
    WindowSpend,
    load_policy,
    load_policy_file,
    load_spec,
    model_allowed,
    pods_summary,
    spend_summary,
    summarize,
)
from openai_policy_api.matching import cel_glob_regex

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def document(spec: dict[str, Any] | None = None, name: str = "p") -> dict[str, Any]:
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec or {},
    }


def refusal(spec: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy(document(spec))
    return caught.value


# ---- defaults ----------------------------------------------------------------------------


def test_defaults_follow_the_seeds() -> None:
    spec = load_policy(document()).spec
    assert spec.suspend is False and spec.mode == "enforce" and spec.api_key is None
    assert spec.selector.is_empty()
    assert spec.upstream.base_url == DEFAULT_BASE_URL == "https://api.openai.com/v1"
    assert spec.upstream.organization is None and spec.upstream.project is None
    assert spec.models.allow == ["*"] and spec.models.pin == {} and spec.models.fallback is None
    assert spec.budget.limits == [] and spec.budget.alert_at_percent == 80
    assert spec.budget.downgrade_at_percent is None
    assert spec.budget.on_store_unavailable == "failClosed" and spec.budget.local_share_percent == 10
    assert spec.rate_limits.requests_per_minute is None and spec.rate_limits.per_user is None
    assert spec.requests.max_output_tokens == 500 and spec.requests.max_input_tokens is None
    assert spec.requests.timeout_seconds == 30 and spec.requests.stream_idle_timeout_seconds == 30
    assert spec.requests.max_body_bytes == 1024 * 1024
    assert spec.retries.max_attempts == 6 and spec.retries.base_delay_seconds == 1
    assert spec.retries.max_delay_seconds == 60 and spec.retries.max_retry_duration_seconds == 120
    assert spec.circuit_breaker.enabled and spec.circuit_breaker.failure_threshold == 5
    assert spec.circuit_breaker.recovery_seconds == 60
    assert (
        spec.queue.max_concurrent == 1000
        and spec.queue.max_depth == 1000
        and spec.queue.max_wait_seconds == 30
    )
    assert not spec.cache.enabled and spec.cache.ttl_seconds == 3600 and spec.cache.deterministic_only
    assert spec.safety.pii.action == "off" and spec.safety.pii.types == list(PII_TYPES)
    assert spec.safety.prompt_injection.action == "off" and spec.safety.prompt_injection.extra_patterns == []
    moderation = spec.safety.moderation
    assert (moderation.action, moderation.input, moderation.output, moderation.on_error) == (
        "off",
        True,
        False,
        "allow",
    )
    assert spec.pricing.models == {} and spec.logging.prompts is False


def test_per_user_defaults_apply_when_the_block_is_given() -> None:
    spec = load_policy(document({"rateLimits": {"perUser": {}}})).spec
    assert spec.rate_limits.per_user is not None
    assert spec.rate_limits.per_user.requests_per_minute == 10
    assert spec.rate_limits.per_user.tokens_per_minute is None


def test_metadata_defaults_and_ref() -> None:
    policy = load_policy(
        {
            "apiVersion": "openaipolicy.dev/v1alpha1",
            "kind": "OpenAIPolicy",
            "metadata": {"name": "p", "uid": "ignored", "resourceVersion": "7"},
        }
    )
    assert policy.ref == ("default", "p") and policy.generation == 1
    assert policy.spec == PolicySpec()


def test_python_construction_uses_snake_case_names() -> None:
    spec = PolicySpec(
        rate_limits=RateLimitSpec(requests_per_minute=60), budget={"limits": [{"window": "day", "usd": 5}]}
    )
    assert spec.rate_limits.requests_per_minute == 60
    assert spec.budget.limit_for("day") == BudgetLimit(window="day", usd=5)
    assert spec.budget.limit_for("month") is None


# ---- reading documents -------------------------------------------------------------------

YAML_TEXT = """
apiVersion: openaipolicy.dev/v1alpha1
kind: OpenAIPolicy
metadata: {name: prod, namespace: team-a, generation: 4}
spec:
  models: {allow: ["gpt-4o-*"], pin: {gpt-4o: gpt-4o-2024-08-06}, fallback: gpt-4o-mini}
  budget: {limits: [{window: month, usd: 500}], downgradeAtPercent: 90}
  requests: {timeoutSeconds: 10}
"""


def test_load_from_yaml_json_bytes_and_mapping_agree() -> None:
    from_yaml = load_policy(YAML_TEXT)
    as_mapping = from_yaml.to_document()
    assert load_policy(json.dumps(as_mapping)) == from_yaml
    assert load_policy(YAML_TEXT.encode()) == from_yaml
    assert load_policy(as_mapping) == from_yaml
    assert from_yaml.ref == ("team-a", "prod") and from_yaml.generation == 4
    assert from_yaml.spec.models.resolve("gpt-4o") == "gpt-4o-2024-08-06"
    assert from_yaml.spec.models.resolve("gpt-4o-mini") == "gpt-4o-mini"


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(YAML_TEXT)
    assert load_policy_file(path) == load_policy(YAML_TEXT)


def test_to_document_is_camel_case_with_defaults_filled() -> None:
    doc = load_policy(YAML_TEXT).to_document()
    assert doc["apiVersion"] == "openaipolicy.dev/v1alpha1" and doc["kind"] == "OpenAIPolicy"
    assert doc["metadata"] == {"name": "prod", "namespace": "team-a", "generation": 4}
    spec = doc["spec"]
    assert spec["requests"] == {
        "maxOutputTokens": 500,
        "maxToolCalls": 4,
        "timeoutSeconds": 10,
        "streamIdleTimeoutSeconds": 30,
        "maxBodyBytes": 1048576,
        "maxResponseBytes": 8388608,
        "maxStreamEventBytes": 8388608,
    }
    assert spec["upstream"] == {"baseURL": DEFAULT_BASE_URL}
    assert spec["budget"]["alertAtPercent"] == 80 and spec["budget"]["downgradeAtPercent"] == 90
    assert spec["circuitBreaker"]["failureThreshold"] == 5
    assert "apiKey" not in spec  # unset optional fields are left out, as the API server stores them
    assert "status" not in doc
    json.dumps(doc)  # plain JSON types only


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_round_trip(path: Path) -> None:
    policy = load_policy_file(path)
    assert load_policy(policy.to_document()) == policy
    assert load_policy(json.loads(json.dumps(policy.to_document()))).to_document() == policy.to_document()


def test_examples_cover_the_seed_cases() -> None:
    policies = {p.name: load_policy_file(p).spec for p in EXAMPLES}
    assert len(policies) >= 5
    assert any(s.models.pin and s.budget.limit_for("month") for s in policies.values())  # production
    assert any(s.suspend for s in policies.values())  # kill switch
    assert any(s.models.fallback and s.budget.downgrade_at_percent for s in policies.values())  # fallback
    assert any(not s.models.pin and s.models.has_wildcards() for s in policies.values())  # staging, latest


def test_null_fields_mean_unset_as_in_the_api_server() -> None:
    policy = load_policy(document({"mode": None, "models": {"fallback": None}, "budget": None}))
    assert policy.spec.mode == "enforce" and policy.spec.models.fallback is None
    assert policy.spec.budget == BudgetSpec()


def test_status_is_read_but_not_part_of_the_document() -> None:
    raw = document()
    raw["status"] = {
        "observedGeneration": 1,
        "pods": {"injected": 2, "reporting": 1},
        "lastReportTime": "2026-11-22T14:00:00Z",
        "somethingNew": 1,
    }
    policy = load_policy(raw)
    assert policy.status is not None and policy.status.pods == PodsStatus(injected=2, reporting=1)
    assert "status" not in policy.to_document()


def test_load_spec_paths_start_with_spec() -> None:
    assert load_spec({"mode": "dryRun"}).mode == "dryRun"
    with pytest.raises(PolicyError, match=r"spec\.mode: must be one of 'enforce' or 'dryRun'"):
        load_spec({"mode": "nope"})


# ---- refusals: one per rule, each naming the field by path -------------------------------

REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "usd zero",
        {"budget": {"limits": [{"window": "month", "usd": 0}]}},
        "spec.budget.limits[0].usd",
        "must be greater than 0",
    ),
    (
        "usd negative",
        {"budget": {"limits": [{"window": "day", "usd": -1.5}]}},
        "spec.budget.limits[0].usd",
        "must be greater than 0 (got -1.5)",
    ),
    (
        "usd text",
        {"budget": {"limits": [{"window": "day", "usd": "10"}]}},
        "spec.budget.limits[0].usd",
        "must be a number (got '10')",
    ),
    (
        "window unknown",
        {"budget": {"limits": [{"window": "year", "usd": 1}]}},
        "spec.budget.limits[0].window",
        "must be one of 'hour', 'day', 'week' or 'month' (got 'year')",
    ),
    (
        "per-user window repeated",
        {"budget": {"perUser": [{"window": "day", "usd": 1}, {"window": "day", "usd": 2}]}},
        "spec.budget.perUser[1].window",
        "'day' is already limited by perUser[0]",
    ),
    (
        "time zone unknown",
        {"budget": {"timeZone": "Mars/Olympus_Mons"}},
        "spec.budget.timeZone",
        "'Mars/Olympus_Mons' is not an IANA time zone name",
    ),
    (
        "time zone a path",
        {"budget": {"timeZone": "../../etc/passwd"}},
        "spec.budget.timeZone",
        "is not an IANA time zone name",
    ),
    ("window missing", {"budget": {"limits": [{"usd": 1}]}}, "spec.budget.limits[0].window", "is required"),
    (
        "window twice",
        {"budget": {"limits": [{"window": "month", "usd": 1}, {"window": "month", "usd": 2}]}},
        "spec.budget.limits[1].window",
        "'month' is already limited by limits[0]",
    ),
    (
        "alert above 100",
        {"budget": {"alertAtPercent": 101}},
        "spec.budget.alertAtPercent",
        "must be at most 100",
    ),
    (
        "alert negative",
        {"budget": {"alertAtPercent": -1}},
        "spec.budget.alertAtPercent",
        "must be at least 0",
    ),
    (
        "downgrade above 100",
        {"budget": {"downgradeAtPercent": 120}, "models": {"fallback": "gpt-4o-mini"}},
        "spec.budget.downgradeAtPercent",
        "must be at most 100",
    ),
    (
        "downgrade below alert",
        {"budget": {"downgradeAtPercent": 50}, "models": {"fallback": "gpt-4o-mini"}},
        "spec.budget.downgradeAtPercent",
        "must be greater than alertAtPercent (80)",
    ),
    (
        "downgrade equals alert",
        {"budget": {"alertAtPercent": 90, "downgradeAtPercent": 90}, "models": {"fallback": "gpt-4o-mini"}},
        "spec.budget.downgradeAtPercent",
        "must be greater than alertAtPercent (90)",
    ),
    (
        "downgrade without fallback",
        {"budget": {"downgradeAtPercent": 95}},
        "spec.budget.downgradeAtPercent",
        "requires models.fallback",
    ),
    (
        "local share zero",
        {"budget": {"localSharePercent": 0}},
        "spec.budget.localSharePercent",
        "must be at least 1",
    ),
    (
        "store choice",
        {"budget": {"onStoreUnavailable": "failOpen"}},
        "spec.budget.onStoreUnavailable",
        "must be one of 'failClosed' or 'localShare'",
    ),
    (
        "pin not allowed",
        {"models": {"allow": ["gpt-4o-*"], "pin": {"gpt-4o": "gpt-4.1-2025-04-14"}}},
        "spec.models.pin.gpt-4o",
        "pinned target 'gpt-4.1-2025-04-14' is not allowed by models.allow",
    ),
    (
        "pin wildcard",
        {"models": {"pin": {"gpt-4o": "gpt-4o-*"}}},
        "spec.models.pin.gpt-4o",
        "must be an exact model id without wildcards",
    ),
    (
        "pin alias wildcard",
        {"models": {"pin": {"gpt-*": "gpt-4o"}}},
        "spec.models.pin",
        "alias 'gpt-*' must be an exact model id",
    ),
    (
        "fallback not allowed",
        {"models": {"allow": ["gpt-4o"], "fallback": "gpt-4o-mini"}},
        "spec.models.fallback",
        "'gpt-4o-mini' is not allowed by models.allow (gpt-4o)",
    ),
    ("allow empty", {"models": {"allow": []}}, "spec.models.allow", "must have at least 1 item"),
    (
        "allow spaces",
        {"models": {"allow": ["gpt 4o"]}},
        "spec.models.allow[0]",
        "must be a model id or wildcard",
    ),
    (
        "allow unclosed bracket",
        {"models": {"allow": ["gpt-[45"]}},
        "spec.models.allow[0]",
        "a closed '[...]'",
    ),
    (
        "allow duplicate",
        {"models": {"allow": ["gpt-4o", "gpt-4o"]}},
        "spec.models.allow",
        "lists 'gpt-4o' more than once",
    ),
    ("mode", {"mode": "enforcing"}, "spec.mode", "must be one of 'enforce' or 'dryRun' (got 'enforcing')"),
    ("suspend text", {"suspend": "yes"}, "spec.suspend", "must be true or false (got 'yes')"),
    (
        "secret name",
        {"apiKey": {"secretRef": {"name": "Bad_Name"}}},
        "spec.apiKey.secretRef.name",
        "must be a lowercase DNS name",
    ),
    ("secret name missing", {"apiKey": {"secretRef": {}}}, "spec.apiKey.secretRef.name", "is required"),
    (
        "secret key",
        {"apiKey": {"secretRef": {"name": "s", "key": "a key"}}},
        "spec.apiKey.secretRef.key",
        "must be a Secret data key",
    ),
    (
        "base url",
        {"upstream": {"baseURL": "api.openai.com/v1"}},
        "spec.upstream.baseURL",
        "must be an http:// or https:// URL",
    ),
    (
        "timeout zero",
        {"requests": {"timeoutSeconds": 0}},
        "spec.requests.timeoutSeconds",
        "must be greater than 0",
    ),
    (
        "max output tokens text",
        {"requests": {"maxOutputTokens": "500"}},
        "spec.requests.maxOutputTokens",
        "must be a whole number (got '500')",
    ),
    (
        "max output tokens fraction",
        {"requests": {"maxOutputTokens": 1.5}},
        "spec.requests.maxOutputTokens",
        "must be a whole number (got 1.5)",
    ),
    (
        "body too small",
        {"requests": {"maxBodyBytes": 10}},
        "spec.requests.maxBodyBytes",
        "must be at least 1024",
    ),
    (
        "rpm zero",
        {"rateLimits": {"requestsPerMinute": 0}},
        "spec.rateLimits.requestsPerMinute",
        "must be at least 1",
    ),
    (
        "per-user rpm",
        {"rateLimits": {"perUser": {"requestsPerMinute": -3}}},
        "spec.rateLimits.perUser.requestsPerMinute",
        "must be at least 1",
    ),
    ("attempts zero", {"retries": {"maxAttempts": 0}}, "spec.retries.maxAttempts", "must be at least 1"),
    ("attempts many", {"retries": {"maxAttempts": 50}}, "spec.retries.maxAttempts", "must be at most 20"),
    (
        "base above max delay",
        {"retries": {"baseDelaySeconds": 90, "maxDelaySeconds": 60}},
        "spec.retries.baseDelaySeconds",
        "must not be greater than maxDelaySeconds (60)",
    ),
    (
        "breaker threshold",
        {"circuitBreaker": {"failureThreshold": 0}},
        "spec.circuitBreaker.failureThreshold",
        "must be at least 1",
    ),
    ("queue concurrency", {"queue": {"maxConcurrent": 0}}, "spec.queue.maxConcurrent", "must be at least 1"),
    ("cache ttl", {"cache": {"ttlSeconds": 0}}, "spec.cache.ttlSeconds", "must be at least 1"),
    (
        "pii action",
        {"safety": {"pii": {"action": "mask"}}},
        "spec.safety.pii.action",
        "must be one of 'off', 'flag', 'redact' or 'block'",
    ),
    (
        "pii type",
        {"safety": {"pii": {"types": ["email", "passport"]}}},
        "spec.safety.pii.types[1]",
        "(got 'passport')",
    ),
    (
        "injection regex",
        {"safety": {"promptInjection": {"extraPatterns": ["(unclosed"]}}},
        "spec.safety.promptInjection.extraPatterns",
        "entry 0 ('(unclosed') is not a valid regular expression",
    ),
    (
        "moderation checks nothing",
        {"safety": {"moderation": {"action": "block", "input": False}}},
        "spec.safety.moderation.action",
        "both input and output are false",
    ),
    (
        "price negative",
        {"pricing": {"models": {"my-ft": {"inputPerMillion": -1, "outputPerMillion": 1}}}},
        "spec.pricing.models.my-ft.inputPerMillion",
        "must be at least 0",
    ),
    (
        "price missing output",
        {"pricing": {"models": {"my-ft": {"inputPerMillion": 1}}}},
        "spec.pricing.models.my-ft.outputPerMillion",
        "is required",
    ),
    (
        "selector In without values",
        {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
        "spec.selector.matchExpressions[0].values",
        "must list at least one value when operator is In",
    ),
    (
        "selector Exists with values",
        {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}},
        "spec.selector.matchExpressions[0].values",
        "must be empty when operator is Exists",
    ),
    (
        "selector label value",
        {"selector": {"matchLabels": {"app": "not ok"}}},
        "spec.selector.matchLabels",
        "label value 'not ok' is invalid",
    ),
    ("unknown field", {"budgt": {}}, "spec.budgt", "unknown field; did you mean 'budget'?"),
    (
        "unknown nested field",
        {"budget": {"limit": []}},
        "spec.budget.limit",
        "unknown field; did you mean 'limits'?",
    ),
    ("snake case name", {"rate_limits": {}}, "spec.rate_limits", "unknown field; did you mean 'rateLimits'?"),
    ("section not a mapping", {"budget": 5}, "spec.budget", "must be a mapping of fields (got 5)"),
    (
        "list not a list",
        {"models": {"allow": "gpt-4o"}},
        "spec.models.allow",
        "must be a list (got 'gpt-4o')",
    ),
]


@pytest.mark.parametrize(("spec", "path", "words"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusal_names_the_field_and_the_problem(spec: dict[str, Any], path: str, words: str) -> None:
    error = refusal(spec)
    matching = [p for p in error.problems if p.path == path]
    assert matching, f"no problem at {path}: {error}"
    assert any(words in p.message for p in matching), str(error)
    assert f"{path}: " in str(error)
    assert "pydantic" not in str(error).lower() and "input_value" not in str(error)


def test_every_problem_is_reported_at_once() -> None:
    error = refusal(
        {
            "mode": "x",
            "budget": {"limits": [{"window": "month", "usd": 0}]},
            "requests": {"timeoutSeconds": -1},
        }
    )
    assert [p.path for p in error.problems] == [
        "spec.mode",
        "spec.budget.limits[0].usd",
        "spec.requests.timeoutSeconds",
    ]
    assert str(error).startswith("invalid OpenAIPolicy team-a/p (3 problems):\n  - spec.mode: ")


def test_wrong_api_version_kind_and_name() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy({"apiVersion": "v1", "kind": "Policy", "metadata": {"name": "Bad Name"}})
    text = str(caught.value)
    assert "apiVersion: must be 'openaipolicy.dev/v1alpha1' (got 'v1')" in text
    assert "kind: must be 'OpenAIPolicy' (got 'Policy')" in text
    assert "metadata.name: must be a lowercase DNS name" in text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("spec: [unclosed", "not valid YAML or JSON at line 1"),
        ("a: 1\n---\nb: 2\n", "expected exactly one OpenAIPolicy document, found 2"),
        ("", "found 0"),
        ("- 1\n- 2\n", "must be a mapping with apiVersion, kind, metadata and spec"),
        ('{"apiVersion": "openaipolicy.dev/v1alpha1", "kind": "OpenAIPolicy"}', "metadata: is required"),
    ],
)
def test_unreadable_documents(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(words)):
        load_policy(text)


def test_valid_edge_values_are_accepted() -> None:
    spec = load_policy(
        document(
            {
                "budget": {
                    "limits": [
                        {"window": "hour", "usd": 0.01},
                        {"window": "day", "usd": 1},
                        {"window": "month", "usd": 10},
                    ],
                    "alertAtPercent": 0,
                    "downgradeAtPercent": 100,
                },
                "models": {
                    "allow": ["gpt-4o", "o[34]-mini*", "ft:gpt-4o-mini:org::*"],
                    "fallback": "o4-mini-2025-04-16",
                    "pin": {"gpt-4o-latest": "gpt-4o"},
                },
                "retries": {"maxAttempts": 1, "baseDelaySeconds": 0, "maxDelaySeconds": 0},
                "queue": {"maxDepth": 0, "maxWaitSeconds": 0},
                "selector": {
                    "matchLabels": {"app.kubernetes.io/name": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["batch"]}],
                },
                "upstream": {"baseURL": "http://127.0.0.1:8080/v1"},
            }
        )
    ).spec
    assert [limit.window for limit in spec.budget.limits] == ["hour", "day", "month"]
    assert spec.models.allows("o4-mini-2025-04-16") and not spec.models.allows("o1-mini")


# ---- helpers used by the sidecar and the operator ----------------------------------------


@pytest.mark.parametrize(
    ("model", "patterns", "allowed"),
    [
        ("gpt-4o-2024-08-06", ["gpt-4o-*"], True),
        ("gpt-4o", ["gpt-4o-*"], False),
        ("gpt-4o", ["*"], True),
        ("GPT-4O", ["gpt-4o"], False),
        ("o3-mini", ["o[34]-mini"], True),
        ("o1-mini", ["o[!1]-mini"], False),
        ("gpt-4.1", ["gpt-4?1"], True),
        ("gpt-4x1", ["gpt-4.1"], False),
        ("ft:gpt-4o-mini:acme::abc", ["ft:gpt-4o-mini:acme::*"], True),
    ],
)
def test_model_allowed_is_fnmatch_and_the_cel_translation_agrees(
    model: str, patterns: list[str], allowed: bool
) -> None:
    assert model_allowed(model, patterns) is allowed
    # The CRD's CEL rule turns each glob into a regex with replace(); do the same replacements here.
    assert "replace('.', '\\\\.')" in cel_glob_regex("p")
    for pattern in patterns:
        regex = (
            "^" + pattern.replace(".", "\\.").replace("*", ".*").replace("?", ".").replace("[!", "[^") + "$"
        )
        assert bool(re.match(regex, model)) is fnmatchcase(model, pattern)


def test_selector_matches_like_kubernetes() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "api"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
            ],
        }
    )
    assert selector.matches({"app": "web", "tier": "api"})
    assert not selector.matches({"app": "web", "tier": "batch"})
    assert not selector.matches({"app": "web", "tier": "api", "canary": "1"})
    assert not selector.matches({"app": "web", "tier": "api", "env": "dev"})
    assert not selector.matches({"tier": "api"})
    assert LabelSelector().matches({}) and LabelSelector().is_empty()
    exists = LabelSelector.model_validate({"matchExpressions": [{"key": "x", "operator": "Exists"}]})
    assert exists.matches({"x": ""}) and not exists.matches({})


def test_models_spec_helpers() -> None:
    models = ModelsSpec(allow=["gpt-4o*"], pin={"gpt-4o": "gpt-4o-2024-08-06"}, fallback="gpt-4o-mini")
    assert models.resolve("gpt-4o") == "gpt-4o-2024-08-06" and models.allows("gpt-4o-mini")
    assert not models.allows("o3") and models.has_wildcards()


def test_status_summaries() -> None:
    spend = [
        WindowSpend(
            window="month", bucket="2026-11", usd="1.234", limit_usd="10", remaining_usd="8.766", percent=12
        ),
        WindowSpend(
            window="hour", bucket="2026-11-22T14", usd="0.9", limit_usd="1", remaining_usd="0.1", percent=90
        ),
        WindowSpend(window="day", bucket="2026-11-22", usd="1.1"),
    ]
    assert spend_summary(spend) == "$0.90/$1.00 hour"
    assert spend_summary(spend[:1]) == "$1.23/$10.00 month"
    assert spend_summary([spend[2]]) == "$1.10 day"
    assert spend_summary([]) is None
    assert pods_summary(PodsStatus(injected=2, reporting=1)) == "1/2" and pods_summary(None) is None
    status = PolicyStatus(spend=spend[:1], pods=PodsStatus(injected=2, reporting=2))
    summary = summarize(status)
    assert (summary.spend, summary.pods) == ("$1.23/$10.00 month", "2/2")


def test_status_document_is_camel_case() -> None:
    status = PolicyStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Published",
                    "message": "ok",
                    "lastTransitionTime": "2026-11-22T14:00:00Z",
                }
            ],
            "usage": {"requests": 5, "blockedByReason": {"budget_exceeded": 2}, "blocked": 2},
            "spend": [
                {
                    "window": "month",
                    "bucket": "2026-11",
                    "usd": "1",
                    "limitUsd": "10",
                    "remainingUsd": "9",
                    "percent": 10,
                }
            ],
        }
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["observedGeneration"] == 3 and dumped["usage"]["blockedByReason"] == {"budget_exceeded": 2}
    assert dumped["conditions"][0]["lastTransitionTime"].startswith("2026-11-22T14:00:00")
    assert dumped["spend"][0]["limitUsd"] == "10"


def test_openai_policy_is_constructible_in_python() -> None:
    policy = OpenAIPolicy(metadata={"name": "p"}, spec=PolicySpec(suspend=True))
    assert policy.ref == ("default", "p") and policy.to_document()["spec"]["suspend"] is True
