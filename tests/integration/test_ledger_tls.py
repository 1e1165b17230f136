"""`confide ledger serve` and `confide ledger witness serve` over HTTPS (real TLS on 127.0.0.1):
the auditor and the log's cosignature client trust only the given CA, a client of another CA
or of plain HTTP is refused, and clients that send garbage or stall in the handshake cost
their own connection only."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from confide.errors import NetworkError, UnknownKeyError, UsageError
from confide.ledger.store import Ledger, connect, write_transaction
from pki import tls_server_files

SRC = Path(__file__).resolve().parents[2] / "src"
ORIGIN = "cas.example/ledger"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "confide", "ledger", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "confide", "ledger", *argv], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert " at https://127.0.0.1:" in line, line
    return proc, line.split(" at ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    proc.wait(10)
    assert proc.stderr is not None
    rest = proc.stderr.read()
    proc.stderr.close()
    return rest


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
        Ledger().append_batch(conn, [f"e{i}".encode() for i in range(40)])
    conn.close()
    assert _cli("checkpoint", "--log-db", str(db), "--signing-key", str(tmp_path / "log.key")).returncode == 0
    yield {
        "db": db,
        "keys": keys,
        "pki": tls_server_files(tmp_path, "good"),
        "other": tls_server_files(tmp_path, "other"),
    }


def test_tiles_over_https(tmp_path: Path, setup: dict[str, object]) -> None:
    db, keys = setup["db"], setup["keys"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    other_ca = setup["other"][0]  # type: ignore[index]
    assert isinstance(db, Path) and isinstance(keys, dict)
    proc, url = _start(["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key)])  # fmt: skip
    try:
        # Clients that misbehave first: garbage instead of a ClientHello, and one that connects
        # and says nothing (its handshake is timed; the server goes on).
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to HTTPS
            raw.settimeout(10)
            try:
                assert b"200 OK" not in raw.recv(4096)
            except (ConnectionResetError, TimeoutError):
                pass
        silent = socket.create_connection(("127.0.0.1", port))
        try:
            base = ["verify", "--url", url, "--key", keys["log"], "--state", str(tmp_path / "a.json")]
            res = _cli(*base, "--cacert", str(ca))
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith(f"verified: {ORIGIN} size 40 ")
            res = _cli(*base, "--cacert", str(other_ca))  # a server this CA did not certify
            assert res.returncode == NetworkError.exit_code, res.stderr
            assert "CERTIFICATE_VERIFY_FAILED" in res.stderr
            plain = url.replace("https://", "http://", 1)  # plain HTTP to the TLS port
            res = _cli("verify", "--url", plain, "--key", keys["log"])
            assert res.returncode == NetworkError.exit_code, res.stderr
        finally:
            silent.close()
    finally:
        rest = _stop(proc)
    # A failed handshake costs its connection only, and is not logged (as in the CAS: a flood of
    # garbage must not flood the log).
    assert "Traceback" not in rest, rest


def test_witness_over_https(tmp_path: Path, setup: dict[str, object]) -> None:
    db, keys = setup["db"], setup["keys"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    other_ca = setup["other"][0]  # type: ignore[index]
    assert isinstance(db, Path) and isinstance(keys, dict)
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key")]
    argv += ["--log", keys["log"], "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc, url = _start(argv)
    url = url.removesuffix("/add-checkpoint")
    try:
        req = [
            "request-cosignature",
            "--log-db",
            str(db),
            "--witness-url",
            url,
            "--witness-key",
            keys["witness"],
        ]
        res = _cli(*req, "--cacert", str(other_ca))
        assert res.returncode == NetworkError.exit_code and "CERTIFICATE_VERIFY_FAILED" in res.stderr
        verify = ["verify", "--log-db", str(db), "--key", keys["log"], "--witness", keys["witness"]]
        assert _cli(*verify).returncode == UnknownKeyError.exit_code  # nothing stored by the refusal
        res = _cli(*req, "--cacert", str(ca))
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("— w.example/w1 ")
        res = _cli(*verify)
        assert res.returncode == 0, res.stderr
        assert "cosigned by witness w.example/w1" in res.stdout
    finally:
        rest = _stop(proc)
    assert "Traceback" not in rest, rest


def test_tls_usage_errors(tmp_path: Path, setup: dict[str, object]) -> None:
    db, keys = setup["db"], setup["keys"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(db, Path) and isinstance(keys, dict)
    base = ["serve", "--log-db", str(db), "--listen", "127.0.0.1:0"]
    res = _cli(*base, "--tls-cert", str(cert))
    assert res.returncode == UsageError.exit_code and "go together" in res.stderr
    res = _cli(*base, "--tls-cert", str(cert), "--tls-key", str(ca))  # a certificate is no key
    assert res.returncode == UsageError.exit_code and "cannot load" in res.stderr
    res = _cli(*base, "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key))
    assert res.returncode == UsageError.exit_code and "does not exist" in res.stderr
    req = ["request-cosignature", "--log-db", str(db), "--witness-key", keys["witness"]]
    res = _cli(*req, "--witness-url", "ftp://x")
    assert res.returncode == UsageError.exit_code
    res = _cli(*req, "--witness-url", "https://127.0.0.1:9", "--cacert", str(tmp_path / "nope.pem"))
    assert res.returncode == UsageError.exit_code and "--cacert" in res.stderr


def test_limit_options(setup: dict[str, object]) -> None:
    """`ledger serve` takes the limits from its options: the per-client rate (429 with
    Retry-After) and the per-client connection limit (closed before the handshake)."""
    db = setup["db"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(db, Path)
    proc, url = _start(["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key), "--request-rate", "0.01", "--request-burst", "1",
                        "--max-connections-per-ip", "1"])  # fmt: skip
    url = url.rstrip("/")
    try:
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as http:
            assert http.get(url + "/checkpoint").status_code == 200
            refused = http.get(url + "/checkpoint")
            # A token every 100 s: none back during a pause of a loaded machine; Retry-After says
            # 100 s less the time since the first request.
            assert refused.status_code == 429 and 90 <= int(refused.headers["retry-after"]) <= 100
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with socket.create_connection(("127.0.0.1", port)) as second:  # the client's one is held
                second.settimeout(10)
                try:
                    assert second.recv(1) == b""
                except ConnectionResetError:
                    pass
    finally:
        rest = _stop(proc)
    assert "Traceback" not in rest, rest
    res = _cli("serve", "--log-db", str(db), "--request-rate", "fast")
    assert res.returncode == UsageError.exit_code and "--request-rate" in res.stderr
