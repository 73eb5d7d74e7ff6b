"""What a pod in an opted-in namespace may not do, so that the key stays in the sidecar and the pod
on its policy. One list of rules, two evaluators:

* :mod:`.admission_policy` compiles them to CEL for a ValidatingAdmissionPolicy, which the API
  server evaluates itself (Kubernetes >= 1.30): it holds while the operator is down;
* :func:`violations` below evaluates the same rules in Python for the operator's validating
  webhook, the fallback for older clusters (weaker: it only holds while the operator answers).

Both give the same messages, each naming its rule and what to change.

Why the injected sidecar is recognised by its *shape* and not by who created it: admission sees
a pod, not the webhook that mutated it, and the ``openaipolicy.dev/injected`` annotation alone
can be written by anyone. So a container named ``openai-policy-proxy`` passes only if it is what
the webhook itself would have written for the policy the annotation names: the sidecar image's
repository (who can push there is trusted), exactly the webhook's arguments (no other Redis, no
other policy file), only the downward-API environment it sets (no ``PYTHON*`` or ``LD_*``
variables that would run other code beside the key), its three volumes at their paths, no
lifecycle hooks or exec probes (commands run inside the container that holds the key). A tenant
who writes that exact container by hand gains nothing the webhook would not have given them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import names
from .config import OperatorSettings

RESERVED_PREFIX = "openai-policy-"
SIDECAR_VOLUMES = (names.POLICY_VOLUME, names.TMP_VOLUME, names.API_KEY_VOLUME, names.REDIS_CREDENTIAL_VOLUME)
SIDECAR_MOUNTS = {
    names.POLICY_VOLUME: names.POLICY_DIR,
    names.TMP_VOLUME: names.TMP_DIR,
    names.API_KEY_VOLUME: names.API_KEY_DIR,
    names.REDIS_CREDENTIAL_VOLUME: names.REDIS_CREDENTIAL_DIR,
}
# The ServiceAccount admission plugin adds the pod's API token to every container, the sidecar too.
SERVICE_ACCOUNT_MOUNT_PREFIX = "kube-api-access-"
SERVICE_ACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SIDECAR_ENV = ("POD_NAME", "POD_NAMESPACE", "OPENAI_POLICY_WORKLOAD", "OPENAI_POLICY_NAME", "TMPDIR")
# The webhook passes at most the three fixed flags plus key file, Redis URL, log level, the Redis
# credential file, the operator's policy verification keys and the OTLP endpoint.
MAX_SIDECAR_ARGS = 18
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

# Rule ids: every message starts with "openai-policy <id>:" so a refusal says which rule spoke.
RULE_SIDECAR_VOLUMES = "sidecar-volumes"
RULE_RESERVED_NAMES = "reserved-names"
RULE_SIDECAR_SHAPE = "sidecar-shape"
RULE_SIDECAR_UNCHANGED = "sidecar-unchanged"
RULE_PROCESS_NAMESPACE = "process-namespace"
RULE_EPHEMERAL = "ephemeral-containers"
RULE_EXEC = "exec-into-sidecar"
RULE_KEY_SECRET = "key-secret"
RULE_POLICY_SELECTS_POD = "policy-selects-pod"
RULE_INJECTED_SELECTS_POD = "injected-policy-selects-pod"

MESSAGES = {
    RULE_SIDECAR_VOLUMES: (
        f"openai-policy {RULE_SIDECAR_VOLUMES}: a container other than the {names.SIDECAR_NAME} sidecar "
        f"mounts one of its volumes ({RESERVED_PREFIX}*). Remove that volumeMount: the app reaches the "
        f"OpenAI API through OPENAI_BASE_URL and never needs the key or the policy files."
    ),
    RULE_RESERVED_NAMES: (
        f"openai-policy {RULE_RESERVED_NAMES}: container, init container and volume names starting "
        f"with {RESERVED_PREFIX} are reserved for the sidecar the webhook injects. Rename yours."
    ),
    RULE_SIDECAR_SHAPE: (
        f"openai-policy {RULE_SIDECAR_SHAPE}: this {names.SIDECAR_NAME} container is not the sidecar "
        f"the openai-policy webhook injects (its image repository, args, env, volume mounts, hooks "
        f"or volumes differ, or the {names.INJECTED_ANNOTATION} annotation does not name its policy). "
        f"Remove it from the pod spec and let the webhook inject the sidecar."
    ),
    RULE_SIDECAR_UNCHANGED: (
        f"openai-policy {RULE_SIDECAR_UNCHANGED}: the {names.SIDECAR_NAME} sidecar and the "
        f"{names.INJECTED_ANNOTATION} annotation cannot change after injection. Recreate the pod "
        f"instead (e.g. roll out its Deployment)."
    ),
    RULE_PROCESS_NAMESPACE: (
        f"openai-policy {RULE_PROCESS_NAMESPACE}: a pod governed by an OpenAIPolicy (injected with the "
        f"{names.SIDECAR_NAME} sidecar, or selected for it) may not set shareProcessNamespace or "
        f"hostPID: other containers could read the sidecar's key through /proc. Remove the field, or "
        f'opt the pod out with {names.INJECT_ANNOTATION}: "false" (it then gets no sidecar and no key).'
    ),
    RULE_EPHEMERAL: (
        f"openai-policy {RULE_EPHEMERAL}: an ephemeral container may not target the "
        f"{names.SIDECAR_NAME} sidecar (targetContainerName) or mount its volumes. Debug the app "
        f"container instead: kubectl debug --target=<app container>."
    ),
    RULE_EXEC: (
        f"openai-policy {RULE_EXEC}: kubectl exec, cp and attach into the {names.SIDECAR_NAME} "
        f"container are refused: it holds the API key. Exec into the app container instead (-c <app "
        f"container>); the sidecar's state is on its admin port (/readyz, /metrics)."
    ),
}


def key_secret_message(policy: str, secret: str) -> str:
    return (
        f"openai-policy {RULE_KEY_SECRET}: Secret {secret} holds the API key of OpenAIPolicy "
        f"{policy}; only that policy's {names.SIDECAR_NAME} sidecar may read it (a pod injected for "
        f"another policy, or any other container or volume, may not). Remove the reference (volume, "
        f"projected source, env valueFrom.secretKeyRef or envFrom.secretRef): the app reaches the API "
        f"through OPENAI_BASE_URL with a placeholder key. Policies of one namespace need distinct "
        f"Secrets."
    )


def policy_selects_message(policy: str, annotation: str) -> str:
    return (
        f"openai-policy {RULE_POLICY_SELECTS_POD if annotation == names.POLICY_ANNOTATION else RULE_INJECTED_SELECTS_POD}: "
        f"the pod names OpenAIPolicy {policy} in {annotation}, but that policy's selector does not "
        f"match the pod's labels. The annotation only chooses among the policies that select the "
        f"pod: fix the pod's labels or the annotation."
    )


@dataclass(frozen=True)
class GuardSettings:
    """What the rules need to know about the sidecar the webhook injects."""

    sidecar_repository: str  # the image without tag or digest
    proxy_port: str
    admin_port: str
    redis_url: str | None  # the --redis-url the webhook writes (None: never one)
    # The --policy-keys the webhook writes: pinned, or a tenant who hand-writes the sidecar could
    # make it trust documents of their own signing. None: the operator signs nothing.
    policy_keys: str | None = None
    # The --otlp-endpoint the webhook writes: pinned, so a hand-written sidecar cannot send its
    # metrics elsewhere. "" when it writes none (an empty value turns the export off: harmless).
    otlp_endpoint: str = ""

    @classmethod
    def from_operator(cls, settings: OperatorSettings) -> GuardSettings:
        injection = settings.injection
        return cls(
            sidecar_repository=image_repository(injection.sidecar_image),
            proxy_port=str(injection.proxy_port),
            admin_port=str(injection.admin_port),
            redis_url=injection.redis_url,
            policy_keys=injection.policy_keys,
            otlp_endpoint=injection.otlp_endpoint or "",
        )

    def fixed_args(self) -> list[str]:
        return [
            "--policy",
            f"{names.POLICY_DIR}/{names.POLICY_FILE}",
            "--listen",
            f"127.0.0.1:{self.proxy_port}",
            "--admin-listen",
            f"0.0.0.0:{self.admin_port}",
        ]


def image_repository(image: str) -> str:
    """``registry:5000/team/sidecar:1.2@sha256:..`` -> ``registry:5000/team/sidecar``."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image[: -len(last.split(":", 1)[1]) - 1] if ":" in last else image


