"""``--metrics-client-ca``: the metrics listener's TLS context requires a client certificate
chaining to a PEM bundle (:func:`confide.httpserve.certreload.load_client_ca`, the
``client_ca`` of :class:`~confide.httpserve.certreload.CertificateReloader`), reloaded with the
certificate, a bad bundle keeping the one in use; :class:`ClientCertScrapers` names the
scrapers by their certificates. Handshakes here are real TLS (TLS 1.3 and 1.2) over a socket
pair, the server side using the reloader's context; docs/cas.md "Metrics"."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import UsageError
from confide.httpserve.certreload import CertificateReloader, load_client_ca
from confide.httpserve.limits import CLIENT_CERT, HttpLimits
from confide.httpserve.metrics_listener import (
    CLIENT_CERT_REFUSALS,
    METRICS_CLIENT_CA_OPTION,
    ClientCertScrapers,
    MetricsListenerApp,
    listener_limits,
    metrics_files,
)
from pki import Issuer, issue, key_usage, tls_client_ca, tls_client_files, tls_server_files

OPTION = METRICS_CLIENT_CA_OPTION


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new inode: a poll sees it whatever the mtime's resolution


def _sha(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


class Pki:
    """A server certificate (``server_ca`` vouches for it), two client CAs ``a`` and ``b`` with a
    client certificate each, and an expired client certificate under ``a``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.server_ca, self.cert, self.key = tls_server_files(directory, "server")
        self.ca: dict[str, Path] = {}
        self.issuer: dict[str, Issuer] = {}
        self.client: dict[str, tuple[Path, Path]] = {}
        for name in ("a", "b"):
            self.ca[name], self.issuer[name] = tls_client_ca(directory, name)
            self.client[name] = tls_client_files(directory, f"scraper-{name}", self.issuer[name])
        self.client["expired"] = tls_client_files(
            directory, "expired", self.issuer["a"], not_after=datetime.now(UTC) - timedelta(minutes=5)
        )
        self.client["server-auth"] = self._server_auth_only(directory)

    def _server_auth_only(self, directory: Path) -> tuple[Path, Path]:
        """A certificate of CA ``a`` whose extended key usage allows serverAuth only."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = issue(
            "server-auth-only", key.public_key(), issuer=self.issuer["a"][0].subject,
            signing_key=self.issuer["a"][1], not_before=now - timedelta(hours=1),
            not_after=now + timedelta(days=1), ca=False, usage=key_usage(cert_sign=False, digital_signature=True),
            extensions=[x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])],
        )  # fmt: skip
        paths = directory / "server-auth-cert.pem", directory / "server-auth-key.pem"
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return paths


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _handshake(
    server_context: ssl.SSLContext, client: tuple[Path, Path] | None, pki: Pki, version: ssl.TLSVersion
) -> str:
    """A real TLS connection over a socket pair: the client (with the certificate ``client``,
    or none; TLS ``version`` exactly) sends a line, the server (``server_context``) answers it
    once its handshake succeeded. ``"served"``, or ``"refused"`` when the client got no answer."""
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    theirs.settimeout(10)
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(theirs, server_side=True) as tls:
                if tls.recv(64) == b"GET\n":
                    tls.sendall(b"200\n")
        except (ssl.SSLError, OSError) as exc:
            server_error.append(exc)
            theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    context.check_hostname = False
    context.minimum_version = context.maximum_version = version
    if client is not None:
        context.load_cert_chain(*client)
    try:
        with context.wrap_socket(ours) as tls:  # TLS 1.3: a refused certificate is an alert after it
            tls.sendall(b"GET\n")
            answer = tls.recv(64)
    except (ssl.SSLError, OSError):
        answer = b""
    thread.join(10)
    if answer == b"200\n":
        assert not server_error
        return "served"
    assert server_error, "the client got nothing although the server's handshake succeeded"
    return "refused"


VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


def _reloader(pki: Pki, ca: Path, **kwargs: object) -> CertificateReloader:
    return CertificateReloader(
        pki.cert, pki.key, logger="test.clientca", options=("--metrics-cert", "--metrics-key"),
        metric_prefix="confide_metrics_tls_certificate", listener="metrics", client_ca=ca,
        client_ca_option=OPTION, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.3", "tls1.2"])
def test_a_client_certificate_of_the_bundle_is_required(pki: Pki, version: ssl.TLSVersion) -> None:
    """No certificate, one of another CA, an expired one, one for servers only: refused in the
    handshake; one of the bundle's CA: served. Without --metrics-client-ca, no certificate is asked for."""
    reloader = _reloader(pki, pki.ca["a"])
    context = reloader()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert _handshake(context, pki.client["a"], pki, version) == "served"
    assert _handshake(context, None, pki, version) == "refused"
    assert _handshake(context, pki.client["b"], pki, version) == "refused"
    assert _handshake(context, pki.client["expired"], pki, version) == "refused"
    assert _handshake(context, pki.client["server-auth"], pki, version) == "refused"  # not for clients
    plain = CertificateReloader(pki.cert, pki.key)()
    assert plain.verify_mode == ssl.CERT_NONE
    assert _handshake(plain, None, pki, version) == "served"


