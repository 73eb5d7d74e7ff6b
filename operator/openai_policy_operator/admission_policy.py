"""The admission rules of :mod:`.admission_rules` as ValidatingAdmissionPolicies (CEL, evaluated by
the API server itself, so they hold while the operator is down).

Three policies, each with its binding:

* ``<prefix>-pods``: the rules that need no OpenAIPolicy (reserved names, the sidecar's shape and
  volumes, process namespace, ephemeral containers). It has no params on purpose: a policy with
  params is not evaluated at all in a namespace without any OpenAIPolicy.
* ``<prefix>-exec``: no ``kubectl exec``/``cp``/``attach`` into the sidecar (CONNECT requests, whose
  object is not a Pod, hence a policy of its own).
* ``<prefix>-keys``: the rules per OpenAIPolicy of the pod's namespace (``paramKind``, every policy
  of the namespace through a param selector): its key Secret, and whether it selects the pod.
  The API server evaluates it once per policy; the pod must pass for each.

The chart ships the same objects: ``python -m openai_policy_operator.admission_policy --chart``
writes ``files/admission-policy.yaml`` with placeholders the chart fills from its values, and
tests/delivery/test_chart.py compares what the chart renders with :func:`manifests`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import names
from .admission_rules import (
    MAX_SIDECAR_ARGS,
    MESSAGES,
    PROBES,
    RESERVED_PREFIX,
    RULE_EPHEMERAL,
    RULE_EXEC,
    RULE_INJECTED_SELECTS_POD,
    RULE_POLICY_SELECTS_POD,
    RULE_PROCESS_NAMESPACE,
    RULE_RESERVED_NAMES,
    RULE_SIDECAR_SHAPE,
    RULE_SIDECAR_UNCHANGED,
    RULE_SIDECAR_VOLUMES,
    SERVICE_ACCOUNT_MOUNT_PATH,
    SERVICE_ACCOUNT_MOUNT_PREFIX,
    SIDECAR_ENV,
    SIDECAR_MOUNTS,
    SIDECAR_VOLUMES,
    GuardSettings,
    key_secret_message,
    policy_selects_message,
)

ADMISSION_GROUP = "admissionregistration.k8s.io"
CHART_FILE = Path("charts/openai-policy-operator/files/admission-policy.yaml")
# Placeholders in the chart's copy, replaced by templates/admission-policy.yaml.
CHART_TOKENS = {
    "prefix": "__NAME__",
    "repository": "__SIDECAR_REPOSITORY__",
    "proxy_port": "__SIDECAR_PROXY_PORT__",
    "admin_port": "__SIDECAR_ADMIN_PORT__",
    "redis_url": "__SIDECAR_REDIS_URL__",
    "policy_keys": "__SIDECAR_POLICY_KEYS__",
    "otlp_endpoint": "__SIDECAR_OTLP_ENDPOINT__",
    "excluded": "__EXCLUDED_NAMESPACES__",
    "labels": "__LABELS__",
}


def q(text: str) -> str:
    """A CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(q(i) for i in items) + "]"


def _or_default(path: str, default: str) -> str:
    """An optional field, or ``default`` (reading an absent field is an error in CEL)."""
    return f"(has({path}) ? {path} : {default})"


def _common_variables() -> list[dict[str, str]]:
    sidecar = q(names.SIDECAR_NAME)
    injected = q(names.INJECTED_ANNOTATION)
    return [
        {"name": "annotations", "expression": _or_default("object.metadata.annotations", "{}")},
        {"name": "labels", "expression": _or_default("object.metadata.labels", "{}")},
        {
            "name": "injectedAs",
            "expression": f"{injected} in variables.annotations ? variables.annotations[{injected}] : ''",
        },
        {"name": "initContainers", "expression": _or_default("object.spec.initContainers", "[]")},
        {"name": "ephemeralContainers", "expression": _or_default("object.spec.ephemeralContainers", "[]")},
        {"name": "volumes", "expression": _or_default("object.spec.volumes", "[]")},
        {"name": "sidecars", "expression": f"variables.initContainers.filter(c, c.name == {sidecar})"},
        {"name": "otherInit", "expression": f"variables.initContainers.filter(c, c.name != {sidecar})"},
        {"name": "isCreate", "expression": "request.operation == 'CREATE'"},
        # An update cannot add containers or volumes: see admission_rules.pod_violations.
        {
            "name": "checksEphemeral",
            "expression": "variables.isCreate || request.subResource == 'ephemeralcontainers'",
        },
    ]


