"""spec.endpoints: deny by default on the normalised path, reads behind their own switch, and
suspend / an exhausted budget covering every surface that can spend (issue 12, part 1).

Each side door the issue lists is tried with the real SDK against a real in-process sidecar and
the fake upstream: refused with 403 endpoint_not_allowed, sent once (never retried), and never
reaching the upstream with the key.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yarl

from openai_policy_api import METERED_SURFACES, UNMETERED_SURFACES, EndpointsSpec
from openai_policy_devkit.sidecar import (
    async_client,
    quiesce,
    running_sidecar,
    total_requests,
    upstream_spec,
    write_policy,
)
from openai_policy_sidecar.pipeline import endpoint_gate, rate_and_budget
from openai_policy_sidecar.surfaces import ROUTES, AmbiguousPath, classify, normalise_path

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
ALL_SURFACES = {"allow": list(METERED_SURFACES), "allowUnmetered": list(UNMETERED_SURFACES)}


# -- normalisation and the table -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/v1//chat/completions",
        "//v1/chat/completions",
        "/v1/./chat/completions",
        "/v1/chat/completions/",
        "/v1/chat//completions//",
        "/v1/%63hat/completions",
    ],
)
def test_paths_normalise_to_their_plain_twin(raw: str) -> None:
    assert normalise_path(raw) == "/v1/chat/completions"


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/chat%2Fcompletions",
        "/v1/chat%2fcompletions",
        "/v1/chat%5Ccompletions",
        "/v1/chat/%2e%2e/completions",
        "/v1/files/../chat/completions",
        "/v1/chat%252Fcompletions",
        "/v1/chat/completions;jsessionid=1",
        "/v1/chat/completions\\x",
        "/v1/chat/comp%ffletions",
    ],
)
def test_ambiguous_paths_are_refused_not_guessed(raw: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalise_path(raw)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/chat/completions", ("chatCompletions", "call", "metered", "chat.completions")),
        ("GET", "/v1/chat/completions", ("chatCompletions", "read", "free", None)),
        ("GET", "/v1/chat/completions/chatcmpl-1/messages", ("chatCompletions", "read", "free", None)),
        ("DELETE", "/v1/responses/resp_1", ("responses", "manage", "free", None)),
        ("GET", "/v1/models/gpt-4o", ("models", "call", "free", None)),
        ("DELETE", "/v1/models/ft:gpt-4o-mini:org::x1", ("fineTuning", "manage", "free", None)),
        ("POST", "/v1/audio/transcriptions", ("audio", "call", "metered", "audio.transcriptions")),
        ("POST", "/v1/files", ("files", "call", "free", None)),
        ("GET", "/v1/files/file-1/content", ("files", "read", "free", None)),
        ("POST", "/v1/batches", ("batches", "call", "unmetered", None)),
        ("POST", "/v1/batches/batch_1/cancel", ("batches", "manage", "free", None)),
        ("POST", "/v1/fine_tuning/jobs", ("fineTuning", "call", "unmetered", None)),
        ("POST", "/v1/realtime/client_secrets", ("realtime", "call", "unmetered", None)),
        ("GET", "/v1/realtime", ("realtime", "call", "unmetered", None)),
        ("POST", "/v1/threads/t1/runs", ("assistants", "call", "unmetered", None)),
    ],
)
def test_the_surface_table(method: str, path: str, expected: tuple[Any, ...]) -> None:
    route = classify(method, path)
    assert route is not None
    assert (route.surface, route.access, route.cost, route.endpoint) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/organization/admin_api_keys"),
        ("GET", "/v1/organization/costs"),
        ("POST", "/v1/responses/compact"),  # spends, and nothing meters it
        ("PUT", "/v1/chat/completions"),
        ("POST", "/v1/Chat/completions"),
        ("POST", "/v1/chatkit/sessions"),
    ],
)
def test_paths_the_table_does_not_know_are_refused(method: str, path: str) -> None:
    assert classify(method, path) is None
    refusal = endpoint_gate.refusal_for(EndpointsSpec(), method, path, None)
    assert refusal is not None and (refusal.status, refusal.code) == (403, "endpoint_not_allowed")


def test_refusals_name_the_field_to_change() -> None:
    default = EndpointsSpec()

    def message(spec: EndpointsSpec, method: str, path: str) -> str | None:
        refusal = endpoint_gate.refusal_for(spec, method, path, classify(method, path))
        return None if refusal is None else refusal.message

    assert message(default, "POST", "/v1/responses") is None
    assert message(default, "GET", "/v1/models") is None
    assert "spec.endpoints.allowUnmetered if a soft budget" in (message(default, "POST", "/v1/batches") or "")
    assert "`files` to spec.endpoints.allow" in (message(default, "POST", "/v1/files") or "")
    assert "readStoredObjects" in (message(default, "GET", "/v1/chat/completions") or "")
    reads = EndpointsSpec(read_stored_objects=True)
    assert message(reads, "GET", "/v1/chat/completions") is None
    assert "spec.endpoints.allow " in (message(reads, "GET", "/v1/files") or "")  # still needs `files`


# -- through a running sidecar ------------------------------------------------------------------------


async def _raw(sidecar: Any, method: str, raw_path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """Send a request with its path exactly as written (no client-side normalisation)."""
    url = yarl.URL(sidecar.url + raw_path, encoded=True)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": "Bearer sk-placeholder", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else {}


def _policy(tmp_path: Path, fake: Any, **spec: Any) -> Path:
    return write_policy(tmp_path / "policy.yaml", upstream_spec(fake, **spec))


@pytest.mark.parametrize(
    "raw_path", ["/v1//chat/completions", "/v1/./chat/completions/", "/v1/%63hat/completions"]
)
async def test_path_tricks_are_metered_and_clamped_like_their_twin(tmp_path, fake_openai, raw_path) -> None:
    policy = _policy(tmp_path, fake_openai, requests={"maxOutputTokens": 20})
    async with running_sidecar(policy) as sidecar:
        status, _ = await _raw(sidecar, "POST", raw_path, {**CHAT, "max_tokens": 100_000})
        await quiesce(sidecar)
        spent = sum(w.spent_micros for w in await sidecar.source.snapshot.ledger.usage())
    assert status == 200
    sent = fake_openai.requests[-1]
    assert sent.path == "/v1/chat/completions"  # the normalised path is what is forwarded
    assert sent.json["max_tokens"] == 20  # the clamp applied
    assert spent > 0  # and it was metered


async def test_ambiguous_paths_get_a_400_and_reach_nothing(tmp_path, fake_openai) -> None:
    async with running_sidecar(_policy(tmp_path, fake_openai)) as sidecar:
        for raw_path in (
            "/v1/chat%2Fcompletions",
            "/v1/files/..%2Fchat/completions",
            "/v1/a/../chat/completions",
        ):
            status, body = await _raw(sidecar, "POST", raw_path, CHAT)
            assert (status, body["error"]["code"]) == (400, "invalid_path"), raw_path
    assert fake_openai.requests == []


async def test_the_issue_side_doors_are_closed_by_default(tmp_path, fake_openai) -> None:
    """Every call the issue saw forwarded with the real key: 403, once, and nothing upstream."""
    async with running_sidecar(_policy(tmp_path, fake_openai)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=3)
        calls = [
            lambda: client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", b"RIFF0000", "audio/wav")
            ),
            lambda: client.batches.create(
                input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h"
            ),
            lambda: client.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="batch"),
            lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1"),
            lambda: client.realtime.client_secrets.create(),
            lambda: client.chat.completions.list(),
            lambda: client.responses.retrieve("resp_123"),
            lambda: client.post("/organization/admin_api_keys", body={"name": "x"}, cast_to=object),
        ]
        for call in calls:
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await call()
            assert denied.value.code == "endpoint_not_allowed"
        await quiesce(sidecar)
        assert total_requests(sidecar) == len(calls)  # a 403 is not retried by the SDK
    assert fake_openai.requests == []


async def _exhaust(sidecar: Any) -> None:
    ledger = sidecar.source.snapshot.ledger
    await ledger.settle(rate_and_budget.unheld(ledger), 50_000)  # $0.05: the whole hour budget


BUDGET = {"limits": [{"window": "hour", "usd": 0.05}]}


async def test_an_exhausted_budget_refuses_every_spending_surface(tmp_path, fake_openai) -> None:
    endpoints = {**ALL_SURFACES, "readStoredObjects": True}
    async with running_sidecar(_policy(tmp_path, fake_openai, budget=BUDGET, endpoints=endpoints)) as sidecar:
        await _exhaust(sidecar)
        client = async_client(sidecar.base_url, max_retries=0)
        spending = [
            lambda: client.chat.completions.create(**CHAT),
            lambda: client.responses.create(model="gpt-4o-mini", input="hi"),
            lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
            lambda: client.embeddings.create(model="text-embedding-3-small", input="hi"),
            lambda: client.batches.create(
                input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h"
            ),
            lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1"),
            lambda: client.realtime.client_secrets.create(),
            lambda: client.vector_stores.create(name="kb"),
            lambda: client.containers.create(name="c"),
            lambda: client.post("/threads/thread_1/runs", body={"assistant_id": "asst_1"}, cast_to=object),
            lambda: client.images.generate(model="gpt-image-1", prompt="a cat"),
            lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="hi"),
        ]
        for call in spending:
            with pytest.raises((openai.RateLimitError, openai.PermissionDeniedError)) as refused:
                await call()
            # Images and audio are refused as unmetered until the pipeline meters them, then by budget.
            assert refused.value.code in ("budget_exceeded", "endpoint_not_allowed")
        assert fake_openai.requests == []
        # Reads and free calls spend nothing: they follow their switches, not the budget.
        with pytest.raises(openai.NotFoundError):  # forwarded; the fake answers 404 for an unknown id
            await client.responses.retrieve("resp_unknown")
        await client.models.list()
    forwarded = [(r.method, r.path) for r in fake_openai.requests]
    assert forwarded == [("GET", "/v1/responses/resp_unknown"), ("GET", "/v1/models")]


async def test_a_budget_exhausted_through_one_pod_closes_unmetered_surfaces_in_another(
    tmp_path, fake_openai, redis
) -> None:
    policy = _policy(tmp_path, fake_openai, budget=BUDGET, endpoints=ALL_SURFACES)
    async with (
        running_sidecar(policy, redis_url=redis.url, pod="a") as first,
        running_sidecar(policy, redis_url=redis.url, pod="b") as second,
    ):
        client = async_client(second.base_url, max_retries=0)
        with pytest.raises(openai.NotFoundError):  # forwarded: the fake holds no such file
            await client.batches.create(
                input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h"
            )
        await _exhaust(first)
        for call in (
            lambda: client.batches.create(
                input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h"
            ),
            lambda: client.realtime.client_secrets.create(),
        ):
            with pytest.raises(openai.RateLimitError) as refused:
                await call()
            assert refused.value.code == "budget_exceeded"
    # Only the call made before the budget ran out was forwarded.
    assert [r.path for r in fake_openai.requests] == ["/v1/batches"]


async def test_suspend_refuses_every_surface(tmp_path, fake_openai) -> None:
    endpoints = {**ALL_SURFACES, "readStoredObjects": True}
    async with running_sidecar(_policy(tmp_path, fake_openai, suspend=True, endpoints=endpoints)) as sidecar:
        for method, path in (
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/batches"),
            ("POST", "/v1/realtime/client_secrets"),
            ("GET", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("POST", "/v1/files"),
        ):
            status, body = await _raw(sidecar, method, path, CHAT if method == "POST" else None)
            assert (status, body["error"]["code"]) == (403, "policy_suspended"), path
    assert fake_openai.requests == []


async def test_dry_run_records_the_refusal_and_forwards(tmp_path, fake_openai) -> None:
    async with running_sidecar(_policy(tmp_path, fake_openai, mode="dryRun")) as sidecar:
        status, _ = await _raw(sidecar, "GET", "/v1/chat/completions")
    assert status == 404  # the fake's answer: the request went on
    assert [r.path for r in fake_openai.requests] == ["/v1/chat/completions"]


# -- the table against OpenAI's own list of paths ---------------------------------------------------

# Known and refused whatever the policy says: the organization admin API, and surfaces that spend
# in ways the sidecar cannot meter nor bound (ChatKit workflows, skills, custom voices, compaction).
REFUSED_PREFIXES = (
    "/organization/",
    "/projects/",
    "/chatkit/",
    "/skills",
    "/audio/voice",
    "/content_provenance_checks",
    "/responses/compact",
)


def test_every_openai_path_is_in_the_table_or_refused_on_purpose() -> None:
    import yaml

    from openai_policy_devkit.fake_openai_schema import openapi_path

    with openapi_path().open("rb") as handle:
        document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    unknown, surfaces = [], set()
    for path, operations in document["paths"].items():
        if "?" in path:
            continue  # the same path again, for a beta header
        for method in operations:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            route = classify(method.upper(), "/v1" + path.replace("{", "").replace("}", ""))
            if route is not None:
                surfaces.add(route.surface)
            elif not path.startswith(REFUSED_PREFIXES):
                unknown.append(f"{method.upper()} {path}")
    assert unknown == [], "paths of OpenAI's API the surfaces table does not place"
    # One vocabulary: the table's surfaces are exactly the names spec.endpoints accepts.
    assert surfaces == set(METERED_SURFACES) | set(UNMETERED_SURFACES)


def test_costs_match_the_policy_lists() -> None:
    """A route that spends unmetered is only ever on an allowUnmetered surface, and no metered
    surface has an unmetered route: listing a surface in `allow` keeps the budget hard."""
    for route in ROUTES:
        assert (route.cost == "unmetered") <= (route.surface in UNMETERED_SURFACES), route.label
        if route.surface in METERED_SURFACES:
            assert route.cost != "unmetered", route.label


async def test_unmetered_calls_count_against_the_rate_limit(tmp_path, fake_openai) -> None:
    spec = {"endpoints": ALL_SURFACES, "rateLimits": {"requestsPerMinute": 2}}
    async with running_sidecar(_policy(tmp_path, fake_openai, **spec)) as sidecar:
        client = async_client(sidecar.base_url, max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.NotFoundError):  # forwarded: the fake has no realtime API
                await client.realtime.client_secrets.create()
        with pytest.raises(openai.RateLimitError) as refused:
            await client.realtime.client_secrets.create()
        assert refused.value.code == "rate_limit_exceeded"
    assert len(fake_openai.requests) == 2