# ---- the Python evaluator (the validating webhook) ------------------------------------------------


def _list(spec: Mapping[str, Any], field: str) -> list[dict[str, Any]]:
    return list(spec.get(field) or [])


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def sidecars(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in _list(pod.get("spec") or {}, "initContainers") if c.get("name") == names.SIDECAR_NAME]


def others(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every container but the injected sidecar (a regular container of that name is a decoy)."""
    spec = pod.get("spec") or {}
    return [
        *_list(spec, "containers"),
        *(c for c in _list(spec, "initContainers") if c.get("name") != names.SIDECAR_NAME),
        *_list(spec, "ephemeralContainers"),
    ]


def _mounts_reserved(container: Mapping[str, Any]) -> bool:
    return any(
        str(m.get("name", "")).startswith(RESERVED_PREFIX) for m in container.get("volumeMounts") or []
    )


def _args_ok(args: Sequence[str], guard: GuardSettings) -> bool:
    if len(args) < 6 or len(args) > MAX_SIDECAR_ARGS or len(args) % 2 or list(args[:6]) != guard.fixed_args():
        return False
    for flag, value in zip(args[6::2], args[7::2], strict=True):
        if flag == "--api-key-file":
            ok = value.startswith(f"{names.API_KEY_DIR}/") and ".." not in value
        elif flag == "--redis-url":
            ok = guard.redis_url is not None and value == guard.redis_url
        elif flag == "--log-level":
            ok = value.isascii() and value.isalpha()
        elif flag == "--redis-credential-file":
            ok = value == names.REDIS_CREDENTIAL_FILE
        elif flag == "--policy-keys":
            ok = guard.policy_keys is not None and value == guard.policy_keys
        elif flag == "--otlp-endpoint":
            ok = value == guard.otlp_endpoint
        else:
            ok = False
        if not ok:
            return False
    return guard.policy_keys is None or "--policy-keys" in args[6::2]


def sidecar_is_injection(pod: Mapping[str, Any], sidecar: Mapping[str, Any], guard: GuardSettings) -> bool:
    """True if ``sidecar`` is what the webhook writes (see the module docstring for why each part)."""
    injected_as = _annotations(pod).get(names.INJECTED_ANNOTATION, "")
    image = str(sidecar.get("image", ""))
    env = sidecar.get("env") or []
    checks = (
        injected_as != "",
        image.startswith(f"{guard.sidecar_repository}:") or image.startswith(f"{guard.sidecar_repository}@"),
        "command" not in sidecar,
        sidecar.get("restartPolicy") == "Always",
        _args_ok([str(a) for a in sidecar.get("args") or []], guard),
        "envFrom" not in sidecar,
        all(
            e.get("name") in SIDECAR_ENV and ("valueFrom" not in e or "fieldRef" in e["valueFrom"])
            for e in env
        ),
        any(e.get("name") == "OPENAI_POLICY_NAME" and e.get("value") == injected_as for e in env),
        # The sidecar only applies documents signed for its namespace: it must be the pod's own.
        all(
            e.get("name") != "POD_NAMESPACE"
            or ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.namespace"
            for e in env
        ),
        all(e.get("name") != "TMPDIR" or e.get("value") == names.TMP_DIR for e in env),
        all(_sidecar_mount_ok(m) for m in sidecar.get("volumeMounts") or []),
        "volumeDevices" not in sidecar,
        "lifecycle" not in sidecar,
        all("exec" not in (sidecar.get(probe) or {}) for probe in PROBES),
        all(_sidecar_volume_ok(v, injected_as) for v in _list(pod.get("spec") or {}, "volumes")),
    )
    return all(checks)


def _sidecar_mount_ok(mount: Mapping[str, Any]) -> bool:
    name, path = str(mount.get("name", "")), mount.get("mountPath")
    if name.startswith(SERVICE_ACCOUNT_MOUNT_PREFIX):
        return path == SERVICE_ACCOUNT_MOUNT_PATH
    return SIDECAR_MOUNTS.get(name) == path


def _sidecar_volume_ok(volume: Mapping[str, Any], injected_as: str) -> bool:
    name = str(volume.get("name", ""))
    if not name.startswith(RESERVED_PREFIX):
        return True
    if name == names.POLICY_VOLUME:
        return (volume.get("configMap") or {}).get("name") == names.configmap_name(injected_as)
    if name == names.TMP_VOLUME:
        return "emptyDir" in volume
    if name == names.API_KEY_VOLUME:
        return "secret" in volume
    if name == names.REDIS_CREDENTIAL_VOLUME:
        # Only the credential of the policy the pod is injected for.
        return (volume.get("secret") or {}).get("secretName") == names.redis_credential_secret(injected_as)
    return False


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """LabelSelector semantics, written as the CEL twin does (an empty selector selects all)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator, values = (
            requirement.get("key"),
            requirement.get("operator"),
            requirement.get("values") or [],
        )
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(str(operator), False)
        if not ok:
            return False
    return True


def secret_of(policy: Mapping[str, Any]) -> str | None:
    ref = ((policy.get("spec") or {}).get("apiKey") or {}).get("secretRef") or {}
    return ref.get("name") or None


def _references_secret(container: Mapping[str, Any], secret: str) -> bool:
    for var in container.get("env") or []:
        if ((var.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name") == secret:
            return True
    return any(
        (source.get("secretRef") or {}).get("name") == secret for source in container.get("envFrom") or []
    )


def _volume_references_secret(volume: Mapping[str, Any], secret: str) -> bool:
    if (volume.get("secret") or {}).get("secretName") == secret:
        return True
    sources = (volume.get("projected") or {}).get("sources") or []
    return any((source.get("secret") or {}).get("name") == secret for source in sources)


def pod_violations(
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    operation: str,
    subresource: str | None,
    guard: GuardSettings,
) -> list[str]:
    """The rules that need no policy (the ValidatingAdmissionPolicy without params)."""
    if operation == "CONNECT":  # pods/exec and pods/attach: the object is PodExecOptions/PodAttachOptions
        return [MESSAGES[RULE_EXEC]] if pod.get("container") == names.SIDECAR_NAME else []
    spec = pod.get("spec") or {}
    create = operation == "CREATE"
    # An update cannot add containers or volumes (only images and a few scheduling fields change),
    # so on UPDATE only what can change is checked: the sidecar, and new ephemeral containers.
    # Re-checking the immutable rest would only block controllers (e.g. removing a finalizer) on
    # pods created before these rules existed.
    ephemeral = create or subresource == "ephemeralcontainers"
    found: list[str] = []
    mine = sidecars(pod)
    if create and any(
        _mounts_reserved(c)
        for c in [
            *_list(spec, "containers"),
            *(c for c in _list(spec, "initContainers") if c.get("name") != names.SIDECAR_NAME),
        ]
    ):
        found.append(MESSAGES[RULE_SIDECAR_VOLUMES])
    reserved = ephemeral and any(
        str(c.get("name", "")).startswith(RESERVED_PREFIX) for c in _list(spec, "ephemeralContainers")
    )
    if create:
        volumes = [str(v.get("name", "")) for v in _list(spec, "volumes")]
        reserved = reserved or any(
            (
                any(str(c.get("name", "")).startswith(RESERVED_PREFIX) for c in _list(spec, "containers")),
                any(
                    str(c.get("name", "")).startswith(RESERVED_PREFIX) and c.get("name") != names.SIDECAR_NAME
                    for c in _list(spec, "initContainers")
                ),
                any(
                    v.startswith(RESERVED_PREFIX) and (not mine or v not in SIDECAR_VOLUMES) for v in volumes
                ),
            )
        )
    if reserved:
        found.append(MESSAGES[RULE_RESERVED_NAMES])
    if create and not all(sidecar_is_injection(pod, s, guard) for s in mine):
        found.append(MESSAGES[RULE_SIDECAR_SHAPE])
    if not create and old_pod is not None:
        before = _annotations(old_pod).get(names.INJECTED_ANNOTATION)
        if sidecars(old_pod) != mine or (mine and before != _annotations(pod).get(names.INJECTED_ANNOTATION)):
            found.append(MESSAGES[RULE_SIDECAR_UNCHANGED])
    if create and mine and (spec.get("shareProcessNamespace") is True or spec.get("hostPID") is True):
        found.append(MESSAGES[RULE_PROCESS_NAMESPACE])
    if ephemeral and any(
        c.get("targetContainerName") == names.SIDECAR_NAME or _mounts_reserved(c)
        for c in _list(spec, "ephemeralContainers")
    ):
        found.append(MESSAGES[RULE_EPHEMERAL])
    return found


def policy_violations(
    pod: Mapping[str, Any], operation: str, subresource: str | None, policy: Mapping[str, Any]
) -> list[str]:
    """The rules evaluated once per OpenAIPolicy of the namespace (the params of the second VAP)."""
    found: list[str] = []
    if operation == "CONNECT":
        return found
    name = (policy.get("metadata") or {}).get("name", "")
    secret = secret_of(policy)
    annotations = _annotations(pod)
    spec = pod.get("spec") or {}
    if secret and operation == "CREATE":
        by_container = any(_references_secret(c, secret) for c in others(pod))
        by_volume = any(
            _volume_references_secret(v, secret)
            and (v.get("name") != names.API_KEY_VOLUME or annotations.get(names.INJECTED_ANNOTATION) != name)
            for v in _list(spec, "volumes")
        )
        if by_container or by_volume:
            found.append(key_secret_message(name, secret))
    elif secret and subresource == "ephemeralcontainers":
        if any(_references_secret(c, secret) for c in _list(spec, "ephemeralContainers")):
            found.append(key_secret_message(name, secret))
    # The policy's Redis credential is guarded like its key: only its own sidecar's volume.
    credential = names.redis_credential_secret(name) if name else ""
    if credential and operation == "CREATE":
        by_container = any(_references_secret(c, credential) for c in others(pod))
        by_volume = any(
            _volume_references_secret(v, credential)
            and (
                v.get("name") != names.REDIS_CREDENTIAL_VOLUME
                or annotations.get(names.INJECTED_ANNOTATION) != name
            )
            for v in _list(spec, "volumes")
        )
        if by_container or by_volume:
            found.append(key_secret_message(name, credential))
    elif credential and subresource == "ephemeralcontainers":
        if any(_references_secret(c, credential) for c in _list(spec, "ephemeralContainers")):
            found.append(key_secret_message(name, credential))
    if operation == "CREATE":
        selector = (policy.get("spec") or {}).get("selector")
        labels = _labels(pod)
        opted_out = "false" in (
            str(annotations.get(names.INJECT_ANNOTATION, "")).lower(),
            str(labels.get(names.INJECT_ANNOTATION, "")).lower(),
        )
        chosen = (
            annotations[names.POLICY_ANNOTATION] == name
            if names.POLICY_ANNOTATION in annotations
            else selects(selector, labels)
        )
        if (
            not opted_out
            and chosen
            and (spec.get("shareProcessNamespace") is True or spec.get("hostPID") is True)
        ):
            found.append(MESSAGES[RULE_PROCESS_NAMESPACE])
        for annotation in (names.POLICY_ANNOTATION, names.INJECTED_ANNOTATION):
            if annotations.get(annotation) == name and not selects(selector, _labels(pod)):
                found.append(policy_selects_message(name, annotation))
    return found


def violations(
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    operation: str,
    subresource: str | None,
    policies: Iterable[Mapping[str, Any]],
    guard: GuardSettings,
) -> list[str]:
    found = pod_violations(pod, old_pod, operation, subresource, guard)
    for policy in policies:
        found += policy_violations(pod, operation, subresource, policy)
    return list(dict.fromkeys(found))
