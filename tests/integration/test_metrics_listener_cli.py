"""``--metrics-listen`` and ``--metrics-token-file`` of ``confide cas serve``, ``confide ledger
serve`` and ``confide ledger witness serve`` (docs/cas.md "Metrics", docs/ledger.md "Metrics and
refusals"): real processes over real sockets. The metrics listener answers ``/metrics`` (``GET``
and ``HEAD``) with the bearer token and ``401`` without it or with a wrong one, nothing else; the
API listener then answers ``/metrics`` ``404`` and does not list it in its OpenAPI schema; with the
token alone ``/metrics`` stays on the API listener, behind the token; the token is in no log
line; bad options stop the server at start with exit 2 and a one-line message."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parent))
from test_ledger_tls import _cli, _stop, setup  # noqa: F401 (the fixture)

from cas_harness import ROOT, CasProcess
from pki import client_crl, crls_pem, tls_client_ca, tls_client_files, tls_server_files

TOKEN = "metrics-token-Zq7Rk2Vw9Xy4Lm0Pc"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SRC = ROOT / "src"


def _token_file(tmp_path: Path, text: str = TOKEN + "\n") -> Path:
    """A --metrics-token-file of ``text``."""
    path = tmp_path / "metrics.token"
    path.write_text(text)
    return path


def _listening(cas: CasProcess) -> dict[str, object]:
    assert cas.log is not None
    for line in cas.log.read_text().splitlines():
        if '"event": "listening"' in line:
            return dict(json.loads(line))
    raise AssertionError("no listening line")


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasProcess]:
    args = ("--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(_token_file(tmp_path)))
    process = CasProcess(tmp_path / "cas", None, extra_args=args).start()
    try:
        yield process
    finally:
        process.stop()


def test_cas_metrics_on_their_own_listener_with_a_token(cas: CasProcess) -> None:
    line = _listening(cas)
    metrics_url = line["metrics_http"]
    assert isinstance(metrics_url, str) and metrics_url.startswith("http://127.0.0.1:")
    assert metrics_url.endswith("/metrics") and not metrics_url.endswith(":0/metrics")  # the chosen port
    assert line["metrics_token"] is True
    api = cas.env["CONFIDE_CAS_URL"]
    ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
    with httpx2.Client(timeout=10) as plain, httpx2.Client(verify=ctx, timeout=10) as tls:
        r = plain.get(metrics_url, headers=BEARER)
        assert r.status_code == 200 and "confide_requests_total" in r.text
        assert "confide_metrics_http_requests_total" in r.text
        head = plain.head(metrics_url, headers=BEARER)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        r = plain.get(metrics_url)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "confide_" not in r.text
        r = plain.get(metrics_url, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        assert plain.head(metrics_url).status_code == 401
        base = metrics_url.removesuffix("/metrics")
        for path in ("/v1/health", "/openapi.json", "/v1/log/checkpoint", "/"):
            r = plain.get(base + path, headers=BEARER)
            assert (r.status_code, r.content) == (404, b""), path
        r = plain.post(metrics_url, headers=BEARER)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        # the API listener: /metrics is an unknown path, with the token or without
        for headers in (BEARER, {}):
            r = tls.get(api + "/metrics", headers=headers)
            assert r.status_code == 404 and "confide_" not in r.text
        assert tls.head(api + "/metrics", headers=BEARER).status_code == 404
        assert "/metrics" not in tls.get(api + "/openapi.json").json()["paths"]
        assert tls.get(api + "/v1/health").status_code == 200
        text = plain.get(metrics_url, headers=BEARER).text
    assert 'confide_metrics_unauthorized_total{reason="missing"} 2.0' in text
    assert 'confide_metrics_unauthorized_total{reason="wrong"} 1.0' in text
    assert 'confide_requests_total{route="unmatched",status="404"} 3.0' in text  # the API's /metrics
    cas.stop()
    assert cas.log is not None
    log = cas.log.read_text()
    assert TOKEN not in log and TOKEN[:-1] not in log
    refused = [json.loads(x) for x in log.splitlines() if '"metrics-unauthorized"' in x]
    assert len(refused) == 3 and {r["cause"] for r in refused} == {"missing", "wrong"}
    assert all(r["listener"] == "metrics" and r["client"] == "127.0.0.1" for r in refused)
    assert '"listener": "metrics"' in log  # its request lines


def test_cas_token_alone_guards_metrics_on_the_api(tmp_path: Path) -> None:
    args = ("--metrics-token-file", str(_token_file(tmp_path)))
    cas = CasProcess(tmp_path / "cas", None, extra_args=args).start()
    try:
        assert _listening(cas)["metrics_http"] is None
        api = cas.env["CONFIDE_CAS_URL"]
        ctx = ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"])
        with httpx2.Client(verify=ctx, timeout=10) as tls:
            r = tls.get(api + "/metrics")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "confide_" not in r.text
            r = tls.get(api + "/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
            assert r.status_code == 401
            assert (
                tls.head(api + "/metrics", headers=BEARER).status_code == 405
            )  # a GET route there, as before
            r = tls.get(api + "/metrics", headers=BEARER)
            assert (
                r.status_code == 200 and 'confide_metrics_unauthorized_total{reason="missing"} 1.0' in r.text
            )
            assert 'confide_requests_total{route="/metrics",status="401"} 2.0' in r.text
    finally:
        cas.stop()
    assert cas.log is not None
    log = cas.log.read_text()
    assert TOKEN not in log
    refused = [json.loads(x) for x in log.splitlines() if '"metrics-unauthorized"' in x]
    assert [r["listener"] for r in refused] == ["api", "api"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-listen", "127.0.0.1"), "--metrics-listen: got '127.0.0.1', expected HOST:PORT"),
        (("--metrics-listen", "127.0.0.1:99999"), "--metrics-listen: got"),
        (("--metrics-token-file", "{absent}"), "cannot read --metrics-token-file"),
        (("--metrics-token-file", "{empty}"), "no token in it"),
        (("--metrics-token-file", "{short}"), "expected at least 16"),
        (("--metrics-token-file", "{spaced}"), "not printable ASCII"),
    ],
)
def test_cas_bad_metrics_options_exit_2(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    files = {"absent": tmp_path / "absent", "empty": tmp_path / "empty", "short": tmp_path / "short",
             "spaced": tmp_path / "spaced"}  # fmt: skip
    files["empty"].write_text("\n")
    files["short"].write_text("0123456789\n")
    files["spaced"].write_text("a token with spaces in it\n")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev", *argv],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "cas").exists()  # refused before anything is written


def test_cas_metrics_address_taken_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev",
             "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120, check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"--metrics-listen: cannot bind 127.0.0.1:{port}" in r.stderr


# --- the ledger's servers ---


def _start_ledger(argv: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    """A ledger server with a metrics listener: the process, its base URL and its metrics URL
    (from the banner)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "confide", "ledger", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "; metrics at http" in line and "://127.0.0.1:" in line, line
    served, _, metrics = line.strip().partition("; metrics at ")
    assert not metrics.endswith(":0/metrics")
    return proc, served.split(" at ", 1)[1], metrics


