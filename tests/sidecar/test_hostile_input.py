"""Hostile and malformed input against a real sidecar (in-process) and the fake upstream.

Each case is what a careless or malicious app sends; the sidecar must answer it with an
OpenAI-shaped 400 naming the parameter (or count a vanished client as 499), never a 500, and
keep answering everyone else meanwhile. Raw aiohttp and sockets send what no SDK would; the
`openai` SDK is used where an app's own error handling is what matters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from typing import Any

import aiohttp
import openai
import pytest

from openai_policy_devkit.sidecar import (
    admin_get,
    async_client,
    quiesce,
    running_sidecar,
    upstream_spec,
    write_policy,
)

HELLO = [{"role": "user", "content": "hello there"}]


def requests_by(sidecar: Any, label: str) -> dict[str, float]:
    """openai_policy_requests_total summed by one label."""
    out: dict[str, float] = {}
    for metric in sidecar.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                out[key] = out.get(key, 0) + sample.value
    return out


async def post_raw(sidecar: Any, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sidecar.url + path, data=body, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status, await response.json(content_type=None)


@pytest.fixture
async def sidecar(tmp_path, fake_openai):
    spec = upstream_spec(
        fake_openai,
        models={"allow": ["gpt-4o*"]},
        safety={"moderation": {"action": "flag"}, "pii": {"action": "redact"}},
    )
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as running:
        yield running


def nested(depth: int) -> bytes:
    return b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"metadata":' + (
        b"[" * depth + b"]" * depth + b"}"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # Deeper than the interpreter's recursion limit: json.loads itself gave up (was a 500).
        (nested(5000), "metadata"),
        # Decodable but deeper than any OpenAI request: later stages would re-encode and walk it.
        (nested(300), "metadata"),
        # An integer Python refuses to convert (4,300 digits and more: was a 500).
        (b'{"model":"gpt-4o","messages":[],"max_tokens":' + b"9" * 5000 + b"}", "max_tokens"),
        (b'{"model":"gpt-4o","messages":[{"role":"user","content":"x","n":' + b"1" * 4301 + b"}]}", None),
        # NaN and Infinity are not JSON; Python's decoder takes them (the cache key then raised).
        (b'{"model":"gpt-4o","messages":[],"temperature":NaN}', "temperature"),
        (b'{"model":"gpt-4o","messages":[],"top_p":-Infinity}', "top_p"),
        # A lone surrogate, escaped or as raw bytes: re-encoding the body failed (was a 500).
        (b'{"model":"gpt-4o","messages":[{"role":"user","content":"a\\ud800b"}]}', "messages[0].content"),
        (b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"\\udfff"}', "user"),
        (
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"a\xed\xa0\x80"}]}',
            "messages[0].content",
        ),
        (b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi","\\ud800":1}]}', "messages[0].\ud800"),
    ],
    ids=[
        "nested-5000",
        "nested-300",
        "int-5000-digits",
        "int-4301-digits-deep",
        "nan",
        "infinity",
        "surrogate-content",
        "surrogate-user",
        "surrogate-raw-bytes",
        "surrogate-key",
    ],
)
async def test_malformed_json_is_a_400_naming_the_parameter(sidecar, fake_openai, body, param):
    status, answer = await post_raw(sidecar, "/v1/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error"
    if param is None:
        assert error["param"] and error["param"].startswith("messages[0]")
    elif param.endswith("\ud800"):
        assert error["param"].startswith("messages[0].")  # the key itself is the culprit
    else:
        assert error["param"] == param
    assert not fake_openai.requests  # nothing malformed reaches the upstream
    await quiesce(sidecar)
    assert "500" not in requests_by(sidecar, "status")
    assert (await admin_get(sidecar, "/healthz"))[0] == 200


async def test_passthrough_json_the_sidecar_cannot_handle_is_refused_not_forwarded(sidecar, fake_openai):
    # A lone surrogate must not be a way around the model allow-list on pass-through paths.
    status, answer = await post_raw(
        sidecar, "/v1/images/generations", b'{"model":"dall-e-3","prompt":"\\ud800"}'
    )
    assert status == 400 and answer["error"]["param"] == "prompt"
    status, answer = await post_raw(sidecar, "/v1/images/generations", nested(3000))
    assert status == 400 and answer["error"]["param"] == "metadata"
    assert not fake_openai.requests


async def test_a_lone_surrogate_from_a_plain_json_dumps_client_names_the_item(sidecar):
    # json.dumps' default (ensure_ascii) is how most HTTP clients send such a string: escaped.
    # (The openai SDK itself refuses to encode one, so this is raw.)
    body = json.dumps({"model": "gpt-4o", "input": ["fine", "bad \udc00"]}).encode()
    status, answer = await post_raw(sidecar, "/v1/embeddings", body)
    assert status == 400 and answer["error"]["param"] == "input[1]"


async def test_valid_surrogate_pairs_and_escaped_backslashes_still_pass(sidecar, fake_openai):
    client = async_client(sidecar.base_url, max_retries=0)
    # An emoji (a valid pair when escaped) and a literal backslash-u text are ordinary input.
    text = json.loads('"smile \\ud83d\\ude00 and a path C:\\\\ud800"')
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
    assert fake_openai.requests[-1].json["messages"][0]["content"] == text


async def send_partial_body(port: int, path: str = "/v1/chat/completions") -> None:
    """Announce a 10 kB body, send 20 bytes of it, and hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 10000\r\n\r\n".encode()
        + b'{"model":"gpt-4o","m'
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()


