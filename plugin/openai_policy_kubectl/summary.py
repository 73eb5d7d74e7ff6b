"""``kubectl oaip status``: a policy's status as a person reads it (windows, spend, pods, conditions).

Plain functions from the raw objects kubectl returns to lines of text; unknown or missing status
fields are shown as absent rather than failing, so the plugin reads policies written by an older
or newer operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import suspension


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _ready(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status", "Unknown"))
    return "Unknown"


def overview(policies: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per policy, like ``kubectl get oaip -A`` with the suspension shown."""
    if not policies:
        return ["No OpenAIPolicies found."]
    rows = [["NAMESPACE", "NAME", "READY", "SPEND", "PODS", "SUSPENDED"]]
    for policy in policies:
        meta, spec = policy.get("metadata") or {}, policy.get("spec") or {}
        status = policy.get("status") or {}
        summary = status.get("summary") or {}
        rows.append(
            [
                str(meta.get("namespace", "")),
                str(meta.get("name", "")),
                _ready(status),
                str(summary.get("spend") or "-"),
                str(summary.get("pods") or "-"),
                "yes" if spec.get("suspend") else "no",
            ]
        )
    return _table(rows)


def _usd(value: object) -> str:
    return "-" if value in (None, "") else f"${value}"


def _top_spenders(spend: Sequence[Mapping[str, Any]]) -> list[str]:
    """``Top users (day): alice $1.20, bob $0.30`` per window that has any (status.spend[].topUsers)."""
    lines = []
    for field, label in (("topUsers", "users"), ("topFeatures", "features")):
        for window in spend:
            top = window.get(field) or []
            if top:
                named = ", ".join(f"{entry.get('name')} {_usd(entry.get('usd'))}" for entry in top)
                lines.append(f"  Top {label} ({window.get('window')}): {named}")
    return lines


def details(policy: Mapping[str, Any]) -> list[str]:
    """Everything ``kubectl describe`` would bury, in the order an on-call engineer asks for it."""
    meta, spec = policy.get("metadata") or {}, policy.get("spec") or {}
    status = policy.get("status") or {}
    lines = [
        f"OpenAIPolicy {meta.get('namespace')}/{meta.get('name')}"
        f"  (generation {meta.get('generation', '?')}, observed {status.get('observedGeneration', '-')})",
        f"  Mode: {spec.get('mode', 'enforce')}   Suspended: {'yes' if spec.get('suspend') else 'no'}",
    ]
    suspended = suspension.describe(meta)
    if suspended:
        lines.append(f"  {suspended}")
    lines.append("  Conditions:")
    for condition in status.get("conditions") or [
        {"type": "Ready", "status": "Unknown", "message": "no status yet"}
    ]:
        reason = f" ({condition['reason']})" if condition.get("reason") else ""
        message = f": {condition['message']}" if condition.get("message") else ""
        lines.append(f"    {condition.get('type')}={condition.get('status')}{reason}{message}")
    pods = status.get("pods") or {}
    lines.append(
        f"  Pods: {pods.get('injected', 0)} injected, {pods.get('reporting', 0)} reporting, "
        f"{pods.get('upToDate', 0)} on this generation"
    )
    spend = status.get("spend") or []
    if spend:
        lines.append("  Spend:")
        rows = [["WINDOW", "FROM", "UNTIL", "SPENT", "LIMIT", "LEFT", "USED"]]
        for window in spend:
            percent = window.get("percent")
            rows.append(
                [
                    str(window.get("window", "")),
                    str(window.get("start") or window.get("bucket", "")),
                    str(window.get("end") or "-"),
                    _usd(window.get("usd")),
                    _usd(window.get("limitUsd")),
                    _usd(window.get("remainingUsd")),
                    "-" if percent is None else f"{percent}%",
                ]
            )
        lines.extend("    " + row for row in _table(rows))
        lines.extend(_top_spenders(spend))
    usage = status.get("usage") or {}
    if usage:
        lines.append(
            f"  Usage: {usage.get('requests', 0)} requests, {usage.get('tokensInput', 0)} input / "
            f"{usage.get('tokensOutput', 0)} output tokens, {usage.get('errors', 0)} upstream errors"
        )
        blocked = usage.get("blockedByReason") or {}
        if blocked:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(blocked.items()))
            lines.append(f"  Refused: {usage.get('blocked', 0)} ({reasons})")
    if status.get("lastReportTime"):
        lines.append(f"  Last report: {status['lastReportTime']}")
    return lines
