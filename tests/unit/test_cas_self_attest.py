"""A CAS in a real TEE attests itself: ``prepare(tee=...)`` publishes evidence from the TEE's
quote provider, ``attest_cas`` / ``verify_cas_evidence`` verify it before pinning.

SEV-SNP end to end: a fake configfs-tsm tree (the FUSE fake of test_runtime_quote.py) whose
reports are signed by a private AMD-shaped PKI (snp_fakes.py) over the CAS's binding, with the
VCEK in the certificate table (``auxblob``) and another report ID in each report; the CAS's real
``prepare()`` obtains the evidence, a TLS server presents the CAS's certificate and the evidence
document, and ``attest_cas`` verifies and pins it. The refresh (``CasEvidence.refresh``,
``EvidenceRefresher.refresh_once``) re-obtains it from the same tree, and ``GET
/v1/cas/evidence`` and ``/metrics`` are read through the real app (in process). The CAS verifies
each document before publishing it: the tree spoils reports on request (a flipped signature bit,
another chip's report) to show that the CAS then does not start, or keeps serving the previous
document. TDX and SGX: real quotes and collateral (tests/assets); their report data
cannot be re-signed, so these tests stop at the binding, which proves every check before it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import multiprocessing
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from snp_fakes import AT, FakeAmd, cert_table, make_fake_amd

from asgi_call import call
from cas_inproc import Clock
from cli import run_confide
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.own_evidence import CasEvidence, EvidenceRefresher
from confide.cas.pin import attest_cas, verify_cas_evidence
from confide.cas.server import prepare, quote_provider_for, tee_evidence
from confide.collateral.dcap import source_for
from confide.evidence.sev_snp import GuestPolicy, Product
from confide.evidence.snp_certs import ARK_GUID, ASK_GUID, VCEK_GUID, parse_cert_table
from confide.policy.model import Tolerance
from confide.runtime.quote import (
    CONFIGFS_TSM_ROOT,
    GRAMINE_ATTESTATION_ROOT,
    ConfigfsTsmQuoteProvider,
    GramineQuoteProvider,
)
from confide.verify.result import Platform
from dcap_cases import ASSETS, CASES, Case
from kds_fake import fake_kds
from quote_fakes import FakeGramine, FakeTsm, TsmBehaviour, mfusepy, mounted

MEASUREMENT = "cd" * 48  # snp_fakes' report measurement
SIGNATURE_OFFSET = 0x2A0  # SEV-SNP ABI (rev 1.57) table 22: the report's SIGNATURE
FLIP_SIGNATURE, OTHER_CHIP = 1, 2


class SigningTsm(FakeTsm):
    """configfs-tsm whose ``outblob`` is an SEV-SNP report signed by ``amd``'s VCEK over
    ``inblob``, and whose ``auxblob`` is the certificate table with that VCEK."""

    def __init__(self, amd: FakeAmd, *, debug: bool = False, auxblob: bytes | None = None) -> None:
        super().__init__(TsmBehaviour())
        self.amd = amd
        self.policy = GuestPolicy(0x30000 | (1 << GuestPolicy.DEBUG_BIT if debug else 0))
        der = serialization.Encoding.DER
        self.auxblob = (
            cert_table([(VCEK_GUID, amd.vek.public_bytes(der)), (ASK_GUID, amd.ask.public_bytes(der))])
            if auxblob is None
            else auxblob  # another certificate table (b"": none)
        )
        # Shared with the FUSE child process (forked): reports signed so far (each has report ID =
        # this count), and the errno reading outblob fails with (0: none), set by the test.
        shared = multiprocessing.get_context("fork")
        self.issued = shared.Value("i", 0)
        self.outblob_errno = shared.Value("i", 0)
        # How the next reports are spoiled (set by the test): FLIP_SIGNATURE flips a bit of the
        # signature's R; OTHER_CHIP signs a report of another chip than the VCEK's hwID names (a
        # certificate table with a VCEK that is not this chip's). (Report data other than the
        # inblob is refused by the quote provider itself, before the CAS's check.)
        self.tamper = shared.Value("i", 0)

    def _report(self, entry: dict[str, Any]) -> bytes:
        # One signed report per request (an entry's inblob and privlevel), however it is read.
        key = (entry["inblob"], entry["privlevel"])
        if entry.get("signed", (None,))[0] != key:
            with self.issued.get_lock():
                self.issued.value += 1
                number = self.issued.value
            chip = {"chip_id": bytes(64 - i for i in range(64))} if self.tamper.value == OTHER_CHIP else {}
            report = self.amd.report(
                report_data=entry["inblob"].ljust(64, b"\0"), vmpl=entry["privlevel"], policy=self.policy,
                report_id=number.to_bytes(32, "big"), **chip,
            )  # fmt: skip
            signed = bytearray(self.amd.sign(report))
            if self.tamper.value == FLIP_SIGNATURE:
                signed[SIGNATURE_OFFSET + 5] ^= 1
            entry["signed"] = (key, bytes(signed))
        signed: bytes = entry["signed"][1]
        return signed

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path.endswith("/auxblob"):
            return self.auxblob[offset : offset + size]
        if path.endswith("/outblob") and self.outblob_errno.value:
            raise mfusepy.FuseOSError(self.outblob_errno.value)
        data: bytes = super().read(path, size, offset, fh)
        return data


@pytest.fixture(scope="module")
def amd() -> FakeAmd:
    return make_fake_amd()


@contextlib.contextmanager
def snp_tsm(tmp_path: Path, amd: FakeAmd, *, debug: bool = False) -> Iterator[Path]:
    with signing_tsm(tmp_path, amd, debug=debug) as (root, _tsm):
        yield root


@contextlib.contextmanager
def signing_tsm(
    tmp_path: Path, amd: FakeAmd, *, debug: bool = False, auxblob: bytes | None = None
) -> Iterator[tuple[Path, SigningTsm]]:
    tsm = SigningTsm(amd, debug=debug, auxblob=auxblob)
    with mounted(tmp_path / "tsm" / "report", tsm) as root:
        yield root, tsm


@contextlib.contextmanager
def serve_tls(cert: Path, key: Path, body: bytes) -> Iterator[str]:
    """A TLS server presenting ``cert`` that answers every GET with ``body``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def start_snp_cas(data_dir: Path, root: Path, amd: FakeAmd) -> tuple[dict[str, Any], Path, Path]:
    cas, evidence, key_path, cert_path, _env, _signer = prepare(
        data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None,
        tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
    )  # fmt: skip
    cas.db.dispose()
    assert evidence is not None
    return evidence.document, cert_path, key_path


