"""An ASGI application served on the shared hardened stack, in the foreground or in a thread.

:class:`HttpServer` binds its socket when made (so that a bad ``--listen`` fails before
anything is printed, and port 0 is known at once), then runs uvicorn on uvloop with httptools
over it: plain HTTP with connections admitted by :meth:`HttpLimits.plain_protocol`, or TLS
with uvloop's TLS protocol put under httptools by :meth:`HttpLimits.tls_protocol`, so that a
connection over a limit is closed before its handshake, exactly as ``confide cas serve`` does
(:mod:`confide.httpserve.limits`). The ledger's servers (``confide ledger serve``, ``confide
ledger witness serve``) run on it.

:func:`plain_server` and :class:`ServerWithCompanions` run a second plain-HTTP listener (the
CAS's ``--public-http-listen``, every server's ``--metrics-listen``) on the same event loop as
the main one, with connection limits of its own.

Given a :class:`~confide.httpserve.certreload.CertificateReloader` for ``tls`` (the certificate
files of ``--tls-cert``/``--tls-key``), the server reloads them on ``SIGHUP`` (when it runs in
the main thread) and every ``poll_interval`` seconds when they changed, off the event loop; new
connections get the new certificate, open ones keep theirs. So it does with the other
:class:`~confide.httpserve.certreload.FileReloader` it is given (``reloaders``: the metrics
listener's certificate of ``--metrics-cert``/``--metrics-key``, served by :func:`plain_server`
with ``tls``, and the tokens of ``--metrics-token-file``).

:func:`reserve_descriptors` raises the open-files limit to what the connection limits need.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from confide.errors import UsageError
from confide.httpserve.certreload import CertificateReloader, FileReloader
from confide.httpserve.limits import HttpLimits

__all__ = [
    "RESERVED_DESCRIPTORS",
    "Companion",
    "HttpServer",
    "ServerWithCompanions",
    "bind",
    "plain_server",
    "reserve_descriptors",
]

# File descriptors a server needs besides its connections: its database, its WAL and journal,
# caches, log files, the listening socket, outgoing fetches.
RESERVED_DESCRIPTORS = 256


def reserve_descriptors(max_connections: int, public_max_connections: int = 0) -> None:
    """Raise the soft limit of open files (up to the hard one) to what ``max_connections`` (and
    a second listener's ``public_max_connections``) and the server's own files need; refuse to
    start when the hard limit is lower. Past the limit, accept() would fail and the database
    could not open its files."""
    if not max_connections:
        return
    needed = max_connections + public_max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"--max-connections {max_connections}: needs {needed} open files, the hard limit is {hard}"
            f" (raise it, e.g. LimitNOFILE= in a systemd unit, or lower --max-connections)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def bind(address: tuple[str, int], backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``address`` (IPv6 when the host has a colon); ``OSError`` when
    it cannot be bound."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


GRACEFUL_SHUTDOWN = 5  # seconds a stopping companion gives its open connections

Companion = tuple[uvicorn.Server, socket.socket]
"""A second listener's server (:func:`plain_server`) and its bound socket."""


def plain_server(app: Any, limits: HttpLimits, tls: CertificateReloader | None = None) -> uvicorn.Server:
    """A second listener's uvicorn server: plain HTTP/1.1 (httptools), connections admitted by
    :meth:`HttpLimits.plain_protocol`, request heads bounded and timed as there; no lifespan,
    no proxy headers. It handles no signal: the :class:`ServerWithCompanions` it is given to
    stops it. ``tls``: HTTPS instead, with the certificate in use of that reloader (each
    connection admitted before its handshake, :meth:`HttpLimits.tls_protocol`, as the main
    listener's); the :class:`ServerWithCompanions` is given the reloader too (``reloaders``)."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        http=limits.plain_protocol() if tls is None else limits.http_protocol(),
        proxy_headers=False,
        lifespan="off",
        loop="uvloop",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    if tls is not None:
        config.load()
        config.http_protocol_class = limits.tls_protocol(config.http_protocol_class, tls)  # type: ignore[assignment]
    return _CompanionServer(config)


class _CompanionServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the main server's handlers stop both


class ServerWithCompanions(uvicorn.Server):
    """uvicorn's server, also running ``companions`` (:func:`plain_server`, each with its
    socket) on its loop: started once this one has started; this one stops when one of them
    fails; stopped, and waited for, when this one shuts down (before uvicorn re-raises the
    signal that stopped it). ``reloaders``: the operator's files (certificates, the metrics
    token file) reloaded on ``SIGHUP`` (in the main thread only: signals are delivered there;
    signals that come while a file's reload is queued or running make one more, not one each), each
    polled every ``poll_interval`` seconds (when not 0), each reload in a worker thread. From the
    start of the shutdown on, ``SIGHUP`` is ignored (``SIG_IGN``, not put back): a reload is
    pointless then, and its default action would end the process mid-shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        companions: Sequence[Companion] = (),
        reloaders: Sequence[FileReloader[Any]] = (),
    ) -> None:
        super().__init__(config)
        self.companions = tuple(companions)
        self.reloaders = tuple(reloaders)
        self._companion_tasks: list[asyncio.Task[None]] = []
        self._poll_tasks: list[asyncio.Task[None]] = []
        self._sighup = False
        self._sighup_lock = threading.Lock()
        self._sighup_busy: set[FileReloader[Any]] = set()  # a SIGHUP reload queued or running
        self._sighup_again: set[FileReloader[Any]] = set()  # signalled again meanwhile

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            loop = asyncio.get_running_loop()
            for server, sock in self.companions:
                self._companion_tasks.append(loop.create_task(server.serve(sockets=[sock])))
            if self.reloaders:
                self._start_reloading(loop, self.reloaders)

    def _start_reloading(
        self, loop: asyncio.AbstractEventLoop, reloaders: Sequence[FileReloader[Any]]
    ) -> None:
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup, loop, reloaders)
            self._sighup = True
        for reloader in reloaders:
            if reloader.poll_interval > 0:
                self._poll_tasks.append(loop.create_task(self._poll(loop, reloader)))

    def _on_sighup(self, loop: asyncio.AbstractEventLoop, reloaders: Sequence[FileReloader[Any]]) -> None:
        # reading and parsing the files, off the loop; reload() logs and counts its failures. A
        # burst of signals runs at most one reload of each file at a time, and one more after
        # it (the files may have changed after they were read), not one per signal: each would
        # hold a worker of the default executor, which also renders /metrics and serves requests.
        for reloader in reloaders:
            with self._sighup_lock:
                if reloader in self._sighup_busy:
                    self._sighup_again.add(reloader)
                    continue
                self._sighup_busy.add(reloader)
            loop.run_in_executor(None, self._sighup_reload, reloader)

    def _sighup_reload(self, reloader: FileReloader[Any]) -> None:
        while True:
            reloader.reload("SIGHUP")
            with self._sighup_lock:
                if reloader not in self._sighup_again:
                    self._sighup_busy.discard(reloader)
                    return
                self._sighup_again.discard(reloader)  # signalled while reloading: once more

    @staticmethod
    async def _poll(loop: asyncio.AbstractEventLoop, reloader: FileReloader[Any]) -> None:
        while True:
            await asyncio.sleep(reloader.poll_interval)
            await loop.run_in_executor(None, reloader.poll)

    async def on_tick(self, counter: int) -> bool:
        if any(task.done() for task in self._companion_tasks):
            return True  # a companion listener stopped (failed): so does the server
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        tasks = list(self._companion_tasks)
        for server, _sock in self.companions:
            server.should_exit = True
        if self._sighup:
            # No more reloads, and no default action either: removing the handler put SIGHUP's
            # back (end the process), so that a SIGHUP during the graceful shutdown (a reload
            # sent by a script, a closed terminal) killed it before its connections were done.
            # Ignored from here on, for the rest of the process.
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            self._sighup = False
        for task in self._poll_tasks:
            task.cancel()
        self._poll_tasks = []
        try:
            await super().shutdown(sockets)
        finally:
            for task in tasks:
                await task  # its failure, if it failed, is the server's


