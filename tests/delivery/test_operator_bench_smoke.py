"""Smoke test of the operator-at-scale harness (bench/operator_bench.py --quick): tens of policies
and pods on a control plane of its own.

It checks that the harness measures what it says — every policy applied and seen Ready, every pod
created through the admission chain and injected with the policy that selects it, the API server's
webhook histogram counting exactly those pods, every policy's status catching up with what its
sidecars reported, CPU and RSS sampled at each stage, slopes and target checks computed — never
how fast anything is: timings depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "operator_bench.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, kubebuilder_assets: Path) -> dict:
    output = tmp_path_factory.mktemp("operator-bench") / "operator-scale.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(output)],
        cwd=REPO,
        env={**os.environ, "KUBEBUILDER_ASSETS": str(kubebuilder_assets)},
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return json.loads(output.read_text())


def test_every_policy_was_applied_with_kubectl_and_seen_ready(quick):
    plan = quick["plan"]
    assert quick["mode"] == "quick" and plan["policies"] == plan["policy_marks"][-1]
    assert quick["apply"]["failed"] == 0
    for key in ("apply_to_ready_s", "kubectl_apply_s"):
        figures = quick[key]
        assert figures["count"] == plan["policies"], key
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"], (key, figures)


def test_every_pod_went_through_the_webhook_and_was_injected(quick):
    plan, pods = quick["plan"], quick["pods"]
    assert pods["created_and_injected"] == plan["pods"] and pods["wrong"] == 0, pods["wrong_examples"]
    assert 0 < pods["client_create_s"]["p50"] <= pods["client_create_s"]["p99"]
    webhook = quick["webhook_admission_apiserver_s"]["all"]
    # The API server called the webhook once per pod (no other CREATE reaches it: pods only).
    assert webhook["count"] == plan["pods"]
    assert webhook["p50_le"] <= webhook["p99_le"] and webhook["p99_le"] in (
        float(b) for b in webhook["buckets_le"]
    )
    assert webhook["p50_interpolated"] <= webhook["p50_le"]
    assert quick["validating_admission_policy_s"]["all"]["count"] >= plan["pods"]
    rest = quick["webhook_at_rest"]
    assert (
        rest["apiserver_webhook_s"]["count"] == rest["pods_one_at_a_time"] == rest["client_create_s"]["count"]
    )


def test_every_status_caught_up_with_its_sidecars_reports(quick):
    fresh = quick["status_freshness_s"]
    assert fresh["missing"] == 0 and len(fresh["rounds"]) == quick["plan"]["fresh_rounds"]
    for round_ in fresh["rounds"]:
        assert round_["count"] == quick["plan"]["policies"]
        assert 0 < round_["p50"] <= round_["p99"] <= round_["max"]
    assert quick["fleet_heartbeats_written"] >= quick["plan"]["pods"]  # every pod beat at least once
    assert quick["watch"]["events"] > quick["plan"]["policies"]


def test_stages_slopes_and_target_checks(quick):
    plan = quick["plan"]
    stages = {(s["policies"], s["pods"]): s for s in quick["stages"]}
    wanted = (
        {(0, 0)} | {(p, 0) for p in plan["policy_marks"]} | {(plan["policies"], q) for q in plan["pod_marks"]}
    )
    assert set(stages) == wanted
    for stage in stages.values():
        for process in ("operator", "kube-apiserver", "etcd"):
            assert stage[process]["rss_mib"] > 5 and stage[process]["cpu_percent"] >= 0, (
                stage["stage"],
                process,
            )
    assert set(quick["slopes"]) == {
        "operator_rss_kib_per_policy",
        "operator_cpu_percent_per_100_policies",
        "operator_rss_kib_per_pod",
        "operator_cpu_percent_per_1000_pods",
    }
    checks = {c["target"]: c for c in quick["targets_check"]}
    assert len(checks) == 3 and all(isinstance(c["met"], bool) for c in checks.values())
    assert quick["operator_log_errors"] == 0, quick["operator_log_error_examples"]
