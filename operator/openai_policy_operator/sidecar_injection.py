"""The sidecar injection itself: a pure function from (pod, policy, settings) to a JSONPatch.

No I/O here: the webhook decides *whether* and *which policy*; this module only decides *what*.
Properties the tests hold it to:

* idempotent: a pod that already carries the sidecar gets an empty patch;
* the API-key Secret is mounted into the sidecar only, never into an app container;
* every app container gets ``OPENAI_BASE_URL`` (the sidecar) and a placeholder ``OPENAI_API_KEY``;
  an app's own ``OPENAI_API_KEY`` is replaced, and reported so the caller can emit an Event;
* the sidecar is a native sidecar (an init container with ``restartPolicy: Always`` and a startup
  probe) placed first, so every later init container and the app start only once the proxy is ready.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import names
from .config import InjectionSettings

JSONPatch = list[dict[str, Any]]

_KEY_ENV = "OPENAI_API_KEY"
_URL_ENV = "OPENAI_BASE_URL"
_HASH_SUFFIX = re.compile(
    r"^(?P<base>.+)-[a-z0-9]{5,10}$"
)  # ReplicaSet names: <deployment>-<pod-template-hash>


@dataclass(frozen=True)
class InjectionTarget:
    """The few facts about a policy that injection needs (decoupled from the full model)."""

    policy_name: str
    secret_name: str | None = None
    secret_key: str = names.DEFAULT_API_KEY_KEY


@dataclass
class InjectionResult:
    patch: JSONPatch = field(default_factory=list)
    replaced_key_env: list[str] = field(default_factory=list)  # app containers whose own key was replaced

    @property
    def changed(self) -> bool:
        return bool(self.patch)


def _pointer(token: str) -> str:
    """Escape one JSON-pointer token (RFC 6901): annotation keys contain '/'."""
    return token.replace("~", "~0").replace("/", "~1")


def is_injected(pod: dict[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    return any(c.get("name") == names.SIDECAR_NAME for c in containers)


def workload_name(pod: dict[str, Any]) -> str:
    """The name a person would call this pod's workload, for attribution in usage and logs.

    A ReplicaSet owner is reported as its Deployment (the pod-template-hash suffix stripped);
    a Job as itself; a bare pod as its own name (or generateName stem).
    """
    meta = pod.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        name = str(owner.get("name", ""))
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if owner.get("kind") == "ReplicaSet":
            if template_hash and name.endswith(f"-{template_hash}"):
                return name[: -len(template_hash) - 1]
            match = _HASH_SUFFIX.match(name)
            return match.group("base") if match else name
        return name
    return str(meta.get("name") or str(meta.get("generateName", "")).rstrip("-") or "unknown")


def sidecar_container(
    pod: dict[str, Any], target: InjectionTarget, settings: InjectionSettings
) -> dict[str, Any]:
    # Listen addresses are spelled out (they equal the sidecar's defaults) so that the pod spec says
    # where the proxy is: loopback only, since nothing outside the pod may use the key.
    args = [
        "--policy",
        f"{names.POLICY_DIR}/{names.POLICY_FILE}",
        "--listen",
        f"127.0.0.1:{settings.proxy_port}",
        "--admin-listen",
        f"0.0.0.0:{settings.admin_port}",
    ]
    mounts: list[dict[str, Any]] = [
        {"name": names.POLICY_VOLUME, "mountPath": names.POLICY_DIR, "readOnly": True},
        {"name": names.TMP_VOLUME, "mountPath": names.TMP_DIR},
    ]
    if target.secret_name:
        args += ["--api-key-file", f"{names.API_KEY_DIR}/{target.secret_key}"]
        mounts.append({"name": names.API_KEY_VOLUME, "mountPath": names.API_KEY_DIR, "readOnly": True})
    if settings.redis_url:
        args += ["--redis-url", settings.redis_url]
    if settings.redis_url and settings.redis_credential:
        # A file in the sidecar's own Secret volume: never an env var or an argument (both are in the
        # pod spec, readable by anyone who can get the pod).
        args += ["--redis-credential-file", names.REDIS_CREDENTIAL_FILE]
        mounts.append(
            {"name": names.REDIS_CREDENTIAL_VOLUME, "mountPath": names.REDIS_CREDENTIAL_DIR, "readOnly": True}
        )
    if settings.log_level:
        args += ["--log-level", settings.log_level]
    if settings.policy_keys:
        # In the container's own spec: fixed at creation (sidecar-shape, sidecar-unchanged), so no
        # tenant can make a running sidecar trust another key.
        args += ["--policy-keys", settings.policy_keys]
    if settings.otlp_endpoint:
        args += ["--otlp-endpoint", settings.otlp_endpoint]
    probe_get = {"path": "/readyz", "port": settings.admin_port}
    return {
        "name": names.SIDECAR_NAME,
        "image": settings.sidecar_image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",  # native sidecar: starts before, outlives, the app containers
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "OPENAI_POLICY_WORKLOAD", "value": workload_name(pod)},
            {"name": "OPENAI_POLICY_NAME", "value": target.policy_name},
            {"name": "TMPDIR", "value": names.TMP_DIR},
        ],
        # The proxy port is declared for documentation and tooling; it is bound to 127.0.0.1 only.
        "ports": [
            {"name": "policy-proxy", "containerPort": settings.proxy_port, "protocol": "TCP"},
            {"name": "policy-admin", "containerPort": settings.admin_port, "protocol": "TCP"},
        ],
        # The app starts only once the proxy answers /readyz (startup probe gates the next containers).
        "startupProbe": {"httpGet": probe_get, "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": probe_get, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": settings.admin_port}, "periodSeconds": 10},
        "resources": settings.resources.as_k8s(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def sidecar_volumes(
    target: InjectionTarget, settings: InjectionSettings | None = None
) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": names.POLICY_VOLUME, "configMap": {"name": names.configmap_name(target.policy_name)}},
        {"name": names.TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    if target.secret_name:
        volumes.append(
            {
                "name": names.API_KEY_VOLUME,
                "secret": {
                    "secretName": target.secret_name,
                    "items": [{"key": target.secret_key, "path": target.secret_key}],
                },
            }
        )
    if settings is not None and settings.redis_url and settings.redis_credential:
        volumes.append(
            {
                "name": names.REDIS_CREDENTIAL_VOLUME,
                "secret": {"secretName": names.redis_credential_secret(target.policy_name)},
            }
        )
    return volumes


def _env_ops(index: int, container: dict[str, Any], base_url: str) -> tuple[JSONPatch, bool]:
    """Ops setting the two variables on one app container; True if its own key was replaced."""
    base = f"/spec/containers/{index}/env"
    wanted = {
        _URL_ENV: {"name": _URL_ENV, "value": base_url},
        _KEY_ENV: {"name": _KEY_ENV, "value": names.PLACEHOLDER_API_KEY},
    }
    env = container.get("env")
    if not env:
        return [{"op": "add", "path": base, "value": list(wanted.values())}], False
    ops: JSONPatch = []
    replaced_key = False
    for position, var in enumerate(env):
        desired = wanted.pop(var.get("name"), None)
        if desired is None:
            continue
        if var != desired:
            # Replace the whole entry: a valueFrom (e.g. a secretKeyRef) must go too.
            ops.append({"op": "replace", "path": f"{base}/{position}", "value": desired})
            replaced_key = replaced_key or desired["name"] == _KEY_ENV
    ops += [{"op": "add", "path": f"{base}/-", "value": var} for var in wanted.values()]
    return ops, replaced_key


def injection_patch(
    pod: dict[str, Any], target: InjectionTarget, settings: InjectionSettings
) -> InjectionResult:
    """The JSONPatch that injects the sidecar into ``pod``; empty if it is already injected."""
    if is_injected(pod):
        return InjectionResult()
    result = InjectionResult()
    ops = result.patch
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}

    if meta.get("annotations"):
        ops.append(
            {
                "op": "add",
                "path": f"/metadata/annotations/{_pointer(names.INJECTED_ANNOTATION)}",
                "value": target.policy_name,
            }
        )
    else:
        ops.append(
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {names.INJECTED_ANNOTATION: target.policy_name},
            }
        )

    volumes = sidecar_volumes(target, settings)
    taken = {v.get("name") for v in spec.get("volumes") or []}
    volumes = [v for v in volumes if v["name"] not in taken]
    if spec.get("volumes"):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})

    sidecar = sidecar_container(pod, target, settings)
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})

    for index, container in enumerate(spec.get("containers") or []):
        env_ops, replaced = _env_ops(index, container, f"http://127.0.0.1:{settings.proxy_port}/v1")
        ops += env_ops
        if replaced:
            result.replaced_key_env.append(str(container.get("name")))
    return result
