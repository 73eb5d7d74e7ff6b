"""Per-policy Redis credentials: an ACL user for each policy's sidecars, and its delivery.

For each policy the operator keeps a Redis ACL user (``openai_policy_store.acl``: that policy's
keys and channel, the sidecar's commands, its document read-only) and writes its credential into
a Secret ``<policy>-redis-credential`` in the policy's namespace, owned by the policy (deleted
with it by the garbage collector). The webhook mounts that Secret into the sidecar container only,
as it does the key; the admission rules refuse it to every other container.

Passwords are random and live only in Redis (as hashes), in the Secret and in this process's
memory; the operator never reads a Secret (its RBAC can create and patch Secrets, not get them),
so it cannot read the API key either. A new operator process (a restart, a new leader) therefore
issues a new password for every policy: the user then accepts both, and the old one is dropped
after ``grace_seconds``, by which time the kubelet has refreshed the mounted file and sidecars
open new connections with the new one (existing connections stay authenticated). Rotation on
demand works the same way (:meth:`RedisUsers.rotate`, or a change of the policy annotation
``openaipolicy.dev/rotate-redis-credential``).

Redis forgets users on a restart unless they are persisted: every tick checks that the user still
exists and re-creates it with the current password when it does not.

Modes (``OperatorSettings.redis_sidecar_credentials``): ``acl`` as above; ``shared`` for a Redis
without ACLs (``requirepass`` only): each policy's Secret carries the operator's own credential,
still only in the sidecar container, but a sidecar (not its app) then reaches every policy's keys
and every command that credential allows; ``none``: nothing is delivered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_policy_store import acl
from openai_policy_store.redis_store import RedisStore, read_credential_file

from . import names
from .kube import ApiException, Kube
from .rendering import owner_reference
from .status import ReadyState

logger = logging.getLogger(__name__)

Ref = tuple[str, str]
MODES = ("acl", "shared", "none")
ROTATE_ANNOTATION = f"{names.GROUP}/rotate-redis-credential"


@dataclass
class _Issued:
    password: str
    since: float  # when this process issued it (monotonic)


def credential_secret(
    body: Mapping[str, Any], username: str, password: str, ca: str | None = None
) -> dict[str, Any]:
    meta = body["metadata"]
    data = {names.REDIS_CREDENTIAL_KEY: f"{username}\n{password}\n"}
    if ca:
        data[names.REDIS_CA_KEY] = ca
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.redis_credential_secret(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.POLICY_LABEL: meta["name"]},
            "ownerReferences": [owner_reference(body)],
        },
        "stringData": data,
    }


def _pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class RedisUsers:
    def __init__(
        self,
        store: RedisStore,
        kube: Kube,
        *,
        mode: str = "acl",
        grace_seconds: float = 300.0,
        operator_credential: tuple[str, str] | None = None,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown Redis sidecar credential mode {mode!r}; expected one of {MODES}")
        self.store = store
        self.kube = kube
        self.mode = mode
        self.grace_seconds = grace_seconds
        self.operator_credential = operator_credential
        self.ca = Path(ca_file).read_text() if ca_file else None
        self.clock = clock
        self._issued: dict[Ref, _Issued] = {}
        self._delivered: set[Ref] = set()  # shared mode: Secrets written by this process
        self._rotation_marks: dict[Ref, str] = {}

    async def ensure(self, body: Mapping[str, Any]) -> ReadyState | None:
        """Make the policy's user and Secret right; a ReadyState when that failed (retried next tick)."""
        meta = body["metadata"]
        ref: Ref = (meta["namespace"], meta["name"])
        try:
            if self.mode == "shared":
                await self._ensure_shared(ref, body)
            elif self.mode == "acl":
                mark = str((meta.get("annotations") or {}).get(ROTATE_ANNOTATION, ""))
                seen = self._rotation_marks.setdefault(ref, mark)
                if seen != mark:
                    self._rotation_marks[ref] = mark
                    await self.rotate(body)
                await self._ensure_acl(ref, body)
        except ApiException as error:
            return ReadyState(
                False,
                "RedisCredentialFailed",
                f"could not write Secret {names.redis_credential_secret(ref[1])}: {error.status} {error.reason}",
            )
        except Exception as error:  # noqa: BLE001 - StoreUnavailable or a refused ACL command: report, retry
            logger.warning("Redis user of %s/%s: %s", *ref, error)
            return ReadyState(
                False,
                "RedisCredentialFailed",
                f"could not set the Redis user of this policy ({type(error).__name__}: {error})",
            )
        return None

    async def _ensure_acl(self, ref: Ref, body: Mapping[str, Any]) -> None:
        user = acl.sidecar_user(*ref)
        issued = self._issued.get(ref)
        if issued is None:
            await self._issue(ref, body)
            return
        current = acl.password_hash(issued.password)
        hashes = await self.store.user_password_hashes(user)
        if hashes is None or current not in hashes:
            # Redis lost the user (a restart without persisted ACLs, a wipe): put it back as it was.
            await self.store.set_user(user, acl.sidecar_rules(*ref), add=[issued.password])
            logger.info("re-created the Redis user of %s/%s", *ref)
            return
        stale = [h for h in hashes if h != current]
        if stale and self.clock() - issued.since >= self.grace_seconds:
            await self.store.set_user(user, acl.sidecar_rules(*ref), remove=stale)
            logger.info("dropped %d rotated-out Redis password(s) of %s/%s", len(stale), *ref)

    async def _issue(self, ref: Ref, body: Mapping[str, Any]) -> None:
        """A new password: accepted by Redis first, then delivered (older ones stay for the grace)."""
        password = secrets.token_urlsafe(32)
        user = acl.sidecar_user(*ref)
        await self.store.set_user(user, acl.sidecar_rules(*ref), add=[password])
        await self._write_secret(credential_secret(body, user, password, self.ca))
        self._issued[ref] = _Issued(password, self.clock())
        logger.info("issued a Redis credential for %s/%s", *ref)

    async def rotate(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        await self._issue((meta["namespace"], meta["name"]), body)

    async def _ensure_shared(self, ref: Ref, body: Mapping[str, Any]) -> None:
        if ref in self._delivered:
            return
        if self.operator_credential is None:
            raise ValueError("shared Redis credentials need the operator's own Redis password")
        username, password = self.operator_credential
        await self._write_secret(credential_secret(body, username, password, self.ca))
        self._delivered.add(ref)

    async def delete(self, ref: Ref) -> None:
        """The policy is gone: so is its user (its Secret goes with it by garbage collection)."""
        self._issued.pop(ref, None)
        self._delivered.discard(ref)
        self._rotation_marks.pop(ref, None)
        if self.mode == "acl":
            try:
                await self.store.delete_user(acl.sidecar_user(*ref))
            except Exception as error:  # noqa: BLE001 - a Redis outage must not fail the deletion
                logger.warning("could not delete the Redis user of %s/%s: %s", *ref, error)

    async def _write_secret(self, secret: dict[str, Any]) -> None:
        """Create, or overwrite ours. Never read: a JSON patch whose first operation tests our label
        fails (422) on a Secret of the same name that someone else owns, and changes nothing."""
        meta = secret["metadata"]
        core = self.kube.core
        try:
            await asyncio.to_thread(core.create_namespaced_secret, meta["namespace"], _as_body(secret))
            return
        except ApiException as error:
            if error.status != 409:
                raise
        data = {k: _b64(v) for k, v in secret["stringData"].items()}
        ops = [
            {
                "op": "test",
                "path": f"/metadata/labels/{_pointer(names.MANAGED_BY_LABEL)}",
                "value": names.MANAGED_BY,
            },
            {"op": "replace", "path": "/data", "value": data},
        ]
        await asyncio.to_thread(core.patch_namespaced_secret, meta["name"], meta["namespace"], _as_body(ops))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _as_body(body: object) -> Any:
    """A request body as the client sends it (a dict or a JSON patch list), whatever its annotations say."""
    return body


def operator_credential(username: str | None, password_file: str | None) -> tuple[str, str] | None:
    """The operator's own Redis login from its flags (a password file, optionally a user)."""
    if not password_file:
        return None
    path = Path(password_file)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) == 2:
        return read_credential_file(path)
    return (username or "default", lines[0])
