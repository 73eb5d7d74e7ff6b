"""Find (and rewrite in place) every piece of caller-supplied text in a request body.

One walker for every guardrail, so that PII, injection and moderation checks all see the same
texts on every endpoint:

- chat completions: ``messages[].content`` as a string or as content parts (``{"type": "text"}``
  and ``{"type": "refusal"}`` parts; images and audio are not text and are skipped);
- Responses API: ``instructions``, ``input`` as a string, or as items: messages (``content``
  string or ``input_text`` / ``output_text`` / ``refusal`` parts), ``function_call_output`` /
  ``custom_tool_call_output`` outputs (tool results are a classic indirect-injection vector);
- completions: ``prompt`` as a string or a list of strings (token-id arrays cannot be read);
- embeddings: ``input`` as a string or a list of strings.

Each text comes with its JSON path and a role (``system`` for ``instructions``, ``tool`` for
tool outputs, ``user`` for prompts and inputs without one), so a guardrail can skip what the
app's developer wrote (system/developer prompts) when that makes sense.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

# Part types whose ``text`` is text, by API.
_CHAT_TEXT_PARTS = {"text": "text", "refusal": "refusal"}
_RESPONSES_TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal", "text": "text"}
_TOOL_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")

# Roles an app developer writes (not end-user content).
DEVELOPER_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class TextSlot:
    """One text: where it is (a JSON path for logs), who wrote it, and what it says."""

    path: str
    role: str
    text: str


# A setter replaces the text at one place.
_Setter = Callable[[str], None]


def _set_item(container: Any, key: Any) -> _Setter:
    def setter(value: str) -> None:
        container[key] = value

    return setter


def _parts(
    path: str, role: str, parts: list[Any], kinds: dict[str, str]
) -> Iterator[tuple[TextSlot, _Setter]]:
    for j, part in enumerate(parts):
        if isinstance(part, str):  # tolerated by some clients
            yield TextSlot(f"{path}[{j}]", role, part), _set_item(parts, j)
            continue
        if not isinstance(part, dict):
            continue
        field = kinds.get(str(part.get("type")))
        if field and isinstance(part.get(field), str):
            yield TextSlot(f"{path}[{j}].{field}", role, part[field]), _set_item(part, field)


def _content(
    path: str, role: str, holder: dict[str, Any], key: str, kinds: dict[str, str]
) -> Iterator[tuple[TextSlot, _Setter]]:
    value = holder.get(key)
    if isinstance(value, str):
        yield TextSlot(f"{path}.{key}", role, value), _set_item(holder, key)
    elif isinstance(value, list):
        yield from _parts(f"{path}.{key}", role, value, kinds)


def _chat(body: dict[str, Any]) -> Iterator[tuple[TextSlot, _Setter]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if isinstance(message, dict):
            role = str(message.get("role") or "user")
            yield from _content(f"messages[{i}]", role, message, "content", _CHAT_TEXT_PARTS)


def _responses(body: dict[str, Any]) -> Iterator[tuple[TextSlot, _Setter]]:
    if isinstance(body.get("instructions"), str):
        yield TextSlot("instructions", "system", body["instructions"]), _set_item(body, "instructions")
    value = body.get("input")
    if isinstance(value, str):
        yield TextSlot("input", "user", value), _set_item(body, "input")
        return
    if not isinstance(value, list):
        return
    for i, item in enumerate(value):
        path = f"input[{i}]"
        if isinstance(item, str):
            yield TextSlot(path, "user", item), _set_item(value, i)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in _TOOL_OUTPUT_ITEMS:
            output = item.get("output")
            if isinstance(output, str):
                yield TextSlot(f"{path}.output", "tool", output), _set_item(item, "output")
            elif isinstance(output, list):
                yield from _parts(f"{path}.output", "tool", output, _RESPONSES_TEXT_PARTS)
        elif kind in (None, "message"):
            role = str(item.get("role") or "user")
            yield from _content(path, role, item, "content", _RESPONSES_TEXT_PARTS)
        elif kind in _RESPONSES_TEXT_PARTS and isinstance(item.get("text"), str):
            # A bare content part at the top of `input`.
            yield TextSlot(f"{path}.text", "user", item["text"]), _set_item(item, "text")


def _string_or_list(body: dict[str, Any], key: str) -> Iterator[tuple[TextSlot, _Setter]]:
    value = body.get(key)
    if isinstance(value, str):
        yield TextSlot(key, "user", value), _set_item(body, key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield TextSlot(f"{key}[{i}]", "user", item), _set_item(value, i)


def _walk(endpoint: str, body: dict[str, Any]) -> Iterator[tuple[TextSlot, _Setter]]:
    if not isinstance(body, dict):
        return
    if endpoint == "chat.completions":
        yield from _chat(body)
    elif endpoint == "responses":
        yield from _responses(body)
    elif endpoint == "completions":
        yield from _string_or_list(body, "prompt")
    elif endpoint == "embeddings":
        yield from _string_or_list(body, "input")


def _wanted(slot: TextSlot, skip_roles: Collection[str]) -> bool:
    return slot.role not in skip_roles and bool(slot.text)


def iter_texts(endpoint: str, body: dict[str, Any], *, skip_roles: Collection[str] = ()) -> list[TextSlot]:
    """Every non-empty text of the request (``endpoint`` in chat.completions, responses, completions, embeddings)."""
    return [slot for slot, _ in _walk(endpoint, body) if _wanted(slot, skip_roles)]


def rewrite_texts(
    endpoint: str,
    body: dict[str, Any],
    rewrite: Callable[[TextSlot], str],
    *,
    skip_roles: Collection[str] = (),
) -> int:
    """Replace each text by ``rewrite(slot)`` in place; return how many texts changed."""
    changed = 0
    # Materialise first: rewriting while walking would be safe (no structure changes), but this
    # keeps the contract obvious.
    for slot, setter in list(_walk(endpoint, body)):
        if not _wanted(slot, skip_roles):
            continue
        new = rewrite(slot)
        if new != slot.text:
            setter(new)
            changed += 1
    return changed


def iter_output_texts(endpoint: str, response: dict[str, Any]) -> list[TextSlot]:
    """The model's answer texts in a (non-streamed) response body, for output moderation."""
    slots: list[TextSlot] = []
    if not isinstance(response, dict):
        return slots
    if endpoint == "chat.completions":
        for i, choice in enumerate(response.get("choices") or []):
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                slots.extend(
                    slot
                    for slot, _ in _content(
                        f"choices[{i}].message", "assistant", message, "content", _CHAT_TEXT_PARTS
                    )
                )
    elif endpoint == "responses":
        for i, item in enumerate(response.get("output") or []):
            if isinstance(item, dict) and item.get("type") == "message":
                slots.extend(
                    slot
                    for slot, _ in _content(
                        f"output[{i}]", "assistant", item, "content", _RESPONSES_TEXT_PARTS
                    )
                )
    elif endpoint == "completions":
        for i, choice in enumerate(response.get("choices") or []):
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                slots.append(TextSlot(f"choices[{i}].text", "assistant", choice["text"]))
    return [slot for slot in slots if slot.text]
