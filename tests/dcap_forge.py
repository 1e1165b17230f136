"""A test PKI in Intel's shape, to re-sign real quotes and collateral.

Real quotes keep their body, attestation key and quote signature; only the PCK chain (with the
real leaf's SGX extension) and the QE report signature are replaced, and TCB Info / QE Identity
are re-signed by a test TCB signing key. This lets tests build revoked, expired and mis-signed
collateral that no public source provides, while the rest of the verification runs unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from confide.evidence.dcap import (
    CertificationData,
    EcdsaSignatureData,
    QeReportCertificationData,
    Quote,
    TdReport,
)
from confide.evidence.dcap_collateral import DcapCollateral
from confide.evidence.pem import parse_pem_chain, pem_chain
from der_edit import without_next_update
from pki import issue, key_usage

SGX_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    *,
    ca: bool,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    return issue(
        _name(subject), key.public_key(), issuer=_name(issuer), signing_key=issuer_key,
        not_before=not_before, not_after=not_after, ca=ca,
        usage=key_usage(cert_sign=ca, digital_signature=not ca),
        extensions=[extra] if extra is not None else (), serial=serial, hash_algorithm=hashes.SHA256(),
    )  # fmt: skip


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(Encoding.DER)


@dataclass
class ForgedPki:
    at: datetime
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    leaf_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    signing_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ca_cn: str = "Intel SGX PCK Platform CA"

    def __post_init__(self) -> None:
        lo, hi = self.at - timedelta(days=365), self.at + timedelta(days=3650)
        self.root = _cert(
            "Intel SGX Root CA", self.root_key, "Intel SGX Root CA", self.root_key, 1, lo, hi, ca=True
        )
        self.ca = _cert(self.ca_cn, self.ca_key, "Intel SGX Root CA", self.root_key, 2, lo, hi, ca=True)
        self.signing = _cert(
            "Intel SGX TCB Signing", self.signing_key, "Intel SGX Root CA", self.root_key, 3, lo, hi, ca=False
        )
        self.leaf: x509.Certificate | None = None

    @property
    def root_der(self) -> bytes:
        return _der(self.root)

    def crl(
        self,
        issuer: str,
        key: ec.EllipticCurvePrivateKey,
        revoked: list[int],
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(_name(issuer))
            .last_update(this_update or self.at - timedelta(days=1))
            .next_update(next_update or self.at + timedelta(days=30))
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(self.at - timedelta(days=2))
                .build()
            )
        return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)

    def crl_without_next_update(self, issuer: str, key: ec.EllipticCurvePrivateKey) -> bytes:
        """:meth:`crl` without ``nextUpdate`` (:func:`der_edit.without_next_update`)."""
        return without_next_update(
            self.crl(issuer, key, []), lambda tbs: key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        )

    def forge_td_quote(self, raw: bytes, leaf_serial: int = 0x1234, **td_report: bytes) -> bytes:
        """:meth:`forge_quote` with fields of the TD report replaced (e.g. ``tee_tcb_svn2``):
        a new attestation key, which the re-signed QE report binds, signs the edited quote."""
        quote = Quote.from_bytes(raw)
        assert isinstance(quote.report, TdReport)
        report = dataclasses.replace(quote.report, **td_report)
        att_key = ec.generate_private_key(ec.SECP256R1())
        att_raw = att_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        qe = quote.signature_data.qe
        qe_report = dataclasses.replace(
            qe.qe_report, report_data=hashlib.sha256(att_raw + qe.qe_auth_data).digest() + bytes(32)
        )
        qe = dataclasses.replace(qe, qe_report=qe_report, qe_report_raw=qe_report.to_bytes())
        sig = dataclasses.replace(quote.signature_data, attestation_key=att_raw, qe=qe)
        edited = dataclasses.replace(quote, report=report, body_raw=report.to_bytes(), signature_data=sig)
        unsigned = Quote.from_bytes(self.forge_quote(edited.to_bytes(), leaf_serial))
        signature = raw_sign(att_key, unsigned.signed_bytes(unsigned.to_bytes()))
        final = dataclasses.replace(
            unsigned, signature_data=dataclasses.replace(unsigned.signature_data, signature=signature)
        )
        return final.to_bytes()

    def forge_quote(self, raw: bytes, leaf_serial: int = 0x1234) -> bytes:
        """Re-issue the quote's PCK chain under this PKI and re-sign its QE report."""
        quote = Quote.from_bytes(raw)
        qe = quote.signature_data.qe
        real_leaf = x509.load_der_x509_certificate(parse_pem_chain(qe.certification.data)[0])
        ext = real_leaf.extensions.get_extension_for_oid(SGX_OID).value
        lo, hi = self.at - timedelta(days=365), self.at + timedelta(days=3650)
        self.leaf = _cert(
            "Intel SGX PCK Certificate",
            self.leaf_key,
            self.ca_cn,
            self.ca_key,
            leaf_serial,
            lo,
            hi,
            ca=False,
            extra=ext,
        )
        chain = pem_chain([_der(self.leaf), _der(self.ca), _der(self.root)]).encode()
        new_qe = QeReportCertificationData(
            qe.qe_report,
            qe.qe_report_raw,
            raw_sign(self.leaf_key, qe.qe_report_raw),
            qe.qe_auth_data,
            CertificationData(5, chain),
        )
        sig: EcdsaSignatureData = dataclasses.replace(quote.signature_data, qe=new_qe)
        return dataclasses.replace(quote, signature_data=sig).to_bytes()

    def forge_collateral(
        self,
        real: DcapCollateral,
        *,
        revoked_in_root_crl: list[int] | None = None,
        revoked_in_pck_crl: list[int] | None = None,
        pck_crl_window: tuple[datetime, datetime] | None = None,
        root_crl_window: tuple[datetime, datetime] | None = None,
    ) -> DcapCollateral:
        lo, hi = pck_crl_window or (None, None)
        rlo, rhi = root_crl_window or (None, None)
        chain = (_der(self.signing), _der(self.root))
        return DcapCollateral(
            pck_crl_issuer_chain=(_der(self.ca), _der(self.root)),
            root_ca_crl=self.crl("Intel SGX Root CA", self.root_key, revoked_in_root_crl or [], rlo, rhi),
            pck_crl=self.crl(self.ca_cn, self.ca_key, revoked_in_pck_crl or [], lo, hi),
            tcb_info_issuer_chain=chain,
            tcb_info=real.tcb_info,
            tcb_info_signature=raw_sign(self.signing_key, real.tcb_info),
            qe_identity_issuer_chain=chain,
            qe_identity=real.qe_identity,
            qe_identity_signature=raw_sign(self.signing_key, real.qe_identity),
        )
