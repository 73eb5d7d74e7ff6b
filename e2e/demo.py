"""``make demo``: the whole story on one machine, in one command.

As root, ``make demo`` runs it on the project's real one-node cluster (e2e/node/run.sh: images
built from the Dockerfiles, the chart installed with helm, the kubelet running the pods), and
tears the node down afterwards. Elsewhere, or with ``OPENAI_API_KEY`` set (pods on that node reach
no outside API), the local show below runs:

A local control plane (etcd, kube-apiserver, kube-controller-manager), a Redis, an upstream (the
fake OpenAI server, or the real API when ``OPENAI_API_KEY`` is set), the chart installed with
helm and its operator running, an OpenAIPolicy with a small budget, and a governed Deployment
whose app sends requests with the ``openai`` SDK. Every ~2 s it prints ``kubectl get oaip`` as
spend rises, the app's outcomes (refusals show up when the budget is hit), and at last the
BudgetExceeded condition.

On a terminal it runs until Ctrl-C. Otherwise (a test, CI) it finishes by itself: exit 0 once the
budget is exceeded (refusals seen and the condition True), exit 1 if that has not happened within
--timeout seconds. Either way everything it started is stopped before it exits.

    python -m e2e.demo [--timeout 120] [--interval 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from e2e.environments import ClusterEnvironment, RunningPod, cluster_from_environment
from e2e.kube import Kubectl, condition, get_json, wait_for
from e2e.stack import ROOT, LocalStack, image_commands
from e2e.workload import Workload, client_records, deploy, label_for_injection, stored_pod
from openai_policy_devkit.control_plane import ControlPlane
from openai_policy_devkit.fake_openai_admin import answers_health
from openai_policy_devkit.managed_process import ManagedProcess, free_port
from openai_policy_devkit.pod_runner import LocalPod
from openai_policy_devkit.redis_server import RedisServer

POLICY = "demo-budget"
BUDGET_USD = 0.25
DEMO_FAKE_KEY = "sk-demo-key-from-the-secret"
CONDITION_GRACE = 20.0  # seconds from the first budget refusal to the BudgetExceeded condition


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="when not on a terminal: give up after this many seconds (exit 1)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two status prints")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="logs and state (default: a temporary directory)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs) afterwards")
    return parser.parse_args(argv)


class Demo:
    """Starts the pieces in order, remembers them, and stops them in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cp: ControlPlane | None = None
        self.redis: RedisServer | None = None
        self.fake: ManagedProcess | None = None
        self.stack: LocalStack | None = None
        self.pod: LocalPod | None = None
        self.namespace = ""

    # -- bring-up -----------------------------------------------------------------------

    def start_control_plane(self) -> ControlPlane:
        say("starting a local control plane (etcd, kube-apiserver, kube-controller-manager)")
        self.cp = ControlPlane()
        self.cp.start()
        say(f"control plane at {self.cp.server}; kubeconfig: {self.cp.kubeconfig}")
        return self.cp

    def start_redis(self) -> RedisServer:
        self.redis = RedisServer().start()
        say(f"redis at {self.redis.url}")
        return self.redis

    def start_fake_upstream(self) -> str:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.fake = ManagedProcess(
            "fake-openai",
            [sys.executable, "-m", "openai_policy_devkit.fake_openai", "--port", str(port)],
            self.workdir / "logs" / "fake-openai.log",
            env=env,
            cwd=self.workdir,
        )
        self.fake.start()

        def healthy() -> bool:
            assert self.fake is not None
            self.fake.check_alive()
            return answers_health(port)

        wait_for(healthy, 30, "the fake OpenAI upstream", 0.1)
        say(f"fake OpenAI upstream at http://127.0.0.1:{port}/v1 (set OPENAI_API_KEY to use the real API)")
        return f"http://127.0.0.1:{port}/v1"

    def start_stack(self) -> LocalStack:
        assert self.cp is not None and self.redis is not None
        self.stack = LocalStack(self.cp, self.redis.url, self.workdir / "stack", log=say)
        self.stack.start()
        say(f"operator running; its webhook is registered ({self.stack.webhook_configuration})")
        return self.stack

    def deploy_workload(self, upstream: str | None, api_key: str) -> Workload:
        assert self.cp is not None and self.stack is not None
        self.namespace = self.cp.create_namespace("demo")
        label_for_injection(self.cp, self.namespace)
        workload = Workload(
            self.namespace,
            policy=POLICY,
            api_key=api_key,
            upstream=upstream,
            budget_usd=BUDGET_USD,
            client_args=["--interval", "0.5", "--max-tokens", "1000"],
        )
        say(
            f"namespace {self.namespace} (labelled openaipolicy.dev/injection=enabled): Secret, OpenAIPolicy "
            f"{POLICY} (budget ${BUDGET_USD:.2f}/day, gpt-4o-mini pinned, 50 output tokens max), "
            "Deployment governed-client"
        )
        deploy(self.cp, workload)
        pod = stored_pod(self.cp, self.namespace)
        injected = (pod["metadata"].get("annotations") or {}).get("openaipolicy.dev/injected")
        if injected != POLICY:
            raise RuntimeError(
                f"the Pod was not injected by the webhook:\n{self.stack.operator_logs()[-3000:]}"
            )
        say(f"Pod {pod['metadata']['name']} stored with the sidecar injected; starting it locally")
        self.pod = LocalPod(
            self.stack.api_client,
            self.namespace,
            pod["metadata"]["name"],
            self.workdir / "pod",
            image_commands=image_commands(),
        )
        self.pod.start(probe_timeout=60)
        return workload

    # -- the show -----------------------------------------------------------------------

    @property
    def kube(self) -> Kubectl:
        assert self.cp is not None
        return self.cp

    def app_logs(self) -> str:
        assert self.pod is not None
        return self.pod.logs("app")

    def app_exited(self) -> bool:
        assert self.pod is not None
        return self.pod.containers["app"].process.poll() is not None

    def watch(self, interval: float, timeout: float | None) -> bool:
        """Print status until the budget is exceeded (or forever on a terminal); True if it was."""
        started = time.monotonic()
        shown = 0
        refused_at: float | None = None
        announced = False
        while True:
            records = client_records(self.app_logs())
            new, shown = records[shown:], len(records)
            if refused_at is None and any(r.get("code") == "budget_exceeded" for r in new):
                refused_at = time.monotonic()
            refused_seen = refused_at is not None
            print(
                f"\n--- {time.strftime('%H:%M:%S')}  kubectl get oaip -n {self.namespace} -o wide", flush=True
            )
            print(
                self.kube.kubectl("get", "oaip", "-n", self.namespace, "-o", "wide").stdout.rstrip(),
                flush=True,
            )
            print(summarise(new), flush=True)
            policy = get_json(self.kube, "oaip", POLICY, "-n", self.namespace)
            exceeded = condition(policy, "BudgetExceeded")
            if exceeded and exceeded.get("status") == "True" and refused_seen and not announced:
                announced = True
                print(
                    f"\nBudgetExceeded: {exceeded['status']} ({exceeded.get('reason')}): {exceeded.get('message')}",
                    flush=True,
                )
                if timeout is not None:
                    return True
                say("the budget is exceeded and calls are refused; Ctrl-C stops everything")
            if self.app_exited():
                raise RuntimeError(f"the app exited:\n{self.app_logs()[-3000:]}")
            now = time.monotonic()
            # Not on a terminal: bounded. The condition gets CONDITION_GRACE seconds after the
            # first refusal (the operator reports every second or so), the whole show `timeout`.
            late = refused_at is not None and now - refused_at > CONDITION_GRACE
            if timeout is not None and (now - started > timeout or late):
                print(f"\nBudgetExceeded: {exceeded}", flush=True)
                say(
                    f"the budget was not reported exceeded (BudgetExceeded=True) within "
                    f"{CONDITION_GRACE if late else timeout:g}s (refusals seen: {refused_seen})"
                )
                return False
            time.sleep(interval)

    # -- tear-down ----------------------------------------------------------------------

    def stop(self) -> None:
        """Reverse order; each step runs even if an earlier one failed."""
        steps = [
            ("the workload", lambda: self.pod and self.pod.stop()),
            ("the operator", lambda: self.stack and self.stack.stop(uninstall=False)),
            ("the fake upstream", lambda: self.fake and self.fake.stop()),
            ("redis", lambda: self.redis and self.redis.close()),
            ("the control plane", lambda: self.cp and self.cp.stop()),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - keep stopping the rest
                say(f"stopping {what} failed: {error}")


class ClusterDemo(Demo):
    """The same show on a real cluster with real pods: the chart e2e/node/run.sh installed (`make
    demo` as root), the fake upstream as a pod, the app on the e2e app image."""

    def __init__(self, workdir: Path, env: ClusterEnvironment) -> None:
        super().__init__(workdir)
        self.env = env
        self.running: RunningPod | None = None
        self.pod_name = ""

    @property
    def kube(self) -> Kubectl:
        return self.env.cluster

    def deploy_on_cluster(self) -> Workload:
        self.namespace = self.env.create_namespace("demo")
        upstream = self.env.upstream(self.namespace)
        say(f"fake OpenAI upstream running as a pod: {upstream.base_url}")
        label_for_injection(self.kube, self.namespace)
        workload = Workload(
            self.namespace,
            policy=POLICY,
            api_key=DEMO_FAKE_KEY,
            upstream=upstream.base_url,
            budget_usd=BUDGET_USD,
            client_args=["--interval", "0.5", "--max-tokens", "1000"],
            image=self.env.app_image,
        )
        deploy(self.kube, workload)
        pod = stored_pod(self.kube, self.namespace)
        self.pod_name = pod["metadata"]["name"]
        if (pod["metadata"].get("annotations") or {}).get("openaipolicy.dev/injected") != POLICY:
            raise RuntimeError(f"the Pod was not injected by the webhook:\n{self.env.operator_logs(tail=50)}")
        say(f"Pod {self.pod_name} stored with the sidecar injected; the kubelet runs it")
        self.running = self.env.run_pod(pod)
        return workload

    def app_logs(self) -> str:
        assert self.running is not None
        return self.running.logs("app")

    def app_exited(self) -> bool:
        pod = get_json(self.kube, "pod", self.pod_name, "-n", self.namespace) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return any(s.get("name") == "app" and "terminated" in (s.get("state") or {}) for s in statuses)

    def stop(self) -> None:
        self.env.close()


def summarise(records: list[dict[str, Any]]) -> str:
    """The app's outcomes since the last print, one line per run of identical outcomes."""
    if not records:
        return "app: (no new requests)"
    runs: list[tuple[str, int, int]] = []  # (text, first n, last n)
    for record in records:
        if record.get("ok"):
            text = (
                f"ok       model={record.get('model')} "
                f"tokens={record.get('prompt_tokens')}+{record.get('completion_tokens')}"
            )
        else:
            text = f"REFUSED  {record.get('status')} {record.get('code')}: {record.get('message')}"
        if runs and runs[-1][0] == text:
            runs[-1] = (text, runs[-1][1], record["n"])
        else:
            runs.append((text, record["n"], record["n"]))
    lines = []
    for text, first, last in runs:
        label = f"#{first}" if first == last else f"#{first}-#{last}"
        lines.append(f"app {label:>9}: {text}")
    return "\n".join(lines)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a test's timeout, systemd, CI) stops the demo as Ctrl-C does; and Ctrl-C works
    even when the demo was started with SIGINT ignored (a background job of a script)."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="openai-policy-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    real_key = os.environ.get("OPENAI_API_KEY")
    demo: Demo = Demo(workdir)
    exit_code = 1
    # On the real node when the run script prepared one (pods there reach no outside API, so a
    # real key keeps the local show).
    found = cluster_from_environment() if not real_key else "OPENAI_API_KEY is set"
    with terminate_as_interrupt():
        try:
            if isinstance(found, ClusterEnvironment):
                demo = ClusterDemo(workdir, found)
                say(
                    f"on a real cluster ({os.environ.get('OPENAI_POLICY_E2E_CLUSTER')}): real pods, the chart's images"
                )
                demo.deploy_on_cluster()
            else:
                say(f"no real cluster ({found}): local control plane, pods run by the local runner")
                demo.start_control_plane()
                demo.start_redis()
                upstream = None if real_key else demo.start_fake_upstream()
                if real_key:
                    say(
                        "OPENAI_API_KEY is set: the policy's upstream is the public OpenAI API (a few cents of "
                        "demo-priced budget; the real cost stays far below a cent)"
                    )
                demo.start_stack()
                demo.deploy_workload(upstream, real_key or DEMO_FAKE_KEY)
            exceeded = demo.watch(args.interval, None if interactive() else args.timeout)
            exit_code = 0 if exceeded else 1
        except KeyboardInterrupt:
            print(flush=True)
            say("interrupted")
            exit_code = 0 if interactive() else 130
        except Exception as error:  # noqa: BLE001 - report, then still clean up everything
            say(f"failed: {error}")
            args.keep = True
        finally:
            # A second Ctrl-C must not abandon half-stopped processes.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            say("stopping everything it started")
            demo.stop()
            signal.signal(signal.SIGINT, previous)
    if args.keep:
        say(f"logs kept in {workdir}")
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    say("done")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
