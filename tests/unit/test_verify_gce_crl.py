"""Revocation of a GCE AK certificate and its intermediates by CRLs (``confide.verify.gce_crl``,
step 2b of ``verify_gce_attestation``) under a test Google-like PKI: current CRLs pass and are
reported; a revoked AK certificate or intermediate, a CRL not signed by the certificate's
issuer, a stale or not yet valid CRL, one without nextUpdate, and a missing CRL (fail closed)
are refused; delta and partitioned CRLs; loading DER and PEM; the real go-tpm-tools attestations
still verify without CRLs and are refused with none given; end to end on swtpm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from confide.errors import (
    CollateralError,
    CollateralExpiredError,
    CollateralMissingError,
    ParseError,
    RevocationError,
    SignatureError,
)
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from confide.verify.gce_crl import MAX_CRLS, check_chain_revocation, load_crls
from confide.verify.gce_tpm import verify_gce_attestation
from der_edit import without_next_update
from gce_fakes import NOT_AFTER, NOT_BEFORE, FakeGoogle, clear_gce_indices, provision_gce_vtpm

GOOGLE = FakeGoogle.make()
AT = NOT_BEFORE + timedelta(days=10)
AK = x509.load_der_x509_certificate(
    GOOGLE.ak_cert(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
)
CHAIN = [AK, GOOGLE.intermediate, GOOGLE.root]
ASSETS = Path(__file__).parent.parent / "assets" / "tpm" / "google-go-tpm-tools"
REPORT_DATA = bytes(range(64))


def _current(**kwargs: object) -> list[x509.CertificateRevocationList]:
    """Current CRLs of the root and the intermediate; ``kwargs`` go to the intermediate's."""
    window = {"this_update": AT - timedelta(days=1), "next_update": AT + timedelta(days=7)}
    return [GOOGLE.crl("root", **window), GOOGLE.crl("intermediate", **{**window, **kwargs})]  # type: ignore[arg-type]


def test_current_crls_pass_and_are_reported() -> None:
    checked = check_chain_revocation(CHAIN, _current(revoked=[AK.serial_number + 1]), AT)
    assert checked == [
        {
            "certificate": "",
            "crl_issuer": GOOGLE.intermediate.subject.rfc4514_string(),
            "crl_number": "1",
            "this_update": "2024-01-10T00:00:00Z",
            "next_update": "2024-01-18T00:00:00Z",
        },
        {
            "certificate": GOOGLE.intermediate.subject.rfc4514_string(),
            "crl_issuer": GOOGLE.root.subject.rfc4514_string(),
            "crl_number": "1",
            "this_update": "2024-01-10T00:00:00Z",
            "next_update": "2024-01-18T00:00:00Z",
        },
    ]


def test_a_revoked_ak_certificate_or_intermediate_is_refused() -> None:
    with pytest.raises(RevocationError, match=rf"AK certificate \(serial {AK.serial_number:#x}\) is revoked"):
        check_chain_revocation(CHAIN, _current(revoked=[AK.serial_number]), AT)
    window = {"this_update": AT - timedelta(days=1), "next_update": AT + timedelta(days=7)}
    crls = [GOOGLE.crl("root", revoked=[GOOGLE.intermediate.serial_number], **window), GOOGLE.crl(**window)]  # type: ignore[arg-type]
    with pytest.raises(
        RevocationError, match=r"intermediate 'Test EK/AK CA Intermediate' .* is revoked by the CRL of"
    ):
        check_chain_revocation(CHAIN, crls, AT)
    # listed by an older CRL that is still signed by the issuer: revoked all the same
    old = GOOGLE.crl(
        revoked=[AK.serial_number], this_update=AT - timedelta(days=5), next_update=AT - timedelta(days=2)
    )
    with pytest.raises(RevocationError):
        check_chain_revocation(CHAIN, [*_current(), old], AT)


