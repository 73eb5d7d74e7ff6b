"""The helm chart: lint, schema validation of what it renders, its values schema, and that it
agrees with the operator (RBAC rules, webhook shape, command-line flags, CRDs, metric names).

Offline tests render with `helm template`; the last ones install and uninstall the chart in the
local control plane (no kubelet there: the Deployments' pods are never started, which is why the
webhook keeps its default failurePolicy Ignore and blocks nothing).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.delivery.chart_render import CHART, NAMESPACE, ROOT, SUPPORTED_VERSIONS, Helm, find

# Kinds that are not built into Kubernetes: their schemas come from their own CRDs.
CUSTOM_API_GROUPS = {"monitoring.coreos.com/v1", "cert-manager.io/v1", "kopf.dev/v1"}

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"certManager": {"enabled": True}},
    "cert-manager-existing-issuer": {
        "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
    },
    "external-redis": {"redis": {"url": "rediss://redis.example.internal:6380/0"}},
    "monitoring": {
        "monitoring": {
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "customised": {
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "operator": {
            "extraArgs": ["--namespace=team-a"],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "podLabels": {"team": "platform"},
            "podAnnotations": {"owner": "platform"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}
            ],
            "priorityClassName": "system-cluster-critical",
        },
        "redis": {"nodeSelector": {"kubernetes.io/os": "linux"}},
    },
    "user-roles": {"rbac": {"view": {"enabled": True}, "edit": {"enabled": True}}},
    "admission-webhook": {"admission": {"validation": "webhook", "webhookFailurePolicy": "Ignore"}},
    "single-replica-fail-closed": {
        "operator": {"replicas": 1, "verbose": True},
        "webhook": {"failurePolicy": "Fail", "excludedNamespaces": ["ci", "monitoring"]},
    },
}


# --------------------------------------------------------------------------------------------
# helpers


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment", "opo-openai-policy-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def operator_args(docs: list[dict[str, Any]], directory: Path) -> Any:
    """The operator's parsed flags, its signing Secret's files written where the flags say they are."""
    from openai_policy_operator.__main__ import parser

    container = operator_container(docs)
    args = parser().parse_args(container["args"])
    secret = find(docs, "Secret", "opo-openai-policy-operator-signing")["data"]
    assert args.signing_key_file.parent == args.policy_keys_file.parent
    for name, flag in (("signing.key", "signing_key_file"), ("policy-keys", "policy_keys_file")):
        path = directory / name
        path.write_bytes(base64.b64decode(secret[name]))
        setattr(args, flag, path)
    return args


# --------------------------------------------------------------------------------------------
# lint and schemas


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_is_clean(helm: Helm, variant: str) -> None:
    result = helm.run(
        "lint", "--strict", str(CHART), "--kube-version", SUPPORTED_VERSIONS[-1], values=VARIANTS[variant]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    # --strict already fails on warnings; an INFO about the missing icon is all that may show.
    problems = [line for line in result.stdout.splitlines() if re.match(r"\[(WARNING|ERROR)\]", line)]
    assert not problems, problems


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_match_the_kubernetes_schemas(helm: Helm, variant: str, version: str) -> None:
    """Every built-in object, CRDs included, against the official schemas of each supported version
    (kubernetes-validate ships them offline), in strict mode: an unknown or misplaced field fails."""
    docs = helm.template(VARIANTS[variant], version=version, crds=True)
    own_crds = {
        (c["spec"]["group"], c["spec"]["names"]["kind"]): c
        for c in docs
        if c["kind"] == "CustomResourceDefinition"
    }
    checked = 0
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] in CUSTOM_API_GROUPS:
            group = doc["apiVersion"].split("/")[0]
            crd = own_crds.get((group, doc["kind"]))
            if crd is not None:  # our own CRDs (kopf peering): validate against their schema
                (served,) = [
                    v for v in crd["spec"]["versions"] if v["name"] == doc["apiVersion"].split("/")[1]
                ]
                jsonschema.validate(doc, served["schema"]["openAPIV3Schema"])
            else:  # Prometheus Operator / cert-manager kinds: no schema offline, check the shape
                assert isinstance(doc.get("spec"), dict) and doc["metadata"].get("namespace") == NAMESPACE, (
                    where
                )
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version} at {path}: {error.message}")
        checked += 1
    assert checked >= 8


def test_the_supported_versions_are_the_charts(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.29.0-0"
    result = helm.run("template", "x", str(CHART), "--kube-version", "1.28.0")
    assert result.returncode != 0 and "kubeVersion" in result.stderr


BAD_VALUES = [
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy", "'Ignore', 'Fail'"),
    ({"operator": {"replicas": 0}}, "/operator/replicas", "minimum"),
    ({"redis": {"url": "http://redis:6379"}}, "/redis/url", "does not match pattern"),
    ({"webhok": {"failurePolicy": "Fail"}}, "additional properties 'webhok' not allowed", ""),
    ({"sidecar": {"resources": {"limits": {"cpu": "1"}}}}, "/sidecar/resources/limits", "'cpu' not allowed"),
    ({"sidecar": {"resources": {"requests": {"cpu": "lots"}}}}, "/sidecar/resources/requests/cpu", "pattern"),
    ({"sidecar": {"ports": {"proxy": 70000}}}, "/sidecar/ports/proxy", "maximum"),
    ({"sidecar": {"image": {"pullPolicy": "Sometimes"}}}, "/sidecar/image/pullPolicy", "must be one of"),
    ({"webhook": {"timeoutSeconds": 60}}, "/webhook/timeoutSeconds", "maximum"),
    ({"webhook": {"excludedNamespaces": ["Not_A_Namespace"]}}, "/webhook/excludedNamespaces/0", "pattern"),
    (
        {"monitoring": {"prometheusRule": {"successRate": 99.5}}},
        "/monitoring/prometheusRule/successRate",
        "maximum",
    ),
    (
        {"certManager": {"issuerRef": {"name": "ca", "kind": "Vault"}}},
        "/certManager/issuerRef/kind",
        "must be one of",
    ),
    ({"operator": {"statusIntervalSeconds": "soon"}}, "/operator/statusIntervalSeconds", "want number"),
]


@pytest.mark.parametrize(("values", "where", "why"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_values_schema_refuses_bad_values_with_a_message(
    helm: Helm, values: dict[str, Any], where: str, why: str
) -> None:
    result = helm.run("template", "x", str(CHART), "--kube-version", SUPPORTED_VERSIONS[-1], values=values)
    assert result.returncode != 0, f"{values} was accepted"
    assert "don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr and why in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# the chart agrees with the operator


def test_chart_crds_are_the_generated_crds(helm: Helm) -> None:
    """charts/.../crds holds the top-level crds/ byte for byte, plus kopf's peering CRDs
    (scripts/sync-chart-crds.sh copies and generates them)."""
    from openai_policy_operator import peering

    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert "openaipolicies.openaipolicy.dev.yaml" in top, "crds/ has no OpenAIPolicy CRD"
    for name, content in top.items():
        assert chart.get(name) == content, (
            f"chart crds/{name} differs from crds/{name}: run scripts/sync-chart-crds.sh"
        )
    extra = set(chart) - set(top)
    assert extra <= {"kopf-peerings.kopf.dev.yaml"}, f"unexpected chart CRDs {extra}"
    if "kopf-peerings.kopf.dev.yaml" in extra:
        generated = [d for d in yaml.safe_load_all(chart["kopf-peerings.kopf.dev.yaml"]) if d]
        assert generated == peering.crds(), "kopf peering CRDs are stale: run scripts/sync-chart-crds.sh"
    rendered = {
        d["metadata"]["name"] for d in helm.template(crds=True) if d["kind"] == "CustomResourceDefinition"
    }
    assert {"openaipolicies.openaipolicy.dev", "clusterkopfpeerings.kopf.dev"} <= rendered


def test_chart_rbac_is_the_operators_rbac(helm: Helm) -> None:
    from openai_policy_operator import rbac

    docs = helm.template()
    role = find(docs, "ClusterRole")
    assert role["rules"] == rbac.rules(), (
        "chart RBAC differs from openai_policy_operator.rbac: run scripts/sync-chart-rbac.sh"
    )
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = find(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    deployment = find(docs, "Deployment", "opo-openai-policy-operator")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_no_role_grants_anything_on_secrets_or_wildcards(helm: Helm) -> None:
    for variant in VARIANTS.values():
        for doc in helm.template(variant):
            if doc["kind"] not in ("ClusterRole", "Role"):
                continue
            for rule in doc["rules"]:
                if "secrets" in rule.get("resources", []):
                    # The operator writes each policy's Redis credential and reads no Secret.
                    assert doc["metadata"]["name"] == "opo-openai-policy-operator", rule
                    assert rule["resources"] == ["secrets"], rule
                    assert set(rule["verbs"]) == {"create", "patch"}, rule
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), rule
                if "" in rule.get("apiGroups", []):
                    assert set(rule["verbs"]) & {"escalate", "bind", "impersonate"} == set(), rule


def test_operator_understands_every_flag_the_chart_passes(helm: Helm, tmp_path: Path) -> None:
    from openai_policy_operator.__main__ import settings_from

    for name, variant in VARIANTS.items():
        docs = helm.template(variant)
        container = operator_container(docs)
        assert "command" not in container  # the image's entrypoint is the operator
        args = operator_args(docs, tmp_path)  # exits (SystemExit) on an unknown flag
        settings = settings_from(args)
        # The chart's generated key signs, and the sidecars are given its certificate.
        assert settings.signer is not None and settings.injection.policy_keys
        values = variant
        expected_excluded = {"kube-system", *values.get("webhook", {}).get("excludedNamespaces", [])}
        assert set(settings.webhook.excluded_namespaces) == expected_excluded, name
        assert settings.webhook.failure_policy == values.get("webhook", {}).get("failurePolicy", "Ignore")
        assert settings.webhook.manage_configuration is None, "the chart owns the webhook configuration"
        assert (
            settings.webhook.listen_port == 9443
            and settings.webhook.cert_dir == "/etc/openai-policy-operator/tls"
        )
        assert settings.peering_name == "opo-openai-policy-operator"
        assert settings.injection.sidecar_image == "openai-policy-sidecar:0.1.0"
        assert settings.injection.resources.as_k8s() == {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
        assert (settings.injection.proxy_port, settings.injection.admin_port) == (8780, 8781)
        assert settings.injection.log_level == "INFO"
        # The Redis URL reaches the operator through the environment its parser defaults from.
        redis_url = env_of(container)["OPENAI_POLICY_REDIS_URL"]
        expected = (
            values.get("redis", {}).get("url")
            or f"redis://opo-openai-policy-operator-redis.{NAMESPACE}.svc:6379/0"
        )
        assert redis_url == expected, name


def test_webhook_configuration_is_the_operators(helm: Helm) -> None:
    """The chart's MutatingWebhookConfiguration has the shape the operator itself would register."""
    from openai_policy_operator.config import WebhookSettings
    from openai_policy_operator.webhook_server import mutating_webhook_configuration

    for variant in VARIANTS.values():
        docs = helm.template(variant)
        (hook,) = find(docs, "MutatingWebhookConfiguration")["webhooks"]
        webhook_values = variant.get("webhook", {})
        settings = WebhookSettings(
            failure_policy=webhook_values.get("failurePolicy", "Ignore"),
            timeout_seconds=5,
            excluded_namespaces=("kube-system", *webhook_values.get("excludedNamespaces", [])),
        )
        (expected,) = mutating_webhook_configuration("x", {}, settings, NAMESPACE)["webhooks"]
        for key in (
            "name",
            "admissionReviewVersions",
            "sideEffects",
            "failurePolicy",
            "matchPolicy",
            "rules",
            "timeoutSeconds",
            "reinvocationPolicy",
            "namespaceSelector",
        ):
            assert hook[key] == expected[key], key
        service = hook["clientConfig"]["service"]
        assert service == {
            "name": "opo-openai-policy-operator-webhook",
            "namespace": NAMESPACE,
            "path": "/inject-sidecar",
            "port": 443,
        }
        assert "url" not in hook["clientConfig"]


