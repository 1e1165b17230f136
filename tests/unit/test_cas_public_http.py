"""caIssuers and the public HTTP listener (docs/cas.md "CA certificates (caIssuers)", "The public
HTTP listener"): ``ca_issuers`` on a generated CA, the AuthorityInfoAccess of the certificates
issued under it, ``GET /v1/ca/<id>.crt`` on both listeners, and the plain-HTTP listener itself
(``public_http_server``: uvloop, httptools, its own connection gate) on loopback, driven over
real sockets: what it serves, and everything it refuses. The real in-process CAS (SQLite,
ledger sink, simulated platform) with an injected clock (tests/crl_env.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_cas_crl import _get

from confide.cas.app import create_app
from confide.cas.crl import parse_public_url
from confide.cas.public_http import PublicApp
from confide.cas.secrets import crl_distribution_id
from confide.cas.server import public_http_server
from confide.errors import PolicyError
from confide.httpserve.limits import MAX_HEAD, PUBLIC_MAX_HEAD, HttpLimits
from confide.policy.canonical import canonical_json
from confide.policy.loader import loads_policy
from crl_env import DAY, T0, TWO_LEVEL, Env, policy, started

BASE = "http://pki.example:8080/base"
ISSUERS = "    ca_issuers: true"
BOTH = "    crl_distribution: true\n" + ISSUERS


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with started(tmp_path / "cas") as out:
        yield out


def aia(cert: x509.Certificate) -> x509.Extension[x509.AuthorityInformationAccess] | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return None


def has_cdp(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return False
    return True


def ca_id(ca: x509.Certificate) -> str:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return crl_distribution_id(ca.subject, ski)


def check_aia(cert: x509.Certificate, ca: x509.Certificate, base: str = BASE) -> str:
    """RFC 5280 §4.2.2.1: non-critical, one caIssuers AccessDescription whose location is the
    URI of the issuer's certificate; returns the URL's path under ``base``."""
    ext = aia(cert)
    assert ext is not None and not ext.critical
    (access,) = ext.value
    assert access.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    assert isinstance(access.access_location, x509.UniformResourceIdentifier)
    assert access.access_location.value == f"{base}/v1/ca/{ca_id(ca)}.crt"
    assert cert.verify_directly_issued_by(ca) is None
    return access.access_location.value.removeprefix(base)


def test_the_flag_is_for_generated_cas_and_leaves_existing_hashes_alone() -> None:
    with_flag = loads_policy(policy(ca_extra=ISSUERS))
    assert with_flag.secret("ca").ca_issuers and not with_flag.secret("ca").crl_distribution
    assert b"ca_issuers" not in canonical_json(loads_policy(policy()))  # a default: hashes unchanged
    assert b'"ca_issuers":true' in canonical_json(with_flag)
    leaf = policy().replace("    common_name: srv.local\n", "    common_name: srv.local\n" + ISSUERS + "\n")
    with pytest.raises(PolicyError, match=r"ca_issuers for a x509 secret"):
        loads_policy(leaf)
    explicit = policy(ca_extra=ISSUERS, leaf=False).replace(
        "    private_key: ca_key\n    common_name: Test CA\n    valid_for: 90 days\n    renew_before: 30 days\n",
        "    value: x\n",
    )
    with pytest.raises(PolicyError, match="got ca_issuers with an explicit value"):
        loads_policy(explicit)
    imported = policy().replace(
        "  - name: ca\n    kind: x509-ca\n",
        "  - name: other\n    kind: x509-ca\n    import:\n      session: a\n      secret: b\n"
        + ISSUERS
        + "\n"
        "  - name: ca\n    kind: x509-ca\n",
    )
    with pytest.raises(PolicyError, match="got ca_issuers on an imported secret"):
        loads_policy(imported)
    with pytest.raises(PolicyError, match="ca_issuers"):
        loads_policy(policy(ca_extra="    ca_issuers: 'yes'"))  # strict: a boolean only


def test_certificates_name_their_issuers_certificate_from_their_next_version(env: Env) -> None:
    """Declaring ``ca_issuers`` regenerates nothing; the leaf gets the AIA at its renewal (and
    no CRL distribution point: the CA declares only ca_issuers), a certificate issued to the
    runtime at its release; with both flags, both extensions; the self-signed CA never has one."""
    before = env.certificate()
    env.cas.public_url = parse_public_url(BASE)
    env.apply_text(policy(ca_extra=ISSUERS, runtime="rt.local", predecessor=env.head()))
    assert env.certificate() == before and aia(before) is None  # not regenerated
    env.clock.now = T0 + 21 * DAY  # the leaf (30 days) is due
    files = env.release()
    renewed = env.certificate()
    assert renewed.serial_number != before.serial_number
    path = check_aia(renewed, env.ca_cert())
    assert not has_cdp(renewed)
    rt = x509.load_pem_x509_certificate(next(v for k, v in files.items() if k.endswith("rt.pem")))
    assert check_aia(rt, env.ca_cert()) == path and not has_cdp(rt)
    env.apply_text(policy(ca_extra=BOTH, dns="new.local", predecessor=env.head()))
    both = env.certificate()
    assert check_aia(both, env.ca_cert()) == path and has_cdp(both)
    assert aia(env.ca_cert()) is None  # self-signed: nothing above it
    shown = env.cas.show(env.read_request())["secrets"]["ca"]["ca_issuers"]
    assert shown == {"public_path": path, "url": BASE + path}
    env.apply_text(policy(dns="other.local", predecessor=env.head()))  # opted out: the next has none
    assert (
        aia(env.certificate()) is None
        and "ca_issuers" not in env.cas.show(env.read_request())["secrets"]["ca"]
    )


def test_without_public_url_no_certificate_names_one(env: Env) -> None:
    env.apply_text(policy(ca_extra=ISSUERS, dns="new.local", predecessor=env.head()))
    assert aia(env.certificate()) is None
    assert "url" not in env.cas.show(env.read_request())["secrets"]["ca"]["ca_issuers"]


def test_the_ca_route_on_both_listeners(env: Env) -> None:
    """``GET /v1/ca/<id>.crt``, the same on the TLS API and the public listener's application:
    the CA's current certificate in DER, only while ``ca_issuers`` is declared; everything else
    the same bare 404. ``crl_distribution`` alone publishes the CRL, not the certificate."""
    api, public = create_app(env.cas), PublicApp(env.cas)
    the_id = ca_id(env.ca_cert())
    path = f"/v1/ca/{the_id}.crt"
    not_found = _get(api, path)
    assert not_found == (404, {"cache-control": "no-store", "content-length": "0"}, b"")
    env.apply_text(policy(ca_extra="    crl_distribution: true", predecessor=env.head()))
    assert _get(api, path) == not_found and _get(public, path)[0] == 404
    assert _get(api, f"/v1/crl/{the_id}.crl")[0] == _get(public, f"/v1/crl/{the_id}.crl")[0] == 200
    env.apply_text(policy(ca_extra=ISSUERS, predecessor=env.head()))
    assert _get(public, f"/v1/crl/{the_id}.crl")[0] == 404  # ca_issuers alone publishes no CRL
    for app in (api, public):
        status, headers, body = _get(app, path)
        assert status == 200 and headers["content-type"] == "application/pkix-cert"
        assert headers["cache-control"] == "public, max-age=300"
        assert x509.load_der_x509_certificate(body) == env.ca_cert()
        for other in ("0" * 32 + ".crt", the_id.upper() + ".crt", the_id, the_id + ".crl", the_id + ".pem",
                      the_id + ".crt.crt", the_id[:-1] + ".crt", "..%2f.crt", the_id + "0.crt"):  # fmt: skip
            assert _get(app, "/v1/ca/" + other)[0] == 404, other
    # Near the CA's notAfter the certificate may be cached only until then.
    env.clock.now = env.ca_cert().not_valid_after_utc.timestamp() - 100
    assert _get(public, path)[1]["cache-control"] == "public, max-age=100"
    env.clock.now = T0
    env.apply_text(policy(predecessor=env.head()))  # opted out: the same 404 as an unknown id
    assert _get(api, path) == not_found
    assert env.cas.published_ca_certificate(the_id) is None


def test_a_relying_party_completes_the_path_through_ca_issuers(env: Env, tmp_path: Path) -> None:
    """Root → intermediate → leaf, both CAs declared ``ca_issuers``: given only the root, the
    leaf's caIssuers URL gives the intermediate (whose own names the root), which completes the
    path for ``openssl verify -untrusted``; without it the path does not build (the control)."""
    env.cas.public_url = BASE
    text = TWO_LEVEL.replace("    common_name: Root CA\n", "    common_name: Root CA\n" + ISSUERS + "\n")
    env.apply_text(
        text.replace(
            "    common_name: Intermediate CA\n", "    common_name: Intermediate CA\n" + ISSUERS + "\n"
        )
    )
    root, leaf = env.ca_cert("pki", "root"), env.certificate("srv", policy="pki")
    public = PublicApp(env.cas)
    status, _, body = _get(public, check_aia(leaf, env.ca_cert("pki", "int")))
    assert status == 200
    intermediate = x509.load_der_x509_certificate(body)
    status, _, body = _get(public, check_aia(intermediate, root))
    assert status == 200 and x509.load_der_x509_certificate(body) == root
    for name, cert in (("root", root), ("int", intermediate), ("leaf", leaf)):
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-attime", str(int(T0 + 3600)), "-CAfile", str(tmp_path / "root.pem"), *extra,
             str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    missing = verify()
    assert (
        missing.returncode != 0
        and "unable to get local issuer certificate" in missing.stdout + missing.stderr
    )
    ok = verify("-untrusted", str(tmp_path / "int.pem"))
    assert ok.returncode == 0 and "leaf.pem: OK" in ok.stdout, ok.stdout + ok.stderr


# -- the listener over real sockets ---------------------------------------------------------------


# The listener's head deadline: long enough that a client delayed by a loaded machine between
# connecting and sending its head is not timed out (the tests that want a timeout wait for it),
# and how long a read waits for what must come (only a failure waits this long).
HEAD_TIMEOUT = 4.0
WAIT = 30.0


@dataclass
class Listener:
    env: Env
    app: PublicApp
    limits: HttpLimits
    port: int
    crl_path: str
    ca_path: str

    def tcp(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0))


@pytest.fixture
def listener(env: Env) -> Iterator[Listener]:
    """The public listener as ``cas serve --public-http-listen`` runs it, in a thread, with small
    limits (2 connections per client, 3 in all, request heads within HEAD_TIMEOUT), for a CA
    declared both ``crl_distribution`` and ``ca_issuers``."""
    env.apply_text(policy(ca_extra=BOTH, predecessor=env.head()))
    limits = HttpLimits(max_connections=3, max_connections_per_client=2, head_timeout=HEAD_TIMEOUT,
                        max_head=PUBLIC_MAX_HEAD)  # fmt: skip
    app = PublicApp(env.cas, limits)
    server = public_http_server(app, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    the_id = ca_id(env.ca_cert())
    try:
        yield Listener(
            env, app, limits, sock.getsockname()[1], f"/v1/crl/{the_id}.crl", f"/v1/ca/{the_id}.crt"
        )
    finally:
        server.should_exit = True
        thread.join(10)


def _response(s: socket.socket, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while not head and len(rest) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        assert chunk, rest
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _request(
    s: socket.socket, method: str, path: str, extra: str = "", body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: pki\r\n{extra}\r\n".encode() + body)
    return _response(s, head=method == "HEAD")


def _closed(s: socket.socket) -> bool:
    s.settimeout(WAIT)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_it_serves_the_crl_and_the_ca_certificate(listener: Listener) -> None:
    env = listener.env
    with listener.tcp() as s:  # both on one kept-alive connection
        status, headers, body = _request(s, "GET", listener.crl_path)
        assert status == 200 and headers["content-type"] == "application/pkix-crl"
        assert x509.load_der_x509_crl(body) == env.crl()
        status, headers, body = _request(s, "GET", listener.ca_path + "?ignored=1")
        assert status == 200 and headers["content-type"] == "application/pkix-cert"
        assert x509.load_der_x509_certificate(body) == env.ca_cert()
        assert headers["x-content-type-options"] == "nosniff"
        # HEAD: the same head, no body (the next response follows at once).
        status, headers, body = _request(s, "HEAD", listener.ca_path)
        assert status == 200 and int(headers["content-length"]) == len(
            env.ca_cert().public_bytes(serialization.Encoding.DER)
        )
        assert body == b""
        assert _request(s, "GET", listener.crl_path)[0] == 200
    assert listener.app.responses[("/v1/crl/{id}", 200)] == 2
    assert listener.app.responses[("/v1/ca/{id}", 200)] == 2


def test_it_serves_nothing_else(listener: Listener) -> None:
    """Every other path a bare 404 (the API's among them: policies, attestation, the log,
    health, metrics, the CAS's evidence), whatever the CAS has there; every other method 405,
    on every path; nothing reaches the CAS's state."""
    env = listener.env
    other = ["/", "/v1/health", "/v1/policies/tls", "/v1/policies/tls/crl/ca", "/v1/policies/tls/events",
             "/v1/attest", "/v1/attest/nonce", "/v1/cas/evidence", "/metrics", "/v1/log/checkpoint",
             "/v1/crl/", "/v1/ca/", listener.crl_path.replace(".crl", ".crt"),
             listener.ca_path.replace(".crt", ".crl"), listener.crl_path + "/", "/v1/crl/../v1/health",
             "/v1/CRL/" + listener.crl_path[8:], "//v1/crl/" + listener.crl_path[8:], "/docs", "/openapi.json"]  # fmt: skip
    events = env.cas.show(env.read_request())["versions"]
    with listener.tcp() as s:
        for path in other:
            status, headers, body = _request(s, "GET", path)
            assert (status, body, headers["content-length"]) == (404, b"", "0"), path
    body = b'{"name": "x"}'
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/v1/attest", "/v1/attest/nonce", "/v1/policies", "/v1/policies/tls/revocations",
                     listener.crl_path, listener.ca_path):  # fmt: skip
            with listener.tcp() as s:
                length = f"Content-Length: {len(body)}\r\n"
                status, headers, _ = _request(s, method, path, length, body)
                assert status == 405 and headers["allow"] == "GET, HEAD", (method, path)
    assert env.cas.show(env.read_request())["versions"] == events
    assert listener.app.responses[("unmatched", 405)] == 30


