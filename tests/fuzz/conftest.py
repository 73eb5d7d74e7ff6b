"""A real sidecar process and the fake upstream, started once for the whole fuzz module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_policy_devkit.fake_openai import FakeOpenAI
from openai_policy_devkit.fake_openai_schema import openapi_path
from openai_policy_devkit.sidecar import TEST_KEY, SidecarProcess, upstream_spec, write_policy


@pytest.fixture(scope="module", autouse=True)
def openapi_document() -> Path:
    path = openapi_path()
    if not path.exists():
        pytest.skip(f"OpenAI's OpenAPI document is not at {path} (set OPENAI_OPENAPI_YAML)")
    return path


@pytest.fixture(scope="module")
def fuzz_upstream(tiktoken_cache_dir: Path) -> Iterator[FakeOpenAI]:
    with FakeOpenAI.in_thread(host="127.0.0.1", port=0) as fake:
        yield fake


@pytest.fixture(scope="module")
def fuzz_sidecar(
    tmp_path_factory: pytest.TempPathFactory, fuzz_upstream: FakeOpenAI
) -> Iterator[SidecarProcess]:
    """Every guardrail on (redact, flag, moderation), so that fuzzed bodies go through all of
    them; no rate limit or budget, so that nearly every well-formed request reaches the upstream."""
    directory = tmp_path_factory.mktemp("fuzz")
    key_file = directory / "api-key"
    key_file.write_text(TEST_KEY)
    spec = upstream_spec(
        fuzz_upstream,
        safety={
            "pii": {"action": "redact"},
            "promptInjection": {"action": "flag", "extraPatterns": [r"(a+)+$"]},
            "moderation": {"action": "flag"},
        },
        cache={"enabled": True},
        requests={"timeoutSeconds": 10},
        retries={"maxAttempts": 1},
    )
    with SidecarProcess(
        write_policy(directory / "policy.yaml", spec), directory / "sidecar.log", api_key_file=key_file
    ) as sidecar:
        yield sidecar
