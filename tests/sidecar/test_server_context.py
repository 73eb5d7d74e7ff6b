"""Inputs the sidecar cannot see (issue 12, part 3): files, stored responses, conversations and
stored prompts pulled in on OpenAI's side are reserved at the model's context window, or exactly
at the size the sidecar remembered for a response or conversation it saw answered.

The real bill is the fake's (``fake.billed_micros()``: what each answered call costs from the
usage it returned, at the sidecar's own prices). The issue measured, with 100 concurrent requests
against a $0.05 limit: input_file 24 accepted, $9.30 billed; previous_response_id 24, $9.29.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from openai_policy_api import EndpointsSpec
from openai_policy_devkit.sidecar import (
    async_client,
    concurrently,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.context import RequestContext
from openai_policy_sidecar.pipeline import server_context
from openai_policy_sidecar.pricing import PriceTable
from openai_policy_store import MemoryStore, RedisStore
from openai_policy_store.keyspace import context_size_key
from openai_policy_store.response_sizes import RESPONSE_TTL_SECONDS, ContextSizes

MODEL = "gpt-4o-mini"
MAX_OUT = 50
PRICES = PriceTable.bundled()
WINDOW = PRICES.context_window(MODEL)
ENDPOINTS = {"allow": ["chatCompletions", "responses", "files", "conversations"]}
BIG_TEXT = "word " * 40_000  # ~40k tokens: a third of the model's window


def _policy(tmp_path: Path, fake: Any, usd: float, **endpoints: Any) -> Path:
    spec = upstream_spec(
        fake,
        budget={"limits": [{"window": "hour", "usd": usd}]},
        requests={"maxOutputTokens": MAX_OUT},
        endpoints={**ENDPOINTS, **endpoints},
    )
    return write_policy(tmp_path / "policy.yaml", spec)


async def _spent(sidecar: Any) -> int:
    """The hour window's settled spend (the day and month windows count the same calls)."""
    await quiesce(sidecar)
    return next(w.spent_micros for w in await sidecar.source.snapshot.ledger.usage() if w.window == "hour")


def _window_cost() -> int:
    """A context-window reservation (no service_tier asked: the dearest tier)."""
    return PRICES.worst_case_micros(MODEL, WINDOW, MAX_OUT, tier=None)


async def _hundred(call: Any) -> tuple[int, int]:
    """(accepted, refused for the budget) of 100 concurrent calls."""
    outcomes = await concurrently(lambda _: call(), 100)
    assert set(outcomes) <= {"ok", "budget_exceeded"}, outcomes
    return outcomes.count("ok"), outcomes.count("budget_exceeded")


# -- what counts as server-side input ---------------------------------------------------------------


