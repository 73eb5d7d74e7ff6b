"""The few Kubernetes API calls the operator makes itself (kopf does the watching and patching).

The official client is synchronous; each call runs in a worker thread so the event loop (and the
admission webhook sharing it) never blocks on the network.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import names

__all__ = ["ApiException", "Kube"]


def _as_body(body: Mapping[str, Any]) -> Any:
    """A request body for the client: it sends a plain dict as JSON as is, although its methods'
    annotations name only its model classes (V1ConfigMap...)."""
    return dict(body)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self._configmaps: set[tuple[str, str]] = set()  # (namespace, name) written by this process

    @classmethod
    def from_environment(cls) -> Kube:
        """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG (or ~/.kube/config)."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(client_configuration=configuration)
        # As many connections as threads may call at once (handlers.API_THREADS): the default, 5 per
        # core, makes urllib3 open and drop extra connections under load.
        configuration.connection_pool_maxsize = 32
        return cls(client.ApiClient(configuration))

    async def namespace_labels(self, name: str) -> dict[str, str]:
        ns = await asyncio.to_thread(self.core.read_namespace, name)
        return dict((ns.metadata.labels if ns.metadata else None) or {})

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        # resourceVersion=0: served from the API server's watch cache. A consistent list would first
        # wait for that cache to catch up with etcd (~100 ms on a quiet cluster), on every pod admission.
        result = await asyncio.to_thread(
            self.custom.list_namespaced_custom_object,
            names.GROUP,
            names.VERSION,
            namespace,
            names.PLURAL,
            resource_version="0",
        )
        items = result.get("items") if isinstance(result, dict) else None
        return list(items or [])

    async def apply_configmap(self, body: Mapping[str, Any]) -> None:
        """Create, or replace data/labels/annotations/owners of, a ConfigMap we own.

        One this process wrote before (every resync, every new generation) is patched first and
        created only if it is gone: one request, instead of a refused create and then a patch."""
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        if ref in self._configmaps:
            try:
                await asyncio.to_thread(self.core.patch_namespaced_config_map, ref[1], ref[0], _as_body(body))
                return
            except ApiException as error:
                if error.status != 404:
                    raise
        try:
            await asyncio.to_thread(self.core.create_namespaced_config_map, ref[0], _as_body(body))
        except ApiException as error:
            if error.status != 409:
                raise
            await asyncio.to_thread(self.core.patch_namespaced_config_map, ref[1], ref[0], _as_body(body))
        self._configmaps.add(ref)

    async def patch_policy_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A JSON merge patch of one policy's status subresource."""
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            names.GROUP,
            names.VERSION,
            namespace,
            names.PLURAL,
            name,
            _as_body({"status": status}),
            _content_type="application/merge-patch+json",
        )

    async def apply_mutating_webhook_configuration(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        try:
            await asyncio.to_thread(self.admission.create_mutating_webhook_configuration, _as_body(body))
        except ApiException as error:
            if error.status != 409:
                raise
            # A merge patch replaces the whole webhooks list: exactly the managed content.
            await asyncio.to_thread(self.admission.patch_mutating_webhook_configuration, name, _as_body(body))

    async def apply_validating_webhook_configuration(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        try:
            await asyncio.to_thread(self.admission.create_validating_webhook_configuration, _as_body(body))
        except ApiException as error:
            if error.status != 409:
                raise
            await asyncio.to_thread(
                self.admission.patch_validating_webhook_configuration, name, _as_body(body)
            )

    async def post_event(
        self, namespace: str, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        body = {
            "metadata": {"generateName": f"{involved.get('name') or 'pod'}.", "namespace": namespace},
            "involvedObject": {**involved, "namespace": namespace},
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
            "reportingInstance": os.environ.get("POD_NAME", names.MANAGED_BY),
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        await asyncio.to_thread(self.core.create_namespaced_event, namespace, _as_body(body))

    def close(self) -> None:
        self.api_client.close()
