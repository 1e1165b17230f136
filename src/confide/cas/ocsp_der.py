"""A strict DER reader for the OCSPRequest and writer for the BasicOCSPResponse (RFC 6960 §4.1.1,
§4.2.1) of the CAS's OCSP responder (:mod:`confide.cas.ocsp_responder`).

``cryptography`` parses only a request with one Request and builds a response with one
SingleResponse; RFC 6960 allows several of each (``requestList SEQUENCE OF Request``,
``responses SEQUENCE OF SingleResponse``). This module reads and writes exactly those
structures, on the strict DER reader of :mod:`confide.evidence._der` (definite minimal lengths,
X.690 §10.1; every element inside its parent; nothing after the outermost one).

What the reader accepts (anything else raises :class:`~confide.errors.ParseError`, which the
responder answers ``malformedRequest``):

- ``OCSPRequest ::= SEQUENCE { tbsRequest, optionalSignature [0] EXPLICIT Signature OPTIONAL }``,
  the signature's structure checked (``SEQUENCE { AlgorithmIdentifier, BIT STRING, [0] certs
  OPTIONAL }``) and then ignored (anyone may ask);
- ``TBSRequest``: no ``version`` (v1 is the DEFAULT, which DER does not encode, X.690 §11.5), an
  optional ``requestorName [1]`` (skipped), ``requestList`` of 1 to :data:`MAX_ENTRIES`
  Requests, optional ``requestExtensions [2]``;
- ``Request ::= SEQUENCE { reqCert CertID, singleRequestExtensions [0] EXPLICIT OPTIONAL }``;
- ``CertID``: an AlgorithmIdentifier (OID; parameters absent or NULL for the hashes the
  responder computes, any one element for another algorithm, whose entries it cannot answer),
  two OCTET STRINGs of at most 64 octets, a positive INTEGER serial (RFC 5280 §4.1.2.2) of at most
  :data:`MAX_SERIAL_OCTETS` octets; its DER is kept to be echoed verbatim in the response;
- ``Extensions``: at most 16 (an empty list, which RFC 5280's SIZE (1..MAX) excludes, is let
  through, as ``cryptography`` and so the responder before this reader did), no OID twice
  (RFC 5280 §4.2), ``critical`` not encoded as FALSE (DEFAULT); a critical extension other
  than the nonce and the preferred signature algorithms is refused (RFC 6960 §4.4), and so is a
  nonce in ``singleRequestExtensions`` (it is a request extension, RFC 9654 §2.1). The nonce's
  ``extnValue`` holds one OCTET STRING (RFC 9654 §2.1; else the extnValue is the nonce, the
  unwrapped form ``cryptography`` reads too) of :data:`MIN_NONCE` to :data:`MAX_NONCE` octets;
  the preferred-signature-algorithms extension (§4.4.7) is parsed and its algorithms returned;
  acceptable responses (§4.4.3) must be a SEQUENCE OF OBJECT IDENTIFIER; a requestorName one
  GeneralName (RFC 5280 §4.2.1.6).

The writer produces ``OCSPResponse { successful, ResponseBytes { id-pkix-ocsp-basic,
BasicOCSPResponse } }`` with ``version`` omitted (v1), ``responderID`` ``byKey`` (§4.2.2.3),
``producedAt``, one SingleResponse per entry, the nonce echoed, and the signer's certificate in
``certs``. It signs ``tbsResponseData`` with a key of its own choosing of signature algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from confide._der_write import NULL, explicit, octet_string, sequence, tlv
from confide.errors import ParseError
from confide.evidence import _der as der

__all__ = [
    "MAX_ENTRIES",
    "MAX_NONCE",
    "MAX_SERIAL_OCTETS",
    "MIN_NONCE",
    "CertIdEntry",
    "ParsedRequest",
    "SignatureAlgorithm",
    "SingleAnswer",
    "basic_response",
    "choose_algorithm",
    "parse_ocsp_request",
]

MAX_ENTRIES = 16
"""Requests in one requestList: each is a status look-up; more is refused (malformedRequest)."""
# RFC 9654 §2.1 and its ASN.1 module (obsoleting RFC 8954, whose bound was 32): Nonce ::= OCTET
# STRING(SIZE(1..128)). Every nonce in that range is echoed; an empty or longer one is malformed.
MIN_NONCE, MAX_NONCE = 1, 128
MAX_SERIAL_OCTETS = 4096
"""A CertID serial longer than this is refused (the responder's request bound, MAX_REQUEST,
is the same). RFC 5280 §4.1.2.2 allows CAs 20 octets; a longer serial is no CAS certificate's and
is answered ``unknown``, as ``cryptography`` reads it (not malformed)."""
_MAX_HASH_OCTETS = 64
_MAX_EXTENSIONS = 16
_MAX_PREFERRED = 16
_S = "OCSPRequest"

_OID_NONCE = bytes.fromhex("2b0601050507300102")  # id-pkix-ocsp-nonce 1.3.6.1.5.5.7.48.1.2
_OID_PREF_SIG = bytes.fromhex("2b0601050507300108")  # id-pkix-ocsp-pref-sig-algs 1.3.6.1.5.5.7.48.1.8
_OID_BASIC = bytes.fromhex("2b0601050507300101")  # id-pkix-ocsp-basic 1.3.6.1.5.5.7.48.1.1
_OID_ACCEPTABLE = bytes.fromhex("2b0601050507300104")  # id-pkix-ocsp-response 1.3.6.1.5.5.7.48.1.4
_IA5_NAMES = (0x81, 0x82, 0x86)  # rfc822Name [1], dNSName [2], uniformResourceIdentifier [6]
_GENERAL_NAMES = (0xA0, *_IA5_NAMES, 0xA3, 0xA4, 0xA5, 0x87, 0x88)  # RFC 5280 §4.2.1.6 GeneralName

# CertID hash algorithms the responder computes (OID content octets -> hash).
_HASHES: dict[bytes, type[hashes.HashAlgorithm]] = {
    bytes.fromhex("2b0e03021a"): hashes.SHA1,  # 1.3.14.3.2.26
    bytes.fromhex("608648016503040204"): hashes.SHA224,  # 2.16.840.1.101.3.4.2.4
    bytes.fromhex("608648016503040201"): hashes.SHA256,
    bytes.fromhex("608648016503040202"): hashes.SHA384,
    bytes.fromhex("608648016503040203"): hashes.SHA512,
}


_KNOWN_HASHES = frozenset(_HASHES)


class SignatureAlgorithm(NamedTuple):
    """A signature algorithm: its AlgorithmIdentifier DER (RFC 5758 §3.2, RFC 4055 §5, RFC 8410
    §3) and the hash it signs with (``None``: EdDSA signs the message itself)."""

    name: str
    oid: bytes  # content octets
    identifier: bytes
    hash: type[hashes.HashAlgorithm] | None


def _alg(name: str, oid_hex: str, null: bool, hash_: type[hashes.HashAlgorithm] | None) -> SignatureAlgorithm:
    oid = bytes.fromhex(oid_hex)
    identifier = sequence(tlv(der.TAG_OID, oid), NULL if null else b"")
    return SignatureAlgorithm(name, oid, identifier, hash_)


_ECDSA = {
    h.name: _alg(f"ecdsa-with-{h.name.upper()}", oid, False, h)
    for h, oid in (
        (hashes.SHA256, "2a8648ce3d040302"),  # RFC 5758 §3.2: parameters absent
        (hashes.SHA384, "2a8648ce3d040303"),
        (hashes.SHA512, "2a8648ce3d040304"),
    )
}
_RSA = {
    h.name: _alg(f"{h.name}WithRSAEncryption", oid, True, h)
    for h, oid in (
        (hashes.SHA256, "2a864886f70d01010b"),  # RFC 4055 §5: parameters NULL
        (hashes.SHA384, "2a864886f70d01010c"),
        (hashes.SHA512, "2a864886f70d01010d"),
    )
}
_ED25519 = _alg("Ed25519", "2b6570", False, None)  # RFC 8410 §3: parameters absent
_ED448 = _alg("Ed448", "2b6571", False, None)


class CertIdEntry(NamedTuple):
    """One Request's CertID (§4.1.1): ``algorithm`` ``None`` when the responder does not compute
    that hash; ``der`` the CertID as sent, echoed in the SingleResponse."""

    algorithm: hashes.HashAlgorithm | None
    name_hash: bytes
    key_hash: bytes
    serial: int
    der: bytes


class ParsedRequest(NamedTuple):
    entries: tuple[CertIdEntry, ...]
    nonce: bytes | None  # the Nonce OCTET STRING's content
    nonce_value: bytes | None  # the nonce extension's extnValue content, echoed as is
    preferred: tuple[bytes, ...]  # §4.4.7: the sigIdentifier OID (content octets) of each, in order


def _one(data: bytes, start: int, end: int, tag: int, field: str) -> tuple[int, int]:
    """The content of the single element filling ``data[start:end]``, of tag ``tag``."""
    t, vs, ve = der.tlv(data, start, _S)
    if t != tag or ve != end:
        raise ParseError(
            f"expected one element of tag {tag:#x} here", structure=_S, field=field, offset=start
        )
    return vs, ve


def _positive(data: bytes, tag: int, start: int, end: int, field: str) -> int:
    """A positive INTEGER (RFC 5280 §4.1.2.2) in minimal form (X.690 §8.3.2)."""
    if tag != der.TAG_INTEGER or start == end or end - start > MAX_SERIAL_OCTETS:
        raise ParseError(f"expected an INTEGER of 1..{MAX_SERIAL_OCTETS} octets", structure=_S, field=field,
                         offset=start)  # fmt: skip
    if end - start > 1 and (
        (data[start] == 0 and not data[start + 1] & 0x80) or (data[start] == 0xFF and data[start + 1] & 0x80)
    ):
        raise ParseError("non-minimal INTEGER", structure=_S, field=field, offset=start)
    value = int.from_bytes(data[start:end], "big", signed=True)
    if value <= 0:
        raise ParseError("a serial number is a positive integer", structure=_S, field=field, offset=start)
    return value


def _oid(data: bytes, tag: int, start: int, end: int, field: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER, each subidentifier in minimal base-128 form
    (X.690 §8.19.2: the last octet of each has bit 8 clear, and none starts with 0x80)."""
    if tag != der.TAG_OID or start == end or data[end - 1] & 0x80:
        raise ParseError("expected an OBJECT IDENTIFIER", structure=_S, field=field, offset=start)
    if data[start] == 0x80 or any(data[i] == 0x80 and not data[i - 1] & 0x80 for i in range(start + 1, end)):
        raise ParseError(
            "non-minimal OBJECT IDENTIFIER subidentifier", structure=_S, field=field, offset=start
        )
    return data[start:end]