def _without_labels(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        doc["metadata"].pop("labels", None)
        out.append(doc)
    return out


ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "sidecar": {
                "image": {"repository": "registry.local:5000/platform/sidecar"},
                "ports": {"proxy": 18780},
                "otlpEndpoint": "http://otel-collector.monitoring:4318",
            },
            "redis": {"url": "rediss://redis.example.internal:6380/0", "existingSecret": "my-redis"},
            "webhook": {"excludedNamespaces": ["ci"]},
        },
    ],
    ids=["default", "customised"],
)
def test_admission_policies_are_the_operators(helm: Helm, values: dict[str, Any], tmp_path: Path) -> None:
    """The chart's ValidatingAdmissionPolicies are what openai_policy_operator.admission_policy renders
    for the settings the chart gives the operator (files/admission-policy.yaml is generated from it)."""
    from openai_policy_operator import admission_policy
    from openai_policy_operator.__main__ import settings_from
    from openai_policy_operator.admission_rules import GuardSettings

    docs = helm.template(values)
    container = operator_container(docs)
    args = operator_args(docs, tmp_path)
    args.redis_url = env_of(container)["OPENAI_POLICY_REDIS_URL"]  # the parser's default, from the env
    settings = settings_from(args)
    expected = admission_policy.manifests(
        "opo-openai-policy-operator",
        GuardSettings.from_operator(settings),
        sorted({"kube-system", NAMESPACE, *values.get("webhook", {}).get("excludedNamespaces", [])}),
    )
    rendered = [d for d in docs if d["kind"] in ADMISSION_KINDS]
    assert _without_labels(rendered) == _without_labels(expected)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/instance"] == "opo" for d in rendered)
    assert not [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]


