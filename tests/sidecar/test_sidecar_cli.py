"""`openai-policy-sidecar` as a real process: start-up errors, hot reload of policy and key, and
the key never showing up in a log line, the metrics page, /readyz or an error body."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, wait_for, write_policy

HELLO = [{"role": "user", "content": "hello"}]
KEY_1 = "sk-proj-FIRSTKEY-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY_2 = "sk-proj-SECONDKEY-bbbbbbbbbbbbbbbbbbbbbbbb"


def sidecar_command() -> list[str]:
    script = Path(sys.executable).with_name("openai-policy-sidecar")
    return [str(script)] if script.exists() else [sys.executable, "-m", "openai_policy_sidecar"]


def client(sidecar: SidecarProcess, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=max_retries, timeout=60
    )


def last_key(fake) -> str:
    return fake.requests[-1].headers["Authorization"].removeprefix("Bearer ")


def test_an_invalid_policy_is_refused_at_start_naming_the_field(tmp_path):
    policy = write_policy(tmp_path / "policy.yaml", {"budget": {"limits": [{"window": "day", "usd": -1}]}})
    done = subprocess.run(
        [
            *sidecar_command(),
            "--policy",
            str(policy),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "spec.budget.limits[0].usd" in done.stderr


def test_missing_tokenizer_files_are_a_clear_start_up_error(tmp_path):
    policy = write_policy(tmp_path / "policy.yaml", {})
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty")}
    done = subprocess.run(
        [*sidecar_command(), "--policy", str(policy)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2 and "o200k_base is missing" in done.stderr


def test_without_a_key_the_sidecar_is_not_ready(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    with SidecarProcess(policy, tmp_path / "sidecar.log") as sidecar:
        status, detail = sidecar.readyz()
        assert status == 503 and detail["apiKey"]["loaded"] is False and detail["policy"]["loaded"] is True
        with pytest.raises(openai.InternalServerError) as raised:
            client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert raised.value.code == "api_key_missing"
        assert fake_openai.requests == []


def test_policy_and_key_hot_reload(tmp_path, fake_openai):
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY_1 + "\n")
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key_file) as sidecar:
        assert sidecar.readyz()[0] == 200
        client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert last_key(fake_openai) == KEY_1

        # Secret rotation: the file changes, the next requests use the new key. No restart.
        key_file.write_text(KEY_2)

        def uses_new_key() -> bool:
            client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
            return last_key(fake_openai) == KEY_2

        wait_for(uses_new_key, timeout=10, interval=0.2)

        # A policy change (the kill switch) takes effect without a restart.
        write_policy(policy, upstream_spec(fake_openai, suspend=True), generation=2)

        def suspended() -> bool:
            try:
                client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
            except openai.PermissionDeniedError as error:
                return error.code == "policy_suspended"
            return False

        wait_for(suspended, timeout=10, interval=0.2)

        # A broken update keeps the last good policy and says so: /readyz, a log line, a metric.
        policy.write_text(
            "apiVersion: openaipolicy.dev/v1alpha1\nkind: OpenAIPolicy\nmetadata: {name: demo}\n"
            "spec:\n  budget:\n    limits: [{window: fortnight, usd: 1}]\n"
        )
        detail = wait_for(lambda: (lambda d: d if d["policy"]["lastError"] else None)(sidecar.readyz()[1]))
        assert "spec.budget.limits[0].window" in detail["policy"]["lastError"]
        assert detail["policy"]["generation"] == 2 and detail["policy"]["suspended"] is True
        with pytest.raises(openai.PermissionDeniedError):
            client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)
        metrics = sidecar.get_admin("/metrics")[1]
        assert 'openai_policy_policy_reload_errors_total{source="file"} 1.0' in metrics
        assert any("policy update refused" in line.get("message", "") for line in sidecar.log_lines())

        # Fixed again: applied, the error clears.
        write_policy(policy, upstream_spec(fake_openai), generation=3)
        wait_for(lambda: sidecar.readyz()[1]["policy"]["generation"] == 3)
        assert sidecar.readyz()[1]["policy"]["lastError"] is None
        client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO)


def test_the_key_never_leaks(tmp_path, fake_openai):
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY_1)
    # One attempt: the sidecar would otherwise retry the scripted 500 and the caller
    # would never see the error body this test checks for the key.
    policy = write_policy(
        tmp_path / "policy.yaml",
        upstream_spec(
            fake_openai, models={"allow": ["gpt-4o*"]}, logging={"prompts": True}, retries={"maxAttempts": 1}
        ),
    )
    bodies: list[str] = []
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key_file) as sidecar:
        c = client(sidecar)
        # The caller even sends the key in its prompt: with logging.prompts on, the line is redacted.
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"my key is {KEY_1}"}]
        )
        for _chunk in c.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
            pass
        with pytest.raises(openai.PermissionDeniedError) as refused:
            c.chat.completions.create(model="o3", messages=HELLO)
        bodies.append(refused.value.response.text)
        # An upstream error that quotes the key (as some gateways do) is scrubbed.
        fake_openai.add_fault(
            "status",
            status=401,
            body={
                "error": {
                    "message": f"Incorrect API key provided: {KEY_1}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            c.chat.completions.create(model="gpt-4o", messages=HELLO)
        bodies.append(unauthorized.value.response.text)
        fake_openai.add_fault("status", status=500)
        with pytest.raises(openai.InternalServerError) as failed:
            c.chat.completions.create(model="gpt-4o", messages=HELLO)
        bodies.append(failed.value.response.text)
        # Rotate, so both the old and the new key must stay out of everything.
        key_file.write_text(KEY_2)
        wait_for(lambda: sidecar.readyz()[0] == 200 and "API key reloaded" in sidecar.log(), timeout=10)
        c.chat.completions.create(model="gpt-4o", messages=HELLO)
        metrics = sidecar.get_admin("/metrics")[1]
        readyz = sidecar.get_admin("/readyz")[1]
        healthz = sidecar.get_admin("/healthz")[1]
    log = sidecar.log()
    access = [line for line in sidecar.log_lines() if "request_id" in line]
    assert len(access) == 6
    assert any("[REDACTED]" in str(line.get("prompt")) for line in access)
    assert "openai_policy_requests_total" in metrics
    for key in (KEY_1, KEY_2, KEY_1[8:], KEY_2[8:]):
        for where, text in {
            "log": log,
            "metrics": metrics,
            "readyz": readyz,
            "healthz": healthz,
            **{f"body {i}": b for i, b in enumerate(bodies)},
        }.items():
            assert key not in text, f"the key leaked into {where}"


def test_access_log_line_fields(tmp_path, fake_openai):
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    with SidecarProcess(policy, tmp_path / "sidecar.log", env_key=KEY_1) as sidecar:
        client(sidecar).chat.completions.create(
            model="gpt-4o", messages=HELLO, user="alice", extra_headers={"X-OpenAI-Policy-Feature": "search"}
        )
        line = wait_for(lambda: next((x for x in sidecar.log_lines() if "request_id" in x), None))
    assert line["request_id"].startswith("oaip-") and line["openai_request_id"].startswith("req_")
    assert line["user"] == "alice" and line["feature"] == "search"
    assert line["tokens_input"] > 0 and line["tokens_output"] > 0 and float(line["cost_usd"]) > 0
    assert line["decision"] == "forwarded" and line["status"] == 200 and line["latency_ms"] > 0
    assert "prompt" not in line  # logging.prompts is off by default