def _mounts_reserved(c: str) -> str:
    return f"(has({c}.volumeMounts) && {c}.volumeMounts.exists(m, m.name.startsWith({q(RESERVED_PREFIX)})))"


def _reserved(name: str) -> str:
    return f"{name}.startsWith({q(RESERVED_PREFIX)})"


def _args_ok(guard: GuardSettings) -> str:
    fixed = guard.fixed_args()
    parts = [
        "has(c.args)",
        "c.args.size() >= 6",
        f"c.args.size() <= {MAX_SIDECAR_ARGS}",
        "c.args.size() % 2 == 0",
        *(f"c.args[{i}] == {q(arg)}" for i, arg in enumerate(fixed)),
    ]
    pair = [
        f"(c.args[i] == '--api-key-file' && c.args[i + 1].startsWith({q(names.API_KEY_DIR + '/')})"
        " && !c.args[i + 1].contains('..'))",
        "(c.args[i] == '--log-level' && c.args[i + 1].matches('^[A-Za-z]+$'))",
        f"(c.args[i] == '--redis-credential-file' && c.args[i + 1] == {q(names.REDIS_CREDENTIAL_FILE)})",
    ]
    if guard.redis_url is not None:
        pair.append(f"(c.args[i] == '--redis-url' && c.args[i + 1] == {q(guard.redis_url)})")
    if guard.policy_keys is not None:
        pair.append(f"(c.args[i] == '--policy-keys' && c.args[i + 1] == {q(guard.policy_keys)})")
        parts.append("c.args.exists(a, a == '--policy-keys')")
    pair.append(f"(c.args[i] == '--otlp-endpoint' && c.args[i + 1] == {q(guard.otlp_endpoint)})")
    optional = list(range(len(fixed), MAX_SIDECAR_ARGS, 2))
    parts.append(f"{optional}.all(i, c.args.size() <= i || {' || '.join(pair)})")
    return " && ".join(parts)


def _sidecar_shape(guard: GuardSettings) -> str:
    repo = guard.sidecar_repository
    mounts = " || ".join(
        [
            *(
                f"(m.name == {q(volume)} && m.mountPath == {q(path)})"
                for volume, path in SIDECAR_MOUNTS.items()
            ),
            f"(m.name.startsWith({q(SERVICE_ACCOUNT_MOUNT_PREFIX)}) && m.mountPath == {q(SERVICE_ACCOUNT_MOUNT_PATH)})",
        ]
    )
    probes = " && ".join(f"(!has(c.{p}) || !has(c.{p}.exec))" for p in PROBES)
    volume_ok = (
        f"!v.name.startsWith({q(RESERVED_PREFIX)})"
        f" || (v.name == {q(names.POLICY_VOLUME)} && has(v.configMap) && has(v.configMap.name)"
        f" && v.configMap.name == variables.injectedAs + {q(names.configmap_name(''))})"
        f" || (v.name == {q(names.TMP_VOLUME)} && has(v.emptyDir))"
        f" || (v.name == {q(names.API_KEY_VOLUME)} && has(v.secret))"
        f" || (v.name == {q(names.REDIS_CREDENTIAL_VOLUME)} && has(v.secret) && has(v.secret.secretName)"
        f" && v.secret.secretName == variables.injectedAs + {q(names.REDIS_CREDENTIAL_SUFFIX)})"
    )
    container = " && ".join(
        [
            "variables.injectedAs != ''",
            f"(c.image.startsWith({q(repo + ':')}) || c.image.startsWith({q(repo + '@')}))",
            "!has(c.command)",
            "has(c.restartPolicy) && c.restartPolicy == 'Always'",
            _args_ok(guard),
            "!has(c.envFrom)",
            f"has(c.env) && c.env.all(e, e.name in {cel_list(SIDECAR_ENV)}"
            " && (!has(e.valueFrom) || has(e.valueFrom.fieldRef)))",
            "c.env.exists(e, e.name == 'OPENAI_POLICY_NAME' && has(e.value) && e.value == variables.injectedAs)",
            "c.env.all(e, e.name != 'POD_NAMESPACE' || (has(e.valueFrom) && has(e.valueFrom.fieldRef)"
            " && e.valueFrom.fieldRef.fieldPath == 'metadata.namespace'))",
            f"c.env.all(e, e.name != 'TMPDIR' || (has(e.value) && e.value == {q(names.TMP_DIR)}))",
            f"(!has(c.volumeMounts) || c.volumeMounts.all(m, {mounts}))",
            "!has(c.volumeDevices)",
            "!has(c.lifecycle)",
            probes,
        ]
    )
    return (
        f"!variables.isCreate || (variables.sidecars.all(c, {container})"
        f" && (variables.sidecars.size() == 0 || variables.volumes.all(v, {volume_ok})))"
    )


