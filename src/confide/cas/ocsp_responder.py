"""The OCSP responder of the CAs the CAS generated and declared ``ocsp`` (docs/cas.md "OCSP";
RFC 6960).

One responder per CAS (:meth:`OcspResponder.of`), shared by the TLS API and the public HTTP
listener (:func:`confide.cas.public_http.ocsp_response` is the HTTP side, RFC 6960 Appendix A).
Each CA is reached at its own opaque URL, ``/v1/ocsp/<id>``, ``<id>`` the CA's CRL id
(:func:`confide.cas.secrets.crl_distribution_id`); the CA must be generated and its policy's
current version must declare it ``ocsp`` (:meth:`confide.cas.core.Cas._published_ca`).

A request (DER, at most :data:`MAX_REQUEST` bytes, read by :mod:`confide.cas.ocsp_der`) is
answered:

1. ``malformedRequest`` (RFC 6960 §2.3, unsigned) when it is not one OCSPRequest as that strict
   reader reads it (trailing bytes included): no Request or more than :data:`MAX_ENTRIES`, a
   serial that is not a positive integer (RFC 5280 §4.1.2.2), a critical extension other than
   the nonce and the preferred signature algorithms (§4.4: unrecognised critical extensions are
   not ignored), a duplicate extension, a nonce of 0 or more than 128 octets (RFC 9654 §2.1,
   which obsoletes RFC 8954 and its bound of 32: MUST reject with malformedRequest), and the
   DER rules listed there;
2. ``unauthorized`` (§2.3, unsigned: "the server is not capable of responding authoritatively",
   cf. RFC 5019 §2.2.3) when the URL's id names no CA declared ``ocsp``, or when no CertID's
   issuerNameHash and issuerKeyHash (§4.1.1) are those of that CA (a hash algorithm the
   responder does not compute matches none);
3. ``tryLater`` (§2.3, unsigned) when the answer needs a new signature and the client (an IPv4
   address, an IPv6 /64) is over :data:`SIGNATURE_RATE`, or no usable responder certificate
   could be issued (a refused row is replaced first, at most once per CA per
   :data:`REPLACE_INTERVAL`: :meth:`OcspResponder._replace`), or, with ``signer: ca``, the
   CA's sealed key and certificate do not match its row; or the CA row's public part shows
   another key than the one the signer was authenticated with (``ocsp-ca-refused``); or the
   CRL row's DER is not signed by the CA's key, or is older than one verified before
   (``ocsp-crl-refused``, :meth:`OcspResponder._crl`);
4. otherwise ``successful``: a BasicOCSPResponse (§4.2.1) signed by the CA's delegated responder
   (§4.2.2.2, :mod:`confide.cas.ocsp_delegate`), whose certificate it carries, or, for a CA
   declared ``ocsp: {signer: ca}``, by the CA's own key (§4.2.2.2, "the CA who issued the
   certificate in question"; no certificate); responderID byKey (§4.2.2.3) the signing key's;
   signed with the first of the request's preferred signature algorithms the
   signing key can produce (§4.4.7), else SHA-256 (or EdDSA); one SingleResponse per CertID,
   in order, echoing it as sent, with the certStatus (§4.2.1, §2.2):

   - ``revoked``, with revocationTime and revocationReason (omitted for ``unspecified``, as on
     the CRL, RFC 5280 §5.3.1), when it is on the CA's current CRL (its signature checked), or
     recorded as revoked under the CA's key (``revoked_certificates``: superseded, removed,
     owner-revoked, runtime certificates: the records the CRL is made of,
     :mod:`confide.cas.crl`);
   - ``good`` when the CAS holds a certificate with that serial and the CA's key identifier as
     authorityKeyIdentifier **whose signature verifies under the CA's key** (a stored version
     of a secret of the CA's policy, a responder certificate, or a recorded runtime
     certificate's DER: none of them authenticated otherwise; :meth:`OcspResponder._genuine`)
     and it is not past its notAfter (read from that certificate);
   - ``unknown`` for everything else (a serial the CAS never issued under that key, or issued
     under it as an import by another policy, or past its notAfter and not revoked; a CertID
     of another issuer, §2.2).

   thisUpdate is the CAS clock when signed (whole seconds); nextUpdate is the nextUpdate of the
   CA's current CRL (RFC 5280 §5.1.2.5) or the signing certificate's notAfter, whichever
   comes first, so a response is never valid longer than the CRL that says the same or the
   certificate that signed it; a CRL past half its validity is re-issued first, as on the CRL
   routes, and a responder certificate past half its validity renewed first. A nonce in the
   request (RFC 9654, 1 to 128 octets) is echoed in responseExtensions as sent.

**Cache.** A response without a nonce is kept (:class:`~confide.lru.Lru`, at most
:data:`CACHE_SIZE` entries) keyed by the CA, its version and the checked CRL's number, the signer (a policy
update may change only that), the CertIDs and the preferred algorithms: the
revoked set, the CA's key and its version change only with a new CRL (same transaction,
:func:`confide.cas.crl.issue_crls`), so a cached ``good`` is never served after a revocation. It
is served until its nextUpdate (a new responder version does not drop it: the one that signed
it is valid until then), a ``good`` one at most until the certificate's notAfter, one with an
``unknown`` entry :data:`UNKNOWN_TTL` seconds. A flood of one request costs one signature; a
flood of distinct ones (other serials, nonces) is bounded per client by :data:`SIGNATURE_RATE`.
The responder's value is unsealed as for a release (``Cas._unseal``, with its cache); its key
is never logged or put in an error.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from confide.cas.core import SecretRow
from confide.cas.crl import REASONS, UNSPECIFIED, CrlRow, crl_due, current_crl
from confide.cas.db import raw_execute
from confide.cas.ocsp_delegate import (
    RESPONDER_KIND,
    due_reason,
    latest_responder,
    replace_responder,
    responder_name,
    responder_state,
)
from confide.cas.ocsp_der import (
    MAX_ENTRIES,
    MAX_NONCE,
    MIN_NONCE,
    CertIdEntry,
    ParsedRequest,
    SingleAnswer,
    basic_response,
    choose_algorithm,
    parse_ocsp_request,
)
from confide.cas.renewal import renew_due
from confide.cas.revocation_auth import RevocationsAltered, verified_rows
from confide.cas.secrets import CERTIFICATE_KINDS, crl_distribution_id
from confide.errors import ConfideError, ParseError
from confide.httpserve.ratelimit import Rate, RateLimiter, client_key
from confide.lru import Lru
from confide.policy.secret import OcspSigner

if TYPE_CHECKING:
    from confide.cas.core import Cas

__all__ = [
    "CACHE_SIZE",
    "GENUINE_CACHE_SIZE",
    "MAX_AGE",
    "MAX_ENTRIES",
    "MAX_NONCE",
    "MAX_REQUEST",
    "MIN_NONCE",
    "REPLACE_INTERVAL",
    "SIGNATURE_RATE",
    "UNKNOWN_TTL",
    "OcspAnswer",
    "OcspResponder",
    "unsuccessful",
]

log = logging.getLogger("confide.cas")

MAX_REQUEST = 4096
"""Bytes of a DER OCSPRequest: one CertID and a nonce take about 120; a signed request with its
signer's certificate a few hundred more (RFC 6960 §4.1.2)."""
CACHE_SIZE = 4096
GENUINE_CACHE_SIZE = 4096
"""Stored certificates whose signature was checked for ``good`` (:meth:`OcspResponder._genuine`)."""
MAX_AGE = 300
"""Seconds an HTTP cache may keep a response without a nonce (never past nextUpdate), as for the
public CRLs: a revocation reaches HTTP caches within 5 minutes."""
UNKNOWN_TTL = 60.0
SIGNATURE_RATE = Rate(20.0, 40.0)
"""New signatures per second per client (and burst): cached responses are not counted."""
REPLACE_INTERVAL = 600.0
"""Seconds (CAS clock) before this CAS replaces a CA's refused responder row again
(:meth:`OcspResponder._replace`): rows edited again and again, or a CA row whose public part
makes every new responder fail the checks, cost one key, one certificate and one ledger entry
per CA every 10 minutes, not one per request; ``tryLater`` in between."""

