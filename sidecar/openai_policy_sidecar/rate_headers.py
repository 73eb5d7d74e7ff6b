"""The ``x-ratelimit-*`` headers an app sees: the tighter of the policy's limits and the upstream's.

SDKs and apps that pace themselves read ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.
Passing only the upstream's would hide a policy limit far below the account's (9,999 requests
left upstream, none left under the policy); passing only the policy's would hide an upstream
that is nearly out. So for each unit the triple with fewer remaining wins, whole (a limit, its
remaining and its reset always describe the same counter). A refusal made before any upstream
call uses what the upstream said last, so every answer carries the six headers whenever the
sidecar knows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from openai_policy_store.money import micros_to_fixed_usd

UNITS = ("requests", "tokens")
_FIELDS = ("limit", "remaining", "reset")
NAMES = tuple(f"x-ratelimit-{field}-{unit}" for unit in UNITS for field in _FIELDS)
# The policy's own remaining budget (``budget_headers``): only the sidecar writes them, so they pass
# from the first source that has them and are never taken from an upstream's answer.
BUDGET_PREFIX = "x-openai-policy-budget-remaining-"


def _triples(headers: Mapping[str, str]) -> dict[str, tuple[int, int, str]]:
    """unit -> (limit, remaining, reset) for each unit whose three headers are all present and sane."""
    lowered = {name.lower(): value for name, value in headers.items() if name.lower() in NAMES}
    found: dict[str, tuple[int, int, str]] = {}
    for unit in UNITS:
        try:
            limit = int(lowered[f"x-ratelimit-limit-{unit}"])
            remaining = int(lowered[f"x-ratelimit-remaining-{unit}"])
            reset = lowered[f"x-ratelimit-reset-{unit}"]
        except (KeyError, ValueError):
            continue
        if limit >= 0 and remaining >= 0 and len(reset) <= 32:
            found[unit] = (limit, remaining, reset)
    return found


def budget_headers(remaining: Iterable[tuple[str, str, int | None]]) -> dict[str, str]:
    """``x-openai-policy-budget-remaining-[user-|feature-]<window>`` in USD with 6 decimals, from
    ``(kind, window, micros)`` (kind ``policy``, ``user`` or ``feature``; None: no limit, no header)."""
    out: dict[str, str] = {}
    for kind, window, micros in remaining:
        if micros is not None:
            scope = "" if kind == "policy" else f"{kind}-"
            out[f"{BUDGET_PREFIX}{scope}{window}"] = micros_to_fixed_usd(micros)
    return out


def _budget_part(sources: Iterable[Mapping[str, str]]) -> dict[str, str]:
    for source in sources:
        found = {name: value for name, value in source.items() if name.lower().startswith(BUDGET_PREFIX)}
        if found:
            return found
    return {}


def tighter(*sources: Mapping[str, str]) -> dict[str, str]:
    """The six headers (those known) from the sources, per unit the one with fewest remaining; and
    the remaining-budget headers of the first source that carries them.

    On a tie the earlier source wins: the caller lists the policy first."""
    out = _budget_part(sources)
    best: dict[str, tuple[int, int, str]] = {}
    for source in sources:
        for unit, triple in _triples(source).items():
            held = best.get(unit)
            if held is None or (triple[1], triple[0]) < (held[1], held[0]):
                best[unit] = triple
    for unit, (limit, remaining, reset) in best.items():
        out[f"x-ratelimit-limit-{unit}"] = str(limit)
        out[f"x-ratelimit-remaining-{unit}"] = str(remaining)
        out[f"x-ratelimit-reset-{unit}"] = reset
    return out


def without(headers: Iterable[str]) -> list[str]:
    """The rate-limit and budget header names present in ``headers`` (to replace them)."""
    return [name for name in headers if name.lower() in NAMES or name.lower().startswith(BUDGET_PREFIX)]


class LastSeen:
    """The upstream's most recent ``x-ratelimit-*`` headers, for answers that never reach it."""

    def __init__(self) -> None:
        self._headers: dict[str, str] = {}

    def note(self, headers: Mapping[str, str]) -> None:
        triples = _triples(headers)
        if triples:
            self._headers.update(tighter({k: v for k, v in headers.items() if k.lower() in NAMES}))

    def headers(self) -> dict[str, str]:
        return dict(self._headers)