def test_server_inputs_are_found_wherever_the_request_names_them() -> None:
    body = {
        "model": MODEL,
        "previous_response_id": "resp_1",
        "prompt": {"id": "pmpt_1"},
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
        "input": [
            {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
            {"type": "item_reference", "id": "msg_1"},
            {"role": "user", "content": [{"type": "input_image", "file_id": "file-2"}]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:..."}]},
        ],
    }
    kinds = [(i.kind, i.ref) for i in server_context.server_inputs("responses", body)]
    assert sorted(kinds, key=str) == sorted(
        [
            ("storedResponses", "resp_1"),
            ("prompts", None),
            ("vectorStores", None),
            ("files", None),
            ("storedResponses", None),
            ("files", None),
        ],
        key=str,
    )
    conversation = {"model": MODEL, "conversation": {"id": "conv_1"}, "input": "hi"}
    assert [(i.kind, i.ref) for i in server_context.server_inputs("responses", conversation)] == [
        ("conversations", "conv_1")
    ]
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
    }
    assert [i.kind for i in server_context.server_inputs("chat.completions", chat)] == ["files"]
    assert server_context.server_inputs("responses", {"model": MODEL, "input": "plain"}) == []


async def test_remembered_sizes_expire_with_openai_retention_and_refuse_odd_ids() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    sizes = ContextSizes(store, ("default", "demo"))
    assert await sizes.remember("resp_abc", 1234)
    assert await sizes.get("resp_abc") == 1234
    assert not await sizes.remember("resp_{x}:*", 5) and await sizes.get("resp_{x}:*") is None
    now[0] += RESPONSE_TTL_SECONDS + 1
    assert await sizes.get("resp_abc") is None


async def test_the_store_keeps_sizes_in_redis_for_30_days(redis) -> None:
    store = RedisStore(redis.url)
    try:
        sizes = ContextSizes(store, ("team", "prod"))
        await sizes.remember("conv_1", 77)
        assert await ContextSizes(store, ("team", "prod")).get("conv_1") == 77
        assert await ContextSizes(store, ("team", "other")).get("conv_1") is None  # per policy
        client = aioredis.from_url(redis.url)
        ttl = await client.ttl(context_size_key("team", "prod", "conv_1"))
        await client.aclose()
        assert RESPONSE_TTL_SECONDS - 60 < ttl <= RESPONSE_TTL_SECONDS
        await sizes.forget("conv_1")
        assert await sizes.get("conv_1") is None
    finally:
        await store.close()


# -- the rows: 100 concurrent requests against $0.05 ---------------------------------------


async def test_input_file_is_reserved_at_the_context_window(tmp_path, fake_openai) -> None:
    async with running_sidecar(_policy(tmp_path, fake_openai, 0.05)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        uploaded = await client.files.create(
            file=("doc.txt", io.BytesIO(BIG_TEXT.encode())), purpose="user_data"
        )
        content = [
            {"type": "input_file", "file_id": uploaded.id},
            {"type": "input_text", "text": "Summarise."},
        ]
        accepted, refused = await _hundred(
            lambda: client.responses.create(model=MODEL, input=[{"role": "user", "content": content}])
        )
        spent = await _spent(sidecar)
    billed = fake_openai.billed_micros()
    assert accepted >= 1 and accepted + refused == 100
    assert billed <= 50_000, f"{accepted} accepted billed ${billed / 1e6}"
    assert spent == billed  # recorded to the micro-dollar


async def test_previous_response_id_is_reserved_exactly_when_the_sidecar_saw_it(
    tmp_path, fake_openai
) -> None:
    async with running_sidecar(_policy(tmp_path, fake_openai, 0.05)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        first = await client.responses.create(model=MODEL, input=BIG_TEXT)
        carried = first.usage.input_tokens + first.usage.output_tokens
        accepted, refused = await _hundred(
            lambda: client.responses.create(model=MODEL, previous_response_id=first.id, input="And then?")
        )
        spent = await _spent(sidecar)
    billed = fake_openai.billed_micros()
    exact = PRICES.worst_case_micros(MODEL, carried + 20, MAX_OUT, tier=None)
    assert accepted >= 50_000 // exact - 2  # reserved at its size, not at the window
    assert billed <= 50_000 and spent == billed


async def test_a_conversation_with_history_made_elsewhere_is_reserved_at_the_window(
    tmp_path, fake_openai
) -> None:
    """The issue's conversation row: history the sidecar never saw (made by another client of the
    project), 100 concurrent turns against $0.05; the fake appends every turn as it answers."""
    direct = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-elsewhere")
    conversation = direct.conversations.create(
        items=[{"type": "message", "role": "user", "content": BIG_TEXT}]
    )
    async with running_sidecar(_policy(tmp_path, fake_openai, 0.05)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        accepted, refused = await _hundred(
            lambda: client.responses.create(model=MODEL, conversation=conversation.id, input="And then?")
        )
        spent = await _spent(sidecar)
    billed = fake_openai.billed_micros()
    assert accepted >= 1 and accepted + refused == 100
    assert billed <= 50_000 and spent == billed


async def test_an_id_the_sidecar_never_saw_falls_back_to_the_context_window(tmp_path, fake_openai) -> None:
    """Under a limit a context-window reservation does not fit in, and an exact one does: only
    the id that came back through the sidecar is accepted."""
    limit_micros = _window_cost() - 1_000
    async with running_sidecar(_policy(tmp_path, fake_openai, limit_micros / 1e6)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        seen = await client.responses.create(model=MODEL, input=BIG_TEXT)
        unseen = fake_openai.stored.add_response(seen.usage.input_tokens + seen.usage.output_tokens)
        await client.responses.create(model=MODEL, previous_response_id=seen.id, input="more")
        with pytest.raises(openai.RateLimitError) as refused:
            await client.responses.create(model=MODEL, previous_response_id=unseen, input="more")
        assert refused.value.code == "budget_exceeded"
        spent = await _spent(sidecar)
    assert spent == fake_openai.billed_micros()


async def test_a_streamed_response_is_remembered_like_a_plain_one(tmp_path, fake_openai) -> None:
    """Its id comes from the stream's terminal event: continuing it is held exactly, under a limit
    a context-window hold does not fit in."""
    limit_micros = _window_cost() - 1_000
    async with running_sidecar(_policy(tmp_path, fake_openai, limit_micros / 1e6)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        ident = None
        async with await client.responses.create(model=MODEL, input=BIG_TEXT, stream=True) as stream:
            async for event in stream:
                if event.type == "response.completed":
                    ident = event.response.id
        assert ident is not None
        await client.responses.create(model=MODEL, previous_response_id=ident, input="more")
        spent = await _spent(sidecar)
    assert spent == fake_openai.billed_micros()


async def test_two_sidecars_sharing_redis_share_what_they_remembered(tmp_path, fake_openai, redis) -> None:
    limit_micros = _window_cost() - 1_000
    policy = _policy(tmp_path, fake_openai, limit_micros / 1e6, contextMemorySeconds=600)
    async with (
        running_sidecar(policy, redis_url=redis.url, pod="a") as first,
        running_sidecar(policy, redis_url=redis.url, pod="b") as second,
    ):
        made = await async_client(first.base_url, max_retries=0).responses.create(model=MODEL, input=BIG_TEXT)
        followed = await async_client(second.base_url, max_retries=0).responses.create(
            model=MODEL, previous_response_id=made.id, input="more"
        )
        assert followed.usage.input_tokens > made.usage.input_tokens
        spent = await _spent(second)
    assert spent == fake_openai.billed_micros()
    client = aioredis.from_url(redis.url)
    ttl = await client.ttl(context_size_key("default", "demo", made.id))
    await client.aclose()
    assert 540 < ttl <= 600  # kept as long as the policy says (spec.endpoints.contextMemorySeconds)


async def test_a_conversation_s_size_is_remembered_turn_by_turn(tmp_path, fake_openai) -> None:
    """Created empty through the sidecar, a conversation is exact from its first turn (under a
    limit a context-window hold does not fit in); each turn remembers what it now carries (the
    fake's own count); items the sidecar did not count make it unknown again."""
    limit_micros = _window_cost() - 1_000
    async with running_sidecar(_policy(tmp_path, fake_openai, limit_micros / 1e6)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        sizes = ContextSizes(sidecar.store, ("default", "demo"))
        conversation = await client.conversations.create()
        await quiesce(sidecar)
        assert await sizes.get(conversation.id) == 0
        for turn in range(3):
            await client.responses.create(
                model=MODEL, conversation=conversation.id, input=f"turn {turn} " * 500
            )
            await quiesce(sidecar)
            assert (
                await sizes.get(conversation.id) == fake_openai.stored.conversations[conversation.id].tokens
            )
        await client.conversations.items.create(
            conversation.id, items=[{"type": "message", "role": "user", "content": "x"}]
        )
        await quiesce(sidecar)
        assert await sizes.get(conversation.id) is None
        with pytest.raises(openai.RateLimitError):  # unknown again: the context window is held
            await client.responses.create(model=MODEL, conversation=conversation.id, input="again")
        spent = await _spent(sidecar)
    assert spent == fake_openai.billed_micros()


async def test_the_reservation_is_the_remembered_size_plus_the_visible_input() -> None:
    sizes = ContextSizes(MemoryStore(), ("default", "demo"))
    await sizes.remember("resp_seen", 5_000)

    soft_kinds: list[list[str]] = []

    async def reserve(spec: EndpointsSpec, **body: Any) -> tuple[int, bool]:
        ctx = RequestContext(dry_run=False)
        tokens = await server_context.reserve_input(
            ctx, spec, PRICES, sizes, "responses", {"model": MODEL, **body}, MODEL, 10
        )
        soft_kinds.append(ctx.server_input.soft_kinds)
        return tokens, ctx.server_input.exact

    assert await reserve(EndpointsSpec(), previous_response_id="resp_seen") == (5_010, True)
    assert await reserve(EndpointsSpec(), previous_response_id="resp_unseen") == (WINDOW, False)
    assert await reserve(EndpointsSpec(), input=[{"type": "item_reference", "id": "x"}]) == (WINDOW, False)
    soft = EndpointsSpec(soft_budget_inputs=["storedResponses"])
    assert await reserve(soft, previous_response_id="resp_unseen") == (10, False)
    assert soft_kinds[-1] == ["storedResponses"] and soft_kinds[0] == []
    assert await reserve(EndpointsSpec(), input="plain") == (10, False)


async def test_listed_soft_inputs_are_reserved_at_the_visible_input_only(tmp_path, fake_openai) -> None:
    limit_micros = _window_cost() - 1_000
    policy = _policy(tmp_path, fake_openai, limit_micros / 1e6, softBudgetInputs=["files"])
    async with running_sidecar(policy) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        uploaded = await client.files.create(file=("doc.txt", io.BytesIO(b"short text")), purpose="user_data")
        content = [{"type": "input_file", "file_id": uploaded.id}]
        await client.responses.create(model=MODEL, input=[{"role": "user", "content": content}])
        spent = await _spent(sidecar)
    assert spent == fake_openai.billed_micros()  # settled at what OpenAI reported all the same


async def test_a_stored_prompt_without_a_model(tmp_path, fake_openai) -> None:
    fake_openai.stored.add_prompt("pmpt_support", "gpt-4o", "You answer support questions. " * 50)
    async with running_sidecar(_policy(tmp_path, fake_openai, 5)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(prompt={"id": "pmpt_support"}, input="Where is my order?")
        assert "spec.endpoints.storedPromptModel" in refused.value.message
    assert fake_openai.requests == []
    async with running_sidecar(_policy(tmp_path, fake_openai, 5, storedPromptModel=MODEL)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        answer = await client.responses.create(prompt={"id": "pmpt_support"}, input="Where is my order?")
        spent = await _spent(sidecar)
    assert answer.model.startswith(MODEL) and fake_openai.requests[-1].json["model"] == MODEL
    assert spent == fake_openai.billed_micros() > 0


def test_the_policy_field_defaults() -> None:
    endpoints = EndpointsSpec()
    assert endpoints.soft_budget_inputs == [] and endpoints.stored_prompt_model is None


async def test_concurrent_turns_on_one_conversation_never_share_a_size(tmp_path, fake_openai) -> None:
    """A turn in flight takes its conversation's size: a second turn at the same time cannot know
    what the first will add, so it holds the context window (here: more than the limit); a turn
    refused before it was sent puts the size back."""
    limit_micros = _window_cost() - 1_000
    policy = _policy(tmp_path, fake_openai, limit_micros / 1e6)
    async with running_sidecar(policy) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        sizes = ContextSizes(sidecar.store, ("default", "demo"))
        conversation = await client.conversations.create()
        await client.responses.create(model=MODEL, conversation=conversation.id, input="first turn")
        await quiesce(sidecar)
        fake_openai.add_fault("latency", seconds=1.0, match="/responses")

        async def turn(delay: float) -> str:
            await asyncio.sleep(delay)
            try:
                await client.responses.create(model=MODEL, conversation=conversation.id, input="next")
            except openai.RateLimitError as error:
                return str(error.code)
            return "ok"

        assert await asyncio.gather(turn(0), turn(0.3)) == ["ok", "budget_exceeded"]
        await quiesce(sidecar)
        carried = fake_openai.stored.conversations[conversation.id].tokens
        assert await sizes.get(conversation.id) == carried  # remembered again by the turn that ran
        # Refused before it was sent (its own input is over the limit): the size is put back.
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model=MODEL, conversation=conversation.id, input=BIG_TEXT * 4)
        await quiesce(sidecar)
        assert await sizes.get(conversation.id) == carried
        spent = await _spent(sidecar)
    assert spent == fake_openai.billed_micros()
