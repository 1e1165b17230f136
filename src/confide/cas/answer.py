"""Reading a server's JSON answer as hostile input: one member at a time, each of the type the
reader needs, or a :class:`~confide.errors.ParseError` (exit 10) naming the answer and the
member, never its value.

What the commands (``confide policy``, ``confide cas successor``, ``confide sconify --cas``,
``cas rotate-master-key --online``), :mod:`confide.cas.successor_client` and :mod:`confide.sdk`
read of a CAS's answer after a request goes through these readers, so that a CAS answering
with another shape (a member missing or of another type, a list for an object) is one line
and exit 10, not a Python traceback. Objects are any mapping and arrays lists or tuples: the
readers take parsed JSON as :func:`confide.jsonstrict.loads` returns it and the SDK's
read-only form of it alike. ``what`` names the answer (``"the CAS's answer to cas successor
approve"``); the member is named as its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confide.errors import ParseError

__all__ = [
    "flag",
    "integer",
    "json_kind",
    "mapping",
    "obj",
    "objects",
    "optional_text",
    "policy_state",
    "text",
    "texts",
]


def json_kind(value: object) -> str:
    """What ``value`` is, as JSON names it (for messages: never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _wrong(o: Mapping[str, Any], key: str, what: str, expected: str) -> ParseError:
    if key not in o:
        got = "missing"
    elif isinstance(o[key], list | tuple):
        got = "got an array of other items"
    else:
        got = f"got {json_kind(o[key])}"
    return ParseError(f"{got}, expected {expected}", structure=what, field=key)


def obj(value: object, what: str) -> Mapping[str, Any]:
    """``value`` (the whole answer, or one item of it), an object."""
    if not isinstance(value, Mapping):
        raise ParseError(f"got {json_kind(value)}, expected an object", structure=what)
    return value


def text(o: Mapping[str, Any], key: str, what: str) -> str:
    """The member ``key`` of ``o``, a string."""
    value = o.get(key)
    if not isinstance(value, str):
        raise _wrong(o, key, what, "a string")
    return value


def optional_text(o: Mapping[str, Any], key: str) -> str | None:
    """The member ``key`` of ``o`` when it is a string, else ``None`` (for members only shown)."""
    value = o.get(key)
    return value if isinstance(value, str) else None


def integer(o: Mapping[str, Any], key: str, what: str, *, absent: int | None = None) -> int:
    """The member ``key`` of ``o``, an integer (not a boolean); ``absent``: its value when the
    answer leaves it out (``None``: it must be there)."""
    if absent is not None and key not in o:
        return absent
    value = o.get(key)
    if type(value) is not int:
        raise _wrong(o, key, what, "an integer")
    return value


def flag(o: Mapping[str, Any], key: str, what: str) -> bool:
    """The member ``key`` of ``o``, true or false."""
    value = o.get(key)
    if not isinstance(value, bool):
        raise _wrong(o, key, what, "true or false")
    return value


def mapping(o: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    """The member ``key`` of ``o``, an object."""
    value = o.get(key)
    if not isinstance(value, Mapping):
        raise _wrong(o, key, what, "an object")
    return value


def texts(o: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> tuple[str, ...]:
    """The member ``key`` of ``o``, a list of strings; ``optional``: absent or null is none."""
    value = o.get(key)
    if value is None and optional:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _wrong(o, key, what, "a list of strings")
    return tuple(value)


def objects(
    o: Mapping[str, Any], key: str, what: str, *, optional: bool = False
) -> tuple[Mapping[str, Any], ...]:
    """The member ``key`` of ``o``, a list of objects; ``optional``: absent or null is none."""
    value = o.get(key)
    if value is None and optional:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise _wrong(o, key, what, "a list of objects")
    return tuple(value)


def policy_state(result: object, what: str) -> tuple[str, str, str]:
    """The name, hash and state (``active``, ``pending``) of a CAS's answer to a policy's
    submission or approval (``confide policy apply|approve``, ``sconify --cas``,
    :meth:`confide.sdk.Cas.apply`)."""
    shown = obj(result, what)
    return text(shown, "name", what), text(shown, "hash", what), text(shown, "state", what)