_CA_ID_LEN = 32
_SERIAL_OCTETS = 20  # RFC 5280 §4.1.2.2: a serial of more than 20 octets is no CAS certificate's
_STATUS_NAMES = {
    ocsp.OCSPCertStatus.GOOD: "good",
    ocsp.OCSPCertStatus.REVOKED: "revoked",
    ocsp.OCSPCertStatus.UNKNOWN: "unknown",
}
_REASON_CODES = {  # RFC 5280 §5.3.1 CRLReason
    x509.ReasonFlags.unspecified: 0, x509.ReasonFlags.key_compromise: 1, x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3, x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5, x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8, x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}  # fmt: skip


_REASON_NAMES = {flag: name for name, flag in REASONS.items()}


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


class _Ca(NamedTuple):
    """A CA declared ``ocsp``, as of its policy's current version and CRL."""

    policy: str
    name: str
    version: int
    key_id: str  # hex, the CA's subjectKeyIdentifier (the authorityKeyIdentifier of what it signs)
    certificate: x509.Certificate
    spki: bytes  # the certificate's SubjectPublicKeyInfo, DER
    crl: CrlRow
    signer: OcspSigner  # who signs its responses, as its policy's current version says


class _Signer(NamedTuple):
    """A key that signs a CA's responses, checked (:meth:`OcspResponder._signer`,
    :meth:`OcspResponder._ca_signer`)."""

    key: Any
    certificates: tuple[bytes, ...]  # DER, included in every response (RFC 6960 §4.2.1 certs)
    key_hash: bytes  # responderID byKey (§4.2.2.3): SHA-1 of the subjectPublicKey value
    not_after: float  # its sealed certificate's
    # The CA key as authenticated when the signer was checked (the CA's sealed certificate, or
    # the key that verifiably signed the responder's sealed certificate): SubjectPublicKeyInfo
    # DER and its key identifier (RFC 5280 §4.2.1.2 method 1, as the CAS generates them, hex).
    ca_spki: bytes
    ca_key_id: str


