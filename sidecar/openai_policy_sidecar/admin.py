"""Admin endpoints on :8781: /healthz (the process serves), /readyz (it can do its job), /metrics.

/readyz detail names the policy in force, whether a key is loaded (never the key), the last
refused policy or key update, and whether the shared store answers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from openai_policy_store import Store

from .metrics import Metrics
from .policy_source import PolicySource
from .report_loop import ReportLoop


async def readiness(
    source: PolicySource, store: Store, store_configured: bool, report_loop: ReportLoop | None = None
) -> tuple[bool, dict[str, Any]]:
    snapshot = source.snapshot
    detail: dict[str, Any] = {}
    ready = True
    if snapshot is None:
        ready = False
        detail["policy"] = {"loaded": False}
    else:
        namespace, name = snapshot.ref
        detail["policy"] = {
            "loaded": True,
            "name": name,
            "namespace": namespace,
            "generation": snapshot.generation,
            "source": snapshot.source,
            "mode": snapshot.spec.mode,
            "suspended": bool(snapshot.spec.suspend),
            "lastError": source.error,
            # Whether documents must be signed by the operator, and what the one in force says.
            "signed": source.trust is not None,
            **({"uid": source.facts.uid, "keyId": source.facts.key_id} if source.facts else {}),
        }
    detail["apiKey"] = {
        "loaded": bool(source.keys.key),
        "source": source.keys.origin,
        "lastError": source.keys.error,
    }
    if not source.keys.key:
        ready = False
    if store_configured:
        try:
            reachable = bool(await asyncio.wait_for(store.ping(), timeout=1.0))
        except Exception:
            reachable = False
        detail["store"] = {"configured": True, "reachable": reachable}
        if report_loop is not None and report_loop.last_error:
            detail["store"]["lastError"] = report_loop.last_error
        ready = ready and reachable
    else:
        detail["store"] = {"configured": False}
    detail["ready"] = ready
    return ready, detail


def admin_app(
    source: PolicySource, store: Store, store_configured: bool, metrics: Metrics, report_loop: ReportLoop
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = await readiness(source, store, store_configured, report_loop)
        return web.Response(
            status=200 if ready else 503, text=json.dumps(detail), content_type="application/json"
        )

    async def metrics_page(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = metrics.content_type
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app
