"""The strict JSON reader (``confide.jsonstrict``): duplicate member names at any depth, also
spelled with different escapes, NaN/Infinity and out-of-range numbers, and bytes that are not
UTF-8 are refused with a ParseError that names the key and never the value; everything else
reads as :func:`json.loads` reads it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import jsonstrict
from confide.errors import ParseError

SECRET = "s3cr3t-value-never-shown"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"a": 1, "a": 2}', "a"),  # top level
        ('{"a": 1, "b": {"c": 1}, "a": 1}', "a"),  # the same value twice is a duplicate too
        ('[{"x": {"b": 1}}, {"y": {"b": 1, "b": 2}}]', "b"),  # nested in an object inside an array
        ('{"o": [[{"k": null, "k": null}]]}', "k"),  # deep
        ('{"a": 1, "\\u0061": 2}', "a"),  # "a" and "\u0061": the same name once decoded
        ('{"\\u00e9": 1, "\u00e9": 2}', "\u00e9"),  # an escape and the raw UTF-8 character
        ('{"\\ud83d\\ude00": 1, "\U0001f600": 2}', "\U0001f600"),  # a surrogate pair and the raw character
        ('{"": 1, "": 2}', ""),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key(text: str, key: str) -> None:
    assert json.loads(text)  # what Python's json reads without complaint (last wins)
    for data in (text, text.encode()):
        with pytest.raises(ParseError, match="duplicate key") as info:
            jsonstrict.loads(data, structure="test document")
        assert repr(key) in info.value.message and info.value.structure == "test document"
        with pytest.raises(ParseError, match="duplicate key"):
            jsonstrict.decode(data)


def test_the_error_never_shows_the_value() -> None:
    text = json.dumps({"token": SECRET})[:-1] + ', "token": "other"}'
    with pytest.raises(ParseError) as info:
        jsonstrict.loads(text)
    assert "'token'" in str(info.value) and SECRET not in str(info.value) and "other" not in str(info.value)


def test_a_long_key_is_shown_truncated() -> None:
    key = "k" * 10_000
    with pytest.raises(ParseError) as info:
        jsonstrict.loads(f'{{"{key}": 1, "{key}": 2}}')
    assert len(info.value.message) < 200


def test_names_that_differ_are_not_duplicates() -> None:
    # Case, a trailing space and Unicode normalisation forms are different names (RFC 8259 §8.3
    # compares names code unit by code unit).
    value = jsonstrict.loads('{"a": 1, "A": 2, "a ": 3, "\u00e9": 4, "e\u0301": 5, "x": {"a": 6}}')
    assert value == {"a": 1, "A": 2, "a ": 3, "\u00e9": 4, "e\u0301": 5, "x": {"a": 6}}


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "[1e400]", '{"n": -1E+999}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    json.loads(text)  # read by Python's json
    with pytest.raises(ParseError, match=r"not JSON|out of range"):
        jsonstrict.loads(text)
    with pytest.raises(ParseError):
        jsonstrict.decode(text)


def test_integers_only() -> None:
    assert jsonstrict.loads("[1, -2, 1.5, 1e3]") == [1, -2, 1.5, 1000.0]
    assert jsonstrict.loads("[1, -2]", floats=False) == [1, -2]
    for text in ("[1.5]", "[1e3]", "[1.0]"):
        with pytest.raises(ParseError, match="not an integer"):
            jsonstrict.loads(text, floats=False)


@pytest.mark.parametrize(
    "data",
    [
        '{"a": 1}'.encode("utf-16"),  # json.loads reads UTF-16 and UTF-32
        '{"a": 1}'.encode("utf-32"),
        b"\xef\xbb\xbf{}",  # json.loads skips a UTF-8 byte order mark in bytes
        b'{"a": "\xff"}',
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate (json.loads decodes with surrogatepass)
    ],
)
def test_bytes_that_are_not_utf8_are_refused(data: bytes) -> None:
    with pytest.raises(ParseError):
        jsonstrict.loads(data)


@pytest.mark.parametrize("text", ["", "{", '{"a" 1}', "[1,]", "{'a': 1}", "[1] x", "01"])
def test_syntax_errors(text: str) -> None:
    with pytest.raises(ParseError, match="not JSON") as info:
        jsonstrict.loads(text)
    assert info.value.offset is not None
    with pytest.raises(json.JSONDecodeError):  # decode: as json.loads raises it
        jsonstrict.decode(text)


def test_too_deep_nesting_and_too_many_digits_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="nested too deeply"):
        jsonstrict.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ParseError, match="not JSON"):
        jsonstrict.loads("1" * 5000)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_JSON, st.booleans())
def test_everything_else_reads_as_json_loads_reads_it(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert jsonstrict.loads(text) == json.loads(text) == jsonstrict.loads(text.encode())


def test_decode_raises_only_syntax_errors_as_json_does() -> None:
    for data in ("[" * 100_000 + "]" * 100_000, "1" * 5000, b"\xff", '{"a": NaN}', '{"a": 1, "a": 1}'):
        with pytest.raises(ParseError):
            jsonstrict.decode(data)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "\\ud800"}',  # a lone high surrogate
        '{"a": "x\\udc00y"}',  # a lone low surrogate
        '{"\\ud800": 1}',  # in a name
        '[["\\uDBFF"]]',  # upper-case hex, nested
        '{"a": "\\ude00\\ud83d"}',  # low then high: not a pair
        '{"a": "\\ud83d\\u0041"}',  # high then not low
    ],
)
def test_lone_escaped_surrogates_are_refused(text: str) -> None:
    json.loads(text)  # Python's json keeps the lone code unit
    for data in (text, text.encode()):
        with pytest.raises(ParseError, match="surrogate"):
            jsonstrict.loads(data)


def test_surrogate_pairs_and_escaped_backslashes_read_as_json_loads() -> None:
    for text in ('{"a": "\\ud83d\\ude00"}', '{"a": "\\\\ud800"}', '{"\\\\uD800": ["\\\\udc00"]}'):
        assert jsonstrict.loads(text) == json.loads(text)


def test_a_raw_lone_surrogate_in_a_str_is_refused() -> None:
    with pytest.raises(ParseError, match="not UTF-8"):
        jsonstrict.loads('{"a": "\ud800"}')
