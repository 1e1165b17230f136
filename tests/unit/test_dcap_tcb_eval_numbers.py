"""Intel's TCB evaluation data numbers (Intel PCS API v4 ``tcbevaluationdatanumbers``) and the
automatic minimum TCB evaluation data number (docs/dcap.md, "Automatic minimum").

The lists are Intel's signed answers (tests/assets/{sgx,tdx}/automata-dcap-attestation; their
provenance: tests/assets/sgx/automata-dcap-attestation/README.md): SGX of June and August 2025,
TDX of June and October 2025, signed by the Intel SGX TCB Signing certificate of 2025 (``INTEL_SGX_TCB_SIGNING_2025_DER``), the
signer of the TCB Info they are served with. Tampered copies are made byte by byte; lists that
must verify with other contents are re-signed under a test PKI (tests/dcap_forge.py)."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import RuntimeKey, last_attestation, production_cas, refused, sim_policy
from cli import run_confide
from confide import errors
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import (
    BundleFileSource,
    PcsDirectorySource,
    PcsHttpSource,
    source_for,
    unverified_tcb_evaluation_numbers,
)
from confide.errors import PolicyError
from confide.evidence.dcap import Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral, TcbEvaluationNumbersText
from confide.platforms import (
    MAX_TCB_RECOVERY_GRACE_DAYS,
    AutoTcbEvaluation,
    require_automatic_tcb_evaluation,
    require_minimum,
)
from confide.policy import appraise, loads_policy, policy_hash
from confide.verify.dcap import DcapVerifier, pck_info
from confide.verify.result import TcbEvaluationNumbers, VerifiedEvidence
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_TCB_SIGNING_2025_DER
from dcap_cases import ASSETS, CASES, Case
from dcap_forge import ForgedPki, raw_sign
from pcs_fake import fake_pcs, serve_tcb_evaluation_numbers

SGX_AUG = ASSETS / "sgx/automata-dcap-attestation/sgxtcbeval.json"  # 20..17, 2025-08-15T05:15:31Z
SGX_JUN = ASSETS / "sgx/automata-dcap-attestation/sgxtcbeval_0625.json"  # 19..17, 2025-06-05
TDX_JUN = ASSETS / "tdx/automata-dcap-attestation/0625/tdxtcbeval.json"  # 19..17, 2025-06-05
TDX_OCT = ASSETS / "tdx/automata-dcap-attestation/1025/tdxtcbeval.json"  # 20..13, 2025-10-13
ROOT_CRL = (ASSETS / "intel-roots/automata/IntelSGXRootCA_crl_2025-03-20.der").read_bytes()
CHAIN = (INTEL_SGX_TCB_SIGNING_2025_DER, INTEL_SGX_ROOT_CA_DER)

# The SGX quote of automata-dcap-rs with the August 2025 collateral (TCB Info and QE Identity of
# evaluation 17), and the TDX quote of go-tdx-guest with the October 2025 collateral (17 too).
SGX = next(c for c in CASES if c.quote.endswith("sgx_quote_v3_from_lib_rs.dat") and "0825" in c.collateral)
TDX = next(c for c in CASES if c.quote.endswith("cos-113-tdx-quote.dat") and "1025" in c.collateral)
SGX_DIR_FILES = (
    "sgx/automata-dcap-attestation/sgx_tcbinfov3_00606a000000.json",
    "sgx/automata-dcap-attestation/sgx_qeidentity_v4.json",
    "sgx/automata-dcap-attestation/pck_platform_crl_2025-08-15.der",
    "intel-roots/automata/IntelSGXRootCA_crl_2025-03-20.der",
)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def verify(body: bytes, tee: str, at: datetime, **kw: object) -> TcbEvaluationNumbers:
    verifier = kw.pop("verifier", None) or DcapVerifier()
    assert isinstance(verifier, DcapVerifier)
    chain = kw.pop("chain", CHAIN)
    crl = kw.pop("crl", ROOT_CRL)
    return verifier.verify_tcb_evaluation_numbers(body, chain, crl, tee_id=tee, at=at)  # type: ignore[arg-type]


# --- the real lists verify ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tee", "at", "numbers", "issued"),
    [
        (SGX_AUG, "SGX", "2025-08-20T00:00:00Z", [20, 19, 18, 17], "2025-08-15T05:15:31Z"),
        (SGX_JUN, "SGX", "2025-06-20T00:00:00Z", [19, 18, 17], "2025-06-05T02:05:57Z"),
        (TDX_JUN, "TDX", "2025-06-20T00:00:00Z", [19, 18, 17], "2025-06-05T01:31:32Z"),
        (TDX_OCT, "TDX", "2025-10-20T00:00:00Z", [20, 19, 18, 17, 16, 15, 14, 13], "2025-10-13T11:17:10Z"),
    ],
)
def test_intels_lists_verify(path: Path, tee: str, at: str, numbers: list[int], issued: str) -> None:
    v = verify(path.read_bytes(), tee, t(at))
    assert v.id == tee and v.version == 1 and v.verified_at == t(at)
    assert [n.number for n in v.numbers] == numbers
    assert v.issue_date == t(issued) and v.next_update == v.issue_date + timedelta(days=30)
    assert v.numbers[-1].tcb_recovery_event_date < v.numbers[0].tcb_recovery_event_date
    assert all(n.tcb_date == n.tcb_recovery_event_date + timedelta(days=1) for n in v.numbers)


# --- and what is not Intel's, not current or not the platform's does not --------------------------------


def _flip_in_signed_text(body: bytes) -> bytes:
    """One byte of the signed member changed: a recovery event date a day later."""
    old = b'"tcbRecoveryEventDate":"2025-08-12'
    assert body.count(old) == 1
    return body.replace(old, b'"tcbRecoveryEventDate":"2025-08-13')


def _flip_in_signature(body: bytes) -> bytes:
    cut = body.rindex(b'"signature":"') + len(b'"signature":"') + 10
    digit = b"0" if body[cut : cut + 1] != b"0" else b"1"
    return body[:cut] + digit + body[cut + 1 :]


def test_one_byte_of_the_signed_text_is_refused() -> None:
    with pytest.raises(errors.SignatureError, match="TCB evaluation data numbers signature does not verify"):
        verify(_flip_in_signed_text(SGX_AUG.read_bytes()), "SGX", t("2025-08-20T00:00:00Z"))


def test_one_byte_of_the_signature_is_refused() -> None:
    with pytest.raises(errors.SignatureError):
        verify(_flip_in_signature(SGX_AUG.read_bytes()), "SGX", t("2025-08-20T00:00:00Z"))


def test_the_other_tee_types_list_is_refused() -> None:
    with pytest.raises(errors.CollateralError, match="are for SGX, expected TDX"):
        verify(SGX_AUG.read_bytes(), "TDX", t("2025-08-20T00:00:00Z"))
    with pytest.raises(errors.CollateralError, match="are for TDX, expected SGX"):
        verify(TDX_OCT.read_bytes(), "SGX", t("2025-10-20T00:00:00Z"))


@pytest.mark.parametrize(
    ("at", "match"),
    [
        ("2025-09-14T05:15:32Z", "has expired: next update was 2025-09-14T05:15:31"),
        ("2025-08-15T05:15:30Z", "is not valid yet: issued 2025-08-15T05:15:31"),
    ],
)
def test_a_list_outside_its_window_is_refused(at: str, match: str) -> None:
    assert verify(SGX_AUG.read_bytes(), "SGX", t("2025-09-14T05:15:31Z")).numbers  # the last second
    with pytest.raises(errors.CollateralExpiredError, match=f"TCB evaluation data numbers {match}"):
        verify(SGX_AUG.read_bytes(), "SGX", t(at))


def test_a_verifier_rechecks_dates_and_id_of_a_list_it_has_seen() -> None:
    """The signatures of a list are checked once per verifier (LRU); its dates, the CRL's, the
    chain's and the TEE type at every call."""
    verifier = DcapVerifier()
    body = SGX_AUG.read_bytes()
    assert verify(body, "SGX", t("2025-08-20T00:00:00Z"), verifier=verifier).id == "SGX"
    with pytest.raises(errors.CollateralExpiredError):
        verify(body, "SGX", t("2025-09-15T00:00:00Z"), verifier=verifier)
    with pytest.raises(errors.CollateralError, match="expected TDX"):
        verify(body, "TDX", t("2025-08-20T00:00:00Z"), verifier=verifier)
    with pytest.raises(errors.SignatureError):  # other bytes: checked afresh
        verify(_flip_in_signed_text(body), "SGX", t("2025-08-20T00:00:00Z"), verifier=verifier)


