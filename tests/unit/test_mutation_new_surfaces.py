"""Bounded mutation tests of the hostile-input surfaces added with certification data types 1-4
and stapled OCSP (the fuzz2 mutation campaign, CHANGELOG, which ran such mutations at larger
counts). Every mutation is drawn from a ``random.Random`` with a fixed seed, so a failure
reproduces exactly. ``CONFIDE_MUTATION_SCALE=N`` multiplies every count by N (they passed at
N = 40 too).

Invariants:

- every refusal is a :class:`~confide.errors.ConfideError` (never IndexError, ValueError,
  TypeError, struct.error, KeyError, UnicodeDecodeError, ...), and ``/v1/attest`` never answers
  5xx (but 502, ``NetworkError``, when an upstream OCSP responder fails);
- a mutation of signed or authenticated bytes never verifies;
- a mutation of unsigned bytes either verifies to exactly the original's result or is refused.
  Unsigned in a DCAP quote of certification data type 1-4 (docs/dcap.md): the whole
  certification data (PPID or encrypted PPID, raw CPUSVN, raw PCESVN, PCE ID; type 4 the leaf
  PEM), the bytes after the quote. Of these, a changed PPID (type 1), PCE ID, leaf (type 4) or
  a raw PCESVN below the certificate's is refused (:func:`confide.verify.dcap._check_platform`);
  the encrypted PPID, the raw CPUSVN, a raw PCESVN at or above the certificate's and trailing
  bytes change nothing verified (only ``details``). The PCS's ``SGX-TCBm``, ``SGX-FMSPC`` and
  ``SGX-PCK-Certificate-CA-Type`` headers are not read (the certificate's own extension is).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from asgi_call import call
from cas_inproc import Clock, InProcessCas, RuntimeKey, last_attestation, production_cas, sim_policy
from confide import errors
from confide.cas.app import create_app
from confide.cas.revocation import OcspCache
from confide.cas.verifier import PlatformVerifier
from confide.collateral.dcap import PcsHttpSource, verify_pck_certificate
from confide.collateral.nvidia_ocsp import HttpOcspSource
from confide.evidence.dcap import PckCertId, Quote, TeeType
from confide.evidence.dcap_collateral import DcapCollateral, PckCertificate
from confide.evidence.pem import pem_chain
from confide.verify.dcap import DcapVerifier, pck_info, pck_lookup
from confide.verify.ocsp import STAPLED_MAX_AGE, OcspResponse, stapled_is_stale, verify_ocsp_response
from dcap_cases import CASES, Case
from dcap_ppid import original_pck, to_leaf_quote, to_ppid_quote
from gpu_cas import NOW as GPU_NOW
from gpu_cas import NV_MEASUREMENTS, NV_REPORT, PKI
from nvidia_forge import ocsp_response, resign
from ocsp_responder import FakeOcsp
from pcs_fake import _signed
from pki import Issuer

# A mutated certificate may carry a serial of 0 or below: cryptography warns (it will refuse
# such certificates in a future release), and the suite turns warnings into errors.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

SGX = next(c for c in CASES if c.quote == "sgx/phala-dcap-qvl/sgx_quote")  # v3
TDX = next(c for c in CASES if c.quote == "tdx/phala-dcap-qvl/tdx_quote")  # v4: type 6 wraps it
TDX_V5 = next(c for c in CASES if c.quote.endswith("quote_v5_sample.dat"))
VERIFIER = DcapVerifier()
SCALE = int(os.environ.get("CONFIDE_MUTATION_SCALE", "1"))


def ppid_form(case: Case, cert_type: int) -> tuple[bytes, PckCertificate]:
    raw = case.quote_bytes()
    return to_ppid_quote(raw, cert_type) if cert_type < 4 else to_leaf_quote(raw)


def outcome(raw: bytes, case: Case, pck: PckCertificate | None, coll: DcapCollateral | None = None) -> object:
    """(claims, status, advisories), or the refusal's class name; anything else propagates."""
    try:
        result = VERIFIER.verify(
            raw, coll or DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()), at=case.time, pck=pck
        )
    except errors.ConfideError as exc:
        return type(exc).__name__
    return result.claims, result.tcb_status, result.advisory_ids


