"""``cas serve --replica-min-tcb``: the minimum ``REPORTED_TCB`` of an SEV-SNP replica in the
attested master-key release (confide.cas.key_release; docs/cas.md "Joining a running CAS").

SEV-SNP has no TCB status: without the option the same image on a host with older firmware or
microcode gets the key. The releasing side is tested in process with reports signed by a
private AMD-shaped PKI (snp_fakes.py) and verified for real, a replica on another chip whose VCEK
certifies a lower or higher TCB; the joining side end to end with ``prepare(join=URL)`` as in
test_cas_join_snp.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from snp_fakes import AT, FakeAmd, make_fake_amd
from test_cas_join_snp import _released, serving
from test_cas_key_release import AMD, SNP_CLAIMS, Joiner, Releaser, _evidence, _refused, _snp, _vcek
from test_cas_self_attest import get, metric, signing_tsm

from confide import errors
from confide.cas.app import create_app
from confide.cas.key_release import (
    EVENT_REFUSED,
    EVENT_RELEASED,
    KeyReleaser,
    OwnTcbWatch,
    ReplicaMinTcb,
    appraise_peer,
    appraise_platform,
    min_tcb_text,
    parse_replica_min_tcb,
)
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.evidence.sev_snp import Product, TcbVersion
from confide.policy.attestation import SnpTcbMinimum
from confide.runtime.quote import ConfigfsTsmQuoteProvider
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform, TcbStatus, VerifiedEvidence
from confide.verify.sev_snp import AmdRootStore

# AMD (the releasing CAS's host, Turin): fmc=1, bootloader=2, tee=3, snp=4, microcode=5.
AT_MINIMUM = "bootloader=2,tee=3,snp=4,microcode=5"


def _replica(microcode: int, *, bootloader: int = 2) -> FakeAmd:
    """Another Turin host (another chip) whose VCEK certifies the given SPLs."""
    tcb = TcbVersion.compose(fmc=1, bootloader=bootloader, tee=3, snp=4, microcode=microcode)
    return make_fake_amd(chip_id=bytes([7]) * 64, tcb=tcb)


# Hosts of the other products (their own fake ARKs), trusted by the releasing CAS with AMD's.
GENOA = make_fake_amd(Product.GENOA, chip_id=bytes([8]) * 64)
MILAN = make_fake_amd(Product.MILAN, chip_id=bytes([9]) * 64)
_ROOTS = AmdRootStore(
    {(f.product, f.kind): f.chain for f in (AMD, GENOA, MILAN)},
    pinned={f.product: f.ark.fingerprint(hashes.SHA256()).hex() for f in (AMD, GENOA, MILAN)},
)


def _genoa(microcode: int) -> FakeAmd:
    """Another Genoa host whose VCEK certifies bootloader=2, tee=3, snp=4 and ``microcode``."""
    tcb = TcbVersion.compose(bootloader=2, tee=3, snp=4, microcode=microcode)
    return make_fake_amd(Product.GENOA, chip_id=bytes([10]) * 64, tcb=tcb)


@pytest.fixture
def releasing(tmp_path: Path) -> Iterator[Any]:
    """A factory: the dev CAS's database and key, releasing as a CAS in an SEV-SNP guest on the
    host ``AMD`` with ``--replica-min-tcb TEXT`` (``None``: without it)."""
    made: list[Releaser] = []

    def make(text: str | list[str] | None) -> Releaser:
        data_dir = tmp_path / f"cas{len(made)}"
        cas, evidence, *_ = prepare(data_dir, host="127.0.0.1", dev=True, db_url=None, collateral=None)
        assert evidence is not None
        cas.verifier = PlatformVerifier(amd_roots=_ROOTS)
        own_report = _snp(AMD, bytes(64))

        def own(at: datetime) -> VerifiedEvidence:
            return cas.verifier.verify(Platform.SEV_SNP, own_report, _vcek(AMD), at=at)

        minimum = None if text is None else parse_replica_min_tcb(text)
        releaser = KeyReleaser(cas, own, clock=AT.timestamp, min_tcb=minimum)
        made.append(Releaser(cas, releaser, SimPlatform.load(data_dir / "sim"), data_dir))
        return made[-1]

    yield make
    for r in made:
        r.cas.db.dispose()


def _request(r: Releaser, host: FakeAmd) -> tuple[Joiner, dict[str, Any]]:
    joiner = Joiner(r.releaser.new_nonce())
    return joiner, joiner.request("sev-snp", _snp(host, joiner.binding), _vcek(host))


# --- the releasing side -------------------------------------------------------------------------


def test_a_replica_below_the_minimum_is_refused_and_the_ledger_names_the_component(releasing: Any) -> None:
    r = releasing(AT_MINIMUM)
    _joiner, request = _request(r, _replica(microcode=3))
    text = r"replica-min-tcb.microcode: got 3, expected >= 5 \(reported_tcb\)"
    payload = _refused(r, request, errors.AppraisalError, text)
    assert "replica-min-tcb.microcode: got 3, expected >= 5" in payload["reason"]
    assert "bootloader" not in payload["reason"]  # only the component below is named
    assert payload["replica_min_tcb"] == AT_MINIMUM
    assert payload["reported_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 3}
    assert payload["identity"]["measurement"] == "cd" * 48


def test_every_component_below_is_named(releasing: Any) -> None:
    r = releasing(AT_MINIMUM)
    _joiner, request = _request(r, _replica(microcode=4, bootloader=1))
    with pytest.raises(errors.AppraisalError) as caught:
        r.releaser.release(request)
    assert caught.value.problems is not None
    assert [p for p in caught.value.problems if p.startswith("replica-min-tcb")] == [
        "replica-min-tcb.bootloader: got 1, expected >= 2 (reported_tcb)",
        "replica-min-tcb.microcode: got 4, expected >= 5 (reported_tcb)",
    ]


@pytest.mark.parametrize("microcode", [5, 9])
def test_a_replica_at_or_above_the_minimum_gets_the_key(releasing: Any, microcode: int) -> None:
    r = releasing(AT_MINIMUM)
    joiner, request = _request(r, _replica(microcode=microcode))
    key, _ = joiner.open(r.releaser.release(request))
    assert key == (r.data_dir / "master.key").read_bytes()
    ((kind, payload),) = r.events()
    assert kind == EVENT_RELEASED and payload["replica_min_tcb"] == AT_MINIMUM
    assert payload["reported_tcb"]["microcode"] == microcode


def test_a_minimum_above_the_releasers_own_tcb_refuses_even_the_same_host(releasing: Any) -> None:
    """The minimum is the operator's, not "at least this CAS's TCB": a replica on the same host
    is refused when the host itself is below it."""
    r = releasing("bootloader=2,tee=3,snp=4,microcode=6")
    _joiner, request = _request(r, AMD)
    _refused(r, request, errors.AppraisalError, "replica-min-tcb.microcode: got 5, expected >= 6")


def test_an_fmc_minimum_is_judged(releasing: Any) -> None:
    r = releasing(AT_MINIMUM + ",fmc=2")
    _joiner, request = _request(r, AMD)
    _refused(r, request, errors.AppraisalError, "replica-min-tcb.fmc: got 1, expected >= 2")


def test_without_the_option_a_vulnerable_replica_still_gets_the_key(releasing: Any) -> None:
    """The behaviour without --replica-min-tcb is unchanged (docs/limitations.md says so)."""
    r = releasing(None)
    joiner, request = _request(r, _replica(microcode=0, bootloader=0))
    joiner.open(r.releaser.release(request))
    ((kind, payload),) = r.events()
    assert kind == EVENT_RELEASED and "replica_min_tcb" not in payload
    assert payload["reported_tcb"]["microcode"] == 0


# --- per-product minimums -----------------------------------------------------------------------

PER_PRODUCT = ["turin:" + AT_MINIMUM + ",fmc=1", "GENOA:bootloader=2,tee=3,snp=4,microcode=6"]


def test_a_uniform_minimum_applies_to_every_product(releasing: Any) -> None:
    """The syntax without a product is unchanged: one minimum, whatever the replica's product."""
    r = releasing(AT_MINIMUM)
    joiner, request = _request(r, GENOA)  # a Genoa at microcode 5
    joiner.open(r.releaser.release(request))
    _joiner, request = _request(r, _genoa(microcode=4))
    payload = _refused(r, request, errors.AppraisalError, r"replica-min-tcb.microcode: got 4, expected >= 5 ")
    assert payload["identity"]["measurement"] == "cd" * 48


