"""OCSP (RFC 6960) responses checked as revocation collateral, without I/O or a clock.

:func:`ocsp_request_der` builds the request for one certificate (one ``CertID``, SHA-384 as
NVIDIA's verifier uses, optionally the nonce extension of §4.4.1); :func:`verify_ocsp_response`
checks the DER response a collateral source brought back, at ``at``:

1. At most :data:`MAX_RESPONSE_SIZE` bytes, a DER ``OCSPResponse`` (``ParseError`` otherwise);
   ``responseStatus`` must be ``successful`` (§4.2.1; anything else: ``CollateralError``).
2. Exactly one ``SingleResponse``, whose ``CertID`` (hash algorithm SHA-1/256/384/512, issuer
   name hash, issuer key hash, serial number; §4.1.1) is the asked certificate's.
3. The signer (§4.2.2.2): the issuer itself, or a delegated responder certificate carried in
   the response that the issuer signed, valid at ``at``, with extended key usage
   id-kp-OCSPSigning. The ``ResponderID`` must name that signer (by name or by the SHA-1 of
   its public key, §4.2.2.3), and the signature over ``tbsResponseData`` must verify with its
   key. The issuer is a certificate of a chain already verified to a pinned root, so the
   signer chains to that root. Signatures that verified are remembered (a bounded memo keyed by
   the SHA-256 of key, algorithm, signed bytes and signature: true whenever it is, whatever the
   time), so a response checked again, as the CAS checks its cached responses at every
   attestation, costs no second signature verification; every other step runs every time.
4. When a nonce was sent, the response must carry the same nonce (§4.4.1).
5. ``thisUpdate`` ≤ ``at`` + :data:`CLOCK_SKEW` and ``at`` < ``nextUpdate`` (§4.2.2.1, §3.2
   items 4-5); a response without ``nextUpdate`` is accepted only when its nonce matched (it
   was made for this request). A *stapled* response (:attr:`OcspResponse.max_age` set: it
   came with the evidence, fetched by the runtime with a nonce of its own, which the verifier
   cannot check) must also have ``thisUpdate`` ≥ ``at`` − ``max_age``: nothing else bounds how
   long ago the responder said it (:func:`stapled_is_stale` tells this step's verdict alone).
6. ``certStatus`` (§4.2.1): ``good`` passes; ``revoked`` raises :class:`RevocationError` with
   the revocation time and reason; ``unknown`` raises :class:`RevocationError` too (the
   responder does not vouch for the certificate, so it is not known to be unrevoked).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from confide.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralMissingError,
    ParseError,
    RevocationError,
    SignatureError,
)
from confide.lru import Lru
from confide.verify._pinned_chain import subject_cn
from confide.verify.result import ClaimValue
from confide.verify.x509util import (
    CERTIFICATE_ERRORS,
    check_cert_dates,
    check_certificate_fields,
    check_names,
)

__all__ = [
    "CLOCK_SKEW",
    "MAX_RESPONSE_SIZE",
    "MAX_STAPLED",
    "NONCE_SIZE",
    "STAPLED_MAX_AGE",
    "OcspCheck",
    "OcspResponse",
    "check_chain",
    "ocsp_request_der",
    "stapled_is_stale",
    "verify_ocsp_response",
]

MAX_RESPONSE_SIZE = 64 * 1024
NONCE_SIZE = 32  # nvtrust: BaseSettings.SIZE_OF_NONCE_IN_BYTES
CLOCK_SKEW = timedelta(minutes=5)
"""How far ``thisUpdate`` may lie after ``at`` (the responder's clock may run ahead)."""
STAPLED_MAX_AGE = timedelta(hours=24)
"""The default bound on a stapled response's age (``at`` − ``thisUpdate``, step 5)."""
MAX_STAPLED = 8
"""Stapled responses a GPU's evidence may carry: one per certificate between its leaf and root."""

_CERTID_HASHES = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)
_VERIFIED: Lru[bytes, bool] = Lru(4096)
"""SHA-256 digests of (key, algorithm, signed bytes, signature) that verified (step 3)."""


