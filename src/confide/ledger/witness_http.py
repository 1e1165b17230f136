"""tlog-witness over HTTP: the witness's ``POST <prefix>/add-checkpoint`` and the log's client.

The server is the standard library's threading HTTP server (the witness is small and has
one route), over TLS when given a context (``ledger witness serve --tls-cert/--tls-key``). The client side
(:func:`request_cosignatures`) is what a log runs after signing a checkpoint: it sends the
checkpoint with a consistency proof from the size the witness last cosigned (learning that
size from a 409 reply), and attaches the returned cosignatures to the stored checkpoint.
"""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

import httpx2

from confide.errors import ConfideError, NetworkError, ParseError, StorageError
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn
from confide.ledger.http import CONNECTION_TIMEOUT, LedgerHTTPServer
from confide.ledger.note import Note, NoteSignature, NoteVerifier, open_note, parse_note
from confide.ledger.store import Ledger
from confide.ledger.witness import (
    MAX_REQUEST_SIZE,
    Witness,
    WitnessConflictError,
    http_status,
    parse_add_checkpoint,
)

__all__ = ["WitnessServer", "request_cosignatures"]

ADD_CHECKPOINT = "/add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"


class _Handler(BaseHTTPRequestHandler):
    server: WitnessServer
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT  # a stalled handshake or body holds its thread this long at most

    def log_message(self, format: str, *args: object) -> None:  # quiet; no request data logged
        return

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        if close:  # the request body was not read: this connection cannot carry another request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path != self.server.prefix + ADD_CHECKPOINT:
            self._reply(404, b"not found\n", close=True)
            return
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_SIZE:
            self._reply(400, b"a Content-Length of at most 1 MiB is required\n", close=True)
            return
        body = self.rfile.read(length)
        witness = self.server.witness
        origin_known = True
        try:
            old_size, proof, note = parse_add_checkpoint(body)
            origin = Checkpoint.from_text(parse_note(note).text).origin
            origin_known = origin in witness.logs
            cosig = witness.add_checkpoint(old_size, proof, note, at=datetime.now(UTC))
        except WitnessConflictError as exc:
            self._reply(409, f"{exc.known_size}\n".encode(), SIZE_CONTENT_TYPE)
            return
        except ConfideError as exc:
            status = http_status(exc, origin_known=origin_known)
            self._reply(status, f"{exc.kind}: {exc.message}\n".encode())
            return
        self._reply(200, cosig.line().encode("utf-8"))


class WitnessServer(LedgerHTTPServer):
    """``WitnessServer(witness, ("127.0.0.1", 0))``; ``serve_in_thread()`` for embedding."""

    thread_name = "ledger-witness"

    def __init__(
        self,
        witness: Witness,
        address: tuple[str, int],
        *,
        prefix: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.witness = witness
        super().__init__(address, _Handler, prefix=prefix, tls=tls)


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
) -> NoteSignature:
    """Get the witness's cosignature on the latest checkpoint and store it with the checkpoint."""
    ledger = ledger or Ledger()
    raw = Ledger.latest_checkpoint(conn)
    if raw is None:
        raise StorageError("the log has no checkpoint to have cosigned")
    note = parse_note(raw)
    checkpoint = Checkpoint.from_text(note.text)
    others = tuple(s for s in note.signatures if (s.name, s.key_id) != (witness_key.name, witness_key.key_id))
    bare = Note(note.text, others).to_bytes()
    http = client or httpx2.Client(timeout=10.0)
    try:
        old = 0
        for _ in range(2):
            proof = ledger.consistency_proof(conn, old, checkpoint.size) if old else []
            try:
                resp = http.post(witness_url.rstrip("/") + ADD_CHECKPOINT, content=_body(old, proof, bare))
            except httpx2.HTTPError as exc:
                raise NetworkError(f"witness {witness_url}: {exc}") from None
            if resp.status_code == 409 and resp.headers.get("content-type", "").startswith(SIZE_CONTENT_TYPE):
                text = resp.text.strip()
                if not text.isdigit() or int(text) > checkpoint.size:
                    raise NetworkError(
                        f"witness {witness_url}: it knows size {text[:20]!r}, the log is at {checkpoint.size}"
                    )
                old = int(text)
                continue
            if resp.status_code != 200:
                raise NetworkError(f"witness {witness_url}: HTTP {resp.status_code}: {resp.text[:200]}")
            cosigned = bare + resp.content
            try:
                _, verified = open_note(cosigned, [witness_key])
            except ParseError as exc:
                raise NetworkError(f"witness {witness_url}: malformed cosignature: {exc.message}") from None
            sig = verified[0]
            stored = Note(note.text, (*others, sig))
            Ledger.store_checkpoint_note(conn, checkpoint.size, stored.to_bytes())
            return sig
        raise NetworkError(f"witness {witness_url}: conflicting sizes twice")
    finally:
        if client is None:
            http.close()
