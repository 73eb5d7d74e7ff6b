"""What the fake 'OpenAI' bills: one charge per answered call, from what the fake really did.

OpenAI bills what it processed, whatever the client saw: a call the client gave up on (a timeout,
a cut stream), a usage block that arrived malformed, a tool call, an image or a second of audio
all cost money. The fake charges each call when it has done the work, from its own record of it
(the usage it computed before any `usage` fault replaced what it reports, the tier it served the
call at, the tool calls in its output, the images it drew, the audio it heard), at the sidecar's
own bundled prices. Tests compare this bill with the budget and with what the sidecar recorded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from openai_policy_devkit.fake_openai_payloads import Generation
from openai_policy_sidecar.pricing import PriceTable
from openai_policy_sidecar.reported_usage import Usage


@dataclass(frozen=True)
class Charge:
    """One billed call."""

    endpoint: str
    model: str
    usage: Usage
    micros: int


class Billing:
    """The fake's ledger; thread-safe (the fake may serve from its own thread)."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or PriceTable.bundled()
        self._charges: list[Charge] = []
        self._lock = threading.Lock()

    def charge(self, endpoint: str, model: str, usage: Usage) -> Charge:
        """Bill one call at the tier in ``usage`` (a call the table cannot price bills nothing:
        the fake answers any model, the sidecar refuses unpriced ones before they get here)."""
        try:
            micros = self.prices.usage_cost_micros(model, usage, tier=usage.service_tier or "default")
        except LookupError:
            micros = 0
        charge = Charge(endpoint, model, usage, micros)
        with self._lock:
            self._charges.append(charge)
        return charge

    def charges(self) -> list[Charge]:
        with self._lock:
            return list(self._charges)

    def total_micros(self) -> int:
        with self._lock:
            return sum(charge.micros for charge in self._charges)

    def clear(self) -> None:
        with self._lock:
            self._charges.clear()


# Built-in tools billed per call; the fake calls each one the request offers this many times
# (fewer when the request's max_tool_calls says so), as a model that searches twice would.
FEE_TOOLS = ("web_search", "web_search_preview", "file_search", "code_interpreter")
DEFAULT_CALLS_PER_TOOL = 2


def served_tier(prices: PriceTable, model: str, requested: object, auto_tier: str) -> str:
    """The tier OpenAI serves a call at: the one asked for when the model is offered at it, the
    project's tier for auto (``auto_tier``), else default."""
    tier = requested if isinstance(requested, str) and requested != "auto" else auto_tier
    if tier == "fast":
        tier = "priority"
    try:
        offered = prices.price(model).tier_names()
    except LookupError:
        return "default"
    return tier if tier in offered else "default"


def tool_calls_made(body: dict[str, object], per_tool: int = DEFAULT_CALLS_PER_TOOL) -> list[str]:
    """The fee-charging built-in tools a Responses request's answer calls, one entry per call,
    at most ``max_tool_calls`` in all."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    budget = body.get("max_tool_calls")
    left = budget if isinstance(budget, int) and not isinstance(budget, bool) else 1 << 30
    calls: list[str] = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in FEE_TOOLS:
            continue
        take = min(per_tool, left)
        calls.extend([str(kind)] * take)
        left -= take
    return calls


# What one built-in tool call returns to the model (search results, a file search's chunks, a
# program's output), in tokens.
TOOL_RESULT_TOKENS = 1000


def with_tool_turns(prompt_tokens: int, calls: int, result_tokens: int = TOOL_RESULT_TOKENS) -> int:
    """The input a response bills when the model called ``calls`` built-in tools: OpenAI feeds each
    result back and the turn that reads it bills the whole context again (turn k: the prompt and
    the k results so far)."""
    return sum(prompt_tokens + turn * result_tokens for turn in range(calls + 1))


def tool_usage(calls: list[str]) -> tuple[tuple[str, int], ...]:
    """(tool, billed units) for the calls made: code_interpreter bills once per container, and
    the fake runs one container per response."""
    counts: dict[str, int] = {}
    for tool in calls:
        counts[tool] = 1 if tool == "code_interpreter" else counts.get(tool, 0) + 1
    return tuple(sorted(counts.items()))


def generation_usage(prices: PriceTable, gen: Generation, body: dict[str, object], calls: list[str]) -> Usage:
    """What a chat/responses/completions generation bills (a chat search model: one search too)."""
    tools = tool_usage(calls)
    try:
        searches = prices.price(str(body["model"])).search_per_call if "messages" in body else ()
    except LookupError:
        searches = ()
    if searches:
        options = body.get("web_search_options")
        size = options.get("search_context_size", "medium") if isinstance(options, dict) else "medium"
        tools = (*tools, (f"chat_search:{size}", 1))
    return Usage(
        gen.prompt_tokens,
        gen.cached_tokens,
        gen.completion_tokens,
        cache_write_tokens=gen.cache_write_tokens,
        service_tier=gen.service_tier,
        tool_calls=tools,
    )