def _check_ledger_metrics(base: str, metrics_url: str, ca: Path, *, api_probe: str) -> str:
    with httpx2.Client(timeout=10) as plain, httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)),
                                                           timeout=10) as tls:  # fmt: skip
        r = plain.get(metrics_url, headers=BEARER)
        assert r.status_code == 200 and "confide_ledger_http_requests_total" in r.text
        head = plain.head(metrics_url, headers=BEARER)
        assert head.status_code == 200 and head.content == b""
        r = plain.get(metrics_url)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert plain.get(metrics_url, headers={"Authorization": "Bearer x" + TOKEN}).status_code == 401
        assert plain.get(metrics_url.removesuffix("/metrics") + api_probe, headers=BEARER).status_code == 404
        assert plain.delete(metrics_url, headers=BEARER).status_code == 405
        for headers in (BEARER, {}):
            r = tls.get(base + "/metrics", headers=headers)
            assert r.status_code == 404 and "confide_" not in r.text
        return plain.get(metrics_url, headers=BEARER).text


def test_ledger_serve_metrics_listener(tmp_path: Path, setup: dict[str, object]) -> None:  # noqa: F811
    db = setup["db"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(db, Path)
    proc, url, metrics_url = _start_ledger(
        ["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
         "--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(_token_file(tmp_path))]
    )  # fmt: skip
    base = url.rstrip("/")
    try:
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as tls:
            assert tls.get(base + "/checkpoint").status_code == 200
        text = _check_ledger_metrics(base, metrics_url, ca, api_probe="/checkpoint")
    finally:
        rest = _stop(proc)
    assert "confide_ledger_tree_size 40.0" in text
    assert 'confide_ledger_http_requests_total{route="other",status="404"} 2.0' in text
    assert 'confide_metrics_unauthorized_total{reason="missing"} 1.0' in text
    assert 'confide_metrics_unauthorized_total{reason="wrong"} 1.0' in text
    assert TOKEN not in rest and "Traceback" not in rest, rest
    assert rest.count('"metrics-unauthorized"') == 2


def test_witness_serve_metrics_listener(tmp_path: Path, setup: dict[str, object]) -> None:  # noqa: F811
    keys = setup["keys"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    assert isinstance(keys, dict)
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
            "--log", keys["log"], "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
            "--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(_token_file(tmp_path))]  # fmt: skip
    proc, url, metrics_url = _start_ledger(argv)
    base = url.removesuffix("/add-checkpoint")
    try:
        text = _check_ledger_metrics(base, metrics_url, ca, api_probe="/add-checkpoint")
    finally:
        rest = _stop(proc)
    assert 'confide_ledger_http_requests_total{route="other",status="404"} 2.0' in text
    assert 'confide_metrics_http_requests_total{status="401"} 2.0' in text
    assert TOKEN not in rest and "Traceback" not in rest, rest


@pytest.mark.parametrize("command", ["serve", "witness"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-listen", "nope"), "--metrics-listen: got 'nope', expected HOST:PORT"),
        (("--metrics-token-file", "{short}"), "expected at least 16"),
        (("--metrics-listen", "{taken}"), "--metrics-listen: cannot bind"),
    ],
)
def test_ledger_bad_metrics_options_exit_2(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    command: str,
    args: tuple[str, ...],
    says: str,
) -> None:
    db, keys = setup["db"], setup["keys"]
    assert isinstance(keys, dict)
    (tmp_path / "short").write_text("0123456789\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        values = {"short": str(tmp_path / "short"), "taken": f"127.0.0.1:{taken.getsockname()[1]}"}
        extra = [a.format(**values) for a in args]
        if command == "serve":
            argv = ["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", *extra]
        else:
            argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key",
                    str(tmp_path / "witness.key"), "--log", keys["log"], "--listen", "127.0.0.1:0", *extra]  # fmt: skip
        r = _cli(*argv)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# --- HTTPS on the metrics listener, several tokens, reloaded (docs/cas.md "Metrics: a listener
# of its own, tokens") ---

NEW = "metrics-token-next-Hq3Wd8Ks1Pv6Rt"
OTHER = "grafana-agent-token-Bn5Mx2Lc7Jf0"


class _Lines:
    """A server's stderr (or its log file) read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.proc, self.lines, self.seen = proc, queue.Queue[str](), list[str]()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def next_event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            self.seen.append(line)
            if f'"{event}"' in line:
                return dict(json.loads(line))

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(20)
        self._thread.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _verified(ca: Path) -> httpx2.Client:
    return httpx2.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10)


def test_ledger_metrics_over_https_tokens_rotated_on_sighup(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
) -> None:
    """ledger serve, its API plain HTTP, its metrics listener HTTPS: a client verifying against
    the CA is served with either token, one trusting another CA fails its handshake; the old
    token removed from the file and SIGHUP: refused, the new one served; a bad file and SIGHUP:
    the tokens in use kept. Per-scraper counts; no token in the log."""
    db = setup["db"]
    ca, cert, key = setup["pki"]  # type: ignore[misc]
    other_ca = setup["other"][0]  # type: ignore[index]
    tokens = _token_file(tmp_path, f"# Prometheus, and the agent\nprometheus:{TOKEN}\ngrafana:{OTHER}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "confide", "ledger", "serve", "--log-db", str(db), "--listen", "127.0.0.1:0",
         "--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(tokens), "--metrics-cert", str(cert),
         "--metrics-key", str(key)],
        stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert proc.stderr is not None
    banner = proc.stderr.readline()
    assert " at http://127.0.0.1:" in banner and "; metrics at https://127.0.0.1:" in banner, banner
    metrics_url = banner.strip().rpartition("; metrics at ")[2]
    served = _Lines(proc)
    try:
        with _verified(ca) as client:
            r = client.get(metrics_url, headers=_bearer(TOKEN))
            assert r.status_code == 200 and "confide_ledger_tree_size 40.0" in r.text
            assert client.get(metrics_url, headers=_bearer(OTHER)).status_code == 200
            assert client.get(metrics_url, headers=_bearer(NEW)).status_code == 401
        with (
            _verified(other_ca) as wrong,
            pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            wrong.get(metrics_url, headers=_bearer(TOKEN))
        # rotation: the new token added, then the old one removed
        _replace(tokens, f"prometheus:{TOKEN}\nprometheus-next:{NEW}\ngrafana:{OTHER}\n")
        proc.send_signal(signal.SIGHUP)
        event = served.next_event("metrics-token-reload")
        assert event["result"] == "ok" and event["trigger"] == "SIGHUP" and event["tokens"] == 3, event
        with _verified(ca) as client:
            assert client.get(metrics_url, headers=_bearer(NEW)).status_code == 200
            assert client.get(metrics_url, headers=_bearer(TOKEN)).status_code == 200
        _replace(tokens, f"prometheus-next:{NEW}\ngrafana:{OTHER}\n")
        proc.send_signal(signal.SIGHUP)
        event = served.next_event("metrics-token-reload")
        assert event["result"] == "ok" and event["scrapers"] == ["prometheus-next", "grafana"], event
        with _verified(ca) as client:
            r = client.get(metrics_url, headers=_bearer(TOKEN))
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
            assert client.get(metrics_url, headers=_bearer(NEW)).status_code == 200
        # a bad file (a token given twice): the tokens in use kept
        _replace(tokens, f"prometheus-next:{NEW}\ngrafana:{NEW}\n")
        proc.send_signal(signal.SIGHUP)
        event = served.next_event("metrics-token-reload")
        assert event["result"] == "failed" and event["tokens"] == 2, event
        assert "line 2: the same token as line 1" in event["error"]
        with _verified(ca) as client:
            assert client.get(metrics_url, headers=_bearer(OTHER)).status_code == 200
            text = client.get(metrics_url, headers=_bearer(NEW)).text
        assert proc.poll() is None
    finally:
        log = served.stop()
    assert 'confide_metrics_scrapes_total{scraper="prometheus-next"} 3.0' in text
    assert 'confide_metrics_scrapes_total{scraper="grafana"} 2.0' in text
    assert 'confide_metrics_token_reloads_total{result="failed"} 1.0' in text
    assert 'confide_metrics_tls_certificate_reloads_total{result="ok"} 3.0' in text  # each SIGHUP
    for token in (TOKEN, NEW, OTHER):
        assert token not in log and token[:-1] not in log
    assert "Traceback" not in log, log
    scrapers = [json.loads(x) for x in log.splitlines() if '"metrics-scraper"' in x]
    assert {x["scraper"] for x in scrapers} == {"prometheus", "grafana", "prometheus-next"}


def test_witness_polls_its_token_file(tmp_path: Path, setup: dict[str, object]) -> None:  # noqa: F811
    """witness serve, plain HTTP throughout: --cert-reload-interval polls the token file (no
    --tls-cert needed); the token changed on disk, no signal: the old one refused."""
    keys = setup["keys"]
    assert isinstance(keys, dict)
    tokens = _token_file(tmp_path, f"{TOKEN}\n")
    argv = ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
            "--log", keys["log"], "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--metrics-token-file", str(tokens), "--cert-reload-interval", "1"]  # fmt: skip
    proc, _, metrics_url = _start_ledger(argv)
    served = _Lines(proc)
    try:
        with httpx2.Client(timeout=10) as plain:
            assert plain.get(metrics_url, headers=_bearer(TOKEN)).status_code == 200
            _replace(tokens, f"{NEW}\n")
            event = served.next_event("metrics-token-reload")
            assert event["result"] == "ok" and event["trigger"] == "poll" and event["scrapers"] == ["line-1"]
            assert plain.get(metrics_url, headers=_bearer(TOKEN)).status_code == 401
            assert plain.get(metrics_url, headers=_bearer(NEW)).status_code == 200
    finally:
        log = served.stop()
    assert TOKEN not in log and NEW not in log and "Traceback" not in log, log


def test_cas_metrics_over_https_reloaded_on_sighup(tmp_path: Path) -> None:
    """cas serve with --metrics-cert, --metrics-key and a token file: its metrics listener is
    HTTPS (verified against the CA; another CA fails), SIGHUP reloads the token file and the
    certificate (the CAS had no SIGHUP handler before: it does now, with these files)."""
    ca_a, cert_a, key_a = tls_server_files(tmp_path, "a")
    ca_b, cert_b, key_b = tls_server_files(tmp_path, "b")
    cert, key = tmp_path / "metrics-cert.pem", tmp_path / "metrics-key.pem"
    _replace(cert, cert_a.read_text())
    _replace(key, key_a.read_text())
    tokens = _token_file(tmp_path, f"prometheus:{TOKEN}\n")
    args = ("--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(tokens), "--metrics-cert", str(cert),
            "--metrics-key", str(key))  # fmt: skip
    cas = CasProcess(tmp_path / "cas", None, extra_args=args).start()
    try:
        line = _listening(cas)
        metrics_url = line["metrics_http"]
        assert isinstance(metrics_url, str) and metrics_url.startswith("https://127.0.0.1:"), line
        assert line["metrics_scrapers"] == ["prometheus"] and isinstance(line["metrics_tls"], str)
        with _verified(ca_a) as client:
            r = client.get(metrics_url, headers=_bearer(TOKEN))
            assert r.status_code == 200 and "confide_requests_total" in r.text
            assert client.get(metrics_url).status_code == 401
        with _verified(ca_b) as wrong, pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            wrong.get(metrics_url, headers=_bearer(TOKEN))
        _replace(tokens, f"prometheus:{NEW}\n")
        _replace(cert, cert_b.read_text())
        _replace(key, key_b.read_text())
        assert cas.proc is not None
        cas.proc.send_signal(signal.SIGHUP)
        assert cas.log is not None
        deadline = time.monotonic() + 20
        while True:
            events = [json.loads(x) for x in cas.log.read_text().splitlines() if '-reload"' in x]
            if len(events) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert {(e["event"], e["result"]) for e in events} == {
            ("metrics-token-reload", "ok"),
            ("tls-reload", "ok"),
        }
        assert all(e["listener"] == "metrics" for e in events)
        with _verified(ca_b) as client:
            assert client.get(metrics_url, headers=_bearer(TOKEN)).status_code == 401
            text = client.get(metrics_url, headers=_bearer(NEW)).text
        assert 'confide_metrics_tls_certificate_reloads_total{result="ok"} 1.0' in text
        assert 'confide_metrics_scrapes_total{scraper="prometheus"} 2.0' in text
        assert cas.proc.poll() is None
    finally:
        cas.stop()
    log = cas.log.read_text()
    assert TOKEN not in log and NEW not in log and "Traceback" not in log
    requests = [json.loads(x) for x in log.splitlines() if '"listener": "metrics"' in x and '"request"' in x]
    assert {(r["status"], r["scraper"]) for r in requests} == {(200, "prometheus"), (401, None)}
    for pem_line in key_a.read_text().splitlines()[1:-1]:
        assert pem_line not in log


@pytest.mark.parametrize("command", ["cas", "serve", "witness"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}"), "--metrics-cert and --metrics-key go together"),
        (("--metrics-cert", "{cert}", "--metrics-key", "{key}"), "--metrics-cert and --metrics-key need --metrics-listen"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{other_key}"),
         "--metrics-cert/--metrics-key: cannot load: the key in"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-token-file", "{twice}"), "line 2: the same token as line 1"),
    ],
)  # fmt: skip
def test_bad_metrics_tls_options_exit_2(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    command: str,
    args: tuple[str, ...],
    says: str,
) -> None:
    db, keys = setup["db"], setup["keys"]
    _, cert, key = setup["pki"]  # type: ignore[misc]
    other_key = setup["other"][2]  # type: ignore[index]
    assert isinstance(keys, dict)
    (tmp_path / "twice").write_text(f"a:{TOKEN}\nb:{TOKEN}\n")
    values = {
        "cert": str(cert),
        "key": str(key),
        "other_key": str(other_key),
        "twice": str(tmp_path / "twice"),
    }
    extra = [a.format(**values) for a in args]
    if command == "cas":
        r = subprocess.run(
            [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev", *extra],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        )  # fmt: skip
        assert not (tmp_path / "cas").exists()  # refused before anything is written
    elif command == "serve":
        r = _cli("serve", "--log-db", str(db), "--listen", "127.0.0.1:0", *extra)
    else:
        r = _cli("witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
                 "--log", keys["log"], "--listen", "127.0.0.1:0", *extra)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert TOKEN not in r.stderr


def test_reload_intervals_need_files(tmp_path: Path, setup: dict[str, object]) -> None:  # noqa: F811
    db = setup["db"]
    r = subprocess.run(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev",
         "--metrics-listen", "127.0.0.1:0", "--metrics-reload-interval", "5"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert r.returncode == 2 and "--metrics-reload-interval needs --metrics-token-file" in r.stderr, r.stderr
    r = _cli("serve", "--log-db", str(db), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--cert-reload-interval", "5")  # fmt: skip
    assert r.returncode == 2 and "--cert-reload-interval needs files to reload" in r.stderr, r.stderr


@pytest.mark.parametrize("interval", ["0.0001", "0.5"])
def test_reload_intervals_under_a_second_are_refused(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    interval: str,
) -> None:
    """Busy polling: refused (exit 2, naming the option) before anything starts, on every
    server; the data directory is not created."""
    tokens = _token_file(tmp_path, f"{TOKEN}\n")
    keys = setup["keys"]
    assert isinstance(keys, dict)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)}
    runs = {
        "--metrics-reload-interval": [sys.executable, "-m", "confide", "cas", "serve", "--data-dir",
                                      str(tmp_path / "cas"), "--dev", "--metrics-listen", "127.0.0.1:0",
                                      "--metrics-token-file", str(tokens), "--metrics-reload-interval", interval],
        "--cert-reload-interval": [sys.executable, "-m", "confide", "ledger", "witness", "serve", "--state",
                                   str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
                                   "--log", keys["log"], "--listen", "127.0.0.1:0", "--metrics-listen",
                                   "127.0.0.1:0", "--metrics-token-file", str(tokens),
                                   "--cert-reload-interval", interval],
    }  # fmt: skip
    for option, argv in runs.items():
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
        assert r.returncode == 2, r.stderr
        assert f"'{option}': {interval} is less than 1 second" in r.stderr, r.stderr
    assert not (tmp_path / "cas").exists()


def _scrape(
    url: str,
    server_ca: Path,
    client: tuple[Path, Path] | None = None,
    token: str | None = None,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> tuple[int, str] | str:
    """GET ``url`` over TLS ``version`` exactly, with the client certificate ``client`` (or
    none) and the bearer ``token`` (or none): the status and body, or ``"refused"`` when the
    TLS connection failed (a TLS 1.3 server refuses a client certificate after the client's
    handshake ended: the request then gets an alert or nothing)."""
    context = ssl.create_default_context(cafile=str(server_ca))
    context.minimum_version = context.maximum_version = version
    if client is not None:
        context.load_cert_chain(*client)
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=10)
    try:
        connection.request("GET", parts.path, headers=_bearer(token) if token is not None else {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return "refused"
    finally:
        connection.close()


def _how_refused(url: str, server_ca: Path, version: ssl.TLSVersion) -> str:
    """How a client without a certificate sees the refusal, as docs/cas.md "Metrics" says:
    ``"closed after the handshake"`` (TLS 1.3: its side of the handshake ended, its first read
    finds the connection closed), ``"closed in the handshake"`` (TLS 1.2), or ``"alert: ..."``
    when a TLS alert arrived instead."""
    context = ssl.create_default_context(cafile=str(server_ca))
    context.minimum_version = context.maximum_version = version
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=parts.hostname)
        except (ssl.SSLEOFError, ConnectionResetError):
            return "closed in the handshake"
        except ssl.SSLError as exc:
            return f"alert: {exc.reason}"
        with tls:
            try:
                tls.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n".encode())
                return "closed after the handshake" if tls.recv(64) == b"" else "answered"
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                return "closed after the handshake"
            except ssl.SSLError as exc:
                return f"alert: {exc.reason}"


def _resumed(url: str, server_ca: Path, client: tuple[Path, Path], version: ssl.TLSVersion) -> bool:
    """Two scrapes of ``url`` over TLS ``version`` with the client certificate ``client``, the
    second offering the session the first ended with (a TLS 1.3 ticket, a TLS 1.2 ticket or
    session id): whether the server resumed it (it then served a certificate it did not judge)."""
    context = ssl.create_default_context(cafile=str(server_ca))
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(*client)
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    session: ssl.SSLSession | None = None
    reused = []
    for _ in range(2):
        with (
            socket.create_connection((parts.hostname, parts.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname, session=session) as tls,
        ):
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):  # to the end: TLS 1.3 tickets come after the handshake
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
            reused.append(tls.session_reused)
            session = tls.session
    assert not reused[0]
    return reused[1]


def _wait_for(cas: CasProcess, event: str, count: int) -> list[dict[str, Any]]:
    """The log's first ``count`` lines of ``event``, waited for."""
    assert cas.log is not None
    deadline = time.monotonic() + 20
    while True:
        events = [json.loads(x) for x in cas.log.read_text().splitlines() if f'"{event}"' in x]
        if len(events) >= count or time.monotonic() > deadline:
            return events[:count]
        time.sleep(0.05)


def test_cas_metrics_listener_requires_client_certificates(tmp_path: Path) -> None:
    """cas serve with --metrics-client-ca (and a token file: both required): no client
    certificate, one of another CA or an expired one get no HTTP at all; one of the bundle's CA
    with the token is served over TLS 1.3 (no session resumed), without the token 401; over TLS
    1.2 nothing is served (TLS 1.3 only there: the refusal logged as tls_version). Scrapers are named by
    their certificates in the log and the counters, never by a token. SIGHUP reloads the bundle;
    a bad bundle keeps the one in use."""
    server_ca, cert, key = tls_server_files(tmp_path, "metrics")
    ca_a, issuer_a = tls_client_ca(tmp_path, "a")
    ca_b, issuer_b = tls_client_ca(tmp_path, "b")
    client_a = tls_client_files(tmp_path, "scraper-a", issuer_a)
    client_b = tls_client_files(tmp_path, "scraper-b", issuer_b)
    expired = tls_client_files(
        tmp_path, "expired", issuer_a, not_after=datetime.now(UTC) - timedelta(minutes=5)
    )
    bundle = tmp_path / "client-ca.pem"
    _replace(bundle, ca_a.read_text())
    tokens = _token_file(tmp_path, f"prometheus:{TOKEN}\n")
    args = ("--metrics-listen", "127.0.0.1:0", "--metrics-token-file", str(tokens), "--metrics-cert", str(cert),
            "--metrics-key", str(key), "--metrics-client-ca", str(bundle))  # fmt: skip
    cas = CasProcess(tmp_path / "cas", None, extra_args=args).start()
    try:
        line = _listening(cas)
        url = line["metrics_http"]
        assert isinstance(url, str) and url.startswith("https://127.0.0.1:"), line
        assert line["metrics_client_ca"] == [_cert_sha(ca_a)], line
        served = _scrape(url, server_ca, client_a, TOKEN)
        assert isinstance(served, tuple) and served[0] == 200 and "confide_requests_total" in served[1]
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            assert _scrape(url, server_ca, None, TOKEN, version) == "refused"
            assert _scrape(url, server_ca, client_b, TOKEN, version) == "refused"
            assert _scrape(url, server_ca, expired, TOKEN, version) == "refused"
        assert not _resumed(url, server_ca, client_a, ssl.TLSVersion.TLSv1_3)  # each certificate judged
        assert _scrape(url, server_ca, client_a, TOKEN, ssl.TLSVersion.TLSv1_2) == "refused"  # TLS 1.3 only
        # no TLS alert (asyncio's SSL transport closes without sending the one OpenSSL wrote)
        assert _how_refused(url, server_ca, ssl.TLSVersion.TLSv1_3) == "closed after the handshake"
        assert _how_refused(url, server_ca, ssl.TLSVersion.TLSv1_2) == "closed in the handshake"
        unauthorized = _scrape(url, server_ca, client_a)  # the certificate alone: the token too
        assert isinstance(unauthorized, tuple) and unauthorized[0] == 401
        served = _scrape(url, server_ca, client_a, TOKEN)
        assert isinstance(served, tuple)
        sha_a = _cert_sha(client_a[0])
        assert (
            f'confide_metrics_client_cert_scrapes_total{{sha256="{sha_a}",subject="CN=scraper-a"}} 4.0'
            in served[1]
        )
        assert "confide_metrics_tls_certificate_client_ca_certificates 1.0" in served[1]

        _replace(bundle, ca_b.read_text())  # the scrapers' CA rotated
        assert cas.proc is not None
        cas.proc.send_signal(signal.SIGHUP)
        (reload,) = _wait_for(cas, "tls-reload", 1)
        assert reload["result"] == "ok" and reload["client_ca_sha256"] == [_cert_sha(ca_b)], reload
        assert reload["client_ca_subjects"] == ["CN=b client CA"]
        assert _scrape(url, server_ca, client_a, TOKEN) == "refused"
        served = _scrape(url, server_ca, client_b, TOKEN)
        assert isinstance(served, tuple) and served[0] == 200

        _replace(bundle, "-----BEGIN CERTIFICATE-----\nnot one\n")  # a bad bundle: B's kept
        cas.proc.send_signal(signal.SIGHUP)
        failed = _wait_for(cas, "tls-reload", 2)[-1]
        assert failed["result"] == "failed" and "--metrics-client-ca" in failed["error"], failed
        assert failed["client_ca_sha256"] == [_cert_sha(ca_b)]
        served = _scrape(url, server_ca, client_b, TOKEN)
        assert isinstance(served, tuple) and served[0] == 200
        assert 'confide_metrics_tls_certificate_reloads_total{result="failed"} 1.0' in served[1]
        assert _scrape(url, server_ca, client_a, TOKEN) == "refused"
        assert cas.proc.poll() is None
    finally:
        cas.stop()
    assert cas.log is not None
    log = cas.log.read_text()
    assert TOKEN not in log and "Traceback" not in log
    handshakes = [json.loads(x) for x in log.splitlines() if '"metrics-tls-handshake"' in x]
    # each TLS 1.2 client: refused before it sent a certificate, none or not (as the handshake's words say)
    assert [x["detail"] for x in handshakes if x["cause"] == "tls_version"] == ["UNSUPPORTED_PROTOCOL"] * 5
    scrapers = [json.loads(x) for x in log.splitlines() if '"metrics-scraper"' in x and "client_cert" in x]
    assert [(s["client_cert_subject"], s["client_cert_sha256"]) for s in scrapers] == [
        ("CN=scraper-a", sha_a),
        ("CN=scraper-b", _cert_sha(client_b[0])),
    ]
    requests = [json.loads(x) for x in log.splitlines() if '"listener": "metrics"' in x and '"request"' in x]
    assert {(r["status"], r["scraper"], r.get("client_cert_sha256")) for r in requests} == {
        (200, "prometheus", sha_a),
        (401, None, sha_a),
        (200, "prometheus", _cert_sha(client_b[0])),
    }


def _cert_sha(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _ledger_argv(command: str, tmp_path: Path, setup: dict[str, object], *extra: str) -> list[str]:  # noqa: F811
    db, keys = setup["db"], setup["keys"]
    assert isinstance(keys, dict)
    if command == "serve":
        return ["serve", "--log-db", str(db), "--listen", "127.0.0.1:0", *extra]
    return ["witness", "serve", "--state", str(tmp_path / "w.json"), "--key", str(tmp_path / "witness.key"),
            "--log", keys["log"], "--listen", "127.0.0.1:0", *extra]  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "witness"])
def test_ledger_metrics_listener_requires_client_certificates(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    command: str,
) -> None:
    """ledger serve and ledger witness serve with --metrics-client-ca (docs/ledger.md "Metrics
    and refusals"), over real TLS 1.3 and 1.2: no client certificate, or one of another CA, gets
    no HTTP at all; one of the bundle's CA is served over TLS 1.3 (with the token: both are
    required; no session resumed), never over TLS 1.2, and counted by its certificate."""
    server_ca, cert, key = tls_server_files(tmp_path, "metrics")
    ca_a, issuer_a = tls_client_ca(tmp_path, "a")
    _ca_b, issuer_b = tls_client_ca(tmp_path, "b")
    client_a = tls_client_files(tmp_path, "scraper-a", issuer_a)
    client_b = tls_client_files(tmp_path, "scraper-b", issuer_b)
    argv = _ledger_argv(
        command, tmp_path, setup, "--metrics-listen", "127.0.0.1:0", "--metrics-token-file",
        str(_token_file(tmp_path, f"prometheus:{TOKEN}\n")), "--metrics-cert", str(cert), "--metrics-key",
        str(key), "--metrics-client-ca", str(ca_a),
    )  # fmt: skip
    proc, _url, metrics_url = _start_ledger(argv)
    try:
        assert metrics_url.startswith("https://127.0.0.1:"), metrics_url
        served = _scrape(metrics_url, server_ca, client_a, TOKEN)
        assert isinstance(served, tuple) and served[0] == 200, served
        assert "confide_ledger_http_requests_total" in served[1]
        assert _scrape(metrics_url, server_ca, client_a, TOKEN, ssl.TLSVersion.TLSv1_2) == "refused"
        # no session resumed: each connection's certificate judged at its own handshake
        # (a resumed one carries the certificate judged when it was made, expired since)
        assert not _resumed(metrics_url, server_ca, client_a, ssl.TLSVersion.TLSv1_3)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            assert _scrape(metrics_url, server_ca, None, TOKEN, version) == "refused"
            assert _scrape(metrics_url, server_ca, client_b, TOKEN, version) == "refused"
            want = (
                "closed after the handshake"
                if version == ssl.TLSVersion.TLSv1_3
                else "closed in the handshake"
            )
            assert _how_refused(metrics_url, server_ca, version) == want  # no TLS alert, as the CAS's
        unauthorized = _scrape(metrics_url, server_ca, client_a)  # the certificate alone: the token too
        assert isinstance(unauthorized, tuple) and unauthorized[0] == 401
        served = _scrape(metrics_url, server_ca, client_a, TOKEN)
        assert isinstance(served, tuple) and served[0] == 200
        sha_a = _cert_sha(client_a[0])
        assert (
            f'confide_metrics_client_cert_scrapes_total{{sha256="{sha_a}",subject="CN=scraper-a"}} 4.0'
            in served[1]
        ), served[1]
        assert "confide_metrics_tls_certificate_client_ca_certificates 1.0" in served[1]
    finally:
        rest = _stop(proc)
    assert TOKEN not in rest and "Traceback" not in rest, rest


@pytest.mark.parametrize("command", ["cas", "serve", "witness"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-listen", "127.0.0.1:0", "--metrics-client-ca", "{ca}"),
         "--metrics-client-ca needs --metrics-cert and --metrics-key"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-ca", "{key}"), "--metrics-client-ca '{key}': cannot load"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-ca", "{missing}"), "--metrics-client-ca '{missing}': does not exist"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-allow", "{allow}"), "--metrics-client-allow needs --metrics-client-ca"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-crl", "{crl}"), "--metrics-client-crl needs --metrics-client-ca"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-ca", "{ca}", "--metrics-client-allow", "{bad_allow}"),
         "--metrics-client-allow '{bad_allow}': line 2: neither sha256:HEX nor a subject"),
        (("--metrics-listen", "127.0.0.1:0", "--metrics-cert", "{cert}", "--metrics-key", "{key}",
          "--metrics-client-ca", "{ca}", "--metrics-client-crl", "{stranger_crl}"),
         "--metrics-client-crl '{stranger_crl}': CRL 1: not signed by a certificate of the client CA bundle"),
    ],
)  # fmt: skip
def test_bad_metrics_client_ca_options_exit_2(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    command: str,
    args: tuple[str, ...],
    says: str,
) -> None:
    """cas serve, ledger serve and ledger witness serve alike: refused before anything is
    written (the CAS's data directory not created), one line, exit 2, no key material in it."""
    _, cert, key = tls_server_files(tmp_path, "metrics")
    ca, issuer = tls_client_ca(tmp_path, "a")
    _stranger, stranger = tls_client_ca(tmp_path, "stranger")
    (tmp_path / "a.crl").write_bytes(crls_pem(client_crl(issuer)))
    (tmp_path / "stranger.crl").write_bytes(crls_pem(client_crl(stranger)))
    (tmp_path / "allow").write_text("CN=ok\n")
    (tmp_path / "bad-allow").write_text("CN=ok\nprometheus\n")
    values = {"ca": str(ca), "cert": str(cert), "key": str(key), "missing": str(tmp_path / "nope.pem"),
              "allow": str(tmp_path / "allow"), "bad_allow": str(tmp_path / "bad-allow"),
              "crl": str(tmp_path / "a.crl"), "stranger_crl": str(tmp_path / "stranger.crl")}  # fmt: skip
    extra = [a.format(**values) for a in args]
    if command == "cas":
        argv = ["cas", "serve", "--data-dir", str(tmp_path / "cas"), "--dev", *extra]
    else:
        argv = ["ledger", *_ledger_argv(command, tmp_path, setup, *extra)]
    r = subprocess.run(
        [sys.executable, "-m", "confide", *argv], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert says.format(**values) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "PRIVATE KEY" not in r.stderr
    assert not (tmp_path / "cas").exists()


# --- --metrics-client-allow, --metrics-client-crl, refused handshakes ---


class _Acl:
    """Client CA A (the bundle), its CRL revoking ``revoked``, an allow-list naming ``ok`` by
    subject; under A the client certificates ``ok``, ``other`` (chains, not allowed), ``revoked``
    (allowed, revoked) and ``expired`` (allowed)."""

    def __init__(self, tmp_path: Path) -> None:
        self.server_ca, self.cert, self.key = tls_server_files(tmp_path, "metrics")
        self.ca, issuer = tls_client_ca(tmp_path, "a")
        self.client = {name: tls_client_files(tmp_path, name, issuer) for name in ("ok", "other", "revoked")}
        self.client["expired"] = tls_client_files(
            tmp_path, "expired", issuer, not_after=datetime.now(UTC) - timedelta(minutes=5)
        )
        revoked = x509.load_pem_x509_certificate(self.client["revoked"][0].read_bytes())
        self.crl = tmp_path / "client.crl"
        self.crl.write_bytes(crls_pem(client_crl(issuer, [revoked])))
        self.allow = tmp_path / "allow"
        self.allow.write_text("# scrapers\nCN=ok\nCN=revoked\nCN=expired\n")

    def args(self) -> tuple[str, ...]:
        return ("--metrics-listen", "127.0.0.1:0", "--metrics-cert", str(self.cert), "--metrics-key",
                str(self.key), "--metrics-client-ca", str(self.ca), "--metrics-client-allow", str(self.allow),
                "--metrics-client-crl", str(self.crl))  # fmt: skip

    def check(self, url: str) -> str:
        """Each outcome over TLS 1.3, and over TLS 1.2 each refused (TLS 1.3 only): the text of a
        last, allowed scrape."""
        served = _scrape(url, self.server_ca, self.client["ok"])
        assert isinstance(served, tuple) and served[0] == 200, served
        refused = _scrape(url, self.server_ca, self.client["other"])
        assert refused == (403, "this client certificate is not allowed\n"), refused
        for name in ("revoked", "expired"):
            assert _scrape(url, self.server_ca, self.client[name]) == "refused", name
        assert _scrape(url, self.server_ca, None) == "refused"
        for tls12 in ("ok", "other", "revoked", "expired"):
            assert (
                _scrape(url, self.server_ca, self.client[tls12], version=ssl.TLSVersion.TLSv1_2) == "refused"
            )
        deadline = time.monotonic() + 20
        while True:  # a failed handshake is counted once its connection is lost
            served = _scrape(url, self.server_ca, self.client["ok"])
            assert isinstance(served, tuple) and served[0] == 200
            text = served[1]
            if 'confide_metrics_tls_handshake_failures_total{reason="tls_version"} 4.0' in text:
                break
            assert time.monotonic() < deadline, text
        for reason, n in (("revoked", 1), ("expired", 1), ("no_certificate", 1), ("unknown_ca", 0)):
            assert f'confide_metrics_tls_handshake_failures_total{{reason="{reason}"}} {n}.0' in text, reason
        assert 'confide_metrics_client_cert_refused_total{reason="not_allowed"} 1.0' in text
        assert "confide_metrics_client_allow_entries 3.0" in text
        assert "confide_metrics_tls_certificate_client_crl_revoked 1.0" in text
        return text

    def refusals(self, log: str) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in log.splitlines() if '"event": "refused"' in x]
        return [
            x for x in lines if x["reason"] in ("metrics-tls-handshake", "metrics-client-cert-not-allowed")
        ]

    def check_log(self, log: str) -> None:
        refusals = self.refusals(log)
        causes = sorted(str(x.get("cause")) for x in refusals if x["reason"] == "metrics-tls-handshake")
        assert causes == ["expired", "no_certificate", "revoked"] + ["tls_version"] * 4, refusals
        not_allowed = [x for x in refusals if x["reason"] == "metrics-client-cert-not-allowed"]
        assert [(x["client_cert_subject"], x["client_cert_sha256"], x["client"]) for x in not_allowed] == [
            ("CN=other", _cert_sha(self.client["other"][0]), "127.0.0.1")
        ]
        assert "BEGIN" not in log and "Traceback" not in log


