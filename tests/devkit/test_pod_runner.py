"""The local pod runner (devkit/openai_policy_devkit/pod_runner.py) against a real API server.

Pods are created through the API server (so admission fills in what it would on a cluster, the
ServiceAccount token volume included) and started by LocalPod from the stored object. Nothing here
schedules them: with no scheduler or kubelet in the control plane they stay Pending, which is the
point - LocalPod plays the kubelet.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config as k8s_config

from openai_policy_devkit.control_plane import ControlPlane
from openai_policy_devkit.managed_process import pid_alive
from openai_policy_devkit.pod_runner import LocalPod, PodRunnerError, _expand
from openai_policy_devkit.polling import wait_for

# A pod's app: reports what it sees (env and mounted files) as one JSON line, then exits.
REPORT_SCRIPT = """
import json, os, pathlib, sys
files = {}
for arg in sys.argv[1:]:
    path = pathlib.Path(arg)
    files[arg] = path.read_text() if path.is_file() else None
scratch = pathlib.Path(os.environ["SCRATCH"]) / "note"
scratch.write_text("written")
print(json.dumps({"env": dict(os.environ), "files": files, "scratch": scratch.read_text(), "cwd": os.getcwd()}))
"""

# A native sidecar: serves /ready (after a short delay, so that gating is observable), /hello and
# records when it became ready.
SIDECAR_SCRIPT = """
import http.server, os, pathlib, sys, time
host, port = sys.argv[1].rsplit(":", 1)
time.sleep(0.7)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the sidecar" if self.path == "/hello" else b"ok"
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((host, int(port)), Handler)
pathlib.Path(os.environ["SHARED"], "sidecar-ready").write_text(repr(time.time()))
server.serve_forever()
"""

# An app that needs the sidecar: checks the init container ran, calls the sidecar, prints the result.
APP_SCRIPT = """
import json, os, pathlib, time, urllib.request
shared = pathlib.Path(os.environ["SHARED"])
started = time.time()
with urllib.request.urlopen(os.environ["SIDECAR_URL"] + "/hello", timeout=5) as response:
    reply = response.read().decode()
print(json.dumps({"prepared": (shared / "prepared").read_text(),
                  "sidecar_ready_before_app": float((shared / "sidecar-ready").read_text()) <= started,
                  "reply": reply}), flush=True)
time.sleep(600)
"""

# Prints the mounted key file's content whenever it changes (a process that is never restarted).
WATCH_SCRIPT = """
import pathlib, sys, time
path, last = pathlib.Path(sys.argv[1]), None
while True:
    text = path.read_text() if path.exists() else "<missing>"
    if text != last:
        print("key=" + text, flush=True)
        last = text
    time.sleep(0.05)
