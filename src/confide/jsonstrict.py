"""The one strict JSON reader of confide, for every JSON text that comes from outside: request
bodies of the CAS, the admin channel, evidence and collateral documents, the CAS's answers read
by clients, state files.

Python's :func:`json.loads` reads RFC 8259 and a little more, and reads some texts differently
from other parsers (a *parser differential*: two readers of the same bytes act on different
values). This reader refuses what it would read differently:

* an object that gives a member name twice, at any depth (RFC 8259 §4: names "SHOULD be
  unique"; when they are not, "the behavior of software that receives such an object is
  unpredictable": :func:`json.loads` keeps the last value, other parsers the first or fail). The
  names are compared after decoding, so ``"a"`` and ``"\\u0061"`` are the same name. The error
  names the key, never its value (values may be secret);
* ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON (RFC 8259 §6: "Numeric values
  that cannot be represented in the grammar below (such as Infinity and NaN) are not
  permitted"), and numbers too large for a double (``1e400``, read as infinity: RFC 8259 §6
  lets an implementation limit the range it accepts);
* bytes that are not UTF-8 (RFC 8259 §8.1: JSON exchanged between systems "MUST be encoded
  using UTF-8"; :func:`json.loads` also reads UTF-16 and UTF-32 and skips a UTF-8 byte order
  mark);
* an escaped surrogate that is not half of a pair (``"\\ud800"``, ``"\\udc00x"``): RFC 8259
  §8.2 says the behaviour of software receiving such a string is unpredictable (one reader
  keeps the lone code unit, another replaces it with U+FFFD, so two different names could read
  as one). A pair (``"\\ud83d\\ude00"``) is one character, as in :func:`json.loads`.

Everything else is RFC 8259 as :func:`json.loads` reads it. Size limits stay with the callers
(each knows its own); the nesting depth is bounded by the interpreter's recursion limit, and
nesting deeper than that is a :class:`~confide.errors.ParseError` too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from confide.errors import ParseError

__all__ = ["decode", "loads"]


class _Refused(Exception):
    """Raised by the decoder's hooks; not a ValueError, so the json scanner passes it through."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() and len() in C: one Python call per object, the name search only on a duplicate
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON (RFC 8259 §6)")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"number {text[:32]}{'…' if len(text) > 32 else ''} is out of range")
    return value


def _no_float(text: str) -> Any:
    raise _Refused(f"number {text[:32]}{'…' if len(text) > 32 else ''} is not an integer")


# A \\u escape of a UTF-16 surrogate (D800-DFFF). json.loads joins a high and a low one into
# one character; whatever surrogate is left in the decoded value stood alone. The text is only
# searched for the escape; the decoded value is walked only when it occurs (rarely).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
_INT_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_no_float)


def decode(data: bytes | bytearray | str, *, structure: str = "JSON", floats: bool = True) -> Any:
    """The JSON value of ``data``, strictly (module docstring). A syntax error is the
    :class:`json.JSONDecodeError` of :func:`json.loads`; every other refusal (what this reader
    refuses and :func:`json.loads` reads, bytes that are not UTF-8, nesting deeper than the
    stack, an integer of more digits than ``sys.get_int_max_str_digits()``) is a
    :class:`~confide.errors.ParseError` about ``structure``. For callers that keep their own
    answer to a syntax error (the CAS's FastAPI routes); the others call :func:`loads`.
    ``floats=False``: numbers with a fraction or an exponent are refused too."""
    try:
        if isinstance(data, str):
            text = data
            text.encode("utf-8")  # a raw lone surrogate in a str: no UTF-8 text has one
        else:
            text = data.decode("utf-8")
        value = (_DECODER if floats else _INT_DECODER).decode(text)
        if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
            raise _Refused("an escaped surrogate that is not half of a pair (RFC 8259 §8.2)")
        return value
    except _Refused as exc:
        raise ParseError(str(exc), structure=structure) from None
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        reason = f"not UTF-8 (RFC 8259 §8.1): {exc.reason}"
        raise ParseError(reason, structure=structure, offset=exc.start) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more digits than int() reads
        raise ParseError(f"not JSON: {str(exc)[:80]}", structure=structure) from None
    except RecursionError:
        raise ParseError("nested too deeply", structure=structure) from None


def loads(data: bytes | bytearray | str, *, structure: str = "JSON", floats: bool = True) -> Any:
    """The JSON value of ``data``, strictly (module docstring); every refusal, syntax errors
    included, is a :class:`~confide.errors.ParseError` about ``structure``.
    ``floats=False``: numbers with a fraction or an exponent are refused too."""
    try:
        return decode(data, structure=structure, floats=floats)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc.msg}", structure=structure, offset=exc.pos) from None
