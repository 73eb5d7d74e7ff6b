"""The fake's stored objects: shaped like OpenAI's schema, and billed as input when pulled in."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest

from openai_policy_devkit import fake_openai_billing as billing
from openai_policy_devkit.fake_openai_schema import OpenAISchemas, openai_schemas
from openai_policy_devkit.fake_openai_stored import FILE_SEARCH_TOKENS

MODEL = "gpt-4o-mini"
TEXT = "word " * 3_000  # 3000 tokens


@pytest.fixture(scope="session")
def openai_schema() -> OpenAISchemas:
    return openai_schemas()


@pytest.fixture
def client(fake_openai) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)


def raw(call: Any) -> Any:
    """The JSON body of an SDK call made ``with_raw_response``."""
    return json.loads(call.content)


def test_files_conversations_and_batches_match_the_schema(client, openai_schema) -> None:
    upload = raw(
        client.files.with_raw_response.create(file=("doc.txt", io.BytesIO(b"hello")), purpose="batch")
    )
    openai_schema.validate("OpenAIFile", upload)
    openai_schema.validate("ListFilesResponse", raw(client.files.with_raw_response.list()))
    assert client.files.content(upload["id"]).read() == b"hello"
    conversation = raw(client.conversations.with_raw_response.create(metadata={"topic": "x"}))
    openai_schema.validate("ConversationResource", conversation)
    items = raw(
        client.conversations.items.with_raw_response.create(
            conversation["id"], items=[{"type": "message", "role": "user", "content": "hi"}]
        )
    )
    openai_schema.validate("ConversationItemList", items)
    batch = raw(
        client.batches.with_raw_response.create(
            input_file_id=upload["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    openai_schema.validate("Batch", batch)
    openai_schema.validate(
        "DeletedConversationResource", raw(client.conversations.with_raw_response.delete(conversation["id"]))
    )
    openai_schema.validate("DeleteFileResponse", raw(client.files.with_raw_response.delete(upload["id"])))


def test_stored_content_bills_as_input(client, fake_openai) -> None:
    plain = client.responses.create(model=MODEL, input="Summarise.").usage.input_tokens
    upload = client.files.create(file=("doc.txt", io.BytesIO(TEXT.encode())), purpose="user_data")
    content = [{"type": "input_file", "file_id": upload.id}, {"type": "input_text", "text": "Summarise."}]
    with_file = client.responses.create(model=MODEL, input=[{"role": "user", "content": content}])
    assert with_file.usage.input_tokens >= plain + 3_000
    carried = with_file.usage.input_tokens + with_file.usage.output_tokens
    follow = client.responses.create(model=MODEL, previous_response_id=with_file.id, input="Summarise.")
    assert follow.usage.input_tokens == carried + plain  # the whole stored history, as input
    assert client.responses.retrieve(with_file.id).id == with_file.id
    searched = client.responses.create(
        model=MODEL, input="Summarise.", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    )
    # The retrieved chunks, then each of the two searches' results read in a turn of its own.
    searches = len(billing.tool_calls_made({"tools": [{"type": "file_search"}]}))
    assert searched.usage.input_tokens == billing.with_tool_turns(plain + FILE_SEARCH_TOKENS, searches)
    fake_openai.stored.add_prompt("pmpt_1", MODEL, TEXT)
    prompted = client.responses.create(prompt={"id": "pmpt_1"}, input="Summarise.")
    assert prompted.model == MODEL and prompted.usage.input_tokens >= plain + 3_000


def test_unknown_ids_are_404s_like_openai(client) -> None:
    for call in (
        lambda: client.responses.create(model=MODEL, previous_response_id="resp_nope", input="x"),
        lambda: client.responses.create(model=MODEL, conversation="conv_nope", input="x"),
        lambda: client.files.retrieve("file-nope"),
        lambda: client.responses.create(prompt={"id": "pmpt_nope"}, input="x"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_an_unstored_response_cannot_be_continued(client) -> None:
    first = client.responses.create(model=MODEL, input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, previous_response_id=first.id, input="again")
