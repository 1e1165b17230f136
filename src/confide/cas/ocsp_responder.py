"""The OCSP responder of the CAs the CAS generated and declared ``ocsp`` (docs/cas.md "OCSP";
RFC 6960).

One responder per CAS (:meth:`OcspResponder.of`), shared by the TLS API and the public HTTP
listener (:func:`confide.cas.public_http.ocsp_response` is the HTTP side, RFC 6960 Appendix A).
Each CA is reached at its own opaque URL, ``/v1/ocsp/<id>``, ``<id>`` the CA's CRL id
(:func:`confide.cas.secrets.crl_distribution_id`); the CA must be generated and its policy's
current version must declare it ``ocsp`` (:meth:`confide.cas.core.Cas._published_ca`).

A request (DER, at most :data:`MAX_REQUEST` bytes) is answered:

1. ``malformedRequest`` (RFC 6960 §2.3, unsigned) when it does not parse as one OCSPRequest
   (trailing bytes included), names more than one certificate (RFC 5019 §2.1.1: one Request
   per OCSPRequest; ``cryptography`` parses no other), asks about a serial that is not a
   positive integer (RFC 5280 §4.1.2.2), carries a critical extension other than
   the nonce (§4.4: unrecognised critical extensions are not ignored), a duplicate extension, or
   a nonce of 0 or more than 32 octets (RFC 8954 §2.1: MUST reject with malformedRequest);
2. ``unauthorized`` (§2.3, unsigned: "the server is not capable of responding authoritatively",
   cf. RFC 5019 §2.2.3) when the URL's id names no CA declared ``ocsp``, when the CertID's
   issuerNameHash and issuerKeyHash (§4.1.1) are not those of that CA, or when its hash
   algorithm is one ``cryptography`` cannot compute;
3. ``tryLater`` (§2.3, unsigned) when the answer needs a new signature and the client (an IPv4
   address, an IPv6 /64) is over :data:`SIGNATURE_RATE`;
4. otherwise ``successful``: a BasicOCSPResponse (§4.2.1) signed by the CA's own key (§4.2.2.2:
   the CA that issued the certificate may sign itself; no delegated responder certificate, so
   the response carries no certificates), responderID byKey (§4.2.2.3), one SingleResponse
   echoing the request's CertID, with the certStatus (§4.2.1, §2.2):

   - ``revoked``, with revocationTime and revocationReason (omitted for ``unspecified``, as on
     the CRL, RFC 5280 §5.3.1), when the CA's key signed it and it is recorded as revoked
     (``revoked_certificates``: superseded, removed, owner-revoked, runtime certificates: the
     records the CRL lists, :mod:`confide.cas.crl`);
   - ``good`` when the CAS knows it issued it under the CA's key (a stored version of a secret
     of the CA's policy whose certificate has that serial and authorityKeyIdentifier, or a
     recorded runtime certificate) and it is not past its notAfter;
   - ``unknown`` for everything else (a serial the CAS never issued under that key, or issued
     under it as an import by another policy, or past its notAfter and not revoked).

   thisUpdate is the CAS clock when signed (whole seconds); nextUpdate is the nextUpdate of the
   CA's current CRL (RFC 5280 §5.1.2.5), so a response is never valid longer than the CRL that
   says the same; a CRL past half its validity is re-issued first, as on the CRL routes. A nonce
   in the request (RFC 8954) is echoed in responseExtensions.

**Cache.** A response without a nonce is kept (:class:`~confide.lru.Lru`, at most
:data:`CACHE_SIZE` entries) keyed by the CA, its version and CRL number, and the CertID: the
revoked set, the CA's key and its version change only with a new CRL (same transaction,
:func:`confide.cas.crl.issue_crls`), so a cached ``good`` is never served after a revocation. It
is served until the CRL's nextUpdate, a ``good`` one at most until the certificate's notAfter,
an ``unknown`` one :data:`UNKNOWN_TTL` seconds. A flood of one request costs one signature; a
flood of distinct ones (other serials, nonces) is bounded per client by :data:`SIGNATURE_RATE`.
The CA's value is unsealed as for a CRL (``Cas._unseal``, with its cache); its key is never
logged or put in an error.
"""

from __future__ import annotations

import json
import threading
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509 import ocsp

from confide.cas.crl import REASONS, UNSPECIFIED, CrlRow, crl_due, current_crl
from confide.cas.db import raw_execute
from confide.cas.ratelimit import Rate, RateLimiter, client_key
from confide.cas.renewal import renew_due
from confide.cas.secrets import CERTIFICATE_KINDS, crl_distribution_id
from confide.lru import Lru

if TYPE_CHECKING:
    from confide.cas.core import Cas

