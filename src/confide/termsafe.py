"""Text that came from elsewhere (a CAS's answer, a ledger's entries, evidence, a volume's
names) made safe to print on a terminal for humans.

A hostile server could otherwise send escape sequences that a terminal obeys: ``ESC [ 2 J``
clears the screen, ``ESC ] 0 ; ... BEL`` sets the window title, ``ESC ] 52 ; c ; ... BEL``
writes the clipboard, and a carriage return or newline inside a field overwrites or forges a
line of output. :func:`printable` replaces every C0 control character (U+0000-U+001F, newline and
tab included), DEL (U+007F) and every C1 control character (U+0080-U+009F, such as the
one-character CSI U+009B) with a visible ``\\xNN`` escape.

It also escapes, as ``\\uNNNN`` (``\\UNNNNNNNN`` beyond U+FFFF), what a terminal does not obey
but what makes a printed name read differently from its characters (Trojan Source,
CVE-2021-42574): every format character (category Cf: the bidirectional embeddings, overrides
and isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E, U+200F and U+061C, the
zero-width space, joiners and U+2060-U+2064, the byte order mark U+FEFF, the soft hyphen
U+00AD, the tag characters U+E0000-U+E007F), the line and paragraph separators U+2028 and
U+2029, every other Unicode default-ignorable code point (drawn as nothing: the variation
selectors, the combining grapheme joiner, the Hangul fillers), surrogates (a JSON text can
carry a lone one, which no UTF-8 terminal can be written), and code points unassigned in the
Unicode database of this Python (one a newer Unicode made a format character among them). A
combining mark that starts the text is escaped too, so that it cannot change the character
printed before the text; other combining marks, look-alike letters of other scripts (a
Cyrillic ``а`` for a Latin ``a``) and spaces other than U+0020 are left as they are (they are
text in many languages: docs/limitations.md "Command line"). A backslash is not doubled: a
field holding the four characters ``\\x1b`` reads as one holding ESC (the terminal is safe
either way).

JSON output (``--json``, ``policy show``, ``policy events``) needs none of this: ``json.dumps``
writes every control character as a ``\\uNNNN`` escape (and, with its default
``ensure_ascii=True``, every character beyond ASCII too), so it stays exact.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["printable", "printable_lines"]

_ASCII_CONTROL = re.compile("[\x00-\x1f\x7f]")

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
"""Control, format, surrogate and unassigned code points; line and paragraph separators."""

_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
"""Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): code points
a renderer draws as nothing when it does not support them; those not of a category escaped
anyway are variation selectors, the combining grapheme joiner and the Hangul fillers."""


def _code(code: int) -> str:
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape(match: re.Match[str]) -> str:
    return _code(ord(match.group()))


def _escaped(char: str) -> bool:
    code = ord(char)
    if code < 0xA0:
        return code < 0x20 or code >= 0x7F
    return unicodedata.category(char) in _ESCAPED_CATEGORIES or _DEFAULT_IGNORABLE.match(char) is not None


def printable(text: str) -> str:
    """``text`` as one line that a terminal prints and obeys nothing of, and that shows every
    character that is drawn as nothing or reorders others: C0 and C1 control characters and DEL
    as ``\\xNN``; format characters (bidirectional controls, zero-width characters), line and
    paragraph separators, other default-ignorable code points, surrogates, unassigned code
    points and a combining mark at the start as ``\\uNNNN`` (module docstring)."""
    if text.isascii():
        return _ASCII_CONTROL.sub(_escape, text)
    out = [_code(ord(c)) if _escaped(c) else c for c in text]
    if text[0] == out[0] and unicodedata.category(text[0])[0] == "M":
        out[0] = _code(ord(text[0]))  # a combining mark would combine with what is printed before
    return "".join(out)


def printable_lines(text: str) -> str:
    """``text`` (a multi-line diagnostic, such as a policy's list of problems) with each of its
    lines :func:`printable`: the newlines between them kept, every other control character escaped.
    What came from elsewhere inside it is to be :func:`printable` where it is put in, so that its
    own newlines forge no line."""
    return "\n".join(printable(line) for line in text.split("\n"))
