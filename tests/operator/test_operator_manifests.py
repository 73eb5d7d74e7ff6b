"""Pure renderers: the policy ConfigMap, the webhook configuration, the RBAC rules, the CLI."""

from __future__ import annotations

import yaml

from openai_policy_api import load_policy
from openai_policy_operator import names, rbac
from openai_policy_operator.__main__ import parser, settings_from
from openai_policy_operator.config import WebhookSettings
from openai_policy_operator.rendering import policy_document, policy_input, render_configmap
from openai_policy_operator.webhook_server import mutating_webhook_configuration, with_handler_path

BODY = {
    "apiVersion": names.API_VERSION,
    "kind": names.KIND,
    "metadata": {
        "name": "team",
        "namespace": "apps",
        "uid": "uid-1",
        "generation": 4,
        "resourceVersion": "9",
        "managedFields": [{"manager": "kubectl"}],
        "creationTimestamp": "2026-11-22T10:00:00Z",
    },
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "budget": {"limits": [{"window": "day", "usd": 5}]},
    },
    "status": {"observedGeneration": 3},
}


def test_configmap_is_owned_and_carries_the_generation():
    policy = load_policy(policy_input(BODY))
    configmap = render_configmap(BODY, policy_document(policy, 4))
    assert configmap["metadata"]["name"] == "team-policy"
    owner = configmap["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "name": "team",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    rendered = yaml.safe_load(configmap["data"]["policy.yaml"])
    assert rendered["metadata"]["generation"] == 4
    assert rendered["spec"]["requests"]["maxOutputTokens"] == 500  # defaults filled
    assert load_policy(configmap["data"]["policy.yaml"]) == load_policy(rendered)


def test_policy_input_drops_server_fields():
    doc = policy_input(BODY)
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"] == {"name": "team", "namespace": "apps", "generation": 4}


def test_webhook_configuration_selects_labelled_namespaces_and_excludes_system_ones():
    config = mutating_webhook_configuration(
        "injector",
        with_handler_path({"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}),
        WebhookSettings(),
        "openai-policy-system",
    )
    hook = config["webhooks"][0]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/inject-sidecar"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["rules"][0]["resources"] == ["pods"] and hook["rules"][0]["operations"] == ["CREATE"]
    selector = hook["namespaceSelector"]
    assert selector["matchLabels"] == {"openaipolicy.dev/injection": "enabled"}
    assert selector["matchExpressions"][0]["values"] == ["kube-system", "openai-policy-system"]


def test_rbac_never_lets_the_operator_read_secrets():
    """Write-only on Secrets (the policies' Redis credentials): no get, list or watch, so no key."""
    for rule in rbac.rules("injector"):
        assert "*" not in rule["resources"] and "*" not in rule["verbs"]
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"] and set(rule["verbs"]) == {"create", "patch"}
    assert not any(r["resources"] == ["mutatingwebhookconfigurations"] for r in rbac.rules(None))


def test_cli_defaults_and_options():
    settings = settings_from(parser().parse_args([]))
    assert settings.webhook.failure_policy == "Ignore" and settings.namespaces == ()
    settings = settings_from(
        parser().parse_args(
            [
                "-n",
                "a",
                "-n",
                "b",
                "--redis-url",
                "redis://127.0.0.1:1/0",
                "--webhook-listen",
                "127.0.0.1:8443",
                "--failure-policy",
                "Fail",
                "--exclude-namespace",
                "infra",
                "--operator-namespace",
                "ops",
            ]
        )
    )
    assert settings.namespaces == ("a", "b")
    assert settings.injection.redis_url == "redis://127.0.0.1:1/0"
    assert (settings.webhook.listen_host, settings.webhook.listen_port) == ("127.0.0.1", 8443)
    assert settings.never_inject == {"kube-system", "infra", "ops"}
