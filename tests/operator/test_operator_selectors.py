"""Label selector matching and overlap (conflict) detection."""

from __future__ import annotations

import pytest

from openai_policy_operator.selectors import PolicySummary, SelectorError, conflicts_of, matches, overlap


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {"a": "1"}, True),
        (None, {}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "api"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {"tier": "a"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}, False),
    ],
)
def test_matches(selector, labels, expected):
    assert matches(selector, labels) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({}, {"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "web"}}, {"matchLabels": {"app": "api"}}, False),
        ({"matchLabels": {"app": "web"}}, {"matchLabels": {"team": "x"}}, True),
        (
            {"matchLabels": {"app": "web"}},
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
            False,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "c"]}]},
            True,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]},
            False,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}]},
            True,
        ),
    ],
)
def test_overlap(a, b, expected):
    assert overlap(a, b) is expected
    assert overlap(b, a) is expected


def test_invalid_selector_is_refused():
    with pytest.raises(SelectorError):
        matches({"matchExpressions": [{"key": "a", "operator": "In"}]}, {})


def test_only_the_newer_policy_of_a_conflicting_pair_conflicts():
    old = PolicySummary("old", "2026-11-22T10:00:00Z", {"matchLabels": {"app": "web"}})
    new = PolicySummary(
        "new",
        "2026-11-22T11:00:00Z",
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]},
    )
    unrelated = PolicySummary("other", "2026-11-22T09:00:00Z", {"matchLabels": {"app": "api"}})
    everyone = [old, new, unrelated]
    assert conflicts_of(new, everyone) == ["old"]
    assert conflicts_of(old, everyone) == []
    assert conflicts_of(unrelated, everyone) == []


def test_same_second_ties_break_by_name():
    a = PolicySummary("a", "2026-11-22T10:00:00Z", {})
    b = PolicySummary("b", "2026-11-22T10:00:00Z", {})
    assert conflicts_of(b, [a, b]) == ["a"]
    assert conflicts_of(a, [a, b]) == []
