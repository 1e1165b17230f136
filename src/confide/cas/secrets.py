"""Secrets: generation, sealing at rest, and rendering into placeholders.

Sealing is envelope encryption: each secret value is encrypted with a fresh data key
(AES-256-GCM), and the data key with the CAS master key (AES-256-GCM). Both layers bind the
policy name, the secret name and its version as associated data, so a sealed value moved to
another row, policy or version does not decrypt. The database alone reveals nothing.

Values are kept in :class:`SecretValue`; ``repr`` never shows them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets as pysecrets
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from confide.cas.pkcs12 import pkcs12_with_private_key
from confide.errors import ParseError, PolicyError, SignatureError
from confide.identity import fingerprint_of_public_key
from confide.policy._types import duration_seconds
from confide.policy.placeholders import RUNTIME_KEY_MARKER as _RUNTIME_KEY_MARKER
from confide.policy.placeholders import Encoding, encode_bytes
from confide.policy.secret import MAX_COMMON_NAME, KeyType, OcspSigner, Secret, SecretKind, ca_levels_below
from confide.verify.x509util import CERTIFICATE_ERRORS, check_certificate_fields

__all__ = [
    "CA_PATH",
    "CERTIFICATE_KINDS",
    "CRL_PATH",
    "OCSP_PATH",
    "Published",
    "Sealer",
    "SecretValue",
    "ca_certificate_url",
    "ca_key_usage",
    "ca_path_lengths",
    "ca_reissue_reason",
    "crl_distribution_id",
    "crl_distribution_id_of",
    "crl_url",
    "generate",
    "identity_of",
    "key_id",
    "key_usage_changed",
    "leaf_key_usage",
    "ocsp_url",
    "render",
    "renew_certificate",
    "renewable",
    "renewal_window",
    "row_key_id",
]

_MAGIC = b"CSL2"
_MAGIC_V1 = b"CSL1"  # rows written before the key id (no id; still read)
KEY_ID_SIZE = 16
_KEY_ID_INFO = b"confide-cas-master/v1 master-key-id"
_NONCE = 12
_ASCII = string.ascii_letters + string.digits
_DEFAULT_SIZE = {SecretKind.ASCII: 20, SecretKind.BINARY: 20}
"""SCONE v0.3 "ascii", "binary": "size ... Optional. Default value: 20" (characters, bytes)."""
_DEFAULT_VALID = timedelta(days=365)
CERTIFICATE_KINDS = frozenset({SecretKind.X509.value, SecretKind.X509_CA.value})
CRL_PATH = "/v1/crl/"
"""Where the CAS serves distributed CRLs, unauthenticated (docs/cas.md "CRL distribution points")."""


def crl_distribution_id(issuer: x509.Name, key_id: bytes) -> str:
    """The opaque id of a CA's distributed CRL: SHA-256 over the CA's subject (DER) and its key
    identifier, 32 hex digits. A certificate the CA issued carries both (issuer,
    authorityKeyIdentifier), and so does the CRL (issuer, §5.2.1 authorityKeyIdentifier); they
    are exactly what a relying party matches a CRL to a certificate by (RFC 5280 §6.3.3). It
    names no policy or secret, and cannot be guessed without the CA's key identifier."""
    digest = hashlib.sha256(b"confide-crl-distribution/v1\x00" + issuer.public_bytes() + b"\x00" + key_id)
    return digest.hexdigest()[:32]


def crl_distribution_id_of(crl_der: bytes) -> str | None:
    """:func:`crl_distribution_id` of the CA that signed the CRL ``crl_der`` (its issuer and
    authorityKeyIdentifier); ``None`` when it is malformed or has no key identifier."""
    try:
        crl = x509.load_der_x509_crl(crl_der)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (ValueError, x509.ExtensionNotFound):
        return None
    return None if aki is None else crl_distribution_id(crl.issuer, aki)


def crl_url(base: str, issuer: x509.Name, key_id: bytes) -> str:
    """The URL of a CA's distributed CRL under the CAS's public URL ``base`` (no trailing slash)."""
    return f"{base}{CRL_PATH}{crl_distribution_id(issuer, key_id)}.crl"


CA_PATH = "/v1/ca/"
"""Where the CAS serves the certificates of CAs declared ``ca_issuers``, unauthenticated
(docs/cas.md "CA certificates (caIssuers)"), under the same opaque id as their CRL."""


def ca_certificate_url(base: str, issuer: x509.Name, key_id: bytes) -> str:
    """The URL of a CA's published certificate under the CAS's public URL ``base``."""
    return f"{base}{CA_PATH}{crl_distribution_id(issuer, key_id)}.crt"


OCSP_PATH = "/v1/ocsp/"
"""Where the CAS answers OCSP requests about the certificates of CAs declared ``ocsp``,
unauthenticated (docs/cas.md "OCSP"), under the same opaque id as their CRL."""


def ocsp_url(base: str, issuer: x509.Name, key_id: bytes) -> str:
    """The URL of a CA's OCSP responder under the CAS's public URL ``base``: POST to it, or GET
    it followed by ``/`` and the request (RFC 6960 Appendix A.1)."""
    return f"{base}{OCSP_PATH}{crl_distribution_id(issuer, key_id)}"


