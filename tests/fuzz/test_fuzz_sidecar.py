"""Schema-driven fuzzing of a real sidecar process in front of the fake upstream.

Bodies are drawn from OpenAI's own OpenAPI schemas for the four metered endpoints (see
``openapi_bodies``), mostly well-typed, sometimes not, and now and then made hostile on the wire
(nesting past the limit, integers of thousands of digits, NaN, lone surrogates, truncation).
Whatever arrives, the sidecar must answer: never an internal error, every error OpenAI-shaped,
and /healthz still answering afterwards.

``make test`` runs a short, time-bounded pass; ``make fuzz`` a long one (FUZZ_EXAMPLES per
endpoint, FUZZ_SECONDS in all, FUZZ_KEEP_GOING to collect every failure rather than stop and
shrink the first). The figures (requests sent, statuses, failures) are printed and written to
FUZZ_REPORT when set.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_policy_devkit.fake_openai import FakeOpenAI
from openai_policy_devkit.sidecar import SidecarProcess

from .openapi_bodies import METERED, bodies

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))
# Record every failure and go on (``make fuzz``: the figures), instead of stopping at the first
# and shrinking it (the default: the smallest failing request is the useful report).
KEEP_GOING = bool(os.environ.get("FUZZ_KEEP_GOING"))
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "text-embedding-3-small", "gpt-3.5-turbo-instruct"]
# Hostile rewrites of a serialised body: each is something an app really sends by mistake.
MUTATIONS = ("none", "deep", "bigint", "nan", "surrogate", "truncate", "raw_surrogate_bytes")

STATS: collections.Counter[str] = collections.Counter()
FAILURES: dict[str, str] = {}  # a kind of failure -> one example of it


def mutate(raw: bytes, how: str, where: int) -> bytes:
    if how == "deep":
        return raw[:-1] + b',"metadata":' + b"[" * 3000 + b"]" * 3000 + b"}" if raw.endswith(b"}") else raw
    if how == "bigint":
        return raw[:-1] + b',"max_tokens":' + b"7" * 5000 + b"}" if raw.endswith(b"}") else raw
    if how == "nan":
        return raw[:-1] + b',"temperature":NaN}' if raw.endswith(b"}") else raw
    if how == "surrogate":
        quote = raw.find(b'"', where % max(len(raw), 1))
        return raw if quote < 0 else raw[: quote + 1] + b"\\ud800" + raw[quote + 1 :]
    if how == "raw_surrogate_bytes":
        quote = raw.find(b'"', where % max(len(raw), 1))
        return raw if quote < 0 else raw[: quote + 1] + b"\xed\xa0\x80" + raw[quote + 1 :]
    if how == "truncate":
        return raw[: where % max(len(raw), 1)]
    return raw


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, str]:
    path = draw(st.sampled_from(sorted(METERED)))
    body = draw(bodies(path))
    if isinstance(body, dict) and draw(st.integers(0, 3)):
        body["model"] = draw(st.sampled_from(MODELS))  # mostly a model that reaches the upstream
    raw = json.dumps(body).encode()
    how = draw(st.sampled_from(MUTATIONS)) if draw(st.integers(0, 4)) == 0 else "none"
    return path, mutate(raw, how, draw(st.integers(0, 1 << 20))), how


def send(port: int, path: str, raw: bytes) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, raw, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        connection.close()


def check(status: int, payload: bytes, content_type: str) -> str | None:
    """What is wrong with this answer, or None."""
    if status >= 400:
        try:
            error = json.loads(payload)["error"]
        except (ValueError, KeyError, TypeError):
            if status >= 500:
                # Relayed as the upstream sent it (the fake upstream's own crash page): the
                # sidecar's internal errors are caught below and in its log.
                STATS["upstream 5xx relayed"] += 1
                return None
            return f"{status} without an OpenAI-shaped error body"
        if not isinstance(error, dict) or not error.get("type"):
            return f"{status} error without a type"
        if error.get("code") == "internal_error" or (status == 500 and not error.get("code")):
            return f"internal error: {error.get('message')}"
    elif "event-stream" not in content_type:
        try:
            json.loads(payload)
        except ValueError:
            return f"{status} with a body that is not JSON"
    return None


def distinct_errors(sidecar: SidecarProcess) -> dict[str, int]:
    """The sidecar's logged errors, grouped by exception and the line of ours that raised it."""
    found: collections.Counter[str] = collections.Counter()
    for line in sidecar.log_lines():
        if line.get("level") != "error":
            continue
        trace = str(line.get("exception") or line.get("message"))
        ours = [frame.strip() for frame in trace.splitlines() if "openai_policy_sidecar" in frame]
        where = ours[-1].split("openai_policy_sidecar/")[-1] if ours else ""
        error = re.sub(r"position \d+", "position N", trace.strip().splitlines()[-1])[:160]
        found[f"{error} at {where}"] += 1
    return dict(found)


@pytest.mark.timeout(SECONDS * 4 + 120)
def test_fuzzed_requests_never_get_an_internal_error(
    fuzz_sidecar: SidecarProcess, fuzz_upstream: FakeOpenAI
) -> None:
    port = fuzz_sidecar.port
    deadline = time.monotonic() + SECONDS  # from now: collection imported this module long ago

    @settings(
        max_examples=EXAMPLES * len(METERED),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def one(request: tuple[str, bytes, str]) -> None:
        if time.monotonic() > deadline:
            return  # the time budget is spent: the remaining examples are skipped cheaply
        path, raw, how = request
        status, payload, content_type = send(port, path, raw)
        STATS["sent"] += 1
        if STATS["sent"] % 500 == 0:
            fuzz_upstream.requests.clear()  # the fake keeps every request it saw; none is needed
        STATS[f"status {status}"] += 1
        STATS[f"mutation {how}"] += 1
        if status >= 400:
            try:
                STATS[f"code {json.loads(payload)['error']['code']}"] += 1
            except (ValueError, KeyError, TypeError):
                pass
        problem = check(status, payload, content_type)
        if problem is not None:
            kind = problem.split(":")[0]
            FAILURES.setdefault(kind, f"{path} {raw[:300]!r} -> {problem}"[:800])
            STATS["failed"] += 1
            if not KEEP_GOING:
                raise AssertionError(problem)

    try:
        one()
    finally:
        report = {
            "requests": STATS["sent"],
            "statuses": dict(sorted(STATS.items())),
            "failures": FAILURES,
            "distinct_errors_logged": distinct_errors(fuzz_sidecar),
        }
        print("\nfuzz:", json.dumps(report, indent=1))
        if os.environ.get("FUZZ_REPORT"):
            with open(os.environ["FUZZ_REPORT"], "w", encoding="utf-8") as out:
                json.dump(report, out, indent=1)
    assert not FAILURES, FAILURES
    assert fuzz_sidecar.get_admin("/healthz")[0] == 200
    assert fuzz_sidecar.process.poll() is None, "the sidecar died"
    assert not distinct_errors(fuzz_sidecar)
    assert STATS["sent"] >= min(50, EXAMPLES), STATS
