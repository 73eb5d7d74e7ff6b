"""Throwaway certificates for the test control plane, made with the `openssl` command.

One CA signs the API server's serving certificate, the client certificates of the admin and the
controller-manager, and any serving certificate a test needs (an admission webhook on 127.0.0.1);
a separate key signs ServiceAccount tokens. P-256 keys keep each certificate to milliseconds, so
every control plane gets fresh ones.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The names a client may use for the API server: loopback for tests, the in-cluster names for
# completeness.
API_SERVER_SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)

_BASE_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ext]
"""
_EXTENSIONS = {
    "ca": ["basicConstraints = critical,CA:TRUE", "keyUsage = critical,keyCertSign,cRLSign,digitalSignature",
           "subjectKeyIdentifier = hash"],
    "server": ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage = serverAuth"],
    "client": ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage = clientAuth"],
}  # fmt: skip


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    directory: Path
    ca: KeyPair
    api_server: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    service_account_key: Path  # signs tokens (API server, controller-manager)
    service_account_public_key: Path  # verifies them (API server)


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the `openssl` command is needed to make the test control plane's certificates")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def issue_certificate(
    directory: Path,
    name: str,
    subject: str,
    usage: str,
    ca: KeyPair | None,
    sans: Sequence[str] = (),
) -> KeyPair:
    """Write `<name>.key` and `<name>.crt` (signed by `ca`, or self-signed when None).

    usage: "ca", "server" or "client"; sans like ("IP:127.0.0.1", "DNS:localhost").
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = list(_EXTENSIONS[usage])
    if sans:
        lines.append(f"subjectAltName = {','.join(sans)}")
    config = directory / f"{name}.cnf"
    config.write_text(_BASE_CONFIG + "\n".join(lines) + "\n")
    pair = KeyPair(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    args = [
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", subject, "-days", "7",
        "-config", str(config), "-extensions", "ext",
    ]  # fmt: skip
    if ca is not None:
        args += ["-CA", str(ca.cert), "-CAkey", str(ca.key)]
    _openssl(*args, cwd=directory)
    pair.key.chmod(0o600)
    return pair


def generate_pki(directory: Path) -> ClusterPKI:
    """Write a fresh CA, serving and client certificates and a token-signing key into `directory`."""
    ca = issue_certificate(directory, "ca", "/CN=openai-policy-test-ca", "ca", None)
    api_server = issue_certificate(
        directory, "apiserver", "/CN=kube-apiserver", "server", ca, API_SERVER_SANS
    )
    admin = issue_certificate(directory, "admin", "/O=system:masters/CN=kubernetes-admin", "client", ca)
    controller_manager = issue_certificate(
        directory, "controller-manager", "/CN=system:kube-controller-manager", "client", ca
    )
    service_account_key = directory / "service-account.key"
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(service_account_key),
        cwd=directory,
    )  # fmt: skip
    service_account_key.chmod(0o600)
    service_account_public_key = directory / "service-account.pub"
    _openssl(
        "pkey",
        "-in",
        str(service_account_key),
        "-pubout",
        "-out",
        str(service_account_public_key),
        cwd=directory,
    )
    return ClusterPKI(
        directory, ca, api_server, admin, controller_manager, service_account_key, service_account_public_key
    )
