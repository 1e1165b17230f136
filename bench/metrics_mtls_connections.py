"""New connections a second to a ledger server's metrics listener over HTTPS with client
certificates (``--metrics-client-ca``) and a CRL of ``--revoked`` entries (``--metrics-client-crl``),
against the same listener without client certificates, in the same run (rounds alternate).

Each connection is a full TLS handshake (the client offers no session), one ``GET`` of a path
the listener answers ``404`` (the client certificate judged for that request as for any other,
no ``/metrics`` rendering) and the close. Clients run in ``--clients`` processes of their own;
the server (``TilesServer``, the listener's real stack: uvloop, ``HttpLimits``, the
``MetricsListenerApp``) in this one, whose CPU time per connection is printed too (the event
loop's share: everything but the clients). The clients set ``TCP_NODELAY``, as Go's (Prometheus)
and curl do (``--nagle``: they do not).

    flock -x /tmp/confide-cpu.lock .venv/bin/python bench/metrics_mtls_connections.py
"""

from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
import multiprocessing.pool
import resource
import socket
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.httpserve.certreload import CertificateReloader
from confide.ledger.http import TilesServer, ledger_limits
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction

NOW = datetime.now(UTC)
REQUEST = b"GET /not-metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *, ca: bool, extensions: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:  # fmt: skip
    issuer_name, signing = issuer if issuer is not None else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing, hashes.SHA256())


def _pem(path: Path, *objects: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects))
    return path


def _key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def make_pki(directory: Path, revoked: int) -> dict[str, Path]:
    """A server certificate for 127.0.0.1 (and its CA), a client CA, a client certificate of it
    and that CA's CRL revoking ``revoked`` other serial numbers."""
    server_ca_key, client_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server_ca = _cert("server CA", server_ca_key, None, ca=True)
    client_ca = _cert("client CA", client_ca_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = _cert("127.0.0.1", server_key, (server_ca.subject, server_ca_key), ca=False, extensions=[san])
    client = _cert(
        "prometheus", client_key, (client_ca.subject, client_ca_key), ca=False,
        extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )  # fmt: skip
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(client_ca.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for _ in range(revoked):
        entry = x509.RevokedCertificateBuilder().serial_number(x509.random_serial_number())
        crl = crl.add_revoked_certificate(entry.revocation_date(NOW - timedelta(minutes=30)).build())
    return {
        "server_ca": _pem(directory / "server-ca.pem", server_ca),
        "cert": _pem(directory / "server.pem", server),
        "key": _key(directory / "server-key.pem", server_key),
        "client_ca": _pem(directory / "client-ca.pem", client_ca),
        "client_crl": _pem(directory / "client.crl", crl.sign(client_ca_key, hashes.SHA256())),
        "client_cert": _pem(directory / "client.pem", client),
        "client_key": _key(directory / "client-key.pem", client_key),
    }


def _client(args: tuple[int, dict[str, Path], bool, float, bool]) -> int:
    """Connections made to ``port`` for ``seconds`` (each one handshake, one request, answered)."""
    port, pki, with_cert, seconds, nagle = args
    context = ssl.create_default_context(cafile=str(pki["server_ca"]))
    if with_cert:
        context.load_cert_chain(pki["client_cert"], pki["client_key"])
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            # as Go's clients (Prometheus) and curl do; without it, on the client-certificate
            # listener, the request waits for the server's delayed ACK (~40 ms, Nagle): no
            # session ticket follows the handshake to carry that ACK sooner
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if nagle else 1)
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            assert tls.session_reused is False
            tls.sendall(REQUEST)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            tls.close()
            if not answer.startswith(b"HTTP/1.1 404 "):
                raise RuntimeError(f"unexpected answer: {answer[:80]!r}")
        done += 1
    return done


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process: the server, not the clients
    return usage.ru_utime + usage.ru_stime


def measure(db: Path, tls: CertificateReloader, pki: dict[str, Path], pool: multiprocessing.pool.Pool,
            clients: int, seconds: float, with_cert: bool, nagle: bool) -> tuple[float, float]:  # fmt: skip
    """Connections a second, and the server's CPU milliseconds a connection."""
    server = TilesServer(
        db,
        ("127.0.0.1", 0),
        limits=ledger_limits(),
        rate=None,
        metrics_listen=("127.0.0.1", 0),
        metrics_tls=tls,
    )
    server.serve_in_thread()
    try:
        assert server.metrics_address is not None
        port = server.metrics_address[1]
        pool.map(_client, [(port, pki, with_cert, 0.3, nagle)] * clients)  # warm up
        cpu, start = _cpu(), time.perf_counter()
        done = sum(pool.map(_client, [(port, pki, with_cert, seconds, nagle)] * clients))
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
    finally:
        server.shutdown()
        server.server_close()
    return done / wall, cpu / done * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revoked", type=int, default=10_000, help="entries of the client CA's CRL")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nagle", action="store_true", help="clients without TCP_NODELAY")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = make_pki(directory, args.revoked)
        db = directory / "log.db"
        conn = connect(db)
        Ledger.init_schema(conn)
        with write_transaction(conn):
            Ledger().append_batch(conn, [b"e0"])
        Ledger().sign_checkpoint(conn, NoteSigner.generate("example.com/log"))
        conn.close()
        options = ("--metrics-cert", "--metrics-key")
        plain = CertificateReloader(pki["cert"], pki["key"], options=options, listener="metrics")
        mtls = CertificateReloader(
            pki["cert"], pki["key"], options=options, listener="metrics", client_ca=pki["client_ca"],
            client_ca_option="--metrics-client-ca", client_crl=pki["client_crl"],
            client_crl_option="--metrics-client-crl",
        )  # fmt: skip
        print(
            f"CRL: {args.revoked} entries, {pki['client_crl'].stat().st_size} bytes; {args.clients} client processes"
        )
        with multiprocessing.get_context("fork").Pool(args.clients) as pool:
            for r in range(args.rounds):
                plain_rate, plain_cpu = measure(
                    db, plain, pki, pool, args.clients, args.seconds, False, args.nagle
                )
                mtls_rate, mtls_cpu = measure(
                    db, mtls, pki, pool, args.clients, args.seconds, True, args.nagle
                )
                print(
                    f"round {r + 1}: without client certificates {plain_rate:.0f} conn/s"
                    f" ({plain_cpu:.2f} ms server CPU/conn); with them and the CRL {mtls_rate:.0f} conn/s"
                    f" ({mtls_cpu:.2f} ms server CPU/conn); ratio {mtls_rate / plain_rate:.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
