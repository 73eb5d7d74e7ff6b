"""Count a request's input tokens with tiktoken, offline.

Counts follow OpenAI's cookbook (``num_tokens_from_messages``): 3 tokens of framing per chat
message, +1 for a ``name``, +3 to prime the reply; tool definitions are counted the cookbook's
way for functions. Counting is an estimate of what OpenAI bills (the real figure arrives in the
response's ``usage`` and settles the budget), so it errs towards the cookbook, never towards
zero. Parts that cannot be counted from the text (images, audio, files) get fixed estimates.

Encodings load once per process from ``TIKTOKEN_CACHE_DIR`` after the file is verified: a missing
file raises :class:`~openai_policy_sidecar.tokenizer_files.TokenizerFilesError` instead of letting
tiktoken download it.

Memory: an encoding is a Rust ``CoreBPE`` (what encodes) plus tiktoken's Python-side copy of the
ranks (``bytes -> int`` for every token, ~25 MiB for o200k_base) that tiktoken keeps only to pickle
unregistered encodings. Ours are registered (pickled by name), so the Python copy is dropped once
the Rust core is built. Only the encodings a policy can need are loaded (:func:`prepare`):
verifying a file (hashing it) is cheap and done for every encoding at start-up; loading one
(~30-50 MiB) is not.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken
import tiktoken.registry

from openai_policy_api import ModelsSpec

from . import tokenizer_files
from .runtime import trim_malloc

ENDPOINTS = (
    "chat.completions",
    "responses",
    "completions",
    "embeddings",
    "images.generations",
    "images.edits",
    "images.variations",
    "audio.speech",
    "audio.transcriptions",
    "audio.translations",
)
# The text field an image or audio request carries (its other inputs are files: media.py).
_MEDIA_TEXT = {
    "images.generations": "prompt",
    "images.edits": "prompt",
    "images.variations": "",
    "audio.speech": "input",
    "audio.transcriptions": "prompt",
    "audio.translations": "prompt",
}

O200K = "o200k_base"
CL100K = "cl100k_base"

# Model-id prefixes that use cl100k_base; everything else (gpt-4o, 4.1, 4.5, 5, o-series, and
# models not known yet, which are new and so most likely o200k) uses o200k_base.
_CL100K_PREFIXES = (
    "gpt-4-",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-",
    "text-moderation",
    "davinci-002",
    "babbage-002",
)
_CL100K_EXACT = frozenset({"gpt-4"})

# Cookbook constants.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Tool-definition constants (cookbook ``num_tokens_for_tools``): the framing of one function costs
# 7 tokens with o200k_base models and 10 with cl100k_base ones.
_FUNC_INIT = {O200K: 7, CL100K: 10}
_PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 3, 3, -3, 3, 12

# Fixed estimates for parts whose tokens depend on data we do not decode.
IMAGE_LOW_DETAIL_TOKENS = 85
IMAGE_TOKENS = 765  # a 1024x1024 image at high detail: 85 + 4 tiles x 170
FILE_TOKENS = 0  # file contents (PDF...) are not parsed; the settle corrects the spend
AUDIO_TOKENS = 0

_encodings: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


class TokenCountError(ValueError):
    """The body has a shape that cannot be an OpenAI request (``param`` names the field)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def encoding_name_for_model(model: str) -> str:
    """``o200k_base`` for gpt-4o / 4.1 / 4.5 / 5 / o-series (and unknown models), ``cl100k_base`` for
    gpt-4, gpt-3.5, embeddings and legacy completions models. Fine-tuned ids use their base model."""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    if name in _CL100K_EXACT or name.startswith(_CL100K_PREFIXES):
        return CL100K
    return O200K


