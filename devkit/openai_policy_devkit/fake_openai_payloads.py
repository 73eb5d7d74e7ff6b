"""JSON bodies and stream events shaped exactly like the OpenAI API's (spec: openapi.yaml components).

Pure functions, no I/O: the server in fake_openai.py only decides which of these to send and when.
tests/devkit/test_fake_openai_schema.py checks every shape here against OpenAI's published schema.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SYSTEM_FINGERPRINT = "fp_fake0penai"
MODERATION_CATEGORIES = (
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Which moderation categories a trigger word flags (the fake's stand-in for the classifier).
FLAGGED_CATEGORIES = ("violence",)
EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
DEFAULT_EMBEDDING_DIMENSIONS = 1536
MODELS: tuple[tuple[str, int, str], ...] = (
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-2024-08-06", 1722814719, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o-mini-2024-07-18", 1721172717, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("gpt-5", 1754425777, "system"),
    ("gpt-5-mini", 1754425928, "system"),
    ("o3-mini", 1737146383, "system"),
    ("gpt-4-turbo", 1712361441, "system"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("omni-moderation-latest", 1731689265, "system"),
)


@dataclass(frozen=True)
class Generation:
    """What the fake 'generated' for one request, and the usage it will bill for it."""

    model: str
    pieces: list[str]  # the reply, one token-sized piece each (what a stream sends as deltas)
    completion_tokens: int
    truncated: bool  # cut by the request's max tokens: finish_reason "length" / status "incomplete"
    prompt_tokens: int
    cached_tokens: int
    choices: int = 1  # the request's `n`: identical choices, each billed (completion_tokens covers all)
    service_tier: str = "default"  # the tier the call was served (and billed) at
    cache_write_tokens: int = 0  # input tokens written to the prompt cache (part of prompt_tokens)
    tool_items: tuple[dict[str, Any], ...] = ()  # Responses built-in tool calls, before the message

    @property
    def text(self) -> str:
        return "".join(self.pieces)


# --- errors -------------------------------------------------------------------------------------


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_error_body(status: int) -> dict[str, Any]:
    """The body OpenAI sends with a given status (used by the `status` fault unless a body is given)."""
    if status == 429:
        return error_body(
            "Rate limit reached for requests. Please try again later.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    if status == 503:
        return error_body("The engine is currently overloaded, please try again later.", "server_error")
    if status >= 500:
        return error_body(
            "The server had an error while processing your request. Sorry about that!", "server_error"
        )
    if status == 401:
        return error_body("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")
    if status == 404:
        return error_body("The requested resource was not found.", "invalid_request_error", None, "not_found")
    return error_body(f"Request failed with status {status}.", "invalid_request_error")


# --- usage --------------------------------------------------------------------------------------


def chat_usage(gen: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": gen.cached_tokens,
            "audio_tokens": 0,
            "cache_write_tokens": gen.cache_write_tokens,
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": gen.cached_tokens,
            "cache_write_tokens": gen.cache_write_tokens,
        },
        "output_tokens": gen.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


# --- chat completions ---------------------------------------------------------------------------


def chat_completion(ident: str, created: int, gen: Generation) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": gen.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": gen.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if gen.truncated else "stop",
            }
            for index in range(gen.choices)
        ],
        "usage": chat_usage(gen),
        "service_tier": gen.service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_chunks(
    ident: str, created: int, gen: Generation, include_usage: bool, obfuscate: bool
) -> Iterator[dict[str, Any]]:
    """The chunks of a streamed chat completion, in OpenAI's order (the server adds `[DONE]`)."""

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": gen.model,
            "service_tier": gen.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None
        if obfuscate:
            body["obfuscation"] = "x" * (1 + len(ident) % 7)
        return body

    def choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    # With n > 1 the choices' chunks interleave, each chunk carrying one choice, as OpenAI sends them.
    indexes = range(gen.choices)
    for index in indexes:
        yield chunk(choice(index, {"role": "assistant", "content": "", "refusal": None}))
    for piece in gen.pieces:
        for index in indexes:
            yield chunk(choice(index, {"content": piece}))
    for index in indexes:
        yield chunk(choice(index, {}, "length" if gen.truncated else "stop"))
    if include_usage:
        last = chunk([])
        last["usage"] = chat_usage(gen)
        yield last


# --- legacy completions -------------------------------------------------------------------------


def text_completion(ident: str, created: int, gen: Generation) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": gen.model,
        "choices": [
            {
                "text": gen.text,
                "index": 0,
                "logprobs": None,
                "finish_reason": "length" if gen.truncated else "stop",
            }
        ],
        "usage": chat_usage(gen),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


# --- responses ----------------------------------------------------------------------------------


