"""``confide ui`` end to end: a real ``confide cas serve --dev`` over TLS, ``confide ui`` as a
subprocess driven over HTTP: the token and cookie, the Host and CSRF checks, the security
headers, apply (valid, invalid with line and column, uploaded), show, events, the verified
history with its state file, accesses, approve with the diff, revoke, an operator's hostile
string escaped, and no page ever showing a secret value a service received."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape as escape_html
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).parents[1]))
import sdk_env
from cas_harness import ROOT, CasProcess, running_cas, wait_for_log
from confide import errors
from confide.ledger.note import NoteSigner
from confide.policy import command_secret_warning
from confide.sdk import Cas, Identity, create_identity, measure
from confide.ui.app import MAX_BODY
from sdk_env import command, pki_policy

SECRET_VALUE = "explicit-value-Ui7q"
HOSTILE = "<script>alert('pwned')</script>"


@pytest.fixture(scope="module")
def cas_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasProcess]:
    with running_cas(tmp_path_factory.mktemp("ui") / "cas", None) as proc:
        yield proc


@dataclass
class Ui:
    proc: subprocess.Popen[str]
    base: str
    token: str
    identity: Identity
    state: Path
    stderr: list[str]

    def client(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.base, follow_redirects=False, timeout=60)

    cookies: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def logged_in(self) -> Iterator[httpx2.Client]:
        """A client with the page's cookie: the token is single use, so exchanged once."""
        with self.client() as client:
            if not self.cookies:
                answer = client.get(f"/?token={self.token}")
                assert answer.status_code == 303, answer.text
                self.cookies.update(client.cookies.items())
            for name, value in self.cookies.items():
                client.cookies.set(name, value)
            yield client

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_ui(cas_proc: CasProcess, work: Path, *extra: str, identity: bool = True) -> Ui:
    """``confide ui`` on its default address (a random 127.X.Y.Z) unless ``extra`` has ``--listen``."""
    work.mkdir(parents=True, exist_ok=True)
    ident = create_identity(work / "me.id", name="me")
    args = [sys.executable, "-m", "confide", "ui",
            "--env-file", str(cas_proc.data_dir / "client.env"), "--state", str(work / "ui.state"), *extra]  # fmt: skip
    if identity:
        args += ["--identity", str(work / "me.id")]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True).start()
    line = proc.stdout.readline()  # the URL, printed once the socket is bound
    match = re.fullmatch(r"(http://127\.\d+\.\d+\.\d+:\d+)/\?token=([A-Za-z0-9_-]+)\n", line)
    assert match, (line, proc.poll(), stderr)
    return Ui(proc, match.group(1), match.group(2), ident, work / "ui.state", stderr)


