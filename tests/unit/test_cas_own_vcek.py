"""``confide.cas.own_vcek``: the CAS's own VCEK from AMD KDS, in a certificate table it builds
(``snp_certs.build_cert_table``). End to end (configfs-tsm, the fake KDS, ``cas attest``):
test_cas_self_attest.py."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from snp_fakes import AT, cert_table, make_fake_amd

from confide import errors
from confide.cas.kds import KdsVcekCache
from confide.cas.own_vcek import with_kds_vcek
from confide.cas.verifier import PlatformVerifier
from confide.collateral.amd_kds import AmdCollateral, AmdCollateralRequest
from confide.evidence.snp_certs import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table, parse_cert_table
from confide.verify.result import Platform
from confide.verify.sev_snp import VekKind

AMD = make_fake_amd()
_DER = Encoding.DER


class Source:
    """An AMD KDS in memory that serves ``AMD``'s VCEK (and ``crl``, DER) and records the requests."""

    def __init__(self, crl: bytes | None = None) -> None:
        self.requests: list[AmdCollateralRequest] = []
        self.crl = crl

    def fetch(self, request: AmdCollateralRequest) -> AmdCollateral:
        self.requests.append(request)
        return AmdCollateral(AMD.vek.public_bytes(_DER), AMD.chain_pem(), self.crl)


def _document(report: bytes, aux: dict[str, bytes] | None = None) -> dict[str, Any]:
    return {
        "platform": "sev-snp",
        "evidence": base64.b64encode(report).decode(),
        "aux": {k: base64.b64encode(v).decode() for k, v in (aux or {}).items()},
        "provider": "configfs-tsm/sev_guest",
    }


def _cache() -> tuple[KdsVcekCache, Source]:
    source = Source()
    return KdsVcekCache(source, None, AMD.roots()), source


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.uuids(), st.binary(min_size=1, max_size=64)), max_size=8, unique_by=lambda e: e[0])
)
def test_build_cert_table_is_what_parse_reads(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    entries = [(g, der) for g, der in entries if g.int != 0]
    table = build_cert_table(dict(entries))
    assert table == cert_table(entries)  # the layout of the tests' (independent) writer
    assert parse_cert_table(table) == dict(entries)


def test_build_cert_table_refuses_what_parse_would() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        build_cert_table({uuid.UUID(int=i + 1): b"x" for i in range(65)})
    with pytest.raises(ValueError, match="non-zero GUID"):
        build_cert_table({uuid.UUID(int=0): b"x"})
    with pytest.raises(ValueError, match="non-zero GUID"):
        build_cert_table({VCEK_GUID: b""})


def test_the_vcek_and_chain_are_attached_as_a_certificate_table() -> None:
    cache, source = _cache()
    document = _document(AMD.sign(AMD.report()))
    out = with_kds_vcek(document, cache, AT)
    assert len(source.requests) == 1 and document["aux"] == {}  # the input is not changed
    table = parse_cert_table(base64.b64decode(out["aux"]["auxblob"]))
    assert table == {
        VCEK_GUID: AMD.vek.public_bytes(_DER),
        ASK_GUID: AMD.ask.public_bytes(_DER),
        ARK_GUID: AMD.ark.public_bytes(_DER),
    }
    assert {k: v for k, v in out.items() if k != "aux"} == {k: v for k, v in document.items() if k != "aux"}


def test_the_crl_the_chain_was_verified_with_is_published_when_the_kds_served_one() -> None:
    assert "amd_crl" not in with_kds_vcek(_document(AMD.sign(AMD.report())), _cache()[0], AT)  # none served
    crl = AMD.crl().public_bytes(_DER)
    source = Source(crl)
    out = with_kds_vcek(_document(AMD.sign(AMD.report())), KdsVcekCache(source, None, AMD.roots()), AT)
    assert base64.b64decode(out["amd_crl"]) == crl
    revoking = Source(AMD.crl(revoked_serials=(AMD.ask.serial_number,)).public_bytes(_DER))
    with pytest.raises(errors.RevocationError, match=r"own SEV-SNP report .* revoked by the AMD CRL"):
        with_kds_vcek(_document(AMD.sign(AMD.report())), KdsVcekCache(revoking, None, AMD.roots()), AT)


def test_other_platforms_and_documents_with_a_vcek_are_unchanged() -> None:
    cache, source = _cache()
    tdx = {"platform": "tdx", "evidence": "AAAA", "aux": {}}
    assert with_kds_vcek(tdx, cache, AT) is tdx
    with_table = _document(AMD.sign(AMD.report()), {"auxblob": cert_table([(VCEK_GUID, b"vcek")])})
    assert with_kds_vcek(with_table, cache, AT) is with_table
    assert source.requests == []


@pytest.mark.parametrize(
    "document",
    [
        {"platform": "sev-snp", "evidence": "not base64!", "aux": {}},
        {"platform": "sev-snp", "aux": {}},
        {"platform": "sev-snp", "evidence": "AAAA", "aux": {"auxblob": "not base64!"}},
        {"platform": "sev-snp", "evidence": "AAAA", "aux": []},
    ],
)
def test_a_malformed_document_is_a_parse_error(document: dict[str, Any]) -> None:
    cache, source = _cache()
    with pytest.raises(errors.ParseError):
        with_kds_vcek(document, cache, AT)
    assert source.requests == []


def test_a_report_the_kds_cannot_be_asked_for_is_refused_without_asking() -> None:
    cache, source = _cache()
    masked = _document(AMD.sign(AMD.report(chip_id=bytes(64))))
    with pytest.raises(errors.CollateralMissingError, match=r"--kds could not supply it: .*MASK_CHIP_ID"):
        with_kds_vcek(masked, cache, AT)
    vlek = make_fake_amd(kind=VekKind.VLEK)
    with pytest.raises(errors.CollateralMissingError, match="VLEK"):
        with_kds_vcek(_document(vlek.sign(vlek.report())), cache, AT)
    assert source.requests == []


def test_a_kds_vcek_that_does_not_verify_is_refused_with_its_class() -> None:
    other = make_fake_amd(chip_id=bytes(64 - i for i in range(64)))  # another chip's VCEK
    cache, _source = _cache()
    with pytest.raises(errors.CertificateChainError, match=r"own SEV-SNP report .* another chip"):
        with_kds_vcek(_document(other.sign(other.report())), cache, AT)


def test_an_amd_crl_is_taken_for_a_sent_vcek_only() -> None:
    """``PlatformVerifier.verify(snp_crl=)`` (what ``cas attest`` passes) checks the chain of a
    sent VEK; with other evidence, or a VCEK the verifier fetches (with its own CRL), it is a
    usage error, not ignored."""
    crl = AMD.crl(revoked_serials=(AMD.ask.serial_number,))
    report = AMD.sign(AMD.report())
    verifier = PlatformVerifier(amd_roots=AMD.roots(), kds=Source())
    with pytest.raises(errors.RevocationError, match="revoked by the AMD CRL"):
        verifier.verify(Platform.SEV_SNP, report, {"vcek": AMD.vek.public_bytes(_DER)}, at=AT, snp_crl=crl)
    with pytest.raises(errors.UsageError, match="sent VCEK/VLEK only"):
        verifier.verify(Platform.SEV_SNP, report, {}, at=AT, snp_crl=crl)
    with pytest.raises(errors.UsageError, match="sev-snp evidence only, got nvidia-gpu"):
        verifier.verify(Platform.NVIDIA_GPU, b"", {}, at=AT, snp_crl=crl)
