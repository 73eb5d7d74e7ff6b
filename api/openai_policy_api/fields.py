"""Constrained scalar types shared by the spec: names, model ids, percents, durations."""

from __future__ import annotations

from typing import Annotated

import re2
from pydantic import Field

from .problems import pattern_hint

DNS_SUBDOMAIN = pattern_hint(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "a lowercase DNS name (letters, digits, '-' and '.'), such as openai-api-key",
)
SECRET_KEY = pattern_hint(
    r"^[-._a-zA-Z0-9]+$",
    "a Secret data key made of letters, digits, '-', '_' and '.', such as api-key",
)
MODEL_ID = pattern_hint(
    r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
    "an exact model id without wildcards, such as gpt-4o-2024-08-06",
)
MODEL_PATTERN = pattern_hint(
    r"^([A-Za-z0-9._:/*?-]|\[!?[A-Za-z0-9._:/-]+\])+$",
    "a model id or wildcard pattern (letters, digits, '.', '-', '_', ':', '/', and the wildcards "
    "'*', '?' and a closed '[...]'), such as gpt-4o-* or *",
)
HTTP_URL = pattern_hint(
    r"^https?://[^\s/?#]+[^\s?#]*$",
    "an http:// or https:// URL without a query string, such as https://api.openai.com/v1",
)
NO_SPACES = pattern_hint(r"^\S+$", "a single word without spaces")

ModelId = Annotated[str, Field(min_length=1, max_length=128, pattern=MODEL_ID)]
ModelPattern = Annotated[str, Field(min_length=1, max_length=64, pattern=MODEL_PATTERN)]
DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Percent = Annotated[int, Field(ge=0, le=100)]


# Guardrail patterns run on RE2: linear in the text whatever the pattern, so that no pattern a
# policy carries can stall the sidecar's event loop by backtracking. What RE2 cannot take
# (backreferences, lookaround) is refused when the policy is applied, not when a request comes.
GUARDRAIL_PATTERN_MAX_LENGTH = 512
_GUARDRAIL_PROGRAM_MEMORY = 8 << 20  # bytes; far above any phrase list, far below the pod limit


def guardrail_pattern_options(*, case_sensitive: bool = False) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False  # the caller reports the error; RE2 would also print it to stderr
    options.max_mem = _GUARDRAIL_PROGRAM_MEMORY
    return options


def compile_guardrail_pattern(pattern: str, *, case_sensitive: bool = False) -> re2._Regexp[str]:
    """``pattern`` compiled as the sidecar runs it; ValueError says why RE2 refuses it."""
    try:
        return re2.compile(pattern, guardrail_pattern_options(case_sensitive=case_sensitive))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"{reason} (patterns use RE2 syntax, which runs in linear time: no backreferences "
            "such as \\1 and no lookaround such as (?=...) or (?<!...))"
        ) from None
