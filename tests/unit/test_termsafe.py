"""confide.termsafe: server-provided text made safe for a terminal."""

from __future__ import annotations

import json

from confide.termsafe import printable, printable_lines


def test_every_control_character_is_escaped_and_nothing_else() -> None:
    for code in range(0x00, 0x20):
        assert printable(chr(code)) == f"\\x{code:02x}"
    assert printable("\x7f") == "\\x7f"
    for code in range(0x80, 0xA0):  # C1: U+009B is a one-character CSI
        assert printable(chr(code)) == f"\\x{code:02x}"
    kept = " ~\xa0é€\u202e\\x1b"  # printable ASCII, Latin-1 beyond C1, beyond, a backslash
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
