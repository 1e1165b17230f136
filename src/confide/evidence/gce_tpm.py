"""Google Compute Engine vTPM attestations: go-tpm-tools' ``attest.Attestation`` protobuf.

Schema (go-tpm-tools ``proto/attest.proto`` and ``proto/tpm.proto``)::

    message Attestation {
      bytes ak_pub = 1;                   // TPMT_PUBLIC of the attestation key
      repeated tpm.Quote quotes = 2;      // one quote per PCR bank
      bytes event_log = 3;                // TCG event log, raw binary (crypto-agile)
      GCEInstanceInfo instance_info = 4;  // zone, project, instance (not signed by anything)
      bytes canonical_event_log = 5;      // not read
      bytes ak_cert = 6;                  // DER; GCE Shielded/Confidential VMs have one
      repeated bytes intermediate_certs = 7;
      oneof tee_attestation { sevsnp.Attestation sev_snp_attestation = 8; tdx.QuoteV4 tdx_attestation = 9; }
    }
    message Quote { bytes quote = 1; bytes raw_sig = 2; PCRs pcrs = 3; }  // TPMS_ATTEST, TPMT_SIGNATURE
    message PCRs { HashAlgo hash = 1; map<uint32, bytes> pcrs = 2; }      // map entry: key = 1, value = 2
    message GCEInstanceInfo { string zone = 1; string project_id = 2; uint64 project_number = 3;
                              string instance_name = 4; uint64 instance_id = 5; }

The wire format is read by :mod:`confide.evidence._protobuf` (strict: duplicate singular
fields, wrong wire types and duplicate map keys are refused). The TPM structures inside are
parsed here too (``confide.evidence.tpm``), so a parsed ``GceAttestation`` is well-formed
throughout; the event log is parsed as a TCG crypto-agile log. Field 5 is skipped. Fields 8
and 9, the SEV-SNP report or TDX quote of a Confidential VM (a oneof: both present is a
:class:`ParseError`), are read strictly and rebuilt into the raw report / quote by
:mod:`confide.evidence.gce_tee` (``tee``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from confide.errors import ParseError
from confide.evidence._protobuf import WIRE_LEN, WIRE_VARINT, Message, parse_message
from confide.evidence.ccel import EventLog
from confide.evidence.gce_tee import (
    GceSnpAttestation,
    GceTdxAttestation,
    parse_sev_snp_attestation,
    parse_tdx_quote,
)
from confide.evidence.tpm import (
    HASH_SIZES,
    TpmPublic,
    TpmsAttest,
    TpmSignature,
    alg_name,
    parse_attest,
    parse_public,
    parse_signature,
)

__all__ = ["MAX_ATTESTATION_SIZE", "GceAttestation", "GceInstanceInfo", "GceQuote", "parse_gce_attestation"]

MAX_ATTESTATION_SIZE = 4 * 1024 * 1024
MAX_QUOTES = 8
MAX_CERT_SIZE = 16 * 1024
MAX_INTERMEDIATES = 8
MAX_PCR_INDEX = 31

_ATTESTATION = {1: (WIRE_LEN, False), 2: (WIRE_LEN, True), 3: (WIRE_LEN, False), 4: (WIRE_LEN, False),
                6: (WIRE_LEN, False), 7: (WIRE_LEN, True), 8: (WIRE_LEN, False),
                9: (WIRE_LEN, False)}  # fmt: skip
_QUOTE = {1: (WIRE_LEN, False), 2: (WIRE_LEN, False), 3: (WIRE_LEN, False)}
_PCRS = {1: (WIRE_VARINT, False), 2: (WIRE_LEN, True)}
_MAP_ENTRY = {1: (WIRE_VARINT, False), 2: (WIRE_LEN, False)}
_INSTANCE = {1: (WIRE_LEN, False), 2: (WIRE_LEN, False), 3: (WIRE_VARINT, False), 4: (WIRE_LEN, False),
             5: (WIRE_VARINT, False)}  # fmt: skip

_S = "GCE attestation"


@dataclass(frozen=True, slots=True)
class GceQuote:
    """One ``tpm.Quote``: the signed attest bytes, the signature and the bank's PCR values."""

    attest: TpmsAttest
    signature: TpmSignature
    hash_alg: int
    pcrs: Mapping[int, bytes]
    raw_attest: bytes
    raw_signature: bytes


@dataclass(frozen=True, slots=True)
class GceInstanceInfo:
    zone: str
    project_id: str
    project_number: int
    instance_name: str
    instance_id: int


@dataclass(frozen=True, slots=True)
class GceAttestation:
    ak_pub: TpmPublic
    quotes: tuple[GceQuote, ...]
    event_log: EventLog | None
    event_log_bytes: bytes
    ak_cert: bytes | None
    intermediate_certs: tuple[bytes, ...]
    instance_info: GceInstanceInfo | None
    tee: GceSnpAttestation | GceTdxAttestation | None = None
    """Field 8 or 9: the Confidential VM's hardware report, rebuilt (``None``: neither)."""


