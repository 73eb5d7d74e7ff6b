"""Constrained scalar types shared by the spec: names, model ids, percents, durations."""

from __future__ import annotations

from typing import Annotated

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
