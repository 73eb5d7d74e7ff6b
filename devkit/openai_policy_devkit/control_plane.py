"""A local Kubernetes control plane for tests, envtest style: real etcd, kube-apiserver and
kube-controller-manager on free loopback ports, with RBAC on and fresh certificates.

Binaries come from KUBEBUILDER_ASSETS (scripts/setup-control-plane.sh builds them). Usable from
pytest (devkit/openai_policy_devkit/control_plane_fixture.py) and on its own:

    with ControlPlane() as cp:
        cp.kubectl("get", "namespaces")

    python -m openai_policy_devkit.control_plane   # prints the admin kubeconfig, stays up until Ctrl-C
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from openai_policy_devkit.control_plane_pki import ClusterPKI, KeyPair, generate_pki, issue_certificate
from openai_policy_devkit.managed_process import ManagedProcess, ProcessFailed, free_ports, pid_alive

REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Admission plugins the operator relies on; they are on by default, listed so that a change of
# defaults in a later Kubernetes cannot silently switch webhooks off.
ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "ServiceAccount",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
)
_SETUP_HINT = "run `make test`, or export KUBEBUILDER_ASSETS=$(scripts/setup-control-plane.sh)"


class ControlPlaneError(RuntimeError):
    """The control plane could not start (the message says which component and shows its log)."""


class CommandError(subprocess.CalledProcessError):
    """kubectl or helm failed; unlike CalledProcessError, str() shows what the tool printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