def test_each_product_is_judged_by_its_own_minimum(releasing: Any) -> None:
    r = releasing(PER_PRODUCT)
    # A Genoa at microcode 5 reaches the Turin minimum but not the Genoa one.
    _joiner, request = _request(r, GENOA)
    payload = _refused(
        r, request, errors.AppraisalError, r"replica-min-tcb\[genoa\].microcode: got 5, expected >= 6 "
    )
    assert (
        payload["replica_min_tcb"]
        == "genoa:bootloader=2,tee=3,snp=4,microcode=6 turin:" + AT_MINIMUM + ",fmc=1"
    )
    assert "turin" not in payload["reason"]
    joiner, request = _request(r, _genoa(microcode=6))
    key, _ = joiner.open(r.releaser.release(request))
    assert key == (r.data_dir / "master.key").read_bytes()
    joiner, request = _request(r, _replica(microcode=5))  # a Turin at the Turin minimum
    joiner.open(r.releaser.release(request))
    _joiner, request = _request(r, _replica(microcode=4))
    _refused(r, request, errors.AppraisalError, r"replica-min-tcb\[turin\].microcode: got 4, expected >= 5 ")
    assert [kind for kind, _ in r.events()] == [EVENT_REFUSED, EVENT_RELEASED, EVENT_RELEASED, EVENT_REFUSED]