def test_older_clusters_get_the_validating_webhook_instead(helm: Helm) -> None:
    from openai_policy_operator.config import WebhookSettings
    from openai_policy_operator.webhook_server import validating_webhook_configuration

    for docs in (helm.template(version="1.29.0"), helm.template(VARIANTS["admission-webhook"])):
        assert not [d for d in docs if d["kind"] in ADMISSION_KINDS]
        (hook,) = find(docs, "ValidatingWebhookConfiguration")["webhooks"]
        failure = "Ignore" if hook["failurePolicy"] == "Ignore" else "Fail"
        settings = WebhookSettings(
            validating_failure_policy=failure, timeout_seconds=5, excluded_namespaces=("kube-system",)
        )
        (expected,) = validating_webhook_configuration("x", {}, settings, NAMESPACE)["webhooks"]
        for key in (
            "name",
            "admissionReviewVersions",
            "sideEffects",
            "matchPolicy",
            "rules",
            "namespaceSelector",
        ):
            assert hook[key] == expected[key], key
        assert hook["clientConfig"]["service"]["path"] == "/validate-pods"
    (default,) = find(helm.template(version="1.29.0"), "ValidatingWebhookConfiguration")["webhooks"]
    assert default["failurePolicy"] == "Fail"


def test_user_roles_are_off_by_default_and_the_operators_when_on(helm: Helm) -> None:
    from openai_policy_operator import rbac

    assert [d["metadata"]["name"] for d in helm.template() if d["kind"] == "ClusterRole"] == [
        "opo-openai-policy-operator"
    ]
    docs = helm.template(VARIANTS["user-roles"])
    view = find(docs, "ClusterRole", "opo-openai-policy-operator-view")
    edit = find(docs, "ClusterRole", "opo-openai-policy-operator-edit")
    assert view["rules"] == rbac.view_rules() and edit["rules"] == rbac.edit_rules()
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not [
        k for k in edit["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate-to")
    ]


