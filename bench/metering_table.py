"""The metering issue's table, measured again: for each surface, 100 concurrent requests with the
real `openai` SDK through a sidecar against a $0.05 hour limit (exhausted by the first calls that
fit), the calls accepted, the real bill (the fake upstream bills every call it answered from what
it really did, at the sidecar's bundled prices) and the spend the sidecar recorded.

    .venv/bin/python bench/metering_table.py [--row NAME ...] [--json bench/results/metering.json]

Each row is a fresh fake upstream and in-memory sidecar (a few seconds each); a row's setup calls
(an upload, a first response) count in both figures. Rows whose answer
reports no usage are charged their worst case, so recorded >= billed there; everywhere else
recorded == billed to the micro-dollar, and billed <= $0.05 on every row.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai

from openai_policy_devkit.fake_openai import FakeOpenAI
from openai_policy_devkit.sidecar import (
    async_client,
    close_all_async_clients,
    concurrently,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)

LIMIT_USD = 0.05
CONCURRENCY = 100
BIG = "word " * 40_000  # ~40k tokens of stored content
AUDIO = b"RIFF" + b"\x00" * 32_000  # two seconds at the fake's 16 kB/s
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_000
LATE_SECONDS = 2.0
SMALL_WINDOW = {"inputPerMillion": 0.05, "outputPerMillion": 0.4, "contextWindowTokens": 16_000}
ALLOW = ["chatCompletions", "responses", "images", "audio", "files", "conversations"]

Call = Callable[[openai.AsyncOpenAI, int], Awaitable[Any]]
Setup = Callable[[openai.AsyncOpenAI, FakeOpenAI], Awaitable[Call]]


@dataclass
class Row:
    name: str
    accepted: int
    refused: int  # budget_exceeded
    failed: int  # any other error the app saw (here: 504 upstream_timeout)
    billed_usd: float
    recorded_usd: float


def chat(model: str, **extra: Any) -> Setup:
    async def setup(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
        return lambda c, i: c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"q {i}"}], **extra
        )

    return setup


def responses(model: str, **extra: Any) -> Setup:
    async def setup(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
        return lambda c, i: c.responses.create(model=model, input=f"q {i}", **extra)

    return setup


def simple(call: Call) -> Setup:
    async def setup(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
        return call

    return setup


async def input_file(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
    upload = await client.files.create(file=("doc.txt", io.BytesIO(BIG.encode())), purpose="user_data")
    content = [{"type": "input_file", "file_id": upload.id}, {"type": "input_text", "text": "Sum up."}]
    return lambda c, i: c.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": content}])


async def history_seen(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
    first = await client.responses.create(model="gpt-4o-mini", input=BIG)
    return lambda c, i: c.responses.create(model="gpt-4o-mini", previous_response_id=first.id, input="more")


async def history_unseen(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
    made_elsewhere = fake.stored.add_response(40_000)
    return lambda c, i: c.responses.create(
        model="gpt-4o-mini", previous_response_id=made_elsewhere, input="more"
    )


async def answered_late(client: openai.AsyncOpenAI, fake: FakeOpenAI) -> Call:
    # Every call is answered (and billed) after LATE_SECONDS, past the policy's 1 s timeout.
    fake.add_fault("latency", times=None, seconds=LATE_SECONDS)
    return lambda c, i: c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


def wav() -> tuple[str, io.BytesIO, str]:
    return ("a.wav", io.BytesIO(AUDIO), "audio/wav")


# name -> (setup, extra policy spec, fake's auto tier)
ROWS: dict[str, tuple[Setup, dict[str, Any], str | None]] = {
    "input_file (stored file, ~40k tokens)": (input_file, {}, None),
    "previous_response_id the sidecar saw": (history_seen, {}, None),
    "previous_response_id it never saw": (history_unseen, {}, None),
    "web_search tool (gpt-5-nano, maxToolCalls 2)": (
        responses("gpt-5-nano", tools=[{"type": "web_search"}], service_tier="default"),
        {"requests": {"maxToolCalls": 2}},
        None,
    ),
    "web_search tool, policy prices a 16k context window": (
        responses("gpt-5-nano", tools=[{"type": "web_search"}], service_tier="default"),
        {"requests": {"maxToolCalls": 2}, "pricing": {"models": {"gpt-5-nano": SMALL_WINDOW}}},
        None,
    ),
    "answered after timeoutSeconds (504 to the app, billed upstream)": (
        answered_late,
        {"requests": {"timeoutSeconds": 1}, "retries": {"maxAttempts": 1}},
        None,
    ),
    "service_tier: priority (gpt-5)": (chat("gpt-5", service_tier="priority"), {}, None),
    "auto tier served at priority (gpt-5)": (responses("gpt-5"), {}, "priority"),
    "gpt-image-1 generate, low": (
        simple(lambda c, i: c.images.generate(model="gpt-image-1", prompt=f"a cat {i}", quality="low")),
        {},
        None,
    ),
    "gpt-image-1 edit (multipart)": (
        simple(
            lambda c, i: c.images.edit(
                model="gpt-image-1",
                image=("a.png", io.BytesIO(PNG), "image/png"),
                prompt="hat",
                quality="low",
            )
        ),
        {},
        None,
    ),
    "dall-e-3 generate": (
        simple(lambda c, i: c.images.generate(model="dall-e-3", prompt=f"a cat {i}")),
        {},
        None,
    ),
    "tts-1 speech": (
        simple(lambda c, i: c.audio.speech.create(model="tts-1", voice="alloy", input="Hello there. " * 20)),
        {},
        None,
    ),
    "whisper-1 transcription": (
        simple(lambda c, i: c.audio.transcriptions.create(model="whisper-1", file=wav())),
        {},
        None,
    ),
    "whisper-1 translation (no usage: worst case)": (
        simple(lambda c, i: c.audio.translations.create(model="whisper-1", file=wav())),
        {},
        None,
    ),
}


async def measure(name: str) -> Row:
    setup, extra, auto_tier = ROWS[name]
    with FakeOpenAI.in_thread() as fake, tempfile.TemporaryDirectory() as workdir:
        fake.reply_text = "word " * 400  # every reply is cut at maxOutputTokens
        if auto_tier:
            fake.auto_service_tier = auto_tier
        requests = {"maxOutputTokens": 50, **extra.get("requests", {})}
        spec = upstream_spec(
            fake,
            budget={"limits": [{"window": "hour", "usd": LIMIT_USD}]},
            requests=requests,
            endpoints={"allow": ALLOW},
            **{key: value for key, value in extra.items() if key != "requests"},
        )
        async with running_sidecar(write_policy(Path(workdir) / "policy.yaml", spec)) as sidecar:
            client = async_client(sidecar.base_url, max_retries=0)
            call = await setup(client, fake)

            outcomes = await concurrently(lambda index: call(client, index), CONCURRENCY)
            if fake.faults:  # calls answered late are billed when the fake answers them
                await asyncio.sleep(LATE_SECONDS)
            await quiesce(sidecar)
            usage = await sidecar.source.snapshot.ledger.usage()
            spent = next(w.spent_micros for w in usage if w.window == "hour")
            await close_all_async_clients()
        refused = outcomes.count("budget_exceeded")
        failed = len(outcomes) - outcomes.count("ok") - refused
        return Row(name, outcomes.count("ok"), refused, failed, fake.billed_micros() / 1e6, spent / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", help="one row's name (repeatable; default: every row)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    names = args.row or list(ROWS)
    rows = [asyncio.run(measure(name)) for name in names]
    head = f"| request ({CONCURRENCY} concurrent, ${LIMIT_USD} hour limit) | accepted | failed | real bill | recorded |"
    print(head + "\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.name} | {row.accepted} | {row.failed} | ${row.billed_usd:.6f} | ${row.recorded_usd:.6f} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    over = [r.name for r in rows if r.billed_usd > LIMIT_USD]
    if over:
        print(f"over the limit: {over}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