def _pcrs(msg: Message, n: int) -> tuple[int, Mapping[int, bytes]]:
    structure = f"{_S} quotes[{n}].pcrs"
    hash_alg = msg.uint(1, bits=32)
    size = HASH_SIZES.get(hash_alg)
    if size is None:
        raise ParseError(
            f"got hash {alg_name(hash_alg)}, expected sha1, sha256, sha384 or sha512",
            structure=structure,
            field="hash",
        )
    values: dict[int, bytes] = {}
    for entry in msg.messages(2, _MAP_ENTRY, f"{structure} entry"):
        index = entry.uint(1, bits=32)
        value = entry.bytes_(2)
        if index > MAX_PCR_INDEX:
            raise ParseError(
                f"got PCR index {index}, expected 0..{MAX_PCR_INDEX}", structure=structure, field="pcrs"
            )
        if index in values:
            raise ParseError(f"PCR {index} appears twice", structure=structure, field="pcrs")
        if len(value) != size:
            raise ParseError(
                f"PCR {index}: got {len(value)} bytes, expected {size} for {alg_name(hash_alg)}",
                structure=structure,
                field="pcrs",
            )
        values[index] = value
    return hash_alg, MappingProxyType(dict(sorted(values.items())))


def _quote(msg: Message, n: int) -> GceQuote:
    pcrs_msg = msg.message(3, _PCRS, f"{_S} quotes[{n}].pcrs")
    if pcrs_msg is None:
        raise ParseError("missing PCR values", structure=f"{_S} quotes[{n}]", field="pcrs")
    hash_alg, pcrs = _pcrs(pcrs_msg, n)
    raw_attest, raw_sig = msg.bytes_(1), msg.bytes_(2)
    return GceQuote(parse_attest(raw_attest), parse_signature(raw_sig), hash_alg, pcrs, raw_attest, raw_sig)


def parse_gce_attestation(data: bytes) -> GceAttestation:
    """Parse a binary ``attest.Attestation``; any malformation is a :class:`ParseError`."""
    if len(data) > MAX_ATTESTATION_SIZE:
        raise ParseError(f"got {len(data)} bytes, expected at most {MAX_ATTESTATION_SIZE}", structure=_S)
    top = parse_message(data, _ATTESTATION, _S)
    ak_raw = top.bytes_(1)
    if not ak_raw:
        raise ParseError("missing", structure=_S, field="ak_pub")
    ak_pub = parse_public(ak_raw)
    quote_msgs = top.messages(2, _QUOTE, f"{_S} quote")
    if not 1 <= len(quote_msgs) <= MAX_QUOTES:
        raise ParseError(
            f"got {len(quote_msgs)} quotes, expected 1..{MAX_QUOTES}", structure=_S, field="quotes"
        )
    quotes = tuple(_quote(q, n) for n, q in enumerate(quote_msgs))
    banks = [q.hash_alg for q in quotes]
    if len(set(banks)) != len(banks):
        raise ParseError(
            f"got banks {[alg_name(b) for b in banks]}, expected each at most once",
            structure=_S,
            field="quotes",
        )
    log_bytes = top.bytes_(3)
    event_log = EventLog.from_bytes(log_bytes) if log_bytes else None
    cert = top.bytes_(6) or None
    if cert is not None and len(cert) > MAX_CERT_SIZE:
        raise ParseError(
            f"got {len(cert)} bytes, expected at most {MAX_CERT_SIZE}", structure=_S, field="ak_cert"
        )
    intermediates = top.repeated_bytes(7)
    if len(intermediates) > MAX_INTERMEDIATES or any(len(c) > MAX_CERT_SIZE for c in intermediates):
        raise ParseError(
            f"expected at most {MAX_INTERMEDIATES} certificates of {MAX_CERT_SIZE} bytes",
            structure=_S,
            field="intermediate_certs",
        )
    info_msg = top.message(4, _INSTANCE, f"{_S} instance_info")
    info = None
    if info_msg is not None:
        info = GceInstanceInfo(
            zone=info_msg.string(1),
            project_id=info_msg.string(2),
            project_number=info_msg.uint(3),
            instance_name=info_msg.string(4),
            instance_id=info_msg.uint(5),
        )
    tee: GceSnpAttestation | GceTdxAttestation | None = None
    snp, tdx = top.field(8), top.field(9)
    if snp is not None and tdx is not None:
        raise ParseError(
            "both sev_snp_attestation (8) and tdx_attestation (9): they are a oneof",
            structure=_S,
            field="tee_attestation",
        )
    if snp is not None:
        assert isinstance(snp.value, bytes)
        tee = parse_sev_snp_attestation(snp.value, base=snp.offset)
    elif tdx is not None:
        assert isinstance(tdx.value, bytes)
        tee = parse_tdx_quote(tdx.value, base=tdx.offset)
    return GceAttestation(ak_pub, quotes, event_log, log_bytes, cert, intermediates, info, tee)
