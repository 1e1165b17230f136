"""Coverage-guided fuzzing (atheris) of the evidence parsers and verifiers, through the functions
``confide evidence verify`` calls (:func:`confide.platforms.verify_request` and the parsers
under it), with the real collateral of tests/assets at a fixed time. One target per run:

- ``dcap-quote``: an SGX v3 / TDX v4, v5 quote (binary or hex text; certification data types
  1-6), verified with the dcap-qvl collateral bundle of a case of ``tests/dcap_cases.py``;
- ``dcap-collateral``: a dcap-qvl collateral bundle (TCB Info, QE Identity, CRLs, issuer chains)
  a case's quote is verified with; also read as bare TCB Info / QE Identity JSON;
- ``dcap-resigned``: a TCB Info or QE Identity JSON text, signed again by a test PKI in Intel's
  shape (``tests/dcap_forge.py``) with the case's real quote re-issued under it, so that the
  TCB level matching and the QE Identity checks behind the signature read hostile content;
- ``tdx-eventlog``: a CCEL ACPI table and TDX CC event log, parsed and replayed against the
  RTMRs of the COS-113 quote it belongs to;
- ``sev-snp``: a SEV-SNP ATTESTATION_REPORT (binary, hex text or trustee serde JSON) with its
  VCEK/VLEK;
- ``snp-cert-table``: the certificate table of an extended report (configfs-tsm ``auxblob``),
  its VCEK then used to verify the report (the CAS's ``_sent_vek``);
- ``nvidia``: an NVIDIA GPU SPDM attestation report (hex text or binary) with its chain;
- ``nvidia-rim``: an NVIDIA RIM (SWID XML, XML-DSig signed), parsed and verified;
- ``nitro``: an AWS Nitro attestation document (CBOR COSE_Sign1, binary or base64);
- ``azure-vtpm``: trustee's Azure SEV-SNP / TDX vTPM evidence JSON (TPM quote, HCL report, VCEK
  or TD quote);
- ``gce-tpm``: a go-tpm-tools ``attest.Attestation`` protobuf (TPM quotes, AK certificate,
  event log);
- ``gce-tee``: a GCE Confidential VM's structured hardware report (go-sev-guest
  ``sevsnp.Attestation`` of the real Milan report, go-tdx-guest ``tdx.QuoteV4`` of the real GCE
  TDX quote), read and rebuilt by :mod:`confide.evidence.gce_tee`, then verified as the raw
  report / quote;
- ``sim``: the simulator's evidence (Ed25519 and ECDSA P-256 platform keys).

The first byte of an input picks the context (the case: collateral, time, nonce) for targets
that have several; the rest is the evidence. atheris is not a project dependency: install it
outside the project's venv and run one CPU at a time, e.g.::

    .venv/bin/python -m pip install --target /tmp/atheris-lib atheris
    PYTHONPATH=src .venv/bin/python tests/fuzz/evidence_fuzz.py --seeds /tmp/evidence-seeds
    PYTHONPATH=/tmp/atheris-lib:src flock -x /tmp/confide-cpu.lock .venv/bin/python \\
      tests/fuzz/evidence_fuzz.py dcap-quote /tmp/corpus-dq /tmp/evidence-seeds/dcap-quote \\
      -max_len=20000 -rss_limit_mb=1024 -timeout=5 -max_total_time=240

Invariants (an AssertionError or any exception but a :class:`~confide.errors.ConfideError` is a
finding; atheris then writes the input as ``crash-*``): only confide errors escape; an input
that verifies yields exactly the claims, TCB status and advisories of the seed of its case (a
fuzzer cannot forge a signature, so a mutation inside the signed bytes must not verify, and one
outside them must not change what verification reports); re-signed collateral that verifies
reports the TCB evaluation data numbers of its texts; a replayed event log verifies only
with the seed's digests; a RIM verifies only with the seed's golden values.
``tests/unit/test_evidence_fuzz_harness.py`` runs every target once on its seeds.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import json
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:  # the harness runs with atheris; --seeds and the suite's test run without it
    import atheris
except ImportError:  # pragma: no cover - the project's venv has no atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from confide import errors, jsonstrict, platforms

        # verify_request imports the platform modules on first use: import them here so that
        # they (and the verifiers they import) are instrumented.
        for _name in sorted(set(platforms.PLATFORM_MODULES.values())):
            importlib.import_module(_name)
        from confide.evidence import ccel, dcap, dcap_collateral, gce_tee, nvidia_rim, sev_snp, sim, snp_certs
        from confide.evidence._reader import decode_evidence_text
        from confide.evidence.nitro import decode_document_text
        from confide.platforms import sev_snp as snp_platform
        from confide.verify import dcap as verify_dcap
        from confide.verify import eventlog, gce_tpm, nitro, nvidia, x509util
        from confide.verify import nvidia_rim as verify_rim
        from confide.verify import sev_snp as verify_snp
else:
    from confide import errors, jsonstrict, platforms
    from confide.evidence import ccel, dcap, dcap_collateral, gce_tee, nvidia_rim, sev_snp, sim, snp_certs
    from confide.evidence._reader import decode_evidence_text
    from confide.evidence.nitro import decode_document_text
    from confide.platforms import sev_snp as snp_platform
    from confide.verify import dcap as verify_dcap
    from confide.verify import eventlog, gce_tpm, nitro, nvidia, x509util
    from confide.verify import nvidia_rim as verify_rim
    from confide.verify import sev_snp as verify_snp

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from confide.platforms import VerifyRequest
from confide.sim.platform import SimPlatform
from confide.verify.result import Platform, VerifiedEvidence

ASSETS = Path(__file__).parents[1] / "assets"
sys.path.insert(0, str(Path(__file__).parents[1]))
from dcap_cases import CASES as DCAP_CASES  # noqa: E402
from dcap_forge import ForgedPki  # noqa: E402

_WORK = Path(tempfile.mkdtemp(prefix="evidence-fuzz-"))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass(frozen=True)
class Case:
    """One context of a target: the evidence it was seeded with and the request around it."""

    seed: bytes
    platform: Platform
    at: datetime
    collateral: Path | None = None
    vcek: Path | None = None
    cert_chain: Path | None = None
    root: Path | None = None
    nonce: bytes | None = None

    def request(self, evidence: bytes, **changes: Any) -> VerifyRequest:
        fields = {"evidence": evidence, "platform": self.platform, "at": self.at,
                  "collateral": self.collateral, "vcek": self.vcek, "cert_chain": self.cert_chain,
                  "root": self.root, "nonce": self.nonce}  # fmt: skip
        fields.update(changes)
        return VerifyRequest(**fields)


def _outcome(result: VerifiedEvidence) -> tuple[Any, ...]:
    """What a verification reports about the evidence (the oracle compares these)."""
    return (
        result.platform,
        dict(result.claims),
        result.tcb_status,
        result.advisory_ids,
        result.tcb_evaluation,
    )


_EXPECTED: dict[tuple[str, int], tuple[Any, ...] | None] = {}


def _expected(target: str, index: int, case: Case) -> tuple[Any, ...] | None:
    """The outcome of the case's own seed (``None``: the seed does not verify)."""
    key = (target, index)
    if key not in _EXPECTED:
        try:
            _EXPECTED[key] = _outcome(platforms.verify_request(case.request(decode_evidence_text(case.seed))))
        except errors.ConfideError:
            _EXPECTED[key] = None
    return _EXPECTED[key]


