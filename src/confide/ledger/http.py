"""The ledger over HTTP as C2SP tlog-tiles: a read-only server and the auditor's client.

:class:`TilesServer` serves ``<prefix>/checkpoint`` and ``<prefix>/tile/...`` from a ledger
database through :func:`~confide.ledger.serve.serve` (entry bundles only when
``serve_entries``: they reveal entry contents, see "who sees what" in docs/ledger.md).
:class:`HttpLogClient` is the auditor's one-method transport for such a server (or a CAS
serving the same paths).

Both servers here (:class:`TilesServer`, and the witness's server in
:mod:`confide.ledger.witness_http`) run on the CAS's hardened serving stack
(:mod:`confide.httpserve`: uvicorn on uvloop, httptools): connections limited in total and per
client, and closed over a limit before any TLS handshake; TLS handshakes, request heads and
bodies timed; heads bounded at :data:`~confide.httpserve.limits.PUBLIC_MAX_HEAD` bytes
(``431``); per-client rate limits (``429`` with ``Retry-After``). They speak HTTPS when given a
TLS context (:func:`server_tls_context`: TLS 1.2 or later, the certificate chain and key from
PEM files), or a :class:`~confide.httpserve.certreload.CertificateReloader` (the same, reloaded
on ``SIGHUP`` and, with ``--cert-reload-interval``, when the files change).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client import CONTENT_TYPE_LATEST

from confide.errors import AccessDeniedError, ConfideError, NetworkError, UsageError
from confide.httpbody import Answer, answer_client, fetch
from confide.httpserve.certreload import CertificateReloader, FileReloader, load_certificate_pair
from confide.httpserve.limits import (
    HANDSHAKE_TIMEOUT,
    HEAD_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    PUBLIC_MAX_HEAD,
    HttpLimits,
)
from confide.httpserve.metrics_listener import (
    ClientCertScrapers,
    MetricsAuth,
    MetricsClientAllowList,
    MetricsListenerApp,
    MetricsTokenFile,
    TokenSet,
    listener_limits,
    watch_handshakes,
)
from confide.httpserve.ratelimit import Rate, RateLimiter, client_key, retry_after
from confide.httpserve.server import Companion, HttpServer, bind, plain_server
from confide.ledger.metrics import METRICS_PATH, LedgerMetrics, tiles_route, tree_size_of
from confide.ledger.serve import serve
from confide.ledger.store import connect

__all__ = [
    "LEDGER_BODY_TIMEOUT",
    "MAX_ANSWER_TIME",
    "MAX_RESOURCE",
    "TILES_RATE",
    "WITNESS_RATE",
    "Answer",
    "HttpLogClient",
    "LedgerHTTPServer",
    "MetricsApp",
    "TilesApp",
    "TilesServer",
    "client_tls_context",
    "ledger_limits",
    "read_bounded",
    "server_tls_context",
]

MAX_RESOURCE = 1 << 24  # a full entry bundle is at most 256 * 65,537 bytes
# The longest one answer may take to arrive, whatever its pace, its connection, status line and
# headers included (the read timeout bounds each wait for more only): a log sending a byte every
# 29 s would hold its auditor for years. 120 s asks at least 140 kB/s of the largest resource (a
# full entry bundle); a tile is 8 KiB. The witness client's answers likewise.
MAX_ANSWER_TIME = 120.0
# A 429's Retry-After the auditor's client waits out (RFC 9110 §10.2.3), at most this long
# each time and this many times per resource; longer, or more often, is a failure.
MAX_RETRY_WAIT = 10.0
MAX_RETRIES = 5


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) from a PEM certificate chain and its key,
    checked to match (:func:`~confide.httpserve.certreload.load_certificate_pair`); a context
    that cannot be reloaded (``CertificateReloader`` for one that can)."""
    return load_certificate_pair(cert, key).context


