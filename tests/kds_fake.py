"""A fake AMD KDS on 127.0.0.1: a real threaded HTTP server that answers exact (path, query)
routes and records every request (AMD 57230 "KDS Interface" paths: ``/vcek/v1/{product}/{hwid}
?blSPL=..``, ``/vcek/v1/{product}/cert_chain``, ``/vcek/v1/{product}/crl``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.collateral.amd_kds import AmdCollateralRequest
from confide.evidence.sev_snp import AttestationReport

if TYPE_CHECKING:
    from snp_fakes import FakeAmd


def vcek_path(report: bytes) -> str:
    """The KDS path of the VCEK that signed ``report`` (a v3+ report: it names its product)."""
    parsed = AttestationReport.from_bytes(report)
    assert parsed.cpuid_product is not None
    request = AmdCollateralRequest.for_report(parsed, parsed.cpuid_product)
    return f"/{request.product_dir()}/{request.hwid}?{urlencode(request.query)}"


class FakeKds:
    """A fake AMD KDS: exact (path, query) -> (status, body, headers); records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                status, body, headers = fake.routes.get(self.path, (404, b"Not Found", {}))
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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.routes[path] = (status, body, headers or {})

    def serve_amd(self, amd: FakeAmd, *, crl: x509.CertificateRevocationList | None = None) -> str:
        """Serve ``amd``'s VCEK (at the KDS path for its chip and TCB), its chain and ``crl``;
        returns the VCEK's path."""
        path = vcek_path(amd.sign(amd.report()))
        self.route(path, amd.vek.public_bytes(serialization.Encoding.DER))
        self.route(f"/vcek/v1/{amd.product}/cert_chain", amd.chain_pem())
        if crl is not None:
            self.route(f"/vcek/v1/{amd.product}/crl", crl.public_bytes(serialization.Encoding.DER))
        return path


@contextlib.contextmanager
def fake_kds() -> Iterator[FakeKds]:
    """A running :class:`FakeKds`, shut down on exit."""
    server = FakeKds()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)