def _pod_validations(guard: GuardSettings) -> list[dict[str, str]]:
    sidecar_names = cel_list(SIDECAR_VOLUMES)
    old_sidecars = (
        f"{_or_default('oldObject.spec.initContainers', '[]')}.filter(c, c.name == {q(names.SIDECAR_NAME)})"
    )
    injected = q(names.INJECTED_ANNOTATION)
    old_injected = (
        f"(has(oldObject.metadata.annotations) && {injected} in oldObject.metadata.annotations"
        f" ? oldObject.metadata.annotations[{injected}] : '')"
    )
    return [
        {
            "expression": "!variables.isCreate || (object.spec.containers.all(c, !"
            + _mounts_reserved("c")
            + ") && variables.otherInit.all(c, !"
            + _mounts_reserved("c")
            + "))",
            "message": MESSAGES[RULE_SIDECAR_VOLUMES],
        },
        {
            "expression": (
                f"(!variables.checksEphemeral || variables.ephemeralContainers.all(c, !{_reserved('c.name')}))"
                f" && (!variables.isCreate || (object.spec.containers.all(c, !{_reserved('c.name')})"
                f" && variables.otherInit.all(c, !{_reserved('c.name')})"
                f" && variables.volumes.all(v, !{_reserved('v.name')}"
                f" || (variables.sidecars.size() > 0 && v.name in {sidecar_names}))))"
            ),
            "message": MESSAGES[RULE_RESERVED_NAMES],
        },
        {"expression": _sidecar_shape(guard), "message": MESSAGES[RULE_SIDECAR_SHAPE]},
        {
            "expression": (
                f"variables.isCreate || ({old_sidecars} == variables.sidecars"
                f" && (variables.sidecars.size() == 0 || {old_injected} == variables.injectedAs))"
            ),
            "message": MESSAGES[RULE_SIDECAR_UNCHANGED],
        },
        {
            "expression": (
                "!variables.isCreate || variables.sidecars.size() == 0"
                " || ((!has(object.spec.shareProcessNamespace) || !object.spec.shareProcessNamespace)"
                " && (!has(object.spec.hostPID) || !object.spec.hostPID))"
            ),
            "message": MESSAGES[RULE_PROCESS_NAMESPACE],
        },
        {
            "expression": (
                "!variables.checksEphemeral || variables.ephemeralContainers.all(c,"
                f" (!has(c.targetContainerName) || c.targetContainerName != {q(names.SIDECAR_NAME)})"
                f" && !{_mounts_reserved('c')})"
            ),
            "message": MESSAGES[RULE_EPHEMERAL],
        },
    ]


def _message_expression(template: str, **fields: str) -> str:
    """A CEL messageExpression from a message whose ``fields`` are replaced by CEL expressions."""
    parts = [q(template)]
    for marker, expression in fields.items():
        parts = [piece for part in parts for piece in _split_literal(part, marker, expression)]
    return " + ".join(p for p in parts if p != "''")