def client_tls_context(cacert: Path) -> ssl.SSLContext:
    """A client context that trusts only the certificates in CACERT (PEM), read as a regular
    file (bounded, without blocking: a FIFO is refused, not waited on by OpenSSL)."""
    from confide.cas.client import read_cert_file, tls_trusting  # noqa: PLC0415

    return tls_trusting(read_cert_file(cacert, "--cacert"), f"--cacert {cacert}")


def read_bounded(
    client: httpx2.Client,
    method: str,
    url: str,
    limit: int,
    *,
    within: float,
    trace: Callable[[str, dict[str, Any]], None] | None = None,
    unreachable: str = "",
    **kwargs: Any,
) -> Answer:
    """One request whose answer is read up to ``limit`` bytes (after any content decoding), all
    of it (connection, status line, headers and body) within ``within`` seconds
    (:func:`confide.httpbody.fetch`): a larger answer, declared (``Content-Length``) or sent, or
    a slower one, is a :class:`NetworkError` and read no further, so a hostile log or witness
    cannot make its client read, nor wait, without bound. ``client``: one keeping no connection
    alive (:func:`confide.httpbody.answer_client`); ``trace``: the caller's own ``trace``
    extension (:func:`confide.httpbody.fetch`); ``unreachable``: added to the error when nothing
    could be connected to (what to do)."""
    try:
        return fetch(
            client, method, url, limit=limit, within=within, trace=trace,
            too_large=lambda how: NetworkError(f"{method} {url}: the answer {how}"),
            **kwargs,
        )  # fmt: skip
    except httpx2.InvalidURL as exc:  # a port that is not a number, a broken IPv6 address
        raise UsageError(f"{method} {url[:120]!r}: not a valid URL: {exc}") from None
    except httpx2.ConnectError as exc:
        raise NetworkError(f"{method} {url}: {exc}{unreachable}") from None
    except httpx2.HTTPError as exc:
        raise NetworkError(f"{method} {url}: {exc}") from None


# No connection to a log at all: most often a CAS stopped, or started again on another port.
LOG_NOT_LISTENING = (
    "; is the log served there? 'confide cas serve' writes its log's address (CONFIDE_LOG_URL) into"
    " its client.env when it starts: source that one"
)


