"""confide.termsafe: server-provided text made safe for a terminal."""

from __future__ import annotations

import json
import unicodedata

import pytest

from confide.termsafe import printable, printable_lines


def test_every_control_character_is_escaped() -> None:
    for code in range(0x00, 0x20):
        assert printable(chr(code)) == f"\\x{code:02x}"
    assert printable("\x7f") == "\\x7f"
    for code in range(0x80, 0xA0):  # C1: U+009B is a one-character CSI
        assert printable(chr(code)) == f"\\x{code:02x}"
    kept = " ~\xa0é€\\x1b"  # printable ASCII, Latin-1 beyond C1, beyond, a backslash
    assert printable(kept) == kept


def test_osc_52_and_a_forged_line() -> None:
    hostile = "ok\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\r\nforged"
    assert printable(hostile) == "ok\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J\\x0d\\x0aforged"


def test_printable_lines_keeps_the_newlines_only() -> None:
    assert printable_lines("problems:\n  a\x1b[2J\tb\n  c\r") == "problems:\n  a\\x1b[2J\\x09b\n  c\\x0d"


def test_json_escapes_every_control_character_already() -> None:
    """What --json and policy events rely on: json.dumps writes no control character."""
    text = "".join(map(chr, range(0xA0)))
    dumped = json.dumps({"k": text})
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in dumped)
    assert json.loads(dumped) == {"k": text}


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
INVISIBLE = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u2028\u2029"


def test_bidirectional_controls_and_invisible_characters_are_escaped() -> None:
    """Trojan Source (CVE-2021-42574): each is shown as its ``\\uNNNN``."""
    for char in BIDI + INVISIBLE:
        assert printable(char) == f"\\u{ord(char):04x}", char
        assert printable(f"a{char}b") == f"a\\u{ord(char):04x}b", char
    # a name that displays as "policy-evil" reversed, but is not
    assert printable("policy-\u202elive\u202c") == "policy-\\u202elive\\u202c"


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_every_format_character_and_the_other_invisible_ones_are_escaped() -> None:
    """Category Cf (the tags beyond U+FFFF too), the separators, default-ignorable code points of
    other categories (variation selectors, the Hangul filler, the combining grapheme joiner),
    surrogates and unassigned code points."""
    for code in range(0xA0, 0x110000):
        char = chr(code)
        if unicodedata.category(char) in ("Cf", "Zl", "Zp", "Cs", "Cn"):
            shown = printable(char)
            assert shown == (f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"), hex(code)
    for char in "\ufe0f\U000e0100\u3164\uffa0\u115f\u034f\u180b":
        assert printable("x" + char) == "x" + _u(char), hex(ord(char))
    assert printable("tag\U000e0041") == "tag\\U000e0041"


def _u(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def test_text_of_other_scripts_is_kept() -> None:
    """Letters, combining marks after a letter, look-alikes (a Cyrillic а), emoji without a
    selector, non-ASCII spaces: printed as they are."""
    kept = "naïve café Ελληνικά русский а 日本語 हिन्दी e\u0301 \U0001f600 \u00a0\u3000 €"
    assert printable(kept) == kept


def test_a_leading_combining_mark_is_escaped() -> None:
    """It would otherwise combine with the character printed before the text (a quote, a colon)."""
    assert printable("\u0338name") == "\\u0338name"
    assert printable("\u20ddx\u0301") == "\\u20ddx\u0301"
    assert printable_lines("a\n\u0301b") == "a\n\\u0301b"