# --------------------------------------------------------------------------------------------
# what the chart renders


def test_defaults_operator_deployment_is_hardened_and_highly_available(helm: Helm) -> None:
    docs = helm.template()
    deployment = find(docs, "Deployment", "opo-openai-policy-operator")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["readinessProbe"]["tcpSocket"]["port"] == "webhook"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    peering = find(docs, "ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in container["args"]
    assert "PodDisruptionBudget" not in kinds(helm.template(VARIANTS["single-replica-fail-closed"]))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_container_is_hardened(helm: Helm, variant: str) -> None:
    for doc in helm.template(VARIANTS[variant]):
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            ctx = container["securityContext"]
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["requests"], where
            assert container.get("livenessProbe") and container.get("readinessProbe"), where
        # Pods of the chart are never injected themselves.
        assert doc["spec"]["template"]["metadata"]["annotations"]["openaipolicy.dev/inject"] == "false"


def test_webhook_selects_opted_in_namespaces_except_the_release_and_kube_system(helm: Helm) -> None:
    (hook,) = find(helm.template(VARIANTS["single-replica-fail-closed"]), "MutatingWebhookConfiguration")[
        "webhooks"
    ]
    assert hook["namespaceSelector"] == {
        "matchLabels": {"openaipolicy.dev/injection": "enabled"},
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["ci", "kube-system", "monitoring", NAMESPACE],
            }
        ],
    }
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": "openaipolicy.dev/inject", "operator": "NotIn", "values": ["false"]}]
    }
    assert hook["failurePolicy"] == "Fail"
    (default,) = find(helm.template(), "MutatingWebhookConfiguration")["webhooks"]
    assert default["failurePolicy"] == "Ignore"


def _pem(b64: str) -> bytes:
    return base64.b64decode(b64)


def test_default_tls_is_a_chart_generated_ca_that_signs_the_serving_certificate(
    helm: Helm, tmp_path: Path
) -> None:
    docs = helm.template()
    secret = find(docs, "Secret", "opo-openai-policy-operator-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    (hook,) = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    (tmp_path / "ca.crt").write_bytes(_pem(secret["data"]["ca.crt"]))
    (tmp_path / "tls.crt").write_bytes(_pem(secret["data"]["tls.crt"]))
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "tls.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"DNS:opo-openai-policy-operator-webhook.{NAMESPACE}.svc" in text
    # The Deployment mounts it; the operator never needs RBAC on Secrets for it.
    volumes = find(docs, "Deployment", "opo-openai-policy-operator")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "webhook-tls",
        "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440},
    } in volumes


