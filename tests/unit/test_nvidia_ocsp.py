"""OCSP revocation checks of NVIDIA GPU chains: a fake responder on 127.0.0.1 answering with
responses signed under the forged test PKI (``nvidia_forge``), then stored responses, then the CLI."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from cli import run_confide
from confide.collateral.nvidia_ocsp import DirOcspSource, HttpOcspSource, fetch_all
from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralMissingError,
    ConfideError,
    NetworkError,
    ParseError,
    RevocationError,
    SignatureError,
    UsageError,
)
from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from confide.evidence.nvidia_rim import ReferenceManifest
from confide.platforms import VerifyRequest
from confide.platforms.nvidia import verify_request
from confide.verify.nvidia import ocsp_targets, verify_nvidia_report
from confide.verify.ocsp import MAX_RESPONSE_SIZE, OcspResponse, ocsp_request_der, verify_ocsp_response
from confide.verify.result import Platform
from malformed_x509 import bad_name_tag, bitstring_cn
from nvidia_forge import Issuer, make_ca, make_leaf, make_responder, ocsp_response, resign
from ocsp_responder import Behaviour, FakeOcsp
from rim_pki import make_pki as make_rim_pki
from rim_pki import rim_matching_report

ASSETS = Path(__file__).parent.parent / "assets" / "nvidia"
REPORT = bytes.fromhex((ASSETS / "hopperAttestationReport.txt").read_text().strip())
NOW = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Pki:
    """root → ICA → BROM-like CA → GPU leaf: OCSP covers the BROM and the ICA (not the leaf)."""

    root: Issuer
    ica: Issuer
    brom: Issuer
    leaf: Issuer
    report: bytes

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf[0], self.brom[0], self.ica[0], self.root[0]]

    def issuer_of(self, cert: x509.Certificate) -> Issuer:
        return {self.brom[0]: self.ica, self.ica[0]: self.root}[cert]


@pytest.fixture(scope="module")
def pki() -> Pki:
    fwid = NvidiaAttestationReport.from_bytes(REPORT).response.field(OpaqueFieldType.FWID)
    root = make_ca("Test Device Identity CA", NOW)
    ica = make_ca("Test ICA", NOW, root)
    brom = make_ca("Test GSP BROM", NOW, ica)
    leaf = make_leaf(brom, fwid, NOW)
    return Pki(root, ica, brom, leaf, resign(REPORT, leaf[1]))


@pytest.fixture
def responder(pki: Pki) -> Iterator[FakeOcsp]:
    server = FakeOcsp({c.serial_number: (c, pki.issuer_of(c)) for c in (pki.brom[0], pki.ica[0])}).start()
    try:
        yield server
    finally:
        server.stop()


def good(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
    """What an honest responder answers: signed by the issuer, echoing the nonce."""
    return 200, ocsp_response(
        cert, issuer[0], issuer, this_update=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=1),
        nonce=nonce,
    )  # fmt: skip


def answer(signer: Issuer | Callable[[Issuer], Issuer] | None = None, **changes: object) -> Behaviour:
    """``good`` with keyword changes to :func:`nvidia_forge.ocsp_response`; ``signer`` is an
    issuer, or a function of the certificate's issuer (default: the issuer itself)."""

    def behaviour(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        args: dict[str, object] = {
            "this_update": NOW - timedelta(hours=1), "next_update": NOW + timedelta(days=1), "nonce": nonce,
        }  # fmt: skip
        args.update(changes)
        s = issuer if signer is None else signer(issuer) if callable(signer) else signer
        return 200, ocsp_response(cert, issuer[0], s, **args)  # type: ignore[arg-type]

    return behaviour


def verify_via_http(pki: Pki, server: FakeOcsp, at: datetime = NOW):  # type: ignore[no-untyped-def]
    with HttpOcspSource(server.url) as source:
        responses = fetch_all(source, ocsp_targets(pki.chain))
    return verify_nvidia_report(pki.report, pki.chain, at=at, root=pki.root[0], ocsp=responses)


def test_good_responses_verify_and_the_claims_say_checked(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = good
    result = verify_via_http(pki, responder)
    assert result.claims["revocation_checked"] is True
    checks = result.details["ocsp"]
    assert isinstance(checks, list) and [c["subject"] for c in checks] == ["Test GSP BROM", "Test ICA"]  # type: ignore[index]
    assert all(c["status"] == "good" and c["nonce_checked"] is True for c in checks)  # type: ignore[index]
    # One POST per certificate between the leaf and the root, in chain order, as RFC 6960 A.1 says.
    assert responder.requests == [
        ("application/ocsp-request", pki.brom[0].serial_number),
        ("application/ocsp-request", pki.ica[0].serial_number),
    ]
    # Without OCSP the claims say revocation was not checked.
    plain = verify_nvidia_report(pki.report, pki.chain, at=NOW, root=pki.root[0])
    assert plain.claims["revocation_checked"] is False and plain.details["ocsp"] == []


def test_delegated_responder_with_ocsp_signing_is_accepted(pki: Pki, responder: FakeOcsp) -> None:
    delegated = {id(i): make_responder(i, NOW) for i in (pki.ica, pki.root)}
    responder.behaviour = answer(signer=lambda issuer: delegated[id(issuer)], carry=True)
    result = verify_via_http(pki, responder)
    checks = result.details["ocsp"]
    assert isinstance(checks, list)
    assert all(c["delegated_responder"] is True and c["responder"] == "Test OCSP Responder" for c in checks)  # type: ignore[index]


def test_revoked_is_a_revocation_error(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = answer(status=ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(RevocationError, match=r"'Test GSP BROM' .* is revoked since .*keyCompromise") as info:
        verify_via_http(pki, responder)
    assert info.value.exit_code == 23


def test_unknown_status_is_a_revocation_error(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = answer(status=ocsp.OCSPCertStatus.UNKNOWN)
    with pytest.raises(RevocationError, match="status UNKNOWN, expected GOOD"):
        verify_via_http(pki, responder)


def test_response_signed_by_a_wrong_key_is_refused(pki: Pki, responder: FakeOcsp) -> None:
    stranger = make_ca("Test ICA", NOW)  # same name, another key
    # The responder id names the issuer (by name), the signature is the stranger's.
    responder.behaviour = answer(signer=stranger, by_name=True)
    with pytest.raises(SignatureError, match="signature does not verify with the key of 'Test ICA'"):
        verify_via_http(pki, responder)
    # The responder id names the stranger, carried in the response: not issued by the issuer.
    responder.behaviour = answer(signer=stranger, carry=True)
    with pytest.raises(CertificateChainError, match=r"not issued by|does not verify"):
        verify_via_http(pki, responder)
    # Not carried: nobody known signed it.
    responder.behaviour = answer(signer=stranger)
    with pytest.raises(CertificateChainError, match="neither 'Test ICA' nor a certificate carried"):
        verify_via_http(pki, responder)


def test_delegated_responder_must_be_authorized(pki: Pki, responder: FakeOcsp) -> None:
    no_eku = {id(i): make_responder(i, NOW, eku=False) for i in (pki.ica, pki.root)}
    responder.behaviour = answer(signer=lambda issuer: no_eku[id(issuer)], carry=True)
    with pytest.raises(CertificateChainError, match="lacks extended key usage id-kp-OCSPSigning"):
        verify_via_http(pki, responder)
    # Issued by the root for a certificate the ICA issued: not the issuer's delegate.
    by_root = make_responder(pki.root, NOW)
    responder.behaviour = answer(signer=by_root, carry=True)
    with pytest.raises(CertificateChainError, match="was not issued by 'Test ICA'"):
        verify_via_http(pki, responder)
    # An expired delegate (the BROM certificate is still valid 31 days on).
    later = NOW + timedelta(days=31)
    delegate = make_responder(pki.ica, NOW)
    der = ocsp_response(
        pki.brom[0],
        pki.ica[0],
        delegate,
        this_update=later,
        next_update=later + timedelta(days=1),
        carry=True,
    )
    with pytest.raises(CertificateChainError, match="Test OCSP Responder' expired"):
        verify_ocsp_response(OcspResponse(der), pki.brom[0], pki.ica[0], at=later)


def test_response_for_another_certificate_is_refused(pki: Pki, responder: FakeOcsp) -> None:
    def other(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        return good(pki.leaf[0], pki.brom, nonce)  # about the leaf, whatever was asked

    responder.behaviour = other
    with pytest.raises(CollateralError, match=r"for serial .* of another issuer or certificate"):
        verify_via_http(pki, responder)


@pytest.mark.parametrize(
    ("this_update", "next_update", "message"),
    [
        (NOW - timedelta(days=2), NOW - timedelta(days=1), "nextUpdate .* is not after"),
        (NOW - timedelta(days=2), NOW, "nextUpdate .* is not after"),
        (NOW + timedelta(hours=1), NOW + timedelta(days=1), "thisUpdate .* is after"),
    ],
)
def test_response_outside_its_validity_is_refused(
    pki: Pki, responder: FakeOcsp, this_update: datetime, next_update: datetime, message: str
) -> None:
    responder.behaviour = answer(this_update=this_update, next_update=next_update)
    with pytest.raises(CollateralExpiredError, match=message):
        verify_via_http(pki, responder)


def test_wrong_or_missing_nonce_is_refused(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = answer(nonce=bytes(32))
    with pytest.raises(CollateralError, match="is not the request's"):
        verify_via_http(pki, responder)
    responder.behaviour = answer(nonce=None)
    with pytest.raises(CollateralError, match="the response has none"):
        verify_via_http(pki, responder)


def test_malformed_oversized_and_unsuccessful_responses(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = lambda cert, issuer, nonce: (200, b"\x30\x03\x0a\x01")
    with pytest.raises(ParseError, match="not a DER OCSP response"):
        verify_via_http(pki, responder)
    responder.behaviour = lambda cert, issuer, nonce: (200, b"\x30" * (MAX_RESPONSE_SIZE + 1))
    with pytest.raises(ParseError, match=f"more than {MAX_RESPONSE_SIZE}"):
        verify_via_http(pki, responder)
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    responder.behaviour = lambda cert, issuer, nonce: (200, unauthorized.public_bytes(Encoding.DER))
    with pytest.raises(CollateralError, match="responseStatus UNAUTHORIZED, expected SUCCESSFUL"):
        verify_via_http(pki, responder)


def test_http_errors_are_network_errors_never_good(pki: Pki, responder: FakeOcsp) -> None:
    responder.behaviour = lambda cert, issuer, nonce: (500, b"oops")
    with pytest.raises(NetworkError, match="got HTTP 500, expected 200"):
        verify_via_http(pki, responder)
    dead = responder.url
    responder.stop()
    with HttpOcspSource(dead, timeout=2) as source, pytest.raises(NetworkError, match="ConnectError"):
        source.fetch(pki.brom[0], pki.ica[0])


def test_every_flipped_byte_of_a_response_is_refused(pki: Pki) -> None:
    cert, issuer = pki.brom[0], pki.ica
    nonce = b"\x42" * 32
    der = ocsp_response(
        cert, issuer[0], issuer, this_update=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=1),
        nonce=nonce,
    )  # fmt: skip
    assert verify_ocsp_response(OcspResponse(der, nonce), cert, issuer[0], at=NOW).subject == "Test GSP BROM"
    # The one byte skipped: the signature BIT STRING's unused-bits count (the last element here,
    # no certificates carried). cryptography reads the same signature bytes whatever that count,
    # so flipping it changes neither what is signed nor the signature.
    unused_bits_octet = len(der) - len(ocsp.load_der_ocsp_response(der).signature) - 1
    assert der[unused_bits_octet - 2] == 0x03 and der[unused_bits_octet] == 0
    for pos in range(len(der)):
        if pos == unused_bits_octet:
            continue
        bad = bytearray(der)
        bad[pos] ^= 0x01
        with pytest.raises(ConfideError):
            verify_ocsp_response(OcspResponse(bytes(bad), nonce), cert, issuer[0], at=NOW)


def test_request_carries_sha384_certid_and_nonce(pki: Pki) -> None:
    req = ocsp.load_der_ocsp_request(ocsp_request_der(pki.brom[0], pki.ica[0], b"\x01" * 32))
    assert req.hash_algorithm.name == "sha384" and req.serial_number == pki.brom[0].serial_number
    ext = req.extensions.get_extension_for_class(x509.OCSPNonce)
    assert ext.value.nonce == b"\x01" * 32 and ext.critical


def test_wrong_number_of_responses_is_refused(pki: Pki) -> None:
    with pytest.raises(CollateralMissingError, match="got 1 responses, expected 2"):
        verify_nvidia_report(pki.report, pki.chain, at=NOW, root=pki.root[0], ocsp=[OcspResponse(b"")])


def _store(pki: Pki, directory: Path, *, next_update: datetime | None = NOW + timedelta(days=1)) -> None:
    directory.mkdir(exist_ok=True)
    for cert, issuer in ocsp_targets(pki.chain):
        signer = pki.issuer_of(cert)
        assert signer[0] == issuer
        der = ocsp_response(
            cert, issuer, signer, this_update=NOW - timedelta(hours=1), next_update=next_update
        )
        (directory / f"{cert.serial_number:x}.der").write_bytes(der)


def _request(pki: Pki, tmp_path: Path, ocsp_location: str) -> VerifyRequest:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in pki.chain))
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root[0].public_bytes(Encoding.PEM))
    return VerifyRequest(
        evidence=pki.report,
        platform=Platform.NVIDIA_GPU,
        at=NOW,
        cert_chain=chain,
        root=root,
        ocsp=ocsp_location,
    )


def test_stored_responses_from_a_directory(pki: Pki, tmp_path: Path) -> None:
    stored = tmp_path / "ocsp"
    _store(pki, stored)
    result = verify_request(_request(pki, tmp_path, str(stored)))
    assert result.claims["revocation_checked"] is True
    checks = result.details["ocsp"]
    assert isinstance(checks, list) and all(c["nonce_checked"] is False for c in checks)  # type: ignore[index]
    # A stored response without nextUpdate has no bound on its age: refused.
    _store(pki, stored, next_update=None)
    with pytest.raises(CollateralExpiredError, match="no nextUpdate and no nonce"):
        verify_request(_request(pki, tmp_path, str(stored)))
    (stored / f"{pki.ica[0].serial_number:x}.der").unlink()
    with pytest.raises(CollateralMissingError, match="no OCSP response for serial"):
        DirOcspSource(stored).fetch(pki.ica[0], pki.root[0])
    with pytest.raises(UsageError, match="is not a directory"):
        verify_request(_request(pki, tmp_path, str(tmp_path / "absent")))
    # A broken chain is reported as such before any response is looked for.
    other_root = tmp_path / "other_root.pem"
    other_root.write_bytes(make_ca("Other Root", NOW)[0].public_bytes(Encoding.PEM))
    broken = dataclasses.replace(_request(pki, tmp_path, str(tmp_path / "absent")), root=other_root)
    with pytest.raises(CertificateChainError, match="pinned root"):
        verify_request(broken)


def _cli(pki: Pki, tmp_path: Path, *extra: str) -> tuple[int, dict[str, object]]:
    req = _request(pki, tmp_path, "")
    report = tmp_path / "report.bin"
    report.write_bytes(pki.report)
    assert req.cert_chain is not None and req.root is not None
    proc = run_confide(
        "evidence", "verify", report, "--platform", "nvidia-gpu", "--cert-chain", req.cert_chain,
        "--root", req.root, "--at", "2025-01-01T00:00:00Z", "--json", *extra,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout)


def test_cli_checks_revocation_with_a_responder(pki: Pki, responder: FakeOcsp, tmp_path: Path) -> None:
    responder.behaviour = good
    code, out = _cli(pki, tmp_path, "--ocsp", responder.url)
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict) and claims["revocation_checked"] is True
    responder.behaviour = answer(status=ocsp.OCSPCertStatus.REVOKED)
    code, out = _cli(pki, tmp_path, "--ocsp", responder.url)
    assert (code, out["verified"]) == (23, False), out
    code, out = _cli(pki, tmp_path)
    assert code == 0 and out["claims"]["revocation_checked"] is False  # type: ignore[index]


def test_cli_refuses_ocsp_for_other_platforms(tmp_path: Path) -> None:
    report = tmp_path / "sim.bin"
    report.write_bytes(b"CONFIDE-SIM")
    proc = run_confide("evidence", "verify", report, "--platform", "sev-snp", "--ocsp", "http://x/", "--json")
    assert proc.returncode == 2, proc.stdout
    assert "--ocsp is only for --platform nvidia-gpu" in proc.stdout


# --- the RIM signing chain -----------------------------------------------------------------------

RIM_PKI = make_rim_pki()
DRIVER_RIM = (ASSETS / "Driver_RIM_test_no_gpu.swidtag").read_bytes()


def _store_rim(directory: Path, *, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD) -> None:
    """Responses about the RIM signer (by the ICA) and the ICA (by the root)."""
    links = [
        (RIM_PKI.leaf, (RIM_PKI.ica, RIM_PKI.ica_key), status),
        (RIM_PKI.ica, (RIM_PKI.root, RIM_PKI.root_key), ocsp.OCSPCertStatus.GOOD),
    ]
    for cert, signer, cert_status in links:
        der = ocsp_response(
            cert, signer[0], signer, this_update=NOW - timedelta(hours=1), next_update=NOW + timedelta(days=1),
            status=cert_status,
        )  # fmt: skip
        (directory / f"{cert.serial_number:x}.der").write_bytes(der)


def _rim_request(pki: Pki, tmp_path: Path, stored: Path) -> VerifyRequest:
    rim = tmp_path / "driver.swidtag"
    rim.write_bytes(rim_matching_report(pki.report, DRIVER_RIM, "550.90.07", RIM_PKI))
    rim_root = tmp_path / "rim_root.pem"
    rim_root.write_bytes(RIM_PKI.root.public_bytes(Encoding.PEM))
    return dataclasses.replace(_request(pki, tmp_path, str(stored)), collateral=rim, rim_root=rim_root)


def test_rim_signing_chain_is_checked_too(pki: Pki, tmp_path: Path) -> None:
    stored = tmp_path / "ocsp"
    _store(pki, stored)
    _store_rim(stored)
    result = verify_request(_rim_request(pki, tmp_path, stored))
    assert result.claims["revocation_checked"] is True
    assert result.claims["rim_revocation_checked"] is True
    rims = result.details["rims"]
    assert isinstance(rims, list)
    checks = rims[0]["ocsp"]  # type: ignore[index]
    assert [c["subject"] for c in checks] == ["Test RIM Signer", "Test RIM ICA"]  # type: ignore[index,union-attr]
    # A revoked RIM signer refuses the RIM, and so the evidence.
    _store_rim(stored, status=ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(RevocationError, match=r"'Test RIM Signer' .* is revoked"):
        verify_request(_rim_request(pki, tmp_path, stored))
    # A missing response for the RIM chain is missing collateral, not a pass.
    (stored / f"{RIM_PKI.ica.serial_number:x}.der").unlink()
    with pytest.raises(CollateralMissingError, match="no OCSP response for serial"):
        verify_request(_rim_request(pki, tmp_path, stored))


def test_rim_ocsp_needs_one_list_per_rim(pki: Pki) -> None:
    rim = ReferenceManifest.from_bytes(rim_matching_report(pki.report, DRIVER_RIM, "550.90.07", RIM_PKI))
    with pytest.raises(CollateralMissingError, match="responses for 0 RIMs, expected 1"):
        verify_nvidia_report(
            pki.report, pki.chain, at=NOW, root=pki.root[0], rims=[rim], rim_root=RIM_PKI.root, rim_ocsp=[]
        )
    with pytest.raises(CollateralMissingError, match="got 0 responses, expected 2"):
        verify_nvidia_report(
            pki.report, pki.chain, at=NOW, root=pki.root[0], rims=[rim], rim_root=RIM_PKI.root, rim_ocsp=[[]]
        )


@pytest.mark.parametrize(
    ("carry", "edit"),
    [(False, bad_name_tag), (False, bitstring_cn), (True, bad_name_tag), (True, bitstring_cn)],
    ids=["byName tag 0", "byName BIT STRING", "carried tag 0", "carried BIT STRING"],
)
def test_malformed_responder_name_or_carried_certificate_is_a_parse_error(
    pki: Pki, carry: bool, edit: Callable[[bytes], bytes]
) -> None:
    """cryptography parses the responder ID and the carried certificates lazily: a malformed
    one raised ValueError/TypeError (found by the mutation campaign)."""
    signer = make_responder(pki.ica, NOW) if carry else pki.ica
    der = ocsp_response(
        pki.brom[0], pki.ica[0], signer, this_update=NOW - timedelta(hours=1),
        next_update=NOW + timedelta(days=1), carry=carry, by_name=not carry,
    )  # fmt: skip
    assert verify_ocsp_response(OcspResponse(der), pki.brom[0], pki.ica[0], at=NOW).delegated is carry
    with pytest.raises(ParseError, match="not a DER OCSP response"):
        verify_ocsp_response(OcspResponse(edit(der)), pki.brom[0], pki.ica[0], at=NOW)
