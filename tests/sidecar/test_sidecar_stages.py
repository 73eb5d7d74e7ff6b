"""Unit tests of the sidecar's stages, each alone (no server, no upstream)."""

from __future__ import annotations

import json

import pytest

from openai_policy_api import load_policy
from openai_policy_devkit.sidecar import policy_document
from openai_policy_sidecar import refusals
from openai_policy_sidecar.pipeline.clamp import choices, clamp_output
from openai_policy_sidecar.pipeline.input_limit import check_input_tokens
from openai_policy_sidecar.pipeline.model_choice import choose_model, is_drift, should_downgrade
from openai_policy_sidecar.pipeline.parse import parse
from openai_policy_sidecar.reported_usage import Usage, parse_usage
from openai_policy_sidecar.streaming import StreamMeter, add_include_usage
from openai_policy_sidecar.upstream import downstream_headers, join_url, upstream_headers


def models_spec(**models):
    return load_policy(policy_document({"models": models})).spec.models


def test_allow_pin_and_fallback():
    models = models_spec(
        allow=["gpt-4o*"],
        pin={"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"},
        fallback="gpt-4o-mini",
    )
    choice = choose_model(models, "gpt-4o", downgrade=False)
    assert (choice.sent, choice.pinned, choice.downgraded) == ("gpt-4o-2024-08-06", True, False)
    choice = choose_model(models, "gpt-4o", downgrade=True)
    assert (choice.sent, choice.pinned, choice.downgraded) == ("gpt-4o-mini-2024-07-18", True, True)
    with pytest.raises(refusals.Refusal) as refused:
        choose_model(models, "gpt-4.1", downgrade=False)
    assert refused.value.code == "model_not_allowed" and refused.value.param == "model"


def test_downgrade_threshold():
    assert should_downgrade(0.8, 80, "gpt-4o-mini")
    assert not should_downgrade(0.79, 80, "gpt-4o-mini")
    assert not should_downgrade(0.99, None, "gpt-4o-mini")
    assert not should_downgrade(0.99, 80, None)


def test_drift():
    assert not is_drift("gpt-4o", "gpt-4o-2024-08-06")  # an unpinned alias comes back dated
    assert not is_drift("gpt-4o-2024-08-06", "gpt-4o-2024-08-06")
    assert is_drift("gpt-4o-2024-08-06", "gpt-4o-2024-11-20")
    assert not is_drift("gpt-4o", None)


@pytest.mark.parametrize(
    ("endpoint", "body", "limit", "expected_body", "cap"),
    [
        ("chat.completions", {}, 500, {"max_completion_tokens": 500}, 500),
        ("chat.completions", {"max_tokens": 900}, 500, {"max_tokens": 500}, 500),
        ("chat.completions", {"max_completion_tokens": 100}, 500, {"max_completion_tokens": 100}, 100),
        (
            "chat.completions",
            {"max_tokens": 900, "max_completion_tokens": 50},
            500,
            {"max_tokens": 500, "max_completion_tokens": 50},
            500,
        ),
        ("responses", {"max_output_tokens": 4000}, 300, {"max_output_tokens": 300}, 300),
        ("responses", {}, 300, {"max_output_tokens": 300}, 300),
        ("completions", {}, 64, {"max_tokens": 64}, 64),
        ("embeddings", {}, 64, {}, 0),
    ],
)
def test_clamp(endpoint, body, limit, expected_body, cap):
    assert clamp_output(endpoint, body, limit) == cap
    assert body == expected_body


def test_choices_multiply_the_worst_case():
    assert choices("chat.completions", {"n": 3}) == 3
    assert choices("completions", {"n": 2, "best_of": 5}) == 5
    assert choices("responses", {"n": 3}) == 1


def test_input_limit():
    assert check_input_tokens(100, None) is None
    assert check_input_tokens(100, 100) is None
    refusal = check_input_tokens(101, 100)
    assert refusal is not None and refusal.code == "input_too_large" and refusal.status == 400


