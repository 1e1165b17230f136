"""The canonical entry encoding (RFC 8785 JSON over the typed entry model)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError
from confide.ledger.encoding import (
    ENTRY_VERSION,
    ENTRY_VERSION_UNSALTED,
    MAX_DEPTH,
    SALT_SIZE,
    Entry,
    EntryType,
    _serialise,
    canonical_json,
    encode_entry,
    format_time,
    parse_canonical_json,
)
from confide.ledger.merkle import hash_leaf

AT = datetime(2026, 11, 27, 10, 52, 20, 123456, tzinfo=UTC)
SALT = bytes(range(0xA0, 0xB0))  # a fixed salt where a test compares bytes


def test_rfc8785_member_order_is_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3's sorting example: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = canonical_json(dict.fromkeys(keys, 0)).decode()
    order = [json.loads(out)[k] for k in keys]  # all present
    assert order == [0] * 7
    assert list(json.loads(out)) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    # Python's own code-point order puts U+FB33 first: the two orders really differ here.
    assert sorted(keys)[-1] == "\U0001f600"


def test_rfc8785_string_escapes_and_unicode() -> None:
    value = {"s": '\u20ac$\u000f\u000aA\'B"\\\\"/', "b": "\b\t\f\r\x1f\x7f é 😀"}
    assert canonical_json(value) == (
        '{"b":"\\b\\t\\f\\r\\u001f\x7f é 😀","s":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()
    )


def test_numbers_literals_and_nesting() -> None:
    assert canonical_json({"a": [1, -0, 0, -5, 9007199254740991], "z": None, "t": True, "f": False}) == (
        b'{"a":[1,0,0,-5,9007199254740991],"f":false,"t":true,"z":null}'
    )
    for bad in (1.5, 9007199254740992, float("nan"), b"bytes", {1: 2}):
        with pytest.raises(ParseError):
            canonical_json({"x": bad})


@pytest.mark.parametrize(
    "text",
    [
        b'{"b":1,"a":2}',  # order
        b'{"a": 1}',  # whitespace
        b'{"a":1.0}',  # float
        b'{"a":1e2}',
        b'{"a":-0}',
        b'{"a":"\\u00e9"}',  # needless escape
        b'{"a":"\\u001F"}',  # upper-case hex
        b'{"a":1,"a":1}',  # duplicate
        b'{"a":NaN}',
        b'{"a":"\\ud800"}',  # lone surrogate
        b"\xff",
        b'{"a":1}\n',
    ],
)
def test_non_canonical_inputs_are_rejected(text: bytes) -> None:
    with pytest.raises(ParseError):
        parse_canonical_json(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_canonical_form_is_a_fixed_point(value: object) -> None:
    try:
        data = canonical_json(value)
    except ParseError:
        return  # lone surrogates in generated text
    assert parse_canonical_json(data) == value
    assert canonical_json(json.loads(data)) == data
    # Re-serialising Python's own dump (different spacing/order/escapes) converges to the same bytes.
    assert canonical_json(json.loads(json.dumps(value, ensure_ascii=True, indent=1))) == data


_mixed = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**54), max_value=2**54)
    | st.text(max_size=6)
    | st.sampled_from(['a"b', "\\", "\x00\x1f\x7f", "\u2028", "\ud800", "é", "😀", "\ue000"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(max_size=4) | st.sampled_from(["a", "\ue000", "😀", "é"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_mixed)
def test_the_json_fast_path_writes_exactly_what_the_serialiser_writes(value: object) -> None:
    """canonical_json hands plain values to json.dumps; the result must be the same bytes as
    the RFC 8785 serialiser's, and refusals must stay refusals."""
    try:
        expected: bytes | None = _serialise(value, 0).encode("utf-8")
    except ParseError:
        expected = None
    if expected is None:
        with pytest.raises(ParseError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        Entry.from_bytes(data)


def test_entry_round_trip_and_shape() -> None:
    entry = Entry.create(
        EntryType.SECRET_RELEASED,
        AT,
        {"service": "db", "secrets": [{"name": "DB_PASSWORD_REF", "version": 3}], "key_sha256": "ab" * 32},
        policy="team/db",
    )
    data = entry.to_bytes()
    assert data.startswith(b'{"payload":{"key_sha256":')
    salt = entry.salt
    assert salt is not None and len(salt) == SALT_SIZE
    tail = (
        b'"salt":"'
        + salt.hex().encode()
        + b'","time":"2026-11-27T10:52:20.123456Z","type":"secret.released","v":2}'
    )
    assert data.endswith(tail)
    assert Entry.from_bytes(data) == entry
    assert entry.version == ENTRY_VERSION == 2
    with pytest.raises(ParseError):
        Entry.from_bytes(data.replace(b'"v":2', b'"v":3'))
    with pytest.raises(ParseError):
        Entry.from_bytes(data.replace(b"secret.released", b"secret.stolen"))


def test_entry_time_is_normalised_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    entry = Entry.create(EntryType.CAS_STARTED, AT.astimezone(cet), {})
    assert entry.time == "2026-11-27T10:52:20.123456Z"
    with pytest.raises(ValueError, match="timezone"):
        Entry.create(EntryType.CAS_STARTED, AT.replace(tzinfo=None), {})
    with pytest.raises(ParseError):
        Entry(EntryType.CAS_STARTED, "2026-02-30T00:00:00.000000Z", None, {})


@pytest.mark.parametrize("name", ["value", "plaintext", "Private_Key", "password", "seed"])
def test_secret_values_are_refused_at_any_depth(name: str) -> None:
    with pytest.raises(ParseError, match="secret material"):
        Entry.create(EntryType.SECRET_RELEASED, AT, {"secrets": [{"name": "x", name: "hunter2"}]})
    Entry.create(EntryType.SECRET_RELEASED, AT, {"secrets": [{"name": "x", "version": 1}]})  # twin


def test_a_refusal_names_the_first_secret_member_by_its_path() -> None:
    payload = {"a": [{"name": "x"}, {"b": {"Seed": 1, "value": 2}}], "password": 3}
    with pytest.raises(ParseError, match=r"payload member payload\.a\[1\]\.b\.Seed would record"):
        Entry.create(EntryType.SECRET_RELEASED, AT, payload)
    with pytest.raises(AttributeError):  # a member name that is not a string, as before
        Entry.create(EntryType.SECRET_RELEASED, AT, {"a": {1: "x"}})


def test_an_invalid_time_is_refused_after_a_valid_one() -> None:
    """The last valid time string is remembered (the entries of one change share it); any other
    string is checked."""
    good = "2026-11-27T10:52:20.123456Z"
    Entry(EntryType.CAS_STARTED, good, None, {})
    for bad in ("2026-02-30T00:00:00.000000Z", good[:-1], good + " ", good.replace("T", " ")):
        with pytest.raises(ParseError, match="time"):
            Entry(EntryType.CAS_STARTED, bad, None, {})
    Entry(EntryType.CAS_STARTED, "".join(good), None, {})  # an equal string, another object


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23)),
)
def test_format_time_is_the_strftime_form(naive: datetime, offset: timedelta) -> None:
    """Four-digit years take isoformat; earlier ones strftime (whose %Y does not pad them)."""
    at = naive.replace(tzinfo=timezone(offset))
    assert format_time(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error_or_bytes(make: Callable[[], bytes]) -> bytes | None:
    try:
        return make()
    except ParseError:
        return None


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=4) | st.sampled_from(["a", "é", "policy"]), _mixed, max_size=4),
    st.sampled_from([None, "team/db", "é", 'a"b\\c\n\x01', "\ud800"]),
    st.sampled_from([SALT, None]),
)
def test_an_entry_encoded_around_its_payload_is_its_bytes(
    payload: dict[str, Any], policy: str | None, salt: bytes | None
) -> None:
    """Entry.encoded splices the payload's own canonical JSON into the entry: the same bytes as
    to_bytes (or the same refusal), and the payload part is the payload's canonical JSON; for
    version 2 entries (salted) and version 1 ones alike."""
    try:
        entry = Entry(EntryType.SECRET_RELEASED, "2026-11-27T10:52:20.123456Z", policy, payload, salt)
    except ParseError:
        return
    whole = _error_or_bytes(entry.to_bytes)
    spliced = _error_or_bytes(lambda: entry.encoded()[0])
    assert spliced == whole
    if whole is not None:
        assert entry.encoded()[1] == canonical_json(payload)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
