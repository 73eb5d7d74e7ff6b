"""``openai-policy-operator``: run the operator (reconciler, status reporter and injection webhook).

Several replicas may run at once: kopf peering elects one to reconcile and report (the peering
CRDs from ``python -m openai_policy_operator.peering`` must be installed; without them a single
replica runs standalone), while every replica serves the admission webhook.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import kopf

from openai_policy_store.signing import Signer, SigningKeyError, parse_public_keys

from . import names
from .config import (
    ALWAYS_EXCLUDED_NAMESPACES,
    DEFAULT_FAILURE_POLICY,
    FAILURE_POLICIES,
    InjectionSettings,
    OperatorSettings,
    SidecarResources,
    WebhookSettings,
)
from .handlers import OperatorServices, register
from .kube import Kube


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openai-policy-operator", description=__doc__.splitlines()[0])
    env = os.environ.get
    scope = p.add_argument_group("scope")
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    scope.add_argument(
        "--operator-namespace",
        default=env("POD_NAMESPACE"),
        help="the operator's own namespace, never injected (default: $POD_NAMESPACE)",
    )
    scope.add_argument(
        "--peering",
        default=env("OPENAI_POLICY_PEERING", names.MANAGED_BY),
        help="kopf peering object used for leader election (default: %(default)s)",
    )
    scope.add_argument("--standalone", action="store_true", help="no peering: this is the only replica")

    state = p.add_argument_group("state")
    state.add_argument(
        "--redis-url",
        default=env("OPENAI_POLICY_REDIS_URL"),
        help="Redis shared with the sidecars (default: $OPENAI_POLICY_REDIS_URL); without it "
        "no publication or usage reporting, and sidecars keep state in memory",
    )
    state.add_argument(
        "--redis-username",
        default=env("OPENAI_POLICY_REDIS_USERNAME"),
        help="the operator's Redis ACL user (the chart's: oaip-operator); default: the default user",
    )
    state.add_argument(
        "--redis-password-file",
        default=env("OPENAI_POLICY_REDIS_PASSWORD_FILE"),
        help="the operator's Redis password (a file: never in an argument or the environment)",
    )
    state.add_argument("--redis-ca-file", default=None, help="CA of a private rediss:// server")
    state.add_argument(
        "--redis-sidecar-credentials",
        choices=("acl", "shared", "none"),
        default=env("OPENAI_POLICY_REDIS_SIDECAR_CREDENTIALS", "none"),
        help="acl: one Redis ACL user per policy, delivered to its sidecars only; shared: the operator's "
        "own credential (a Redis without ACLs); none: sidecars log in with nothing",
    )
    state.add_argument(
        "--redis-password-grace-seconds",
        type=float,
        default=300.0,
        help="how long a rotated-out sidecar password stays valid",
    )
    state.add_argument("--status-interval", type=float, default=3.0, help="seconds between status refreshes")
    state.add_argument(
        "--status-max-refreshes",
        type=float,
        default=OperatorSettings.status_max_refreshes,
        help="status refreshes per second of all policies together, at most: with more policies than "
        "interval x this, each policy's refresh is stretched to policies / this seconds (default: %(default)s)",
    )
    state.add_argument(
        "--heartbeat-stale-seconds",
        type=float,
        default=30.0,
        help="a pod that has not reported for this long no longer counts as reporting",
    )

    hook = p.add_argument_group("webhook")
    hook.add_argument("--webhook-listen", default="0.0.0.0:9443", help="host:port to serve HTTPS on")
    hook.add_argument(
        "--webhook-host",
        default=None,
        help="host/IP the API server uses to reach the webhook (certificate SAN and URL); "
        "default: the listen address, 127.0.0.1 for 0.0.0.0",
    )
    hook.add_argument(
        "--cert-dir",
        default=env("OPENAI_POLICY_CERT_DIR"),
        help="directory with tls.crt, tls.key (and optionally ca.crt); a self-signed "
        "certificate is generated there (or in a temporary directory) if absent",
    )
    hook.add_argument(
        "--manage-webhook-configuration",
        metavar="NAME",
        default=None,
        help="create/patch this MutatingWebhookConfiguration with our URL and CA "
        "(not needed when the chart installs one pointing at the Service)",
    )
    hook.add_argument(
        "--failure-policy",
        choices=FAILURE_POLICIES,
        default=DEFAULT_FAILURE_POLICY,
        help="webhook failurePolicy when managing the configuration (default: %(default)s)",
    )
    hook.add_argument(
        "--manage-validating-webhook-configuration",
        default=None,
        metavar="NAME",
        help="create/patch this ValidatingWebhookConfiguration for the admission rules (clusters "
        "older than 1.30, which have no ValidatingAdmissionPolicy)",
    )
    hook.add_argument(
        "--validating-failure-policy",
        choices=FAILURE_POLICIES,
        default="Fail",
        help="failurePolicy of the managed validating webhook (default: %(default)s)",
    )
    hook.add_argument(
        "--cert-check-interval",
        type=float,
        default=WebhookSettings.cert_check_seconds,
        help="seconds between checks of the certificate files for a renewal (default: %(default)s)",
    )
    hook.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        help="never inject into this namespace (kube-system and the operator's are always excluded)",
    )

    side = p.add_argument_group("sidecar")
    side.add_argument(
        "--sidecar-image", default=env("OPENAI_POLICY_SIDECAR_IMAGE", InjectionSettings.sidecar_image)
    )
    side.add_argument("--sidecar-image-pull-policy", default="IfNotPresent")
    side.add_argument(
        "--sidecar-redis-url",
        default=None,
        help="Redis URL given to sidecars, if it differs from --redis-url",
    )
    side.add_argument("--sidecar-cpu-request", default=SidecarResources.cpu_request)
    side.add_argument("--sidecar-memory-request", default=SidecarResources.memory_request)
    side.add_argument("--sidecar-memory-limit", default=SidecarResources.memory_limit)
    side.add_argument("--sidecar-log-level", default=env("OPENAI_POLICY_SIDECAR_LOG_LEVEL"))
    side.add_argument(
        "--sidecar-otlp-endpoint",
        default=env("OPENAI_POLICY_SIDECAR_OTLP_ENDPOINT"),
        help="sidecars export OpenTelemetry's GenAI metrics to this OTLP/HTTP endpoint (default: off)",
    )
    side.add_argument(
        "--sidecar-proxy-port",
        type=int,
        default=int(env("OPENAI_POLICY_SIDECAR_PROXY_PORT") or InjectionSettings.proxy_port),
    )
    side.add_argument(
        "--sidecar-admin-port",
        type=int,
        default=int(env("OPENAI_POLICY_SIDECAR_ADMIN_PORT") or InjectionSettings.admin_port),
    )

    p.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    sign = p.add_argument_group("signing")
    sign.add_argument(
        "--signing-key-file",
        type=Path,
        default=env("OPENAI_POLICY_SIGNING_KEY_FILE"),
        help="Ed25519 private key(s) (PEM, or base64 seeds one a line; the first signs): every policy "
        "document is signed and injected sidecars apply only signed ones. Without it nothing is signed",
    )
    sign.add_argument(
        "--policy-keys-file",
        type=Path,
        default=env("OPENAI_POLICY_POLICY_KEYS_FILE"),
        help="the public keys given to sidecars (comma-separated base64 keys or certificates; during a "
        "rotation the old and the new); default: those of --signing-key-file",
    )

    p.add_argument("--verbose", "-v", action="store_true")
    return p


def signing_from(args: argparse.Namespace) -> tuple[Signer | None, str | None]:
    """The signer and the sidecars' --policy-keys; refuses keys the sidecars would not trust."""
    if args.signing_key_file is None:
        return None, None
    signer = Signer.from_text(Path(args.signing_key_file).read_text())
    if args.policy_keys_file is None:
        return signer, signer.public_keys
    policy_keys = Path(args.policy_keys_file).read_text().strip()
    signer.check_trusted_by(parse_public_keys(policy_keys))
    return signer, policy_keys