def test_a_product_without_a_minimum_is_refused_whatever_its_tcb(releasing: Any) -> None:
    """Fail-closed: with per-product minimums, a Milan replica (none given) is refused."""
    r = releasing(PER_PRODUCT)
    _joiner, request = _request(r, MILAN)
    text = r"replica-min-tcb: got product Milan, expected one with a minimum \(given for turin, genoa\)"
    payload = _refused(r, request, errors.AppraisalError, text)
    assert payload["reported_tcb"] == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}


# --- the rule (both sides) -----------------------------------------------------------------------

_MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_the_rule_judges_sev_snp_evidence_only() -> None:
    minimum = parse_replica_min_tcb("bootloader=3,tee=0,snp=8,microcode=200")
    own = _evidence(Platform.SEV_SNP, {**SNP_CLAIMS, "reported_tcb": _MILAN_TCB}, tcb=None)  # type: ignore[dict-item]
    peer = _evidence(Platform.SEV_SNP, {**SNP_CLAIMS, "reported_tcb": _MILAN_TCB}, tcb=None)  # type: ignore[dict-item]
    wanted = ("replica-min-tcb.microcode: got 115, expected >= 200 (reported_tcb)",)
    assert appraise_peer(own, peer, min_tcb=minimum) == wanted
    assert appraise_platform(own, peer, min_tcb=minimum) == wanted  # a successor version too
    assert appraise_peer(own, peer) == ()
    # A Milan report has no fmc: a minimum fmc refuses it (as a policy's min_tcb does).
    with_fmc = parse_replica_min_tcb("bootloader=0,tee=0,snp=0,microcode=0,fmc=0")
    assert appraise_peer(own, peer, min_tcb=with_fmc) == (
        "replica-min-tcb.fmc: got no component, expected >= 0 (reported_tcb; Turin only)",
    )
    # SEV-SNP evidence without a reported_tcb claim is refused, never passed.
    bare = _evidence(Platform.SEV_SNP, SNP_CLAIMS, tcb=None)
    assert appraise_peer(bare, bare, min_tcb=minimum) == (
        "replica-min-tcb: got no claim, expected a reported_tcb claim (the decoded REPORTED_TCB)",
    )


def test_tdx_and_sgx_replicas_are_judged_by_their_tcb_status() -> None:
    """No --replica-min-tcb there: an OutOfDate or Revoked replica is refused by the fixed rule."""
    from test_cas_key_release import SGX_CLAIMS, TDX_CLAIMS

    for platform, claims in ((Platform.TDX, TDX_CLAIMS), (Platform.SGX, SGX_CLAIMS)):
        own = _evidence(platform, claims)
        for status in (TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED):
            reasons = appraise_peer(own, _evidence(platform, claims, tcb=status))
            assert len(reasons) == 1 and reasons[0].startswith(f"tcb_status: got {status.value}")


