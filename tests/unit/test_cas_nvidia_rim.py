"""NVIDIA RIMs fetched by the CAS itself (``cas serve --nvidia-rim URL|DIR``) for GPU reports
sent without them: GPU-only and composite attestations through ``Cas.attest`` (in process, real
SQLite and ledger) against a fake RIM service on 127.0.0.1 (``tests/rim_fake.py``) that serves
RIMs signed by the test RIM PKI (``tests/rim_pki.py``), and a directory of RIM files. The CAS
is given the test roots as the other GPU tests do; the pinned NVIDIA roots are never involved.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from asgi_call import call
from cas_inproc import Clock, InProcessCas, evict_before_phase_one, last_attestation, refused
from confide import errors
from confide.cas.app import create_app
from confide.cas.revocation import OcspCache
from confide.cas.rims import FAILURE_GRACE, RimCache
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier, Prefetched
from confide.collateral.nvidia_ocsp import HttpOcspSource
from confide.collateral.nvidia_rim import DirRimSource, HttpRimSource, rim_ids
from gpu_cas import (
    CPU,
    DRIVER_ID,
    NOW,
    NV_MEASUREMENTS,
    NV_PARSED,
    OCSP_KNOWN,
    PKI,
    RIM_PKI,
    VBIOS_ID,
    accepted,
    driver_rim,
    other_rim_pki,
    vbios_rim,
)
from gpu_cas import GpuRuntime as Runtime
from nvidia_forge import ocsp_response
from ocsp_responder import FakeOcsp
from pki import Issuer
from rim_fake import FakeRimService, fake_rim_service

DRIVER, VBIOS = driver_rim(), vbios_rim()
OTHER_ROOTS_DRIVER = driver_rim(pki=other_rim_pki())
"""The driver RIM, signed under a root the CAS does not pin."""
DOWN = (503, b"down", {})
"""What the fake RIM service answers when it is down."""
M22 = NV_MEASUREMENTS[22].hex()

POLICY = f"""name: app
version: "0.3"
services:
  - name: gpu
    command: gpu --token $$SCONE::token$$
    attestation:
      nvidia-gpu:
        driver_version: "550.90.07"
  - name: ai
    command: serve --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{CPU}"
      nvidia-gpu:
        count: 2
        measurements: {{22: "{M22}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation, gpu-only]
"""


def test_rim_ids_are_named_as_nvidias_verifier_names_them() -> None:
    # Driver: NV_GPU_DRIVER_GH100_<driver version>; VBIOS: project, project SKU, chip SKU and
    # the VBIOS version (bytes 3.2.1.0.4 in hex) without dots, upper case.
    assert rim_ids(NV_PARSED) == (DRIVER_ID, VBIOS_ID)


@pytest.fixture
def service() -> Iterator[FakeRimService]:
    with fake_rim_service() as server:
        server.serve_rim(DRIVER_ID, DRIVER)
        server.serve_rim(VBIOS_ID, VBIOS)
        yield server


def rim_service(service: FakeRimService) -> HttpRimSource:
    return HttpRimSource(service.base_url, timeout=30)


def service_cache(service: FakeRimService, **options: Any) -> RimCache:
    """A :class:`RimCache` of ``service`` under the test RIM root (``options``: its keywords)."""
    return RimCache(
        rim_service(service), where="NVIDIA RIM service", kind="service", root=RIM_PKI.root, **options
    )


def start(tmp_path: Path, **verifier: Any) -> InProcessCas:
    inproc = InProcessCas.start(tmp_path / "cas", POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_rim_root=RIM_PKI.root, **verifier
    )
    inproc.cas.clock = Clock(NOW.timestamp())
    return inproc


@pytest.fixture
def cas(tmp_path: Path, service: FakeRimService) -> InProcessCas:
    """A CAS started with --nvidia-rim pointing at the fake service."""
    return start(tmp_path, nvidia_rim=rim_service(service))


def rims(inproc: InProcessCas) -> RimCache:
    verifier = inproc.cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.nvidia_rims is not None
    return verifier.nvidia_rims


PATHS = [f"/v1/rim/{DRIVER_ID}", f"/v1/rim/{VBIOS_ID}"]


# --- accepted ---------------------------------------------------------------------------------


def test_matching_rims_from_the_service_accept_and_are_cached(
    cas: InProcessCas, service: FakeRimService
) -> None:
    rt = Runtime(cas)
    job = cas.cas.collateral_job(rt.gpu_only())
    assert job is not None and job.fetch is not None  # nothing cached yet: a prefetch
    event = accepted(cas, rt.gpu_only(), rt)
    assert event["rims_compared"] is True and event["rims_source"] == "service"
    assert event["rim_revocation_checked"] is False  # no --nvidia-ocsp
    assert service.requests == PATHS
    # Another attestation of the same GPU: served from memory, nothing prefetched.
    rt2 = Runtime(cas)
    job = cas.cas.collateral_job(rt2.gpu_only())
    assert job is not None and job.fetch is None
    assert accepted(cas, rt2.gpu_only(), rt2)["rims_source"] == "service"
    # A composite request with two GPUs of the same driver and VBIOS: no new request either.
    rt3 = Runtime(cas)
    event = accepted(cas, rt3.composite(), rt3)
    assert [(g["slot"], g["rims_compared"], g["rims_source"]) for g in event["gpus"]] == [
        ("gpu0", True, "service"),
        ("gpu1", True, "service"),
    ]
    assert service.requests == PATHS
    stats = rims(cas).stats.snapshot()
    assert (stats.ok, stats.error) == (2, 0)
    assert cas.cas.verifier.fetch_stats()["rim"] is rims(cas).stats  # type: ignore[attr-defined]


def test_sent_rims_are_used_and_the_service_is_not_asked(cas: InProcessCas, service: FakeRimService) -> None:
    rt = Runtime(cas)
    assert cas.cas.collateral_job(rt.gpu_only(driver=DRIVER, vbios=VBIOS)) is None
    event = accepted(cas, rt.gpu_only(driver=DRIVER, vbios=VBIOS), rt)
    assert event["rims_compared"] is True and event["rims_source"] == "sent"
    assert service.requests == []


def test_a_rim_the_runtime_left_out_is_fetched(cas: InProcessCas, service: FakeRimService) -> None:
    # Only the driver RIM sent: the VBIOS comparison cannot be left out, its RIM is fetched.
    rt = Runtime(cas)
    event = accepted(cas, rt.gpu_only(driver=DRIVER), rt)
    assert event["rims_compared"] is True and event["rims_source"] == "sent+service"
    assert service.requests == [PATHS[1]]
    # ... and a mismatch in it refuses.
    service.serve_rim(
        VBIOS_ID,
        vbios_rim(change={5: b"\xab" * 48}),
    )
    cas.cas.verifier.nvidia_rims.memory.clear()  # type: ignore[attr-defined]
    refused(
        cas.cas, Runtime(cas).gpu_only(driver=DRIVER), errors.MeasurementError, r"index 5 \(SPDM block 6\)"
    )


def test_without_a_rim_source_nothing_changes(tmp_path: Path) -> None:
    inproc = start(tmp_path)
    rt = Runtime(inproc)
    event = accepted(inproc, rt.gpu_only(), rt)
    assert event["rims_compared"] is False and event["rims_source"] is None


def test_a_directory_of_rims_works_and_a_missing_file_refuses(tmp_path: Path) -> None:
    directory = tmp_path / "rims"
    directory.mkdir()
    (directory / f"{DRIVER_ID}.xml").write_bytes(DRIVER)
    inproc = start(tmp_path, nvidia_rim=DirRimSource(directory), nvidia_rim_where="the RIM directory")
    rt = Runtime(inproc)
    refused(
        inproc.cas,
        rt.gpu_only(),
        errors.CollateralMissingError,
        f"fetching RIM {VBIOS_ID} from the RIM directory",
    )
    (directory / f"{VBIOS_ID}.xml").write_bytes(VBIOS)
    rt2 = Runtime(inproc)
    event = accepted(inproc, rt2.gpu_only(), rt2)
    assert event["rims_compared"] is True and event["rims_source"] == "dir"


# --- refused ----------------------------------------------------------------------------------


def test_a_mismatching_measurement_is_refused(cas: InProcessCas, service: FakeRimService) -> None:
    service.serve_rim(
        VBIOS_ID,
        vbios_rim(change={3: b"\xab" * 48}),
    )
    refused(cas.cas, Runtime(cas).gpu_only(), errors.MeasurementError, r"index 3 \(SPDM block 4\)")


def test_a_tampered_rim_is_refused_and_not_cached(cas: InProcessCas, service: FakeRimService) -> None:
    golden = NV_MEASUREMENTS[4].hex()
    assert VBIOS.count(golden.encode()) == 1
    service.serve_rim(VBIOS_ID, VBIOS.replace(golden.encode(), ("ab" * 48).encode()))
    refused(
        cas.cas,
        Runtime(cas).gpu_only(),
        errors.SignatureError,
        f"RIM {VBIOS_ID} from .*digest does not match",
    )
    at = datetime.fromtimestamp(cas.cas.clock(), UTC)
    assert rims(cas).cached(VBIOS_ID, at) is None and rims(cas).cached(DRIVER_ID, at) is not None
    # The service serves the genuine RIM again: the next attestation's prefetch asks again.
    service.serve_rim(VBIOS_ID, VBIOS)
    rt = Runtime(cas)
    assert accepted(cas, rt.gpu_only(), rt)["rims_source"] == "service"
    assert service.requests == [*PATHS, PATHS[1]]


def test_a_rim_under_another_root_is_refused(cas: InProcessCas, service: FakeRimService) -> None:
    service.serve_rim(DRIVER_ID, OTHER_ROOTS_DRIVER)
    refused(
        cas.cas, Runtime(cas).gpu_only(), errors.CertificateChainError, f"RIM {DRIVER_ID} from .*pinned root"
    )


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(DOWN, id="http-503"),
        pytest.param((200, b"<html>", {}), id="not-json"),
        pytest.param((200, b'{"rim": "***"}', {}), id="not-base64"),
        pytest.param((200, b'{"id": "x"}', {}), id="no-rim"),
    ],
)
def test_a_failing_service_refuses(
    cas: InProcessCas, service: FakeRimService, answer: tuple[int, bytes, dict[str, str]]
) -> None:
    service.behaviour = lambda path: answer
    refused(
        cas.cas,
        Runtime(cas).gpu_only(),
        errors.CollateralMissingError,
        f"fetching RIM {DRIVER_ID} from NVIDIA",
    )
    assert rims(cas).stats.snapshot().error == 1
    assert len(rims(cas)) == 0
    status, text = call(create_app(cas.cas), "/metrics", [b""], method="GET")
    assert status == 200
    assert 'confide_cas_collateral_fetches_total{outcome="error",source="rim"} 1.0' in text.decode()


def test_a_failing_service_does_not_show_the_credentials_of_its_url() -> None:
    def status(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503)

    source = HttpRimSource(
        "https://alice:hunter2@rim.example/v1/rim/", transport=httpx2.MockTransport(status)
    )
    with pytest.raises(errors.NetworkError) as info:
        source.fetch(DRIVER_ID)
    assert "hunter2" not in str(info.value) and "alice" not in str(info.value)
    assert "https://rim.example/v1/rim/" in str(info.value)


@pytest.mark.parametrize("rim_id", ["../../etc/passwd", "NV_GPU_DRIVER_GH100_1/../x", "NV_GPU_OTHER_1"])
def test_a_rim_id_that_is_not_one_is_refused_before_any_request(rim_id: str, tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="expected NV_GPU_DRIVER_"):
        DirRimSource(tmp_path).fetch(rim_id)


def test_a_failure_is_kept_only_for_the_grace_period(service: FakeRimService) -> None:
    monotonic = Clock(100.0)
    cache = service_cache(service, monotonic=monotonic)
    service.behaviour = lambda path: DOWN
    with pytest.raises(errors.CollateralMissingError, match="HTTP 503"):
        cache.get(DRIVER_ID, NOW)
    service.behaviour = None
    monotonic.now += FAILURE_GRACE - 1
    with pytest.raises(errors.CollateralMissingError, match="HTTP 503"):
        cache.get(DRIVER_ID, NOW)  # within the grace period: the failure, not asked again
    assert len(service.requests) == 1
    monotonic.now += 2
    assert cache.get(DRIVER_ID, NOW).version == "550.90.07"  # past it: asked again
    assert len(service.requests) == 2
    assert cache.get(DRIVER_ID, NOW + timedelta(hours=1)) is not None and len(service.requests) == 2
    cache.get(DRIVER_ID, NOW + timedelta(days=1))  # past MAX_AGE: fetched again
    assert len(service.requests) == 3


def test_concurrent_attestations_of_the_same_gpu_share_one_fetch(
    cas: InProcessCas, service: FakeRimService
) -> None:
    def slow(path: str) -> tuple[int, bytes, dict[str, str]]:
        time.sleep(0.3)
        return service.honest(path)

    service.behaviour = slow
    runtimes = [Runtime(cas) for _ in range(4)]
    jobs = [cas.cas.collateral_job(rt.gpu_only()) for rt in runtimes]
    assert all(job is not None and job.fetch is not None for job in jobs)
    results: list[Prefetched] = []
    threads = [
        threading.Thread(target=lambda j=job: results.append(j.run())) for job in jobs if job is not None
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and all(set(r.rims) == {DRIVER_ID, VBIOS_ID} for r in results)
    assert sorted(service.requests) == sorted(PATHS)  # one fetch per RIM, shared
    assert rims(cas).fetches == 2


# --- phase 1 never fetches ----------------------------------------------------------------------


def test_phase_one_takes_the_prefetched_rims_and_fetches_nothing(
    cas: InProcessCas, service: FakeRimService, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = rims(cas)
    # Between the prefetch and phase 1 the RIMs leave memory and the service goes down: phase 1
    # uses what the prefetch handed it.
    ran = evict_before_phase_one(cas.cas, monkeypatch, cache.memory.clear)
    rt = Runtime(cas)
    job = cas.cas.collateral_job(rt.gpu_only())
    assert job is not None
    prefetched = job.run()
    service.behaviour = lambda path: DOWN
    pending = cas.cas.attest_begin(rt.gpu_only(), prefetched=prefetched)
    with cas.cas.db.write() as conn:
        pending.commit(conn)
    assert rt.open(pending.result())["command"] and ran == [1]
    assert last_attestation(cas.cas)["rims_source"] == "service"
    assert service.requests == PATHS
    # Handed nothing (and nothing in memory): refused, "attest again", the service not asked.
    rt2 = Runtime(cas)
    pending = cas.cas.attest_begin(rt2.gpu_only(), prefetched=Prefetched())
    with cas.cas.db.write() as conn:
        pending.commit(conn)
    with pytest.raises(errors.CollateralMissingError, match="attest again"):
        pending.result()
    assert last_attestation(cas.cas)["reason_class"] == "CollateralMissingError"
    assert service.requests == PATHS


# --- revocation of a fetched RIM's signing chain (--nvidia-ocsp) --------------------------------


def test_the_signing_chain_of_a_fetched_rim_is_checked_by_ocsp(
    tmp_path: Path, service: FakeRimService
) -> None:
    revoked: set[int] = set()

    def answer(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        status = ocsp.OCSPCertStatus.REVOKED if cert.serial_number in revoked else ocsp.OCSPCertStatus.GOOD
        at = NOW - timedelta(minutes=1)
        return 200, ocsp_response(
            cert,
            issuer[0],
            issuer,
            this_update=at,
            next_update=NOW + timedelta(hours=1),
            nonce=nonce,
            status=status,
        )

    responder = FakeOcsp(OCSP_KNOWN, answer).start()
    try:
        with HttpOcspSource(responder.url, timeout=30) as source:
            inproc = start(tmp_path, nvidia_ocsp=OcspCache(source), nvidia_rim=rim_service(service))
            rt = Runtime(inproc)
            event = accepted(inproc, rt.gpu_only(), rt)
            assert event["rims_source"] == "service" and event["rim_revocation_checked"] is True
            assert sorted(set(responder.served())) == sorted(OCSP_KNOWN)
            # The RIM signer revoked (a new CAS: nothing cached): the fetched RIM is refused.
            revoked.add(RIM_PKI.leaf.serial_number)
            other = start(tmp_path / "other", nvidia_ocsp=OcspCache(source), nvidia_rim=rim_service(service))
            refused(other.cas, Runtime(other).gpu_only(), errors.RevocationError, "revoked")
    finally:
        responder.stop()


# --- cas serve --nvidia-rim ---------------------------------------------------------------------


def test_prepare_wires_the_rim_source(tmp_path: Path) -> None:
    directory = tmp_path / "rims"
    directory.mkdir()
    cas, *_ = prepare(
        tmp_path / "a", host="127.0.0.1", dev=True, db_url=None, collateral=None, nvidia_rim=str(directory)
    )
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.nvidia_rims is not None
    assert verifier.nvidia_rims.kind == "dir" and verifier.nvidia_rims.root is None  # the pinned root
    assert verifier.nvidia_rims.directory is None  # a directory of RIM files is not copied
    cas, *_ = prepare(
        tmp_path / "b", host="127.0.0.1", dev=True, db_url=None, collateral=None,
        nvidia_rim="https://alice:hunter2@rim.example/v1/rim/",
    )  # fmt: skip
    verifier = cas.verifier
    assert isinstance(verifier, PlatformVerifier) and verifier.nvidia_rims is not None
    assert verifier.nvidia_rims.kind == "service"
    assert verifier.nvidia_rims.where == "NVIDIA RIM service https://rim.example/v1/rim/"
    assert verifier.nvidia_rims.directory == tmp_path / "b" / "rim-cache"
    with pytest.raises(errors.UsageError, match=r"--nvidia-rim: .* is not a directory"):
        prepare(
            tmp_path / "c",
            host="127.0.0.1",
            dev=True,
            db_url=None,
            collateral=None,
            nvidia_rim=str(tmp_path / "none"),
        )
    cas, *_ = prepare(tmp_path / "d", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    assert cas.verifier.nvidia_rims is None  # type: ignore[attr-defined]


def test_cas_serve_help_names_the_option() -> None:
    from click.testing import CliRunner

    from confide.cas.cli import cas as cas_group

    result = CliRunner().invoke(cas_group, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--nvidia-rim URL|DIR" in result.output and "RIM" in result.output


# --- the disk cache (DATA_DIR/rim-cache, with a RIM service URL) ----------------------------------


def disk_cache(service: FakeRimService, directory: Path) -> RimCache:
    return service_cache(service, directory=directory)


def test_verified_rims_are_kept_on_disk_and_verified_again_when_read(
    tmp_path: Path, service: FakeRimService
) -> None:
    directory = tmp_path / "rim-cache"
    first = disk_cache(service, directory)
    assert first.get(DRIVER_ID, datetime.now(UTC)).raw == DRIVER
    path = directory / f"{DRIVER_ID}.xml"
    assert path.read_bytes() == DRIVER and path.stat().st_mode & 0o777 == 0o600
    # A restarted CAS, the service down: the file serves, verified again.
    service.behaviour = lambda path: DOWN
    second = disk_cache(service, directory)
    assert second.get(DRIVER_ID, datetime.now(UTC)).raw == DRIVER
    assert (second.fetches, second.rejected_files, len(service.requests)) == (0, 0, 1)
    # A tampered file is not used, and removed; the source is asked (and is down: refused).
    golden = NV_MEASUREMENTS[22].hex().encode()
    path.write_bytes(DRIVER.replace(golden, b"ab" * 48))
    third = disk_cache(service, directory)
    with pytest.raises(errors.CollateralMissingError, match="HTTP 503"):
        third.get(DRIVER_ID, datetime.now(UTC))
    assert third.rejected_files == 1 and not path.exists()
    # A file older than MAX_AGE is not used: the source is asked, and the file replaced.
    service.behaviour = None
    disk_cache(service, directory).get(DRIVER_ID, datetime.now(UTC))
    old = time.time() - 2 * 86400
    os.utime(path, (old, old))
    fourth = disk_cache(service, directory)
    fourth.get(DRIVER_ID, datetime.now(UTC))
    assert fourth.fetches == 1 and path.stat().st_mtime > old


def test_a_rim_that_does_not_verify_is_not_written(tmp_path: Path, service: FakeRimService) -> None:
    service.serve_rim(DRIVER_ID, OTHER_ROOTS_DRIVER)
    cache = disk_cache(service, tmp_path / "rim-cache")
    with pytest.raises(errors.CertificateChainError):
        cache.get(DRIVER_ID, datetime.now(UTC))
    assert not (tmp_path / "rim-cache").exists() or not list((tmp_path / "rim-cache").iterdir())
