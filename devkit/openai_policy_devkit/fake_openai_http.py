"""Raw HTTP helpers for looking at what the fake OpenAI sends byte for byte (the SDK hides framing)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def sse(self) -> list[tuple[str | None, str]]:
        return parse_sse(self.body.decode("utf-8"))


def request(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    api_key: str | None = "sk-test",
    timeout: float = 10.0,
) -> RawResponse:
    """One HTTP request to `base_url + path`; `body` is sent as JSON, `raw` as is."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return RawResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return RawResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """Server-sent events as (event name or None, data); every event must end with a blank line."""
    assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-40:]!r}"
    events = []
    for block in text[:-2].split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, "\n".join(data)))
    return events