# --- the option ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bootloader=2,tee=3,snp=4,microcode=5", SnpTcbMinimum(bootloader=2, tee=3, snp=4, microcode=5)),
        (
            "microcode=255, snp=0,tee=1,bootloader=010,fmc=7",
            SnpTcbMinimum(bootloader=10, tee=1, snp=0, microcode=255, fmc=7),
        ),
    ],
)
def test_the_option_parses(text: str, expected: SnpTcbMinimum) -> None:
    """Without a product (the syntax before per-product minimums): one minimum for every product."""
    assert parse_replica_min_tcb(text) == ReplicaMinTcb(uniform=expected)
    assert parse_replica_min_tcb([text]) == ReplicaMinTcb(uniform=expected)
    assert parse_replica_min_tcb(min_tcb_text(ReplicaMinTcb(uniform=expected))) == ReplicaMinTcb(
        uniform=expected
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected [PRODUCT:]bootloader=N"),
        ("bootloader=2,tee=3,snp=4", "microcode missing"),
        ("microcode=5", "bootloader, tee, snp missing"),
        ("bootloader=2,tee=3,snp=4,microcode=256", "got microcode='256'"),
        ("bootloader=2,tee=3,snp=4,microcode=-1", "got microcode='-1'"),
        ("bootloader=2,tee=3,snp=4,microcode=0x05", "got microcode='0x05'"),
        ("bootloader=2,tee=3,snp=4,microcode=", "got microcode=''"),
        ("bootloader=2,tee=3,snp=4,microcode=5,", "expected [PRODUCT:]bootloader=N"),
        ("bootloader=2,tee=3,snp=4,microcode=5,tee=4", "tee given twice"),
        ("bootloader=2,tee=3,snp=4,ucode=5", "expected [PRODUCT:]bootloader=N"),
        ("bootloader:2,tee=3,snp=4,microcode=5", "got product 'bootloader', expected milan, genoa or turin"),
        ("bootloader=2,tee=3,snp=4,microcode=\u0665", "got microcode="),  # an Arabic-Indic digit
    ],
)
def test_a_malformed_option_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(errors.UsageError, match="--replica-min-tcb: ") as caught:
        parse_replica_min_tcb(text)
    assert message in caught.value.message and caught.value.exit_code == 2