class Published(NamedTuple):
    """What certificates issued under a CA name of what the CAS publishes about that CA: under
    the CAS's public URL ``base`` (``cas serve --public-url``, no trailing slash), its CRL
    (``crl``: the CA is declared ``crl_distribution``), its certificate (``ca_issuers``) and its
    OCSP responder (``ocsp``)."""

    base: str
    crl: bool
    ca_issuers: bool
    ocsp: bool = False


@dataclass(frozen=True)
class SecretValue:
    """A secret's value: ``data`` is the bytes (ascii/binary), or a PKCS#8 DER private key;
    certificates carry ``certificate`` (DER) and ``chain`` (issuer certificates, DER)."""

    kind: str
    data: bytes = field(repr=False)
    certificate: bytes | None = None
    chain: tuple[bytes, ...] = ()
    runtime_key: bool = False
    """The certificate certifies the attested runtime's own key (``issue_to_runtime``), which
    never leaves the TEE; such values are issued at release and never stored."""

    def __repr__(self) -> str:
        return f"SecretValue(kind={self.kind!r}, <{len(self.data)} bytes hidden>)"

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "kind": self.kind,
                "data": self.data.hex(),
                "certificate": self.certificate.hex() if self.certificate else None,
                "chain": [c.hex() for c in self.chain],
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SecretValue:
        obj = json.loads(raw)
        return cls(
            kind=obj["kind"],
            data=bytes.fromhex(obj["data"]),
            certificate=bytes.fromhex(obj["certificate"]) if obj["certificate"] else None,
            chain=tuple(bytes.fromhex(c) for c in obj["chain"]),
        )

    def public_info(self) -> dict[str, Any]:
        """What may be shown to the policy's readers: certificates and public keys only."""
        info: dict[str, Any] = {"kind": self.kind}
        if self.certificate:
            cert = x509.load_der_x509_certificate(self.certificate)
            info["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode()
            info["not_after"] = cert.not_valid_after_utc.isoformat()
            info["serial"] = format(cert.serial_number, "x")
        if self.kind in (SecretKind.PRIVATE_KEY, SecretKind.X509, SecretKind.X509_CA) and self.data:
            info["public_key"] = _public_pem(self.data).decode()
        elif self.certificate:
            spki = x509.load_der_x509_certificate(self.certificate).public_key()
            info["public_key"] = spki.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        if self.kind == SecretKind.PUBLIC_KEY:
            info["public_key"] = self.data.decode()
        return info


class Sealer:
    """Envelope encryption under the CAS master key (32 bytes).

    Row format ``CSL2`` (docs/cas.md "The master key")::

        "CSL2" | master-key id (16) | nonce (12) | wrapped data key (48) | nonce (12) | body

    The master-key id (:func:`key_id`) names the key that wrapped the data key, so a row says
    which key opens it and an online rotation (:mod:`confide.cas.online_rotation`) can tell the
    rows it has re-sealed from those it has not without opening them. The id is part of the
    associated data of both layers. Rows written before it (``CSL1``: no id) open with any key
    the sealer holds, tried in turn (AES-GCM authenticates: a wrong key fails, never misleads).

    A sealer holds one or two keys: the key it was created with (``derive_key`` always derives
    from it, so the TLS, log and nonce keys of a running CAS do not change under it), and during
    an online rotation the new one, which :meth:`seal_with` makes the key new rows are sealed
    under. Both open rows. Key changes replace the key table in one assignment (thread-safe).
    """

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("master key must be 32 bytes")
        self._master = master_key
        self._keys: dict[bytes, AESGCM] = {key_id(master_key): AESGCM(master_key)}
        self._raw: dict[bytes, bytes] = {key_id(master_key): master_key}
        self._sealing = key_id(master_key)

    def derive_key(self, purpose: bytes) -> bytes:
        """A 32-byte key for another purpose, derived from the master key (HKDF-SHA256)."""
        return HKDF(hashes.SHA256(), 32, None, purpose).derive(self._master)

    def __repr__(self) -> str:
        return "Sealer(<master key hidden>)"

    @property
    def sealing_key_id(self) -> str:
        """The id (hex) of the key new rows are sealed under."""
        return self._sealing.hex()

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(k.hex() for k in self._keys)

    def add_key(self, master_key: bytes) -> str:
        """Also open rows sealed under ``master_key``; returns its id."""
        if len(master_key) != 32:
            raise ValueError("master key must be 32 bytes")
        kid = key_id(master_key)
        self._raw = {**self._raw, kid: master_key}
        self._keys = {**self._keys, kid: AESGCM(master_key)}
        return kid.hex()

    def only(self, key_id_hex: str) -> Sealer:
        """A sealer of just the key with this id (one this sealer holds): its ``derive_key``
        derives from that key."""
        return Sealer(self._raw[bytes.fromhex(key_id_hex)])

    def export_key(self, key_id_hex: str) -> bytes:
        """The bytes of the master key with this id (one the sealer holds): only for the
        attested master-key release (:mod:`confide.cas.key_release`), which encrypts them to
        the joining CAS's key. Raises :class:`KeyError` for a key it does not hold."""
        return self._raw[bytes.fromhex(key_id_hex)]

    def seal_with(self, key_id_hex: str) -> None:
        """Seal new rows under the key with this id (one the sealer holds)."""
        kid = bytes.fromhex(key_id_hex)
        if kid not in self._keys:
            raise ValueError("the sealer does not hold that key")
        self._sealing = kid

    def drop_key(self, key_id_hex: str) -> None:
        """Stop opening rows under the key with this id (not the sealing key)."""
        kid = bytes.fromhex(key_id_hex)
        if kid == self._sealing:
            raise ValueError("the sealing key cannot be dropped")
        self._keys = {k: v for k, v in self._keys.items() if k != kid}
        self._raw = {k: v for k, v in self._raw.items() if k != kid}

    @staticmethod
    def _aad(policy: str, name: str, version: int, kid: bytes | None = None) -> bytes:
        base = policy.encode() + b"\x00" + name.encode() + b"\x00" + str(version).encode()
        if kid is None:
            return b"confide-secret-v1\x00" + base
        return b"confide-secret-v2\x00" + kid + b"\x00" + base

    def seal(self, value: SecretValue, *, policy: str, name: str, version: int) -> bytes:
        return self._seal(value.to_bytes(), lambda kid: self._aad(policy, name, version, kid))

    def unseal(self, sealed: bytes, *, policy: str, name: str, version: int) -> SecretValue:
        what = f"sealed secret {policy}/{name} v{version}"
        plain = self._open(sealed, lambda kid: self._aad(policy, name, version, kid), what, legacy=True)
        try:
            return SecretValue.from_bytes(plain)
        except Exception:  # a corrupt body that authenticated: cannot happen without the key
            raise SignatureError(f"{what} does not authenticate") from None

    @staticmethod
    def _record_aad(record: tuple[str, ...], kid: bytes) -> bytes:
        # JSON: an unambiguous encoding of the parts, whatever characters they hold
        return b"confide-record-v1\x00" + kid + b"\x00" + json.dumps(list(record)).encode()

    def seal_record(self, plain: bytes, *, record: tuple[str, ...]) -> bytes:
        """Seal ``plain`` (the same ``CSL2`` envelope as a secret) bound to ``record``, the parts
        that name where it is stored (table, column, row key), as associated data of both
        layers: moved to another row, column or table it does not open. Used for the policy
        documents at rest (:mod:`confide.cas.policy_rows`)."""
        return self._seal(plain, lambda kid: self._record_aad(record, kid or b""))

    def unseal_record(self, sealed: bytes, *, record: tuple[str, ...], what: str) -> bytes:
        """The bytes sealed by :meth:`seal_record` for ``record``; :class:`SignatureError` (naming
        ``what``, never the content) when it is malformed or does not authenticate."""
        return self._open(sealed, lambda kid: self._record_aad(record, kid or b""), what, legacy=False)

    def _seal(self, plain: bytes, aad_of: Callable[[bytes], bytes]) -> bytes:
        kid = self._sealing
        kek = self._keys[kid]
        aad = aad_of(kid)
        dek = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(_NONCE), os.urandom(_NONCE)
        wrapped = kek.encrypt(n1, dek, aad)
        body = AESGCM(dek).encrypt(n2, plain, aad)
        return _MAGIC + kid + n1 + wrapped + n2 + body

    def _open(
        self, sealed: bytes, aad_of: Callable[[bytes | None], bytes], what: str, *, legacy: bool
    ) -> bytes:
        wrapped_len = 32 + 16
        if sealed.startswith(_MAGIC):
            kid: bytes | None = sealed[4 : 4 + KEY_ID_SIZE]
            p = 4 + KEY_ID_SIZE
        elif legacy and sealed.startswith(_MAGIC_V1):
            kid, p = None, 4
        else:
            raise SignatureError(f"{what} is malformed")
        if len(sealed) < p + _NONCE + wrapped_len + _NONCE + 16:
            raise SignatureError(f"{what} is malformed")
        keys = self._keys
        if kid is None:
            candidates = list(keys.values())
        elif kid in keys:
            candidates = [keys[kid]]
        else:
            raise SignatureError(
                f"{what} is sealed under master key id {kid.hex()}, which this CAS does not hold"
            )
        aad = aad_of(kid)
        n1 = sealed[p : p + _NONCE]
        p += _NONCE
        wrapped = sealed[p : p + wrapped_len]
        p += wrapped_len
        n2 = sealed[p : p + _NONCE]
        p += _NONCE
        for kek in candidates:
            try:
                dek = kek.decrypt(n1, wrapped, aad)
            except InvalidTag:
                continue
            try:
                return AESGCM(dek).decrypt(n2, sealed[p:], aad)
            except InvalidTag:
                break
        raise SignatureError(f"{what} does not authenticate") from None


def row_key_id(sealed: bytes) -> str | None:
    """The master-key id a sealed row names (hex); ``None`` for a ``CSL1`` row (no id)."""
    if sealed.startswith(_MAGIC) and len(sealed) >= 4 + KEY_ID_SIZE:
        return sealed[4 : 4 + KEY_ID_SIZE].hex()
    return None


def key_id(master_key: bytes) -> bytes:
    """A master key's id: ``HKDF-SHA256(key, no salt, info "confide-cas-master/v1
    master-key-id")[:16]``, one-way (:func:`confide.cas.rotation.master_key_id` is its hex)."""
    return HKDF(hashes.SHA256(), KEY_ID_SIZE, None, _KEY_ID_INFO).derive(master_key)


def _private_key(key_type: KeyType | None) -> bytes:
    key: Any
    match key_type:
        case KeyType.P384:
            key = ec.generate_private_key(ec.SECP384R1())
        case KeyType.ED25519:
            key = ed25519.Ed25519PrivateKey.generate()
        case KeyType.RSA2048:
            key = rsa.generate_private_key(65537, 2048)
        case KeyType.RSA3072:
            key = rsa.generate_private_key(65537, 3072)
        case _:
            key = ec.generate_private_key(ec.SECP256R1())
    der: bytes = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der


def _load_private(der: bytes) -> Any:
    return serialization.load_der_private_key(der, None)


def _public_pem(private_der: bytes) -> bytes:
    pem: bytes = (
        _load_private(private_der)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pem


def _sign_algorithm(key: Any) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _duration(text: str | None) -> timedelta:
    if not text:
        return _DEFAULT_VALID
    return timedelta(seconds=duration_seconds(text))


def renewable(spec: Secret) -> bool:
    """Whether the CAS renews this secret's certificate: a generated ``x509`` or ``x509-ca``
    whose private key the CAS holds (explicit, imported and ``issue_to_runtime`` ones are not)."""
    return spec.generated and spec.kind in CERTIFICATE_KINDS and not spec.issue_to_runtime


def renewal_window(spec: Secret) -> timedelta:
    """How long before its notAfter a certificate is renewed: ``renew_before``, else a third of
    its validity (``valid_for``, else the default year). docs/policy.md "Certificate renewal"."""
    if spec.renew_before:
        return timedelta(seconds=duration_seconds(spec.renew_before))
    return _duration(spec.valid_for) / 3


def ca_key_usage(spec: Secret) -> x509.KeyUsage:
    """The keyUsage of a CA certificate of ``spec`` (RFC 5280 §4.2.1.3): keyCertSign and cRLSign,
    and digitalSignature when its OCSP responses are signed by its own key (``ocsp: {signer:
    ca}``, docs/cas.md "OCSP": RFC 5280 §4.2.1.3 names digitalSignature for signatures other
    than on certificates and CRLs, such as OCSP responses)."""
    signs_ocsp = spec.ocsp_signer is OcspSigner.CA
    return x509.KeyUsage(signs_ocsp, False, False, False, False, True, True, False, False)


def leaf_key_usage(public_key: Any) -> x509.KeyUsage:
    """The keyUsage of an end-entity certificate for ``public_key`` (RFC 5280 §4.2.1.3):
    digitalSignature (TLS 1.3 CertificateVerify, TLS 1.2 ECDHE signatures, client
    authentication), and keyEncipherment too for an RSA key (TLS 1.2 RSA key transport, RFC
    5246 §7.4.7.1), as the CA/Browser Forum's Baseline Requirements §7.1.2.7.11 allow for
    subscriber certificates. Nothing a CA may set (keyCertSign, cRLSign: RFC 5280 §4.2.1.9)."""
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False)


def ca_path_lengths(secrets: Sequence[Secret]) -> dict[str, int]:
    """The pathLenConstraint (RFC 5280 §4.2.1.9) of each ``x509-ca`` of a policy's ``secrets``:
    its ``path_len`` when declared, else the number of x509-ca levels the policy declares below
    it (:func:`confide.policy.secret.ca_levels_below`; 0 for a CA that issues only end
    entities). docs/policy.md "Certificate extensions"."""
    levels = ca_levels_below(secrets)
    out: dict[str, int] = {}
    for spec in secrets:
        if spec.kind is SecretKind.X509_CA:
            out[spec.name] = spec.path_len if spec.path_len is not None else levels.get(spec.name, 0)
    return out


def _stored_certificate(public: str) -> x509.Certificate | None:
    """The certificate in a stored version's ``public`` metadata, or ``None`` when there is
    none or it does not parse, its extensions included (``cryptography`` parses those lazily:
    a row edited in the database must not raise out of the renewal checks)."""
    try:
        cert = x509.load_pem_x509_certificate(json.loads(public)["certificate"].encode())
        _ = cert.extensions
    except (KeyError, TypeError, AttributeError, *CERTIFICATE_ERRORS):
        return None
    return cert


def key_usage_changed(spec: Secret, public: str) -> bool:
    """Whether the CA certificate in a stored version's ``public`` metadata has another
    digitalSignature bit than :func:`ca_key_usage` of ``spec`` gives (its OCSP signer changed
    since it was issued). ``False`` for anything but a generated ``x509-ca`` with a certificate."""
    if spec.kind != SecretKind.X509_CA or not renewable(spec):
        return False
    cert = _stored_certificate(public)
    try:
        shown = None if cert is None else cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return shown is not None and shown.digital_signature != ca_key_usage(spec).digital_signature


def ca_reissue_reason(spec: Secret, public: str, path_length: int) -> str | None:
    """Why the CA certificate in a stored version's ``public`` metadata must be re-issued now
    (same key and subject, :func:`renew_certificate`), or ``None``:

    * ``key-usage``: its digitalSignature bit no longer matches its OCSP signer
      (:func:`key_usage_changed`);
    * ``path-length``: its pathLenConstraint (RFC 5280 §4.2.1.9) is not ``path_length`` (what
      :func:`ca_path_lengths` gives for the policy's current version: an x509-ca level added
      below it, or its ``path_len`` changed). A certificate with no constraint at all (issued
      before confide set one) is left until its renewal, unless the policy declares
      ``path_len``: it refuses no path.

    ``None`` for anything but a generated ``x509-ca`` with a certificate."""
    if spec.kind != SecretKind.X509_CA or not renewable(spec):
        return None
    if key_usage_changed(spec, public):
        return "key-usage"
    cert = _stored_certificate(public)
    if cert is None:
        return None
    try:
        shown = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        shown = None
    if shown is None and spec.path_len is None:
        return None
    return "path-length" if shown != path_length else None


def renew_certificate(
    spec: Secret,
    value: SecretValue,
    *,
    issuer: SecretValue | None,
    now: datetime,
    published: Published | None = None,
    path_length: int = 0,
) -> SecretValue:
    """A new certificate for the key ``value`` holds: same key, same subject and extensions
    (from ``spec``), a new serial and validity from ``now``, signed by ``issuer`` (the issuer's
    current version; ``None``: self-signed). A renewed CA keeps its key and subject, so what it
    signed before still verifies under the new certificate. ``published`` and ``path_length``:
    as for :func:`generate`."""
    if value.kind not in CERTIFICATE_KINDS or value.certificate is None or not value.data:
        raise PolicyError(f"secret {spec.name}: a {value.kind} without its private key cannot be renewed")
    cert, chain = _certificate(
        spec, value.data, issuer=issuer, now=now, is_ca=spec.kind == SecretKind.X509_CA, published=published,
        path_length=path_length,
    )  # fmt: skip
    return SecretValue(value.kind, value.data, cert, chain)


def _certificate(
    spec: Secret,
    key_der: bytes | None,
    *,
    issuer: SecretValue | None,
    now: datetime,
    is_ca: bool,
    public_key: Any = None,
    published: Published | None = None,
    path_length: int = 0,
) -> tuple[bytes, tuple[bytes, ...]]:
    key = _load_private(key_der) if key_der is not None else None
    subject_key = key.public_key() if key is not None else public_key
    common_name = spec.subject_common_name
    if len(common_name) > MAX_COMMON_NAME:  # a version stored before the load-time check
        raise PolicyError(
            f"secret {spec.name}: got a common name of {len(common_name)} characters, expected at"
            f" most {MAX_COMMON_NAME} (RFC 5280 ub-common-name): give the secret a common_name"
        )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    chain: tuple[bytes, ...] = ()
    if issuer is None:
        if key is None:
            raise PolicyError(f"secret {spec.name}: a self-signed certificate needs its private key")
        issuer_name, signing_key = subject, key
    else:
        if issuer.certificate is None:
            raise PolicyError(f"secret {spec.name}: issuer is not a certificate authority")
        if not issuer.data:
            raise PolicyError(
                f"secret {spec.name}: issuer {spec.issuer!r} has no private key in the CAS (an explicit"
                " certificate without private_key cannot issue certificates)"
            )
        issuer_cert = x509.load_der_x509_certificate(issuer.certificate)
        issuer_name, signing_key = issuer_cert.subject, _load_private(issuer.data)
        chain = (issuer.certificate, *issuer.chain)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _duration(spec.valid_for))
        # RFC 5280 §4.2.1.9: critical in a CA certificate (MUST) and here in every one; a CA's
        # pathLenConstraint is the number of CA levels its policy declares below it (or its
        # path_len), so that a leaf or a CA's key cannot certify further CAs unnoticed.
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None), critical=True
        )
        # RFC 5280 4.2.1.1/4.2.1.2: key identifiers (method 1, SHA-1 of the key), so paths build
        # by key; a renewed issuer keeps its key, hence its identifier.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
    )
    if published is not None and issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()).key_identifier
        assert aki is not None
        if published.crl:
            # RFC 5280 §4.2.1.13: one DistributionPoint, its fullName the URI of the issuer's CRL
            # (DER over HTTP, RFC 5280 §4.2.1.13 and RFC 2585 §4.2); no reasons, no cRLIssuer (the
            # CA signs its own complete CRL). Non-critical, as the RFC recommends.
            point = x509.DistributionPoint(
                [x509.UniformResourceIdentifier(crl_url(published.base, issuer_name, aki))], None, None, None
            )
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        # RFC 5280 §4.2.2.1: one AuthorityInfoAccess extension, non-critical (MUST), with an
        # AccessDescription per access method the issuer is declared for.
        access: list[x509.AccessDescription] = []
        if published.ocsp:
            # id-ad-ocsp: the URI of the issuer's OCSP responder (RFC 6960 Appendix A.1 over
            # HTTP), whose responses the issuer's key signs.
            location = x509.UniformResourceIdentifier(ocsp_url(published.base, issuer_name, aki))
            access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP, location))
        if published.ca_issuers:
            # id-ad-caIssuers: the URI of the issuer's certificate: one DER certificate over HTTP
            # (the RFC's "single DER encoded certificate", served as application/pkix-cert, RFC
            # 2585 §4.1), for path building, not trust.
            ca_url = ca_certificate_url(published.base, issuer_name, aki)
            access.append(
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_url)
                )
            )
        if access:
            builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if is_ca:
        builder = builder.add_extension(ca_key_usage(spec), critical=True)
    else:
        # RFC 5280 §4.2.1.6: an IP address is an iPAddress (its 4 or 16 octets), never a
        # dNSName, which no client matches against an address (RFC 6125 §6.2.1): so also an
        # address written under dns (it passes as a name of digit labels).
        names: list[x509.GeneralName] = []
        for entry in (*(spec.dns or ()), *(spec.san or ())):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                names.append(x509.DNSName(entry))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        endpoint = str(spec.endpoint) if spec.endpoint else None
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if endpoint in (None, "server") else []
        if endpoint in (None, "client"):
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        # RFC 5280 §4.2.1.3: critical (SHOULD); with the extendedKeyUsage above both must allow
        # a purpose (RFC 5280 §4.2.1.12), as TLS libraries check.
        builder = builder.add_extension(leaf_key_usage(subject_key), critical=True)
    cert = builder.sign(signing_key, _sign_algorithm(signing_key))
    return cert.public_bytes(serialization.Encoding.DER), chain