def _connect(
    server_context: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession]:
    """One connection over a socket pair, the client offering ``session`` to resume; the
    session it ends with (``session_reused``: whether the server resumed the one offered). The
    server ends the connection as a server does, with a close_notify: OpenSSL drops a session
    from its cache when its connection was not shut down, which hid resumption by session id."""
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    theirs.settimeout(10)

    def serve() -> None:
        with (
            contextlib.suppress(ssl.SSLError, OSError),
            server_context.wrap_socket(theirs, server_side=True) as tls,
        ):
            if tls.recv(64) == b"GET\n":
                tls.sendall(b"200\n")
                tls.unwrap()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with client.wrap_socket(ours, session=session) as tls:
        tls.sendall(b"GET\n")
        assert tls.recv(64) == b"200\n"
        reused, ended = tls.session_reused, tls.session
    thread.join(10)
    assert ended is not None
    return reused, ended


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.3", "tls1.2"])
def test_every_connection_is_a_full_handshake_its_certificate_judged_again(
    pki: Pki, version: ssl.TLSVersion
) -> None:
    """A resumed TLS session (a TLS 1.3 ticket, a TLS 1.2 ticket or session id) carries the
    client certificate of the handshake that made it, judged then: resumed, it was served
    again without being judged, after it expired too (for the session's lifetime, hours). The
    listener resumes no session: each connection's certificate is checked at its handshake."""
    reloader = _reloader(pki, pki.ca["a"])  # asked for a context at each connection, as served
    client = ssl.create_default_context(cafile=str(pki.server_ca))
    client.check_hostname = False
    client.minimum_version = client.maximum_version = version
    client.load_cert_chain(*pki.client["a"])
    reused, session = _connect(reloader(), client, None)
    assert not reused
    reused, _ = _connect(reloader(), client, session)
    assert not reused


def test_an_intermediate_ca_alone_is_a_trust_anchor(pki: Pki) -> None:
    """A bundle of an intermediate CA only (not self-signed): its clients are served, those of
    its root's other branch are not."""
    root_cert, root_key = pki.issuer["a"]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    inter = issue(
        "intermediate", key.public_key(), issuer=root_cert.subject, signing_key=root_key,
        not_before=now - timedelta(hours=1), not_after=now + timedelta(days=1), ca=True,
        usage=key_usage(cert_sign=True, digital_signature=False),
    )  # fmt: skip
    bundle = pki.dir / "intermediate.pem"
    bundle.write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    below = tls_client_files(pki.dir, "below", (inter, key))
    context = _reloader(pki, bundle)()
    chain = pki.dir / "below-chain.pem"  # the client sends its leaf; the anchor is in the bundle
    chain.write_bytes(below[0].read_bytes())
    assert _handshake(context, (chain, below[1]), pki, ssl.TLSVersion.TLSv1_3) == "served"
    assert _handshake(context, pki.client["a"], pki, ssl.TLSVersion.TLSv1_3) == "refused"  # the root's