def _split_literal(part: str, marker: str, expression: str) -> list[str]:
    if not (part.startswith("'") and marker in part):
        return [part]
    pieces = part[1:-1].split(marker)
    out: list[str] = []
    for index, piece in enumerate(pieces):
        if index:
            out.append(expression)
        out.append(f"'{piece}'")
    return out


def _references_secret(c: str, secret: str = "variables.secret") -> str:
    return (
        f"((has({c}.env) && {c}.env.exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
        f" && e.valueFrom.secretKeyRef.name == {secret}))"
        f" || (has({c}.envFrom) && {c}.envFrom.exists(s, has(s.secretRef) && s.secretRef.name == {secret})))"
    )


def _volume_references_secret(v: str, secret: str = "variables.secret") -> str:
    return (
        f"((has({v}.secret) && has({v}.secret.secretName) && {v}.secret.secretName == {secret})"
        f" || (has({v}.projected) && has({v}.projected.sources) && {v}.projected.sources.exists(s,"
        f" has(s.secret) && has(s.secret.name) && s.secret.name == {secret})))"
    )


def _credential_validation() -> dict[str, str]:
    """The policy's Redis credential Secret, guarded like its key: only its own sidecar's volume."""
    secret = f"(params.metadata.name + {q(names.REDIS_CREDENTIAL_SUFFIX)})"
    everyone = (
        f"object.spec.containers.all(c, !{_references_secret('c', secret)})"
        f" && variables.otherInit.all(c, !{_references_secret('c', secret)})"
        f" && variables.ephemeralContainers.all(c, !{_references_secret('c', secret)})"
        f" && variables.volumes.all(v, !{_volume_references_secret('v', secret)}"
        f" || (v.name == {q(names.REDIS_CREDENTIAL_VOLUME)} && variables.injectedAs == params.metadata.name))"
    )
    ephemeral = f"variables.ephemeralContainers.all(c, !{_references_secret('c', secret)})"
    return {
        "expression": (
            f"(!variables.isCreate || ({everyone}))"
            f" && (request.subResource != 'ephemeralcontainers' || {ephemeral})"
        ),
        "messageExpression": _message_expression(
            key_secret_message("@POLICY@", "@SECRET@"),
            **{"@POLICY@": "params.metadata.name", "@SECRET@": secret},
        ),
        "message": key_secret_message("<policy>", "<policy>" + names.REDIS_CREDENTIAL_SUFFIX),
    }


def _selects() -> str:
    """Kubernetes LabelSelector semantics over the param's selector (an absent one selects all)."""
    selector = "params.spec.selector"
    labels = "variables.labels"
    expression = (
        f"e.operator == 'In' ? (e.key in {labels} && has(e.values) && e.values.exists(x, x == {labels}[e.key]))"
        f" : e.operator == 'NotIn' ? (!(e.key in {labels}) || !has(e.values) || !e.values.exists(x, x == {labels}[e.key]))"
        f" : e.operator == 'Exists' ? e.key in {labels}"
        f" : e.operator == 'DoesNotExist' ? !(e.key in {labels})"
        " : false"
    )
    return (
        f"!has({selector}) || ("
        f"(!has({selector}.matchLabels) || {selector}.matchLabels.all(k, k in {labels}"
        f" && {labels}[k] == {selector}.matchLabels[k]))"
        f" && (!has({selector}.matchExpressions) || {selector}.matchExpressions.all(e, {expression})))"
    )


