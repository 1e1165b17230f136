"""One X.509 certificate builder for the test PKIs (DCAP, NVIDIA, NVIDIA RIM, Nitro, the chain
checks of ``confide.verify.x509util``): each forging module states only what differs (names,
keys, validity, which extensions, the signature hash)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key_usage(*, cert_sign: bool, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    subject: str | x509.Name,
    public_key: PublicKey,
    *,
    issuer: str | x509.Name,
    signing_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    ca: bool | None,
    path_length: int | None = None,
    usage: x509.KeyUsage | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
    serial: int | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    rsa_padding: padding.PSS | None = None,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``signing_key``. ``ca=None`` leaves out Basic
    Constraints (some device leaves have none); ``usage`` adds a critical Key Usage; other
    ``extensions`` are added as non-critical; ``rsa_padding`` for RSA-PSS issuers (AMD)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject) if isinstance(subject, str) else subject)
        .issuer_name(name(issuer) if isinstance(issuer, str) else issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing_key, hash_algorithm or hashes.SHA384(), rsa_padding=rsa_padding)


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def p384_cert(
    cn: str,
    not_before: datetime,
    not_after: datetime,
    issuer: Issuer | None = None,
    *,
    ca: bool | None = True,
) -> Issuer:
    """A fresh P-384 key and its certificate, self-signed without ``issuer``."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue(
        cn, key.public_key(), issuer=issuer[0].subject if issuer else cn,
        signing_key=issuer[1] if issuer else key, not_before=not_before, not_after=not_after, ca=ca,
    )  # fmt: skip
    return cert, key


def self_signed_pem(path: Path, cn: str = "cas") -> Path:
    """A self-signed CA certificate written to ``path`` as PEM (a file a client loads as its
    trust anchor; no server in the test has its key). Valid from a day ago for two days."""
    now = datetime.now(UTC)
    cert, _ = p384_cert(cn, now - timedelta(days=1), now + timedelta(days=1))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def tls_server_files(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 under it, written to DIRECTORY as PEM files:
    (ca.pem, cert.pem, key.pem). For HTTPS servers in tests; valid from an hour ago for a day."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue(
        f"{name} CA", ca_key.public_key(), issuer=f"{name} CA", signing_key=ca_key,
        not_before=now - timedelta(hours=1), not_after=now + timedelta(days=1), ca=True,
        usage=key_usage(cert_sign=True, digital_signature=False),
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = issue(
        "127.0.0.1", key.public_key(), issuer=ca.subject, signing_key=ca_key,
        not_before=now - timedelta(hours=1), not_after=now + timedelta(days=1), ca=False,
        usage=key_usage(cert_sign=False, digital_signature=True), extensions=[san],
    )  # fmt: skip
    paths = directory / f"{name}-ca.pem", directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def tls_client_ca(directory: Path, name: str) -> tuple[Path, Issuer]:
    """A CA for client certificates written to DIRECTORY as ``NAME-client-ca.pem``, and the CA
    (to issue with :func:`tls_client_files`). Valid from an hour ago for a day."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(
        f"{name} client CA", key.public_key(), issuer=f"{name} client CA", signing_key=key,
        not_before=now - timedelta(hours=1), not_after=now + timedelta(days=1), ca=True,
        usage=key_usage(cert_sign=True, digital_signature=False),
    )  # fmt: skip
    path = directory / f"{name}-client-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, (cert, key)


def tls_client_files(
    directory: Path, name: str, issuer: Issuer, *, not_after: datetime | None = None
) -> tuple[Path, Path]:
    """A client certificate (``CN=NAME``, extended key usage clientAuth) under ``issuer`` and its
    key, written to DIRECTORY as ``NAME-client-cert.pem`` and ``NAME-client-key.pem``. Valid from
    a day ago until ``not_after`` (default: in a day; one in the past makes an expired one)."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(
        name, key.public_key(), issuer=issuer[0].subject, signing_key=issuer[1],
        not_before=now - timedelta(days=1), not_after=not_after or now + timedelta(days=1), ca=False,
        usage=key_usage(cert_sign=False, digital_signature=True),
        extensions=[x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])],
    )  # fmt: skip
    paths = directory / f"{name}-client-cert.pem", directory / f"{name}-client-key.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def client_crl(
    issuer: Issuer,
    revoked: Sequence[x509.Certificate] = (),
    *,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    delta: bool = False,
    number: int = 1,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    entry_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer`` revoking ``revoked`` (SHA-256): by default from an hour ago for a day;
    ``delta``: a delta CRL; ``number``: its CRL number; ``extensions`` (each with whether it is
    critical) added to it, ``entry_extensions`` to each of its entries."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer[0].subject)
        .last_update(this_update or now - timedelta(hours=1))
        .next_update(next_update or now + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    for cert in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
        entry = entry.revocation_date(now - timedelta(minutes=30))
        for extension, critical in entry_extensions:
            entry = entry.add_extension(extension, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    if delta:
        builder = builder.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    return builder.sign(issuer[1], hashes.SHA256())


def crls_pem(*crls: x509.CertificateRevocationList) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
