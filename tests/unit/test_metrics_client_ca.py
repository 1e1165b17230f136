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
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import UsageError
from confide.httpserve.certreload import CertificateReloader, load_client_ca
from confide.httpserve.limits import CLIENT_CERT, HttpLimits, handshake_failure
from confide.httpserve.metrics_listener import (
    CLIENT_CERT_REFUSALS,
    METRICS_CLIENT_CA_OPTION,
    ClientCertScrapers,
    MetricsListenerApp,
    listener_limits,
    metrics_files,
)
from pki import Issuer, client_crl, issue, key_usage, tls_client_ca, tls_client_files, tls_server_files

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
    server_context: ssl.SSLContext,
    client: tuple[Path, Path] | None,
    pki: Pki,
    version: ssl.TLSVersion,
    why: list[tuple[str, str]] | None = None,
) -> str:
    """A real TLS connection over a socket pair: the client (with the certificate ``client``,
    or none; TLS ``version`` exactly) sends a line, the server (``server_context``) answers it
    once its handshake succeeded. ``"served"``, or ``"refused"`` when the client got no answer
    (then appended to ``why``: what the server's handshake failed with, :func:`handshake_failure`)."""
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
    if why is not None:
        why.append(handshake_failure(server_error[0]))
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
    handshake; one of the bundle's CA: served over TLS 1.3, refused over TLS 1.2 (TLS 1.3 only
    where client certificates are required: no session resumed). Without --metrics-client-ca,
    no certificate is asked for, and TLS 1.2 is served."""
    reloader = _reloader(pki, pki.ca["a"])
    context = reloader()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    why: list[tuple[str, str]] = []
    tls13 = version == ssl.TLSVersion.TLSv1_3
    assert _handshake(context, pki.client["a"], pki, version, why) == ("served" if tls13 else "refused")
    assert why == ([] if tls13 else [("tls_version", "UNSUPPORTED_PROTOCOL")])
    assert _handshake(context, None, pki, version) == "refused"
    assert _handshake(context, pki.client["b"], pki, version) == "refused"
    assert _handshake(context, pki.client["expired"], pki, version) == "refused"
    assert _handshake(context, pki.client["server-auth"], pki, version) == "refused"  # not for clients
    plain = CertificateReloader(pki.cert, pki.key)()
    assert plain.verify_mode == ssl.CERT_NONE and plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert _handshake(plain, None, pki, version) == "served"


def _connect(
    server_context: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession] | None:
    """One connection over a socket pair, the client offering ``session`` to resume; the
    session it ends with (``session_reused``: whether the server resumed the one offered),
    ``None`` when the client got no answer (its handshake refused). The
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
    try:
        with client.wrap_socket(ours, session=session) as tls:
            tls.sendall(b"GET\n")
            if tls.recv(64) != b"200\n":
                raise ConnectionError("no answer")
            reused, ended = tls.session_reused, tls.session
    except (ssl.SSLError, OSError):
        thread.join(10)
        return None
    thread.join(10)
    assert ended is not None
    return reused, ended