def test_a_root_crl_out_of_date_is_refused() -> None:
    with pytest.raises(errors.CollateralExpiredError, match="Root CA CRL has expired"):
        verify(TDX_OCT.read_bytes(), "TDX", t("2026-04-04T00:00:00Z"))


def test_a_wrong_chain_is_refused() -> None:
    body = SGX_AUG.read_bytes()
    at = t("2025-08-20T00:00:00Z")
    platform_ca = (ASSETS / "intel-roots/automata/IntelSGXPCKPlatformCA.der").read_bytes()
    with pytest.raises(errors.CollateralError, match="expected the Intel SGX TCB Signing certificate"):
        verify(body, "SGX", at, chain=(platform_ca, INTEL_SGX_ROOT_CA_DER))
    with pytest.raises(errors.CollateralError, match="expected 2"):
        verify(body, "SGX", at, chain=(INTEL_SGX_TCB_SIGNING_2025_DER,))
    pki = ForgedPki(at=at)  # a TCB signing certificate and root that are not Intel's
    forged_chain = (pki.signing.public_bytes(Encoding.DER), pki.root_der)
    with pytest.raises(errors.CollateralError):
        verify(body, "SGX", at, chain=forged_chain)
    # Intel's list under a verifier pinned to another root: not its root.
    with pytest.raises(errors.CollateralError):
        verify(body, "SGX", at, verifier=DcapVerifier(root_ca_der=pki.root_der))


def _resigned(pki: ForgedPki, body: bytes, edit: dict[str, object] | None = None) -> bytes:
    """Intel's list (edited) re-signed with the test PKI's TCB signing key."""
    obj = json.loads(TcbEvaluationNumbersText.from_response(body).text)
    obj.update(edit or {})
    new = json.dumps(obj, separators=(",", ":")).encode()
    return (
        b'{"tcbEvaluationDataNumbers":'
        + new
        + b',"signature":"'
        + raw_sign(pki.signing_key, new).hex().encode()
        + b'"}'
    )


def test_a_revoked_signer_is_refused() -> None:
    at = t("2025-08-20T00:00:00Z")
    pki = ForgedPki(at=at)
    body = _resigned(pki, SGX_AUG.read_bytes())
    chain = (pki.signing.public_bytes(Encoding.DER), pki.root_der)
    verifier = DcapVerifier(root_ca_der=pki.root_der)
    good_crl = pki.crl("Intel SGX Root CA", pki.root_key, [])
    assert verify(body, "SGX", at, verifier=verifier, chain=chain, crl=good_crl).numbers[0].number == 20
    revoking = pki.crl("Intel SGX Root CA", pki.root_key, [pki.signing.serial_number])
    with pytest.raises(errors.RevocationError, match=r"TCB signing certificate .* is revoked"):
        verify(body, "SGX", at, verifier=verifier, chain=chain, crl=revoking)
    # a Root CA CRL that is not the root's
    other = ForgedPki(at=at)
    with pytest.raises(errors.ConfideError):
        verify(
            body,
            "SGX",
            at,
            verifier=verifier,
            chain=chain,
            crl=other.crl("Intel SGX Root CA", other.root_key, []),
        )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"tcbEvaluationDataNumbers":{"id":"SGX","id":"TDX"},"signature":"00"}', "twice|duplicate"),
        (b'{"tcbEvaluationDataNumbers":{},"signature":"' + b"00" * 64 + b'"}', "missing"),
        (b" " * (64 << 10) + b"{}", "at most"),
        (b'{"tcbEvaluationDataNumbers":{"id":"SGX"},"signature":"' + b"00" * 63 + b'"}', "64"),
        (b'{"signature":"00","tcbEvaluationDataNumbers":{}}', "layout"),
    ],
)
def test_hostile_answers_are_parse_errors(body: bytes, match: str) -> None:
    with pytest.raises(errors.ParseError, match=match):
        TcbEvaluationNumbersText.from_response(body)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"version": 2}, "expected 1"),
        ({"id": "SEV"}, "expected SGX or TDX"),
        ({"tcbEvalNumbers": []}, "expected 1..256"),
        (
            {"tcbEvalNumbers": [{"tcbEvaluationDataNumber": 3, "tcbRecoveryEventDate": "2025-01-01T00:00:00Z",
                                 "tcbDate": "2025-01-02T00:00:00Z"}] * 2},
            "given twice",
        ),
        (
            {"tcbEvalNumbers": [{"tcbEvaluationDataNumber": True, "tcbRecoveryEventDate": "2025-01-01T00:00:00Z",
                                 "tcbDate": "2025-01-02T00:00:00Z"}]},
            "boolean",
        ),
        (
            {"tcbEvalNumbers": [{"tcbEvaluationDataNumber": 3, "tcbRecoveryEventDate": "2025-01-01T00:00:00",
                                 "tcbDate": "2025-01-02T00:00:00Z"}]},
            "zone",
        ),
    ],
)  # fmt: skip
def test_malformed_lists_are_refused_before_their_signature(edit: dict[str, object], match: str) -> None:
    pki = ForgedPki(at=t("2025-08-20T00:00:00Z"))
    with pytest.raises(errors.ParseError, match=match):
        TcbEvaluationNumbersText.from_response(_resigned(pki, SGX_AUG.read_bytes(), edit))