def _algorithm_identifier(data: bytes, start: int, end: int, field: str, known: frozenset[bytes]) -> bytes:
    """The OID content of ``AlgorithmIdentifier ::= SEQUENCE { OID, parameters ANY OPTIONAL }``;
    the parameters of an OID in ``known`` (a hash) absent or NULL, any one element otherwise."""
    parts = der.children(data, start, end, _S)
    if not parts or len(parts) > 2:
        raise ParseError("expected an AlgorithmIdentifier", structure=_S, field=field, offset=start)
    oid = _oid(data, *parts[0], field)
    if oid in known and len(parts) == 2 and (parts[1][0] != 0x05 or parts[1][1] != parts[1][2]):
        raise ParseError("expected NULL or absent parameters", structure=_S, field=field, offset=parts[1][1])
    return oid


def _extensions(data: bytes, start: int, end: int, field: str) -> list[tuple[bytes, bool, int, int]]:
    """``Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension`` inside ``[n] EXPLICIT`` (empty let
    through, module docstring): (OID content, critical, extnValue start, end) of each."""
    vs, ve = _one(data, start, end, der.TAG_SEQUENCE, field)
    items = der.children(data, vs, ve, _S)
    if len(items) > _MAX_EXTENSIONS:
        raise ParseError(
            f"expected at most {_MAX_EXTENSIONS} extensions", structure=_S, field=field, offset=vs
        )
    out: list[tuple[bytes, bool, int, int]] = []
    seen: set[bytes] = set()
    for tag, es, ee in items:
        if tag != der.TAG_SEQUENCE:
            raise ParseError("expected an Extension", structure=_S, field=field, offset=es)
        parts = der.children(data, es, ee, _S)
        if len(parts) not in (2, 3):
            raise ParseError("expected an Extension", structure=_S, field=field, offset=es)
        oid = _oid(data, *parts[0], field)
        critical = False
        if len(parts) == 3:
            critical = der.der_boolean(data, parts[1][0], parts[1][1], parts[1][2], _S, field)
            if not critical:  # DER: a DEFAULT value is not encoded (X.690 §11.5)
                raise ParseError("critical FALSE encoded", structure=_S, field=field, offset=parts[1][1])
        vtag, xs, xe = parts[-1]
        if vtag != der.TAG_OCTET_STRING:
            raise ParseError("expected an extnValue OCTET STRING", structure=_S, field=field, offset=xs)
        if oid in seen:  # RFC 5280 §4.2: at most one instance of an extension
            raise ParseError("duplicate extension", structure=_S, field=field, offset=es)
        seen.add(oid)
        out.append((oid, critical, xs, xe))
    return out


