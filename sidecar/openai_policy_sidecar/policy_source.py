"""Where the policy and the key come from, and how they change without a restart.

Both files are polled (stat every ~1 s: mtime, inode and size, which also catches the atomic
symlink swap Kubernetes does for ConfigMap and Secret volumes). With a shared store, documents
the operator publishes there are applied when their ``metadata.generation`` is newer than the
one in force. A bad update never replaces a good one: the last good policy (or key) stays, and
the problem is reported in /readyz detail, one log line and the ``policy_reload_errors`` metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_policy_api import OpenAIPolicy, PolicyError, load_policy
from openai_policy_store import Store

from .metrics import Metrics
from .snapshot import PolicySnapshot, build_snapshot

log = logging.getLogger("openai_policy_sidecar.policy_source")


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
    ) -> None:
        self.policy_path = policy_path
        self.keys = keys
        self.store = store
        self.metrics = metrics
        self.watch_store = watch_store
        self.poll_interval = poll_interval
        self.snapshot: PolicySnapshot | None = None
        self.error: str | None = None  # why the last policy update was refused (None: all good)
        self._stamp: FileStamp | None = None
        self._bad_store_generation: int | None = None
        self._previous: list[PolicySnapshot] = []  # replaced snapshots whose usage writers still need a flush

    # -- loading ------------------------------------------------------------------------------

    def load_initial(self) -> PolicySnapshot:
        """Read the policy file and key at start-up; a bad policy here is fatal (PolicyError/OSError)."""
        self._stamp = stamp(self.policy_path)
        policy = load_policy(self.policy_path.read_text())
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

    async def poll_store(self) -> None:
        if not self.watch_store or self.snapshot is None:
            return
        try:
            document = await self.store.get_policy_document(self.snapshot.ref)
        except Exception as error:  # StoreUnavailable: /readyz reports the store separately
            log.debug("policy document not readable from the store: %s", error)
            return
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


def _generation_of(document: dict[str, Any]) -> int | None:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    value = metadata.get("generation") if isinstance(metadata, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
