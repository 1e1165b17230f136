"""A GCE Confidential VM's hardware report in go-tpm-tools' ``attest.Attestation`` (fields 8 and 9).

Real signed reports go through the structured protobufs (go-sev-guest ``sevsnp.Attestation``,
go-tdx-guest ``tdx.QuoteV4``) and back: the rebuild must be byte-exact, or AMD's / Intel's
signature fails. The real AMD Milan report of go-sev-guest (``attestation.bin``, VCEK
``vcek.testcer``) and the real GCE TDX quote of go-tdx-guest (``cos-113-tdx-quote.dat``, DCAP
collateral of Feb 2025) are put into an attestation whose vTPM quote is an swtpm's under the test
Google PKI (``tests/gce_fakes.py``), with the nonce the report was made for."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import (
    BindingError,
    CollateralMissingError,
    ConfideError,
    ParseError,
    SignatureError,
    UsageError,
)
from confide.evidence._protobuf import WIRE_LEN, encode_field, parse_message
from confide.evidence.dcap import Quote
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.gce_tee import (
    cpuid_from_fms,
    encode_sev_snp_attestation,
    encode_tdx_quote,
    fms_from_cpuid,
    parse_sev_snp_attestation,
    parse_tdx_quote,
)
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.platforms.sev_snp import embedded_verifier
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from confide.verify.dcap import DcapVerifier
from confide.verify.gce_tpm import GceTeeCollateral, tee_report_data, verify_gce_attestation
from confide.verify.sev_snp import load_certificates
from gce_fakes import FakeGoogle, clear_gce_indices, provision_gce_vtpm

ASSETS = Path(__file__).parent.parent / "assets"
SNP_REPORT = (ASSETS / "sev-snp" / "google-go-sev-guest" / "attestation.bin").read_bytes()
VCEK = (ASSETS / "sev-snp" / "google-go-sev-guest" / "vcek.testcer").read_bytes()
TDX_QUOTE = (ASSETS / "tdx" / "google-go-tdx-guest" / "cos-113-tdx-quote.dat").read_bytes()
TDX_NONCE = (ASSETS / "tdx" / "google-go-tdx-guest" / "nonce.dat").read_bytes()
TDX_COLLATERAL = DcapCollateral.from_dcap_qvl_json(
    (ASSETS / "tdx" / "automata-dcap-rs" / "collateral_2025-02.dcapqvl.json").read_bytes()
)
SNP_AT = datetime(2025, 1, 1, tzinfo=UTC)  # VCEK 2022-09-24..2029-09-24, test AK PKI from 2024
TDX_AT = datetime(2025, 2, 13, 3, 51, 41, tzinfo=UTC)  # inside the collateral's window
SNP_NONCE = SNP_REPORT[0x50:0x90]  # 0102030405, zero-filled: go-tpm-tools' default TEENonce
GOOGLE = FakeGoogle.make()


def snp_ctx() -> GceTeeCollateral:
    return GceTeeCollateral(snp=embedded_verifier())


def tdx_ctx() -> GceTeeCollateral:
    return GceTeeCollateral(dcap=DcapVerifier(), tdx_collateral=TDX_COLLATERAL)


@pytest.fixture
def vtpm(swtpm_tpm: Tpm) -> Iterator[Callable[[bytes], bytes]]:
    """Attestations (no TEE field) from the session's swtpm, provisioned like a GCE vTPM."""
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
    try:
        yield lambda nonce: provider.get_evidence(nonce).raw
    finally:
        clear_gce_indices(swtpm_tpm)


def verify(raw: bytes, at: datetime, ctx: GceTeeCollateral | None, nonce: bytes | None = None) -> dict:  # type: ignore[type-arg]
    return dict(verify_gce_attestation(raw, at=at, roots=[GOOGLE.root], tee=ctx, expected_nonce=nonce).claims)


# -- the rebuild ---------------------------------------------------------------------------------


def test_the_real_snp_report_round_trips_through_the_structured_proto() -> None:
    pb = encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK)
    att = parse_sev_snp_attestation(pb)
    assert att.report == SNP_REPORT and att.vcek == VCEK and att.vlek is None
    # and AMD's signature verifies over the rebuilt bytes (embedded, pinned Milan ARK)
    result = embedded_verifier().verify(att.report, VCEK, at=SNP_AT)
    assert result.claims["measurement"] == SNP_REPORT[0x90:0xC0].hex()


