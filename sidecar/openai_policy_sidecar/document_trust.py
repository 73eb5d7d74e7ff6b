"""Which policy documents this sidecar may apply: those the operator signed for its own policy.

An injected sidecar is given the operator's public keys in its own container arguments
(``--policy-keys``), which the admission rules pin at pod creation and forbid changing after.
The policy file (a ConfigMap a namespace editor can edit) and the store (Redis, reachable by
other pods) are then only carriers: a document from either is applied only when its signature
verifies with one of those keys and it names this sidecar's policy (namespace and name). Without
``--policy-keys`` (standalone use) there is nothing to verify with, so the file is applied as
given and nothing is taken from the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter

from openai_policy_store.signing import (
    DocumentRejected,
    SignedFacts,
    parse_public_keys,
    unsigned,
    verify_document,
)

log = logging.getLogger("openai_policy_sidecar.document_trust")


class DocumentTrust:
    """The verification keys and the policy this sidecar belongs to."""

    def __init__(self, keys_text: str, expected_ref: tuple[str, str] | None = None) -> None:
        self._trusted = parse_public_keys(keys_text)
        # Pinned by the first document applied when the pod does not say (env unset).
        self.expected_ref = expected_ref

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._trusted)

    def verify(self, document: Any) -> tuple[SignedFacts, dict[str, Any]]:
        """The signed facts and the policy document to load; raises ``DocumentRejected``."""
        facts = verify_document(document, self._trusted)
        if self.expected_ref is not None and facts.ref != self.expected_ref:
            raise DocumentRejected(
                "wrong_policy",
                f"signed for policy {facts.namespace}/{facts.name}, not "
                f"{self.expected_ref[0]}/{self.expected_ref[1]}",
            )
        assert isinstance(document, Mapping)
        return facts, unsigned(document)


def parse_text(text: str) -> Any:
    """A policy file's content (YAML or JSON); unparseable text is a rejected document."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise DocumentRejected("malformed", "the policy file is not YAML or JSON") from None


def fingerprint(document: Any) -> str:
    """A short digest naming a refused document in a log line (its content is never logged: a
    forged document may carry anything, and a genuine one names the upstream)."""
    try:
        raw = json.dumps(document, sort_keys=True, default=str).encode()
    except (TypeError, ValueError):
        raw = repr(document).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


class TrustMetrics:
    """Refused documents, by where they came from and why (on the sidecar's own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "openai_policy_policy_documents_rejected",
            "Policy documents refused because they are not signed by the operator for this policy.",
            ["source", "reason"],
            registry=registry,
        )
