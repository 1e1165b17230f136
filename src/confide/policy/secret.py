"""Secret declarations of a policy (SCONE v0.3 "Secrets", "Secret Sharing")."""

from __future__ import annotations

import enum
import ipaddress
import re
import warnings
from collections.abc import Sequence
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    model_validator,
)

from confide.errors import PolicyError
from confide.policy._base import (
    Text,
    _Model,
    _one_or_many,
)
from confide.policy._types import (
    Duration,
    Hex32,
    PolicyName,
    SecretName,
    duration_seconds,
    short,
)

__all__ = [
    "MAX_SECRET_SIZE",
    "Endpoint",
    "ExportTarget",
    "KeyType",
    "OcspOptions",
    "OcspSigner",
    "Secret",
    "SecretImport",
    "SecretKind",
    "ca_levels_below",
    "generation_order",
]


# --------------------------------------------------------------------------------------------
# Secrets ("Secrets", "Secret Sharing", "Referencing Other Sessions")
# --------------------------------------------------------------------------------------------


class SecretKind(enum.StrEnum):
    ASCII = "ascii"
    BINARY = "binary"
    PRIVATE_KEY = "private-key"
    PUBLIC_KEY = "public-key"
    X509 = "x509"
    X509_CA = "x509-ca"


class KeyType(enum.StrEnum):
    P256 = "P-256"
    P384 = "P-384"
    ED25519 = "Ed25519"
    RSA2048 = "RSA-2048"
    RSA3072 = "RSA-3072"


class Endpoint(enum.StrEnum):
    SERVER = "server"
    CLIENT = "client"


class ExportTarget(_Model):
    """Who may import a secret: one policy (optionally pinned to its hash) or a namespace."""

    session: PolicyName | None = None
    session_hash: Hex32 | None = None
    namespace: PolicyName | None = None

    @model_validator(mode="after")
    def _one(self) -> ExportTarget:
        if (self.session is None) == (self.namespace is None):
            raise ValueError("got neither or both of session/namespace, expected exactly one")
        if self.session_hash is not None and self.session is None:
            raise ValueError("got session_hash with namespace, expected session_hash only with session")
        return self


class SecretImport(_Model):
    """Import of a secret exported by another policy, optionally pinned to its policy hash."""

    session: PolicyName
    secret: SecretName
    session_hash: Hex32 | None = None


class OcspSigner(enum.StrEnum):
    """Who signs a CA's OCSP responses (RFC 6960 §4.2.2.2 allows both; docs/cas.md "OCSP")."""

    DELEGATED = "delegated"
    """A short-lived responder certificate the CA issues (id-kp-OCSPSigning): the default."""
    CA = "ca"
    """The CA's own key, for relying parties that accept no delegated responder."""


class OcspOptions(_Model):
    """``ocsp: {signer: ...}``: the CAS answers OCSP for the CA, signed as ``signer`` says."""

    signer: OcspSigner = OcspSigner.DELEGATED


def _ocsp_tag(value: object) -> str | None:
    # Tags with "[" are pydantic location segments the loader leaves out of the path it shows.
    if isinstance(value, bool):
        return "ocsp[flag]"
    if isinstance(value, dict | OcspOptions):
        return "ocsp[options]"
    return None


def _ocsp_normal(value: bool | OcspOptions) -> bool | OcspOptions:
    """``{signer: delegated}`` (or ``{}``) means ``true``, and is held (and hashed) as ``true``:
    one meaning, one canonical form; ``true`` keeps the hash it always had."""
    if isinstance(value, OcspOptions) and value.signer is OcspSigner.DELEGATED:
        return True
    return value


OcspDeclaration = Annotated[
    Annotated[StrictBool, Tag("ocsp[flag]")] | Annotated[OcspOptions, Tag("ocsp[options]")],
    Discriminator(
        _ocsp_tag,
        custom_error_type="ocsp_declaration",
        custom_error_message="expected true, false or a mapping {signer: delegated|ca}",
    ),
    AfterValidator(_ocsp_normal),
]


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _dns_name(value: str) -> str:
    labels = value[2:].split(".") if value.startswith("*.") else value.split(".")
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"got {short(value)}, expected a DNS name (optionally starting with '*.')")
    return value