def test_the_real_gce_tdx_quote_round_trips_through_the_structured_proto() -> None:
    # 8000 bytes: the quote, then the zero padding of go-tdx-guest's buffer (extra_bytes)
    assert parse_tdx_quote(encode_tdx_quote(TDX_QUOTE)).quote == TDX_QUOTE


def test_extra_bytes_must_be_zero_padding() -> None:
    # go-tdx-guest's SPR sample has bytes after its signature data that are not zeros: signed by
    # nothing, they are refused rather than carried along
    raw = (ASSETS / "tdx" / "google-go-tdx-guest" / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    with pytest.raises(ParseError, match=r"extra_bytes.*zero padding"):
        parse_tdx_quote(encode_tdx_quote(raw))
    trimmed = raw[: len(raw) - len(Quote.from_bytes(raw).trailing)]
    assert parse_tdx_quote(encode_tdx_quote(trimmed)).quote == trimmed


def test_cpuid_family_model_stepping() -> None:
    # Genoa: family 19h model 11h stepping 1 (AMD CPUID Fn0000_0001_EAX)
    assert fms_from_cpuid(0x00A10F11) == (0x19, 0x11, 1)
    assert cpuid_from_fms(0x19, 0x11, 1) == 0x00A10F11
    assert cpuid_from_fms(*fms_from_cpuid(0x00B00F21)) == 0x00B00F21  # Turin, 1Ah


def _report_fields(pb: bytes) -> dict[int, int | bytes]:
    report = parse_message(pb, {1: (WIRE_LEN, False), 2: (WIRE_LEN, False)}, "t").bytes_(1)
    out: dict[int, int | bytes] = {}
    from confide.evidence._protobuf import _records

    for f in _records(report, "t", 0):
        out[f.number] = f.value
    return out


def _snp_pb(fields: dict[int, int | bytes], vcek: bytes = VCEK) -> bytes:
    body = b"".join(encode_field(n, v) for n, v in sorted(fields.items()))
    return encode_field(1, body) + encode_field(2, encode_field(1, vcek))


SNP_FIELDS = _report_fields(encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK))


@pytest.mark.parametrize("number", sorted(range(1, 32)))
def test_every_tampered_snp_field_is_refused(number: int) -> None:
    fields = dict(SNP_FIELDS)
    value = fields.get(number, 0)
    if isinstance(value, bytes):
        fields[number] = bytes([value[0] ^ 1]) + value[1:]
    else:
        fields[number] = value ^ 1
    with pytest.raises(ConfideError):
        att = parse_sev_snp_attestation(_snp_pb(fields))
        embedded_verifier().verify(att.report, VCEK, at=SNP_AT)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (encode_field(32, 1), "unknown field 32"),
        (encode_field(12, bytes(48)), "field 12 occurs more than once"),
        (encode_field(2, b"\x01"), "wire type"),
    ],
)
def test_the_snp_report_proto_is_read_strictly(extra: bytes, match: str) -> None:
    body = b"".join(encode_field(n, v) for n, v in sorted(SNP_FIELDS.items())) + extra
    with pytest.raises(ParseError, match=match):
        parse_sev_snp_attestation(encode_field(1, body))


def test_wrong_lengths_and_ranges_are_refused() -> None:
    for number, value, match in (
        (11, bytes(63), "report_data.*got 63 bytes, expected 64"),
        (28, bytes(511), "signature.*expected 512"),
        (21, 256, "current_build.*8-bit"),
        (29, 0x00A10F11, "expected 0 \\(no CPUID fields before v3\\)"),
    ):
        fields = {**SNP_FIELDS, number: value}
        with pytest.raises(ParseError, match=match):
            parse_sev_snp_attestation(_snp_pb(fields))
    with pytest.raises(ParseError, match="unknown field 9"):
        parse_sev_snp_attestation(encode_field(1, b"") + encode_field(9, b""))
    with pytest.raises(ParseError, match=r"report.*missing"):
        parse_sev_snp_attestation(b"")