def signed_parts(quote: Quote) -> tuple[bytes, ...]:
    """What the attestation key and the PCE sign (header, body; QE report, auth data, key)."""
    sd = quote.signature_data
    qe = sd.qe
    return (
        quote.header.to_bytes(), quote.body_raw, sd.signature, sd.attestation_key,
        qe.qe_report_raw, qe.qe_report_signature, qe.qe_auth_data,
    )  # fmt: skip


def mutate_quote(raw: bytes, rng: random.Random) -> bytes:
    """One edit: a byte flip anywhere or in the certification data, a cut, an extension, an
    insertion or deletion, a length field or the certification data type changed."""
    quote = Quote.from_bytes(raw)
    data = quote.signature_data.qe.certification.data
    at = raw.rfind(data)  # the inner certification data
    out = bytearray(raw)
    op = rng.choice(["flip", "flip_cert", "cut", "extend", "insert", "delete", "length", "type"])
    if op == "flip":
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    elif op == "flip_cert":
        out[at + rng.randrange(len(data))] ^= rng.randrange(1, 256)
    elif op == "cut":
        del out[rng.randrange(len(out)) :]
    elif op == "extend":
        out += rng.randbytes(rng.randrange(1, 40))
    elif op == "insert":
        i = rng.randrange(len(out))
        out[i:i] = rng.randbytes(rng.randrange(1, 8))
    elif op == "delete":
        i = rng.randrange(len(out))
        del out[i : i + rng.randrange(1, 8)]
    elif op == "length":
        # The inner certification data size, the signature data length, the type-6 size (v4/v5).
        spots = [at - 4, quote.signed_length] + (
            [quote.signed_length + 4 + 128 + 2] * (quote.header.version >= 4)
        )
        where = rng.choice(spots)
        old = int.from_bytes(out[where : where + 4], "little")
        new = rng.choice([0, 1, old - 1, old + 1, old * 2, 2**32 - 1, rng.randrange(2**32)]) % 2**32
        out[where : where + 4] = new.to_bytes(4, "little")
    else:
        out[at - 6 : at - 4] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 0xFFFF]).to_bytes(2, "little")
    return bytes(out)


# --- DCAP: quotes of certification data types 1-4, the PCK certificate as collateral ------------


@pytest.mark.parametrize("case", [SGX, TDX, TDX_V5], ids=lambda c: c.id)
@pytest.mark.parametrize("cert_type", [1, 2, 3, 4])
def test_mutated_type_1_to_4_quotes(case: Case, cert_type: int) -> None:
    raw, pck = ppid_form(case, cert_type)
    expected = outcome(raw, case, pck)
    original = Quote.from_bytes(raw)
    rng = random.Random(f"fuzz2/quote/{case.id}/{cert_type}")
    verified_changes: set[str] = set()
    verified = 0
    for _ in range(150 * SCALE):
        mutated = mutate_quote(raw, rng)
        got = outcome(mutated, case, pck)
        try:  # the lookup a source makes: typed errors only
            cert_id = Quote.from_bytes(mutated).pck_cert_id()
            if cert_id is not None:
                pck_lookup(cert_id).describe()
        except errors.ConfideError:
            pass
        if isinstance(got, str):
            continue
        verified += 1
        quote = Quote.from_bytes(mutated)
        assert signed_parts(quote) == signed_parts(original), "a mutation of signed bytes verified"
        assert got == expected, "a mutation of unsigned bytes changed the result"
        before, after = original.pck_cert_id(), quote.pck_cert_id()
        assert before is not None and after is not None
        verified_changes |= {
            f.name for f in dataclasses.fields(PckCertId) if getattr(before, f.name) != getattr(after, f.name)
        }
        if quote.trailing != original.trailing:
            verified_changes.add("trailing")
    # What may change and still verify: the unsigned fields the module docstring lists.
    assert verified_changes <= {"encrypted_ppid", "cpu_svn", "pce_svn", "trailing"}
    assert verified > 0 or isinstance(expected, str)  # the invariant was exercised