# --- the automatic minimum ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "grace_days", "required", "event"),
    [
        ("2025-10-20T00:00:00Z", 0, 20, "2025-08-12T00:00:00Z"),
        ("2025-10-20T00:00:00Z", 30, 20, "2025-08-12T00:00:00Z"),
        ("2025-10-20T00:00:00Z", 90, 19, "2025-05-13T00:00:00Z"),  # 08-12 + 90 d is 11-10
        ("2025-10-20T00:00:00Z", 400, 17, "2024-03-12T00:00:00Z"),
        ("2025-08-11T23:59:59Z", 0, 19, "2025-05-13T00:00:00Z"),  # a second before event 20
        ("2025-08-12T00:00:00Z", 0, 20, "2025-08-12T00:00:00Z"),  # at it: required
        ("2025-11-10T00:00:00Z", 90, 20, "2025-08-12T00:00:00Z"),
        ("2025-10-20T00:00:00Z", 3650, 13, None),  # no event that old: the lowest listed
    ],
)
def test_automatic_minimum_at_several_dates(
    at: str, grace_days: int, required: int, event: str | None
) -> None:
    listed = verify(TDX_OCT.read_bytes(), "TDX", t("2025-10-20T00:00:00Z"))
    got = listed.required(t(at), timedelta(days=grace_days))
    assert got.number == required
    assert (got.event.tcb_recovery_event_date if got.event else None) == (t(event) if event else None)
    assert got.list_issue_date == t("2025-10-13T11:17:10Z")
    reason = got.reason()
    assert "list issued 2025-10-13T11:17:10Z" in reason and f"{grace_days} day(s)" in reason
    if event:
        assert f"TCB recovery event of {event} (tcbEvaluationDataNumber {required})" in reason
    else:
        assert f"the lowest number still listed, {required}, is required" in reason
    assert got.to_json()["required"] == required


def test_grace_is_not_negative() -> None:
    listed = verify(TDX_OCT.read_bytes(), "TDX", t("2025-10-20T00:00:00Z"))
    with pytest.raises(ValueError, match="negative"):
        listed.required(t("2025-10-20T00:00:00Z"), timedelta(days=-1))
    with pytest.raises(ValueError, match="negative"):
        AutoTcbEvaluation(timedelta(days=-1))
    assert AutoTcbEvaluation().grace == timedelta(days=365)


def test_grace_is_capped_like_the_option() -> None:
    # Built directly (SDK), a grace past the CLI's and the policy's cap overflowed the date
    # arithmetic of each verification (OverflowError) instead of failing at construction.
    assert AutoTcbEvaluation(timedelta(days=MAX_TCB_RECOVERY_GRACE_DAYS)).grace.days == 3650
    for days in (MAX_TCB_RECOVERY_GRACE_DAYS + 1, 999_999_999):
        with pytest.raises(ValueError, match="at most 3650 days"):
            AutoTcbEvaluation(timedelta(days=days))
    with pytest.raises(TypeError, match="timedelta"):
        AutoTcbEvaluation(365)  # type: ignore[arg-type]


def _with_list(case: Case, listed: Path) -> VerifiedEvidence:
    coll = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    coll = dataclasses.replace(coll, tcb_evaluation_numbers=listed.read_bytes())
    return DcapVerifier().verify(case.quote_bytes(), coll, at=case.time)


def test_the_list_is_verified_with_the_collateral() -> None:
    v = _with_list(SGX, SGX_AUG)
    assert v.tcb_evaluation_numbers is not None and v.tcb_evaluation_numbers.numbers[0].number == 20
    coll = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    assert DcapVerifier().verify(SGX.quote_bytes(), coll, at=SGX.time).tcb_evaluation_numbers is None
    bad = dataclasses.replace(coll, tcb_evaluation_numbers=_flip_in_signed_text(SGX_AUG.read_bytes()))
    with pytest.raises(errors.SignatureError):
        DcapVerifier().verify(SGX.quote_bytes(), bad, at=SGX.time)
    assert not DcapVerifier().collateral_signed(bad)
    assert DcapVerifier().collateral_signed(
        dataclasses.replace(coll, tcb_evaluation_numbers=SGX_AUG.read_bytes())
    )
    wrong = dataclasses.replace(coll, tcb_evaluation_numbers=TDX_OCT.read_bytes())
    with pytest.raises(errors.CollateralError, match="are for TDX, expected SGX"):
        DcapVerifier().verify(SGX.quote_bytes(), wrong, at=SGX.time)


def test_require_automatic() -> None:
    v = _with_list(SGX, SGX_AUG)  # collateral of 17 at 2025-08-15T05:42:26Z
    ok = require_automatic_tcb_evaluation(v, timedelta(days=365), "here")
    assert ok.details["required_tcb_evaluation"]["required"] == 17  # type: ignore[index]
    assert require_minimum(v, AutoTcbEvaluation(timedelta(days=365)), "x").tcb_evaluation == v.tcb_evaluation
    with pytest.raises(errors.CollateralOutdatedError, match=r"expected at least 20 \(here: .*2025-08-12"):
        require_automatic_tcb_evaluation(v, timedelta(0), "here")
    with pytest.raises(errors.CollateralOutdatedError, match=r"expected at least 19 \(x auto: "):
        require_minimum(v, AutoTcbEvaluation(timedelta(days=90)), "x")
    with pytest.raises(errors.CollateralMissingError, match="without Intel's TCB evaluation data numbers"):
        require_automatic_tcb_evaluation(
            dataclasses.replace(v, tcb_evaluation_numbers=None), timedelta(0), "x"
        )


# --- sources: a PCS directory and Intel PCS / a PCCS -----------------------------------------------------


def _sgx_directory(tmp_path: Path, *lists: Path) -> Path:
    d = tmp_path / "pcs"
    d.mkdir(parents=True)
    for name in SGX_DIR_FILES:
        shutil.copy(ASSETS / name, d / Path(name).name)
    for i, listed in enumerate(lists):
        shutil.copy(listed, d / f"tcbeval-{i}.json")
    return d


def test_directory_source_brings_the_newest_list(tmp_path: Path) -> None:
    d = _sgx_directory(tmp_path, SGX_JUN, SGX_AUG, TDX_OCT)
    quote = Quote.from_bytes(SGX.quote_bytes())
    fmspc, ca = pck_info(quote)
    plain = PcsDirectorySource(d).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    assert plain.tcb_evaluation_numbers is None
    coll = PcsDirectorySource(d, tcb_evaluation_numbers=True).get_collateral(
        fmspc=fmspc, ca=ca, tee=quote.tee
    )
    assert coll.tcb_evaluation_numbers == SGX_AUG.read_bytes()
    v = DcapVerifier().verify(SGX.quote_bytes(), coll, at=SGX.time)
    assert v.tcb_evaluation_numbers is not None and v.tcb_evaluation_numbers.issue_date == t(
        "2025-08-15T05:15:31Z"
    )
    empty = _sgx_directory(tmp_path / "x", TDX_OCT)
    with pytest.raises(errors.CollateralMissingError, match="no TCB evaluation data numbers for SGX"):
        PcsDirectorySource(empty, tcb_evaluation_numbers=True).get_collateral(
            fmspc=fmspc, ca=ca, tee=quote.tee
        )


