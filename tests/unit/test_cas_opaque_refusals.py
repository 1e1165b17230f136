"""``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"): every recorded attestation
refusal is answered alike (one message, one class, one HTTP status), and so is every access
refusal of a volume tag report, while the ledger and the CAS's log keep each reason. Without the
option the detailed answers are unchanged."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cas_volume_update_policy import TAG0, TAG1, current_tag, owner_policy, report

from asgi_call import call
from cas_inproc import MEASUREMENT, InProcessCas, RuntimeKey, last_attestation
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import OPAQUE_ATTEST_REFUSAL, OPAQUE_TAG_REFUSAL, decrypt_release
from confide.identity import Identity

Request = Callable[[InProcessCas], dict[str, Any]]


def _plain(**kw: Any) -> Request:
    def make(ipc: InProcessCas) -> dict[str, Any]:
        return ipc.request(**kw)[0]

    return make


def _debug(ipc: InProcessCas) -> dict[str, Any]:
    """Genuine simulated evidence of the policy's measurement, but of a debug TEE, which the
    policy does not tolerate."""
    rt = RuntimeKey(ipc.cas)
    evidence = ipc.platform.issue(
        report_data=rt.binding, measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time()), debug=True
    ).to_bytes()
    return rt.body(policy="app", service="svc", platform="sim", evidence=evidence)


def _spent_nonce(ipc: InProcessCas) -> dict[str, Any]:
    """Evidence the policy accepts, bound to a nonce an accepted attestation spent: refused in
    phase 2, after the appraisal passed."""
    first, _ = ipc.request()
    ipc.cas.attest(first)
    return ipc.request(first["nonce"])[0]


def _unissued_nonce(ipc: InProcessCas) -> dict[str, Any]:
    return ipc.request("00" * 32)[0]


def _forged(ipc: InProcessCas) -> dict[str, Any]:
    """Evidence whose signature no longer verifies (its measurement changed after signing)."""
    rt = RuntimeKey(ipc.cas)
    raw = bytearray(
        ipc.platform.issue(
            report_data=rt.binding, measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time())
        ).to_bytes()
    )
    at = bytes(raw).index(bytes.fromhex(MEASUREMENT))
    raw[at] ^= 0x01
    return rt.body(policy="app", service="svc", platform="sim", evidence=bytes(raw))


# Each refusal, with the error a CAS without the option answers (class, message pattern).
CASES: dict[str, tuple[Request, type[errors.ConfideError], str]] = {
    "unknown policy": (_plain(policy="nope"), errors.AccessDeniedError, "^no policy nope$"),
    "unknown service": (_plain(service="other"), errors.AccessDeniedError, "^policy app has no service"),
    "wrong measurement": (_plain(measurement="cd" * 48), errors.AppraisalError, "measurement"),
    "debug not tolerated": (_debug, errors.AppraisalError, "debug"),
    "spent nonce": (_spent_nonce, errors.BindingError, "nonce was already used"),
    "unissued nonce": (_unissued_nonce, errors.BindingError, "nonce was not issued"),
    "forged evidence": (_forged, errors.SignatureError, "signature does not verify"),
}


def _refusal_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    out = []
    for record in caplog.records:
        if record.name == "confide.cas" and f'"{event}"' in record.getMessage():
            assert record.levelname == "WARNING"
            out.append(json.loads(record.getMessage()))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_the_option_the_refusal_says_why(tmp_path: Path, case: str) -> None:
    """The detailed answers as before (the option is off by default)."""
    make, error, pattern = CASES[case]
    ipc = InProcessCas.start(tmp_path / "cas")
    assert ipc.cas.opaque_refusals is False
    with pytest.raises(error, match=pattern) as info:
        ipc.cas.attest(make(ipc))
    assert type(info.value) is error and info.value.message != OPAQUE_ATTEST_REFUSAL


@pytest.mark.parametrize("case", sorted(CASES))
def test_with_the_option_every_refusal_is_one_answer_and_the_ledger_and_log_say_why(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, error, pattern = CASES[case]
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    request = make(ipc)
    with caplog.at_level("WARNING", logger="confide.cas"), pytest.raises(errors.AppraisalError) as info:
        ipc.cas.attest(request)
    assert type(info.value) is errors.AppraisalError
    assert info.value.message == OPAQUE_ATTEST_REFUSAL and info.value.exit_code == 31
    # The ledger entry keeps the reason, as without the option.
    event = last_attestation(ipc.cas)
    assert event["verdict"] == "refused" and event["reason_class"] == error.__name__
    assert event["reason"] != OPAQUE_ATTEST_REFUSAL
    assert re.search(pattern, event["reason"])
    # So does the CAS's log: one line for this refusal, with the ledger's reason.
    (line,) = _refusal_lines(caplog, "attestation-refused")
    assert line["reason_class"] == event["reason_class"] and line["reason"] == event["reason"]
    assert line["policy"] == request["policy"] and line["service"] == request["service"]
    assert line["evidence_sha256"] == event["evidence_sha256"]


def test_over_http_every_refusal_is_the_same_status_and_bytes(tmp_path: Path) -> None:
    """Through the API (the attestation fast path): the same status and the same body for every
    refusal, and an acceptance is still an acceptance."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    app = create_app(ipc.cas)
    answers = set()
    for case in sorted(CASES):
        make = CASES[case][0]
        status, body = call(app, "/v1/attest", [json.dumps(make(ipc)).encode()])
        answers.add((status, body))
    assert len(answers) == 1
    ((status, body),) = answers
    assert status == 403
    assert json.loads(body) == {
        "error": {"class": "AppraisalError", "message": OPAQUE_ATTEST_REFUSAL, "exit_code": 31}
    }
    request, key = ipc.request()
    status, body = call(app, "/v1/attest", [json.dumps(request).encode()])
    assert status == 200
    assert "session" in decrypt_release(key, json.loads(body), bytes.fromhex(request["nonce"]))