def generate(
    spec: Secret,
    *,
    resolved: dict[str, SecretValue],
    now: datetime | None = None,
    published: Published | None = None,
    path_length: int = 0,
) -> SecretValue:
    """Create the value of a secret declared in a policy (``resolved`` holds the values of the
    policy's other secrets generated so far, for issuers and key references). ``published``:
    what of its issuer the CAS publishes, for the certificate to name: a CRL distribution point
    (its issuer is a generated CA declared ``crl_distribution``, docs/cas.md "CRL distribution
    points"), a caIssuers URL (declared ``ca_issuers``, "CA certificates (caIssuers)") and an
    OCSP responder URL (declared ``ocsp``, "OCSP"). ``path_length``: a generated x509-ca's
    pathLenConstraint (:func:`ca_path_lengths` of its policy)."""
    now = now or datetime.now(UTC)
    kind = spec.kind
    if spec.value is not None and kind in (SecretKind.ASCII, SecretKind.BINARY):
        data = spec.value.encode()
        if kind == SecretKind.BINARY:
            try:
                data = bytes.fromhex(spec.value)
            except ValueError:
                data = spec.value.encode()
        return SecretValue(str(kind), data)
    match kind:
        case SecretKind.ASCII:
            size = spec.size or _DEFAULT_SIZE[SecretKind.ASCII]
            return SecretValue(str(kind), "".join(pysecrets.choice(_ASCII) for _ in range(size)).encode())
        case SecretKind.BINARY:
            return SecretValue(str(kind), os.urandom(spec.size or _DEFAULT_SIZE[SecretKind.BINARY]))
        case SecretKind.PRIVATE_KEY:
            if spec.value is not None:
                key = serialization.load_pem_private_key(spec.value.encode(), None)
                der = key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                return SecretValue(str(kind), der)
            return SecretValue(str(kind), _private_key(spec.key_type))
        case SecretKind.PUBLIC_KEY:
            if spec.value is not None:
                # Held as the PEM SubjectPublicKeyInfo its formats give (``pem``; ``der`` its DER),
                # whatever PEM it was given in (a PKCS#1 "RSA PUBLIC KEY", text around the block).
                given = serialization.load_pem_public_key(spec.value.encode())
                spki_pem: bytes = given.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                return SecretValue(str(kind), spki_pem)
            if spec.private_key is None or spec.private_key not in resolved:
                raise PolicyError(
                    f"secret {spec.name}: private_key {spec.private_key!r} is not a generated key"
                )
            return SecretValue(str(kind), _public_pem(resolved[spec.private_key].data))
        case SecretKind.X509_CA | SecretKind.X509 if spec.value is not None:
            return _explicit_certificate(spec, resolved)
        case SecretKind.X509_CA | SecretKind.X509:
            if spec.private_key is not None:
                if spec.private_key not in resolved:
                    raise PolicyError(
                        f"secret {spec.name}: private_key {spec.private_key!r} is not available"
                    )
                key_der = resolved[spec.private_key].data
            else:
                key_der = _private_key(spec.key_type)
            issuer = None
            if spec.issuer is not None:
                if spec.issuer not in resolved:
                    raise PolicyError(f"secret {spec.name}: issuer {spec.issuer!r} is not available")
                issuer = resolved[spec.issuer]
            cert, chain = _certificate(
                spec, key_der, issuer=issuer, now=now, is_ca=kind == SecretKind.X509_CA, published=published,
                path_length=path_length,
            )  # fmt: skip
            return SecretValue(str(kind), key_der, cert, chain)
        case _:
            raise PolicyError(f"secret {spec.name}: kind {kind!r} cannot be generated")


