"""A vendor collateral service on 127.0.0.1 for tests: a real threaded HTTP server that answers
GET requests from exact (path, query) routes, or from ``behaviour`` when a test sets one (a
service that is down, slow or answers garbage), and records every path asked, in order. The
AMD KDS and Intel PCS fakes (``kds_fake``, ``pcs_fake``) add the vendor's paths and bodies."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

Answer = tuple[int, bytes, dict[str, str]]

S = TypeVar("S", bound="RouteServer")


class RouteServer:
    NOT_FOUND: Answer = (404, b"", {})

    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        """The request headers of each request, in order (names lower-cased)."""
        self.behaviour: Callable[[str], Answer] | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append(self.path)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                behaviour = fake.behaviour
                status, body, headers = (
                    behaviour(self.path) if behaviour is not None else fake.honest(self.path)
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def honest(self, path: str) -> Answer:
        """What the routes answer for ``path`` (404 when there is none)."""
        return self.routes.get(path, self.NOT_FOUND)

    def route(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.routes[path] = (status, body, headers or {})

    @classmethod
    @contextlib.contextmanager
    def running(cls: type[S]) -> Iterator[S]:
        """A running server of this class, shut down on exit."""
        server = cls()
        server.thread.start()
        try:
            yield server
        finally:
            server.server.shutdown()
            server.server.server_close()
            server.thread.join(timeout=5)
