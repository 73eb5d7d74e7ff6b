"""The governed workload's app container: an ordinary program using the official ``openai`` SDK.

It knows nothing about the policy. It uses only the environment the webhook gave it
(``OPENAI_BASE_URL`` pointing at the sidecar, and a placeholder ``OPENAI_API_KEY``) and sends
chat completions in a loop, printing one JSON line per outcome, so a test or the demo can read
what the app saw:

    {"n": 3, "time": 1763822400.1, "ok": true, "model": "gpt-4o-mini-2024-07-18", "prompt_tokens": 12, ...}
    {"n": 9, "time": 1763822402.3, "ok": false, "status": 429, "code": "budget_exceeded", "message": "..."}

Options come from arguments (a pod spec's ``args``): --model, --max-tokens (deliberately more
than a policy allows, so clamping is visible), --interval, --count (0: forever), --prompt, --stream.
On SIGTERM it finishes the request in flight, then exits (a pod's deletion drains it).
Standalone: a single file, no import from this project (the container has only the SDK).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import openai


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Send chat completions through the sidecar in a loop.")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two requests")
    parser.add_argument("--count", type=int, default=0, help="requests to send; 0: until stopped")
    parser.add_argument(
        "--prompt", default="Summarise the benefits of budgets for API spend in one sentence."
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="per-request timeout (seconds)")
    parser.add_argument("--user", default=None, help="end-user id sent with each request")
    parser.add_argument("--stream", action="store_true", help="stream each reply (read to its end)")
    return parser.parse_args(argv)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(",", ":")), flush=True)


def outcome_of_error(error: openai.APIStatusError) -> dict[str, Any]:
    """The fields of an OpenAI-shaped refusal, as the SDK exposes them."""
    body = error.body if isinstance(error.body, dict) else {}
    detail = body.get("error", body) if isinstance(body, dict) else {}
    return {
        "ok": False,
        "status": error.status_code,
        "code": getattr(error, "code", None) or detail.get("code"),
        "type": detail.get("type"),
        "message": str(detail.get("message") or error.message)[:300],
    }


def one_stream(client: openai.OpenAI, args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    """A streamed reply read to its end: ok only when the stream finished (a finish_reason came)."""
    stream = client.chat.completions.create(
        model=args.model,
        max_tokens=args.max_tokens,
        messages=[{"role": "user", "content": args.prompt}],
        stream=True,
        **extra,
    )
    chunks, model, finish = 0, None, None
    for chunk in stream:
        chunks += 1
        model = chunk.model or model
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    return {
        "ok": finish is not None,
        "stream": True,
        "model": model,
        "finish_reason": finish,
        "chunks": chunks,
    }


def one_request(client: openai.OpenAI, args: argparse.Namespace) -> dict[str, Any]:
    try:
        extra: dict[str, Any] = {"user": args.user} if args.user else {}
        if args.stream:
            return one_stream(client, args, extra)
        reply = client.chat.completions.create(
            model=args.model,
            max_tokens=args.max_tokens,
            messages=[{"role": "user", "content": args.prompt}],
            **extra,
        )
    except openai.APIStatusError as error:
        return outcome_of_error(error)
    except openai.APIConnectionError as error:  # the sidecar not (yet) reachable, or a timeout
        return {"ok": False, "status": None, "code": "connection_error", "message": str(error)[:300]}
    except (openai.APIError, OSError) as error:  # e.g. a stream cut off in the middle
        return {"ok": False, "status": None, "code": "broken", "message": str(error)[:300]}
    usage = reply.usage
    return {
        "ok": True,
        "model": reply.model,
        "finish_reason": reply.choices[0].finish_reason,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Exactly what the pod was given; the SDK reads both variables itself, shown here for the record.
    base_url, key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
    if not base_url or not key:
        print(
            "OPENAI_BASE_URL and OPENAI_API_KEY must be set (the policy webhook sets both)", file=sys.stderr
        )
        return 2
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client = openai.OpenAI(timeout=args.timeout)  # base URL and key from the environment
    emit({"event": "start", "base_url": base_url, "model": args.model, "time": time.time()})
    n = 0
    while not stopping and (args.count == 0 or n < args.count):
        n += 1
        started = time.time()
        record = one_request(client, args)
        emit({"n": n, "time": started, "seconds": round(time.time() - started, 3), **record})
        deadline = time.monotonic() + args.interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, args.interval))
    client.close()
    emit({"event": "stop", "requests": n, "time": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
