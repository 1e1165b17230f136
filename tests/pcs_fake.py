"""A fake Intel PCS (API v4) / PCCS on 127.0.0.1: a real threaded HTTP server serving the real
collateral of tests/assets the way PCS does (signed JSON bodies, URL-encoded issuer chains in
headers, the PCK CRL as DER, the Root CA CRL as a PCCS serves it: hex), recording every request.
``behaviour`` replaces the honest answer (a PCS that is down, slow, or answers garbage)."""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from confide.evidence.dcap import Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import pem_chain
from confide.verify.dcap import pck_info

Answer = tuple[int, bytes, dict[str, str]]


def _signed(key: str, text: bytes, signature: bytes) -> bytes:
    return b'{"' + key.encode() + b'":' + text + b',"signature":"' + signature.hex().encode() + b'"}'


class FakePcs:
    """Exact (path, query) -> answer; ``requests`` lists every path asked, in order."""

    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.behaviour: Callable[[str], Answer] | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append(self.path)
                behaviour = fake.behaviour
                if behaviour is not None:
                    status, body, headers = behaviour(self.path)
                else:
                    status, body, headers = fake.routes.get(self.path, (404, b"", {}))
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

    def honest(self, path: str) -> Answer:
        return self.routes.get(path, (404, b"", {}))

    def serve(self, quote: bytes, collateral: DcapCollateral) -> list[str]:
        """Serve ``collateral`` for the platform of ``quote`` (its FMSPC, PCK CA and TEE type);
        returns the four paths a fetch of it asks."""
        parsed = Quote.from_bytes(quote)
        fmspc, ca = pck_info(parsed)
        tee = "tdx" if parsed.tee == TeeType.TDX else "sgx"
        tcb_chain = urllib.parse.quote(pem_chain(collateral.tcb_info_issuer_chain))
        qe_chain = urllib.parse.quote(pem_chain(collateral.qe_identity_issuer_chain))
        crl_chain = urllib.parse.quote(pem_chain(collateral.pck_crl_issuer_chain))
        paths = [
            f"/{tee}/certification/v4/tcb?fmspc={fmspc.hex()}",
            f"/{tee}/certification/v4/qe/identity",
            f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der",
            "/sgx/certification/v4/rootcacrl",
        ]
        answers: list[Answer] = [
            (200, _signed("tcbInfo", collateral.tcb_info, collateral.tcb_info_signature),
             {"TCB-Info-Issuer-Chain": tcb_chain}),
            (200, _signed("enclaveIdentity", collateral.qe_identity, collateral.qe_identity_signature),
             {"SGX-Enclave-Identity-Issuer-Chain": qe_chain}),
            (200, collateral.pck_crl, {"SGX-PCK-CRL-Issuer-Chain": crl_chain}),
            (200, collateral.root_ca_crl.hex().encode(), {}),
        ]  # fmt: skip
        self.routes.update(zip(paths, answers, strict=True))
        return paths


@contextlib.contextmanager
def fake_pcs() -> Iterator[FakePcs]:
    """A running :class:`FakePcs`, shut down on exit."""
    server = FakePcs()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