"""


@pytest.fixture
def api_client(control_plane: ControlPlane) -> Iterator[Any]:
    client = k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def create_secret(cp: ControlPlane, namespace: str, name: str, data: dict[str, str]) -> None:
    cp.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
    )


def replace_secret_data(cp: ControlPlane, namespace: str, name: str, data: dict[str, str]) -> None:
    secret = cp.api("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    secret["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    cp.api("PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", secret)


def create_config_map(cp: ControlPlane, namespace: str, name: str, data: dict[str, str]) -> None:
    cp.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data},
    )


def create_pod(
    cp: ControlPlane,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    return cp.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec},
    )


def last_json_line(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in the container's output:\n{text}"
    return json.loads(lines[-1])


# ---- pure helpers -----------------------------------------------------------------------------


def test_expand_follows_kubernetes_rules():
    env = {"A": "x", "B": "y"}
    assert _expand("$(A)-$(B)", env) == "x-y"
    assert _expand("$(MISSING)", env) == "$(MISSING)"  # unknown references stay as written
    assert _expand("$$(A)", env) == "$(A)"  # $$ escapes


def test_rewrite_is_one_pass_and_respects_path_boundaries(tmp_path):
    pod = LocalPod.__new__(LocalPod)  # only the rewriting state, no API client needed
    pod.ports = {8780: 40001, 40001: 40002}
    mounts = [
        ("/tmp", "/tmp/pytest-x/volumes/tmp"),
        ("/etc/config", "/w/volumes/config"),
        ("/etc/config/nested", "/w/volumes/nested"),
    ]
    rewrite = pod._rewrite
    # A replacement is never rewritten again: neither the /tmp in a local path nor a host port.
    assert rewrite("--dir=/tmp/x", mounts) == "--dir=/tmp/pytest-x/volumes/tmp/x"
    assert rewrite("http://127.0.0.1:8780/v1", mounts) == "http://127.0.0.1:40001/v1"
    assert rewrite("0.0.0.0:40001", mounts) == "127.0.0.1:40002"
    # Whole path components only; the longest mount wins.
    assert (
        rewrite("/etc/configuration /etc/config /etc/config/a", mounts)
        == "/etc/configuration /w/volumes/config /w/volumes/config/a"
    )
    assert rewrite("/etc/config/nested/file", mounts) == "/w/volumes/nested/file"
    assert rewrite("localhost:87800", mounts) == "localhost:87800"
    # Port flags, for servers that take the port alone.
    assert pod._rewrite_argv(
        ["serve", "--port", "8780", "--port=8780", "--workers", "8780", "--port", "9"]
    ) == ["serve", "--port", "40001", "--port=40001", "--workers", "8780", "--port", "9"]


# ---- against the API server ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_env_secret_configmap_and_downward_api(control_plane, namespace, api_client, tmp_path):
    create_secret(control_plane, namespace, "creds", {"token": "s3cret-token", "other": "ignored"})
    create_config_map(control_plane, namespace, "settings", {"mode": "fast", "level": "3"})
    spec = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "command": ["python", "-c", REPORT_SCRIPT],
                "args": [
                    "/etc/secret/token",
                    "/etc/secret/other",
                    "/etc/config/mode",
                    "/etc/podinfo/name",
                    "/etc/podinfo/labels",
                    "/etc/podinfo/team",
                    "$(GREETING)-arg",
                    "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                ],
                "workingDir": "/etc/config",
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "COMBINED", "value": "$(GREETING)-world"},
                    {"name": "ESCAPED", "value": "$$(GREETING)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {
                        "name": "FROM_CM",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}},
                    },
                    {"name": "CONFIG_FILE", "value": "/etc/config/mode"},
                    {"name": "SCRATCH", "value": "/scratch"},
                ],
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
                "volumeMounts": [
                    {"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
                    {"name": "config", "mountPath": "/etc/config"},
                    {"name": "podinfo", "mountPath": "/etc/podinfo"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }
        ],
        "volumes": [
            {
                "name": "secret",
                "secret": {"secretName": "creds", "items": [{"key": "token", "path": "token"}]},
            },
            {"name": "config", "configMap": {"name": "settings"}},
            {
                "name": "podinfo",
                "downwardAPI": {
                    "items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "team", "fieldRef": {"fieldPath": "metadata.labels['team']"}},
                    ]
                },
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    create_pod(control_plane, namespace, "reporter", spec, labels={"team": "blue", "app": "reporter"})

    with LocalPod(api_client, namespace, "reporter", tmp_path / "pod") as pod:
        pod.start()
        assert pod.wait("app", timeout=30) == 0, pod.logs("app")
        seen = last_json_line(pod.logs("app"))

    env, files = seen["env"], seen["files"]
    assert env["GREETING"] == "hello"
    assert env["COMBINED"] == "hello-world"
    assert env["ESCAPED"] == "$(GREETING)"
    assert env["POD"] == "reporter" and env["NS"] == namespace and env["TEAM"] == "blue"
    assert env["FROM_SECRET"] == "s3cret-token" and env["FROM_CM"] == "3"
    assert env["CM_mode"] == "fast" and env["CM_level"] == "3"
    # Mount paths in env, args and workingDir point at the materialised files.
    assert Path(env["CONFIG_FILE"]).read_text() == "fast"
    assert seen["cwd"] == str(pod.volumes["config"].path)
    assert seen["scratch"] == "written"
    values = list(files.values())
    assert values[0] == "s3cret-token"
    assert values[1] is None  # items: only the listed key is projected
    assert values[2] == "fast"
    assert values[3] == "reporter"
    assert values[4] == 'app="reporter"\nteam="blue"'
    assert values[5] == "blue"
    assert list(files)[6] == "hello-arg"
    # The ServiceAccount admission plugin's projected volume (token, CA, namespace) is there too.
    assert values[7] == namespace
    # The host's environment does not leak into the container.
    assert "KUBEBUILDER_ASSETS" not in env


@pytest.mark.timeout(120)
def test_native_sidecar_is_gated_on_its_startup_probe(control_plane, namespace, api_client, tmp_path):
    shared_env = [{"name": "SHARED", "value": "/shared"}]
    shared_mount = [{"name": "shared", "mountPath": "/shared"}]
    spec = {
        "initContainers": [
            {
                "name": "proxy",
                "image": "proxy:1",
                "restartPolicy": "Always",
                "command": ["python", "-c", SIDECAR_SCRIPT],
                "args": ["0.0.0.0:8080"],
                "ports": [{"name": "admin", "containerPort": 8080}],
                # A named probe port, resolved through the container's ports.
                "startupProbe": {"httpGet": {"path": "/ready", "port": "admin"}, "periodSeconds": 1},
                "env": shared_env,
                "volumeMounts": shared_mount,
            },
            {
                "name": "prepare",
                "image": "prepare:1",
                "command": [
                    "python",
                    "-c",
                    "import pathlib; pathlib.Path('/shared/prepared').write_text('yes')",
                ],
                "volumeMounts": shared_mount,
            },
        ],
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "command": ["python", "-c", APP_SCRIPT],
                "env": [*shared_env, {"name": "SIDECAR_URL", "value": "http://127.0.0.1:8080"}],
                "volumeMounts": shared_mount,
            },
        ],
        "volumes": [{"name": "shared", "emptyDir": {}}],
    }
    create_pod(control_plane, namespace, "gated", spec)
    pod = LocalPod(api_client, namespace, "gated", tmp_path / "pod")
    try:
        pod.start(probe_timeout=30)
        assert list(pod.containers) == ["proxy", "prepare", "app"]
        seen = wait_for(
            lambda: "{" in pod.logs("app") and last_json_line(pod.logs("app")), 20, "the app's report"
        )
        assert seen == {
            "prepared": "yes",
            "sidecar_ready_before_app": True,
            "reply": "hello from the sidecar",
        }
        # The pod port is reachable from the host through its remapped port.
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.host_port(8080)}/hello", timeout=5) as response:
            assert response.read() == b"hello from the sidecar"
        pids = pod.pids()
    finally:
        pod.stop()
    assert not [pid for pid in pids if pid_alive(pid)], "containers still running after stop()"


@pytest.mark.timeout(120)
def test_secret_rotation_rewrites_the_file_for_a_running_process(
    control_plane, namespace, api_client, tmp_path
):
    create_secret(control_plane, namespace, "api", {"api-key": "key-one"})
    spec = {
        "containers": [
            {
                "name": "watcher",
                "image": "w:1",
                "command": ["python", "-c", WATCH_SCRIPT],
                "args": ["/var/run/secrets/app/api-key"],
                "volumeMounts": [{"name": "key", "mountPath": "/var/run/secrets/app", "readOnly": True}],
            }
        ],
        "volumes": [
            {"name": "key", "secret": {"secretName": "api", "items": [{"key": "api-key", "path": "api-key"}]}}
        ],
    }
    create_pod(control_plane, namespace, "watcher", spec)
    pod = LocalPod(api_client, namespace, "watcher", tmp_path / "pod", sync_interval=0.2)
    try:
        pod.start()
        wait_for(lambda: "key=key-one" in pod.logs("watcher"), 10, "the first key")
        pid = pod.containers["watcher"].process.pid
        replace_secret_data(control_plane, namespace, "api", {"api-key": "key-two"})
        started = time.monotonic()
        wait_for(lambda: "key=key-two" in pod.logs("watcher"), 5, "the rotated key in the running process")
        assert time.monotonic() - started < 5
        assert (
            pod.containers["watcher"].process.pid == pid and pod.containers["watcher"].process.poll() is None
        )
        # The file was swapped atomically: the process never saw it missing or empty.
        assert "<missing>" not in pod.logs("watcher") and "key=\n" not in pod.logs("watcher")
        assert (pod.volumes["key"].path / "api-key").read_text() == "key-two"
        # Old data directories are cleaned up: one ..data target only.
        data_dirs = [
            p
            for p in pod.volumes["key"].path.iterdir()
            if p.name.startswith("..") and p.is_dir() and not p.is_symlink()
        ]
        assert len(data_dirs) == 1
    finally:
        pod.stop()


@pytest.mark.timeout(120)
def test_configmap_update_and_missing_object_are_waited_for(control_plane, namespace, api_client, tmp_path):
    spec = {
        "containers": [
            {
                "name": "watcher",
                "image": "w:1",
                "command": ["python", "-c", WATCH_SCRIPT],
                "args": ["/etc/app/setting"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}],
            }
        ],
        "volumes": [{"name": "cfg", "configMap": {"name": "late"}}],
    }
    create_pod(control_plane, namespace, "late", spec)
    # The ConfigMap appears only after the runner started waiting for it, as a kubelet would wait.
    timer = threading.Timer(1.0, create_config_map, (control_plane, namespace, "late", {"setting": "v1"}))
    timer.start()
    pod = LocalPod(api_client, namespace, "late", tmp_path / "pod", sync_interval=0.2)
    try:
        pod.start()
        wait_for(lambda: "key=v1" in pod.logs("watcher"), 10, "the late ConfigMap's content")
        control_plane.kubectl(
            "patch", "configmap", "late", "-n", namespace, "--type=merge", "-p", '{"data": {"setting": "v2"}}'
        )
        wait_for(lambda: "key=v2" in pod.logs("watcher"), 5, "the updated ConfigMap's content")
    finally:
        timer.cancel()
        pod.stop()


@pytest.mark.timeout(60)
def test_a_sidecar_that_dies_fails_start_and_leaves_nothing_running(
    control_plane, namespace, api_client, tmp_path
):
    spec = {
        "initContainers": [
            {
                "name": "proxy",
                "image": "p:1",
                "restartPolicy": "Always",
                "command": [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
                "startupProbe": {"httpGet": {"path": "/", "port": 8081}},
            }
        ],
        "containers": [
            {"name": "app", "image": "a:1", "command": ["python", "-c", "import time; time.sleep(60)"]}
        ],
    }
    create_pod(control_plane, namespace, "broken", spec)
    pod = LocalPod(api_client, namespace, "broken", tmp_path / "pod")
    with pytest.raises(PodRunnerError, match="(?s)exited with 3 before its probe passed.*bad config"):
        pod.start(probe_timeout=20)
    assert "app" not in pod.containers  # the app never started
    assert not [pid for pid in pod.pids() if pid_alive(pid)]


@pytest.mark.timeout(60)
def test_a_container_without_command_needs_an_image_entrypoint(
    control_plane, namespace, api_client, tmp_path
):
    spec = {"containers": [{"name": "app", "image": "tool:2", "args": ["-c", "print('from the image')"]}]}
    create_pod(control_plane, namespace, "imaged", spec)
    with pytest.raises(PodRunnerError, match="has no local entrypoint"):
        LocalPod(api_client, namespace, "imaged", tmp_path / "a").start()
    with LocalPod(
        api_client, namespace, "imaged", tmp_path / "b", image_commands={"tool:2": ["python"]}
    ) as pod:
        pod.start()
        assert pod.wait("app", timeout=20) == 0
        assert pod.logs("app").strip() == "from the image"
