"""Input/output guardrails: PII, prompt injection, moderation, over one shared text walker.

Each check takes the endpoint ("chat.completions", "responses", "completions", "embeddings"),
the parsed request body and its sub-spec of ``spec.safety``; each returns an outcome object and
never raises for a finding, so that the proxy decides (dry-run reports, enforce refuses with
``outcome.exception()``).
"""

from .moderation import (
    ContentFlagged,
    ModerationClient,
    ModerationError,
    ModerationOutcome,
    ModerationUnavailable,
    check_input_moderation,
    check_output_moderation,
)
from .pii import PII_TYPES, PiiDetected, PiiMatch, PiiOutcome, check_pii, find_pii, redact_text
from .prompt_injection import InjectionDetector, InjectionOutcome, PromptInjectionDetected, check_injection
from .text_extraction import TextSlot, iter_output_texts, iter_texts, rewrite_texts

__all__ = [
    "PII_TYPES",
    "ContentFlagged",
    "InjectionDetector",
    "InjectionOutcome",
    "ModerationClient",
    "ModerationError",
    "ModerationOutcome",
    "ModerationUnavailable",
    "PiiDetected",
    "PiiMatch",
    "PiiOutcome",
    "PromptInjectionDetected",
    "TextSlot",
    "check_injection",
    "check_input_moderation",
    "check_output_moderation",
    "check_pii",
    "find_pii",
    "iter_output_texts",
    "iter_texts",
    "redact_text",
    "rewrite_texts",
]
