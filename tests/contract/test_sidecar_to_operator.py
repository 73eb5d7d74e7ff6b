"""The one contract between the two programs: what a real sidecar writes into Redis is what the
operator reads back, and the status it builds from it is valid under the schema the CRD
publishes (fields the API server would prune are contract breaks too)."""

from __future__ import annotations

import asyncio
import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import yaml

from openai_policy_api import load_policy
from openai_policy_devkit.sidecar import running_sidecar, upstream_spec, write_policy
from openai_policy_operator.field_reports import StatusReader
from openai_policy_operator.status import ReadyState
from openai_policy_store import RedisStore, UsageCounts

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "openaipolicies.openaipolicy.dev.yaml"
HELLO = [{"role": "user", "content": "hello"}]


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's structural schema with unknown fields refused, as the API server would prune
    them: a field the operator writes that the CRD does not declare silently disappears."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                if not node.get("x-kubernetes-preserve-unknown-fields"):
                    node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return closed(version["schema"]["openAPIV3Schema"]["properties"]["status"])


async def test_what_the_sidecar_writes_is_what_the_operator_reports(tmp_path, fake_openai, redis) -> None:
    spec = upstream_spec(
        fake_openai,
        models={"allow": ["gpt-4o*"]},
        budget={"limits": [{"window": "day", "usd": 50}]},
    )
    path = write_policy(tmp_path / "policy.yaml", spec, name="contract", namespace="team")
    ref = ("team", "contract")
    async with running_sidecar(path, redis_url=redis.url, pod="contract-pod") as sidecar:
        async with openai.AsyncOpenAI(base_url=sidecar.base_url, api_key="sk-x", max_retries=0) as client:
            replies = [
                await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO) for _ in range(3)
            ]
            with pytest.raises(openai.PermissionDeniedError):
                await client.chat.completions.create(model="o3", messages=HELLO)

        store = RedisStore(redis.url)
        try:

            async def flushed() -> bool:
                return UsageCounts.from_fields(await store.read_usage(ref)).requests == 4

            for _ in range(100):  # the report loop flushes every 0.2 s here
                if await flushed():
                    break
                await asyncio.sleep(0.05)
            written = UsageCounts.from_fields(await store.read_usage(ref))
            document = yaml.safe_load(path.read_text())
            body = {**document, "metadata": {**document["metadata"], "uid": "u-1"}}
            report = await StatusReader(store, stale_after=30).report(
                body, load_policy(document), ReadyState(True, "Reconciled", "ok"), injected_pods=1
            )
        finally:
            await store.close()

    # The sidecar wrote what happened...
    assert written.requests == 4 and written.refused == {"model_not_allowed": 1}
    assert written.tokens_input == sum(r.usage.prompt_tokens for r in replies if r.usage)
    assert written.tokens_output == sum(r.usage.completion_tokens for r in replies if r.usage)
    assert written.cost_micros > 0
    # ...and the operator reports exactly that, in a status the CRD accepts whole.
    status = report.status
    jsonschema.validate(status, status_schema())
    usage = status["usage"]
    assert usage["requests"] == 4 and usage["blockedByReason"] == {"model_not_allowed": 1}
    assert (usage["tokensInput"], usage["tokensOutput"]) == (written.tokens_input, written.tokens_output)
    (day,) = [w for w in status["spend"] if w["window"] == "day"]
    assert Decimal(day["usd"]) * 1_000_000 == written.cost_micros
    assert Decimal(day["limitUsd"]) == 50
    assert status["pods"]["reporting"] == 1


def test_the_schema_check_is_not_vacuous() -> None:
    schema = status_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"usage": {"requests": 1, "notDeclared": 2}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"usage": {"requests": "many"}}, schema)