@pytest.mark.parametrize("leaf", [1, "x", None, True, {}, []])
def test_the_nesting_limit_is_the_serialisers_on_the_fast_path(depth: int, leaf: object) -> None:
    """A member at the deepest level is judged as the RFC 8785 serialiser judges it."""
    value: object = {"k": leaf}
    for _ in range(depth):
        value = {"k": value}
    assert _error_or_bytes(lambda: canonical_json(value)) == _error_or_bytes(
        lambda: _serialise(value, 0).encode("utf-8")
    )
    entry = Entry(EntryType.SECRET_RELEASED, "2026-11-27T10:52:20.123456Z", None, {"k": value})
    assert _error_or_bytes(lambda: entry.encoded()[0]) == _error_or_bytes(entry.to_bytes)


def _outcome(make: Callable[[], tuple[bytes, bytes]]) -> tuple[bytes, bytes] | tuple[type, str]:
    """The bytes made, or the exception's type and message (whatever the exception)."""
    try:
        return make()
    except Exception as exc:
        return (type(exc), str(exc))


_NAMES = st.text(max_size=4) | st.sampled_from(["a", "é", "policy", "Value", "SEED", "private_key"])
_payload_values = st.recursive(
    _mixed,
    lambda inner: st.dictionaries(_NAMES, inner, max_size=3) | st.lists(inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(_NAMES | st.integers(0, 3), _payload_values, max_size=4),
    st.sampled_from([None, "", "team/db", "é", 'a"b\\c\n\x01', "\ud800", 7]),
    st.sampled_from(
        ["2026-11-27T10:52:20.123456Z", "2026-02-30T00:00:00.000000Z", "2026-11-27 10:52:20Z", 5]
    ),
    st.sampled_from([EntryType.ATTESTATION, EntryType.SECRET_RELEASED, "attestation"]),
    st.sampled_from([SALT, bytes(16), SALT[:15], SALT + b"\x00", SALT.hex(), bytearray(SALT), 16]),
)
def test_encode_entry_is_the_entrys_encoding(
    payload: Any, policy: Any, time: Any, entry_type: Any, salt: Any
) -> None:
    """encode_entry (the CAS writer's path) gives Entry(...).encoded()'s bytes, or raises what
    the Entry raises, for any payload: forbidden names at any depth, names that are not
    strings, lone surrogates, integers out of range, tuples, invalid times, policies and salts."""
    expected = _outcome(lambda: Entry(entry_type, time, policy, payload, salt).encoded())
    assert _outcome(lambda: encode_entry(entry_type, time, policy, payload, salt)) == expected


@pytest.mark.parametrize("depth", [MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
@pytest.mark.parametrize("leaf", [1, "x", None, True, {}, [], [1], {"a": 1}])
def test_encode_entry_keeps_the_nesting_limit(depth: int, leaf: object) -> None:
    value: object = {"k": leaf}
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    t = "2026-11-27T10:52:20.123456Z"
    payload = {"k": value}
    expected = _outcome(lambda: Entry(EntryType.ATTESTATION, t, "p", payload, SALT).encoded())
    assert _outcome(lambda: encode_entry(EntryType.ATTESTATION, t, "p", payload, SALT)) == expected


def test_entries_equal_but_for_the_salt_have_different_leaf_hashes() -> None:
    """RFC 9162 §2.1.1: the leaf hash covers the whole entry, salt included, so the tile of an
    entry cannot be confirmed from its other members alone."""
    payload = {"signer": "ab" * 32, "reason": "not a member of the policy's board"}
    one = Entry(EntryType.POLICY_REFUSED, "2026-11-27T10:52:20.123456Z", "team/db", payload, SALT)
    two = Entry(EntryType.POLICY_REFUSED, "2026-11-27T10:52:20.123456Z", "team/db", payload, bytes(16))
    unsalted = Entry(EntryType.POLICY_REFUSED, "2026-11-27T10:52:20.123456Z", "team/db", payload, None)
    hashes = {hash_leaf(e.to_bytes()) for e in (one, two, unsalted)}
    assert len(hashes) == 3
    assert one.to_json() | {"salt": None} == two.to_json() | {"salt": None}  # all else equal
    # The CAS's path (encode_entry) too, and a fresh salt each time it is not given.
    fixed = encode_entry(EntryType.POLICY_REFUSED, one.time, "team/db", payload, SALT)[0]
    assert fixed == one.to_bytes()
    fresh = {encode_entry(EntryType.POLICY_REFUSED, one.time, "team/db", payload)[0] for _ in range(2)}
    assert len(fresh) == 2  # two 16-byte draws of os.urandom (equal: probability 2**-128)
    assert {Entry.from_bytes(e).version for e in fresh} == {ENTRY_VERSION}
    assert (
        Entry.create(EntryType.CAS_STARTED, AT, {}).salt != Entry.create(EntryType.CAS_STARTED, AT, {}).salt
    )


V1_ENTRY = (
    b'{"payload":{"n":1},"policy":"team/db","time":"2026-11-27T10:52:20.123456Z","type":"cas.started","v":1}'
)


def test_version_1_entries_stay_readable_as_they_are() -> None:
    """Entries of logs written before the salt: parsed, re-encoded byte for byte (their leaf
    hashes, and so their logs' trees, are unchanged), never given a salt."""
    entry = Entry.from_bytes(V1_ENTRY)
    assert (entry.version, entry.salt, entry.payload) == (ENTRY_VERSION_UNSALTED, None, {"n": 1})
    assert entry.to_bytes() == V1_ENTRY
    assert entry.encoded()[0] == V1_ENTRY
    salted = Entry(entry.type, entry.time, entry.policy, entry.payload, SALT)
    assert salted.to_bytes() == V1_ENTRY.replace(
        b'"time"', b'"salt":"' + SALT.hex().encode() + b'","time"'
    ).replace(b'"v":1}', b'"v":2}')
    assert Entry.from_bytes(salted.to_bytes()) == salted


def _v2(salt: bytes) -> bytes:
    return V1_ENTRY.replace(b'"time"', b'"salt":' + salt + b',"time"').replace(b'"v":1}', b'"v":2}')


@pytest.mark.parametrize(
    "data",
    [
        V1_ENTRY.replace(b'"v":1}', b'"v":2}'),  # version 2 without a salt
        _v2(b'"' + SALT.hex().encode() + b'"').replace(b'"v":2}', b'"v":1}'),  # version 1 with one
        _v2(b"null"),
        _v2(b'""'),
        _v2(b"7"),
        _v2(b'"' + SALT.hex().upper().encode() + b'"'),  # the one form is lower case
        _v2(b'"' + SALT.hex()[:-2].encode() + b'"'),  # 15 bytes
        _v2(b'"' + SALT.hex().encode() + b'00"'),  # 17 bytes
        _v2(b'"oKCio6SlpqeoqaqrrK2urw=="'),  # base64 of SALT: not the canonical form
        _v2(b'"' + SALT.hex()[:-1].encode() + b'g"'),
        _v2(b'["' + SALT.hex().encode() + b'"]'),
    ],
)
def test_a_missing_or_malformed_salt_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        Entry.from_bytes(data)
    assert SALT.hex()[:20] not in str(caught.value).lower()  # the message does not repeat it
    for bad in (b"", SALT[:15], SALT.hex(), bytearray(SALT)):
        with pytest.raises(ParseError, match="salt"):
            Entry(EntryType.CAS_STARTED, "2026-11-27T10:52:20.123456Z", None, {}, bad)  # type: ignore[arg-type]


def test_the_salt_is_not_in_an_entrys_repr() -> None:
    entry = Entry(EntryType.CAS_STARTED, "2026-11-27T10:52:20.123456Z", None, {}, SALT)
    assert SALT.hex() not in repr(entry) and repr(SALT) not in repr(entry)