def test_a_v3_report_needs_a_canonical_cpuid() -> None:
    fields = {**SNP_FIELDS, 1: 3, 29: 0x00A10F11 | 1 << 28}  # a reserved bit
    with pytest.raises(ParseError, match="canonical CPUID"):
        parse_sev_snp_attestation(_snp_pb(fields))


def test_a_report_with_reserved_bytes_cannot_be_encoded() -> None:
    raw = bytearray(SNP_REPORT)
    raw[0x4C] = 1
    with pytest.raises(ParseError, match="reserved bytes"):
        encode_sev_snp_attestation(bytes(raw))


TDX_PB = encode_tdx_quote(TDX_QUOTE)


def _tdx_leaves(pb: bytes, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], int | bytes]]:
    """Every scalar field of the QuoteV4 (nested messages walked), with its path."""
    from confide.evidence._protobuf import _records

    messages = {(2,), (1,), (4,), (4, 3), (4, 3, 3), (4, 3, 3, 1), (4, 3, 3, 3), (4, 3, 3, 4)}
    for f in _records(pb, "t", 0):
        here = (*path, f.number)
        if here in messages:
            assert isinstance(f.value, bytes)
            yield from _tdx_leaves(f.value, here)
        else:
            yield here, f.value


def _tdx_replace(
    pb: bytes, target: tuple[int, ...], occurrence: int, new: int | bytes, depth: int = 0
) -> bytes:
    from confide.evidence._protobuf import _records

    out = b""
    seen = 0
    for f in _records(pb, "t", 0):
        if f.number == target[depth] and depth + 1 < len(target):
            assert isinstance(f.value, bytes)
            out += encode_field(f.number, _tdx_replace(f.value, target, occurrence, new, depth + 1))
        elif f.number == target[depth]:
            out += encode_field(f.number, new if seen == occurrence else f.value)
            seen += 1
        else:
            out += encode_field(f.number, f.value)
    return out


TDX_LEAVES = list(_tdx_leaves(TDX_PB))


@pytest.mark.parametrize("index", range(len(TDX_LEAVES)), ids=lambda i: ".".join(map(str, TDX_LEAVES[i][0])))
def test_every_tampered_tdx_field_is_refused(index: int) -> None:
    path, value = TDX_LEAVES[index]
    occurrence = sum(1 for p, _ in TDX_LEAVES[:index] if p == path)
    changed = bytes([value[-1] ^ 1]).rjust(len(value), b"\x00") if isinstance(value, bytes) else value ^ 1
    if isinstance(value, bytes):
        changed = value[:-1] + bytes([value[-1] ^ 1])
    tampered = _tdx_replace(TDX_PB, path, occurrence, changed)
    with pytest.raises(ConfideError):
        att = parse_tdx_quote(tampered)
        DcapVerifier().verify_parsed(att.parsed, att.quote, TDX_COLLATERAL, at=TDX_AT)


def test_tdx_sizes_must_match() -> None:
    with pytest.raises(ParseError, match=r"signed_data_size.*declares"):
        parse_tdx_quote(_tdx_replace(TDX_PB, (3,), 0, 1))
    with pytest.raises(ParseError, match="unknown field 6"):
        parse_tdx_quote(TDX_PB + encode_field(6, 1))
    with pytest.raises(ParseError, match="rtmrs"):
        parse_tdx_quote(_tdx_replace(TDX_PB, (2, 11), 3, bytes(47)))


# -- in a GCE attestation -----------------------------------------------------------------------


def test_a_snp_confidential_vm_attestation_verifies(vtpm: Callable[[bytes], bytes]) -> None:
    raw = vtpm(SNP_NONCE) + encode_field(8, encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK))
    claims = verify(raw, SNP_AT, snp_ctx(), nonce=SNP_NONCE)
    tee = claims["tee"]
    assert tee["type"] == "sev-snp" and tee["report_data"] == SNP_NONCE.hex()
    assert tee["measurement"] == SNP_REPORT[0x90:0xC0].hex() and tee["vmpl"] == 0
    assert claims["debug"] is True  # the go-sev-guest report's policy allows debugging
    assert claims["nonce"] == SNP_NONCE.hex()


