"""Prompt-injection phrase detection: the seeds' patterns, a few close relatives, and the policy's own.

A pattern list catches the copy-paste attacks ("ignore previous instructions"), not a
determined adversary; it is a cheap first line, counted and logged so that a platform team sees
attempts. The seeds' four patterns are kept verbatim; the built-in relatives widen them to the
phrasings seen most often ("ignore ALL previous instructions", "disregard the above").

What is scanned: text from users and tools (tool outputs carry indirect injections), not the
system/developer prompt, which the app's own developer wrote and which often legitimately says
things like "act as if you are a support agent".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from openai_policy_api.fields import compile_guardrail_pattern

from .text_extraction import DEVELOPER_ROLES, iter_texts

# The seeds' list, unchanged.
SEED_PATTERNS: tuple[str, ...] = (
    r"ignore\s+previous\s+instructions",
    r"you\s+are\s+now\s+a\s+different",
    r"act\s+as\s+if\s+you\s+are",
    r"forget\s+everything\s+above",
)
# Close relatives of the seeds' phrases.
EXTRA_BUILTIN_PATTERNS: tuple[str, ...] = (
    r"(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|earlier|preceding)"
    r"\s+(?:instructions|prompts?|rules|directions|messages)",
    r"(?:reveal|print|show|repeat|output)\s+(?:me\s+)?(?:your|the)\s+(?:system|hidden|initial)\s+(?:prompt|instructions)",
    r"you\s+are\s+no\s+longer\s+(?:an?\s+)?(?:ai|assistant|chatgpt|bound)",
    r"\bdeveloper\s+mode\s+(?:enabled|on)\b",
)
BUILTIN_PATTERNS: tuple[str, ...] = SEED_PATTERNS + EXTRA_BUILTIN_PATTERNS


class PromptInjectionSpecLike(Protocol):
    """The attributes of ``spec.safety.prompt_injection`` this module reads (read-only, so that
    the policy model's ``Literal`` fields fit)."""

    @property
    def action(self) -> str: ...  # off | flag | block

    @property
    def extra_patterns(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class InjectionMatch:
    pattern: str
    path: str
    start: int
    end: int


# RE2's \s is ASCII whitespace; Python's also took Unicode spaces (a no-break space between
# "ignore" and "previous"). The built-in patterns keep that reach: none has \s inside a class.
_UNICODE_SPACE = r"[\s\p{Z}]"


def _builtin(pattern: str) -> str:
    return pattern.replace(r"\s", _UNICODE_SPACE)


class InjectionDetector:
    """Compiled built-in + extra patterns (case-insensitive, RE2: linear time in the text)."""

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        self.patterns: tuple[str, ...] = BUILTIN_PATTERNS + tuple(extra_patterns)
        sources = [_builtin(p) for p in BUILTIN_PATTERNS] + list(extra_patterns)
        compiled = []
        for pattern, source in zip(self.patterns, sources, strict=True):
            try:
                compiled.append(compile_guardrail_pattern(source))
            except ValueError as exc:
                # The policy model validates extraPatterns with the same compiler; this guards
                # direct callers.
                raise ValueError(
                    f"prompt-injection pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
        self._compiled = tuple(compiled)

    def find(self, text: str, path: str = "") -> list[InjectionMatch]:
        found = []
        for pattern, regex in zip(self.patterns, self._compiled, strict=True):
            m = regex.search(text)
            if m:
                found.append(InjectionMatch(pattern, path, m.start(), m.end()))
        return found


@lru_cache(maxsize=32)
def detector_for(extra_patterns: tuple[str, ...]) -> InjectionDetector:
    """One compiled detector per distinct pattern list (policies change rarely)."""
    return InjectionDetector(extra_patterns)


class PromptInjectionDetected(Exception):
    """Refusal (maps to ``prompt_injection_detected``, 400, ``x-should-retry: false``)."""

    code = "prompt_injection_detected"
    status = 400
    error_type = "invalid_request_error"
    retryable = False

    def __init__(self, matches: list[InjectionMatch]) -> None:
        paths = sorted({m.path for m in matches})
        super().__init__(
            f"The request looks like a prompt-injection attempt ({len(matches)} suspicious phrase(s) in "
            f"{', '.join(paths[:5])}); this policy blocks it."
        )
        self.matches = matches
        self.param = paths[0] if paths else None


@dataclass
class InjectionOutcome:
    action: str
    matches: list[InjectionMatch] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.matches)

    @property
    def blocked(self) -> bool:
        return self.action == "block" and self.found

    @property
    def flagged(self) -> bool:
        return self.found and self.action in ("flag", "block")

    def exception(self) -> PromptInjectionDetected:
        return PromptInjectionDetected(list(self.matches))


def check_injection(endpoint: str, body: dict[str, Any], spec: PromptInjectionSpecLike) -> InjectionOutcome:
    """Scan user and tool texts; never raises (see :attr:`InjectionOutcome.blocked`)."""
    outcome = InjectionOutcome(action=spec.action)
    if spec.action == "off":
        return outcome
    detector = detector_for(tuple(spec.extra_patterns))
    for slot in iter_texts(endpoint, body, skip_roles=DEVELOPER_ROLES | {"assistant"}):
        outcome.matches.extend(detector.find(slot.text, slot.path))
    return outcome