def _san(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _dns_name(value)
    return value


DnsName = Annotated[StrictStr, AfterValidator(_dns_name)]
SanEntry = Annotated[StrictStr, AfterValidator(_san)]

_ALLOWED: dict[SecretKind, frozenset[str]] = {
    SecretKind.ASCII: frozenset({"size", "value"}),
    SecretKind.BINARY: frozenset({"size", "value"}),
    SecretKind.PRIVATE_KEY: frozenset({"key_type", "value", "migrate"}),
    SecretKind.PUBLIC_KEY: frozenset({"value", "private_key"}),
    SecretKind.X509: frozenset(
        {
            "value",
            "private_key",
            "issuer",
            "common_name",
            "endpoint",
            "dns",
            "san",
            "valid_for",
            "renew_before",
            "issue_to_runtime",
        }
    ),
    SecretKind.X509_CA: frozenset(
        {
            "value",
            "private_key",
            "issuer",
            "common_name",
            "valid_for",
            "renew_before",
            "crl_distribution",
            "ca_issuers",
            "ocsp",
            "path_len",
        }
    ),
}
_KIND_PARAMS = frozenset().union(*_ALLOWED.values())
MAX_SECRET_SIZE = 65536
MAX_COMMON_NAME = 64
"""RFC 5280 Appendix A.1 ``ub-common-name``: the longest commonName a certificate may carry."""
MAX_PATH_LEN = 32
"""The largest ``path_len`` accepted (a chain longer than that is no private PKI's)."""


def _pem_private_key_type(value: str) -> KeyType | None:
    key = load_pem_private_key(value.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": KeyType.P256, "secp384r1": KeyType.P384}.get(key.curve.name)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return KeyType.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: KeyType.RSA2048, 3072: KeyType.RSA3072}.get(key.key_size)
    return None


class Secret(_Model):
    """A secret: generated by the CAS, given explicitly (``value``) or imported."""

    name: SecretName
    kind: SecretKind | None = None
    size: Annotated[StrictInt, Field(ge=1, le=MAX_SECRET_SIZE)] | None = None
    value: StrictStr | None = None
    key_type: KeyType | None = None
    migrate: StrictBool = False
    private_key: SecretName | None = None
    issuer: SecretName | None = None
    common_name: Annotated[Text, Field(min_length=1, max_length=MAX_COMMON_NAME)] | None = None
    endpoint: Endpoint | None = None
    dns: Annotated[tuple[DnsName, ...], BeforeValidator(_one_or_many), Field(min_length=1)] | None = None
    san: Annotated[tuple[SanEntry, ...], BeforeValidator(_one_or_many), Field(min_length=1)] | None = None
    valid_for: Duration | None = None
    renew_before: Duration | None = None
    issue_to_runtime: StrictBool = False
    """confide extension (x509): the CAS issues the certificate, at each release, to the attested
    runtime's own ephemeral key, so the private key never leaves the TEE; the runtime fills in
    ``$$SCONE::name:privatekey$$``."""
    export: Annotated[tuple[ExportTarget, ...], BeforeValidator(_one_or_many)] = ()
    export_public: StrictBool = False
    crl_distribution: StrictBool = False
    """confide extension (generated x509-ca): the CAS serves this CA's CRL to anyone, without
    authentication, at an opaque URL, and with ``cas serve --public-url`` names that URL in the
    CRLDistributionPoints of the certificates it issues under it (docs/cas.md "CRL distribution
    points")."""
    ca_issuers: StrictBool = False
    """confide extension (generated x509-ca): the CAS serves this CA's certificate to anyone,
    without authentication, at an opaque URL, and with ``cas serve --public-url`` names that URL
    in an AuthorityInfoAccess caIssuers access method (RFC 5280 §4.2.2.1) of the certificates it
    issues under it (docs/cas.md "CA certificates (caIssuers)")."""
    ocsp: OcspDeclaration = False
    """confide extension (generated x509-ca): the CAS answers OCSP requests (RFC 6960) about the
    certificates this CA issued, to anyone, without authentication, at an opaque URL, and with
    ``cas serve --public-url`` names that URL in an AuthorityInfoAccess id-ad-ocsp access method
    (RFC 5280 §4.2.2.1) of the certificates it issues under it (docs/cas.md "OCSP"). ``true``
    (or ``{signer: delegated}``, held as ``true``): signed by a delegated responder certificate;
    ``{signer: ca}``: signed by the CA's own key (:attr:`ocsp_signer`)."""
    path_len: Annotated[StrictInt, Field(ge=0, le=MAX_PATH_LEN)] | None = None
    """confide extension (generated x509-ca): the pathLenConstraint of the CA's certificate (RFC
    5280 §4.2.1.9), for a CA whose key issues intermediate CAs outside the policy (a service
    that gets its ``privatekey``). Without it the constraint is the number of x509-ca levels
    the policy declares below the CA (:func:`ca_levels_below`: 0 for a CA that issues only end
    entities); it may not be smaller (docs/policy.md "Certificate extensions")."""
    import_: SecretImport | None = Field(default=None, alias="import")

    def _set_params(self) -> set[str]:
        flags = {"migrate", "issue_to_runtime", "crl_distribution", "ca_issuers", "ocsp"}
        out = {f for f in _KIND_PARAMS - flags if getattr(self, f) is not None}
        out.update(f for f in flags if getattr(self, f))
        return out

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> Secret:
        # A version the CAS stored before (loads_policy(stored=True)) skips the checks added
        # since versions could be stored without them; the CAS refuses at release what they do.
        stored = bool(isinstance(info.context, dict) and info.context.get("stored"))
        params = self._set_params()
        if self.import_ is not None:
            extra = sorted(
                params
                | ({"export"} if self.export else set())
                | ({"export_public"} if self.export_public else set())
            )
            if extra:
                raise ValueError(
                    f"got {', '.join(extra)} on an imported secret, expected only name, kind and import "
                    "(imported secrets cannot be re-exported)"
                )
            return self
        if self.kind is None:
            raise ValueError("got no kind, expected one of: " + ", ".join(k.value for k in SecretKind))
        extra = sorted(params - _ALLOWED[self.kind])
        if extra:
            raise ValueError(
                f"got {', '.join(extra)} for a {self.kind} secret, "
                f"expected only: {', '.join(sorted(_ALLOWED[self.kind]))}"
            )
        if self.crl_distribution and self.value is not None:
            raise ValueError(
                "got crl_distribution with an explicit value, expected it only on a generated x509-ca "
                "(the CAS has a CRL only for the CAs it generates)"
            )
        if self.ca_issuers and self.value is not None:
            raise ValueError(
                "got ca_issuers with an explicit value, expected it only on a generated x509-ca "
                "(the CAS publishes only the CAs it generates and signs with)"
            )
        if self.ocsp and self.value is not None:
            raise ValueError(
                "got ocsp with an explicit value, expected it only on a generated x509-ca "
                "(the CAS answers OCSP only for the CAs it generates and signs with)"
            )
        if self.path_len is not None and self.value is not None:
            raise ValueError(
                "got path_len with an explicit value, expected it only on a generated x509-ca "
                "(an explicit certificate carries the constraints it was issued with)"
            )
        getattr(self, "_check_" + self.kind.replace("-", "_"))()
        if self.kind in (SecretKind.X509, SecretKind.X509_CA) and self.value is None and not stored:
            self._check_common_name()
        if self.renew_before is not None:
            if self.valid_for is None:
                raise ValueError("got renew_before without valid_for, expected valid_for too")
            if duration_seconds(self.renew_before) >= duration_seconds(self.valid_for):
                raise ValueError(
                    "got renew_before >= valid_for, expected renew_before shorter than valid_for"
                )
        return self

    def _check_ascii(self) -> None:
        if self.value is not None:
            if self.size is not None:
                raise ValueError("got both size and value, expected one or the other")
            if not self.value.isascii() or "\x00" in self.value or not self.value:
                raise ValueError(
                    "got a value with non-ASCII or NUL characters, expected non-empty ASCII text"
                )
            if len(self.value) > MAX_SECRET_SIZE:
                raise ValueError(f"got a value longer than {MAX_SECRET_SIZE}, expected a shorter one")

    def _check_binary(self) -> None:
        if self.value is not None:
            if self.size is not None:
                raise ValueError("got both size and value, expected one or the other")
            v = self.value
            if not v or len(v) % 2 or not all(c in "0123456789abcdefABCDEF" for c in v):
                raise ValueError(
                    f"got a value of {len(v)} characters that is not hex, expected hex-encoded bytes"
                )
            if len(v) > 2 * MAX_SECRET_SIZE:
                raise ValueError(f"got a value longer than {MAX_SECRET_SIZE} bytes, expected a shorter one")

    def _check_private_key(self) -> None:
        if self.value is not None:
            try:
                found = _pem_private_key_type(self.value)
            except (ValueError, TypeError):
                raise ValueError("got a value that is not an unencrypted PEM PKCS#8 private key") from None
            except Exception:
                raise ValueError("got a value with an unsupported private key") from None
            if found is None:
                raise ValueError(
                    "got a private key of another type, expected one of: "
                    + ", ".join(k.value for k in KeyType)
                )
            if self.key_type is not None and found != self.key_type:
                raise ValueError(f"got a {found} key in value, expected key_type {self.key_type}")

    def _check_public_key(self) -> None:
        if (self.value is None) == (self.private_key is None):
            raise ValueError("got neither or both of value/private_key, expected exactly one")
        if self.value is not None:
            try:
                load_pem_public_key(self.value.encode())
            except Exception:
                raise ValueError("got a value that is not a PEM SubjectPublicKeyInfo public key") from None

    def _check_x509(self) -> None:
        if self.value is not None:
            given = sorted(
                f
                for f in ("common_name", "endpoint", "dns", "san", "valid_for", "renew_before")
                if getattr(self, f)
            )
            if given:
                raise ValueError(
                    f"got {', '.join(given)} with an explicit value, expected them only when generated"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x509.load_pem_x509_certificate(self.value.encode())
            except Exception:
                raise ValueError("got a value that is not a PEM X.509 certificate") from None
        elif self.issue_to_runtime:
            if self.private_key is not None or self.issuer is None:
                raise ValueError(
                    "got issue_to_runtime with a private_key or without an issuer, expected an issuer and "
                    "no private_key (the runtime's own key is certified)"
                )
        elif self.private_key is None:
            raise ValueError("got no private_key, expected a private-key secret name (or an explicit value)")
        if self.endpoint is Endpoint.CLIENT and (self.dns or self.san):
            raise ValueError("got dns/san with endpoint client, expected them only for server certificates")

    _check_x509_ca = _check_x509

    def _check_common_name(self) -> None:
        if len(self.subject_common_name) > MAX_COMMON_NAME:
            # RFC 5280 Appendix A.1: ub-common-name 64; the CAS could not issue the certificate.
            raise ValueError(
                f"got the name of {len(self.subject_common_name)} characters as the certificate's"
                f" common name, expected at most {MAX_COMMON_NAME} (or a common_name, or a dns name)"
            )

    @property
    def subject_common_name(self) -> str:
        """The commonName of a generated certificate's subject (SCONE v0.3 "x509 and x509-ca"):
        ``common_name``, else the first ``dns`` name, else the secret's ``name``. A first ``dns``
        name longer than a commonName may be (RFC 5280 ``ub-common-name``, 64) is passed over for
        the ``name``: it is in the subjectAltName, where a DNS name is matched (RFC 6125 §6.4.4)."""
        if self.common_name is not None:
            return self.common_name
        if self.dns and len(self.dns[0]) <= MAX_COMMON_NAME:
            return self.dns[0]
        return self.name

    @property
    def ocsp_signer(self) -> OcspSigner | None:
        """Who signs this CA's OCSP responses; ``None``: it has no OCSP responder."""
        if isinstance(self.ocsp, OcspOptions):
            return self.ocsp.signer
        return OcspSigner.DELEGATED if self.ocsp else None

    @property
    def generated(self) -> bool:
        """True when the CAS generates the value (not explicit, not imported)."""
        return self.value is None and self.import_ is None and self.kind is not SecretKind.PUBLIC_KEY


def ca_levels_below(secrets: Sequence[Secret]) -> dict[str, int]:
    """For every ``x509-ca`` of a policy, how many levels of ``x509-ca`` the policy declares
    below it through ``issuer`` (RFC 5280 §4.2.1.9: the number of non-self-issued intermediate
    CA certificates that may follow it in a path): 0 for a CA that issues only end-entity
    certificates, 1 for a root over such a CA, and so on (the longest such chain). Issuer
    cycles (refused at load) end the count."""
    cas = {s.name for s in secrets if s.kind is SecretKind.X509_CA}
    below: dict[str, list[str]] = {name: [] for name in cas}
    for s in secrets:
        if s.kind is SecretKind.X509_CA and s.issuer in below:
            below[s.issuer].append(s.name)
    levels: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name in levels:
            return levels[name]
        children = [c for c in below[name] if c not in seen]
        out = max((level(c, seen | {c}) + 1 for c in children), default=0)
        levels[name] = out
        return out

    for name in sorted(cas):
        level(name, frozenset({name}))
    return levels


def generation_order(secrets: Sequence[Secret]) -> tuple[Secret, ...]:
    """The order in which the CAS generates (and renews) a policy's secrets: each one after the
    secrets of the policy it references (``private_key``, ``issuer``: a key before the
    certificate or public key made of it, an issuer before what it signs), otherwise in
    declaration order. A secret is moved up only to just before its first declared dependant, so
    a policy that declares every reference first keeps its declaration order exactly (the order
    the CAS used before, docs/cas.md "Secrets"). References to names the policy does not
    declare are left out (the loader refuses them; imported secrets reference nothing).

    Only ``issuer`` can close a cycle (``private_key`` names a ``private-key`` secret, which
    references nothing), and the loader refuses issuer cycles with their file, line and column
    (:mod:`confide.policy.model`); :class:`PolicyError` here for a cycle in a policy built
    without validation."""
    by_name = {s.name: s for s in secrets}
    out: list[Secret] = []
    done: set[str] = set()
    for first in secrets:
        if first.name in done:
            continue
        # Depth-first, iteratively (an issuer chain may be as long as the policy): a secret is
        # emitted once every secret it references has been.
        stack: list[tuple[Secret, list[str]]] = [(first, _references(first, by_name))]
        path, on_path = [first.name], {first.name}
        while stack:
            spec, pending = stack[-1]
            while pending and pending[0] in done:
                pending.pop(0)
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(spec.name)
                done.add(spec.name)
                out.append(spec)
                continue
            ref = pending.pop(0)
            if ref in on_path:
                cycle = " -> ".join([*path[path.index(ref) :], ref])
                raise PolicyError(f"got a reference cycle {cycle}, expected keys and issuers to form chains")
            nxt = by_name[ref]
            stack.append((nxt, _references(nxt, by_name)))
            on_path.add(ref)
            path.append(ref)
    return tuple(out)


def _references(spec: Secret, by_name: dict[str, Secret]) -> list[str]:
    """The policy's own secrets ``spec`` is made from: its key, then its issuer."""
    return [r for r in (spec.private_key, spec.issuer) if r is not None and r in by_name]