def get_encoding(name: str) -> tiktoken.Encoding:
    """Load an encoding once, after checking that its file is present offline with the right hash."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    with _lock:
        encoding = _encodings.get(name)
        if encoding is None:
            tokenizer_files.verify(encodings=(name,))
            encoding = tiktoken.get_encoding(name)
            _release_python_ranks(encoding)
            _encodings[name] = encoding
            trim_malloc()  # the file's text and the parsed ranks, freed: back to the OS
    return encoding


def loaded_encodings() -> tuple[str, ...]:
    """Names of the encodings this process has loaded (for tests and diagnostics)."""
    return tuple(_encodings)


def _release_python_ranks(encoding: tiktoken.Encoding) -> None:
    """Drop tiktoken's Python copy of the ranks; encoding and decoding use the Rust core only.

    tiktoken reads ``_mergeable_ranks`` in one place: ``__getstate__``, and only for an encoding
    that is not in its registry (a registered one pickles as its name). So the copy is dropped
    only when the encoding is the registry's own object; otherwise it is left alone.
    """
    if tiktoken.registry.ENCODINGS.get(encoding.name) is encoding and hasattr(encoding, "_mergeable_ranks"):
        del encoding._mergeable_ranks


def encodings_for_models(models: ModelsSpec | None, *, dry_run: bool = False) -> tuple[str, ...]:
    """The encodings a policy's ``spec.models`` can need: any model the proxy may send and count.

    The proxy counts the model it sends: an allowed model, the fallback, or what either is pinned
    to. ``allow`` holds wildcards, so a pattern needs cl100k_base when some cl100k model id could
    match it: when its literal head (up to the first ``*``, ``?`` or ``[``) and a cl100k prefix
    agree on their common length. Conservative by construction (``*`` needs both); in dry-run
    mode every model is forwarded and counted, so both are needed. None: no policy, both.
    """
    if models is None or dry_run:
        return (O200K, CL100K)
    needed: set[str] = set()
    pin: Mapping[str, str] = getattr(models, "pin", None) or {}
    fallback = getattr(models, "fallback", None)
    for model in (*pin.values(), *([fallback] if fallback else [])):
        needed.add(encoding_name_for_model(model))
    for pattern in getattr(models, "allow", None) or []:
        needed.update(_pattern_encodings(pattern))
        if needed == {O200K, CL100K}:
            break
    return tuple(name for name in (O200K, CL100K) if name in needed)


def _pattern_encodings(pattern: str) -> set[str]:
    text = pattern.strip().lower()
    cut = min((i for i in (text.find(c) for c in "*?[") if i >= 0), default=-1)
    if cut < 0:  # an exact id
        return {encoding_name_for_model(text)}
    head = text[:cut]
    if head.startswith("ft:"):  # fine-tuned ids count with their base model's encoding
        head = head[3:]
        if ":" in head:  # the base model id is complete
            return {encoding_name_for_model(head.split(":", 1)[0])}
    elif "ft:".startswith(head):  # "", "f", "ft": may match fine-tuned ids of any base
        return {O200K, CL100K}
    if head.startswith(_CL100K_PREFIXES):  # every id it can match is cl100k
        return {CL100K}
    cl100k = any(p.startswith(head) for p in _CL100K_PREFIXES) or any(
        exact.startswith(head) for exact in _CL100K_EXACT
    )
    # Anything that matches but is not cl100k is o200k (the default for unknown ids).
    return {O200K, CL100K} if cl100k else {O200K}


def verify_files(names: Iterable[str] = (O200K, CL100K)) -> None:
    """Check that every encoding file is present offline with tiktoken's hash (hashing, no load)."""
    tokenizer_files.verify(encodings=tuple(names))


def prepare(models: ModelsSpec | None = None, *, dry_run: bool = False) -> tuple[str, ...]:
    """Start-up and policy reload: verify every encoding file, load the ones ``models`` can need.

    Returns the names loaded. A model whose encoding was not loaded here (a later policy that
    allows more) still works: its encoding loads on first use, from a file verified again then.
    """
    verify_files()
    names = encodings_for_models(models, dry_run=dry_run)
    for name in names:
        get_encoding(name)
    return names


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_text_tokens(text: str, model: str) -> int:
    """Tokens of plain text; special-token text such as ``<|endoftext|>`` counts as ordinary text."""
    if not text:
        return 0
    return len(encoding_for_model(model).encode_ordinary(text))


def count_input_tokens(endpoint: str, body: Mapping[str, Any], model: str) -> int:
    """Input tokens of a request body for ``endpoint`` (see :data:`ENDPOINTS`)."""
    if not isinstance(body, Mapping):
        raise TokenCountError("body", "must be a JSON object")
    counter = _Counter(encoding_for_model(model))
    if endpoint == "chat.completions":
        return counter.chat(body)
    if endpoint == "responses":
        return counter.responses(body)
    if endpoint == "completions":
        return counter.prompt(body.get("prompt"), "prompt") + counter.text(body.get("suffix"))
    if endpoint == "embeddings":
        return counter.prompt(body.get("input"), "input")
    if endpoint in _MEDIA_TEXT:
        text = body.get(_MEDIA_TEXT[endpoint]) if _MEDIA_TEXT[endpoint] else None
        return counter.text(text) + counter.text(body.get("instructions"))
    raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}")


