"""The operator's side of signed policy documents: what it publishes (real Redis), what it does with
a document it did not sign, keys and their rotation, and the sidecar shape the rules pin."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
import yaml

from openai_policy_operator.__main__ import parser, settings_from
from openai_policy_operator.admission_rules import GuardSettings, violations
from openai_policy_operator.config import InjectionSettings
from openai_policy_operator.reconcile import Reconciler
from openai_policy_operator.sidecar_injection import injection_patch
from openai_policy_operator.webhook import decide, target_of
from openai_policy_store import MemoryStore, RedisStore
from openai_policy_store.signing import (
    DocumentRejected,
    Signer,
    SigningKeyError,
    generate_seed_line,
    parse_public_keys,
    verify_document,
)
from tests.operator.admission_cases import BIG, SMALL, pod
from tests.operator.test_operator_reconcile import FakeKube, body

REF = ("apps", "p")


@pytest.fixture
def signer() -> Signer:
    return Signer.from_text(generate_seed_line())


async def test_a_forged_higher_generation_in_the_store_is_overwritten(redis, signer):
    store = RedisStore(redis.url)
    try:
        reconciler = Reconciler(FakeKube(), store, signer=signer)
        await reconciler.reconcile(body(), [], force=True)
        forged = {
            "apiVersion": "openaipolicy.dev/v1alpha1",
            "kind": "OpenAIPolicy",
            "metadata": {"name": "p", "namespace": "apps", "generation": 10**6},
            "spec": {"upstream": {"baseURL": "http://attacker.invalid/v1"}},
        }
        await store.publish_policy_document(REF, forged)
        # The status timer (force=False): the forged generation no longer makes the operator wait.
        await reconciler.reconcile(body(), [])
        stored = await store.get_policy_document(REF)
        facts = verify_document(stored, parse_public_keys(signer.public_keys))
        assert (facts.uid, facts.generation) == ("uid-p", 1)
        # Its own document of the same generation is left alone (no publish per tick).
        await reconciler.reconcile(body(), [])
        assert await store.get_policy_document(REF) == stored
    finally:
        await store.close()


async def test_a_re_created_policy_is_published_whatever_the_stored_generation(redis, signer):
    store = RedisStore(redis.url)
    try:
        reconciler = Reconciler(FakeKube(), store, signer=signer)
        await reconciler.reconcile(body(generation=9), [], force=True)
        reconciler.forget(REF)
        recreated = body(spec={"selector": {}, "suspend": True}, created="2026-11-22T11:00:00Z")
        recreated["metadata"]["uid"] = "uid-new"
        await reconciler.reconcile(recreated, [])  # even without force, as the timer would
        facts = verify_document(await store.get_policy_document(REF), parse_public_keys(signer.public_keys))
        assert (facts.uid, facts.generation) == ("uid-new", 1)
    finally:
        await store.close()


async def test_a_configmap_that_cannot_be_written_does_not_hold_back_publication(redis, signer):
    store = RedisStore(redis.url)
    try:
        # Right after a delete and re-create, the old ConfigMap still names the old controller: 422.
        outcome = await Reconciler(FakeKube(fail=422), store, signer=signer).reconcile(body(), [], force=True)
        assert outcome.ready.reason == "ConfigMapFailed"
        assert (await store.get_policy_document(REF))["metadata"]["uid"] == "uid-p"
    finally:
        await store.close()


async def test_the_configmap_carries_the_same_signed_document(signer):
    kube = FakeKube()
    await Reconciler(kube, MemoryStore(), signer=signer).reconcile(body(), [], force=True)
    document = yaml.safe_load(kube.applied[0]["data"]["policy.yaml"])
    facts = verify_document(document, parse_public_keys(signer.public_keys))
    assert facts.ref == REF and facts.created == "2026-11-22T10:00:00Z"
    seed = base64.b64encode(signer.keys[0].private_bytes_raw()).decode()
    assert seed not in json.dumps(kube.applied[0])  # a signature, nothing of the key


def test_rotation_several_keys_are_trusted_and_the_first_signs(tmp_path):
    old, new = generate_seed_line(), generate_seed_line()
    key_file = tmp_path / "signing.key"
    key_file.write_text(f"{new}\n{old}\n")
    settings = settings_from(parser().parse_args(["--signing-key-file", str(key_file)]))
    assert settings.signer is not None and settings.injection.policy_keys
    trusted = parse_public_keys(settings.injection.policy_keys)
    assert len(trusted) == 2
    document = settings.signer.sign(
        {
            "metadata": {
                "name": "p",
                "namespace": "apps",
                "uid": "u",
                "generation": 1,
                "creationTimestamp": "t",
                "signedAt": 1,
            }
        }
    )
    # A sidecar started before the rotation (old key only) does not accept the new signature,
    # which is why the new key is trusted everywhere before it signs.
    verify_document(document, trusted)
    with pytest.raises(DocumentRejected):
        verify_document(document, parse_public_keys(Signer.from_text(old).public_keys))
    # The operator refuses to sign with a key the sidecars are not given.
    keys_file = tmp_path / "policy-keys"
    keys_file.write_text(Signer.from_text(old).public_keys)
    with pytest.raises(SystemExit, match="not among the keys given to sidecars"):
        settings_from(
            parser().parse_args(["--signing-key-file", str(key_file), "--policy-keys-file", str(keys_file)])
        )


def test_an_unreadable_key_file_stops_the_operator_without_quoting_it(tmp_path):
    key_file = tmp_path / "signing.key"
    key_file.write_text("not-base64-but-a-secret!\n")
    with pytest.raises(SystemExit) as error:
        settings_from(parser().parse_args(["--signing-key-file", str(key_file)]))
    assert "not-base64-but-a-secret" not in str(error.value)
    with pytest.raises(SigningKeyError):
        parse_public_keys("")


# ---- the sidecar shape pins --policy-keys ----------------------------------------------------------

POLICIES = [
    {"metadata": {"name": "small", "namespace": "shop"}, "spec": SMALL},
    {"metadata": {"name": "big", "namespace": "shop"}, "spec": BIG},
]


def _injected(keys: str) -> tuple[dict[str, Any], GuardSettings]:
    settings = InjectionSettings(sidecar_image="sidecar:test", redis_url="redis://r:6379/0", policy_keys=keys)
    guard = GuardSettings("sidecar", "8780", "8781", "redis://r:6379/0", keys)
    body = pod("x")
    decision = decide(body, "shop", {"openaipolicy.dev/injection": "enabled"}, POLICIES, frozenset())
    assert decision.policy is not None
    body = jsonpatch.apply_patch(body, injection_patch(body, target_of(decision.policy), settings).patch)
    return body, guard


def _sidecar(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["initContainers"][0]


def test_the_injection_passes_and_any_other_key_is_refused(signer):
    body, guard = _injected(signer.public_keys)
    args = _sidecar(body)["args"]
    assert args[args.index("--policy-keys") + 1] == signer.public_keys
    assert violations(body, None, "CREATE", None, POLICIES, guard) == []

    other = copy.deepcopy(body)
    other_args = _sidecar(other)["args"]
    other_args[other_args.index("--policy-keys") + 1] = Signer.from_text(generate_seed_line()).public_keys
    assert violations(other, None, "CREATE", None, POLICIES, guard)[0].startswith(
        "openai-policy sidecar-shape:"
    )

    missing = copy.deepcopy(body)
    missing_args = _sidecar(missing)["args"]
    del missing_args[missing_args.index("--policy-keys") : missing_args.index("--policy-keys") + 2]
    assert violations(missing, None, "CREATE", None, POLICIES, guard)[0].startswith(
        "openai-policy sidecar-shape:"
    )

    # The namespace the sidecar checks documents against must be the pod's own.
    moved = copy.deepcopy(body)
    for env in _sidecar(moved)["env"]:
        if env["name"] == "POD_NAMESPACE":
            env["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.labels['team']"
    assert violations(moved, None, "CREATE", None, POLICIES, guard)[0].startswith(
        "openai-policy sidecar-shape:"
    )