def _cert_id(data: bytes, start: int, end: int) -> CertIdEntry:
    parts = der.children(data, start, end, _S)
    if len(parts) != 4 or parts[0][0] != der.TAG_SEQUENCE:
        raise ParseError("expected a CertID", structure=_S, field="reqCert", offset=start)
    oid = _algorithm_identifier(data, parts[0][1], parts[0][2], "hashAlgorithm", _KNOWN_HASHES)
    hashed = []
    for tag, vs, ve in parts[1:3]:
        if tag != der.TAG_OCTET_STRING or ve - vs > _MAX_HASH_OCTETS:
            raise ParseError("expected an OCTET STRING hash", structure=_S, field="reqCert", offset=vs)
        hashed.append(data[vs:ve])
    serial = _positive(data, *parts[3], "serialNumber")
    found = _HASHES.get(oid)
    algorithm = None if found is None else found()
    if algorithm is not None and any(len(h) != algorithm.digest_size for h in hashed):
        algorithm = None  # hashes of another length: no issuer's (never matched)
    return CertIdEntry(algorithm, hashed[0], hashed[1], serial, b"")


def parse_ocsp_request(data: bytes) -> ParsedRequest:
    """The entries, nonce and signature preferences of the DER OCSPRequest ``data`` (module
    docstring); :class:`ParseError` for anything else."""
    tag, start, end = der.tlv(data, 0, _S)
    if tag != der.TAG_SEQUENCE or end != len(data):
        raise ParseError("expected one DER SEQUENCE and nothing after it", structure=_S, offset=0)
    top = der.children(data, start, end, _S)
    if not top or len(top) > 2 or top[0][0] != der.TAG_SEQUENCE:
        raise ParseError("expected tbsRequest", structure=_S, field="tbsRequest", offset=start)
    if len(top) == 2:  # optionalSignature [0] EXPLICIT Signature: its structure only
        if top[1][0] != der.context_tag(0):
            raise ParseError("expected optionalSignature [0]", structure=_S, offset=top[1][1])
        ss, se = _one(data, top[1][1], top[1][2], der.TAG_SEQUENCE, "optionalSignature")
        sig = der.children(data, ss, se, _S)
        if (
            len(sig) not in (2, 3) or sig[0][0] != der.TAG_SEQUENCE or sig[1][0] != 0x03
            or (len(sig) == 3 and sig[2][0] != der.context_tag(0))
        ):  # fmt: skip
            raise ParseError("expected a Signature", structure=_S, field="optionalSignature", offset=ss)
        _algorithm_identifier(data, sig[0][1], sig[0][2], "signatureAlgorithm", frozenset())
    fields = der.children(data, top[0][1], top[0][2], _S)
    i = 0
    if i < len(fields) and fields[i][0] == der.context_tag(0):
        raise ParseError("version encoded: v1 is the DEFAULT (X.690 §11.5) and the only version",
                         structure=_S, field="version", offset=fields[i][1])  # fmt: skip
    if i < len(fields) and fields[i][0] == der.context_tag(1):
        _general_name(data, fields[i][1], fields[i][2])  # requestorName [1] EXPLICIT GeneralName
        i += 1  # not used: anyone may ask
    if i >= len(fields) or fields[i][0] != der.TAG_SEQUENCE:
        raise ParseError("expected requestList", structure=_S, field="requestList", offset=top[0][1])
    listed = der.children(data, fields[i][1], fields[i][2], _S)
    if not 1 <= len(listed) <= MAX_ENTRIES:
        raise ParseError(f"got {len(listed)} Requests, expected 1..{MAX_ENTRIES}", structure=_S,
                         field="requestList", offset=fields[i][1])  # fmt: skip
    i += 1
    entries = []
    for rtag, rs, re_ in listed:
        if rtag != der.TAG_SEQUENCE:
            raise ParseError("expected a Request", structure=_S, field="requestList", offset=rs)
        parts = der.children(data, rs, re_, _S)
        if not 1 <= len(parts) <= 2 or parts[0][0] != der.TAG_SEQUENCE:
            raise ParseError("expected a Request", structure=_S, field="requestList", offset=rs)
        if len(parts) == 2:
            if parts[1][0] != der.context_tag(0):
                raise ParseError("expected singleRequestExtensions [0]", structure=_S, offset=parts[1][1])
            for oid, critical, _, _ in _extensions(data, parts[1][1], parts[1][2], "singleRequestExtensions"):
                if oid == _OID_NONCE or critical:
                    raise ParseError("a critical or misplaced single request extension", structure=_S,
                                     field="singleRequestExtensions", offset=parts[1][1])  # fmt: skip
        entry = _cert_id(data, parts[0][1], parts[0][2])
        entries.append(entry._replace(der=data[rs : parts[0][2]]))  # the CertID's TLV, as sent
    nonce = nonce_value = None
    preferred: tuple[bytes, ...] = ()
    if i < len(fields) and fields[i][0] == der.context_tag(2):
        for oid, critical, xs, xe in _extensions(data, fields[i][1], fields[i][2], "requestExtensions"):
            if oid == _OID_NONCE:
                ns, ne = _nonce(data, xs, xe)
                if not MIN_NONCE <= ne - ns <= MAX_NONCE:
                    raise ParseError(f"a nonce of {ne - ns} octets, expected {MIN_NONCE}..{MAX_NONCE}",
                                     structure=_S, field="nonce", offset=ns)  # RFC 9654 §2.1  # fmt: skip
                nonce, nonce_value = data[ns:ne], data[xs:xe]
            elif oid == _OID_PREF_SIG:
                preferred = _preferences(data, xs, xe)
            elif oid == _OID_ACCEPTABLE:  # §4.4.3 AcceptableResponses ::= SEQUENCE OF OID
                vs, ve = _one(data, xs, xe, der.TAG_SEQUENCE, "acceptableResponses")
                for item in der.children(data, vs, ve, _S):
                    _oid(data, *item, "acceptableResponses")  # basic is always sent (§4.2.1)
            elif critical:  # RFC 6960 §4.4: an unrecognised critical extension is not ignored
                raise ParseError("unrecognised critical extension", structure=_S, field="requestExtensions",
                                 offset=xs)  # fmt: skip
        i += 1
    if i != len(fields):
        raise ParseError("unexpected element in tbsRequest", structure=_S, offset=fields[i][1])
    return ParsedRequest(tuple(entries), nonce, nonce_value, preferred)