def _pick(data: bytes, cases: Sequence[Case]) -> tuple[int, Case, bytes]:
    index = data[0] % len(cases) if data else 0
    return index, cases[index], data[1:]


def _check_verified(target: str, index: int, case: Case, result: VerifiedEvidence) -> None:
    expected = _expected(target, index, case)
    assert expected is not None, f"{target}: case {index}'s seed does not verify, a mutation did"
    assert _outcome(result) == expected, (target, index, _outcome(result), expected)


# --- cases ---------------------------------------------------------------------------------------

_DCAP = [
    Case((ASSETS / c.quote).read_bytes(), Platform.SGX if c.quote.startswith("sgx/") else Platform.TDX,
         c.time, collateral=ASSETS / c.collateral)
    for c in DCAP_CASES
]  # fmt: skip
SNP = ASSETS / "sev-snp"
_SNP_FILES = [
    ("google-go-sev-guest/attestation.bin", "google-go-sev-guest/vcek.testcer", "2023-01-01T00:00:00Z"),
    ("trustee/test-vlek-report.bin", "trustee/test-vlek.der", "2025-06-01T00:00:00Z"),
    ("derived-from-trustee-azure/milan_snp_report_from_hcl-report.bin",
     "derived-from-trustee-azure/milan_snp_report_from_hcl-report_vcek.pem", "2026-01-01T00:00:00Z"),
]  # fmt: skip
_SNP = [
    *(
        Case((SNP / report).read_bytes(), Platform.SEV_SNP, _at(at), vcek=SNP / vek)
        for report, vek, at in _SNP_FILES
    ),
    Case((SNP / "trustee/e2e-evidence.json").read_bytes(), Platform.SEV_SNP, _at("2026-01-01T00:00:00Z")),
]
NV = ASSETS / "nvidia"
_NV_AT = _at("2025-06-01T00:00:00Z")
_NV_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
_NVIDIA = [
    Case((NV / "hopperAttestationReport.txt").read_bytes(), Platform.NVIDIA_GPU, _NV_AT,
         cert_chain=NV / "hopperCertChain.txt", nonce=_NV_NONCE),
    Case(bytes.fromhex((NV / "hopperAttestationReport.txt").read_text()), Platform.NVIDIA_GPU, _NV_AT,
         cert_chain=NV / "hopperCertChain.txt"),
]  # fmt: skip
NITRO = ASSETS / "nitro"
_NITRO = [
    Case((NITRO / "example_attestation.b64").read_bytes(), Platform.AWS_NITRO,
         _at("2024-09-09T19:49:12.400Z"), nonce=bytes(19) + b"\x01"),
    Case((NITRO / "realAttestation_repaired.cose").read_bytes(), Platform.AWS_NITRO,
         _at("2026-01-03T20:41:07.402Z")),
]  # fmt: skip
AZ_SNP, AZ_TDX = ASSETS / "tpm/trustee-az-snp-vtpm", ASSETS / "tpm/trustee-az-tdx-vtpm"
_AZ_COLLATERAL = ASSETS / "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json"
_AZ_SNP_AT, _AZ_TDX_AT = _at("2026-01-01T00:00:00Z"), _at("2025-06-04T09:52:38Z")
_AZURE = [
    *(Case((AZ_SNP / f"evidence-v{v}.json").read_bytes(), Platform.AZURE_SNP_VTPM, _AZ_SNP_AT)
      for v in (0, 1, 2)),
    *(Case((AZ_TDX / f"evidence-v{v}.json").read_bytes(), Platform.AZURE_TDX_VTPM, _AZ_TDX_AT,
           collateral=_AZ_COLLATERAL, nonce=b"challenge") for v in (0, 1)),
]  # fmt: skip
GCE = ASSETS / "tpm/google-go-tpm-tools"
_GCE = [
    Case((GCE / "gce-cos-85-no-nonce.pb").read_bytes(), Platform.GCE_TPM, _at("2024-01-01T00:00:00Z")),
    Case((GCE / "gce-cos-85-nonce9009.pb").read_bytes(), Platform.GCE_TPM, _at("2024-01-01T00:00:00Z"),
         nonce=bytes.fromhex("9009")),
]  # fmt: skip