class _Crl(NamedTuple):
    """A CA's current CRL, its signature checked (:meth:`OcspResponder._crl`)."""

    number: int  # cRLNumber (RFC 5280 §5.2.3)
    next_update: float  # §5.1.2.5
    entries: dict[int, tuple[float, str]]  # serial: revocationDate, reason (a REASONS name)


class _Status(NamedTuple):
    status: ocsp.OCSPCertStatus
    revoked_at: float | None = None
    reason: str | None = None
    valid_until: float | None = None  # a good certificate's notAfter


def parse_request(der: bytes) -> ParsedRequest | None:
    """The CertIDs, nonce and signature preferences of ``der``; ``None`` when it is to be
    answered ``malformedRequest`` (module docstring, step 1; :mod:`confide.cas.ocsp_der`). A
    CertID hash algorithm the responder does not compute is not malformed: that entry names no
    issuer it serves (step 2)."""
    if not der or len(der) > MAX_REQUEST:
        return None
    try:
        return parse_ocsp_request(der)
    except ParseError:
        return None


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
        self._hashes: Lru[tuple[bytes, bytes, str], tuple[bytes, bytes]] = Lru(256)
        # Keyed by the row's public part too: a row deleted and issued again has the same
        # version and another certificate (and key).
        self._keys: Lru[tuple[str, str, int, str, str], _Signer] = Lru(64)
        self._ca_keys: Lru[tuple[str, str, int, bytes], _Signer] = Lru(64)
        self._replaced: dict[tuple[str, str], float] = {}  # (policy, CA): last replacement try
        self._replace_lock = threading.Lock()
        self._responders: Lru[tuple[str, str, int, str], tuple[str, float]] = Lru(256)
        self._ca_certs: Lru[tuple[str, str, int, str], tuple[x509.Certificate, bytes, bytes]] = Lru(256)
        # Certificates checked for ``good`` (:meth:`_genuine`), by the CA key and the stored bytes
        # (a row's public part, a runtime certificate's DER): the notAfter, or -inf when refused.
        self._genuine_certs: Lru[tuple[bytes, str | bytes], float] = Lru(GENUINE_CACHE_SIZE)
        self._crls: Lru[tuple[bytes, int, float, str, int], _Crl] = Lru(64)
        self._newest_crl: dict[tuple[str, str], int] = {}  # (policy, CA): newest cRLNumber verified
        self._limiter = RateLimiter(signature_rate) if signature_rate is not None else None
        self._limiter_lock = threading.Lock()
        self.signed = 0  # responses signed (cache misses)
        self.cached = 0  # responses served from the cache
        self.limited = 0  # tryLater for a client over its signature rate
        self.malformed = 0  # malformedRequest
        self.unauthorized = 0  # unauthorized
        self.replaced = 0  # refused responder rows replaced (:meth:`_replace`)
        self.refused_certificates = 0  # stored certificates of a requested serial that did not verify

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
        query = parse_request(der)
        if query is None:
            self.malformed += 1
            return _MALFORMED
        ca = self._ca(ca_id)
        ours = [] if ca is None else [self._issued_by(ca, entry) for entry in query.entries]
        if ca is None or not any(ours):
            self.unauthorized += 1
            return _UNAUTHORIZED
        crl = self._crl(ca)
        if crl is None:
            self.limited += 1
            return _TRY_LATER  # the CRL row is not one the CA's key signed, or an older one
        # The signer is in the key: after a policy update changes it, nothing the other signed
        # is served (the CRL number need not change with it).
        key = (ca.policy, ca.name, ca.version, crl.number, ca.signer, query.preferred,
               tuple(entry.der for entry in query.entries))  # fmt: skip
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
        signer = self._ca_signer(ca) if ca.signer is OcspSigner.CA else self._responder(ca)
        if signer is None:
            self.limited += 1
            return _TRY_LATER  # no usable responder certificate could be issued now, or CA key
        if not (hmac.compare_digest(signer.ca_spki, ca.spki) and signer.ca_key_id == ca.key_id):
            # The CA row's public part (whose key and subject the CertIDs were matched against)
            # no longer shows the key the signer was authenticated with: edited since.
            log.warning(json.dumps({"event": "ocsp-ca-refused", "policy": ca.policy, "name": ca.name,
                                    "version": ca.version, "check": "key"}))  # fmt: skip
            self.limited += 1
            return _TRY_LATER
        self._noted(ca, crl)
        checked = [
            self._status(ca, crl, entry.serial, now) if mine else _Status(ocsp.OCSPCertStatus.UNKNOWN)
            for entry, mine in zip(query.entries, ours, strict=True)
        ]
        statuses = [status for status in checked if status is not None]
        if len(statuses) != len(checked):
            self.limited += 1
            return _TRY_LATER  # the CA's revocation records do not authenticate: no answer from them
        der_out = self._sign(crl, signer, query, statuses, now)
        self.signed += 1
        if query.nonce is not None:
            return OcspAnswer(der_out, 0)  # bound to one request: neither kept nor cached by HTTP
        # A cached answer stays good after the responder is renewed: it was signed by a
        # certificate valid until at least its nextUpdate.
        until = min(crl.next_update, signer.not_after)
        for status in statuses:
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
                declared = self.cas._published_ca_declaration(conn, ca_id, "ocsp")
                if declared is None:
                    return None
                served = (declared[0], declared[1])
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
        parsed = self._parsed_ca(served[0], served[1], int(row.version), row.public)
        if parsed is None:
            return None
        cert, ski, spki = parsed
        if crl_distribution_id(cert.subject, ski) != ca_id:
            return None  # the CRL row was found by the id of the CA's current key: checked again
        signer = declared[2].ocsp_signer
        assert signer is not None  # declared ocsp
        return _Ca(served[0], served[1], int(row.version), ski.hex(), cert, spki, crl, signer)

    def _responder(self, ca: _Ca) -> _Signer | None:
        """The CA's current delegated responder version, issued or renewed first when due (a new
        one, or under a new CA key, or past half its validity;
        :func:`confide.cas.ocsp_delegate.due_reason`), or replaced first when refused
        (:meth:`_signer`, :meth:`_replace`); ``None`` (tryLater) when it is still due or refused
        after that: the responder never signs with a row that failed the checks."""
        name = responder_name(ca.name)
        renewed = replaced = False
        while True:  # at most one renewal and one replacement
            with self.cas.db.read() as conn:  # its authenticated current version (confide.cas.secret_heads)
                latest, _ = latest_responder(self.cas, conn, ca.policy, name)
            row = None if latest is None else (latest.version, latest.public)
            state = None if row is None else self._responder_state(ca.policy, name, int(row[0]), row[1])
            if row is not None and due_reason(bytes.fromhex(ca.key_id), state, self.cas.clock()) is None:
                assert state is not None  # due_reason says "new" for none
                signer, problem = self._signer(ca, int(row[0]), row[1], state)
                if signer is not None:
                    return signer
                if replaced or problem is None:
                    return None
                # "gone": the row changed between two reads (renewed or replaced meanwhile): read
                # it again, once. Any other check: replace it, then read it again, once.
                if problem != "gone" and not self._replace(ca, (int(row[0]), row[1]), problem):
                    return None
                replaced = True
            elif renewed:
                return None
            else:
                renew_due(self.cas, [ca.policy])
                renewed = True

    def _replace(self, ca: _Ca, refused: tuple[int, str], check: str) -> bool:
        """Replace ``ca``'s refused responder row ``refused`` (version, public part) that failed
        ``check`` (:func:`confide.cas.ocsp_delegate.replace_responder`: a new key and
        certificate by the CA's current sealed key, the row rewritten in one write transaction,
        a ledger event), unless this CAS tried for this CA less than :data:`REPLACE_INTERVAL`
        ago. True: read the row again (replaced, here or meanwhile by another CAS); False:
        answer tryLater. A warning names what was replaced (names, versions, the check, the
        new serial and certificate SHA-256; never a value)."""
        now = self.cas.clock()
        with self._replace_lock:
            last = self._replaced.get((ca.policy, ca.name))
            if last is not None and now - last < REPLACE_INTERVAL:
                return False
            self._replaced[(ca.policy, ca.name)] = now  # counted whether or not it succeeds
        name = responder_name(ca.name)
        try:
            with self.cas.db.write() as conn:
                record = replace_responder(self.cas, conn, ca.policy, ca.name, refused, check, now)
        except (ConfideError, KeyError, ValueError, TypeError) as exc:
            failed = {"event": "ocsp-responder-replace-failed", "policy": ca.policy, "name": name,
                      "version": refused[0], "error": type(exc).__name__}  # fmt: skip
            log.warning(json.dumps(failed))
            return False
        if record is not None:
            self.replaced += 1
            done = {"event": "ocsp-responder-replaced", "policy": ca.policy, "name": name,
                    "refused_version": refused[0], "check": check, "version": record["version"],
                    "serial": record["serial"],
                    "certificate_sha256": record["certificate_sha256"]}  # fmt: skip
            log.warning(json.dumps(done))
        return True

    def _responder_state(self, policy: str, name: str, version: int, public: str) -> tuple[str, float] | None:
        """:func:`responder_state` of a responder version (its public part never changes:
        parsed once)."""
        state = self._responders.get((policy, name, version, public))
        if state is None:
            state = responder_state(public)
            if state is not None:
                self._responders.put((policy, name, version, public), state)
        return state

    def _parsed_ca(
        self, policy: str, name: str, version: int, public: str
    ) -> tuple[x509.Certificate, bytes, bytes] | None:
        """A CA version's certificate, subjectKeyIdentifier and SubjectPublicKeyInfo DER, parsed
        once per public part (not authenticated: the signer checks bind it to the sealed key,
        :meth:`respond`)."""
        parsed = self._ca_certs.get((policy, name, version, public))
        if parsed is None:
            try:
                cert = x509.load_pem_x509_certificate(json.loads(public)["certificate"].encode())
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
                spki = cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            except (KeyError, TypeError, ValueError, AttributeError, x509.ExtensionNotFound):
                return None
            parsed = (cert, ski, spki)
            self._ca_certs.put((policy, name, version, public), parsed)
        return parsed

    def _issued_by(self, ca: _Ca, entry: CertIdEntry) -> bool:
        """Whether the CertID names ``ca`` as issuer (RFC 6960 §4.1.1: the hashes of its subject
        DER and of the value of its subjectPublicKey BIT STRING, with the request's algorithm)."""
        if entry.algorithm is None:
            return False  # a hash the responder does not compute: no issuer it can recognise
        key = (ca.spki, ca.certificate.subject.public_bytes(), entry.algorithm.name)
        hashed = self._hashes.get(key)
        if hashed is None:
            probe = ocsp.OCSPRequestBuilder().add_certificate(ca.certificate, ca.certificate, entry.algorithm)
            built = probe.build()
            hashed = (built.issuer_name_hash, built.issuer_key_hash)
            self._hashes.put(key, hashed)
        return hmac.compare_digest(hashed[0], entry.name_hash) and hmac.compare_digest(
            hashed[1], entry.key_hash
        )

    def _crl(self, ca: _Ca) -> _Crl | None:
        """``ca``'s current CRL as its row's DER says, checked: issued by the CA's subject and
        signed by the key of ``ca.certificate`` (RFC 5280 §6.3.3 (f), (g); that key is then
        checked to be the signer's, :meth:`respond`), parsed once per CRL; and not older than
        the newest this process verified for the CA with an authenticated key (a CRL row written
        back; :meth:`_noted`). Else ``None`` (``tryLater``) and the warning ``ocsp-crl-refused``
        (policy, CA, the check: ``signature``, ``rollback``). The answer uses nothing else of the
        ``crls`` row. The parsed CRL is kept by the row's number, thisUpdate, entries digest and
        CA version (not by the DER, whose hash would cost a pass over the whole CRL per
        request): whatever the row's DER, a hit is a CRL the CA's key signed with that
        cRLNumber, which the CA signs once, so the rollback check sees its real number."""
        row = ca.crl
        cache_key = (ca.spki, row.number, row.this_update, row.entries_sha256, row.ca_version)
        found = self._crls.get(cache_key)
        problem = None
        if found is None:
            found = _verified_crl(ca)
            if found is None:
                problem = "signature"
            else:
                self._crls.put(cache_key, found)
        if found is not None and found.number < self._newest_crl.get((ca.policy, ca.name), 0):
            problem = "rollback"
        if problem is not None:
            log.warning(json.dumps({"event": "ocsp-crl-refused", "policy": ca.policy, "name": ca.name,
                                    "check": problem}))  # fmt: skip
            return None
        return found

    def _noted(self, ca: _Ca, crl: _Crl) -> None:
        """Remember ``crl``'s number as the newest of ``ca`` (:meth:`_crl`'s rollback check),
        once the key it was verified with is known to be the CA's (after the signer check: a CA
        row showing another key, with a CRL of that key, must not raise the bar for the real
        CRLs)."""
        with self._replace_lock:
            if crl.number > self._newest_crl.get((ca.policy, ca.name), 0):
                self._newest_crl[(ca.policy, ca.name)] = crl.number

    def _status(self, ca: _Ca, crl: _Crl, serial: int, now: float) -> _Status | None:
        """The certStatus of ``serial`` under ``ca`` (module docstring, step 4), ``crl`` its
        checked current CRL. Past the CRL, the CA's revocation records are read authenticated
        (:func:`confide.cas.revocation_auth.verified_rows`: every row's MAC, their count and
        sum): when they do not authenticate (a row edited, deleted or forged), ``None``
        (``tryLater``: neither ``good`` nor a ``revoked`` the CRL does not say) and the warning
        ``ocsp-revocations-refused`` (policy, CA, the check)."""
        if serial.bit_length() > 8 * _SERIAL_OCTETS:
            return _Status(ocsp.OCSPCertStatus.UNKNOWN)
        listed = crl.entries.get(serial)
        if listed is not None:  # on the CA's signed CRL: revoked, whatever the rows say now
            return _Status(ocsp.OCSPCertStatus.REVOKED, listed[0], listed[1])
        hex_serial = format(serial, "x")
        with self.cas.db.read() as conn:
            try:
                records = verified_rows(conn, self.cas.sealer, ca.policy, ca.key_id, now)
            except RevocationsAltered as exc:
                log.warning(
                    json.dumps({"event": "ocsp-revocations-refused", "name": ca.name, **exc.summary()})
                )
                return None
            revoked = next((r for r in records if r.serial == hex_serial), None)
            if revoked is not None:
                return _Status(ocsp.OCSPCertStatus.REVOKED, revoked.revoked_at, revoked.reason)
            runtime = raw_execute(
                conn,
                "SELECT name, der FROM runtime_certificates "
                "WHERE policy = ? AND issuer_key_id = ? AND serial = ? AND ca_policy = ?",
                (ca.policy, ca.key_id, hex_serial, ca.policy),
            ).fetchone()
            kinds = sorted({*CERTIFICATE_KINDS, RESPONDER_KIND})  # the responder's own: good too
            rows = raw_execute(
                conn,
                "SELECT name, version, public FROM secrets WHERE policy = ? AND kind IN (?, ?, ?)",
                (ca.policy, *kinds),
            ).fetchall()
        found: list[tuple[str, int, str | bytes]] = []
        if runtime is not None and runtime[1] is not None:  # none recorded before schema 12
            found.append((str(runtime[0]), 0, bytes(runtime[1])))
        found += [(name, int(version), public) for name, version, public in rows
                  if name != ca.name and f'"{hex_serial}"' in public]  # fmt: skip
        for name, version, stored in found:  # the CA's own certificate is not one it issued
            until = self._genuine(ca, name, version, stored, serial)
            if until > now:
                return _Status(ocsp.OCSPCertStatus.GOOD, valid_until=until)
        return _Status(ocsp.OCSPCertStatus.UNKNOWN)

    def _genuine(self, ca: _Ca, name: str, version: int, stored: str | bytes, serial: int) -> float:
        """The notAfter of the certificate ``stored`` (a secret row's public part, or a runtime
        certificate's DER: neither authenticated) when it has ``serial``, the CA's key identifier
        as authorityKeyIdentifier (RFC 5280 §4.2.1.1) and a signature that verifies under the CA's
        authenticated key (RFC 5280 §4.1.1.3; ``ca.certificate``'s key is the signer's, checked in
        :meth:`respond`), all read from the verified certificate; else ``-inf``. A certificate of
        that serial and key identifier whose signature does not verify was not issued by the CA:
        the warning ``ocsp-certificate-refused`` (policy, row, version, serial; 0: a runtime
        certificate), once per stored value, and ``unknown``."""
        key = (ca.spki, stored)
        until = self._genuine_certs.get(key)
        if until is not None:
            return until
        until, refused = _verified_until(ca, stored, serial)
        if refused:
            self.refused_certificates += 1
            log.warning(json.dumps({"event": "ocsp-certificate-refused", "policy": ca.policy, "name": name,
                                    "version": version, "serial": format(serial, "x")}))  # fmt: skip
        if refused or until != -math.inf:  # a row that merely mentions the serial is not kept
            self._genuine_certs.put(key, until)
        return until

    # -- signing --------------------------------------------------------------------------------

    def _sign(
        self, crl: _Crl, signer: _Signer, query: ParsedRequest, statuses: list[_Status], now: float
    ) -> bytes:
        """A successful BasicOCSPResponse (RFC 6960 §4.2.1), one SingleResponse per CertID in
        the request's order, signed by ``signer`` (``ca``'s responder key, its certificate
        included; or the CA's own key, no certificate)."""
        next_update = min(crl.next_update, signer.not_after)  # never past what signs it
        answers = []
        for entry, status in zip(query.entries, statuses, strict=True):
            revoked_at = reason_code = None
            if status.status == ocsp.OCSPCertStatus.REVOKED:
                assert status.revoked_at is not None and status.reason is not None
                revoked_at = status.revoked_at
                if status.reason != UNSPECIFIED:  # as on the CRL (RFC 5280 §5.3.1)
                    reason_code = _REASON_CODES[REASONS[status.reason]]
            answers.append(
                SingleAnswer(
                    entry.der, _STATUS_NAMES[status.status], now, next_update, revoked_at, reason_code
                )
            )
        return basic_response(
            answers, produced_at=now, responder_key_hash=signer.key_hash, key=signer.key,
            algorithm=choose_algorithm(signer.key, query.preferred), certificates=signer.certificates,
            nonce_value=query.nonce_value,
        )  # fmt: skip

    def _signer(
        self, ca: _Ca, version: int, public: str, state: tuple[str, float]
    ) -> tuple[_Signer | None, str | None]:
        """The CA's responder key and certificate of ``version`` (whose row's public part is
        ``public``, recording ``state``), unsealed as for a release, loaded once per row. The
        public part is not authenticated, the sealed value is (associated data: policy, name,
        version): the sealed certificate must be the one the row shows, record the same CA key
        and notAfter, be issued directly by the CA's current key with id-kp-OCSPSigning
        (RFC 6960 §4.2.2.2) and certify the sealed key. Else ``None`` and a warning naming the
        row and the check (never a value), returned with it: the responder fails closed rather
        than sign with a key the current CA did not certify or past its certificate."""
        key = (ca.policy, ca.name, version, public, ca.key_id)
        found = self._keys.get(key)
        if found is not None:
            return found, None
        name = responder_name(ca.name)
        with self.cas.db.read() as conn:  # that version, even if a newer one came since
            found_row = raw_execute(
                conn,
                "SELECT policy, name, version, kind, sealed, public FROM secrets "
                "WHERE policy = ? AND name = ? AND version = ?",
                (ca.policy, name, version),
            ).fetchone()
        problem = "gone" if found_row is None or found_row[5] != public else None
        signer = None
        if problem is None:
            p, n, v, k, sealed, _ = found_row
            try:
                value = self.cas._unseal(SecretRow(p, n, v, k, bytes(sealed), public))
                signer, problem = _checked_signer(ca, value.data, value.certificate, public, state)
            except (ConfideError, KeyError, ValueError, TypeError):
                problem = "unreadable"
        if signer is None:
            log.warning(json.dumps({"event": "ocsp-responder-refused", "policy": ca.policy, "name": name,
                                    "version": version, "check": problem}))  # fmt: skip
            return None, problem or "unreadable"
        self._keys.put(key, signer)
        return signer, None

    def _ca_signer(self, ca: _Ca) -> _Signer | None:
        """The CA's own key, for a CA declared ``ocsp: {signer: ca}`` (RFC 6960 §4.2.2.2: "the
        CA who issued the certificate in question"): its version ``ca.version`` unsealed as for a
        release, loaded once per version. The sealed certificate must be the one the row's
        public part shows (whose subject and key the CertIDs were matched against), certify the
        sealed key and be valid now. Else ``None`` (tryLater) and the warning
        ``ocsp-ca-signer-refused`` naming the CA and the check, never a value: a CA row cannot be
        replaced as a responder row can (its key is the CA)."""
        cert_der = ca.certificate.public_bytes(serialization.Encoding.DER)
        key = (ca.policy, ca.name, ca.version, cert_der)
        found = self._ca_keys.get(key)
        if found is None:
            with self.cas.db.read() as conn:
                row = raw_execute(
                    conn,
                    "SELECT policy, name, version, kind, sealed, public FROM secrets "
                    "WHERE policy = ? AND name = ? AND version = ?",
                    (ca.policy, ca.name, ca.version),
                ).fetchone()
            problem: str | None = "gone" if row is None else None
            if row is not None:
                p, n, v, k, sealed, public = row
                try:
                    value = self.cas._unseal(SecretRow(p, n, v, k, bytes(sealed), public))
                    found, problem = _checked_ca_signer(cert_der, value.data, value.certificate)
                except (ConfideError, KeyError, ValueError, TypeError):
                    problem = "unreadable"
            if found is None:
                refused = {"event": "ocsp-ca-signer-refused", "policy": ca.policy, "name": ca.name,
                           "version": ca.version, "check": problem}  # fmt: skip
                log.warning(json.dumps(refused))
                return None
            self._ca_keys.put(key, found)
        if found.not_after <= self.cas.clock():
            return None  # expired: the renewal sweep renews the CA before (``renew_before``)
        return found


