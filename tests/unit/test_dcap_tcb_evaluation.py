"""The minimum TCB evaluation data number (docs/dcap.md, "TCB evaluation data number"):
verification reports the numbers of the TCB Info and QE Identity it used, a policy
(``security.attestation.min_tcb_evaluation_data_number``), ``evidence verify
--min-tcb-eval-number`` and ``cas serve --min-tcb-eval-number`` judge them, and a PCS/PCCS
source given the minimum neither keeps nor serves older collateral.

Real collateral in tests/assets is of evaluation 15, 17 or 18; newer numbers are made by
editing the signed JSON and re-signing it under the test PKI (tests/dcap_forge.py), with the
real quote re-issued under that PKI."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import dcap_qvl._dcap_qvl as qvl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import run_confide
from confide import errors
from confide.cas.pcs import DcapCollateralCache, DcapKey
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import PcsHttpSource
from confide.errors import PolicyError
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from confide.platforms import require_tcb_evaluation
from confide.policy import appraise, loads_policy, policy_hash
from confide.verify.dcap import DcapVerifier, pck_info, verify_quote
from confide.verify.result import Platform, TcbEvaluation, TcbStatus, VerifiedEvidence
from dcap_cases import ASSETS, CASES, Case
from dcap_forge import ForgedPki
from pcs_fake import fake_pcs

TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")  # TCB Info and QE Identity: 17


def _coll(case: Case) -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())


def _renumbered(pki: ForgedPki, real: DcapCollateral, tcb_info: int, qe_identity: int) -> DcapCollateral:
    """``real`` with the two numbers changed, re-signed under ``pki``."""

    def edit(text: bytes, number: int) -> bytes:
        obj = json.loads(text)
        obj["tcbEvaluationDataNumber"] = number
        return json.dumps(obj, separators=(",", ":")).encode()

    edited = dataclasses.replace(
        real, tcb_info=edit(real.tcb_info, tcb_info), qe_identity=edit(real.qe_identity, qe_identity)
    )
    return pki.forge_collateral(edited)


def _forged(tcb_info: int, qe_identity: int) -> tuple[VerifiedEvidence, bytes, DcapCollateral, ForgedPki]:
    pki = ForgedPki(at=TDX.time)
    raw = pki.forge_quote(TDX.quote_bytes())
    coll = _renumbered(pki, _coll(TDX), tcb_info, qe_identity)
    return DcapVerifier(root_ca_der=pki.root_der).verify(raw, coll, at=TDX.time), raw, coll, pki


# --- verification reports the numbers -----------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.expected, tuple)], ids=lambda c: c.id)
def test_every_verified_vector_reports_both_numbers(case: Case) -> None:
    coll = _coll(case)
    v = verify_quote(case.quote_bytes(), coll, at=case.time)
    want = TcbEvaluation(
        json.loads(coll.tcb_info)["tcbEvaluationDataNumber"],
        json.loads(coll.qe_identity)["tcbEvaluationDataNumber"],
    )
    assert v.tcb_evaluation == want
    assert v.details["tcb_evaluation_data_number"] == want.tcb_info
    assert v.details["qe_identity_tcb_evaluation_data_number"] == want.qe_identity


def test_the_numbers_are_those_of_the_signed_texts() -> None:
    v, *_ = _forged(19, 18)
    assert v.tcb_evaluation == TcbEvaluation(tcb_info=19, qe_identity=18)
    assert v.tcb_evaluation.below(19) == (("QE Identity", 18),)
    assert v.tcb_evaluation.below(18) == ()
    assert v.tcb_evaluation.below(20) == (("TCB Info", 19), ("QE Identity", 18))


def test_an_edited_number_breaks_the_signature() -> None:
    coll = _coll(TDX)
    edited = coll.tcb_info.replace(b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":99', 1)
    assert edited != coll.tcb_info
    with pytest.raises(errors.SignatureError, match="TCB Info"):
        verify_quote(TDX.quote_bytes(), dataclasses.replace(coll, tcb_info=edited), at=TDX.time)


def test_other_platforms_report_none() -> None:
    sim = VerifiedEvidence(Platform.SIMULATED, {}, TDX.time, "00" * 32, simulated=True)
    assert sim.tcb_evaluation is None


# --- the policy factor ---------------------------------------------------------------------------


def _policy(minimum: str | None, mr_td: str, extra: str = "") -> str:
    text = f'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    attestation:\n      tdx:\n        mr_td: {mr_td}\n'
    text += "security:\n  attestation:\n"
    if minimum is not None:
        text += f"    min_tcb_evaluation_data_number: {minimum}\n"
    return text + extra + "    ignore_advisories: []\n"


def test_policy_minimum_against_a_real_quote() -> None:
    v = verify_quote(TDX.quote_bytes(), _coll(TDX), at=TDX.time)
    mr_td = str(v.claims["mr_td"])
    assert appraise(v, loads_policy(_policy("17", mr_td)), "svc", at=TDX.time).accepted
    result = appraise(v, loads_policy(_policy("18", mr_td)), "svc", at=TDX.time)
    assert not result.accepted
    assert [str(r) for r in result.reasons] == [
        "tcb_evaluation_data_number.tcb_info: got 17 (TCB Info), expected >= 18 "
        "(security.attestation.min_tcb_evaluation_data_number): collateral of a later TCB evaluation",
        "tcb_evaluation_data_number.qe_identity: got 17 (QE Identity), expected >= 18 "
        "(security.attestation.min_tcb_evaluation_data_number): collateral of a later TCB evaluation",
    ]


def test_policy_minimum_checks_each_piece() -> None:
    v, *_ = _forged(19, 17)
    mr_td = str(v.claims["mr_td"])
    result = appraise(v, loads_policy(_policy("18", mr_td)), "svc", at=TDX.time)
    assert [r.field for r in result.reasons] == ["tcb_evaluation_data_number.qe_identity"]
    v, *_ = _forged(17, 19)
    result = appraise(v, loads_policy(_policy("18", mr_td)), "svc", at=TDX.time)
    assert [r.field for r in result.reasons] == ["tcb_evaluation_data_number.tcb_info"]
    v, *_ = _forged(18, 18)
    assert appraise(v, loads_policy(_policy("18", mr_td)), "svc", at=TDX.time).accepted


def test_policy_minimum_is_reported_with_the_other_mismatches() -> None:
    v = verify_quote(TDX.quote_bytes(), _coll(TDX), at=TDX.time)
    result = appraise(v, loads_policy(_policy("18", "ab" * 48)), "svc", at=TDX.time)
    assert [r.field for r in result.reasons] == [
        "tcb_evaluation_data_number.tcb_info",
        "tcb_evaluation_data_number.qe_identity",
        "attestation[0].tdx.mr_td",
    ]


def test_intel_evidence_without_numbers_is_refused_and_other_platforms_are_not_affected() -> None:
    v = verify_quote(TDX.quote_bytes(), _coll(TDX), at=TDX.time)
    mr_td = str(v.claims["mr_td"])
    bare = dataclasses.replace(v, tcb_evaluation=None)
    result = appraise(bare, loads_policy(_policy("1", mr_td)), "svc", at=TDX.time)
    assert [(r.field, r.got) for r in result.reasons] == [("tcb_evaluation_data_number", "none")]
    sim = VerifiedEvidence(
        Platform.SIMULATED, {"measurement": "cd" * 32, "debug": False}, TDX.time, "00" * 32, simulated=True
    )
    text = (
        'name: p\nversion: "0.3"\nservices:\n  - name: svc\n    attestation:\n      sim:\n'
        f"        measurement: {'cd' * 32}\nsecurity:\n  attestation:\n    tolerate: [simulation]\n"
        "    min_tcb_evaluation_data_number: 99\n"
    )
    assert appraise(sim, loads_policy(text), "svc", at=TDX.time).accepted


def test_policy_field_loads_and_is_hashed_only_when_given() -> None:
    without = loads_policy(_policy(None, "ab" * 48))
    with_it = loads_policy(_policy("18", "ab" * 48))
    assert without.security.attestation.min_tcb_evaluation_data_number is None
    assert with_it.security.attestation.min_tcb_evaluation_data_number == 18
    assert policy_hash(without) != policy_hash(with_it)
    # absent: the same hash as a policy written before the field existed
    assert policy_hash(loads_policy(_policy(None, "ab" * 48).split("security:")[0])) == policy_hash(without)


@pytest.mark.parametrize("value", ["0", "-3", "4294967296", "1.5", "true", '"18"', "x", "[18]", "null"])
def test_policy_field_bad_values_name_their_position(value: str) -> None:
    text = _policy(value, "ab" * 48)
    if value == "null":  # explicit null is the default: no minimum
        assert loads_policy(text).security.attestation.min_tcb_evaluation_data_number is None
        return
    with pytest.raises(PolicyError) as info:
        loads_policy(text, source="p.yaml")
    (problem,) = info.value.problems
    assert str(problem).startswith("p.yaml:10:37: security.attestation.min_tcb_evaluation_data_number: got ")
    assert "expected" in str(problem)


# --- evidence verify --min-tcb-eval-number -------------------------------------------------------


def test_cli_minimum(tmp_path: Path) -> None:
    args = ("evidence", "verify", ASSETS / TDX.quote, "--collateral", ASSETS / TDX.collateral, "--at", TDX.at)
    ok = run_confide(*args, "--min-tcb-eval-number", "17", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["details"]["qe_identity_tcb_evaluation_data_number"] == 17
    old = run_confide(*args, "--min-tcb-eval-number", "18", "--json")
    assert old.returncode == errors.CollateralOutdatedError.exit_code == 62
    error = json.loads(old.stdout)["error"]
    assert error["class"] == "CollateralOutdatedError"
    assert "TCB Info tcbEvaluationDataNumber 17, QE Identity tcbEvaluationDataNumber 17" in error["message"]
    assert "expected at least 18 (--min-tcb-eval-number)" in error["message"]
    text = run_confide(*args, "--min-tcb-eval-number", "18")
    assert text.returncode == 62 and "CollateralOutdatedError" in text.stderr
    for bad in ("0", "x"):
        assert run_confide(*args, "--min-tcb-eval-number", bad).returncode == 2
    snp = ASSETS / "sev-snp/trustee/test-report.bin"
    wrong = run_confide("evidence", "verify", snp, "--platform", "sev-snp", "--min-tcb-eval-number", "1")
    assert wrong.returncode == 2 and "Intel DCAP evidence" in wrong.stderr


def test_require_tcb_evaluation() -> None:
    v = verify_quote(TDX.quote_bytes(), _coll(TDX), at=TDX.time)
    assert require_tcb_evaluation(v, 17, "x") is v
    with pytest.raises(errors.CollateralOutdatedError, match=r"expected at least 18 \(where\)"):
        require_tcb_evaluation(v, 18, "where")
    with pytest.raises(errors.UsageError, match="Intel DCAP evidence only"):
        require_tcb_evaluation(dataclasses.replace(v, tcb_evaluation=None), 1, "x")


# --- a PCS/PCCS source given the minimum -----------------------------------------------------------


def test_http_source_neither_keeps_nor_serves_older_collateral(tmp_path: Path) -> None:
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    clock = lambda: TDX.time  # noqa: E731
    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), _coll(TDX))
        strict = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=clock, min_tcb_evaluation_data_number=18)
        with pytest.raises(
            errors.CollateralOutdatedError, match="tcbEvaluationDataNumber 17, expected at least 18"
        ):
            strict.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert not list(tmp_path.iterdir())  # nothing of it kept
        # A source without the minimum keeps it on disk ...
        lax = PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=clock)
        assert lax.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == _coll(TDX)
        assert len(list(tmp_path.iterdir())) == 4
        asked = len(pcs.requests)
        # ... which the strict one does not serve: it asks the service again.
        with pytest.raises(errors.CollateralOutdatedError):
            strict.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert len(pcs.requests) == asked + 1
        # The service has caught up: the newer answer is served and kept. (It is signed under a
        # test PKI: sources whose root is that PKI's, since a source keeps on disk only answers
        # whose signatures lead to its root; the real CRLs on disk do not, and are fetched again.)
        pki = ForgedPki(at=TDX.time)
        newer = _renumbered(pki, _coll(TDX), 18, 18)
        pcs.serve(TDX.quote_bytes(), newer)
        caught_up = PcsHttpSource(
            pcs.url,
            cache_dir=tmp_path,
            clock=clock,
            min_tcb_evaluation_data_number=18,
            root_ca_der=pki.root_der,
        )
        got = caught_up.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert got == newer
        asked = len(pcs.requests)
        again = PcsHttpSource(
            pcs.url,
            cache_dir=tmp_path,
            clock=clock,
            min_tcb_evaluation_data_number=18,
            root_ca_der=pki.root_der,
        )
        assert again.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == newer
        assert len(pcs.requests) == asked  # from the disk cache now
        v = DcapVerifier(root_ca_der=pki.root_der).verify(
            pki.forge_quote(TDX.quote_bytes()), got, at=TDX.time
        )
        assert v.tcb_evaluation == TcbEvaluation(18, 18)


def test_early_update_is_asked_for_and_cached_apart(tmp_path: Path) -> None:
    """``--pcs-update early``: TCB Info and QE Identity are asked with ``update=early`` (Intel
    PCS API v4), so a minimum that PCS's default (standard) collateral does not meet is met by
    the early one; each kind has its own disk cache entries; a PCCS that ignores the parameter
    answers the standard collateral, which is refused all the same."""
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    clock = lambda: TDX.time  # noqa: E731
    pki = ForgedPki(at=TDX.time)
    early = _renumbered(pki, _coll(TDX), 18, 18)  # under the test PKI: sources take its root

    def source(update: str | None, cache: str) -> PcsHttpSource:
        return PcsHttpSource(
            pcs.url, cache_dir=tmp_path / cache, clock=clock, min_tcb_evaluation_data_number=18,
            root_ca_der=pki.root_der, update=update,
        )  # fmt: skip

    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), _coll(TDX))  # standard: evaluation 17
        early_paths = pcs.serve(TDX.quote_bytes(), early, update="early")
        for update in (None, "standard"):
            with pytest.raises(errors.CollateralOutdatedError, match="tcbEvaluationDataNumber 17, expected"):
                source(update, "one").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        asked = len(pcs.requests)
        got = source("early", "one").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert got == early
        assert set(early_paths[:2]) <= set(pcs.requests[asked:])
        assert early_paths[0].endswith("&update=early") and early_paths[1].endswith("?update=early")
        v = DcapVerifier(root_ca_der=pki.root_der).verify(
            pki.forge_quote(TDX.quote_bytes()), got, at=TDX.time
        )
        assert v.tcb_evaluation == TcbEvaluation(18, 18)
        # cached apart: a second early source reads its disk cache; a standard one still asks
        asked = len(pcs.requests)
        assert source("early", "one").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == early
        assert [p for p in pcs.requests[asked:] if "/tcb?" in p or "/qe/" in p] == []
        lax = PcsHttpSource(pcs.url, cache_dir=tmp_path / "one", clock=clock, update="standard")
        for _ in range(2):  # (the CRLs are the test PKI's: served last, for both kinds)
            standard = lax.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
            assert (standard.tcb_info, standard.qe_identity) == (_coll(TDX).tcb_info, _coll(TDX).qe_identity)
        assert source("early", "one").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == early
        # A PCCS that ignores update=: the standard answer comes back, and is refused.
        pcs.serve(TDX.quote_bytes(), _coll(TDX), honour_update=False)
        with pytest.raises(errors.CollateralOutdatedError, match="tcbEvaluationDataNumber 17, expected"):
            source("early", "two").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    with pytest.raises(ValueError, match="expected 'early' or 'standard'"):
        PcsHttpSource("https://pcs.example", cache_dir=tmp_path, update="earliest")


def test_cli_pcs_update(tmp_path: Path) -> None:
    """``evidence verify --collateral URL --pcs-update early`` asks for the early answers (here
    the only ones the service has: the standard request is a 404); ``--pcs-update`` with a
    directory or file, without ``--collateral``, or for other evidence: usage errors, as for
    ``cas serve``, ``cas attest``, ``ui`` and ``Cas.attested``."""
    from confide.sdk import Cas

    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    base = ("evidence", "verify", ASSETS / TDX.quote, "--at", TDX.at, "--json")
    with fake_pcs() as pcs:
        early = pcs.serve(TDX.quote_bytes(), _coll(TDX), update="early")  # early answers only
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-update", "early", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(early[:2]) <= set(pcs.requests)
        r = run_confide(*base, "--collateral", pcs.url, env=env)
        assert r.returncode == errors.CollateralMissingError.exit_code and "404" in r.stdout, r.stdout
    for args in (
        ("--collateral", ASSETS / TDX.collateral, "--pcs-update", "early"),
        ("--pcs-update", "early"),
        ("--collateral", pcs.url, "--pcs-update", "earliest"),
    ):
        r = run_confide(*base, *args, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
    r = run_confide(
        "evidence", "verify", ASSETS / TDX.quote, "--platform", "sev-snp", "--pcs-update", "early"
    )
    assert r.returncode == 2 and "only for Intel DCAP evidence" in r.stdout + r.stderr
    for command in (("cas", "serve", "--data-dir", tmp_path / "x"), ("cas", "attest", "https://127.0.0.1:1")):
        r = run_confide(*command, "--collateral", ASSETS / TDX.collateral, "--pcs-update", "early")
        assert r.returncode == 2 and "--pcs-update" in r.stderr and "--collateral URL" in r.stderr, r.stderr
    r = run_confide("ui", "--pcs-update", "early")
    assert r.returncode == 2 and "--pcs-update and --pcs-tcb-eval-number are for --attest" in r.stderr, (
        r.stderr
    )
    with pytest.raises(errors.UsageError, match="--pcs-update needs --collateral URL"):
        Cas.attested("https://127.0.0.1:1", any_measurement=True, pcs_update="early")
    with pytest.raises(errors.UsageError, match="--pcs-update is for --collateral URL"):
        Cas.attested(
            "https://127.0.0.1:1", any_measurement=True, collateral=str(ASSETS / TDX.collateral),
            pcs_update="early",
        )  # fmt: skip


def test_pcs_update_reaches_each_source(tmp_path: Path) -> None:
    """``pcs_update`` reaches the URL source that ``cas serve`` (``prepare``), ``cas attest``,
    ``ui --attest`` and ``Cas.attested`` (``attest_collateral``) build; without it, none."""
    from confide.cas.pin import attest_collateral
    from confide.cas.server import prepare

    url = "https://pccs.example:8081"
    for update in ("early", "standard", None):
        cas, *_ = prepare(
            tmp_path / str(update), host="127.0.0.1", dev=False, db_url=None, collateral=url, pcs_update=update
        )  # fmt: skip
        assert isinstance(cas.verifier, PlatformVerifier)
        served = cas.verifier.dcap_source
        assert isinstance(served, PcsHttpSource) and served.update == update
        attested = attest_collateral(url, None, pcs_update=update)
        assert isinstance(attested, PcsHttpSource) and attested.update == update
    with pytest.raises(errors.UsageError, match="--pcs-update is for --collateral URL"):
        prepare(tmp_path / "dir", host="127.0.0.1", dev=False, db_url=None, collateral=str(tmp_path),
                pcs_update="early")  # fmt: skip


def test_cas_collateral_cache_keeps_the_refusal_class(tmp_path: Path) -> None:
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), _coll(TDX))
        source = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time, min_tcb_evaluation_data_number=18
        )
        cache = DcapCollateralCache(source, where="the PCCS", monotonic=lambda: 5.0)
        key = DcapKey(fmspc, ca, quote.tee)
        outcome = cache.prefetch(key, TDX.time)
        assert isinstance(outcome, errors.CollateralOutdatedError)
        assert "from the PCCS failed: CollateralOutdatedError" in outcome.message
        asked = len(pcs.requests)
        with pytest.raises(errors.CollateralOutdatedError):  # within FAILURE_GRACE: not asked again
            cache.get(key, TDX.time)
        assert len(pcs.requests) == asked
        assert cache.cached(key, TDX.time) is None


# --- cas serve --min-tcb-eval-number -------------------------------------------------------------


def test_cas_verifier_refuses_older_collateral_from_any_source() -> None:
    aux = {"collateral": TDX.collateral_bytes()}  # the request's own bundle, evaluation 17
    lax = PlatformVerifier()
    assert lax.verify(Platform.TDX, TDX.quote_bytes(), aux, at=TDX.time).tcb_status is TcbStatus.UP_TO_DATE
    strict = PlatformVerifier(min_tcb_evaluation_data_number=18)
    with pytest.raises(errors.CollateralOutdatedError, match="cas serve --min-tcb-eval-number"):
        strict.verify(Platform.TDX, TDX.quote_bytes(), aux, at=TDX.time)
    assert PlatformVerifier(min_tcb_evaluation_data_number=17).verify(
        Platform.TDX, TDX.quote_bytes(), aux, at=TDX.time
    ).tcb_evaluation == TcbEvaluation(17, 17)


def test_cas_serve_has_the_option() -> None:
    r = run_confide("cas", "serve", "--help")
    assert "--min-tcb-eval-number" in r.stdout
    r = run_confide("cas", "serve", "--data-dir", "/nonexistent/x", "--min-tcb-eval-number", "0")
    assert r.returncode == 2


@pytest.mark.parametrize(("tcb_info", "qe_identity"), [(17, 17), (19, 17), (17, 19), (18, 18), (18, 30)])
def test_same_verdict_as_dcap_qvl(tcb_info: int, qe_identity: int) -> None:
    """dcap-qvl 0.7.0's ``min_tcb_eval_data_number`` (a peer): it too judges the lower of the two
    numbers, and reports it as the collateral's."""
    v, raw, coll, pki = _forged(tcb_info, qe_identity)
    at = int(TDX.time.timestamp())
    policy = qvl.PyQuotePolicy.strict(at).allow_dynamic_platform(True).allow_cached_keys(True)
    policy = policy.allow_smt(True).platform_grace_period(1 << 40).qe_grace_period(1 << 40)
    policy = policy.min_tcb_eval_data_number(18)
    try:
        claims = qvl.PyQuoteVerifier(pki.root_der).verify_with_policy(
            raw, qvl.PyQuoteCollateralV3.from_json(coll.to_dcap_qvl_json()), at, policy
        )
        theirs: int | str = json.loads(claims.to_json())["tcb"]["eval_data_number"]
    except ValueError as exc:
        theirs = str(exc)
    ours_refused = bool(v.tcb_evaluation is not None and v.tcb_evaluation.below(18))
    assert ours_refused == isinstance(theirs, str), theirs
    if isinstance(theirs, str):
        assert f"TCB eval data number {min(tcb_info, qe_identity)} is below minimum 18" in theirs
        with pytest.raises(errors.CollateralOutdatedError):
            require_tcb_evaluation(v, 18, "x")
    else:
        assert theirs == min(tcb_info, qe_identity)
