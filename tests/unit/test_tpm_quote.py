"""TPM 2.0 quotes: parsing TPM structures and verifying real quotes (Azure vTPM, GCE vTPM),
then their tampered twins."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import BindingError, MeasurementError, ParseError, SignatureError
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.evidence.tpm import (
    TPM_ALG_ECDSA,
    TPM_ALG_RSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    TpmPublic,
    TpmSignature,
    parse_attest,
    parse_public,
    parse_signature,
    rsassa_signature,
)
from confide.verify.tpm import verify_quote

ASSETS = Path(__file__).parent.parent / "assets" / "tpm"
AZ = ASSETS / "trustee-az-snp-vtpm"
GCE = ASSETS / "google-go-tpm-tools"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hcl_ak(hcl_report: bytes) -> rsa.RSAPublicKey:
    """The HCLAkPub JWK of an Azure HCL report's runtime claims (a minimal extraction: the JSON
    variable data follows its u32 size, right after the IGVM request header at 0x4A0 + 32)."""
    size_at = 0x20 + 0x4A0 + 16
    size = int.from_bytes(hcl_report[size_at : size_at + 4], "little")
    claims = json.loads(hcl_report[size_at + 4 : size_at + 4 + size])
    (key,) = [k for k in claims["keys"] if k["kid"] == "HCLAkPub"]
    e, n = (int.from_bytes(_b64url(key[x]), "big") for x in ("e", "n"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def az_quote(folder: Path = AZ) -> tuple[bytes, bytes, rsa.RSAPublicKey, dict[int, dict[int, bytes]]]:
    q = json.loads((folder / "tpm-quote-v1.json").read_text())
    pcrs = {TPM_ALG_SHA256: {i: bytes.fromhex(v) for i, v in enumerate(q["pcrs"])}}
    ak = hcl_ak((folder / "hcl-report.bin").read_bytes())
    return bytes.fromhex(q["message"]), bytes.fromhex(q["signature"]), ak, pcrs


AZ_MSG, AZ_SIG, AZ_AK, AZ_PCRS = az_quote()
NONCE9009 = (GCE / "gce-cos-85-nonce9009.pb").read_bytes()
NO_NONCE = (GCE / "gce-cos-85-no-nonce.pb").read_bytes()


# --- real quotes ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [AZ, ASSETS / "trustee-az-tdx-vtpm"])
def test_azure_vtpm_quote_verifies_with_the_hcl_ak(folder: Path) -> None:
    msg, sig, ak, pcrs = az_quote(folder)
    v = verify_quote(msg, rsassa_signature(sig), ak, pcrs, nonce=b"challenge")
    assert v.nonce_checked and v.extra_data == b"challenge"
    assert v.attest.magic == TPM_GENERATED_VALUE and v.attest.type == TPM_ST_ATTEST_QUOTE
    assert sorted(v.pcrs[TPM_ALG_SHA256]) == list(range(24))
    assert v.pcrs[TPM_ALG_SHA256][0] == pcrs[TPM_ALG_SHA256][0]


def test_azure_pcr0_is_the_one_trustee_reports() -> None:
    v = verify_quote(AZ_MSG, rsassa_signature(AZ_SIG), AZ_AK, AZ_PCRS, nonce=None)
    assert not v.nonce_checked
    assert v.attest.pcr_selections[0].hash_alg == TPM_ALG_SHA256
    assert v.attest.clock_info.safe is True


def test_unrelated_quote_does_not_verify_with_this_ak() -> None:
    # tpm-quote.msg/.sig are well-formed, but signed by an AK that none of the HCL reports holds.
    msg = (AZ / "tpm-quote.msg").read_bytes()
    attest = parse_attest(msg)
    assert attest.extra_data == b"challenge"
    assert attest.pcr_selections[0].pcrs == (0, 1, 2, 3, 4, 5, 6, 7, 14)
    pcrs = {TPM_ALG_SHA256: {i: bytes(32) for i in range(24)}}
    with pytest.raises(SignatureError, match="does not verify"):
        verify_quote(msg, rsassa_signature((AZ / "tpm-quote.sig").read_bytes()), AZ_AK, pcrs, nonce=None)


@pytest.mark.parametrize(("blob", "nonce"), [(NO_NONCE, b""), (NONCE9009, bytes.fromhex("9009"))])
def test_gce_quotes_verify_in_every_bank(blob: bytes, nonce: bytes) -> None:
    att = parse_gce_attestation(blob)
    assert att.ak_pub.type == TPM_ALG_RSA and att.ak_pub.restricted_signing
    banks = []
    for q in att.quotes:
        v = verify_quote(q.raw_attest, q.raw_signature, att.ak_pub, {q.hash_alg: q.pcrs}, nonce=nonce)
        assert v.signature.sig_alg == TPM_ALG_RSASSA and v.signature.hash_alg == TPM_ALG_SHA256
        assert len(v.pcrs[q.hash_alg]) == 24
        banks.append(q.hash_alg)
    assert banks == [TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384]


def test_ak_may_be_given_as_a_cryptography_key() -> None:
    att = parse_gce_attestation(NONCE9009)
    q = att.quotes[1]
    key = att.ak_pub.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    verify_quote(q.raw_attest, q.raw_signature, key, {q.hash_alg: q.pcrs}, nonce=bytes.fromhex("9009"))


# --- tampering --------------------------------------------------------------------------------


def _gce_sha256() -> tuple[bytes, bytes, TpmPublic, dict[int, dict[int, bytes]]]:
    att = parse_gce_attestation(NONCE9009)
    q = att.quotes[1]
    return q.raw_attest, q.raw_signature, att.ak_pub, {q.hash_alg: dict(q.pcrs)}


def test_every_flipped_byte_of_the_message_fails() -> None:
    for i in range(len(AZ_MSG)):
        bad = bytearray(AZ_MSG)
        bad[i] ^= 0x01
        with pytest.raises((SignatureError, ParseError)):
            verify_quote(bytes(bad), rsassa_signature(AZ_SIG), AZ_AK, AZ_PCRS, nonce=None)


def test_every_flipped_byte_of_the_signature_fails() -> None:
    msg, sig, ak, pcrs = _gce_sha256()
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x80
        with pytest.raises((SignatureError, ParseError)):
            verify_quote(msg, bytes(bad), ak, pcrs, nonce=None)


def test_wrong_nonce_fails() -> None:
    msg, sig, ak, pcrs = _gce_sha256()
    with pytest.raises(BindingError, match="extraData: got '9009', expected '9008'"):
        verify_quote(msg, sig, ak, pcrs, nonce=bytes.fromhex("9008"))
    with pytest.raises(BindingError):
        verify_quote(AZ_MSG, rsassa_signature(AZ_SIG), AZ_AK, AZ_PCRS, nonce=b"")


@pytest.mark.parametrize("index", [0, 7, 23])
def test_a_changed_pcr_value_fails(index: int) -> None:
    msg, sig, ak, pcrs = _gce_sha256()
    value = bytearray(pcrs[TPM_ALG_SHA256][index])
    value[-1] ^= 1
    pcrs[TPM_ALG_SHA256][index] = bytes(value)
    with pytest.raises(MeasurementError, match="pcrDigest"):
        verify_quote(msg, sig, ak, pcrs, nonce=None)


def test_a_missing_or_misfit_pcr_fails() -> None:
    msg, sig, ak, pcrs = _gce_sha256()
    del pcrs[TPM_ALG_SHA256][5]
    with pytest.raises(MeasurementError, match="PCR 5 of bank sha256 is selected"):
        verify_quote(msg, sig, ak, pcrs, nonce=None)
    pcrs[TPM_ALG_SHA256][5] = bytes(20)
    with pytest.raises(MeasurementError, match="got 20 bytes, expected 32"):
        verify_quote(msg, sig, ak, pcrs, nonce=None)
    with pytest.raises(MeasurementError):  # the values of another bank do not stand in
        verify_quote(msg, sig, ak, {TPM_ALG_SHA1: {i: bytes(20) for i in range(24)}}, nonce=None)


def test_wrong_ak_fails() -> None:
    msg, sig, _, pcrs = _gce_sha256()
    with pytest.raises(SignatureError):
        verify_quote(msg, sig, AZ_AK, pcrs, nonce=None)
    with pytest.raises(SignatureError, match="not an EC key"):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        verify_quote(
            msg, TpmSignature(TPM_ALG_ECDSA, TPM_ALG_SHA256, r=b"\x01", s=b"\x01"), AZ_AK, pcrs, nonce=None
        )
    with pytest.raises(SignatureError, match="not an RSA key"):
        verify_quote(msg, sig, key, pcrs, nonce=None)


def _forge(body: bytes, magic: int = TPM_GENERATED_VALUE) -> bytes:
    return magic.to_bytes(4, "big") + body[4:]


def test_signed_non_tpm_generated_message_is_refused() -> None:
    """An AK that is not restricted could sign anything: the magic says whether the TPM made it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    msg = _forge(AZ_MSG, magic=0x12345678)
    sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(SignatureError, match="magic: got 0x12345678, expected TPM_GENERATED_VALUE"):
        verify_quote(msg, rsassa_signature(sig), key.public_key(), AZ_PCRS, nonce=None)
    # the same message with the right magic verifies: the check above is the magic's
    good = _forge(AZ_MSG)
    sig = key.sign(good, padding.PKCS1v15(), hashes.SHA256())
    verify_quote(good, rsassa_signature(sig), key.public_key(), AZ_PCRS, nonce=b"challenge")


