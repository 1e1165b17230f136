"""SEV-SNP evidence in trustee's serde JSON form: rebuilt byte for byte, then verified."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import errors
from confide.evidence.sev_snp import AttestationReport
from confide.evidence.sev_snp_json import report_from_serde_json
from confide.platforms import VerifyRequest, verify_request
from confide.verify.result import Platform

EVIDENCE = Path(__file__).parents[1] / "assets/sev-snp/trustee/e2e-evidence.json"
AT = datetime(2025, 7, 1, tzinfo=UTC)  # the embedded Genoa VCEK is valid from 2025-05-27


def _verify(text: bytes) -> object:
    return verify_request(VerifyRequest(evidence=text, platform=Platform.SEV_SNP, at=AT))


def test_trustee_e2e_evidence_verifies_with_its_embedded_vcek() -> None:
    """trustee's test_dynamic_evidence: the report signature verifies with the embedded VCEK."""
    v = _verify(EVIDENCE.read_bytes())
    assert v.claims["product"] == "Genoa" and v.claims["version"] == 3  # type: ignore[attr-defined]
    raw, vek = report_from_serde_json(EVIDENCE.read_bytes())
    assert AttestationReport.from_bytes(raw).to_bytes() == raw and vek is not None


@pytest.mark.parametrize("field", ["measurement", "report_data", "host_data", "chip_id"])
def test_changed_field_fails(field: str) -> None:
    doc = json.loads(EVIDENCE.read_text())
    doc["attestation_report"][field][0] ^= 1
    with pytest.raises((errors.SignatureError, errors.CertificateChainError)):
        _verify(json.dumps(doc).encode())


def test_malformed_json() -> None:
    doc = json.loads(EVIDENCE.read_text())
    doc["attestation_report"]["measurement"] = [300] * 48
    with pytest.raises(errors.ParseError, match="measurement"):
        report_from_serde_json(json.dumps(doc).encode())
    with pytest.raises(errors.ParseError):
        report_from_serde_json(b"{")


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_only_raises_parse_error(value: object) -> None:
    try:
        report_from_serde_json(json.dumps({"attestation_report": value}).encode())
    except errors.ParseError:
        pass