def _checked_signer(
    ca: _Ca, private: bytes, certificate: bytes | None, public: str, state: tuple[str, float]
) -> tuple[_Signer | None, str | None]:
    """The signer of a responder's sealed ``private`` key and ``certificate`` when they pass
    :meth:`OcspResponder._signer`'s checks; else ``None`` and the check that failed."""
    if certificate is None:
        return None, "certificate"
    cert = x509.load_der_x509_certificate(certificate)
    shown = x509.load_pem_x509_certificate(json.loads(public)["certificate"].encode())
    if shown.public_bytes(serialization.Encoding.DER) != certificate:
        return None, "certificate"
    try:
        cert.verify_directly_issued_by(ca.certificate)  # the current CA key signed it
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
        return None, "issuer"
    not_after = cert.not_valid_after_utc.timestamp()
    if aki is None or aki.hex() != ca.key_id or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        return None, "issuer"
    if state != (ca.key_id, not_after):
        return None, "state"
    key: Any = serialization.load_der_private_key(private, None)
    if key.public_key() != cert.public_key():
        return None, "key"
    digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # SHA-1, §4.2.2.3
    ca_spki = ca.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # verifiably signed the sealed (authenticated) responder certificate: the CA's key
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca.certificate.public_key()).digest.hex()
    return _Signer(key, (certificate,), digest, not_after, ca_spki, ca_key_id), None


