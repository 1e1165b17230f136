"""The certificate files of --tls-cert/--tls-key, loaded and reloaded
(:mod:`confide.httpserve.certreload`): both parsed and checked to match before anything is
swapped; every bad input a one-line UsageError naming the file, the old context kept, the
failure logged (no key material) and counted."""

from __future__ import annotations

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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from confide.errors import UsageError
from confide.httpserve.certreload import (
    MAX_PEM_FILE,
    CertificateReloader,
    FileReloader,
    load_certificate_pair,
)
from pki import tls_server_files


@pytest.fixture
def pairs(tmp_path: Path) -> dict[str, tuple[Path, Path, Path]]:
    return {name: tls_server_files(tmp_path, name) for name in ("a", "b")}


def _sha(cert: Path) -> str:
    from cryptography import x509

    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def test_loads_a_pair_and_a_chain(tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]]) -> None:
    ca, cert, key = pairs["a"]
    loaded = load_certificate_pair(cert, key)
    assert loaded.sha256 == _sha(cert) and loaded.chain_length == 1
    assert loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + ca.read_bytes())
    assert load_certificate_pair(chain, key).chain_length == 2


def _pem_key(key: object, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize(
    "case",
    ["missing-cert", "missing-key", "empty-cert", "half-cert", "half-chain", "half-key", "cert-as-key", "key-as-cert",
     "other-key", "rsa-key", "encrypted-key", "directory", "fifo", "too-large"],
)  # fmt: skip
def test_refused(tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], case: str) -> None:
    ca, cert, key = pairs["a"]
    _cb, _cert_b, key_b = pairs["b"]
    bad = tmp_path / "bad.pem"
    c, k = cert, key
    if case == "missing-cert":
        c = tmp_path / "nope.pem"
    elif case == "missing-key":
        k = tmp_path / "nope.pem"
    elif case == "empty-cert":
        bad.write_bytes(b"\n")
        c = bad
    elif case == "half-cert":
        data = cert.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        c = bad
    elif case == "half-chain":  # the leaf whole, the next certificate cut short
        data = ca.read_bytes()
        bad.write_bytes(cert.read_bytes() + data[: len(data) // 2])
        c = bad
    elif case == "half-key":
        data = key.read_bytes()
        bad.write_bytes(data[: len(data) - 40])
        k = bad
    elif case == "cert-as-key":
        k = cert
    elif case == "key-as-cert":
        c = key
    elif case == "other-key":
        k = key_b
    elif case == "rsa-key":
        bad.write_bytes(_pem_key(rsa.generate_private_key(65537, 2048)))
        k = bad
    elif case == "encrypted-key":
        # the certificate's own key, but encrypted: refused (no password is asked for)
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        bad.write_bytes(_pem_key(load_pem_private_key(key.read_bytes(), None), b"pw-1234"))
        k = bad
    elif case == "directory":
        c = tmp_path
    elif case == "fifo":
        os.mkfifo(bad)
        k = bad
    elif case == "too-large":
        bad.write_bytes(cert.read_bytes() + b"\n" * MAX_PEM_FILE)
        c = bad
    with pytest.raises(UsageError) as exc:
        load_certificate_pair(c, k)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("--tls-")
    assert "PRIVATE KEY" not in message
    assert (
        os.fspath(k if case in ("missing-key", "half-key", "rsa-key", "encrypted-key", "fifo") else c)
        in message
    )


def test_reload_swaps_only_a_good_pair(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    _ca, cert_a, key_a = pairs["a"]
    _cb, cert_b, key_b = pairs["b"]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_a.read_bytes())
    key.write_bytes(key_a.read_bytes())
    reloader = CertificateReloader(cert, key, logger="test.certreload")
    first = reloader()
    assert reloader.poll() is None  # unchanged files: nothing read
    caplog.set_level(logging.INFO, logger="test.certreload")

    key.write_bytes(key_b.read_bytes())  # half of a rotation: the key of B, the certificate of A
    assert reloader.poll() is False
    assert reloader() is first and reloader.failed == 1 and reloader.reloaded == 0
    assert reloader.poll() is None  # the same files are not tried again until they change

    cert.write_bytes(cert_b.read_bytes())  # the rotation completed
    assert reloader.poll() is True
    assert reloader() is not first and reloader.loaded.sha256 == _sha(cert_b)
    assert reloader.reloaded == 1

    second = reloader()
    key.unlink()
    assert reloader.reload() is False and reloader() is second

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.certreload"]
    assert [(x["result"], x["trigger"]) for x in lines] == [
        ("failed", "poll"),
        ("ok", "poll"),
        ("failed", "SIGHUP"),
    ]
    assert lines[0]["certificate_sha256"] == _sha(cert_a) and "is not the key" in lines[0]["error"]
    assert lines[1]["certificate_sha256"] == _sha(cert_b) and lines[1]["not_after"]
    assert lines[2]["certificate_sha256"] == _sha(cert_b) and "does not exist" in lines[2]["error"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO, logging.WARNING]
    text = caplog.text
    for k in (key_a, key_b):
        for line in k.read_text().splitlines():
            if not line.startswith("-----"):
                assert line not in text

    metrics = {m.name: m for m in reloader.collect()}
    samples = {s.labels.get("result"): s.value for s in metrics["confide_tls_certificate_reloads"].samples}
    assert samples == {"ok": 1, "failed": 2}
    (gauge,) = metrics["confide_tls_certificate_not_after_seconds"].samples
    assert gauge.value == reloader.loaded.not_after.timestamp()


def test_a_bad_pair_at_start_is_a_usage_error(pairs: dict[str, tuple[Path, Path, Path]]) -> None:
    _ca, cert_a, _key_a = pairs["a"]
    _cb, _cert_b, key_b = pairs["b"]
    with pytest.raises(UsageError, match="is not the key"):
        CertificateReloader(cert_a, key_b)


def _served(port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint is what is checked
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_embedded_server_polls(tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]]) -> None:
    """A server run in a thread (no SIGHUP there) with poll_interval: a changed pair is served
    to new connections; ``reload()`` works too. The metrics collector is registered."""
    from confide.ledger.http import TilesServer

    _ca, cert_a, key_a = pairs["a"]
    _cb, cert_b, key_b = pairs["b"]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_a.read_bytes())
    key.write_bytes(key_a.read_bytes())
    reloader = CertificateReloader(cert, key, poll_interval=0.05, logger="test.certreload")
    server = TilesServer(tmp_path / "log.db", ("127.0.0.1", 0), tls=reloader, rate=None)
    server.serve_in_thread()
    try:
        port = server.server_address[1]
        assert _served(port) == _sha(cert_a)
        for src, dst in ((cert_b, cert), (key_b, key)):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)
        deadline = time.monotonic() + 10
        while reloader.reloaded == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # a poll between the two renames sees B's certificate with A's key: one failure at most
        assert reloader.reloaded == 1 and reloader.failed <= 1
        assert _served(port) == _sha(cert_b)
        assert b"confide_tls_certificate_reloads_total" in server.metrics.render()
    finally:
        server.shutdown()
        server.server_close()