def test_per_product_options_parse() -> None:
    parsed = parse_replica_min_tcb(
        ["Milan:bootloader=1,tee=0,snp=8,microcode=115", "turin:" + AT_MINIMUM + ",fmc=1"]
    )
    assert parsed == ReplicaMinTcb(
        per_product={
            Product.MILAN: SnpTcbMinimum(bootloader=1, tee=0, snp=8, microcode=115),
            Product.TURIN: SnpTcbMinimum(bootloader=2, tee=3, snp=4, microcode=5, fmc=1),
        }
    )
    assert (
        min_tcb_text(parsed) == "milan:bootloader=1,tee=0,snp=8,microcode=115 turin:" + AT_MINIMUM + ",fmc=1"
    )
    assert parse_replica_min_tcb(min_tcb_text(parsed).split(" ")) == parsed


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "got no value"),
        (["genoa:" + AT_MINIMUM, "Genoa:" + AT_MINIMUM], "got genoa twice, expected each product once"),
        (["milan:" + AT_MINIMUM + ",fmc=1"], "got fmc for milan, expected fmc only for turin"),
        (["genoa:" + AT_MINIMUM + ",fmc=0"], "got fmc for genoa, expected fmc only for turin"),
        (["bergamo:" + AT_MINIMUM], "got product 'bergamo', expected milan, genoa or turin"),
        ([AT_MINIMUM, "genoa:" + AT_MINIMUM], "got 2 values, one without a product"),
        (["genoa:" + AT_MINIMUM, AT_MINIMUM], "got 2 values, one without a product"),
        ([AT_MINIMUM, AT_MINIMUM], "got 2 values, one without a product"),
        (["turin:bootloader=2,tee=3,snp=4"], "microcode missing"),
        (["turin:"], "expected [PRODUCT:]bootloader=N"),
    ],
)
def test_malformed_per_product_options_are_usage_errors(texts: list[str], message: str) -> None:
    with pytest.raises(errors.UsageError, match="--replica-min-tcb: ") as caught:
        parse_replica_min_tcb(texts)
    assert message in caught.value.message and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--replica-min-tcb", "microcode=300", "--tee", "sev-snp"],
            "--replica-min-tcb: got microcode='300'",
        ),
        (["--replica-min-tcb", AT_MINIMUM, "--dev"], "--replica-min-tcb needs --tee sev-snp"),
        (["--replica-min-tcb", AT_MINIMUM, "--tee", "tdx"], "--replica-min-tcb needs --tee sev-snp"),
        (
            [
                "--tee",
                "sev-snp",
                "--replica-min-tcb",
                "genoa:" + AT_MINIMUM,
                "--replica-min-tcb",
                "genoa:" + AT_MINIMUM,
            ],
            "--replica-min-tcb: got genoa twice",
        ),
        (
            ["--tee", "sev-snp", "--replica-min-tcb", "genoa:" + AT_MINIMUM + ",fmc=1"],
            "--replica-min-tcb: got fmc for genoa, expected fmc only for turin",
        ),
        (
            ["--tee", "sev-snp", "--replica-min-tcb", AT_MINIMUM, "--replica-min-tcb", "turin:" + AT_MINIMUM],
            "--replica-min-tcb: got 2 values, one without a product",
        ),
        (["--replica-min-tcb", "turin:" + AT_MINIMUM, "--dev"], "--replica-min-tcb needs --tee sev-snp"),
    ],
)
def test_cas_serve_refuses_a_bad_option_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_prepare_refuses_the_option_without_sev_snp(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="only for --tee sev-snp"):
        prepare(
            tmp_path / "d", host="127.0.0.1", dev=True, db_url=None, collateral=None,
            replica_min_tcb=parse_replica_min_tcb(AT_MINIMUM),
        )  # fmt: skip
    assert not (tmp_path / "d").exists()


# --- in an SEV-SNP guest: the warning, the ledger, the joining side ------------------------------


@pytest.fixture(scope="module")
def amd() -> FakeAmd:
    return make_fake_amd()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    out = []
    for record in caplog.records:
        if "replica-tcb-not-judged" in record.getMessage():
            assert record.levelname == "WARNING"
            out.append(json.loads(record.getMessage()))
    return out


def test_an_snp_cas_without_the_option_warns_once_and_records_the_option_when_given(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture
) -> None:
    with signing_tsm(tmp_path, amd) as (root, _tsm), caplog.at_level("WARNING", logger="confide.cas"):
        for name, minimum in (("a", None), ("b", parse_replica_min_tcb(AT_MINIMUM))):
            cas, *_ = prepare(
                tmp_path / name, host="127.0.0.1", dev=False, db_url=None, collateral=None,
                tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
                replica_min_tcb=minimum,
            )  # fmt: skip
            try:
                assert cas.key_release is not None and cas.key_release.min_tcb == minimum
                with cas.db.read() as conn:
                    (payload,) = conn.exec_driver_sql(
                        "SELECT payload FROM events WHERE type = 'cas-start'"
                    ).fetchone()
                start = json.loads(payload)
                if minimum is None:
                    assert "replica_min_tcb" not in start
                    assert len(_warnings(caplog)) == 1
                else:
                    assert start["replica_min_tcb"] == AT_MINIMUM
                    assert len(_warnings(caplog)) == 1  # still only the first CAS's
            finally:
                cas.db.dispose()
    (warning,) = _warnings(caplog)
    assert "--replica-min-tcb" in warning["reason"]


