"""Operator settings: one frozen object built from the command line, passed to every module.

Defaults are the documented behaviour; the chart sets the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openai_policy_store.signing import Signer

# failurePolicy default, and why: Ignore. A down operator must never block pod creation in every
# opted-in namespace (Deployments, Jobs and autoscaling would stop). A pod admitted during such an
# outage starts without the sidecar and without the key (the Secret is only ever mounted into the
# sidecar), so it cannot spend on the policy's account; it shows as a pod not enforcing in
# `kubectl get oaip`. Teams that prefer a pod that cannot be created over an un-governed one set
# Fail (the chart's webhook.failurePolicy). The chart passes the same value, so both agree.
DEFAULT_FAILURE_POLICY = "Ignore"
FAILURE_POLICIES = ("Fail", "Ignore")
ALWAYS_EXCLUDED_NAMESPACES = ("kube-system",)


@dataclass(frozen=True)
class SidecarResources:
    """Default requests/limits of the injected proxy (a small asyncio process)."""

    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str | None = None  # CPU limits throttle latency-sensitive proxies; leave unbounded
    memory_limit: str | None = "256Mi"

    def as_k8s(self) -> dict[str, dict[str, str]]:
        limits = {k: v for k, v in (("cpu", self.cpu_limit), ("memory", self.memory_limit)) if v}
        out: dict[str, dict[str, str]] = {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request}
        }
        if limits:
            out["limits"] = limits
        return out


@dataclass(frozen=True)
class InjectionSettings:
    """What the webhook puts into a pod besides the policy-specific bits."""

    sidecar_image: str = "openai-policy-sidecar:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    redis_url: str | None = None
    resources: SidecarResources = field(default_factory=SidecarResources)
    run_as_user: int = 65532  # the conventional "nonroot" uid of distroless images
    # The design fixes 8780 (proxy, loopback) and 8781 (admin); overridable for a port clash in a pod.
    proxy_port: int = 8780
    admin_port: int = 8781
    log_level: str | None = None  # passed as --log-level; None: the sidecar's default
    # Mount the policy's Redis credential Secret into the sidecar (--redis-credential-file): set when
    # the operator delivers per-policy credentials (OperatorSettings.redis_sidecar_credentials).
    redis_credential: bool = False
    # The operator's public keys (openai_policy_store.signing), passed as --policy-keys: the
    # injected sidecar then applies only documents the operator signed. None: nothing is signed.
    policy_keys: str | None = None
    # Where sidecars export OpenTelemetry's GenAI metrics (--otlp-endpoint). None: they do not.
    otlp_endpoint: str | None = None


@dataclass(frozen=True)
class WebhookSettings:
    """How the admission webhook is served and (optionally) registered."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 9443
    # The host name/IP the API server uses to reach us (a SAN of the generated certificate).
    # In the local control plane tests this is 127.0.0.1; in a cluster the chart uses a Service.
    public_host: str | None = None
    cert_dir: str | None = None  # tls.crt / tls.key (and optional ca.crt); generated if missing
    # Name of the MutatingWebhookConfiguration to create/patch with our URL and CA.
    # None: somebody else (the chart) owns the configuration and points it at our Service.
    manage_configuration: str | None = None
    failure_policy: str = DEFAULT_FAILURE_POLICY
    # The ValidatingWebhookConfiguration to create/patch (clusters without ValidatingAdmissionPolicy:
    # the same rules, answered by this process). None: not registered by the operator.
    manage_validating_configuration: str | None = None
    # Fail by default: the validating webhook is the only guard of the admission rules there, and an
    # Ignore would let them lapse whenever the operator is down.
    validating_failure_policy: str = "Fail"
    timeout_seconds: int = 10
    # How often the serving certificate files are checked for a renewal (reloaded in place).
    cert_check_seconds: float = 10.0
    excluded_namespaces: tuple[str, ...] = ALWAYS_EXCLUDED_NAMESPACES


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    operator_namespace: str | None = None  # never injected into
    peering_name: str = "openai-policy-operator"  # used when the kopf peering CRDs are installed
    redis_url: str | None = None
    # The operator's own Redis login: an ACL user (the chart's ``oaip-operator``) or ``default``.
    redis_username: str | None = None
    redis_password_file: str | None = None
    redis_ca_file: str | None = None  # the CA of a private rediss:// server (also given to sidecars)
    # How sidecars log in to Redis: "acl" one ACL user per policy (its keys, its commands), "shared"
    # the operator's own credential (a Redis without ACLs: every sidecar then has the operator's
    # reach), "none" no credential (a Redis that asks for none).
    redis_sidecar_credentials: str = "none"
    # How long a rotated-out sidecar password stays valid: the kubelet refreshes a mounted Secret
    # within about a minute, so sidecars reconnect with the new one before the old one goes.
    redis_password_grace_seconds: float = 300.0
    # Signs every policy document (ConfigMap and store); None: documents go out unsigned.
    signer: Signer | None = None
    status_interval: float = 3.0
    # All policies' status refreshes together, at most (see pacing.py): 300 policies at 3 s.
    status_max_refreshes: float = 100.0
    heartbeat_stale_seconds: float = 30.0  # a pod that has not reported for this long is not "reporting"
    injection: InjectionSettings = field(default_factory=InjectionSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    @property
    def never_inject(self) -> frozenset[str]:
        extra = (self.operator_namespace,) if self.operator_namespace else ()
        return frozenset((*self.webhook.excluded_namespaces, *extra))