def without_credentials(url: str | None) -> str | None:
    """The URL without ``user:password@`` (sidecars get their own credential in a Secret file)."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    host, _, port = args.webhook_listen.rpartition(":")
    try:
        signer, policy_keys = signing_from(args)
    except (OSError, SigningKeyError) as error:
        raise SystemExit(f"openai-policy-operator: unusable signing keys: {error}") from None
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        operator_namespace=args.operator_namespace,
        peering_name=args.peering,
        redis_url=args.redis_url,
        redis_username=args.redis_username,
        redis_password_file=args.redis_password_file,
        redis_ca_file=args.redis_ca_file,
        redis_sidecar_credentials=args.redis_sidecar_credentials,
        redis_password_grace_seconds=args.redis_password_grace_seconds,
        signer=signer,
        status_interval=args.status_interval,
        status_max_refreshes=args.status_max_refreshes,
        heartbeat_stale_seconds=args.heartbeat_stale_seconds,
        injection=InjectionSettings(
            sidecar_image=args.sidecar_image,
            image_pull_policy=args.sidecar_image_pull_policy,
            # Never with credentials: the URL is in the pod spec, readable by whoever can get the pod.
            redis_url=without_credentials(args.sidecar_redis_url or args.redis_url),
            redis_credential=args.redis_sidecar_credentials != "none",
            resources=SidecarResources(
                cpu_request=args.sidecar_cpu_request,
                memory_request=args.sidecar_memory_request,
                memory_limit=args.sidecar_memory_limit or None,
            ),
            proxy_port=args.sidecar_proxy_port,
            admin_port=args.sidecar_admin_port,
            log_level=args.sidecar_log_level,
            policy_keys=policy_keys,
            otlp_endpoint=args.sidecar_otlp_endpoint or None,
        ),
        webhook=WebhookSettings(
            listen_host=host or "0.0.0.0",
            listen_port=int(port),
            public_host=args.webhook_host,
            cert_dir=args.cert_dir,
            manage_configuration=args.manage_webhook_configuration,
            failure_policy=args.failure_policy,
            manage_validating_configuration=args.manage_validating_webhook_configuration,
            validating_failure_policy=args.validating_failure_policy,
            cert_check_seconds=args.cert_check_interval,
            excluded_namespaces=tuple(dict.fromkeys((*ALWAYS_EXCLUDED_NAMESPACES, *args.exclude_namespace))),
        ),
    )


def peering_identity(environ: dict[str, str] | None = None) -> str:
    """This replica's name in kopf's peering: the Pod's name (the chart's POD_NAME, downward API).

    kopf's own default asks getpass.getuser(), which raises KeyError for a uid with no passwd
    entry (the images run as 65532 and have none), so the operator crashed at start-up on a real
    node. Outside a Pod: the host name, pid and a random suffix, still no user lookup.
    """
    env = os.environ if environ is None else environ
    pod = env.get("POD_NAME", "").strip()
    if pod:
        return pod
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from(args)
    registry = kopf.OperatorRegistry()
    services = OperatorServices.build(settings, Kube.from_environment())
    register(registry, services)
    kopf.run(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True if args.standalone else None,
        liveness_endpoint=args.liveness,
        identity=peering_identity(),  # type: ignore[arg-type]  # kopf types it as a NewType of str
    )


if __name__ == "__main__":
    main()
