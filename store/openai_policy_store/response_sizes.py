"""How much context a stored response or conversation carries into the request that names it.

A Responses request with ``previous_response_id`` (or ``conversation``) is billed for the whole
history as input, which the request itself does not show. For a response that came back through
a sidecar of the policy, the sidecar saw its usage: its input (which already held the history
before it) plus its output is exactly the history the next request pulls in. Each sidecar writes
that size here when the reply is settled, in the shared store, so every pod of the policy (and
the next pod after a restart) reserves it exactly; an id nobody remembered is reserved at the
model's whole context window instead.

Kept for ``spec.endpoints.contextMemorySeconds`` (at most 30 days, as long as OpenAI keeps stored
responses: each entry is about 200 bytes of Redis); an id that is not an OpenAI-shaped id is never
looked up nor written (it becomes part of a key name).
"""

from __future__ import annotations

import logging
import re

from .protocol import Ref, Store

log = logging.getLogger("openai_policy_store.response_sizes")

RESPONSE_TTL_SECONDS = 30 * 24 * 3600  # OpenAI keeps stored responses for 30 days: the longest useful
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class ContextSizes:
    """The remembered context sizes of one policy's stored responses and conversations."""

    def __init__(self, store: Store, ref: Ref, *, ttl_seconds: float = RESPONSE_TTL_SECONDS) -> None:
        self.store = store
        self.ref = ref
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def valid(object_id: object) -> bool:
        return isinstance(object_id, str) and _ID.match(object_id) is not None

    async def get(self, object_id: str) -> int | None:
        """The remembered size in tokens; None when unknown, malformed or the store is down
        (the caller then reserves the model's context window: never less than may be billed)."""
        if not self.valid(object_id):
            return None
        try:
            size = await self.store.context_size_get(self.ref, object_id)
        except Exception as error:  # unreachable, or refused (ACL): unknown, so the window is held
            log.warning("could not read a remembered context size: %s", type(error).__name__)
            return None
        return size if size is not None and size >= 0 else None

    async def take(self, object_id: str) -> int | None:
        """``get``, leaving the size unknown until it is remembered again: a conversation's turn in
        flight takes it, so that a second turn at once holds the window rather than a size the
        first is about to outgrow. None where the store cannot (a Redis before 6.2: no GETDEL)."""
        if not self.valid(object_id):
            return None
        try:
            size = await self.store.context_size_take(self.ref, object_id)
        except Exception as error:
            log.warning("could not take a remembered context size: %s", type(error).__name__)
            return None
        return size if size is not None and size >= 0 else None

    async def remember(self, object_id: str, tokens: int) -> bool:
        """Remember a size; False when it could not be written (the next use reserves the window)."""
        if not self.valid(object_id) or tokens < 0:
            return False
        try:
            await self.store.context_size_set(self.ref, object_id, tokens, self.ttl_seconds)
        except Exception as error:  # never fails the request it follows: the next use holds the window
            log.warning("could not remember a context size: %s", type(error).__name__)
            return False
        return True

    async def forget(self, object_id: str) -> None:
        """A conversation that grew by items the sidecar did not count: unknown again."""
        if not self.valid(object_id):
            return
        try:
            await self.store.context_size_forget(self.ref, object_id)
        except Exception as error:
            # Still remembered at the old size: the next use may be under-reserved. Said in the docs.
            log.error("could not forget the context size of a conversation: %s", type(error).__name__)