def test_a_request_with_content_is_refused_and_the_connection_closed(listener: Listener) -> None:
    for extra in ("Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n"):
        with listener.tcp() as s:
            status, headers, _ = _request(s, "GET", listener.crl_path, extra)
            assert status == 413 and headers["connection"] == "close"
            assert _closed(s)
    with listener.tcp() as s:  # an empty one is no content
        assert _request(s, "GET", listener.crl_path, "Content-Length: 0\r\n")[0] == 200


def test_request_heads_are_bounded_in_size_and_time(listener: Listener) -> None:
    """A head past PUBLIC_MAX_HEAD (well under the TLS API's MAX_HEAD) gets 431 and the
    connection is closed; so is one not complete within the head timeout (408 once some came)."""
    assert PUBLIC_MAX_HEAD < MAX_HEAD
    refused = listener.limits.head_too_large
    with listener.tcp() as s:
        filler = "X-Filler: " + "a" * 1000 + "\r\n"
        s.sendall(f"GET {listener.crl_path} HTTP/1.1\r\nHost: pki\r\n".encode())
        for _ in range(PUBLIC_MAX_HEAD // 1000 + 2):
            try:
                s.sendall(filler.encode())
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _, body = _response(s)
        assert status == 431 and str(PUBLIC_MAX_HEAD).encode() in body
        assert _closed(s)
    assert listener.limits.head_too_large == refused + 1
    with listener.tcp() as s:  # the same head in one write (one read: the parser would complete it)
        s.sendall(f"GET {listener.crl_path} HTTP/1.1\r\nHost: pki\r\n{filler * 9}\r\n".encode())
        assert _response(s)[0] == 431
    assert listener.limits.head_too_large == refused + 2
    with listener.tcp() as s:  # just under the bound: served
        assert (
            _request(s, "GET", listener.crl_path, "X-Filler: " + "a" * (PUBLIC_MAX_HEAD - 200) + "\r\n")[0]
            == 200
        )
    timeouts = listener.limits.head_timeouts
    with listener.tcp() as s:
        s.sendall(f"GET {listener.crl_path} HTTP/1.1\r\n".encode())
        assert _response(s)[0] == 408
        assert _closed(s)
    with listener.tcp() as s:  # nothing sent: closed without a response
        assert _closed(s)
    assert listener.limits.head_timeouts == timeouts + 2


def test_connections_over_the_limits_are_closed_when_accepted(listener: Listener) -> None:
    limits = listener.limits
    a, b = listener.tcp(), listener.tcp()  # the per-client limit (2) from 127.0.0.1
    assert _request(a, "GET", listener.crl_path)[0] == _request(b, "GET", listener.crl_path)[0] == 200
    with listener.tcp() as third:
        assert _closed(third)
    assert limits.refused_per_client == 1
    c = listener.tcp("127.0.0.2")  # another client: admitted, the total (3) reached
    assert _request(c, "GET", listener.ca_path)[0] == 200
    with listener.tcp("127.0.0.3") as fourth:
        assert _closed(fourth)
    assert limits.refused_total == 1 and limits.open == 3
    for s in (a, b, c):
        s.close()
    deadline = time.monotonic() + WAIT
    while limits.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limits.open == 0
    with listener.tcp() as s:
        assert _request(s, "GET", listener.crl_path)[0] == 200


def test_the_api_metrics_count_the_public_listener(listener: Listener) -> None:
    with listener.tcp() as s:
        assert _request(s, "GET", listener.crl_path)[0] == 200
        assert _request(s, "GET", "/v1/health")[0] == 404
    status, _, body = _get(create_app(listener.env.cas, public_http=listener.app), "/metrics")
    text = body.decode()
    assert status == 200
    assert 'confide_cas_public_http_requests_total{route="/v1/crl/{id}",status="200"} 1.0' in text
    assert 'confide_cas_public_http_requests_total{route="unmatched",status="404"} 1.0' in text
    assert "confide_cas_public_http_connections " in text
    assert 'confide_cas_public_http_refused_total{reason="per_ip"} 0.0' in text