def public_part(value: SecretValue) -> SecretValue:
    """What ``export_public`` shares with every policy: a certificate with its chain (no private
    key), the public key of a private key, a public key as it is. ascii and binary secrets have
    no public part (:class:`PolicyError`)."""
    if value.kind in CERTIFICATE_KINDS:
        return SecretValue(value.kind, b"", value.certificate, value.chain)
    if value.kind == SecretKind.PRIVATE_KEY:
        return SecretValue(str(SecretKind.PUBLIC_KEY), _public_pem(value.data))
    if value.kind == SecretKind.PUBLIC_KEY:
        return value
    raise PolicyError(f"export_public shares public parts only, and {value.kind} secrets have none")


def identity_of(value: SecretValue) -> str:
    """The identity (fingerprint, :func:`confide.identity.fingerprint_of_public_key`) a secret's
    value names in an access entry ``$$SCONE::name$$``: its public key, that of a private key,
    a public key or a certificate (docs/policy.md "access_policy"). :class:`PolicyError` when it
    names none: another kind, or a key that is not an identity's (Ed25519, not of small
    order). The message names no value."""
    try:
        if value.kind in CERTIFICATE_KINDS and value.certificate is not None:
            key: Any = x509.load_der_x509_certificate(value.certificate).public_key()
        elif value.kind == SecretKind.PRIVATE_KEY:
            key = _load_private(value.data).public_key()
        elif value.kind == SecretKind.PUBLIC_KEY:
            key = serialization.load_pem_public_key(value.data)
        else:
            raise PolicyError(f"a secret of kind {value.kind} has no public key to name an identity by")
        return fingerprint_of_public_key(key)
    except ValueError as exc:
        raise PolicyError(f"its key names no identity: {exc}") from None


