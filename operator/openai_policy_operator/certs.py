"""Serving certificates for the webhook when none are provided.

In a cluster the chart mounts a certificate (tls.crt/tls.key, optionally ca.crt) into ``--cert-dir``.
Without one, a self-signed certificate for the webhook's host names is generated with the
``openssl`` command line tool (kopf's own generator needs extra Python packages), and the
certificate itself is the CA bundle the API server is given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


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


class ServingCertificate:
    """One SSL context that always serves the newest certificate found in the files.

    Renewals (cert-manager, or the kubelet updating a mounted Secret) are loaded into the *same*
    context: new handshakes get the new certificate, the listening socket and the connections in
    flight are never closed, so a renewal costs the API server no failed admission call. A
    half-written renewal (certificate and key that do not match yet) is tried on a scratch
    context first and left for the next check, while the old pair keeps serving.
    """

    def __init__(self, files: CertFiles) -> None:
        self.files = files
        self.context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(files.certfile), str(files.keyfile))
        self._digest = self._current_digest()
        self.reloads = 0

    def _paths(self) -> list[Path]:
        return [p for p in (self.files.certfile, self.files.keyfile, self.files.cafile) if p is not None]

    def _current_digest(self) -> str | None:
        hasher = hashlib.sha256()
        try:
            for path in self._paths():
                hasher.update(path.read_bytes())
        except OSError:
            return None  # mid-rotation (a file briefly missing): look again next time
        return hasher.hexdigest()

    def cadata(self) -> bytes:
        """The CA bundle the API server must trust: ca.crt, or the self-signed certificate itself."""
        return (self.files.cafile or self.files.certfile).read_bytes()

    def reload_if_changed(self) -> bool:
        """Load renewed files into the serving context; True if a new certificate is now served."""
        digest = self._current_digest()
        if digest is None or digest == self._digest:
            return False
        with tempfile.TemporaryDirectory(prefix="openai-policy-cert-") as scratch:
            # Copies: the pair checked is exactly the pair loaded, even if the files change again.
            cert, key = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
            try:
                cert.write_bytes(self.files.certfile.read_bytes())
                key.touch(0o600)
                key.write_bytes(self.files.keyfile.read_bytes())
                ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    str(cert), str(key)
                )
            except (OSError, ssl.SSLError) as error:
                logger.warning(
                    "renewed webhook certificate not loadable yet (%s); still serving the old one", error
                )
                return False
            self.context.load_cert_chain(str(cert), str(key))
        self._digest = digest
        self.reloads += 1
        logger.info("webhook serving certificate reloaded from %s", self.files.certfile)
        return True