def test_cas_metrics_client_allow_list_crl_and_refused_handshakes(tmp_path: Path) -> None:
    """cas serve with --metrics-client-allow and --metrics-client-crl: allowed served, chained
    but not allowed 403, revoked, expired and none refused in the handshake; each counted in
    /metrics and logged. SIGHUP reloads the allow-list; a bad one keeps the list in use."""
    acl = _Acl(tmp_path)
    cas = CasProcess(tmp_path / "cas", None, extra_args=acl.args()).start()
    try:
        line = _listening(cas)
        assert line["metrics_client_crl"] == [_cert_sha(acl.ca)] and line["metrics_client_allow"] == 3, line
        url = line["metrics_http"]
        assert isinstance(url, str)
        acl.check(url)
        assert cas.log is not None
        acl.check_log(cas.log.read_text())

        _replace(acl.allow, f"CN=ok\nsha256:{_cert_sha(acl.client['other'][0])}\n")
        assert cas.proc is not None
        cas.proc.send_signal(signal.SIGHUP)
        (reload,) = _wait_for(cas, "metrics-client-allow-reload", 1)
        assert reload["result"] == "ok" and (reload["fingerprints"], reload["subjects"]) == (1, 1), reload
        served = _scrape(url, acl.server_ca, acl.client["other"])
        assert isinstance(served, tuple) and served[0] == 200
        _replace(acl.allow, "CN=ok\ncn=lower-case type\n")  # a bad file: the list in use kept
        cas.proc.send_signal(signal.SIGHUP)
        failed = _wait_for(cas, "metrics-client-allow-reload", 2)[-1]
        assert failed["result"] == "failed" and "--metrics-client-allow" in failed["error"], failed
        assert "line 2" in failed["error"] and failed["fingerprints"] == 1
        served = _scrape(url, acl.server_ca, acl.client["other"])
        assert isinstance(served, tuple) and served[0] == 200
        assert 'confide_metrics_client_allow_reloads_total{result="failed"} 1.0' in served[1]
        assert cas.proc.poll() is None
    finally:
        cas.stop()


@pytest.mark.parametrize("command", ["serve", "witness"])
def test_ledger_metrics_client_allow_list_crl_and_refused_handshakes(
    tmp_path: Path,
    setup: dict[str, object],  # noqa: F811
    command: str,
) -> None:
    """ledger serve and ledger witness serve: the same outcomes, counters and log lines."""
    acl = _Acl(tmp_path)
    proc, _url, metrics_url = _start_ledger(_ledger_argv(command, tmp_path, setup, *acl.args()))
    try:
        acl.check(metrics_url)
    finally:
        rest = _stop(proc)
    acl.check_log(rest)