def template_value(value: SecretValue) -> dict[str, Any]:
    """A value as the release carries it for templates rendered by the runtime
    (:func:`template_secret` reads it back)."""
    return {
        "kind": value.kind,
        "data": value.data.hex(),
        "certificate": value.certificate.hex() if value.certificate else None,
        "chain": [c.hex() for c in value.chain],
        "runtime_key": value.runtime_key,
    }


def template_secret(obj: Any) -> SecretValue:
    """The inverse of :func:`template_value`; ``ParseError`` on anything malformed."""
    try:
        return SecretValue(
            kind=str(obj["kind"]),
            data=bytes.fromhex(obj["data"]),
            certificate=bytes.fromhex(obj["certificate"]) if obj["certificate"] else None,
            chain=tuple(bytes.fromhex(c) for c in obj["chain"]),
            runtime_key=bool(obj["runtime_key"]),
        )
    except (KeyError, TypeError, ValueError):
        raise ParseError("malformed template secret", structure="release") from None


MAX_EXPLICIT_CHAIN = 8
"""Most certificates an explicit ``value`` may hold (the certificate, then its issuers)."""


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _explicit_certificate(spec: Secret, resolved: dict[str, SecretValue]) -> SecretValue:
    """An ``x509``/``x509-ca`` given as a PEM ``value``: the certificate first, optionally
    followed by its issuers (the chain), used as given. With ``private_key`` (a private-key
    secret of the policy) the key must be the certificate's; with ``issuer`` (an x509-ca of the
    policy) the certificate must be signed by it, and the issuer's certificate and chain follow.
    Without ``private_key`` the CAS holds no key for it: ``:privatekey`` cannot be rendered and
    it cannot issue certificates."""
    assert spec.value is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long attribute values in real-world names
            certs = [
                check_certificate_fields(c) for c in x509.load_pem_x509_certificates(spec.value.encode())
            ]
    except CERTIFICATE_ERRORS:
        raise PolicyError(f"secret {spec.name}: value is not a PEM X.509 certificate") from None
    if len(certs) > MAX_EXPLICIT_CHAIN:
        raise PolicyError(
            f"secret {spec.name}: value holds {len(certs)} certificates,"
            f" expected at most {MAX_EXPLICIT_CHAIN}"
        )
    leaf, rest = certs[0], certs[1:]
    key_der = b""
    if spec.private_key is not None:
        if spec.private_key not in resolved:
            raise PolicyError(f"secret {spec.name}: private_key {spec.private_key!r} is not available")
        key_der = resolved[spec.private_key].data
        if not hmac.compare_digest(_spki(_load_private(key_der).public_key()), _spki(leaf.public_key())):
            raise PolicyError(
                f"secret {spec.name}: private_key {spec.private_key!r} is not the key of"
                " the certificate in value"
            )
    chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in rest)
    if spec.issuer is not None:
        issuer = resolved.get(spec.issuer)
        if issuer is None or issuer.certificate is None:
            raise PolicyError(f"secret {spec.name}: issuer {spec.issuer!r} is not an available certificate")
        try:
            leaf.verify_directly_issued_by(x509.load_der_x509_certificate(issuer.certificate))
        except (ValueError, TypeError, InvalidSignature):
            raise PolicyError(
                f"secret {spec.name}: the certificate in value is not issued by {spec.issuer!r}"
            ) from None
        if chain:
            raise PolicyError(f"secret {spec.name}: got issuer and a chain in value, expected one of them")
        chain = (issuer.certificate, *issuer.chain)
    return SecretValue(str(spec.kind), key_der, leaf.public_bytes(serialization.Encoding.DER), chain)