def test_the_bundle_is_reloaded_and_a_bad_one_keeps_the_one_in_use(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The bundle changed to B's CA: B's client served, A's refused (new handshakes); then a
    bundle that does not load: B's kept, the failure logged and counted."""
    ca = pki.dir / "client-ca.pem"
    _replace(ca, pki.ca["a"].read_bytes())
    reloader = _reloader(pki, ca)
    first = reloader()
    assert reloader.poll() is None
    caplog.set_level(logging.INFO, logger="test.clientca")
    _replace(ca, pki.ca["b"].read_bytes())
    assert reloader.poll() is True
    second = reloader()
    in_use = reloader.loaded
    assert second is not first
    assert _handshake(second, pki.client["b"], pki, ssl.TLSVersion.TLSv1_3) == "served"
    assert _handshake(second, pki.client["a"], pki, ssl.TLSVersion.TLSv1_3) == "refused"
    assert _handshake(first, pki.client["a"], pki, ssl.TLSVersion.TLSv1_3) == "served"  # an old one: kept
    for bad in (b"not a certificate\n", pki.ca["a"].read_bytes()[:200], pki.key.read_bytes()):
        _replace(ca, bad)
        assert reloader.poll() is False and reloader.loaded is in_use
    ca.unlink()
    assert reloader.reload() is False and reloader.loaded is in_use
    assert _handshake(reloader(), pki.client["b"], pki, ssl.TLSVersion.TLSv1_2) == "served"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.clientca"]
    assert [x["result"] for x in lines] == ["ok", "failed", "failed", "failed", "failed"]
    assert lines[0]["client_ca_sha256"] == [_sha(pki.ca["b"])]
    assert lines[0]["client_ca_subjects"] == ["CN=b client CA"]
    assert all(x["client_ca_sha256"] == [_sha(pki.ca["b"])] for x in lines[1:])  # the one in use
    assert all(OPTION in x["error"] and x["listener"] == "metrics" for x in lines[1:])
    assert "does not exist" in lines[-1]["error"]
    metrics = {m.name: m for m in reloader.collect()}
    samples = {
        s.labels["result"]: s.value for s in metrics["confide_metrics_tls_certificate_reloads"].samples
    }
    assert samples == {"ok": 1, "failed": 4}
    (count,) = metrics["confide_metrics_tls_certificate_client_ca_certificates"].samples
    assert count.value == 1
    (not_after,) = metrics["confide_metrics_tls_certificate_client_ca_not_after_seconds"].samples
    assert not_after.value == pki.issuer["b"][0].not_valid_after_utc.timestamp()


def test_a_bundle_of_two_cas(pki: Pki) -> None:
    bundle = pki.dir / "both.pem"
    bundle.write_bytes(pki.ca["a"].read_bytes() + pki.ca["b"].read_bytes())
    loaded = load_client_ca(bundle, OPTION)
    assert loaded.sha256 == (_sha(pki.ca["a"]), _sha(pki.ca["b"]))
    context = _reloader(pki, bundle)()
    for name in ("a", "b"):
        assert _handshake(context, pki.client[name], pki, ssl.TLSVersion.TLSv1_3) == "served"


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "half", "key", "directory"])
def test_bad_bundles_are_one_line_usage_errors(pki: Pki, case: str) -> None:
    path = pki.dir / "bad.pem"
    if case == "missing":
        path = pki.dir / "nope.pem"
    elif case == "empty":
        path.write_bytes(b"\n")
    elif case == "garbage":
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    elif case == "half":  # a file being written: the second certificate cut short
        both = pki.ca["a"].read_bytes() + pki.ca["b"].read_bytes()
        path.write_bytes(both[: len(both) - 100])
    elif case == "key":
        path.write_bytes(pki.key.read_bytes())
    else:
        path = pki.dir
    with pytest.raises(UsageError) as info:
        load_client_ca(path, OPTION)
    message = str(info.value)
    assert message.startswith(f"{OPTION} {os.fspath(path)!r}: ") and "\n" not in message, message
    assert "PRIVATE" not in message and pki.key.read_text().splitlines()[1] not in message
    with pytest.raises(UsageError):  # at start: the server does not start
        _reloader(pki, path)


