"""``confide cas serve --nvidia-ocsp``: a real CAS process (TLS, uvicorn) asking a fake OCSP
responder on 127.0.0.1 about the real NVIDIA sample chain (tests/assets/nvidia, which verifies to
the pinned NVIDIA Device Identity CA). The fake cannot sign for NVIDIA's issuers, so the CAS
must refuse, fail closed, before the binding check that refuses the sample otherwise."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cas_harness import CasProcess
from cli import run_confide
from confide import errors
from confide.cas.client import CasClient
from confide.verify.nvidia import ocsp_targets
from confide.verify.x509util import load_certificate_chain
from gpu_cas import NV_CHAIN, sample_gpu_request
from nvidia_forge import make_ca, ocsp_response
from ocsp_responder import FakeOcsp


def test_cas_serve_refuses_an_unusable_location(tmp_path: Path) -> None:
    proc = run_confide(
        "cas", "serve", "--data-dir", tmp_path / "cas", "--listen", "127.0.0.1:0", "--dev",
        "--nvidia-ocsp", tmp_path / "absent", timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--nvidia-ocsp" in proc.stdout + proc.stderr and "is not a directory" in proc.stdout + proc.stderr


@pytest.mark.parametrize("with_option", [True, False])
def test_cas_serve_asks_the_responder_and_fails_closed(tmp_path: Path, with_option: bool) -> None:
    responder = FakeOcsp({}).start()  # knows no certificate: answers "unauthorized" (§2.3)
    extra = ("--nvidia-ocsp", responder.url) if with_option else ()
    cas = CasProcess(tmp_path / "cas", None, extra_args=extra).start()
    try:
        with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
            if with_option:
                with pytest.raises(
                    errors.CollateralError, match=r"revocation check: .* responseStatus UNAUTHORIZED"
                ):
                    client.attest(sample_gpu_request(client.nonce()))
                # Asked once, by the prefetch, about the first certificate after the leaf; it stops
                # there (phase 1 refuses there), and phase 1 reports its error without asking again.
                chain = load_certificate_chain(NV_CHAIN, "chain")
                assert responder.served() == [ocsp_targets(chain)[0][0].serial_number]
            else:
                # Without the option nothing is asked: the sample is refused at its (fixed) nonce.
                with pytest.raises(errors.BindingError, match="nvidia-gpu nonce"):
                    client.attest(sample_gpu_request(client.nonce()))
                assert responder.requests == []
    finally:
        cas.stop()
        responder.stop()
    assert cas.log is not None
    lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["nvidia_ocsp"] is with_option


def test_cas_serve_stapled_only_asks_nobody(tmp_path: Path) -> None:
    """``--nvidia-ocsp stapled``: the sample sent without a stapled response is refused for the
    missing response, and with one signed by a key that is not its issuer's, for the signer;
    over TLS, in a real CAS process that has no responder to ask."""
    chain = load_certificate_chain(NV_CHAIN, "chain")
    stranger = make_ca("Not NVIDIA", datetime.now(UTC))
    now = datetime.now(UTC)
    forged = [
        ocsp_response(cert, issuer, stranger, this_update=now, next_update=now + timedelta(hours=1))
        for cert, issuer in ocsp_targets(chain)
    ]
    extra = ("--nvidia-ocsp", "stapled", "--nvidia-ocsp-max-age", "12 hours")
    cas = CasProcess(tmp_path / "cas", None, extra_args=extra).start()
    try:
        with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
            with pytest.raises(
                errors.CollateralMissingError, match=r"no stapled OCSP response about certificate 1"
            ):
                client.attest(sample_gpu_request(client.nonce()))
            request = sample_gpu_request(client.nonce())
            for i, der in enumerate(forged, start=1):
                request["aux"][f"ocsp:{i}"] = base64.b64encode(der).decode()
            with pytest.raises(
                errors.CertificateChainError, match="nor a certificate carried in the response"
            ):
                client.attest(request)
    finally:
        cas.stop()
    assert cas.log is not None
    lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert (listening["nvidia_ocsp"], listening["nvidia_ocsp_stapled_only"]) == (True, True)