def _key_validations() -> list[dict[str, str]]:
    everyone = (
        f"object.spec.containers.all(c, !{_references_secret('c')})"
        f" && variables.otherInit.all(c, !{_references_secret('c')})"
        f" && variables.ephemeralContainers.all(c, !{_references_secret('c')})"
        f" && variables.volumes.all(v, !{_volume_references_secret('v')}"
        f" || (v.name == {q(names.API_KEY_VOLUME)} && variables.injectedAs == params.metadata.name))"
    )
    ephemeral = f"variables.ephemeralContainers.all(c, !{_references_secret('c')})"
    out = [
        {
            "expression": (
                f"variables.secret == '' || ((!variables.isCreate || ({everyone}))"
                f" && (request.subResource != 'ephemeralcontainers' || {ephemeral}))"
            ),
            "messageExpression": _message_expression(
                key_secret_message("@POLICY@", "@SECRET@"),
                **{"@POLICY@": "params.metadata.name", "@SECRET@": "variables.secret"},
            ),
            "message": key_secret_message("<policy>", "<secret>"),
        },
        _credential_validation(),
    ]
    # A pod this policy would inject may not share its process namespace either: refused before
    # injection, so the rule holds while the operator (and so injection) is down.
    opted_out = " || ".join(
        f"({q(names.INJECT_ANNOTATION)} in variables.{where}"
        f" && variables.{where}[{q(names.INJECT_ANNOTATION)}].lowerAscii() == 'false')"
        for where in ("annotations", "labels")
    )
    chosen = (
        f"({q(names.POLICY_ANNOTATION)} in variables.annotations"
        f" ? variables.annotations[{q(names.POLICY_ANNOTATION)}] == params.metadata.name : variables.selects)"
    )
    out.append(
        {
            "expression": (
                f"!variables.isCreate || {opted_out} || !{chosen}"
                " || ((!has(object.spec.shareProcessNamespace) || !object.spec.shareProcessNamespace)"
                " && (!has(object.spec.hostPID) || !object.spec.hostPID))"
            ),
            "message": MESSAGES[RULE_PROCESS_NAMESPACE],
        }
    )
    for rule, annotation in (
        (RULE_POLICY_SELECTS_POD, names.POLICY_ANNOTATION),
        (RULE_INJECTED_SELECTS_POD, names.INJECTED_ANNOTATION),
    ):
        assert rule in policy_selects_message("x", annotation)
        out.append(
            {
                "expression": (
                    f"!variables.isCreate || !({q(annotation)} in variables.annotations)"
                    f" || variables.annotations[{q(annotation)}] != params.metadata.name || variables.selects"
                ),
                "messageExpression": _message_expression(
                    policy_selects_message("@POLICY@", annotation), **{"@POLICY@": "params.metadata.name"}
                ),
                "message": policy_selects_message("<policy>", annotation),
            }
        )
    return out


def _match_constraints(
    excluded_namespaces: Any,
    operations: Sequence[str] = ("CREATE", "UPDATE"),
    resources: Sequence[str] = ("pods", "pods/ephemeralcontainers"),
) -> dict[str, Any]:
    return {
        "matchPolicy": "Equivalent",
        "namespaceSelector": {
            "matchLabels": {names.NAMESPACE_INJECTION_LABEL: names.NAMESPACE_INJECTION_ENABLED},
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded_namespaces}
            ],
        },
        "resourceRules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": list(operations),
                "resources": list(resources),
                "scope": "Namespaced",
            }
        ],
    }


