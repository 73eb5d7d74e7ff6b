"""``openai-policy-sidecar``: run the OpenAI-compatible policy proxy.

    openai-policy-sidecar --policy FILE [--redis-url URL] [--listen 127.0.0.1:8780]
                          [--admin-listen 0.0.0.0:8781] [--api-key-file FILE] [--policy-keys KEYS]

The key comes from --api-key-file (re-read when it changes) or else OPENAI_API_KEY; the pod
name from POD_NAME. Exit status 2: bad arguments, policy or tokenizer files.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from openai_policy_api import PolicyError
from openai_policy_store.signing import DocumentRejected, SigningKeyError

from . import runtime, tokenizer_files
from .access_log import configure_logging
from .genai_telemetry import TelemetryUnavailable
from .server import Sidecar, SidecarConfig

log = logging.getLogger("openai_policy_sidecar")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="openai-policy-sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="OpenAIPolicy YAML/JSON document")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("OPENAI_POLICY_REDIS_URL") or None,
        help="shared store for budgets, rate limits and usage (default: in memory, one replica)",
    )
    parser.add_argument("--listen", default="127.0.0.1:8780", help="proxy address (keep it loopback)")
    parser.add_argument("--admin-listen", default="0.0.0.0:8781", help="/healthz, /readyz, /metrics")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="upstream API key file, re-read on change (else OPENAI_API_KEY)",
    )
    parser.add_argument(
        "--policy-keys",
        default=None,
        help="the operator's Ed25519 public keys (comma-separated base64): only documents they sign, "
        "for this sidecar's policy, are applied, from the file and from the store",
    )
    parser.add_argument(
        "--redis-credential-file",
        type=Path,
        default=None,
        help="Redis user and password (two lines), re-read for every new connection; a ca.crt beside "
        "it is the CA of a private rediss:// server",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OPENAI_POLICY_OTLP_ENDPOINT") or None,
        help="export OpenTelemetry's GenAI client metrics to this OTLP/HTTP endpoint, e.g. "
        "http://otel-collector:4318 (needs the [otel] extra; default: off)",
    )
    parser.add_argument(
        "--otlp-interval", type=float, default=30.0, help="seconds between OTLP exports (default: 30)"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> SidecarConfig:
    return SidecarConfig(
        policy_path=args.policy,
        api_key_file=args.api_key_file,
        api_key=None if args.api_key_file else os.environ.get("OPENAI_API_KEY"),
        redis_url=args.redis_url,
        listen=args.listen,
        admin_listen=args.admin_listen,
        pod_name=os.environ.get("POD_NAME") or socket.gethostname(),
        redis_credential_file=args.redis_credential_file,
        policy_keys=args.policy_keys,
        otlp_endpoint=args.otlp_endpoint,
        otlp_interval=args.otlp_interval,
    )


async def serve(sidecar: Sidecar) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await sidecar.start()
    sidecar.metrics.runtime(runtime.event_loop_name(), runtime.http_parser_name())
    runtime.settle_after_start()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await sidecar.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (a dependency of the sidecar: less CPU per request and per stream event), or
    asyncio's own loop where it cannot be installed."""
    try:
        uvloop = importlib.import_module("uvloop")  # by name: mypy need not know an optional module
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sidecar: Sidecar | None = None
    configure_logging(
        lambda: sidecar.source.keys.secrets if sidecar else [],
        getattr(logging, args.log_level.upper(), logging.INFO),
    )
    try:
        tokenizer_files.verify()
    except tokenizer_files.TokenizerFilesError as error:
        log.error("cannot count tokens offline: %s", error)
        return 2
    try:
        sidecar = Sidecar(config_from(args))
    except SigningKeyError as error:
        log.error("unusable --policy-keys: %s", error)
        return 2
    except TelemetryUnavailable as error:
        log.error("%s", error)
        return 2
    try:
        sidecar.load()
    except DocumentRejected as error:
        log.error("policy %s refused (%s): %s", args.policy, error.reason, error)
        return 2
    except PolicyError as error:
        log.error("invalid policy %s: %s", args.policy, error)
        return 2
    except OSError as error:
        log.error("cannot read policy %s: %s", args.policy, error.strerror or error)
        return 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(sidecar))
    except OSError as error:  # e.g. the port is taken
        log.error("cannot serve: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
