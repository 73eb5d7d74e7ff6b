"""The pieces behind the hostile-upstream guarantees, called directly: key redaction, the header
allow-list, event splitting under a cap, usage that cannot be trusted, and the rate headers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from openai_policy_sidecar.buffer_budget import BufferBudget, BufferBudgetExceeded
from openai_policy_sidecar.rate_headers import LastSeen, tighter
from openai_policy_sidecar.redaction import ChunkRedactor, Redactor
from openai_policy_sidecar.reported_usage import Usage, parse_usage
from openai_policy_sidecar.streaming import StreamEventTooLarge, split_events
from openai_policy_sidecar.upstream import downstream_headers

KEY = "sk-proj-AbCdEfGh0123456789-_xyzzz99"


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {KEY}.",
        "Incorrect API key provided: sk-proj-****zz99.",
        "Incorrect API key provided: sk-proj-" + "*" * 40 + "zz99. You can find...",
        "key ****zz99 was refused",
        "key sk-pr...zz99 was refused",
        "key sk-proj-Ab\u2026zz99 was refused",
        f'{{"message":"{KEY[:12]}***********zz99"}}',
    ],
)
def test_the_key_and_its_masked_forms_are_redacted(text):
    cleaned = Redactor([KEY]).bytes(text.encode()).decode()
    assert "[REDACTED]" in cleaned
    assert KEY not in cleaned and "zz99" not in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "a markdown rule ****zz99abc is not a key's end",  # the four characters go on
        "sk-other-****zz99",  # a masked form of another key
        "****zz98",  # another last four
        "**bold** text",
    ],
)
def test_text_that_is_not_the_key_is_left_alone(text):
    assert Redactor([KEY]).bytes(text.encode()) == text.encode()


def test_every_key_held_is_redacted_after_a_rotation():
    old, new = "sk-old-111122223333aaaa", "sk-new-444455556666bbbb"
    cleaned = Redactor([old, new]).bytes(f"{old} and sk-new-****bbbb".encode())
    assert cleaned == b"[REDACTED] and [REDACTED]"


@pytest.mark.parametrize("quoted", [KEY, "sk-proj-****zz99"], ids=["full", "masked"])
def test_a_body_relayed_in_chunks_is_redacted_wherever_the_chunks_split_the_key(quoted):
    body = ("x" * 300 + f" Incorrect API key provided: {quoted}. " + "y" * 300).encode()
    expected = Redactor([KEY]).bytes(body)
    assert b"[REDACTED]" in expected
    for first in range(0, len(body), 7):
        for size in (1, 5, 64):
            scanner = ChunkRedactor(Redactor([KEY]))
            pieces = [body[:first]] + [body[i : i + size] for i in range(first, len(body), size)]
            relayed = b"".join(scanner.feed(piece) for piece in pieces) + scanner.flush()
            assert relayed == expected, (first, size)


def test_without_a_key_chunks_pass_unchanged():
    scanner = ChunkRedactor(Redactor([]))
    assert scanner.feed(b"abc") == b"abc" and scanner.flush() == b""


def test_downstream_headers_are_allow_listed_and_redacted():
    upstream = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Set-Cookie": "__cf_bm=abc",
        "x-debug-authorization": f"Bearer {KEY}",
        "x-request-id": "req_1",
        "openai-organization": f"org-{KEY}",
        "x-ratelimit-remaining-requests": "9",
    }
    headers = downstream_headers(upstream, Redactor([KEY]))
    assert dict(headers) == {
        "Content-Type": "application/json",
        "x-request-id": "req_1",
        "openai-organization": "org-[REDACTED]",
        "x-ratelimit-remaining-requests": "9",
    }


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(chunks: AsyncIterator[bytes], cap: int | None) -> list[tuple[bytes, bytes]]:
    return [item async for item in split_events(chunks, cap)]


async def test_events_split_across_chunks_and_separators_straddling_them():
    events = await _collect(_chunks(b"data: a\r", b"\n\r", b"\ndata: b\n", b"\ndata: c"), 1024)
    assert events == [(b"data: a", b"\r\n\r\n"), (b"data: b", b"\n\n"), (b"data: c", b"")]


async def test_an_event_over_the_cap_raises_whether_or_not_its_blank_line_came():
    with pytest.raises(StreamEventTooLarge):
        await _collect(_chunks(b"data: " + b"x" * 2000 + b"\n\n"), 1024)
    with pytest.raises(StreamEventTooLarge):
        await _collect(_chunks(*[b"x" * 100] * 20), 1024)
    assert len(await _collect(_chunks(b"data: " + b"x" * 1000 + b"\n\n"), 1024)) == 1


async def test_a_long_event_costs_linear_time():
    """Small chunks of one long event: each byte is searched once, not once per chunk."""
    pieces = [b"y" * 512] * 8192  # 4 MiB in 512-byte chunks
    started = time.perf_counter()
    events = await _collect(_chunks(*pieces, b"\n\n"), 8 * 1024 * 1024)
    elapsed = time.perf_counter() - started
    assert len(events) == 1 and len(events[0][0]) == 4 * 1024 * 1024
    assert elapsed < 5  # quadratic rescans took minutes for this


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": 1, "completion_tokens": -2},
        {"prompt_tokens": "1", "completion_tokens": 2},
        {"prompt_tokens": True, "completion_tokens": 2},
        {"prompt_tokens": 1.0, "completion_tokens": 2},
        {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 6}},
        {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": -1}},
        {"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": "none"},
        {"prompt_tokens": 5},  # neither a completion count nor an embeddings total
        {"input_tokens": 5},
        {"input_tokens": 5, "output_tokens": None},
        {},
        [],
        "12",
    ],
)
def test_usage_that_cannot_be_trusted_is_no_usage(usage):
    assert parse_usage(usage) is None


def test_usage_that_can_be_trusted():
    assert parse_usage({"prompt_tokens": 5, "total_tokens": 5}) == Usage(5, 0, 0)  # embeddings
    assert parse_usage({"input_tokens": 5, "output_tokens": 0, "input_tokens_details": None}) == Usage(
        5, 0, 0
    )
    big = 10**30  # a huge but well-formed count is real spend: priced, not ignored
    assert parse_usage({"prompt_tokens": big, "completion_tokens": 0}) == Usage(big, 0, 0)


def _rate(unit: str, limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{unit}": str(limit),
        f"x-ratelimit-remaining-{unit}": str(remaining),
        f"x-ratelimit-reset-{unit}": reset,
    }


def test_the_tighter_triple_wins_per_unit_and_stays_whole():
    policy = {**_rate("requests", 2, 1, "30s"), **_rate("tokens", 10_000, 9_000, "6s")}
    upstream = {**_rate("requests", 10_000, 9_999, "6ms"), **_rate("tokens", 30_000, 100, "2m0s")}
    assert tighter(policy, upstream) == {
        **_rate("requests", 2, 1, "30s"),
        **_rate("tokens", 30_000, 100, "2m0s"),
    }


def test_incomplete_or_garbled_upstream_rate_headers_are_ignored():
    policy = _rate("requests", 2, 1, "30s")
    garbled = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "-5"}
    assert tighter(policy, garbled, {"x-ratelimit-remaining-tokens": "0"}) == policy


def test_last_seen_keeps_the_latest_upstream_headers():
    seen = LastSeen()
    seen.note({"content-type": "application/json"})
    assert seen.headers() == {}
    seen.note(_rate("tokens", 100, 50, "1s"))
    seen.note(_rate("tokens", 100, 70, "1s"))
    assert seen.headers() == _rate("tokens", 100, 70, "1s")


def test_the_buffer_budget_is_shared_and_fits_one_call_at_its_cap_alone():
    budget = BufferBudget(100)
    first, second = budget.hold(100), budget.hold(100)
    first.resize(70)
    with pytest.raises(BufferBudgetExceeded):
        second.resize(40)
    second.resize(30)
    first.resize(10)  # shrinking frees room
    second.resize(90)
    first.release()
    second.release()
    assert budget.held == 0
    alone = budget.hold(500)  # a call whose cap is above the budget still fits when alone
    alone.resize(500)
    with pytest.raises(BufferBudgetExceeded):
        budget.hold(500).resize(1)
    alone.release()