def test_a_joiner_refuses_a_releasing_cas_below_its_minimum(tmp_path: Path, amd: FakeAmd) -> None:
    """The joining side applies --replica-min-tcb to the releasing CAS's evidence, before it sends
    anything (so the releasing CAS records nothing)."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with (
        signing_tsm(tmp_path, amd) as (root, _tsm),
        serving(tmp_path / "a", root, amd, db) as (url, first),
        pytest.raises(
            errors.AppraisalError,
            match=r"not joining: replica-min-tcb.microcode: got 5, expected >= 6 \(reported_tcb\)",
        ),
    ):
        prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None, tee="sev-snp",
            quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(), join=url,
            replica_min_tcb=parse_replica_min_tcb("bootloader=2,tee=3,snp=4,microcode=6"),
        )  # fmt: skip
    assert _released(first) == []
    assert not list((tmp_path / "b").glob("master.key*"))


def test_a_joiner_at_the_minimum_joins(tmp_path: Path, amd: FakeAmd) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with signing_tsm(tmp_path, amd) as (root, _tsm), serving(tmp_path / "a", root, amd, db) as (url, first):
        joiner, *_ = prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None, tee="sev-snp",
            quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(), join=url,
            replica_min_tcb=parse_replica_min_tcb(AT_MINIMUM),
        )  # fmt: skip
        try:
            assert joiner.sealer.sealing_key_id == first.sealer.sealing_key_id
            assert [e["type"] for e in _released(first)] == [EVENT_RELEASED]
            assert EVENT_REFUSED not in {e["type"] for e in _released(first)}
        finally:
            joiner.db.dispose()


def _own_tcb_warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    out = []
    for record in caplog.records:
        if "cas-own-tcb-below-replica-min-tcb" in record.getMessage():
            assert record.levelname == "WARNING"
            out.append(json.loads(record.getMessage()))
    return out


@pytest.mark.parametrize(
    ("texts", "reasons"),
    [
        ([AT_MINIMUM], []),
        (["genoa:bootloader=9,tee=9,snp=9,microcode=9", "turin:" + AT_MINIMUM + ",fmc=1"], []),
        (
            ["bootloader=2,tee=3,snp=4,microcode=6"],
            ["replica-min-tcb.microcode: got 5, expected >= 6 (reported_tcb)"],
        ),
        (
            ["turin:bootloader=3,tee=3,snp=4,microcode=6"],
            [
                "replica-min-tcb[turin].bootloader: got 2, expected >= 3 (reported_tcb)",
                "replica-min-tcb[turin].microcode: got 5, expected >= 6 (reported_tcb)",
            ],
        ),
        (
            ["genoa:" + AT_MINIMUM],
            ["replica-min-tcb: got product Turin, expected one with a minimum (given for genoa);"
             " a product without one is refused"],
        ),
    ],
)  # fmt: skip
def test_an_snp_cas_below_its_own_minimum_warns_at_start(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture, texts: list[str], reasons: list[str]
) -> None:
    """The CAS judges its own REPORTED_TCB (Turin: fmc=1, bootloader=2, tee=3, snp=4, microcode=5)
    against the minimum for its own product at start: below it, one structured warning."""
    minimum = parse_replica_min_tcb(texts)
    with signing_tsm(tmp_path, amd) as (root, _tsm), caplog.at_level("WARNING", logger="confide.cas"):
        cas, *_ = prepare(
            tmp_path / "d", host="127.0.0.1", dev=False, db_url=None, collateral=None,
            tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
            replica_min_tcb=minimum,
        )  # fmt: skip
        cas.db.dispose()
    assert _warnings(caplog) == []  # the option is given
    assert cas.key_release is not None and cas.key_release.own_tcb is not None
    assert cas.key_release.own_tcb.below is bool(reasons)
    if not reasons:
        assert _own_tcb_warnings(caplog) == []
        return
    (warning,) = _own_tcb_warnings(caplog)
    assert warning["reasons"] == reasons
    assert warning["product"] == "Turin"
    assert warning["reported_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    assert warning["replica_min_tcb"] == min_tcb_text(minimum)


def test_a_joiner_refuses_a_releasing_cas_of_a_product_without_a_minimum(
    tmp_path: Path, amd: FakeAmd
) -> None:
    """The joining side applies per-product minimums too, fail-closed: a Turin releasing CAS is
    refused by a joiner that names only Genoa, before it sends anything."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with (
        signing_tsm(tmp_path, amd) as (root, _tsm),
        serving(tmp_path / "a", root, amd, db) as (url, first),
        pytest.raises(
            errors.AppraisalError,
            match=r"not joining: replica-min-tcb: got product Turin, expected one with a minimum \(given for genoa\)",
        ),
    ):
        prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None, tee="sev-snp",
            quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(), join=url,
            replica_min_tcb=parse_replica_min_tcb(["genoa:" + AT_MINIMUM]),
        )  # fmt: skip
    assert _released(first) == []
    assert not list((tmp_path / "b").glob("master.key*"))


