"""A differential mutation harness for the Intel DCAP verifier, with dcap-qvl 0.7.0 as the oracle.

Each trial takes a real quote/collateral pair of ``dcap_cases.CASES``, mutates it (quote bytes,
collateral pieces, JSON fields of TCB Info / QE Identity, CRL entries and windows, the time the
verifier is told) and runs both verifiers. It fails when:

- confide accepts what dcap-qvl refuses for a *security* reason (anything but the refusals that
  are a policy's business in confide, :data:`POLICY_REFUSALS`, docs/dcap.md "Differences from
  dcap-qvl");
- both accept and the TCB status or the advisory IDs differ.

confide refusing what dcap-qvl accepts is recorded (``stricter``), not a failure: each such kind
is a documented difference (docs/dcap.md) or a finding to review.

Two families of mutations:

- *real*: the real quote and Intel's real collateral under the real Intel root: byte flips and
  length fields of the quote, collateral pieces swapped between real bundles (every one signed
  by Intel), a byte of a signature/CRL/JSON text flipped, and the time moved to the edges of
  every validity window (certificates, CRLs, TCB Info, QE Identity);
- *forged*: the same quote with its PCK chain re-issued under a test PKI in Intel's shape
  (``dcap_forge.ForgedPki``), so that TCB Info and QE Identity can be edited field by field and
  re-signed, CRLs can revoke any serial and carry any window; dcap-qvl is given the test root
  (``PyQuoteVerifier(root)``). This is what an attacker who controls the collateral source
  cannot do with Intel's key; it checks the *logic* after the signatures.

Deterministic for a given seed. ``python tests/dcap_mutate.py --seconds 600`` runs by hand
(``PYTHONPATH=src``); ``tests/unit/test_dcap_mutation_differential.py`` runs a bounded number of
trials in the suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl._dcap_qvl as qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).parent))
from confide.errors import ConfideError
from confide.evidence.dcap import CertificationData, EnclaveReport, Quote, TdReport
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import parse_pem_chain, pem_chain
from confide.verify.dcap import DcapVerifier
from dcap_cases import CASES, Case
from dcap_forge import SGX_OID, ForgedPki, _der, _name, raw_sign
from pki import issue, key_usage

POLICY_REFUSALS = {
    "Debug mode is enabled": "debug enclave/TD: a claim (debug=true) for the policy",
    "SEPT_VE_DISABLE is not enabled": "TD without SEPT_VE_DISABLE: a claim for the policy",
    "Invalid MR service TD": "non-zero MRSERVICETD: a claim for the policy",
    "Failed to decode TcbInfo": "SGX TCB Info v2, which dcap-qvl cannot read",
}
"""dcap-qvl refusals that are not a security verdict in confide (docs/dcap.md)."""

_ALL_STATUSES = [
    "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate",
    "OutOfDateConfigurationNeeded", "TDRelaunchAdvised", "TDRelaunchAdvisedConfigurationNeeded",
]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: str = ""
    advisories: tuple[str, ...] = ()
    error: str = ""

    def __str__(self) -> str:
        return f"{self.status} {list(self.advisories)}" if self.ok else f"ERR {self.error}"


@dataclass(frozen=True)
class Trial:
    name: str
    case: Case
    raw: bytes
    coll: DcapCollateral
    at: datetime
    root_der: bytes | None = None  # None: the real Intel root


def run_confide(t: Trial, verifier: DcapVerifier) -> Outcome:
    try:
        v = verifier.verify(t.raw, t.coll, at=t.at)
    except ConfideError as exc:
        return Outcome(False, error=f"{exc.kind}: {exc.message}")
    return Outcome(True, v.tcb_status.value if v.tcb_status else "", tuple(v.advisory_ids))


def run_qvl(t: Trial) -> Outcome:
    """dcap-qvl with a policy that accepts every status and platform property (the verdict is
    then the verification's alone), at ``t.at`` (whole seconds)."""
    now = int(t.at.timestamp())
    policy = qvl.PyQuotePolicy.claims_only(now)
    for status in _ALL_STATUSES:
        policy = policy.allow_status(status)
    policy = policy.allow_dynamic_platform(True).allow_cached_keys(True).allow_smt(True)
    policy = policy.platform_grace_period(1 << 40).qe_grace_period(1 << 40)
    try:
        coll = qvl.PyQuoteCollateralV3.from_json(t.coll.to_dcap_qvl_json())
        root = t.root_der if t.root_der is not None else _INTEL_ROOT
        claims = qvl.PyQuoteVerifier(root).verify_with_policy(t.raw, coll, now, policy)
    except (ValueError, RuntimeError) as exc:
        return Outcome(False, error=str(exc))
    tcb = json.loads(claims.to_json())["tcb"]
    return Outcome(True, tcb["status"], tuple(tcb["advisory_ids"]))


_INTEL_ROOT = (Path(__file__).parent / "assets" / "intel-roots" / "Intel_SGX_RootCA.der").read_bytes()


@dataclass
class Report:
    trials: int = 0
    both_ok: int = 0
    both_refused: int = 0
    failures: list[str] = field(default_factory=list)
    stricter: Counter[str] = field(default_factory=Counter)
    policy: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)


