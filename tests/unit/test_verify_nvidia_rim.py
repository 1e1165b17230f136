"""NVIDIA RIM signatures: the real NVIDIA-signed RIMs verify; every tampered twin is refused."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from confide.errors import CertificateChainError, ConfideError, ParseError, SignatureError
from confide.evidence.nvidia_rim import SHA384_NS, SWID_NS, ReferenceManifest
from confide.verify._pinned_chain import load_pinned_root
from confide.verify.nvidia_rim import NVIDIA_RIM_ROOT_SHA256, nvidia_rim_root, verify_rim
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn
from rim_pki import make_cert, make_pki, sign_rim, strip_signature

ASSETS = Path(__file__).parent.parent / "assets" / "nvidia"
DRIVER = (ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
VBIOS = (ASSETS / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()
AT = datetime(2024, 6, 1, tzinfo=UTC)  # inside both RIM signers' validity (2023-06 .. 2025-06)
FIRST_ACTIVE = (
    b"0e0ee161b59bf124ce6b6dca6efa7616d28077862c0e57dca7d5efd63d00eeed4851922941e846a38c464cbedbc168d9"
)


def _certs(xml: bytes) -> list[bytes]:
    return re.findall(rb"<ds:X509Certificate>(.*?)</ds:X509Certificate>", xml, re.S)


# --- positive: real NVIDIA-signed RIMs -----------------------------------------------------------


@pytest.mark.parametrize(("data", "version"), [(DRIVER, "545.00"), (VBIOS, "96.00.5E.00.01")])
def test_nvidia_signed_rims_verify(data: bytes, version: str) -> None:
    rim = verify_rim(data, at=AT)
    assert rim.signer == "HCC RIM L4 Signer"
    assert rim.chain == (
        "HCC RIM L4 Signer",
        "NVIDIA Reference Value L3 GH100 001",
        "NVIDIA Reference Value GH100 CA",
        "NVIDIA CoRIM signing Root CA",
    )
    assert rim.signature_algorithm == "ecdsa-sha384"
    assert rim.canonicalization == "http://www.w3.org/2006/12/xml-c14n11"
    assert rim.root_sha256 == NVIDIA_RIM_ROOT_SHA256
    # The manifest comes from the signed bytes and equals the file's own parse.
    parsed = ReferenceManifest.from_bytes(data)
    assert rim.manifest.version == version
    assert rim.manifest.measurements == parsed.measurements
    assert rim.manifest.to_bytes() == data


def test_embedded_rim_root_is_pinned_and_is_nvidias() -> None:
    shipped = x509.load_pem_x509_certificate((ASSETS / "verifier_RIM_root.pem").read_bytes())
    assert nvidia_rim_root() == shipped
    assert base64.b64decode(b"".join(_certs(DRIVER)[-1].split())) == shipped.public_bytes(Encoding.DER)
    with pytest.raises(CertificateChainError, match="fingerprint"):
        load_pinned_root("nvidia_rim_root.pem", "00" * 32)


def test_rim_without_root_in_x509data_still_chains_to_the_pinned_root() -> None:
    last = _certs(DRIVER)[-1]
    data = DRIVER.replace(b"<ds:X509Certificate>" + last + b"</ds:X509Certificate>", b"")
    assert len(_certs(data)) == 3
    assert verify_rim(data, at=AT).chain[-1] == "NVIDIA CoRIM signing Root CA"


# --- negative twins -----------------------------------------------------------------------------


def test_changed_measurement_is_refused() -> None:
    data = DRIVER.replace(FIRST_ACTIVE, FIRST_ACTIVE[:-1] + b"8")
    assert data != DRIVER
    ReferenceManifest.from_bytes(data)  # still a well-formed RIM ...
    with pytest.raises(SignatureError, match="digest does not match"):
        verify_rim(data, at=AT)  # ... but not the one NVIDIA signed


def test_changed_version_is_refused() -> None:
    data = DRIVER.replace(b'colloquialVersion="545.00"', b'colloquialVersion="550.90.07"')
    with pytest.raises(SignatureError, match="digest does not match"):
        verify_rim(data, at=AT)


def test_changed_signature_value_is_refused() -> None:
    match = re.search(rb"<ds:SignatureValue>\s*(\S)", DRIVER)
    assert match is not None
    pos = match.start(1)
    data = DRIVER[:pos] + (b"B" if DRIVER[pos : pos + 1] != b"B" else b"C") + DRIVER[pos + 1 :]
    with pytest.raises(SignatureError, match="does not verify with the key of 'HCC RIM L4 Signer'"):
        verify_rim(data, at=AT)


def test_changed_signed_info_is_refused() -> None:
    # The reference digest is signed: swapping in another digest value breaks the signature.
    match = re.search(rb"<ds:DigestValue>\s*(\S)", DRIVER)
    assert match is not None
    pos = match.start(1)
    data = DRIVER[:pos] + (b"A" if DRIVER[pos : pos + 1] != b"A" else b"B") + DRIVER[pos + 1 :]
    with pytest.raises(SignatureError):
        verify_rim(data, at=AT)


def test_removed_certificates_are_refused() -> None:
    data = re.sub(rb"<ds:X509Certificate>.*?</ds:X509Certificate>", b"", DRIVER, flags=re.S)
    with pytest.raises(CertificateChainError, match="no KeyInfo/X509Data/X509Certificate"):
        verify_rim(data, at=AT)
    signer = _certs(DRIVER)[0]
    no_signer = DRIVER.replace(b"<ds:X509Certificate>" + signer + b"</ds:X509Certificate>", b"")
    with pytest.raises(CertificateChainError):
        verify_rim(no_signer, at=AT)


def test_replaced_signer_certificate_is_refused() -> None:
    # The VBIOS RIM's signer (a different NVIDIA certificate, same issuer): chain fine, key wrong.
    other = _certs(VBIOS)[0]
    data = DRIVER.replace(_certs(DRIVER)[0], other)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_rim(data, at=AT)
    # A test signer: does not chain to the pinned root.
    pki = make_pki()
    forged = base64.b64encode(pki.leaf.public_bytes(Encoding.DER))
    with pytest.raises(CertificateChainError):
        verify_rim(DRIVER.replace(_certs(DRIVER)[0], forged), at=AT)


def test_garbage_certificate_is_a_chain_error() -> None:
    data = DRIVER.replace(_certs(DRIVER)[0], base64.b64encode(b"\x30\x03\x02\x01\x00"))
    with pytest.raises(CertificateChainError, match="X509Certificate #0"):
        verify_rim(data, at=AT)


def test_wrong_root_is_refused() -> None:
    device_root = x509.load_pem_x509_certificate((ASSETS / "verifier_device_root.pem").read_bytes())
    with pytest.raises(CertificateChainError, match="expected the pinned root"):
        verify_rim(DRIVER, at=AT, root=device_root)
    with pytest.raises(CertificateChainError):
        verify_rim(DRIVER, at=AT, root=make_pki().root)


@pytest.mark.parametrize(
    ("at", "message"),
    [
        (datetime(2025, 6, 27, tzinfo=UTC), "expired"),
        (datetime(2023, 6, 1, tzinfo=UTC), "not yet valid"),
    ],
)
def test_outside_validity_is_refused(at: datetime, message: str) -> None:
    with pytest.raises(CertificateChainError, match=message):
        verify_rim(DRIVER, at=at)


def test_unsigned_rim_is_refused() -> None:
    unsigned = etree.tostring(strip_signature(DRIVER))
    assert ReferenceManifest.from_bytes(unsigned).version == "545.00"
    with pytest.raises(SignatureError, match="not signed"):
        verify_rim(unsigned, at=AT)


@pytest.mark.parametrize(
    "prolog",
    [
        b'<!DOCTYPE SoftwareIdentity [<!ENTITY v "550.90.07">]>\n',
        b'<!DOCTYPE SoftwareIdentity SYSTEM "http://127.0.0.1:9/x.dtd">\n',
        b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n',
        b"<!DOCTYPE SoftwareIdentity>\n",
    ],
)
def test_doctype_and_entities_are_refused_before_parsing(prolog: bytes) -> None:
    with pytest.raises(ParseError, match="not acceptable XML"):
        verify_rim(prolog + DRIVER, at=AT)


def test_entity_reference_in_content_is_refused() -> None:
    data = b'<!DOCTYPE x [<!ENTITY v "1">]>\n' + DRIVER.replace(
        b'colloquialVersion="545.00"', b'colloquialVersion="&v;"'
    )
    with pytest.raises(ParseError):
        verify_rim(data, at=AT)


def test_oversized_rim_is_refused() -> None:
    with pytest.raises(ParseError, match="expected at most"):
        verify_rim(DRIVER + b" " * (4 * 1024 * 1024), at=AT)


def test_signature_structure_is_checked() -> None:
    uri = DRIVER.replace(b'<ds:Reference URI="">', b'<ds:Reference URI="#payload">')
    with pytest.raises(SignatureError, match="Reference URI"):
        verify_rim(uri, at=AT)
    xpath = DRIVER.replace(
        b'<ds:Transform Algorithm="http://www.w3.org/2006/12/xml-c14n11"/>',
        b'<ds:Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116"/>',
    )
    with pytest.raises(SignatureError, match="transforms"):
        verify_rim(xpath, at=AT)
    sha1 = DRIVER.replace(b"xmldsig-more#ecdsa-sha384", b"xmldsig-more#ecdsa-sha1")
    with pytest.raises(SignatureError, match="SignatureMethod"):
        verify_rim(sha1, at=AT)
    sig = re.search(rb"<ds:Signature .*</ds:Signature>", DRIVER, re.S)
    assert sig is not None
    two = DRIVER.replace(sig.group(0), sig.group(0) * 2)
    with pytest.raises(SignatureError, match="ds:Signature"):
        verify_rim(two, at=AT)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_sampled_flipped_bytes_never_verify() -> None:
    positions = list(range(0, len(VBIOS), 17))
    assert len(positions) > 1000
    for pos in positions:
        data = bytearray(VBIOS)
        data[pos] ^= 0x01
        with pytest.raises(ConfideError):
            verify_rim(bytes(data), at=AT)


# --- a test PKI: signed by someone else ----------------------------------------------------------


def _rewritten(version: str) -> bytes:
    doc = strip_signature(DRIVER)
    doc.find(f"{{{SWID_NS}}}Meta").set("colloquialVersion", version)  # type: ignore[union-attr]
    for res in doc.iter(f"{{{SWID_NS}}}Resource"):
        if res.get("active") == "True":
            res.set(f"{{{SHA384_NS}}}Hash0", "ab" * 48)
    return sign_rim(doc, make_pki())


def test_rim_signed_by_another_pki_is_refused_under_the_pinned_root() -> None:
    with pytest.raises(CertificateChainError, match="expected the pinned root"):
        verify_rim(_rewritten("550.90.07"), at=AT)


@pytest.mark.parametrize("rsa_leaf", [False, True])
def test_test_pki_rim_verifies_only_under_its_root(rsa_leaf: bool) -> None:
    pki = make_pki(rsa_leaf=rsa_leaf)
    signed = sign_rim(DRIVER, pki, include_root=False)
    rim = verify_rim(signed, at=AT, root=pki.root)
    assert rim.signer == "Test RIM Signer"
    assert rim.signature_algorithm == ("rsa-sha384" if rsa_leaf else "ecdsa-sha384")
    assert rim.manifest.measurements == ReferenceManifest.from_bytes(DRIVER).measurements
    with pytest.raises(CertificateChainError):
        verify_rim(signed, at=AT, root=make_pki("Other").root)
    with pytest.raises(SignatureError, match="digest"):
        verify_rim(signed.replace(FIRST_ACTIVE, b"ab" * 48), at=AT, root=pki.root)


def test_ca_certificate_as_signer_is_refused() -> None:
    # A CA certificate (cA true, keyCertSign) presented and used as the RIM signer.
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make_cert("CA Root", root_key, None, ca=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = make_cert("CA Signer", ca_key, (root, root_key), ca=True)
    pki = replace(make_pki(), root=root, ica=root, leaf=ca, leaf_key=ca_key)
    signed = sign_rim(DRIVER, pki, include_root=False)
    with pytest.raises(CertificateChainError, match="CA certificate"):
        verify_rim(signed, at=AT, root=root)


# --- the memo: the same bytes skip the document checks, never the chain at ``at`` ----------------


def test_a_remembered_rim_still_has_its_chain_checked_at_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import confide.verify.nvidia_rim as module

    pki = make_pki("Memo RIM")  # valid 2024-01-01 .. 2026-01-01
    signed = sign_rim(DRIVER, pki)
    calls: list[bytes] = []
    check = module._check_document

    def counted(data: bytes, pinned: x509.Certificate, at: datetime) -> object:
        calls.append(data)
        return check(data, pinned, at)

    monkeypatch.setattr(module, "_check_document", counted)
    first = verify_rim(signed, at=AT, root=pki.root)
    second = verify_rim(signed, at=AT, root=pki.root)
    assert second.manifest == first.manifest and second.chain == first.chain and len(calls) == 1
    # Remembered, but its signer expired at the later time: refused (step 4 runs again).
    with pytest.raises(CertificateChainError):
        verify_rim(signed, at=datetime(2026, 6, 1, tzinfo=UTC), root=pki.root)
    # Under another root: not the remembered outcome (checked in full, and refused).
    with pytest.raises(CertificateChainError):
        verify_rim(signed, at=AT, root=make_pki("Other").root)
    # Other bytes (one golden value changed after signing): checked in full, and refused.
    with pytest.raises(SignatureError, match="digest does not match"):
        verify_rim(signed.replace(FIRST_ACTIVE, b"ab" * 48), at=AT, root=pki.root)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "edit", [bad_version, bitstring_cn, bad_name_tag], ids=["version 4", "BIT STRING CN", "tag 0 CN"]
)
def test_malformed_x509data_certificate_is_a_chain_error(edit: Callable[[bytes], bytes]) -> None:
    # cryptography raises InvalidVersion (not a ValueError) at load, TypeError or ValueError
    # when a name is read.
    text = _certs(DRIVER)[1]
    der = base64.b64decode(b"".join(text.split()))
    data = DRIVER.replace(text, base64.b64encode(edit(der)))
    with pytest.raises(CertificateChainError, match="X509Certificate #1: not a well-formed"):
        verify_rim(data, at=AT)
