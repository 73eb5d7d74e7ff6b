"""The signed-document contract both programs rely on: what a signature covers and what it does not."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from openai_policy_store.signing import (
    DocumentRejected,
    SignedFacts,
    Signer,
    SigningKeyError,
    generate_seed_line,
    parse_public_keys,
    unsigned,
    verify_document,
)


def document(**metadata: object) -> dict[str, object]:
    meta = {
        "name": "p",
        "namespace": "apps",
        "generation": 3,
        "uid": "u-1",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "signedAt": 5,
        **metadata,
    }
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": meta,
        "spec": {
            "budget": {"limits": [{"window": "day", "usd": 0.05}]},
            "upstream": {"baseURL": "https://x/v1"},
        },
    }


@pytest.fixture
def signer() -> Signer:
    return Signer.from_text(generate_seed_line())


def test_a_signature_survives_json_and_yaml_transport(signer):
    signed = signer.sign(document())
    trusted = parse_public_keys(signer.public_keys)
    for carried in (json.loads(json.dumps(signed)), yaml.safe_load(yaml.safe_dump(signed, sort_keys=False))):
        facts = verify_document(carried, trusted)
        assert facts == SignedFacts("apps", "p", "u-1", 3, "2026-01-01T00:00:00Z", 5, facts.key_id)
    assert "signature" not in unsigned(signed)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["spec"]["upstream"].update(baseURL="https://attacker/v1"),
        lambda d: d["metadata"].update(generation=4),
        lambda d: d["metadata"].update(uid="u-2"),
        lambda d: d["metadata"].update(namespace="other"),
        lambda d: d["spec"]["budget"]["limits"][0].update(usd=5000),
        lambda d: d.update(extra=True),
    ],
    ids=["upstream", "generation", "uid", "namespace", "budget", "added-field"],
)
def test_any_change_breaks_the_signature(signer, tamper):
    signed = signer.sign(document())
    tamper(signed)
    with pytest.raises(DocumentRejected) as error:
        verify_document(signed, parse_public_keys(signer.public_keys))
    assert error.value.reason == "bad_signature"


def test_unsigned_unknown_key_and_malformed(signer):
    trusted = parse_public_keys(signer.public_keys)
    cases = {
        "unsigned": document(),
        "unknown_key": Signer.from_text(generate_seed_line()).sign(document()),
        "malformed": [1, 2],
    }
    for reason, value in cases.items():
        with pytest.raises(DocumentRejected) as error:
            verify_document(value, trusted)
        assert error.value.reason == reason
    incomplete = signer.sign({"metadata": {"name": "p", "namespace": "apps", "generation": 1}})
    with pytest.raises(DocumentRejected) as error:
        verify_document(incomplete, trusted)
    assert error.value.reason == "malformed"


def test_supersedes_orders_generations_then_incarnations(signer):
    trusted = parse_public_keys(signer.public_keys)

    def facts(**metadata: object) -> SignedFacts:
        return verify_document(signer.sign(document(**metadata)), trusted)

    current = facts()
    assert facts(generation=4).supersedes(current)
    assert not facts(generation=3).supersedes(current)
    assert not facts(generation=2).supersedes(current)
    recreated = facts(uid="u-2", generation=1, creationTimestamp="2026-01-01T00:01:00Z", signedAt=9)
    assert recreated.supersedes(current)
    assert not current.supersedes(recreated)  # a replay of the old incarnation, whatever its generation
    assert not facts(generation=99).supersedes(recreated)
    # Re-created within the same second: the later signature wins.
    same_second = facts(uid="u-3", generation=1, creationTimestamp="2026-01-01T00:01:00Z", signedAt=10)
    assert same_second.supersedes(recreated)


def test_keys_pem_and_seed_lines_and_certificates(signer):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "policy-signing")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)  # Ed25519 certificates take no separate hash
    )
    cert_item = base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()
    pem_signer = Signer.from_text(pem + "\n" + generate_seed_line())  # as helm writes it, then an old key
    trusted = parse_public_keys(f"{cert_item},{signer.public_keys}")
    pem_signer.check_trusted_by(trusted)
    verify_document(pem_signer.sign(document()), trusted)
    with pytest.raises(SigningKeyError):
        signer.check_trusted_by(parse_public_keys(cert_item))
    for bad in ("%%%", base64.b64encode(b"short").decode()):
        with pytest.raises(SigningKeyError) as error:
            parse_public_keys(bad)
        assert bad not in str(error.value)