def test_a_malformed_request_is_still_a_parse_error(tmp_path: Path) -> None:
    """What is refused before anything is recorded (a request that does not parse, names no
    policy can have) depends on the request alone and is answered as before."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    request, _ = ipc.request()
    request["policy"] = "a/../b"
    with pytest.raises(errors.ParseError, match="names a policy can have"):
        ipc.cas.attest(request)
    del request["nonce"]
    with pytest.raises(errors.ParseError, match="expected policy, service"):
        ipc.cas.attest(request)


# --- volume tag reports ------------------------------------------------------------------------


def _released_session(ipc: InProcessCas) -> str:
    body, key = ipc.request(policy="hospital", service="writer")
    return str(decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))["session"])


def test_tag_reports_refused_for_access_are_one_answer_with_the_option(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No such session, another policy's name, a volume the service does not mount, a service the
    policy no longer has: one answer with the option (each said why before), the reason logged;
    the tag stays. A conflict on the tag itself (the session's own volume) still says so, and a
    good report is taken."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    owner = Identity.generate()
    first = ipc.apply(owner_policy(), owner)
    session = _released_session(ipc)
    stale = _released_session(ipc)  # its service is removed below
    ipc.cas.opaque_refusals = True
    attempts = [
        ("hospital", "records", "ab" * 32),  # no attested session presented that token
        ("app", "records", session),  # the session is another policy's
        ("hospital", "elsewhere", session),  # the service does not mount that volume
    ]
    with caplog.at_level("WARNING", logger="confide.cas"):
        for policy, volume, token in attempts:
            with pytest.raises(errors.AccessDeniedError) as info:
                report(ipc, policy, volume, token, TAG0, TAG1)
            assert type(info.value) is errors.AccessDeniedError and info.value.message == OPAQUE_TAG_REFUSAL
        with pytest.raises(errors.ConflictError, match="the current tag is"):
            report(ipc, "hospital", "records", session, TAG1, TAG1)
        assert report(ipc, "hospital", "records", session, TAG0, TAG1)["generation"] == 1
        renamed = owner_policy().replace("name: writer", "name: reader") + f"predecessor: {first.hash}\n"
        ipc.apply(renamed, owner)
        with pytest.raises(errors.AccessDeniedError) as info:
            report(ipc, "hospital", "records", stale, TAG1, TAG0)
        assert info.value.message == OPAQUE_TAG_REFUSAL
    assert current_tag(ipc) == (TAG1, 1)
    reasons = [line["reason"] for line in _refusal_lines(caplog, "volume-tag-refused")]
    assert reasons == [
        "no attested session of this policy presented that token",
        "no attested session of this policy presented that token",
        "service writer does not mount volume elsewhere",
        "policy hospital has no service writer",
    ]


def test_tag_reports_say_why_without_the_option(tmp_path: Path) -> None:
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(owner_policy())
    session = _released_session(ipc)
    with pytest.raises(errors.AccessDeniedError, match="does not mount volume elsewhere"):
        report(ipc, "hospital", "elsewhere", session, TAG0, TAG1)
    with pytest.raises(errors.AccessDeniedError, match="no attested session"):
        report(ipc, "hospital", "records", "ab" * 32, TAG0, TAG1)
