"""``confide cas attest URL``: verify the CAS's own evidence and pin its TLS identity.

The CAS publishes evidence whose report data is SHA-512("confide-cas/v1" || 0 || DER of its TLS
certificate || its transparency-log verifier key). The client fetches the certificate from the
TLS handshake itself (without trusting it yet), fetches the evidence, verifies it, checks the
binding, and only then writes the certificate as the one to trust (``CONFIDE_CAS_CERT``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.errors import BindingError, MeasurementError, NetworkError, ParseError, UsageError
from confide.sim.platform import load_platform_public_key
from confide.verify.result import VerifiedEvidence
from confide.verify.sim import verify_sim

__all__ = ["PinnedCas", "attest_cas", "fetch_unverified"]

CAS_BINDING_PREFIX = b"confide-cas/v1\x00"
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class PinnedCas:
    url: str
    certificate_pem: bytes
    certificate_sha256: str
    log_key: str
    evidence: VerifiedEvidence


def fetch_unverified(url: str, path: str, *, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """GET ``path`` over TLS *without* verifying the server; returns (certificate DER, body).
    Only safe because the caller verifies evidence bound to that very certificate."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"got {url!r}, expected an https:// CAS URL")
    port = parts.port or 443
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with (
            socket.create_connection((parts.hostname, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            cert = tls.getpeercert(binary_form=True)
            request = f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            chunks = []
            total = 0
            while chunk := tls.recv(65536):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_BODY:
                    raise NetworkError("CAS evidence response is too large")
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"cannot reach the CAS at {url}: {exc}") from None
    if not cert:
        raise NetworkError("the CAS presented no certificate")
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise NetworkError(f"CAS answered {status.decode(errors='replace')[:80]}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return cert, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise ParseError("bad chunked encoding", structure="CAS response") from None
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def attest_cas(
    url: str,
    *,
    sim_key_pem: bytes | None,
    at: datetime | None = None,
    measurements: tuple[str, ...] = (),
) -> PinnedCas:
    """Verify the CAS's evidence and its binding to the TLS certificate and log key. With
    ``measurements`` (hex), the CAS must run one of them: the pin is refused otherwise."""
    cert_der, body = fetch_unverified(url, "/v1/cas/evidence")
    try:
        doc = json.loads(body)
        platform = doc["platform"]
        evidence = base64.b64decode(doc["evidence"], validate=True)
        log_key = str(doc["log_key"])
    except (ValueError, KeyError, TypeError):
        raise ParseError("the CAS's evidence document is malformed", structure="CAS evidence") from None
    at = at or datetime.now(UTC)
    if platform != "sim":
        raise UsageError(
            f"the CAS runs on {platform!r}; only simulated CAS evidence is verified by this build"
        )
    if sim_key_pem is None:
        raise UsageError(
            "the CAS presents SIMULATED evidence: pass --sim-key (the simulated platform's public key)"
        )
    verified = verify_sim(evidence, load_platform_public_key(sim_key_pem), at=at)
    expected = hashlib.sha512(CAS_BINDING_PREFIX + cert_der + log_key.encode()).hexdigest()
    if not hmac.compare_digest(str(verified.claims.get("report_data", "")), expected):
        raise BindingError("the CAS's evidence is not bound to the TLS certificate and log key it presented")
    if measurements:
        got = str(verified.claims.get("measurement", "")).lower()
        if not any(hmac.compare_digest(got, m) for m in measurements):
            raise MeasurementError(
                f"the CAS measures {got[:32]}…, expected one of --measurement"
                f" {', '.join(m[:16] + '…' for m in measurements)}"
            )
    pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
    return PinnedCas(url, pem, hashlib.sha256(cert_der).hexdigest(), log_key, verified)


def write_pin(pinned: PinnedCas, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(pinned.certificate_pem)
    tmp.replace(out)
