"""The admission decision: which pods get a sidecar, and with which policy.

:func:`decide` is pure (pod, namespace labels, the namespace's policies -> a :class:`Decision`);
:class:`Admission` adds the I/O around it (reading the namespace and its policies, posting Events)
and returns the JSONPatch. kopf only wires it to the HTTPS endpoint (see ``handlers``).

Rules, in order: never the operator's own namespace or kube-system; only namespaces labelled
``openaipolicy.dev/injection: enabled``; ``openaipolicy.dev/inject: "false"`` opts a pod out; a pod
already carrying the sidecar is left alone (idempotence); the policy is the one the pod names in
``openaipolicy.dev/policy``, else the single policy whose selector matches the pod's labels.
No match leaves the pod unchanged; more than one match leaves it unchanged and says why in an Event.
The annotation only chooses among the policies that select the pod: naming one that does not is
refused (:data:`DENY`), or a pod labelled for a small budget could pick the namespace's largest.

:class:`Validation` is the I/O around :func:`.admission_rules.violations` for the validating
webhook (clusters without ValidatingAdmissionPolicy).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import names
from .admission_cache import TRUSTED_REASONS, AdmissionCache
from .admission_rules import GuardSettings, policy_selects_message, violations
from .config import OperatorSettings
from .kube import Kube
from .selectors import SelectorError, matches
from .sidecar_injection import InjectionResult, InjectionTarget, injection_patch, is_injected, workload_name

logger = logging.getLogger(__name__)

INJECT = "inject"
SKIP = "skip"
DENY = "deny"


@dataclass(frozen=True)
class Decision:
    action: str  # INJECT, SKIP or DENY
    reason: str  # CamelCase, used as the Event reason when announced
    message: str
    policy: Mapping[str, Any] | None = None  # the chosen policy resource (raw body)
    announce: bool = False  # worth an Event: the user asked for something we could not do

    @property
    def policy_name(self) -> str | None:
        return None if self.policy is None else self.policy["metadata"]["name"]


def target_of(policy: Mapping[str, Any]) -> InjectionTarget:
    """Injection facts from a raw policy resource (no model validation on the admission path)."""
    ref = ((policy.get("spec") or {}).get("apiKey") or {}).get("secretRef") or {}
    name = policy["metadata"]["name"]
    if not ref.get("name"):
        return InjectionTarget(policy_name=name)
    return InjectionTarget(
        policy_name=name, secret_name=ref["name"], secret_key=ref.get("key") or names.DEFAULT_API_KEY_KEY
    )


def decide(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    policies: Sequence[Mapping[str, Any]],
    never_inject: frozenset[str],
) -> Decision:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if namespace in never_inject:
        return Decision(SKIP, "ExcludedNamespace", f"namespace {namespace} is never injected")
    if namespace_labels.get(names.NAMESPACE_INJECTION_LABEL) != names.NAMESPACE_INJECTION_ENABLED:
        return Decision(
            SKIP,
            "NamespaceNotEnabled",
            f"namespace {namespace} is not labelled {names.NAMESPACE_INJECTION_LABEL}=enabled",
        )
    labels = meta.get("labels") or {}
    # The annotation is the documented opt-out; the same key as a label also works, so that a
    # webhook objectSelector can skip such pods before they even reach us.
    if "false" in (
        str(annotations.get(names.INJECT_ANNOTATION, "")).lower(),
        str(labels.get(names.INJECT_ANNOTATION, "")).lower(),
    ):
        return Decision(SKIP, "OptedOut", f'the pod sets {names.INJECT_ANNOTATION}: "false"')
    if is_injected(dict(pod)):
        return Decision(SKIP, "AlreadyInjected", f"the pod already has the {names.SIDECAR_NAME} container")

    chosen = annotations.get(names.POLICY_ANNOTATION)
    if chosen:
        policy = next((p for p in policies if p["metadata"]["name"] == chosen), None)
        if policy is None:
            return Decision(
                SKIP,
                "PolicyNotFound",
                f"the pod asks for OpenAIPolicy {chosen!r} ({names.POLICY_ANNOTATION}), which does "
                f"not exist in namespace {namespace}; the pod was created without the sidecar",
                announce=True,
            )
        try:
            selected = matches((policy.get("spec") or {}).get("selector"), labels)
        except SelectorError:
            selected = False
        if not selected:
            return Decision(
                DENY, "PolicyDoesNotSelectPod", policy_selects_message(chosen, names.POLICY_ANNOTATION)
            )
        return Decision(INJECT, "PolicySelected", f"policy {chosen} chosen by annotation", policy)

    matching = []
    for policy in policies:
        try:
            if matches((policy.get("spec") or {}).get("selector"), labels):
                matching.append(policy)
        except SelectorError:
            continue  # an invalid selector matches nothing; its policy reports the error itself
    if not matching:
        return Decision(SKIP, "NoMatchingPolicy", f"no OpenAIPolicy in {namespace} selects this pod")
    if len(matching) > 1:
        found = ", ".join(sorted(p["metadata"]["name"] for p in matching))
        return Decision(
            SKIP,
            "AmbiguousPolicy",
            f"OpenAIPolicies {found} all select this pod; it was created without the sidecar. "
            f"Set the {names.POLICY_ANNOTATION} annotation to choose one, or narrow the selectors",
            announce=True,
        )
    policy = matching[0]
    return Decision(INJECT, "PolicyMatched", f"policy {policy['metadata']['name']} selects the pod", policy)


def involved_object(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What an Event about a pod at admission is attached to.

    A pod being created has no uid yet and often no name (generateName): the Event goes to its
    controller (e.g. the ReplicaSet, where `kubectl describe` shows it) when there is one.
    """
    meta = pod.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        return {
            "apiVersion": owner.get("apiVersion"),
            "kind": owner.get("kind"),
            "name": owner.get("name"),
            "uid": owner.get("uid"),
        }
    return {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name") or meta.get("generateName", "")}


class Admission:
    """The I/O around :func:`decide` and :func:`injection_patch` for one operator process."""

    def __init__(self, kube: Kube, settings: OperatorSettings, cache: AdmissionCache | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.cache = cache  # the fast path; None: every admission reads the API server
        self._pending: set[asyncio.Task[None]] = set()

    async def review(
        self, pod: Mapping[str, Any], namespace: str, *, dry_run: bool
    ) -> tuple[Decision, InjectionResult]:
        if namespace in self.settings.never_inject:  # no API call at all for excluded namespaces
            return decide(pod, namespace, {}, [], self.settings.never_inject), InjectionResult()
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            # A namespace-scoped operator does not see policies elsewhere: never guess.
            return Decision(
                SKIP, "OutOfScope", f"namespace {namespace} is not watched by this operator"
            ), InjectionResult()
        decision = self._decide_from_cache(pod, namespace)
        if decision is None:
            labels, policies = await asyncio.gather(
                self.kube.namespace_labels(namespace), self.kube.list_policies(namespace)
            )
            decision = decide(pod, namespace, labels, policies, self.settings.never_inject)
        result = InjectionResult()
        if decision.action == INJECT and decision.policy is not None:
            result = injection_patch(dict(pod), target_of(decision.policy), self.settings.injection)
        if not dry_run:  # sideEffects: NoneOnDryRun
            self._announce(pod, namespace, decision, result)
        return decision, result

    def _decide_from_cache(self, pod: Mapping[str, Any], namespace: str) -> Decision | None:
        """The cache's decision when it may be trusted without a live read (see admission_cache)."""
        view = self.cache.view(namespace) if self.cache is not None else None
        if view is None:
            return None
        decision = decide(pod, namespace, view[0], view[1], self.settings.never_inject)
        return decision if decision.reason in TRUSTED_REASONS else None

    def _announce(
        self, pod: Mapping[str, Any], namespace: str, decision: Decision, result: InjectionResult
    ) -> None:
        involved = involved_object(pod)
        if decision.announce:
            self._post(namespace, involved, "Warning", decision.reason, decision.message)
        if result.replaced_key_env:
            self._post(
                namespace,
                involved,
                "Warning",
                "APIKeyEnvReplaced",
                f"OPENAI_API_KEY of container(s) {', '.join(result.replaced_key_env)} in pods of "
                f"{workload_name(dict(pod))} was replaced by a placeholder: calls go through the "
                f"{names.SIDECAR_NAME} sidecar, which holds the key of policy {decision.policy_name}",
            )

    def _post(
        self, namespace: str, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        # Fire and forget: an Event must never slow down or fail an admission.
        task = asyncio.create_task(self._post_now(namespace, involved, event_type, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post_now(
        self, namespace: str, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        try:
            await self.kube.post_event(namespace, involved, event_type, reason, message)
        except Exception as error:  # noqa: BLE001 - best effort by design
            logger.warning("could not post Event %s in %s: %s", reason, namespace, error)


class Validation:
    """The I/O around :func:`.admission_rules.violations` for one operator process."""

    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.guard = GuardSettings.from_operator(settings)

    async def review(
        self,
        pod: Mapping[str, Any],
        old_pod: Mapping[str, Any] | None,
        operation: str,
        subresource: str | None,
        namespace: str,
    ) -> list[str]:
        """The messages of every rule the pod breaks (empty: admitted)."""
        policies = await self.kube.list_policies(namespace)
        return violations(pod, old_pod, operation, subresource, policies, self.guard)
