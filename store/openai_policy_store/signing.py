"""Signed policy documents: the contract between the operator (signs) and the sidecars (verify).

A signed document is the policy document itself plus a top-level ``signature`` object::

    {"apiVersion": ..., "kind": ..., "spec": {...},
     "metadata": {"name", "namespace", "generation", "uid", "creationTimestamp", "signedAt"},
     "signature": {"keyId": "<16 hex>", "value": "<base64 Ed25519 signature>"}}

The signature covers the canonical JSON of everything but ``signature`` (sorted keys, no
whitespace, ASCII), so the document may travel as JSON (Redis) or YAML (the ConfigMap) and still
verify: only values are signed, not their spelling. ``metadata.uid`` and
``metadata.creationTimestamp`` name the incarnation of the policy (a deleted and re-created policy
has a new uid and restarts at generation 1), ``metadata.signedAt`` (milliseconds) orders two
incarnations created within the same second.

Keys: the operator holds Ed25519 private keys (PEM ``PRIVATE KEY`` blocks, as helm's
``genPrivateKey "ed25519"`` writes them, or lines of base64 32-byte seeds); the first signs. A
sidecar is given the trusted public keys as one comma-separated string of base64 items, each the
32 raw bytes of a key or a certificate (PEM or DER) carrying one: helm cannot compute a public key,
but it can issue a self-signed certificate for the key it generated, which carries it. During a
rotation the string names both the old and the new key.

This module imports ``cryptography`` (the programs' extras carry it); nothing else in the store does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509 import load_der_x509_certificate, load_pem_x509_certificate

SIGNATURE_FIELD = "signature"
_SEED_BYTES = 32


class SigningKeyError(ValueError):
    """A signing or verification key that cannot be read (the message never quotes the key)."""


class DocumentRejected(Exception):
    """A document that does not verify. ``reason`` is a short label fit for a metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the document without ``signature``, as canonical JSON."""
    body = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (what a signature says it was made with)."""
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def public_key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw_public(key)).decode()


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what} is not base64") from None


