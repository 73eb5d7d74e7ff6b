"""The proxy through the real `openai` SDK, against the fake upstream, sidecar in-process."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from openai_policy_devkit.sidecar import (
    TEST_KEY,
    async_client,
    quiesce,
    running_sidecar,
    settled_usage,
    total_requests,
    upstream_spec,
    write_policy,
)

HELLO = [{"role": "user", "content": "hello there"}]


def client_for(sidecar, max_retries: int = 3) -> openai.AsyncOpenAI:
    # A placeholder key, as in a governed pod: the sidecar replaces it.
    return async_client(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=max_retries)


async def test_pin_and_clamp_are_what_reaches_upstream(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            models={"allow": ["gpt-4o*"], "pin": {"gpt-4o": "gpt-4o-2024-08-06"}},
            requests={"maxOutputTokens": 40},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar)
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=1000)
        assert reply.model == "gpt-4o-2024-08-06"
        sent = fake_openai.requests[-1].json
        assert sent["model"] == "gpt-4o-2024-08-06" and sent["max_tokens"] == 40

        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_completion_tokens=10)
        sent = fake_openai.requests[-1].json
        assert sent["model"] == "gpt-4o-mini" and sent["max_completion_tokens"] == 10

        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert fake_openai.requests[-1].json["max_completion_tokens"] == 40  # set when absent

        await client.responses.create(model="gpt-4o", input="hi", max_output_tokens=5000)
        sent = fake_openai.requests[-1].json
        assert sent["model"] == "gpt-4o-2024-08-06" and sent["max_output_tokens"] == 40


async def test_credentials_are_the_sidecars_not_the_callers(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            upstream={"baseURL": fake_openai.base_url, "organization": "org-abc", "project": "proj-xyz"},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = async_client(
            base_url=sidecar.base_url, api_key="sk-caller", organization="org-caller", project="proj-caller"
        )
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers={"X-OpenAI-Policy-User": "alice"}
        )
        headers = fake_openai.requests[-1].headers
        assert headers["Authorization"] == f"Bearer {TEST_KEY}"
        assert headers["OpenAI-Organization"] == "org-abc" and headers["OpenAI-Project"] == "proj-xyz"
        assert "X-OpenAI-Policy-User" not in headers
        # OpenAI's request id comes back, and ours is added.
        assert reply.headers["x-request-id"].startswith("req_")
        assert reply.headers["x-openai-policy-request-id"].startswith("oaip-")


@pytest.mark.parametrize(
    ("spec", "call", "exception", "code"),
    [
        ({"models": {"allow": ["gpt-4o-mini"]}}, "chat", openai.PermissionDeniedError, "model_not_allowed"),
        ({"requests": {"maxInputTokens": 3}}, "chat", openai.BadRequestError, "input_too_large"),
        ({"suspend": True}, "chat", openai.PermissionDeniedError, "policy_suspended"),
        (
            {"budget": {"limits": [{"window": "day", "usd": 0.000001}]}},
            "chat",
            openai.RateLimitError,
            "budget_exceeded",
        ),
        (
            {"budget": {"limits": [{"window": "month", "usd": 0.000001}]}},
            "responses",
            openai.RateLimitError,
            "budget_exceeded",
        ),
        ({"models": {"allow": ["*"]}}, "unpriced", openai.PermissionDeniedError, "model_not_allowed"),
        ({"rateLimits": {"tokensPerMinute": 10}}, "chat", openai.RateLimitError, "rate_limit_exceeded"),
    ],
)
async def test_refusals_raise_the_sdks_exception_and_are_not_retried(
    tmp_path, fake_openai, spec, call, exception, code
):
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai, **spec))
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar, max_retries=3)
        with pytest.raises(exception) as raised:
            if call == "responses":
                await client.responses.create(model="gpt-4o", input="hello there")
            elif call == "unpriced":
                await client.chat.completions.create(model="my-finetune", messages=HELLO)
            else:
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.code == code
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert total_requests(sidecar) == 1  # the SDK did not retry
        assert fake_openai.requests == []  # nothing reached upstream


async def test_rate_limit_refusal_carries_retry_after_and_openai_headers(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, rateLimits={"perUser": {"requestsPerMinute": 2}})
    )
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar, max_retries=0)
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO, user="bob")
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO, user="bob")
        headers = raised.value.response.headers
        assert raised.value.code == "rate_limit_exceeded"
        assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-should-retry"] == "true"
        assert (
            headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
        )
        # Another user is not limited by bob's count.
        await client.chat.completions.create(model="gpt-4o", messages=HELLO, user="carol")


async def test_a_priced_override_lets_an_unknown_model_through(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, pricing={"models": {"my-finetune": {"inputPerMillion": 1, "outputPerMillion": 2}}}
        ),
    )
    async with running_sidecar(policy) as sidecar:
        reply = await client_for(sidecar).chat.completions.create(model="my-finetune", messages=HELLO)
        assert reply.model == "my-finetune"


async def test_dry_run_forwards_and_records_what_it_would_refuse(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            mode="dryRun",
            models={"allow": ["gpt-4o-mini"]},
            budget={"limits": [{"window": "day", "usd": 0.000001}]},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        reply = await client_for(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices[0].message.content
        assert len(fake_openai.requests) == 1
        usage = await settled_usage(sidecar, 1)
        assert usage["dryrun_refused:model_not_allowed"] == 1
        assert usage["dryrun_refused:budget_exceeded"] == 1
        assert usage["requests"] == 1 and usage["cost_micros"] > 0
        assert not any(name.startswith("refused:") for name in usage)
        # The spend of a dry-run call is still recorded against the budget.
        spent = sum(w.spent_micros for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day")
        assert spent == usage["cost_micros"]


async def test_budget_is_settled_to_the_real_cost(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, budget={"limits": [{"window": "hour", "usd": 10}]}, requests={"maxOutputTokens": 500}
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        await client.embeddings.create(model="text-embedding-3-small", input="some text to embed")
        snapshot = sidecar.source.snapshot
        expected = 0
        for request, usage in zip(fake_openai.requests, fake_openai.usage_log, strict=True):
            expected += snapshot.prices.cost_micros(
                request.json["model"],
                usage.get("prompt_tokens", 0),
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                usage.get("completion_tokens", 0),
            )
        await quiesce(sidecar)
        [hour] = [w for w in await snapshot.ledger.usage() if w.window == "hour"]
        assert hour.spent_micros == expected > 0
        assert hour.reserved_micros == 0


async def test_model_drift_is_counted(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, models={"pin": {"gpt-4o": "gpt-4o-2024-08-06"}})
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("model", model="gpt-4o-2024-11-20")
        await client_for(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        usage = await settled_usage(sidecar, 1)
        assert usage["model_drift"] == 1
        assert (
            b'openai_policy_model_drift_total{expected="gpt-4o-2024-08-06",reported="gpt-4o-2024-11-20"} 1.0'
            in sidecar.metrics.render()
        )


async def test_other_v1_paths_pass_through_with_model_checks(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, models={"allow": ["gpt-4o*", "omni-*"]})
    )
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar)
        models = await client.models.list()
        assert models.data
        await client.moderations.create(model="omni-moderation-latest", input="hello")
        assert fake_openai.requests[-1].path == "/v1/moderations"
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.moderations.create(model="text-moderation-stable", input="hello")
        assert raised.value.code == "model_not_allowed"
        assert total_requests(sidecar) == 3


async def _post(session, url, data, content_type="application/json"):
    async with session.post(url, data=data, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


async def test_malformed_requests_get_openai_shaped_errors_and_the_sidecar_keeps_serving(
    tmp_path, fake_openai
):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, requests={"maxBodyBytes": 4096})
    )
    async with running_sidecar(policy) as sidecar:
        url = sidecar.base_url + "/chat/completions"
        async with aiohttp.ClientSession() as session:
            cases = [
                (b"{", 400, "invalid_json"),
                (b"null", 400, "invalid_json"),
                (json.dumps({"model": ["gpt-4o"], "messages": HELLO}).encode(), 400, "invalid_type"),
                (
                    json.dumps({"model": "gpt-4o", "messages": HELLO, "max_tokens": -1}).encode(),
                    400,
                    "integer_below_min_value",
                ),
                (
                    json.dumps(
                        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 10_000}]}
                    ).encode(),
                    413,
                    "input_too_large",
                ),
            ]
            for data, status, code in cases:
                got_status, body = await _post(session, url, data)
                assert (got_status, body["error"]["code"]) == (status, code), body
                assert set(body["error"]) == {"message", "type", "param", "code"}
            # A body far larger than the limit, streamed: refused without reading it all.
            got_status, body = await _post(session, url, b"x" * 5_000_000)
            assert got_status == 413 and body["error"]["code"] == "input_too_large"
        client = client_for(sidecar)
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="gpt-4o", messages="not a list")  # type: ignore[arg-type]
        assert raised.value.code == "invalid_type" and raised.value.param == "messages"
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "y" * 9000}]
            )
        assert raised.value.status_code == 413
        assert fake_openai.requests == []
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert reply.choices


async def test_upstream_errors_pass_through_and_release_the_reservation(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(fake_openai, budget={"limits": [{"window": "day", "usd": 100}]}),
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault(
            "status",
            status=400,
            body={
                "error": {
                    "message": "bad thing",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "upstream_says_no",
                }
            },
        )
        with pytest.raises(openai.BadRequestError) as raised:
            await client_for(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.code == "upstream_says_no"
        await quiesce(sidecar)
        [day] = [w for w in await sidecar.source.snapshot.ledger.usage() if w.window == "day"]
        assert (day.spent_micros, day.reserved_micros) == (0, 0)


async def test_upstream_timeout_is_a_504(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml", upstream_spec(fake_openai, requests={"timeoutSeconds": 0.3})
    )
    async with running_sidecar(policy) as sidecar:
        fake_openai.add_fault("latency", seconds=2)
        with pytest.raises(openai.InternalServerError) as raised:
            await client_for(sidecar, max_retries=0).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"


async def test_in_flight_requests_finish_under_their_policy_across_a_reload(tmp_path, fake_openai):
    path = tmp_path / "policy.yaml"
    write_policy(path, upstream_spec(fake_openai))
    async with running_sidecar(path) as sidecar:
        client = client_for(sidecar)
        fake_openai.add_fault("latency", seconds=1.0)
        slow = asyncio.create_task(client.chat.completions.create(model="gpt-4o", messages=HELLO))
        await asyncio.sleep(0.3)
        write_policy(path, upstream_spec(fake_openai, suspend=True), generation=2)
        for _ in range(50):
            if sidecar.source.snapshot.generation == 2:
                break
            await asyncio.sleep(0.05)
        assert sidecar.source.snapshot.spec.suspend
        assert (await slow).choices  # started before the reload: completes
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)


async def test_requests_switch_to_the_fallback_above_downgrade_at_percent(tmp_path, fake_openai):
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai,
            models={"fallback": "gpt-4o-mini", "pin": {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}},
            budget={"limits": [{"window": "day", "usd": 1}], "alertAtPercent": 40, "downgradeAtPercent": 50},
            requests={"maxOutputTokens": 14},
            pricing={"models": {"gpt-4o": {"inputPerMillion": 0, "outputPerMillion": 50_000}}},
        ),
    )
    async with running_sidecar(policy) as sidecar:
        client = client_for(sidecar)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert fake_openai.requests[-1].json["model"] == "gpt-4o"
        await quiesce(sidecar)
        await sidecar.report_loop.tick()  # refreshes the fraction of the budget used (70% here)
        reply = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert fake_openai.requests[-1].json["model"] == "gpt-4o-mini-2024-07-18"
        assert reply.model == "gpt-4o-mini-2024-07-18"
