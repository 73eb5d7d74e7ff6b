"""The webhook's fast path: namespace labels and each namespace's policies, kept in memory by two
watches of this process's own.

Reading them from the API server for every pod costs two requests per admission, one of them a
list of the namespace's policies with their status and managedFields (~5 KB each): at 1,000
policies that was most of the webhook's latency and of the operator's CPU while pods were created
(bench/operator_bench.py). kopf's watches cannot serve instead: a replica that is not the peering
leader pauses them, and every replica serves the webhook.

The cache is as fresh as its watch, like the API server's watch cache the live reads
(``resourceVersion=0``) come from. A decision taken from it is used only when it injects, or needs
no data at all (:data:`TRUSTED_REASONS`); anything else is decided again from live reads, so a
cache that has not yet seen a namespace's label or a new policy only costs the slow path. What a
cache behind by a watch event can still do is inject with a policy changed or deleted in the last
moment, which the live read could do as well (its source lags the same way); the sidecar loads
the policy by name and the ValidatingAdmissionPolicies check the result.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.watch.watch import iter_resp_lines

from . import names
from .kube import ApiException, Kube

logger = logging.getLogger(__name__)

WATCH_SECONDS = 290  # each watch request ends before the API server's own limit; resumed at once
RELIST_PAUSE = 1.0  # seconds between a failed watch and the next list
# Decisions the cache may answer without a live read: an injection (the common case), and the
# skips that depend on the pod alone.
TRUSTED_REASONS = frozenset({"PolicyMatched", "PolicySelected", "OptedOut", "AlreadyInjected"})

Policy = dict[str, Any]


def slim_policy(body: Mapping[str, Any]) -> Policy:
    """What the decision and the injection read of a policy: its name, namespace and spec."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": body.get("spec") or {},
    }


class AdmissionCache:
    """Namespace labels and policies by namespace, each fed by a list then a watch in a thread."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._labels: dict[str, dict[str, str]] = {}
        self._policies: dict[str, dict[str, Policy]] = {}
        self._synced = {"namespaces": False, "policies": False}
        self._stop = threading.Event()

    def start(self) -> None:
        for kind, once in (("namespaces", self._namespaces_once), ("policies", self._policies_once)):
            threading.Thread(
                target=self._run, args=(kind, once), name=f"admission-cache-{kind}", daemon=True
            ).start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def synced(self) -> bool:
        return all(self._synced.values())

    def view(self, namespace: str) -> tuple[dict[str, str], list[Policy]] | None:
        """(labels, policies) of a namespace, or None when the cache cannot say (not synced, unknown)."""
        if not self.synced:
            return None
        labels = self._labels.get(namespace)
        if labels is None:
            return None
        return labels, list(self._policies.get(namespace, {}).values())

    # ---- the watches (worker threads: the official client is synchronous) ---------------------------

    def _run(self, kind: str, once: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                once()
            except Exception as error:  # noqa: BLE001 - the webhook falls back to live reads meanwhile
                logger.warning("admission cache: watching %s failed (%s); listing again", kind, error)
            self._synced[kind] = False
            self._stop.wait(RELIST_PAUSE)

    def _namespaces_once(self) -> None:
        response: Any = self.kube.core.list_namespace(_preload_content=False)  # raw: no model classes
        listing = json.loads(response.data)
        self._labels = {
            item["metadata"]["name"]: dict(item["metadata"].get("labels") or {})
            for item in listing.get("items") or []
        }
        self._synced["namespaces"] = True
        self._watch(
            self.kube.core.list_namespace, (), listing["metadata"]["resourceVersion"], self._namespace
        )

    def _namespace(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        if kind == "DELETED":
            self._labels.pop(meta["name"], None)
        else:
            self._labels[meta["name"]] = dict(meta.get("labels") or {})

    def _policies_once(self) -> None:
        args = (names.GROUP, names.VERSION, names.PLURAL)
        listing: Any = self.kube.custom.list_cluster_custom_object(*args)
        fresh: dict[str, dict[str, Policy]] = {}
        for item in listing.get("items") or []:
            slim = slim_policy(item)
            fresh.setdefault(slim["metadata"]["namespace"], {})[slim["metadata"]["name"]] = slim
        self._policies = fresh
        self._synced["policies"] = True
        self._watch(
            self.kube.custom.list_cluster_custom_object,
            args,
            listing["metadata"]["resourceVersion"],
            self._policy,
        )

    def _policy(self, kind: str, body: Mapping[str, Any]) -> None:
        slim = slim_policy(body)
        namespace, name = slim["metadata"]["namespace"], slim["metadata"]["name"]
        # A new dict each time, never changed in place: the webhook may be reading the old one.
        policies = {k: v for k, v in self._policies.get(namespace, {}).items() if k != name}
        if kind != "DELETED":
            policies[name] = slim
        self._policies[namespace] = policies

    def _watch(
        self,
        list_fn: Callable[..., Any],
        args: tuple[str, ...],
        resource_version: str,
        apply: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        """Apply events from ``resource_version`` on until stopped; returns when a relist is needed.

        Lines are read and parsed once here: the client's ``watch.Watch`` parses each event twice
        (and every status patch of every policy is an event)."""
        while not self._stop.is_set():
            try:
                response = list_fn(
                    *args,
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _preload_content=False,
                    _request_timeout=WATCH_SECONDS + 30,
                )
            except ApiException as error:
                if error.status == 410:  # our resourceVersion is too old: list again
                    return
                raise
            try:
                for line in iter_resp_lines(response):
                    if self._stop.is_set():  # stopped: apply nothing more
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    body = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if body.get("code") == 410:  # our resourceVersion is too old: list again
                            return
                        raise RuntimeError(body.get("message") or str(body))
                    resource_version = body["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        apply(event["type"], body)
            finally:
                response.release_conn()
