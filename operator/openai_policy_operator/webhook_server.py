"""Serving the admission webhook over TLS, and (optionally) registering it with the API server.

:class:`PolicyWebhookServer` is kopf's ``WebhookServer`` with our certificate handling, plus:

* the admission request's namespace is copied into the pod (a pod POSTed without
  ``metadata.namespace`` has it only in the request);
* when ``--manage-webhook-configuration NAME`` is given, every client config the server yields
  (URL + CA bundle) is written into the MutatingWebhookConfiguration ``NAME``, built by
  :func:`mutating_webhook_configuration` with our namespace selector and failure policy.
  kopf's own managed mode cannot express a namespace selector, hence our own; likewise the
  ValidatingWebhookConfiguration of ``--manage-validating-webhook-configuration``;
* a renewed serving certificate is loaded into the live SSL context
  (:class:`~.certs.ServingCertificate`) instead of kopf's restart of the listener, and a changed CA
  is written into the managed configurations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
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


def validating_webhook_configuration(
    name: str, client_config: dict[str, Any], settings: WebhookSettings, operator_namespace: str | None
) -> dict[str, Any]:
    """The admission rules answered by the operator, for clusters without ValidatingAdmissionPolicy
    (the chart renders the same content when admission.validation is webhook)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "webhooks": [
            {
                "name": f"{names.VALIDATING_WEBHOOK_ID}.{names.GROUP}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": settings.validating_failure_policy,
                "matchPolicy": "Equivalent",
                "timeoutSeconds": settings.timeout_seconds,
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods", "pods/ephemeralcontainers"],
                        "scope": "Namespaced",
                    },
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CONNECT"],
                        "resources": ["pods/exec", "pods/attach"],
                        "scope": "Namespaced",
                    },
                ],
                "namespaceSelector": namespace_selector(settings, operator_namespace),
            }
        ],
    }


def with_handler_path(client_config: dict[str, Any], handler: str = names.WEBHOOK_ID) -> dict[str, Any]:
    """kopf routes requests by the last path segment: point the URL at our handler's id."""
    config = dict(client_config)
    if "url" in config:
        config["url"] = f"{config['url'].rstrip('/')}/{handler}"
    return config


class PolicyWebhookServer(kopf.WebhookServer):
    def __init__(self, settings: OperatorSettings, kube: Kube | None) -> None:
        hook = settings.webhook
        files = certs.ensure(
            hook.cert_dir, [hook.public_host or "", "localhost", "127.0.0.1", hook.listen_host]
        )
        self.certificate = certs.ServingCertificate(files)
        # No file names for kopf: it would watch them itself and restart its listener on a renewal,
        # failing the admission calls in flight. We reload in place instead (see _watch_certificate).
        super().__init__(addr=hook.listen_host, port=hook.listen_port, host=hook.public_host)
        self.settings = settings
        self.kube = kube

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        return self.certificate.cadata(), self.certificate.context

    async def _register(self, client_config: kopf.WebhookClientConfig) -> None:
        hook = self.settings.webhook
        if self.kube is None:
            return
        if hook.manage_configuration:
            body = mutating_webhook_configuration(
                hook.manage_configuration,
                with_handler_path(dict(client_config)),
                hook,
                self.settings.operator_namespace,
            )
            await self.kube.apply_mutating_webhook_configuration(body)
            logger.info(
                "MutatingWebhookConfiguration %s points at %s",
                hook.manage_configuration,
                client_config.get("url"),
            )
        if hook.manage_validating_configuration:
            body = validating_webhook_configuration(
                hook.manage_validating_configuration,
                with_handler_path(dict(client_config), names.VALIDATING_WEBHOOK_ID),
                hook,
                self.settings.operator_namespace,
            )
            await self.kube.apply_validating_webhook_configuration(body)
            logger.info("ValidatingWebhookConfiguration %s registered", hook.manage_validating_configuration)

    async def _watch_certificate(self, client_config: kopf.WebhookClientConfig) -> None:
        cadata = self.certificate.cadata()
        while True:
            await asyncio.sleep(self.settings.webhook.cert_check_seconds)
            try:
                if not self.certificate.reload_if_changed():
                    continue
                renewed = self.certificate.cadata()
                if renewed != cadata:  # a new CA (or a new self-signed certificate): tell the API server
                    config = client_config.copy()
                    config["caBundle"] = base64.b64encode(renewed).decode("ascii")
                    await self._register(config)
                    cadata = renewed
            except Exception as error:  # noqa: BLE001 - keep watching; the old certificate still serves
                logger.warning("webhook certificate renewal not applied: %s", error)

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

        # kopf asks for the next client config right after the first one (and waits there for
        # ever): the watcher lives as long as this generator, not one iteration.
        watcher: asyncio.Task[None] | None = None
        try:
            async for client_config in super().__call__(serve):
                await self._register(client_config)
                if watcher is None:
                    watcher = asyncio.create_task(self._watch_certificate(client_config))
                yield client_config
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