def _verified_once(parts: Sequence[bytes], verify: Callable[[], None]) -> None:
    """Run ``verify`` (raising when the signature does not verify) unless the same signature
    verified before; ``parts`` name it completely (key DER, algorithm, data, signature)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    key = digest.digest()
    if _VERIFIED.get(key):
        return
    verify()
    _VERIFIED.put(key, True)


@dataclass(frozen=True, slots=True)
class OcspResponse:
    """A DER OCSP response as fetched, and the nonce its request carried (``None``: none).
    ``max_age``: set for a stapled response (sent with the evidence: its request's nonce, if
    any, is not the verifier's): how old its ``thisUpdate`` may be at the time of the check
    (module docstring, step 5); ``None``: fetched by the verifier's side, not bounded so."""

    der: bytes
    nonce: bytes | None = None
    max_age: timedelta | None = None


@dataclass(frozen=True, slots=True)
class OcspCheck:
    """What one verified response says about one certificate (its status was ``good``)."""

    subject: str
    serial: int
    responder: str
    delegated: bool
    this_update: datetime
    next_update: datetime | None
    nonce_checked: bool
    stapled: bool = False

    def to_claim(self) -> ClaimValue:
        return {
            "subject": self.subject,
            "serial": format(self.serial, "x"),
            "status": "good",
            "responder": self.responder,
            "delegated_responder": self.delegated,
            "this_update": self.this_update.isoformat(),
            "next_update": None if self.next_update is None else self.next_update.isoformat(),
            "nonce_checked": self.nonce_checked,
            "stapled": self.stapled,
        }


def ocsp_request_der(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    """The DER ``OCSPRequest`` for ``cert`` (§4.1.1): one CertID hashed with SHA-384, and the
    nonce extension (§4.4.1) when ``nonce`` is given (NVIDIA's verifier sends 32 bytes, critical)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=True)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _load(der: bytes, what: str) -> ocsp.OCSPResponse:
    if len(der) > MAX_RESPONSE_SIZE:
        raise ParseError(f"got {len(der)} bytes, expected at most {MAX_RESPONSE_SIZE}", structure=what)
    try:
        resp = ocsp.load_der_ocsp_response(der)
        if resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
            # Parsed lazily: read now the responder ID and the carried certificates, which the
            # checks read before the signature is verified, so a malformed one is this error.
            check_names(lambda: tuple(n for n in (resp.responder_name,) if n is not None))
            _ = resp.responder_key_hash
            for cert in resp.certificates:
                check_certificate_fields(cert)
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"not a DER OCSP response: {exc}", structure=what) from None
    return resp


def _check_cert_id(
    single: ocsp.OCSPSingleResponse, cert: x509.Certificate, issuer: x509.Certificate, what: str
) -> None:
    try:
        algorithm = single.hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise CollateralError(f"{what}: CertID hash: {exc}") from None
    if not isinstance(algorithm, _CERTID_HASHES):
        raise CollateralError(f"{what}: CertID hash {algorithm.name} is not SHA-1/256/384/512")
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    if (
        single.serial_number != cert.serial_number
        or not hmac.compare_digest(single.issuer_name_hash, expected.issuer_name_hash)
        or not hmac.compare_digest(single.issuer_key_hash, expected.issuer_key_hash)
    ):
        raise CollateralError(
            f"{what}: the response is for serial {single.serial_number:x} of another issuer or"
            f" certificate, expected serial {cert.serial_number:x} issued by {subject_cn(issuer)!r}"
        )


def _key_hash(cert: x509.Certificate) -> bytes:
    # §4.2.2.3 KeyHash: SHA-1 of the subjectPublicKey BIT STRING value, the RFC 5280 §4.2.1.2
    # method (1) key identifier.
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _responder_matches(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    if resp.responder_key_hash is not None:
        try:
            return hmac.compare_digest(resp.responder_key_hash, _key_hash(signer))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return False
    return resp.responder_name == signer.subject


def _signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime, what: str
) -> tuple[x509.Certificate, bool]:
    """The certificate that signed ``resp`` and whether it is a delegated responder (§4.2.2.2)."""
    try:
        carried = list(resp.certificates)
    except ValueError as exc:
        raise ParseError(f"malformed certificate in the response: {exc}", structure=what) from None
    if _responder_matches(resp, issuer):
        return issuer, False
    for cert in carried:
        if not _responder_matches(resp, cert):
            continue
        name = f"{what}: delegated responder {subject_cn(cert)!r}"
        if cert.issuer != issuer.subject:
            raise CertificateChainError(f"{name} was not issued by {subject_cn(issuer)!r} (§4.2.2.2)")
        try:
            parts = [c.public_bytes(serialization.Encoding.DER) for c in (issuer, cert)]
            _verified_once(parts, partial(cert.verify_directly_issued_by, issuer))
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise CertificateChainError(
                f"{name}: signature by {subject_cn(issuer)!r} does not verify"
            ) from None
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        except (ValueError, x509.DuplicateExtension) as exc:
            raise CertificateChainError(f"{name}: malformed extension: {exc}") from None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise CertificateChainError(f"{name} lacks extended key usage id-kp-OCSPSigning (§4.2.2.2)")
        check_cert_dates(cert, at, name)
        return cert, True
    raise CertificateChainError(
        f"{what}: the responder is neither {subject_cn(issuer)!r} nor a certificate carried in the response"
    )


def _verify_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate, what: str) -> None:
    try:
        key = signer.public_key()
        algorithm = resp.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{what}: unusable signature algorithm or key: {exc}") from None
    data, signature = resp.tbs_response_bytes, resp.signature

    def verify() -> None:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and algorithm is None:
            key.verify(signature, data)
        else:
            raise SignatureError(
                f"{what}: signature algorithm {resp.signature_algorithm_oid.dotted_string} does not fit"
                f" the key of {subject_cn(signer)!r}"
            )

    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    oid = resp.signature_algorithm_oid.dotted_string.encode()
    try:
        _verified_once([spki, oid, data, signature], verify)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise SignatureError(
            f"{what}: signature does not verify with the key of {subject_cn(signer)!r}"
        ) from None


def _check_nonce(resp: ocsp.OCSPResponse, nonce: bytes | None, what: str) -> bool:
    if nonce is None:
        return False
    try:
        got = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        raise CollateralError(
            f"{what}: the request carried a nonce, the response has none (§4.4.1)"
        ) from None
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ParseError(f"malformed response extension: {exc}", structure=what) from None
    if not hmac.compare_digest(got, nonce):
        raise CollateralError(f"{what}: nonce {got.hex()} is not the request's {nonce.hex()} (§4.4.1)")
    return True


def verify_ocsp_response(
    response: OcspResponse, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime
) -> OcspCheck:
    """Check ``response`` about ``cert`` (issued by ``issuer``) at ``at``; see the module
    docstring. ``issuer`` must already be verified (a link of a chain to a pinned root)."""
    what = f"OCSP response for {subject_cn(cert)!r}"
    # 1. parse, responseStatus
    resp = _load(response.der, what)
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise CollateralError(f"{what}: responseStatus {resp.response_status.name}, expected SUCCESSFUL")
    # 2. one SingleResponse for this certificate
    try:
        singles = list(resp.responses)
    except ValueError as exc:
        raise ParseError(f"malformed SingleResponse: {exc}", structure=what) from None
    if len(singles) != 1:
        raise CollateralError(f"{what}: got {len(singles)} SingleResponses, expected 1")
    single = singles[0]
    _check_cert_id(single, cert, issuer, what)
    # 3. signer and signature
    signer, delegated = _signer(resp, issuer, at, what)
    _verify_signature(resp, signer, what)
    # 4. nonce
    nonce_checked = _check_nonce(resp, response.nonce, what)
    # 5. validity interval (and a stapled response's age)
    this_update, next_update = single.this_update_utc, single.next_update_utc
    _check_interval(this_update, next_update, nonce_checked, response.max_age, at, what)
    # 6. status
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.REVOKED:
        when = single.revocation_time_utc
        reason = single.revocation_reason
        raise RevocationError(
            f"certificate {subject_cn(cert)!r} (serial {cert.serial_number:x}) is revoked"
            + (f" since {when.isoformat()}" if when is not None else "")
            + (f", reason {reason.value}" if reason is not None else "")
            + f" (OCSP, signed by {subject_cn(signer)!r})"
        )
    if status is not ocsp.OCSPCertStatus.GOOD:
        raise RevocationError(
            f"certificate {subject_cn(cert)!r} (serial {cert.serial_number:x}): OCSP status"
            f" {status.name}, expected GOOD: the responder does not vouch for it"
        )
    return OcspCheck(
        subject=subject_cn(cert),
        serial=cert.serial_number,
        responder=subject_cn(signer),
        delegated=delegated,
        this_update=this_update,
        next_update=next_update,
        nonce_checked=nonce_checked,
        stapled=response.max_age is not None,
    )


def _check_interval(
    this_update: datetime,
    next_update: datetime | None,
    nonce_checked: bool,
    max_age: timedelta | None,
    at: datetime,
    what: str,
) -> None:
    """Step 5: ``CollateralExpiredError`` unless the response is current at ``at``."""
    if this_update > at + CLOCK_SKEW:
        raise CollateralExpiredError(
            f"{what}: thisUpdate {this_update.isoformat()} is after {at.isoformat()}"
        )
    if next_update is None and not nonce_checked:
        raise CollateralExpiredError(f"{what}: no nextUpdate and no nonce: cannot tell whether it is current")
    if next_update is not None and at >= next_update:
        raise CollateralExpiredError(
            f"{what}: nextUpdate {next_update.isoformat()} is not after {at.isoformat()}"
        )
    if max_age is not None and this_update < at - max_age:
        raise CollateralExpiredError(
            f"{what}: stapled, thisUpdate {this_update.isoformat()} is more than {max_age} before"
            f" {at.isoformat()}"
        )


def stapled_is_stale(response: OcspResponse, at: datetime) -> bool:
    """Whether step 5 alone refuses ``response`` at ``at`` (its dates, read without verifying
    anything else): the CAS then asks its own responder instead, when it has one. ``False`` for
    a response that does not parse as one ``SingleResponse``: the full verification
    (:func:`verify_ocsp_response`) refuses it, as it refuses every other fault, for what it is."""
    try:
        resp = _load(response.der, "stapled OCSP response")
        if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return False
        singles = list(resp.responses)
        if len(singles) != 1:
            return False
        this_update, next_update = singles[0].this_update_utc, singles[0].next_update_utc
    except (ParseError, ValueError):
        return False
    try:
        # The nonce is never the verifier's for a stapled response (nonce_checked False).
        _check_interval(this_update, next_update, False, response.max_age, at, "")
    except CollateralExpiredError:
        return True
    return False


def check_chain(
    targets: Sequence[tuple[x509.Certificate, x509.Certificate]],
    responses: Sequence[OcspResponse],
    *,
    at: datetime,
    what: str,
) -> list[ClaimValue]:
    """One response per (certificate, issuer) of ``targets``, each verified; their claims."""
    if len(responses) != len(targets):
        raise CollateralMissingError(
            f"OCSP for {what}: got {len(responses)} responses, expected {len(targets)}"
            f" ({', '.join(repr(subject_cn(c)) for c, _ in targets) or 'none'})"
        )
    return [
        verify_ocsp_response(resp, cert, issuer, at=at).to_claim()
        for resp, (cert, issuer) in zip(responses, targets, strict=True)
    ]