def manifests(
    prefix: str,
    guard: GuardSettings,
    excluded_namespaces: Sequence[str] | str,
    labels: dict[str, str] | str | None = None,
    only_namespaces_labelled: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The two ValidatingAdmissionPolicies and their bindings.

    ``only_namespaces_labelled`` narrows the bindings to namespaces that also carry these labels
    (tests share one API server between several operators, each with its own sidecar settings).
    """
    excluded: Any = (
        excluded_namespaces if isinstance(excluded_namespaces, str) else sorted(excluded_namespaces)
    )
    meta_labels: Any = labels if labels is not None else {names.MANAGED_BY_LABEL: names.MANAGED_BY}
    pods, keys, execs = f"{prefix}-pods", f"{prefix}-keys", f"{prefix}-exec"
    common = _common_variables()
    policies: list[dict[str, Any]] = [
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": pods, "labels": meta_labels},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": _match_constraints(excluded),
                "variables": common,
                "validations": _pod_validations(guard),
            },
        },
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": keys, "labels": meta_labels},
            "spec": {
                "failurePolicy": "Fail",
                "paramKind": {"apiVersion": names.API_VERSION, "kind": names.KIND},
                "matchConstraints": _match_constraints(excluded),
                "variables": [
                    *common,
                    {
                        "name": "secret",
                        "expression": "has(params.spec.apiKey) ? params.spec.apiKey.secretRef.name : ''",
                    },
                    {"name": "selects", "expression": _selects()},
                ],
                "validations": _key_validations(),
            },
        },
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": execs, "labels": meta_labels},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": _match_constraints(excluded, ["CONNECT"], ["pods/exec", "pods/attach"]),
                # The object is PodExecOptions or PodAttachOptions; without a container the API server
                # picks one of spec.containers, never the sidecar (an init container).
                "validations": [
                    {
                        "expression": f"!has(object.container) || object.container != {q(names.SIDECAR_NAME)}",
                        "message": MESSAGES[RULE_EXEC],
                    }
                ],
            },
        },
    ]
    bindings: list[dict[str, Any]] = [
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": pods, "labels": meta_labels},
            "spec": {"policyName": pods, "validationActions": ["Deny"]},
        },
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": keys, "labels": meta_labels},
            "spec": {
                "policyName": keys,
                "validationActions": ["Deny"],
                # Every OpenAIPolicy of the pod's namespace; none: nothing to protect yet.
                "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            },
        },
        {
            "apiVersion": f"{ADMISSION_GROUP}/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": execs, "labels": meta_labels},
            "spec": {"policyName": execs, "validationActions": ["Deny"]},
        },
    ]
    if only_namespaces_labelled:
        for binding in bindings:
            policy = next(p for p in policies if p["metadata"]["name"] == binding["spec"]["policyName"])
            narrowed = json.loads(json.dumps(policy["spec"]["matchConstraints"]))
            narrowed["namespaceSelector"]["matchLabels"].update(only_namespaces_labelled)
            binding["spec"]["matchResources"] = narrowed
    return [*policies, *bindings]


def chart_file() -> str:
    """The chart's copy: the manifests with placeholders for what depends on its values."""
    guard = GuardSettings(
        sidecar_repository=CHART_TOKENS["repository"],
        proxy_port=CHART_TOKENS["proxy_port"],
        admin_port=CHART_TOKENS["admin_port"],
        redis_url=CHART_TOKENS["redis_url"],
        policy_keys=CHART_TOKENS["policy_keys"],
        otlp_endpoint=CHART_TOKENS["otlp_endpoint"],
    )
    docs = manifests(CHART_TOKENS["prefix"], guard, CHART_TOKENS["excluded"], CHART_TOKENS["labels"])
    header = (
        "# Generated by `python -m openai_policy_operator.admission_policy --chart`; do not edit by hand.\n"
        "# templates/admission-policy.yaml replaces the __PLACEHOLDERS__ with the chart's values.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False, width=1_000_000)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print the ValidatingAdmissionPolicies and their bindings.")
    p.add_argument("--chart", action="store_true", help=f"write {CHART_FILE} (run from the repository root)")
    p.add_argument("--prefix", default=names.MANAGED_BY)
    p.add_argument("--sidecar-image", default="openai-policy-sidecar:0.1.0")
    p.add_argument("--proxy-port", default=str(names.PROXY_PORT))
    p.add_argument("--admin-port", default=str(names.ADMIN_PORT))
    p.add_argument("--redis-url", default=None)
    p.add_argument("--policy-keys", default=None, help="the --policy-keys the webhook writes")
    p.add_argument("--otlp-endpoint", default=None, help="the --otlp-endpoint the webhook writes")
    p.add_argument("--exclude-namespace", action="append", default=["kube-system"])
    args = p.parse_args(argv)
    if args.chart:
        CHART_FILE.write_text(chart_file())
        return
    from .admission_rules import image_repository

    guard = GuardSettings(
        image_repository(args.sidecar_image),
        args.proxy_port,
        args.admin_port,
        args.redis_url,
        args.policy_keys,
        args.otlp_endpoint or "",
    )
    yaml.safe_dump_all(
        manifests(args.prefix, guard, args.exclude_namespace), sys.stdout, sort_keys=False, width=1_000_000
    )


if __name__ == "__main__":
    main()