def test_the_go_tpm_tools_default_teenonce_is_the_nonce_zero_filled() -> None:
    assert tee_report_data(bytes.fromhex("0102030405")) == SNP_NONCE
    assert tee_report_data(bytes(range(70))) == bytes(range(64))


def test_a_tdx_confidential_vm_attestation_verifies(vtpm: Callable[[bytes], bytes]) -> None:
    raw = vtpm(TDX_NONCE) + encode_field(9, TDX_PB)
    result = verify_gce_attestation(raw, at=TDX_AT, roots=[GOOGLE.root], tee=tdx_ctx())
    tee = result.claims["tee"]
    assert isinstance(tee, dict) and tee["type"] == "tdx" and tee["report_data"] == TDX_NONCE.hex()
    assert result.tcb_status is not None and result.tcb_status.value == "UpToDate"
    assert result.claims["debug"] is False


def test_a_report_for_another_nonce_is_a_binding_error(vtpm: Callable[[bytes], bytes]) -> None:
    raw = vtpm(bytes(range(64))) + encode_field(8, encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK))
    with pytest.raises(BindingError, match="REPORT_DATA"):
        verify(raw, SNP_AT, snp_ctx())
    raw = vtpm(SNP_NONCE) + encode_field(9, TDX_PB)
    with pytest.raises(BindingError, match="REPORT_DATA"):
        verify(raw, TDX_AT, tdx_ctx())


def test_a_broken_tee_field_never_verifies_as_a_plain_vtpm(vtpm: Callable[[bytes], bytes]) -> None:
    plain = vtpm(SNP_NONCE)
    for field in (encode_field(8, b"\x01"), encode_field(9, encode_field(1, b"")), encode_field(8, b"")):
        with pytest.raises(ParseError):
            parse_gce_attestation(plain + field)
    both = plain + encode_field(8, encode_sev_snp_attestation(SNP_REPORT)) + encode_field(9, TDX_PB)
    with pytest.raises(ParseError, match="oneof"):
        parse_gce_attestation(both)
    signed_off = encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK)
    fields = {**SNP_FIELDS, 28: bytes(512)}
    with pytest.raises(SignatureError):
        verify(plain + encode_field(8, _snp_pb(fields)), SNP_AT, snp_ctx())
    assert signed_off  # (the untouched one verifies: test_a_snp_confidential_vm_attestation_verifies)


def test_what_verifies_the_tee_report_is_required(vtpm: Callable[[bytes], bytes]) -> None:
    no_vcek = vtpm(SNP_NONCE) + encode_field(8, encode_sev_snp_attestation(SNP_REPORT))
    with pytest.raises(CollateralMissingError, match="VCEK"):
        verify(no_vcek, SNP_AT, snp_ctx())
    # the caller's VCEK (such as AMD KDS's) stands in
    ctx = dataclasses.replace(snp_ctx(), vek=load_certificates(VCEK, "VCEK")[0])
    assert verify(no_vcek, SNP_AT, ctx)["tee"]["type"] == "sev-snp"
    with pytest.raises(CollateralMissingError, match="SEV-SNP verifier"):
        verify(no_vcek, SNP_AT, None)
    tdx = vtpm(TDX_NONCE) + encode_field(9, TDX_PB)
    with pytest.raises(CollateralMissingError, match="collateral"):
        verify(tdx, TDX_AT, GceTeeCollateral())


# -- the runtime: confide run --tee gce-tpm on a Confidential VM (configfs-tsm) -----------------


def _tdx_for(report_data: bytes) -> bytes:
    """The real GCE quote with ``report_data`` in place (the quote's signature then fails: the
    runtime does not verify it, the verifier does)."""
    at = 48 + 520  # header, then REPORTDATA at 520 in the TD report 1.0 (A.3.3)
    return TDX_QUOTE[:at] + report_data + TDX_QUOTE[at + 64 :]


