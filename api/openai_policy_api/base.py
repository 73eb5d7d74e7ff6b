"""Base classes and small shared pieces of the OpenAIPolicy model.

Every spec object is strict (a string is never silently turned into a number: the API server
would refuse it too), refuses unknown fields, and is written camelCase in YAML while Python code
uses snake_case attributes.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# The key under which a model class lists its CEL rules (copied verbatim into the CRD).
CEL_RULES = "x-kubernetes-validations"


class SpecModel(BaseModel):
    """A part of ``OpenAIPolicy.spec``: strict, closed, camelCase in documents."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
    )


class StatusModel(BaseModel):
    """A part of ``OpenAIPolicy.status``: written by the operator, lenient when read back."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )


def cel(
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    message_expression: str | None = None,
    reason: str = "FieldValueInvalid",
) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry.

    The Python validators next to each rule enforce the same constraint exactly; the CEL rule
    is what the API server checks at ``kubectl apply`` time.
    """
    entry: dict[str, Any] = {"rule": rule, "message": message, "reason": reason}
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def raise_problems(problems: Iterable[tuple[str, str]]) -> None:
    """Raise every cross-field problem of one object at once, each with its relative path.

    ``problems`` holds ``(relative_path, message)`` pairs, the path being relative to the object
    under validation (e.g. ``downgradeAtPercent`` or ``limits[1].window``). The error
    formatter in :mod:`.errors` appends it to the object's location.
    """
    found = list(problems)
    if found:
        raise PydanticCustomError(
            "policy_rule",
            "{summary}",
            {"summary": "; ".join(f"{path}: {message}" for path, message in found), "problems": found},
        )


def doc(cls: type) -> str:
    """A class docstring as one description: paragraphs kept, lines within a paragraph joined."""
    text = inspect.cleandoc(cls.__doc__ or "")
    return "\n\n".join(" ".join(p.split("\n")) for p in text.split("\n\n"))
