"""Every shipped policy (examples/ and the README's first policy) lets an app use the models its
comment says it may ask for, through the real SDK and a real sidecar: the allow-list is matched
after pinning, so an alias pinned to an allowed dated id works."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from openai_policy_devkit.sidecar import (
    async_client,
    running_sidecar,
)

ROOT = Path(__file__).resolve().parents[2]
MAY_ASK = re.compile(r"^# Apps may ask for: (.*)$", re.MULTILINE)
README_POLICY = re.compile(r"apply -f - <<'EOF'\n(.*?)\nEOF\n", re.DOTALL)


def shipped_policies() -> list[tuple[str, str]]:
    found = [(p.name, p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    readme = README_POLICY.findall((ROOT / "README.md").read_text())
    assert readme, "the README's first policy (a kubectl apply heredoc) was not found"
    found += [(f"README.md#{i}", text) for i, text in enumerate(readme)]
    return found


def models_it_names(text: str) -> list[str]:
    (line,) = MAY_ASK.findall(text)
    if line.startswith("nothing"):
        return []
    return [m.strip() for m in line.split(",") if m.strip()]


def test_every_shipped_policy_says_what_an_app_may_ask_for() -> None:
    for name, text in shipped_policies():
        assert len(MAY_ASK.findall(text)) == 1, f"{name}: add one '# Apps may ask for: ...' line"


@pytest.mark.parametrize(("name", "text"), shipped_policies(), ids=[n for n, _ in shipped_policies()])
async def test_the_models_a_policy_names_are_usable(tmp_path, fake_openai, name: str, text: str) -> None:
    document: dict[str, Any] = yaml.safe_load(text)
    spec = document["spec"]
    # What is under test is the model rule: point the policy at the fake, and judge it in
    # enforce mode (a dry-run policy would forward a refused model anyway).
    spec["upstream"] = {**spec.get("upstream", {}), "baseURL": fake_openai.base_url}
    spec["mode"] = "enforce"
    document["metadata"].setdefault("namespace", "default")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    models = models_it_names(text)
    pin = spec.get("models", {}).get("pin", {})
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        if not models:
            with pytest.raises(openai.APIStatusError) as refused:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
            assert refused.value.code == "policy_suspended"
            return
        for model in models:
            if model.startswith("text-embedding"):
                await client.embeddings.create(model=model, input="hello")
            else:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )
            assert fake_openai.requests[-1].json["model"] == pin.get(model, model), f"{name}: {model}"


async def test_the_allow_list_is_matched_after_pinning(tmp_path, fake_openai) -> None:
    """Only dated ids allowed, an alias pinned to one: the alias works, an unpinned alias does not."""
    document = {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "upstream": {"baseURL": fake_openai.base_url},
            "models": {"allow": ["gpt-4o-2024-08-06"], "pin": {"gpt-4o": "gpt-4o-2024-08-06"}},
        },
    }
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    async with running_sidecar(policy) as sidecar:
        client = async_client(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == "gpt-4o-2024-08-06"
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.code == "model_not_allowed"