@pytest.mark.parametrize("cert_type", [1, 2, 3, 4])
def test_another_platforms_pck_certificate_never_verifies(cert_type: int) -> None:
    """Every real PCK certificate of tests/assets given for every other platform's quote."""
    pcks = {original_pck(c.quote_bytes())[0] for c in CASES}
    assert len(pcks) >= 10
    for case in (SGX, TDX, TDX_V5):
        raw, own = ppid_form(case, cert_type)
        for other in pcks - {own}:
            assert isinstance(outcome(raw, case, other), str)


@pytest.mark.parametrize("case", [SGX, TDX], ids=lambda c: c.id)
def test_mutated_pck_certificates_from_collateral(case: Case) -> None:
    raw, pck = ppid_form(case, 3)
    expected = outcome(raw, case, pck)
    rng = random.Random(f"fuzz2/pck/{case.id}")
    for _ in range(120 * SCALE):
        ders = [pck.leaf, *pck.issuer_chain]
        which = rng.randrange(3)
        der = bytearray(ders[which])
        op = rng.randrange(3)
        if op == 0:
            der[rng.randrange(len(der))] ^= rng.randrange(1, 256)
        elif op == 1:
            del der[rng.randrange(len(der)) :]
        else:
            der += rng.randbytes(rng.randrange(1, 8))
        ders[which] = bytes(der)
        got = outcome(raw, case, PckCertificate(ders[0], tuple(ders[1:])))
        if isinstance(got, str):
            continue
        # Only a re-encoding cryptography reads as the same signed certificate may verify
        # (e.g. the unused-bits octet of the signature BIT STRING, docs/limitations.md).
        assert got == expected
        new, old = (
            x509.load_der_x509_certificate(d) for d in (ders[which], [pck.leaf, *pck.issuer_chain][which])
        )
        assert (new.tbs_certificate_bytes, new.signature) == (old.tbs_certificate_bytes, old.signature)


# --- Intel PCS / PCCS answers (the PCK certificate and the collateral), the disk cache ----------

Route = list[Any]  # [status, body, headers]


def pcs_routes(raw: bytes, coll: DcapCollateral, pck: PckCertificate) -> dict[str, Route]:
    """What a PCCS answers for ``raw`` (pcs_fake's answers, as a MockTransport route table)."""
    quote = Quote.from_bytes(raw)
    cert_id = quote.pck_cert_id()
    assert cert_id is not None
    want, ext = pck_lookup(cert_id), verify_pck_certificate(pck)
    tcb = f"cpusvn={want.cpu_svn.hex()}&pcesvn={want.pce_svn_le.hex()}&pceid={want.pce_id.hex()}"
    pck_path = f"/sgx/certification/v4/pckcert?qeid={want.qe_id.hex()}&{tcb}"
    if cert_id.cert_type == 3 and cert_id.encrypted_ppid is not None:
        pck_path += f"&encrypted_ppid={cert_id.encrypted_ppid.hex()}"
    fmspc, ca = pck_info(quote, pck)
    tee = "tdx" if quote.tee == TeeType.TDX else "sgx"

    def chain(ders: tuple[bytes, ...]) -> str:
        return urllib.parse.quote(pem_chain(ders))

    return {
        pck_path: [200, pem_chain([pck.leaf]).encode(), {
            "SGX-PCK-Certificate-Issuer-Chain": chain(pck.issuer_chain),
            "SGX-TCBm": (ext.cpu_svn + ext.pce_svn.to_bytes(2, "little")).hex().upper(),
            "SGX-FMSPC": ext.fmspc.hex().upper(), "SGX-PCK-Certificate-CA-Type": ca,
        }],
        f"/{tee}/certification/v4/tcb?fmspc={fmspc.hex()}": [
            200, _signed("tcbInfo", coll.tcb_info, coll.tcb_info_signature),
            {"TCB-Info-Issuer-Chain": chain(coll.tcb_info_issuer_chain)},
        ],
        f"/{tee}/certification/v4/qe/identity": [
            200, _signed("enclaveIdentity", coll.qe_identity, coll.qe_identity_signature),
            {"SGX-Enclave-Identity-Issuer-Chain": chain(coll.qe_identity_issuer_chain)},
        ],
        f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": [
            200, coll.pck_crl, {"SGX-PCK-CRL-Issuer-Chain": chain(coll.pck_crl_issuer_chain)},
        ],
        "/sgx/certification/v4/rootcacrl": [200, coll.root_ca_crl.hex().encode(), {}],
    }  # fmt: skip


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    op = rng.randrange(6)
    if not out or op == 0:
        return b""
    i = rng.randrange(len(out))
    if op == 1:
        out[i] ^= rng.randrange(1, 256)
    elif op == 2:
        del out[i:]
    elif op == 3:
        out += rng.randbytes(rng.randrange(1, 20))
    elif op == 4:
        out[i:i] = rng.randbytes(rng.randrange(1, 6))
    else:
        del out[i : i + rng.randrange(1, 30)]
    return bytes(out)


