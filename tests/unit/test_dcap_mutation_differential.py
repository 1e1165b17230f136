"""The differential mutation harness (tests/dcap_mutate.py) against dcap-qvl 0.7.0, bounded, and
what it found: confide matched TCB levels in the TCB Info's listed order (Intel's QVL and
dcap-qvl: highest TCB first), and took a delta CRL, a CRL of restricted scope or one with an
unprocessed critical extension as the issuer's complete CRL (dcap-qvl refuses them)."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide import errors
from confide.verify.dcap import DcapVerifier
from dcap_cases import CASES, Case
from dcap_forge import raw_sign
from dcap_mutate import CRL_SCOPES, Forger, Outcome, Trial, run, run_confide, run_qvl, scoped_crl

_SGX_OUT_OF_DATE = CASES[1]  # dcap-rs SGX v3 with the Aug-2025 collateral: OutOfDate, 11 levels
_TDX_V4 = next(c for c in CASES if c.quote.endswith("cos-113-tdx-quote.dat"))
_TDX_V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat"))


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@pytest.mark.parametrize("seed", [1, 2])
def test_mutations_never_accepted_where_dcap_qvl_refuses_and_verdicts_agree(seed: int) -> None:
    """1,200 trials per seed (real evidence under Intel's root: quote bytes and length fields,
    collateral pieces swapped between real bundles or flipped, the time at every validity edge;
    forged collateral under a test PKI: TCB Info / QE Identity fields, CRL entries and windows,
    TEE TCB SVNs, QE ISVSVN, the time): confide never verifies what dcap-qvl refuses for a
    security reason, and where both verify, status and advisories are the same
    (tests/dcap_mutate.py; a longer run by hand: ``PYTHONPATH=src python tests/dcap_mutate.py
    --seconds 600``)."""
    report = run(seed, trials=1200)
    assert report.failures == []
    # the mutations reach both verdicts and the documented differences, not one outcome
    assert report.both_ok >= 100, report
    assert report.both_refused >= 500, report
    assert {"real", "forged"} <= set(report.kinds)


def _with_levels(forger: Forger, edit: str) -> Trial:
    info = json.loads(forger.real.tcb_info)
    levels = info["tcbLevels"]
    if edit == "reversed":
        levels.reverse()
    else:
        random.Random(7).shuffle(levels)
    text = json.dumps(info, separators=(",", ":")).encode()
    coll = forger.pki.forge_collateral(forger.real)
    coll = dataclasses.replace(coll, tcb_info=text, tcb_info_signature=raw_sign(forger.pki.signing_key, text))
    return Trial(edit, forger.case, forger.raw, coll, forger.case.time, forger.pki.root_der)


@pytest.mark.parametrize("case", [_SGX_OUT_OF_DATE, _TDX_V4, _TDX_V5], ids=lambda c: c.id)
@pytest.mark.parametrize("edit", ["reversed", "shuffled"])
def test_tcb_levels_are_matched_highest_first_whatever_their_order(case: Case, edit: str) -> None:
    """Intel's QVL keeps the TCB levels in a ``std::set<TcbLevel, std::greater<TcbLevel>>``
    (SGX components, then PCESVN, then TDX components) and takes the first the platform
    reaches, so the order a TCB Info lists them in does not matter; dcap-qvl does the same.
    Before the fix confide took the first *listed* level the platform reaches: with the levels
    of the dcap-rs SGX quote's TCB Info reversed (re-signed under a test PKI), the lowest level,
    OutOfDate with 23 advisories, instead of its own (4 advisories)."""
    forger = Forger(case)
    verifier = DcapVerifier(root_ca_der=forger.pki.root_der)
    coll = forger.pki.forge_collateral(forger.real)
    as_listed = run_confide(
        Trial("as listed", case, forger.raw, coll, case.time, forger.pki.root_der), verifier
    )
    assert as_listed.ok, as_listed
    reordered = _with_levels(forger, edit)
    ours = run_confide(reordered, verifier)
    theirs = run_qvl(reordered)
    assert ours == as_listed
    assert ours == Outcome(True, theirs.status, theirs.advisories)


@pytest.mark.parametrize("which", ["pck", "root"])
@pytest.mark.parametrize("scope", [*sorted(CRL_SCOPES), "critical-entry"])
def test_a_crl_other_than_the_complete_crl_is_refused(which: str, scope: str) -> None:
    """RFC 5280 §5.2/§5.3: a delta CRL, a CRL of restricted scope (issuingDistributionPoint:
    only user or only CA certificates) or one with a critical extension nobody processes (of
    the CRL or of an entry: certificateIssuer makes it indirect) must not be used as the
    issuer's complete CRL. dcap-qvl (webpki) refuses every one; before the fix confide took each
    as the complete PCK CRL or Root CA CRL, so a partition that does not list a revoked
    certificate would have cleared it. Found by the harness (``crl.*`` mutations of the forged
    family). Intel's CRLs carry none of these, so every CRL of tests/assets still verifies."""
    forger = Forger(_SGX_OUT_OF_DATE)
    at = _SGX_OUT_OF_DATE.time
    if scope == "critical-entry":
        issuer = x509.CertificateIssuer([x509.DNSName("crl.invalid")])
        crl = scoped_crl(forger.pki, which, at, None, revoked=(77,), entry_extension=issuer)
    else:
        crl = scoped_crl(forger.pki, which, at, scope)
    coll = dataclasses.replace(
        forger.pki.forge_collateral(forger.real), **{"pck_crl" if which == "pck" else "root_ca_crl": crl}
    )
    trial = Trial(scope, forger.case, forger.raw, coll, at, forger.pki.root_der)
    verifier = DcapVerifier(root_ca_der=forger.pki.root_der)
    with pytest.raises(errors.CollateralError, match=r"delta CRL|restricted scope|critical extension"):
        verifier.verify(trial.raw, coll, at=at)
    assert not run_qvl(trial).ok
    # what a collateral source checks before it keeps collateral refuses it too
    assert not verifier.collateral_signed(coll)
    assert verifier.collateral_signed(forger.pki.forge_collateral(forger.real))


@pytest.mark.parametrize("kind", Forger.CHAIN_KINDS)
def test_pck_chain_variants_are_judged_as_dcap_qvl_judges_them(kind: str) -> None:
    """Each PCK chain variant of the harness (its certificates valid from one second after the
    time or until one second before it, for the validity kinds): confide never verifies one that
    dcap-qvl refuses. Before the fix a PCK leaf that is a CA certificate (BasicConstraints cA,
    keyCertSign) under the PCK CA verified: confide checked that the issuers are CAs, not that
    the leaf is not; Intel's QVL and dcap-qvl (webpki: CaUsedAsEndEntity) refuse it."""
    forger = Forger(_SGX_OUT_OF_DATE)
    verifier = DcapVerifier(root_ca_der=forger.pki.root_der)
    coll = forger.pki.forge_collateral(forger.real)
    for window in [(None, None), (1, None), (None, -1)]:
        _, raw = forger.chain_quote(kind, window)
        trial = Trial(kind, forger.case, raw, coll, forger.case.time, forger.pki.root_der)
        ours, theirs = run_confide(trial, verifier), run_qvl(trial)
        assert theirs.ok or not ours.ok, (window, ours, theirs)
        if kind == "leaf-is-ca":
            assert "is a CA certificate, expected an end entity" in ours.error