def _checked_ca_signer(
    shown: bytes, private: bytes, certificate: bytes | None
) -> tuple[_Signer | None, str | None]:
    """The CA's signer from its sealed ``private`` key and ``certificate`` when that certificate
    is ``shown`` (the row's public part, DER) and certifies the key; else ``None`` and the check
    that failed. No certificate goes into the responses: the relying party has the CA's."""
    if certificate is None or certificate != shown:
        return None, "certificate"
    cert = x509.load_der_x509_certificate(certificate)
    key: Any = serialization.load_der_private_key(private, None)
    if key.public_key() != cert.public_key():
        return None, "key"
    # responderID byKey (§4.2.2.3), as for the delegated responder: the SHA-1 of the CA's
    # subjectPublicKey value (what RFC 5280 §4.2.1.2 method 1 puts in the CA's own SKI).
    digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _Signer(key, (), digest, cert.not_valid_after_utc.timestamp(), spki, digest.hex()), None


def _verified_crl(ca: _Ca) -> _Crl | None:
    """:meth:`OcspResponder._crl` without the caches: ``None`` when the row's DER is not a CRL
    of ``ca.certificate``'s subject signed by its key, with a cRLNumber and a nextUpdate."""
    try:
        crl = x509.load_der_x509_crl(ca.crl.der)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        next_update = crl.next_update_utc
        if crl.issuer != ca.certificate.subject or next_update is None:
            return None
        if not crl.is_signature_valid(ca.certificate.public_key()):  # type: ignore[arg-type]
            return None
        entries: dict[int, tuple[float, str]] = {}
        for revoked in crl:
            try:
                flag = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                flag = x509.ReasonFlags.unspecified  # §5.3.1: listed without a reasonCode
            entries[revoked.serial_number] = (revoked.revocation_date_utc.timestamp(), _REASON_NAMES[flag])
    except (ValueError, TypeError, KeyError, x509.ExtensionNotFound):
        return None
    return _Crl(number, next_update.timestamp(), entries)


def _verified_until(ca: _Ca, stored: str | bytes, serial: int) -> tuple[float, bool]:
    """:meth:`OcspResponder._genuine` without the cache: (notAfter or ``-inf``, whether a
    certificate claiming ``serial`` under the CA's key identifier failed the signature)."""
    try:
        if isinstance(stored, bytes):
            cert = x509.load_der_x509_certificate(stored)
        else:
            cert = x509.load_pem_x509_certificate(json.loads(stored)["certificate"].encode())
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (KeyError, TypeError, ValueError, AttributeError, x509.ExtensionNotFound):
        return -math.inf, False
    if cert.serial_number != serial or aki is None or aki.hex() != ca.key_id:
        return -math.inf, False  # another certificate (the row only mentions the serial)
    try:
        # The issuer's name and the signature (RFC 5280 §6.1.3 (a)(1), (a)(4)) under the CA's
        # key, which the signer checks authenticated (the public part alone is not).
        cert.verify_directly_issued_by(ca.certificate)
    except (InvalidSignature, ValueError, TypeError):
        return -math.inf, True
    return cert.not_valid_after_utc.timestamp(), False


def _max_age(until: float, now: float) -> int:
    return max(0, min(MAX_AGE, int(until - now)))
