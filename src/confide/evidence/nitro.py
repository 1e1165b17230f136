"""AWS Nitro Enclaves attestation documents: COSE_Sign1 (RFC 9052) around a CBOR map.

Layout (RFC 9052 §4.2; AWS "Verifying the root of trust", nitro-enclaves-nsm-api
``docs/attestation_process.md``)::

    COSE_Sign1 = [ protected: bstr .cbor {1: -35 (ES384)}, unprotected: {}, payload: bstr,
                   signature: bstr (r ‖ s, 96 bytes) ]          ; untagged or tag 18

    payload = { module_id: tstr, digest: "SHA384", timestamp: uint (ms since epoch),
                pcrs: { 0..31 => bstr (32/48/64) }, certificate: bstr (DER),
                cabundle: [ + bstr (DER, root first) ], ? public_key: bstr / null,
                ? user_data: bstr / null, ? nonce: bstr / null }

The input is hostile: the size is bounded before decoding, every ``cbor2`` error becomes a
:class:`~confide.errors.ParseError`, nesting depth is limited, duplicate map keys and all
semantic tags (other than the outer COSE tag 18) are refused, trailing bytes are refused, and
every field's type and size is checked against AWS's syntactic rules. The payload is kept as the
exact bytes that were signed; the envelope must be in CBOR's preferred (shortest) encoding so
that :meth:`NitroDocument.to_bytes` reproduces the input byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cbor2

from confide.errors import ParseError

__all__ = [
    "COSE_ALG_ES384",
    "MAX_DOCUMENT_SIZE",
    "AttestationDocument",
    "CoseSign1",
    "NitroDocument",
    "decode_cbor",
    "decode_document_text",
]

MAX_DOCUMENT_SIZE = 32 * 1024
MAX_DEPTH = 8
COSE_SIGN1_TAG = 18  # RFC 9052 §4.2
COSE_HEADER_ALG = 1  # RFC 9052 §3.1
COSE_HEADER_CRIT = 2
COSE_ALG_ES384 = -35  # RFC 9053 §2.1
COSE_ARRAY_LENGTH = 4
# AWS attestation_process.md §3.2.2.2 "Check content": ``digest`` ∈ {"SHA384"} (the NSM's PCR
# bank is SHA-384, so every PCR value is 48 bytes; §3.2.2.2 lists 32/48/64 for PCR lengths in
# general, but with SHA384 the only length a PCR of that bank has is 48).
DIGEST_SIZES = {"SHA384": 48}
MAX_PCRS = 32
MAX_CERT_SIZE = 1024
MAX_PUBLIC_KEY_SIZE = 1024
MAX_USER_DATA_SIZE = 512
MAX_NONCE_SIZE = 512
MAX_CABUNDLE = 16
MANDATORY_KEYS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
OPTIONAL_KEYS = ("public_key", "user_data", "nonce")
UINT64_MAX = 2**64 - 1

_COSE = "COSE_Sign1"
_DOC = "Nitro attestation document"


def _refuse_tag(structure: str) -> Callable[..., Any]:
    # cbor2 5 calls tag_hook(decoder, tag); cbor2 6 calls tag_hook(tag, immutable).
    def hook(*args: Any) -> Any:
        tag = next((a for a in args if isinstance(a, cbor2.CBORTag)), None)
        if tag is not None and tag.tag == COSE_SIGN1_TAG and structure == _COSE:
            return tag
        number = tag.tag if tag is not None else "?"
        raise ParseError(f"unexpected CBOR tag {number}", structure=structure)

    return hook


def _refuse_semantic(structure: str, number: int) -> Callable[[Any], Any]:
    def decoder(_decoder: Any) -> Any:
        raise ParseError(f"unexpected CBOR semantic tag {number}", structure=structure)

    return decoder


# Tags cbor2 would otherwise decode itself (dates, bignums, decimals, shared references, sets...).
_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 55799)


def decode_cbor(data: bytes, structure: str) -> Any:
    """Decode exactly one CBOR item filling ``data``; any failure is a ParseError.

    Strict: nesting depth at most ``MAX_DEPTH``, no duplicate map keys, no tags (except COSE's
    tag 18 when ``structure`` is ``"COSE_Sign1"``), text strictly UTF-8, no trailing bytes. The
    caller bounds the size of ``data``."""
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            tag_hook=_refuse_tag(structure),
            semantic_decoders={t: _refuse_semantic(structure, t) for t in _SEMANTIC_TAGS},
            max_depth=MAX_DEPTH,
            allow_duplicate_keys=False,
            str_errors="strict",
        )
        value = decoder.decode()
    except ParseError:
        raise
    except Exception as exc:  # cbor2 raises several types on hostile input; all are parse errors
        cause = exc.__cause__ if isinstance(exc.__cause__, ParseError) else None
        if cause is not None:
            raise cause from None
        raise ParseError(f"invalid CBOR: {exc}", structure=structure) from None
    if fp.tell() != len(data):
        raise ParseError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item", structure=structure)
    return value


def _bytes(value: Any, field: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, bytes):
        raise ParseError(f"got {type(value).__name__}, expected a byte string", structure=_DOC, field=field)
    if not lo <= len(value) <= hi:
        raise ParseError(f"got {len(value)} bytes, expected {lo}..{hi}", structure=_DOC, field=field)
    return value


def _optional_bytes(payload: Mapping[str, Any], field: str, lo: int, hi: int) -> bytes | None:
    value = payload.get(field)
    return None if value is None else _bytes(value, field, lo, hi)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """The CBOR payload of a Nitro attestation document, checked field by field."""

    module_id: str
    digest: str
    timestamp: int
    """Milliseconds since the UNIX epoch (UTC)."""
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @classmethod
    def from_payload(cls, payload_bytes: bytes) -> AttestationDocument:
        payload = decode_cbor(payload_bytes, _DOC)
        if not isinstance(payload, dict):
            raise ParseError(f"got {type(payload).__name__}, expected a map", structure=_DOC)
        for key in payload:
            if key not in MANDATORY_KEYS and key not in OPTIONAL_KEYS:
                raise ParseError(f"unexpected key {key!r}", structure=_DOC)
        for key in MANDATORY_KEYS:
            if key not in payload:
                raise ParseError("missing mandatory field", structure=_DOC, field=key)
        module_id = payload["module_id"]
        if not isinstance(module_id, str) or not module_id or len(module_id) > MAX_CERT_SIZE:
            raise ParseError(
                f"got {module_id!r}, expected a non-empty text string", structure=_DOC, field="module_id"
            )
        digest = payload["digest"]
        if not isinstance(digest, str) or digest not in DIGEST_SIZES:
            raise ParseError(
                f"got {digest!r}, expected one of {sorted(DIGEST_SIZES)}", structure=_DOC, field="digest"
            )
        timestamp = payload["timestamp"]
        if not _is_int(timestamp) or not 0 < timestamp <= UINT64_MAX:
            raise ParseError(
                f"got {timestamp!r}, expected a positive uint64", structure=_DOC, field="timestamp"
            )
        pcrs = payload["pcrs"]
        if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= MAX_PCRS:
            raise ParseError(f"expected a map of 1..{MAX_PCRS} PCRs", structure=_DOC, field="pcrs")
        checked_pcrs: dict[int, bytes] = {}
        for index in sorted(pcrs, key=lambda k: (not _is_int(k), str(k))):
            if not _is_int(index) or not 0 <= index < MAX_PCRS:
                raise ParseError(
                    f"got PCR index {index!r}, expected 0..{MAX_PCRS - 1}", structure=_DOC, field="pcrs"
                )
            size = DIGEST_SIZES[digest]
            checked_pcrs[index] = _bytes(pcrs[index], f"pcrs[{index}]", size, size)
        certificate = _bytes(payload["certificate"], "certificate", 1, MAX_CERT_SIZE)
        bundle = payload["cabundle"]
        if not isinstance(bundle, list) or not 1 <= len(bundle) <= MAX_CABUNDLE:
            raise ParseError(
                f"expected a list of 1..{MAX_CABUNDLE} certificates", structure=_DOC, field="cabundle"
            )
        cabundle = tuple(_bytes(c, f"cabundle[{i}]", 1, MAX_CERT_SIZE) for i, c in enumerate(bundle))
        return cls(
            module_id=module_id,
            digest=digest,
            timestamp=timestamp,
            pcrs=MappingProxyType(dict(sorted(checked_pcrs.items()))),
            certificate=certificate,
            cabundle=cabundle,
            public_key=_optional_bytes(payload, "public_key", 1, MAX_PUBLIC_KEY_SIZE),
            user_data=_optional_bytes(payload, "user_data", 0, MAX_USER_DATA_SIZE),
            nonce=_optional_bytes(payload, "nonce", 0, MAX_NONCE_SIZE),
        )


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A COSE_Sign1 message; ``payload`` and ``protected`` are the exact signed bytes."""

    protected: bytes
    algorithm: int
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @classmethod
    def from_bytes(cls, data: bytes) -> CoseSign1:
        item = decode_cbor(data, _COSE)
        tagged = isinstance(item, cbor2.CBORTag)
        if tagged:
            item = item.value
        if not isinstance(item, (list, tuple)) or len(item) != COSE_ARRAY_LENGTH:  # tuple inside a tag
            raise ParseError("expected an array of 4 items", structure=_COSE)
        protected, unprotected, payload, signature = item
        for name, value in (("protected", protected), ("payload", payload), ("signature", signature)):
            if not isinstance(value, bytes):
                raise ParseError(
                    f"got {type(value).__name__}, expected a byte string", structure=_COSE, field=name
                )
        if not isinstance(unprotected, Mapping):
            raise ParseError(
                f"got {type(unprotected).__name__}, expected a map", structure=_COSE, field="unprotected"
            )
        header = decode_cbor(protected, _COSE) if protected else {}
        if not isinstance(header, dict):
            raise ParseError("protected header is not a map", structure=_COSE, field="protected")
        if COSE_HEADER_CRIT in header:
            raise ParseError(
                "critical header parameters are not supported", structure=_COSE, field="protected"
            )
        alg = header.get(COSE_HEADER_ALG)
        if not isinstance(alg, int) or isinstance(alg, bool):
            raise ParseError(f"got alg {alg!r}, expected an integer", structure=_COSE, field="protected")
        msg = cls(protected, alg, MappingProxyType(dict(unprotected)), payload, signature, tagged)
        if msg.to_bytes() != data:
            raise ParseError("envelope is not in preferred CBOR encoding", structure=_COSE)
        return msg

    def to_bytes(self) -> bytes:
        body = [self.protected, dict(self.unprotected), self.payload, self.signature]
        try:
            return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body) if self.tagged else body)
        except Exception as exc:  # unencodable unprotected values
            raise ParseError(f"cannot re-encode: {exc}", structure=_COSE) from None

    @property
    def sig_structure(self) -> bytes:
        """RFC 9052 §4.4: ``["Signature1", protected, external_aad = b"", payload]``."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


@dataclass(frozen=True, slots=True)
class NitroDocument:
    """A parsed attestation document: the COSE envelope and its checked payload."""

    cose: CoseSign1
    document: AttestationDocument

    @classmethod
    def from_bytes(cls, data: bytes) -> NitroDocument:
        if len(data) > MAX_DOCUMENT_SIZE:
            raise ParseError(f"got {len(data)} bytes, expected at most {MAX_DOCUMENT_SIZE}", structure=_COSE)
        cose = CoseSign1.from_bytes(data)
        return cls(cose, AttestationDocument.from_payload(cose.payload))

    def to_bytes(self) -> bytes:
        return self.cose.to_bytes()


def decode_document_text(raw: bytes) -> bytes:
    """Binary COSE is returned as is; base64 text (standard or URL-safe, padded or not) decoded."""
    if raw[:1] in (b"\x84", b"\xd2"):
        return raw
    text = b"".join(raw.split())
    if len(text) > MAX_DOCUMENT_SIZE * 2:
        raise ParseError(
            f"got {len(text)} bytes of text, expected at most {MAX_DOCUMENT_SIZE * 2}", structure=_COSE
        )
    text = text.replace(b"-", b"+").replace(b"_", b"/")
    text += b"=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("neither a binary COSE_Sign1 nor base64 text", structure=_COSE) from None
    if not decoded:
        raise ParseError("empty document", structure=_COSE)
    return decoded