def judge(t: Trial, ours: Outcome, theirs: Outcome, report: Report) -> None:
    report.trials += 1
    report.kinds[t.name.split(":")[0]] += 1
    where = f"{t.name} [{t.case.id} at {t.at.isoformat()}]"
    if not theirs.ok:
        policy = next((k for k in POLICY_REFUSALS if k in theirs.error), None)
        if ours.ok and policy is not None:
            report.policy[policy] += 1
            return
        edge = re.search(
            r"CrlExpired \{ time: UnixTime\((\d+)\), next_update: UnixTime\((\d+)\)", theirs.error
        )
        if ours.ok and edge and edge.group(1) == edge.group(2):
            # the CRL's nextUpdate second itself: current in confide (and Intel's QVL, whose
            # validity checks are inclusive), expired in dcap-qvl (webpki)
            report.policy["CRL at its nextUpdate second"] += 1
            return
        if ours.ok and "Failed to verify certificate chain" in theirs.error and _at_pck_crl_next_update(t):
            report.policy["CRL at its nextUpdate second"] += 1
            return
        if ours.ok and "Revoked" in theirs.error and ours.status == "Revoked":
            report.policy["Revoked (confide: status Revoked)"] += 1
            return
        if ours.ok:
            report.failures.append(
                f"ACCEPTED what dcap-qvl refuses: {where}: confide {ours}, dcap-qvl {theirs}"
            )
            return
        report.both_refused += 1
        return
    if not ours.ok:
        report.stricter[_kind(ours.error)] += 1
        return
    report.both_ok += 1
    # advisory IDs as a set: dcap-qvl repeats an ID a level lists twice, confide gives it once
    if (ours.status, sorted(set(ours.advisories))) != (theirs.status, sorted(set(theirs.advisories))):
        report.failures.append(f"DIFFERENT verdict: {where}: confide {ours}, dcap-qvl {theirs}")


def _at_pck_crl_next_update(t: Trial) -> bool:
    """Whether ``t.at`` is the PCK CRL's nextUpdate second (dcap-qvl then refuses the PCK
    chain: "Failed to verify certificate chain")."""
    try:
        crl = x509.load_der_x509_crl(t.coll.pck_crl)
    except ValueError:
        return False
    return crl.next_update_utc is not None and int(crl.next_update_utc.timestamp()) == int(t.at.timestamp())


def _kind(error: str) -> str:
    """An error message without its variable parts (for counting kinds)."""
    return re.sub(r"[0-9a-f]{6,}|\d+", "#", error)[:140]


# --- mutations of real evidence and collateral (Intel's root) ---------------------------------


def _flip(b: bytes, rng: random.Random, n: int = 1) -> bytes:
    out = bytearray(b)
    for _ in range(n):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _le(value: int, size: int) -> bytes:
    return (value % (1 << (8 * size))).to_bytes(size, "little")


def _length_fields(raw: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, size) of the quote's length and type fields."""
    q = Quote.from_bytes(raw)
    fields: list[tuple[str, int, int]] = [("header.version", 0, 2), ("header.tee_type", 4, 4)]
    pos = 48
    if q.header.version == 5:
        fields += [("body.type", 48, 2), ("body.size", 50, 4)]
        pos += 6
    pos += len(q.body_raw)
    fields.append(("signature_data_length", pos, 4))
    pos += 4 + 128
    if q.signature_data.wrapped:
        fields += [("outer.type", pos, 2), ("outer.size", pos + 2, 4)]
        pos += 6
    pos += 384 + 64
    fields.append(("qe_auth_data.size", pos, 2))
    pos += 2 + len(q.signature_data.qe.qe_auth_data)
    fields += [("certification.type", pos, 2), ("certification.size", pos + 2, 4)]
    return fields


