"""``OpenAIPolicy.spec.endpoints``: which OpenAI API surfaces a workload may reach through the sidecar.

Deny by default: a path the sidecar does not know, or a surface the policy does not list, is
refused with 403 endpoint_not_allowed before the key is ever attached. The surface names are
the sidecar's table (``openai_policy_sidecar.surfaces``); the API only names them.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from .base import SpecModel
from .fields import ModelId

# Surfaces whose every spending call the sidecar meters (a hard budget), or that spend nothing.
MeteredSurface = Literal[
    "chatCompletions",
    "responses",
    "completions",
    "embeddings",
    "moderations",
    "models",
    "images",
    "audio",
    "files",
    "conversations",
]
# Surfaces that can spend money the sidecar cannot see or price (jobs that run later, keys minted
# for direct connections, storage billed by the day): allowed only by name, and soft for the budget.
UnmeteredSurface = Literal[
    "batches",
    "fineTuning",
    "vectorStores",
    "realtime",
    "containers",
    "videos",
    "evals",
    "assistants",
]
# Server-side inputs a request can pull in, whose size the sidecar cannot see in the request.
ServerInput = Literal["storedResponses", "conversations", "files", "prompts", "vectorStores", "toolResults"]

METERED_SURFACES: tuple[MeteredSurface, ...] = get_args(MeteredSurface)
UNMETERED_SURFACES: tuple[UnmeteredSurface, ...] = get_args(UnmeteredSurface)
SERVER_INPUTS: tuple[ServerInput, ...] = get_args(ServerInput)
DEFAULT_SURFACES: tuple[MeteredSurface, ...] = (
    "chatCompletions",
    "responses",
    "completions",
    "embeddings",
    "moderations",
    "models",
)


def _no_duplicates(values: list[str]) -> list[str]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"lists {', '.join(map(repr, duplicates))} more than once")
    return values


class EndpointsSpec(SpecModel):
    """Which OpenAI API surfaces the workload may use; everything else is refused (deny by default).

    A request to a surface not listed, or to a path the sidecar does not know, is refused with
    403 endpoint_not_allowed (not retried by the SDKs) before the API key is attached. Paths are
    normalised first (`//`, `/./`, percent-encoding, a trailing slash); an ambiguous path (`..`,
    an encoded `/` or `\\`) is refused with 400 invalid_path. `spec.suspend` and an exhausted
    budget refuse every surface that can spend.
    """

    allow: list[MeteredSurface] = Field(
        default_factory=lambda: list(DEFAULT_SURFACES),
        max_length=len(METERED_SURFACES),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Surfaces the sidecar meters (a hard budget) or that spend nothing: chatCompletions, "
        "responses, completions, embeddings, moderations, models (the default), and on request "
        "images, audio (metered per call), files (uploads: free, contents bill when used as input) and "
        "conversations (free to store; their history bills when used as input). Setting the list "
        "replaces the default: list every surface the workload needs.",
    )
    allow_unmetered: list[UnmeteredSurface] = Field(
        default_factory=list,
        max_length=len(UNMETERED_SURFACES),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Surfaces that can spend money the sidecar cannot see or price: batches (billed when "
        "the job runs, up to 24 h later), fineTuning, vectorStores (storage by the day), realtime "
        "(client secrets let the app connect to OpenAI directly), containers, videos, evals, assistants. "
        "Listing one makes the budget soft for it: its calls are refused once the budget is exhausted or "
        "the policy is suspended, but their cost is not reserved nor recorded. Default: none.",
    )
    read_stored_objects: bool = Field(
        default=False,
        description="Allow GET of stored objects on the allowed surfaces: stored chat completions and "
        "responses, files and their contents, conversations, batches, jobs. These lists cover the whole "
        "OpenAI project (every workload sharing the key), so they are off by default. Deleting or "
        "cancelling an object by id only needs its surface allowed.",
    )
    soft_budget_inputs: list[ServerInput] = Field(
        default_factory=list,
        max_length=len(SERVER_INPUTS),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Server-side inputs a request may pull in without the sidecar reserving the model's "
        "whole context window for them: storedResponses (previous_response_id the sidecar did not see "
        "answered), conversations, files (input_file / file_id), prompts (stored prompt ids), "
        "vectorStores (the file_search tool), toolResults (what the built-in tools OpenAI runs itself, "
        "web and file search, code interpreter, MCP, feed back to the model: each of the up to "
        "max_tool_calls turns after the first bills the whole context again, so each is held at a "
        "context window). Listed inputs are reserved at the visible input only, so "
        "the budget is soft for such calls; settlement still charges what OpenAI reports. Default: none "
        "(every such call reserves the model's context window, or the exact size the sidecar "
        "remembered for a response or conversation it saw).",
    )
    context_memory_seconds: int = Field(
        default=3600,
        ge=60,
        le=2_592_000,
        description="How long the sidecar remembers the context size of each stored response and "
        "conversation it answered, in the shared store, so that continuing it is held exactly. After "
        "that, continuing it holds the model's whole context window (never less). Each entry takes "
        "about 200 bytes of Redis: at the default hour, 10 Responses calls a second keep about 7 MB; "
        "up to 30 days (2592000, as long as OpenAI keeps responses) when Redis is sized for it "
        "(redis.maxMemory in the chart).",
    )
    stored_prompt_model: ModelId | None = Field(
        default=None,
        max_length=128,
        description="The model a Responses request that names a stored `prompt` but no `model` is sent "
        "with. The sidecar cannot see which model a stored prompt was saved with, so it could neither "
        "price the call nor apply models.allow: without this field such requests are refused with 400 "
        "naming it. It goes through models.allow and models.pin like a requested model.",
    )

    @field_validator("allow", "allow_unmetered", "soft_budget_inputs")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        return _no_duplicates(values)

    def allows(self, surface: str) -> bool:
        return surface in self.allow or surface in self.allow_unmetered

    def soft_for(self, kind: str) -> bool:
        return kind in self.soft_budget_inputs
