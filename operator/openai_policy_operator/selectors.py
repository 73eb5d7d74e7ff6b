"""Label selectors: does a pod match a policy, and can two policies ever match the same pod?

Selectors are plain ``metav1.LabelSelector`` mappings (camelCase, as stored in the API), so this
module works on raw resource bodies and on ``policy.to_document()`` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Selector = Mapping[str, Any]


class SelectorError(ValueError):
    """A selector Kubernetes itself would refuse (unknown operator, values where none allowed...)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()


def requirements(selector: Selector | None) -> list[Requirement]:
    """Normalise matchLabels and matchExpressions into one list of requirements."""
    selector = selector or {}
    out = [Requirement(k, "In", frozenset({str(v)})) for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = expr.get("operator")
        values = frozenset(str(v) for v in expr.get("values") or [])
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"selector key {expr.get('key')!r}: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"selector key {expr.get('key')!r}: operator {op} takes no values")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SelectorError(f"selector key {expr.get('key')!r}: unknown operator {op!r}")
        out.append(Requirement(str(expr.get("key")), op, values))
    return out


def matches(selector: Selector | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes semantics; an empty selector matches every pod."""
    labels = labels or {}
    for req in requirements(selector):
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def _satisfiable(reqs: Iterable[Requirement]) -> bool:
    """Is there a label set meeting all requirements? Each key is independent of the others."""
    by_key: dict[str, list[Requirement]] = {}
    for req in reqs:
        by_key.setdefault(req.key, []).append(req)
    for key_reqs in by_key.values():
        must_exist = any(r.operator in ("In", "Exists") for r in key_reqs)
        must_not_exist = any(r.operator == "DoesNotExist" for r in key_reqs)
        if must_exist and must_not_exist:
            return False
        allowed: set[str] | None = None  # None: any value
        for r in key_reqs:
            if r.operator == "In":
                allowed = set(r.values) if allowed is None else allowed & r.values
        if allowed is not None:
            for r in key_reqs:
                if r.operator == "NotIn":
                    allowed -= r.values
            if not allowed:
                return False
        # Only NotIn/Exists on a key: some fresh value always satisfies them.
    return True


def overlap(a: Selector | None, b: Selector | None) -> bool:
    """True if some pod could match both selectors (so two policies would compete for it)."""
    return _satisfiable([*requirements(a), *requirements(b)])


@dataclass(frozen=True)
class PolicySummary:
    """What conflict detection needs to know about one policy in a namespace."""

    name: str
    created: str  # RFC 3339 creationTimestamp; compares correctly as a string
    selector: Mapping[str, Any]

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