def _real_quote_mutations(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "length", "truncate", "append", "flip-pem"])
    try:
        Quote.from_bytes(raw)
    except ConfideError:
        kind = "flip"
    if kind == "flip":
        return "quote:flip", _flip(raw, rng, rng.randint(1, 3))
    if kind == "length":
        name, off, size = rng.choice(_length_fields(raw))
        old = int.from_bytes(raw[off : off + size], "little")
        new = rng.choice(
            [0, 1, old - 1, old + 1, old + 64, old - 64, (1 << (8 * size)) - 1, 3, 4, 5, 6, 0x81]
        )
        return f"quote:length {name} {old}->{new % (1 << (8 * size))}", raw[:off] + _le(new, size) + raw[
            off + size :
        ]
    if kind == "truncate":
        n = rng.randint(1, 64)
        return f"quote:truncate {n}", raw[:-n]
    if kind == "append":
        return "quote:append", raw + bytes(rng.randint(1, 32))
    q = Quote.from_bytes(raw)
    pem = q.signature_data.qe.certification.data
    at = raw.find(pem)
    if at < 0 or not pem:
        return "quote:flip", _flip(raw, rng)
    i = at + rng.randrange(len(pem))
    return "quote:flip-pem", raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1 :]


_BUNDLES: dict[str, DcapCollateral] = {}


def bundle(path: str) -> DcapCollateral:
    if path not in _BUNDLES:
        _BUNDLES[path] = DcapCollateral.from_dcap_qvl_json(
            (Path(__file__).parent / "assets" / path).read_bytes()
        )
    return _BUNDLES[path]


_PIECES = {
    "pck_crl": ("pck_crl", "pck_crl_issuer_chain"),
    "root_ca_crl": ("root_ca_crl",),
    "tcb_info": ("tcb_info", "tcb_info_signature", "tcb_info_issuer_chain"),
    "qe_identity": ("qe_identity", "qe_identity_signature", "qe_identity_issuer_chain"),
}


def _real_collateral_mutation(rng: random.Random, case: Case) -> tuple[str, DcapCollateral]:
    coll = bundle(case.collateral)
    kind = rng.choice(["swap", "swap", "flip"])
    if kind == "swap":
        piece = rng.choice(list(_PIECES))
        other_path = rng.choice(sorted({c.collateral for c in CASES} - {case.collateral}))
        other = bundle(other_path)
        changes = {f: getattr(other, f) for f in _PIECES[piece]}
        return f"collateral:swap {piece} from {Path(other_path).name}", dataclasses.replace(coll, **changes)
    name = rng.choice(
        ["pck_crl", "root_ca_crl", "tcb_info", "tcb_info_signature", "qe_identity", "qe_identity_signature"]
    )
    value = getattr(coll, name)
    if name in ("tcb_info", "qe_identity"):
        # a digit of the JSON text (it stays JSON): a signature must catch it
        digits = [m.start() for m in re.finditer(rb"\d", value)]
        i = rng.choice(digits)
        new = value[:i] + str((int(value[i : i + 1]) + rng.randint(1, 9)) % 10).encode() + value[i + 1 :]
        return f"collateral:digit {name}", dataclasses.replace(coll, **{name: new})
    return f"collateral:flip {name}", dataclasses.replace(coll, **{name: _flip(value, rng)})


def _edges(case: Case, raw: bytes, coll: DcapCollateral) -> list[datetime]:
    """Every validity edge the verification checks (certificates, CRLs, TCB Info, QE Identity)."""
    out: list[datetime] = []
    ders: list[bytes] = []
    try:
        q = Quote.from_bytes(raw)
        if q.signature_data.qe.certification.cert_type == 5:
            ders += parse_pem_chain(q.signature_data.qe.certification.data)
    except ConfideError:
        pass
    ders += [*coll.tcb_info_issuer_chain, *coll.qe_identity_issuer_chain, *coll.pck_crl_issuer_chain]
    for der in ders:
        try:
            c = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion):  # a mutant's certificate that does not parse
            continue
        out += [c.not_valid_before_utc, c.not_valid_after_utc]
    for der in (coll.pck_crl, coll.root_ca_crl):
        try:
            crl = x509.load_der_x509_crl(der)
            out.append(crl.last_update_utc)
            if crl.next_update_utc:
                out.append(crl.next_update_utc)
        except (ValueError, x509.InvalidVersion):
            continue
    for text in (coll.tcb_info, coll.qe_identity):
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        for key in ("issueDate", "nextUpdate"):
            try:
                out.append(datetime.fromisoformat(obj[key]))
            except (KeyError, ValueError, TypeError):
                pass
    return out or [case.time]