_GCE_TEE = [
    Case((SNP / "google-go-sev-guest/attestation.bin").read_bytes(), Platform.SEV_SNP,
         _at("2023-01-01T00:00:00Z"), vcek=SNP / "google-go-sev-guest/vcek.testcer"),
    Case((ASSETS / "tdx/google-go-tdx-guest/cos-113-tdx-quote.dat").read_bytes(), Platform.TDX,
         _at("2025-02-13T03:51:41Z"), collateral=ASSETS / "tdx/automata-dcap-rs/collateral_2025-02.dcapqvl.json"),
]  # fmt: skip


def _sim_cases() -> list[Case]:
    """Evidence of two fixed simulated platforms (Ed25519, ECDSA P-256) and their key files."""
    keys = [Ed25519PrivateKey.from_private_bytes(b"\x07" * 32), ec.derive_private_key(7, ec.SECP256R1())]
    out = []
    for i, key in enumerate(keys):
        platform = SimPlatform(key)
        root = _WORK / f"sim-{i}.pub.pem"
        root.write_bytes(platform.public_key_pem())
        evidence = platform.issue(
            report_data=b"n" * 64, measurement=b"m" * 48, timestamp=1_800_000_000, svn=3
        )
        out.append(Case(evidence.to_bytes(), Platform.SIMULATED, _at("2027-01-15T08:00:00Z"), root=root,
                        nonce=b"n" * 64))  # fmt: skip
    return out