def mutate_header(value: str, rng: random.Random, other_chain: str) -> str | None:
    """A header value (a URL-encoded PEM chain, or a hex value) edited; ``None``: dropped."""
    op = rng.randrange(8)
    if op == 0:
        return None
    if op == 1:
        return mutate_bytes(value.encode(), rng).decode("latin-1")
    if op == 2:
        i = rng.randrange(len(value) + 1)
        return value[:i] + rng.choice(["%ZZ", "%FF", "%C3%28", "%00", "%", "%0A", "\u00e9"]) + value[i:]
    if op == 3:
        return other_chain
    pem = urllib.parse.unquote(value)
    blocks = [
        b + "-----END CERTIFICATE-----\n" for b in pem.split("-----END CERTIFICATE-----") if "BEGIN" in b
    ]
    if op == 4 and blocks:
        blocks.pop(rng.randrange(len(blocks)))
    elif op == 5:
        blocks.reverse()
    elif op == 6 and blocks:
        blocks.append(blocks[0])
    return urllib.parse.quote("".join(blocks))


def pcs_source(routes: dict[str, Route] | None, cache: Path, at: datetime) -> PcsHttpSource:
    """A PCCS source answering from ``routes`` (``None``: the network is down)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if routes is None:
            raise httpx2.ConnectError("down")
        route = routes.get(request.url.raw_path.decode())
        if route is None:
            return httpx2.Response(404)
        status, body, headers = route
        return httpx2.Response(
            status, content=body, headers={k: v.encode("latin-1") for k, v in headers.items()}
        )

    client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return PcsHttpSource("http://pcs.test", cache_dir=cache, clock=lambda: at, client=client)


def fetch_and_verify(source: PcsHttpSource, raw: bytes, case: Case) -> tuple[object, PckCertificate | None]:
    quote = Quote.from_bytes(raw)
    cert_id = quote.pck_cert_id()
    assert cert_id is not None
    try:
        pck = source.get_pck_certificate(cert_id)
        fmspc, ca = pck_info(quote, pck)
        coll = source.get_collateral(fmspc=fmspc, ca=ca, tee=quote.tee)
    except errors.ConfideError as exc:
        return type(exc).__name__, None
    return outcome(raw, case, pck, coll), pck


@pytest.mark.parametrize("case", [SGX, TDX], ids=lambda c: c.id)
def test_mutated_pcs_answers_and_disk_cache(case: Case) -> None:
    rng = random.Random(f"fuzz2/pcs/{case.id}")
    coll = DcapCollateral.from_dcap_qvl_json(case.collateral_bytes())
    other_chain = urllib.parse.quote(pem_chain(original_pck(TDX_V5.quote_bytes())[0].issuer_chain))
    other_leaf = pem_chain([original_pck(TDX_V5.quote_bytes())[0].leaf]).encode()
    for round_no in range(80 * SCALE):
        cert_type = 1 + round_no % 4
        raw, pck = ppid_form(case, cert_type)
        expected = outcome(raw, case, pck)
        routes = pcs_routes(raw, coll, pck)
        path = rng.choice(sorted(routes))
        route = routes[path]
        what = rng.choice(["body", "header", "header", "status", "other leaf"])
        if what == "body":
            route[1] = mutate_bytes(route[1], rng)
        elif what == "status":
            route[0] = rng.choice([204, 301, 404, 500])
        elif what == "other leaf":
            routes[next(p for p in routes if "pckcert" in p)][1] = other_leaf
        elif route[2]:
            name = rng.choice(sorted(route[2]))
            value = mutate_header(route[2][name], rng, other_chain)
            if value is None:
                del route[2][name]
            else:
                route[2][name] = value
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp)
            got, fetched = fetch_and_verify(pcs_source(routes, cache, case.time), raw, case)
            if not isinstance(got, str):
                assert fetched == pck and got == expected, f"{what} of {path} verified as something else"
            # The disk cache read back after a byte or JSON edit, the network down.
            for record in cache.iterdir():
                text = record.read_bytes()
                if rng.random() < 0.5:
                    record.write_bytes(mutate_bytes(text, rng))
                else:
                    doc = json.loads(text)
                    key = rng.choice(sorted(doc))
                    doc[key] = rng.choice(
                        [None, 1, [], "", "zz", "9999-01-01T00:00:00", "9999-01-01T00:00:00+00:00"]
                    )
                    record.write_text(json.dumps(doc))
            got, fetched = fetch_and_verify(pcs_source(None, cache, case.time), raw, case)
            if not isinstance(got, str):
                assert fetched == pck and got == expected


# --- the CAS: /v1/attest with type 1-4 quotes and hostile PCS answers ---------------------------


def test_cas_attest_with_mutated_type_1_to_4_quotes_never_answers_5xx() -> None:
    rng = random.Random("fuzz2/cas-dcap")
    now = datetime(2025, 6, 19, 11, 0, tzinfo=UTC)  # both platforms' collateral is current (test_cas_pck)
    answered: set[int] = set()
    for round_no in range(10 * SCALE):
        case = (SGX, TDX)[round_no % 2]
        raw, pck = ppid_form(case, 1 + round_no % 4)
        routes = pcs_routes(raw, DcapCollateral.from_dcap_qvl_json(case.collateral_bytes()), pck)
        if round_no >= 2:  # the first two with honest answers
            route = routes[rng.choice(sorted(routes))]
            route[1] = mutate_bytes(route[1], rng)
        with tempfile.TemporaryDirectory() as tmp:
            source = pcs_source(routes, Path(tmp) / "pcs", now)
            cas = production_cas(Path(tmp) / "cas", PlatformVerifier(dcap_source=source), sim_policy())
            cas.clock = Clock(now.timestamp())
            app = create_app(cas)
            tee = "tdx" if Quote.from_bytes(raw).is_tdx else "sgx"
            for i in range(6):
                evidence = raw if i == 0 else mutate_quote(raw, rng)
                body = RuntimeKey(cas).body(policy="app", service="svc", platform=tee, evidence=evidence)
                status, out = call(app, "/v1/attest", [json.dumps(body).encode()])
                assert status < 500, out[:300]
                answered.add(status)
                assert json.loads(out)["error"]["class"] in errors.__all__
    assert answered == {400, 403}


# --- stapled OCSP responses (``ocsp:<i>``, ``gpu<k>.ocsp:<i>``) ----------------------------------


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


GOOD = ocsp_response(
    PKI.ica[0], PKI.root[0], PKI.root, this_update=GPU_NOW - timedelta(minutes=1),
    next_update=GPU_NOW + timedelta(hours=1), nonce=b"\x01" * 32,
)  # fmt: skip


def resigned(tbs: bytes) -> bytes:
    """An OCSPResponse whose (hostile) tbsResponseData is signed by the issuer, as a responder
    the chain trusts would sign it: the parsing behind the signature check."""
    sigalg = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040303")))  # ecdsa-with-SHA384
    sig = PKI.root[1].sign(tbs, ec.ECDSA(hashes.SHA384()))
    basic = _tlv(0x30, tbs + sigalg + _tlv(0x03, b"\x00" + sig))
    body = _tlv(0x30, _tlv(0x06, bytes.fromhex("2b0601050507300101")) + _tlv(0x04, basic))
    return _tlv(0x30, _tlv(0x0A, b"\x00") + _tlv(0xA0, body))


def mutate_der(der: bytes, rng: random.Random) -> bytes:
    out = bytearray(der)
    op = rng.randrange(6)
    i = rng.randrange(len(out))
    if op == 0:
        out[i] ^= rng.randrange(1, 256)
    elif op == 1:
        del out[i:]
    elif op == 2:
        out[i:i] = rng.randbytes(rng.randrange(1, 4))
    elif op == 3:
        del out[i : i + rng.randrange(1, 5)]
    else:  # a DER tag or length octet
        spots = [j for j in range(len(out) - 1) if out[j] in (0x02, 0x04, 0x18, 0x30, 0xA0, 0xA1, 0xA2)]
        j = rng.choice(spots) + (op == 4)
        out[j] = rng.choice([0x00, 0x05, 0x17, 0x30, 0x31, 0x7F, 0x80, 0x81, 0xA0, (out[j] + 1) % 256])
    return bytes(out) if bytes(out) != der else mutate_der(der, rng)


def test_signed_hostile_ocsp_responses_raise_only_confide_errors() -> None:
    tbs = ocsp.load_der_ocsp_response(GOOD).tbs_response_bytes
    assert verify_ocsp_response(
        OcspResponse(resigned(tbs), None, STAPLED_MAX_AGE), PKI.ica[0], PKI.root[0], at=GPU_NOW
    )
    rng = random.Random("fuzz2/ocsp-signed")
    for _ in range(600 * SCALE):
        der = resigned(mutate_der(tbs, rng))
        for response in (OcspResponse(der, None, STAPLED_MAX_AGE), OcspResponse(der)):
            stapled_is_stale(response, GPU_NOW)
            try:
                verify_ocsp_response(response, PKI.ica[0], PKI.root[0], at=GPU_NOW)
            except errors.ConfideError:
                pass


STAPLING_POLICY = f"""name: app
version: "0.3"
services:
  - name: gpu
    command: gpu --token $$SCONE::token$$
    attestation:
      nvidia-gpu:
        driver_version: "550.90.07"
        measurements: {{1: "{NV_MEASUREMENTS[1].hex()}", 22: "{NV_MEASUREMENTS[22].hex()}"}}
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [gpu-only]
"""


def test_stapled_ocsp_mutations_through_the_api_never_answer_5xx(tmp_path: Path) -> None:
    """Mutated responses, duplicated, missing, misnamed and mistyped aux entries, through
    ``/v1/attest`` of a stapled-only CAS: never 5xx; what is accepted is the signed response."""
    inproc = InProcessCas.start(tmp_path / "cas", STAPLING_POLICY).verify_with(
        nvidia_root=PKI.root[0], nvidia_ocsp_stapled_only=True
    )
    inproc.cas.clock = Clock(GPU_NOW.timestamp())
    app = create_app(inproc.cas)
    good = ocsp.load_der_ocsp_response(GOOD)
    keys = ["ocsp:1", "ocsp:2", "ocsp:99", "ocsp:100", "ocsp: 1", "ocsp:1\n", "OCSP:1", "ocsp:\u0661",
            "gpu0.ocsp:1", "gpu0.ocsp:0", "ocsp:", "certs", "gpu0"]  # fmt: skip
    rng = random.Random("fuzz2/ocsp-api")

    def attest(aux: dict[str, bytes], edit: Callable[[dict[str, Any]], None] | None = None) -> int:
        rt = RuntimeKey(inproc.cas)
        report = resign(NV_REPORT, PKI.leaf[1], nonce=rt.binding[:32])
        body = rt.body(
            policy="app",
            service="gpu",
            platform="nvidia-gpu",
            evidence=report,
            aux={"certs": PKI.chain_pem(), **aux},
        )
        if edit is not None:
            edit(body)
        status, out = call(app, "/v1/attest", [json.dumps(body).encode()])
        assert status < 500, out[:300]
        return status

    assert attest({"ocsp:1": GOOD}) == 200
    for _ in range(40 * SCALE):
        der = mutate_der(GOOD, rng)
        if attest({"ocsp:1": der}) == 200:
            got = ocsp.load_der_ocsp_response(der)
            assert (got.tbs_response_bytes, got.signature) == (good.tbs_response_bytes, good.signature)
    for _ in range(25 * SCALE):
        aux = {k: rng.choice([GOOD, b"", b"\x30\x00"]) for k in rng.sample(keys, rng.randrange(1, 4))}
        key, value = rng.choice(sorted(aux)), rng.choice([None, 1, [], {}, "!!!", "QQ=", "\u00e9"])

        def edit(body: dict[str, Any], key: str = key, value: object = value) -> None:
            body["aux"][key] = value

        status = attest(aux, edit if rng.random() < 0.3 else None)
        if status == 200:
            assert set(aux) == {"ocsp:1"} and aux["ocsp:1"] == GOOD


def test_stapled_and_responder_mutations_with_a_responder_never_answer_5xx(tmp_path: Path) -> None:
    """A CAS with a responder (``--nvidia-ocsp URL``): the stapled response good, stale (asked
    again), absent or mutated, the responder honest, failing or answering mutated responses.
    Never 5xx but 502 (the responder failed: ``NetworkError``); a mutated stapled response
    that is accepted was not used (stale by its dates: the responder was asked)."""
    rng = random.Random("fuzz2/ocsp-responder")
    mode = ["honest"]

    def behaviour(cert: x509.Certificate, issuer: Issuer, nonce: bytes | None) -> tuple[int, bytes]:
        good = ocsp_response(
            cert, issuer[0], issuer, this_update=GPU_NOW - timedelta(minutes=1),
            next_update=GPU_NOW + timedelta(hours=1), nonce=nonce,
        )  # fmt: skip
        if mode[0] == "failing":
            return rng.choice([302, 404, 500]), b""
        return 200, good if mode[0] == "honest" else mutate_der(good, rng)

    stale = ocsp_response(
        PKI.ica[0], PKI.root[0], PKI.root, this_update=GPU_NOW - timedelta(days=3),
        next_update=GPU_NOW + timedelta(hours=1), nonce=b"\x01" * 32,
    )  # fmt: skip
    server = FakeOcsp({PKI.ica[0].serial_number: (PKI.ica[0], PKI.root)}, behaviour).start()
    try:
        with HttpOcspSource(server.url, timeout=30) as source:
            inproc = InProcessCas.start(tmp_path / "cas", STAPLING_POLICY).verify_with(
                nvidia_root=PKI.root[0], nvidia_ocsp=OcspCache(source)
            )
            inproc.cas.clock = Clock(GPU_NOW.timestamp())
            app = create_app(inproc.cas)
            statuses: set[int] = set()
            for _ in range(40 * SCALE):
                mode[0] = rng.choice(["honest", "honest", "failing", "mutated"])
                inproc.verify_with(
                    nvidia_root=PKI.root[0], nvidia_ocsp=OcspCache(source)
                )  # nothing remembered
                stapled = rng.choice([None, GOOD, stale, mutate_der(GOOD, rng), mutate_der(stale, rng)])
                rt = RuntimeKey(inproc.cas)
                report = resign(NV_REPORT, PKI.leaf[1], nonce=rt.binding[:32])
                aux = {"certs": PKI.chain_pem()} | ({} if stapled is None else {"ocsp:1": stapled})
                body = rt.body(policy="app", service="gpu", platform="nvidia-gpu", evidence=report, aux=aux)
                status, out = call(app, "/v1/attest", [json.dumps(body).encode()])
                statuses.add(status)
                assert status < 500 or (status, json.loads(out)["error"]["class"]) == (502, "NetworkError")
                if status == 200 and stapled not in (None, GOOD, stale):
                    assert last_attestation(inproc.cas)["ocsp_source"] == "responder"
            assert {200, 400, 403, 502} <= statuses
    finally:
        server.stop()
