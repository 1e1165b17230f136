"""A private AMD-shaped PKI for tests: ARK -> ASK -> VCEK (RSA-PSS SHA-384 like AMD's), reports
signed with the VCEK, and ARK-signed CRLs (served by a fake AMD KDS: ``tests/kds_fake.py``).

Real vectors cover Milan v2/v3 VCEK and VLEK reports; no real Turin or v5 report exists in the
collected test vectors, so the Turin TCB layout, v5 fields and CRLs are exercised with this PKI
(pinned explicitly with ``AmdRootStore(..., pinned=...)``; the shipped pins are untouched).
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from confide.evidence.sev_snp import (
    REPORT_SIZE,
    SIGNED_SIZE,
    AttestationReport,
    GuestPolicy,
    PlatformInfo,
    Product,
    TcbVersion,
)
from confide.verify.sev_snp import AmdChain, AmdRootStore, VekKind
from pki import issue, key_usage

NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
AT = datetime(2025, 6, 1, tzinfo=UTC)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD = "1.3.6.1.4.1.3704.1"

CPUID = {
    Product.MILAN: (0x19, 0x01, 0x01),
    Product.GENOA: (0x19, 0x11, 0x01),
    Product.TURIN: (0x1A, 0x02, 0x00),
}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


@dataclass
class FakeAmd:
    product: Product
    kind: VekKind
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vek_key: ec.EllipticCurvePrivateKey
    vek: x509.Certificate
    tcb: TcbVersion
    chip_id: bytes

    @property
    def chain(self) -> AmdChain:
        return AmdChain(self.ask, self.ark)

    def roots(self) -> AmdRootStore:
        return AmdRootStore(
            {(self.product, self.kind): self.chain},
            pinned={self.product: self.ark.fingerprint(hashes.SHA256()).hex()},
        )

    def report(self, **changes: object) -> AttestationReport:
        """An unsigned report matching this VEK (v5 by default), with ``changes`` applied."""
        fam, mod, step = CPUID[self.product]
        base = AttestationReport(
            version=5,
            guest_svn=7,
            policy=GuestPolicy(0x30000),
            family_id=bytes(range(16)),
            image_id=bytes(range(16, 32)),
            vmpl=0,
            signature_algo=1,
            current_tcb_raw=self.tcb.raw,
            platform_info=PlatformInfo(0x25),
            key_info=(1 << 2) if self.kind is VekKind.VLEK else 0,
            reserved_04c=bytes(4),
            report_data=bytes([0xAB]) * 64,
            measurement=bytes([0xCD]) * 48,
            host_data=bytes([0xEF]) * 32,
            id_key_digest=bytes(48),
            author_key_digest=bytes(48),
            report_id=bytes([1]) * 32,
            report_id_ma=bytes([0xFF]) * 32,
            reported_tcb_raw=self.tcb.raw,
            cpuid_fam_id=fam,
            cpuid_mod_id=mod,
            cpuid_step=step,
            reserved_188=bytes(21),
            chip_id=self.chip_id if self.kind is VekKind.VCEK else bytes(64),
            committed_tcb_raw=self.tcb.raw,
            current_build=3,
            current_minor=58,
            current_major=1,
            reserved_1eb=0,
            committed_build=3,
            committed_minor=58,
            committed_major=1,
            reserved_1ef=0,
            launch_tcb_raw=self.tcb.raw,
            launch_mit_vector=0x11,
            current_mit_vector=0x13,
            reserved_1f8=bytes(152),
            signature_r=bytes(72),
            signature_s=bytes(72),
            signature_reserved=bytes(368),
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def sign(self, report: AttestationReport, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        raw = report.to_bytes()
        assert len(raw) == REPORT_SIZE
        der = (key or self.vek_key).sign(raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return raw[:SIGNED_SIZE] + r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(368)

    def crl(
        self,
        *,
        revoked_serials: tuple[int, ...] = (),
        this_update: datetime = NOT_BEFORE,
        next_update: datetime = NOT_BEFORE + timedelta(days=365),
        key: rsa.RSAPrivateKey | None = None,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(this_update)
            .next_update(next_update)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
            )
        return builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=_PSS)

    def vek_pem(self) -> bytes:
        return self.vek.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        return self.ask.public_bytes(serialization.Encoding.PEM) + self.ark.public_bytes(
            serialization.Encoding.PEM
        )


_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def _rsa_key(i: int) -> rsa.RSAPrivateKey:
    while len(_RSA_KEYS) <= i:
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[i]


def make_fake_amd(
    product: Product = Product.TURIN,
    kind: VekKind = VekKind.VCEK,
    *,
    tcb: TcbVersion | None = None,
    chip_id: bytes | None = None,
    vek_not_after: datetime | None = None,
    product_name: str | None = None,
    hwid: bytes | None = None,
) -> FakeAmd:
    if tcb is None:
        if product is Product.TURIN:
            tcb = TcbVersion.compose(fmc=1, bootloader=2, tee=3, snp=4, microcode=5)
        else:
            tcb = TcbVersion.compose(bootloader=2, tee=3, snp=4, microcode=5)
    chip_id = chip_id if chip_id is not None else bytes(range(1, 65))
    ark_key, ask_key = _rsa_key(0), _rsa_key(1)
    long_after = NOT_BEFORE + timedelta(days=9000)

    def ca(subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, serial: int):
        return issue(
            _name(subject), key.public_key(), issuer=_name(issuer), signing_key=signer,
            not_before=NOT_BEFORE, not_after=long_after, ca=True,
            usage=key_usage(cert_sign=True, digital_signature=False), serial=serial, rsa_padding=_PSS,
        )  # fmt: skip

    ark = ca(f"ARK-{product}", f"ARK-{product}", ark_key, ark_key, 0x30000)
    ask = ca(kind.intermediate_cn(product), f"ARK-{product}", ask_key, ark_key, 0x30001)
    vek_key = ec.generate_private_key(ec.SECP384R1())
    default_name = str(product) if product is Product.TURIN else f"{product}-B0"
    exts = [
        _ext(f"{_AMD}.1", _der_int(1 if product is Product.TURIN else 0)),
        _ext(f"{_AMD}.2", _ia5(product_name or default_name)),
        _ext(f"{_AMD}.3.1", _der_int(tcb.bootloader)),
        _ext(f"{_AMD}.3.2", _der_int(tcb.tee)),
        _ext(f"{_AMD}.3.3", _der_int(tcb.snp)),
        _ext(f"{_AMD}.3.8", _der_int(tcb.microcode)),
    ]
    if tcb.fmc is not None:
        exts.append(_ext(f"{_AMD}.3.9", _der_int(tcb.fmc)))
    if kind is VekKind.VCEK:
        default_hwid = chip_id[:8] if product is Product.TURIN else chip_id
        exts.append(_ext(f"{_AMD}.4", hwid if hwid is not None else default_hwid))
    else:
        exts.append(_ext(f"{_AMD}.5", _ia5("CN=example-csp")))
    vek = issue(
        _name(kind.subject_cn), vek_key.public_key(), issuer=ask.subject, signing_key=ask_key,
        not_before=NOT_BEFORE, not_after=vek_not_after or NOT_BEFORE + timedelta(days=2555), ca=None,
        extensions=exts, serial=1, rsa_padding=_PSS,
    )  # fmt: skip
    return FakeAmd(product, kind, ark_key, ark, ask_key, ask, vek_key, vek, tcb, chip_id)


def cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """A configfs-tsm / SNP extended-report certificate table (GUID, offset, length entries, a zero
    entry, then the certificates)."""
    head = b""
    body = b""
    offset = 24 * (len(entries) + 1)
    for guid, der in entries:
        head += guid.bytes_le + struct.pack("<II", offset + len(body), len(der))
        body += der
    return head + bytes(24) + body