def test_http_source_fetches_and_caches_the_list(tmp_path: Path) -> None:
    quote = Quote.from_bytes(SGX.quote_bytes())
    fmspc, ca = pck_info(quote)
    real = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    with fake_pcs() as pcs:
        pcs.serve(SGX.quote_bytes(), real)
        path = serve_tcb_evaluation_numbers(pcs, "sgx", SGX_AUG.read_bytes(), CHAIN)
        source = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time, tcb_evaluation_numbers=True
        )
        coll = source.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert path in pcs.requests
        assert (
            coll.tcb_evaluation_numbers == SGX_AUG.read_bytes()
            and coll.tcb_evaluation_numbers_issuer_chain == CHAIN
        )
        assert len(list(tmp_path.iterdir())) == 5  # kept on disk until its nextUpdate, as TCB Info
        asked = len(pcs.requests)
        again = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: SGX.time, tcb_evaluation_numbers=True
        )
        assert again.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == coll
        assert len(pcs.requests) == asked
        # past the list's nextUpdate it is asked for again
        later = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: t("2025-09-14T05:15:32Z"), tcb_evaluation_numbers=True
        )
        later.get_tcb_evaluation_numbers(quote.tee)
        assert pcs.requests[-1] == path
        # an answer that is not Intel's is returned (the verifier refuses it) but not kept
        tampered = tmp_path / "t"
        serve_tcb_evaluation_numbers(pcs, "sgx", _flip_in_signed_text(SGX_AUG.read_bytes()), CHAIN)
        PcsHttpSource(pcs.url, cache_dir=tampered, clock=lambda: SGX.time).get_tcb_evaluation_numbers(
            quote.tee
        )
        assert not tampered.exists()


# --- evidence verify --min-tcb-eval-number auto ---------------------------------------------------------


def _cli(case: Case, *extra: str | Path, collateral: Path | None = None) -> tuple[int, dict[str, object]]:
    r = run_confide(
        "evidence", "verify", ASSETS / case.quote, "--collateral", collateral or ASSETS / case.collateral,
        "--at", case.at, "--json", *extra,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout)


def test_cli_automatic_minimum_from_a_file() -> None:
    rc, out = _cli(
        SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", SGX_AUG, "--tcb-recovery-grace", "0"
    )
    assert rc == errors.CollateralOutdatedError.exit_code == 62
    error = out["error"]
    assert isinstance(error, dict)
    assert (
        "expected at least 20 (--min-tcb-eval-number auto: Intel's TCB evaluation data numbers list issued "
        "2025-08-15T05:15:31Z: TCB recovery event of 2025-08-12T00:00:00Z (tcbEvaluationDataNumber 20)"
    ) in str(error["message"])
    # The default grace, 365 days: Intel PCS's standard update, whose collateral (17) passes.
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", SGX_AUG)
    assert rc == 0, out
    details = out["details"]
    assert isinstance(details, dict)
    assert details["required_tcb_evaluation"]["required"] == 17  # type: ignore[index]
    assert details["required_tcb_evaluation"]["tcb_recovery_event_date"] == "2024-03-12T00:00:00Z"  # type: ignore[index]
    assert details["tcb_evaluation_numbers"]["issue_date"] == "2025-08-15T05:15:31Z"  # type: ignore[index]
    assert details["required_tcb_evaluation"]["grace_days"] == 365  # type: ignore[index]
    rc, out = _cli(
        SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", SGX_AUG, "--tcb-recovery-grace", "100"
    )
    assert rc == 62 and "expected at least 18" in out["error"]["message"]  # type: ignore[index]
    rc, out = _cli(
        TDX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", TDX_OCT, "--tcb-recovery-grace", "400"
    )
    assert rc == 0, out
    rc, out = _cli(
        TDX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", TDX_OCT, "--tcb-recovery-grace", "90"
    )
    assert rc == 62 and "expected at least 19" in out["error"]["message"]  # type: ignore[index]


def test_cli_refuses_what_does_not_verify(tmp_path: Path) -> None:
    bad = tmp_path / "tampered.json"
    bad.write_bytes(_flip_in_signed_text(SGX_AUG.read_bytes()))
    rc, out = _cli(
        SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", bad, "--tcb-recovery-grace", "365"
    )
    assert rc == errors.SignatureError.exit_code and out["error"]["class"] == "SignatureError"  # type: ignore[index]
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", TDX_OCT)
    assert out["error"]["class"] == "CollateralError" and rc == errors.CollateralError.exit_code  # type: ignore[index]
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto", "--tcb-eval-numbers", SGX_JUN)  # expired by then
    assert out["error"]["class"] == "CollateralExpiredError"  # type: ignore[index]
    # a bundle has no list, and none was given
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto")
    assert (
        out["error"]["class"] == "CollateralMissingError"
        and "--tcb-eval-numbers FILE" in out["error"]["message"]
    )  # type: ignore[index]


def test_cli_automatic_minimum_from_a_directory(tmp_path: Path) -> None:
    d = _sgx_directory(tmp_path, SGX_JUN, SGX_AUG)
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto", "--tcb-recovery-grace", "365", collateral=d)
    assert rc == 0, out
    assert out["details"]["tcb_evaluation_numbers"]["issue_date"] == "2025-08-15T05:15:31Z"  # type: ignore[index]
    rc, out = _cli(SGX, "--min-tcb-eval-number", "auto", "--tcb-recovery-grace", "0", collateral=d)
    assert rc == 62


def test_cli_usage() -> None:
    base = ("evidence", "verify", ASSETS / SGX.quote, "--collateral", ASSETS / SGX.collateral, "--at", SGX.at)
    for extra in (("--tcb-recovery-grace", "3"), ("--tcb-eval-numbers", str(SGX_AUG)),
                  ("--min-tcb-eval-number", "18", "--tcb-recovery-grace", "3"),
                  ("--min-tcb-eval-number", "auto", "--tcb-recovery-grace", "-1"),
                  ("--min-tcb-eval-number", "Auto")):  # fmt: skip
        assert run_confide(*base, *extra).returncode == 2, extra
    snp = ASSETS / "sev-snp/trustee/test-report.bin"
    wrong = run_confide("evidence", "verify", snp, "--platform", "sev-snp", "--min-tcb-eval-number", "auto")
    assert wrong.returncode == 2 and "Intel DCAP evidence" in wrong.stderr
    assert "N|auto" in run_confide("evidence", "verify", "--help").stdout


# --- the policy --------------------------------------------------------------------------------------------


def _policy(minimum: str, grace: str | None = None) -> str:
    extra = f"    tcb_recovery_grace_days: {grace}\n" if grace is not None else ""
    return (
        'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    attestation:\n'
        f"      - mrenclave: [{'ab' * 32}]\nsecurity:\n  attestation:\n"
        "    tolerate: [debug-mode, outdated-tcb, hyperthreading, software-hardening-needed, insecure-igpu]\n"
        "    ignore_advisories: '*'\n"
        f"    min_tcb_evaluation_data_number: {minimum}\n{extra}"
    )


