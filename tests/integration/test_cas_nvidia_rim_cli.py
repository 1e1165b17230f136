"""``confide cas serve --nvidia-rim``: a real CAS process (TLS, uvicorn) asking a fake RIM service
on 127.0.0.1 (``tests/rim_fake.py``) for the RIMs of the real NVIDIA sample report
(tests/assets/nvidia, whose chain verifies to the pinned NVIDIA Device Identity CA), under the
pinned NVIDIA RIM root. The fake serves NVIDIA's sample driver RIM, whose signer expired in 2025,
or nothing: either way the CAS must refuse, fail closed, before the binding check that refuses
the sample otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cas_harness import CasProcess
from cli import run_confide
from confide import errors
from confide.cas.client import CasClient
from gpu_cas import DRIVER_ID, DRIVER_XML, sample_gpu_request
from rim_fake import fake_rim_service


def test_cas_serve_refuses_an_unusable_location(tmp_path: Path) -> None:
    proc = run_confide(
        "cas", "serve", "--data-dir", tmp_path / "cas", "--listen", "127.0.0.1:0", "--dev",
        "--nvidia-rim", tmp_path / "absent", timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--nvidia-rim" in proc.stdout + proc.stderr and "is not a directory" in proc.stdout + proc.stderr


@pytest.mark.parametrize("served", ["expired", "none", "no-option"])
def test_cas_serve_fetches_the_rims_and_fails_closed(tmp_path: Path, served: str) -> None:
    with fake_rim_service() as service:
        if served == "expired":
            service.serve_rim(DRIVER_ID, DRIVER_XML)
        extra = ("--nvidia-rim", service.base_url) if served != "no-option" else ()
        cas = CasProcess(tmp_path / "cas", None, extra_args=extra).start()
        try:
            with CasClient(cas.env["CONFIDE_CAS_URL"], Path(cas.env["CONFIDE_CAS_CERT"])) as client:
                if served == "expired":
                    with pytest.raises(
                        errors.CertificateChainError,
                        match=f"RIM {DRIVER_ID} from NVIDIA RIM service http://127",
                    ):
                        client.attest(sample_gpu_request(client.nonce()))
                elif served == "none":
                    with pytest.raises(
                        errors.CollateralMissingError, match=f"fetching RIM {DRIVER_ID} .*HTTP 404"
                    ):
                        client.attest(sample_gpu_request(client.nonce()))
                else:
                    with pytest.raises(errors.BindingError, match="nvidia-gpu nonce"):
                        client.attest(sample_gpu_request(client.nonce()))
        finally:
            cas.stop()
        # Asked once, for the driver RIM (the prefetch stops at its first failure; phase 1 reports
        # it without asking again); nothing without the option.
        assert service.requests == ([] if served == "no-option" else [f"/v1/rim/{DRIVER_ID}"])
    assert cas.log is not None
    lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["nvidia_rim"] is (served != "no-option")
