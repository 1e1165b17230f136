"""The ledger over HTTP as C2SP tlog-tiles: a read-only server and the auditor's client.

:class:`TilesServer` serves ``<prefix>/checkpoint`` and ``<prefix>/tile/...`` from a ledger
database through :func:`~confide.ledger.serve.serve` (entry bundles only when
``serve_entries``: they reveal entry contents, see "who sees what" in docs/ledger.md).
:class:`HttpLogClient` is the auditor's one-method transport for such a server (or a CAS
serving the same paths).

Both servers here (:class:`TilesServer`, and the witness's server in
:mod:`confide.ledger.witness_http`) speak HTTPS when given a TLS context
(:func:`server_tls_context`: TLS 1.2 or later, the certificate chain and key from PEM files).
The handshake runs in the connection's own thread, never in the accepting one, so a client
that stalls in it holds one thread until the per-connection timeout, not the server.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2

from confide.errors import ConfideError, NetworkError, UsageError
from confide.ledger.serve import serve
from confide.ledger.store import connect

__all__ = ["HttpLogClient", "TilesServer", "client_tls_context", "server_tls_context"]

MAX_RESOURCE = 1 << 24  # a full entry bundle is at most 256 * 65,537 bytes
CONNECTION_TIMEOUT = 30.0  # seconds a connection may stay silent (handshake, request line, body)


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) from a PEM certificate chain and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise UsageError(f"--tls-cert/--tls-key: {exc.filename!s} does not exist") from None
    except ssl.SSLError as exc:
        raise UsageError(
            f"--tls-cert/--tls-key: cannot load {cert} with {key} ({exc.reason or exc}): PEM "
            "certificate chain and its unencrypted private key expected"
        ) from None
    except OSError as exc:
        raise UsageError(f"--tls-cert/--tls-key: {exc.strerror or exc}") from None
    return ctx


def client_tls_context(cacert: Path) -> ssl.SSLContext:
    """A client context that trusts only the certificates in CACERT (PEM)."""
    try:
        return ssl.create_default_context(cafile=str(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--cacert: cannot load {cacert}: {exc}") from None


class HttpLogClient:
    """``fetch(path)`` = ``GET <base_url>/<path>``; ``None`` on 404."""

    def __init__(self, base_url: str, *, client: httpx2.Client | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx2.Client(timeout=timeout)
        self._owned = client is None

    def fetch(self, path: str) -> bytes | None:
        url = f"{self.base_url}/{path}"
        try:
            resp = self._client.get(url)
        except httpx2.HTTPError as exc:
            raise NetworkError(f"GET {url}: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise NetworkError(f"GET {url}: HTTP {resp.status_code}, expected 200")
        if len(resp.content) > MAX_RESOURCE:
            raise NetworkError(f"GET {url}: {len(resp.content)} bytes, expected at most {MAX_RESOURCE}")
        return resp.content

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def __enter__(self) -> HttpLogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server: TilesServer
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        return

    def _reply(self, status: int, body: bytes, content_type: str, cache: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        prefix = self.server.prefix + "/"
        path = self.path
        if not path.startswith(prefix):
            self._reply(404, b"not found\n", "text/plain; charset=utf-8", "no-store")
            return
        rel = path[len(prefix) :]
        if rel.startswith("tile/entries/") and not self.server.serve_entries:
            self._reply(404, b"entries are not public here\n", "text/plain; charset=utf-8", "no-store")
            return
        try:
            conn = connect(self.server.db, durable=False)
            try:
                resource = serve(conn, rel)
            finally:
                conn.close()
        except (ConfideError, sqlite3.Error):
            self._reply(500, b"internal error\n", "text/plain; charset=utf-8", "no-store")
            return
        if resource is None:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8", "no-store")
            return
        # tlog-tiles: the checkpoint must not be cached beyond a few seconds; tiles are immutable.
        cache = "public, max-age=31536000, immutable" if resource.immutable else "no-cache"
        self._reply(200, resource.body, resource.content_type, cache)


class LedgerHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP(S) server under an optional path prefix, embeddable with ``serve_in_thread``.

    With ``tls`` (a server context), each accepted connection is wrapped without a handshake;
    the handshake happens on the handler thread's first read (OpenSSL's ``SSL_read`` performs
    it), bounded by the handler's timeout. A failed handshake or a dropped connection costs that
    connection only, and is reported as one line on stderr, without a traceback.
    """

    daemon_threads = True
    thread_name = "ledger-http"

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        prefix: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.tls = tls
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}{self.prefix}"

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.tls is None:
            return sock, addr
        try:
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr
        except (OSError, ValueError):
            sock.close()
            raise

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or type(exc).__name__
            print(f"{self.thread_name}: connection from {client_address}: {reason}", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=self.thread_name, daemon=True)
        thread.start()
        return thread


class TilesServer(LedgerHTTPServer):
    thread_name = "ledger-tiles"

    def __init__(
        self,
        db: Path,
        address: tuple[str, int],
        *,
        prefix: str = "",
        serve_entries: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.db = Path(db)
        self.serve_entries = serve_entries
        super().__init__(address, _Handler, prefix=prefix, tls=tls)
