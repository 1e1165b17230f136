"""A fake Intel PCS (API v4) / PCCS on 127.0.0.1: a real threaded HTTP server serving the real
collateral of tests/assets the way PCS does (signed JSON bodies, URL-encoded issuer chains in
headers, the PCK CRL as DER, the Root CA CRL as a PCCS serves it: hex), recording every request.
``behaviour`` replaces the honest answer (a PCS that is down, slow, or answers garbage)."""

from __future__ import annotations

import contextlib
import urllib.parse

from confide.evidence.dcap import Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import pem_chain
from confide.verify.dcap import pck_info
from http_fake import Answer, RouteServer


def _signed(key: str, text: bytes, signature: bytes) -> bytes:
    return b'{"' + key.encode() + b'":' + text + b',"signature":"' + signature.hex().encode() + b'"}'


class FakePcs(RouteServer):
    """Exact (path, query) -> answer; ``requests`` lists every path asked, in order."""

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


def fake_pcs() -> contextlib.AbstractContextManager[FakePcs]:
    """A running :class:`FakePcs`, shut down on exit."""
    return FakePcs.running()