def test_the_runtime_sends_the_snp_report_structured(swtpm_tpm: Tpm, tmp_path: Path) -> None:
    from snp_fakes import AT as FAKE_AT
    from snp_fakes import cert_table, make_fake_amd

    from confide.evidence.gce_tee import GceSnpAttestation
    from confide.evidence.sev_snp import Product
    from confide.evidence.snp_certs import VCEK_GUID
    from confide.runtime.quote import ConfigfsTsmQuoteProvider
    from confide.verify.sev_snp import SnpVerifier
    from quote_fakes import FakeTsm, TsmBehaviour, mounted

    amd = make_fake_amd(Product.MILAN)
    vcek = amd.vek.public_bytes(serialization.Encoding.DER)
    behaviour = TsmBehaviour(
        make_report=lambda rd: amd.sign(amd.report(report_data=rd)), auxblob=cert_table([(VCEK_GUID, vcek)])
    )
    report_data = bytes(range(64))
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        with mounted(tmp_path / "tsm" / "report", FakeTsm(behaviour)) as root:
            provider = GceTpmQuoteProvider(
                swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der],
                tee=ConfigfsTsmQuoteProvider(root),
            )  # fmt: skip
            evidence = provider.get_evidence(report_data)
    finally:
        clear_gce_indices(swtpm_tpm)
    assert evidence.provider == "gce-tpm/rsa+configfs-tsm/sev_guest"
    tee = parse_gce_attestation(evidence.raw).tee
    assert isinstance(tee, GceSnpAttestation) and tee.vcek == vcek and tee.parsed.report_data == report_data
    ctx = GceTeeCollateral(snp=SnpVerifier(amd.roots()))
    claims = verify(evidence.raw, FAKE_AT, ctx, nonce=report_data)
    assert claims["tee"]["type"] == "sev-snp" and claims["tee"]["measurement"] == "cd" * 48


def test_the_runtime_sends_the_tdx_quote_structured(swtpm_tpm: Tpm, tmp_path: Path) -> None:
    from confide.evidence.gce_tee import GceTdxAttestation
    from confide.runtime.quote import ConfigfsTsmQuoteProvider
    from quote_fakes import FakeTsm, TsmBehaviour, mounted

    behaviour = TsmBehaviour(provider="tdx_guest", make_report=_tdx_for)
    report_data = bytes(range(64))
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        with mounted(tmp_path / "tsm" / "report", FakeTsm(behaviour)) as root:
            provider = GceTpmQuoteProvider(
                swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der],
                tee=ConfigfsTsmQuoteProvider(root),
            )  # fmt: skip
            raw = provider.get_evidence(report_data).raw
    finally:
        clear_gce_indices(swtpm_tpm)
    tee = parse_gce_attestation(raw).tee
    assert isinstance(tee, GceTdxAttestation) and tee.quote == _tdx_for(report_data)
    # the binding holds; Intel's signature does not (the fake put other report data in)
    with pytest.raises(SignatureError):
        verify(raw, TDX_AT, tdx_ctx(), nonce=report_data)


def test_a_report_configfs_tsm_cannot_give_fails_the_evidence(swtpm_tpm: Tpm, tmp_path: Path) -> None:
    from confide.runtime.quote import ConfigfsTsmQuoteProvider
    from quote_fakes import FakeTsm, TsmBehaviour, mounted

    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        with mounted(tmp_path / "tsm" / "report", FakeTsm(TsmBehaviour(misplace_report_data=True))) as root:
            provider = GceTpmQuoteProvider(swtpm_tpm, event_log=None, tee=ConfigfsTsmQuoteProvider(root))
            with pytest.raises(BindingError):
                provider.get_evidence(bytes(range(64)))
        provider = GceTpmQuoteProvider(
            swtpm_tpm, event_log=None, tee=ConfigfsTsmQuoteProvider(tmp_path / "no-configfs")
        )
        with pytest.raises(UsageError, match="configfs-tsm"):
            provider.get_evidence(bytes(range(64)))
    finally:
        clear_gce_indices(swtpm_tpm)