def test_a_crl_not_signed_by_the_issuer_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SignatureError, match="signature does not verify with"):
        check_chain_revocation(CHAIN, _current(key=other), AT)
    # not skipped when a genuine one is there too
    with pytest.raises(SignatureError):
        check_chain_revocation(CHAIN, [*_current(), _current(key=other)[1]], AT)


def test_stale_and_not_yet_valid_crls_are_refused() -> None:
    with pytest.raises(
        CollateralExpiredError, match=r"expired \(nextUpdate 2024-01-10T00:00:00Z, at 2024-01-11"
    ):
        check_chain_revocation(
            CHAIN, _current(this_update=AT - timedelta(days=3), next_update=AT - timedelta(days=1)), AT
        )
    with pytest.raises(CollateralExpiredError, match="not yet valid"):
        check_chain_revocation(CHAIN, _current(this_update=AT + timedelta(hours=1)), AT)
    # the newest one decides: a stale one beside a current one is fine
    stale = GOOGLE.crl(this_update=AT - timedelta(days=9), next_update=AT - timedelta(days=8))
    assert len(check_chain_revocation(CHAIN, [stale, *_current()], AT)) == 2


def test_a_crl_without_next_update_is_refused() -> None:
    crl = GOOGLE.crl(this_update=AT - timedelta(days=1), next_update=AT + timedelta(days=1))
    key = GOOGLE.intermediate_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = without_next_update(
        crl.public_bytes(serialization.Encoding.DER), lambda tbs: key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    )
    crls = [_current()[0], x509.load_der_x509_crl(der)]
    with pytest.raises(CollateralError, match="has no nextUpdate"):
        check_chain_revocation(CHAIN, crls, AT)


def test_a_missing_crl_is_refused() -> None:
    root_crl, int_crl = _current()
    with pytest.raises(CollateralMissingError, match="AK certificate: no CRL of its issuer"):
        check_chain_revocation(CHAIN, [root_crl], AT)
    with pytest.raises(CollateralMissingError, match="intermediate 'Test EK/AK CA Intermediate': no CRL"):
        check_chain_revocation(CHAIN, [int_crl], AT)
    with pytest.raises(CollateralMissingError):
        check_chain_revocation(CHAIN, [], AT)


def test_delta_and_partitioned_crls() -> None:
    window = {"this_update": AT - timedelta(days=1), "next_update": AT + timedelta(days=7)}
    root_crl = GOOGLE.crl("root", **window)  # type: ignore[arg-type]
    delta = GOOGLE.crl(extensions=[x509.DeltaCRLIndicator(1)], **window)  # type: ignore[arg-type]
    with pytest.raises(CollateralMissingError):  # a delta CRL alone is no CRL
        check_chain_revocation(CHAIN, [root_crl, delta], AT)

    def idp(**flags: bool) -> x509.IssuingDistributionPoint:
        values = {
            "full_name": None, "relative_name": None, "only_contains_user_certs": False,
            "only_contains_ca_certs": False, "only_some_reasons": None, "indirect_crl": False,
            "only_contains_attribute_certs": False, **flags,
        }  # fmt: skip
        return x509.IssuingDistributionPoint(**values)  # type: ignore[arg-type]

    users = GOOGLE.crl(extensions=[idp(only_contains_user_certs=True)], **window)  # type: ignore[arg-type]
    assert len(check_chain_revocation(CHAIN, [root_crl, users], AT)) == 2
    cas_only = GOOGLE.crl(extensions=[idp(only_contains_ca_certs=True)], **window)  # type: ignore[arg-type]
    with pytest.raises(CollateralMissingError):  # covers CA certificates, not the AK's
        check_chain_revocation(CHAIN, [root_crl, cas_only], AT)
    users_root = GOOGLE.crl("root", extensions=[idp(only_contains_user_certs=True)], **window)  # type: ignore[arg-type]
    with pytest.raises(CollateralMissingError, match="intermediate"):
        check_chain_revocation(CHAIN, [users_root, users], AT)
    indirect = GOOGLE.crl(extensions=[idp(indirect_crl=True)], **window)  # type: ignore[arg-type]
    with pytest.raises(CollateralError, match="partitioned CRLs are not supported"):
        check_chain_revocation(CHAIN, [root_crl, indirect], AT)