async def test_a_client_gone_before_its_body_is_a_499_not_an_internal_error(sidecar, caplog):
    caplog.set_level(logging.INFO, logger="openai_policy_sidecar.access")
    for _ in range(3):
        await send_partial_body(sidecar.proxy_address[1])
    await asyncio.sleep(0.2)
    await quiesce(sidecar)
    statuses = requests_by(sidecar, "status")
    assert statuses.get("499") == 3, statuses
    assert "500" not in statuses
    assert requests_by(sidecar, "reason").get("client_disconnected") == 3
    assert not [r for r in caplog.records if r.levelname == "ERROR"], "logged as an internal error"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "openai_policy_sidecar.access"]
    assert [line["status"] for line in lines] == [499, 499, 499]
    assert {line["decision"] for line in lines} == {"client_disconnected"}


async def test_invented_model_names_do_not_grow_the_metrics(tmp_path, fake_openai):
    # Every model is allowed (the default "*"): a pass-through path takes any string as model.
    spec = upstream_spec(fake_openai, models={"pin": {"gpt-4o": "gpt-4o-2024-08-06"}})
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        await client.moderations.create(model="omni-moderation-latest", input="hi")
        await quiesce(sidecar)
        before = len((await admin_get(sidecar, "/metrics"))[1])
        semaphore = asyncio.Semaphore(32)

        async def invent(i: int) -> None:
            async with semaphore:
                await client.moderations.create(model=f"invented-{i}", input="hi")

        await asyncio.gather(*(invent(i) for i in range(5000)))
        # Unknown paths are refused (spec.endpoints) before any model is read: one more request
        # each, all under the empty model label, never one more label.
        async with aiohttp.ClientSession() as session:
            for i in range(50):
                async with session.post(f"{sidecar.url}/v1/made-up-{i}", json={"model": f"x{i}"}) as r:
                    await r.read()
        await quiesce(sidecar)
        status, text = await admin_get(sidecar, "/metrics")
        assert status == 200
        assert len(text) - before < 2_000, f"/metrics grew from {before} to {len(text)} bytes"
        models = set(requests_by(sidecar, "model"))
        assert models == {"gpt-4o-2024-08-06", "omni-moderation-latest", "other", ""}, models
        assert sum(requests_by(sidecar, "model").values()) == 5052


class HealthzProbe:
    """/healthz polled every 20 ms from another thread, as the kubelet would: each poll's latency.

    From a thread, not the sidecar's own loop: time spent blocked in the loop then shows up in
    the probe's latency instead of hiding in the poller's own sleep."""

    def __init__(self, admin_url: str) -> None:
        self.url = admin_url + "/healthz"
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    response.read()
            except OSError as error:
                self.failures.append(f"{error!r} after {time.monotonic() - started:.2f}s")
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(0.02)

    async def __aenter__(self) -> HealthzProbe:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Joined off the loop: a probe in flight needs the (in-process) sidecar's loop to finish.
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 60)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


async def test_a_catastrophic_extra_pattern_cannot_stall_the_event_loop(tmp_path, fake_openai):
    # (a+)+$ against a run of a's and a "!" backtracks exponentially on a backtracking engine:
    # 25 a's held Python's re (and so every request of the pod, /healthz included) for seconds.
    spec = upstream_spec(
        fake_openai, safety={"promptInjection": {"action": "block", "extraPatterns": [r"(a+)+$"]}}
    )
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        hostile = [{"role": "user", "content": "a" * 25 + "!"}]
        async with HealthzProbe(sidecar.admin_url) as probe:
            await asyncio.sleep(0.1)
            answers = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o", messages=hostile) for _ in range(2))
            )
            await asyncio.sleep(0.1)
        assert all(answer.choices for answer in answers)  # no match: forwarded
        # The bound is generous (10x the 100 ms target) because this asserts that the loop is
        # never blocked by a match, not how fast a loaded test machine answers.
        assert not probe.failures and probe.worst < 1.0, f"/healthz took {probe.worst:.2f}s: {probe.failures}"
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "aaaa"}]
            )
        assert raised.value.code == "prompt_injection_detected"  # the pattern still works


# Adversarial inputs for the built-in PII patterns: long runs of what each pattern's repeated
# parts accept, with the ending that makes a backtracking engine retry (none matches in full).
PII_ADVERSARIES = {
    "digits": lambda n: "1" * n,
    "digits-spaced": lambda n: "1 " * (n // 2),
    "plus-digits": lambda n: "+" + "1" * n,
    "plus-groups": lambda n: "+1" + " (1)" * (n // 4),
    "email-local": lambda n: "a" * n + "@",
    "email-domain": lambda n: "a@" + "a." * (n // 2),
    "dotted": lambda n: "1." * (n // 2),
    "colons": lambda n: "1:" * (n // 2),
    "api-key": lambda n: "sk-" + "a-" * (n // 2),
    "parentheses": lambda n: "(" * n,
    "phone-like": lambda n: "(212) 555-" * (n // 10),
}


def fastest(function: Any, argument: str, tries: int = 3) -> float:
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        function(argument)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("family", sorted(PII_ADVERSARIES))
def test_builtin_pii_patterns_take_time_linear_in_the_text(family):
    # The PII patterns are fixed and use lookaround (which RE2 cannot run), so they stay on
    # Python's engine; this guards them against backtracking. A ratio, not a duration: eight
    # times the text may take at most ~20 times as long (linear is 8, quadratic 64).
    from openai_policy_sidecar.guardrails import find_pii

    make = PII_ADVERSARIES[family]
    small, large = fastest(find_pii, make(4_000)), fastest(find_pii, make(32_000))
    assert large < max(small, 1e-4) * 20, f"{family}: {small * 1000:.1f} ms -> {large * 1000:.1f} ms"
