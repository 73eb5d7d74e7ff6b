"""Selectors of raw policy resources: does a pod match a policy, and which policies conflict?

Resource bodies hold plain ``metav1.LabelSelector`` mappings (camelCase, as stored in the API);
they are read into the policy model's :class:`~openai_policy_api.LabelSelector`, which holds the
matching rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from openai_policy_api import LabelSelector

# A LabelSelector as stored in a resource body (camelCase).
Selector = Mapping[str, object]


class SelectorError(ValueError):
    """A selector Kubernetes itself would refuse (unknown operator, values where none allowed...)."""


def parse(selector: Selector | None) -> LabelSelector:
    """The selector of a resource body as the model; raises :class:`SelectorError` when invalid."""
    try:
        return LabelSelector.model_validate(selector or {})
    except ValidationError as error:
        raise SelectorError(f"invalid selector: {error}") from error


def matches(selector: Selector | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes semantics; an empty selector matches every pod."""
    return parse(selector).matches(labels or {})


def overlap(a: Selector | None, b: Selector | None) -> bool:
    """True if some pod could match both selectors (so two policies would compete for it)."""
    return parse(a).overlaps(parse(b))


@dataclass(frozen=True)
class PolicySummary:
    """What conflict detection needs to know about one policy in a namespace."""

    name: str
    created: str  # RFC 3339 creationTimestamp; compares correctly as a string
    selector: Selector

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)  # older first; the name breaks same-second ties


def conflicts_of(policy: PolicySummary, others: Sequence[PolicySummary]) -> list[str]:
    """Older policies (same namespace) whose selectors overlap this one's.

    Non-empty means this policy is the *newer* one of a conflicting pair and must not be Ready;
    the older policy keeps working, so adding a policy can never break a running workload.
    """
    out = []
    for other in others:
        if other.name == policy.name or other.order >= policy.order:
            continue
        try:
            if overlap(policy.selector, other.selector):
                out.append(other.name)
        except SelectorError:
            continue  # an invalid selector is reported on its own policy, not as a conflict
    return sorted(out)
