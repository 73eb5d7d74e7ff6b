"""Guardrail patterns a policy carries are refused at apply time unless RE2 (linear time) runs them."""

from __future__ import annotations

from typing import Any

import pytest

from openai_policy_api import PolicyError, load_policy
from openai_policy_api.fields import compile_guardrail_pattern


def document(patterns: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {"safety": {"promptInjection": {"action": "block", "extraPatterns": patterns}}},
    }


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"(?=ignore)ignore", "lookaround"),
        (r"(?<!not )ignore", "lookaround"),
        (r"(\w+) again \1", "backreference"),
        (r"(?P<x>a)(?P=x)", "RE2 syntax"),
        (r"a{1001}", "repetition"),
        (r"((a{100}){100}){100}", "repetition"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_with_its_entry_and_why(pattern: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(document(["ignore", pattern]))
    problems = [p for p in caught.value.problems if p.path == "spec.safety.promptInjection.extraPatterns"]
    assert problems, str(caught.value)
    message = problems[0].message
    assert "entry 1" in message and "RE2" in message and words in message, message


def test_catastrophic_backtracking_patterns_are_accepted_because_re2_runs_them_in_linear_time() -> None:
    # Python's re takes seconds on this pair; RE2 has no backtracking to blow up.
    policy = load_policy(document([r"(a+)+$", r"(x|x)*y"]))
    assert policy.spec.safety.prompt_injection.extra_patterns == [r"(a+)+$", r"(x|x)*y"]
    regex = compile_guardrail_pattern(r"(a+)+$")
    assert regex.search("a" * 100_000 + "!") is None
    assert compile_guardrail_pattern("IGNORE").search("please ignore this")  # case-insensitive
