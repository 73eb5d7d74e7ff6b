"""Deterministic token accounting for the fake OpenAI upstream.

prompt tokens: tiktoken counts of the request's text, with OpenAI's documented chat overhead
(3 tokens per message, 1 more per `name`, 3 to prime the reply), applied to chat `messages` and
to Responses `input` items + `instructions`. Completions and embeddings count their inputs only.
completion tokens: the reply text's tokens, cut to the request's max tokens.
Encodings: o200k_base for the gpt-4o / 4.1 / 4.5 / 5 / o-series families and unknown models,
cl100k_base for gpt-4, gpt-3.5 and the embedding / legacy completion models.
"""

from __future__ import annotations

import codecs
import functools
from typing import Any

import tiktoken

_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "text-embedding", "davinci", "babbage")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o", "gpt-5", "o1", "o3", "o4", "omni", "codex")
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def encoding_name(model: str) -> str:
    if model.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if model.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@functools.lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def encoding_for(model: str) -> tiktoken.Encoding:
    return _encoding(encoding_name(model))


@functools.lru_cache(maxsize=1)
def warm_up() -> None:
    """Check the offline encodings and load them now, so the first request does not pay for it.

    A missing TIKTOKEN_CACHE_DIR or a wrong file is a clear error here, not a download that hangs.
    """
    from openai_policy_sidecar.tokenizer_files import verify

    verify()
    for name in ("o200k_base", "cl100k_base"):
        _encoding(name).encode("warm up")


def count_text(text: str, model: str) -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _messages_tokens(messages: list[Any], model: str) -> int:
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += count_text(_content_text(value), model)
            elif isinstance(value, str):
                total += count_text(value, model)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


def prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """Input tokens the fake bills for a request to `endpoint` (chat, responses, completions, embeddings)."""
    model = str(body.get("model", ""))
    if endpoint == "chat":
        return _messages_tokens(body.get("messages") or [], model) + REPLY_PRIMING_TOKENS
    if endpoint == "responses":
        items = body.get("input")
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else list(items or [])
        if isinstance(body.get("instructions"), str):
            messages.insert(0, {"role": "developer", "content": body["instructions"]})
        return _messages_tokens(messages, model) + REPLY_PRIMING_TOKENS
    return sum(
        _input_tokens(item, model)
        for item in _as_list(body.get("prompt" if endpoint == "completions" else "input"))
    )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]  # one prompt given as token ids
    return value if isinstance(value, list) else [value]


def _input_tokens(item: Any, model: str) -> int:
    if isinstance(item, str):
        return count_text(item, model)
    if isinstance(item, list):
        return len(item)  # token ids
    return 0


def reply_tokens(text: str, model: str, limit: int | None) -> tuple[list[str], int, bool]:
    """The reply split into token-sized pieces cut to `limit`, its token count, and whether it was cut.

    Pieces are decoded incrementally so that a multi-byte character split across tokens comes out
    whole in a later piece (pieces always concatenate to valid text).
    """
    encoding = encoding_for(model)
    tokens = encoding.encode(text, disallowed_special=())
    truncated = limit is not None and len(tokens) > limit
    if truncated:
        tokens = tokens[: max(limit or 0, 0)]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [decoder.decode(encoding.decode_single_token_bytes(token)) for token in tokens]
    pieces.append(decoder.decode(b"", final=True))
    return [piece for piece in pieces if piece], len(tokens), truncated