def _parse(body, path="/v1/chat/completions", headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse("POST", path, "", headers or {"Content-Type": "application/json"}, raw)


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        ({"messages": []}, "model", "missing_required_parameter"),
        ({"model": 4, "messages": []}, "model", "invalid_type"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": "gpt-4o", "messages": [], "max_tokens": "10"}, "max_tokens", "invalid_type"),
        ({"model": "gpt-4o", "messages": [], "max_tokens": True}, "max_tokens", "invalid_type"),
        (
            {"model": "gpt-4o", "messages": [], "max_completion_tokens": 0},
            "max_completion_tokens",
            "integer_below_min_value",
        ),
        ({"model": "gpt-4o", "messages": [], "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "gpt-4o", "messages": [], "user": 7}, "user", "invalid_type"),
    ],
)
def test_malformed_bodies_are_refused_openai_style(raw, param, code):
    with pytest.raises(refusals.Refusal) as refused:
        _parse(raw)
    refusal = refused.value
    assert refusal.status == 400 and refusal.code == code and refusal.param == param
    body = refusal.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


def test_user_attribution_header_wins():
    parsed = _parse(
        {"model": "m", "messages": [], "user": "body-user"}, headers={"X-OpenAI-Policy-User": "hdr"}
    )
    assert parsed.user == "hdr"
    assert _parse({"model": "m", "messages": [], "user": "u", "safety_identifier": "s"}).user == "s"
    assert _parse({"model": "m", "messages": [], "user": "u"}).user == "u"


def test_passthrough_paths_never_fail_on_their_body():
    parsed = parse("POST", "/v1/moderations", "", {"Content-Type": "application/json"}, b"{broken")
    assert parsed.endpoint is None and parsed.body is None
    parsed = parse("GET", "/v1/models", "", {}, b"")
    assert parsed.endpoint is None and parsed.model is None


def test_upstream_headers_replace_credentials():
    incoming = [
        ("Authorization", "Bearer placeholder"),
        ("OpenAI-Project", "caller-project"),
        ("X-OpenAI-Policy-User", "alice"),
        ("Content-Type", "application/json"),
        ("Host", "x"),
        ("X-Stainless-Retry-Count", "0"),
    ]
    headers = upstream_headers(incoming, "sk-real", "org-1", "proj-1")
    assert headers["Authorization"] == "Bearer sk-real"
    assert headers.getall("Authorization") == ["Bearer sk-real"]
    assert headers["OpenAI-Organization"] == "org-1" and headers["OpenAI-Project"] == "proj-1"
    assert "X-OpenAI-Policy-User" not in headers and "Host" not in headers
    assert headers["X-Stainless-Retry-Count"] == "0"
    assert "OpenAI-Project" not in upstream_headers(incoming, "k", None, None)
    assert "content-encoding" not in downstream_headers({"Content-Encoding": "gzip", "x-request-id": "r"})


def test_join_url():
    assert (
        join_url("https://api.openai.com/v1", "/v1/chat/completions", "")
        == "https://api.openai.com/v1/chat/completions"
    )
    assert join_url("http://h:1/v1/", "/v1/models", "limit=2") == "http://h:1/v1/models?limit=2"


def test_usage_shapes():
    assert parse_usage(
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    ) == Usage(10, 4, 5)
    assert parse_usage(
        {"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 1}}
    ) == Usage(7, 1, 3)
    assert parse_usage({"prompt_tokens": 9, "total_tokens": 9}) == Usage(9, 0, 0)
    assert parse_usage(None) is None


def test_include_usage_is_added_only_when_missing():
    body = {"stream": True}
    assert add_include_usage("chat.completions", body) and body["stream_options"] == {"include_usage": True}
    body = {"stream_options": {"include_usage": True}}
    assert not add_include_usage("chat.completions", body)
    assert not add_include_usage("responses", {})


def test_stream_meter_strips_exactly_what_include_usage_added():
    meter = StreamMeter("chat.completions", strip_usage=True)
    first = b'data: {"id":"c","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}'
    assert (
        meter.transform(first)
        == b'data: {"id":"c","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"}}]}'
    )
    usage_chunk = (
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )
    assert meter.transform(usage_chunk) is None
    assert meter.transform(b"data: [DONE]") == b"data: [DONE]"
    assert meter.usage == Usage(3, 0, 1) and meter.model == "gpt-4o-2024-08-06" and meter.completed


def test_stream_meter_leaves_a_caller_requested_usage_alone():
    meter = StreamMeter("chat.completions", strip_usage=False)
    usage_chunk = (
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )
    assert meter.transform(usage_chunk) == usage_chunk
    assert meter.usage == Usage(3, 0, 1)


def test_stream_meter_reads_responses_usage():
    meter = StreamMeter("responses", strip_usage=False)
    created = b'event: response.created\ndata: {"type":"response.created","response":{"model":"gpt-4o","usage":null}}'
    done = (
        b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-4o",'
        b'"usage":{"input_tokens":5,"output_tokens":2,"input_tokens_details":{"cached_tokens":0}}}}'
    )
    assert meter.transform(created) == created and meter.transform(done) == done
    assert meter.usage == Usage(5, 0, 2) and meter.model == "gpt-4o"


def test_refusal_headers():
    refusal = refusals.budget_exceeded("day", "1.00", "0.99", "0.01")
    assert refusal.status == 429 and refusal.response_headers()["x-should-retry"] == "false"
    limited = refusals.rate_limit_exceeded("slow down", 1.2, {"x-ratelimit-limit-requests": "10"})
    headers = limited.response_headers()
    assert (
        headers["Retry-After"] == "2"
        and headers["retry-after-ms"] == "1200"
        and headers["x-should-retry"] == "true"
    )