_SIM = _sim_cases()

# The TDX event log of the COS-113 TD (tests/assets/tdx-eventlog/README.md) and its quote's RTMRs.
EVENTLOG = ASSETS / "tdx-eventlog"
_CCEL_TABLE = (EVENTLOG / "ccel_table.dat").read_bytes()
_CCEL_DATA = (EVENTLOG / "ccel_data.dat").read_bytes()
_CCEL_LOG = _CCEL_DATA[:18101]  # the records; the rest of the area is 0xFF padding
_COS_QUOTE = dcap.Quote.from_bytes((EVENTLOG / "cos-113-tdx-quote.dat").read_bytes())
assert isinstance(_COS_QUOTE.report, dcap.TdReport)
_RTMRS = [_COS_QUOTE.report.rtmr0, _COS_QUOTE.report.rtmr1, _COS_QUOTE.report.rtmr2, _COS_QUOTE.report.rtmr3]

_RIM_AT = _NV_AT  # NVIDIA's sample RIM signers are valid then (test_cli_nvidia_nitro)
_RIMS = [(NV / "Driver_RIM_test_no_gpu.swidtag").read_bytes(),
         (NV / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()]  # fmt: skip


# --- targets -------------------------------------------------------------------------------------


def _verify_target(name: str, cases: Sequence[Case]) -> Callable[[bytes], None]:
    """A target that reads the evidence as the CLI does (hex text or binary; the platform named)
    and verifies it through :func:`confide.platforms.verify_request`."""

    def target(data: bytes) -> None:
        index, case, body = _pick(data, cases)
        raw = decode_evidence_text(body)
        with contextlib.suppress(errors.ParseError):
            platforms.detect_platform(raw)
        result = platforms.verify_request(case.request(raw))
        _check_verified(name, index, case, result)

    return target


def dcap_quote(data: bytes) -> None:
    index, case, body = _pick(data, _DCAP)
    raw = decode_evidence_text(body)
    try:
        quote = dcap.Quote.from_bytes(raw)
    except errors.ParseError:
        pass
    else:  # what the CLI and the CAS read before verifying
        quote.pck_cert_id()
        quote.header.to_bytes()
        quote.report.to_bytes()
    result = platforms.verify_request(case.request(raw))
    _check_verified("dcap-quote", index, case, result)


_COLLATERAL_FILE = _WORK / "collateral.json"


def dcap_collateral_target(data: bytes) -> None:
    index, case, body = _pick(data, _DCAP)
    for reader in (dcap_collateral.TcbInfo.from_json_text, dcap_collateral.EnclaveIdentity.from_json_text):
        with contextlib.suppress(errors.ConfideError):
            reader(body)
    _COLLATERAL_FILE.write_bytes(body)
    result = platforms.verify_request(
        case.request(decode_evidence_text(case.seed), collateral=_COLLATERAL_FILE)
    )
    _check_verified("dcap-collateral", index, case, result)


@dataclass(frozen=True)
class _Resigned:
    pki: ForgedPki
    quote: bytes
    real: dcap_collateral.DcapCollateral
    at: datetime
    verifier: verify_dcap.DcapVerifier


def _resigned_cases() -> list[_Resigned]:
    """SGX (TCB Info v3 and v2), TDX v4 and v5 quotes, re-issued under a test PKI each."""
    out = []
    for i in (1, 2, 14, 11):  # tests/dcap_cases.py: SGX 0825 (v3), SGX 0225 (v2), TDX 1025, TDX v5
        case = DCAP_CASES[i]
        pki = ForgedPki(at=case.time)
        real = dcap_collateral.DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
        verifier = verify_dcap.DcapVerifier(root_ca_der=pki.root_der)
        out.append(_Resigned(pki, pki.forge_quote(case.quote_bytes()), real, case.time, verifier))
    return out


_RESIGNED = _resigned_cases()
_PIECES = ("tcb_info", "qe_identity")


def dcap_resigned(data: bytes) -> None:
    selector = data[0] if data else 0
    case, piece = _RESIGNED[(selector >> 1) % len(_RESIGNED)], _PIECES[selector & 1]
    text = data[1:]
    coll = case.pki.forge_collateral(dataclasses.replace(case.real, **{piece: text}))
    got = case.verifier.verify(case.quote, coll, at=case.at)
    numbers = [
        jsonstrict.loads(t, structure="oracle")["tcbEvaluationDataNumber"]
        for t in (coll.tcb_info, coll.qe_identity)
    ]
    assert got.tcb_evaluation is not None and all(type(n) is int for n in numbers), numbers
    assert [got.tcb_evaluation.tcb_info, got.tcb_evaluation.qe_identity] == numbers


_SEED_CLAIMS: dict[str, Any] = {}


def tdx_eventlog(data: bytes) -> None:
    if data[:1] == b"\x01":  # with the CCEL table: 56 bytes, then the log
        table = ccel.CcelTable.from_bytes(data[1:57])
        log = ccel.EventLog.from_bytes(data[57:], table=table)
    else:
        log = ccel.EventLog.from_bytes(data[1:])
    claims = eventlog.verify_event_log(log, _RTMRS)
    if "eventlog" not in _SEED_CLAIMS:
        seed = ccel.EventLog.from_bytes(_CCEL_LOG, table=ccel.CcelTable.from_bytes(_CCEL_TABLE))
        _SEED_CLAIMS["eventlog"] = eventlog.verify_event_log(seed, _RTMRS)
    seed_claims = _SEED_CLAIMS["eventlog"]
    # Replayed to the quote's RTMRs: the same digests into the same RTMRs in the same order
    # (SHA-384 preimages), and only a command line bound to one of them.
    assert _extended(claims) == _extended(seed_claims)
    assert claims.kernel_cmdline in (None, seed_claims.kernel_cmdline), claims.kernel_cmdline


def _extended(claims: eventlog.EventLogClaims) -> list[tuple[Any, Any]]:
    return [(e["index"], e["digest"]) for e in claims.events if e["verified"]]


_SNP_VEK = (SNP / "google-go-sev-guest/vcek.testcer").read_bytes()
_SNP_VEK_AT = _SNP[0].at


def snp_cert_table(data: bytes) -> None:
    table = snp_certs.parse_cert_table(data)
    vek = table.get(snp_certs.VCEK_GUID) or table.get(snp_certs.VLEK_GUID)
    if vek is None:
        return
    certs = verify_snp.load_certificates(vek, "the certificate table's VCEK")
    if len(certs) != 1:
        raise errors.CertificateChainError("expected one certificate")
    report = _SNP[0].seed
    sev_snp.AttestationReport.from_bytes(report)
    result = snp_platform.embedded_verifier().verify(report, certs[0], at=_SNP_VEK_AT)
    assert vek == _SNP_VEK, "a VCEK that is not the seed's verified the report"
    _check_verified("sev-snp", 0, _SNP[0], result)


_NV_CHAIN = x509util.load_certificate_chain((NV / "hopperCertChain.txt").read_bytes(), "hopperCertChain.txt")


def nvidia_target(data: bytes) -> None:
    index, case, body = _pick(data, _NVIDIA)
    raw = decode_evidence_text(body)
    result = nvidia.verify_nvidia_report(raw, _NV_CHAIN, at=case.at, expected_nonce=case.nonce)
    _check_verified("nvidia", index, case, result)


def _golden(manifest: nvidia_rim.ReferenceManifest) -> tuple[Any, ...]:
    return (manifest.tag_id, manifest.name, manifest.version, manifest.measurements)


def nvidia_rim_target(data: bytes) -> None:
    body = data[1:]
    nvidia_rim.ReferenceManifest.from_bytes(body)
    verified = verify_rim.verify_rim(body, at=_RIM_AT)
    # Signed by NVIDIA: a mutation cannot re-sign, so what verifies holds a seed's golden values.
    if "rim" not in _SEED_CLAIMS:
        _SEED_CLAIMS["rim"] = [_golden(verify_rim.verify_rim(r, at=_RIM_AT).manifest) for r in _RIMS]
    assert _golden(verified.manifest) in _SEED_CLAIMS["rim"], _golden(verified.manifest)


def nitro_target(data: bytes) -> None:
    index, case, body = _pick(data, _NITRO)
    evidence = decode_document_text(body)
    result = nitro.verify_nitro_document(evidence, at=case.at, expected_nonce=case.nonce)
    _check_verified("nitro", index, case, result)


def gce_target(data: bytes) -> None:
    index, case, body = _pick(data, _GCE)
    result = gce_tpm.verify_gce_attestation(body, at=case.at, expected_nonce=case.nonce)
    _check_verified("gce-tpm", index, case, result)


def gce_tee_target(data: bytes) -> None:
    index, case, body = _pick(data, _GCE_TEE)
    if case.platform is Platform.SEV_SNP:
        raw = gce_tee.parse_sev_snp_attestation(body).report
    else:
        raw = gce_tee.parse_tdx_quote(body).quote
    # a rebuild that verifies must be the seed's report: the vendor signature covers it all
    _check_verified("gce-tee", index, case, platforms.verify_request(case.request(raw)))


def sim_target(data: bytes) -> None:
    index, case, body = _pick(data, _SIM)
    with contextlib.suppress(errors.ParseError):
        sim.SimEvidence.from_bytes(body)
    result = platforms.verify_request(case.request(body))
    _check_verified("sim", index, case, result)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "dcap-quote": dcap_quote,
    "dcap-collateral": dcap_collateral_target,
    "dcap-resigned": dcap_resigned,
    "tdx-eventlog": tdx_eventlog,
    "sev-snp": _verify_target("sev-snp", _SNP),
    "snp-cert-table": snp_cert_table,
    "nvidia": nvidia_target,
    "nvidia-rim": nvidia_rim_target,
    "nitro": nitro_target,
    "azure-vtpm": _verify_target("azure-vtpm", _AZURE),
    "gce-tpm": gce_target,
    "gce-tee": gce_tee_target,
    "sim": sim_target,
}


