"""The chart's alerts and dashboard, proven with the real promtool (Debian's prometheus package).

- every alert of the PrometheusRule has a promtool unit test that fires it and one that keeps it
  quiet (tests/delivery/prometheus/alerts.test.yaml), run by ``promtool test rules`` on the rules
  the chart renders with its defaults;
- every dashboard query parses as PromQL (``promtool check rules`` on them as recording rules,
  Grafana's variables replaced the way Grafana would);
- what a real sidecar exports after serving requests passes ``promtool check metrics`` (Prometheus
  naming: units, _total counters, help text).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, write_policy
from tests.delivery.chart_render import CHART, Helm, find

TESTS = Path(__file__).parent / "prometheus" / "alerts.test.yaml"
MONITORING = {"monitoring": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}


def promtool(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package (make promtool)")
    return subprocess.run(
        [binary, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def rendered_rules(helm: Helm) -> dict[str, Any]:
    return {"groups": find(helm.template(MONITORING), "PrometheusRule")["spec"]["groups"]}


def test_every_alert_has_a_firing_and_a_quiet_case(helm: Helm) -> None:
    alerts = {rule["alert"] for group in rendered_rules(helm)["groups"] for rule in group["rules"]}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts, f"alerts without a firing test: {sorted(alerts - firing)}"
    assert quiet == alerts, f"alerts without a quiet test: {sorted(alerts - quiet)}"


def test_promtool_unit_tests_of_the_rendered_rules_pass(helm: Helm, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(helm)))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_unit_tests_can_fail(helm: Helm, tmp_path: Path) -> None:
    """The same tests against rules whose thresholds moved: promtool must notice."""
    rules = rendered_rules(helm)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace("< 0.995", "< 0.5").replace("> 1000", "> 5000")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    tested = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "OpenAIPolicySuccessRateLow" in tested.stdout + tested.stderr
    assert "OpenAIPolicyQueueDepthHigh" in tested.stdout + tested.stderr


# Grafana's variables, replaced as Grafana does before it sends a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "$namespace": ".*",
    "$policy": ".*",
    "${namespace}": ".*",
    "${policy}": ".*",
}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = []
    for index, query in enumerate(queries):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            query = query.replace(variable, value)
        assert "$" not in query, f"a dashboard variable this test does not know: {query}"
        rules.append({"record": f"dashboard:query_{index}", "expr": query})
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # And a broken query is caught, so the check above is not vacuous.
    rules[0]["expr"] = "sum by (policy (rate(openai_policy_requests_total[1m]))"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert promtool("check", "rules", "broken.yaml", cwd=tmp_path).returncode != 0


def test_a_real_sidecars_metrics_pass_promtool_check_metrics(tmp_path: Path, fake_openai) -> None:
    key = tmp_path / "api-key"
    key.write_text("sk-test-metrics-lint-0123456789\n")
    spec = {**upstream_spec(fake_openai), "budget": {"limits": [{"window": "hour", "usd": 5}]}}
    policy = write_policy(tmp_path / "policy.yaml", spec)
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="not-a-model", messages=[{"role": "user", "content": "hi"}])
        client.close()
        status, exposition = sidecar.get_admin("/metrics")
    assert status == 200
    assert re.search(r'^openai_policy_requests_total\{.*status="200"', exposition, re.M), exposition[:2000]
    checked = promtool("check", "metrics", cwd=tmp_path, stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_follows_grafanas_linter_rules() -> None:
    """The rules of Grafana's dashboard-linter that apply to a Prometheus dashboard (its Go module is
    not served here, so they are checked directly): a templated data source used by every panel,
    rate windows of $__rate_interval, and every panel titled, described and given a unit."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in dashboard["panels"]:
        where = f"panel {panel['title']!r}"
        assert panel["datasource"]["uid"] == "${datasource}", where
        assert panel.get("description"), f"{where} has no description"
        assert (panel.get("fieldConfig") or {}).get("defaults", {}).get("unit"), f"{where} has no unit"
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", where
            windows = re.findall(r"\[([^\]]+)\]", target["expr"])
            assert all(w == "$__rate_interval" for w in windows), f"{where}: {target['expr']}"