def _client(pki: Pki, version: ssl.TLSVersion, cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A client offering TLS ``version`` only, with the certificate ``cert``."""
    client = ssl.create_default_context(cafile=str(pki.server_ca))
    client.check_hostname = False
    client.minimum_version = client.maximum_version = version
    client.load_cert_chain(*cert)
    return client


def test_one_context_per_load_and_every_connection_a_full_handshake(pki: Pki) -> None:
    """A resumed TLS session (a TLS 1.3 ticket, a TLS 1.2 ticket or session id) carries the
    client certificate of the handshake that made it, judged then, not its chain's dates again
    (an expired client CA's clients were served by resuming, for the session's lifetime). The
    listener has one context per load of its files, handed to every connection, and resumes no
    session from it: TLS 1.3 only, no tickets; a TLS 1.2 client, which OpenSSL's session-id cache
    would resume, is refused whatever session it offers."""
    reloader = _reloader(pki, pki.ca["a"])
    context = reloader()
    assert reloader() is context  # made at load, not per connection
    assert context.num_tickets == 0 and context.options & ssl.OP_NO_TICKET
    client = _client(pki, ssl.TLSVersion.TLSv1_3, pki.client["a"])
    first = _connect(context, client, None)
    assert first is not None and not first[0]
    again = _connect(reloader(), client, first[1])
    assert again is not None and not again[0]  # offered, not resumed: a full handshake
    assert context.session_stats()["hits"] == 0
    tls12 = _client(pki, ssl.TLSVersion.TLSv1_2, pki.client["a"])
    assert _connect(reloader(), tls12, None) is None  # so it never has a session to offer


def test_a_session_whose_certificate_was_revoked_since_is_not_resumed(pki: Pki) -> None:
    """A scraper's connection served, then its certificate revoked (the CRL reloaded): a new
    connection offering the session of the first is refused in its handshake (revoked), over TLS
    1.3 and over TLS 1.2 (no TLS 1.2 at all there). A connection whose handshake began on the
    context of the old CRL is not resumed either, and its requests are refused
    (:meth:`CertificateReloader.client_cert_refusal`)."""
    crl = pki.dir / "client.crl"
    crl.write_bytes(client_crl(pki.issuer["a"], number=1).public_bytes(serialization.Encoding.PEM))
    reloader = _reloader(pki, pki.ca["a"], client_crl=crl, client_crl_option="--metrics-client-crl")
    before = reloader()
    client = _client(pki, ssl.TLSVersion.TLSv1_3, pki.client["a"])
    served = _connect(before, client, None)
    assert served is not None and not served[0]
    leaf = x509.load_pem_x509_certificate(pki.client["a"][0].read_bytes())
    _replace(crl, client_crl(pki.issuer["a"], [leaf], number=2).public_bytes(serialization.Encoding.PEM))
    assert reloader.poll() is True
    after = reloader()
    assert after is not before
    assert _connect(after, client, served[1]) is None
    assert _connect(after, _client(pki, ssl.TLSVersion.TLSv1_2, pki.client["a"]), None) is None
    # a connection accepted just before the reload, on the context of the old CRL: a full
    # handshake too (not resumed), and its requests judged by the new CRL (a 403, below)
    late = _connect(before, client, served[1])
    assert late is not None and not late[0]
    why: list[tuple[str, str]] = []
    assert _handshake(after, pki.client["a"], pki, ssl.TLSVersion.TLSv1_3, why) == "refused"
    assert why == [("revoked", "certificate revoked")]
    assert _handshake(after, pki.client["b"], pki, ssl.TLSVersion.TLSv1_3) == "refused"  # another CA's
    assert reloader.client_cert_refusal(leaf.public_bytes(serialization.Encoding.DER)) == "revoked"


def test_a_client_ca_expired_since_a_session_was_made_refuses_the_next_connection(pki: Pki) -> None:
    """What per-request judgement alone misses (it judges the client's certificate, not its
    chain): a session made while the client CA was valid, offered once the CA has expired (the
    same context, no reload). The new connection is a full handshake, refused (OpenSSL's wall
    clock: the CA is made to expire within seconds)."""
    now = datetime.now(UTC).replace(microsecond=0)
    key = ec.generate_private_key(ec.SECP256R1())
    until = now + timedelta(seconds=3)
    ca = issue(
        "short-lived client CA", key.public_key(), issuer="short-lived client CA", signing_key=key,
        not_before=now - timedelta(hours=1), not_after=until, ca=True,
        usage=key_usage(cert_sign=True, digital_signature=False),
    )  # fmt: skip
    bundle = pki.dir / "short-lived.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    scraper = tls_client_files(pki.dir, "short-lived", (ca, key))
    context = _reloader(pki, bundle)()
    client = _client(pki, ssl.TLSVersion.TLSv1_3, scraper)
    served = _connect(context, client, None)
    if datetime.now(UTC) >= until:
        pytest.fail("the machine took 3 s to make one handshake: the session was made after the CA expired")
    assert served is not None
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.1)
    assert _connect(context, client, served[1]) is None
    why: list[tuple[str, str]] = []
    assert _handshake(context, scraper, pki, ssl.TLSVersion.TLSv1_3, why) == "refused"
    assert why == [("expired", "certificate has expired")]


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
    assert reloader() is second  # the one context of the files in use
    assert _handshake(reloader(), pki.client["b"], pki, ssl.TLSVersion.TLSv1_3) == "served"
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


def test_client_certificates_need_tls13(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenSSL without TLS 1.3: a one-line UsageError naming the bundle's option (the server
    does not start: it would refuse every scraper). A context made to stop at TLS 1.2: a bug of
    the caller, not served."""

    def tls12_only() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    with pytest.raises(ValueError, match=r"must allow TLS 1\.3"):
        _reloader(pki, pki.ca["a"], make_context=tls12_only)
    monkeypatch.setattr(ssl, "HAS_TLSv1_3", False)
    with pytest.raises(UsageError) as info:
        _reloader(pki, pki.ca["a"])
    assert str(info.value) == f"{OPTION}: needs TLS 1.3, which this Python's OpenSSL does not have"
    assert (
        CertificateReloader(pki.cert, pki.key)().minimum_version == ssl.TLSVersion.TLSv1_2
    )  # without: as before
