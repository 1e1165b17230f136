"""Certificate reload of `confide ledger serve` and `confide ledger witness serve`, over real
sockets and TLS on 127.0.0.1: the server starts with certificate A; B is written and the server
is sent SIGHUP (or, with --cert-reload-interval, finds the files changed: a Kubernetes-style
symlink swap); a new client is then served B (the peer certificate's fingerprint) while a
keep-alive connection opened under A still works. A broken file, a half-written one, a key that
is not the certificate's, a missing file: A (or whatever was in use) stays, a one-line error is
logged, the failure is counted, the server answers. No key bytes in the log."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import UsageError
from confide.ledger.store import Ledger, connect, write_transaction
from pki import issue, tls_server_files

SRC = Path(__file__).resolve().parents[2] / "src"
ORIGIN = "cas.example/ledger"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", "ledger", *args],
        check=False, capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip


class Served:
    """A `confide ledger ...serve` process; its stderr lines collected by a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confide", "ledger", *argv], stderr=subprocess.PIPE, text=True, env=ENV
        )
        assert self.proc.stderr is not None
        banner = self.proc.stderr.readline()
        assert " at https://127.0.0.1:" in banner, banner
        self.url = banner.split(" at ", 1)[1].split(";")[0].strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = [banner]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def reload_line(self, timeout: float = 20.0) -> dict[str, object]:
        """The next tls-reload line the server logs."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            self.log.append(line)
            if '"tls-reload"' in line:
                event = json.loads(line)
                assert isinstance(event, dict)
                return event

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return "".join(self.log)


def _fingerprint(pem: Path) -> str:
    der = x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _served_fingerprint(port: int) -> str:
    """The SHA-256 of the certificate a new TLS connection to ``port`` is served."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint is what is checked
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _install(src_cert: Path, src_key: Path, cert: Path, key: Path) -> None:
    """Replace the served files, each by a rename (a reader sees the old file or the new one)."""
    for src, dst in ((src_cert, cert), (src_key, key)):
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _dated_pair(directory: Path, name: str, not_before: datetime, not_after: datetime) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid only between those dates, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(name, key.public_key(), issuer=name, signing_key=key, not_before=not_before,
                 not_after=not_after, ca=False)  # fmt: skip
    paths = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths[1].write_bytes(pem)
    return paths


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def _key_lines(*keys: Path) -> list[str]:
    """The base64 lines of the keys' PEM: none may appear in a log."""
    return [
        line for k in keys for line in k.read_text().splitlines() if line and not line.startswith("-----")
    ]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, object]]:
    keys = {}
    for name, args in (("log", ["--name", ORIGIN]), ("witness", ["--name", "w.example/w1", "--witness"])):
        res = _cli("keygen", *args, "--out", str(tmp_path / f"{name}.key"))
        assert res.returncode == 0, res.stderr
        keys[name] = res.stdout.strip()
    db = tmp_path / "cas.db"
    conn = connect(db)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [f"e{i}".encode() for i in range(10)])
    conn.close()
    assert _cli("checkpoint", "--log-db", str(db), "--signing-key", str(tmp_path / "log.key")).returncode == 0
    yield {"db": db, "keys": keys, "a": tls_server_files(tmp_path, "a"), "b": tls_server_files(tmp_path, "b")}


