"""``cas serve --opaque-refusals`` end to end (docs/cas.md "Opaque refusals"): a CAS process over
real TLS, SQLite and PostgreSQL. An unknown policy, an unknown service, a wrong measurement and a
debug TEE the policy does not tolerate get the same HTTP answer, and ``confide run`` the same
one-line reason and exit code (31); the ledger and the CAS's log keep each reason."""

from __future__ import annotations

import base64
import json
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_cas_e2e import app_script, apply, confide, identity, measure, policy_yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess
from confide import errors
from confide.cas.core import OPAQUE_ATTEST_REFUSAL, binding_report_data
from confide.cas.db import Database, raw_connection, raw_execute
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger
from confide.runtime.quote import SimQuoteProvider


@pytest.fixture(params=["sqlite", "postgresql"])
def opaque(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CasProcess]:
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres").new_database()
    cas = CasProcess(tmp_path / "cas", db_url, extra_args=("--opaque-refusals",)).start()
    try:
        yield cas
    finally:
        cas.stop()


def _post_attest(cas: CasProcess, provider: SimQuoteProvider, policy: str, service: str) -> tuple[int, bytes]:
    """One attestation over TLS to the pinned CAS certificate: the answer's status and bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with httpx2.Client(
        base_url=cas.env["CONFIDE_CAS_URL"],
        verify=ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"]),
        timeout=30,
    ) as http:
        nonce = http.post("/v1/attest/nonce").json()["nonce"]
        raw = provider.get_evidence(binding_report_data(der, bytes.fromhex(nonce))).raw
        request = {"policy": policy, "service": service, "platform": "sim", "nonce": nonce,
                   "evidence": base64.b64encode(raw).decode(), "public_key": base64.b64encode(der).decode()}  # fmt: skip
        response = http.post("/v1/attest", json=request)
        return response.status_code, response.content


def _refusals(cas: CasProcess) -> list[dict[str, Any]]:
    """The refused attestations in the CAS's database, each checked against its ledger entry."""
    db = Database(cas.db_url or f"sqlite:///{cas.data_dir / 'cas.db'}")
    try:
        with db.read() as conn:
            rows = raw_execute(
                conn, "SELECT seq, payload FROM events WHERE type = 'attestation' ORDER BY seq", ()
            ).fetchall()
            out = []
            for seq, payload in rows:
                recorded = json.loads(payload)
                entry = Ledger.entry(raw_connection(conn), int(seq) - 1)
                assert entry is not None and Entry.from_bytes(entry).payload == recorded
                if recorded["verdict"] == "refused":
                    out.append(recorded)
            return out
    finally:
        db.dispose()


def _logged_refusals(cas: CasProcess, count: int) -> list[dict[str, Any]]:
    """The ``attestation-refused`` lines of the CAS's log, once there are ``count`` (a line is
    written at most one loop iteration after its request ended)."""
    assert cas.log is not None
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in cas.log.read_text().splitlines() if line.startswith("{")]
        refused = [line for line in lines if line.get("event") == "attestation-refused"]
        if len(refused) >= count or time.monotonic() > deadline:
            return refused
        time.sleep(0.1)


def _opq_providers(
    cas: CasProcess, tmp_path: Path
) -> tuple[Path, list[str], SimQuoteProvider, SimQuoteProvider, SimQuoteProvider]:
    """Policy ``opq`` (service ``app``, the measurement of ``app.sh``) applied by a new identity:
    that identity's file, the program's command line, and the simulated evidence of that
    program, of another program and of it in debug mode."""
    alice, _ = identity(cas, tmp_path, "alice")
    cmd = ["/bin/sh", str(app_script(tmp_path))]
    assert apply(cas, tmp_path, policy_yaml("opq", measure(cas, *cmd)), alice).returncode == 0
    sim_dir = Path(cas.env["CONFIDE_SIM_DIR"])
    other = ["/bin/sh", str(app_script(tmp_path, "other.sh", "echo x\n"))]
    return (
        alice,
        cmd,
        SimQuoteProvider.for_command(sim_dir, cmd),
        SimQuoteProvider.for_command(sim_dir, other),
        SimQuoteProvider.for_command(sim_dir, cmd, debug=True),
    )


