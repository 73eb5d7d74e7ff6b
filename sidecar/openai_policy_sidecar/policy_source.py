"""Where the policy and the key come from, and how they change without a restart.

Both files are polled (stat every ~1 s: mtime, inode and size, which also catches the atomic
symlink swap Kubernetes does for ConfigMap and Secret volumes). A bad update never replaces a
good one: the last good policy (or key) stays, and the problem is reported in /readyz detail, one
log line and the ``policy_reload_errors`` metric.

With verification keys (an injected sidecar: :mod:`.document_trust`) every document, from the
file or the store, must be signed by the operator for this policy; one that is not is refused
(also counted in ``policy_documents_rejected``). A signed document replaces the one in force when
it is a newer generation of the same policy or names a newer incarnation (another uid: the
policy was deleted and re-created), whatever its generation. Without keys the file is applied as
given and the store is never read for policies: an unsigned document there could come from
anyone who reaches Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_policy_api import OpenAIPolicy, PolicyError, load_policy
from openai_policy_store import Store
from openai_policy_store.signing import DocumentRejected, SignedFacts

from .cancellation import raise_if_cancelling
from .document_trust import DocumentTrust, TrustMetrics, fingerprint, parse_text
from .metrics import Metrics
from .snapshot import PolicySnapshot, build_snapshot

log = logging.getLogger("openai_policy_sidecar.policy_source")

# A refused document is reported this long after it was last offered: the operator overwrites a
# forged store document at its next resync, after which the report ages out.
UNTRUSTED_REPORT_SECONDS = 120.0


@dataclass(frozen=True)
class FileStamp:
    mtime_ns: int
    inode: int
    size: int


def stamp(path: Path) -> FileStamp | None:
    try:
        st = os.stat(path)  # follows symlinks: a ..data swap changes the inode
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_ino, st.st_size)


class KeyFileError(Exception):
    """The key file is missing or empty."""


class KeySource:
    """The upstream API key: from a file (re-read when it changes) or from the environment."""

    def __init__(self, path: Path | None, env_value: str | None) -> None:
        self.path = path
        self._env = (env_value or "").strip() or None
        self.key: str | None = None
        self.origin: str | None = None
        self.error: str | None = None
        self._stamp: FileStamp | None = None
        self._seen: list[str] = []  # every key ever loaded, for log redaction after a rotation

    @property
    def secrets(self) -> list[str]:
        return list(self._seen)

    def _remember(self, key: str) -> None:
        if key not in self._seen:
            self._seen.append(key)

    def load(self) -> None:
        """Initial load. A key file that is not there yet is not fatal: /readyz says so."""
        if self.path is None:
            self.key, self.origin = self._env, ("env" if self._env else None)
            if self.key:
                self._remember(self.key)
            else:
                self.error = "no API key: neither --api-key-file nor OPENAI_API_KEY is set"
            return
        self.reload_if_changed(force=True)

    def _read(self) -> str:
        assert self.path is not None
        try:
            text = self.path.read_text().strip()
        except OSError as error:
            raise KeyFileError(
                f"cannot read the API key file {self.path}: {error.strerror or error}"
            ) from None
        if not text:
            raise KeyFileError(f"the API key file {self.path} is empty")
        return text

    def reload_if_changed(self, force: bool = False) -> bool | None:
        """True: a new key was loaded; None: the file changed but is unusable; False: unchanged."""
        if self.path is None:
            return False
        current = stamp(self.path)
        if not force and current == self._stamp:
            return False
        self._stamp = current
        try:
            key = self._read()
        except KeyFileError as error:
            self.error = str(error) + ("; keeping the previous key" if self.key else "")
            return None
        self.error = None
        changed = key != self.key
        self.key, self.origin = key, "file"
        self._remember(key)
        return changed


class PolicySource:
    """Holds the ``PolicySnapshot`` in force and replaces it when a newer good policy appears."""

    def __init__(
        self,
        policy_path: Path,
        keys: KeySource,
        store: Store,
        metrics: Metrics,
        *,
        watch_store: bool = False,
        poll_interval: float = 1.0,
        trust: DocumentTrust | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.keys = keys
        self.store = store
        self.metrics = metrics
        self.trust = trust
        # Unsigned documents in the store are never applied: without keys, do not even read them.
        self.watch_store = watch_store and trust is not None
        self.trust_metrics = TrustMetrics(metrics.registry)
        self.facts: SignedFacts | None = None  # what the signed document in force says
        self._refused: set[str] = set()  # fingerprints already counted and logged
        self._untrusted: tuple[str, float] | None = None  # the last refusal, and when it was last seen
        self._store_seen: dict[str, Any] | None = None  # the store's document at the last poll
        self._store_refused = False
        self.poll_interval = poll_interval
        self.snapshot: PolicySnapshot | None = None
        self.error: str | None = None  # why the last policy update was refused (None: all good)
        self._stamp: FileStamp | None = None
        self._bad_store_generation: int | None = None
        self._previous: list[PolicySnapshot] = []  # replaced snapshots whose usage writers still need a flush

    # -- loading ------------------------------------------------------------------------------

    def load_initial(self) -> PolicySnapshot:
        """Read the policy file and key at start-up; a bad policy here is fatal (PolicyError/OSError,
        DocumentRejected when the file is not signed for this policy)."""
        self._stamp = stamp(self.policy_path)
        text = self.policy_path.read_text()
        if self.trust is not None:
            try:
                facts, document = self.trust.verify(parse_text(text))
            except DocumentRejected as error:  # fatal at start-up: there is no good policy to keep
                self.trust_metrics.rejected.labels(source="file", reason=error.reason).inc()
                raise
            policy = load_policy(document)
            self.trust.expected_ref = self.trust.expected_ref or facts.ref
            self.facts = facts
        else:
            policy = load_policy(text)
        self._install(policy, "file")
        self.keys.load()
        self._key_metric()
        if self.keys.error:
            log.error("API key not loaded: %s", self.keys.error)
        assert self.snapshot is not None
        return self.snapshot

    def _install(self, policy: OpenAIPolicy, source: str) -> None:
        previous = self.snapshot
        writer = previous.usage_writer if previous is not None else None
        self.snapshot = build_snapshot(policy, self.store, source, writer)
        if previous is not None and previous.usage_writer is not self.snapshot.usage_writer:
            self._previous.append(previous)
        self.error = None
        self.metrics.policy_generation.set(self.snapshot.generation)
        namespace, name = self.snapshot.ref
        log.info(
            "policy %s/%s generation %d applied from %s (mode %s%s)",
            namespace,
            name,
            self.snapshot.generation,
            source,
            self.snapshot.spec.mode,
            ", suspended" if self.snapshot.spec.suspend else "",
        )

    def _refuse(self, source: str, message: str) -> None:
        self.error = message
        self.metrics.reload_errors.labels(source=source).inc()
        log.error("policy update refused, keeping the last good policy: %s", message)

    def _reject(self, source: str, document: Any, error: DocumentRejected) -> None:
        """Count and report a document that is not the operator's, once per distinct document."""
        mark = f"{source}:{fingerprint(document)}"
        message = f"untrusted policy document from the {source} ({error.reason}): {error}"
        self._untrusted = (message, time.monotonic())
        if mark in self._refused:
            return
        if len(self._refused) > 1000:  # a flood of forgeries must not grow memory without bound
            self._refused.clear()
        self._refused.add(mark)
        self.trust_metrics.rejected.labels(source=source, reason=error.reason).inc()
        self._refuse(source, message)

    @property
    def untrusted_document(self) -> str | None:
        """The last refused document while it is still being offered (for the heartbeat: status)."""
        if self._untrusted is None or time.monotonic() - self._untrusted[1] > UNTRUSTED_REPORT_SECONDS:
            return None
        return self._untrusted[0]

    def _verified(self, source: str, document: Any) -> tuple[SignedFacts, dict[str, Any]] | None:
        """The facts and unsigned document when it verifies and supersedes the one in force."""
        assert self.trust is not None
        try:
            facts, body = self.trust.verify(document)
        except DocumentRejected as error:
            self._reject(source, document, error)
            return None
        if self.facts is not None and not facts.supersedes(self.facts):
            return None  # the same or an older document (e.g. the file lagging behind the store)
        return facts, body

    def _key_metric(self) -> None:
        self.metrics.key_loaded.set(1 if self.keys.key else 0)

    # -- polling ------------------------------------------------------------------------------

    def poll_files(self) -> None:
        current = stamp(self.policy_path)
        if current != self._stamp:
            self._stamp = current
            self._reload_file()
        outcome = self.keys.reload_if_changed()
        if outcome is True:
            log.info("API key reloaded from %s", self.keys.path)
        elif outcome is None:
            self.metrics.reload_errors.labels(source="key").inc()
            log.error("API key update refused: %s", self.keys.error)
        self._key_metric()

    def _reload_file(self) -> None:
        if self.trust is not None:
            self._reload_signed_file()
            return
        try:
            policy = load_policy(self.policy_path.read_text())
        except OSError as error:
            self._refuse("file", f"cannot read {self.policy_path}: {error.strerror or error}")
            return
        except PolicyError as error:
            self._refuse("file", f"{self.policy_path}: {error}")
            return
        assert self.snapshot is not None
        new_generation = int(policy.metadata.generation or 0)
        if self.snapshot.source == "store" and new_generation < self.snapshot.generation:
            # The ConfigMap lags behind what the operator already published to the store.
            return
        try:
            self._install(policy, "file")
        except Exception as error:  # e.g. a price override the table rejects
            self._refuse("file", f"{self.policy_path}: {error}")

    def _reload_signed_file(self) -> None:
        try:
            document = parse_text(self.policy_path.read_text())
        except OSError as error:
            self._refuse("file", f"cannot read {self.policy_path}: {error.strerror or error}")
            return
        except DocumentRejected as error:
            self._reject("file", None, error)
            return
        verified = self._verified("file", document)
        if verified is not None:
            self._apply_signed("file", *verified)

    def _apply_signed(self, source: str, facts: SignedFacts, body: dict[str, Any]) -> None:
        try:
            self._install(load_policy(body), source)
        except (PolicyError, Exception) as error:  # signed but unusable here, e.g. a price override
            self._refuse(source, f"generation {facts.generation} from the {source}: {error}")
            return
        self.facts = facts

    async def poll_store(self) -> None:
        if not self.watch_store or self.snapshot is None:
            return
        if self.trust is not None:
            await self._poll_signed_store()
            return
        document = await self._read_store_document()
        if not document:
            return
        generation = _generation_of(document)
        if (
            generation is None
            or generation <= self.snapshot.generation
            or generation == self._bad_store_generation
        ):
            return
        try:
            policy = load_policy(document)
            self._install(policy, "store")
        except (PolicyError, Exception) as error:
            self._bad_store_generation = generation
            self._refuse("store", f"generation {generation} from the store: {error}")

    async def _read_store_document(self) -> dict[str, Any] | None:
        assert self.snapshot is not None
        try:
            return await self.store.get_policy_document(self.snapshot.ref)
        except Exception as error:  # StoreUnavailable: /readyz reports the store separately
            log.debug("policy document not readable from the store: %s", error)
            return None

    async def _poll_signed_store(self) -> None:
        document = await self._read_store_document()
        if not document:
            return
        if document == self._store_seen:
            # Unchanged since the last poll: no second verification (about 0.25 ms each), but a
            # refused document stays reported while it is still there.
            if self._store_refused and self._untrusted is not None:
                self._untrusted = (self._untrusted[0], time.monotonic())
            return
        self._store_seen = document
        assert self.trust is not None
        try:
            facts, body = self.trust.verify(document)
        except DocumentRejected as error:
            self._store_refused = True
            self._reject("store", document, error)
            return
        self._store_refused = False
        if self.facts is None or facts.supersedes(self.facts):
            self._apply_signed("store", facts, body)

    async def flush_replaced(self) -> None:
        """Flush the usage counters of snapshots replaced by a reload (their ref may differ)."""
        while self._previous:
            old = self._previous.pop()
            with contextlib.suppress(Exception):
                await old.usage_writer.flush()

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.poll_files()
                await self.poll_store()
            except Exception:  # never let the watcher die: the sidecar keeps the last good state
                log.exception("policy watcher error")
            raise_if_cancelling()


def _generation_of(document: dict[str, Any]) -> int | None:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    value = metadata.get("generation") if isinstance(metadata, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
