"""The fake's stored objects, and the input they bill when a request pulls them in.

Files (upload, list, get, content, delete), conversations (create, get, items, delete), stored
responses (get, delete) and batches (create, get, list, cancel), shaped like OpenAI's
(OpenAIFile, ConversationResource, Batch...). Registered prompts (``add_prompt``) stand for
prompts saved in the dashboard.

Like OpenAI, a Responses request is billed as input for everything it pulls in from the server:
``previous_response_id`` (the stored response's input + output), ``conversation`` (the
conversation so far), ``input_file`` / chat ``file`` parts (the file's text, by ``file_id``),
``input_image`` by ``file_id`` (one image), ``item_reference`` items, a stored ``prompt`` (its
text) and each ``file_search`` tool (``FILE_SEARCH_TOKENS`` of retrieved chunks). An id the fake
does not hold is a 404, as OpenAI answers.
"""

from __future__ import annotations

import email
import email.policy
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from openai_policy_devkit import fake_openai_tokens as tokens
from openai_policy_devkit.fake_openai_requests import RequestError

if TYPE_CHECKING:
    from openai_policy_devkit.fake_openai import FakeOpenAI, _Call

FILE_SEARCH_TOKENS = 4_000  # retrieved chunks one file_search tool adds to the input
INPUT_IMAGE_TOKENS = 765  # one stored image given by file_id (a 1024x1024 image, high detail)
ITEM_REFERENCE_TOKENS = 200  # one referenced item


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Conversation:
    id: str
    metadata: dict[str, Any]
    tokens: int = 0  # the input its history adds to the next response
    items: list[dict[str, Any]] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "metadata": self.metadata,
            "created_at": self.created_at,
        }