# --- SEV-SNP end to end ---------------------------------------------------------------------------


def test_snp_cas_attests_itself_and_is_pinned(tmp_path: Path, amd: FakeAmd) -> None:
    with snp_tsm(tmp_path, amd) as root:
        evidence, cert_path, key_path = start_snp_cas(tmp_path / "cas", root, amd)
    assert evidence["platform"] == "sev-snp" and evidence["provider"] == "configfs-tsm/sev_guest"
    assert set(evidence["aux"]) == {"auxblob"}
    body = json.dumps(evidence).encode()
    with serve_tls(cert_path, key_path, body) as url:
        pinned = attest_cas(url, sim_key_pem=None, at=AT, amd_roots=amd.roots(), measurements=(MEASUREMENT,))
        assert pinned.url == url
        assert pinned.certificate_pem == cert_path.read_bytes()
        assert pinned.evidence.platform is Platform.SEV_SNP
        assert pinned.measurement_claim == "measurement"
        assert pinned.evidence.claims["measurement"] == MEASUREMENT
        assert pinned.log_key == evidence["log_key"]
        # Another measurement: nothing pinned.
        with pytest.raises(errors.MeasurementError, match="measurement"):
            attest_cas(url, sim_key_pem=None, at=AT, amd_roots=amd.roots(), measurements=("ab" * 48,))
        # The embedded (real) AMD roots do not vouch for the test PKI.
        with pytest.raises(errors.CertificateChainError):
            attest_cas(url, sim_key_pem=None, at=AT)
        # --expect: every named claim must hold; all mismatches are named together
        ok = attest_cas(
            url, sim_key_pem=None, at=AT, amd_roots=amd.roots(),
            expect={"host_data": ("00" * 32, "EF" * 32), "vmpl": ("0",), "guest_svn": ("0x7",)},
        )  # fmt: skip
        assert ok.certificate_sha256 == pinned.certificate_sha256
        with pytest.raises(errors.MeasurementError) as refused:
            attest_cas(
                url, sim_key_pem=None, at=AT, amd_roots=amd.roots(), measurements=("ab" * 48,),
                expect={"host_data": ("00" * 32,), "vmpl": ("1",), "rtmr1": ("00",)},
            )  # fmt: skip
        message = refused.value.message
        assert "expected one of --measurement" in message
        assert "claim host_data: got efef" in message and "claim vmpl: got 0, expected 1" in message
        assert "has no claim 'rtmr1'" in message


def test_snp_evidence_presented_with_another_certificate_is_refused(tmp_path: Path, amd: FakeAmd) -> None:
    with snp_tsm(tmp_path, amd) as root:
        evidence, _cert, _key = start_snp_cas(tmp_path / "cas", root, amd)
        # A second CAS (another TLS key) relays the first one's genuine evidence.
        _other, other_cert, other_key = start_snp_cas(tmp_path / "other", root, amd)
    with (
        serve_tls(other_cert, other_key, json.dumps(evidence).encode()) as url,
        pytest.raises(errors.BindingError, match="not bound"),
    ):
        attest_cas(url, sim_key_pem=None, at=AT, amd_roots=amd.roots())


def test_snp_debug_guest_is_refused_unless_tolerated(tmp_path: Path, amd: FakeAmd) -> None:
    with snp_tsm(tmp_path, amd, debug=True) as root:
        evidence, cert_path, _key = start_snp_cas(tmp_path / "cas", root, amd)
    cert_der = _der(cert_path)
    body = json.dumps(evidence).encode()
    with pytest.raises(errors.AppraisalError, match="debug-mode"):
        verify_cas_evidence(cert_der, body, sim_key_pem=None, at=AT, amd_roots=amd.roots())
    pinned = verify_cas_evidence(
        cert_der, body, sim_key_pem=None, at=AT, amd_roots=amd.roots(), tolerate=(Tolerance.DEBUG_MODE,)
    )
    assert pinned.evidence.claims["debug"] is True


def test_snp_document_without_vcek_or_with_foreign_aux_is_refused(tmp_path: Path, amd: FakeAmd) -> None:
    with snp_tsm(tmp_path, amd) as root:
        evidence, cert_path, _key = start_snp_cas(tmp_path / "cas", root, amd)
    cert_der = _der(cert_path)

    def verify(doc: dict[str, Any]) -> None:
        verify_cas_evidence(
            cert_der, json.dumps(doc).encode(), sim_key_pem=None, at=AT, amd_roots=amd.roots()
        )

    with pytest.raises(errors.CollateralMissingError):
        verify({**evidence, "aux": {}})
    with pytest.raises(errors.ParseError, match="gpu0"):
        verify({**evidence, "aux": {**evidence["aux"], "gpu0": "AA=="}})
    with pytest.raises(errors.ParseError, match="malformed"):
        verify({**evidence, "aux": {"auxblob": "not base64!"}})
    with pytest.raises(errors.UsageError, match="aws-nitro"):
        verify({**evidence, "platform": "aws-nitro"})
    tampered = bytearray(base64.b64decode(evidence["evidence"]))
    tampered[0x90] ^= 1  # the measurement
    with pytest.raises(errors.SignatureError):
        verify({**evidence, "evidence": base64.b64encode(bytes(tampered)).decode()})


# --- SEV-SNP: refreshing the CAS's own evidence -------------------------------------------------


def _prepare_snp(data_dir: Path, root: Path, **kwargs: Any) -> Any:
    return prepare(data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None, tee="sev-snp",
                   quote_provider=ConfigfsTsmQuoteProvider(root), **kwargs)  # fmt: skip


def refreshing_snp_cas(
    data_dir: Path, root: Path, clock: Clock[datetime], amd: FakeAmd
) -> tuple[Cas, CasEvidence, bytes]:
    cas, evidence, _key, cert_path, _env, _signer = _prepare_snp(
        data_dir, root, clock=clock, amd_roots=amd.roots()
    )
    assert evidence is not None
    return cas, evidence, _der(cert_path)


def get(app: Any, path: str) -> bytes:
    status, body = call(app, path, [b""], method="GET")
    assert status == 200, body[:300]
    return body