class _Counter:
    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding

    def text(self, value: Any) -> int:
        if isinstance(value, str):
            return len(self.encoding.encode_ordinary(value)) if value else 0
        if value is None:
            return 0
        if isinstance(value, int | float | bool):
            return len(self.encoding.encode_ordinary(json.dumps(value)))
        return self.json(value)

    def json(self, value: Any) -> int:
        """Structured values (JSON schemas, unknown items) count as their compact JSON text."""
        if value is None:
            return 0
        return len(
            self.encoding.encode_ordinary(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        )

    # -- chat completions -------------------------------------------------------------------
    def chat(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            raise TokenCountError("messages", "must be an array of messages")
        total = 0
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TokenCountError(f"messages[{index}]", "must be an object")
            total += self.chat_message(message)
        total += REPLY_PRIMING
        total += self.chat_tools(body.get("tools"), body.get("functions"))
        return total

    def chat_message(self, message: Mapping[str, Any]) -> int:
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += self.content(value)
            elif key == "tool_calls":
                total += self.tool_calls(value)
            elif key == "function_call" and isinstance(value, Mapping):
                total += self.text(value.get("name")) + self.text(value.get("arguments"))
            elif key == "audio":
                total += AUDIO_TOKENS
            elif isinstance(value, str):
                total += self.text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
        return total

    def tool_calls(self, calls: Any) -> int:
        if not isinstance(calls, list):
            return self.text(calls)
        total = 0
        for call in calls:
            if isinstance(call, Mapping):
                function = call.get("function") or call.get("custom") or {}
                if isinstance(function, Mapping):
                    total += TOKENS_PER_MESSAGE + self.text(function.get("name"))
                    total += self.text(function.get("arguments", function.get("input")))
            else:
                total += self.text(call)
        return total

    def content(self, content: Any) -> int:
        if isinstance(content, str) or content is None:
            return self.text(content)
        if isinstance(content, list):
            return sum(self.part(part) for part in content)
        return self.text(content)

    def part(self, part: Any) -> int:
        if isinstance(part, str):
            return self.text(part)
        if not isinstance(part, Mapping):
            return self.text(part)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text", "summary_text", "reasoning_text"):
            return self.text(part.get("text"))
        if kind == "refusal":
            return self.text(part.get("refusal"))
        if kind in ("image_url", "input_image"):
            image = part.get("image_url")
            detail = part.get("detail") or (image.get("detail") if isinstance(image, Mapping) else None)
            return IMAGE_LOW_DETAIL_TOKENS if detail == "low" else IMAGE_TOKENS
        if kind in ("input_audio", "audio"):
            return AUDIO_TOKENS
        if kind in ("file", "input_file"):
            nested = part.get("file")
            file = nested if isinstance(nested, Mapping) else part
            return FILE_TOKENS + self.text(file.get("filename"))
        # Unknown part: count its text fields, never its binary payloads.
        return sum(self.text(v) for k, v in part.items() if k != "type" and not _looks_binary(v))

    def chat_tools(self, tools: Any, functions: Any) -> int:
        definitions: list[Mapping[str, Any]] = []
        for tool in tools if isinstance(tools, list) else []:
            if isinstance(tool, Mapping) and tool.get("type", "function") == "function":
                function = tool.get("function", tool)  # chat nests it; responses does not
                if isinstance(function, Mapping):
                    definitions.append(function)
            elif tool is not None:
                definitions.append({"name": "", "description": "", "parameters": tool})
        for function in functions if isinstance(functions, list) else []:
            if isinstance(function, Mapping):
                definitions.append(function)
        return self.function_definitions(definitions)

    def function_definitions(self, functions: list[Mapping[str, Any]]) -> int:
        """The cookbook's ``num_tokens_for_tools``, extended to nested schemas (counted as JSON)."""
        if not functions:
            return 0
        total = 0
        for function in functions:
            total += _FUNC_INIT.get(self.encoding.name, _FUNC_INIT[O200K])
            description = str(function.get("description") or "").removesuffix(".")
            total += self.text(f"{function.get('name') or ''}:{description}")
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if isinstance(properties, Mapping) and properties:
                total += _PROP_INIT
                for key, schema in properties.items():
                    total += _PROP_KEY
                    if not isinstance(schema, Mapping):
                        total += self.text(f"{key}:{schema}")
                        continue
                    enum = schema.get("enum")
                    if isinstance(enum, list):
                        total += _ENUM_INIT
                        for item in enum:
                            total += _ENUM_ITEM + self.text(str(item))
                    description = str(schema.get("description") or "").removesuffix(".")
                    total += self.text(f"{key}:{schema.get('type', '')}:{description}")
                    nested = {
                        k: v for k, v in schema.items() if k in ("properties", "items", "anyOf", "oneOf")
                    }
                    if nested:
                        total += self.json(nested)
            elif parameters is not None and not isinstance(parameters, Mapping):
                total += self.text(parameters)
        return total + _FUNC_END

    # -- responses --------------------------------------------------------------------------
    def responses(self, body: Mapping[str, Any]) -> int:
        total = 0
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            total += TOKENS_PER_MESSAGE + self.text("system") + self.text(instructions)
        elif isinstance(instructions, list):
            total += sum(self.response_item(item) for item in instructions)
        items = body.get("input")
        if isinstance(items, str):
            total += TOKENS_PER_MESSAGE + self.text("user") + self.text(items)
        elif isinstance(items, list):
            for index, item in enumerate(items):
                if not isinstance(item, Mapping | str):
                    raise TokenCountError(f"input[{index}]", "must be an object or a string")
                total += self.response_item(item)
        elif items is not None:
            raise TokenCountError("input", "must be a string or an array of input items")
        prompt = body.get("prompt")
        if isinstance(prompt, Mapping):  # a stored prompt template: we can count only its variables
            total += sum(self.content(v) for v in (prompt.get("variables") or {}).values())
        total += REPLY_PRIMING
        tools = body.get("tools")
        if isinstance(tools, list):
            functions = [t for t in tools if isinstance(t, Mapping) and t.get("type") == "function"]
            others = [t for t in tools if not (isinstance(t, Mapping) and t.get("type") == "function")]
            total += self.function_definitions(functions) + sum(self.json(t) for t in others)
        return total

    def response_item(self, item: Any) -> int:
        if isinstance(item, str):
            return TOKENS_PER_MESSAGE + self.text("user") + self.text(item)
        kind = item.get("type", "message")
        if kind == "message":
            return TOKENS_PER_MESSAGE + self.text(item.get("role")) + self.content(item.get("content"))
        if kind in ("function_call", "custom_tool_call"):
            return (
                TOKENS_PER_MESSAGE
                + self.text(item.get("name"))
                + self.text(item.get("arguments", item.get("input")))
            )
        if kind in ("function_call_output", "custom_tool_call_output", "computer_call_output"):
            output = item.get("output")
            return TOKENS_PER_MESSAGE + (
                self.content(output) if isinstance(output, list) else self.text(output)
            )
        if kind == "reasoning":
            # Encrypted reasoning is opaque; its visible summary is what we can count.
            return sum(self.part(p) for p in item.get("summary") or [] if isinstance(p, Mapping))
        if kind == "item_reference":
            return 0
        return TOKENS_PER_MESSAGE + sum(
            self.text(v)
            for k, v in item.items()
            if k not in ("type", "id", "call_id", "status") and not _looks_binary(v)
        )

    # -- completions and embeddings ---------------------------------------------------------
    def prompt(self, value: Any, param: str) -> int:
        """A string, an array of strings, an array of token ids, or an array of token-id arrays."""
        if value is None:
            return 0
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, list):
            raise TokenCountError(param, "must be a string, an array of strings or an array of token arrays")
        if all(_is_token(v) for v in value):
            return len(value)
        total = 0
        for index, entry in enumerate(value):
            if isinstance(entry, str):
                total += self.text(entry)
            elif isinstance(entry, list) and all(_is_token(v) for v in entry):
                total += len(entry)
            else:
                raise TokenCountError(f"{param}[{index}]", "must be a string or an array of token ids")
        return total


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _looks_binary(value: Any) -> bool:
    """Base64 payloads and data URLs would count as thousands of meaningless tokens."""
    return isinstance(value, str) and (value.startswith("data:") or (len(value) > 2048 and " " not in value))


def warm(models: Iterable[str] = ("gpt-4o", "gpt-4")) -> None:
    """Load the encodings for these models now (at start-up), not on the first request."""
    for model in models:
        encoding_for_model(model)