class _Clock:
    """An injected wall clock: the time a reloaded certificate is judged at."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _dates(cert: Path) -> tuple[datetime, datetime]:
    from cryptography import x509

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    return parsed.not_valid_before_utc, parsed.not_valid_after_utc


def _rotating(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], clock: _Clock
) -> CertificateReloader:
    """A reloader serving pair A from cert.pem/key.pem, with ``clock``."""
    _ca, cert_a, key_a = pairs["a"]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_a.read_bytes())
    key.write_bytes(key_a.read_bytes())
    return CertificateReloader(cert, key, logger="test.certreload", clock=clock)


def _rotate_to_b(tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]]) -> None:
    _cb, cert_b, key_b = pairs["b"]
    (tmp_path / "cert.pem").write_bytes(cert_b.read_bytes())
    (tmp_path / "key.pem").write_bytes(key_b.read_bytes())


def _failed_samples(reloader: CertificateReloader) -> dict[str | None, float]:
    metrics = {m.name: m for m in reloader.collect()}
    return {s.labels.get("result"): s.value for s in metrics["confide_tls_certificate_reloads"].samples}


def test_an_expired_certificate_is_not_reloaded(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """A pair whose certificate expired before the reload is refused like a bad file: the old
    certificate stays, the refusal is logged (the file and the dates, no key material) and
    counted; the same files are not tried again by polls (SIGHUP reads them again)."""
    _cb, cert_b, key_b = pairs["b"]
    _not_before, not_after = _dates(cert_b)
    clock = _Clock(not_after + timedelta(seconds=1))
    reloader = _rotating(tmp_path, pairs, clock)  # at start the dates are not judged
    first = reloader()
    caplog.set_level(logging.INFO, logger="test.certreload")
    _rotate_to_b(tmp_path, pairs)
    assert reloader.poll() is False
    assert reloader() is first and reloader.loaded.sha256 == _sha(pairs["a"][1])
    assert (reloader.failed, reloader.reloaded) == (1, 0)
    assert reloader.poll() is None
    assert reloader.reload() is False and reloader() is first  # SIGHUP: refused again
    assert _failed_samples(reloader) == {"ok": 0, "failed": 2}
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.certreload"]
    assert [(x["result"], x["trigger"]) for x in lines] == [("failed", "poll"), ("failed", "SIGHUP")]
    error = lines[0]["error"]
    assert error == (
        f"--tls-cert {os.fspath(tmp_path / 'cert.pem')!r}: the certificate has expired: notAfter"
        f" {not_after.isoformat()}, now {clock.now.isoformat()}"
    )
    assert lines[0]["certificate_sha256"] == _sha(pairs["a"][1])  # the one still served
    for line in key_b.read_text().splitlines():
        if not line.startswith("-----"):
            assert line not in caplog.text

    clock.now = not_after  # notAfter itself is still valid (RFC 5280 §4.1.2.5)
    assert reloader.reload() is True and reloader.loaded.sha256 == _sha(cert_b)


def test_a_not_yet_valid_certificate_is_reloaded_when_its_time_comes(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """Refused while not yet valid; the first poll at its notBefore loads the same files."""
    _cb, cert_b, _key_b = pairs["b"]
    not_before, _not_after = _dates(cert_b)
    clock = _Clock(not_before - timedelta(seconds=10))
    reloader = _rotating(tmp_path, pairs, clock)
    first = reloader()
    caplog.set_level(logging.INFO, logger="test.certreload")
    _rotate_to_b(tmp_path, pairs)
    assert reloader.poll() is False and reloader() is first
    assert reloader.poll() is None  # not yet
    clock.now = not_before - timedelta(seconds=1)
    assert reloader.poll() is None
    clock.now = not_before
    assert reloader.poll() is True and reloader.loaded.sha256 == _sha(cert_b)
    assert reloader.poll() is None
    assert _failed_samples(reloader) == {"ok": 1, "failed": 1}
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.certreload"]
    assert [x["result"] for x in lines] == ["failed", "ok"]
    assert "the certificate is not yet valid: notBefore " + not_before.isoformat() in lines[0]["error"]


def test_a_bad_pair_after_a_not_yet_valid_one_is_not_retried(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]]
) -> None:
    """The retry at notBefore is for the refused files only: once they changed into a pair that
    does not load, polls wait for the next change again."""
    _cb, cert_b, _key_b = pairs["b"]
    not_before, _not_after = _dates(cert_b)
    clock = _Clock(not_before - timedelta(seconds=10))
    reloader = _rotating(tmp_path, pairs, clock)
    _rotate_to_b(tmp_path, pairs)
    assert reloader.poll() is False
    (tmp_path / "key.pem").write_bytes(pairs["a"][2].read_bytes())  # B's certificate, A's key
    assert reloader.poll() is False
    clock.now = not_before + timedelta(seconds=1)
    assert reloader.poll() is None and reloader.failed == 2


def _with_public_key(cert: Path, out: Path, how: str) -> Path:
    """``cert`` with its subjectPublicKeyInfo broken (the signature no longer verifies, which
    the loader does not ask): ``unknown``, an algorithm cryptography does not know; ``point``,
    a P-256 key that is not on the curve."""
    from cryptography import x509

    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    if how == "unknown":  # id-ecPublicKey 1.2.840.10045.2.1 -> 1.2.840.10045.2.9
        old, new = bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06072a8648ce3d0209")
        assert der.count(old) == 1
        der = der.replace(old, new)
    else:
        at = der.index(bytes.fromhex("03420004")) + 4
        der = der[:at] + b"\x01" * 64 + der[at + 64 :]
    out.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    return out


@pytest.mark.parametrize("how", ["unknown", "point"])
def test_a_certificate_whose_public_key_cannot_be_read(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path, Path]], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A certificate that parses but whose public key cryptography cannot load (an unknown
    algorithm, a point off the curve) is a UsageError naming the file, as any bad pair: at
    start (exit 2, not a traceback) and on a reload, which keeps the pair in use, logs and
    counts the failure, and does not raise out of ``poll()`` (the server's poll task would
    end, and with it every later reload by polling)."""
    _ca, cert_a, key_a = pairs["a"]
    bad = _with_public_key(cert_a, tmp_path / "bad.pem", how)
    with pytest.raises(UsageError) as exc:
        load_certificate_pair(bad, key_a)
    message = str(exc.value)
    assert message.startswith(f"--tls-cert {os.fspath(bad)!r}: cannot load") and "\n" not in message

    reloader = _rotating(tmp_path, pairs, _Clock(datetime.now(UTC)))
    first = reloader()
    caplog.set_level(logging.INFO, logger="test.certreload")
    (tmp_path / "cert.pem").write_bytes(bad.read_bytes())
    (tmp_path / "key.pem").write_bytes(key_a.read_bytes())
    assert reloader.poll() is False and reloader() is first
    assert _failed_samples(reloader) == {"ok": 0, "failed": 1}
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.certreload"]
    assert line["result"] == "failed" and "cannot load" in line["error"]


