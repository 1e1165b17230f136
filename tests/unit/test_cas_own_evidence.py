"""The CAS's own evidence document and its refresh (``confide.cas.own_evidence``): the refresh
loop with an injected ``wait`` (no real sleeping), ``--evidence-refresh`` validation, a ``--dev``
CAS's simulated evidence re-issued, and ``obtained_at`` as ``confide cas attest`` parses it
(hostile input; absent from an older CAS). SEV-SNP refreshes through a fake configfs-tsm tree:
tests/unit/test_cas_self_attest.py."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cas_inproc import Clock
from cli import run_confide
from confide import errors
from confide.cas.cli import _obtained
from confide.cas.own_evidence import CasEvidence, EvidenceRefresher, parse_refresh_interval, rfc3339
from confide.cas.pin import verify_cas_evidence
from confide.cas.self_check import SelfCheck
from confide.cas.server import prepare
from confide.runtime.quote import CONFIGFS_TSM_ROOT

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

# --- --evidence-refresh ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("10", 10), (" 3600 ", 3600), ("2592000", 2592000)])
def test_refresh_interval_accepted(text: str, seconds: int) -> None:
    assert parse_refresh_interval(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "-5", "5", "9", "1e3", "3600.5", "abc", "0x10", "2592001", "\u0663\u0666\u0660\u0660", "9" * 40],
)
def test_refresh_interval_refused(text: str) -> None:
    with pytest.raises(errors.UsageError, match=r"--evidence-refresh: got .*, expected 0 \(no refresh\)"):
        parse_refresh_interval(text)


def test_cli_serve_validates_evidence_refresh(tmp_path: Path) -> None:
    serve = ("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0")
    r = run_confide(*serve, "--dev", "--evidence-refresh", "1e3")
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    assert "--evidence-refresh: got '1e3'" in r.stderr, r.stderr
    r = run_confide(*serve, "--evidence-refresh", "60")
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    assert "--evidence-refresh needs --tee or --dev" in r.stderr, r.stderr
    assert not (tmp_path / "cas").exists()  # refused before anything was created
    if CONFIGFS_TSM_ROOT.exists():
        return
    # 0 is accepted (no refresh): the CAS then stops at the missing device, as without the option.
    r = run_confide(*serve, "--tee", "sev-snp", "--evidence-refresh", "0")
    assert r.returncode == errors.UsageError.exit_code, r.stderr
    assert "not starting" in r.stderr and "--evidence-refresh" not in r.stderr, r.stderr


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf])
def test_refresher_refuses_a_nonsense_interval(interval: float) -> None:
    evidence = CasEvidence(lambda _now: {"platform": "sim"}, clock=lambda: T0)
    with pytest.raises(errors.UsageError, match="positive number of seconds"):
        EvidenceRefresher(evidence, interval)


# --- The refresh loop -----------------------------------------------------------------------------


class Source:
    """An evidence source whose answers the test scripts: a document, or an exception."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.asked: list[datetime] = []

    def __call__(self, now: datetime) -> dict[str, Any]:
        self.asked.append(now)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return {"platform": "sim", "evidence": f"evidence {len(self.asked)}"}


def test_refresher_loop_waits_the_interval_and_survives_failures() -> None:
    times = iter(T0 + timedelta(seconds=30 * i) for i in range(10))
    source = Source(None, errors.StorageError("the PSP is busy"), RuntimeError("a bug"), None)
    evidence = CasEvidence(source, clock=lambda: next(times))
    waits: list[float] = []

    def wait(seconds: float) -> bool:  # True: stop
        waits.append(seconds)
        return len(waits) > 4

    EvidenceRefresher(evidence, 30, wait=wait).run()  # returns: no failure escapes the loop
    assert waits == [30] * 5
    assert (evidence.refreshes, evidence.failures) == (2, 2)
    assert source.asked == [T0 + timedelta(seconds=30 * i) for i in range(5)]
    assert evidence.document == {
        "platform": "sim",
        "evidence": "evidence 5",
        "obtained_at": "2025-06-01T12:02:00Z",
    }
    assert evidence.obtained_at == T0 + timedelta(minutes=2)


