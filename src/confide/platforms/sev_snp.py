"""``confide evidence verify --platform sev-snp``: files in, :class:`VerifiedEvidence` out.

Inputs:

* EVIDENCE: the raw 0x4A0-byte ``ATTESTATION_REPORT`` (binary or hex text).
* ``--vcek FILE``: the VCEK or VLEK, DER or PEM; a PEM may hold VEK, ASK/ASVK, ARK (in that
  order, as AMD KDS and ``snpguest`` write them). A supplied ARK must equal the pinned one.
* ``--chain FILE``: ASK/ASVK then ARK (PEM, as AMD KDS ``cert_chain`` serves it); may also
  hold the ARK-signed CRL as a ``X509 CRL`` PEM block. Default: the embedded chain chosen
  from the VEK's issuer.
* ``--collateral DIR``: a directory laid out like AMD KDS (see
  :class:`confide.collateral.amd_kds.LocalKdsCollateral`); used to find the VCEK when
  ``--vcek`` is absent and the CRL when present. ``--collateral URL``: AMD KDS itself
  (``https://kdsintf.amd.com``) or a mirror, through
  :class:`~confide.collateral.amd_kds.KdsHttpCollateral` with its cache in
  ``$XDG_CACHE_HOME/confide/kds``.
* ``--root FILE``: replaces the pinned ARK of its product (tests with a private PKI only).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from confide.collateral import cache_dir
from confide.collateral.amd_kds import AmdCollateralRequest, KdsHttpCollateral, LocalKdsCollateral
from confide.errors import CertificateChainError, CollateralMissingError, ParseError, UsageError
from confide.evidence.sev_snp import AttestationReport, Product, SigningKey
from confide.evidence.sev_snp_json import report_from_serde_json
from confide.platforms import MAX_CERTIFICATE_FILE, VerifyRequest, read_input_file
from confide.roots import read_root
from confide.verify.result import VerifiedEvidence
from confide.verify.sev_snp import (
    PINNED_ARK_SHA256,
    AmdChain,
    AmdRootStore,
    SnpVerifier,
    VekKind,
    load_certificates,
)
from confide.verify.x509util import CERTIFICATE_ERRORS, check_crl_fields

__all__ = ["embedded_roots", "embedded_verifier", "load_crl", "roots_with_override", "verify_request"]

_PEM_CRL = b"-----BEGIN X509 CRL-----"


def _chain_file(product: Product, kind: VekKind) -> str:
    return f"amd_{product.value.lower()}_{kind.value}_chain.pem"


@functools.cache
def embedded_roots() -> AmdRootStore:
    """The AMD chains shipped in ``confide/roots`` (ARKs checked against the pinned fingerprints)."""
    return AmdRootStore.from_pem({(p, k): read_root(_chain_file(p, k)) for p in Product for k in VekKind})


@functools.cache
def embedded_verifier() -> SnpVerifier:
    """One shared verifier over :func:`embedded_roots` (its caches are shared by every caller)."""
    return SnpVerifier(embedded_roots())


def _read(path: Path, what: str) -> bytes:
    return read_input_file(path, what, MAX_CERTIFICATE_FILE, "certificates (DER or PEM)")


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if _PEM_CRL in data:
            return check_crl_fields(x509.load_pem_x509_crl(data[data.index(_PEM_CRL) :]))
        return check_crl_fields(x509.load_der_x509_crl(data))
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"not a DER or PEM X.509 CRL: {exc}", structure="AMD CRL") from None


def roots_with_override(root_file: Path) -> AmdRootStore:
    """Roots for ``--root``: each ARK in ``root_file`` is pinned for its product (shipped chains
    whose ARK no longer matches are dropped); other products keep the shipped chains."""
    certs = load_certificates(_read(root_file, "--root"), "--root")
    pinned = dict(PINNED_ARK_SHA256)
    chains: dict[tuple[Product, VekKind], AmdChain] = {}
    for cert in certs:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(cn[0].value) if cn else ""
        product = next((p for p in Product if name == f"ARK-{p}"), None)
        if product is None:
            raise UsageError(f"--root: got a certificate for {name!r}, expected an ARK-Milan/-Genoa/-Turin")
        pinned[product] = cert.fingerprint(hashes.SHA256()).hex()
    # Keep the shipped chains of the other products.
    for p in Product:
        for k in VekKind:
            chain = AmdChain.from_certificates(load_certificates(read_root(_chain_file(p, k)), "embedded"))
            if pinned[p] == chain.ark.fingerprint(hashes.SHA256()).hex():
                chains[(p, k)] = chain
    return AmdRootStore(chains, pinned=pinned)


def verify_request(req: VerifyRequest) -> VerifiedEvidence:
    embedded_vek: bytes | None = None
    if req.evidence.lstrip()[:1] == b"{":
        # trustee / sev-crate serde JSON: rebuilt into the raw report, then verified as such
        raw, embedded_vek = report_from_serde_json(req.evidence)
        req = dataclasses.replace(req, evidence=raw)
    report = AttestationReport.from_bytes(req.evidence)
    crl: x509.CertificateRevocationList | None = None
    chain: AmdChain | None = None

    vek_certs: list[x509.Certificate]
    if req.vcek is not None:
        vek_certs = load_certificates(_read(req.vcek, "--vcek"), "--vcek")
    elif embedded_vek is not None:
        vek_certs = load_certificates(embedded_vek, "cert_chain of the JSON evidence")
    elif req.collateral is not None or req.collateral_url is not None:
        if report.signing_key is not SigningKey.VCEK:
            raise UsageError("the report is signed by a VLEK: pass it with --vcek (KDS serves VCEKs only)")
        product = report.cpuid_product
        if product is None:
            raise UsageError(
                "a v2 report does not name its product: pass --vcek (or a v3+ report) with --collateral"
            )
        request = AmdCollateralRequest.for_report(report, product)
        if req.collateral_url is not None:
            # AMD KDS (or a mirror) over HTTP(S), cached; a cached CRL is refetched once its
            # nextUpdate is past at the verification time. Only what verifies for this request
            # under the roots the report is verified with is kept on disk.
            at = req.at
            roots = roots_with_override(req.root) if req.root else embedded_roots()
            with KdsHttpCollateral(
                cache_dir("kds"), roots=roots, base_url=req.collateral_url, clock=lambda: at
            ) as kds:
                collateral = kds.fetch(request)
        else:
            assert req.collateral is not None
            collateral = LocalKdsCollateral(req.collateral).fetch(request)
        vek_certs = load_certificates(collateral.vek_der, "VCEK from --collateral")
        chain = AmdChain.from_certificates(load_certificates(collateral.chain_pem, "cert_chain"))
        if collateral.crl_der is not None:
            crl = load_crl(collateral.crl_der)
    else:
        raise CollateralMissingError(
            "SEV-SNP verification needs the VCEK/VLEK: pass --vcek FILE (DER or PEM), "
            "or --collateral DIR|URL (an AMD KDS mirror directory, or AMD KDS: https://kdsintf.amd.com)"
        )

    if len(vek_certs) == 3:
        if req.chain is not None:
            raise UsageError("--vcek already holds VEK+ASK+ARK; drop --chain or pass the VEK alone")
        chain = AmdChain.from_certificates(vek_certs[1:], "--vcek (VEK, ASK/ASVK, ARK)")
    elif len(vek_certs) != 1:
        raise CertificateChainError(
            f"--vcek: got {len(vek_certs)} certificates, expected 1 (the VEK) or 3 (VEK, ASK/ASVK, ARK)"
        )
    vek = vek_certs[0]

    if req.chain is not None:
        data = _read(req.chain, "--chain")
        chain = AmdChain.from_certificates(load_certificates(data, "--chain"), "--chain")
        if _PEM_CRL in data:
            crl = load_crl(data)

    verifier = SnpVerifier(roots_with_override(req.root), cache_size=0) if req.root else embedded_verifier()
    return verifier.verify(req.evidence, vek, at=req.at, chain=chain, crl=crl)