def find_assets(assets: Path | str | None = None) -> Path:
    """The directory holding the control plane binaries: `assets`, else KUBEBUILDER_ASSETS."""
    value = assets if assets is not None else os.environ.get("KUBEBUILDER_ASSETS")
    if not value:
        raise ControlPlaneError(f"KUBEBUILDER_ASSETS is not set: {_SETUP_HINT}")
    directory = Path(value)
    missing = [name for name in REQUIRED_BINARIES if not os.access(directory / name, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{directory} lacks {', '.join(missing)}: {_SETUP_HINT}")
    return directory


def kubeconfig_document(
    server: str, ca_cert: Path, user: Mapping[str, str], namespace: str = "default"
) -> dict:
    """A kubeconfig with one cluster, one user and one context, certificates embedded."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_cert.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "test-user", "user": dict(user)}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "test-user", "namespace": namespace}}
        ],
        "current-context": "test",
    }


def _client_cert_user(pair: KeyPair) -> dict[str, str]:
    return {
        "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
    }


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)  # it holds credentials
    return path


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) in a temporary directory.

    After start(): `.kubeconfig` (admin, system:masters), `.server` (https URL), `.ca_cert`,
    `.workdir`, `.logs_dir` (one `<component>.log` each).
    """

    def __init__(
        self,
        assets: Path | str | None = None,
        *,
        controller_manager: bool = True,
        start_timeout: float = 60.0,
        keep_workdir: bool = False,
    ) -> None:
        self.assets = find_assets(assets)
        self.with_controller_manager = controller_manager
        self.start_timeout = start_timeout
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self.server = ""
        self.kubeconfig = Path()
        self.ca_cert = Path()
        self._pki: ClusterPKI | None = None
        self._processes: list[ManagedProcess] = []
        self._ssl: ssl.SSLContext | None = None
        self._port = 0

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "logs"

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._processes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def leftover_pids(self) -> list[int]:
        """Pids of our components that still exist (empty after a clean stop())."""
        return [pid for pid in self.pids if pid_alive(pid)]

    def start(self) -> ControlPlane:
        if self._processes:
            raise RuntimeError("control plane already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="oaip-control-plane-"))
        deadline = time.monotonic() + self.start_timeout
        try:
            self._pki = generate_pki(self.workdir / "pki")
            self.ca_cert = self._pki.ca.cert
            etcd_client, etcd_peer, api_port, cm_port = free_ports(4)
            self._port = api_port
            self.server = f"https://127.0.0.1:{api_port}"
            self._start_etcd(etcd_client, etcd_peer, deadline)
            self._start_api_server(etcd_client, api_port, deadline)
            self.kubeconfig = self.write_kubeconfig("admin", _client_cert_user(self._pki.admin))
            if self.with_controller_manager:
                self._start_controller_manager(cm_port, deadline)
        except BaseException as error:
            self.keep_workdir = True  # keep the logs that explain the failure
            self.stop()
            if isinstance(error, ProcessFailed | TimeoutError):
                raise ControlPlaneError(f"{error}\n(files kept in {self.workdir})") from None
            raise
        return self

    def stop(self) -> None:
        """Stop the components in reverse order (SIGTERM, then SIGKILL); remove the workdir."""
        for process in reversed(self._processes):
            process.stop()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- components ------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.logs_dir / f"{name}.log")
        self._processes.append(process)
        process.start()
        return process

    def _wait(self, process: ManagedProcess, what: str, ready: Callable[[], bool], deadline: float) -> None:
        """Poll `ready()` until true; fail early, with the log's tail, if the process exits."""
        while True:
            process.check_alive()
            try:
                if ready():
                    return
            except (OSError, http.client.HTTPException, ssl.SSLError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    process.failure_message(f"{process.name} not {what} after {self.start_timeout:.0f}s")
                )
            time.sleep(0.05)

    def _start_etcd(self, client_port: int, peer_port: int, deadline: float) -> None:
        assert self.workdir is not None
        client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # test data is throwaway; fsync only costs time
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            status, body = _http_get("127.0.0.1", client_port, "/health", None)
            return status == 200 and json.loads(body).get("health") == "true"

        self._wait(etcd, "healthy", healthy, deadline)

    def _start_api_server(self, etcd_port: int, port: int, deadline: float) -> None:
        assert self.workdir is not None and self._pki is not None
        pki = self._pki
        api_server = self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.api_server.cert}",
                f"--tls-private-key-file={pki.api_server.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
                "--allow-privileged=true",  # let tests create any pod spec the chart may render
                # No node will ever serve the `kubernetes` Service's endpoints; skip reconciling them.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        self._ssl = context

        def ready() -> bool:
            status, body = _http_get("127.0.0.1", port, "/readyz", context)
            return status == 200 and body.strip() == b"ok"

        self._wait(api_server, "ready", ready, deadline)

    def _start_controller_manager(self, port: int, deadline: float) -> None:
        assert self.workdir is not None and self._pki is not None
        pki = self._pki
        kubeconfig = self.write_kubeconfig("controller-manager", _client_cert_user(pki.controller_manager))
        controller_manager = self._spawn(
            "kube-controller-manager",
            [
                str(self.assets / "kube-controller-manager"),
                # No --authentication/authorization-kubeconfig: nothing but our readiness probe calls
                # its port, and /healthz is always allowed.
                f"--kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",  # the only one; electing itself costs seconds
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                # The default 20 requests/s makes it start its controllers one by one over ~5 s
                # (each first gets its own ServiceAccount token); a test cluster can take more.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its serving cert is self-signed, made at start-up

        def healthy() -> bool:
            status, body = _http_get("127.0.0.1", port, "/healthz", insecure)
            return status == 200 and body.strip() == b"ok"

        self._wait(controller_manager, "healthy", healthy, deadline)

    # ---- clients ---------------------------------------------------------------------------

    def write_kubeconfig(self, name: str, user: Mapping[str, str], namespace: str = "default") -> Path:
        """Write a kubeconfig for this cluster with the given user entry; returns its path."""
        assert self.workdir is not None, "not started"
        document = kubeconfig_document(self.server, self.ca_cert, user, namespace)
        return _write_private(self.workdir / "kubeconfigs" / f"{name}.kubeconfig", yaml.safe_dump(document))

    def _tool(
        self,
        argv: list[str],
        input: str | None,
        check: bool,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster (admin unless `kubeconfig` is given)."""
        assert self.workdir is not None, "not started"
        argv = [
            str(self.assets / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",  # not the user's ~/.kube
            *args,
        ]
        return self._tool(argv, input, check, timeout)

    def helm(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm (from the same assets dir) against this cluster, with its state in the workdir."""
        assert self.workdir is not None, "not started"
        helm = self.assets / "helm"
        if not os.access(helm, os.X_OK):
            raise ControlPlaneError(f"{self.assets} has no helm: {_SETUP_HINT}")
        home = self.workdir / "helm"
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        return self._tool([str(helm), *args], input, check, timeout, env)

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON request as admin (quicker than a kubectl process); raises ApiError unless 2xx."""
        assert self._ssl is not None, "not started"
        connection = http.client.HTTPSConnection("127.0.0.1", self._port, context=self._ssl, timeout=30)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        if not 200 <= response.status < 300:
            raise ApiError(method, path, response.status, text)
        return json.loads(text) if text else {}

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, duration_seconds: int = 24 * 3600
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` (which must exist),
        with a token from the TokenRequest API, so a test gets exactly that account's RBAC."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": duration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        token = self.api("POST", path, request)["status"]["token"]
        return self.write_kubeconfig(f"sa-{namespace}-{name}", {"token": token}, namespace)

    def issue_serving_certificate(
        self, name: str, sans: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost")
    ) -> KeyPair:
        """A serving certificate signed by this cluster's CA (`.ca_cert`), e.g. for an admission
        webhook on 127.0.0.1 whose caBundle is then the CA's PEM."""
        assert self._pki is not None, "not started"
        return issue_certificate(
            self._pki.directory / "issued", name, f"/CN={name}", "server", self._pki.ca, sans
        )

    # ---- namespaces ------------------------------------------------------------------------

    def create_namespace(self, prefix: str = "test", *, labels: Mapping[str, str] | None = None) -> str:
        """Create a uniquely named namespace and wait for its `default` ServiceAccount (pods are
        refused until it exists); returns the name."""
        slug = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:48].strip("-") or "test"
        name = f"{slug}-{secrets.token_hex(3)}"
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = dict(labels)
        self.api(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
        )
        if self.with_controller_manager:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
                    break
                except ApiError as error:
                    if error.status != 404 or time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        return name

    def delete_namespace(self, name: str) -> None:
        """Ask for deletion and return at once (the namespace controller finishes it)."""
        try:
            self.api("DELETE", f"/api/v1/namespaces/{name}")
        except ApiError as error:
            if error.status != 404:
                raise


def _http_get(host: str, port: int, path: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection(host, port, timeout=2)
    else:
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Start a control plane, print where it is, and keep it up until Ctrl-C or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m openai_policy_devkit.control_plane", description=main.__doc__
    )
    parser.add_argument("--assets", help="directory with the binaries (default: $KUBEBUILDER_ASSETS)")
    parser.add_argument("--no-controller-manager", action="store_true")
    options = parser.parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # A shell that starts us in the background (`... &`) leaves SIGINT ignored; Ctrl-C must stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        with ControlPlane(options.assets, controller_manager=not options.no_controller_manager) as cp:
            print(f"control plane up in {time.monotonic() - started:.1f}s: {cp.server}", file=sys.stderr)
            print(f"logs: {cp.logs_dir}", file=sys.stderr)
            print(f"export KUBECONFIG={cp.kubeconfig}", file=sys.stderr)
            print(cp.kubeconfig, flush=True)  # stdout: just the path, for scripts
            try:
                while all(p.running for p in cp.processes):
                    time.sleep(0.5)
                print("a component exited; stopping", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("stopping", file=sys.stderr)
                return 0
    except ControlPlaneError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
