"""The whole ``OpenAIPolicy`` resource, and reading one from YAML/JSON text as a user writes it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .fields import DNS_SUBDOMAIN
from .problems import PolicyError, Problem, policy_error
from .spec import PolicySpec
from .status import PolicyStatus

# Final: typed as their literal values, which the model's apiVersion and kind fields require.
API_VERSION: Final = "openaipolicy.dev/v1alpha1"
GROUP, VERSION = API_VERSION.split("/")
KIND: Final = "OpenAIPolicy"
PLURAL = "openaipolicies"
SINGULAR = "openaipolicy"
SHORT_NAMES: tuple[str, ...] = ("oaip",)


class PolicyMetadata(BaseModel):
    """The part of ``metadata`` the policy needs; other metadata (uid, managedFields...) is ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str = Field(default="default", min_length=1, max_length=63, pattern=DNS_SUBDOMAIN)
    generation: int = Field(default=1, ge=1)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class OpenAIPolicy(BaseModel):
    """An OpenAIPolicy resource: the policy (spec) and what the operator observed (status)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["openaipolicy.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["OpenAIPolicy"] = KIND
    metadata: PolicyMetadata
    spec: PolicySpec = Field(default_factory=PolicySpec)
    status: PolicyStatus | None = None

    @property
    def ref(self) -> tuple[str, str]:
        """``(namespace, name)``: how Redis keys and the operator address this policy."""
        return (self.metadata.namespace, self.metadata.name)

    @property
    def generation(self) -> int:
        """``metadata.generation``: increases with every change of the spec."""
        return self.metadata.generation

    def to_document(self) -> dict[str, Any]:
        """The policy as a camelCase document with every default filled (no status).

        This is what the operator writes into the ConfigMap and Redis, and what ``load_policy``
        reads back to an equal policy.
        """
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": self.metadata.model_dump(mode="json", exclude_none=True),
            "spec": spec_document(self.spec),
        }


def spec_document(spec: PolicySpec) -> dict[str, Any]:
    """``spec`` as a camelCase mapping with every default filled and unset optional fields left out."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def _drop_nulls(value: Any) -> Any:
    """Remove ``null`` fields, as the API server prunes them before defaulting (``field: null`` = unset)."""
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _parse(source: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(
            [Problem("", f"the document is not valid YAML or JSON{where}: {problem}")]
        ) from None
    if len(documents) != 1:
        raise PolicyError(
            [Problem("", f"expected exactly one OpenAIPolicy document, found {len(documents)}")]
        )
    document = documents[0]
    if not isinstance(document, dict):
        raise PolicyError(
            [Problem("", "the document must be a mapping with apiVersion, kind, metadata and spec")]
        )
    return document


def load_policy(source: str | bytes | Mapping[str, Any]) -> OpenAIPolicy:
    """Read an OpenAIPolicy exactly as a user would ``kubectl apply`` it (YAML or JSON text, or a mapping).

    Only the camelCase names of the document are accepted. Raises ``PolicyError`` naming every
    bad field by its path.
    """
    document = _drop_nulls(_parse(source))
    try:
        return OpenAIPolicy.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise policy_error(exc, OpenAIPolicy, subject=_subject(document)) from None


def load_policy_file(path: str | Path) -> OpenAIPolicy:
    """``load_policy`` on a file's content (a YAML or JSON OpenAIPolicy)."""
    return load_policy(Path(path).read_text(encoding="utf-8"))


def load_spec(source: Mapping[str, Any]) -> PolicySpec:
    """Validate a bare ``spec`` mapping (camelCase); ``PolicyError`` paths start with ``spec``."""
    try:
        return PolicySpec.model_validate(_drop_nulls(source), by_alias=True, by_name=False)
    except ValidationError as exc:
        raise policy_error(exc, PolicySpec, prefix=("spec",), subject="OpenAIPolicy spec") from None


def _subject(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
        namespace = metadata.get("namespace") if isinstance(metadata.get("namespace"), str) else "default"
        return f"OpenAIPolicy {namespace}/{metadata['name']}"
    return "OpenAIPolicy"


def dumps_document(policy: OpenAIPolicy) -> str:
    """The canonical JSON text of ``policy.to_document()`` (sorted keys: stable for hashing and comparing)."""
    return json.dumps(policy.to_document(), sort_keys=True, separators=(",", ":"))
