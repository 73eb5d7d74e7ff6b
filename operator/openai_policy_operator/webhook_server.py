"""Serving the admission webhook over TLS, and (optionally) registering it with the API server.

:class:`PolicyWebhookServer` is kopf's ``WebhookServer`` with our certificate handling, plus:

* the admission request's namespace is copied into the pod (a pod POSTed without
  ``metadata.namespace`` has it only in the request);
* when ``--manage-webhook-configuration NAME`` is given, every client config the server yields
  (URL + CA bundle) is written into the MutatingWebhookConfiguration ``NAME``, built by
  :func:`mutating_webhook_configuration` with our namespace selector and failure policy.
  kopf's own managed mode cannot express a namespace selector, hence our own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import kopf

from . import certs, names
from .config import OperatorSettings, WebhookSettings
from .kube import Kube

if TYPE_CHECKING:
    # kopf exports WebhookFn but not the request and response types its signature names.
    from kopf._cogs.structs.reviews import Request, Response

logger = logging.getLogger(__name__)


def namespace_selector(settings: WebhookSettings, operator_namespace: str | None) -> dict[str, Any]:
    excluded = sorted({*settings.excluded_namespaces, *([operator_namespace] if operator_namespace else [])})
    return {
        "matchLabels": {names.NAMESPACE_INJECTION_LABEL: names.NAMESPACE_INJECTION_ENABLED},
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}],
    }


def mutating_webhook_configuration(
    name: str, client_config: dict[str, Any], settings: WebhookSettings, operator_namespace: str | None
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration for pod injection (the chart renders the same content)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "webhooks": [
            {
                "name": f"{names.WEBHOOK_ID}.{names.GROUP}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",  # Events are posted only for real (non dry-run) requests
                "failurePolicy": settings.failure_policy,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": settings.timeout_seconds,
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": namespace_selector(settings, operator_namespace),
            }
        ],
    }


def with_handler_path(client_config: dict[str, Any]) -> dict[str, Any]:
    """kopf routes requests by the last path segment: point the URL at our handler's id."""
    config = dict(client_config)
    if "url" in config:
        config["url"] = f"{config['url'].rstrip('/')}/{names.WEBHOOK_ID}"
    return config


class PolicyWebhookServer(kopf.WebhookServer):
    def __init__(self, settings: OperatorSettings, kube: Kube | None) -> None:
        hook = settings.webhook
        files = certs.ensure(
            hook.cert_dir, [hook.public_host or "", "localhost", "127.0.0.1", hook.listen_host]
        )
        super().__init__(
            addr=hook.listen_host,
            port=hook.listen_port,
            host=hook.public_host,
            certfile=str(files.certfile),
            pkeyfile=str(files.keyfile),
            cafile=str(files.cafile) if files.cafile else None,
        )
        self.settings = settings
        self.kube = kube

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def serve(
            request: Request,
            *,
            webhook: str | None = None,
            headers: kopf.Headers | None = None,
            sslpeer: kopf.SSLPeer | None = None,
        ) -> Response:
            payload = request.get("request")
            obj = payload.get("object") if payload else None
            namespace = payload.get("namespace") if payload else None
            if isinstance(obj, dict) and namespace:
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            started = time.perf_counter()
            try:
                return await fn(request, webhook=webhook, headers=headers, sslpeer=sslpeer)
            finally:
                logger.debug(
                    "admission %s took %.1f ms",
                    payload.get("uid") if payload else None,
                    (time.perf_counter() - started) * 1e3,
                )

        async for client_config in super().__call__(serve):
            name = self.settings.webhook.manage_configuration
            if name and self.kube is not None:
                body = mutating_webhook_configuration(
                    name,
                    with_handler_path(dict(client_config)),
                    self.settings.webhook,
                    self.settings.operator_namespace,
                )
                await self.kube.apply_mutating_webhook_configuration(body)
                logger.info("MutatingWebhookConfiguration %s points at %s", name, client_config.get("url"))
            yield client_config