# --- a structure-aware mutation for the JSON targets ---------------------------------------------

_HOSTILE_JSON: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**63, 2**64, -(2**63), 1.5, 1e308, "", "0", "-1", "x" * 300,
    "2025-13-40T00:00:00Z", "9999-12-31T23:59:59Z", "2000-01-01T00:00:00Z", "UpToDate", "Revoked",
    "OutOfDate", "ff" * 16, "00" * 64, [], {}, [[]], [{}], {"": None},
]  # fmt: skip
JSON_TARGETS = frozenset({"dcap-resigned", "dcap-collateral", "azure-vtpm"})


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _nodes(item, (*path, i))
    return out


def _edit_json(doc: Any, rng: Any) -> Any:
    """``doc`` with one node replaced by a hostile value, removed, duplicated in its list, or
    (a string) mutated byte-wise; JSON inside a string (dcap-qvl's ``tcb_info``) is edited too."""
    paths = _nodes(doc)
    path = paths[rng.randrange(len(paths))]
    if not path:
        return rng.choice(_HOSTILE_JSON)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    action = rng.randrange(5)
    if action == 0 and isinstance(parent, dict):
        del parent[key]
    elif action == 1 and isinstance(parent, list):
        parent.insert(key, value)
    elif action == 2 and isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, dict | list):
            parent[key] = json.dumps(_edit_json(inner, rng), separators=(",", ":"))
        else:
            raw = value.encode("utf-8", "surrogatepass")  # JSON escapes may hold lone surrogates
            mutated = atheris.Mutate(raw, len(raw) + 16) if atheris is not None else raw
            parent[key] = mutated.decode("utf-8", "replace")
    elif action == 3 and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + rng.choice((-1, 1, 1 << 8, -(1 << 8)))
    else:
        parent[key] = rng.choice(_HOSTILE_JSON)
    return doc