def _time(rng: random.Random, case: Case, raw: bytes, coll: DcapCollateral) -> tuple[str, datetime]:
    edges = _edges(case, raw, coll)
    edge = rng.choice(edges)
    delta = rng.choice([-1, 0, 1, 0, -86400, 86400])
    return f"time:edge{delta:+d}s", edge + timedelta(seconds=delta)


def real_trials(rng: random.Random) -> Iterator[Trial]:
    while True:
        case = rng.choice(CASES)
        raw, coll, at = case.quote_bytes(), bundle(case.collateral), case.time
        names = []
        for _ in range(rng.choice([1, 1, 2])):
            which = rng.choice(["quote", "collateral", "time", "time"])
            if which == "quote":
                name, raw = _real_quote_mutations(rng, raw)
            elif which == "collateral":
                name, coll = _real_collateral_mutation(rng, case)
            else:
                name, at = _time(rng, case, raw, coll)
            names.append(name)
        yield Trial("real:" + " + ".join(names), case, raw, coll, at)


# --- forged collateral (a test PKI in Intel's shape) ------------------------------------------

_STATUSES = [
    "UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
    "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked",
]  # fmt: skip


def _iso(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _intel_order(levels: list[dict[str, Any]]) -> None:
    """An identity's levels in Intel's order, highest ISVSVN first. Not shuffled by the
    harness: confide, like Intel's QVL (``EnclaveIdentity`` keeps a
    ``std::set<IdentityTcbLevel, std::greater<...>>``), matches them highest ISVSVN first
    whatever the listed order; dcap-qvl 0.7.0 takes the first listed level the ISVSVN reaches
    (docs/dcap.md, "Differences from dcap-qvl")."""
    levels.sort(key=lambda lvl: lvl["tcb"]["isvsvn"], reverse=True)


def _edit_tcb_info(rng: random.Random, obj: dict[str, Any], at: datetime) -> str:
    kind = rng.choice(
        ["shuffle", "reverse", "drop", "status", "advisories", "dates", "evalnum", "fmspc", "pceid",
         "id", "version", "module", "module-identity", "tcbdate", "pcesvn", "component"]
    )  # fmt: skip
    levels = obj["tcbLevels"]
    if kind == "shuffle":
        rng.shuffle(levels)
    elif kind == "reverse":
        levels.reverse()
    elif kind == "drop" and len(levels) > 1:
        del levels[rng.randrange(len(levels))]
    elif kind == "status":
        for lvl in rng.sample(levels, min(len(levels), rng.randint(1, 3))):
            lvl["tcbStatus"] = rng.choice(_STATUSES)
    elif kind == "advisories":
        lvl = rng.choice(levels)
        lvl["advisoryIDs"] = rng.choice([[], ["INTEL-SA-99999"], ["INTEL-SA-99999", "INTEL-SA-99999"]])
    elif kind == "dates":
        key = rng.choice(["issueDate", "nextUpdate"])
        obj[key] = _iso(at + timedelta(seconds=rng.choice([-2, -1, 0, 1, 2, -86400, 86400])))
    elif kind == "evalnum":
        obj["tcbEvaluationDataNumber"] = rng.choice([0, 1, obj["tcbEvaluationDataNumber"] + 1, 2**31])
    elif kind == "fmspc":
        obj["fmspc"] = rng.choice([obj["fmspc"].upper(), obj["fmspc"].lower(), "000000000000"])
    elif kind == "pceid":
        obj["pceId"] = rng.choice(["0001", "0100", obj["pceId"]])
    elif kind == "id":
        obj["id"] = rng.choice(["SGX", "TDX", "sgx"])
    elif kind == "version":
        obj["version"] = rng.choice([2, 3, 4])
    elif kind == "module" and "tdxModule" in obj:
        mod = obj["tdxModule"]
        key = rng.choice(["mrsigner", "attributes", "attributesMask"])
        mod[key] = mod[key][:-1] + ("1" if mod[key][-1] != "1" else "0")
    elif kind == "module-identity" and obj.get("tdxModuleIdentities"):
        ident = rng.choice(obj["tdxModuleIdentities"])
        sub = rng.choice(["id", "status", "isvsvn", "mrsigner"])
        if sub == "id":
            ident["id"] = rng.choice([ident["id"].lower(), "TDX_FF", ident["id"] + " "])
        elif sub == "status":
            rng.choice(ident["tcbLevels"])["tcbStatus"] = rng.choice(_STATUSES)
        elif sub == "isvsvn":
            rng.choice(ident["tcbLevels"])["tcb"]["isvsvn"] = rng.randint(0, 8)
            _intel_order(ident["tcbLevels"])
        else:
            ident["mrsigner"] = "00" * 48
    elif kind == "tcbdate":
        rng.choice(levels)["tcbDate"] = _iso(at + timedelta(days=rng.choice([-3650, 1, 3650])))
    elif kind == "pcesvn":
        lvl = rng.choice(levels)
        lvl["tcb"]["pcesvn"] = max(0, lvl["tcb"]["pcesvn"] + rng.choice([-1, 1, 5]))
    elif kind == "component":
        lvl = rng.choice(levels)
        key = rng.choice([k for k in ("sgxtcbcomponents", "tdxtcbcomponents") if k in lvl["tcb"]])
        comp = rng.choice(lvl["tcb"][key])
        comp["svn"] = max(0, min(255, comp["svn"] + rng.choice([-1, 1, -5, 5])))
    return f"tcb_info.{kind}"


def _edit_qe_identity(rng: random.Random, obj: dict[str, Any], at: datetime) -> str:
    kind = rng.choice(["status", "isvsvn", "dates", "evalnum", "id", "miscselect", "attributes",
                       "mrsigner-case", "isvprodid", "advisories"])  # fmt: skip
    levels = obj["tcbLevels"]
    if kind == "status":
        rng.choice(levels)["tcbStatus"] = rng.choice(_STATUSES)
    elif kind == "isvsvn":
        rng.choice(levels)["tcb"]["isvsvn"] = rng.randint(0, 10)
        _intel_order(levels)
    elif kind == "dates":
        key = rng.choice(["issueDate", "nextUpdate"])
        obj[key] = _iso(at + timedelta(seconds=rng.choice([-2, -1, 0, 1, 2, -86400, 86400])))
    elif kind == "evalnum":
        obj["tcbEvaluationDataNumber"] = rng.choice([0, obj["tcbEvaluationDataNumber"] + 1])
    elif kind == "id":
        obj["id"] = rng.choice(["QE", "TD_QE", "QVE"])
    elif kind == "miscselect":
        obj[rng.choice(["miscselect", "miscselectMask"])] = rng.choice(
            ["00000000", "FFFFFFFF", "01000000", "00000001"]
        )
    elif kind == "attributes":
        key = rng.choice(["attributes", "attributesMask"])
        obj[key] = rng.choice(["00" * 16, "FF" * 16, "02" + "00" * 15, "11" + "00" * 15])
    elif kind == "mrsigner-case":
        obj["mrsigner"] = obj["mrsigner"].lower()
    elif kind == "isvprodid":
        obj["isvprodid"] = obj["isvprodid"] + rng.choice([1, 2])
    elif kind == "advisories":
        rng.choice(levels)["advisoryIDs"] = ["INTEL-SA-88888"]
    return f"qe_identity.{kind}"


CRL_SCOPES: dict[str, tuple[x509.ExtensionType, bool]] = {
    "idp-only-user-certs": (
        x509.IssuingDistributionPoint(
            full_name=None, relative_name=None, only_contains_user_certs=True, only_contains_ca_certs=False,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False,
        ),
        True,
    ),
    "idp-only-ca-certs": (
        x509.IssuingDistributionPoint(
            full_name=None, relative_name=None, only_contains_user_certs=False, only_contains_ca_certs=True,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False,
        ),
        True,
    ),
    "delta": (x509.DeltaCRLIndicator(1), True),
    "delta-not-critical": (x509.DeltaCRLIndicator(1), False),
    "unknown-critical": (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),
}  # fmt: skip
"""CRL extensions that make a CRL other than its issuer's complete CRL, or that nobody processes."""


def scoped_crl(
    pki: ForgedPki,
    which: str,
    at: datetime,
    scope: str | None,
    *,
    revoked: tuple[int, ...] = (),
    entry_extension: x509.ExtensionType | None = None,
) -> bytes:
    """A PCK CRL (``which`` "pck") or Root CA CRL ("root") of the test PKI, current at ``at``,
    with the extension ``CRL_SCOPES[scope]`` and/or a critical ``entry_extension`` on its
    entries."""
    issuer, key = (pki.ca_cn, pki.ca_key) if which == "pck" else ("Intel SGX Root CA", pki.root_key)
    b = (
        x509.CertificateRevocationListBuilder().issuer_name(_name(issuer))
        .last_update(at - timedelta(days=1)).next_update(at + timedelta(days=30))
        .add_extension(x509.CRLNumber(1), critical=False)
    )  # fmt: skip
    if scope is not None:
        ext, critical = CRL_SCOPES[scope]
        b = b.add_extension(ext, critical=critical)
    for serial in revoked:
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at - timedelta(days=2))
        if entry_extension is not None:
            rb = rb.add_extension(entry_extension, critical=True)
        b = b.add_revoked_certificate(rb.build())
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _without_policy_refusals(raw: bytes) -> bytes:
    """The quote with what dcap-qvl refuses outright (and confide reports as claims) taken out
    (not debug; a TD with SEPT_VE_DISABLE and no MRSERVICETD), its body re-signed by a fresh
    attestation key that its QE report binds (the QE report is re-signed by the forged PCK key
    later): so that the forged family compares whole verdicts for these quotes too, instead of
    stopping at dcap-qvl's refusal. Unchanged when there is nothing to take out."""
    q = Quote.from_bytes(raw)
    report = q.report
    if isinstance(report, TdReport):
        word = (int.from_bytes(report.td_attributes, "little") & ~0xFF) | (1 << 28)
        fixed: EnclaveReport | TdReport = dataclasses.replace(
            report, td_attributes=word.to_bytes(8, "little"),
            mr_servicetd=bytes(48) if report.mr_servicetd is not None else None,
        )  # fmt: skip
    else:
        fixed = dataclasses.replace(
            report, attributes=bytes([report.attributes[0] & ~0x02]) + report.attributes[1:]
        )
    if fixed == report:
        return raw
    att = ec.generate_private_key(ec.SECP256R1())
    att_raw = att.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    qe = q.signature_data.qe
    qe_report = dataclasses.replace(
        qe.qe_report, report_data=hashlib.sha256(att_raw + qe.qe_auth_data).digest() + bytes(32)
    )
    qe = dataclasses.replace(qe, qe_report=qe_report, qe_report_raw=qe_report.to_bytes())
    sig = dataclasses.replace(q.signature_data, attestation_key=att_raw, qe=qe)
    edited = Quote.from_bytes(
        dataclasses.replace(q, report=fixed, body_raw=fixed.to_bytes(), signature_data=sig).to_bytes()
    )
    signature = raw_sign(att, edited.signed_bytes(edited.to_bytes()))
    return dataclasses.replace(
        edited, signature_data=dataclasses.replace(edited.signature_data, signature=signature)
    ).to_bytes()


