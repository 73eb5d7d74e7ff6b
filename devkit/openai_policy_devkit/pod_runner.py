"""Run a stored Pod's containers as local processes: a tiny kubelet for a machine without one.

The API server stores the Pod exactly as admission (our webhook included) left it; this runner
reads that object and starts what a kubelet would: init containers in order, native sidecars
(init containers with ``restartPolicy: Always``) kept running and gated on their startup probe,
then the app containers. Volumes are materialised as files (Secret, ConfigMap, downward API,
projected, emptyDir) and re-synced while the pod runs, the way a kubelet refreshes them, so
Secret rotation and policy updates reach the processes without a restart. Like the kubelet's
atomic writer, a volume's files are symlinks into a ``..data`` directory that is swapped in one
rename, so a reader never sees a missing or half-written file.

Two things differ from a real node, by necessity, and both are explicit:
- Paths: mount paths (``/etc/...``) are redirected into a private directory, by rewriting the
  mount path wherever it appears (as a whole path, or a prefix followed by ``/``) in a
  container's command, args, env and workingDir.
- Ports: every local pod shares the host's loopback, so each declared port (and the probe ports)
  is remapped to a free host port, by rewriting ``host:port`` in command, args and env, and the
  argument forms ``--port N`` and ``--port=N``. A port given any other way is not remapped.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from openai_policy_devkit.managed_process import _die_with_parent, free_port

LOOPBACK_HOSTS = ("127.0.0.1", "0.0.0.0", "localhost")
# The kubelet writes projected tokens valid for an hour and refreshes them at 80 % of their life.
TOKEN_SECONDS = 3600
TOKEN_REFRESH_FRACTION = 0.8


@dataclass
class RunningContainer:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class _Volume:
    name: str
    path: Path
    source: dict[str, Any]
    content: dict[str, bytes] | None = None  # None: never written


class PodRunnerError(RuntimeError):
    """The pod could not be started the way its spec says."""


class _NotReady(PodRunnerError):
    """A non-optional Secret/ConfigMap a volume needs does not exist (yet)."""


class LocalPod:
    """Starts and stops one stored Pod's containers as local processes."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        workdir: Path,
        image_commands: Mapping[str, list[str]] | None = None,
        path_prefix: list[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        sync_interval: float = 0.5,
    ) -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.workdir = workdir
        self.image_commands = dict(image_commands or {})
        self.path_prefix = list(path_prefix or [str(Path(sys.executable).parent)])
        self.extra_env = dict(extra_env or {})
        self.sync_interval = sync_interval
        self.pod: dict[str, Any] = {}
        self.ports: dict[int, int] = {}
        self.volumes: dict[str, _Volume] = {}
        self.containers: dict[str, RunningContainer] = {}
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._token: tuple[bytes, float] | None = None  # (token, refresh after monotonic time)

    # -- reading the stored pod ---------------------------------------------------------

    def load(self) -> dict[str, Any]:
        response = self.core.read_namespaced_pod(self.name, self.namespace, _preload_content=False)
        self.pod = json.loads(response.data)
        return self.pod

    @property
    def spec(self) -> dict[str, Any]:
        return self.pod["spec"]

    def _all_containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers", [])) + list(self.spec.get("containers", []))

    # -- volumes ------------------------------------------------------------------------

    def _volume_files(self, source: dict[str, Any]) -> dict[str, bytes]:
        """The files a volume source holds right now, keyed by relative path."""
        if "secret" in source:
            return self._object_files("secret", source["secret"])
        if "configMap" in source:
            return self._object_files("configMap", source["configMap"])
        if "downwardAPI" in source:
            return self._downward_files(source["downwardAPI"].get("items", []))
        if "projected" in source:
            files: dict[str, bytes] = {}
            for projection in source["projected"].get("sources", []):
                if "secret" in projection:
                    files.update(self._object_files("secret", projection["secret"]))
                elif "configMap" in projection:
                    files.update(self._object_files("configMap", projection["configMap"]))
                elif "downwardAPI" in projection:
                    files.update(self._downward_files(projection["downwardAPI"].get("items", [])))
                elif "serviceAccountToken" in projection:
                    files[projection["serviceAccountToken"].get("path", "token")] = (
                        self._service_account_token()
                    )
            return files
        if "emptyDir" in source:
            return {}
        raise PodRunnerError(f"volume source {sorted(source)} is not supported by the local pod runner")

    def _object_files(self, kind: str, ref: dict[str, Any]) -> dict[str, bytes]:
        name = ref.get("secretName") or ref.get("name")
        try:
            if kind == "secret":
                secret = self.core.read_namespaced_secret(name, self.namespace)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            else:
                cm = self.core.read_namespaced_config_map(name, self.namespace)
                data = {k: v.encode() for k, v in (cm.data or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        except k8s.ApiException as error:
            if error.status != 404:
                raise
            if ref.get("optional"):
                return {}
            # What a kubelet does too: the pod waits (ContainerCreating) until the object exists.
            raise _NotReady(f"{kind} {self.namespace}/{name} not found") from None
        items = ref.get("items")
        if not items:
            return data
        missing = [item["key"] for item in items if item["key"] not in data]
        if missing and not ref.get("optional"):
            raise _NotReady(f"{kind} {self.namespace}/{name} has no key {missing[0]!r}")
        return {item["path"]: data[item["key"]] for item in items if item["key"] in data}

    def _downward_files(self, items: list[dict[str, Any]]) -> dict[str, bytes]:
        return {
            item["path"]: self._field_value(item["fieldRef"]["fieldPath"], volume=True).encode()
            for item in items
            if "fieldRef" in item
        }

    def _service_account_token(self) -> bytes:
        # Cached: a fresh TokenRequest on every sync would rewrite the volume (and call the API)
        # twice a second; the kubelet too rotates the token only when it nears expiry.
        if self._token is not None and time.monotonic() < self._token[1]:
            return self._token[0]
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        )
        account = self.spec.get("serviceAccountName", "default")
        token = self.core.create_namespaced_service_account_token(account, self.namespace, request)
        value = token.status.token.encode()
        self._token = (value, time.monotonic() + TOKEN_SECONDS * TOKEN_REFRESH_FRACTION)
        return value

    def _write_volume(self, volume: _Volume, files: dict[str, bytes]) -> None:
        """The kubelet's atomic writer: files go to a fresh timestamped directory, ``..data`` is a
        symlink to it swapped by one rename, and every top-level entry is a symlink through
        ``..data``. A reader sees the old set or the new set, never a missing file."""
        volume.path.mkdir(parents=True, exist_ok=True)
        stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        staging = volume.path / stamp
        staging.mkdir()
        for relative, data in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        data_link = volume.path / "..data"
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = volume.path / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(stamp, tmp_link)
        os.replace(tmp_link, data_link)
        top_level = {Path(relative).parts[0] for relative in files}
        for entry in top_level:
            link = volume.path / entry
            if not link.is_symlink():
                os.symlink(f"..data/{entry}", link)
        for entry in volume.path.iterdir():
            # Entries the new content no longer has (a key removed from the Secret).
            if not entry.name.startswith("..") and entry.name not in top_level and entry.is_symlink():
                entry.unlink()
        if previous and previous != stamp:
            shutil.rmtree(volume.path / previous, ignore_errors=True)
        volume.content = files

    def materialise_volumes(self, timeout: float = 30.0) -> None:
        """Write every volume once, waiting (like a kubelet) for objects that do not exist yet."""
        for source in self.spec.get("volumes", []):
            volume = _Volume(source["name"], self.workdir / "volumes" / source["name"], source)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    files = self._volume_files(source)
                    break
                except _NotReady as error:
                    if time.monotonic() >= deadline:
                        raise PodRunnerError(f"volume {volume.name!r}: {error} after {timeout} s") from None
                    time.sleep(0.2)
            self._write_volume(volume, files)
            self.volumes[volume.name] = volume

    def sync_volumes(self) -> bool:
        """Re-read the pod and every API-backed volume; rewrite those whose content changed."""
        changed = False
        self.load()  # downward API files follow label and annotation changes
        for volume in self.volumes.values():
            if "emptyDir" in volume.source:
                continue
            try:
                files = self._volume_files(volume.source)
            except _NotReady:
                continue  # a deleted Secret leaves the last content in place, as on a node
            if files != volume.content:
                self._write_volume(volume, files)
                changed = True
        return changed

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync_volumes()
            except Exception:  # noqa: BLE001 - a kubelet keeps syncing through API hiccups too
                continue

    # -- environment and rewriting -----------------------------------------------------

    def _field_value(self, path: str, volume: bool = False) -> str:
        metadata = self.pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str(metadata.get(match.group(1), {}).get(match.group(2), ""))
        if volume and path in ("metadata.labels", "metadata.annotations"):
            # Only in volumes: one `key="value"` line per entry, sorted, as the kubelet writes them.
            entries = metadata.get(path.split(".")[1]) or {}
            return "\n".join(f"{key}={json.dumps(str(value))}" for key, value in sorted(entries.items()))
        simple = {
            "metadata.name": metadata.get("name", ""),
            "metadata.namespace": metadata.get("namespace", ""),
            "metadata.uid": metadata.get("uid", ""),
            "spec.nodeName": self.spec.get("nodeName", "local"),
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        if path not in simple:
            raise PodRunnerError(f"downward API field {path!r} is not supported by the local pod runner")
        return str(simple[path])

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                cm = self.core.read_namespaced_config_map(source["configMapRef"]["name"], self.namespace)
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
            if "secretRef" in source:
                secret = self.core.read_namespaced_secret(source["secretRef"]["name"], self.namespace)
                env.update({prefix + k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
            elif "valueFrom" in item:
                env[item["name"]] = self._env_from(item["valueFrom"])
            else:
                env[item["name"]] = ""
        return env

    def _env_from(self, source: dict[str, Any]) -> str:
        if "fieldRef" in source:
            return self._field_value(source["fieldRef"]["fieldPath"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self.core.read_namespaced_secret(ref["name"], self.namespace).data or {}
            return base64.b64decode(data.get(ref["key"], "")).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return (self.core.read_namespaced_config_map(ref["name"], self.namespace).data or {}).get(
                ref["key"], ""
            )
        return ""

    def _mount_rewrites(self, container: dict[str, Any]) -> list[tuple[str, str]]:
        rewrites = []
        for mount in container.get("volumeMounts", []):
            local = self.volumes[mount["name"]].path
            if mount.get("subPath"):
                local = local / mount["subPath"]
            rewrites.append((mount["mountPath"].rstrip("/") or "/", str(local)))
        return rewrites

    def _rewrite(self, text: str, mounts: list[tuple[str, str]]) -> str:
        # One pass each, so a replacement is never rewritten again (a mount at /tmp must not
        # rewrite the /tmp/... of another mount's local path; a host port may equal a pod port).
        if mounts:
            local_of = dict(mounts)
            # Longest first, so /etc/a/b wins over /etc/a; a mount path matches only as a whole
            # path component (/etc/config must not rewrite /etc/configuration).
            alternatives = "|".join(re.escape(path) for path in sorted(local_of, key=len, reverse=True))
            text = re.sub(
                rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])", lambda m: local_of[m.group(1)], text
            )
        if self.ports:
            hosts = "|".join(re.escape(host) for host in LOOPBACK_HOSTS)
            ports = "|".join(str(port) for port in self.ports)
            text = re.sub(
                rf"\b(?:{hosts}):({ports})\b(?!\.)",
                lambda m: f"127.0.0.1:{self.ports[int(m.group(1))]}",
                text,
            )
        return text

    def _rewrite_argv(self, argv: list[str]) -> list[str]:
        """Port flags in the argument list (``--port 8080``, ``--port=8080``) for declared ports."""
        out: list[str] = []
        for part in argv:
            if out and out[-1] == "--port" and part.isdigit() and int(part) in self.ports:
                part = str(self.ports[int(part)])
            elif part.startswith("--port=") and part[7:].isdigit() and int(part[7:]) in self.ports:
                part = f"--port={self.ports[int(part[7:])]}"
            out.append(part)
        return out

    def _probe_port(self, container: dict[str, Any], port: int | str) -> int:
        """A probe's port as a pod port number (a name is looked up in the container's ports)."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in container.get("ports", []):
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise PodRunnerError(
            f"container {container['name']!r}: probe port {port!r} is not a declared port name"
        )

    def _allocate_ports(self) -> None:
        for container in self._all_containers():
            for port in container.get("ports", []):
                self.ports.setdefault(int(port["containerPort"]), free_port())
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name) or {}
                port = (probe.get("httpGet") or {}).get("port")
                if port is not None:
                    self.ports.setdefault(self._probe_port(container, port), free_port())

    def host_port(self, pod_port: int) -> int:
        """The host port a pod-local port was remapped to."""
        return self.ports[pod_port]

    # -- processes ----------------------------------------------------------------------

    def _command(self, container: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(the image's local entrypoint, the parts the pod spec gives).

        Only the pod spec's parts name paths inside the pod, so only they are rewritten: the
        local entrypoint is a host path already (and may itself sit under a mount path like /tmp).
        """
        if container.get("command"):
            return [], list(container["command"]) + list(container.get("args", []))
        entrypoint = list(self.image_commands.get(container.get("image", ""), []))
        if not entrypoint:
            raise PodRunnerError(
                f"container {container['name']!r} has no command and image {container.get('image')!r} "
                "has no local entrypoint (pass image_commands)"
            )
        return entrypoint, list(container.get("args", []))

    def _start_container(self, container: dict[str, Any]) -> RunningContainer:
        mounts = self._mount_rewrites(container)
        container_env = self._env(container)
        entrypoint, spec_parts = self._command(container)
        argv = entrypoint + self._rewrite_argv(
            [self._rewrite(_expand(part, container_env), mounts) for part in spec_parts]
        )
        env = {
            "PATH": os.pathsep.join([*self.path_prefix, os.environ.get("PATH", "")]),
            "HOME": str(self.workdir),
            **{k: v for k, v in os.environ.items() if k in ("TIKTOKEN_CACHE_DIR", "PYTHONPATH", "LANG")},
            **self.extra_env,
        }
        env.update({k: self._rewrite(v, mounts) for k, v in container_env.items()})
        cwd = (
            self._rewrite(container["workingDir"], mounts)
            if container.get("workingDir")
            else str(self.workdir)
        )
        log_path = self.workdir / "logs" / f"{container['name']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: stop() signals the container's whole tree, as a runtime would.
                start_new_session=True,
                # And never outlive the runner, even if it is killed (no orphaned sidecars).
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        running = RunningContainer(container["name"], process, log_path)
        self.containers[container["name"]] = running
        return running

    def _wait_probe(self, container: dict[str, Any], running: RunningContainer, timeout: float) -> None:
        probe = container.get("startupProbe") or container.get("readinessProbe")
        if not probe:
            return
        http = probe.get("httpGet")
        if not http:
            raise PodRunnerError(f"container {container['name']!r}: only httpGet probes are supported")
        url = (
            f"http://127.0.0.1:{self.ports[self._probe_port(container, http['port'])]}{http.get('path', '/')}"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise PodRunnerError(
                    f"container {container['name']!r} exited with {running.process.returncode} before "
                    f"its probe passed:\n{running.logs()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status < 400:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise PodRunnerError(
            f"container {container['name']!r}: probe {url} did not pass in {timeout} s:\n{running.logs()[-3000:]}"
        )

    def start(self, probe_timeout: float = 30.0, init_timeout: float = 60.0) -> None:
        """Start the pod: init containers in order, native sidecars gated on their probe, then apps.

        On failure everything already started is stopped before the error propagates."""
        try:
            self._start(probe_timeout, init_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, probe_timeout: float, init_timeout: float) -> None:
        self.load()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._allocate_ports()
        self.materialise_volumes()
        self._stop.clear()
        self._syncer = threading.Thread(target=self._sync_loop, name=f"sync-{self.name}", daemon=True)
        self._syncer.start()
        for container in self.spec.get("initContainers", []):
            running = self._start_container(container)
            if container.get("restartPolicy") == "Always":
                self._wait_probe(container, running, probe_timeout)
                continue
            if running.process.wait(timeout=init_timeout) != 0:
                raise PodRunnerError(
                    f"init container {container['name']!r} failed:\n{running.logs()[-3000:]}"
                )
        for container in self.spec.get("containers", []):
            self._start_container(container)

    def wait(self, container: str, timeout: float) -> int:
        return self.containers[container].process.wait(timeout=timeout)

    def logs(self, container: str) -> str:
        return self.containers[container].logs()

    def pids(self) -> list[int]:
        return [running.process.pid for running in self.containers.values()]

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        # Apps first, sidecars last: the order a kubelet terminates native sidecars in.
        ordered = list(reversed(list(self.containers.values())))
        for running in ordered:
            if running.process.poll() is None:
                _signal_group(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for running in ordered:
            try:
                running.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Whatever is left in the container's group (a grandchild, or a leader that ignored
            # SIGTERM) goes now: a stopped container leaves no process behind.
            _signal_group(running.process.pid, signal.SIGKILL)
            running.process.wait()
        if self._syncer:
            self._syncer.join(timeout=5)
            self._syncer = None

    def __enter__(self) -> LocalPod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of references to earlier variables; $$ escapes a $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, value)