def test_pss_and_ecdsa_quotes() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    sig = rsa_key.sign(AZ_MSG, pss, hashes.SHA256())
    raw = (
        TPM_ALG_RSAPSS.to_bytes(2, "big")
        + TPM_ALG_SHA256.to_bytes(2, "big")
        + len(sig).to_bytes(2, "big")
        + sig
    )
    verify_quote(AZ_MSG, raw, rsa_key.public_key(), AZ_PCRS, nonce=b"challenge")
    ec_key = ec.generate_private_key(ec.SECP384R1())
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(ec_key.sign(AZ_MSG, ec.ECDSA(hashes.SHA384())))
    # pcrDigest is the SHA-256 of the PCRs; an ECDSA-SHA384 signature expects a SHA-384 digest
    raw = TPM_ALG_ECDSA.to_bytes(2, "big") + TPM_ALG_SHA384.to_bytes(2, "big")
    raw += (48).to_bytes(2, "big") + r.to_bytes(48, "big") + (48).to_bytes(2, "big") + s.to_bytes(48, "big")
    parsed = parse_signature(raw)
    assert parsed.sig_alg == TPM_ALG_ECDSA and parsed.hash_alg == TPM_ALG_SHA384
    with pytest.raises(MeasurementError, match="pcrDigest"):
        verify_quote(AZ_MSG, raw, ec_key.public_key(), AZ_PCRS, nonce=None)


