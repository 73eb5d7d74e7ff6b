"""Stage server_context: input the request pulls in from OpenAI's side, which its body does not show.

``previous_response_id``, ``conversation``, item references, files (``input_file`` / chat ``file``
parts, ``input_image`` by ``file_id``), stored ``prompt`` ids and the ``file_search`` tool are all
billed as input tokens the sidecar cannot count. Unless ``spec.endpoints.softBudgetInputs`` lists
the kind, such a request is reserved at the model's context window of input (no call can bill
more input than that). A response or conversation that came back through a sidecar of the policy
is exact instead: its remembered size (its input + output, ``openai_policy_store.response_sizes``)
plus what the request shows.

A stored prompt without ``model`` is sent with ``spec.endpoints.storedPromptModel``: the sidecar
cannot see the prompt's own model, so it could neither price the call nor apply models.allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from openai_policy_api import EndpointsSpec
from openai_policy_store import Store
from openai_policy_store.protocol import Ref
from openai_policy_store.response_sizes import ContextSizes

from .. import refusals
from ..context import RequestContext, ServerInputFacts
from ..pricing import PriceTable, UnknownModelPrice
from . import clamp

log = logging.getLogger("openai_policy_sidecar.pipeline.server_context")

# Items the sidecar did not count make a conversation's size unknown; one created empty is 0.
_ADD_ITEMS = "POST /v1/conversations/{id}/items"
_CREATE_CONVERSATION = "POST /v1/conversations"


@dataclass(frozen=True)
class ServerInput:
    kind: str  # a name of spec.endpoints.softBudgetInputs
    ref: str | None = None  # the response or conversation id a size may be remembered for


def sizes_for(store: Store, ref: Ref, endpoints: EndpointsSpec) -> ContextSizes:
    """The policy's remembered context sizes, kept for ``endpoints.contextMemorySeconds``."""
    return ContextSizes(store, ref, ttl_seconds=endpoints.context_memory_seconds)


def server_inputs(endpoint: str, body: dict[str, Any]) -> list[ServerInput]:
    """Every piece of server-side content the request names, in the order found."""
    found: list[ServerInput] = []
    if endpoint == "responses":
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous:
            found.append(ServerInput("storedResponses", previous))
        conversation = conversation_id(body)
        if conversation is not None:
            found.append(ServerInput("conversations", conversation))
        elif body.get("conversation") is not None:
            found.append(ServerInput("conversations"))  # a shape we cannot read: unknown size
        if isinstance(body.get("prompt"), dict):
            found.append(ServerInput("prompts"))
        tools = body.get("tools")
        if isinstance(tools, list) and any(
            isinstance(t, dict) and t.get("type") == "file_search" for t in tools
        ):
            found.append(ServerInput("vectorStores"))
        found.extend(_parts(body.get("input")))
    elif endpoint == "chat.completions":
        found.extend(_parts(body.get("messages")))
    return found


def conversation_id(body: dict[str, Any]) -> str | None:
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return conversation if isinstance(conversation, str) and conversation else None


