"""Parsing AWS Nitro attestation documents (COSE_Sign1 + CBOR) as hostile input."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.evidence.nitro import (
    MAX_DOCUMENT_SIZE,
    AttestationDocument,
    CoseSign1,
    NitroDocument,
    decode_document_text,
)

ASSETS = Path(__file__).parent.parent / "assets" / "nitro"
EXAMPLE = base64.b64decode((ASSETS / "example_attestation.b64").read_bytes())
REAL = (ASSETS / "realAttestation_repaired.cose").read_bytes()


def test_parses_example_document() -> None:
    doc = NitroDocument.from_bytes(EXAMPLE)
    assert doc.to_bytes() == EXAMPLE
    assert not doc.cose.tagged
    assert doc.cose.algorithm == -35
    d = doc.document
    assert d.module_id == "i-0bbf1bfe232b8c2ce-enc0191ba35c9d1b77a"
    assert d.digest == "SHA384"
    assert d.timestamp == 1725911352400
    assert sorted(d.pcrs) == list(range(16))
    assert d.public_key == b"dummy"
    assert d.nonce == bytes(19) + b"\x01"
    assert len(d.cabundle) == 4


def test_parses_real_document_with_indefinite_map() -> None:
    doc = NitroDocument.from_bytes(REAL)
    assert doc.to_bytes() == REAL
    assert doc.cose.payload[:1] == b"\xbf"  # indefinite-length map, as this enclave's NSM wrote it
    assert doc.document.nonce is None
    assert doc.document.public_key is None
    assert doc.document.pcrs[0].hex().startswith("4b8d4cf2")


def test_tagged_form_round_trips() -> None:
    tagged = b"\xd2" + EXAMPLE
    doc = NitroDocument.from_bytes(tagged)
    assert doc.cose.tagged
    assert doc.to_bytes() == tagged


def test_committed_truncated_document_is_a_parse_error() -> None:
    raw = decode_document_text((ASSETS / "realAttestation_as_committed_truncated.b64").read_bytes())
    with pytest.raises(ParseError, match="invalid CBOR"):
        NitroDocument.from_bytes(raw)


def test_every_truncation_is_a_parse_error() -> None:
    for n in list(range(0, 64)) + list(range(64, len(EXAMPLE), 37)):
        with pytest.raises(ParseError):
            NitroDocument.from_bytes(EXAMPLE[:n])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ParseError, match="trailing"):
        NitroDocument.from_bytes(EXAMPLE + b"\x00")


def test_oversized_input_is_refused_before_decoding() -> None:
    with pytest.raises(ParseError, match="at most"):
        NitroDocument.from_bytes(b"\x84" + bytes(MAX_DOCUMENT_SIZE))


def test_base64_and_binary_are_both_accepted() -> None:
    text = (ASSETS / "example_attestation.b64").read_bytes()
    assert decode_document_text(text) == EXAMPLE
    assert decode_document_text(EXAMPLE) == EXAMPLE
    assert decode_document_text(base64.urlsafe_b64encode(EXAMPLE).rstrip(b"=")) == EXAMPLE
    with pytest.raises(ParseError, match="base64"):
        decode_document_text(b"not base64 at all!")


def _payload() -> dict[str, Any]:
    return dict(cbor2.loads(NitroDocument.from_bytes(EXAMPLE).cose.payload))


def _with(**changes: Any) -> bytes:
    payload = _payload()
    for key, value in changes.items():
        if value is _DROP:
            payload.pop(key)
        else:
            payload[key] = value
    return cbor2.dumps(payload)


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"module_id": ""}, "module_id"),
        ({"module_id": b"bytes"}, "module_id"),
        ({"digest": "MD5"}, "digest"),
        # attestation_process.md §3.2.2.2: digest ∈ {"SHA384"}, not any SHA-2
        ({"digest": "SHA256", "pcrs": {0: bytes(32)}}, "digest"),
        ({"digest": "SHA512", "pcrs": {0: bytes(64)}}, "digest"),
        ({"digest": "sha384"}, "digest"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": -5}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": "1725911352400"}, "timestamp"),
        ({"pcrs": {}}, "pcrs"),
        ({"pcrs": {0: bytes(47)}}, "pcrs[0]"),
        ({"pcrs": {32: bytes(48)}}, "pcrs"),
        ({"pcrs": {"0": bytes(48)}}, "pcrs"),
        ({"pcrs": [bytes(48)]}, "pcrs"),
        ({"certificate": b""}, "certificate"),
        ({"certificate": bytes(1025)}, "certificate"),
        ({"cabundle": []}, "cabundle"),
        ({"cabundle": ["text"]}, "cabundle[0]"),
        ({"public_key": b""}, "public_key"),
        ({"user_data": bytes(513)}, "user_data"),
        ({"nonce": bytes(513)}, "nonce"),
        ({"nonce": "text"}, "nonce"),
        ({"certificate": _DROP}, "certificate"),
        ({"timestamp": _DROP}, "timestamp"),
    ],
)
def test_payload_fields_are_checked(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as info:
        AttestationDocument.from_payload(_with(**changes))
    assert info.value.field == field


def test_optional_fields_may_be_null_or_absent() -> None:
    doc = AttestationDocument.from_payload(_with(public_key=None, nonce=_DROP, user_data=b""))
    assert doc.public_key is None
    assert doc.nonce is None
    assert doc.user_data == b""


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ParseError, match="unexpected key"):
        AttestationDocument.from_payload(_with(extra=1))


def test_duplicate_keys_are_refused() -> None:
    payload = cbor2.dumps({"nonce": b"a"})
    dup = b"\xa2" + payload[1:] + payload[1:]
    with pytest.raises(ParseError, match="invalid CBOR"):
        AttestationDocument.from_payload(dup)


@pytest.mark.parametrize("tag", [0, 1, 2, 28, 29, 258, 55799, 9999])
def test_semantic_tags_are_refused(tag: int) -> None:
    value: Any = {"x": b"1"} if tag != 2 else b"\x01"
    with pytest.raises(ParseError, match="tag"):
        AttestationDocument.from_payload(cbor2.dumps(cbor2.CBORTag(tag, value)))


def test_envelope_shape_and_header_are_checked() -> None:
    cose = cbor2.loads(EXAMPLE)
    with pytest.raises(ParseError, match="array of 4"):
        CoseSign1.from_bytes(cbor2.dumps(cose[:3]))
    with pytest.raises(ParseError, match="critical"):
        CoseSign1.from_bytes(cbor2.dumps([cbor2.dumps({1: -35, 2: [1]}), {}, cose[2], cose[3]]))
    with pytest.raises(ParseError, match="alg"):
        CoseSign1.from_bytes(cbor2.dumps([cbor2.dumps({1: "ES384"}), {}, cose[2], cose[3]]))
    with pytest.raises(ParseError, match="byte string"):
        CoseSign1.from_bytes(cbor2.dumps([cose[0], {}, "text", cose[3]]))
    with pytest.raises(ParseError, match="tag 19"):
        CoseSign1.from_bytes(cbor2.dumps(cbor2.CBORTag(19, cose)))
    # A non-shortest length encoding of the signature byte string cannot round-trip.
    sig = cose[3]
    long_form = EXAMPLE[: -len(sig) - 2] + b"\x59\x00\x60" + sig
    assert EXAMPLE[-len(sig) - 2 : -len(sig)] == b"\x58\x60"
    with pytest.raises(ParseError, match="preferred"):
        CoseSign1.from_bytes(long_form)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        doc = NitroDocument.from_bytes(data)
    except ParseError:
        return
    assert doc.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_text_decoder_only_raises_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        decode_document_text(data)


_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=70) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.integers(-2, 40), inner)
    ),
    max_leaves=20,
)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=400, deadline=None)
@given(_cbor_values, st.sampled_from(["pcrs", "cabundle", "nonce", "timestamp", "module_id", "x"]))
def test_structured_cbor_only_raises_parse_error(value: Any, key: str) -> None:
    with contextlib.suppress(ParseError):
        AttestationDocument.from_payload(_with(**{key: value}))
    with contextlib.suppress(ParseError):
        CoseSign1.from_bytes(cbor2.dumps([cbor2.dumps(value), {}, b"", b""]))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(EXAMPLE) - 1), st.integers(1, 255))
def test_mutated_documents_only_raise_parse_error(pos: int, xor: int) -> None:
    data = bytearray(EXAMPLE)
    data[pos] ^= xor
    with contextlib.suppress(ParseError):
        NitroDocument.from_bytes(bytes(data))
