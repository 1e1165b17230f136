"""No going back (docs/cas.md): the CAS remembers the highest TCB evaluation data numbers it
has verified with collateral from its own source, per TCB Info (TEE type, FMSPC) and QE
Identity (TEE type), in its data directory, and refuses collateral older than that
(``confide.cas.tcb_floor``). Collateral renumbered and re-signed under the test PKI of the DCAP
tests (``dcap_forge``); a fake PCS on 127.0.0.1 (``pcs_fake``) plays a PCCS that goes stale."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide import errors
from confide.cas.pcs import DcapCollateralCache, DcapKey
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.cas.tcb_floor import FLOOR_FILE, TcbEvaluationFloor, floor_mac
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import PcsHttpSource
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from confide.verify.dcap import DcapVerifier, pck_info
from confide.verify.result import Platform, TcbEvaluation, VerifiedEvidence
from dcap_cases import ASSETS, CASES
from dcap_forge import ForgedPki
from pcs_fake import FakePcs, fake_pcs

TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")  # TCB Info and QE Identity: 17
AT = TDX.time


SEALER = Sealer(bytes(range(32)))  # the CAS's master key


def _floor(path: Path) -> TcbEvaluationFloor:
    """The floor as a started CAS holds it: authenticated under the master key."""
    floor = TcbEvaluationFloor(path)
    floor.authenticate(SEALER, None)
    return floor


def _real() -> DcapCollateral:
    return DcapCollateral.from_dcap_qvl_json(TDX.collateral_bytes())


def _renumbered(pki: ForgedPki, tcb_info: int, qe_identity: int) -> DcapCollateral:
    """TDX's real collateral with the two numbers changed, re-signed under ``pki``."""

    def edit(text: bytes, number: int) -> bytes:
        obj = json.loads(text)
        obj["tcbEvaluationDataNumber"] = number
        return json.dumps(obj, separators=(",", ":")).encode()

    real = _real()
    edited = dataclasses.replace(
        real, tcb_info=edit(real.tcb_info, tcb_info), qe_identity=edit(real.qe_identity, qe_identity)
    )
    return pki.forge_collateral(edited)


def _evidence(
    fmspc: str, tcb_info: int, qe_identity: int, platform: Platform = Platform.TDX
) -> VerifiedEvidence:
    return VerifiedEvidence(
        platform, {"fmspc": fmspc}, AT, "00" * 32, tcb_evaluation=TcbEvaluation(tcb_info, qe_identity)
    )


# --- the floor itself -------------------------------------------------------------------------------


def test_raised_by_own_collateral_persisted_and_remembered_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    floor = _floor(path)
    assert floor.floors("tdx", "b0c06f000000") == (0, 0) and not path.exists()
    floor.judge(_evidence("b0c06f000000", 18, 17), raise_floor=True)
    assert floor.floors("tdx", "b0c06f000000") == (18, 17)
    doc = json.loads(path.read_bytes())
    assert doc == {
        "v": 2,
        "tcb_info": {"tdx:b0c06f000000": 18},
        "qe_identity": {"tdx": 17},
        "macs": {
            SEALER.sealing_key_id: floor_mac(
                SEALER, SEALER.sealing_key_id, doc["tcb_info"], doc["qe_identity"]
            )
        },
    }
    again = _floor(path)  # a restarted CAS
    with pytest.raises(errors.CollateralOutdatedError) as info:
        again.judge(_evidence("b0c06f000000", 17, 17), raise_floor=True)
    assert info.value.exit_code == 62
    assert "TCB Info (tdx FMSPC b0c06f000000) tcbEvaluationDataNumber 17 (this CAS has verified 18)" in (
        info.value.message
    )
    assert "QE Identity" not in info.value.message  # 17 is not below the QE Identity's 17
    assert again.floors("tdx", "b0c06f000000") == (18, 17)  # a refusal lowers nothing


def test_keys_tcb_info_per_tee_and_fmspc_qe_identity_per_tee(tmp_path: Path) -> None:
    floor = _floor(tmp_path / FLOOR_FILE)
    floor.judge(_evidence("b0c06f000000", 19, 18), raise_floor=True)
    # another FMSPC's TCB Info has its own number; the TD QE's identity is the same one
    floor.judge(_evidence("00806f050000", 16, 18), raise_floor=True)
    with pytest.raises(
        errors.CollateralOutdatedError, match=r"QE Identity \(tdx\) tcbEvaluationDataNumber 17"
    ):
        floor.judge(_evidence("00806f050000", 16, 17), raise_floor=True)
    # SGX is apart from TDX, for the same FMSPC; Azure TDX evidence is TDX's
    floor.judge(_evidence("b0c06f000000", 15, 15, Platform.SGX), raise_floor=True)
    with pytest.raises(errors.CollateralOutdatedError):
        floor.judge(_evidence("b0c06f000000", 18, 18, Platform.AZURE_TDX_VTPM), raise_floor=True)
    assert floor.floors("sgx", "b0c06f000000") == (15, 15)
    assert floor.floors("tdx", "b0c06f000000") == (19, 18)
    assert floor.minimum("tcbInfo", "tdx", "00806f050000") == 16
    assert floor.minimum("enclaveIdentity", "tdx", "00806f050000") == 18


