"""A fake OCSP responder (RFC 6960 Appendix A.1, HTTP POST) on 127.0.0.1 for tests: it parses
each request, counts it, and answers through a behaviour function (normally a response signed
under a test PKI with ``nvidia_forge.ocsp_response``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from pki import Issuer

# (asked certificate, its issuer, the request's nonce or None) -> (HTTP status, body)
Behaviour = Callable[[x509.Certificate, Issuer, bytes | None], tuple[int, bytes]]


class FakeOcsp:
    """Answers about the certificates of ``known`` (serial -> (certificate, issuer)) through
    ``behaviour``; about any other serial with responseStatus ``unauthorized`` (§2.3).
    ``requests``: (Content-Type, serial) of every request, in order."""

    def __init__(
        self, known: Mapping[int, tuple[x509.Certificate, Issuer]], behaviour: Behaviour | None = None
    ) -> None:
        self.known = dict(known)
        self.behaviour = behaviour
        self.requests: list[tuple[str, int]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ocsp.load_der_ocsp_request(body)
                fake.requests.append((self.headers["Content-Type"], req.serial_number))
                try:
                    nonce: bytes | None = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
                except x509.ExtensionNotFound:
                    nonce = None
                if req.serial_number in fake.known and fake.behaviour is not None:
                    cert, issuer = fake.known[req.serial_number]
                    status, out = fake.behaviour(cert, issuer, nonce)
                else:
                    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(
                        ocsp.OCSPResponseStatus.UNAUTHORIZED
                    )
                    status, out = 200, unauthorized.public_bytes(Encoding.DER)
                self.send_response(status)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def served(self) -> list[int]:
        """The serial numbers asked about, in order."""
        return [serial for _, serial in self.requests]

    def start(self) -> FakeOcsp:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket: a later connection is refused."""
        if self.server.socket.fileno() == -1:
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
