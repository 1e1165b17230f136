"""``confide ui`` in a real browser: headless Chromium (Debian's ``chromium``, which ``make test``
installs) driven by Playwright (``playwright`` from PyPI, launching that executable: it downloads
no browser of its own), against a real ``confide ui`` on a ``--dev`` CAS (test_ui.py's fixtures).

Each test checks what the browser itself does with the page's defences, which an HTTP client
cannot show: the HttpOnly cookie and the single-use token, the ``Sec-Fetch-Site`` it sends for
another local origin's form and ``fetch``, the per-host rule for cookies that the default
``127.X.Y.Z`` address relies on, the ``window.confirm`` question before a signed action, the
Content-Security-Policy against injected script, and the verified history page."""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_ui import Ui, cas, cas_proc, fresh_ui, start_ui, ui

from cas_harness import CasProcess
from confide import errors
from confide.sdk import Cas
from sdk_env import pki_policy

__all__ = ["cas", "cas_proc", "fresh_ui", "ui"]  # test_ui.py's fixtures, used here

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
sync_api = pytest.importorskip("playwright.sync_api")

# As Chromium is started on these machines: no background connections (the network is
# closed), no GPU. Playwright adds --headless, --no-sandbox (as root) and a new empty profile.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 60_000  # a loaded 2-vCPU CI machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        # Debian's build, not one of Playwright's: the version `chromium --version` names
        debian = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=True)
        assert f" {launched.version} " in f" {debian.stdout} ", (launched.version, debian.stdout)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def context_of(browser: Any) -> Iterator[Any]:
    """A browser profile of its own (cookies, history), closed after."""
    made = browser.new_context()
    made.set_default_timeout(TIMEOUT_MS)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def signed_in(browser: Any, ui: Ui) -> Iterator[Any]:
    """A profile that opened the printed URL of the module's page (the token is single use)."""
    with context_of(browser) as context:
        log_in(context, ui).close()
        yield context


def log_in(context: Any, ui: Ui) -> Any:
    """A page of ``context`` that opened the printed URL (the token exchanged for the cookie)."""
    page = context.new_page()
    opened = page.goto(f"{ui.base}/?token={ui.token}")
    assert opened is not None and opened.status == 200, opened and opened.text()
    return page