def _tcb_reasons(evidence: VerifiedEvidence, text: str) -> list[str]:
    result = appraise(evidence, loads_policy(text), "svc", at=evidence.verified_at)
    return [
        f"{r.field}: {r.got} / {r.expected}" for r in result.reasons if r.field.startswith("tcb_evaluation")
    ]


def test_policy_auto() -> None:
    v = _with_list(SGX, SGX_AUG)
    assert _tcb_reasons(v, _policy("auto")) == []  # the default grace, 365 days
    assert _tcb_reasons(v, _policy("auto", "365")) == []
    reasons = _tcb_reasons(v, _policy("auto", "0"))
    assert len(reasons) == 2 and all(
        ">= 20 (security.attestation.min_tcb_evaluation_data_number: auto; " in r for r in reasons
    )
    assert "TCB recovery event of 2025-08-12T00:00:00Z" in reasons[0]
    (missing,) = _tcb_reasons(dataclasses.replace(v, tcb_evaluation_numbers=None), _policy("auto", "365"))
    assert "no verified TCB evaluation data numbers" in missing
    assert _tcb_reasons(v, _policy("17")) == []  # the integer form is unchanged


def test_policy_auto_loads_and_is_hashed() -> None:
    auto, graced, fixed = (
        loads_policy(_policy("auto")),
        loads_policy(_policy("auto", "30")),
        loads_policy(_policy("17")),
    )
    assert auto.security.attestation.min_tcb_evaluation_data_number == "auto"
    assert graced.security.attestation.tcb_recovery_grace_days == 30
    assert len({policy_hash(auto), policy_hash(graced), policy_hash(fixed)}) == 3
    assert auto.security.attestation.tcb_recovery_grace_days is None
    for bad in (
        _policy("17", "30"),
        _policy("auto", "-1"),
        _policy("auto", "3651"),
        _policy("AUTO"),
        _policy('"auto"', "true"),
    ):
        with pytest.raises(PolicyError):
            loads_policy(bad)


# --- the CAS: cas serve --collateral URL --min-tcb-eval-number auto ----------------------------------------


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def _pcs_cas(tmp_path: Path, url: str, grace_days: int) -> tuple[object, PlatformVerifier]:
    source = source_for(url, cache_dir=tmp_path / "pcs-cache", tcb_evaluation_numbers=True)
    assert isinstance(source, PcsHttpSource)
    source.clock = lambda: SGX.time
    verifier = PlatformVerifier(
        dcap_source=source, min_tcb_evaluation_data_number=AutoTcbEvaluation(timedelta(days=grace_days))
    )
    cas = production_cas(tmp_path / "cas", verifier, sim_policy())
    cas.clock = _Clock(SGX.time)
    return cas, verifier


@pytest.mark.parametrize("grace_days", [0, 365])
def test_cas_with_a_fake_pcs(tmp_path: Path, grace_days: int) -> None:
    real = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())
    with fake_pcs() as pcs:
        pcs.serve(SGX.quote_bytes(), real)
        path = serve_tcb_evaluation_numbers(pcs, "sgx", SGX_AUG.read_bytes(), CHAIN)
        cas, _verifier = _pcs_cas(tmp_path, pcs.url, grace_days)
        body = RuntimeKey(cas).body(policy="app", service="svc", platform="sgx", evidence=SGX.quote_bytes())  # type: ignore[arg-type]
        # A request's own bundle carries no list: the CAS's, from its source (read before phase
        # 1, from the source's disk cache by then), judges it as it judges its own collateral.
        own = RuntimeKey(cas).body(  # type: ignore[arg-type]
            policy="app", service="svc", platform="sgx", evidence=SGX.quote_bytes(),
            aux={"collateral": SGX.collateral_bytes()},
        )  # fmt: skip
        for request, fetches_list in ((body, True), (own, False)):
            asked = len(pcs.requests)
            job = cas.collateral_job(request)  # type: ignore[attr-defined]
            assert job is not None and job.fetch is not None
            job.run()
            # the list fetched with the collateral, before phase 1; then from the disk cache
            assert (path in pcs.requests[asked:]) == fetches_list
            assert fetches_list or pcs.requests[asked:] == []
            if grace_days == 0:
                refused(
                    cas, request, errors.CollateralOutdatedError,
                    r"expected at least 20 \(cas serve --min-tcb-eval-number auto: ",
                )  # type: ignore[arg-type]  # fmt: skip
                continue
            # verified (the list's minimum is 17), then refused: a real quote binds no fresh key
            refused(cas, request, errors.BindingError, "report data got")  # type: ignore[arg-type]
            recorded = last_attestation(cas)["tcb_evaluation"]  # type: ignore[arg-type]
            assert {k: recorded[k] for k in ("tcb_info", "qe_identity", "required")} == {
                "tcb_info": 17, "qe_identity": 17, "required": 17,
            }  # fmt: skip
            assert (
                "TCB recovery event of 2024-03-12T00:00:00Z (tcbEvaluationDataNumber 17)"
                in recorded["reason"]
            )


def test_cas_serve_options() -> None:
    r = run_confide("cas", "serve", "--help")
    assert "N|auto" in r.stdout and "--tcb-recovery-grace" in r.stdout
    r = run_confide("cas", "serve", "--data-dir", "/nonexistent/x", "--tcb-recovery-grace", "3")
    assert r.returncode == 2 and "--min-tcb-eval-number auto" in r.stderr
    r = run_confide("cas", "serve", "--data-dir", "/nonexistent/x", "--min-tcb-eval-number", "auto")
    assert r.returncode == 2 and "needs --collateral DIR|URL" in r.stderr
    bundle = ASSETS / SGX.collateral
    r = run_confide(
        "cas",
        "serve",
        "--data-dir",
        "/nonexistent/x",
        "--min-tcb-eval-number",
        "auto",
        "--collateral",
        bundle,
    )
    assert r.returncode == 2 and "a bundle file has none" in r.stderr


def _directory_from_bundle(tmp_path: Path, case: Case, listed: Path) -> Path:
    """A PCS directory with the pieces of ``case``'s bundle, as Intel PCS serves them, and the
    list ``listed``."""
    d = tmp_path / "pcs"
    d.mkdir()
    coll = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    for name, key, text, sig in (
        ("tcbinfo.json", b"tcbInfo", coll.tcb_info, coll.tcb_info_signature),
        ("qe.json", b"enclaveIdentity", coll.qe_identity, coll.qe_identity_signature),
    ):
        (d / name).write_bytes(b'{"' + key + b'":' + text + b',"signature":"' + sig.hex().encode() + b'"}')
    (d / "pck.crl").write_bytes(coll.pck_crl)
    (d / "root.crl").write_bytes(coll.root_ca_crl)
    shutil.copy(listed, d / "tcbeval.json")
    return d