def test_a_joiner_at_its_products_minimum_joins(tmp_path: Path, amd: FakeAmd) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with signing_tsm(tmp_path, amd) as (root, _tsm), serving(tmp_path / "a", root, amd, db) as (url, first):
        joiner, *_ = prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None, tee="sev-snp",
            quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(), join=url,
            replica_min_tcb=parse_replica_min_tcb(PER_PRODUCT),
        )  # fmt: skip
        try:
            assert joiner.sealer.sealing_key_id == first.sealer.sealing_key_id
            assert [e["type"] for e in _released(first)] == [EVENT_RELEASED]
        finally:
            joiner.db.dispose()


# --- the own TCB judged again after every refresh of the own evidence ---------------------------

_OWN_VERIFIER = PlatformVerifier(amd_roots=_ROOTS)


def _own_on(host: FakeAmd) -> VerifiedEvidence:
    """Own evidence (verified for real) of a CAS on ``host``."""
    return _OWN_VERIFIER.verify(Platform.SEV_SNP, _snp(host, bytes(64)), _vcek(host), at=AT)


def _own_tcb_events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for record in caplog.records:
        message = record.getMessage()
        if "cas-own-tcb-" in message:
            event = json.loads(message)
            out.append((record.levelname, event["event"], event))
    return out


def test_the_own_tcb_is_logged_only_when_its_state_changes(caplog: pytest.LogCaptureFixture) -> None:
    """Injected own evidence (AMD: microcode 5; replicas 3 and 4) judged in turn against
    microcode >= 5: a warning on becoming below, an info line on becoming met, nothing while the
    state stays (also when the TCB changes but stays below)."""
    hosts = {"at": AMD, "3": _replica(microcode=3), "4": _replica(microcode=4)}
    evidence = {name: _own_on(host) for name, host in hosts.items()}
    current = ["at"]
    watch = OwnTcbWatch(lambda _at: evidence[current[0]], parse_replica_min_tcb(AT_MINIMUM), lambda: AT)
    assert watch.below is None
    states = []
    with caplog.at_level("INFO", logger="confide.cas"):
        for name in ("at", "at", "3", "3", "4", "at", "at", "4"):
            current[0] = name
            states.append(watch.judge())
    assert states == [False, False, True, True, True, False, False, True]
    assert watch.judgements == 8
    events = _own_tcb_events(caplog)
    assert [(level, name) for level, name, _ in events] == [
        ("WARNING", "cas-own-tcb-below-replica-min-tcb"),
        ("INFO", "cas-own-tcb-meets-replica-min-tcb"),
        ("WARNING", "cas-own-tcb-below-replica-min-tcb"),
    ]
    first, met, second = (event for _, _, event in events)
    assert first["reasons"] == ["replica-min-tcb.microcode: got 3, expected >= 5 (reported_tcb)"]
    assert first["reported_tcb"]["microcode"] == 3
    assert met["reported_tcb"]["microcode"] == 5 and "reasons" not in met
    assert second["reasons"] == ["replica-min-tcb.microcode: got 4, expected >= 5 (reported_tcb)"]
    assert {e["replica_min_tcb"] for _, _, e in events} == {AT_MINIMUM}


def test_an_own_tcb_below_at_the_first_judgement_warns_and_a_product_without_a_minimum_is_below(
    caplog: pytest.LogCaptureFixture,
) -> None:
    evidence = _own_on(AMD)  # Turin
    watch = OwnTcbWatch(lambda _at: evidence, parse_replica_min_tcb(["genoa:" + AT_MINIMUM]), lambda: AT)
    with caplog.at_level("INFO", logger="confide.cas"):
        assert watch.judge() is True
        assert watch.judge() is True
    ((level, name, event),) = _own_tcb_events(caplog)
    assert (level, name, event["product"]) == ("WARNING", "cas-own-tcb-below-replica-min-tcb", "Turin")
    assert "expected one with a minimum (given for genoa)" in event["reasons"][0]