class Forger:
    """One test PKI per case, its forged quote, and collateral built from edited JSON."""

    def __init__(self, case: Case, leaf_serial: int = 0x1234) -> None:
        self.case = case
        self.pki = ForgedPki(at=case.time)
        self.base = _without_policy_refusals(case.quote_bytes())
        self.raw = self.pki.forge_quote(self.base, leaf_serial)
        self.real = bundle(case.collateral)
        self.leaf_serial = leaf_serial

    def _quote(self, rng: random.Random) -> tuple[str, bytes]:
        """The forged quote, or one with its TEE TCB SVN(s) or QE ISVSVN changed and re-signed."""
        q = Quote.from_bytes(self.base)
        kind = rng.choice(["none", "none", "qe-isvsvn", "tee-tcb-svn", "tee-tcb-svn2", "module-version"])
        if kind == "qe-isvsvn":
            qe = q.signature_data.qe
            report = dataclasses.replace(
                qe.qe_report, isv_svn=max(0, qe.qe_report.isv_svn + rng.choice([-2, -1, 1, 2]))
            )
            qe = dataclasses.replace(qe, qe_report=report, qe_report_raw=report.to_bytes())
            q = dataclasses.replace(q, signature_data=dataclasses.replace(q.signature_data, qe=qe))
            return "quote.qe-isvsvn", self.pki.forge_quote(q.to_bytes(), self.leaf_serial)
        if not isinstance(q.report, TdReport) or kind == "none":
            return "", self.raw
        svn = bytearray(q.report.tee_tcb_svn)
        if kind == "module-version":
            svn[1] = rng.choice([0, 1, 2, 3, 0xFF])
        else:
            for i in rng.sample(range(16), rng.randint(1, 3)):
                svn[i] = max(0, min(255, svn[i] + rng.choice([-2, -1, 1, 2])))
        if kind == "tee-tcb-svn2":
            if q.report.tee_tcb_svn2 is None:
                return "", self.raw
            return "quote.tee-tcb-svn2", self.pki.forge_td_quote(
                self.base, self.leaf_serial, tee_tcb_svn2=bytes(svn)
            )
        return f"quote.{kind}", self.pki.forge_td_quote(self.base, self.leaf_serial, tee_tcb_svn=bytes(svn))

    CHAIN_KINDS = (
        "leaf-window", "ca-window", "leaf-is-ca", "ca-not-ca", "ca-no-usage", "leaf-no-usage",
        "look-alike-ca", "extra-cert", "no-ca", "leaf-by-root", "ca-path-length-0",
    )  # fmt: skip

    def _chain(self, rng: random.Random) -> tuple[str, bytes]:
        window = rng.choice([(1, None), (None, -1), (0, None), (None, 0)])
        return self.chain_quote(rng.choice(self.CHAIN_KINDS), window)

    def chain_quote(
        self, kind: str, window: tuple[int | None, int | None] = (None, None)
    ) -> tuple[str, bytes]:
        """The forged quote with its PCK chain (certification data type 5) re-issued with one
        property changed (``kind``, :attr:`CHAIN_KINDS`): a certificate's validity (``window``:
        notBefore, notAfter in seconds from the case's time; ``None``: a year before, ten years
        after), the CA flag of the leaf or the PCK CA, the key usage, the leaf signed by a
        look-alike CA, one certificate more or less; the QE report re-signed by the leaf key."""
        pki, at = self.pki, self.case.time
        lo, hi = at - timedelta(days=365), at + timedelta(days=3650)
        dates = (
            lo if window[0] is None else at + timedelta(seconds=window[0]),
            hi if window[1] is None else at + timedelta(seconds=window[1]),
        )
        q = Quote.from_bytes(self.raw)
        leaf_der = parse_pem_chain(q.signature_data.qe.certification.data)[0]
        sgx_ext = x509.load_der_x509_certificate(leaf_der).extensions.get_extension_for_oid(SGX_OID).value
        ca_key, ca_cert = pki.ca_key, pki.ca
        if kind in ("ca-window", "ca-not-ca", "ca-no-usage", "ca-path-length-0"):
            nb, na = dates if kind == "ca-window" else (lo, hi)
            ca_cert = issue(
                _name(pki.ca_cn), pki.ca_key.public_key(), issuer=_name("Intel SGX Root CA"), signing_key=pki.root_key,
                not_before=nb, not_after=na, ca=kind != "ca-not-ca", path_length=0 if kind == "ca-path-length-0" else None,
                usage=key_usage(cert_sign=kind != "ca-no-usage", digital_signature=False), serial=2,
                hash_algorithm=hashes.SHA256(),
            )  # fmt: skip
        elif kind == "look-alike-ca":
            ca_key = ec.generate_private_key(ec.SECP256R1())
        issuer_key = pki.root_key if kind == "leaf-by-root" else ca_key
        issuer_name = "Intel SGX Root CA" if kind == "leaf-by-root" else pki.ca_cn
        nb, na = dates if kind == "leaf-window" else (lo, hi)
        leaf = issue(
            _name("Intel SGX PCK Certificate"), pki.leaf_key.public_key(), issuer=_name(issuer_name),
            signing_key=issuer_key, not_before=nb, not_after=na, ca=kind == "leaf-is-ca",
            usage=key_usage(cert_sign=kind == "leaf-is-ca", digital_signature=kind != "leaf-no-usage"),
            extensions=[sgx_ext], serial=self.leaf_serial, hash_algorithm=hashes.SHA256(),
        )  # fmt: skip
        ders = [_der(leaf), _der(ca_cert), pki.root_der]
        if kind == "extra-cert":
            ders.insert(1, _der(ca_cert))
        elif kind in ("no-ca", "leaf-by-root"):
            del ders[1]
        qe = q.signature_data.qe
        qe = dataclasses.replace(qe, certification=CertificationData(5, pem_chain(ders).encode()))
        q = dataclasses.replace(q, signature_data=dataclasses.replace(q.signature_data, qe=qe))
        return f"chain.{kind}", q.to_bytes()

    def trial(self, rng: random.Random) -> Trial:
        at = self.case.time
        qname, raw = self._chain(rng) if rng.random() < 0.15 else self._quote(rng)
        info = json.loads(self.real.tcb_info)
        ident = json.loads(self.real.qe_identity)
        names = [qname] if qname else []
        scoped: tuple[str, bytes] | None = None
        revoked_pck: list[int] = []
        revoked_root: list[int] = []
        pck_window = root_window = None
        for _ in range(rng.choice([1, 1, 2, 3])):
            which = rng.choice(["tcb_info", "tcb_info", "qe_identity", "crl", "time"])
            if which == "tcb_info":
                names.append(_edit_tcb_info(rng, info, at))
            elif which == "qe_identity":
                names.append(_edit_qe_identity(rng, ident, at))
            elif which == "crl":
                sub = rng.choice(
                    ["revoke-leaf", "revoke-ca", "revoke-signing", "revoke-other", "pck-window", "root-window",
                     "scope", "critical-entry"]
                )  # fmt: skip
                if sub == "scope":
                    which, scope = rng.choice(["pck", "root"]), rng.choice(sorted(CRL_SCOPES))
                    scoped = (which, scoped_crl(self.pki, which, at, scope))
                    sub = f"{which}-{scope}"
                elif sub == "critical-entry":
                    which = rng.choice(["pck", "root"])
                    issuer = x509.CertificateIssuer([x509.DNSName("crl.invalid")])
                    scoped = (
                        which,
                        scoped_crl(self.pki, which, at, None, revoked=(77,), entry_extension=issuer),
                    )
                    sub = f"{which}-critical-entry"
                elif sub == "revoke-leaf":
                    revoked_pck.append(self.leaf_serial)
                elif sub == "revoke-ca":
                    revoked_root.append(self.pki.ca.serial_number)
                elif sub == "revoke-signing":
                    revoked_root.append(self.pki.signing.serial_number)
                elif sub == "revoke-other":
                    revoked_pck.append(self.leaf_serial + 1)
                    revoked_root.append(99)
                else:
                    lo, hi = rng.choice([(-86400, -1), (-86400, 0), (1, 86400), (0, 86400), (-86400, 86400)])
                    lo, hi = at + timedelta(seconds=lo), at + timedelta(seconds=hi)
                    if sub == "pck-window":
                        pck_window = (lo, hi)
                    else:
                        root_window = (lo, hi)
                names.append(f"crl.{sub}")
            else:
                names.append("time")
                at = at + timedelta(seconds=rng.choice([-1, 1, 3600, -3600, 86400 * 40, -86400 * 40]))
        coll = self.pki.forge_collateral(
            self.real, revoked_in_pck_crl=revoked_pck, revoked_in_root_crl=revoked_root,
            pck_crl_window=pck_window, root_crl_window=root_window,
        )  # fmt: skip
        if scoped is not None:
            coll = dataclasses.replace(
                coll, **{"pck_crl" if scoped[0] == "pck" else "root_ca_crl": scoped[1]}
            )
        tcb_text = json.dumps(info, separators=(",", ":")).encode()
        qe_text = json.dumps(ident, separators=(",", ":")).encode()
        coll = dataclasses.replace(
            coll, tcb_info=tcb_text, tcb_info_signature=raw_sign(self.pki.signing_key, tcb_text),
            qe_identity=qe_text, qe_identity_signature=raw_sign(self.pki.signing_key, qe_text),
        )  # fmt: skip
        return Trial("forged:" + " + ".join(names), self.case, raw, coll, at, self.pki.root_der)


