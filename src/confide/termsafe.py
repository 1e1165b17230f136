"""Text that came from elsewhere (a CAS's answer, a ledger's entries, evidence, a volume's
names) made safe to print on a terminal for humans.

A hostile server could otherwise send escape sequences that a terminal obeys: ``ESC [ 2 J``
clears the screen, ``ESC ] 0 ; ... BEL`` sets the window title, ``ESC ] 52 ; c ; ... BEL``
writes the clipboard, and a carriage return or newline inside a field overwrites or forges a
line of output. :func:`printable` replaces every C0 control character (U+0000-U+001F, newline and
tab included), DEL (U+007F) and every C1 control character (U+0080-U+009F, such as the
one-character CSI U+009B) with a visible ``\\xNN`` escape. Everything else is left as it is:
a backslash is not doubled (a field holding the four characters ``\\x1b`` reads as one holding
ESC; the terminal is safe either way), and Unicode format characters such as the bidirectional
overrides are not escaped (docs/limitations.md "Command line").

JSON output (``--json``, ``policy show``, ``policy events``) needs none of this: ``json.dumps``
writes every control character as a ``\\uNNNN`` escape (and, with its default
``ensure_ascii=True``, every character beyond ASCII too), so it stays exact.
"""

from __future__ import annotations

import re

__all__ = ["printable", "printable_lines"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """``text`` with every C0 and C1 control character and DEL replaced by ``\\xNN``: one line
    that a terminal prints and obeys nothing of."""
    return _CONTROL.sub(_escape, text)


def printable_lines(text: str) -> str:
    """``text`` (a multi-line diagnostic, such as a policy's list of problems) with each of its
    lines :func:`printable`: the newlines between them kept, every other control character escaped.
    What came from elsewhere inside it is to be :func:`printable` where it is put in, so that its
    own newlines forge no line."""
    return "\n".join(printable(line) for line in text.split("\n"))