def _cas_refusal(body: bytes) -> bool:
    """Whether ``body`` is a CAS's error answer of class ``AccessDeniedError`` (``{"error":
    {"class": ..., "message": ...}}``, confide.cas.app)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to read
        return False
    error = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(error, dict) and error.get("class") == AccessDeniedError.__name__


class HttpLogClient:
    """``fetch(path)`` = ``GET <base_url>/<path>``; ``None`` on 404. A ``429`` (a server's
    per-client rate limit) is retried after its ``Retry-After`` seconds, up to
    :data:`MAX_RETRIES` times and :data:`MAX_RETRY_WAIT` seconds each."""

    def __init__(self, base_url: str, *, client: httpx2.Client | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        # client: one that keeps no connection alive (a CasClient's, answer_client's)
        self._client = client or answer_client(timeout=timeout)
        self._owned = client is None

    def fetch(self, path: str) -> bytes | None:
        url = f"{self.base_url}/{path}"
        for attempt in range(MAX_RETRIES + 1):
            # Read no more than the largest resource a log serves (an entry bundle).
            resp = read_bounded(
                self._client, "GET", url, MAX_RESOURCE, within=MAX_ANSWER_TIME, unreachable=LOG_NOT_LISTENING
            )
            if resp.status_code != 429 or attempt == MAX_RETRIES:
                break
            wait = resp.headers.get("retry-after", "")
            # RFC 9110 §10.2.3 delay-seconds = 1*DIGIT, ASCII digits only: str.isdigit() alone
            # takes "²" (int() then raises ValueError) and 5,000 nines (int() refuses that many).
            if not (wait.isascii() and wait.isdigit() and len(wait) <= 4) or int(wait) > MAX_RETRY_WAIT:
                raise NetworkError(f"GET {url}: HTTP 429, Retry-After {wait[:20]!r}")
            time.sleep(int(wait))
        if resp.status_code == 404:
            return None
        if resp.status_code == 403 and path.startswith("tile/entries/") and _cas_refusal(resp.content):
            # A CAS serves no entry bundles (each stakeholder reads its policies' entries with
            # inclusion proofs): an audit of every entry (`ledger verify --full`) needs the
            # database, a stakeholder's audits its policies' (`--full --identity`, docs/ledger.md).
            # Refused, not a transport failure.
            # Only the CAS's own refusal says so: another 403 (a proxy's, a web server's) is
            # an HTTP failure like any other, not a reason to point at a CAS and --log-db.
            raise AccessDeniedError(
                f"GET {url}: this log does not serve its entries (a CAS gives each stakeholder its "
                "policies' entries); --full at a CAS needs --identity FILE (the entries of the "
                "policies it may read; identity= in the SDK), or the log database (--log-db) for all"
            )
        if resp.status_code != 200:
            raise NetworkError(f"GET {url}: HTTP {resp.status_code}, expected 200")
        return resp.content

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def __enter__(self) -> HttpLogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The defaults of `confide ledger serve` and `confide ledger witness serve` (docs/ledger.md
# "Serving"). Connections: those of the CAS. Request heads: a GET of a short path or a POST
# with a Content-Length, which need no large header (PUBLIC_MAX_HEAD). Bodies: an
# add-checkpoint request is at most 1 MiB (MAX_REQUEST_SIZE), 30 s allows 35 KB/s.
LEDGER_BODY_TIMEOUT = 30.0
# Per client: tile and checkpoint reads (one SQLite read each), 200 a second, 400 at once: an
# auditor fetching a log of a million entries (~8,000 tiles and bundles) takes ~40 s, and
# HttpLogClient waits out a 429's Retry-After. add-checkpoint requests (a signature check, a
# consistency proof and a durable state write each): 10 a second, 20 at once; a log asks once
# per checkpoint (twice when the witness knows an older size).
TILES_RATE = Rate(200.0, 400.0)
WITNESS_RATE = Rate(10.0, 20.0)

_TEXT = b"text/plain; charset=utf-8"

Headers = list[tuple[bytes, bytes]]


def ledger_limits(
    *,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    head_timeout: float = HEAD_TIMEOUT,
    body_timeout: float = LEDGER_BODY_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> HttpLimits:
    """The connection limits and timeouts of a ledger server (request heads: at most
    :data:`~confide.httpserve.limits.PUBLIC_MAX_HEAD` bytes; refusals logged as ``confide.ledger``)."""
    return HttpLimits(
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_client,
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        handshake_timeout=handshake_timeout,
        max_head=PUBLIC_MAX_HEAD,
        log_name="confide.ledger",
    )


async def reply(send: Any, status: int, body: bytes, headers: Headers, *, head_only: bool = False) -> None:
    """An ASGI response with ``Content-Length``; no body for ``HEAD``."""
    raw = [(b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def refuse_rate(
    send: Any,
    limiter: RateLimiter | None,
    scope: Any,
    *,
    close: bool = False,
    metrics: LedgerMetrics | None = None,
    route: str = "",
) -> bool:
    """Answer ``429 Too Many Requests`` (RFC 6585 §4) with ``Retry-After`` (RFC 9110 §10.2.3)
    when the client (:func:`~confide.httpserve.ratelimit.client_key`) has no token left in
    ``limiter``; whether it did (counted and logged in ``metrics``, as ``route``). ``close``:
    the request's body is left unread, so the connection is closed after the answer."""
    if limiter is None:
        return False
    client = scope.get("client")
    wait = limiter.take(client_key(str(client[0])) if client else "")
    if not wait:
        return False
    if metrics is not None:
        metrics.refuse("rate-limited", scope, route, 429)
    headers: Headers = [(b"content-type", _TEXT), (b"retry-after", retry_after(wait).encode())]
    if close:
        headers.append((b"connection", b"close"))
    body = b"too many requests from this address; retry later\n"
    await reply(send, 429, body, headers, head_only=scope["method"] == "HEAD")
    return True


