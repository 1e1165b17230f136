"""The metrics listener's client certificates beyond chaining to ``--metrics-client-ca``
(docs/cas.md "Metrics"): ``--metrics-client-allow`` (an allow-list of fingerprints and subjects,
:class:`~confide.httpserve.metrics_listener.MetricsClientAllowList`: 403 for a certificate not
on it, counted and logged; reloaded, a bad file keeping the list in use), ``--metrics-client-crl``
(the bundle's CRLs checked by OpenSSL in the handshake, fail-closed:
:func:`~confide.httpserve.certreload.load_client_crl`), and refused handshakes counted by reason
and logged (:func:`~confide.httpserve.metrics_listener.watch_handshakes`). A ledger tiles server
runs in a thread with a metrics listener over real TLS (uvloop, as served), driven by real
clients with real certificates: allowed, chained but not allowed, revoked, expired, another
CA's, none."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import UsageError
from confide.httpserve.certreload import CertificateReloader, load_client_ca, load_client_crl
from confide.httpserve.limits import CLIENT_CERT, HANDSHAKE_FAILURES, HttpLimits, handshake_failure
from confide.httpserve.metrics_listener import (
    METRICS_CLIENT_ALLOW_OPTION,
    METRICS_CLIENT_CA_OPTION,
    METRICS_CLIENT_CRL_OPTION,
    ClientCertScrapers,
    MetricsClientAllowList,
    client_allow_file,
    metrics_files,
    parse_client_allow_list,
    read_client_allow_list,
)
from confide.httpserve.ratelimit import RefusalLog
from confide.ledger.http import TilesServer, ledger_limits
from confide.ledger.note import NoteSigner
from confide.ledger.store import Ledger, connect, write_transaction
from pki import Issuer, client_crl, crls_pem, issue, tls_client_ca, tls_client_files, tls_server_files

WAIT = 10.0
LOGGER = "confide.ledger"


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new inode: a poll sees it whatever the mtime's resolution


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sha(path: Path) -> str:
    return hashlib.sha256(_cert(path).public_bytes(serialization.Encoding.DER)).hexdigest()


class Pki:
    """A server certificate; client CAs ``a`` and ``b``; under ``a`` the client certificates
    ``ok`` (allowed by subject), ``byhash`` (allowed by fingerprint), ``other`` (chains, not on
    the list), ``revoked`` (in A's CRL), ``expired``; under ``b`` ``b`` (allowed by subject)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.server_ca, self.cert, self.key = tls_server_files(directory, "server")
        self.ca_a, self.a = tls_client_ca(directory, "a")
        self.ca_b, self.b = tls_client_ca(directory, "b")
        self.client = {
            name: tls_client_files(directory, name, self.a) for name in ("ok", "byhash", "other", "revoked")
        }
        self.client["expired"] = tls_client_files(
            directory, "expired", self.a, not_after=datetime.now(UTC) - timedelta(minutes=5)
        )
        self.client["b"] = tls_client_files(directory, "b", self.b)
        self.bundle = directory / "client-ca.pem"
        self.bundle.write_bytes(self.ca_a.read_bytes() + self.ca_b.read_bytes())
        self.crl = directory / "client.crl"
        revoked = [_cert(self.client["revoked"][0])]
        self.crls = [client_crl(self.a, revoked), client_crl(self.b, [])]
        self.crl.write_bytes(crls_pem(*self.crls))
        self.allow = directory / "allow"
        self.allow.write_text(
            "# the scrapers of the metrics listener\n"
            "CN=ok\n"
            f"sha256:{_sha(self.client['byhash'][0])}\n"
            "CN=b\n"
            "CN=revoked\n"  # on the list: refused by the CRL all the same
            "CN=expired\n"
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _tiles(
    pki: Pki, handshake_timeout: float = 10.0, clock: Callable[[], datetime] | None = None
) -> TilesServer:
    db = pki.dir / "log.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [b"e0"])
    Ledger().sign_checkpoint(conn, NoteSigner.generate("example.com/log"))
    conn.close()
    tokens, tls = metrics_files(
        True, None, pki.cert, pki.key, poll_interval=0, logger=LOGGER, client_ca=pki.bundle,
        client_crl=pki.crl,
    )  # fmt: skip
    assert tokens is None and tls is not None
    if clock is not None:  # what each request is judged at (the handshakes: OpenSSL's wall clock)
        tls = CertificateReloader(
            pki.cert, pki.key, poll_interval=0, logger=LOGGER, options=tls.options,
            metric_prefix=tls.metric_prefix, listener="metrics", clock=clock, client_ca=pki.bundle,
            client_ca_option=METRICS_CLIENT_CA_OPTION, client_crl=pki.crl,
            client_crl_option=METRICS_CLIENT_CRL_OPTION,
        )  # fmt: skip
    allow = client_allow_file(pki.allow, tls, poll_interval=0, logger=LOGGER)
    limits: HttpLimits = ledger_limits(handshake_timeout=handshake_timeout)
    return TilesServer(db, ("127.0.0.1", 0), limits=limits, rate=None, metrics_listen=("127.0.0.1", 0),
                       metrics_tls=tls, metrics_allow=allow)  # fmt: skip


@pytest.fixture
def server(pki: Pki) -> Iterator[TilesServer]:
    tiles = _tiles(pki)
    tiles.serve_in_thread()
    try:
        yield tiles
    finally:
        tiles.shutdown()
        tiles.server_close()


def _scrape(
    server: TilesServer, pki: Pki, client: str | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> tuple[int, str] | str:
    """GET /metrics over TLS ``version`` with the client certificate ``client`` (a name of
    ``pki.client``, or none): the status and body, or ``"refused"`` when the TLS connection
    failed (TLS 1.3: after the client's side of the handshake ended)."""
    assert server.metrics_address is not None
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    context.minimum_version = context.maximum_version = version
    if client is not None:
        context.load_cert_chain(*pki.client[client])
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.metrics_address[1], context=context, timeout=WAIT
    )
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return "refused"
    finally:
        connection.close()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if (
            m is not None
            and m.group(1) == name
            and dict(re.findall(r'([a-z_0-9]+)="([^"]*)"', m.group(2) or "")) == labels
        ):
            return float(m.group(3))
    return None


def _failures(server: TilesServer, want: dict[str, int]) -> dict[str, int]:
    """The failed handshakes the listener counted (those not 0), once they are ``want`` (a
    failure is counted when its connection is lost, which may come after the client saw it)."""
    limits = server.metrics_limits
    assert limits is not None
    deadline = time.monotonic() + WAIT
    while True:
        counts = {reason: n for reason, n in limits.handshake_failures.items() if n}
        if counts == want or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def _refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[dict[str, object]]:
    lines = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == LOGGER and '"refused"' in r.getMessage()
    ]
    return [x for x in lines if x["reason"] == reason]


def test_each_outcome_counted_and_logged(
    server: TilesServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Allowed by subject (A's and B's) and by fingerprint: served. Chained but not on the list:
    403, counted, logged with its subject and SHA-256. Revoked (on the list too), expired, none:
    the handshake refused, counted by reason and logged with the client's address and OpenSSL's
    words. Over TLS 1.2, any of them: the handshake refused (tls_version: TLS 1.3 only where
    client certificates are required)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    for name in ("ok", "byhash", "b"):
        served = _scrape(server, pki, name)
        assert isinstance(served, tuple) and served[0] == 200, (name, served)
    assert _scrape(server, pki, "other") == (403, "this client certificate is not allowed\n")
    for name in ("revoked", "expired", None):
        assert _scrape(server, pki, name) == "refused", name
    for name in ("ok", "other", "revoked", None):
        assert _scrape(server, pki, name, ssl.TLSVersion.TLSv1_2) == "refused", name
    want = {"revoked": 1, "expired": 1, "no_certificate": 1, "tls_version": 4}
    assert _failures(server, want) == want
    served = _scrape(server, pki, "ok")
    assert isinstance(served, tuple)
    text = served[1]
    for reason in HANDSHAKE_FAILURES:  # every reason's series, 0 until it happens
        count = _metric(text, "confide_metrics_tls_handshake_failures_total", reason=reason)
        assert count == want.get(reason, 0), (reason, count)
    assert _metric(text, "confide_metrics_client_cert_refused_total", reason="not_allowed") == 1
    assert _metric(text, "confide_metrics_client_allow_entries") == 5
    assert _metric(text, "confide_metrics_http_requests_total", status="403") == 1
    assert _metric(text, "confide_metrics_tls_certificate_client_crl_revoked") == 1
    earliest = min(c.next_update_utc.timestamp() for c in pki.crls if c.next_update_utc is not None)
    assert _metric(text, "confide_metrics_tls_certificate_client_crl_next_update_seconds") == earliest
    sha_other = _sha(pki.client["other"][0])
    sha_ok = _sha(pki.client["ok"][0])
    assert (
        _metric(text, "confide_metrics_client_cert_scrapes_total", sha256=sha_ok, subject="CN=ok") == 2
    )  # this one too
    assert (
        _metric(text, "confide_metrics_client_cert_scrapes_total", sha256=sha_other, subject="CN=other")
        is None
    )

    not_allowed = _refusals(caplog, "metrics-client-cert-not-allowed")
    assert not_allowed == [
        {"event": "refused", "reason": "metrics-client-cert-not-allowed", "client": "127.0.0.1",
         "client_cert_subject": "CN=other", "client_cert_sha256": sha_other, "listener": "metrics"},
    ]  # fmt: skip
    handshakes = _refusals(caplog, "metrics-tls-handshake")
    assert sorted(str(x["cause"]) for x in handshakes) == sorted(r for r, n in want.items() for _ in range(n))
    assert all(x["client"] == "127.0.0.1" and x["listener"] == "metrics" for x in handshakes)
    details = {str(x["cause"]): str(x["detail"]) for x in handshakes}
    assert details == {
        "revoked": "certificate revoked",
        "expired": "certificate has expired",
        "no_certificate": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "tls_version": "UNSUPPORTED_PROTOCOL",
    }
    for record in caplog.records:  # no certificate, key or CRL in any line
        assert "BEGIN" not in record.getMessage()


def test_another_ca_and_closed_connections(
    server: TilesServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate of a CA not in the bundle: unknown_ca. A connection closed during its
    handshake (a TCP probe): counted as closed, not logged."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    stranger_ca = tls_client_ca(pki.dir, "stranger")[1]
    pki.client["stranger"] = tls_client_files(pki.dir, "stranger", stranger_ca)
    assert _scrape(server, pki, "stranger") == "refused"
    assert server.metrics_address is not None
    socket.create_connection(("127.0.0.1", server.metrics_address[1]), timeout=WAIT).close()
    want = {"unknown_ca": 1, "closed": 1}
    assert _failures(server, want) == want
    assert [x["cause"] for x in _refusals(caplog, "metrics-tls-handshake")] == ["unknown_ca"]


def test_crls_fail_closed(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """A CA of the bundle without a CRL in the file, or whose CRL is past its nextUpdate: its
    clients are refused (reason crl). The CRL file is reloaded with the certificate."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    _replace(pki.crl, crls_pem(client_crl(pki.a, [])))  # B's CRL left out
    tiles = _tiles(pki)
    tiles.serve_in_thread()
    try:
        assert _scrape(tiles, pki, "b") == "refused"
        assert _failures(tiles, {"crl": 1}) == {"crl": 1}
        served = _scrape(tiles, pki, "revoked")  # A's new CRL revokes nothing
        assert isinstance(served, tuple) and served[0] == 200
        now = datetime.now(UTC)
        stale = client_crl(
            pki.b, [], this_update=now - timedelta(days=2), next_update=now - timedelta(days=1)
        )
        _replace(pki.crl, crls_pem(client_crl(pki.a, []), stale))
        assert tiles.metrics_tls is not None and tiles.metrics_tls.reload() is True
        assert _scrape(tiles, pki, "b") == "refused"
        assert _failures(tiles, {"crl": 2}) == {"crl": 2}
        _replace(pki.crl, crls_pem(client_crl(pki.a, [_cert(pki.client["ok"][0])]), client_crl(pki.b, [])))
        assert tiles.metrics_tls.reload() is True
        served = _scrape(tiles, pki, "b")
        assert isinstance(served, tuple) and served[0] == 200
        assert _scrape(tiles, pki, "ok") == "refused"
        assert _failures(tiles, {"crl": 2, "revoked": 1}) == {"crl": 2, "revoked": 1}
        _replace(pki.crl, b"-----BEGIN X509 CRL-----\nnot one\n")  # a bad file: the CRLs in use kept
        assert tiles.metrics_tls.reload() is False
        assert _scrape(tiles, pki, "ok") == "refused"
        served = _scrape(tiles, pki, "b")
        assert isinstance(served, tuple) and served[0] == 200
    finally:
        tiles.shutdown()
        tiles.server_close()
    details = [x["detail"] for x in _refusals(caplog, "metrics-tls-handshake") if x["cause"] == "crl"]
    assert details == ["unable to get certificate CRL", "CRL has expired"]
    reloads = [json.loads(r.getMessage()) for r in caplog.records if '"tls-reload"' in r.getMessage()]
    assert [x["result"] for x in reloads] == ["ok", "ok", "failed"]
    assert reloads[0]["client_crl_issuers"] == ["CN=a client CA", "CN=b client CA"]
    assert reloads[1]["client_crl_revoked"] == 1
    assert METRICS_CLIENT_CRL_OPTION in str(reloads[2]["error"])


def test_the_allow_list_is_reloaded_and_a_bad_one_keeps_the_list(
    server: TilesServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    allow = server.metrics_allow
    assert allow is not None and allow.poll() is None
    assert _scrape(server, pki, "other") == (403, "this client certificate is not allowed\n")
    _replace(
        pki.allow, f"sha256:{':'.join(re.findall('..', _sha(pki.client['other'][0]).upper()))}\n".encode()
    )
    assert allow.poll() is True
    served = _scrape(server, pki, "other")
    assert isinstance(served, tuple) and served[0] == 200
    assert _scrape(server, pki, "ok")[0] == 403  # type: ignore[index]
    in_use = allow()
    for bad in (b"CN=ok, O=spaced\n", b"# nothing\n", b"sha256:abc\n"):
        _replace(pki.allow, bad)
        assert allow.poll() is False and allow() is in_use
    pki.allow.unlink()
    assert allow.reload() is False and allow() is in_use
    served = _scrape(server, pki, "other")
    assert isinstance(served, tuple) and served[0] == 200
    assert _metric(served[1], "confide_metrics_client_allow_reloads_total", result="failed") == 4
    assert _metric(served[1], "confide_metrics_client_allow_reloads_total", result="ok") == 1
    lines = [
        json.loads(r.getMessage())
        for r in caplog.records
        if '"metrics-client-allow-reload"' in r.getMessage()
    ]
    assert [x["result"] for x in lines] == ["ok", "failed", "failed", "failed", "failed"]
    assert lines[0]["fingerprints"] == 1 and lines[0]["subjects"] == 0
    assert "line 1" in lines[1]["error"] and METRICS_CLIENT_ALLOW_OPTION in lines[1]["error"]
    assert all(x["fingerprints"] == 1 for x in lines[1:])  # the list still in use


def test_allow_list_entries(tmp_path: Path) -> None:
    sha = "ab" * 32
    allow = parse_client_allow_list(
        b"# scrapers\n\n  CN=prometheus,O=Example Org  \r\n"
        + f"sha256:{sha.upper()}\n".encode()
        + b"SHA256:" + ":".join(["cd"] * 32).encode() + b"\n"
        + b"2.5.4.3=by-oid\nCN=a\\,b+O=multi\n",
        "allow",
    )  # fmt: skip
    assert allow.fingerprints == {sha, "cd" * 32}
    assert allow.subjects == {"CN=prometheus,O=Example Org", "CN=by-oid", "CN=a\\,b+O=multi"}
    assert allow.allows("CN=prometheus,O=Example Org", "00" * 32)
    assert allow.allows("", sha.upper())
    assert not allow.allows("CN=Prometheus,O=Example Org", "00" * 32)  # values as written
    assert not allow.allows("CN=prometheus", "00" * 32)  # the whole subject
    assert not allow.allows("O=Example Org,CN=prometheus", "00" * 32)  # in order
    path = tmp_path / "allow"
    path.write_bytes(b"CN=x\n")
    assert read_client_allow_list(path).subjects == {"CN=x"}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "no entry in it"),
        (b"# only\n\n", "no entry in it"),
        (b"sha256:" + b"a" * 63 + b"\n", "line 1: not a SHA-256 fingerprint"),
        (b"sha256:" + b"g" * 64 + b"\n", "line 1: not a SHA-256 fingerprint"),
        (b"CN=ok\ncn=lower\n", "line 2: neither sha256:HEX nor a subject in RFC 4514 form"),
        (b"CN=ok, O=spaced\n", "line 1: neither sha256:HEX nor a subject"),
        (b"prometheus\n", "line 1: neither sha256:HEX nor a subject"),
        (b"CN=\n", "line 1: neither sha256:HEX nor a subject"),
        (b"CN=ok\n# c\nCN=ok\n", "line 3: the same entry as line 1"),
        (b"sha256:" + b"ab" * 32 + b"\nsha256:" + b"AB" * 32 + b"\n", "line 2: the same entry as line 1"),
        (b"CN=ok\nCN=\x1b[31m\n", "line 2: a control character"),
        (b"CN=ok\nCN=\xff\n", "line 2: not UTF-8"),
    ],
)
def test_bad_allow_lists_are_one_line_usage_errors(tmp_path: Path, data: bytes, says: str) -> None:
    path = tmp_path / "allow"
    path.write_bytes(data)
    with pytest.raises(UsageError) as info:
        read_client_allow_list(path)
    message = info.value.message
    assert message.startswith(f"{METRICS_CLIENT_ALLOW_OPTION} {str(path)!r}: ") and "\n" not in message
    assert says in message, message


def test_the_allow_list_needs_the_client_ca(pki: Pki) -> None:
    with pytest.raises(UsageError, match="--metrics-client-allow needs --metrics-client-ca"):
        client_allow_file(pki.allow, None, poll_interval=0, logger=LOGGER)
    _, plain = metrics_files(True, None, pki.cert, pki.key, poll_interval=0, logger=LOGGER)
    with pytest.raises(UsageError, match="--metrics-client-allow needs --metrics-client-ca"):
        client_allow_file(pki.allow, plain, poll_interval=0, logger=LOGGER)
    with pytest.raises(UsageError, match="--metrics-client-crl needs --metrics-client-ca"):
        metrics_files(True, None, pki.cert, pki.key, poll_interval=0, logger=LOGGER, client_crl=pki.crl)
    assert client_allow_file(None, plain, poll_interval=0, logger=LOGGER) is None
    _, tls = metrics_files(
        True,
        None,
        pki.cert,
        pki.key,
        poll_interval=5,
        logger=LOGGER,
        client_ca=pki.bundle,
        client_crl=pki.crl,
    )
    assert tls is not None and tls.paths == (pki.cert, pki.key, pki.bundle, pki.crl)  # reloaded together
    allow = client_allow_file(pki.allow, tls, poll_interval=5, logger=LOGGER)
    assert isinstance(allow, MetricsClientAllowList) and allow.poll_interval == 5


def test_crls_der_and_pem(pki: Pki) -> None:
    ca = load_client_ca(pki.bundle, METRICS_CLIENT_CA_OPTION)
    der = pki.dir / "a.crl"
    der.write_bytes(
        client_crl(pki.a, [_cert(pki.client["revoked"][0])]).public_bytes(serialization.Encoding.DER)
    )
    loaded = load_client_crl(der, METRICS_CLIENT_CRL_OPTION, ca)
    assert (
        loaded.issuers == (ca.sha256[0],)
        and loaded.issuer_subjects == ("CN=a client CA",)
        and loaded.revoked == 1
    )
    both = load_client_crl(pki.crl, METRICS_CLIENT_CRL_OPTION, ca)
    assert both.issuers == ca.sha256 and both.revoked == 1


def _no_crl_sign(pki: Pki) -> tuple[Path, Issuer]:
    """A bundle of a CA whose key usage allows certificate signing but not CRL signing."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = issue("nocrl CA", key.public_key(), issuer="nocrl CA", signing_key=key,
                 not_before=now - timedelta(hours=1), not_after=now + timedelta(days=1), ca=True, usage=usage)  # fmt: skip
    path = pki.dir / "nocrl-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, (cert, key)


@pytest.mark.parametrize("case", ["stranger", "forged", "delta", "twice", "no-crl-sign", "garbage", "half",
                                  "certificate", "missing"])  # fmt: skip
def test_bad_crl_files_are_one_line_usage_errors(pki: Pki, case: str) -> None:
    bundle = pki.bundle
    path = pki.dir / "bad.crl"
    if case == "stranger":  # a CRL of a CA not in the bundle
        path.write_bytes(crls_pem(client_crl(tls_client_ca(pki.dir, "stranger")[1], [])))
    elif case == "forged":  # A's name, another key
        other = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(crls_pem(client_crl((pki.a[0], other), [])))
    elif case == "delta":
        path.write_bytes(crls_pem(client_crl(pki.a, [], delta=True)))
    elif case == "twice":
        path.write_bytes(crls_pem(client_crl(pki.a, []), client_crl(pki.a, [])))
    elif case == "no-crl-sign":
        bundle, issuer = _no_crl_sign(pki)
        path.write_bytes(crls_pem(client_crl(issuer, [])))
    elif case == "garbage":
        path.write_bytes(b"not a CRL at all")
    elif case == "half":
        data = crls_pem(client_crl(pki.a, []), client_crl(pki.b, []))
        path.write_bytes(data[: len(data) - 60])
    elif case == "certificate":
        path.write_bytes(pki.ca_a.read_bytes())
    else:
        path = pki.dir / "nope.crl"
    says = {
        "stranger": "CRL 1: not signed by a certificate of the client CA bundle (its issuer: 'CN=stranger client CA')",
        "forged": "CRL 1: not signed by a certificate of the client CA bundle",
        "delta": "CRL 1: a delta CRL",
        "twice": "CRL 2: a second CRL of 'CN=a client CA'",
        "no-crl-sign": "CRL 1: its issuer 'CN=nocrl CA' may not sign CRLs",
        "garbage": "cannot load: not a PEM or DER CRL",
        "half": "cannot load: an incomplete PEM block",
        "certificate": "PEM block 1 is not a CRL",
        "missing": "does not exist",
    }[case]
    ca = load_client_ca(bundle, METRICS_CLIENT_CA_OPTION)
    with pytest.raises(UsageError) as info:
        load_client_crl(path, METRICS_CLIENT_CRL_OPTION, ca)
    message = info.value.message
    assert message.startswith(f"{METRICS_CLIENT_CRL_OPTION} {os.fspath(path)!r}: ") and "\n" not in message
    assert says in message, message
    with pytest.raises(UsageError):  # at start: the server does not start
        CertificateReloader(pki.cert, pki.key, client_ca=bundle, client_crl=path)


def test_handshake_failure_reasons() -> None:
    """What the ssl module raises, by reason (the rest of the mapping is driven by real
    handshakes above)."""
    no_cert = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE]")
    no_cert.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert handshake_failure(no_cert) == ("no_certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    alert = ssl.SSLError(1, "alert")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert handshake_failure(alert) == ("peer_alert", "TLSV1_ALERT_UNKNOWN_CA")
    plain = ssl.SSLError(1, "http")
    plain.reason = "HTTP_REQUEST"
    assert handshake_failure(plain) == ("protocol", "HTTP_REQUEST")
    purpose = ssl.SSLCertVerificationError(1, "verify")
    purpose.verify_code, purpose.verify_message = 26, "unsupported certificate purpose"
    assert handshake_failure(purpose) == ("bad_certificate", "unsupported certificate purpose")
    assert handshake_failure(ConnectionResetError()) == ("closed", "ConnectionResetError")


def test_a_handshake_timeout_is_counted(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """A client that starts no handshake within the timeout: counted as timeout, and logged."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    tiles = _tiles(pki, handshake_timeout=0.3)
    tiles.serve_in_thread()
    try:
        assert tiles.metrics_address is not None
        with socket.create_connection(("127.0.0.1", tiles.metrics_address[1]), timeout=WAIT) as s:
            assert s.recv(1) == b""  # closed by the server
        assert _failures(tiles, {"timeout": 1}) == {"timeout": 1}
    finally:
        tiles.shutdown()
        tiles.server_close()
    assert [x["cause"] for x in _refusals(caplog, "metrics-tls-handshake")] == ["timeout"]


def _keep_alive(
    server: TilesServer, pki: Pki, client: str, version: ssl.TLSVersion
) -> http.client.HTTPSConnection:
    assert server.metrics_address is not None
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(*pki.client[client])
    return http.client.HTTPSConnection("127.0.0.1", server.metrics_address[1], context=context, timeout=WAIT)


def _get(connection: http.client.HTTPSConnection) -> tuple[int, str, str | None]:
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    return response.status, response.read().decode(), response.getheader("connection")


def test_a_kept_alive_connection_is_judged_again_at_each_request(
    server: TilesServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate revoked by a CRL reloaded while its connection is kept alive: the next
    request on that connection is refused 403 (and the connection closed), counted and logged;
    before, the handshake's verdict held for as long as the client kept the connection busy."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    connection = _keep_alive(server, pki, "ok", ssl.TLSVersion.TLSv1_3)
    try:
        assert _get(connection)[0] == 200
        sock = connection.sock
        assert server.metrics_tls is not None
        _replace(pki.crl, crls_pem(client_crl(pki.a, [_cert(pki.client["ok"][0])]), client_crl(pki.b, [])))
        assert server.metrics_tls.reload() is True
        status, body, close = _get(connection)
        assert connection.sock is None or connection.sock is sock  # the same connection, then closed
        assert (status, body, close) == (
            403,
            "this client certificate is no longer accepted (revoked)\n",
            "close",
        )
    finally:
        connection.close()
    assert _scrape(server, pki, "ok") == "refused"  # a new connection: its handshake refuses it
    served = _scrape(server, pki, "byhash")
    assert isinstance(served, tuple) and served[0] == 200
    assert _metric(served[1], "confide_metrics_client_cert_refused_total", reason="revoked") == 1
    assert _metric(served[1], "confide_metrics_client_cert_refused_total", reason="not_allowed") == 0
    [line] = _refusals(caplog, "metrics-client-cert-refused")
    assert line == {
        "event": "refused", "reason": "metrics-client-cert-refused", "cause": "revoked", "client": "127.0.0.1",
        "client_cert_subject": "CN=ok", "client_cert_sha256": _sha(pki.client["ok"][0]), "listener": "metrics",
    }  # fmt: skip


def test_dates_and_the_bundle_are_judged_at_each_request(pki: Pki) -> None:
    """On a kept-alive connection, at the reloader's clock: the CRL of the certificate's CA past
    its nextUpdate (crl), the certificate past its notAfter (expired), its CA taken out of the
    bundle (unknown_ca); each a 403 closing the connection, and a new connection is served again
    once the clock is back (the handshakes judge at the wall clock)."""
    now = datetime.now(UTC)
    _replace(
        pki.crl,
        crls_pem(client_crl(pki.a, [], next_update=now + timedelta(hours=1)), client_crl(pki.b, [])),
    )
    clock = [now]
    tiles = _tiles(pki, clock=lambda: clock[0])
    tiles.serve_in_thread()
    try:
        not_after = _cert(pki.client["ok"][0]).not_valid_after_utc
        for at, reason in ((now + timedelta(hours=2), "crl"), (not_after + timedelta(seconds=1), "expired")):
            connection = _keep_alive(tiles, pki, "ok", ssl.TLSVersion.TLSv1_3)
            try:
                assert _get(connection)[0] == 200
                clock[0] = at
                assert _get(connection) == (
                    403,
                    f"this client certificate is no longer accepted ({reason})\n",
                    "close",
                )
                clock[0] = now
            finally:
                connection.close()
        connection = _keep_alive(tiles, pki, "ok", ssl.TLSVersion.TLSv1_3)
        try:
            assert _get(connection)[0] == 200
            _replace(pki.bundle, pki.ca_b.read_bytes())  # A no longer trusted
            _replace(pki.crl, crls_pem(client_crl(pki.b, [])))
            assert tiles.metrics_tls is not None and tiles.metrics_tls.reload() is True
            assert _get(connection)[0:2] == (
                403,
                "this client certificate is no longer accepted (unknown_ca)\n",
            )
        finally:
            connection.close()
        served = _scrape(tiles, pki, "b")
        assert isinstance(served, tuple) and served[0] == 200
        for reason in ("crl", "expired", "unknown_ca"):
            assert _metric(served[1], "confide_metrics_client_cert_refused_total", reason=reason) == 1
    finally:
        tiles.shutdown()
        tiles.server_close()


def test_a_reload_does_not_take_an_older_crl(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """A CRL of a CA older than the one in use (an earlier thisUpdate, or a lower CRL number):
    the reload fails, the CRLs in use kept (a revocation cannot be undone by putting back the
    CRL of before it); a newer one is taken."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    now = datetime.now(UTC)
    revoked = _cert(pki.client["revoked"][0])
    _replace(pki.crl, crls_pem(client_crl(pki.a, [revoked], this_update=now - timedelta(minutes=10), number=5),
                               client_crl(pki.b, [])))  # fmt: skip
    tls = CertificateReloader(pki.cert, pki.key, logger=LOGGER, client_ca=pki.bundle, client_crl=pki.crl)
    in_use = tls.loaded
    for this_update, number in ((now - timedelta(minutes=20), 6), (now - timedelta(minutes=5), 4)):
        _replace(pki.crl, crls_pem(client_crl(pki.a, [], this_update=this_update, number=number),
                                   client_crl(pki.b, [])))  # fmt: skip
        assert tls.reload() is False and tls.loaded is in_use
    _replace(pki.crl, crls_pem(client_crl(pki.a, [], this_update=now - timedelta(minutes=5), number=6),
                               client_crl(pki.b, [])))  # fmt: skip
    assert tls.reload() is True and tls.loaded.client_crl is not None and tls.loaded.client_crl.revoked == 0
    errors = [json.loads(r.getMessage())["error"] for r in caplog.records if '"failed"' in r.getMessage()]
    assert len(errors) == 2
    for error in errors:
        assert error.startswith(f"--client-crl {os.fspath(pki.crl)!r}: the CRL of 'CN=a client CA' is older")
        assert "\n" not in error


@pytest.mark.parametrize("case", ["critical", "entry-critical", "indirect", "entry-issuer", "ca-only",
                                  "some-reasons"])  # fmt: skip
def test_crls_openssl_would_not_apply_are_refused_at_load(pki: Pki, case: str) -> None:
    """A CRL OpenSSL would not apply to its CA's client certificates (each of them refused at
    every handshake, fail-closed, as "unable to get certificate CRL"): refused at load, saying
    why."""
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    revoked = [_cert(pki.client["revoked"][0])]
    idp = {
        "indirect": x509.IssuingDistributionPoint(None, None, False, False, None, True, False),
        "ca-only": x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
        "some-reasons": x509.IssuingDistributionPoint(
            None, None, False, False, frozenset({x509.ReasonFlags.key_compromise}), False, False
        ),
    }
    if case == "critical":
        crl = client_crl(pki.a, revoked, extensions=[(unknown, True)])
    elif case == "entry-critical":
        crl = client_crl(pki.a, revoked, entry_extensions=[(unknown, True)])
    elif case == "entry-issuer":
        issuer = x509.CertificateIssuer([x509.DirectoryName(pki.b[0].subject)])
        crl = client_crl(pki.a, revoked, entry_extensions=[(issuer, True)])
    else:
        crl = client_crl(pki.a, revoked, extensions=[(idp[case], True)])
    path = pki.dir / "scoped.crl"
    path.write_bytes(crls_pem(crl))
    says = {
        "critical": "CRL 1: a critical extension OpenSSL does not handle (1.3.6.1.4.1.55555.1)",
        "entry-critical": "has a critical extension OpenSSL does not handle (1.3.6.1.4.1.55555.1)",
        "indirect": "CRL 1: an indirect CRL",
        "entry-issuer": "CRL 1: an entry names another certificate issuer",
        "ca-only": "CRL 1: its issuing distribution point excludes end-entity certificates",
        "some-reasons": "CRL 1: its issuing distribution point covers some revocation reasons only",
    }[case]
    with pytest.raises(UsageError) as info:
        load_client_crl(path, METRICS_CLIENT_CRL_OPTION, load_client_ca(pki.bundle, METRICS_CLIENT_CA_OPTION))
    assert says in info.value.message and "\n" not in info.value.message, info.value.message
    users_only = x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier("http://crl.example/a.crl")], None, True, False, None, False, False
    )  # a distribution point and user certificates only: what OpenSSL applies
    path.write_bytes(crls_pem(client_crl(pki.a, revoked, extensions=[(users_only, True)])))
    assert load_client_crl(
        path, METRICS_CLIENT_CRL_OPTION, load_client_ca(pki.bundle, METRICS_CLIENT_CA_OPTION)
    )


def test_no_tls12_so_no_renegotiation(server: TilesServer, pki: Pki) -> None:
    """A TLS 1.2 client, which could ask to renegotiate (to present another certificate than the
    one its connection was judged by) or resume a session by its id: its handshake refused
    (openssl s_client sees the connection end, its R command never runs), counted as
    tls_version. TLS 1.3 has no renegotiation."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    assert server.metrics_address is not None
    cert, key = pki.client["ok"]
    script = "R\n"
    run = subprocess.run(
        [openssl, "s_client", "-tls1_2", "-connect", f"127.0.0.1:{server.metrics_address[1]}",
         "-cert", str(cert), "-key", str(key), "-CAfile", str(pki.server_ca), "-legacy_renegotiation"],
        input=script, capture_output=True, text=True, timeout=WAIT, check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert "Cipher is (NONE)" in output and "RENEGOTIATING" not in output, output
    assert _failures(server, {"tls_version": 1}) == {"tls_version": 1}


def test_a_refused_certificates_long_subject_is_cut_in_its_log_line(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The subject a CA put in a certificate not on the list is logged at most 512 characters
    long (one line per refusal, a few a second: not a way to fill the log)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    allow = MetricsClientAllowList(pki.allow, logger=LOGGER)
    subject = "CN=" + "x" * 5000
    refused = allow.check((subject, "00" * 32), "127.0.0.1", RefusalLog(logger=LOGGER))
    assert refused is not None and refused[0] == 403
    [line] = _refusals(caplog, "metrics-client-cert-not-allowed")
    assert line["client_cert_subject"] == subject[:512]


def test_a_multi_valued_rdn_is_one_name_in_any_order(pki: Pki) -> None:
    """A subject with a multi-valued RDN (CN and O in one set): cryptography renders a
    certificate's in DER order (O=...+CN=...) and an allow-list line as written; either order
    on the list matches it, and the two orders are one entry (a second: refused as the same)."""
    now = datetime.now(UTC)
    rdn = x509.RelativeDistinguishedName(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "mv"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Example"),
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(x509.Name([rdn]), key.public_key(), issuer=pki.a[0].subject, signing_key=pki.a[1],
                 not_before=now - timedelta(hours=1), not_after=now + timedelta(hours=1), ca=False)  # fmt: skip
    who = ClientCertScrapers().identify({CLIENT_CERT: cert.public_bytes(serialization.Encoding.DER)})
    assert who is not None and who[0] == "CN=mv+O=Example"
    for line in (b"CN=mv+O=Example\n", b"O=Example+CN=mv\n"):
        assert parse_client_allow_list(line, "allow").allows(*who), line
    assert not parse_client_allow_list(b"CN=mv,O=Example\n", "allow").allows(*who)  # two RDNs: another name
    with pytest.raises(UsageError, match="line 2: the same entry as line 1"):
        parse_client_allow_list(b"CN=mv+O=Example\nO=Example+CN=mv\n", "allow")


def test_the_fingerprint_is_the_leafs(server: TilesServer, pki: Pki) -> None:
    """A client that sends its CA's certificate after its own, the CA's fingerprint on the
    list (its own not): 403, the fingerprint judged being the leaf's."""
    allow = server.metrics_allow
    assert allow is not None
    _replace(pki.allow, f"sha256:{_sha(pki.ca_a)}\n".encode())
    assert allow.reload() is True
    cert, key = pki.client["other"]
    chain = pki.dir / "other-chain.pem"
    chain.write_bytes(cert.read_bytes() + pki.ca_a.read_bytes())
    pki.client["chain"] = (chain, key)
    assert _scrape(server, pki, "chain") == (403, "this client certificate is not allowed\n")