def test_refusals_are_alike_and_recorded_in_detail(opaque: CasProcess, tmp_path: Path) -> None:
    cas = opaque
    alice, cmd, good, other, debug = _opq_providers(cas, tmp_path)

    # Over HTTP: one status, one body, for the four refusals.
    answers = {
        "unknown policy": _post_attest(cas, good, "nope", "app"),
        "unknown service": _post_attest(cas, good, "opq", "other"),
        "wrong measurement": _post_attest(cas, other, "opq", "app"),
        "debug not tolerated": _post_attest(cas, debug, "opq", "app"),
    }
    assert len(set(answers.values())) == 1, answers
    status, body = answers["unknown policy"]
    assert status == 403
    assert json.loads(body) == {
        "error": {"class": "AppraisalError", "message": OPAQUE_ATTEST_REFUSAL, "exit_code": 31}
    }

    # confide run: the one-line reason and the exit code of an appraisal refusal, whatever the cause.
    runs = [
        confide(cas, "run", "--config-id", "nope/app", "--tee", "sim", "--", *cmd),
        confide(cas, "run", "--config-id", "opq/other", "--tee", "sim", "--", *cmd),
        confide(
            cas, "run", "--config-id", "opq/app", "--tee", "sim", "--", "/bin/sh", str(tmp_path / "other.sh")
        ),
    ]
    for r in runs:
        assert r.returncode == errors.AppraisalError.exit_code, r.stderr
        # one line, the same for every cause (the simulator's warning comes only once accepted)
        assert r.stderr.splitlines() == [f"error: AppraisalError: {OPAQUE_ATTEST_REFUSAL}"]
    # and an acceptable attestation is accepted
    ok = confide(cas, "run", "--config-id", "opq/app", "--tee", "sim", "--", *cmd)
    assert ok.returncode == 0, ok.stderr

    # The ledger keeps each reason (in order: the four over HTTP, then the three runs).
    refused = _refusals(cas)
    assert [(e["service"], e["reason_class"]) for e in refused] == [
        ("app", "AccessDeniedError"),
        ("other", "AccessDeniedError"),
        ("app", "AppraisalError"),
        ("app", "AppraisalError"),
        ("app", "AccessDeniedError"),
        ("other", "AccessDeniedError"),
        ("app", "AppraisalError"),
    ]
    reasons = [e["reason"] for e in refused]
    assert reasons[0] == reasons[4] == "no policy nope"
    assert reasons[1] == reasons[5] == "policy opq has no service other"
    assert "measurement" in reasons[2] and "measurement" in reasons[6]
    assert "debug" in reasons[3]
    # So does the CAS's log, line for line.
    logged = _logged_refusals(cas, len(refused))
    assert [(line["reason_class"], line["reason"]) for line in logged] == [
        (e["reason_class"], e["reason"]) for e in refused
    ]
    assert [line["policy"] for line in logged][:4] == ["nope", "opq", "opq", "opq"]
    # A reader of the policy sees the refusals filed under it, with their reasons.
    events = [
        json.loads(line)
        for line in confide(
            cas, "policy", "events", "opq", "--identity", str(alice), check=True
        ).stdout.splitlines()
    ]
    shown = [
        e["payload"]["reason"]
        for e in events
        if e["type"] == "attestation" and e["payload"]["verdict"] == "refused"
    ]
    assert shown == [reasons[1], reasons[2], reasons[3], reasons[5], reasons[6]]


def test_refusals_are_answered_no_earlier_than_the_refusal_delay(tmp_path: Path) -> None:
    """``--refusal-delay 0.2`` over real TLS (docs/cas.md "Opaque refusals"): every refusal's
    answer comes no earlier than 0.2 s after its request was sent (a lower bound only), with the
    same bytes; the acceptance is not one of the answers counted; ``/metrics`` counts the four,
    each either on time or past its deadline."""
    cas = CasProcess(
        tmp_path / "cas", None, extra_args=("--opaque-refusals", "--refusal-delay", "0.2")
    ).start()
    try:
        _, _, good, other, debug = _opq_providers(cas, tmp_path)
        answers = set()
        for provider, policy, service in [
            (good, "nope", "app"),
            (good, "opq", "other"),
            (other, "opq", "app"),
            (debug, "opq", "app"),
        ]:
            start = time.monotonic()
            answers.add(_post_attest(cas, provider, policy, service))
            assert time.monotonic() - start >= 0.2
        ((status, body),) = answers  # one answer for the four
        assert status == 403
        assert json.loads(body) == {
            "error": {"class": "AppraisalError", "message": OPAQUE_ATTEST_REFUSAL, "exit_code": 31}
        }
        status, _ = _post_attest(cas, good, "opq", "app")
        assert status == 200
        with httpx2.Client(
            base_url=cas.env["CONFIDE_CAS_URL"],
            verify=ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"]),
            timeout=30,
        ) as http:
            metrics = http.get("/metrics").text
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('confide_opaque_refusals_total{deadline="') and 'route="/v1/attest"' in line
        ]
        assert len(counted) == 2 and sum(counted) == 4.0, metrics
        assert len(_refusals(cas)) == 4  # each recorded, as without the delay
    finally:
        cas.stop()


def test_a_refusal_waiting_when_the_cas_stops_is_answered(tmp_path: Path) -> None:
    """SIGTERM while a refusal waits for ``--refusal-delay`` 8 s (docs/cas.md "Opaque
    refusals"): the CAS answers it with the opaque refusal before it exits. uvicorn's graceful
    shutdown (5 s) cancelled the wait before: a 500 and an "Exception in ASGI application"
    traceback in the log instead of the answer."""
    cas = CasProcess(tmp_path / "cas", None, extra_args=("--opaque-refusals", "--refusal-delay", "8")).start()
    try:
        script = app_script(tmp_path)
        provider = SimQuoteProvider.for_command(Path(cas.env["CONFIDE_SIM_DIR"]), ["/bin/sh", str(script)])
        answer: list[tuple[int, bytes]] = []
        thread = threading.Thread(target=lambda: answer.append(_post_attest(cas, provider, "nope", "app")))
        thread.start()
        with httpx2.Client(
            base_url=cas.env["CONFIDE_CAS_URL"],
            verify=ssl.create_default_context(cafile=cas.env["CONFIDE_CAS_CERT"]),
            timeout=30,
        ) as http:
            # counted "met" as its wait starts (confide.cas.refusal_delay)
            waiting = 'confide_opaque_refusals_total{deadline="met",route="/v1/attest"} 1.0'
            deadline = time.monotonic() + 30
            while waiting not in http.get("/metrics").text:
                assert time.monotonic() < deadline, "the refusal never started waiting"
                time.sleep(0.05)
        cas.stop()  # SIGTERM, waited for (20 s at most)
        thread.join(timeout=30)
        assert answer and answer[0][0] == 403, answer
        assert json.loads(answer[0][1])["error"]["message"] == OPAQUE_ATTEST_REFUSAL
        assert cas.log is not None and "Exception in ASGI application" not in cas.log.read_text()
    finally:
        cas.stop()
