"""Serving certificates for the webhook when none are provided.

In a cluster the chart mounts a certificate (tls.crt/tls.key, optionally ca.crt) into ``--cert-dir``.
Without one, a self-signed certificate for the webhook's host names is generated with the
``openssl`` command line tool (kopf's own generator needs extra Python packages), and the
certificate itself is the CA bundle the API server is given.
"""

from __future__ import annotations

import ipaddress
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertFiles:
    certfile: Path
    keyfile: Path
    cafile: Path | None  # None: the certificate is self-signed and is its own CA


def find(cert_dir: Path) -> CertFiles | None:
    cert, key, ca = cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt"
    if cert.is_file() and key.is_file():
        return CertFiles(cert, key, ca if ca.is_file() else None)
    return None


def subject_alt_names(hosts: list[str]) -> str:
    parts = []
    for host in dict.fromkeys(h for h in hosts if h):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            parts.append(f"DNS:{host}")
        else:
            if not ip.is_unspecified:
                parts.append(f"IP:{ip}")
    return ",".join(parts)


def generate_self_signed(cert_dir: Path, hosts: list[str], days: int = 365) -> CertFiles:
    """An EC P-256 self-signed certificate valid for ``hosts`` (DNS names and IPs)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    sans = subject_alt_names(hosts)
    common_name = next((h for h in hosts if h), "openai-policy-operator")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            f"/CN={common_name}",
            "-addext",
            f"subjectAltName={sans}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyCertSign",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    key.chmod(0o600)
    return CertFiles(cert, key, None)


def ensure(cert_dir: str | None, hosts: list[str]) -> CertFiles:
    """The certificate in ``cert_dir``, or a freshly generated one (in a private temp dir if none given)."""
    directory = Path(cert_dir) if cert_dir else Path(tempfile.mkdtemp(prefix="openai-policy-webhook-"))
    return find(directory) or generate_self_signed(directory, hosts)
