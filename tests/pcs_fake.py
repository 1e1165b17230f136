"""A fake Intel PCS (API v4) / PCCS on 127.0.0.1: a real threaded HTTP server serving the real
collateral of tests/assets the way PCS does (signed JSON bodies, URL-encoded issuer chains in
headers, the PCK CRL as DER, the Root CA CRL as a PCCS serves it: hex), recording every request.
``behaviour`` replaces the honest answer (a PCS that is down, slow, or answers garbage)."""

from __future__ import annotations

import contextlib
import re
import urllib.parse

from cryptography import x509

from confide.collateral.dcap import verify_pck_certificate
from confide.evidence.dcap import PckCertId, Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.pem import pem_chain
from confide.verify.dcap import pck_info, pck_lookup
from http_fake import Answer, RouteServer


def _signed(key: str, text: bytes, signature: bytes) -> bytes:
    return b'{"' + key.encode() + b'":' + text + b',"signature":"' + signature.hex().encode() + b'"}'


_EVALUATION_PARAMETER = re.compile(r"[?&]tcbEvaluationDataNumber=[0-9]+$")


class FakePcs(RouteServer):
    """Exact (path, query) -> answer; ``requests`` lists every path asked, in order."""

    ignores_evaluation_number = False
    """A PCCS that ignores ``tcbEvaluationDataNumber``: a TCB Info or QE Identity request with it
    and no route of its own gets the answer to the request without it (``serve(honour_update=False)``)."""

    def honest(self, path: str) -> Answer:
        answer = self.routes.get(path)
        if answer is None and self.ignores_evaluation_number:
            answer = self.routes.get(_EVALUATION_PARAMETER.sub("", path))
        return answer if answer is not None else self.NOT_FOUND

    def serve_pck(self, cert_id: PckCertId, pck: PckCertificate) -> list[str]:
        """Serve ``pck`` as Intel PCS API v4 "Get PCK Certificate V4" does (PEM leaf; issuer
        chain, TCBm, FMSPC and CA type in headers) at both the PCS form (by encrypted PPID, for
        type 3) and the PCCS form (by QE ID) of the request for ``cert_id``; returns the
        paths."""
        want = pck_lookup(cert_id)
        ext = verify_pck_certificate(pck)
        ca_cn = x509.load_der_x509_certificate(pck.issuer_chain[0]).subject.rfc4514_string()
        ca = "platform" if "Platform CA" in ca_cn else "processor"
        tcb = f"cpusvn={want.cpu_svn.hex()}&pcesvn={want.pce_svn_le.hex()}&pceid={want.pce_id.hex()}"
        paths = [f"/sgx/certification/v4/pckcert?qeid={want.qe_id.hex()}&{tcb}"]
        if cert_id.encrypted_ppid is not None and cert_id.cert_type == 3:
            paths[0] += f"&encrypted_ppid={cert_id.encrypted_ppid.hex()}"
            paths.append(f"/sgx/certification/v4/pckcert?encrypted_ppid={cert_id.encrypted_ppid.hex()}&{tcb}")
        headers = {
            "Content-Type": "application/x-pem-file",
            "SGX-PCK-Certificate-Issuer-Chain": urllib.parse.quote(pem_chain(pck.issuer_chain)),
            "SGX-TCBm": (ext.cpu_svn + ext.pce_svn.to_bytes(2, "little")).hex().upper(),
            "SGX-FMSPC": ext.fmspc.hex().upper(),
            "SGX-PCK-Certificate-CA-Type": ca,
        }
        for path in paths:
            self.routes[path] = (200, pem_chain([pck.leaf]).encode(), headers)
        return paths

    def serve(
        self,
        quote: bytes,
        collateral: DcapCollateral,
        pck: PckCertificate | None = None,
        *,
        update: str | None = None,
        honour_update: bool = True,
        evaluation: int | None = None,
    ) -> list[str]:
        """Serve ``collateral`` for the platform of ``quote`` (its FMSPC, PCK CA and TEE type;
        for a quote of certification data type 1-4, of the PCK certificate ``pck``); returns the
        four paths a fetch of it asks. As Intel PCS API v4, TCB Info and QE Identity take the
        query parameter ``update``: ``update="early"`` serves this TCB Info and QE Identity to
        requests with ``update=early`` only; otherwise (``None`` or ``"standard"``) to those
        without the parameter (PCS's default) and with ``update=standard``; the paths returned
        are the ones asked with ``update``. ``evaluation=N``: as PCS's ``tcbEvaluationDataNumber``
        parameter, this TCB Info and QE Identity are served to requests with
        ``tcbEvaluationDataNumber=N`` only (the paths returned are those). ``honour_update=False``: a
        PCCS that ignores ``update`` and ``tcbEvaluationDataNumber`` (the same answers whatever
        it asks for)."""
        assert update is None or evaluation is None, "update and evaluation are exclusive"
        parsed = Quote.from_bytes(quote)
        fmspc, ca = pck_info(parsed, pck)
        tee = "tdx" if parsed.tee == TeeType.TDX else "sgx"
        tcb_chain = urllib.parse.quote(pem_chain(collateral.tcb_info_issuer_chain))
        qe_chain = urllib.parse.quote(pem_chain(collateral.qe_identity_issuer_chain))
        crl_chain = urllib.parse.quote(pem_chain(collateral.pck_crl_issuer_chain))
        tcb_path = f"/{tee}/certification/v4/tcb?fmspc={fmspc.hex()}"
        qe_path = f"/{tee}/certification/v4/qe/identity"
        asked = (
            f"update={update}" if update else f"tcbEvaluationDataNumber={evaluation}" if evaluation else ""
        )
        paths = [
            tcb_path + (f"&{asked}" if asked else ""),
            qe_path + (f"?{asked}" if asked else ""),
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
        self.ignores_evaluation_number = not honour_update
        kinds = (
            (None, "early", "standard")
            if not honour_update
            else (None, "standard")
            if update != "early" and evaluation is None
            else ()
        )
        for kind in kinds:  # the same answers to the other forms of the request
            self.routes[tcb_path + (f"&update={kind}" if kind else "")] = answers[0]
            self.routes[qe_path + (f"?update={kind}" if kind else "")] = answers[1]
        return paths


def serve_tcb_evaluation_numbers(pcs: FakePcs, tee: str, body: bytes, chain: tuple[bytes, ...]) -> str:
    """Serve Intel PCS's ``GET /{tee}/certification/v4/tcbevaluationdatanumbers`` answer
    ``body`` (its issuer chain URL-encoded in ``TCB-Evaluation-Data-Numbers-Issuer-Chain``, as
    Intel PCS API v4 does); returns the path."""
    path = f"/{tee}/certification/v4/tcbevaluationdatanumbers"
    headers = {
        "Content-Type": "application/json",
        "TCB-Evaluation-Data-Numbers-Issuer-Chain": urllib.parse.quote(pem_chain(chain)),
    }
    pcs.routes[path] = (200, body, headers)
    return path


def fake_pcs() -> contextlib.AbstractContextManager[FakePcs]:
    """A running :class:`FakePcs`, shut down on exit."""
    return FakePcs.running()