def test_load_crls_der_and_pem() -> None:
    crls = _current()
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in crls)
    pem = b"\n".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
    for data in (der, pem):
        assert [c.public_bytes(serialization.Encoding.DER) for c in load_crls(data, "f")] == [
            c.public_bytes(serialization.Encoding.DER) for c in crls
        ]
    for bad, match in [
        (b"", "got no CRL"),
        (der + b"\x00", "expected a DER SEQUENCE"),
        (der[:-1], "remain"),
        (pem + b"junk", "expected only PEM X509 CRL blocks"),
        (pem.replace(b"-----BEGIN X509 CRL-----\nMI", b"-----BEGIN X509 CRL-----\n!I", 1), "not base64"),
        (GOOGLE.root.public_bytes(serialization.Encoding.DER), "not a valid DER X.509 CRL"),
        (der[:1] * 0 + crls[0].public_bytes(serialization.Encoding.DER) * (MAX_CRLS + 1), "expected at most"),
    ]:
        with pytest.raises(ParseError, match=match):
            load_crls(bad, "f")


# --- verify_gce_attestation ------------------------------------------------------------------------


def test_real_attestations_verify_without_crls_and_refuse_missing_ones() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    for name in ("gce-cos-85-nonce9009.pb", "gce-cos-85-no-nonce.pb"):
        evidence = (ASSETS / name).read_bytes()
        assert verify_gce_attestation(evidence, at=at).details["revocation"] is None
        with pytest.raises(CollateralMissingError, match="AK certificate: no CRL of its issuer"):
            verify_gce_attestation(evidence, at=at, crls=[])


def test_end_to_end_on_swtpm(swtpm_tpm: Tpm) -> None:
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        raw = GceTpmQuoteProvider(
            swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der]
        ).get_evidence(REPORT_DATA)
    finally:
        clear_gce_indices(swtpm_tpm)
    from confide.evidence.gce_tpm import parse_gce_attestation

    ak = x509.load_der_x509_certificate(parse_gce_attestation(raw.raw).ak_cert or b"")
    now = NOT_AFTER - timedelta(days=365)
    window = {"this_update": now - timedelta(days=1), "next_update": now + timedelta(days=1)}
    good = [GOOGLE.crl("root", **window), GOOGLE.crl(**window)]  # type: ignore[arg-type]
    verified = verify_gce_attestation(raw.raw, at=now, roots=[GOOGLE.root], crls=good)
    revocation = verified.details["revocation"]
    assert isinstance(revocation, list) and len(revocation) == 2
    revoked = [good[0], GOOGLE.crl(revoked=[ak.serial_number], **window)]  # type: ignore[arg-type]
    with pytest.raises(RevocationError):
        verify_gce_attestation(raw.raw, at=now, roots=[GOOGLE.root], crls=revoked)
    with pytest.raises(CollateralExpiredError):
        verify_gce_attestation(raw.raw, at=now + timedelta(days=2), roots=[GOOGLE.root], crls=good)