def forged_trials(rng: random.Random) -> Iterator[Trial]:
    cases = [c for c in CASES if "Failed to decode" not in str(c.qvl)]
    forgers: dict[str, Forger] = {}
    while True:
        case = rng.choice(cases)
        if case.id not in forgers:
            forgers[case.id] = Forger(case)
        yield forgers[case.id].trial(rng)


def run(
    seed: int,
    trials: int | None = None,
    seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """``trials`` trials (half real, half forged) or as many as fit in ``seconds``."""
    rng = random.Random(seed)
    real, forged = real_trials(random.Random(rng.random())), forged_trials(random.Random(rng.random()))
    verifiers: dict[bytes | None, DcapVerifier] = {None: DcapVerifier()}
    report = Report()
    end = time.monotonic() + seconds if seconds is not None else None
    i = 0
    while (trials is None or i < trials) and (end is None or time.monotonic() < end):
        t = next(real if i % 2 == 0 else forged)
        i += 1
        verifier = verifiers.get(t.root_der)
        if verifier is None:
            verifier = verifiers[t.root_der] = (
                DcapVerifier(root_ca_der=t.root_der) if t.root_der else DcapVerifier()
            )
        before = len(report.failures)
        judge(t, run_confide(t, verifier), run_qvl(t), report)
        if log is not None and len(report.failures) > before:
            log(report.failures[-1])
    return report


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trials", type=int)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args(argv)
    report = run(a.seed, a.trials, None if a.trials else a.seconds, log=print)
    print(f"{report.trials} trials: both verified {report.both_ok}, both refused {report.both_refused}, "
          f"failures {len(report.failures)}")  # fmt: skip
    print("dcap-qvl policy refusals confide verifies:", dict(report.policy))
    print("confide stricter (refuses, dcap-qvl verifies):")
    for kind, n in report.stricter.most_common():
        print(f"  {n:6d}  {kind}")
    print("mutation families:", dict(report.kinds))
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