@pytest.mark.parametrize("grace_days", [400, 0])
def test_cas_own_evidence_is_judged_by_the_automatic_minimum(tmp_path: Path, grace_days: int) -> None:
    """``cas serve --tee tdx --min-tcb-eval-number auto``: the CAS's check of its own evidence
    (its document, verified before it is published) applies the automatic minimum too."""
    from confide.cas.self_check import SelfCheck

    source = source_for(str(_directory_from_bundle(tmp_path, TDX, TDX_OCT)), tcb_evaluation_numbers=True)
    doc = {"platform": "tdx", "evidence": base64.b64encode(TDX.quote_bytes()).decode(), "log_key": "k"}
    body = json.dumps(doc).encode()
    check = SelfCheck(
        INTEL_SGX_ROOT_CA_DER, collateral=source,
        min_tcb_evaluation_data_number=AutoTcbEvaluation(timedelta(days=grace_days)),
    )  # fmt: skip
    for run in (check, check.verified):
        if grace_days:  # verified (minimum 17), refused for the binding only (not this certificate's)
            with pytest.raises(errors.BindingError):
                run(body, TDX.time)
        else:
            with pytest.raises(
                errors.CollateralOutdatedError,
                match=r"expected at least 20 \(cas serve --min-tcb-eval-number auto, the CAS's own evidence: ",
            ):
                run(body, TDX.time)


@pytest.mark.parametrize(("grace_days", "error"), [(400, None), (0, errors.CollateralOutdatedError)])
def test_cas_verifier_azure_tdx_vtpm_keeps_the_list(
    tmp_path: Path, grace_days: int, error: type | None
) -> None:
    """``az-tdx-vtpm`` evidence (trustee's Azure TDX CVM): its TD quote's collateral, from a PCS
    directory with the October 2025 TDX list, is judged by the automatic minimum too."""
    from confide.verify.result import Platform

    evidence = (ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json").read_bytes()
    case = next(
        c for c in CASES if c.quote == "tdx/trustee-az-tdx-vtpm/td-quote.bin" and "1025" in c.collateral
    )
    d = _directory_from_bundle(tmp_path, case, TDX_OCT)
    verifier = PlatformVerifier(
        dcap_source=PcsDirectorySource(d, tcb_evaluation_numbers=True),
        min_tcb_evaluation_data_number=AutoTcbEvaluation(timedelta(days=grace_days)),
    )
    if error is None:
        v = verifier.verify(Platform.AZURE_TDX_VTPM, evidence, {}, at=case.time)
        assert v.tcb_evaluation_numbers is not None and v.tcb_evaluation_numbers.id == "TDX"
        assert v.details["required_tcb_evaluation"]["required"] == 17  # type: ignore[index]
    else:
        with pytest.raises(error, match=r"expected at least 20 \(cas serve --min-tcb-eval-number auto: "):
            verifier.verify(Platform.AZURE_TDX_VTPM, evidence, {}, at=case.time)


def test_prepare_wires_auto_into_the_source(tmp_path: Path) -> None:
    """``cas serve --collateral URL|DIR --min-tcb-eval-number auto``: ``prepare`` builds a source
    that brings the list, and a verifier that judges by it; with ``N`` the source does not."""
    from confide.cas.server import prepare

    auto = AutoTcbEvaluation(timedelta(days=30))
    for name, collateral in (("url", "https://pccs.example:8081"), ("dir", str(tmp_path))):
        cas, *_ = prepare(
            tmp_path / name, host="127.0.0.1", dev=False, db_url=None, collateral=collateral,
            min_tcb_evaluation_data_number=auto,
        )  # fmt: skip
        verifier = cas.verifier
        assert isinstance(verifier, PlatformVerifier)
        assert verifier.min_tcb_evaluation_data_number == auto
        source = verifier.dcap_source
        assert isinstance(source, PcsHttpSource | PcsDirectorySource) and source.tcb_evaluation_numbers
        if isinstance(source, PcsHttpSource):  # and keeps what is below the minimum off its disk
            assert source.tcb_recovery_grace == timedelta(days=30)
    fixed, *_ = prepare(
        tmp_path / "fixed", host="127.0.0.1", dev=False, db_url=None, collateral="https://pccs.example:8081",
        min_tcb_evaluation_data_number=18,
    )  # fmt: skip
    assert isinstance(fixed.verifier, PlatformVerifier)
    source = fixed.verifier.dcap_source
    assert isinstance(source, PcsHttpSource) and not source.tcb_evaluation_numbers
    assert source.min_tcb_evaluation_data_number == 18


# --- a request's own bundle under cas serve ... auto: the CAS's list -------------------------------------


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_requests_bundle_is_judged_by_the_cas_list(tmp_path: Path, prefetch: bool) -> None:
    """``cas serve --collateral DIR --min-tcb-eval-number auto``: a request that sends its own
    dcap-qvl bundle (which has no list) is judged by the list of the CAS's source for the TEE
    type, verified with the bundle (the same minimum as for the CAS's own collateral), whether
    the list was read by the prefetch or, without one, by phase 1. A source without a list for
    that TEE type: refused (``CollateralMissingError``), never judged without a minimum."""
    from confide.verify.result import Platform

    aux = {"collateral": SGX.collateral_bytes()}
    d = _sgx_directory(tmp_path, SGX_JUN, SGX_AUG)
    for grace_days, required in ((365, 17), (0, 20)):
        verifier = PlatformVerifier(
            dcap_source=PcsDirectorySource(d, tcb_evaluation_numbers=True),
            min_tcb_evaluation_data_number=AutoTcbEvaluation(timedelta(days=grace_days)),
        )
        job = verifier.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
        assert job is not None
        prefetched = job.run() if prefetch else None
        if required == 17:
            v = verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=prefetched)
            assert v.tcb_evaluation_numbers is not None
            assert v.tcb_evaluation_numbers.issue_date == t("2025-08-15T05:15:31Z")  # the newest, the CAS's
            assert v.details["required_tcb_evaluation"]["required"] == 17  # type: ignore[index]
        else:
            with pytest.raises(errors.CollateralOutdatedError, match="expected at least 20"):
                verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=prefetched)
    # With N (not auto), a request's bundle is judged by N alone: no list is read.
    fixed = PlatformVerifier(dcap_source=PcsDirectorySource(d), min_tcb_evaluation_data_number=17)
    assert fixed.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time) is None
    v = fixed.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
    assert v.tcb_evaluation_numbers is None
    # A source without the SGX list: refused with the source's reason.
    for listed in d.glob("tcbeval-*.json"):
        listed.unlink()
    bare = PlatformVerifier(
        dcap_source=PcsDirectorySource(d, tcb_evaluation_numbers=True),
        min_tcb_evaluation_data_number=AutoTcbEvaluation(),
    )
    job = bare.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
    assert job is not None
    for prefetched in (job.run(), None):
        with pytest.raises(errors.CollateralMissingError, match="has no TCB evaluation data numbers for SGX"):
            bare.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=prefetched)