def test_cert_manager_issues_the_certificate_and_injects_the_ca(helm: Helm) -> None:
    docs = helm.template(VARIANTS["cert-manager"])
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    # No chart-generated TLS key with cert-manager; the policy-signing key is not a TLS key.
    assert secrets == [
        "opo-openai-policy-operator-redis-auth",
        "opo-openai-policy-operator-signing",
    ], "no chart-generated TLS key with cert-manager"
    config = find(docs, "MutatingWebhookConfiguration")
    assert (
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == f"{NAMESPACE}/opo-openai-policy-operator-webhook-tls"
    )
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    serving = find(docs, "Certificate", "opo-openai-policy-operator-webhook-tls")
    assert serving["spec"]["secretName"] == "opo-openai-policy-operator-webhook-tls"
    assert f"opo-openai-policy-operator-webhook.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    issuer = find(docs, "Issuer", serving["spec"]["issuerRef"]["name"])
    assert (
        issuer["spec"]["ca"]["secretName"]
        == find(docs, "Certificate", "opo-openai-policy-operator-ca")["spec"]["secretName"]
    )
    existing = helm.template(VARIANTS["cert-manager-existing-issuer"])
    assert "Issuer" not in kinds(existing)
    assert find(existing, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_bundled_redis_by_default_or_an_external_url(helm: Helm) -> None:
    default = helm.template()
    redis = find(default, "StatefulSet", "opo-openai-policy-operator-redis")
    script = redis["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert 'echo "maxmemory-policy noeviction"' in script
    find(default, "Service", "opo-openai-policy-operator-redis")
    external = helm.template(VARIANTS["external-redis"])
    assert [d["metadata"]["name"] for d in external if "redis" in d["metadata"]["name"]] == []
    assert (
        env_of(operator_container(external))["OPENAI_POLICY_REDIS_URL"]
        == "rediss://redis.example.internal:6380/0"
    )


def test_sidecar_defaults_reach_the_operator(helm: Helm) -> None:
    values = {
        "sidecar": {
            "image": {"repository": "registry.local/sidecar", "tag": "1.2.3", "pullPolicy": "Always"},
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            "ports": {"proxy": 18780, "admin": 18781},
            "logLevel": "DEBUG",
        }
    }
    container = operator_container(helm.template(values))
    args = container["args"]
    for flag in (
        "--sidecar-image=registry.local/sidecar:1.2.3",
        "--sidecar-image-pull-policy=Always",
        "--sidecar-cpu-request=20m",
        "--sidecar-memory-request=32Mi",
        "--sidecar-memory-limit=128Mi",
        "--sidecar-proxy-port=18780",
        "--sidecar-admin-port=18781",
        "--sidecar-log-level=DEBUG",
    ):
        assert flag in args


def test_monitoring_is_off_by_default_and_complete_when_on(helm: Helm) -> None:
    assert not {"PodMonitor", "PrometheusRule", "ConfigMap"} & set(kinds(helm.template()))
    docs = helm.template(VARIANTS["monitoring"])
    monitor = find(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "policy-admin" and endpoint["path"] == "/metrics"
    rule = find(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "OpenAIPolicySuccessRateLow",
        "OpenAIPolicyLatencyP95High",
        "OpenAIPolicyHourlySpendAboveAlert",
        "OpenAIPolicyHourlySpendHigh",
        "OpenAIPolicyQueueDepthHigh",
    } <= set(alerts)
    assert "< 0.995" in alerts["OpenAIPolicySuccessRateLow"]["expr"]
    assert "> 5" in alerts["OpenAIPolicyLatencyP95High"]["expr"]
    assert "> 1000" in alerts["OpenAIPolicyQueueDepthHigh"]["expr"]
    dashboard = json.loads(find(docs, "ConfigMap")["data"]["openai-policy.json"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("spend", "window", "tokens", "refusals", "latency", "circuit"):
        assert topic in titles, topic


def _exported_metric_names() -> set[str]:
    """Every series name a sidecar exports (counters as _total, histograms as _bucket/_sum/_count)."""
    from openai_policy_sidecar.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def _referenced_metric_names(helm: Helm) -> set[str]:
    docs = helm.template(VARIANTS["monitoring"])
    text = (
        json.dumps(find(docs, "PrometheusRule")["spec"])
        + find(docs, "ConfigMap")["data"]["openai-policy.json"]
    )
    return set(re.findall(r"\bopenai_policy_[a-z0-9_]+", text))


# The gauges the chart's queue and circuit alerts read (circuit state 0 closed, 1 half-open, 2 open).
ALERTED_GAUGES = {"openai_policy_queue_depth", "openai_policy_circuit_state"}


def test_alerts_and_dashboard_use_the_sidecars_metric_names(helm: Helm) -> None:
    missing = _referenced_metric_names(helm) - _exported_metric_names()
    assert not missing, f"the chart's alerts/dashboard use metrics no sidecar exports: {sorted(missing)}"


def test_the_sidecar_exports_the_queue_and_circuit_metrics() -> None:
    assert ALERTED_GAUGES <= _exported_metric_names()


# --------------------------------------------------------------------------------------------
# install into the local control plane


def _manifest_objects(manifest: str) -> list[tuple[str, str, str | None]]:
    """(kubectl resource type as Kind.group, name, namespace) of every object helm created."""
    out = []
    for doc in yaml.safe_load_all(manifest):
        if doc:
            group = doc["apiVersion"].rpartition("/")[0]
            kind = f"{doc['kind']}.{group}" if group else doc["kind"]
            out.append((kind, doc["metadata"]["name"], doc["metadata"].get("namespace")))
    return out


def _exists(control_plane: Any, kind: str, name: str, namespace: str | None) -> bool:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
    if namespace:
        args += ["-n", namespace]
    return bool(control_plane.kubectl(*args).stdout.strip())


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def test_helm_install_refuses_a_bad_value_with_a_message(control_plane: Any, namespace: str) -> None:
    result = control_plane.helm(
        "install",
        "bad",
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "webhook.failurePolicy=Maybe",
        check=False,
    )
    assert result.returncode != 0
    assert "/webhook/failurePolicy" in result.stderr and "'Ignore', 'Fail'" in result.stderr, result.stderr
    assert not control_plane.helm("list", "--namespace", namespace, "-q").stdout.strip()


def test_install_upgrade_and_uninstall_in_the_control_plane(control_plane: Any, namespace: str) -> None:
    release = f"t{namespace[-12:]}".rstrip("-")  # cluster-scoped names must not collide with other tests
    control_plane.helm("install", release, str(CHART), "--namespace", namespace)
    manifest = control_plane.helm("get", "manifest", release, "--namespace", namespace).stdout
    objects = _manifest_objects(manifest)
    kinds_installed = {k.split(".")[0] for k, _, _ in objects}
    assert {
        "Deployment",
        "Service",
        "Secret",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ClusterKopfPeering",
    } <= kinds_installed
    for kind, name, ns in objects:
        assert _exists(control_plane, kind, name, ns), f"{kind} {name} was not created"
    crds = ["openaipolicies.openaipolicy.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    for crd in crds:
        assert _exists(control_plane, "crd", crd, None)

    # The generated CA and certificate survive an upgrade (looked up, not generated again).
    secret_name = next(n for k, n, _ in objects if k == "Secret" and n.endswith("-webhook-tls"))
    webhook_name = next(n for k, n, _ in objects if k.startswith("MutatingWebhookConfiguration"))

    def tls_state() -> tuple[str, str]:
        secret = json.loads(
            control_plane.kubectl("get", "secret", secret_name, "-n", namespace, "-o", "json").stdout
        )
        config = json.loads(
            control_plane.kubectl("get", "mutatingwebhookconfiguration", webhook_name, "-o", "json").stdout
        )
        return secret["data"]["tls.crt"], config["webhooks"][0]["clientConfig"]["caBundle"]

    before = tls_state()
    assert (
        before[1]
        == json.loads(
            control_plane.kubectl("get", "secret", secret_name, "-n", namespace, "-o", "json").stdout
        )["data"]["ca.crt"]
    )
    control_plane.helm(
        "upgrade", release, str(CHART), "--namespace", namespace, "--set", "webhook.timeoutSeconds=3"
    )
    assert tls_state() == before, "the webhook certificate changed on upgrade"

    # A pod in an opted-in namespace is still created while no operator answers (Ignore).
    workload = control_plane.create_namespace(
        "chart-workload", labels={"openaipolicy.dev/injection": "enabled"}
    )
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "app", "namespace": workload},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]},
        }
        control_plane.kubectl("create", "-f", "-", input=json.dumps(pod))
    finally:
        control_plane.delete_namespace(workload)

    control_plane.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
    for kind, name, ns in objects:
        _wait_until(
            lambda kind=kind, name=name, ns=ns: not _exists(control_plane, kind, name, ns),
            30,
            f"{kind} {name} to be deleted",
        )
    # Nothing carrying the release's label remains (ReplicaSets and Pods made by controllers included).
    selector = f"app.kubernetes.io/instance={release}"

    def leftovers() -> str:
        return control_plane.kubectl(
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings",
            "-n",
            namespace,
            "-l",
            selector,
            "-o",
            "name",
        ).stdout.strip()

    _wait_until(lambda: not leftovers(), 60, "the release's objects to be garbage-collected")
    cluster_scoped = control_plane.kubectl(
        "get",
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,clusterkopfpeerings,"
        "validatingadmissionpolicies,validatingadmissionpolicybindings",
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.strip()
    assert not cluster_scoped
    # helm keeps CRDs on uninstall, on purpose: deleting them would delete every policy.
    for crd in crds:
        assert _exists(control_plane, "crd", crd, None)


def test_user_roles_in_the_control_plane(control_plane: Any, namespace: str, helm: Helm) -> None:
    """With the chart's roles: a `view` user reads policies and changes nothing; `edit` (namespace
    editors) cannot write policies; the chart's edit role, bound to the platform team, can."""
    control_plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds" / "openaipolicies.openaipolicy.dev.yaml"),
    )
    release = f"roles-{namespace[-6:]}"
    roles = [
        d
        for d in helm.template(VARIANTS["user-roles"], release=release)
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(roles))
    platform_role = next(r["metadata"]["name"] for r in roles if r["metadata"]["name"].endswith("-edit"))
    try:
        kubeconfigs = {}
        for user, role in (("viewer", "view"), ("editor", "edit"), ("platform", platform_role)):
            control_plane.kubectl("create", "serviceaccount", user, "-n", namespace)
            control_plane.kubectl(
                "create",
                "rolebinding",
                user,
                "-n",
                namespace,
                f"--clusterrole={role}",
                f"--serviceaccount={namespace}:{user}",
            )
            kubeconfigs[user] = control_plane.service_account_kubeconfig(namespace, user)

        def can(user: str, verb: str, resource: str) -> bool:
            result = control_plane.kubectl(
                "auth", "can-i", verb, resource, "-n", namespace, kubeconfig=kubeconfigs[user], check=False
            )
            return result.stdout.strip() == "yes"

        # The aggregation controller copies the view role's rules into `view` (and `edit`, `admin`).
        _wait_until(
            lambda: can("viewer", "list", "openaipolicies.openaipolicy.dev"), 30, "aggregation into view"
        )
        policy = {
            "apiVersion": "openaipolicy.dev/v1alpha1",
            "kind": "OpenAIPolicy",
            "metadata": {"name": "team", "namespace": namespace},
            "spec": {"budget": {"limits": [{"window": "month", "usd": 10}]}},
        }
        created = control_plane.kubectl(
            "create", "-f", "-", input=json.dumps(policy), kubeconfig=kubeconfigs["platform"], check=False
        )
        assert created.returncode == 0, created.stderr
        listed = control_plane.kubectl(
            "get", "oaip", "-n", namespace, "-o", "name", kubeconfig=kubeconfigs["viewer"]
        )
        assert listed.stdout.split() == ["openaipolicy.openaipolicy.dev/team"]
        for user in ("viewer", "editor"):
            for verb in ("get", "list", "watch"):
                assert can(user, verb, "openaipolicies.openaipolicy.dev"), (user, verb)
            for verb in ("create", "update", "patch", "delete", "deletecollection"):
                assert not can(user, verb, "openaipolicies.openaipolicy.dev"), (user, verb)
            assert not can(user, "patch", "openaipolicies.openaipolicy.dev/status"), user
        raised = control_plane.kubectl(
            "patch", "oaip", "team", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"budget": {"limits": [{"window": "month", "usd": 5000}]}}}',
            kubeconfig=kubeconfigs["editor"], check=False,
        )  # fmt: skip
        assert raised.returncode != 0 and "forbidden" in raised.stderr, raised.stderr
        assert not can("viewer", "get", "secrets")
        for verb in ("create", "patch", "delete"):
            assert can("platform", verb, "openaipolicies.openaipolicy.dev"), verb
    finally:
        control_plane.kubectl(
            "delete", "clusterrole", *[r["metadata"]["name"] for r in roles], "--ignore-not-found"
        )