def generate_seed_line() -> str:
    """A fresh private key, as the one line a signing key file holds."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(seed).decode()


@dataclass(frozen=True)
class Signer:
    """The operator's keys: ``keys[0]`` signs; every key's public half is handed to sidecars."""

    keys: tuple[Ed25519PrivateKey, ...]

    @classmethod
    def from_text(cls, text: str) -> Signer:
        keys: list[Ed25519PrivateKey] = []
        pem: list[str] | None = None
        for number, raw_line in enumerate(text.splitlines(), 1):
            line = raw_line.strip()
            if pem is not None:
                pem.append(line)
                if line.startswith("-----END"):
                    keys.append(_pem_private("\n".join(pem), number))
                    pem = None
            elif line.startswith("-----BEGIN"):
                pem = [line]
            elif line and not line.startswith("#"):
                seed = _b64(line, f"signing key line {number}")
                if len(seed) != _SEED_BYTES:
                    raise SigningKeyError(f"signing key line {number} is not a 32-byte Ed25519 seed")
                keys.append(Ed25519PrivateKey.from_private_bytes(seed))
        if not keys:
            raise SigningKeyError("the signing key file holds no key")
        return cls(tuple(keys))

    def check_trusted_by(self, trusted: Mapping[str, Ed25519PublicKey]) -> None:
        """Refuse a configuration whose sidecars would not trust the key that signs."""
        kid = key_id(self.keys[0].public_key())
        if kid not in trusted:
            raise SigningKeyError(f"the signing key {kid} is not among the keys given to sidecars")

    @property
    def public_keys(self) -> str:
        """What a sidecar is given (``--policy-keys``): every public key, the signing one first."""
        seen: list[str] = []
        for key in self.keys:
            text = public_key_text(key.public_key())
            if text not in seen:
                seen.append(text)
        return ",".join(seen)

    def sign(self, document: Mapping[str, Any]) -> dict[str, Any]:
        key = self.keys[0]
        signed = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
        signed[SIGNATURE_FIELD] = {
            "keyId": key_id(key.public_key()),
            "value": base64.b64encode(key.sign(canonical_bytes(signed))).decode(),
        }
        return signed


def _pem_private(text: str, line: int) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"the PEM block ending on line {line} is not a private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the PEM block ending on line {line} is not an Ed25519 key")
    return key


def _public_from(raw: bytes, number: int) -> Ed25519PublicKey:
    if len(raw) == _SEED_BYTES:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        if raw.lstrip().startswith(b"-----BEGIN CERTIFICATE"):
            certificate = load_pem_x509_certificate(raw)
        else:
            certificate = load_der_x509_certificate(raw)
        key = certificate.public_key()
    except (ValueError, TypeError):
        raise SigningKeyError(f"verification key {number} is neither a key nor a certificate") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"verification key {number} is not an Ed25519 key")
    return key


def parse_public_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """``--policy-keys``: comma-separated base64 items (raw Ed25519 public keys or certificates)."""
    trusted: dict[str, Ed25519PublicKey] = {}
    for number, part in enumerate((p for p in text.split(",") if p.strip()), 1):
        key = _public_from(_b64(part, f"verification key {number}"), number)
        trusted[key_id(key)] = key
    if not trusted:
        raise SigningKeyError("no verification key given")
    return trusted


@dataclass(frozen=True)
class SignedFacts:
    """What a verified document says about itself, beyond the policy."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str  # metadata.creationTimestamp (RFC 3339, UTC, seconds: sorts as text)
    signed_at: int  # ms since the epoch
    key_id: str

    @property
    def ref(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def supersedes(self, current: SignedFacts) -> bool:
        """Whether this document replaces ``current``: a newer generation of the same policy, or a
        newer incarnation (re-created: another uid), whatever its generation."""
        if self.uid == current.uid:
            return self.generation > current.generation
        return (self.created, self.signed_at) > (current.created, current.signed_at)


def verify_document(document: Any, trusted: Mapping[str, Ed25519PublicKey]) -> SignedFacts:
    """Check the signature; raise :class:`DocumentRejected` unless it verifies with a trusted key."""
    if not isinstance(document, Mapping):
        raise DocumentRejected("malformed", "the document is not a mapping")
    signature = document.get(SIGNATURE_FIELD)
    if not isinstance(signature, Mapping):
        raise DocumentRejected("unsigned", "the document carries no signature")
    kid, value = signature.get("keyId"), signature.get("value")
    if not isinstance(kid, str) or not isinstance(value, str):
        raise DocumentRejected("malformed", "the signature needs a keyId and a value")
    key = trusted.get(kid)
    if key is None:
        raise DocumentRejected(
            "unknown_key", f"signed with key {kid[:16]!r}, which this sidecar does not trust"
        )
    try:
        key.verify(base64.b64decode(value, validate=True), canonical_bytes(document))
    except (InvalidSignature, binascii.Error, ValueError):
        raise DocumentRejected("bad_signature", f"the signature (key {kid}) does not verify") from None
    meta = document.get("metadata")
    facts = meta if isinstance(meta, Mapping) else {}
    try:
        return SignedFacts(
            namespace=_text(facts, "namespace"),
            name=_text(facts, "name"),
            uid=_text(facts, "uid"),
            generation=_int(facts, "generation"),
            created=_text(facts, "creationTimestamp"),
            signed_at=_int(facts, "signedAt"),
            key_id=kid,
        )
    except (KeyError, TypeError) as error:
        raise DocumentRejected("malformed", f"signed metadata incomplete: {error}") from None


def _text(meta: Mapping[str, Any], field: str) -> str:
    value = meta[field]
    if not isinstance(value, str) or not value:
        raise TypeError(f"metadata.{field} must be a non-empty string")
    return value


def _int(meta: Mapping[str, Any], field: str) -> int:
    value = meta[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"metadata.{field} must be an integer")
    return value


def unsigned(document: Mapping[str, Any]) -> dict[str, Any]:
    """The policy document without its signature (what ``load_policy`` accepts)."""
    return {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
