"""The one table of OpenAI API surfaces: normalised method + path → what the call is.

Every decision about a path is taken on its normalised form (:func:`normalise_path`) and from
this table (:func:`classify`): which surface it belongs to (the names of
``spec.endpoints.allow`` / ``allowUnmetered``), whether it is a read of stored objects, whether
it can spend and, for metered calls, which pipeline endpoint meters it. A path the table does not
know is refused (deny by default), so an API OpenAI adds tomorrow is closed until it is listed.

Access kinds:
- ``call``: uses the surface (creates, generates, uploads); may spend per ``cost``;
- ``read``: GET of stored objects (lists span the whole OpenAI project): ``readStoredObjects``;
- ``manage``: delete, cancel or update one object by id. Ids are unguessable and a workload without
  reads only knows its own, so the surface being allowed is enough; none of them spends.

Cost kinds:
- ``metered``: the sidecar reserves the worst case and settles the reported usage (hard budget);
- ``free``: OpenAI bills nothing for the call itself (uploads, conversation items, moderation);
- ``unmetered``: spends money the sidecar cannot price or see (jobs, minted keys, storage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

Access = Literal["call", "read", "manage"]
Cost = Literal["metered", "free", "unmetered"]


@dataclass(frozen=True)
class Route:
    surface: str  # a name of spec.endpoints (chatCompletions, images, batches...)
    access: Access
    cost: Cost
    endpoint: str | None = None  # the pipeline's metered endpoint name (cost == "metered")
    label: str = ""  # the route as the table writes it, e.g. "POST /v1/images/edits"

    @property
    def spends(self) -> bool:
        return self.access == "call" and self.cost != "free"


# method, path under /v1 ("{id}" is one id segment), surface, access, cost, metered endpoint.
_EXACT: tuple[tuple[str, str, str, Access, Cost, str | None], ...] = (
    ("POST", "chat/completions", "chatCompletions", "call", "metered", "chat.completions"),
    ("GET", "chat/completions", "chatCompletions", "read", "free", None),
    ("GET", "chat/completions/{id}", "chatCompletions", "read", "free", None),
    ("GET", "chat/completions/{id}/messages", "chatCompletions", "read", "free", None),
    ("POST", "chat/completions/{id}", "chatCompletions", "manage", "free", None),
    ("DELETE", "chat/completions/{id}", "chatCompletions", "manage", "free", None),
    ("POST", "responses", "responses", "call", "metered", "responses"),
    ("POST", "responses/input_tokens", "responses", "call", "free", None),
    ("GET", "responses/{id}", "responses", "read", "free", None),
    ("GET", "responses/{id}/input_items", "responses", "read", "free", None),
    ("DELETE", "responses/{id}", "responses", "manage", "free", None),
    ("POST", "responses/{id}/cancel", "responses", "manage", "free", None),
    ("POST", "completions", "completions", "call", "metered", "completions"),
    ("POST", "embeddings", "embeddings", "call", "metered", "embeddings"),
    ("POST", "moderations", "moderations", "call", "free", None),
    # The model catalogue is public, not the project's stored objects.
    ("GET", "models", "models", "call", "free", None),
    ("GET", "models/{id}", "models", "call", "free", None),
    # Deleting a model deletes a fine-tuned model of the project.
    ("DELETE", "models/{id}", "fineTuning", "manage", "free", None),
    ("POST", "images/generations", "images", "call", "metered", "images.generations"),
    ("POST", "images/edits", "images", "call", "metered", "images.edits"),
    ("POST", "images/variations", "images", "call", "metered", "images.variations"),
    ("POST", "audio/speech", "audio", "call", "metered", "audio.speech"),
    ("POST", "audio/transcriptions", "audio", "call", "metered", "audio.transcriptions"),
    ("POST", "audio/translations", "audio", "call", "metered", "audio.translations"),
    ("POST", "files", "files", "call", "free", None),
    ("GET", "files", "files", "read", "free", None),
    ("GET", "files/{id}", "files", "read", "free", None),
    ("GET", "files/{id}/content", "files", "read", "free", None),
    ("DELETE", "files/{id}", "files", "manage", "free", None),
    ("POST", "uploads", "files", "call", "free", None),
    ("POST", "uploads/{id}/parts", "files", "call", "free", None),
    ("POST", "uploads/{id}/complete", "files", "call", "free", None),
    ("POST", "uploads/{id}/cancel", "files", "manage", "free", None),
    ("POST", "conversations", "conversations", "call", "free", None),
    ("POST", "conversations/{id}", "conversations", "manage", "free", None),
    ("POST", "conversations/{id}/items", "conversations", "call", "free", None),
    ("GET", "conversations/{id}", "conversations", "read", "free", None),
    ("GET", "conversations/{id}/items", "conversations", "read", "free", None),
    ("GET", "conversations/{id}/items/{id}", "conversations", "read", "free", None),
    ("DELETE", "conversations/{id}", "conversations", "manage", "free", None),
    ("DELETE", "conversations/{id}/items/{id}", "conversations", "manage", "free", None),
)

# Surfaces that can spend money the sidecar cannot meter: every path under these prefixes. A POST
# is a (spending) call, except a cancel; a GET reads stored objects, except the realtime websocket.
_UNMETERED_PREFIXES: dict[str, str] = {
    "batches": "batches",
    "fine_tuning": "fineTuning",
    "vector_stores": "vectorStores",
    "realtime": "realtime",
    "containers": "containers",
    "videos": "videos",
    "evals": "evals",
    "assistants": "assistants",
    "threads": "assistants",
}

# One path segment: an id (resp_..., file-..., ft:gpt-4o-mini:org::abc) or a word of the API.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~:@+=,!-]+$")


def _exact_table() -> dict[tuple[str, int], list[tuple[tuple[str, ...], Route]]]:
    table: dict[tuple[str, int], list[tuple[tuple[str, ...], Route]]] = {}
    for method, path, surface, access, cost, endpoint in _EXACT:
        parts = tuple(path.split("/"))
        route = Route(surface, access, cost, endpoint, f"{method} /v1/{path}")
        table.setdefault((method, len(parts)), []).append((parts, route))
    return table


_TABLE = _exact_table()
METERED_ENDPOINTS: frozenset[str] = frozenset(e for *_, e in _EXACT if e is not None)
ROUTES: tuple[Route, ...] = tuple(route for entries in _TABLE.values() for _, route in entries)


def classify(method: str, path: str) -> Route | None:
    """The route of a normalised ``/v1/...`` path, or None when the sidecar does not know it."""
    if not path.startswith("/v1/"):
        return None
    parts = tuple(path[len("/v1/") :].split("/"))
    for pattern, route in _TABLE.get((method, len(parts)), ()):
        if all(p == "{id}" or p == q for p, q in zip(pattern, parts, strict=True)):
            return route
    surface = _UNMETERED_PREFIXES.get(parts[0])
    if surface is None:
        return None
    label = f"{method} /v1/{parts[0]}"
    if method == "GET":
        websocket = parts == ("realtime",)
        return Route(
            surface, "call" if websocket else "read", "unmetered" if websocket else "free", None, label
        )
    if method == "DELETE" or (method == "POST" and parts[-1] == "cancel" and len(parts) > 1):
        return Route(surface, "manage", "free", None, label)
    if method == "POST":
        return Route(surface, "call", "unmetered", None, label)
    return None


class AmbiguousPath(ValueError):
    """A path two servers could read differently: refused rather than guessed."""


def normalise_path(raw_path: str) -> str:
    """The path a decision is taken on and the one forwarded upstream.

    ``raw_path`` is the request target as received (no query). Runs of ``/`` collapse, ``.``
    segments go, one trailing ``/`` goes, percent-escapes are decoded once. Refused with
    :class:`AmbiguousPath`: ``..`` segments, an encoded ``/`` or ``\\`` (a separator to one server,
    part of a name to another), a ``%`` left after decoding (double encoding), and any character
    an OpenAI path never holds. Case is kept: OpenAI's paths are lower case and ids are case
    sensitive, so ``/v1/Chat/completions`` is simply a path the table does not know.
    """
    if re.search(r"%(2[fF]|5[cC])", raw_path):
        raise AmbiguousPath("an encoded '/' or '\\' in the path")
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise AmbiguousPath("percent-escapes that are not UTF-8") from None
    if "%" in decoded:
        raise AmbiguousPath("a '%' left after decoding (double encoding)")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise AmbiguousPath("a '..' segment")
        if not _SEGMENT.match(segment):
            raise AmbiguousPath(f"a character an OpenAI path never holds in {segment[:40]!r}")
        segments.append(segment)
    return "/" + "/".join(segments)
