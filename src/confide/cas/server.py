"""``confide cas serve``: the CAS over TLS (uvicorn), with its state in a data directory.

The data directory holds (created on first start, mode 0700/0600):

- ``master.key``: the 32-byte key that seals secrets at rest (see ``docs/cas.md`` for what
  protects it in production);
- ``cas-key.pem`` / ``cas-cert.pem``: the CAS's TLS key and self-signed certificate;
- ``cas.db``: the embedded SQLite database (unless ``--db`` names PostgreSQL);
- ``sim/``: with ``--dev``, the simulated platform's key (development only);
- ``client.env``: ``export`` lines with what a client needs (``CONFIDE_CAS_URL``,
  ``CONFIDE_CAS_CERT``, and with ``--dev`` ``CONFIDE_SIM_DIR``).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import socket
import ssl
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.db import Database, EventSink
from confide.cas.pin import CAS_BINDING_PREFIX
from confide.cas.secrets import Sealer
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import source_for
from confide.errors import UsageError
from confide.sim.measure import measure_current_process
from confide.sim.platform import SimPlatform

__all__ = ["prepare", "serve"]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _master_key(data_dir: Path) -> bytes:
    path = data_dir / "master.key"
    if not path.exists():
        _write_private(path, os.urandom(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise UsageError(f"{path} is not a 32-byte key")
    return key


def _tls_identity(data_dir: Path, host: str) -> tuple[Path, Path]:
    key_path, cert_path = data_dir / "cas-key.pem", data_dir / "cas-cert.pem"
    if key_path.exists() and cert_path.exists():
        return key_path, cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "confide CAS")])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    _atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen: got {listen!r}, expected HOST:PORT (e.g. 127.0.0.1:8443)")
    return host.strip("[]"), int(port)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            return message
        return json.dumps(
            {"event": "log", "level": record.levelname, "logger": record.name, "message": message}
        )


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access"


def prepare(
    data_dir: Path, *, host: str, dev: bool, db_url: str | None, collateral: str | None
) -> tuple[Cas, dict[str, Any] | None, Path, Path, dict[str, str]]:
    """Create or open the CAS state in ``data_dir``; returns the CAS, its own evidence (dev),
    TLS files and the client environment (without the URL)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    sealer = Sealer(_master_key(data_dir))
    key_path, cert_path = _tls_identity(data_dir, host)
    env = {"CONFIDE_CAS_CERT": str(cert_path.resolve())}
    sim_key = None
    cas_evidence = None
    if dev:
        sim_dir = data_dir / "sim"
        platform = SimPlatform.load_or_create(sim_dir)
        sim_key = platform.public_key
        env["CONFIDE_SIM_DIR"] = str(sim_dir.resolve())
        cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        report_data = hashlib.sha512(CAS_BINDING_PREFIX + cert_der).digest()
        measurement = measure_current_process().digest
        evidence = platform.issue(
            report_data=report_data, measurement=measurement, timestamp=int(time.time())
        )
        cas_evidence = {
            "platform": "sim",
            "evidence": base64.b64encode(evidence.to_bytes()).decode(),
            "binding": "SHA-512('confide-cas/v1' || 0 || TLS certificate DER)",
        }
    database = Database(db_url or f"sqlite:///{(data_dir / 'cas.db').resolve()}")
    database.migrate()
    verifier = PlatformVerifier(sim_key=sim_key, dcap_source=source_for(collateral) if collateral else None)
    cas = Cas(database, sealer, verifier, events=EventSink())
    with database.write() as conn:
        cas.events.record(conn, "cas-start", None, {"dev": dev, "tls_cert_sha256": _cert_sha256(cert_path)})
    return cas, cas_evidence, key_path, cert_path, env


def _cert_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serve(data_dir: Path, listen: str, *, dev: bool, db_url: str | None, collateral: str | None) -> None:
    host, port = _parse_listen(listen)
    _configure_logging()
    cas, cas_evidence, key_path, cert_path, env = prepare(
        data_dir, host=host, dev=dev, db_url=db_url, collateral=collateral
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"--listen: cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    env = {"CONFIDE_CAS_URL": f"https://{shown_host}:{bound_port}", **env}
    lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    _atomic(data_dir / "client.env", lines.encode())
    app = create_app(cas, cas_evidence=cas_evidence)
    config = uvicorn.Config(
        app,
        ssl_keyfile=str(key_path),
        ssl_certfile=str(cert_path),
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    logging.getLogger("confide.cas").info(
        json.dumps(
            {"event": "listening", "url": env["CONFIDE_CAS_URL"], "dev": dev, "db": cas.db.redacted_url}
        )
    )
    server.run(sockets=[sock])
