"""`make demo` (python -m e2e.demo) run the way CI runs it: not on a terminal, so it finishes by
itself. Its output must show spend rising, refusals once the budget is hit and the BudgetExceeded
condition; and whether it finishes or is interrupted, no process it started may be left.

Every temporary directory the demo and its children use is under this test's TMPDIR, which is how
leftovers are found: any process whose command line, working directory or environment mentions it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo_env(tmp: Path, on_cluster: bool = False) -> dict[str, str]:
    """The local show, or (on_cluster) the real cluster e2e/node/run.sh prepared for `make test`."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}  # always the fake upstream here
    if not on_cluster:
        env.pop("OPENAI_POLICY_E2E_CLUSTER", None)
    env["TMPDIR"] = str(tmp)
    return env


def processes_mentioning(marker: str) -> list[str]:
    """Live processes (not zombies) whose cmdline, cwd or environment contains `marker`."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            texts = [
                cmdline,
                os.readlink(entry / "cwd"),
                (entry / "environ").read_bytes().decode(errors="replace"),
            ]
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if any(marker in text for text in texts):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def wait_gone(marker: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def spend_values(output: str) -> list[float]:
    """The spent amounts in the SPEND column of every `kubectl get oaip` table printed."""
    return [float(m.group(1)) for m in re.finditer(r"\$(\d+\.\d\d)/\$0\.25 day", output)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("where", ["local", "real cluster"])
def test_demo_runs_to_the_budget_and_leaves_nothing(kubebuilder_assets, tiktoken_cache_dir, tmp_path, where):
    on_cluster = where == "real cluster"
    if on_cluster and os.environ.get("OPENAI_POLICY_E2E_CLUSTER") not in ("node", "kind"):
        pytest.skip(
            os.environ.get("OPENAI_POLICY_E2E_SKIP", "no real cluster (make test as root brings one up)")
        )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "e2e.demo", "--timeout", "120"],
        cwd=ROOT,
        env=demo_env(tmp, on_cluster),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=220,
    )
    output = result.stdout + result.stderr
    assert not wait_gone(str(tmp)), f"processes left by the demo: {processes_mentioning(str(tmp))}"
    assert "kubectl get oaip" in output and "SPEND" in output, output[-5000:]
    spends = spend_values(output)
    assert spends and max(spends) > 0, f"no spend shown:\n{output[-5000:]}"
    assert spends == sorted(spends), f"spend went down: {spends}"
    assert len(set(spends)) >= 3, f"spend did not visibly rise: {spends}"
    assert max(spends) <= 0.25
    assert re.search(r"REFUSED\s+429 budget_exceeded", output), output[-5000:]
    assert result.returncode == 0, output[-5000:]
    assert re.search(r"BudgetExceeded: True \(LimitReached\)", output), output[-5000:]
    assert "demo: stopping everything it started" in output and output.rstrip().endswith("demo: done")
    assert ("the kubelet runs it" in output) == on_cluster, output[-5000:]


@pytest.mark.timeout(180)
def test_interrupting_the_demo_stops_everything(kubebuilder_assets, tiktoken_cache_dir, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "e2e.demo", "--timeout", "120"],
            cwd=ROOT,
            env=demo_env(tmp),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Interrupt once the whole stack runs: the workload's first status print.
        deadline = time.monotonic() + 120
        while "kubectl get oaip" not in log.read_text():
            assert demo.poll() is None, f"the demo exited early:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"the demo did not get going:\n{log.read_text()[-5000:]}"
            time.sleep(0.2)
        assert processes_mentioning(str(tmp)), "the marker does not find the demo's processes"
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = log.read_text()
    assert not wait_gone(str(tmp)), f"processes left after Ctrl-C: {processes_mentioning(str(tmp))}"
    assert "demo: interrupted" in output and "demo: stopping everything it started" in output, output[-3000:]
    assert code == 130, output[-3000:]  # not on a terminal, an interruption is not a success
