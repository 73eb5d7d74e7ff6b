"""Reading what the sidecars reported (usage, heartbeats, spend) and turning it into a status."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from openai_policy_api import TOP_SPENDERS_SHOWN, OpenAIPolicy
from openai_policy_store import BucketSpend, BudgetLedger, Store
from openai_policy_store.money import usd_to_micros
from openai_policy_store.protocol import BucketLimit
from openai_policy_store.windows import key_ttl_seconds, utc_now

from .status import PolicyFacts, ReadyState, StatusReport, build_status, comparable

logger = logging.getLogger(__name__)


def facts_from_body(body: Mapping[str, Any]) -> PolicyFacts:
    """Facts from the raw resource, for a policy the model refuses (its status must still render)."""
    spec = body.get("spec") or {}
    return PolicyFacts(
        generation=int((body.get("metadata") or {}).get("generation") or 1),
        suspended=bool(spec.get("suspend", False)),
        mode=str(spec.get("mode", "enforce")),
        alert_at_percent=int((spec.get("budget") or {}).get("alertAtPercent", 80)),
    )


def _shown_micros(previous: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(window, bucket) -> the settled spend the status last showed."""
    shown: dict[tuple[str, str], int] = {}
    for entry in previous.get("spend") or []:
        try:
            shown[(str(entry["window"]), str(entry["bucket"]))] = usd_to_micros(entry["usd"])
        except (KeyError, TypeError, ValueError):
            continue
    return shown


async def restore_spend(
    store: Store,
    ref: tuple[str, str],
    windows: list[BucketSpend],
    previous: Mapping[str, Any],
    time_zone: str = "UTC",
) -> list[BucketSpend]:
    """Spend's second home: a store holding less than the status last showed for the same bucket
    lost it (a wipe, a restart without persistence). Put it back (max, never lower) and show it: the
    spend in the status never goes backwards."""
    shown = _shown_micros(previous)
    out = []
    for window in windows:
        before = shown.get((window.window, window.bucket), 0)
        if window.spent_micros < before:
            bucket = BucketLimit(
                window.window, window.bucket, None, key_ttl_seconds(window.window, utc_now(), time_zone)
            )
            added = await store.budget_restore(ref, bucket, before)
            logger.warning(
                "%s/%s: the state store held %d micro-dollars less %s spend than the status showed; restored",
                *ref,
                added,
                window.window,
            )
            window = replace(window, spent_micros=before)
        out.append(window)
    return out


class StatusReader:
    """Reads one policy's figures from the state store (none without one) into its new status."""

    def __init__(self, store: Store | None, stale_after: float) -> None:
        self.store = store
        self.stale_after = stale_after

    async def report(
        self,
        body: Mapping[str, Any],
        policy: OpenAIPolicy | None,
        ready: ReadyState,
        injected_pods: int,
        now: float | None = None,
    ) -> StatusReport:
        meta = body["metadata"]
        ref = (meta["namespace"], meta["name"])
        previous = comparable(body.get("status"))
        facts = PolicyFacts.of(policy, int(meta.get("generation") or 1)) if policy else facts_from_body(body)
        usage: Mapping[str, int] = {}
        heartbeats: Mapping[str, Mapping[str, Any]] = {}
        windows: list[BucketSpend] = []
        spenders: dict[tuple[str, str], list[tuple[str, int]]] = {}
        if self.store is not None:
            try:
                usage = await self.store.read_usage(ref)
                heartbeats = await self.store.read_heartbeats(ref)
                if policy is not None:
                    ledger = BudgetLedger(self.store, ref, policy.spec.budget)
                    windows = await restore_spend(
                        self.store, ref, await ledger.usage(), previous, ledger.time_zone
                    )
                    spenders = await ledger.top_spenders(TOP_SPENDERS_SHOWN)
            except Exception as error:  # noqa: BLE001 - the store is down: say so, keep the last figures
                logger.warning("reading usage of %s/%s failed: %s", *ref, error)
                stale = build_status(
                    facts=facts,
                    ready=ReadyState(
                        False,
                        "StoreUnavailable",
                        f"cannot read usage from the state store ({type(error).__name__}: "
                        f"{error}); figures are from the last successful read",
                    ),
                    usage={},
                    heartbeats={},
                    windows=[],
                    injected_pods=injected_pods,
                    previous=previous,
                    now=now or time.time(),
                    stale_after=self.stale_after,
                )
                for key in ("spend", "usage", "pods", "summary"):
                    if key in previous:
                        stale.status[key] = previous[key]
                return stale
        return build_status(
            facts=facts,
            ready=ready,
            usage=usage,
            heartbeats=heartbeats,
            windows=windows,
            injected_pods=injected_pods,
            previous=previous,
            now=now or time.time(),
            stale_after=self.stale_after,
            spenders=spenders,
        )