# --- parsing ----------------------------------------------------------------------------------


def test_every_truncation_is_a_parse_error() -> None:
    att = parse_gce_attestation(NONCE9009)
    for data, parse in (
        (AZ_MSG, parse_attest),
        (att.quotes[0].raw_signature, parse_signature),
        (att.ak_pub.raw, parse_public),
    ):
        for n in range(len(data)):
            with pytest.raises(ParseError):
                parse(data[:n])
        with pytest.raises(ParseError, match="trailing"):
            parse(data + b"\x00")


def test_parse_public_fields() -> None:
    ak = parse_gce_attestation(NONCE9009).ak_pub
    assert ak.name_alg == TPM_ALG_SHA256 and ak.key_bits == 2048
    assert ak.scheme == TPM_ALG_RSASSA and ak.scheme_hash == TPM_ALG_SHA256
    assert set(ak.attribute_names) >= {"fixedTPM", "restricted", "sign"}
    assert ak.name()[:2] == TPM_ALG_SHA256.to_bytes(2, "big") and len(ak.name()) == 34


def test_parse_ecc_public_and_bad_point() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    body = (0x0023).to_bytes(2, "big") + TPM_ALG_SHA256.to_bytes(2, "big") + (0x00050072).to_bytes(4, "big")
    body += b"\x00\x00" + (0x0010).to_bytes(2, "big")  # no policy, symmetric NULL
    body += TPM_ALG_ECDSA.to_bytes(2, "big") + TPM_ALG_SHA256.to_bytes(2, "big")
    body += (0x0003).to_bytes(2, "big") + (0x0010).to_bytes(2, "big")  # P-256, kdf NULL
    point = (32).to_bytes(2, "big") + key.x.to_bytes(32, "big") + (32).to_bytes(2, "big")
    pub = parse_public(body + point + key.y.to_bytes(32, "big"))
    got = pub.public_key()
    assert isinstance(got, ec.EllipticCurvePublicKey) and got.public_numbers() == key
    off_curve = parse_public(body + point + (key.y ^ 1).to_bytes(32, "big"))
    with pytest.raises(ParseError, match="unusable public key"):
        off_curve.public_key()


