"""Rendering a policy into the ConfigMap the sidecars mount (pure: no API calls here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from openai_policy_api import OpenAIPolicy

from . import names


def policy_document(policy: OpenAIPolicy, generation: int) -> dict[str, Any]:
    """``policy.to_document()`` with ``metadata.generation`` set to the resource's generation.

    The generation is what sidecars compare to decide whether a published document is newer.
    """
    document = policy.to_document()
    document.setdefault("metadata", {})["generation"] = int(generation)
    return document


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the policy the controller-owner: deleting it garbage-collects what it owns."""
    meta = body["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def render_configmap(body: Mapping[str, Any], document: Mapping[str, Any]) -> dict[str, Any]:
    """The ``<name>-policy`` ConfigMap for one policy resource and its compiled document."""
    meta = body["metadata"]
    generation = str(document.get("metadata", {}).get("generation", meta.get("generation", 1)))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.configmap_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.POLICY_LABEL: meta["name"]},
            "annotations": {names.GENERATION_ANNOTATION: generation},
            "ownerReferences": [owner_reference(body)],
        },
        "data": {names.POLICY_FILE: yaml.safe_dump(dict(document), sort_keys=False)},
    }


def policy_input(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource reduced to what a user wrote (what ``load_policy`` accepts): no status, no
    server-populated metadata such as uid, resourceVersion or managedFields."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion", names.API_VERSION),
        "kind": body.get("kind", names.KIND),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace", "default"),
            "generation": int(meta.get("generation") or 1),
        },
        "spec": dict(body.get("spec") or {}),
    }
