"""`confide cas serve`'s limit options reach the served CAS (a real process over real TLS): the
per-IP connection limit, the body timeout and the write rate; bad values are usage errors."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas_harness import ROOT, CasProcess


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[CasProcess]:
    # One write, then a token back only after 100 s: no pause of a loaded machine between two
    # requests gives one back.
    args = ("--max-connections-per-ip", "3", "--body-timeout", "1", "--write-rate", "0.01",
            "--write-burst", "1")  # fmt: skip
    cas = CasProcess(tmp_path / "cas", None, extra_args=args).start()
    try:
        yield cas
    finally:
        cas.stop()


def _address(cas: CasProcess) -> tuple[str, int]:
    host, port = cas.env["CONFIDE_CAS_URL"].removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _response(s: socket.socket) -> bytes:
    """One whole response (head and Content-Length body)."""
    s.settimeout(10)
    out = b""
    while b"\r\n\r\n" not in out:
        data = s.recv(4096)
        assert data, out
        out += data
    head, _, body = out.partition(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        data = s.recv(4096)
        assert data, out
        body += data
    return head + b"\r\n\r\n" + body


def test_the_limit_options_are_enforced(limited: CasProcess) -> None:
    address = _address(limited)
    ctx = ssl.create_default_context(cafile=limited.env["CONFIDE_CAS_CERT"])
    held = [ctx.wrap_socket(socket.create_connection(address), server_hostname=address[0]) for _ in range(3)]
    try:
        with socket.create_connection(address) as extra:  # a fourth from 127.0.0.1: closed at once
            extra.settimeout(5)
            try:
                assert extra.recv(1) == b""
            except ConnectionResetError:
                pass
        s = held[0]
        s.sendall(b"POST /v1/policies HTTP/1.1\r\nHost: cas\r\nContent-Length: 2\r\n\r\n{}")
        assert _response(s).startswith(b"HTTP/1.1 422 ")  # the bucket's one token
        s.sendall(b"POST /v1/policies HTTP/1.1\r\nHost: cas\r\nContent-Length: 2\r\n\r\n{}")
        refused = _response(s)
        assert refused.startswith(b"HTTP/1.1 429 ")
        retry_after = re.search(rb"\r\nretry-after: (\d+)\r\n", refused.lower())
        # 100 s, less the time since the first write
        assert retry_after is not None and 90 <= int(retry_after[1]) <= 100, refused
        started = time.monotonic()
        held[1].sendall(b"POST /v1/attest HTTP/1.1\r\nHost: cas\r\nContent-Length: 50\r\n\r\n{")
        assert _response(held[1]).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 20  # the 1 s given, not the default 60 s
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize(
    "args",
    [
        ("--write-rate", "fast"),
        ("--attest-rate", "-1"),
        ("--attest-burst", "0.5"),
        ("--max-connections", "-1"),
    ],
)
def test_bad_limit_values_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr  # UsageError's exit code, and click's
    assert args[0] in r.stderr
