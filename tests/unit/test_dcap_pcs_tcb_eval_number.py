"""``--pcs-tcb-eval-number N`` (docs/dcap.md, "One TCB evaluation"): a URL collateral source asks
Intel PCS (or a PCCS) for TCB Info and QE Identity as of TCB evaluation ``N``
(``tcbEvaluationDataNumber=N``, Intel PCS API v4), refuses an answer of another number (from the
network or its disk cache), keys its disk cache so that answers for ``N`` and answers without it
never serve each other, names ``N`` when the service answers 404 or 410, and with Intel's TCB
evaluation data numbers refuses an ``N`` the list does not name or one below the minimum it sets.
The option is exclusive with ``--pcs-update``, needs ``--collateral URL``, and may not be below a
fixed ``--min-tcb-eval-number``: usage errors, checked in one place for every command and the SDK.

Against the fake PCS on 127.0.0.1 (tests/pcs_fake.py); numbers other than the real collateral's
(17) are made by re-signing under a test PKI (tests/dcap_forge.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli import run_confide
from confide import errors
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import PcsHttpSource, check_pcs_update, source_for
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from confide.platforms import AutoTcbEvaluation
from confide.verify.dcap import DcapVerifier, pck_info
from confide.verify.result import TcbEvaluation
from confide.verify.roots import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_TCB_SIGNING_2025_DER
from dcap_cases import ASSETS, CASES, Case
from dcap_forge import ForgedPki
from pcs_fake import fake_pcs, serve_tcb_evaluation_numbers

TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")  # TCB Info and QE Identity: 17
# The SGX quote of automata-dcap-rs with its August 2025 collateral (17) and Intel's SGX list of
# the same day (20, 19, 18, 17; issued 2025-08-15T05:15:31Z).
SGX = next(c for c in CASES if c.quote.endswith("sgx_quote_v3_from_lib_rs.dat") and "0825" in c.collateral)
SGX_AUG = ASSETS / "sgx/automata-dcap-attestation/sgxtcbeval.json"
CHAIN = (INTEL_SGX_TCB_SIGNING_2025_DER, INTEL_SGX_ROOT_CA_DER)


def _coll(case: Case) -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())


def _renumbered(pki: ForgedPki, real: DcapCollateral, number: int) -> DcapCollateral:
    """``real`` with both numbers ``number``, re-signed under ``pki``."""

    def edit(text: bytes) -> bytes:
        obj = json.loads(text)
        obj["tcbEvaluationDataNumber"] = number
        return json.dumps(obj, separators=(",", ":")).encode()

    return pki.forge_collateral(
        dataclasses.replace(real, tcb_info=edit(real.tcb_info), qe_identity=edit(real.qe_identity))
    )


def _pieces(coll: DcapCollateral) -> tuple[bytes, bytes]:
    """The TCB Info and QE Identity (the CRLs are served at one path for every kind)."""
    return coll.tcb_info, coll.qe_identity


def _tcb_and_qe(requests: list[str]) -> list[str]:
    return [r for r in requests if "/tcb?" in r or "/qe/" in r]


# --- the source --------------------------------------------------------------------------------------


def test_one_evaluation_is_asked_for_and_cached_apart(tmp_path: Path) -> None:
    """TCB Info and QE Identity are asked with ``tcbEvaluationDataNumber=N``; the answers for N
    and those without the parameter are kept on disk apart, and neither serves the other."""
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    pki = ForgedPki(at=TDX.time)
    current = _renumbered(pki, _coll(TDX), 19)  # what PCS serves without the parameter
    old = _renumbered(pki, _coll(TDX), 18)

    def source(number: int | None) -> PcsHttpSource:
        return PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time, root_ca_der=pki.root_der,
            tcb_evaluation_data_number=number,
        )  # fmt: skip

    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), current)
        paths = pcs.serve(TDX.quote_bytes(), old, evaluation=18)
        assert paths[0].endswith(f"/tcb?fmspc={fmspc.hex()}&tcbEvaluationDataNumber=18")
        assert paths[1].endswith("/qe/identity?tcbEvaluationDataNumber=18")
        # without N first: kept on disk (signed under the source's root) ...
        assert _pieces(source(None).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)) == _pieces(current)
        # ... and not served to a request for 18, which asks the service
        asked = len(pcs.requests)
        got = source(18).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert _pieces(got) == _pieces(old)
        assert _tcb_and_qe(pcs.requests[asked:]) == paths[:2]
        v = DcapVerifier(root_ca_der=pki.root_der).verify(
            pki.forge_quote(TDX.quote_bytes()), got, at=TDX.time
        )
        assert v.tcb_evaluation == TcbEvaluation(18, 18)
        # both now on disk, each served to its own request only
        asked = len(pcs.requests)
        assert source(18).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee) == old
        assert _pieces(source(None).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)) == _pieces(current)
        assert _tcb_and_qe(pcs.requests[asked:]) == []
        # another number is another request (and this service has no 17: a 404 naming it)
        with pytest.raises(errors.CollateralMissingError, match="no TCB evaluation data number 17"):
            source(17).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)


def test_an_answer_of_another_number_is_refused(tmp_path: Path) -> None:
    """A PCCS that ignores the parameter answers its current collateral: refused, not kept; an
    answer of another number planted in the disk cache under the request for N is not served."""
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    pki = ForgedPki(at=TDX.time)
    current = _renumbered(pki, _coll(TDX), 19)

    def source(number: int | None, cache: str) -> PcsHttpSource:
        return PcsHttpSource(
            pcs.url, cache_dir=tmp_path / cache, clock=lambda: TDX.time, root_ca_der=pki.root_der,
            tcb_evaluation_data_number=number,
        )  # fmt: skip

    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), current, honour_update=False)
        with pytest.raises(
            errors.CollateralMissingError,
            match=r"tcbEvaluationDataNumber=18: tcbEvaluationDataNumber 19, expected 18 "
            r"\(--pcs-tcb-eval-number 18: the collateral service ignored the parameter",
        ):
            source(18, "ignored").get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert not (tmp_path / "ignored").exists()  # the refused answer was not kept
        tcb_url = f"{pcs.url}/tdx/certification/v4/tcb?fmspc={fmspc.hex()}&tcbEvaluationDataNumber=18"
        # the answer without N, kept on disk, copied under the request for 18: not served
        plain = source(None, "planted")
        assert _pieces(plain.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)) == _pieces(current)
        plain_tcb = plain._cache_path(f"{pcs.url}/tdx/certification/v4/tcb?fmspc={fmspc.hex()}")
        planted = source(18, "planted")
        planted._cache_path(tcb_url).write_bytes(plain_tcb.read_bytes())
        asked = len(pcs.requests)
        with pytest.raises(errors.CollateralMissingError, match="tcbEvaluationDataNumber 19, expected 18"):
            planted.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert _tcb_and_qe(pcs.requests[asked:]) == [tcb_url.removeprefix(pcs.url)]  # asked again


@pytest.mark.parametrize(
    ("status", "match"),
    [
        (410, r": 410, the collateral service no longer serves TCB evaluation data number 5 "
              r"\(--pcs-tcb-eval-number 5"),
        (404, r": 404, the collateral service has no TCB evaluation data number 5 for this platform"),
    ],
)  # fmt: skip
def test_404_and_410_name_the_number(tmp_path: Path, status: int, match: str) -> None:
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    five = _renumbered(ForgedPki(at=TDX.time), _coll(TDX), 5)
    with fake_pcs() as pcs:
        paths = pcs.serve(TDX.quote_bytes(), five, evaluation=5)
        pcs.route(paths[0], b"", status)
        source = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time, tcb_evaluation_data_number=5
        )
        with pytest.raises(errors.CollateralMissingError, match=match):
            source.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        pcs.serve(TDX.quote_bytes(), five, evaluation=5)
        pcs.route(paths[1], b"", status)  # the QE Identity likewise
        with pytest.raises(errors.CollateralMissingError, match=match):
            source.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        # without N, a 410 stays what it was (an unexpected status)
        pcs.route(f"/tdx/certification/v4/tcb?fmspc={fmspc.hex()}", b"", 410)
        with pytest.raises(errors.NetworkError, match="HTTP 410, expected 200"):
            PcsHttpSource(pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time).get_collateral(
                fmspc=fmspc, ca=ca, tee=quote.tee
            )


def test_a_cas_floor_above_n_is_named(tmp_path: Path) -> None:
    """``cas serve``'s floor (the highest numbers it has verified) still applies: N below it is
    refused, the refusal naming the option."""
    quote = Quote.from_bytes(TDX.quote_bytes())
    fmspc, ca = pck_info(quote)
    with fake_pcs() as pcs:
        pcs.serve(TDX.quote_bytes(), _coll(TDX), evaluation=17)
        source = PcsHttpSource(
            pcs.url, cache_dir=tmp_path, clock=lambda: TDX.time, tcb_evaluation_data_number=17,
            floor=lambda piece, tee, fmspc_hex: 18,
        )  # fmt: skip
        with pytest.raises(
            errors.CollateralOutdatedError,
            match=r"this CAS has already verified 18 \(--pcs-tcb-eval-number 17 asks for an older",
        ):
            source.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)


def test_source_arguments(tmp_path: Path) -> None:
    for bad in (0, -1, 1 << 32, True, "17"):
        with pytest.raises(ValueError, match="tcb_evaluation_data_number"):
            PcsHttpSource("https://pcs.example", cache_dir=tmp_path, tcb_evaluation_data_number=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exclusive"):
        PcsHttpSource(
            "https://pcs.example", cache_dir=tmp_path, update="early", tcb_evaluation_data_number=17
        )
    made = PcsHttpSource("https://pcs.example", cache_dir=tmp_path, tcb_evaluation_data_number=17)
    assert "tcb_evaluation_data_number=17" in repr(made)


# --- the one check ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "update", "number", "minimum", "match"),
    [
        ("https://pcs.example", "early", 17, None, "--pcs-update and --pcs-tcb-eval-number are exclusive"),
        ("https://pcs.example", None, 17, 18,
         "--pcs-tcb-eval-number 17 is below --min-tcb-eval-number 18: the collateral it asks for would be"),
        (None, None, 17, None, "--pcs-tcb-eval-number needs --collateral URL"),
        ("/some/dir", None, 17, None, "--pcs-tcb-eval-number is for --collateral URL"),
        ("https://pcs.example", None, 0, None, "--pcs-tcb-eval-number: got 0, expected an integer, 1 to"),
        ("https://pcs.example", None, True, None, "--pcs-tcb-eval-number: got True"),
        ("https://pcs.example", None, 1 << 32, None, "--pcs-tcb-eval-number: got 4294967296"),
    ],
)  # fmt: skip
def test_check_pcs_update(
    location: str | None, update: str | None, number: object, minimum: object, match: str
) -> None:
    with pytest.raises(errors.UsageError, match=match):
        check_pcs_update(location, update, number, minimum)


def test_check_pcs_update_accepts() -> None:
    for minimum in (None, 17, 16, AutoTcbEvaluation()):  # auto: judged once the list is read
        check_pcs_update("https://pcs.example", None, 17, minimum)
    check_pcs_update(None, None, None, 18)
    with pytest.raises(errors.UsageError, match="--pcs-tcb-eval-number 17 is below"):
        source_for("https://pcs.example", min_tcb_evaluation_data_number=18, pcs_tcb_eval_number=17)


# --- with Intel's TCB evaluation data numbers ---------------------------------------------------------------


def test_the_list_names_the_numbers_that_exist(tmp_path: Path) -> None:
    """``--min-tcb-eval-number auto`` brings the list: an N it does not name is refused before
    TCB Info is asked for, and so is an N below the minimum it sets; one it names and that meets
    the minimum is asked for."""
    quote = Quote.from_bytes(SGX.quote_bytes())
    fmspc, ca = pck_info(quote)

    def source(number: int, grace_days: int) -> PcsHttpSource:
        made = source_for(
            pcs.url, cache_dir=tmp_path, tcb_evaluation_numbers=True,
            tcb_recovery_grace=timedelta(days=grace_days), pcs_tcb_eval_number=number,
        )  # fmt: skip
        assert isinstance(made, PcsHttpSource)
        made.clock = lambda: SGX.time
        return made

    with fake_pcs() as pcs:
        paths = pcs.serve(SGX.quote_bytes(), _coll(SGX), evaluation=17)
        serve_tcb_evaluation_numbers(pcs, "sgx", SGX_AUG.read_bytes(), CHAIN)
        for number in (16, 21):
            with pytest.raises(
                errors.CollateralMissingError,
                match=rf"--pcs-tcb-eval-number {number}: Intel's TCB evaluation data numbers for SGX "
                rf"\(from {pcs.url}, issued 2025-08-15T05:15:31Z\) name 20, 19, 18, 17, not {number}",
            ):
                source(number, 365).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        with pytest.raises(
            errors.CollateralOutdatedError,
            match=r"--pcs-tcb-eval-number 17 is below the minimum 20 that --min-tcb-eval-number auto "
            r"sets: Intel's TCB evaluation data numbers list issued 2025-08-15T05:15:31Z",
        ):
            source(17, 0).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert _tcb_and_qe(pcs.requests) == []  # none of them asked for TCB Info
        got = source(17, 365).get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
        assert (got.tcb_info, got.qe_identity) == (_coll(SGX).tcb_info, _coll(SGX).qe_identity)
        assert got.tcb_evaluation_numbers == SGX_AUG.read_bytes()
        assert _tcb_and_qe(pcs.requests) == paths[:2]


# --- the commands and the SDK --------------------------------------------------------------------------------


def test_cli_evidence_verify(tmp_path: Path) -> None:
    """``evidence verify --collateral URL --pcs-tcb-eval-number N`` asks for N (here the only
    answers the service has: without it, a 404); with ``--tcb-eval-numbers FILE`` an N the file
    does not name, or below its minimum, is refused before anything is asked."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    base = ("evidence", "verify", ASSETS / SGX.quote, "--at", SGX.at, "--json")
    with fake_pcs() as pcs:
        paths = pcs.serve(SGX.quote_bytes(), _coll(SGX), evaluation=17)
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-tcb-eval-number", "17", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["details"]["tcb_evaluation_data_number"] == 17
        assert set(paths[:2]) <= set(pcs.requests)
        r = run_confide(*base, "--collateral", pcs.url, env=env)
        assert r.returncode == errors.CollateralMissingError.exit_code and "404" in r.stdout, r.stdout
        auto = ("--min-tcb-eval-number", "auto", "--tcb-eval-numbers", SGX_AUG)
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-tcb-eval-number", "17", *auto, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        asked = len(pcs.requests)
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-tcb-eval-number", "16", *auto, env=env)
        assert r.returncode == errors.CollateralMissingError.exit_code, r.stdout
        assert f"SGX (--tcb-eval-numbers {SGX_AUG}, issued" in json.loads(r.stdout)["error"]["message"]
        r = run_confide(
            *base, "--collateral", pcs.url, "--pcs-tcb-eval-number", "17", *auto, "--tcb-recovery-grace", "0",
            env=env,
        )  # fmt: skip
        assert r.returncode == errors.CollateralOutdatedError.exit_code, r.stdout
        assert "is below the minimum 20" in json.loads(r.stdout)["error"]["message"]
        assert pcs.requests[asked:] == []
    for args, match in (
        (("--collateral", pcs.url, "--pcs-update", "early", "--pcs-tcb-eval-number", "17"), "are exclusive"),
        (("--collateral", pcs.url, "--min-tcb-eval-number", "18", "--pcs-tcb-eval-number", "17"),
         "is below --min-tcb-eval-number 18"),
        (("--collateral", ASSETS / SGX.collateral, "--pcs-tcb-eval-number", "17"), "is for --collateral URL"),
        (("--pcs-tcb-eval-number", "17"), "needs --collateral URL"),
        (("--collateral", pcs.url, "--pcs-tcb-eval-number", "0"), "--pcs-tcb-eval-number"),
    ):  # fmt: skip
        r = run_confide(*base, *args, env=env)
        assert r.returncode == 2 and match in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    r = run_confide(
        "evidence", "verify", ASSETS / SGX.quote, "--platform", "sev-snp", "--pcs-tcb-eval-number", "17"
    )
    assert (
        r.returncode == 2 and "--pcs-tcb-eval-number is only for Intel DCAP evidence" in r.stdout + r.stderr
    )