class _CountingSource:
    """A source whose TCB evaluation data numbers reads are counted (each one a directory
    parse, or a URL source's disk read and signature check)."""

    def __init__(self, inner: PcsDirectorySource) -> None:
        self.inner, self.reads = inner, 0

    def get_collateral(self, *, fmspc: bytes, ca: str, tee: TeeType) -> DcapCollateral:
        return self.inner.get_collateral(fmspc=fmspc, ca=ca, tee=tee)

    def get_tcb_evaluation_numbers(self, tee: TeeType) -> tuple[bytes, tuple[bytes, ...]]:
        self.reads += 1
        return self.inner.get_tcb_evaluation_numbers(tee)


def test_the_cas_keeps_the_verified_list_in_memory_until_its_next_update(tmp_path: Path) -> None:
    """``cas serve ... --min-tcb-eval-number auto``, requests with their own bundle: the source's
    list is read once, then served from memory (the job has nothing to fetch; phase 1 without a
    prefetch reads nothing either) until its ``nextUpdate``, after which it is read again; each
    verification still judges it (a date past its window refuses it). A list whose signature does
    not lead to the pinned root is not kept: read at every request, refused every time."""
    from confide.verify.result import Platform

    aux = {"collateral": SGX.collateral_bytes()}
    source = _CountingSource(
        PcsDirectorySource(_sgx_directory(tmp_path, SGX_AUG), tcb_evaluation_numbers=True)
    )
    verifier = PlatformVerifier(dcap_source=source, min_tcb_evaluation_data_number=AutoTcbEvaluation())  # type: ignore[arg-type]
    job = verifier.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
    assert job is not None and job.fetch is not None
    prefetched = job.run()
    assert source.reads == 1
    v = verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=prefetched)
    assert v.details["required_tcb_evaluation"]["required"] == 17  # type: ignore[index]
    for _ in range(3):
        job = verifier.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
        assert job is not None and job.fetch is None  # from memory: no I/O
        verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=job.run())
        verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)  # no prefetch
    assert source.reads == 1
    # A TDX request would need the TDX list: not the SGX one kept (the directory has none).
    assert verifier._kept_list(TeeType.TDX, SGX.time) is None
    # At the list's nextUpdate: read again, and judged (out of its window now).
    late = t("2025-09-14T05:15:31Z")
    job = verifier.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=late)
    assert job is not None and job.fetch is not None
    prefetched = job.run()
    assert source.reads == 2
    with pytest.raises(errors.CollateralExpiredError):
        verifier.verify(Platform.SGX, SGX.quote_bytes(), aux, at=late, prefetched=prefetched)
    # A list that does not verify is never kept.
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "list.json").write_bytes(_flip_in_signature(SGX_AUG.read_bytes()))
    bad = _CountingSource(PcsDirectorySource(bad_dir, tcb_evaluation_numbers=True))
    strict = PlatformVerifier(dcap_source=bad, min_tcb_evaluation_data_number=AutoTcbEvaluation())  # type: ignore[arg-type]
    for reads in (1, 2):
        job = strict.collateral_job(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time)
        assert job is not None and job.fetch is not None
        prefetched = job.run()
        assert bad.reads == reads
        with pytest.raises(errors.SignatureError):
            strict.verify(Platform.SGX, SGX.quote_bytes(), aux, at=SGX.time, prefetched=prefetched)


# --- evidence verify --platform az-tdx-vtpm --min-tcb-eval-number auto ------------------------------------


def test_cli_az_tdx_vtpm_automatic_minimum(tmp_path: Path) -> None:
    """Azure TDX vTPM evidence: its TD quote's collateral and Intel's TDX list (a file, or the
    PCS directory), judged as a TDX quote's."""
    evidence = ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json"
    case = next(
        c for c in CASES if c.quote == "tdx/trustee-az-tdx-vtpm/td-quote.bin" and "1025" in c.collateral
    )
    base = ("evidence", "verify", evidence, "--platform", "az-tdx-vtpm", "--at", case.at, "--json")
    r = run_confide(*base, "--collateral", ASSETS / case.collateral, "--min-tcb-eval-number", "auto",
                    "--tcb-eval-numbers", TDX_OCT)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    details = json.loads(r.stdout)["details"]
    assert details["required_tcb_evaluation"]["required"] == 17
    assert details["tcb_evaluation_numbers"]["id"] == "TDX"
    d = _directory_from_bundle(tmp_path, case, TDX_OCT)
    r = run_confide(*base, "--collateral", d, "--min-tcb-eval-number", "auto", "--tcb-recovery-grace", "0")
    assert r.returncode == errors.CollateralOutdatedError.exit_code, r.stdout + r.stderr
    assert "expected at least 20 (--min-tcb-eval-number auto: " in json.loads(r.stdout)["error"]["message"]
    r = run_confide(*base, "--collateral", ASSETS / case.collateral, "--min-tcb-eval-number", "auto")
    assert json.loads(r.stdout)["error"]["class"] == "CollateralMissingError"  # a bundle, no list given
    # the SGX list for a TD quote: refused
    r = run_confide(*base, "--collateral", ASSETS / case.collateral, "--min-tcb-eval-number", "auto",
                    "--tcb-eval-numbers", SGX_AUG)  # fmt: skip
    assert json.loads(r.stdout)["error"]["class"] == "CollateralError"


# --- cas attest / Cas.attested --min-tcb-eval-number auto ---------------------------------------------------


@pytest.mark.parametrize(
    ("grace_days", "error"), [(400, errors.BindingError), (0, errors.CollateralOutdatedError)]
)
def test_cas_attest_automatic_minimum(tmp_path: Path, grace_days: int, error: type[Exception]) -> None:
    """``cas attest --collateral DIR --min-tcb-eval-number auto``: the CAS's evidence is judged
    by the minimum Intel's list (from the directory) requires, before its binding is checked (a
    real quote binds no certificate of this test: verified, it fails there)."""
    from confide.cas.pin import attest_collateral, verify_cas_evidence

    minimum = AutoTcbEvaluation(timedelta(days=grace_days))
    source = attest_collateral(str(_directory_from_bundle(tmp_path, TDX, TDX_OCT)), minimum)
    assert isinstance(source, PcsDirectorySource) and source.tcb_evaluation_numbers
    doc = {"platform": "tdx", "evidence": base64.b64encode(TDX.quote_bytes()).decode(), "log_key": "k"}
    match = (
        r"expected at least 20 \(cas attest --min-tcb-eval-number auto: Intel's"
        if grace_days == 0
        else "not bound"
    )
    with pytest.raises(error, match=match):
        verify_cas_evidence(
            b"not a certificate", json.dumps(doc).encode(), sim_key_pem=None, at=TDX.time, collateral=source,
            min_tcb_evaluation_data_number=minimum,
        )  # fmt: skip
    # a bundle has no list; no collateral at all brings none either
    for location in (str(ASSETS / TDX.collateral), None):
        with pytest.raises(errors.UsageError, match=r"needs --collateral DIR\|URL"):
            attest_collateral(location, minimum)
    assert isinstance(attest_collateral(str(ASSETS / TDX.collateral), 17), BundleFileSource)  # N: as before
    assert attest_collateral(None, 17) is None
    url = attest_collateral("https://pccs.example:8081", minimum)
    assert isinstance(url, PcsHttpSource) and url.tcb_evaluation_numbers
    assert url.tcb_recovery_grace == timedelta(days=grace_days)