def output_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [output_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(
    ident: str,
    created_at: int,
    request: dict[str, Any],
    gen: Generation,
    status: str,
    output: list[dict[str, Any]],
    completed_at: int | None,
) -> dict[str, Any]:
    """A Response; `status` in_progress (no usage yet), completed or incomplete (cut by max_output_tokens)."""
    finished = status != "in_progress"
    body: dict[str, Any] = {
        "id": ident,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": gen.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": gen.service_tier,
        "temperature": request.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": request.get("metadata") or {},
        "safety_identifier": request.get("safety_identifier"),
        "prompt_cache_key": request.get("prompt_cache_key"),
    }
    if finished:  # the schema has no null usage: it is absent until the response finishes
        body["usage"] = responses_usage(gen)
    if isinstance(request.get("user"), str):
        body["user"] = request["user"]
    return body


def response_final(
    ident: str, item_id: str, created_at: int, completed_at: int, request: dict[str, Any], gen: Generation
) -> dict[str, Any]:
    status = "incomplete" if gen.truncated else "completed"
    message = output_message(item_id, gen.text, "incomplete" if gen.truncated else "completed")
    output = [*gen.tool_items, message]
    return response_object(ident, created_at, request, gen, status, output, completed_at)


def response_events(
    ident: str, item_id: str, created_at: int, completed_at: int, request: dict[str, Any], gen: Generation
) -> Iterator[dict[str, Any]]:
    """The Responses API stream for a one-message text reply, with sequence numbers, in OpenAI's order."""
    counter = iter(range(1 << 30))
    started = response_object(ident, created_at, request, gen, "in_progress", [], None)
    index = len(gen.tool_items)  # built-in tool calls come first; the final response lists them
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    yield {"type": "response.created", "sequence_number": next(counter), "response": started}
    yield {"type": "response.in_progress", "sequence_number": next(counter), "response": started}
    for tool_index, item in enumerate(gen.tool_items):  # the built-in tool calls, before the message
        running = {**item, "status": "in_progress"}
        for kind, state in (("added", running), ("done", item)):
            yield {
                "type": f"response.output_item.{kind}",
                "sequence_number": next(counter),
                "output_index": tool_index,
                "item": state,
            }
    yield {
        "type": "response.output_item.added",
        "sequence_number": next(counter),
        "output_index": index,
        "item": output_message(item_id, "", "in_progress"),
    }
    yield {
        "type": "response.content_part.added",
        "sequence_number": next(counter),
        **where,
        "part": output_text_part(""),
    }
    for piece in gen.pieces:
        yield {
            "type": "response.output_text.delta",
            "sequence_number": next(counter),
            **where,
            "delta": piece,
            "logprobs": [],
        }
    yield {
        "type": "response.output_text.done",
        "sequence_number": next(counter),
        **where,
        "text": gen.text,
        "logprobs": [],
    }
    yield {
        "type": "response.content_part.done",
        "sequence_number": next(counter),
        **where,
        "part": output_text_part(gen.text),
    }
    final = response_final(ident, item_id, created_at, completed_at, request, gen)
    yield {
        "type": "response.output_item.done",
        "sequence_number": next(counter),
        "output_index": index,
        "item": final["output"][index],
    }
    kind = "response.incomplete" if gen.truncated else "response.completed"
    yield {"type": kind, "sequence_number": next(counter), "response": final}


def tool_call_item(tool: str, number: int, container_id: str) -> dict[str, Any]:
    """One completed built-in tool call output item (web_search, file_search, code_interpreter)."""
    ident = f"{number:04x}{hashlib.blake2b(container_id.encode(), digest_size=8).hexdigest()}"
    if tool in ("web_search", "web_search_preview"):
        return {
            "id": f"ws_{ident}",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "fake search"},
        }
    if tool == "file_search":
        return {
            "id": f"fs_{ident}",
            "type": "file_search_call",
            "status": "completed",
            "queries": ["fake search"],
            "results": None,
        }
    return {
        "id": f"ci_{ident}",
        "type": "code_interpreter_call",
        "status": "completed",
        "container_id": container_id,
        "code": "print(1)",
        "outputs": None,
    }


# --- embeddings ---------------------------------------------------------------------------------


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's hash: same text, same vector; different text, different."""
    rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    # Round-trip through float32 as the API does, so float and base64 answers agree exactly.
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in raw))))


def embeddings(
    model: str, inputs: list[Any], encoding_format: str, dimensions: int | None, prompt_tokens: int
) -> dict[str, Any]:
    size = dimensions or EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item if isinstance(item, str) else repr(item), size)
        encoded: Any = vector
        if encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# --- moderations --------------------------------------------------------------------------------


def moderation_texts(value: Any) -> list[str]:
    """One text per moderation result: a string, a list of strings, or multimodal parts (one result)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    if isinstance(value, list):
        return [" ".join(part.get("text", "") for part in value if isinstance(part, dict))]
    return [""]


def moderation_result(text: str, triggers: tuple[str, ...]) -> dict[str, Any]:
    lowered = text.lower()
    flagged = any(word.lower() in lowered for word in triggers)
    categories = {name: flagged and name in FLAGGED_CATEGORIES for name in MODERATION_CATEGORIES}
    scores = {name: (0.93 if categories[name] else 1e-06) for name in MODERATION_CATEGORIES}
    applied = {name: ["text"] for name in MODERATION_CATEGORIES}
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


def moderation(ident: str, model: str, texts: list[str], triggers: tuple[str, ...]) -> dict[str, Any]:
    return {"id": ident, "model": model, "results": [moderation_result(text, triggers) for text in texts]}


# --- models -------------------------------------------------------------------------------------


def model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def models_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(*entry) for entry in MODELS]}


def find_model(model_id: str) -> dict[str, Any] | None:
    for entry in MODELS:
        if entry[0] == model_id:
            return model_object(*entry)
    return None