def test_tiles_server_reloads_on_sighup(tmp_path: Path, setup: dict[str, object]) -> None:
    db = setup["db"]
    ca_a, cert_a, key_a = setup["a"]  # type: ignore[misc]
    ca_b, cert_b, key_b = setup["b"]  # type: ignore[misc]
    assert isinstance(db, Path)
    cert, key = tmp_path / "served-cert.pem", tmp_path / "served-key.pem"
    _install(cert_a, key_a, cert, key)
    fp_a, fp_b = _fingerprint(cert_a), _fingerprint(cert_b)
    server = Served(["serve", "--log-db", str(db), "--listen", "127.0.0.1:0",
                     "--tls-cert", str(cert), "--tls-key", str(key)])  # fmt: skip
    try:
        assert _served_fingerprint(server.port) == fp_a
        # A keep-alive connection opened under A, one request answered on it.
        kept = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ssl.create_default_context(cafile=str(ca_a)), timeout=10
        )
        assert _get(kept, "/checkpoint")[1].startswith(ORIGIN.encode())
        kept_sock = kept.sock

        _install(cert_b, key_b, cert, key)
        server.proc.send_signal(signal.SIGHUP)
        event = server.reload_line()
        assert event["result"] == "ok" and event["trigger"] == "SIGHUP", event
        assert event["certificate_sha256"] == fp_b
        not_after = x509.load_pem_x509_certificate(cert_b.read_bytes()).not_valid_after_utc
        assert event["not_after"] == not_after.isoformat()
        assert _served_fingerprint(server.port) == fp_b
        # a client that trusts B only is served (the name and the chain check out)
        fresh = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ssl.create_default_context(cafile=str(ca_b)), timeout=10
        )
        assert _get(fresh, "/checkpoint")[0] == 200
        fresh.close()
        # The connection opened before the reload: still open, still under A, still answered.
        assert _get(kept, "/checkpoint")[0] == 200
        assert kept.sock is kept_sock  # not reconnected
        der = kept_sock.getpeercert(binary_form=True)
        assert der is not None and hashlib.sha256(der).hexdigest() == fp_a

        # Failures: B stays in use, the server answers, each is one logged line and counted.
        half = cert_a.read_bytes()
        expired = _dated_pair(
            tmp_path, "expired", datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)
        )
        early = _dated_pair(
            tmp_path, "early", datetime(2999, 1, 1, tzinfo=UTC), datetime(2999, 1, 2, tzinfo=UTC)
        )
        cases: list[tuple[str, object]] = [
            ("half-written certificate", lambda: cert.write_bytes(half[: len(half) // 2])),
            ("key of another certificate", lambda: _install(cert_a, key_b, cert, key)),
            ("a certificate for a key", lambda: _install(cert_a, cert_a, cert, key)),
            ("missing key", key.unlink),
            ("empty certificate", lambda: (_install(cert_a, key_a, cert, key), cert.write_bytes(b""))),
            ("has expired", lambda: _install(*expired, cert, key)),  # a good pair, out of date
            ("is not yet valid", lambda: _install(*early, cert, key)),
        ]
        for what, break_files in cases:
            assert callable(break_files)
            break_files()
            server.proc.send_signal(signal.SIGHUP)
            event = server.reload_line()
            assert event["result"] == "failed", (what, event)
            assert event["certificate_sha256"] == fp_b, what  # the one still in use
            assert isinstance(event["error"], str) and "\n" not in event["error"]
            if what.startswith(("has", "is")):
                assert f"the certificate {what}: " in event["error"], event
            assert _served_fingerprint(server.port) == fp_b, what
            assert _get(kept, "/checkpoint")[0] == 200, what
            assert kept.sock is kept_sock, what
        assert server.proc.poll() is None

        metrics = _get(kept, "/metrics")[1].decode().splitlines()
        assert 'confide_tls_certificate_reloads_total{result="ok"} 1.0' in metrics
        assert f'confide_tls_certificate_reloads_total{{result="failed"}} {float(len(cases))}' in metrics
        gauge = [m for m in metrics if m.startswith("confide_tls_certificate_not_after_seconds ")]
        assert len(gauge) == 1 and float(gauge[0].split()[1]) == not_after.timestamp(), gauge
        kept.close()

        # A good pair again: reloaded.
        _install(cert_a, key_a, cert, key)
        server.proc.send_signal(signal.SIGHUP)
        assert server.reload_line()["result"] == "ok"
        assert _served_fingerprint(server.port) == fp_a
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
    assert "PRIVATE KEY" not in log
    for line in _key_lines(key_a, key_b, expired[1], early[1]):
        assert line not in log
    assert sum('"tls-reload"' in line for line in log.splitlines()) == 2 + len(cases)


def test_witness_reloads_a_swapped_secret_volume(tmp_path: Path, setup: dict[str, object]) -> None:
    """--cert-reload-interval: files updated the way Kubernetes updates a Secret volume (a new
    directory, then one symlink renamed over the old one), no signal; and SIGHUP as well."""
    keys = setup["keys"]
    assert isinstance(keys, dict)
    ca_a, cert_a, key_a = setup["a"]  # type: ignore[misc]
    ca_b, cert_b, key_b = setup["b"]  # type: ignore[misc]
    volume = tmp_path / "secret"
    volume.mkdir()

    def publish(version: str, src_cert: Path, src_key: Path) -> None:
        data = volume / f"..{version}"
        data.mkdir()
        shutil.copyfile(src_cert, data / "tls.crt")
        shutil.copyfile(src_key, data / "tls.key")
        link = volume / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, volume / "..data")

    publish("v1", cert_a, key_a)
    for name in ("tls.crt", "tls.key"):
        (volume / name).symlink_to(f"..data/{name}")
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
            "--log", keys["log"], "--listen", "127.0.0.1:0", "--tls-cert", str(volume / "tls.crt"),
            "--tls-key", str(volume / "tls.key"), "--cert-reload-interval", "1"]  # fmt: skip
    server = Served(argv)
    try:
        assert _served_fingerprint(server.port) == _fingerprint(cert_a)
        publish("v2", cert_b, key_b)
        event = server.reload_line()
        assert event["result"] == "ok" and event["trigger"] == "poll", event
        assert event["certificate_sha256"] == _fingerprint(cert_b)
        assert _served_fingerprint(server.port) == _fingerprint(cert_b)
        # the log's cosignature client, trusting B's CA only, is served
        url = server.url.removesuffix("/add-checkpoint")
        res = _cli("request-cosignature", "--log-db", str(setup["db"]), "--witness-url", url,
                   "--witness-key", keys["witness"], "--cacert", str(ca_b))  # fmt: skip
        assert res.returncode == 0, res.stderr
        # a mismatched pair published: kept B, logged once (not again at every poll)
        publish("v3", cert_a, key_b)
        event = server.reload_line()
        assert event["result"] == "failed" and event["trigger"] == "poll", event
        time.sleep(2.5)  # two polls of unchanged files
        assert server.lines.empty()
        assert _served_fingerprint(server.port) == _fingerprint(cert_b)
        # SIGHUP works on the witness too
        publish("v4", cert_a, key_a)
        server.proc.send_signal(signal.SIGHUP)
        event = server.reload_line()
        if event["trigger"] == "poll":  # the poll came first; SIGHUP reads the files all the same
            assert event["result"] == "ok", event
            event = server.reload_line()
        assert event["result"] == "ok" and event["trigger"] == "SIGHUP", event
        assert _served_fingerprint(server.port) == _fingerprint(cert_a)
        del ca_a
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
    for line in _key_lines(key_a, key_b):
        assert line not in log


def test_reload_option_usage(setup: dict[str, object]) -> None:
    db = setup["db"]
    assert isinstance(db, Path)
    res = _cli("serve", "--log-db", str(db), "--cert-reload-interval", "5")
    assert res.returncode == UsageError.exit_code and "--cert-reload-interval" in res.stderr
    res = _cli("serve", "--log-db", str(db), "--cert-reload-interval", "-1")
    assert res.returncode == UsageError.exit_code
    # between 0 and 1 second: busy polling, refused naming the option; 0 and 1 are not refused
    # as such (they fail later, for want of files to reload)
    for interval in ("0.0001", "0.5", "0.999"):
        res = _cli("serve", "--log-db", str(db), "--cert-reload-interval", interval)
        assert res.returncode == UsageError.exit_code, res.stderr
        assert "--cert-reload-interval" in res.stderr and "less than 1 second" in res.stderr, res.stderr
    res = _cli("serve", "--log-db", str(db), "--cert-reload-interval", "1")
    assert res.returncode == UsageError.exit_code and "needs files to reload" in res.stderr, res.stderr


def test_sighup_during_the_graceful_shutdown_does_not_kill_the_server(
    tmp_path: Path, setup: dict[str, object]
) -> None:
    """SIGTERM starts the graceful shutdown, which waits for a request still in flight (its body
    half sent); a SIGHUP then (a reload, say, from a script that does not know) used to kill the
    process (the shutdown put SIGHUP's default action back): it is now ignored, the request's
    connection ends and the process ends by its SIGTERM, as uvicorn re-raises it."""
    keys = setup["keys"]
    assert isinstance(keys, dict)
    ca_a, cert_a, key_a = setup["a"]  # type: ignore[misc]
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
            "--log", keys["log"], "--listen", "127.0.0.1:0", "--tls-cert", str(cert_a),
            "--tls-key", str(key_a)]  # fmt: skip
    server = Served(argv)
    context = ssl.create_default_context(cafile=str(ca_a))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        conn.sendall(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nold 10\n"
        )
        time.sleep(0.5)  # the request is in flight: its body is awaited
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # shutting down: the listener is closed, the request still in flight
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the listener stayed open after SIGTERM"
            time.sleep(0.05)
        assert server.proc.poll() is None
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert server.proc.poll() is None, "SIGHUP killed the process in its graceful shutdown"
        conn.sendall(b"x" * 93)  # the rest of the body: a checkpoint refused, the request done
        conn.recv(4096)
        assert server.proc.wait(10) == -signal.SIGTERM
    finally:
        conn.close()
        if server.proc.poll() is None:
            server.proc.kill()
        log = server.stop()
    assert "Traceback" not in log, log