def test_collateral_sent_with_a_request_is_judged_but_never_raises_it(tmp_path: Path) -> None:
    """A client can fetch Intel's update=early collateral; raising the floor with it would have
    every other attestation refused until the standard update caught up."""
    floor = _floor(tmp_path / FLOOR_FILE)
    floor.judge(_evidence("b0c06f000000", 17, 17), raise_floor=True)
    floor.judge(_evidence("b0c06f000000", 19, 19), raise_floor=False)  # accepted ...
    assert floor.floors("tdx", "b0c06f000000") == (17, 17)  # ... and the floor is unchanged
    with pytest.raises(errors.CollateralOutdatedError):
        floor.judge(_evidence("b0c06f000000", 16, 17), raise_floor=False)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[]",
        b'{"v":1,"tcb_info":{}}',
        b'{"v":3,"tcb_info":{},"qe_identity":{}}',
        b'{"v":true,"tcb_info":{},"qe_identity":{}}',
        b'{"v":1,"tcb_info":{},"qe_identity":{},"macs":{}}',
        b'{"v":2,"tcb_info":{},"qe_identity":{},"macs":{"00":"11"}}',
        b'{"v":2,"tcb_info":{},"qe_identity":{},"macs":[]}',
        b'{"v":1,"tcb_info":{"tdx:b0c06f000000":"18"},"qe_identity":{}}',
        b'{"v":1,"tcb_info":{},"qe_identity":{"tdx":-1}}',
        b'{"v":1,"tcb_info":{},"qe_identity":{"tdx":true}}',
        b'{"v":1,"tcb_info":{},"qe_identity":{"tdx":1,"tdx":2}}',
    ],
)
def test_a_file_that_does_not_parse_stops_the_cas_rather_than_being_forgotten(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / FLOOR_FILE).write_bytes(content)
    with pytest.raises(errors.ParseError, match="TCB evaluation floor"):
        TcbEvaluationFloor(tmp_path / FLOOR_FILE)
    with pytest.raises(errors.ParseError, match="TCB evaluation floor"):
        prepare(tmp_path, host="127.0.0.1", dev=True, db_url=None, collateral=None)


def test_a_floor_that_cannot_be_written_is_not_raised_and_the_attestation_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    floor = _floor(tmp_path / "missing-dir" / FLOOR_FILE)
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        floor.judge(_evidence("b0c06f000000", 18, 18), raise_floor=True)
    assert floor.floors("tdx", "b0c06f000000") == (0, 0)  # memory never ahead of the file
    assert any("dcap-tcb-evaluation-floor-not-written" in r.getMessage() for r in caplog.records)


# --- through the CAS's verifier, with a PCCS that goes stale ---------------------------------------


def _cas_verifier(pcs: FakePcs, data_dir: Path, cache_dir: Path, pki: ForgedPki) -> PlatformVerifier:
    """The verifier ``cas serve --collateral URL`` builds (server.prepare), for the test PKI."""
    floor = _floor(data_dir / FLOOR_FILE)
    source = PcsHttpSource(
        pcs.url, cache_dir=cache_dir, clock=lambda: AT, floor=floor.minimum, root_ca_der=pki.root_der
    )
    verifier = PlatformVerifier(dcap_source=source, tcb_floor=floor)
    verifier.dcap = DcapVerifier(root_ca_der=pki.root_der)
    return verifier


def test_a_pccs_that_goes_stale_is_asked_again_then_refused(tmp_path: Path) -> None:
    pki = ForgedPki(at=AT)
    quote = pki.forge_quote(TDX.quote_bytes())
    data_dir = tmp_path / "cas"
    data_dir.mkdir()
    with fake_pcs() as pcs:
        pcs.serve(quote, _renumbered(pki, 18, 18))
        verifier = _cas_verifier(pcs, data_dir, tmp_path / "pcs-cache", pki)
        v = verifier.verify(Platform.TDX, quote, {}, at=AT)
        assert v.tcb_evaluation == TcbEvaluation(18, 18)
        assert verifier.tcb_floor is not None and verifier.tcb_floor.floors("tdx", v.claims["fmspc"]) == (
            18,
            18,
        )
        # The PCCS now serves the previous evaluation (stale or hostile). A restarted CAS (its
        # floor read back from the data directory; no collateral on disk or in memory) asks it,
        # and refuses what it answers, keeping none of it.
        pcs.serve(quote, _renumbered(pki, 17, 17))
        restarted = _cas_verifier(pcs, data_dir, tmp_path / "pcs-cache-2", pki)
        asked = len(pcs.requests)
        with pytest.raises(errors.CollateralOutdatedError, match="this CAS has already verified 18"):
            restarted.verify(Platform.TDX, quote, {}, at=AT)
        assert len(pcs.requests) > asked
        assert not list((tmp_path / "pcs-cache-2").glob("*"))  # the TCB Info answer was not kept
        # A CAS that never saw 18 accepts the 17 (the floor is what this CAS verified).
        fresh_dir = tmp_path / "other-cas"
        fresh_dir.mkdir()
        fresh = _cas_verifier(pcs, fresh_dir, tmp_path / "pcs-cache-3", pki)
        assert fresh.verify(Platform.TDX, quote, {}, at=AT).tcb_evaluation == TcbEvaluation(17, 17)
        # The PCCS caught up: served and accepted again.
        pcs.serve(quote, _renumbered(pki, 18, 18))
        restarted = _cas_verifier(pcs, data_dir, tmp_path / "pcs-cache-2", pki)  # past FAILURE_GRACE
        assert restarted.verify(Platform.TDX, quote, {}, at=AT).tcb_evaluation == TcbEvaluation(18, 18)