def request_target(scope: Any) -> str:
    """The request target as sent (undecoded path, and query when there is one): what the
    ledger's routes are matched against, so that an escaped or suffixed path is not a route."""
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    target = raw + b"?" + query if query else raw
    return str(target.decode("latin-1"))


class LedgerHTTPServer(HttpServer):
    """A ledger server (an ASGI ``app`` under an optional path ``prefix``) on the shared hardened
    stack (:class:`~confide.httpserve.server.HttpServer`); ``url`` is its base URL.
    ``metrics_listen``: ``HOST:PORT`` of a plain-HTTP listener of its own for ``/metrics``
    (``--metrics-listen``, :mod:`confide.httpserve.metrics_listener`; ``metrics_url``), on the
    same event loop, with limits of the values of the server's; the server's listener then
    answers ``/metrics`` 404. ``metrics_tokens``: the bearer tokens ``/metrics`` requires
    wherever it is served (``--metrics-token-file``: a
    :class:`~confide.httpserve.metrics_listener.MetricsTokenFile` is reloaded on ``SIGHUP`` and
    polled as the certificates are). ``metrics_tls``: the metrics listener serves HTTPS with
    that certificate (``--metrics-cert``, ``--metrics-key``; reloaded as ``tls`` is); when it
    requires client certificates (``--metrics-client-ca``), scrapers are named and counted by
    them (:class:`~confide.httpserve.metrics_listener.ClientCertScrapers`), and ``metrics_allow``
    (``--metrics-client-allow``) lists those served; its failed TLS handshakes are counted and
    logged (:func:`~confide.httpserve.metrics_listener.watch_handshakes`)."""

    thread_name = "ledger-http"

    def __init__(
        self,
        app: Any,
        address: tuple[str, int],
        *,
        prefix: str = "",
        tls: ssl.SSLContext | CertificateReloader | None = None,
        metrics: LedgerMetrics,
        route: Callable[[str], str],
        limiter: RateLimiter | None,
        metrics_listen: tuple[str, int] | None = None,
        metrics_tokens: TokenSet | MetricsTokenFile | None = None,
        metrics_tls: CertificateReloader | None = None,
        metrics_allow: MetricsClientAllowList | None = None,
    ) -> None:
        if metrics_tls is not None and metrics_listen is None:
            raise UsageError("--metrics-cert and --metrics-key need --metrics-listen")
        self.prefix = prefix.rstrip("/")
        self.metrics = metrics  # /metrics, and the refusal log (confide.ledger.metrics)
        auth = MetricsAuth(metrics_tokens, metrics.refusals) if metrics_tokens is not None else None
        self.metrics_auth = auth  # the tokens /metrics requires, and its clients' refused scrapes
        self.metrics_tls = metrics_tls
        reloaders: list[FileReloader[Any]] = []
        if auth is not None:
            metrics.registry.register(auth)  # and the token file's reloads
            if auth.reloader is not None:
                reloaders.append(auth.reloader)
        if isinstance(tls, CertificateReloader):
            metrics.registry.register(tls)  # confide_tls_certificate_reloads_total, notAfter
        if metrics_tls is not None:
            metrics.registry.register(metrics_tls)  # confide_metrics_tls_certificate_...
            reloaders.append(metrics_tls)
        if metrics_allow is not None:
            if metrics_tls is None or metrics_tls.client_ca is None:
                raise UsageError("--metrics-client-allow needs --metrics-client-ca")
            reloaders.append(metrics_allow)
        self.metrics_allow = metrics_allow
        companions: list[Companion] = []
        self.metrics_address: tuple[str, int] | None = None
        self.metrics_limits: HttpLimits | None = None  # the metrics listener's
        if metrics_listen is not None:
            try:
                sock = bind(metrics_listen)
            except OSError as exc:
                host, port = metrics_listen
                reason = exc.strerror or exc
                raise UsageError(f"--metrics-listen: cannot bind {host}:{port}: {reason}") from None
            self.metrics_address = sock.getsockname()[:2]
            limits = self.metrics_limits = listener_limits(metrics.limits)
            refusals = metrics.refusals
            limits.on_refusal = lambda reason, client: refusals.log(reason, client, listener="metrics")
            client_certs = None
            if metrics_tls is not None and metrics_tls.client_ca is not None:  # named by certificate
                client_certs = ClientCertScrapers(logger="confide.ledger", tls=metrics_tls)
            if metrics_tls is not None:  # a failed handshake counted by reason and logged
                watch_handshakes(limits, refusals)
            listener = MetricsListenerApp(
                metrics.render, auth=auth, limits=limits, client_certs=client_certs, allow=metrics_allow,
                refusals=refusals,
            )  # fmt: skip
            metrics.registry.register(listener)
            companions.append((plain_server(listener, limits, metrics_tls), sock))
        app = MetricsApp(app, metrics, route, limiter, on_api=metrics_listen is None, auth=auth)
        super().__init__(
            app, address, limits=metrics.limits, tls=tls, companions=companions, reloaders=reloaders
        )

    @property
    def url(self) -> str:
        host, port = self.server_address
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}{self.prefix}"

    @property
    def metrics_url(self) -> str | None:
        """The metrics listener's ``/metrics`` URL (``None`` without one)."""
        if self.metrics_address is None:
            return None
        host, port = self.metrics_address
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.metrics_tls else 'http'}://{shown}:{port}{METRICS_PATH}"