# -- Redis: authentication, the operator's ACL user, persistence ----------------------------------


def _redis_script(docs: list[dict[str, Any]]) -> str:
    redis = find(docs, "StatefulSet", "opo-openai-policy-operator-redis")
    return str(redis["spec"]["template"]["spec"]["containers"][0]["args"][0])


def test_bundled_redis_requires_a_password_and_keeps_an_aof_on_a_volume_by_default(helm: Helm) -> None:
    docs = helm.template()
    redis = find(docs, "StatefulSet", "opo-openai-policy-operator-redis")
    script = _redis_script(docs)
    assert "requirepass $(cat /run/secrets/redis-auth/password)" in script
    assert 'echo "appendonly yes"' in script and 'echo "appendfsync everysec"' in script
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    secret = find(docs, "Secret", "opo-openai-policy-operator-redis-auth")["data"]
    passwords = [base64.b64decode(secret[k]).decode() for k in ("password", "operator-password")]
    assert all(len(p) >= 32 for p in passwords) and passwords[0] != passwords[1]
    # No password in any pod spec: files from the Secret, read at start.
    workloads = json.dumps([d for d in docs if d["kind"] in ("Deployment", "StatefulSet")])
    assert not any(p in workloads for p in passwords)
    args = operator_container(docs)["args"]
    assert "--redis-username=oaip-operator" in args
    assert "--redis-password-file=/etc/openai-policy-operator/redis/operator-password" in args
    assert "--redis-sidecar-credentials=acl" in args