RUNTIME_KEY_MARKER = _RUNTIME_KEY_MARKER
"""Stands for the runtime's own private key (PEM) in a release; ``confide run`` replaces it
wherever it appears, so no other value may hold it (:func:`render`)."""


def issue_to_runtime(
    spec: Secret,
    runtime_key: Any,
    issuer: SecretValue,
    now: datetime | None = None,
    published: Published | None = None,
) -> SecretValue:
    """A certificate for the attested runtime's ephemeral public key (the private key stays in
    the TEE), issued by ``issuer`` (an x509-ca secret) at release time. ``published``: as for
    :func:`generate`."""
    cert, chain = _certificate(spec, None, issuer=issuer, now=now or datetime.now(UTC), is_ca=False,
                               public_key=runtime_key, published=published)  # fmt: skip
    return SecretValue(str(spec.kind), b"", cert, chain, runtime_key=True)


def _pem(der: bytes, label: str) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN " + label.encode() + b"-----\n" + lines + b"\n-----END " + label.encode() + b"-----\n"


def render(value: SecretValue, encoding: Encoding) -> bytes:
    """A secret value in the encoding a placeholder asks for. A value other than a certificate
    issued to the runtime whose rendering holds :data:`RUNTIME_KEY_MARKER` is refused
    (``PolicyError``, naming no part of it): ``confide run`` would put the runtime's own private
    key in its place, e.g. into a value exported by another stakeholder that the program sends
    back to them."""
    out = _render(value, encoding)
    if not value.runtime_key and RUNTIME_KEY_MARKER in out:
        raise PolicyError(
            f"a {value.kind} value holds confide's runtime-key marker, which confide run would replace"
            " with the runtime's private key: refused"
        )
    return out