__all__ = [
    "CACHE_SIZE",
    "MAX_AGE",
    "MAX_NONCE",
    "MAX_REQUEST",
    "MIN_NONCE",
    "SIGNATURE_RATE",
    "UNKNOWN_TTL",
    "OcspAnswer",
    "OcspResponder",
    "unsuccessful",
]

MAX_REQUEST = 4096
"""Bytes of a DER OCSPRequest: one CertID and a nonce take about 120; a signed request with its
signer's certificate a few hundred more (RFC 6960 §4.1.2)."""
MIN_NONCE, MAX_NONCE = 1, 32  # RFC 8954 §2.1: Nonce ::= OCTET STRING(SIZE(1..32))
CACHE_SIZE = 4096
MAX_AGE = 300
"""Seconds an HTTP cache may keep a response without a nonce (never past nextUpdate), as for the
public CRLs: a revocation reaches HTTP caches within 5 minutes."""
UNKNOWN_TTL = 60.0
SIGNATURE_RATE = Rate(20.0, 40.0)
"""New signatures per second per client (and burst): cached responses are not counted."""

_CA_ID_LEN = 32
_SERIAL_OCTETS = 20  # RFC 5280 §4.1.2.2: a serial of more than 20 octets is no CAS certificate's


class OcspAnswer(NamedTuple):
    """A DER OCSPResponse and how many seconds an HTTP cache may keep it (0: ``no-store``)."""

    der: bytes
    max_age: int


def unsuccessful(status: ocsp.OCSPResponseStatus) -> OcspAnswer:
    """An OCSPResponse with only a responseStatus (RFC 6960 §4.2.1: no responseBytes), unsigned."""
    return OcspAnswer(
        ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER), 0
    )


_MALFORMED = unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
_UNAUTHORIZED = unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
_TRY_LATER = unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)


class _Query(NamedTuple):
    """What a parsed request asks (RFC 6960 §4.1.1 CertID) and its nonce."""

    algorithm: hashes.HashAlgorithm
    name_hash: bytes
    key_hash: bytes
    serial: int
    nonce: bytes | None


class _Ca(NamedTuple):
    """A CA declared ``ocsp``, as of its policy's current version and CRL."""

    policy: str
    name: str
    version: int
    key_id: str  # hex, the CA's subjectKeyIdentifier (the authorityKeyIdentifier of what it signs)
    certificate: x509.Certificate
    crl: CrlRow


class _Status(NamedTuple):
    status: ocsp.OCSPCertStatus
    revoked_at: float | None = None
    reason: str | None = None
    valid_until: float | None = None  # a good certificate's notAfter


def parse_request(der: bytes) -> _Query | None:
    """The CertID and nonce of ``der``; ``None`` when it is to be answered ``malformedRequest``
    (module docstring, step 1). Raises :class:`UnsupportedAlgorithm` for a CertID hash
    algorithm ``cryptography`` does not compute, and only for a request that is otherwise well
    formed: a request that is malformed is answered so whatever its algorithm (RFC 8954 §2.1: a
    bad nonce MUST get malformedRequest; the fuzz4 campaign found such a request with an MD5
    CertID answered ``unauthorized``)."""
    if not der or len(der) > MAX_REQUEST:
        return None
    try:
        request = ocsp.load_der_ocsp_request(der)  # the whole input: trailing bytes are refused
        extensions = request.extensions
        serial = request.serial_number
        name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
    except NotImplementedError:
        return None  # more than one Request (RFC 5019 §2.1.1: one per OCSPRequest)
    except (ValueError, TypeError, x509.DuplicateExtension):
        return None
    if serial <= 0:
        return None  # RFC 5280 §4.1.2.2: a serial number is a positive integer
    nonce = None
    for ext in extensions:
        if isinstance(ext.value, x509.OCSPNonce):
            nonce = ext.value.nonce
            if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
                return None  # RFC 8954 §2.1
        elif ext.critical:
            return None  # RFC 6960 §4.4: an unrecognised critical extension
    return _Query(
        request.hash_algorithm, name_hash, key_hash, serial, nonce
    )  # may raise UnsupportedAlgorithm