def test_the_client_ca_needs_the_certificate(pki: Pki) -> None:
    with pytest.raises(UsageError, match="--metrics-client-ca needs --metrics-cert and --metrics-key"):
        metrics_files(True, None, None, None, poll_interval=0, logger="test", client_ca=pki.ca["a"])
    _tokens, tls = metrics_files(
        True, None, pki.cert, pki.key, poll_interval=0, logger="test", client_ca=pki.ca["a"]
    )
    assert tls is not None and tls.client_ca == pki.ca["a"] and tls().verify_mode == ssl.CERT_REQUIRED
    assert tls.paths == (pki.cert, pki.key, pki.ca["a"])  # polled with the pair


def _der(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_scrapers_are_named_by_their_certificates(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.scrapers")
    scrapers = ClientCertScrapers(logger="test.scrapers", max_certs=2)
    assert scrapers.identify({"type": "http"}) is None
    who: dict[str, tuple[str, str]] = {}
    for name in ("a", "b"):
        identified = scrapers.identify({CLIENT_CERT: _der(pki.client[name][0])})
        assert identified is not None
        who[name] = identified
    assert who["a"] == ("CN=scraper-a", _sha(pki.client["a"][0]))
    scrapers.accepted(who["a"], "127.0.0.1")
    scrapers.accepted(who["a"], "127.0.0.1")
    scrapers.accepted(who["b"], "127.0.0.2")
    expired = scrapers.identify({CLIENT_CERT: _der(pki.client["expired"][0])})
    assert expired is not None
    scrapers.accepted(expired, "127.0.0.3")  # a third certificate: past max_certs
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.scrapers"]
    assert [(x["client_cert_subject"], x["client"]) for x in lines] == [
        ("CN=scraper-a", "127.0.0.1"),
        ("CN=scraper-b", "127.0.0.2"),
    ]  # the first scrape of each only
    family, refused = scrapers.collect()
    samples = {(s.labels["subject"], s.labels["sha256"]): s.value for s in family.samples}
    assert samples == {who["a"]: 2, who["b"]: 1, ("", "other"): 1}
    assert refused.name == "confide_metrics_client_cert_refused"  # every reason, 0: none refused
    assert {s.labels["reason"]: s.value for s in refused.samples} == dict.fromkeys(CLIENT_CERT_REFUSALS, 0)


def _get(app: MetricsListenerApp, extra: dict[str, object]) -> tuple[int, bytes]:
    """``GET /metrics`` through the metrics listener's ASGI app, the scope with ``extra``."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": [],
        "client": ("127.0.0.1", 5),
        **extra,
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status, body = sent[0]["status"], sent[1]["body"]
    assert isinstance(status, int) and isinstance(body, bytes)
    return status, body


def test_the_app_refuses_a_request_without_a_certificate_and_counts_by_certificate(pki: Pki) -> None:
    """The handshake lets no such request through; should one come (a context without the
    bundle), the app does not serve it either: 403."""
    app = MetricsListenerApp(
        lambda: b"metrics\n",
        auth=None,
        limits=listener_limits(HttpLimits()),
        client_certs=ClientCertScrapers(),
    )
    assert _get(app, {}) == (403, b"a client certificate is required\n")
    der = _der(pki.client["a"][0])
    assert _get(app, {CLIENT_CERT: der}) == (200, b"metrics\n")
    assert app.client_certs is not None
    assert app.client_certs.scrapes == {("CN=scraper-a", hashlib.sha256(der).hexdigest()): 1}
    plain = MetricsListenerApp(lambda: b"metrics\n", auth=None, limits=listener_limits(HttpLimits()))
    assert _get(plain, {}) == (200, b"metrics\n")  # without --metrics-client-ca: as before