def _render(value: SecretValue, encoding: Encoding) -> bytes:
    runtime_held = value.runtime_key
    keyless = value.kind in CERTIFICATE_KINDS and not value.data and not runtime_held
    match encoding:
        case Encoding.PEM_PKCS8 | Encoding.DER_PKCS8 | Encoding.PKCS12 if keyless:
            raise PolicyError(
                "this certificate has no private key here (an explicit value without private_key, or a"
                " certificate imported through export_public): no private key to inject"
            )
        case Encoding.PEM_PKCS8:
            return RUNTIME_KEY_MARKER if runtime_held else _pem(value.data, "PRIVATE KEY")
        case Encoding.DER_PKCS8:
            if runtime_held:
                raise PolicyError("a certificate issued to the runtime has its private key only as PEM")
            return value.data
        case Encoding.PKCS12:
            # SCONE v0.3.9 ``:pkcs12-with-private-key``: certificate, key and chain, DER, under
            # the empty password (confide.cas.pkcs12); fresh salts, so not the same bytes twice.
            if runtime_held:
                raise PolicyError(
                    "a certificate issued to the runtime has no private key for a PKCS#12 archive"
                )
            return pkcs12_with_private_key(value.data, _need_cert(value), value.chain)
        case Encoding.PEM_SPKI | Encoding.DER_SPKI if value.certificate is not None and not value.data:
            spki = x509.load_der_x509_certificate(value.certificate).public_key()
            if encoding == Encoding.DER_SPKI:
                return _spki(spki)
            pem_key: bytes = spki.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return pem_key
        case Encoding.PEM_SPKI:
            return value.data if value.kind == SecretKind.PUBLIC_KEY else _public_pem(value.data)
        case Encoding.DER_SPKI:
            pem = value.data if value.kind == SecretKind.PUBLIC_KEY else _public_pem(value.data)
            der: bytes = serialization.load_pem_public_key(pem).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return der
        case Encoding.CERT_PEM:
            return _pem(_need_cert(value), "CERTIFICATE")
        case Encoding.CERT_DER:
            return _need_cert(value)
        case Encoding.CHAIN_PEM:
            # SCONE v0.3 "x509 and x509-ca": the issuers, from the first intermediate to the root;
            # "the certificate itself is not included" (``crt`` followed by ``chain`` is the full
            # chain). Empty for a self-signed certificate.
            _need_cert(value)
            return b"".join(_pem(c, "CERTIFICATE") for c in value.chain)
        case Encoding.LEGACY_CHAIN_PEM:
            # SCONE's deprecated ``.chain``: the "reverse" chain, root first, then the
            # intermediates, and the certificate itself last (included).
            return b"".join(_pem(c, "CERTIFICATE") for c in (*reversed(value.chain), _need_cert(value)))
        case Encoding.CRL_PEM | Encoding.CRL_DER:
            # The CAS renders a CA's CRL itself (confide.cas.core, docs/cas.md "Revocation"): it is
            # not part of the value, so a template rendered at start cannot have it.
            raise PolicyError("a CRL (:crl) is injected by the CAS, not in a template rendered at start")
        case _:
            return encode_bytes(value.data, encoding)


def _need_cert(value: SecretValue) -> bytes:
    if value.certificate is None:
        raise PolicyError(f"a {value.kind} secret has no certificate")
    return value.certificate