def test_persistence_and_storage_class_are_values(helm: Helm) -> None:
    docs = helm.template({"redis": {"persistence": {"size": "5Gi", "storageClass": "fast"}}})
    claim = find(docs, "StatefulSet", "opo-openai-policy-operator-redis")["spec"]["volumeClaimTemplates"][0]
    assert (
        claim["spec"]["storageClassName"] == "fast"
        and claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    )
    memory = helm.template({"redis": {"persistence": {"enabled": False}}})
    redis = find(memory, "StatefulSet", "opo-openai-policy-operator-redis")
    assert "volumeClaimTemplates" not in redis["spec"]
    assert 'echo "appendonly no"' in _redis_script(memory)


def test_external_redis_logs_in_with_an_existing_secret_never_a_url_password(helm: Helm) -> None:
    docs = helm.template({"redis": {"url": "rediss://redis.example:6380/0", "existingSecret": "mine"}})
    assert not [d for d in docs if d["kind"] == "Secret" and "redis" in d["metadata"]["name"]]
    deployment = find(docs, "Deployment", "opo-openai-policy-operator")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-auth")
    assert volume["secret"]["secretName"] == "mine"
    assert volume["secret"]["items"] == [{"key": "operator-password", "path": "operator-password"}]
    unauthenticated = helm.template({"redis": {"url": "redis://redis.example:6379/0"}})
    assert "--redis-sidecar-credentials=none" in operator_container(unauthenticated)["args"]
    result = helm.run(
        "template", "opo", str(CHART), "--kube-version", SUPPORTED_VERSIONS[-1],
        values={"redis": {"url": "redis://user:secret@redis.example:6379/0"}},
    )  # fmt: skip
    assert result.returncode != 0 and "/redis/url" in result.stderr