def test_non_quote_attestation_is_refused() -> None:
    certify = AZ_MSG[:4] + (0x8017).to_bytes(2, "big") + AZ_MSG[6:]
    with pytest.raises(ParseError, match="expected TPM_ST_ATTEST_QUOTE"):
        parse_attest(certify)


def test_attest_fields_are_checked() -> None:
    """Ported from the runtime's former TPMS_ATTEST parser: TPMI_YES_NO and trailing bytes."""
    good = (
        TPM_GENERATED_VALUE.to_bytes(4, "big") + TPM_ST_ATTEST_QUOTE.to_bytes(2, "big")
        + b"\x00\x00" + b"\x00\x02hi"  # qualifiedSigner (empty), extraData
        + (1).to_bytes(8, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01"  # clockInfo
        + (4).to_bytes(8, "big")  # firmwareVersion
        + (1).to_bytes(4, "big") + TPM_ALG_SHA256.to_bytes(2, "big") + b"\x03\xff\xff\xff"
        + b"\x00\x20" + bytes(32)
    )  # fmt: skip
    attest = parse_attest(good)
    assert attest.extra_data == b"hi" and attest.clock_info.safe and attest.clock_info.reset_count == 2
    assert len(attest.selected()) == 24
    assert good[28] == 1  # clockInfo.safe
    unsafe = good[:28] + b"\x02" + good[29:]
    with pytest.raises(ParseError, match=r"clockInfo\.safe"):
        parse_attest(unsafe)
    with pytest.raises(ParseError, match="trailing"):
        parse_attest(good + b"\x00")


def test_public_of_another_type_or_a_misfit_modulus_is_refused() -> None:
    """Ported from the runtime's former TPMT_PUBLIC parser."""
    symcipher = (0x0025).to_bytes(2, "big") + TPM_ALG_SHA256.to_bytes(2, "big") + bytes(4) + bytes(10)
    with pytest.raises(ParseError, match="got 0x0025, expected rsa or ecc"):
        parse_public(symcipher)
    head = TPM_ALG_RSA.to_bytes(2, "big") + TPM_ALG_SHA256.to_bytes(2, "big") + bytes(4) + b"\x00\x00"
    head += (
        (0x0010).to_bytes(2, "big") + TPM_ALG_RSASSA.to_bytes(2, "big") + TPM_ALG_SHA256.to_bytes(2, "big")
    )
    good = parse_public(head + (2048).to_bytes(2, "big") + bytes(4) + b"\x01\x00" + b"\xc1" * 256)
    assert good.key_bits == 2048 and good.exponent == 0
    with pytest.raises(ParseError, match="16-byte modulus"):
        parse_public(head + (2048).to_bytes(2, "big") + bytes(4) + b"\x00\x10" + bytes(16))


def test_oversized_tpm2b_is_refused_before_reading() -> None:
    bad = AZ_MSG[:42] + b"\xff\xff" + AZ_MSG[44:]  # extraData size 65535
    with pytest.raises(ParseError, match=r"extraData\.size"):
        parse_attest(bad)


def test_trustee_software_tpm_evidence_parses() -> None:
    data = json.loads((ASSETS / "trustee-tpm_evidence.json").read_text())
    quote = json.loads(data["tpm_quote"]) if isinstance(data["tpm_quote"], str) else data["tpm_quote"]
    attest = parse_attest(base64.b64decode(quote["message"]))
    assert attest.magic == TPM_GENERATED_VALUE
    assert len(attest.pcr_selections) == 1 and len(attest.pcr_selections[0].pcrs) == 24


# --- fuzzing ----------------------------------------------------------------------------------

_SEEDS = [
    AZ_MSG,
    parse_gce_attestation(NONCE9009).ak_pub.raw,
    parse_gce_attestation(NONCE9009).quotes[0].raw_signature,
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
    st.integers(0, 2000),
)
def test_parsers_raise_only_parse_error(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    blob = bytes(data[: cut % (len(data) + 1)])
    for parse in (parse_attest, parse_signature, parse_public):
        try:
            parse(blob)
        except ParseError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_raise_only_parse_error_on_random_bytes(blob: bytes) -> None:
    for parse in (parse_attest, parse_signature, parse_public):
        try:
            result = parse(blob)
        except ParseError:
            continue
        if hasattr(result, "public_key"):
            try:
                result.public_key()
            except ParseError:
                pass