def _nonce(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Where the nonce is in its extnValue: the content of the one OCTET STRING there (RFC 9654
    §2.1), else the extnValue itself (the unwrapped form some clients send, which
    ``cryptography`` reads the same way); echoed as sent either way."""
    try:
        tag, vs, ve = der.tlv(data, start, _S)
    except ParseError:
        return start, end
    return (vs, ve) if tag == der.TAG_OCTET_STRING and ve == end else (start, end)


def _general_name(data: bytes, start: int, end: int) -> None:
    """One GeneralName (RFC 5280 §4.2.1.6) filling ``data[start:end]``: a CHOICE alternative's
    tag, IA5String text for the string forms, an OID for registeredID, a SEQUENCE for a
    directoryName; the rest only as DER elements (the name is not used)."""
    tag, vs, ve = der.tlv(data, start, _S)
    if ve != end or tag not in _GENERAL_NAMES:
        raise ParseError("expected one GeneralName", structure=_S, field="requestorName", offset=start)
    if tag in _IA5_NAMES and any(b >= 0x80 for b in data[vs:ve]):
        raise ParseError("expected IA5String text", structure=_S, field="requestorName", offset=vs)
    if tag == 0x88:
        _oid(data, der.TAG_OID, vs, ve, "requestorName")
    elif tag == 0xA4:
        _one(data, vs, ve, der.TAG_SEQUENCE, "requestorName")
    elif tag & 0x20:
        der.children(data, vs, ve, _S)


def _preferences(data: bytes, start: int, end: int) -> tuple[bytes, ...]:
    """§4.4.7: ``PreferredSignatureAlgorithms ::= SEQUENCE OF PreferredSignatureAlgorithm``,
    ``PreferredSignatureAlgorithm ::= SEQUENCE { sigIdentifier AlgorithmIdentifier, certIdentifier
    AlgorithmIdentifier OPTIONAL }``: the sigIdentifiers' DER, in the client's order."""
    vs, ve = _one(data, start, end, der.TAG_SEQUENCE, "preferredSignatureAlgorithms")
    items = der.children(data, vs, ve, _S)
    if not 1 <= len(items) <= _MAX_PREFERRED:
        raise ParseError(f"expected 1..{_MAX_PREFERRED} preferred algorithms", structure=_S, offset=vs)
    out = []
    for tag, ps, pe in items:
        parts = der.children(data, ps, pe, _S) if tag == der.TAG_SEQUENCE else []
        if not 1 <= len(parts) <= 2 or any(p[0] != der.TAG_SEQUENCE for p in parts):
            raise ParseError("expected a PreferredSignatureAlgorithm", structure=_S, offset=ps)
        params = der.children(data, parts[0][1], parts[0][2], _S)
        if not params or len(params) > 2:
            raise ParseError("expected a sigIdentifier", structure=_S, offset=parts[0][1])
        out.append(_oid(data, *params[0], "sigIdentifier"))  # parameters are the algorithm's own
    return tuple(out)


def choose_algorithm(key: Any, preferred: Sequence[bytes]) -> SignatureAlgorithm:
    """The signature algorithm for ``key``: the first of the client's preferences (§4.4.7) the
    key can produce, else SHA-256 (ECDSA, RSA PKCS#1 v1.5) or the key's EdDSA (§4.4.7.2: the
    responder's default when it supports none of them)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _ED25519
    if isinstance(key, ed448.Ed448PrivateKey):
        return _ED448
    table = _ECDSA if isinstance(key, ec.EllipticCurvePrivateKey) else _RSA
    for oid in preferred:  # matched by OID: the parameters are the algorithm's own
        for algorithm in table.values():
            if algorithm.oid == oid:
                return algorithm
    return table["sha256"]


def _sign(key: Any, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
    if algorithm.hash is None:
        signature: bytes = key.sign(data)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(algorithm.hash()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), algorithm.hash())
    else:
        raise TypeError(f"no OCSP signature with a {type(key).__name__}")
    return signature


class SingleAnswer(NamedTuple):
    """One SingleResponse (§4.2.1): the CertID DER as requested, certStatus, and the times."""

    cert_id: bytes
    status: str  # "good", "revoked", "unknown"
    this_update: float
    next_update: float
    revoked_at: float | None = None
    reason_code: int | None = None  # CRLReason (RFC 5280 §5.3.1); None: omitted


def _time(seconds: float) -> bytes:
    # GeneralizedTime, UTC, whole seconds (RFC 5280 §4.1.2.5.2: YYYYMMDDHHMMSSZ)
    text = datetime.fromtimestamp(int(seconds), UTC).strftime("%Y%m%d%H%M%SZ")
    return tlv(0x18, text.encode())


def _single(answer: SingleAnswer) -> bytes:
    if answer.status == "good":
        status = b"\x80\x00"  # good [0] IMPLICIT NULL
    elif answer.status == "unknown":
        status = b"\x82\x00"  # unknown [2] IMPLICIT UnknownInfo (NULL)
    elif answer.status == "revoked" and answer.revoked_at is not None:
        info = _time(answer.revoked_at)
        if answer.reason_code is not None:  # revocationReason [0] EXPLICIT CRLReason
            info += explicit(0, tlv(der.TAG_ENUMERATED, bytes([answer.reason_code])))
        status = tlv(0xA1, info)  # revoked [1] IMPLICIT RevokedInfo
    else:
        raise ValueError(f"no certStatus {answer.status!r}")
    next_update = explicit(0, _time(answer.next_update))  # nextUpdate [0] EXPLICIT
    return sequence(answer.cert_id, status, _time(answer.this_update), next_update)


def basic_response(
    answers: Sequence[SingleAnswer],
    *,
    produced_at: float,
    responder_key_hash: bytes,
    key: Any,
    algorithm: SignatureAlgorithm,
    certificates: Sequence[bytes],
    nonce_value: bytes | None,
) -> bytes:
    """A successful DER OCSPResponse (§4.2.1) with these SingleResponses, signed by ``key``
    (module docstring). ``nonce_value``: the request nonce's extnValue content, echoed."""
    tbs = explicit(2, octet_string(responder_key_hash))  # responderID byKey [2]
    tbs += _time(produced_at)
    tbs += sequence(*(_single(a) for a in answers))
    if nonce_value is not None:  # responseExtensions [1] EXPLICIT: the nonce (RFC 9654 §2.1)
        nonce_ext = tlv(der.TAG_OID, _OID_NONCE) + octet_string(nonce_value)
        tbs += explicit(1, sequence(sequence(nonce_ext)))
    tbs = sequence(tbs)
    signature = _sign(key, algorithm, tbs)
    basic = tbs + algorithm.identifier + tlv(0x03, b"\x00" + signature)
    if certificates:  # certs [0] EXPLICIT SEQUENCE OF Certificate
        basic += explicit(0, sequence(*certificates))
    response_bytes = tlv(der.TAG_OID, _OID_BASIC) + octet_string(sequence(basic))
    # OCSPResponse: responseStatus successful (0), responseBytes [0] EXPLICIT
    return sequence(b"\x0a\x01\x00", explicit(0, sequence(response_bytes)))
