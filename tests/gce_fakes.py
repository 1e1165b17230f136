"""A Google-like vTPM PKI and a swtpm provisioned like a GCE Shielded VM's vTPM.

- :class:`FakeGoogle`: a root ("EK/AK CA Root"-like, RSA) and an intermediate that issue AK
  certificates carrying Google's instance extension (OID 1.3.6.1.4.1.11129.2.1.21, DER as
  ``confide.evidence.gce_instance`` documents it). The verifier trusts it only when its root is
  injected (``roots=``, ``PlatformVerifier(gce_roots=...)``): production pins Google's.
- :func:`provision_gce_vtpm`: what Google provisions in a GCE VM's vTPM: the AK template in NV
  index 0x01C10001 (RSA) or 0x01C10003 (ECC), and the AK certificate, for the primary key that
  template gives in the endorsement hierarchy, in 0x01C10000 or 0x01C10002.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from confide.evidence.gce_instance import GCE_INSTANCE_EXTENSION_OID
from confide.evidence.tpm import TPMA_OBJECT_RESTRICTED, TPMA_OBJECT_SIGN
from confide.runtime.gce_tpm import (
    AK_CERT_NV_INDEX_ECC,
    AK_CERT_NV_INDEX_RSA,
    AK_TEMPLATE_NV_INDEX_ECC,
    AK_TEMPLATE_NV_INDEX_RSA,
)
from confide.runtime.tpm import TPM_RH_ENDORSEMENT, Alg, Tpm
from pki import issue, key_usage
from tpm_fakes import ak_template, clear_index

__all__ = [
    "ECC_TEMPLATE",
    "INSTANCE",
    "FakeGoogle",
    "Instance",
    "instance_extension",
    "provision_gce_vtpm",
]

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2124, 1, 1, tzinfo=UTC)

# Part 2 §8.3 TPMA_OBJECT: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA
_ATTRIBUTES = (
    (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10) | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN
)
ECC_TEMPLATE = (
    struct.pack(">HHI", Alg.ECC, Alg.SHA256, _ATTRIBUTES)
    + struct.pack(">H", 0)  # authPolicy
    # TPMS_ECC_PARMS (Part 2 §12.2.3.6): symmetric NULL, ECDSA/SHA-256, NIST P-256, kdf NULL
    + struct.pack(">HHHHH", Alg.NULL, Alg.ECDSA, Alg.SHA256, 0x0003, Alg.NULL)
    + struct.pack(">HH", 0, 0)  # unique: empty x and y
)
"""An ECC restricted signing key's template, as Google's ECC AK template."""


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def _int(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big"))


def _utf8(text: str) -> bytes:
    return _tlv(0x0C, text.encode())


@dataclass(frozen=True)
class Instance:
    zone: str = "europe-west4-a"
    project_number: int = 123456789012
    project_id: str = "confide-test"
    instance_id: int = 8_000_000_000_000_000_001
    instance_name: str = "app-vm"
    production: bool = True
    security_version: int | None = 3


INSTANCE = Instance()


def instance_extension(i: Instance) -> bytes:
    """The DER value of Google's instance extension (``confide.evidence.gce_instance``)."""
    props = b""
    if i.security_version is not None:
        props += _tlv(0xA0, _int(i.security_version))
    if i.production:
        props += _tlv(0xA1, _tlv(0x01, b"\xff"))
    body = (
        _utf8(i.zone) + _int(i.project_number) + _utf8(i.project_id) + _int(i.instance_id)
        + _utf8(i.instance_name) + _tlv(0xA0, _tlv(0x30, props))
    )  # fmt: skip
    return _tlv(0x30, body)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not Google LLC"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class FakeGoogle:
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    """The AK certificates' issuer (the root itself for a chain without an intermediate)."""

    @classmethod
    def make(cls, intermediate_extensions: Sequence[x509.ExtensionType] = ()) -> FakeGoogle:
        root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        root = issue(
            _name("Test EK/AK CA Root"), root_key.public_key(), issuer=_name("Test EK/AK CA Root"),
            signing_key=root_key, not_before=NOT_BEFORE, not_after=NOT_AFTER, ca=True,
            usage=key_usage(cert_sign=True, digital_signature=False), hash_algorithm=hashes.SHA256(),
        )  # fmt: skip
        int_key = ec.generate_private_key(ec.SECP384R1())
        intermediate = issue(
            _name("Test EK/AK CA Intermediate"), int_key.public_key(), issuer=root.subject,
            signing_key=root_key, not_before=NOT_BEFORE, not_after=NOT_AFTER, ca=True, path_length=0,
            usage=key_usage(cert_sign=True, digital_signature=False), hash_algorithm=hashes.SHA256(),
            extensions=intermediate_extensions,
        )  # fmt: skip
        return cls(root, root_key, intermediate, int_key)

    @property
    def intermediate_der(self) -> bytes:
        return self.intermediate.public_bytes(serialization.Encoding.DER)

    def ak_cert(
        self,
        key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        instance: Instance | None = INSTANCE,
        *,
        not_after: datetime = NOT_AFTER,
        ca: bool = False,
        digital_signature: bool = True,
        extra: Sequence[x509.ExtensionType] = (),
    ) -> bytes:
        """An AK certificate (no subject, as Google's) for ``key``, with the instance extension
        and ``extra`` ones; ``ca`` and ``digital_signature`` make it one that is not a signing
        end entity's."""
        extensions: list[x509.ExtensionType] = list(extra)
        if instance is not None:
            extensions.append(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(GCE_INSTANCE_EXTENSION_OID), instance_extension(instance)
                )
            )
        cert = issue(
            x509.Name([]), key, issuer=self.intermediate.subject, signing_key=self.intermediate_key,
            not_before=NOT_BEFORE, not_after=not_after, ca=ca,
            usage=key_usage(cert_sign=ca, digital_signature=digital_signature), extensions=extensions,
            hash_algorithm=hashes.SHA256(),
        )  # fmt: skip
        return cert.public_bytes(serialization.Encoding.DER)

    def crl(
        self,
        by: str = "intermediate",
        *,
        revoked: Sequence[int] = (),
        this_update: datetime = NOT_BEFORE,
        next_update: datetime = NOT_AFTER,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
        extensions: Sequence[x509.ExtensionType] = (),
        number: int = 1,
    ) -> x509.CertificateRevocationList:
        """A CRL of the root's or the intermediate's (``by``), signed by its key or ``key``
        (another's: a CRL not signed by the certificate's issuer), listing ``revoked``."""
        issuer, own_key = (
            (self.root, self.root_key) if by == "root" else (self.intermediate, self.intermediate_key)
        )
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for extension in extensions:
            b = b.add_extension(extension, critical=True)
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
            )
        return b.sign(key or own_key, hashes.SHA256())