def test_a_runtimes_own_older_collateral_is_refused_by_the_floor(tmp_path: Path) -> None:
    pki = ForgedPki(at=AT)
    quote = pki.forge_quote(TDX.quote_bytes())
    with fake_pcs() as pcs:
        pcs.serve(quote, _renumbered(pki, 18, 18))
        verifier = _cas_verifier(pcs, tmp_path, tmp_path / "pcs-cache", pki)
        verifier.verify(Platform.TDX, quote, {}, at=AT)
    old = {"collateral": _renumbered(pki, 17, 18).to_dcap_qvl_json()}
    with pytest.raises(errors.CollateralOutdatedError, match=r"TCB Info \(tdx FMSPC [0-9a-f]{12}\) .* 17"):
        verifier.verify(Platform.TDX, quote, old, at=AT)
    newer = {"collateral": _renumbered(pki, 20, 20).to_dcap_qvl_json()}
    assert verifier.verify(Platform.TDX, quote, newer, at=AT).tcb_evaluation == TcbEvaluation(20, 20)
    fmspc = pck_info(Quote.from_bytes(quote))[0].hex()
    assert verifier.tcb_floor is not None and verifier.tcb_floor.floors("tdx", fmspc) == (18, 18)


def test_memory_does_not_serve_collateral_below_the_floor(tmp_path: Path) -> None:
    """Collateral fetched before the floor rose (here: raised by collateral of another CA's entry
    of the same platform) is not served from memory: the next prefetch fetches it again."""
    pki = ForgedPki(at=AT)
    quote = pki.forge_quote(TDX.quote_bytes())
    fmspc, ca = pck_info(Quote.from_bytes(quote))
    floor = _floor(tmp_path / FLOOR_FILE)
    with fake_pcs() as pcs:
        pcs.serve(quote, _renumbered(pki, 17, 17))
        source = PcsHttpSource(
            pcs.url, cache_dir=tmp_path / "c", clock=lambda: AT, floor=floor.minimum, root_ca_der=pki.root_der
        )
        cache = DcapCollateralCache(source, floor=floor, monotonic=lambda: 1000.0)
        key = DcapKey(fmspc, ca, Quote.from_bytes(quote).tee)
        assert cache.prefetch(key, AT) == cache.cached(key, AT) is not None
        floor.judge(_evidence(fmspc.hex(), 18, 17), raise_floor=True)
        assert cache.cached(key, AT) is None and cache.found(key, AT) is None
        outcome = cache.prefetch(key, AT)  # asks the PCCS, which still serves 17: refused
        assert isinstance(outcome, errors.CollateralOutdatedError)


def test_azure_tdx_evidence_is_judged_as_tdx(tmp_path: Path) -> None:
    """Real Azure TDX CVM evidence (trustee's) with its collateral: judged by the TDX floor of its
    FMSPC (its claims carry the TD quote's)."""
    evidence = (ASSETS / "tpm" / "trustee-az-tdx-vtpm" / "evidence-v1.json").read_bytes()
    bundle = (ASSETS / "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json").read_bytes()
    at = datetime.fromtimestamp(1_749_030_758, UTC)  # inside the collateral's window
    floor = _floor(tmp_path / FLOOR_FILE)
    verifier = PlatformVerifier(tcb_floor=floor)
    v = verifier.verify(Platform.AZURE_TDX_VTPM, evidence, {"collateral": bundle}, at=at)
    assert v.tcb_evaluation is not None and v.claims["fmspc"] == "00806f050000"
    assert floor.floors("tdx", "00806f050000") == (0, 0)  # sent with the request: not raised
    floor.judge(_evidence("00806f050000", v.tcb_evaluation.tcb_info + 1, 0), raise_floor=True)
    with pytest.raises(errors.CollateralOutdatedError, match="tdx FMSPC 00806f050000"):
        verifier.verify(Platform.AZURE_TDX_VTPM, evidence, {"collateral": bundle}, at=at)
