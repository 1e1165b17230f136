"""A CAS with a local DCAP collateral source (``cas serve --collateral FILE|DIR``) reads it
before phase 1, in the prefetch (``PlatformVerifier.collateral_job``, in a worker thread in the
API), and hands what it read, or the error it ran into, to phase 1 (``Prefetched``): phase 1
reads no collateral from disk.

Real SGX and TDX quotes with the real collateral of tests/assets; as in ``test_cas_pcs``, the
attestations end in a ``BindingError`` after verification (a real quote cannot bind a fresh
runtime key), and the recorded TCB status shows that the quote was verified with the collateral.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from asgi_call import call
from cas_inproc import Clock, RuntimeKey, last_attestation, production_cas, refused, sim_policy
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.verifier import PlatformVerifier, Prefetched
from confide.collateral.dcap import DcapCollateralSource, source_for
from confide.evidence.dcap import TeeType
from confide.evidence.dcap_collateral import DcapCollateral
from dcap_cases import ASSETS, CASES

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
# The automata TDX quote with June-2025 PCS responses, as a PCS directory (no issuer chains:
# the embedded TCB Signing certificate is used; test_dcap_collateral_sources).
TDX = next(c for c in CASES if "cos-113" in c.quote and "0625" in c.collateral)


class Counting:
    """A local source that counts its reads and the threads they ran in."""

    def __init__(self, source: DcapCollateralSource) -> None:
        self.source = source
        self.threads: list[str] = []

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
        self.threads.append(threading.current_thread().name)
        return self.source.get_collateral(fmspc=fmspc, ca=ca, tee=tee)


def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "collateral" / "bundle.json"
    path.parent.mkdir(parents=True)
    shutil.copy(ASSETS / SGX.collateral, path)
    return path


def pcs_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "pcs"
    directory.mkdir()
    base = ASSETS / "tdx/automata-dcap-attestation/0625"
    for name in ("tcbinfov3_00806f050000.json", "qe_td.json", "pck_platform_crl_2025-06-04.der"):
        shutil.copy(base / name, directory / name)
    shutil.copy(ASSETS / "intel-roots/automata/IntelSGXRootCA_crl_2025-03-20.der", directory / "root.crl")
    return directory


def local_cas(tmp_path: Path, location: Path, at: float) -> tuple[Cas, Counting]:
    """A production CAS with ``--collateral location`` (its source as ``cas serve`` builds it,
    counting its reads)."""
    source = Counting(source_for(str(location)))
    cas = production_cas(tmp_path / "cas", PlatformVerifier(dcap_source=source), sim_policy())
    cas.clock = Clock(at)
    return cas, source


def request(cas: Cas, quote: bytes, tee: str) -> dict[str, Any]:
    return RuntimeKey(cas).body(policy="app", service="svc", platform=tee, evidence=quote)


def begin_and_commit(cas: Cas, body: dict[str, Any], prefetched: Prefetched | None) -> errors.ConfideError:
    pending = cas.attest_begin(body, prefetched=prefetched)
    with cas.db.write() as conn:
        pending.commit(conn)
    assert pending.error is not None
    return pending.error


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_the_collateral_is_read_by_the_prefetch_and_phase_one_reads_no_disk(
    tmp_path: Path, kind: str
) -> None:
    """The collateral is removed after the prefetch: phase 1 verifies the quote with what the
    prefetch read, as it does when nothing was removed."""
    if kind == "file":
        location, case, tee, status = bundle(tmp_path), SGX, "sgx", SGX_STATUS
    else:
        location, case, tee, status = pcs_directory(tmp_path), TDX, "tdx", None
    cas, source = local_cas(tmp_path, location, case.time.timestamp())
    body = request(cas, case.quote_bytes(), tee)
    job = cas.collateral_job(body)
    assert job is not None and job.fetch is not None  # a read to do, off the event loop
    assert source.threads == []  # making the job reads nothing
    prefetched = job.run()
    assert len(source.threads) == 1
    if kind == "file":
        location.unlink()
    else:
        shutil.rmtree(location)
    error = begin_and_commit(cas, body, prefetched)
    assert type(error) is errors.BindingError and f"{tee} report data got" in error.message
    event = last_attestation(cas)
    assert event["tcb_status"] is not None
    if status is not None:
        assert event["tcb_status"] == status
    assert len(source.threads) == 1  # phase 1 read nothing
    # Its twin: without a prefetch (in-process callers), phase 1 reads the source, now gone.
    with pytest.raises(errors.CollateralMissingError, match=r"cannot (read|list) collateral"):
        cas.attest(request(cas, case.quote_bytes(), tee))


def test_phase_one_with_a_prefetch_that_read_nothing_refuses_without_reading(tmp_path: Path) -> None:
    cas, source = local_cas(tmp_path, bundle(tmp_path), SGX.time.timestamp())
    error = begin_and_commit(cas, request(cas, SGX.quote_bytes(), "sgx"), Prefetched())
    assert type(error) is errors.CollateralMissingError
    assert "was not read before this attestation's verification" in error.message
    assert source.threads == []
    assert last_attestation(cas)["reason_class"] == "CollateralMissingError"


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("missing", errors.CollateralMissingError, "cannot read collateral bundle .*bundle.json"),
        ("malformed", errors.ParseError, "pck_crl_issuer_chain: missing"),
    ],
)
def test_a_read_error_is_handed_to_phase_one_with_its_class_and_message(
    tmp_path: Path, damage: str, error: type[errors.ConfideError], match: str
) -> None:
    """A bundle that cannot be read or parsed: the prefetch's error is phase 1's refusal, the
    same class and message as when phase 1 read the source itself (no prefetch)."""
    path = bundle(tmp_path)
    if damage == "missing":
        path.unlink()
    else:
        path.write_text('{"tcb_info": 1}')
    cas, source = local_cas(tmp_path, path, SGX.time.timestamp())
    body = request(cas, SGX.quote_bytes(), "sgx")
    job = cas.collateral_job(body)
    assert job is not None
    prefetched = job.run()
    assert len(source.threads) == 1
    handed = begin_and_commit(cas, body, prefetched)
    assert len(source.threads) == 1
    assert type(handed) is error
    direct = refused(cas, request(cas, SGX.quote_bytes(), "sgx"), error, match)
    assert handed.message == direct.message
    event = last_attestation(cas)
    assert event["reason_class"] == error.__name__


def test_the_api_reads_the_collateral_in_a_worker_thread(tmp_path: Path) -> None:
    cas, source = local_cas(tmp_path, bundle(tmp_path), SGX.time.timestamp())
    for _ in range(2):  # every attestation reads it again (nothing is kept)
        status, _out = call(
            create_app(cas), "/v1/attest", [json.dumps(request(cas, SGX.quote_bytes(), "sgx")).encode()]
        )
        assert status == 403
        assert last_attestation(cas)["tcb_status"] == SGX_STATUS
    assert len(source.threads) == 2
    assert threading.main_thread().name not in source.threads


def test_quotes_sent_with_collateral_and_other_platforms_read_nothing(tmp_path: Path) -> None:
    cas, source = local_cas(tmp_path, bundle(tmp_path), SGX.time.timestamp())
    with_collateral = RuntimeKey(cas).body(
        policy="app", service="svc", platform="sgx", evidence=SGX.quote_bytes(),
        aux={"collateral": SGX.collateral_bytes()},
    )  # fmt: skip
    assert cas.collateral_job(with_collateral) is None
    assert cas.collateral_job({**request(cas, SGX.quote_bytes(), "sgx"), "platform": "sim"}) is None
    assert cas.collateral_job({**request(cas, b"not a quote", "sgx")}) is None
    assert source.threads == []