@pytest.fixture(scope="module")
def ui(cas_proc: CasProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    started = start_ui(cas_proc, tmp_path_factory.mktemp("ui-work"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def cas(cas_proc: CasProcess) -> Iterator[Cas]:
    with Cas.from_env(cas_proc.env) as connected:
        yield connected


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


# with ``explicit`` (the default), a secret of an explicit value (its submission then stays out of
# the ledger); an operator's hostile string in the service's environment
app_policy = functools.partial(
    sdk_env.app_policy, secret_value=SECRET_VALUE, environment=f'      GREETING: "{HOSTILE}"\n'
)


def apply(client: httpx2.Client, text: str, *, upload: bool = False) -> httpx2.Response:
    csrf = csrf_of(client.get("/apply").text)
    files = {"file": ("p.yaml", text.encode(), "application/yaml")} if upload else {"file": ("", b"", "")}
    data = {"csrf": csrf, "yaml": "" if upload else text}
    return client.post("/apply", data=data, files=files)


SECURITY = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def assert_secured(answer: httpx2.Response) -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (name, answer.headers)
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


# --- the local server's own security -------------------------------------------------------------


@pytest.fixture
def fresh_ui(cas_proc: CasProcess, tmp_path: Path) -> Iterator[Ui]:
    """A page of its own, its token not used yet."""
    started = start_ui(cas_proc, tmp_path / "fresh")
    try:
        yield started
    finally:
        started.stop()


def test_token_cookie_host_csrf_and_headers(fresh_ui: Ui) -> None:
    ui = fresh_ui
    with ui.client() as anonymous:
        refused = anonymous.get("/")
        assert refused.status_code == 403 and "token" in refused.text
        assert_secured(refused)
        assert anonymous.get("/?token=" + "x" * len(ui.token)).status_code == 403
        assert anonymous.get("/policy?name=x").status_code == 403
        assert anonymous.post("/apply", data={"csrf": "x", "yaml": "x"}).status_code == 403
    with ui.client() as client:
        exchanged = client.get(f"/policy?name=p&token={ui.token}")
        assert exchanged.status_code == 303
        assert exchanged.headers["location"] == "/policy?name=p"  # the token leaves the URL
        # a decoded CR LF in the path stays out of the answer's head
        # single use: the browser keeps the URL it opened (its history: checked with Chromium)
        with ui.client() as again:
            reused = again.get(f"/?token={ui.token}")
            assert reused.status_code == 403 and "opened already" in reused.text
            assert not again.cookies
        assert client.get("/?" + "&".join(f"a{i}=1" for i in range(40))).status_code == 400
        cookie = exchanged.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ui.token not in cookie
        assert_secured(exchanged)
        home = client.get("/")
        assert home.status_code == 200 and "text/html" in home.headers["content-type"]
        assert_secured(home)
        text = home.text
        assert ui.identity.fingerprint in text and ui.token not in text
        # a forged cookie is no cookie
        with ui.client() as forged:
            forged.cookies.set(next(iter(client.cookies.keys())), "forged")
            assert forged.get("/").status_code == 403
        # DNS rebinding: a request for another host name is refused, cookie or not
        rebound = client.get("/", headers={"Host": "attacker.example:80"})
        assert rebound.status_code == 403 and "Host" in rebound.text
        assert_secured(rebound)
        # the default address: a random 127.X.Y.Z of this launch, not among 127.0.0.1's neighbours
        # (cookies are per host, not per port: servers on 127.0.0.1 are not sent this page's), and
        # the page answers to exactly that host and port
        host, port = ui.base.removeprefix("http://").rsplit(":", 1)
        address = ipaddress.ip_address(host)
        assert address.is_loopback and address not in ipaddress.ip_network("127.0.0.0/24")
        assert all(0 < int(octet) < 255 for octet in host.split(".")[1:])
        for other in (f"127.0.0.1:{port}", f"localhost:{port}", f"{host}:1{port}", host):
            assert client.get("/", headers={"Host": other}).status_code == 403, other
        assert client.get("/", headers={"Host": f"{host}:{port}"}).status_code == 200
        # the cookie's name: the port and a suffix of this launch
        assert re.fullmatch(rf"confide-ui-{port}-[0-9a-f]{{8}}", next(iter(client.cookies.keys())))
        # a request another site made (a page on another port of this machine is same-site: its
        # requests carry the SameSite=Strict cookie) is refused; the page's own and the user's are not
        for site, status in [("same-site", 403), ("cross-site", 403), ("same-origin", 200), ("none", 200)]:
            made = client.get("/", headers={"Sec-Fetch-Site": site})
            assert made.status_code == status, site
        assert client.get(f"/?token={ui.token}", headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
        # every POST needs the CSRF token of the page
        assert client.post("/apply", data={"yaml": "name: x\n"}).status_code == 403
        assert client.post("/apply", data={"csrf": "wrong", "yaml": "name: x\n"}).status_code == 403
        assert client.post("/identity", data={"path": "/etc/passwd"}).status_code == 403
        assert client.get("/revoke").status_code == 405  # state changes are POSTs only
        assert client.request("PUT", "/apply").status_code == 405
        # bounded bodies, refused by their length before they are read
        csrf = csrf_of(text)
        big = client.post("/apply", data={"csrf": csrf, "yaml": "a" * (MAX_BODY + 1)})
        assert big.status_code == 413
        # the style and script are files of this server (no inline script, no CDN)
        assert client.get("/static/ui.js").headers["content-type"].startswith("text/javascript")
        assert "<script>" not in text  # only <script src="/static/ui.js">
        assert not re.search(r'(src|href)="(https?:)?//', text)
        assert 'src="/static/ui.js"' in text and 'href="/static/ui.css"' in text


def test_the_cas_is_named_and_pinned(ui: Ui, cas_proc: CasProcess) -> None:
    pem = Path(cas_proc.env["CONFIDE_CAS_CERT"]).read_bytes()
    fingerprint = hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()
    with ui.logged_in() as client:
        text = client.get("/").text
    assert cas_proc.env["CONFIDE_CAS_URL"] in text
    assert fingerprint in text
    assert cas_proc.env["CONFIDE_LOG_KEY"] in text
    assert str(ui.state) in text
    # how the CAS is trusted, on every page
    assert f"trusted by its certificate file {cas_proc.env['CONFIDE_CAS_CERT']}" in text
    assert "not by attestation" in text


def test_an_explicit_listen_keeps_its_meaning(cas_proc: CasProcess, tmp_path: Path) -> None:
    started = start_ui(cas_proc, tmp_path / "w", "--listen", "127.0.0.1:0")
    try:
        assert started.base.startswith("http://127.0.0.1:")
        port = started.base.rsplit(":", 1)[1]
        with started.logged_in() as client:
            assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200
            assert client.get("/", headers={"Host": f"127.0.0.1:{port}"}).status_code == 200
            assert client.get("/", headers={"Host": f"127.0.0.2:{port}"}).status_code == 403
        assert not any("warning" in line for line in started.stderr)
    finally:
        started.stop()


def _ran(cas_proc: CasProcess, *args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confide", "ui", "--env-file", str(env_file or cas_proc.data_dir / "client.env"),
         *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip


def test_attest_pins_the_cas_by_its_evidence(cas_proc: CasProcess, tmp_path: Path) -> None:
    sim_key = Path(cas_proc.env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem"
    with Cas.attested(cas_proc.env["CONFIDE_CAS_URL"], sim_key=sim_key, any_measurement=True) as probe:
        assert probe.attestation is not None
        measurement = str(probe.attestation.evidence.claims["measurement"])
        certificate = probe.attestation.certificate_sha256
    # the very certificate client.env names, pinned here by the evidence instead of by the file
    pem = Path(cas_proc.env["CONFIDE_CAS_CERT"]).read_bytes()
    assert (
        certificate
        == hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()
    )
    started = start_ui(cas_proc, tmp_path / "w", "--attest", "--measurement", measurement)
    try:
        with started.logged_in() as client:
            home = client.get("/").text
            assert f"trusted by its attestation: measurement {measurement[:16]}… (sim, SIMULATED)" in home
            assert measurement in home and certificate in home and "CONFIDE_CAS_CERT is not used" in home
            assert "trusted by its certificate file" not in home
            # a working connection to the CAS the evidence pinned
            done = apply(client, pki_policy("ui-attested", "UI attested CA"))
            assert done.status_code == 200, done.text
            shown = client.get("/policy?name=ui-attested")
            assert shown.status_code == 200 and "trusted by its attestation" in shown.text
            assert "srv.local" in shown.text or "BEGIN CERTIFICATE" in shown.text
    finally:
        started.stop()
    assert any("trusted by its attestation" in line for line in started.stderr)
    # refused before serving: no measurement, another measurement, a log key other than the
    # attested one, --attest's options without it
    other_key = NoteSigner.generate(cas_proc.env["CONFIDE_LOG_KEY"].split("+")[0]).verifier.vkey
    wrong_env = tmp_path / "wrong.env"
    wrong_env.write_text(
        "".join(
            f"export {k}={shlex.quote(other_key if k == 'CONFIDE_LOG_KEY' else v)}\n"
            for k, v in cas_proc.env.items()
        )
    )
    for args, env_file, code, words in [
        (("--attest",), None, errors.UsageError.exit_code, "--measurement"),
        (("--attest", "--measurement", "00" * 48), None, errors.MeasurementError.exit_code, "measurement"),
        (("--attest", "--measurement", measurement), wrong_env, errors.UsageError.exit_code, "differs"),
        (
            ("--attest", "--measurement", measurement, "--expect-witnesses", "1"),
            None,
            errors.AppraisalError.exit_code,
            "no witness quorum",
        ),  # as cas attest --expect-witnesses
        (("--expect-witnesses", "1"), None, errors.UsageError.exit_code, "are for --attest"),
        (("--measurement", measurement), None, errors.UsageError.exit_code, "are for --attest"),
    ]:
        ran = _ran(cas_proc, *args, env_file=env_file)
        assert ran.returncode == code, (args, ran.stderr)
        assert words in ran.stderr and ran.stdout == "", (args, ran.stderr)


def test_a_non_loopback_listen_is_refused(cas_proc: CasProcess, tmp_path: Path) -> None:
    for listen in ("0.0.0.0:0", "192.0.2.1:8000", "example.com:80", "127.0.0.1"):
        ran = subprocess.run(
            [sys.executable, "-m", "confide", "ui", "--listen", listen,
             "--env-file", str(cas_proc.data_dir / "client.env")],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
        assert ran.returncode == errors.UsageError.exit_code, (listen, ran.stderr)
        assert "--listen" in ran.stderr and ran.stdout == ""


def test_no_identity_then_one_loaded_by_its_path(cas_proc: CasProcess, tmp_path: Path) -> None:
    started = start_ui(cas_proc, tmp_path / "w", identity=False)
    try:
        with started.logged_in() as client:
            home = client.get("/").text
            assert "no identity loaded" in home
            shown = client.get("/policy?name=anything")
            assert shown.status_code == 400 and "no identity loaded" in shown.text
            assert "UsageError, exit 2" in shown.text
            csrf = csrf_of(home)
            (tmp_path / "loose.id").write_text((tmp_path / "w" / "me.id").read_text())
            (tmp_path / "loose.id").chmod(0o644)
            loose = client.post("/identity", data={"csrf": csrf, "path": str(tmp_path / "loose.id")})
            assert loose.status_code == 400 and "UsageError, exit 2" in loose.text
            loaded = client.post("/identity", data={"csrf": csrf, "path": str(tmp_path / "w" / "me.id")})
            assert loaded.status_code == 303
            assert started.identity.fingerprint in client.get("/").text
    finally:
        started.stop()


# --- what a stakeholder does ---------------------------------------------------------------------


def test_apply_show_history_accesses_and_no_page_shows_a_secret(
    ui: Ui, cas: Cas, cas_proc: CasProcess, tmp_path: Path
) -> None:
    argv = command(tmp_path)
    text = app_policy("ui-show", measure(argv))
    with ui.logged_in() as client:
        # invalid: every problem with its line and column, the text kept in the form
        bad = apply(client, text.replace("    environment:", "    nonsense: 1\n    environment:"))
        assert bad.status_code == 422, bad.text
        assert "line 5, column 5" in bad.text and "PolicyError, exit 30" in bad.text
        assert "services[0].nonsense" in bad.text
        broken = apply(client, "name: ui-show\nversion: [\n")
        assert broken.status_code == 422 and re.search(r"line \d+, column \d+", broken.text)
        # valid, pasted
        done = apply(client, text)
        assert done.status_code == 200, done.text
        digest = re.search(r"version <code>([0-9a-f]{64})</code> \(active\)", done.text)
        assert digest, done.text
        assert "/proc/PID/cmdline" not in done.text  # secrets in the environment only
        cmdline = app_policy("ui-cmdline", measure(argv)).replace(
            "  - name: app\n", "  - name: app\n    command: /bin/app $$SCONE::token$$\n", 1
        )
        warned = apply(client, cmdline)  # a secret in the arguments: applied, with a warning
        assert warned.status_code == 200, warned.text
        assert re.findall(r'<p class="note">([^<]*/proc/PID/cmdline[^<]*)</p>', warned.text) == [
            escape_html(command_secret_warning("app", "token"), quote=True)
        ]
        again = apply(client, text, upload=True)  # the same version, uploaded: a conflict
        assert again.status_code == 409 and "ConflictError, exit 32" in again.text

        # a service attests and receives its secrets (what no page may show)
        release = cas.attest("ui-show/app", cas.simulated_provider(argv), dumpable=True)
        values = [release.environment["TOKEN"], release.environment["PINNED"]]
        assert values[1] == SECRET_VALUE and len(values[0]) == 24
        wait_for_log(cas_proc.env, 6)

        pages = {}
        for path in ("/", "/policy?name=ui-show", "/policy/events?name=ui-show", "/policy/history?name=ui-show",
                     "/policy/accesses?name=ui-show", "/policy/accesses?name=ui-show&secret=token"):  # fmt: skip
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            pages[path] = answer.text
        shown = pages["/policy?name=ui-show"]
        assert digest.group(1) in shown and ui.identity.fingerprint in shown and "(withheld)" in shown
        assert "policy-created" in pages["/policy/events?name=ui-show"]
        assert "First visit" in pages["/policy/history?name=ui-show"]
        assert "policy.created" in pages["/policy/history?name=ui-show"]
        accesses = pages["/policy/accesses?name=ui-show"]
        assert ">app<" in accesses and measure(argv)[:16] in accesses and "ui-show/token v1" in accesses
        assert "Consistent with your last visit" in accesses  # the state file, as on the history page
        # the second visit is checked against the first (the state file)
        second = client.get("/policy/history?name=ui-show").text
        assert "Consistent with your last visit" in second
        pages["second history"] = second
        # the home page lists it (the state file remembers it)
        pages["/"] = client.get("/").text
        assert 'href="/policy?name=ui-show"' in pages["/"]
        for path, html in pages.items():
            for value in values:
                assert value not in html, (path, "shows a secret value")
        # the operator's (or an author's) markup is text, never markup
        for path in ("/policy?name=ui-show",):
            assert "<script>alert(" not in pages[path]
            assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in pages[path]


def test_a_tampered_state_file_is_shown_as_the_cli_names_it(ui: Ui, cas: Cas, tmp_path: Path) -> None:
    cas.apply(app_policy("ui-state", measure(command(tmp_path))), ui.identity)
    with ui.logged_in() as client:
        assert client.get("/policy/history?name=ui-state").status_code == 200
        kept = ui.state.read_bytes()
        ui.state.write_text("not json")
        try:
            refused = client.get("/policy/history?name=ui-state")
            assert refused.status_code == 502
            assert "ParseError, exit 10" in refused.text and "state file" in refused.text
        finally:
            ui.state.write_bytes(kept)
        assert client.get("/policy/history?name=ui-state").status_code == 200


def test_a_hostile_string_in_an_apply_error_is_escaped(ui: Ui) -> None:
    with ui.logged_in() as client:
        refused = apply(client, f'name: ui-hostile\nversion: "0.3"\n"{HOSTILE}": 1\n')
        assert refused.status_code == 422
        assert "<script>alert(" not in refused.text and "&lt;script&gt;" in refused.text


def test_access_denied_is_named(ui: Ui, cas: Cas, tmp_path: Path) -> None:
    other = Identity.generate()
    cas.apply(app_policy("ui-theirs", measure(command(tmp_path))), other)
    with ui.logged_in() as client:
        for path in (
            "/policy?name=ui-theirs",
            "/policy/events?name=ui-theirs",
            "/policy/history?name=ui-theirs",
        ):
            answer = client.get(path)
            assert answer.status_code == 403
            assert "AccessDeniedError, exit 33" in answer.text and "Access denied" in answer.text


def test_approve_shows_what_is_approved_and_the_diff(ui: Ui, cas: Cas, tmp_path: Path) -> None:
    bob = Identity.generate()
    m = measure(command(tmp_path))
    board = f"{{require-all: [{ui.identity.fingerprint}, {bob.fingerprint}]}}"
    created = cas.apply(app_policy("ui-board", m, update=board, explicit=False), ui.identity)
    update = app_policy(
        "ui-board", m, update=board, extra=f"predecessor: {created.hash}\n", size=30, explicit=False
    )
    pending = cas.apply(update, bob)
    assert pending.pending
    with ui.logged_in() as client:
        shown = client.get("/policy?name=ui-board").text
        assert f'href="/approve?name=ui-board&amp;hash={pending.hash}"' in shown
        assert (
            '<form method="get" action="/approve"><input type="hidden" name="name" value="ui-board">' in shown
        )
        page = client.get(f"/approve?name=ui-board&hash={pending.hash}")
        assert page.status_code == 200, page.text
        text = page.text
        assert pending.hash in text and bob.fingerprint in text and created.hash in text
        assert f"signed by <code>{bob.fingerprint}</code> (signature verified)" in text
        # ui.js asks before a signed action on the form it submits (its data-confirm): one on a
        # button was never asked
        assert re.findall(r"<(\w+)[^<>]*\bdata-confirm=", text) == ["form"]
        assert re.findall(r"<(\w+)[^<>]*\bdata-confirm=", client.get("/apply").text) == ["form"]
        assert '<span class="del">-' in text and "24" in text
        assert '<span class="add">+' in text and "30" in text
        assert "<script>alert(" not in text
        events = client.get("/policy/events?name=ui-board").text  # the submissions, in the payloads
        assert "<script>alert(" not in events and "&lt;script&gt;alert(" in events
        # without the page's CSRF token: refused, nothing approved
        assert client.post("/approve", data={"name": "ui-board", "hash": pending.hash}).status_code == 403
        assert cas.show("ui-board", ui.identity).hash == created.hash
        done = client.post("/approve", data={"csrf": csrf_of(text), "name": "ui-board", "hash": pending.hash})
        assert done.status_code == 200 and "active" in done.text
        assert cas.show("ui-board", ui.identity).hash == pending.hash
        again = client.post(
            "/approve", data={"csrf": csrf_of(text), "name": "ui-board", "hash": pending.hash}
        )
        assert again.status_code == 409 and "ConflictError, exit 32" in again.text
        unknown = client.get(f"/approve?name=ui-board&hash={'ab' * 32}")
        assert unknown.status_code == 409


def test_revoke_a_certificate(ui: Ui, cas: Cas) -> None:
    policy = pki_policy("ui-pki", "UI CA")
    cas.apply(policy, ui.identity)
    serial = cas.show("ui-pki", ui.identity).secrets["srv"].serial
    assert serial is not None
    with ui.logged_in() as client:
        shown = client.get("/policy?name=ui-pki").text
        assert serial in shown and "BEGIN CERTIFICATE" in shown and "PRIVATE KEY" not in shown
        csrf = csrf_of(shown)
        bad = client.post("/revoke", data={"csrf": csrf, "name": "ui-pki", "secret": "srv", "serial": serial,
                                           "reason": "whatever"})  # fmt: skip
        assert bad.status_code == 400 and "UsageError, exit 2" in bad.text
        done = client.post("/revoke", data={"csrf": csrf, "name": "ui-pki", "secret": "srv", "serial": serial,
                                            "reason": "keyCompromise"})  # fmt: skip
        assert done.status_code == 200, done.text
        assert serial in done.text and "keyCompromise" in done.text
    assert cas.show("ui-pki", ui.identity).secrets["srv"].serial != serial  # re-issued


def test_a_ca_crl_is_downloaded_as_policy_crl_writes_it(
    ui: Ui, cas: Cas, cas_proc: CasProcess, tmp_path: Path
) -> None:
    cas.apply(pki_policy("ui-crl", "UI CRL CA"), ui.identity)
    cas.apply(pki_policy("ui-crl-theirs", "UI CRL CA 2"), Identity.generate())
    with ui.logged_in() as client:
        shown = client.get("/policy?name=ui-crl").text
        assert 'href="/policy/crl?name=ui-crl&amp;secret=ca" download' in shown
        assert "/policy/crl?name=ui-crl&amp;secret=srv" not in shown  # a leaf certificate has no CRL
        got = client.get("/policy/crl?name=ui-crl&secret=ca")
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "application/pkix-crl"
        assert got.headers["content-disposition"] == 'attachment; filename="ui-crl-ca.crl"'
        assert_secured(got)
        crl = x509.load_der_x509_crl(got.content)
        assert crl.issuer.rfc4514_string() == "CN=UI CRL CA"
        # the same rules as every other GET: another site's request, no cookie, a CA not readable
        other_site = {"Sec-Fetch-Site": "same-site"}
        assert client.get("/policy/crl?name=ui-crl&secret=ca", headers=other_site).status_code == 403
        with ui.client() as anonymous:
            assert anonymous.get("/policy/crl?name=ui-crl&secret=ca").status_code == 403
        theirs = client.get("/policy/crl?name=ui-crl-theirs&secret=ca")
        assert theirs.status_code == 403 and "AccessDeniedError, exit 33" in theirs.text
        missing = client.get("/policy/crl?name=ui-crl&secret=nope")
        assert missing.status_code == 422 and "PolicyError, exit 30" in missing.text
    out = tmp_path / "ca.crl"
    ran = subprocess.run(
        [sys.executable, "-m", "confide", "policy", "crl", "ui-crl", "ca", "--der", "--out", str(out),
         "--identity", str(ui.state.parent / "me.id")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **cas_proc.env, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert out.read_bytes() == got.content  # the bytes policy crl writes


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_headless_browser_loads_the_page(fresh_ui: Ui, tmp_path: Path) -> None:
    ui = fresh_ui
    ran = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", f"{ui.base}/?token={ui.token}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ui.identity.fingerprint in ran.stdout