class TilesApp:
    """The tlog-tiles ASGI application of :class:`TilesServer`: ``GET``/``HEAD`` of
    ``<prefix>/checkpoint`` and ``<prefix>/tile/...`` (:func:`~confide.ledger.serve.serve`, in
    a worker thread, one read-only connection per request), any other method ``501``."""

    def __init__(
        self,
        db: Path,
        *,
        prefix: str,
        serve_entries: bool,
        limiter: RateLimiter | None,
        metrics: LedgerMetrics | None = None,
    ) -> None:
        self.db, self.prefix, self.serve_entries, self.limiter = db, prefix, serve_entries, limiter
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await reply(
                send, 501, b"unsupported method\n", [(b"content-type", _TEXT), (b"connection", b"close")]
            )
            return
        target = request_target(scope)
        if await refuse_rate(
            send, self.limiter, scope, metrics=self.metrics, route=tiles_route(target, self.prefix)
        ):
            return
        status, body, content_type, cache = await asyncio.to_thread(self._resource, target)
        headers = [(b"content-type", content_type), (b"cache-control", cache)]
        await reply(send, status, body, headers, head_only=head_only)

    def _resource(self, path: str) -> tuple[int, bytes, bytes, bytes]:
        prefix = self.prefix + "/"
        if not path.startswith(prefix):
            return 404, b"not found\n", _TEXT, b"no-store"
        rel = path[len(prefix) :]
        if rel.startswith("tile/entries/") and not self.serve_entries:
            return 404, b"entries are not public here\n", _TEXT, b"no-store"
        try:
            conn = connect(self.db, durable=False)
            try:
                resource = serve(conn, rel)
            finally:
                conn.close()
        except (ConfideError, sqlite3.Error):
            return 500, b"internal error\n", _TEXT, b"no-store"
        if resource is None:
            return 404, b"not found\n", _TEXT, b"no-store"
        # tlog-tiles: the checkpoint must not be cached beyond a few seconds; tiles are immutable.
        cache = b"public, max-age=31536000, immutable" if resource.immutable else b"no-cache"
        return 200, resource.body, resource.content_type.encode(), cache


