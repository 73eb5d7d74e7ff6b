"""Reconciling one policy: validate, detect selector conflicts, render the ConfigMap, publish to Redis.

Every failure becomes a :class:`~.status.ReadyState` (reason + message for the Ready condition and
its Event), never an exception escaping to kopf: a bad policy is a user's problem to read in
``kubectl describe``, not a stack trace in the operator's log.

Spend survives a delete/re-create: Redis keys are derived from the policy's namespace and name
(``openai_policy_store.keyspace``), not its uid, so re-creating a policy continues the same
budget buckets and cannot be used to reset a monthly budget. Deleting a policy removes only what
it owns in the cluster (the ConfigMap, via ownerReferences and the garbage collector); its
counters expire with their window buckets.

With a signer every document (ConfigMap and store) is signed and names the policy's uid and
creation time, so that sidecars apply only what the operator wrote and tell a re-created policy
from a replay of the old one. A document in the store is replaced unless it is this operator's
signed document of the same incarnation at the same or a newer generation: a forged document with
a higher generation cannot hold off genuine updates.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openai_policy_api import OpenAIPolicy, PolicyError, load_policy
from openai_policy_store import Store
from openai_policy_store.signing import DocumentRejected, Signer, parse_public_keys, verify_document

from . import names
from .kube import ApiException, Kube
from .rendering import policy_document, policy_input, render_configmap
from .selectors import PolicySummary, conflicts_of
from .status import ReadyState

logger = logging.getLogger(__name__)


def summary_of(body: Mapping[str, Any]) -> PolicySummary:
    meta = body.get("metadata") or {}
    return PolicySummary(
        name=str(meta.get("name")),
        created=str(meta.get("creationTimestamp") or ""),
        selector=dict((body.get("spec") or {}).get("selector") or {}),
    )


def conflict_state(body: Mapping[str, Any], others: Sequence[PolicySummary]) -> ReadyState | None:
    older = conflicts_of(summary_of(body), others)
    if not older:
        return None
    name = body["metadata"]["name"]
    return ReadyState(
        False,
        "SelectorConflict",
        f"the selector of {name} overlaps the selector of older polic"
        f"{'y' if len(older) == 1 else 'ies'} {', '.join(older)} in this namespace: pods matching "
        f"both would be ambiguous and are not injected. Narrow the selector, or choose a policy per "
        f"pod with the {names.POLICY_ANNOTATION} annotation",
    )


@dataclass(frozen=True)
class _Compiled:
    uid: str
    generation: int
    spec: Mapping[str, Any]  # a copy: the body's own may be changed in place by its owner
    policy: OpenAIPolicy
    document: dict[str, Any]
    configmap: dict[str, Any]


@dataclass
class Outcome:
    ready: ReadyState
    policy: OpenAIPolicy | None = None


class Reconciler:
    """Applies one policy's owned objects; remembers per policy what it already did."""

    def __init__(
        self, kube: Kube, store: Store | None, resync_seconds: float = 60.0, *, signer: Signer | None = None
    ) -> None:
        self.kube = kube
        self.store = store  # None without Redis
        self.signer = signer
        self._trusted = parse_public_keys(signer.public_keys) if signer is not None else {}
        # ref -> (uid, generation, signed document): re-applying the ConfigMap on resync writes the
        # same bytes, so sidecars see no change.
        self._signed: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = {}
        # ref -> (generation whose ConfigMap is applied, when). Re-applied every resync_seconds so that
        # a ConfigMap deleted or edited by hand is restored without watching every ConfigMap.
        self.resync_seconds = resync_seconds
        self._rendered: dict[tuple[str, str], tuple[int, float]] = {}
        # ref -> the last spec compiled: (uid, generation, spec, policy, document, ConfigMap). The
        # status timer reconciles every policy every few seconds; validating the spec, building the
        # document and its YAML again each time was most of a tick's CPU at 1,000 policies.
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def forget(self, ref: tuple[str, str]) -> None:
        self._rendered.pop(ref, None)
        self._signed.pop(ref, None)
        self._compiled.pop(ref, None)

    def _compile(self, body: Mapping[str, Any], generation: int) -> _Compiled:
        """The policy, its document and its ConfigMap, reused while uid, generation and spec stay."""
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        uid, spec = str(meta.get("uid") or ""), body.get("spec") or {}
        cached = self._compiled.get(ref)
        if cached is not None and (cached.uid, cached.generation, cached.spec) == (uid, generation, spec):
            return cached
        policy = load_policy(policy_input(body))  # raises PolicyError
        document = self._document(body, policy, generation)
        compiled = _Compiled(
            uid, generation, copy.deepcopy(dict(spec)), policy, document, render_configmap(body, document)
        )
        self._compiled[ref] = compiled
        return compiled

    def _document(self, body: Mapping[str, Any], policy: OpenAIPolicy, generation: int) -> dict[str, Any]:
        document = policy_document(policy, generation)
        if self.signer is None:
            return document
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        uid = str(meta.get("uid") or "")
        cached = self._signed.get(ref)
        if cached is not None and cached[0] == uid and cached[1] == generation:
            return cached[2]
        document["metadata"].update(
            uid=uid,
            creationTimestamp=str(meta.get("creationTimestamp") or ""),
            signedAt=int(time.time() * 1000),
        )
        signed = self.signer.sign(document)
        self._signed[ref] = (uid, generation, signed)
        return signed

    async def reconcile(
        self, body: Mapping[str, Any], others: Sequence[PolicySummary], *, force: bool = False
    ) -> Outcome:
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation") or 1)
        try:
            compiled = self._compile(body, generation)
        except PolicyError as error:
            return Outcome(ReadyState(False, "InvalidPolicy", str(error)))
        policy, document = compiled.policy, compiled.document

        rendered = self._rendered.get(ref)
        stale = (
            rendered is None
            or rendered[0] != generation
            or time.monotonic() - rendered[1] > self.resync_seconds
        )
        configmap_failed: ReadyState | None = None
        if force or stale:
            try:
                await self.kube.apply_configmap(compiled.configmap)
                self._rendered[ref] = (generation, time.monotonic())
            except ApiException as error:
                # e.g. 422 right after a delete and re-create: the old ConfigMap still names the old
                # policy as its controller until the garbage collector removes it. Publishing still
                # happens, so running sidecars get the new policy (its suspend included) through the
                # store meanwhile; the ConfigMap follows on a later tick.
                configmap_failed = ReadyState(
                    False,
                    "ConfigMapFailed",
                    f"could not write ConfigMap {names.configmap_name(ref[1])}: {error.status} {error.reason}",
                )

        published = await self._publish(ref, document, generation, force=force)
        if configmap_failed is not None:
            return Outcome(configmap_failed, policy)
        if published is not None:
            return Outcome(published, policy)
        conflict = conflict_state(body, others)
        if conflict is not None:
            return Outcome(conflict, policy)
        where = " and published to the state store" if self.store is not None else ""
        return Outcome(
            ReadyState(
                True,
                "Reconciled",
                f"generation {generation} rendered into ConfigMap {names.configmap_name(ref[1])}{where}",
            ),
            policy,
        )

    async def _publish(
        self, ref: tuple[str, str], document: dict[str, Any], generation: int, *, force: bool
    ) -> ReadyState | None:
        """Publish unless the store already holds this generation (it re-publishes after a Redis restart)."""
        if self.store is None:
            return None
        try:
            if not force:
                current = await self.store.get_policy_document(ref)
                if current is not None and self._holds(current, document, generation):
                    return None
            await self.store.publish_policy_document(ref, document)
        except Exception as error:  # noqa: BLE001 - StoreUnavailable or a connection error: report, retry next tick
            logger.warning("publishing %s/%s generation %s failed: %s", *ref, generation, error)
            return ReadyState(
                False,
                "PublishFailed",
                f"generation {generation} is rendered but could not be published to the state "
                f"store ({type(error).__name__}: {error}); running sidecars keep their current "
                f"policy until it is. Retrying",
            )
        return None

    def _holds(self, current: Mapping[str, Any], document: Mapping[str, Any], generation: int) -> bool:
        """Whether the stored document already stands for ``document`` (no need to publish)."""
        if self.signer is None:
            return int((current.get("metadata") or {}).get("generation", 0)) >= generation
        try:
            facts = verify_document(current, self._trusted)
        except DocumentRejected:
            return False  # forged, or signed with a key no longer trusted: overwrite it
        return facts.uid == document["metadata"]["uid"] and facts.generation >= generation