def json_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """Half the time a JSON edit of the input after its selector byte, else libFuzzer's own."""
    rng = random.Random(seed)
    if rng.randrange(2) and data[1:2] == b"{":
        try:
            doc = json.loads(data[1:])
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out = data[:1] + json.dumps(_edit_json(doc, rng), separators=(",", ":")).encode()
            if len(out) <= max_size:
                return out
    assert atheris is not None
    return bytes(atheris.Mutate(data, max_size))


# --- seeds ---------------------------------------------------------------------------------------


def _with_cases(cases: Sequence[Case]) -> list[bytes]:
    return [bytes([i]) + c.seed for i, c in enumerate(cases)]


def seeds() -> dict[str, list[bytes]]:
    """Each target's seed inputs, from valid inputs of each (tests/assets)."""
    dcap_seen: set[tuple[str, str]] = set()
    quotes, bundles = [], []
    for i, (c, case) in enumerate(zip(DCAP_CASES, _DCAP, strict=True)):
        if (c.quote, c.collateral) in dcap_seen:
            continue
        dcap_seen.add((c.quote, c.collateral))
        quotes.append(bytes([i]) + case.seed)
        assert case.collateral is not None
        bundles.append(bytes([i]) + case.collateral.read_bytes())
    bundles += [
        b"\x00" + p.read_bytes() for p in sorted(ASSETS.glob("*/automata-dcap-attestation/*/*.json"))[:4]
    ]
    table = snp_certs.build_cert_table({snp_certs.VCEK_GUID: _SNP_VEK})
    other_table = snp_certs.build_cert_table({snp_certs.VLEK_GUID: _SNP_VEK, snp_certs.ARK_GUID: b"\x30\x00"})
    return {
        "dcap-quote": quotes,
        "dcap-collateral": bundles,
        "dcap-resigned": [
            bytes([i << 1 | p]) + getattr(c.real, piece)
            for i, c in enumerate(_RESIGNED)
            for p, piece in enumerate(_PIECES)
        ],
        "tdx-eventlog": [
            b"\x01" + _CCEL_TABLE + _CCEL_LOG, b"\x00" + _CCEL_LOG, b"\x01" + _CCEL_TABLE + _CCEL_DATA[:20000]
        ],
        "sev-snp": [*_with_cases(_SNP), b"\x00" + _SNP[0].seed.hex().encode()],
        "snp-cert-table": [table, other_table],
        "nvidia": _with_cases(_NVIDIA),
        "nvidia-rim": [bytes([i]) + r for i, r in enumerate(_RIMS)],
        "nitro": [*_with_cases(_NITRO), b"\x01" + base64.b64encode(_NITRO[1].seed)],
        "azure-vtpm": _with_cases(_AZURE),
        "gce-tpm": _with_cases(_GCE),
        "gce-tee": [
            b"\x00" + gce_tee.encode_sev_snp_attestation(_GCE_TEE[0].seed, vcek=(SNP / "google-go-sev-guest/vcek.testcer").read_bytes()),
            b"\x01" + gce_tee.encode_tdx_quote(_GCE_TEE[1].seed),
        ],
        "sim": _with_cases(_SIM),
    }  # fmt: skip


def write_seeds(directory: Path) -> None:
    for target, items in seeds().items():
        out = directory / target
        out.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            (out / f"seed-{i}").write_bytes(item)


def run_once(target: str, data: bytes) -> bool:
    """Run ``target`` on ``data`` as the fuzzer does; True if it verified (no error)."""
    try:
        TARGETS[target](data)
    except errors.ConfideError:
        return False
    return True


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        write_seeds(Path(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--check"]:
        for name, items in seeds().items():
            print(name, [run_once(name, item) for item in items], flush=True)
        return
    name = sys.argv[1]
    assert atheris is not None, "atheris is needed to fuzz (module docstring)"

    def one(data: bytes) -> None:
        run_once(name, data)

    mutator = {"custom_mutator": json_mutator} if name in JSON_TARGETS else {}
    atheris.Setup([sys.argv[0], *sys.argv[2:]], one, **mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
