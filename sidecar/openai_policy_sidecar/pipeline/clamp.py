"""Stage clamp: cap the caller's max output tokens at ``requests.maxOutputTokens``; set it when absent.

The clamp bounds both cost and the budget reservation, which is taken for the worst case.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from .. import refusals
from ..context import RequestContext
from ..pricing import CHAT_SEARCH, PriceTable, UnknownModelPrice
from ..reported_usage import Usage

# The field each endpoint reads; chat accepts both, max_completion_tokens being the current one.
_FIELDS = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
    "completions": ("max_tokens",),
}


def clamp_output(endpoint: str, body: dict[str, Any], limit: int) -> int:
    """Rewrite ``body`` in place; return the per-choice output cap the upstream will honour (0: none)."""
    fields = _FIELDS.get(endpoint)
    if not fields:
        return 0
    present = [name for name in fields if body.get(name) is not None]
    if not present:
        body[fields[0]] = limit
        return limit
    cap = 0
    for name in present:
        body[name] = min(int(body[name]), limit)
        cap = max(cap, body[name])
    return cap


def choices(endpoint: str, body: dict[str, Any]) -> int:
    """How many completions one request produces (``n``, or ``best_of`` for legacy completions)."""
    if endpoint not in ("chat.completions", "completions"):
        return 1
    n = body.get("n") or 1
    if endpoint == "completions":
        n = max(n, body.get("best_of") or 1)
    return int(n)


def clamp(ctx: RequestContext, endpoint: str, body: dict[str, Any], limit: int) -> int:
    """Clamp ``body`` in place; return the output tokens the worst case covers (every choice)."""
    max_out = clamp_output(endpoint, body, limit)
    ctx.request.max_output_tokens = max_out
    return max_out * choices(endpoint, body)


# Built-in tools of the Responses API that bill nothing beyond tokens.
FREE_TOOLS = frozenset(
    {
        "function",
        "custom",
        "mcp",
        "computer_use_preview",
        "computer_use",
        "local_shell",
        "shell",
        "apply_patch",
    }
)
# Tools OpenAI runs itself without a fee: their results go back to the model like the fee tools'.
SERVER_RUN_FREE_TOOLS = frozenset({"mcp"})
_TOOL_VERSION = re.compile(r"_\d{4}_\d{2}_\d{2}$")  # web_search_preview_2025_03_11


def tool_type(tool: object) -> str:
    """A tool's type without its version suffix ("" when it has none)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    return _TOOL_VERSION.sub("", kind) if isinstance(kind, str) else ""


def clamp_tools(
    ctx: RequestContext, endpoint: str, body: dict[str, Any], cap: int, prices: PriceTable
) -> Usage | None:
    """Cap the built-in tool calls a Responses request may make and return what the worst case
    adds for them: ``max_tool_calls`` calls, each at the dearest fee among the tools offered.

    ``max_tool_calls`` bounds every built-in tool call of the response, so the fees are bounded
    and reserved before the call. A tool with a fee the table does not know (image_generation,
    a type OpenAI adds tomorrow) is refused: its spend could not be metered."""
    if endpoint == "chat.completions":
        return chat_search(ctx, body, prices)
    tools = body.get("tools")
    if endpoint != "responses" or not isinstance(tools, list):
        return None
    fees: dict[str, Decimal] = {}
    server_run = False
    for tool in tools:
        kind = tool_type(tool)
        server_run = server_run or kind in SERVER_RUN_FREE_TOOLS
        if kind in FREE_TOOLS:
            continue
        fee = prices.tool_fee(kind)
        if fee is None:
            raise refusals.invalid_request(
                f"The tool {kind or '(no type)'!r} is billed in a way this policy cannot meter; only "
                f"{', '.join(sorted(FREE_TOOLS | set(prices.tools())))} are allowed.",
                param="tools",
                code="tool_not_metered",
            )
        fees[kind] = fee
    if not fees and not server_run:
        return None
    if cap == 0:
        raise refusals.invalid_request(
            "Built-in tools OpenAI runs itself (with a fee per call, or MCP) are not allowed by this policy "
            "(spec.requests.maxToolCalls is 0).",
            param="tools",
            code="tool_not_allowed",
        )
    asked = body.get("max_tool_calls")
    calls = min(asked, cap) if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 0 else cap
    body["max_tool_calls"] = calls
    if "web_search_preview" in fees and fees["web_search_preview"] > fees.get("web_search", Decimal(-1)):
        # Both tools answer with web_search_call items: bill each at the dearer when both are offered.
        ctx.budget.web_search_tool = "web_search_preview"
    if not fees:
        return None
    dearest = max(fees, key=lambda kind: fees[kind])
    return Usage(tool_calls=((dearest, calls),)) if calls else None


def server_tool_calls(endpoint: str, body: dict[str, Any]) -> int:
    """How many built-in tool calls OpenAI may run itself for this request (after
    :func:`clamp_tools` capped ``max_tool_calls``): each feeds its result back to the model."""
    tools = body.get("tools")
    if endpoint != "responses" or not isinstance(tools, list):
        return 0
    if not any(tool_type(t) not in FREE_TOOLS or tool_type(t) in SERVER_RUN_FREE_TOOLS for t in tools):
        return 0
    calls = body.get("max_tool_calls")
    return calls if isinstance(calls, int) and not isinstance(calls, bool) and calls > 0 else 0


def chat_search(ctx: RequestContext, body: dict[str, Any], prices: PriceTable) -> Usage | None:
    """A chat completions search model searches once per request and bills it per call (by
    ``web_search_options.search_context_size``), beside tokens and unreported in usage: reserved
    here and settled as a fixed fee (``ctx.budget.fixed_fees``)."""
    model = body.get("model")
    try:
        price = prices.price(model) if isinstance(model, str) else None
    except UnknownModelPrice:
        return None
    if price is None or not price.search_per_call:
        return None
    options = body.get("web_search_options")
    size = options.get("search_context_size") if isinstance(options, dict) else None
    fees = ((f"{CHAT_SEARCH}{size if isinstance(size, str) else 'medium'}", 1),)
    ctx.budget.fixed_fees = fees
    return Usage(tool_calls=fees)
