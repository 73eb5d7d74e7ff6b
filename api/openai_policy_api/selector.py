"""The pod selector of a policy: a Kubernetes LabelSelector, and how it matches labels."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import CEL_RULES, SpecModel, cel, raise_problems

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS.match(prefix)):
        return f"label key {key!r} has an invalid prefix: it must be a lowercase DNS name such as example.com"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"label key {key!r} is invalid: the name part must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (
            f"label value {value!r} is invalid: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


class LabelSelectorRequirement(SpecModel):
    """One set-based requirement on a pod label, as in any Kubernetes LabelSelector."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                cel(
                    "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                    "values must list at least one value when operator is In or NotIn, and must be empty when "
                    "operator is Exists or DoesNotExist",
                    field_path=".values",
                )
            ]
        }
    )

    key: str = Field(min_length=1, max_length=317, description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value relates to `values`: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Label values; required (non-empty) for In and NotIn, must be empty for Exists and DoesNotExist.",
    )

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        problem = label_key_problem(key)
        if problem:
            raise ValueError(problem)
        return key

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise_problems([("values", f"must list at least one value when operator is {self.operator}")])
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise_problems([("values", f"must be empty when operator is {self.operator}")])
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfy this requirement."""
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


class LabelSelector(SpecModel):
    """Which pods the policy governs, by their labels (a standard Kubernetes LabelSelector).

    Only pods in namespaces labelled `openaipolicy.dev/injection: enabled` are considered. An
    empty selector (the default) selects every pod of the policy's namespace; a pod may also
    name its policy with the annotation `openaipolicy.dev/policy`.
    """

    match_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Labels a pod must carry, each with exactly this value. All must match (AND).",
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        max_length=32,
        description="Set-based requirements on pod labels. All must match (AND), together with matchLabels.",
    )

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = [p for k, v in labels.items() for p in (label_key_problem(k), label_value_problem(v)) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return labels

    def requirements(self) -> list[LabelSelectorRequirement]:
        """``matchLabels`` (each an ``In`` of one value) and ``matchExpressions``, as one list."""
        # Already validated as part of this selector: built without validating again.
        pinned = [
            LabelSelectorRequirement.model_construct(key=k, operator="In", values=[v])
            for k, v in self.match_labels.items()
        ]
        return [*pinned, *self.match_expressions]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when a pod with ``labels`` is selected (an empty selector selects every pod)."""
        return all(r.matches(labels) for r in self.requirements())

    def overlaps(self, other: LabelSelector) -> bool:
        """True when some label set is selected by both (two policies would compete for its pods)."""
        return _satisfiable([*self.requirements(), *other.requirements()])

    def is_empty(self) -> bool:
        """True when the selector selects every pod."""
        return not self.match_labels and not self.match_expressions


def _satisfiable(requirements: Iterable[LabelSelectorRequirement]) -> bool:
    """Is there a label set meeting every requirement? Each key is independent of the others."""
    by_key: dict[str, list[LabelSelectorRequirement]] = {}
    for requirement in requirements:
        by_key.setdefault(requirement.key, []).append(requirement)
    for on_key in by_key.values():
        must_exist = any(r.operator in ("In", "Exists") for r in on_key)
        if must_exist and any(r.operator == "DoesNotExist" for r in on_key):
            return False
        allowed: set[str] | None = None  # None: any value
        for r in on_key:
            if r.operator == "In":
                allowed = set(r.values) if allowed is None else allowed & set(r.values)
        if allowed is not None:
            for r in on_key:
                if r.operator == "NotIn":
                    allowed -= set(r.values)
            if not allowed:
                return False
        # Only NotIn or Exists on a key: some fresh value satisfies them.
    return True