def metric(app: Any, name: str) -> float:
    lines = [line for line in get(app, "/metrics").decode().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, name
    return float(lines[0].split()[1])


def test_snp_refresh_serves_new_evidence_with_the_same_binding(tmp_path: Path, amd: FakeAmd) -> None:
    clock = Clock(AT)
    with signing_tsm(tmp_path, amd) as (root, tsm):
        cas, evidence, cert_der = refreshing_snp_cas(tmp_path / "cas", root, clock, amd)
        app = create_app(cas, cas_evidence=evidence)
        first = get(app, "/v1/cas/evidence")
        clock.now = AT + timedelta(hours=1, microseconds=250)
        assert EvidenceRefresher(evidence, 3600).refresh_once()
        second = get(app, "/v1/cas/evidence")
        refreshes = metric(app, "confide_cas_evidence_refreshes_total")
        failures = metric(app, "confide_cas_evidence_refresh_failures_total")
        obtained = metric(app, "confide_cas_evidence_obtained_timestamp_seconds")
    cas.db.dispose()
    assert tsm.issued.value == 2
    assert (refreshes, failures, obtained) == (1, 0, (AT + timedelta(hours=1)).timestamp())
    old, new = json.loads(first), json.loads(second)
    assert old["obtained_at"] == "2025-06-01T00:00:00Z" and new["obtained_at"] == "2025-06-01T01:00:00Z"
    assert new["evidence"] != old["evidence"]
    assert {k: v for k, v in new.items() if k not in ("evidence", "obtained_at")} == {
        k: v for k, v in old.items() if k not in ("evidence", "obtained_at")
    }
    pinned_old = verify_cas_evidence(cert_der, first, sim_key_pem=None, at=AT, amd_roots=amd.roots())
    pinned_new = verify_cas_evidence(
        cert_der, second, sim_key_pem=None, at=clock.now, amd_roots=amd.roots(), measurements=(MEASUREMENT,)
    )
    assert pinned_old.evidence.claims["report_id"] == (1).to_bytes(32, "big").hex()
    assert pinned_new.evidence.claims["report_id"] == (2).to_bytes(32, "big").hex()
    # The same binding: the report data of both is the CAS's certificate and log key.
    assert pinned_new.evidence.claims["report_data"] == pinned_old.evidence.claims["report_data"]
    assert (
        pinned_new.log_key == pinned_old.log_key
        and pinned_new.certificate_sha256 == pinned_old.certificate_sha256
    )
    assert pinned_old.obtained_at == AT and pinned_new.obtained_at == AT + timedelta(hours=1)


def test_snp_failed_refresh_keeps_the_served_evidence_and_is_counted(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(AT)
    with signing_tsm(tmp_path, amd) as (root, tsm):
        cas, evidence, cert_der = refreshing_snp_cas(tmp_path / "cas", root, clock, amd)
        app = create_app(cas, cas_evidence=evidence)
        served = get(app, "/v1/cas/evidence")
        refresher = EvidenceRefresher(evidence, 600)
        tsm.outblob_errno.value = errno.EIO  # the PSP does not answer
        clock.now = AT + timedelta(minutes=10)
        with caplog.at_level(logging.WARNING, logger="confide.cas"):
            assert not refresher.refresh_once()
            assert not refresher.refresh_once()
        assert get(app, "/v1/cas/evidence") == served
        assert metric(app, "confide_cas_evidence_refresh_failures_total") == 2
        assert metric(app, "confide_cas_evidence_refreshes_total") == 0
        assert metric(app, "confide_cas_evidence_obtained_timestamp_seconds") == AT.timestamp()
        # The next period succeeds again.
        tsm.outblob_errno.value = 0
        clock.now = AT + timedelta(minutes=20)
        assert refresher.refresh_once()
        refreshed = get(app, "/v1/cas/evidence")
        assert metric(app, "confide_cas_evidence_refresh_failures_total") == 2
        assert metric(app, "confide_cas_evidence_refreshes_total") == 1
    cas.db.dispose()
    assert refreshed != served
    verify_cas_evidence(cert_der, refreshed, sim_key_pem=None, at=clock.now, amd_roots=amd.roots())
    warnings = [json.loads(r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    # Once at start, not on a refresh (no --replica-min-tcb: docs/cas.md "Joining a running CAS").
    assert [w["event"] for w in warnings].count("replica-tcb-not-judged") == 1
    warnings = [w for w in warnings if w["event"] != "replica-tcb-not-judged"]
    assert len(warnings) == 2
    assert warnings[0]["event"] == "cas-evidence-refresh-failed"
    assert warnings[0]["serving_obtained_at"] == "2025-06-01T00:00:00Z"
    assert warnings[0]["retry_in_seconds"] == 600 and [w["failures"] for w in warnings] == [1, 2]
    assert warnings[0]["error"] == "StorageError" and "outblob" in warnings[0]["detail"]
    assert json.loads(served)["evidence"][:64] not in caplog.text  # no evidence bytes in the log


def test_snp_readers_during_refreshes_always_get_a_complete_document(tmp_path: Path, amd: FakeAmd) -> None:
    clock = Clock(AT)
    read: list[bytes] = []
    done = threading.Event()
    with signing_tsm(tmp_path, amd) as (root, _tsm):
        cas, evidence, cert_der = refreshing_snp_cas(tmp_path / "cas", root, clock, amd)
        app = create_app(cas, cas_evidence=evidence)
        published = [evidence.body]

        def reader() -> None:
            while not done.is_set():
                read.append(get(app, "/v1/cas/evidence"))

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            for minute in range(1, 6):
                clock.now = AT + timedelta(minutes=minute)
                evidence.refresh()
                published.append(evidence.body)
        finally:
            done.set()
            for thread in readers:
                thread.join()
    cas.db.dispose()
    assert len(set(published)) == 6
    assert len(read) >= 3 and set(read) <= set(published), "a reader got a document that was never published"
    for body in set(read):
        obtained = datetime.fromisoformat(json.loads(body)["obtained_at"])
        verify_cas_evidence(cert_der, body, sim_key_pem=None, at=obtained, amd_roots=amd.roots())


# --- The CAS verifies its own evidence before publishing it ------------------------------------


@pytest.mark.parametrize(
    ("tamper", "own_roots", "error", "message"),
    [
        (FLIP_SIGNATURE, True, errors.SignatureError, "signature"),
        (OTHER_CHIP, True, errors.CertificateChainError, "CHIP_ID"),
        (0, False, errors.CertificateChainError, "not an AMD ASK/ASVK known"),  # the pinned AMD roots
    ],
)
def test_cas_does_not_start_with_evidence_that_does_not_verify(
    tmp_path: Path, amd: FakeAmd, tamper: int, own_roots: bool, error: type[errors.ConfideError], message: str
) -> None:
    with signing_tsm(tmp_path, amd) as (root, tsm):
        tsm.tamper.value = tamper
        with pytest.raises(error, match=message) as info:
            _prepare_snp(tmp_path / "cas", root, amd_roots=amd.roots() if own_roots else None)
        assert tsm.issued.value == 1
    assert type(info.value) is error  # the verification error's class, hence its exit code
    assert info.value.message.startswith(
        "--tee sev-snp: cannot obtain the CAS's own evidence, not starting: the evidence obtained does not"
        " verify (checked as a client would): "
    ), info.value.message
    assert not (tmp_path / "cas" / "cas.db").exists()  # refused before the database


def test_refresh_with_evidence_that_does_not_verify_keeps_the_served_document(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(AT)
    with signing_tsm(tmp_path, amd) as (root, tsm):
        cas, evidence, cert_der = refreshing_snp_cas(tmp_path / "cas", root, clock, amd)
        app = create_app(cas, cas_evidence=evidence)
        served = get(app, "/v1/cas/evidence")
        refresher = EvidenceRefresher(evidence, 600)
        with caplog.at_level(logging.INFO, logger="confide.cas"):
            for minute, tamper in ((10, FLIP_SIGNATURE), (20, OTHER_CHIP)):
                tsm.tamper.value = tamper
                clock.now = AT + timedelta(minutes=minute)
                assert not refresher.refresh_once()
                assert get(app, "/v1/cas/evidence") == served
            counted = (
                metric(app, "confide_cas_evidence_refresh_failures_total"),
                metric(app, "confide_cas_evidence_refreshes_total"),
                metric(app, "confide_cas_evidence_obtained_timestamp_seconds"),
            )
            # Genuine evidence again: published on the next period.
            tsm.tamper.value = 0
            clock.now = AT + timedelta(minutes=30)
            assert refresher.refresh_once()
            refreshed = get(app, "/v1/cas/evidence")
    cas.db.dispose()
    assert tsm.issued.value == 4
    assert counted == (2, 0, AT.timestamp())
    assert refreshed != served
    verify_cas_evidence(cert_der, refreshed, sim_key_pem=None, at=clock.now, amd_roots=amd.roots())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    failed = [line for line in lines if line["event"] == "cas-evidence-refresh-failed"]
    assert [(f["error"], f["failures"]) for f in failed] == [
        ("SignatureError", 1),
        ("CertificateChainError", 2),
    ]
    assert all(f["detail"].startswith("the evidence obtained does not verify") for f in failed), failed
    assert all(f["serving_obtained_at"] == "2025-06-01T00:00:00Z" for f in failed)
    (ok,) = [line for line in lines if line["event"] == "cas-evidence-refreshed"]
    assert ok["obtained_at"] == "2025-06-01T00:30:00Z"
    assert ok["self_check"] == {
        "verified": True, "platform": "sev-snp", "tcb_status": None, "advisory_ids": [], "debug": False,
        "simulated": False,
    }  # fmt: skip


def test_debug_guest_starts_and_its_check_reports_debug(tmp_path: Path, amd: FakeAmd) -> None:
    """Debug mode is the client's decision (``cas attest --tolerate debug-mode``): the CAS
    publishes, and logs the flag."""
    with signing_tsm(tmp_path, amd, debug=True) as (root, _tsm):
        cas, evidence, *_ = _prepare_snp(tmp_path / "cas", root, amd_roots=amd.roots())
    cas.db.dispose()
    assert evidence is not None and evidence.check is not None
    assert evidence.check["verified"] is True and evidence.check["debug"] is True


def test_tdx_cas_without_collateral_publishes_unchecked_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DCAP evidence needs collateral the CAS may not have: published unchecked (clients verify
    it with theirs), logged once at startup; with a collateral source the same quote (an unsigned
    skeleton) stops the CAS."""
    collateral = str(
        ASSETS / _case("tdx/trustee/tdx_quote_4.dat", "collateral_v4_2023-06.dcapqvl.json").collateral
    )
    with mounted(tmp_path / "tdx" / "report", FakeTsm(TsmBehaviour(provider="tdx_guest"))) as root:
        provider = ConfigfsTsmQuoteProvider(root)
        with caplog.at_level(logging.INFO, logger="confide.cas"):
            cas, evidence, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None,
                                        collateral=None, tee="tdx", quote_provider=provider)  # fmt: skip
            assert evidence is not None
            assert EvidenceRefresher(evidence, 600).refresh_once()
            assert evidence.refreshes == 1
        cas.db.dispose()
        with pytest.raises(errors.ParseError, match="signature") as info:  # no signature at all
            prepare(tmp_path / "cas2", host="127.0.0.1", dev=False, db_url=None, collateral=collateral,
                    tee="tdx", quote_provider=provider)  # fmt: skip
    assert "not starting: the evidence obtained does not verify" in info.value.message, info.value.message
    assert evidence.document["platform"] == "tdx"
    assert evidence.check is not None and evidence.check["verified"] is False
    assert "cannot check its own evidence" in evidence.check["reason"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    warnings = [json.loads(r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [{"event": "cas-evidence-unchecked", "tee": "tdx", "reason": evidence.check["reason"]}]
    (refreshed,) = [line for line in lines if line["event"] == "cas-evidence-refreshed"]
    assert refreshed["self_check"]["verified"] is False


# --- SEV-SNP: the CAS's own VCEK from AMD KDS (--kds), when its certificate table has none ------

NO_TABLE, EMPTY_TABLE = b"", bytes(24)  # no auxblob at all; a table of the terminator only


def _table(document: dict[str, Any]) -> dict[Any, bytes]:
    return parse_cert_table(base64.b64decode(document["aux"]["auxblob"]))


def _der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("auxblob", [NO_TABLE, EMPTY_TABLE], ids=["no-table", "empty-table"])
def test_snp_cas_without_its_vcek_publishes_the_one_from_kds(
    tmp_path: Path, amd: FakeAmd, auxblob: bytes
) -> None:
    clock = Clock(AT)
    with fake_kds() as kds, signing_tsm(tmp_path, amd, auxblob=auxblob) as (root, tsm):
        crl = amd.crl()  # PSS: each signing differs
        vcek_path = kds.serve_amd(amd, crl=crl)
        cas, evidence, key_path, cert_path, _env, _signer = _prepare_snp(
            tmp_path / "cas", root, clock=clock, amd_roots=amd.roots(), kds=kds.url
        )
        assert evidence is not None
        served = evidence.body
        assert evidence.check is not None and evidence.check["verified"] is True  # the self-check
        fetched = list(kds.requests)
        # A refresh takes the VCEK from memory (the same chip and TCB): no new request.
        clock.now = AT + timedelta(hours=1)
        assert EvidenceRefresher(evidence, 3600).refresh_once()
        refreshed = evidence.body
        assert kds.requests == fetched and tsm.issued.value == 2
    cas.db.dispose()
    assert vcek_path in fetched and f"/vcek/v1/{amd.product}/cert_chain" in fetched
    assert f"/vcek/v1/{amd.product}/crl" in fetched
    document = json.loads(served)
    assert set(document["aux"]) == {"auxblob"}
    # The ARK's CRL the CAS verified its VCEK's chain with, as the KDS served it.
    assert base64.b64decode(document["amd_crl"]) == crl.public_bytes(serialization.Encoding.DER)
    # The form of a host's certificate table: the VCEK, ASK and ARK entries.
    assert _table(document) == {
        VCEK_GUID: _der_of(amd.vek),
        ASK_GUID: _der_of(amd.ask),
        ARK_GUID: _der_of(amd.ark),
    }
    assert any((tmp_path / "cas" / "kds-cache").rglob("*.der"))  # cached on disk
    # A client verifies it with no KDS of its own.
    with serve_tls(cert_path, key_path, served) as url:
        pinned = attest_cas(url, sim_key_pem=None, at=AT, amd_roots=amd.roots(), measurements=(MEASUREMENT,))
    assert pinned.evidence.claims["report_id"] == (1).to_bytes(32, "big").hex()
    assert pinned.evidence.details["crl_checked"] is True  # with the CRL the CAS published
    pinned = verify_cas_evidence(
        _der(cert_path), refreshed, sim_key_pem=None, at=clock.now, amd_roots=amd.roots()
    )
    assert pinned.evidence.claims["report_id"] == (2).to_bytes(32, "big").hex()
    assert json.loads(refreshed)["amd_crl"] == document["amd_crl"]
    assert pinned.evidence.details["crl_checked"] is True
    # A CAS from before amd_crl: the same document without it verifies, and says no CRL was checked.
    older = {k: v for k, v in document.items() if k != "amd_crl"}
    pinned = verify_cas_evidence(
        _der(cert_path), json.dumps(older).encode(), sim_key_pem=None, at=AT, amd_roots=amd.roots()
    )
    assert pinned.evidence.details["crl_checked"] is False
    # Without the VCEK the CAS attached, the same document does not verify.
    with pytest.raises(errors.CollateralMissingError):
        verify_cas_evidence(
            _der(cert_path), json.dumps({**document, "aux": {}}).encode(), sim_key_pem=None, at=AT,
            amd_roots=amd.roots(),
        )  # fmt: skip


@pytest.fixture
def published_crl(tmp_path: Path, amd: FakeAmd) -> tuple[dict[str, Any], bytes]:
    """The document a CAS with --kds publishes when the KDS serves a CRL revoking nothing, with
    the DER of its TLS certificate."""
    with fake_kds() as kds, signing_tsm(tmp_path, amd, auxblob=EMPTY_TABLE) as (root, _tsm):
        kds.serve_amd(amd, crl=amd.crl(revoked_serials=(amd.vek.serial_number + 1,)))
        cas, evidence, _key, cert_path, _env, _signer = _prepare_snp(
            tmp_path / "cas", root, clock=Clock(AT), amd_roots=amd.roots(), kds=kds.url
        )
    cas.db.dispose()
    assert evidence is not None
    return json.loads(evidence.body), _der(cert_path)


def _with_crl(document: dict[str, Any], crl: x509.CertificateRevocationList | str) -> bytes:
    value = (
        crl
        if isinstance(crl, str)
        else base64.b64encode(crl.public_bytes(serialization.Encoding.DER)).decode()
    )
    return json.dumps({**document, "amd_crl": value}).encode()


def test_snp_cas_kds_crl_that_revokes_the_ask_stops_the_cas(tmp_path: Path, amd: FakeAmd) -> None:
    with (
        fake_kds() as kds,
        signing_tsm(tmp_path, amd, auxblob=EMPTY_TABLE) as (root, _tsm),
        pytest.raises(
            errors.RevocationError, match=r"--kds could not supply it: .* is revoked by the AMD CRL"
        ),
    ):
        kds.serve_amd(amd, crl=amd.crl(revoked_serials=(amd.ask.serial_number,)))
        _prepare_snp(tmp_path / "cas", root, clock=Clock(AT), amd_roots=amd.roots(), kds=kds.url)
    assert not (tmp_path / "cas" / "cas.db").exists()


def test_cas_attest_checks_the_published_crl(
    amd: FakeAmd, published_crl: tuple[dict[str, Any], bytes]
) -> None:
    """The client verifies the VCEK's chain with the CRL in the document: one that does not
    revoke passes; one that revokes the ASK, one out of date at the client's time, one signed by
    another key or malformed are refused, each with its class."""
    document, cert_der = published_crl

    def verify(body: bytes, at: datetime = AT) -> Any:
        return verify_cas_evidence(cert_der, body, sim_key_pem=None, at=at, amd_roots=amd.roots())

    assert verify(json.dumps(document).encode()).evidence.details["crl_checked"] is True
    with pytest.raises(errors.RevocationError, match=r"\(serial 0x[0-9a-f]+\) is revoked by the AMD CRL"):
        verify(_with_crl(document, amd.crl(revoked_serials=(amd.ask.serial_number,))))
    # Out of date at the client's time: a clear refusal, never a silent pass without the CRL.
    due = amd.crl(this_update=AT - timedelta(days=2), next_update=AT - timedelta(days=1))
    with pytest.raises(errors.CollateralExpiredError) as info:
        verify(_with_crl(document, due))
    assert info.value.message.startswith(
        "the AMD CRL the CAS published with its evidence (amd_crl) is out of date at 2025-06-01T00:00:00+00:00"
        " (CRL expired at"
    ), info.value.message
    assert "when it next refreshes its evidence" in info.value.message
    future = amd.crl(this_update=AT + timedelta(days=1), next_update=AT + timedelta(days=30))
    with pytest.raises(errors.CollateralExpiredError, match=r"published .* out of date .* not yet valid"):
        verify(_with_crl(document, future))
    with pytest.raises(errors.CertificateChainError, match="CRL signature does not verify with the ARK"):
        verify(_with_crl(document, amd.crl(key=amd.ask_key)))  # the ARK's name, another key
    with pytest.raises(errors.CertificateChainError, match="CRL issuer: got CN=ARK-Genoa"):
        verify(_with_crl(document, make_fake_amd(Product.GENOA).crl()))
    for garbage in ("not base64!", base64.b64encode(b"not a CRL").decode()):
        with pytest.raises(errors.ParseError, match="amd_crl"):
            verify(_with_crl(document, garbage))
    with pytest.raises(errors.ParseError, match="amd_crl"):
        verify(json.dumps({**document, "amd_crl": 7}).encode())
    # Only with SEV-SNP evidence.
    with pytest.raises(errors.ParseError, match="got amd_crl with sim evidence"):
        verify(
            json.dumps({"platform": "sim", "evidence": "AAAA", "log_key": "k", "amd_crl": "AAAA"}).encode()
        )


def test_snp_cas_keeps_the_hosts_other_table_entries(tmp_path: Path, amd: FakeAmd) -> None:
    ask_only = cert_table([(ASK_GUID, _der_of(amd.ask))])  # a host's table without the VCEK
    with fake_kds() as kds, signing_tsm(tmp_path, amd, auxblob=ask_only) as (root, _tsm):
        kds.serve_amd(amd, crl=amd.crl())
        cas, evidence, *_ = _prepare_snp(
            tmp_path / "cas", root, clock=Clock(AT), amd_roots=amd.roots(), kds=kds.url
        )
    cas.db.dispose()
    assert evidence is not None
    table = _table(evidence.document)
    assert list(table) == [VCEK_GUID, ASK_GUID, ARK_GUID] and table[VCEK_GUID] == _der_of(amd.vek)


def test_snp_cas_with_its_vcek_in_the_table_asks_no_kds(tmp_path: Path, amd: FakeAmd) -> None:
    with fake_kds() as kds, signing_tsm(tmp_path, amd) as (root, tsm):
        kds.serve_amd(amd, crl=amd.crl())
        cas, evidence, *_ = _prepare_snp(
            tmp_path / "cas", root, clock=Clock(AT), amd_roots=amd.roots(), kds=kds.url
        )
        assert evidence is not None
        assert EvidenceRefresher(evidence, 3600).refresh_once()
    cas.db.dispose()
    assert kds.requests == [] and tsm.issued.value == 2
    assert base64.b64decode(evidence.document["aux"]["auxblob"]) == tsm.auxblob  # as the host gave it


@pytest.mark.parametrize(
    ("kds", "message"),
    [
        ("down", "the CAS's own SEV-SNP report came without its VCEK (configfs-tsm's certificate"
         " table has none) and --kds could not supply it: SEV-SNP evidence came without its VCEK, and"
         " fetching it from AMD KDS http://127.0.0.1:"),
        (None, "the evidence obtained does not verify (checked as a client would): SEV-SNP evidence came"
         " without its VCEK/VLEK (auxblob or vcek), and this CAS fetches none (start it with --kds URL"),
    ],
    ids=["kds-down", "no-kds"],
)  # fmt: skip
def test_snp_cas_without_its_vcek_does_not_start_when_kds_cannot_supply_it(
    tmp_path: Path, amd: FakeAmd, kds: str | None, message: str, refused_port: int
) -> None:
    with (
        signing_tsm(tmp_path, amd, auxblob=EMPTY_TABLE) as (root, _tsm),
        pytest.raises(errors.CollateralMissingError) as info,
    ):
        _prepare_snp(
            tmp_path / "cas",
            root,
            amd_roots=amd.roots(),
            kds=f"http://127.0.0.1:{refused_port}" if kds else None,
        )
    assert info.value.message.startswith(
        "--tee sev-snp: cannot obtain the CAS's own evidence, not starting: " + message
    ), info.value.message
    assert not (tmp_path / "cas" / "cas.db").exists()  # refused before the database


def test_snp_cas_kds_down_at_a_refresh_keeps_the_served_evidence_and_is_counted(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(AT)
    # A CRL due in a day: the refresh two days on must ask the KDS again (memory and disk stale).
    crl = amd.crl(this_update=AT - timedelta(days=1), next_update=AT + timedelta(days=1))
    with fake_kds() as kds, signing_tsm(tmp_path, amd, auxblob=EMPTY_TABLE) as (root, tsm):
        kds.serve_amd(amd, crl=crl)
        routes = dict(kds.routes)
        cas, evidence, _key, cert_path, _env, _signer = _prepare_snp(
            tmp_path / "cas", root, clock=clock, amd_roots=amd.roots(), kds=kds.url
        )
        assert evidence is not None
        app = create_app(cas, cas_evidence=evidence)
        served = get(app, "/v1/cas/evidence")
        kds.routes = {path: (503, b"down", {}) for path in routes}  # the KDS is down
        refresher = EvidenceRefresher(evidence, 3600)
        clock.now = AT + timedelta(days=2)
        with caplog.at_level(logging.WARNING, logger="confide.cas"):
            assert not refresher.refresh_once()
        assert get(app, "/v1/cas/evidence") == served
        assert metric(app, "confide_cas_evidence_refresh_failures_total") == 1
        assert metric(app, "confide_cas_evidence_refreshes_total") == 0
        # The KDS is back, with a current CRL: the next period publishes new evidence.
        later = amd.crl(this_update=AT + timedelta(days=2), next_update=AT + timedelta(days=30))
        kds.routes = dict(routes)
        kds.serve_amd(amd, crl=later)
        clock.now = AT + timedelta(days=2, hours=1)
        assert refresher.refresh_once()
        refreshed = get(app, "/v1/cas/evidence")
        assert metric(app, "confide_cas_evidence_refresh_failures_total") == 1
        assert metric(app, "confide_cas_evidence_refreshes_total") == 1
    cas.db.dispose()
    assert tsm.issued.value == 3
    start, warning = [json.loads(r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    assert start["event"] == "replica-tcb-not-judged"  # once at start (no --replica-min-tcb)
    assert warning["event"] == "cas-evidence-refresh-failed" and warning["failures"] == 1
    assert warning["error"] == "CollateralMissingError" and "--kds could not supply it" in warning["detail"]
    assert warning["serving_obtained_at"] == "2025-06-01T00:00:00Z"
    verify_cas_evidence(_der(cert_path), refreshed, sim_key_pem=None, at=clock.now, amd_roots=amd.roots())
    # The refreshed document carries the new CRL; the first one's is out of date by now.
    crl_of = {body: base64.b64decode(json.loads(body)["amd_crl"]) for body in (served, refreshed)}
    assert crl_of[refreshed] == later.public_bytes(serialization.Encoding.DER)
    assert crl_of[served] == crl.public_bytes(serialization.Encoding.DER)
    with pytest.raises(errors.CollateralExpiredError, match="the AMD CRL the CAS published"):
        verify_cas_evidence(_der(cert_path), served, sim_key_pem=None, at=clock.now, amd_roots=amd.roots())


def test_snp_cas_fetches_its_vcek_for_a_refresh_in_the_refresher_thread(
    tmp_path: Path, amd: FakeAmd, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(AT)
    due = amd.crl(this_update=AT - timedelta(days=1), next_update=AT + timedelta(days=1))
    with fake_kds() as kds, signing_tsm(tmp_path, amd, auxblob=EMPTY_TABLE) as (root, _tsm):
        kds.serve_amd(amd, crl=due)
        cas, evidence, *_ = _prepare_snp(
            tmp_path / "cas", root, clock=clock, amd_roots=amd.roots(), kds=kds.url
        )
        assert evidence is not None
        source = cas.verifier.kds.source
        fetch, threads = source.fetch, []

        def recording(request: Any) -> Any:
            threads.append(threading.current_thread().name)
            return fetch(request)

        monkeypatch.setattr(source, "fetch", recording)
        kds.serve_amd(amd, crl=amd.crl(this_update=AT, next_update=AT + timedelta(days=30)))
        clock.now = AT + timedelta(days=2)  # the CRL fell due: the refresh asks the KDS again
        waits = iter([False, True])  # one period, then stop
        refresher = EvidenceRefresher(evidence, 3600, wait=lambda _seconds: next(waits))
        refresher.start()
        refresher.stop()
    cas.db.dispose()
    assert threads == ["cas-evidence-refresher"]  # not the caller's, not an event loop's
    assert evidence.refreshes == 1 and evidence.failures == 0


# --- Startup refusals -----------------------------------------------------------------------------


def test_cas_does_not_start_without_its_evidence(tmp_path: Path) -> None:
    provider = ConfigfsTsmQuoteProvider(tmp_path / "no-tsm")
    with pytest.raises(errors.UsageError, match="cannot obtain the CAS's own evidence, not starting"):
        prepare(tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None,
                tee="sev-snp", quote_provider=provider)  # fmt: skip
    assert not (tmp_path / "cas" / "cas.db").exists()  # refused before the database
    with pytest.raises(errors.UsageError, match="exclude each other"):
        prepare(tmp_path / "cas2", host="127.0.0.1", dev=True, db_url=None, collateral=None, tee="tdx")


def test_evidence_of_another_tee_than_asked_is_refused(tmp_path: Path, amd: FakeAmd) -> None:
    with snp_tsm(tmp_path, amd) as root:
        with pytest.raises(errors.UsageError, match=r"got sev-snp evidence .* expected tdx"):
            tee_evidence("tdx", ConfigfsTsmQuoteProvider(root), bytes(64))
        ok = tee_evidence("sev-snp", ConfigfsTsmQuoteProvider(root), bytes(range(64)))
    assert base64.b64decode(ok["evidence"])[0x50:0x90] == bytes(range(64))


def test_cas_serve_tee_asks_configfs_for_its_platform_only(tmp_path: Path, amd: FakeAmd) -> None:
    """``cas serve --tee tdx`` on an SEV-SNP kernel: the provider ``quote_provider_for`` makes
    expects TDX and refuses the kernel's ``sev_guest`` itself, naming it (that this happens
    before any report is requested is shown in test_runtime_quote.py)."""
    tdx, snp = quote_provider_for("tdx"), quote_provider_for("sev-snp")
    assert isinstance(tdx, ConfigfsTsmQuoteProvider) and tdx.expect is Platform.TDX
    assert isinstance(snp, ConfigfsTsmQuoteProvider) and snp.expect is Platform.SEV_SNP
    with snp_tsm(tmp_path, amd) as root:
        with pytest.raises(
            errors.UsageError, match=r"--tee tdx, but the kernel's attestation provider is 'sev_guest'"
        ):
            tee_evidence("tdx", ConfigfsTsmQuoteProvider(root, expect=Platform.TDX), bytes(64))
        ok = tee_evidence(
            "sev-snp", ConfigfsTsmQuoteProvider(root, expect=Platform.SEV_SNP), bytes(range(64))
        )
    assert ok["platform"] == "sev-snp"


def test_tdx_and_sgx_cas_publish_their_quote(tmp_path: Path) -> None:
    """The wiring for TDX (configfs-tsm, tdx_guest) and SGX (Gramine): the quote over the binding,
    no aux blobs. (The fake trees' quotes are unsigned skeletons: verification is tested below.)"""
    binding = bytes(range(64, 128))
    with mounted(tmp_path / "tdx" / "report", FakeTsm(TsmBehaviour(provider="tdx_guest"))) as root:
        doc = tee_evidence("tdx", ConfigfsTsmQuoteProvider(root), binding)
    assert doc["platform"] == "tdx" and doc["provider"] == "configfs-tsm/tdx_guest" and doc["aux"] == {}
    assert base64.b64decode(doc["evidence"])[48 + 520 : 48 + 584] == binding
    with mounted(tmp_path / "attestation", FakeGramine()) as root:
        doc = tee_evidence("sgx-gramine", GramineQuoteProvider(root), binding)
        with pytest.raises(errors.UsageError, match="got sgx evidence"):
            tee_evidence("tdx", GramineQuoteProvider(root), binding)
    assert doc["platform"] == "sgx" and doc["provider"] == "gramine/dcap"
    assert base64.b64decode(doc["evidence"])[48 + 320 : 48 + 384] == binding


def _confide(*args: str) -> subprocess.CompletedProcess[str]:
    return run_confide(*args)


@pytest.mark.parametrize(
    ("tee", "device", "message"),
    [
        ("sev-snp", CONFIGFS_TSM_ROOT, "not a TDX or SEV-SNP guest"),
        ("tdx", CONFIGFS_TSM_ROOT, "not a TDX or SEV-SNP guest"),
        ("sgx-gramine", GRAMINE_ATTESTATION_ROOT, "not running inside Gramine-SGX"),
    ],
)
def test_cli_serve_tee_without_the_device(tmp_path: Path, tee: str, device: Path, message: str) -> None:
    if device.exists():
        pytest.skip(f"{device} exists on this machine")
    r = _confide("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0", "--tee", tee)
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    assert message in r.stderr and "not starting" in r.stderr, r.stderr


def test_cli_serve_dev_and_tee_exclude_each_other(tmp_path: Path) -> None:
    r = _confide("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0", "--dev",
                 "--tee", "tdx")  # fmt: skip
    assert r.returncode == errors.UsageError.exit_code and "exclude each other" in r.stderr, r.stderr


def test_cli_attest_refuses_an_unknown_tolerance() -> None:
    r = _confide("cas", "attest", "https://127.0.0.1:1", "--tolerate", "simulation")
    assert r.returncode == errors.UsageError.exit_code, r.stderr


# --- TDX and SGX: DCAP verification, tolerances and measurement before the binding ----------------


def _case(quote: str, collateral_suffix: str) -> Case:
    return next(c for c in CASES if c.quote == quote and c.collateral.endswith(collateral_suffix))


def _der(cert_path: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def cert_der(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from confide.cas.server import _tls_identity

    _key, cert = _tls_identity(tmp_path_factory.mktemp("tls"), "127.0.0.1")
    return _der(cert)


def _dcap(case: Case, cert_der: bytes, **kwargs: Any) -> Any:
    platform = "tdx" if case.quote.startswith("tdx/") else "sgx"
    doc = {"platform": platform, "evidence": base64.b64encode(case.quote_bytes()).decode(), "log_key": "k"}
    doc.update(kwargs.pop("doc", {}))
    kwargs.setdefault("collateral", source_for(str(ASSETS / case.collateral)))
    return verify_cas_evidence(cert_der, json.dumps(doc).encode(), sim_key_pem=None, at=case.time, **kwargs)


def test_tdx_up_to_date_is_verified_then_refused_for_the_binding(cert_der: bytes) -> None:
    case = _case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", "collateral_0625_00806f050000.dcapqvl.json")
    mr_td = "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a"
    with pytest.raises(errors.BindingError):
        _dcap(case, cert_der, measurements=(mr_td,))
    with pytest.raises(errors.MeasurementError, match="mr_td"):
        _dcap(case, cert_der, measurements=("ab" * 48,))
    with pytest.raises(errors.CollateralMissingError, match="--collateral"):
        _dcap(case, cert_der, collateral=None)
    with pytest.raises(errors.ParseError, match="'collateral'"):
        _dcap(case, cert_der, doc={"aux": {"collateral": base64.b64encode(case.collateral_bytes()).decode()}})


def test_tdx_debug_td_is_refused_unless_tolerated(cert_der: bytes) -> None:
    case = _case("tdx/trustee/tdx_quote_4.dat", "collateral_v4_2023-06.dcapqvl.json")
    with pytest.raises(errors.AppraisalError, match="debug-mode"):
        _dcap(case, cert_der)
    with pytest.raises(errors.BindingError):
        _dcap(case, cert_der, tolerate=(Tolerance.DEBUG_MODE,))


def test_sgx_outdated_tcb_is_refused_unless_tolerated(cert_der: bytes) -> None:
    case = _case("sgx/automata-dcap-rs/sgx_quote_v3_from_lib_rs.dat", "collateral_2025-02.dcapqvl.json")
    with pytest.raises(errors.AppraisalError, match="outdated-tcb"):
        _dcap(case, cert_der)
    mr_enclave = "a4f45c39dac622cb1dd32ddb35a52ec92db41d0fa88a1c911c49e59c534f61cd"
    with pytest.raises(errors.BindingError):
        _dcap(case, cert_der, tolerate=(Tolerance.OUTDATED_TCB,), measurements=(mr_enclave,))
    advised = _case(
        "sgx/automata-dcap-rs/sgx_quote_v3_from_lib_rs.dat", "collateral_0825_00606a000000.dcapqvl.json"
    )
    with pytest.raises(errors.AppraisalError, match="INTEL-SA-00960"):
        _dcap(advised, cert_der, tolerate=(Tolerance.OUTDATED_TCB,))
    with pytest.raises(errors.BindingError):
        _dcap(advised, cert_der, tolerate=(Tolerance.OUTDATED_TCB,),
              ignore_advisories=("INTEL-SA-00960", "INTEL-SA-00657", "INTEL-SA-00767", "INTEL-SA-00615"))  # fmt: skip


# --- --min-tcb-eval-number: cas attest, and the CAS's own evidence (cas serve) ---------------------


def _numbers(case: Case) -> tuple[int, int]:
    bundle = json.loads(case.collateral_bytes())
    return (
        json.loads(bundle["tcb_info"])["tcbEvaluationDataNumber"],
        json.loads(bundle["qe_identity"])["tcbEvaluationDataNumber"],
    )


def test_cas_attest_minimum_tcb_evaluation(cert_der: bytes) -> None:
    """Checked right after verification, before the binding: at the collateral's own number the
    real quote goes on to the binding (which it cannot pass here); above it, refused for its
    collateral with the numbers and the option named."""
    case = _case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", "collateral_0625_00806f050000.dcapqvl.json")
    lowest = min(_numbers(case))
    with pytest.raises(errors.BindingError):
        _dcap(case, cert_der, min_tcb_evaluation_data_number=lowest)
    with pytest.raises(errors.CollateralOutdatedError, match="cas attest --min-tcb-eval-number") as info:
        _dcap(case, cert_der, min_tcb_evaluation_data_number=lowest + 1)
    assert f"tcbEvaluationDataNumber {lowest}, expected at least {lowest + 1}" in info.value.message


def test_self_check_applies_the_cas_minimum_to_its_own_evidence(cert_der: bytes) -> None:
    from confide.cas.self_check import SelfCheck

    case = _case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", "collateral_0625_00806f050000.dcapqvl.json")
    lowest = min(_numbers(case))
    doc = {"platform": "tdx", "evidence": base64.b64encode(case.quote_bytes()).decode(), "log_key": "k"}
    body = json.dumps(doc).encode()
    collateral = source_for(str(ASSETS / case.collateral))
    for minimum in (None, lowest):  # verified, then refused for the binding only
        check = SelfCheck(cert_der, collateral=collateral, min_tcb_evaluation_data_number=minimum)
        with pytest.raises(errors.BindingError):
            check(body, case.time)
        with pytest.raises(errors.BindingError):
            check.verified(body, case.time)
    strict = SelfCheck(cert_der, collateral=collateral, min_tcb_evaluation_data_number=lowest + 1)
    for run in (strict, strict.verified):
        with pytest.raises(errors.CollateralOutdatedError, match="the CAS's own evidence"):
            run(body, case.time)


def test_cli_cas_attest_has_the_option() -> None:
    r = run_confide("cas", "attest", "--help")
    assert "--min-tcb-eval-number" in r.stdout
    r = run_confide("cas", "attest", "https://127.0.0.1:1", "--min-tcb-eval-number", "0")
    assert r.returncode == errors.UsageError.exit_code, r.stderr
