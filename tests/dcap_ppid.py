"""Quotes whose certification data only names the PCK certificate (types 1-4), made from real
type-5 quotes of tests/assets.

The certification data is not covered by the quote signature (the attestation key signs the
header and body; the QE report binds the attestation key and the QE authentication data, and
the PCE's signature covers the QE report only): Intel's TDQE itself writes type 3 first and
lets the quote library swap in the chain later ("This allows the quote certification
information to change to contain the actual PCK cert after initially only carrying the
PPID+PCEID+TCB without making the quote invalid", DCAP QuoteGeneration, tdqe ``gen_quote``).
So replacing a real quote's type-5 chain with type-1/2/3 data (the CPUSVN, PCESVN and PCE ID
of the original PCK leaf's SGX extension, an arbitrary PPID field) gives a quote that verifies
exactly as the original when the original PCK leaf and its issuer chain are given as
collateral."""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography import x509

from confide.evidence.dcap import CertificationData, Quote
from confide.evidence.dcap_collateral import PckCertificate
from confide.evidence.pck import PckExtension, parse_pck_extension
from confide.evidence.pem import parse_pem_chain, pem_chain

SGX_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
PPID_FIELD = {1: 16, 2: 256, 3: 384}


def original_pck(raw: bytes) -> tuple[PckCertificate, PckExtension]:
    """The PCK leaf and issuer chain a type-5 quote carries, and the leaf's SGX extension."""
    ders = parse_pem_chain(Quote.from_bytes(raw).signature_data.qe.certification.data)
    leaf = x509.load_der_x509_certificate(ders[0])
    ext = leaf.extensions.get_extension_for_oid(SGX_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return PckCertificate(ders[0], (ders[1], ders[2])), parse_pck_extension(ext.value)


def with_certification(raw: bytes, cert_type: int, data: bytes) -> bytes:
    """``raw`` with its (innermost) certification data replaced."""
    quote = Quote.from_bytes(raw)
    sig = quote.signature_data
    qe = dataclasses.replace(sig.qe, certification=CertificationData(cert_type, data))
    return dataclasses.replace(quote, signature_data=dataclasses.replace(sig, qe=qe)).to_bytes()


def ppid_data(ppid_field: bytes, cpu_svn: bytes, pce_svn: int, pce_id: bytes) -> bytes:
    """sgx_ql_ppid_*_cert_info_t: PPID field, cpu_svn[16], pce_isv_svn u16 LE, pce_id[2]."""
    return ppid_field + cpu_svn + pce_svn.to_bytes(2, "little") + pce_id


def to_ppid_quote(
    raw: bytes,
    cert_type: int = 3,
    *,
    ppid: bytes | None = None,
    cpu_svn: bytes | None = None,
    pce_svn: int | None = None,
    pce_id: bytes | None = None,
) -> tuple[bytes, PckCertificate]:
    """The type-``cert_type`` (1-3) form of a real type-5 quote, and the PCK certificate that
    verifies it (the original leaf and chain). Unset fields come from the leaf's extension; the
    PPID field is the leaf's PPID for type 1, else arbitrary bytes of the right size."""
    pck, ext = original_pck(raw)
    if ppid is None:
        size = PPID_FIELD[cert_type]
        ppid = ext.ppid if cert_type == 1 else (hashlib.sha512(raw).digest() * 6)[:size]
    data = ppid_data(
        ppid,
        ext.cpu_svn if cpu_svn is None else cpu_svn,
        ext.pce_svn if pce_svn is None else pce_svn,
        ext.pce_id if pce_id is None else pce_id,
    )
    return with_certification(raw, cert_type, data), pck


def to_leaf_quote(raw: bytes) -> tuple[bytes, PckCertificate]:
    """The type-4 form (the PCK leaf alone, PEM) of a real type-5 quote, and its certificate."""
    pck, _ = original_pck(raw)
    return with_certification(raw, 4, pem_chain([pck.leaf]).encode()), pck