def clear_gce_indices(tpm: Tpm) -> None:
    for index in (
        AK_CERT_NV_INDEX_RSA,
        AK_TEMPLATE_NV_INDEX_RSA,
        AK_CERT_NV_INDEX_ECC,
        AK_TEMPLATE_NV_INDEX_ECC,
    ):
        clear_index(tpm, index)


def _define(tpm: Tpm, index: int, data: bytes) -> None:
    from confide.runtime.tpm import TPMA_NV_OWNERREAD, TPMA_NV_OWNERWRITE

    tpm.nv_define_space(index, len(data), TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD)
    tpm.nv_write(index, data)


def provision_gce_vtpm(
    tpm: Tpm,
    google: FakeGoogle,
    *,
    kind: str = "rsa",
    instance: Instance | None = INSTANCE,
    cert: bytes | None = None,
    padding: int = 0,
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """Google's provisioning of a GCE VM's vTPM (module docstring); ``cert`` replaces the AK
    certificate (e.g. another key's), ``padding`` zero bytes follow it in its index. Returns
    the AK."""
    clear_gce_indices(tpm)
    template = ak_template() if kind == "rsa" else ECC_TEMPLATE
    handle, area = tpm.create_primary(TPM_RH_ENDORSEMENT, template)
    tpm.flush_context(handle)
    key = area.public_key()
    cert_index, template_index = (
        (AK_CERT_NV_INDEX_RSA, AK_TEMPLATE_NV_INDEX_RSA)
        if kind == "rsa"
        else (AK_CERT_NV_INDEX_ECC, AK_TEMPLATE_NV_INDEX_ECC)
    )
    _define(tpm, template_index, template)
    _define(tpm, cert_index, (cert if cert is not None else google.ak_cert(key, instance)) + bytes(padding))
    return key


def not_after(days: int) -> datetime:
    return NOT_BEFORE + timedelta(days=days)