def test_first_evidence_failure_propagates() -> None:
    with pytest.raises(errors.StorageError):
        CasEvidence(Source(errors.StorageError("no device")), clock=lambda: T0)
    with pytest.raises(TypeError):  # obtained_at is the holder's, not the source's
        CasEvidence(lambda _now: {"platform": "sim", "obtained_at": "x"}, clock=lambda: T0)


class Check:
    """A check whose answers the test scripts: a summary, or an exception."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[dict[str, Any], datetime]] = []

    def __call__(self, body: bytes, at: datetime) -> dict[str, Any]:
        self.seen.append((json.loads(body), at))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return {"verified": True, "n": len(self.seen)}


def test_a_document_is_published_only_after_its_check() -> None:
    times = iter(T0 + timedelta(seconds=30 * i) for i in range(10))
    check = Check(None, errors.SignatureError("bad signature"), None)
    evidence = CasEvidence(Source(), check=check, clock=lambda: next(times))
    assert evidence.check == {"verified": True, "n": 1}
    # The check sees the document as it will be published, at the time it was obtained.
    assert check.seen[0] == (evidence.document, T0)
    first = evidence.body
    with pytest.raises(
        errors.SignatureError, match=r"^the evidence obtained does not verify .*: bad signature$"
    ):
        evidence.refresh()
    assert (evidence.body, evidence.check, evidence.refreshes, evidence.failures) == (
        first,
        {"verified": True, "n": 1},
        0,
        1,
    )
    evidence.refresh()
    assert evidence.document["evidence"] == "evidence 3" and evidence.check == {"verified": True, "n": 3}
    assert (evidence.refreshes, evidence.failures) == (1, 1)


def test_first_document_that_fails_its_check_propagates_with_its_class() -> None:
    with pytest.raises(errors.CertificateChainError, match=r"does not verify .*: not AMD's"):
        CasEvidence(Source(), check=Check(errors.CertificateChainError("not AMD's")), clock=lambda: T0)
    assert CasEvidence(Source(), clock=lambda: T0).check is None  # no check configured


def test_refresher_thread_stops_without_waiting_a_period() -> None:
    evidence = CasEvidence(Source(), clock=lambda: T0)
    refresher = EvidenceRefresher(evidence, 3600)
    refresher.start()
    refresher.stop()  # the stop event ends the wait at once; join would time out (5 s) otherwise
    assert not refresher._thread.is_alive() and evidence.refreshes == 0


def test_rfc3339() -> None:
    assert rfc3339(datetime(2025, 1, 31, 13, 4, 5, 999999, tzinfo=UTC)) == "2025-01-31T13:04:05Z"
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2025, 1, 31, 1, 0, 0, tzinfo=plus_two)) == "2025-01-30T23:00:00Z"


# --- --dev: simulated evidence, refreshed too -----------------------------------------------------


@pytest.fixture
def dev_cas(tmp_path: Path) -> Any:
    clock = Clock(T0)
    cas, evidence, _key, cert_path, env, _signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None, clock=clock
    )
    cas.db.dispose()
    assert evidence is not None
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    sim_key = (Path(env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem").read_bytes()
    return clock, evidence, cert_der, sim_key


def test_dev_cas_reissues_its_simulated_evidence(dev_cas: Any) -> None:
    clock, evidence, cert_der, sim_key = dev_cas
    first = evidence.body
    clock.now = T0 + timedelta(hours=1)
    evidence.refresh()
    second = evidence.body
    assert first != second and evidence.refreshes == 1
    old = verify_cas_evidence(cert_der, first, sim_key_pem=sim_key, at=T0)
    new = verify_cas_evidence(cert_der, second, sim_key_pem=sim_key, at=clock.now)
    assert old.evidence.claims["timestamp"] == int(T0.timestamp())
    assert new.evidence.claims["timestamp"] == int(clock.now.timestamp())
    assert new.evidence.claims["measurement"] == old.evidence.claims["measurement"]
    assert (old.obtained_at, new.obtained_at) == (T0, clock.now)
    # The CAS verified both with the simulated platform's key before publishing them.
    assert evidence.check == {
        "verified": True, "platform": "sim", "tcb_status": None, "advisory_ids": [], "debug": False,
        "simulated": True,
    }  # fmt: skip


def test_minimum_tcb_evaluation_judges_intel_evidence_only(dev_cas: Any) -> None:
    """``cas serve --min-tcb-eval-number`` leaves the own evidence of a CAS on another platform
    (here the simulator) as it is (its summary has no numbers); ``cas attest
    --min-tcb-eval-number`` asked of such a CAS is a usage error, not a silent pass."""
    _clock, evidence, cert_der, sim_key = dev_cas
    check = SelfCheck(cert_der, sim_key_pem=sim_key, min_tcb_evaluation_data_number=1000)
    summary = check(evidence.body, T0)
    assert summary["verified"] is True and "tcb_evaluation" not in summary
    assert check.verified(evidence.body, T0).tcb_evaluation is None
    with pytest.raises(errors.UsageError, match="applies to Intel DCAP evidence only"):
        verify_cas_evidence(
            cert_der, evidence.body, sim_key_pem=sim_key, at=T0, min_tcb_evaluation_data_number=1
        )


# --- obtained_at as `confide cas attest` reads it ----------------------------------------------------


def test_document_without_obtained_at_is_accepted(dev_cas: Any) -> None:
    """A CAS from before the refresh does not say when it obtained its evidence."""
    _clock, evidence, cert_der, sim_key = dev_cas
    document = evidence.document
    del document["obtained_at"]
    pinned = verify_cas_evidence(cert_der, json.dumps(document).encode(), sim_key_pem=sim_key, at=T0)
    assert pinned.obtained_at is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        1748779200,
        ["2025-06-01T12:00:00Z"],
        "",
        "2025-06-01 12:00:00Z",
        "2025-06-01T12:00:00",
        "2025-06-01T12:00:00+00:00",
        "2025-06-01T12:00:00z",
        "2025-06-01t12:00:00Z",
        "2025-06-01T12:00:00.1234567Z",
        "2025-13-01T12:00:00Z",
        "2025-06-31T12:00:00Z",
        "2025-06-01T12:00:60Z",
        "\uff12025-06-01T12:00:00Z",
        "2025-06-01T12:00:00Z\n",
        "x" * 10_000,
    ],
)
def test_malformed_obtained_at_is_refused(dev_cas: Any, value: object) -> None:
    _clock, evidence, cert_der, sim_key = dev_cas
    body = json.dumps({**evidence.document, "obtained_at": value}).encode()
    with pytest.raises(errors.ParseError, match="obtained_at") as info:
        verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=T0)
    assert len(info.value.message) < 200


def test_fractional_obtained_at_is_accepted(dev_cas: Any) -> None:
    _clock, evidence, cert_der, sim_key = dev_cas
    body = json.dumps({**evidence.document, "obtained_at": "2025-06-01T12:00:00.25Z"}).encode()
    pinned = verify_cas_evidence(cert_der, body, sim_key_pem=sim_key, at=T0)
    assert pinned.obtained_at == T0 + timedelta(milliseconds=250)


def test_attest_shows_obtained_at() -> None:
    now = datetime.now(UTC)
    assert _obtained(None).startswith("not stated")
    assert _obtained(now - timedelta(hours=2, minutes=5, seconds=1)).endswith("(2 h 5 min ago)")
    ahead = _obtained(now + timedelta(minutes=10))
    assert "ahead of this machine's clock by" in ahead and ahead.startswith(
        rfc3339(now + timedelta(minutes=10))
    )