def test_the_operator_user_of_the_chart_is_the_store_s(helm: Helm) -> None:
    from openai_policy_store import acl

    script = _redis_script(helm.template())
    line = next(part for part in script.splitlines() if "user oaip-operator on" in part)
    rules = line.split("operator-password) ", 1)[1].rstrip('"').split()
    assert rules == acl.operator_rules()


def test_the_chart_s_redis_configuration_in_a_real_redis_server(helm: Helm, tmp_path: Path) -> None:
    """The rendered start script, run against Debian's redis-server: the default user needs the
    password, the operator's user can manage sidecar users but not flush or reconfigure, the AOF is on."""
    import subprocess

    import redis as redis_py
    from redis.exceptions import AuthenticationError, NoPermissionError

    from openai_policy_devkit.managed_process import free_port
    from openai_policy_store import acl

    docs = helm.template()
    secret = find(docs, "Secret", "opo-openai-policy-operator-redis-auth")["data"]
    auth = tmp_path / "auth"
    auth.mkdir()
    for key in ("password", "operator-password"):
        (auth / key).write_bytes(base64.b64decode(secret[key]))
    port = free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "data").mkdir()
    script = (
        _redis_script(docs)
        .replace("/run/secrets/redis-auth", str(auth))
        .replace("/run/redis", str(tmp_path / "config"))
        .replace("dir /data", f"dir {tmp_path / 'data'}")
        .replace("port 6379", f"port {port}")
        .replace('exec redis-server "$conf"', 'echo "bind 127.0.0.1" >> "$conf"; exec redis-server "$conf"')
    )
    process = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        operator = redis_py.Redis(
            port=port,
            username="oaip-operator",
            password=(auth / "operator-password").read_text(),
            driver_info=None,
        )
        _wait_until(lambda: _answers(operator), 10, "the chart's redis-server")
        with pytest.raises(AuthenticationError):
            redis_py.Redis(port=port, driver_info=None).ping()
        operator.execute_command(
            "ACL", "SETUSER", acl.sidecar_user("team", "p"), *acl.sidecar_rules("team", "p"), "on", ">pw"
        )
        for forbidden in (
            ("FLUSHALL",),
            ("CONFIG", "SET", "requirepass", "x"),
            ("KEYS", "*"),
            ("CLIENT", "LIST"),
        ):
            with pytest.raises(NoPermissionError):
                operator.execute_command(*forbidden)
        admin = redis_py.Redis(port=port, password=(auth / "password").read_text(), driver_info=None)
        assert admin.config_get("appendonly")["appendonly"] == "yes"
        assert admin.config_get("appendfsync")["appendfsync"] == "everysec"
    finally:
        process.terminate()
        process.wait(10)


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_helm_upgrade_keeps_the_redis_passwords_and_the_signing_key(
    control_plane: Any, namespace: str
) -> None:
    release = f"r{namespace[-12:]}".rstrip("-")
    control_plane.helm("install", release, str(CHART), "--namespace", namespace)
    try:
        name = f"{release}-openai-policy-operator-redis-auth"

        def data() -> dict[str, str]:
            secret = control_plane.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout
            return dict(json.loads(secret)["data"])

        def signing() -> dict[str, str]:
            secret = control_plane.kubectl(
                "get", "secret", f"{release}-openai-policy-operator-signing", "-n", namespace, "-o", "json"
            ).stdout
            return dict(json.loads(secret)["data"])

        def pinned_policy_keys() -> list[str]:
            # The value the admission policy requires after `--policy-keys` (sidecar-shape).
            policies = json.loads(
                control_plane.kubectl(
                    "get",
                    "validatingadmissionpolicies",
                    "-l",
                    f"app.kubernetes.io/instance={release}",
                    "-o",
                    "json",
                ).stdout
            )["items"]
            pairs = r"c\.args\[i\] == '--policy-keys' && c\.args\[i \+ 1\] == '([^']*)'\)"
            return re.findall(pairs, json.dumps(policies))

        before = data()
        assert set(before) == {"password", "operator-password"}
        signing_before = signing()
        assert set(signing_before) == {"signing.key", "policy-keys"}
        keys_before = base64.b64decode(signing_before["policy-keys"]).decode()
        assert pinned_policy_keys() == [keys_before], "the admission policy does not pin the chart's key"
        control_plane.helm(
            "upgrade", release, str(CHART), "--namespace", namespace, "--set", "redis.maxMemory=300mb"
        )
        assert data() == before, "helm upgrade changed the Redis passwords"
        assert signing() == signing_before, "helm upgrade changed the policy-signing key"
        assert pinned_policy_keys() == [keys_before], "helm upgrade changed the pinned --policy-keys"
    finally:
        control_plane.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s")
