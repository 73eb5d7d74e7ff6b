"""HTTP scripting for a standalone fake OpenAI (benchmarks, demo): the fixture API over /_fake/.

POST /_fake/faults {"kind": ..., "times": 1, "match": null, ...params}; DELETE /_fake/faults;
GET /_fake/requests (only with --record); GET /_fake/usage; POST /_fake/reset; GET /_fake/health.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

from aiohttp import web

from openai_policy_devkit.fake_openai_faults import FaultError
from openai_policy_devkit.fake_openai_payloads import error_body

if TYPE_CHECKING:
    from openai_policy_devkit.fake_openai import FakeOpenAI


def answers_health(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a standalone fake on ``host:port`` answers its health check (False until it listens)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/_fake/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def admin_routes(fake: FakeOpenAI) -> list[web.RouteDef]:
    async def add_fault(request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            kind = spec.pop("kind")
            fake.add_fault(kind, times=spec.pop("times", 1), match=spec.pop("match", None), **spec)
        except (ValueError, KeyError, TypeError, AttributeError, FaultError) as exc:
            return web.json_response(error_body(f"bad fault: {exc}"), status=400)
        return web.json_response({"pending": len(fake.faults)}, status=201)

    async def clear_faults(request: web.Request) -> web.Response:
        fake.clear_faults()
        return web.json_response({"pending": 0})

    async def requests(request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"method": r.method, "path": r.path, "headers": dict(r.headers), "json": r.json}
                for r in fake.requests
            ]
        )

    async def usage(request: web.Request) -> web.Response:
        return web.json_response(fake.usage_log)

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return web.json_response({"reset": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "recording": fake.record})

    return [
        web.post("/_fake/faults", add_fault),
        web.delete("/_fake/faults", clear_faults),
        web.get("/_fake/requests", requests),
        web.get("/_fake/usage", usage),
        web.post("/_fake/reset", reset),
        web.get("/_fake/health", health),
    ]