SNP_PB = encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SNP_PB) - 1), st.integers(1, 255))
def test_a_mutated_snp_proto_never_verifies_as_another_report(at: int, xor: int) -> None:
    """Any byte of the structured proto changed: a ParseError, or a rebuilt report that must
    then be the original to verify (only confide errors escape)."""
    data = bytearray(SNP_PB)
    data[at] ^= xor
    try:
        att = parse_sev_snp_attestation(bytes(data))
        embedded_verifier().verify(att.report, att.vcek or b"", at=SNP_AT)
    except ConfideError:
        return
    assert att.report == SNP_REPORT


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(TDX_PB) - 1), st.integers(1, 255))
def test_a_mutated_tdx_proto_never_verifies_as_another_quote(at: int, xor: int) -> None:
    data = bytearray(TDX_PB)
    data[at] ^= xor
    try:
        att = parse_tdx_quote(bytes(data))
        DcapVerifier().verify_parsed(att.parsed, att.quote, TDX_COLLATERAL, at=TDX_AT)
    except ConfideError:
        return
    assert att.quote == TDX_QUOTE


def test_evidence_verify_cli(vtpm: Callable[[bytes], bytes], tmp_path: Path) -> None:
    """``confide evidence verify --platform gce-tpm``: a report with its VCEK verifies (the
    claims carry it), a TDX quote needs --collateral, options the evidence has no use for are
    refused."""
    import json

    from cli import run_confide

    root = tmp_path / "root.pem"
    root.write_bytes(GOOGLE.root.public_bytes(serialization.Encoding.PEM))
    snp = tmp_path / "snp.pb"
    snp.write_bytes(vtpm(SNP_NONCE) + encode_field(8, encode_sev_snp_attestation(SNP_REPORT, vcek=VCEK)))
    common = ("--platform", "gce-tpm", "--root", root)
    ok = run_confide("evidence", "verify", snp, *common, "--at", "2025-01-01T00:00:00Z", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["claims"]["tee"]["measurement"] == SNP_REPORT[0x90:0xC0].hex()
    tdx = tmp_path / "tdx.pb"
    tdx.write_bytes(vtpm(TDX_NONCE) + encode_field(9, TDX_PB))
    at = ("--at", "2025-02-13T03:51:41Z")
    collateral = ASSETS / "tdx" / "automata-dcap-rs" / "collateral_2025-02.dcapqvl.json"
    verified = run_confide("evidence", "verify", tdx, *common, *at, "--collateral", collateral)
    assert verified.returncode == 0, verified.stderr
    missing = run_confide("evidence", "verify", tdx, *common, *at, drop=("CONFIDE_DCAP_COLLATERAL",))
    assert missing.returncode == CollateralMissingError.exit_code, missing.stderr
    assert "TDX quote" in missing.stderr
    vcek = tmp_path / "vcek.der"
    vcek.write_bytes(VCEK)
    wrong = run_confide("evidence", "verify", tdx, *common, *at, "--vcek", vcek)
    assert wrong.returncode == UsageError.exit_code and "drop --vcek" in wrong.stderr, wrong.stderr


def test_a_tdx_confidential_vm_is_judged_as_tdx_evidence(vtpm: Callable[[bytes], bytes]) -> None:
    """Its TCB status, debug flag and TCB evaluation (of the collateral it was verified with) go
    through the policy's security settings as a tdx quote's do."""
    from confide.policy import appraise, loads_policy

    raw = vtpm(TDX_NONCE) + encode_field(9, TDX_PB)
    result = verify_gce_attestation(raw, at=TDX_AT, roots=[GOOGLE.root], tee=tdx_ctx())
    assert result.tcb_evaluation is not None
    number = min(n for _, n in result.tcb_evaluation.below(10**6))  # TCB Info's and QE Identity's
    text = (
        'name: p\nversion: "0.3"\nservices:\n  - name: s\n    attestation:\n      gce-tpm:\n'
        f"        project_id: confide-test\n        tdx:\n          mr_td: {result.claims['tee']['mr_td']}\n"  # type: ignore[index]
        f"security:\n  attestation:\n    tolerate: [vtpm-only]\n    min_tcb_evaluation_data_number: {{}}\n"
    )
    assert appraise(result, loads_policy(text.format(number)), "s", at=TDX_AT).accepted
    refused = appraise(result, loads_policy(text.format(number + 1)), "s", at=TDX_AT)
    assert refused.reasons and all(r.field.startswith("tcb_evaluation_data_number") for r in refused.reasons)