def test_cli_az_tdx_vtpm(tmp_path: Path) -> None:
    """Azure TDX vTPM evidence: its TD quote's collateral is asked for N, as a TDX quote's."""
    evidence = ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json"
    case = next(
        c for c in CASES if c.quote == "tdx/trustee-az-tdx-vtpm/td-quote.bin" and "1025" in c.collateral
    )
    base = ("evidence", "verify", evidence, "--platform", "az-tdx-vtpm", "--at", case.at, "--json")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    coll = _coll(case)
    number = json.loads(coll.tcb_info)["tcbEvaluationDataNumber"]
    with fake_pcs() as pcs:
        paths = pcs.serve(case.quote_bytes(), coll, evaluation=number)
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-tcb-eval-number", str(number), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(paths[:2]) <= set(pcs.requests)
        r = run_confide(*base, "--collateral", pcs.url, "--pcs-tcb-eval-number", str(number + 1), env=env)
        assert r.returncode == errors.CollateralMissingError.exit_code, r.stdout
        assert f"no TCB evaluation data number {number + 1}" in json.loads(r.stdout)["error"]["message"]


def test_cli_cas_and_ui_usage(tmp_path: Path) -> None:
    """``cas serve``, ``cas attest`` and ``ui --attest`` take the option; their usage errors come
    before anything is opened or asked; ``Cas.attested`` checks alike."""
    from confide.sdk import Cas

    url = "https://127.0.0.1:1"
    env = {"CONFIDE_CAS_URL": url}
    commands = (
        ("cas", "serve", "--data-dir", tmp_path / "x"),
        ("cas", "attest", url),
        ("ui", "--attest", "--measurement", "ab" * 48),
    )
    for command in commands:
        assert "--pcs-tcb-eval-number" in run_confide(*command[:2], "--help").stdout
        for args, match in (
            (("--collateral", url, "--pcs-update", "early", "--pcs-tcb-eval-number", "17"), "are exclusive"),
            (("--collateral", url, "--min-tcb-eval-number", "18", "--pcs-tcb-eval-number", "17"),
             "--pcs-tcb-eval-number 17 is below --min-tcb-eval-number 18"),
            (("--collateral", ASSETS / TDX.collateral, "--pcs-tcb-eval-number", "17"), "is for --collateral URL"),
            (("--pcs-tcb-eval-number", "17"), "--pcs-tcb-eval-number needs --collateral URL"),
        ):  # fmt: skip
            r = run_confide(*command, *args, env=env)
            assert r.returncode == 2 and match in r.stderr, (command, args, r.stderr)
    assert not (tmp_path / "x").exists()
    r = run_confide("ui", "--pcs-tcb-eval-number", "17")
    assert r.returncode == 2 and "--pcs-tcb-eval-number are for --attest" in r.stderr, r.stderr
    with pytest.raises(errors.UsageError, match="--pcs-tcb-eval-number needs --collateral URL"):
        Cas.attested(url, any_measurement=True, pcs_tcb_eval_number=17)
    with pytest.raises(errors.UsageError, match="are exclusive"):
        Cas.attested(url, any_measurement=True, collateral=url, pcs_update="early", pcs_tcb_eval_number=17)
    with pytest.raises(errors.UsageError, match="is below --min-tcb-eval-number 18"):
        Cas.attested(
            url, any_measurement=True, collateral=url, min_tcb_eval_number=18, pcs_tcb_eval_number=17
        )