def test_cli_crl_option(swtpm_tpm: Tpm, tmp_path: Path) -> None:
    """``confide evidence verify --platform gce-tpm --crl FILE`` (with ``--root``, the test PKI's)."""
    from cli import run_confide
    from confide.errors import UsageError
    from confide.evidence.gce_tpm import parse_gce_attestation

    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
        raw = provider.get_evidence(REPORT_DATA).raw
    finally:
        clear_gce_indices(swtpm_tpm)
    serial = x509.load_der_x509_certificate(parse_gce_attestation(raw).ak_cert or b"").serial_number
    evidence, root = tmp_path / "att.pb", tmp_path / "root.pem"
    evidence.write_bytes(raw)
    root.write_bytes(GOOGLE.root.public_bytes(serialization.Encoding.PEM))
    now = datetime.now(UTC)
    window = {"this_update": now - timedelta(days=1), "next_update": now + timedelta(days=1)}

    def verify_with(*crls: x509.CertificateRevocationList, platform: str = "gce-tpm") -> tuple[int, str]:
        path = tmp_path / "crls.pem"
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls))
        args = [
            "evidence",
            "verify",
            evidence,
            "--platform",
            platform,
            "--root",
            root,
            "--crl",
            path,
            "--json",
        ]
        done = run_confide(*args)
        return done.returncode, done.stdout + done.stderr

    code, out = verify_with(GOOGLE.crl("root", **window), GOOGLE.crl(**window))  # type: ignore[arg-type]
    assert code == 0 and '"revocation": [' in out, out
    code, out = verify_with(GOOGLE.crl("root", **window), GOOGLE.crl(revoked=[serial], **window))  # type: ignore[arg-type]
    assert code == RevocationError.exit_code and "is revoked" in out, out
    code, out = verify_with(GOOGLE.crl("root", **window))  # type: ignore[arg-type]
    assert code == CollateralMissingError.exit_code, out
    code, out = verify_with(GOOGLE.crl(**window), platform="sev-snp")  # type: ignore[arg-type]
    assert code == UsageError.exit_code and "--crl is only for --platform gce-tpm" in out, out


def _scoped(url: str) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
        only_contains_user_certs=False, only_contains_ca_certs=False, only_some_reasons=None,
        indirect_crl=False, only_contains_attribute_certs=False,
    )  # fmt: skip


def test_a_crl_scoped_to_another_distribution_point_does_not_cover_the_certificate() -> None:
    """Hostile review of 2026-12-07: a CRL whose Issuing Distribution Point names another distribution point is
    another partition of the issuer's CRLs (RFC 5280 §6.3.3 (b)(2)(i)). It need not list this
    AK certificate: genuine, current and signed by the issuer, it was taken as saying "not
    revoked" (``--gce-crl fetch`` asks one URL, whose answer a network attacker chooses)."""
    mine, other = "http://pki.test/ak-0.crl", "http://pki.test/ak-1.crl"
    dp = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(mine)], None, None, None)]
    )
    ak = x509.load_der_x509_certificate(
        GOOGLE.ak_cert(
            rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), extra=[dp]
        )
    )
    chain = [ak, GOOGLE.intermediate, GOOGLE.root]
    window = {"this_update": AT - timedelta(days=1), "next_update": AT + timedelta(days=7)}
    root_crl = GOOGLE.crl("root", **window)  # type: ignore[arg-type]
    # the AK is revoked on its own partition; the other partition does not list it
    own = GOOGLE.crl(revoked=[ak.serial_number], extensions=[_scoped(mine)], **window)  # type: ignore[arg-type]
    partition = GOOGLE.crl(extensions=[_scoped(other)], **window)  # type: ignore[arg-type]
    with pytest.raises(CollateralMissingError, match="AK certificate: no CRL"):
        check_chain_revocation(chain, [root_crl, partition], AT)
    with pytest.raises(RevocationError):
        check_chain_revocation(chain, [root_crl, partition, own], AT)
    # its own partition, not revoking it, covers it
    mine_only = GOOGLE.crl(extensions=[_scoped(mine)], **window)  # type: ignore[arg-type]
    assert len(check_chain_revocation(chain, [root_crl, mine_only], AT)) == 2
    # a certificate naming no distribution point is covered by no scoped CRL
    with pytest.raises(CollateralMissingError):
        check_chain_revocation(CHAIN, [root_crl, mine_only], AT)
