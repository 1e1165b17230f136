"""tlog-witness over HTTP: the witness's ``POST <prefix>/add-checkpoint`` and the log's client.

The server (:class:`WitnessServer`) runs on the CAS's hardened serving stack
(:mod:`confide.httpserve`, through :class:`~confide.ledger.http.LedgerHTTPServer`: connection
limits, timed handshakes, heads and bodies, a per-client rate limit), over TLS when given a
context (``ledger witness serve --tls-cert/--tls-key``). The client side
(:func:`request_cosignatures`) is what a log runs after signing a checkpoint: it sends the
checkpoint with a consistency proof from the size the witness last cosigned (learning that
size from a 409 reply), and attaches the returned cosignatures to the stored checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from confide.errors import ConfideError, LogRollbackError, NetworkError, ParseError, StorageError
from confide.httpbody import answer_client
from confide.httpserve.certreload import CertificateReloader
from confide.httpserve.limits import HttpLimits
from confide.httpserve.metrics_listener import MetricsClientAllowList, MetricsTokenFile, TokenSet
from confide.httpserve.ratelimit import Rate, RateLimiter
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn, write_transaction
from confide.ledger.http import (
    MAX_ANSWER_TIME,
    WITNESS_RATE,
    LedgerHTTPServer,
    ledger_limits,
    read_bounded,
    refuse_rate,
    reply,
    request_target,
)
from confide.ledger.metrics import METRICS_PATH, LedgerMetrics
from confide.ledger.note import MAX_NOTE_SIZE, Note, NoteSignature, NoteVerifier, open_note, parse_note
from confide.ledger.store import Ledger
from confide.ledger.witness import (
    MAX_REQUEST_SIZE,
    Witness,
    WitnessConflictError,
    http_status,
    parse_add_checkpoint,
)

__all__ = ["WitnessApp", "WitnessServer", "request_cosignatures"]

ADD_CHECKPOINT = "/add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_TEXT = b"text/plain; charset=utf-8"


class WitnessApp:
    """The ASGI application of :class:`WitnessServer`: ``POST <prefix>/add-checkpoint``
    (c2sp.org/tlog-witness "add-checkpoint"). A body needs a ``Content-Length`` of at most
    :data:`~confide.ledger.witness.MAX_REQUEST_SIZE` bytes (else ``400``, unread, the
    connection closed); it is processed by :meth:`Witness.add_checkpoint` in a worker thread
    (the witness's lock serialises the checks and the atomic state write, as before). Any
    other path ``404``, any other method ``501`` (both closing the connection)."""

    def __init__(
        self,
        witness: Witness,
        *,
        prefix: str,
        limiter: RateLimiter | None,
        metrics: LedgerMetrics | None = None,
    ) -> None:
        self.witness, self.path, self.limiter = witness, prefix + ADD_CHECKPOINT, limiter
        self.metrics = metrics
        self.cosignatures: dict[str, int] = {}  # issued since the start, by origin (/metrics)

    def route(self, target: str) -> str:
        """The ``route`` label of a request target (never the target itself)."""
        return "add-checkpoint" if target == self.path else "metrics" if target == METRICS_PATH else "other"

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The witness's own metrics: cosignatures issued and the size cosigned last, by origin."""
        issued = CounterMetricFamily(
            "confide_witness_cosignatures", "Cosignatures issued since the start", labels=["origin"]
        )
        for origin, n in sorted(self.cosignatures.copy().items()):
            issued.add_metric([origin], n)
        yield issued
        sizes = GaugeMetricFamily(
            "confide_witness_tree_size", "Size of the checkpoint cosigned last", labels=["origin"]
        )
        for origin in sorted(self.witness.logs):
            try:
                latest = self.witness.latest(origin)
            except ConfideError:
                continue  # no gauge rather than a wrong one
            if latest is not None:
                sizes.add_metric([origin], latest.size)
        yield sizes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _text(send, 501, b"unsupported method\n", close=True)
            return
        if request_target(scope) != self.path:
            await _text(send, 404, b"not found\n", close=True)
            return
        length = -1
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = int(value) if value.isdigit() and len(value) < 12 else -1
            elif name == b"transfer-encoding":
                length = -1
                break
        if not 0 <= length <= MAX_REQUEST_SIZE:
            if self.metrics is not None:
                self.metrics.refuse("body-limit", scope, "add-checkpoint", 400)
            await _text(send, 400, b"a Content-Length of at most 1 MiB is required\n", close=True)
            return
        if await refuse_rate(
            send, self.limiter, scope, close=True, metrics=self.metrics, route="add-checkpoint"
        ):
            return
        body = await _read(receive, length)
        if body is None:
            return  # the client left
        status, reply_body, content_type, origin = await asyncio.to_thread(self._add_checkpoint, body)
        if status == 200:  # on the event loop's thread, as every count
            self.cosignatures[origin] = self.cosignatures.get(origin, 0) + 1
        await _text(send, status, reply_body, content_type)

    def _add_checkpoint(self, body: bytes) -> tuple[int, bytes, bytes, str]:
        witness = self.witness
        origin_known = True
        origin = ""
        try:
            old_size, proof, note = parse_add_checkpoint(body)
            origin = Checkpoint.from_text(parse_note(note).text).origin
            origin_known = origin in witness.logs
            cosig = witness.add_checkpoint(old_size, proof, note, at=datetime.now(UTC))
        except WitnessConflictError as exc:
            return 409, f"{exc.known_size}\n".encode(), SIZE_CONTENT_TYPE.encode(), origin
        except ConfideError as exc:
            status = http_status(exc, origin_known=origin_known)
            return status, f"{exc.kind}: {exc.message}\n".encode(), _TEXT, origin
        return 200, cosig.line().encode("utf-8"), _TEXT, origin


async def _text(
    send: Any, status: int, body: bytes, content_type: bytes = b"", *, close: bool = False
) -> None:
    headers = [(b"content-type", content_type or _TEXT)]
    if close:  # the request body was not read: this connection cannot carry another request
        headers.append((b"connection", b"close"))
    await reply(send, status, body, headers)


async def _read(receive: Any, length: int) -> bytes | None:
    """The request body of ``length`` bytes (its Content-Length: httptools delivers no more)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(chunks)
            return body if len(body) == length else None


class WitnessServer(LedgerHTTPServer):
    """``confide ledger witness serve``: ``WitnessServer(witness, ("127.0.0.1", 0))``;
    ``serve_in_thread()`` for embedding. ``rate``: per-client add-checkpoint requests a second
    (``None``: no limit). ``metrics_listen``, ``metrics_tokens``, ``metrics_tls``, ``metrics_allow``: see
    :class:`~confide.ledger.http.LedgerHTTPServer`."""

    thread_name = "ledger-witness"

    def __init__(
        self,
        witness: Witness,
        address: tuple[str, int],
        *,
        prefix: str = "",
        tls: ssl.SSLContext | CertificateReloader | None = None,
        limits: HttpLimits | None = None,
        rate: Rate | None = WITNESS_RATE,
        metrics_listen: tuple[str, int] | None = None,
        metrics_tokens: TokenSet | MetricsTokenFile | None = None,
        metrics_tls: CertificateReloader | None = None,
        metrics_allow: MetricsClientAllowList | None = None,
    ) -> None:
        self.witness = witness
        self.limiter = RateLimiter(rate) if rate is not None else None
        metrics = LedgerMetrics(limits if limits is not None else ledger_limits())
        app = WitnessApp(witness, prefix=prefix.rstrip("/"), limiter=self.limiter, metrics=metrics)
        metrics.extra = app.collect
        super().__init__(
            app, address, prefix=prefix, tls=tls, metrics=metrics, route=app.route, limiter=self.limiter,
            metrics_listen=metrics_listen, metrics_tokens=metrics_tokens, metrics_tls=metrics_tls,
            metrics_allow=metrics_allow,
        )  # fmt: skip


def _body(old_size: int, proof: list[bytes], note: bytes) -> bytes:
    lines = [f"old {old_size}\n".encode()] + [base64.b64encode(p) + b"\n" for p in proof]
    return b"".join(lines) + b"\n" + note


def request_cosignatures(
    conn: Conn,
    witness_url: str,
    witness_key: NoteVerifier,
    *,
    ledger: Ledger | None = None,
    client: httpx2.Client | None = None,
    note: bytes | None = None,
    old_size: int = 0,
    trace: Callable[[str, dict[str, Any]], None] | None = None,
) -> NoteSignature:
    """Get the witness's cosignature on a checkpoint and store it with the checkpoint.

    ``note``: the signed checkpoint to have cosigned (default: the latest stored one); its
    cosignature is stored only while the stored checkpoint of its size has the same text.
    ``old_size``: the size the witness is believed to have cosigned last (sent first; a 409
    tells the right one, c2sp.org/tlog-witness "add-checkpoint": the response body of a 409 is
    the size the witness knows). ``trace``: the ``trace`` extension of each request (an
    :class:`~confide.httpbody.AnswerDeadline`'s, which shuts the connection down when its time is
    up or it is aborted: give a client that keeps no connection alive).

    Errors: the witness's word that this log does not extend what it cosigned is a
    :class:`~confide.errors.LogRollbackError` (a 409 naming a larger size than the checkpoint's:
    rolled back; a 409 naming the very size we sent, which the witness answers for another root
    of that size: forked; a 422 for the consistency proof from the size it cosigned: forked).
    Anything else (unreachable, another status, a malformed answer) is a
    :class:`~confide.errors.NetworkError`."""
    ledger = ledger or Ledger()
    raw = note if note is not None else Ledger.latest_checkpoint(conn)
    if raw is None:
        raise StorageError("the log has no checkpoint to have cosigned")
    parsed = parse_note(raw)
    checkpoint = Checkpoint.from_text(parsed.text)
    others = tuple(
        s for s in parsed.signatures if (s.name, s.key_id) != (witness_key.name, witness_key.key_id)
    )
    bare = Note(parsed.text, others).to_bytes()
    http = client or answer_client(timeout=10.0)  # client: one keeping no connection alive
    try:
        old = old_size if 0 <= old_size <= checkpoint.size else 0
        for _ in range(3):  # a witness another writer of this origin moves meanwhile: asked again
            proof = ledger.consistency_proof(conn, old, checkpoint.size) if old else []
            url = witness_url.rstrip("/") + ADD_CHECKPOINT
            try:
                # A witness answers signature lines, a size or a short error: read no more than a
                # whole note may be (MAX_NOTE_SIZE, which parse_note refuses past anyway).
                # and in no more time than a log's answer (a witness dripping it would hold the log).
                resp = read_bounded(
                    http, "POST", url, MAX_NOTE_SIZE, within=MAX_ANSWER_TIME, trace=trace,
                    content=_body(old, proof, bare),
                )  # fmt: skip
            except NetworkError as exc:
                raise NetworkError(f"witness {witness_url}: {exc.message}") from None
            if resp.status_code == 409 and resp.headers.get("content-type", "").startswith(SIZE_CONTENT_TYPE):
                text = resp.text.strip()
                # "the tree size ... in decimal" (tlog-witness "add-checkpoint"): ASCII digits only;
                # str.isdigit() alone also takes superscripts (int() then raises ValueError, which
                # no caller expects) and other scripts' digits.
                if not (text.isascii() and text.isdigit()) or len(text) > 19:
                    raise NetworkError(
                        f"witness {witness_url}: got size {text[:20]!r} in its 409, expected a number"
                    )
                known = int(text)
                if known > checkpoint.size:
                    raise LogRollbackError(
                        f"witness {witness_url} cosigned size {known} of {checkpoint.origin}, this log"
                        f" holds {checkpoint.size}: its database was rolled back (or a forked copy grew)"
                    )
                if known == old:  # old was the witness's size: it holds another root for it
                    raise LogRollbackError(
                        f"witness {witness_url} cosigned another tree of size {known} of"
                        f" {checkpoint.origin} than this log's: a copy of its database forked"
                    )
                old = known
                continue
            if resp.status_code == 422 and old:
                raise LogRollbackError(
                    f"witness {witness_url} refused the consistency proof from size {old}, the size it"
                    f" cosigned, to {checkpoint.size} of {checkpoint.origin}: this log does not extend the"
                    " tree it cosigned (a copy of its database forked)"
                )
            if resp.status_code != 200:
                raise NetworkError(f"witness {witness_url}: HTTP {resp.status_code}: {resp.text[:200]}")
            cosigned = bare + resp.content
            try:
                # tlog-witness "add-checkpoint": the 200 body is "a sequence of one or more note
                # signature lines" on *this* checkpoint. Opened after it, anything else (a blank
                # line and more text) would move the note's text past the checkpoint, and a
                # cosignature of that other text would verify and be counted and stored.
                if parse_note(cosigned).text != parsed.text:
                    raise NetworkError(
                        f"witness {witness_url}: answered more than signature lines on the checkpoint"
                    )
                _, verified = open_note(cosigned, [witness_key])
            except ParseError as exc:
                raise NetworkError(f"witness {witness_url}: malformed cosignature: {exc.message}") from None
            sig = verified[0]
            _store_cosignature(conn, checkpoint.size, parsed.text, witness_key, sig, given=note is not None)
            return sig
        raise NetworkError(f"witness {witness_url}: its size changed three times while asked")
    finally:
        if client is None:
            http.close()


def _store_cosignature(
    conn: Conn, size: int, text: str, witness_key: NoteVerifier, sig: NoteSignature, *, given: bool
) -> None:
    """Add ``sig`` to the stored checkpoint of ``size`` (replacing the witness's earlier one unless
    that one's timestamp is as late or later), read again now, in one write transaction with its
    row locked: other witnesses' cosignatures stored meanwhile are kept, and one stored by
    another thread while this one writes (the CAS asks its witnesses concurrently) is not lost.
    A checkpoint that was given (not read from the store) and is no longer the stored one of its
    size (another signer's, replacing it) is left alone: the cosignature is not for it."""
    with write_transaction(conn):
        stored = Ledger.checkpoint_note(conn, size, lock=True)
        if stored is None:
            if given:
                return
            raise StorageError(f"no checkpoint of size {size} is stored")
        current = parse_note(stored)
        if current.text != text:
            if given:
                return
            raise StorageError(f"the stored checkpoint of size {size} changed while it was being cosigned")
        mine = (witness_key.name, witness_key.key_id)
        kept = tuple(s for s in current.signatures if (s.name, s.key_id) != mine)
        # The newest of the witness's cosignatures stays: the same checkpoint is cosigned again (a
        # quiet log, every RECOSIGN_SECONDS), so an earlier answer of the witness verifies again,
        # and one replayed by whoever is on the path to it (an http:// witness) must not put an
        # older timestamp in place of a newer one (verifiers with --max-age would find the log
        # stale).
        stamp = _stamp(sig)
        if any((s.name, s.key_id) == mine and _stamp(s) >= stamp for s in current.signatures):
            return
        Ledger.store_checkpoint_note(conn, size, Note(text, (*kept, sig)).to_bytes())


def _stamp(sig: NoteSignature) -> int:
    """The timestamp of a cosignature/v1 line (its first 8 bytes, big-endian)."""
    return int.from_bytes(sig.signature[:8], "big")