class MetricsApp:
    """ASGI middleware of a ledger server: ``GET``/``HEAD /metrics`` answered here (rate-limited
    as the server's other reads; with ``auth``, only with its bearer token, else ``401``), every
    answer counted by ``route(target)`` and status. ``on_api=False`` (a metrics listener of its
    own serves them): ``GET``/``HEAD /metrics`` is a ``404`` here, as an unknown path."""

    def __init__(
        self,
        app: Any,
        metrics: LedgerMetrics,
        route: Callable[[str], str],
        limiter: RateLimiter | None,
        *,
        on_api: bool = True,
        auth: MetricsAuth | None = None,
    ) -> None:
        self.app, self.metrics, self.route, self.limiter = app, metrics, route, limiter
        self.on_api, self.auth = on_api, auth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = request_target(scope)
        route = self.route(target)
        metrics = target == METRICS_PATH and scope["method"] in ("GET", "HEAD")
        if metrics and not self.on_api:
            route = "other"
        status = 0

        async def counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            head_only = scope["method"] == "HEAD"
            if metrics and not self.on_api:
                not_found = [(b"content-type", _TEXT), (b"cache-control", b"no-store")]
                await reply(counted, 404, b"not found\n", not_found, head_only=head_only)
            elif metrics:
                if await refuse_rate(counted, self.limiter, scope, metrics=self.metrics, route=route):
                    return
                refused = self.auth.refusal(scope, "api") if self.auth is not None else None
                if refused is not None:
                    code, headers, text = refused
                    await reply(counted, code, text, headers, head_only=head_only)
                else:
                    body = await asyncio.to_thread(self.metrics.render)
                    headers = [
                        (b"content-type", CONTENT_TYPE_LATEST.encode()),
                        (b"cache-control", b"no-store"),
                    ]
                    await reply(counted, 200, body, headers, head_only=scope["method"] == "HEAD")
            else:
                await self.app(scope, receive, counted)
        finally:
            if status:
                self.metrics.request(route, status)


class TilesServer(LedgerHTTPServer):
    """``confide ledger serve``: ``TilesServer(db, ("127.0.0.1", 0))``; ``serve_in_thread()``
    for embedding. ``rate``: per-client requests a second (``None``: no limit).
    ``metrics_listen``, ``metrics_tokens``, ``metrics_tls``, ``metrics_allow``: see
    :class:`LedgerHTTPServer`."""

    thread_name = "ledger-tiles"

    def __init__(
        self,
        db: Path,
        address: tuple[str, int],
        *,
        prefix: str = "",
        serve_entries: bool = False,
        tls: ssl.SSLContext | CertificateReloader | None = None,
        limits: HttpLimits | None = None,
        rate: Rate | None = TILES_RATE,
        metrics_listen: tuple[str, int] | None = None,
        metrics_tokens: TokenSet | MetricsTokenFile | None = None,
        metrics_tls: CertificateReloader | None = None,
        metrics_allow: MetricsClientAllowList | None = None,
    ) -> None:
        self.db = Path(db)
        self.serve_entries = serve_entries
        self.limiter = RateLimiter(rate) if rate is not None else None
        metrics = LedgerMetrics(limits if limits is not None else ledger_limits())
        metrics.extra = tree_size_of(self.db)
        prefix = prefix.rstrip("/")
        app = TilesApp(
            self.db, prefix=prefix, serve_entries=serve_entries, limiter=self.limiter, metrics=metrics
        )
        super().__init__(
            app, address, prefix=prefix, tls=tls, metrics=metrics, limiter=self.limiter,
            route=lambda target: tiles_route(target, prefix), metrics_listen=metrics_listen,
            metrics_tokens=metrics_tokens, metrics_tls=metrics_tls, metrics_allow=metrics_allow,
        )  # fmt: skip