@dataclass
class Local:
    """Another web server on this machine (a development server, another program's page, an
    attacker's): it serves ``pages`` and records the ``Cookie`` header of every request."""

    host: str
    pages: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str | None] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"

    def __enter__(self) -> Local:
        local = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                local.cookies[self.path] = self.headers.get("Cookie")
                body = local.pages.get(self.path, "<p>nothing here</p>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def host_of(ui: Ui) -> str:
    return ui.base.removeprefix("http://").rsplit(":", 1)[0]


def csrf_in(page: Any) -> str:
    value = page.get_attribute('input[name="csrf"]', "value")
    assert isinstance(value, str) and value
    return value


def assert_no_policy(cas: Cas, ui: Ui, name: str) -> None:
    with pytest.raises(errors.AccessDeniedError):  # no such policy: the CAS's one answer for both
        cas.show(name, ui.identity)


# --- logging in ------------------------------------------------------------------------------------


def test_the_printed_url_logs_in_once_with_an_httponly_cookie(fresh_ui: Ui, browser: Any) -> None:
    ui = fresh_ui
    with context_of(browser) as context:
        page = log_in(context, ui)
        assert page.url == f"{ui.base}/"  # the redirect took the token out of the address bar
        assert ui.identity.fingerprint in page.inner_text("main")
        (cookie,) = context.cookies(ui.base)
        assert cookie["name"].startswith("confide-ui-") and cookie["domain"] == host_of(ui)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        # HttpOnly: the page's script (or one injected into it) cannot read it
        assert page.evaluate("document.cookie") == ""
        # the cookie alone lets the browser in from now on
        again = page.goto(f"{ui.base}/apply")
        assert again is not None and again.status == 200 and page.is_visible('textarea[name="yaml"]')
        # the printed URL opened a second time (another profile, or someone who read it from the
        # terminal or the browser's history) is refused, and sets no cookie
        with context_of(browser) as other:
            second = other.new_page()
            refused = second.goto(f"{ui.base}/?token={ui.token}")
            assert refused is not None and refused.status == 403
            assert "opened already" in second.inner_text("body")
            assert other.cookies() == []
        # and in the profile that opened it, too: the URL from its own history
        reopened = page.goto(f"{ui.base}/?token={ui.token}")
        assert reopened is not None and reopened.status == 403 and "opened already" in page.inner_text("body")


# --- other local origins ---------------------------------------------------------------------------


def test_another_local_origins_form_and_fetch_are_refused(fresh_ui: Ui, browser: Any, cas: Cas) -> None:
    """A page of another port of the UI's own host (same-site: the SameSite=Strict cookie goes
    with its requests) and a page on 127.0.0.1 (cross-site) post a policy to /apply with the
    page's CSRF token (the worst case: the attacker knows it), by a form and by fetch. The
    browser says who made each request (Sec-Fetch-Site) and the page refuses them: nothing is
    applied."""
    ui = fresh_ui
    name = "ui-browser-csrf"
    with context_of(browser) as context, Local(host_of(ui)) as same_host, Local("127.0.0.1") as loopback:
        page = log_in(context, ui)
        page.goto(f"{ui.base}/apply")
        csrf = csrf_in(page)
        policy = html.escape(pki_policy(name, "Forged CA"))
        for local, site in ((same_host, "same-site"), (loopback, "cross-site")):
            local.pages["/form"] = (
                f'<form method="post" action="{ui.base}/apply">'
                f'<input name="csrf" value="{csrf}"><textarea name="yaml">{policy}</textarea></form>'
                "<script>document.forms[0].submit()</script>"
            )
            with page.expect_response(f"{ui.base}/apply") as answered:
                page.goto(f"{local.base}/form")
            response = answered.value
            sent = response.request.all_headers()
            assert response.request.method == "POST" and sent["sec-fetch-site"] == site
            # SameSite=Strict sends the cookie with a same-site request: Sec-Fetch-Site refuses it
            assert ("cookie" in sent) is (site == "same-site"), sent
            assert response.status == 403, response.text()
            page.wait_for_url(f"{ui.base}/apply")
            assert f"refused a request made by another site ({site})" in page.inner_text("body")

            local.pages["/fetch"] = (
                f'<pre id="p">{policy}</pre>'
                "<script>fetch(" + repr(f"{ui.base}/apply") + ", {method: 'POST', mode: 'no-cors', "
                "credentials: 'include', body: new URLSearchParams({csrf: " + repr(csrf) + ", yaml: "
                "document.getElementById('p').textContent})})</script>"
            )
            # sent (with the cookie when same-site) and refused by Sec-Fetch-Site: nothing applied,
            # checked below; the answer is not even handed to the other page, whatever its status
            # (Cross-Origin-Resource-Policy: same-origin)
            with page.expect_event("requestfailed", lambda r: r.url == f"{ui.base}/apply") as failed:
                page.goto(f"{local.base}/fetch")
            assert failed.value.method == "POST"
            assert "ERR_BLOCKED_BY_RESPONSE" in (failed.value.failure or ""), failed.value.failure
        # a link on the other port is a same-site navigation too: refused
        same_host.pages["/link"] = f'<a id="go" href="{ui.base}/apply">the page</a>'
        page.goto(f"{same_host.base}/link")
        with page.expect_response(f"{ui.base}/apply") as followed:
            page.click("#go")
        assert followed.value.status == 403
        # nothing applied, and the page itself (same-origin) still works
        assert_no_policy(cas, ui, name)
        home = page.goto(f"{ui.base}/")
        assert home is not None and home.status == 200 and name not in page.inner_text("main")


def test_the_cookie_goes_to_its_own_host_only(
    fresh_ui: Ui, browser: Any, cas_proc: CasProcess, tmp_path: Path
) -> None:
    """Browsers keep cookies per host, not per port: the default 127.X.Y.Z address keeps the
    page's cookie from the servers on 127.0.0.1, not from another port of 127.X.Y.Z (the gap
    docs/limitations.md names). With --listen 127.0.0.1:0 the servers on 127.0.0.1 get it."""
    ui = fresh_ui
    with context_of(browser) as context, Local(host_of(ui)) as same_host, Local("127.0.0.1") as loopback:
        log_in(context, ui)
        (cookie,) = context.cookies(ui.base)
        mine = f"{cookie['name']}={cookie['value']}"
        page = context.new_page()
        page.goto(f"{loopback.base}/visited")
        assert loopback.cookies["/visited"] is None  # 127.0.0.1 is another host
        page.goto(f"{same_host.base}/visited")
        assert same_host.cookies["/visited"] == mine  # another port of the same host: sent
    # the contrast: a page on 127.0.0.1 has its cookie sent to every other server there
    shared = start_ui(cas_proc, tmp_path / "shared", "--listen", "127.0.0.1:0")
    try:
        with context_of(browser) as context, Local("127.0.0.1") as loopback:
            log_in(context, shared)
            (cookie,) = context.cookies(shared.base)
            page = context.new_page()
            page.goto(f"{loopback.base}/visited")
            assert loopback.cookies["/visited"] == f"{cookie['name']}={cookie['value']}"
    finally:
        shared.stop()


# --- signing with the confirmation; the CSP ----------------------------------------------------------


def test_apply_asks_first_and_a_no_submits_nothing(ui: Ui, signed_in: Any, cas: Cas) -> None:
    name = "ui-browser-confirm"
    with closing(signed_in.new_page()) as page:
        posts: list[str] = []
        page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
        asked: list[str] = []

        def answer(dialog: Any, accept: bool) -> None:
            asked.append(f"{dialog.type}: {dialog.message}")
            dialog.accept() if accept else dialog.dismiss()

        page.goto(f"{ui.base}/apply")
        page.fill('textarea[name="yaml"]', pki_policy(name, "Browser CA"))
        page.once("dialog", lambda dialog: answer(dialog, False))
        page.click("text=sign and apply")
        assert asked == ["confirm: Sign and submit this policy?"]
        # the page stayed, its text kept; no request was made (checked after the second click:
        # had the first submitted, the page would have left the form)
        assert page.url == f"{ui.base}/apply" and name in page.input_value('textarea[name="yaml"]')
        page.once("dialog", lambda dialog: answer(dialog, True))
        with page.expect_navigation():
            page.click("text=sign and apply")
        assert len(asked) == 2
        assert posts == [f"{ui.base}/apply"]  # one POST: the accepted one
        assert "Applied" in page.inner_text("h1") and "(active)" in page.inner_text("main")
    assert cas.show(name, ui.identity).versions  # on the CAS


HOOK = "<script>alert(pwned=1)</script><svg onload=alert(pwned=2)>"  # a common name: 64 at most


def test_injected_script_does_not_run(ui: Ui, signed_in: Any, cas: Cas) -> None:
    """Markup in a field the page renders (a CA's common name in the policy's document, an
    unknown key on the apply error page) is text; and script put into the page's DOM is blocked
    by its Content-Security-Policy (no inline script, no inline handler)."""
    name = "ui-browser-csp"
    cas.apply(pki_policy(name, f"'{HOOK}'"), ui.identity)
    with closing(signed_in.new_page()) as page:
        dialogs: list[str] = []

        def answer(dialog: Any) -> None:  # the page's own question is accepted, any other recorded
            if dialog.message == "Sign and submit this policy?":
                dialog.accept()
            else:
                dialogs.append(dialog.message)
                dialog.dismiss()

        page.on("dialog", answer)
        page.goto(f"{ui.base}/policy?name={name}")
        assert page.evaluate("window.pwned") is None and dialogs == []
        assert HOOK in page.inner_text("main")  # shown as text, not run
        page.goto(f"{ui.base}/apply")
        page.fill('textarea[name="yaml"]', f'name: x\nversion: "0.3"\n"{HOOK}": 1\n')
        with page.expect_navigation():
            page.click("text=sign and apply")
        assert "The policy is invalid" in page.inner_text("main") and HOOK in page.inner_text("main")
        # put into the DOM as markup (as a page that failed to escape would): the CSP blocks it
        # (the image's error event comes after its onerror attribute would have run; the
        # violation reports are awaited, 10 s at most)
        ran = page.evaluate(
            """() => new Promise(resolve => {
                const seen = [];
                document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));
                const script = document.createElement('script');
                script.textContent = "window.pwned = 3; alert('inline')";
                document.body.append(script);
                const div = document.createElement('div');
                div.innerHTML = '<img src="/nothing" onerror="window.pwned = 4; alert(4)">';
                div.firstChild.addEventListener('error', () => {
                    const start = Date.now();
                    const done = () => (seen.length >= 2 || Date.now() - start > 10000)
                        ? resolve({pwned: window.pwned ?? null, seen: seen.sort()}) : setTimeout(done, 20);
                    done();
                });
                document.body.append(div);
            })"""
        )
        assert ran == {"pwned": None, "seen": ["script-src-attr", "script-src-elem"]}
        assert dialogs == []


# --- the verified history ----------------------------------------------------------------------------


def test_the_history_page_renders_the_verified_view(ui: Ui, signed_in: Any, cas: Cas) -> None:
    name = "ui-browser-history"
    created = cas.apply(pki_policy(name, "History CA"), ui.identity)
    with closing(signed_in.new_page()) as page:
        page.goto(f"{ui.base}/policy?name={name}")
        with page.expect_navigation():
            page.click("text=verified history")
        assert page.url == f"{ui.base}/policy/history?name={name}"
        first = page.inner_text("main")
        assert "First visit" in first and "policy.created" in first and created.hash in first
        assert name in ui.state.read_text()  # the state file remembers what it verified
        page.reload()
        assert "Consistent with your last visit" in page.inner_text("main")