class _SlowReloader(FileReloader[int]):
    """A reloader whose reloads wait for ``release`` (a reload in progress), counting them."""

    event = "test-reload"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        super().__init__((), poll_interval=0.0, logger="test.certreload")

    def _load(self) -> int:
        return 0

    def _loaded_fields(self, loaded: int) -> dict[str, object]:
        return {}

    def _in_use_fields(self) -> dict[str, object]:
        return {}

    def reload(self, trigger: str = "SIGHUP") -> bool:
        self.calls += 1
        self.started.set()
        self.release.wait(10)
        return super().reload(trigger)


def test_a_sighup_storm_queues_one_reload_per_file() -> None:
    """A burst of SIGHUPs while a reload runs makes one more reload of each file after it (the
    files may have changed after they were read), not one per signal: each reload would hold a
    worker thread of the loop's default executor, where the servers also render /metrics and
    serve requests (all but one of them waiting on the reload's lock). Once no reload is
    queued or running, a SIGHUP reloads again."""
    import asyncio

    import uvicorn

    from confide.httpserve.server import ServerWithCompanions

    async def app(scope: object, receive: object, send: object) -> None:  # never served
        raise AssertionError

    slow = _SlowReloader()
    server = ServerWithCompanions(uvicorn.Config(app), reloaders=(slow,))
    loop = asyncio.new_event_loop()
    try:
        server._on_sighup(loop, (slow,))
        assert slow.started.wait(10)  # the first reload runs (and waits)
        for _ in range(200):
            server._on_sighup(loop, (slow,))
        slow.release.set()
        deadline = time.monotonic() + 10
        while (slow.calls < 2 or slow.reloaded < slow.calls) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a reload per signal would have gone on
        assert (slow.calls, slow.reloaded) == (2, 2)
        server._on_sighup(loop, (slow,))  # after the queue drained: a reload again
        deadline = time.monotonic() + 10
        while slow.reloaded < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.calls == slow.reloaded == 3
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
