"""A fake AMD KDS on 127.0.0.1: a real threaded HTTP server that answers exact (path, query)
routes and records every request (AMD 57230 "KDS Interface" paths: ``/vcek/v1/{product}/{hwid}
?blSPL=..``, ``/vcek/v1/{product}/cert_chain``, ``/vcek/v1/{product}/crl``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide.collateral.amd_kds import AmdCollateralRequest
from confide.evidence.sev_snp import AttestationReport
from http_fake import RouteServer

if TYPE_CHECKING:
    from snp_fakes import FakeAmd


def vcek_path(report: bytes) -> str:
    """The KDS path of the VCEK that signed ``report`` (a v3+ report: it names its product)."""
    parsed = AttestationReport.from_bytes(report)
    assert parsed.cpuid_product is not None
    request = AmdCollateralRequest.for_report(parsed, parsed.cpuid_product)
    return f"/{request.product_dir()}/{request.hwid}?{urlencode(request.query)}"


class FakeKds(RouteServer):
    """A fake AMD KDS: exact (path, query) -> (status, body, headers); records every request."""

    NOT_FOUND = (404, b"Not Found", {})

    def serve_amd(self, amd: FakeAmd, *, crl: x509.CertificateRevocationList | None = None) -> str:
        """Serve ``amd``'s VCEK (at the KDS path for its chip and TCB), its chain and ``crl``;
        returns the VCEK's path."""
        path = vcek_path(amd.sign(amd.report()))
        self.route(path, amd.vek.public_bytes(serialization.Encoding.DER))
        self.route(f"/vcek/v1/{amd.product}/cert_chain", amd.chain_pem())
        if crl is not None:
            self.route(f"/vcek/v1/{amd.product}/crl", crl.public_bytes(serialization.Encoding.DER))
        return path


def fake_kds() -> contextlib.AbstractContextManager[FakeKds]:
    """A running :class:`FakeKds`, shut down on exit."""
    return FakeKds.running()
