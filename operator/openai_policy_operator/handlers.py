"""kopf wiring only: which events call which function. The logic lives in the modules it calls.

Handlers are registered by :func:`register` (not at import time) so that intervals and the
webhook server come from the command line, and tests can build a registry of their own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jsonpatch  # kopf's own dependency (kopf builds admission patches with it)
import kopf

from openai_policy_store import RedisStore, Store

from . import names
from .admission_cache import AdmissionCache
from .config import OperatorSettings
from .field_reports import StatusReader
from .kube import ApiException, Kube
from .pacing import StatusPacer, worth_writing
from .reconcile import Outcome, Reconciler, summary_of
from .redis_users import RedisUsers, operator_credential
from .selectors import PolicySummary
from .status import merge_patch
from .webhook import DENY, INJECT, Admission, Validation
from .webhook_server import PolicyWebhookServer

logger = logging.getLogger(__name__)

API_THREADS = 32  # the Kubernetes client's connection pool is sized to match (kube.py)

# The two indices, as kopf passes them to handlers: policies by namespace, and the names of the
# running pods injected with each policy, by (namespace, policy).
PoliciesIndex = kopf.Index[str, PolicySummary]
InjectedPodsIndex = kopf.Index[tuple[str, str], str]


@dataclass
class OperatorServices:
    """The objects the handlers share for the life of one operator process."""

    settings: OperatorSettings
    kube: Kube
    store: Store | None  # None without Redis
    reconciler: Reconciler
    status_reader: StatusReader
    admission: Admission
    validation: Validation
    redis_users: RedisUsers | None = None  # per-policy Redis credentials (None: not delivered)
    pacer: StatusPacer | None = None  # None: every timer tick refreshes

    @classmethod
    def build(cls, settings: OperatorSettings, kube: Kube) -> OperatorServices:
        store: Store | None = None
        redis_users: RedisUsers | None = None
        if settings.redis_url:
            login = operator_credential(settings.redis_username, settings.redis_password_file)
            redis = RedisStore(
                settings.redis_url,
                username=login[0] if login else None,
                password=login[1] if login else None,
                ssl_ca_file=settings.redis_ca_file,
            )
            store = redis
            if settings.redis_sidecar_credentials != "none":
                redis_users = RedisUsers(
                    redis,
                    kube,
                    mode=settings.redis_sidecar_credentials,
                    grace_seconds=settings.redis_password_grace_seconds,
                    operator_credential=login,
                    ca_file=settings.redis_ca_file,
                )
        return cls(
            settings,
            kube,
            store,
            Reconciler(kube, store, signer=settings.signer),
            StatusReader(store, settings.heartbeat_stale_seconds),
            # Cluster-wide only: a namespaced operator may not list namespaces or every policy.
            Admission(kube, settings, AdmissionCache(kube) if not settings.namespaces else None),
            Validation(kube, settings),
            redis_users,
            StatusPacer(settings.status_interval, settings.status_max_refreshes),
        )


def register(registry: kopf.OperatorRegistry, services: OperatorServices) -> None:
    settings = services.settings

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and diff-base in annotations of our own prefix: status is ours alone (the CRD's
        # structural schema would prune kopf's status fields anyway).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.GROUP, key="last-handled-configuration"
        )
        settings.posting.reporting_component = names.MANAGED_BY
        settings.posting.level = logging.INFO
        # Replicas elect one leader by kopf peering: distinct random priorities, highest wins; the
        # others pause reconciling and reporting but keep serving the webhook (never paused by kopf).
        # Without the peering CRDs (not mandatory) kopf runs standalone and says so in the log.
        settings.peering.name = services.settings.peering_name
        settings.peering.mandatory = False
        settings.peering.priority = random.randint(1, 2**31 - 1)
        settings.watching.server_timeout = 300
        settings.batching.batch_window = 0.1  # react to a spec change within the 2 s promise
        settings.admission.server = PolicyWebhookServer(services.settings, services.kube)
        settings.admission.managed = None  # PolicyWebhookServer manages its own configuration
        if services.admission.cache is not None:
            services.admission.cache.start()  # every replica: kopf's own watches pause on followers
        # The API calls the operator makes itself run in the loop's default executor: 6 threads on 2
        # cores (Python's default), which queued status writes at 1,000 policies behind each other.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api")
        )

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Same credentials as our own API client: in-cluster ServiceAccount or $KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        if services.admission.cache is not None:
            services.admission.cache.stop()
        if services.store is not None:
            await services.store.close()
        services.kube.close()

    # Index ids are the kwarg names under which kopf passes the indices to handlers.
    @kopf.index(names.RESOURCE, id="policies_by_namespace", registry=registry)
    def policies_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, PolicySummary]:
        return {namespace or "": summary_of(body)}

    @kopf.index(
        "pods", id="injected_pods", annotations={names.INJECTED_ANNOTATION: kopf.PRESENT}, registry=registry
    )
    def injected_pods(
        namespace: str | None, name: str, annotations: kopf.Annotations, status: kopf.Status, **_: Any
    ) -> dict[tuple[str, str], str] | None:
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        return {(namespace or "", annotations[names.INJECTED_ANNOTATION]): name}

    async def refresh(
        body: kopf.Body,
        patch: kopf.Patch,
        policies_by_namespace: PoliciesIndex | None,
        injected_pods: InjectedPodsIndex | None,
        force: bool,
    ) -> None:
        # kopf passes every index by its id; handlers default them to None only to fit kopf's
        # handler protocols, which do not know our index names.
        assert policies_by_namespace is not None and injected_pods is not None
        namespace, name = body.metadata.namespace or "", body.metadata.name or ""
        others = list(policies_by_namespace.get(namespace, []))
        outcome = await services.reconciler.reconcile(body, others, force=force)
        if services.redis_users is not None and outcome.policy is not None:
            # Before the status: a policy whose sidecars cannot log in to Redis is not Ready.
            failed = await services.redis_users.ensure(body)
            if failed is not None and outcome.ready.ready:
                outcome = Outcome(failed, outcome.policy)
        injected = len(list(injected_pods.get((namespace, name), [])))
        report = await services.status_reader.report(body, outcome.policy, outcome.ready, injected)
        previous: Mapping[str, Any] = body.get("status") or {}
        if worth_writing(previous, report.status, settings.heartbeat_stale_seconds):
            status_patch = merge_patch(dict(previous), report.status)
            if force:
                patch.status.update(status_patch)  # with kopf's own bookkeeping of the handler
            else:
                # The timer writes itself: kopf would deep-copy and diff the whole resource to turn
                # this merge patch into a JSON patch, most of a status write's CPU at 1,000 policies.
                try:
                    await services.kube.patch_policy_status(namespace, name, status_patch)
                except ApiException as error:
                    if error.status != 404:  # deleted meanwhile: nothing to report on
                        raise
        for transition in report.transitions:
            kopf.event(
                body,
                type=transition.event_type,
                reason=transition.reason,
                message=f"{transition.type}={transition.status}: {transition.message}",
            )

    @kopf.on.resume(names.RESOURCE, id="reconcile", backoff=5, registry=registry)
    @kopf.on.create(names.RESOURCE, id="reconcile", backoff=5, registry=registry)
    @kopf.on.update(names.RESOURCE, id="reconcile", field="spec", backoff=5, registry=registry)
    async def reconcile(
        body: kopf.Body,
        patch: kopf.Patch,
        *,
        policies_by_namespace: PoliciesIndex | None = None,
        injected_pods: InjectedPodsIndex | None = None,
        **_: Any,
    ) -> None:
        await refresh(body, patch, policies_by_namespace, injected_pods, force=True)
        if services.pacer is not None:
            services.pacer.refreshed((body.metadata.namespace or "", body.metadata.name or ""))

    # backoff: an unexpected error (a bug, an API outage) retries within seconds, not kopf's 60 s.
    @kopf.timer(
        names.RESOURCE,
        id="report",
        interval=settings.status_interval,
        initial_delay=settings.status_interval,
        backoff=5,
        registry=registry,
    )
    async def report(
        body: kopf.Body,
        patch: kopf.Patch,
        *,
        policies_by_namespace: PoliciesIndex | None = None,
        injected_pods: InjectedPodsIndex | None = None,
        **_: Any,
    ) -> None:
        ref = (body.metadata.namespace or "", body.metadata.name or "")
        if services.pacer is not None and not services.pacer.due(ref):
            return  # many policies: this one's refresh is stretched (pacing.py)
        await refresh(body, patch, policies_by_namespace, injected_pods, force=False)
        if services.pacer is not None:
            services.pacer.refreshed(ref)

    @kopf.on.delete(names.RESOURCE, id="forget", optional=True, registry=registry)
    async def forget(namespace: str | None, name: str, **_: Any) -> None:
        # optional: no finalizer, deletion is never blocked; the ConfigMap goes by garbage collection.
        services.reconciler.forget((namespace or "", name))
        if services.pacer is not None:
            services.pacer.forget((namespace or "", name))
        if services.redis_users is not None:
            await services.redis_users.delete((namespace or "", name))

    @kopf.on.mutate(
        "pods",
        id=names.WEBHOOK_ID,
        operation="CREATE",
        side_effects=True,
        ignore_failures=settings.webhook.failure_policy == "Ignore",
        registry=registry,
    )
    async def inject(body: kopf.Body, patch: kopf.Patch, dryrun: bool, warnings: list[str], **_: Any) -> None:
        namespace = body.metadata.namespace or ""
        try:
            decision, result = await services.admission.review(dict(body), namespace, dry_run=dryrun)
        except Exception as error:
            # An answer "not allowed" refuses the pod whatever the webhook's failurePolicy says, so the
            # operator applies the same policy itself: Fail refuses, Ignore admits the pod unchanged.
            message = f"{names.MANAGED_BY}: cannot decide on sidecar injection: {error}"
            if settings.webhook.failure_policy == "Ignore":
                logger.warning("%s (admitted without the sidecar: failurePolicy Ignore)", message)
                warnings.append(f"{message}; the pod was admitted without the {names.SIDECAR_NAME} sidecar")
                return
            raise kopf.AdmissionError(message, code=500) from error
        if decision.action == DENY:
            raise kopf.AdmissionError(decision.message, code=403)
        if decision.announce:
            warnings.append(decision.message)
        if decision.action == INJECT and result.changed:
            ops = result.patch
            patch.fns.append(lambda pod: _apply(pod, ops))

    # The admission rules, for clusters without ValidatingAdmissionPolicy (where the API server
    # evaluates the same rules itself and this handler is not registered with it).
    @kopf.on.validate(
        "pods",
        id=names.VALIDATING_WEBHOOK_ID,
        operations=["CREATE", "UPDATE", "CONNECT"],
        subresource="*",
        registry=registry,
    )
    async def validate(body: kopf.Body, subresource: str | None, **kwargs: Any) -> None:
        # kopf passes the old object and the operation too, outside its handler protocol's names.
        old: Mapping[str, Any] | None = kwargs.get("old")
        operation = str(kwargs.get("operation") or "")
        namespace = body.metadata.namespace or ""
        try:
            messages = await services.validation.review(
                dict(body), dict(old) if old is not None else None, operation, subresource, namespace
            )
        except Exception as error:
            # As for injection: the webhook's failurePolicy is applied by the operator itself.
            message = f"{names.MANAGED_BY}: cannot check the admission rules: {error}"
            if settings.webhook.validating_failure_policy == "Ignore":
                logger.warning("%s (admitted: failurePolicy Ignore)", message)
                return
            raise kopf.AdmissionError(message, code=500) from error
        if messages:
            raise kopf.AdmissionError(" ".join(messages), code=403)


def _apply(pod: kopf.RawBody, ops: list[dict[str, Any]]) -> None:
    """Apply our JSONPatch to kopf's copy of the pod; kopf diffs it into the admission response."""
    jsonpatch.apply_patch(pod, ops, in_place=True)
