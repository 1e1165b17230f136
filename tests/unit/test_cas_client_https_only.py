"""The CAS client speaks only TLS: a plain ``http://`` (or any other) CAS URL is a usage error
before anything is sent, so nobody on the path can answer in the CAS's place (a release of their
own to ``confide run``, or a policy document accepted instead of the CAS)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from cli import run_confide
from confide.cas.client import CasClient
from confide.errors import UsageError
from confide.sim.platform import SimPlatform
from pki import self_signed_pem


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "HTTP://cas", "ftp://cas", "cas.example:443", ""])
def test_a_cas_url_without_tls_is_refused(url: str) -> None:
    with pytest.raises(UsageError, match="must be an https:// URL"):
        CasClient(url, None)


def test_from_env_refuses_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_CAS_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("CONFIDE_CAS_CERT", raising=False)
    with pytest.raises(UsageError, match="must be an https:// URL"):
        CasClient.from_env()


def test_confide_run_with_an_http_cas_sends_nothing_and_exits_2(tmp_path: Path) -> None:
    """A listener on the http:// URL sees no connection: the refusal comes first."""
    SimPlatform.load_or_create(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        accepted: list[object] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            proc = run_confide(
                "run", "--config-id", "app/svc", "--tee", "sim", "--", "/bin/true",
                env={"CONFIDE_CAS_URL": f"http://127.0.0.1:{port}", "CONFIDE_SIM_DIR": str(tmp_path)},
                drop=("CONFIDE_CAS_CERT",),
            )  # fmt: skip
        finally:
            stop.set()
            watcher.join()
    assert proc.returncode == 2, proc.stderr
    assert "must be an https:// URL" in proc.stderr
    assert accepted == []


@pytest.mark.parametrize("url", ["https://[::1", "https://cas:port", "https://[zz]:443"])
def test_a_malformed_https_url_is_a_usage_error(tmp_path: Path, url: str) -> None:
    """httpx's InvalidURL escaped the client: `confide run` printed a traceback, exit 1."""
    with pytest.raises(UsageError, match="not a valid URL"):
        CasClient(url, self_signed_pem(tmp_path / "cas.pem"))


def test_confide_run_with_a_malformed_cas_url_says_so_on_one_line(tmp_path: Path) -> None:
    SimPlatform.load_or_create(tmp_path)
    proc = run_confide(
        "run", "--config-id", "app/svc", "--tee", "sim", "--", "/bin/true",
        env={"CONFIDE_CAS_URL": "https://[::1", "CONFIDE_CAS_CERT": str(self_signed_pem(tmp_path / "cas.pem")),
             "CONFIDE_SIM_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]], proc.stderr
    assert proc.stderr.startswith("error: UsageError: the CAS URL 'https://[::1' is not a valid URL")
    assert proc.stdout == ""
