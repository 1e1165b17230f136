"""RFC 8785 canonical JSON (vectors from the RFC) and the stability of the policy hash."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import rfc8785

from confide.errors import ParseError
from confide.policy import canonical_json, loads_policy, policy_hash
from confide.policy.canonical import jcs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
MRE = "d08b7351eeb8d5c0653d32794218f183ac9c6fa3923b67052752f78a3559de61"


def test_rfc8785_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert jcs(value) == expected.encode()


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    expected = "{" + ",".join(f'"{k if k != chr(13) else chr(92) + "r"}":"{value[k]}"' for k in keys) + "}"
    assert jcs(value) == expected.encode()


@pytest.mark.parametrize(
    ("bits", "text"),
    [  # RFC 8785 Appendix B
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xC340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
        (0x44B52D02C7E14AF6, "1e+23"),
        (0x444B1AE4D6E2EF50, "1e+21"),
        (0x444B1AE4D6E2EF4F, "999999999999999900000"),
        (0x3EB0C6F7A0B5ED8D, "0.000001"),
        (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
        (0x41B3DE4355555555, "333333333.3333333"),
        (0x3FF0000000000000, "1"),
    ],
)
def test_rfc8785_appendix_b_numbers(bits: int, text: str) -> None:
    (number,) = struct.unpack(">d", bits.to_bytes(8, "big"))
    assert jcs(number) == text.encode()


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (float("nan"), "NaN"),
        (float("inf"), "infinity"),
        (-(2**53), "integer beyond"),
        (2**64, "integer beyond"),
        ("\ud800", "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),  # in a key: rfc8785 raised UnicodeEncodeError
        ({1: "a"}, "non-string key"),
        ({"a": [b"x"]}, "no JSON type"),
    ],
)
def test_values_outside_i_json_are_refused_as_parse_errors(bad: object, kind: str) -> None:
    """A ParseError (hostile JSON reaches jcs through every signed document), naming the kind of
    value, not the value (fuzz3 campaign: they were rfc8785's ValueErrors, HTTP 500)."""
    with pytest.raises(ParseError, match=kind) as raised:
        jcs(bad)
    assert str(2**64) not in str(raised.value) and "ud800" not in str(raised.value)


def test_values_nested_deeper_than_the_stack_are_refused_as_parse_errors() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ParseError, match="nested too deeply"):
        jcs(deep)


BASE = f"""# comment
name: app
version: "0.3"
services:
  - name: web
    command: server --port 1
    environment: {{A: "1", B: "2"}}
    attestation:
      mrenclave: {MRE}
secrets:
  - name: s
    kind: ascii
    size: 20
"""

SAME = f"""name: 'app'
secrets: [{{size: 20, kind: ascii, name: s}}]
version: "0.3"
services:
- attestation: [{{mrenclave: [{MRE.upper()}]}}]
  environment:
    B: '2'
    A: "1"
  command: ["server", "--port", "1"]
  name: web
access_policy: {{read: [CREATOR], update: CREATOR}}
security: {{attestation: {{mode: hardware, tolerate: []}}}}
"""


def test_hash_ignores_yaml_formatting_key_order_and_defaults() -> None:
    a, b = loads_policy(BASE), loads_policy(SAME)
    assert canonical_json(a) == canonical_json(b)
    assert policy_hash(a) == policy_hash(b) == hashlib.sha256(canonical_json(a)).hexdigest()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("size: 20", "size: 21"),
        ("--port 1", "--port 2"),
        ('A: "1"', 'A: "x"'),
        (MRE, MRE[:-1] + "0"),
        ("name: web", "name: web2"),
        ("kind: ascii", "kind: binary"),
    ],
)
def test_any_value_change_changes_the_hash(old: str, new: str) -> None:
    assert old in BASE
    assert policy_hash(loads_policy(BASE.replace(old, new))) != policy_hash(loads_policy(BASE))


def test_adding_a_predecessor_or_a_tolerance_changes_the_hash() -> None:
    base = policy_hash(loads_policy(BASE))
    assert policy_hash(loads_policy(BASE + f"predecessor: {MRE}\n")) != base
    assert policy_hash(loads_policy(BASE + "security: {attestation: {tolerate: [debug-mode]}}\n")) != base


def test_canonical_json_is_the_documented_dump() -> None:
    policy = loads_policy(BASE)
    assert canonical_json(policy) == rfc8785.dumps(
        policy.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    )
    assert canonical_json(policy).startswith(
        b'{"name":"app","secrets":[{"kind":"ascii","name":"s","size":20}]'
    )


def test_example_hashes_are_stable_across_loads() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text()
        assert policy_hash(loads_policy(text)) == policy_hash(loads_policy(text.replace("\n", "\r\n")))


def test_canonical_json_requires_a_policy() -> None:
    with pytest.raises(TypeError):
        canonical_json({"name": "x"})  # type: ignore[arg-type]