class StoredObjects:
    """What the fake keeps between requests, as an OpenAI project would."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.conversations: dict[str, Conversation] = {}
        self.responses: dict[str, dict[str, Any]] = {}  # id -> the response object
        self.response_tokens: dict[str, int] = {}  # id -> input + output: what it carries forward
        self.prompts: dict[str, tuple[str, str]] = {}  # id -> (model, text)
        self.batches: dict[str, dict[str, Any]] = {}

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # --- scripting ------------------------------------------------------------------------

    def add_prompt(self, prompt_id: str, model: str, text: str) -> None:
        """A prompt saved in the dashboard: its model and its text (billed as input)."""
        self.prompts[prompt_id] = (model, text)

    def add_response(self, tokens_carried: int) -> str:
        """A stored response made elsewhere (not through the sidecar under test); its id."""
        ident = f"resp_{secrets.token_hex(24)}"
        self.response_tokens[ident] = tokens_carried
        return ident

    # --- billing the server-side input ------------------------------------------------------

    def prepare(self, body: dict[str, Any]) -> None:
        """A stored prompt without ``model`` runs on the prompt's model."""
        prompt = body.get("prompt")
        if isinstance(prompt, dict) and not body.get("model"):
            body["model"] = self._prompt(prompt)[0]

    def _prompt(self, prompt: dict[str, Any]) -> tuple[str, str]:
        found = self.prompts.get(str(prompt.get("id")))
        if found is None:
            raise RequestError(404, f"Prompt with id '{prompt.get('id')}' not found.", "prompt", "not_found")
        return found

    def hidden_tokens(self, endpoint: str, body: dict[str, Any]) -> int:
        """Input tokens the request pulls in from stored objects (0 for a self-contained request)."""
        model = str(body.get("model", ""))
        total = 0
        if endpoint == "responses":
            previous = body.get("previous_response_id")
            if previous is not None:
                if previous not in self.response_tokens:
                    raise RequestError(
                        404, f"Previous response with id '{previous}' not found.", "previous_response_id"
                    )
                total += self.response_tokens[previous]
            conversation = self._conversation_of(body)
            if conversation is not None:
                total += conversation.tokens
            if isinstance(body.get("prompt"), dict):
                total += tokens.count_text(self._prompt(body["prompt"])[1], model)
            tools = body.get("tools") or []
            total += FILE_SEARCH_TOKENS * sum(
                1 for t in tools if isinstance(t, dict) and t.get("type") == "file_search"
            )
            total += self._parts_tokens(body.get("input"), model)
        elif endpoint == "chat":
            total += self._parts_tokens(body.get("messages"), model)
        return total

    def _conversation_of(self, body: dict[str, Any]) -> Conversation | None:
        ident = body.get("conversation")
        if isinstance(ident, dict):
            ident = ident.get("id")
        if ident is None:
            return None
        found = self.conversations.get(str(ident))
        if found is None:
            raise RequestError(404, f"Conversation with id '{ident}' not found.", "conversation", "not_found")
        return found

    def _file(self, file_id: object, param: str) -> StoredFile:
        found = self.files.get(str(file_id))
        if found is None:
            raise RequestError(404, f"No such File object: {file_id}", param, "not_found")
        return found

    def _parts_tokens(self, value: object, model: str) -> int:
        total, stack = 0, [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                kind = item.get("type")
                if kind == "input_file" and item.get("file_id"):
                    text = self._file(item["file_id"], "input").content.decode("utf-8", "replace")
                    total += tokens.count_text(text, model)
                elif kind == "file" and isinstance(item.get("file"), dict) and item["file"].get("file_id"):
                    text = self._file(item["file"]["file_id"], "messages").content.decode("utf-8", "replace")
                    total += tokens.count_text(text, model)
                elif kind == "input_image" and item.get("file_id"):
                    self._file(item["file_id"], "input")
                    total += INPUT_IMAGE_TOKENS
                elif kind == "item_reference":
                    total += ITEM_REFERENCE_TOKENS
                stack.extend(v for v in item.values() if isinstance(v, list | dict))
        return total

    def keep(self, body: dict[str, Any], result: dict[str, Any]) -> None:
        """After a response: store it (unless ``store: false``) and extend its conversation."""
        usage = result.get("usage") or {}
        carried = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        conversation = self._conversation_of(body)
        if conversation is not None:
            conversation.tokens = carried
            conversation.items.extend(item for item in result.get("output", []) if isinstance(item, dict))
        if body.get("store") is not False:
            self.responses[result["id"]] = result
            self.response_tokens[result["id"]] = carried


# --- routes ------------------------------------------------------------------------------------


def _upload(raw: bytes, content_type: str) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """(text fields, (filename, content) of the file part) of a multipart upload."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        raise RequestError(400, "Could not parse the form body: expected multipart/form-data.")
    fields: dict[str, str] = {}
    upload = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None and name == "file":
            upload = (str(part.get_filename()), payload)
        elif isinstance(name, str):
            fields[name] = payload.decode("utf-8", "replace")
    return fields, upload


def _stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """An input message as a conversation keeps it: with an id, a status and content parts."""
    content = item.get("content")
    if isinstance(content, str):
        kind = "output_text" if item.get("role") == "assistant" else "input_text"
        content = [{"type": kind, "text": content}]
    return {
        "type": "message",
        "id": f"msg_{secrets.token_hex(24)}",
        "status": "completed",
        "role": item.get("role", "user"),
        "content": content if isinstance(content, list) else [],
    }


def _items_tokens(items: object) -> int:
    """What items added to a conversation bill when it is next used (their text, roughly)."""
    return tokens.count_text(str(items), "gpt-4o") if items else 0


def _page(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


def stored_routes(fake: FakeOpenAI) -> list[web.RouteDef]:
    """The stored-object endpoints, each wrapped by the fake's request pipeline."""
    stored = fake.stored
    api = fake._api

    def answer(call: _Call, body: Any, status: int = 200) -> web.Response:
        return fake._json(body, call.started, status=status)

    def ident(call: _Call, name: str = "id") -> str:
        return call.request.match_info[name]

    async def create_file(call: _Call) -> web.StreamResponse:
        fields, upload = _upload(await call.request.read(), call.request.headers.get("Content-Type", ""))
        if upload is None:
            raise RequestError(
                400, "Missing required parameter: 'file'.", "file", "missing_required_parameter"
            )
        if not fields.get("purpose"):
            raise RequestError(
                400, "Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter"
            )
        created = StoredFile(f"file-{secrets.token_hex(12)}", upload[0], fields["purpose"], upload[1])
        stored.files[created.id] = created
        return answer(call, created.object())

    async def list_files(call: _Call) -> web.StreamResponse:
        return answer(call, _page([f.object() for f in stored.files.values()]))

    async def get_file(call: _Call) -> web.StreamResponse:
        return answer(call, stored._file(ident(call), "file_id").object())

    async def file_content(call: _Call) -> web.StreamResponse:
        content = stored._file(ident(call), "file_id").content
        return web.Response(body=content, content_type="application/octet-stream")

    async def delete_file(call: _Call) -> web.StreamResponse:
        gone = stored.files.pop(stored._file(ident(call), "file_id").id)
        return answer(call, {"id": gone.id, "object": "file", "deleted": True})

    async def create_conversation(call: _Call) -> web.StreamResponse:
        metadata = call.body.get("metadata") or {}
        conversation = Conversation(
            f"conv_{secrets.token_hex(24)}", metadata if isinstance(metadata, dict) else {}
        )
        conversation.tokens = _items_tokens(call.body.get("items"))
        stored.conversations[conversation.id] = conversation
        return answer(call, conversation.object())

    def conversation(call: _Call) -> Conversation:
        return stored._conversation_of({"conversation": ident(call)}) or Conversation("", {})

    async def get_conversation(call: _Call) -> web.StreamResponse:
        return answer(call, conversation(call).object())

    async def add_items(call: _Call) -> web.StreamResponse:
        found = conversation(call)
        items = [i for i in call.body.get("items") or [] if isinstance(i, dict)]
        added = [_stored_item(i) for i in items]
        found.items.extend(added)
        found.tokens += _items_tokens(items)
        return answer(call, _page(added))

    async def list_items(call: _Call) -> web.StreamResponse:
        return answer(call, _page(conversation(call).items))

    async def delete_conversation(call: _Call) -> web.StreamResponse:
        gone = stored.conversations.pop(conversation(call).id)
        return answer(call, {"id": gone.id, "object": "conversation.deleted", "deleted": True})

    def found(table: dict[str, dict[str, Any]], call: _Call, what: str) -> dict[str, Any]:
        kept = table.get(ident(call))
        if kept is None:
            raise RequestError(404, f"No {what} found with id '{ident(call)}'.", None, "not_found")
        return kept

    def response(call: _Call) -> dict[str, Any]:
        return found(stored.responses, call, "response")

    async def get_response(call: _Call) -> web.StreamResponse:
        return answer(call, response(call))

    async def delete_response(call: _Call) -> web.StreamResponse:
        gone = response(call)
        del stored.responses[gone["id"]]
        return answer(call, {"id": gone["id"], "object": "response", "deleted": True})

    async def create_batch(call: _Call) -> web.StreamResponse:
        body = call.body
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                raise RequestError(
                    400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
                )
        stored._file(body["input_file_id"], "input_file_id")
        batch = {
            "id": f"batch_{secrets.token_hex(12)}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "validating",
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        stored.batches[batch["id"]] = batch
        return answer(call, batch)

    def batch(call: _Call) -> dict[str, Any]:
        return found(stored.batches, call, "batch")

    async def get_batch(call: _Call) -> web.StreamResponse:
        return answer(call, batch(call))

    async def list_batches(call: _Call) -> web.StreamResponse:
        return answer(call, _page(list(stored.batches.values())))

    async def cancel_batch(call: _Call) -> web.StreamResponse:
        cancelled = batch(call)
        cancelled.update(status="cancelling", cancelling_at=int(time.time()))
        return answer(call, cancelled)

    table: list[tuple[str, str, Callable[[_Call], Any]]] = [
        ("POST", "/v1/files", create_file),
        ("GET", "/v1/files", list_files),
        ("GET", "/v1/files/{id}", get_file),
        ("GET", "/v1/files/{id}/content", file_content),
        ("DELETE", "/v1/files/{id}", delete_file),
        ("POST", "/v1/conversations", create_conversation),
        ("GET", "/v1/conversations/{id}", get_conversation),
        ("POST", "/v1/conversations/{id}/items", add_items),
        ("GET", "/v1/conversations/{id}/items", list_items),
        ("DELETE", "/v1/conversations/{id}", delete_conversation),
        ("GET", "/v1/responses/{id}", get_response),
        ("DELETE", "/v1/responses/{id}", delete_response),
        ("POST", "/v1/batches", create_batch),
        ("GET", "/v1/batches", list_batches),
        ("GET", "/v1/batches/{id}", get_batch),
        ("POST", "/v1/batches/{id}/cancel", cancel_batch),
    ]
    return [web.route(method, path, api(handler)) for method, path, handler in table]