class OcspResponder:
    """The CAS's OCSP responder (module docstring). ``signature_rate``: per-client new signatures
    (``None``: unlimited); ``cache_size``: responses kept."""

    _by_cas: ClassVar[weakref.WeakKeyDictionary[Any, OcspResponder]] = weakref.WeakKeyDictionary()
    _by_cas_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, cas: Cas, *, signature_rate: Rate | None = SIGNATURE_RATE, cache_size: int = CACHE_SIZE
    ) -> None:
        self.cas = cas
        self._cache: Lru[tuple[Any, ...], tuple[bytes, float]] = Lru(cache_size)
        self._hashes: Lru[tuple[str, str, str], tuple[bytes, bytes]] = Lru(256)
        self._keys: Lru[tuple[str, str, int], Any] = Lru(64)
        self._ca_certs: Lru[tuple[str, str, int], tuple[x509.Certificate, bytes]] = Lru(256)
        self._limiter = RateLimiter(signature_rate) if signature_rate is not None else None
        self._limiter_lock = threading.Lock()
        self.signed = 0  # responses signed (cache misses)
        self.cached = 0  # responses served from the cache
        self.limited = 0  # tryLater for a client over its signature rate
        self.malformed = 0  # malformedRequest
        self.unauthorized = 0  # unauthorized

    @classmethod
    def of(cls, cas: Cas) -> OcspResponder:
        """The one responder of ``cas`` (created at first use), shared by both listeners."""
        with cls._by_cas_lock:
            found = cls._by_cas.get(cas)
            if found is None:
                found = cls._by_cas[cas] = cls(cas)
            return found

    def respond(self, ca_id: str, der: bytes, client: str | None) -> OcspAnswer:
        """The answer to the DER OCSPRequest ``der`` sent to ``/v1/ocsp/<ca_id>`` by ``client``
        (its address; ``None``: unknown)."""
        try:
            query = parse_request(der)
        except UnsupportedAlgorithm:
            query = None
            ca = None
        else:
            if query is None:
                self.malformed += 1
                return _MALFORMED
            ca = self._ca(ca_id)
        if query is None or ca is None or not self._issued_by(ca, query):
            self.unauthorized += 1
            return _UNAUTHORIZED
        key = (ca.policy, ca.name, ca.version, ca.crl.number, query.algorithm.name, query.name_hash,
               query.key_hash, query.serial)  # fmt: skip
        now = self.cas.clock()
        if query.nonce is None:
            hit = self._cache.get(key)
            if hit is not None and now < hit[1]:
                self.cached += 1
                return OcspAnswer(hit[0], _max_age(hit[1], now))
        if self._limiter is not None:
            with self._limiter_lock:
                wait = self._limiter.take(client_key(client) if client else "")
            if wait:
                self.limited += 1
                return _TRY_LATER
        status = self._status(ca, query.serial, now)
        der_out = self._sign(ca, query, status, now)
        self.signed += 1
        if query.nonce is not None:
            return OcspAnswer(der_out, 0)  # bound to one request: neither kept nor cached by HTTP
        until = ca.crl.next_update
        if status.valid_until is not None:
            until = min(until, status.valid_until)
        if status.status == ocsp.OCSPCertStatus.UNKNOWN:
            until = min(until, now + UNKNOWN_TTL)
        self._cache.put(key, (der_out, until))
        return OcspAnswer(der_out, _max_age(until, now))

    # -- the CA, the request's issuer and the certificate's status ------------------------------

    def _ca(self, ca_id: str) -> _Ca | None:
        """The CA declared ``ocsp`` with id ``ca_id`` and its current CRL, re-issued first when
        due (as :meth:`confide.cas.core.Cas.distributed_crl`); ``None`` for anything else."""
        if len(ca_id) != _CA_ID_LEN or not all(c in "0123456789abcdef" for c in ca_id):
            return None
        for attempt in range(2):
            with self.cas.db.read() as conn:
                served = self.cas._published_ca(conn, ca_id, "ocsp")
                if served is None:
                    return None
                crl = current_crl(conn, *served)
                row = self.cas._latest_secret(conn, *served)
            if row is None or crl is None:
                return None
            if not crl_due(crl.this_update, crl.next_update, self.cas.clock()):
                break
            if attempt == 0:
                renew_due(self.cas, [served[0]])
        else:
            return None  # still due: no response rather than one past the CRL's nextUpdate
        parsed = self._ca_certs.get((served[0], served[1], int(row.version)))
        if parsed is None:  # a stored version's public part never changes: parsed once
            try:
                cert = x509.load_pem_x509_certificate(json.loads(row.public)["certificate"].encode())
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except (KeyError, TypeError, ValueError, AttributeError, x509.ExtensionNotFound):
                return None
            parsed = (cert, ski)
            self._ca_certs.put((served[0], served[1], int(row.version)), parsed)
        cert, ski = parsed
        if crl_distribution_id(cert.subject, ski) != ca_id:
            return None  # the CRL row was found by the id of the CA's current key: checked again
        return _Ca(served[0], served[1], int(row.version), ski.hex(), cert, crl)

    def _issued_by(self, ca: _Ca, query: _Query) -> bool:
        """Whether the CertID names ``ca`` as issuer (RFC 6960 §4.1.1: the hashes of its subject
        DER and of the value of its subjectPublicKey BIT STRING, with the request's algorithm)."""
        key = (ca.key_id, ca.certificate.subject.public_bytes().hex(), query.algorithm.name)
        hashed = self._hashes.get(key)
        if hashed is None:
            probe = ocsp.OCSPRequestBuilder().add_certificate(ca.certificate, ca.certificate, query.algorithm)
            built = probe.build()
            hashed = (built.issuer_name_hash, built.issuer_key_hash)
            self._hashes.put(key, hashed)
        return hashed == (query.name_hash, query.key_hash)

    def _status(self, ca: _Ca, serial: int, now: float) -> _Status:
        """The certStatus of ``serial`` under ``ca`` (module docstring, step 4)."""
        if serial.bit_length() > 8 * _SERIAL_OCTETS:
            return _Status(ocsp.OCSPCertStatus.UNKNOWN)
        hex_serial = format(serial, "x")
        with self.cas.db.read() as conn:
            revoked = raw_execute(
                conn,
                "SELECT revoked_at, reason FROM revoked_certificates "
                "WHERE policy = ? AND issuer_key_id = ? AND serial = ?",
                (ca.policy, ca.key_id, hex_serial),
            ).fetchone()
            if revoked is not None:
                return _Status(ocsp.OCSPCertStatus.REVOKED, float(revoked[0]), str(revoked[1]))
            runtime = raw_execute(
                conn,
                "SELECT not_after FROM runtime_certificates "
                "WHERE policy = ? AND issuer_key_id = ? AND serial = ? AND ca_policy = ?",
                (ca.policy, ca.key_id, hex_serial, ca.policy),
            ).fetchone()
            if runtime is not None and float(runtime[0]) > now:
                return _Status(ocsp.OCSPCertStatus.GOOD, valid_until=float(runtime[0]))
            kinds = sorted(CERTIFICATE_KINDS)
            rows = raw_execute(
                conn,
                "SELECT name, public FROM secrets WHERE policy = ? AND kind IN (?, ?)",
                (ca.policy, *kinds),
            ).fetchall()
        for name, public in rows:
            if name == ca.name or f'"{hex_serial}"' not in public:
                continue  # the CA's own certificate (not one it issued), or another serial
            until = _stored_match(public, hex_serial, ca.key_id)
            if until is not None and until > now:
                return _Status(ocsp.OCSPCertStatus.GOOD, valid_until=until)
        return _Status(ocsp.OCSPCertStatus.UNKNOWN)

    # -- signing --------------------------------------------------------------------------------

    def _sign(self, ca: _Ca, query: _Query, status: _Status, now: float) -> bytes:
        """A successful BasicOCSPResponse (RFC 6960 §4.2.1) about ``query`` signed by ``ca``."""
        signing_key = self._signing_key(ca)
        this_update = _utc(now)
        revocation_time = revocation_reason = None
        if status.status == ocsp.OCSPCertStatus.REVOKED:
            assert status.revoked_at is not None and status.reason is not None
            revocation_time = _utc(status.revoked_at)
            if status.reason != UNSPECIFIED:  # as on the CRL (RFC 5280 §5.3.1)
                revocation_reason = REASONS[status.reason]
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            query.name_hash, query.key_hash, query.serial, query.algorithm, status.status,
            this_update, _utc(ca.crl.next_update), revocation_time, revocation_reason,
        )  # fmt: skip
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate)  # §4.2.2.3 byKey
        if query.nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)  # RFC 8954
        algorithm = (
            None
            if isinstance(signing_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
            else hashes.SHA256()
        )
        return builder.sign(signing_key, algorithm).public_bytes(serialization.Encoding.DER)

    def _signing_key(self, ca: _Ca) -> Any:
        """The CA's private key, loaded once per CA version (its sealed value unsealed as for a
        CRL; never logged)."""
        key = (ca.policy, ca.name, ca.version)
        found = self._keys.get(key)
        if found is None:
            with self.cas.db.read() as conn:
                row = self.cas._latest_secret(conn, ca.policy, ca.name)
            if row is None or int(row.version) != ca.version:
                raise RuntimeError("the CA changed while answering; the next request sees it")
            value = self.cas._unseal(row)
            found = serialization.load_der_private_key(value.data, None)
            self._keys.put(key, found)
        return found


def _stored_match(public: str, hex_serial: str, key_id: str) -> float | None:
    """The notAfter of the certificate in a secret row's public metadata when its serial is
    ``hex_serial`` and its authorityKeyIdentifier ``key_id``; ``None`` otherwise."""
    try:
        info = json.loads(public)
        serial = info.get("serial")
        if not isinstance(serial, str) or int(serial, 16) != int(hex_serial, 16):
            return None
        cert = x509.load_pem_x509_certificate(info["certificate"].encode())
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (KeyError, TypeError, ValueError, AttributeError, x509.ExtensionNotFound):
        return None
    if aki is None or aki.hex() != key_id or cert.serial_number != int(hex_serial, 16):
        return None
    return cert.not_valid_after_utc.timestamp()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)  # GeneralizedTime: whole seconds


def _max_age(until: float, now: float) -> int:
    return max(0, min(MAX_AGE, int(until - now)))
