"""Helpers for sidecar tests: policy files, an in-process sidecar, and a sidecar subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import openai
import yaml

from openai_policy_devkit.managed_process import free_ports
from openai_policy_devkit.polling import wait_for  # noqa: F401 - re-exported for the sidecar tests
from openai_policy_sidecar.server import Sidecar, SidecarConfig

TEST_KEY = "sk-proj-TESTKEY-0123456789abcdefSECRET"
REPO = Path(__file__).resolve().parents[2]


def policy_document(
    spec: dict[str, Any], *, name: str = "demo", namespace: str = "default", generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": spec,
    }


def write_policy(path: Path, spec: dict[str, Any], **metadata: Any) -> Path:
    """Write atomically (rename), as a ConfigMap volume update would appear to the sidecar."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(policy_document(spec, **metadata)))
    os.replace(tmp, path)
    return path


def signed_policy_document(
    signer: Any,
    spec: dict[str, Any],
    *,
    uid: str = "uid-1",
    created: str = "2026-01-01T00:00:00Z",
    signed_at: int = 1,
    **metadata: Any,
) -> dict[str, Any]:
    """What the operator writes: the policy document with its uid, creation time, and signature
    (``signer`` is an ``openai_policy_store.signing.Signer``)."""
    document = policy_document(spec, **metadata)
    document["metadata"].update(uid=uid, creationTimestamp=created, signedAt=signed_at)
    signed: dict[str, Any] = signer.sign(document)
    return signed


def write_document(path: Path, document: dict[str, Any]) -> Path:
    """Write a whole document atomically (rename), as a ConfigMap volume update appears."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document))
    os.replace(tmp, path)
    return path


def upstream_spec(fake: Any, **spec: Any) -> dict[str, Any]:
    """A spec pointing at the fake upstream, merged with the given fields."""
    return {"upstream": {"baseURL": fake.base_url}, **spec}


@contextlib.asynccontextmanager
async def running_sidecar(
    policy_path: Path,
    *,
    api_key: str | None = TEST_KEY,
    api_key_file: Path | None = None,
    redis_url: str | None = None,
    pod: str = "test-pod",
    policy_keys: str | None = None,
) -> AsyncIterator[Sidecar]:
    """An in-process sidecar on free loopback ports, on the test's event loop."""
    sidecar = Sidecar(
        SidecarConfig(
            policy_path=policy_path,
            api_key=api_key,
            api_key_file=api_key_file,
            redis_url=redis_url,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            pod_name=pod,
            poll_interval=0.2,
            report_interval=0.2,
            policy_keys=policy_keys,
        )
    )
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


def rejected(sidecar: Sidecar, source: str, reason: str) -> float:
    """How many policy documents from ``source`` the sidecar refused for ``reason``."""
    value = sidecar.metrics.registry.get_sample_value(
        "openai_policy_policy_documents_rejected_total", {"source": source, "reason": reason}
    )
    return value or 0.0


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the test's loop (an in-process sidecar keeps running meanwhile)."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


async def concurrently(call: Callable[[int], Awaitable[object]], count: int) -> list[str | BaseException]:
    """``call(i)`` for every i below ``count``, all at once. Each outcome is "ok", the error code of
    an OpenAI-shaped answer the SDK raised (``budget_exceeded``, ...), or any other exception."""

    async def one(index: int) -> str:
        try:
            await call(index)
        except openai.APIStatusError as error:
            return error.code or str(error.status_code)
        return "ok"

    return list(await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True))


def total_requests(sidecar: Sidecar) -> float:
    """How many requests reached the sidecar (from its own metrics)."""
    total = 0.0
    for metric in sidecar.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


class SidecarProcess:
    """``openai-policy-sidecar`` as a real child process, its stderr (JSON log lines) kept in a file."""

    def __init__(
        self,
        policy_path: Path,
        log_path: Path,
        *,
        api_key_file: Path | None = None,
        env_key: str | None = None,
        redis_url: str | None = None,
        pod: str = "pod-0",
        policy_keys: str | None = None,
        redis_credential_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        script = Path(sys.executable).with_name("openai-policy-sidecar")  # the console script itself
        command = [str(script)] if script.exists() else [sys.executable, "-m", "openai_policy_sidecar"]
        args = [*command, "--policy", str(policy_path)]
        if api_key_file is not None:
            args += ["--api-key-file", str(api_key_file)]
        if redis_url:
            args += ["--redis-url", redis_url]
        if policy_keys:
            args += ["--policy-keys", policy_keys]
        if redis_credential_file is not None:
            args += ["--redis-credential-file", str(redis_credential_file)]
        args += list(extra_args)
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env["POD_NAME"] = pod
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "sidecar"), str(REPO)])
        if env_key is not None:
            env["OPENAI_API_KEY"] = env_key
        self._args, self._env, self._spawns = args, env, 0
        self._spawn()

    def _spawn(self) -> None:
        """Start the process on two ports free a moment ago (another process may take one first:
        ``wait_healthy`` then starts it again on others)."""
        self.port, self.admin_port = free_ports(2)
        listen = ["--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}"]
        self._spawns += 1
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*self._args, *listen], stdout=self._log, stderr=subprocess.STDOUT, env=self._env, cwd=REPO
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def get_admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, text = self.get_admin("/readyz")
        return status, json.loads(text)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.log() and self._spawns < 3:
                    self._log.close()
                    self._spawn()
                    continue
                raise RuntimeError(f"sidecar exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get_admin("/healthz")[0] == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"sidecar not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> SidecarProcess:
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def settled_usage(
    sidecar: Sidecar, requests: int, ref: tuple[str, str] = ("default", "demo"), timeout: float = 5.0
) -> dict[str, int]:
    """The store's usage counters once ``requests`` requests are counted (the handler records a
    request just after its last byte is sent, so a client may finish first)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        await sidecar.report_loop.tick()
        usage = await sidecar.store.read_usage(ref)
        if usage.get("requests", 0) >= requests or time.monotonic() > deadline:
            return usage
        await asyncio.sleep(0.02)


async def admin_get(sidecar: Sidecar, path: str) -> tuple[int, Any]:
    """GET an admin endpoint of an in-process sidecar: (status, JSON body or text)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(sidecar.admin_url + path) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def quiesce(sidecar: Sidecar, timeout: float = 5.0) -> None:
    """Wait until no request is in flight: every reply sent, settled and recorded (the sidecar
    sends a reply before it settles the budget, so a client can see the reply first)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        in_flight = sum(s.value for m in sidecar.metrics.in_flight.collect() for s in m.samples)
        if in_flight == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{in_flight} requests still in flight")
        await asyncio.sleep(0.01)


_ASYNC_CLIENTS: list[openai.AsyncOpenAI] = []


def async_client(base_url: str, api_key: str = "sk-placeholder", **options: Any) -> openai.AsyncOpenAI:
    """An SDK client closed after the test (on the test's loop, not by GC on a closed loop)."""
    options.setdefault("timeout", 60)  # a hang fails the test instead of the SDK's 10 minutes
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, **options)
    _ASYNC_CLIENTS.append(client)
    return client


async def close_all_async_clients() -> None:
    """Close every ``async_client`` made so far (tests/sidecar/conftest.py does, after each test)."""
    while _ASYNC_CLIENTS:
        await _ASYNC_CLIENTS.pop().close()
