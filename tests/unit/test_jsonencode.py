"""``confide.jsonencode.encoder``: the text ``json.JSONEncoder(**options).encode`` writes, for
every value and every option the hot paths use, and the same exception (type and message) for
what it refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.jsonencode import encoder

_keys = st.one_of(
    st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=False)
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and the infinities included
    st.text(),  # surrogates, controls and non-ASCII included
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(_keys, inner, max_size=5),
    ),
    max_leaves=30,
)

# the options of the encoders on the CAS's paths (confide.ledger.encoding, confide.cas.app,
# confide.cas.core), and the others JSONEncoder takes
OPTIONS: list[dict[str, Any]] = [
    {},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "check_circular": False},
    {"ensure_ascii": False, "allow_nan": False, "indent": None, "separators": (",", ":")},
    {"skipkeys": True, "allow_nan": False},
    {"sort_keys": True, "skipkeys": True},
]


def _outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return ("ok", encode(value))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
@pytest.mark.parametrize("options", OPTIONS)
@settings(max_examples=300, deadline=None)
@given(value=_values)
def test_the_same_text_or_the_same_error_as_json_encoder(options: dict[str, Any], value: Any) -> None:
    assert _outcome(encoder(**options), value) == _outcome(json.JSONEncoder(**options).encode, value)


@pytest.mark.parametrize("options", OPTIONS)
def test_refusals_are_json_encoders(options: dict[str, Any]) -> None:
    fast, slow = encoder(**options), json.JSONEncoder(**options).encode
    for value in (math.nan, [math.inf], {"a": -math.inf}, object(), {"a": {1, 2}}, {(1, 2): 1}, b"x"):
        assert _outcome(fast, value) == _outcome(slow, value)


def test_a_cycle_is_refused_as_json_refuses_it_and_leaves_nothing_behind() -> None:
    """With check_circular (the default) a cycle is the same ValueError; a refused call leaves
    no marker that would refuse a later value (each call gets fresh markers)."""
    fast, slow = encoder(), json.JSONEncoder().encode
    loop: list[Any] = [1]
    loop.append(loop)
    shared = {"k": [1, 2]}
    assert (
        _outcome(fast, [shared, loop])
        == _outcome(slow, [shared, loop])
        == ("ValueError", "Circular reference detected")
    )
    assert fast([shared, shared]) == slow([shared, shared]) == '[{"k": [1, 2]}, {"k": [1, 2]}]'


def test_indent_takes_json_encoders_own_method() -> None:
    value = {"b": [1, {"c": None}], "a": "é"}
    assert encoder(indent=2, sort_keys=True)(value) == json.dumps(value, indent=2, sort_keys=True)


def test_subclasses_of_json_types_are_written_as_json_writes_them() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    value = {Text("k"): [Text("v"), Number(3), True]}
    for options in OPTIONS:
        assert encoder(**options)(value) == json.JSONEncoder(**options).encode(value)
    assert encoder()(Text("top")) == json.dumps(Text("top"))