def test_the_number_reaches_each_source(tmp_path: Path) -> None:
    """``pcs_tcb_eval_number`` reaches the URL source that ``cas serve`` (``prepare``), ``cas
    attest``, ``ui --attest`` and ``Cas.attested`` (``attest_collateral``) build."""
    from confide.cas.pin import attest_collateral
    from confide.cas.server import prepare

    url = "https://pccs.example:8081"
    for number in (17, None):
        cas, *_ = prepare(
            tmp_path / str(number), host="127.0.0.1", dev=False, db_url=None, collateral=url,
            pcs_tcb_eval_number=number,
        )  # fmt: skip
        assert isinstance(cas.verifier, PlatformVerifier)
        served = cas.verifier.dcap_source
        assert isinstance(served, PcsHttpSource) and served.tcb_evaluation_data_number == number
        assert served.update is None
        attested = attest_collateral(url, AutoTcbEvaluation(), pcs_tcb_eval_number=number)
        assert isinstance(attested, PcsHttpSource) and attested.tcb_evaluation_data_number == number
        assert attested.tcb_evaluation_numbers  # auto: the list comes along, N is judged by it
    with pytest.raises(errors.UsageError, match="--pcs-tcb-eval-number needs --collateral URL"):
        prepare(tmp_path / "none", host="127.0.0.1", dev=False, db_url=None, collateral=None,
                pcs_tcb_eval_number=17)  # fmt: skip
    assert not (tmp_path / "none").exists()