def test_cli_cas_attest_and_ui_take_auto() -> None:
    """Refused before the CAS is asked anything (an unreachable URL would be a NetworkError)."""
    bundle = ASSETS / TDX.collateral
    for command in (("cas", "attest"), ("ui", "--attest", "--measurement", "ab" * 48)):
        assert "N|auto" in run_confide(*command[:1], *command[1:2], "--help").stdout
        env = {"CONFIDE_CAS_URL": "https://127.0.0.1:1"}
        url = ("https://127.0.0.1:1",) if command[0] == "cas" else ()
        r = run_confide(*command, *url, "--min-tcb-eval-number", "auto", "--collateral", bundle, env=env)
        assert r.returncode == 2 and "--min-tcb-eval-number auto needs --collateral DIR|URL" in r.stderr, (
            r.stderr
        )
        r = run_confide(*command, *url, "--min-tcb-eval-number", "17", "--tcb-recovery-grace", "3", env=env)
        assert r.returncode == 2 and "--tcb-recovery-grace is for --min-tcb-eval-number auto" in r.stderr, (
            r.stderr
        )
        r = run_confide(
            *command, *url, "--min-tcb-eval-number", "auto", "--tcb-recovery-grace", "-1", env=env
        )
        assert r.returncode == 2, r.stderr
    r = run_confide("ui", "--min-tcb-eval-number", "auto")
    assert r.returncode == 2 and "are for --attest" in r.stderr


def test_http_source_keeps_collateral_below_the_automatic_minimum_out_of_its_disk_cache(
    tmp_path: Path,
) -> None:
    """A URL source under ``--min-tcb-eval-number auto`` (``tcb_recovery_grace``) treats the
    minimum its list sets at its clock as a fixed ``N``: a TCB Info or QE Identity below it is
    neither served from its disk cache nor kept, but asked for again, and refused with the
    list's reason when the service answers it again; at or above it, cached as before."""
    quote = Quote.from_bytes(SGX.quote_bytes())
    fmspc, ca = pck_info(quote)
    real = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())  # evaluation 17

    def source(grace_days: int) -> PcsHttpSource:
        made = source_for(
            pcs.url,
            cache_dir=tmp_path,
            tcb_evaluation_numbers=True,
            tcb_recovery_grace=timedelta(days=grace_days),
        )
        assert isinstance(made, PcsHttpSource)
        made.clock = lambda: SGX.time
        return made

    with fake_pcs() as pcs:
        pcs.serve(SGX.quote_bytes(), real)
        serve_tcb_evaluation_numbers(pcs, "sgx", SGX_AUG.read_bytes(), CHAIN)
        coll = source(365).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)  # minimum 17: kept
        asked = len(pcs.requests)
        assert source(365).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == coll
        assert len(pcs.requests) == asked  # all from the disk cache
        with pytest.raises(
            errors.CollateralOutdatedError,
            match=r"tcbEvaluationDataNumber 17, expected at least 20 \(.*--min-tcb-eval-number auto: Intel's",
        ):
            source(0).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)  # minimum 20
        tcb_asked = [r for r in pcs.requests[asked:] if "/tcb?" in r]
        assert len(tcb_asked) == 1  # the cached TCB Info was not served: asked for again
        # without the grace (the list only brought along), nothing changes
        plain = source_for(pcs.url, cache_dir=tmp_path, tcb_evaluation_numbers=True)
        assert isinstance(plain, PcsHttpSource) and plain.tcb_recovery_grace is None


def test_memory_cache_rejudges_an_entry_when_the_automatic_minimum_rises(tmp_path: Path) -> None:
    """``cas serve --collateral URL --min-tcb-eval-number auto``: collateral in the CAS's memory
    is not served once the minimum its list sets at an attestation's time rises above it (a
    grace period ended while it was held), though its nextUpdate is still ahead: the prefetch
    asks the source again. Without the grace (the list only), or with N, it is served."""
    from confide.cas.pcs import DcapCollateralCache, DcapKey

    quote = Quote.from_bytes(SGX.quote_bytes())
    key = DcapKey(*pck_info(quote), quote.tee)
    real = DcapCollateral.from_dcap_qvl_json(SGX.collateral_bytes())  # evaluation 17
    # evaluation 18's recovery event (2024-11-12) + grace falls five days after SGX.time
    grace_days = (SGX.time + timedelta(days=5) - t("2024-11-12T00:00:00Z")).days
    later = SGX.time + timedelta(days=6)
    with fake_pcs() as pcs:
        pcs.serve(SGX.quote_bytes(), real)
        serve_tcb_evaluation_numbers(pcs, "sgx", SGX_AUG.read_bytes(), CHAIN)
        for with_grace, served_later in ((True, False), (False, True)):
            source = source_for(
                pcs.url, cache_dir=tmp_path / str(with_grace), tcb_evaluation_numbers=True,
                tcb_recovery_grace=timedelta(days=grace_days) if with_grace else None,
            )  # fmt: skip
            assert isinstance(source, PcsHttpSource)
            source.clock = lambda: SGX.time
            cache = DcapCollateralCache(source)
            cache.get(key, SGX.time)
            assert cache.cached(key, SGX.time) is not None  # minimum 17 at SGX.time
            assert (cache.cached(key, later) is not None) == served_later, with_grace


def test_a_far_future_recovery_event_is_not_yet_enforced_and_overflows_nothing() -> None:
    """A list read unverified (the caches' decisions under auto: a PCCS's answer, before any
    signature is checked) may date an event in year 9999: ``date + grace`` overflowed
    (OverflowError from a cache lookup or a fetch, not a refusal). It is an event not yet
    enforced: the lowest number the list gives is required."""
    inner = (
        '{"id":"TDX","version":1,"issueDate":"2025-10-20T00:00:00Z","nextUpdate":"2025-11-19T00:00:00Z",'
        '"tcbEvalNumbers":[{"tcbEvaluationDataNumber":19,"tcbRecoveryEventDate":"9999-12-31T23:59:59Z",'
        '"tcbDate":"9999-12-31T00:00:00Z"},{"tcbEvaluationDataNumber":17,'
        '"tcbRecoveryEventDate":"2024-03-12T00:00:00Z","tcbDate":"2024-03-13T00:00:00Z"}]}'
    )
    body = f'{{"tcbEvaluationDataNumbers":{inner},"signature":"{"00" * 64}"}}'.encode()
    listed = unverified_tcb_evaluation_numbers(body)
    assert listed is not None
    assert listed.required(t("2025-10-20T00:00:00Z"), timedelta(days=3650)).number == 17
    assert listed.required(t("2025-10-20T00:00:00Z"), timedelta(days=365)).number == 17
    assert listed.required(t("2025-03-01T00:00:00Z"), timedelta(days=365)).number == 17  # none yet: lowest