def test_own_evidence_that_is_not_judged_leaves_the_state(caplog: pytest.LogCaptureFixture) -> None:
    """Own evidence that does not verify (ConfideError), fails otherwise, or is not SEV-SNP
    leaves the state as it was, and nothing raises out of a judgement (it runs in the refresher)."""
    results: list[VerifiedEvidence | Exception] = []

    def own(_at: datetime) -> VerifiedEvidence:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    sim = VerifiedEvidence(Platform.SIMULATED, {"measurement": "ab" * 48}, AT, "00" * 32, simulated=True)
    watch = OwnTcbWatch(own, parse_replica_min_tcb(AT_MINIMUM), lambda: AT)
    results[:] = [errors.AppraisalError("does not verify"), sim]
    assert watch.judge() is None and watch.judge() is None  # never judged: no state, no gauge
    results[:] = [_own_on(_replica(microcode=3)), errors.ParseError("bad"), RuntimeError("boom"), sim]
    with caplog.at_level("INFO", logger="confide.cas"):
        assert [watch.judge() for _ in range(4)] == [True, True, True, True]
    assert watch.judgements == 1
    assert [name for _, name, _ in _own_tcb_events(caplog)] == [
        "cas-own-tcb-below-replica-min-tcb",
        "cas-own-tcb-not-judged",
    ]


def test_a_refresh_of_the_own_evidence_judges_it_again_and_metrics_show_the_state(
    tmp_path: Path, amd: FakeAmd, caplog: pytest.LogCaptureFixture
) -> None:
    """The real SEV-SNP CAS (at its minimum at start: gauge 0), its evidence refreshed for real
    through the TSM; what its own evidence verifies as after each refresh is injected (the
    fake TSM signs one TCB only): below (gauge 1, one warning), below again (nothing new), met
    (gauge 0, one info line). A failed refresh judges nothing."""
    minimum = parse_replica_min_tcb(AT_MINIMUM)
    with signing_tsm(tmp_path, amd) as (root, tsm), caplog.at_level("INFO", logger="confide.cas"):
        cas, cas_evidence, *_ = prepare(
            tmp_path / "d", host="127.0.0.1", dev=False, db_url=None, collateral=None,
            tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
            replica_min_tcb=minimum,
        )  # fmt: skip
        try:
            assert cas_evidence is not None and cas.key_release is not None
            watch = cas.key_release.own_tcb
            assert watch is not None and cas_evidence.on_refresh == watch.judge
            app = create_app(cas, cas_evidence=cas_evidence)
            gauge = "confide_cas_own_tcb_below_replica_min_tcb"
            assert metric(app, gauge) == 0
            below, met = _own_on(_replica(microcode=3)), _own_on(AMD)
            shown: list[float] = []
            for injected in (below, below, met):
                watch.own = lambda _at, e=injected: e
                cas_evidence.refresh()
                shown.append(metric(app, gauge))
            assert shown == [1, 1, 0] and cas_evidence.refreshes == 3
            watch.own = lambda _at: below
            tsm.outblob_errno.value = errno.EIO  # the PSP does not answer, the refresh fails
            with pytest.raises(errors.ConfideError):
                cas_evidence.refresh()
            assert metric(app, gauge) == 0 and cas_evidence.failures == 1  # not judged again
        finally:
            cas.db.dispose()
    assert [(level, name) for level, name, _ in _own_tcb_events(caplog)] == [
        ("WARNING", "cas-own-tcb-below-replica-min-tcb"),
        ("INFO", "cas-own-tcb-meets-replica-min-tcb"),
    ]


def test_without_the_option_metrics_have_no_own_tcb_gauge(tmp_path: Path, amd: FakeAmd) -> None:
    with signing_tsm(tmp_path, amd) as (root, _tsm):
        cas, cas_evidence, *_ = prepare(
            tmp_path / "d", host="127.0.0.1", dev=False, db_url=None, collateral=None,
            tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
        )  # fmt: skip
        try:
            assert cas.key_release is not None and cas.key_release.own_tcb is None
            assert cas_evidence is not None and cas_evidence.on_refresh is None
            text = get(create_app(cas, cas_evidence=cas_evidence), "/metrics").decode()
            assert "confide_cas_evidence_refreshes_total" in text
            assert "confide_cas_own_tcb_below" not in text
        finally:
            cas.db.dispose()