class HttpServer:
    """``app`` (ASGI 3) on ``address`` with ``limits``, over TLS with ``tls`` (a server
    context). ``serve_forever()`` runs it in this thread until SIGINT or SIGTERM (uvicorn's
    graceful shutdown, then the signal is re-raised); ``serve_in_thread()`` runs it in a daemon
    thread, returned once the server accepts connections, until ``shutdown()``.
    ``server_close()`` closes the listening socket (and the companions'). ``companions``: second
    listeners (:func:`plain_server`, each with its bound socket) served on the same loop.
    ``tls`` may be a :class:`CertificateReloader` (certificate files reloaded on ``SIGHUP`` and
    when polled, :class:`ServerWithCompanions`), as may be each of ``reloaders`` (the
    companions' files: the metrics listener's certificate, its token file)."""

    thread_name = "http"

    def __init__(
        self,
        app: Any,
        address: tuple[str, int],
        *,
        limits: HttpLimits | None = None,
        tls: ssl.SSLContext | CertificateReloader | None = None,
        companions: Sequence[Companion] = (),
        reloaders: Sequence[FileReloader[Any]] = (),
    ) -> None:
        self.limits = limits if limits is not None else HttpLimits()
        self.tls = tls
        self.companions = tuple(companions)
        self.reloaders = (tls, *reloaders) if isinstance(tls, CertificateReloader) else tuple(reloaders)
        try:
            self.socket = bind(address)
        except BaseException:
            self._close_companions()
            raise
        try:
            self._server = self._uvicorn(app)
        except BaseException:
            self.socket.close()
            self._close_companions()
            raise
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._thread: threading.Thread | None = None

    def _uvicorn(self, app: Any) -> uvicorn.Server:
        tls = self.tls
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            # TLS: httptools with bounded heads and bodies, under uvloop's TLS protocol (below);
            # plain: each connection admitted when accepted.
            http=self.limits.http_protocol() if tls is not None else self.limits.plain_protocol(),
            # A client is the address it connects from (connection and rate limits).
            proxy_headers=False,
            lifespan="off",
            loop="uvloop",
            timeout_graceful_shutdown=5,
        )
        config.load()
        if tls is not None:
            http = config.http_protocol_class
            config.http_protocol_class = self.limits.tls_protocol(http, tls)  # type: ignore[assignment]
        return ServerWithCompanions(config, self.companions, self.reloaders)

    def serve_forever(self) -> None:
        self._server.run(sockets=[self.socket])

    def serve_in_thread(self, timeout: float = 10.0) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=self.thread_name, daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:  # uvicorn sets it once its listener is up
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.thread_name}: the server did not start")
            time.sleep(0.005)
        return thread

    def shutdown(self) -> None:
        """Stop a server started by ``serve_in_thread`` and wait for it (open connections get
        uvicorn's graceful shutdown, at most 5 s)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def server_close(self) -> None:
        self.socket.close()
        self._close_companions()

    def _close_companions(self) -> None:
        for _server, sock in self.companions:
            sock.close()