def _parts(value: object) -> Iterator[ServerInput]:
    """Files and item references anywhere in the input (parse bounded the nesting)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            if kind in ("input_file", "file") or (kind == "input_image" and item.get("file_id")):
                yield ServerInput("files")
            elif kind == "item_reference":
                yield ServerInput("storedResponses")
            stack.extend(v for v in item.values() if isinstance(v, list | dict))


def note_conversation(ctx: RequestContext, route_label: str | None, body: dict[str, Any] | None) -> None:
    """A conversation created through the sidecar without items carries nothing yet."""
    if route_label == _CREATE_CONVERSATION:
        ctx.server_input.empty_conversation = not (body or {}).get("items")


def wants_body(ctx: RequestContext) -> bool:
    """A pass-through reply the sidecar must read whole: a conversation created empty, whose id it
    remembers at size 0 (a small JSON object; everything else pass-through streams as it comes)."""
    return ctx.request.route == _CREATE_CONVERSATION and ctx.server_input.empty_conversation


def prompt_model(endpoints: EndpointsSpec, body: dict[str, Any]) -> str:
    """The model a stored prompt without ``model`` is sent with; refused when the policy names none."""
    if endpoints.stored_prompt_model is None:
        raise refusals.invalid_request(
            "Missing required parameter: 'model'. This request names a stored prompt without a model; "
            "the sidecar cannot see the prompt's model, so it can neither price the call nor apply "
            "models.allow. Send `model`, or set spec.endpoints.storedPromptModel.",
            param="model",
            code="missing_required_parameter",
        )
    body["model"] = endpoints.stored_prompt_model
    return endpoints.stored_prompt_model


def tool_results(
    ctx: RequestContext,
    endpoints: EndpointsSpec,
    prices: PriceTable,
    endpoint: str,
    body: dict[str, Any],
    model: str,
) -> int:
    """Each built-in tool call OpenAI runs (web and file search, code interpreter, MCP) returns its
    result to the model, and the turn that reads it bills the whole context again (search results
    and tool outputs arrive as input tokens): up to ``max_tool_calls`` turns after the first, each
    at most a context window. Held so, unless the policy lists toolResults as soft."""
    calls = clamp.server_tool_calls(endpoint, body)
    if not calls:
        return 0
    facts = ctx.server_input
    if endpoints.soft_for("toolResults"):
        facts.soft_kinds = sorted({*facts.soft_kinds, "toolResults"})
        return 0
    try:
        window = prices.context_window(model)
    except LookupError:
        return 0  # unpriced: model_choice.require_price refuses it (or dryRun forwards)
    facts.kinds = sorted({*facts.kinds, "toolResults"})
    facts.reserved_tokens += calls * window
    return calls * window


async def reserve_input(
    ctx: RequestContext,
    endpoints: EndpointsSpec,
    prices: PriceTable,
    sizes: ContextSizes,
    endpoint: str,
    body: dict[str, Any],
    model: str,
    visible_tokens: int,
) -> int:
    """The input tokens to reserve: what the request shows plus what it pulls in from OpenAI."""
    facts = ctx.server_input
    facts.conversation = conversation_id(body) if endpoint == "responses" else None
    facts.stored = body.get("store") is not False
    found = server_inputs(endpoint, body)
    reserved = [i for i in found if not endpoints.soft_for(i.kind)]
    facts.kinds = sorted({i.kind for i in reserved})
    # A settle above the hold is then expected, not a bug of the table: settle can tell them apart.
    facts.soft_kinds = sorted({i.kind for i in found} - set(facts.kinds))
    if not reserved:
        return visible_tokens
    try:
        window = prices.context_window(model)
    except UnknownModelPrice:
        return visible_tokens  # unpriced: model_choice.require_price refuses it (or dryRun forwards)
    except LookupError as unknown:
        ctx.enforce(
            refusals.model_not_allowed(
                model,
                f"This request pulls in server-side input ({', '.join(facts.kinds)}) and {unknown}, or list "
                "the input in spec.endpoints.softBudgetInputs.",
            )
        )
        return visible_tokens
    remembered = 0
    for item in reserved:
        size = await _size(facts, sizes, item)
        if size is None:
            facts.reserved_tokens = max(0, window - visible_tokens)
            return max(visible_tokens, window)
        remembered += size
    facts.exact = True
    total = min(visible_tokens + remembered, max(window, visible_tokens))
    facts.reserved_tokens = total - visible_tokens
    return total


async def _size(facts: ServerInputFacts, sizes: ContextSizes, item: ServerInput) -> int | None:
    """A remembered size; a conversation's is taken (see ``ContextSizes.take``) until this turn
    remembers the new one, or puts it back when the turn never went upstream."""
    if item.ref is None:
        return None
    if item.kind != "conversations":
        return await sizes.get(item.ref)
    facts.taken = await sizes.take(item.ref)
    return facts.taken


def _response_id(response: web.StreamResponse) -> str | None:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes) or not body.startswith(b"{"):
        return None
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    ident = decoded.get("id") if isinstance(decoded, dict) else None
    return ident if isinstance(ident, str) else None


async def remember(
    ctx: RequestContext, sizes: ContextSizes, route_label: str | None, response: web.StreamResponse
) -> None:
    """After the reply: remember the context a stored response (and its conversation) now carries.

    A plain reply's id is read from its body, a stream's from its terminal event.
    """
    ok = 200 <= response.status < 300
    if route_label == _CREATE_CONVERSATION:
        created = _response_id(response) if ok and ctx.server_input.empty_conversation else None
        if created is not None:
            await sizes.remember(created, 0)
        return
    if route_label == _ADD_ITEMS:
        if ctx.upstream.attempts > 0:  # sent: even unanswered, the items may have been added
            await sizes.forget(ctx.request.path.split("/")[3])
        return
    facts = ctx.server_input
    if ctx.upstream.attempts == 0:
        if facts.conversation is not None and facts.taken is not None:
            await sizes.remember(facts.conversation, facts.taken)  # refused before it was sent
        return
    if ctx.request.endpoint != "responses":
        return
    usage = ctx.upstream.usage if ok else None
    if usage is None:
        # Sent, but no usage: the conversation may have grown by what we cannot count.
        if facts.conversation is not None:
            await sizes.forget(facts.conversation)
        return
    carried = usage.input_tokens + usage.output_tokens
    if facts.conversation is not None:
        await sizes.remember(facts.conversation, carried)
    ident = (_response_id(response) or ctx.upstream.response_id) if facts.stored else None
    if ident is not None:
        await sizes.remember(ident, carried)
