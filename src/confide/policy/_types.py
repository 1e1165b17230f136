"""Scalar types of the policy language: names, hex strings, durations.

Every validator here raises ``ValueError`` with a "got X, expected Y" message (pydantic turns it
into a validation error with the field's location) and never echoes more than a short prefix of
the input. They are used by :mod:`confide.policy.model` through ``Annotated`` types.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StrictStr

__all__ = [
    "Duration",
    "Hex8",
    "Hex16",
    "Hex16List",
    "Hex16Or32",
    "Hex32",
    "Hex32List",
    "Hex32Or48",
    "Hex32Or48List",
    "Hex48",
    "Hex48List",
    "Name",
    "PolicyName",
    "SecretName",
    "TextList",
    "duration_seconds",
    "is_name",
    "is_policy_name",
    "short",
]

MAX_NAME = 128
"""SCONE session language v0.3, "Session Name": at most 128 characters."""

MAX_POLICY_NAME = 1024
"""Bound on a namespaced name (``a/b/c``); each segment is at most :data:`MAX_NAME`."""

_NAME_RE = re.compile(r"[A-Za-z0-9_\-.~]{1,128}")
"""RFC 3986 "unreserved characters", as SCONE requires for session and service names."""

_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_\-]{1,128}")
"""Secret names: no ``.`` (it introduces SCONE's deprecated ``.hex``/``.crt`` suffixes) and
no ``:`` or ``$`` (placeholder syntax)."""

_HEX_RE = re.compile(r"[0-9a-fA-F]*")


def short(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"got {short(value)}, expected 1-128 characters of A-Z a-z 0-9 _ - . ~")
    return value


def _check_secret_name(value: str) -> str:
    if not _SECRET_NAME_RE.fullmatch(value):
        raise ValueError(f"got {short(value)}, expected 1-128 characters of A-Z a-z 0-9 _ -")
    return value


def _check_policy_name(value: str) -> str:
    segments = value.split("/")
    if len(value) > MAX_POLICY_NAME or not all(_NAME_RE.fullmatch(s) for s in segments):
        raise ValueError(
            f"got {short(value)}, expected '/'-separated segments of 1-128 characters of A-Z a-z 0-9 _ - . ~"
        )
    if any(s in (".", "..") for s in segments):
        raise ValueError(f"got {short(value)}, expected no '.' or '..' segment")
    return value


def is_name(value: object) -> bool:
    """Whether ``value`` is a string a service, volume or image can be named (:data:`Name`)."""
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


# :func:`_check_policy_name` as one expression (for the CAS's attestation path, which checks
# every request's name): segments of _NAME_RE's characters, none of them "." or "..".
_SEGMENT = r"(?!\.{1,2}(?:/|\Z))[A-Za-z0-9_\-.~]{1,128}"
_POLICY_NAME_RE = re.compile(f"{_SEGMENT}(?:/{_SEGMENT})*")


def is_policy_name(value: object) -> bool:
    """Whether ``value`` is a string a policy can be named (:data:`PolicyName`, the same rule
    as its validator)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_POLICY_NAME
        and _POLICY_NAME_RE.fullmatch(value) is not None
    )


Name = Annotated[StrictStr, AfterValidator(_check_name)]
"""A service, volume or image name."""

SecretName = Annotated[StrictStr, AfterValidator(_check_secret_name)]
"""A secret name (stricter than :data:`Name`, see ``_SECRET_NAME_RE``)."""

PolicyName = Annotated[StrictStr, AfterValidator(_check_policy_name)]
"""A policy (SCONE: session) name, optionally in namespaces: ``company/project/name``."""


def _hex_checker(*sizes: int) -> Callable[[str], str]:
    digits = sorted(2 * n for n in sizes)
    expected = " or ".join(str(d) for d in digits)

    def check(value: str) -> str:
        if len(value) not in digits or not _HEX_RE.fullmatch(value):
            raise ValueError(f"got {short(value)}, expected {expected} hex digits")
        return value.lower()

    return check


def _one_or_many(value: object) -> object:
    """A single scalar stands for a list of one: ``mrenclave: abc`` == ``mrenclave: [abc]``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"got the number {short(value)}, expected a string (quote values that look like numbers)"
        )
    return [value] if isinstance(value, str) else value


Hex8 = Annotated[StrictStr, AfterValidator(_hex_checker(8))]
Hex16 = Annotated[StrictStr, AfterValidator(_hex_checker(16))]
Hex16Or32 = Annotated[StrictStr, AfterValidator(_hex_checker(16, 32))]
Hex32 = Annotated[StrictStr, AfterValidator(_hex_checker(32))]
Hex48 = Annotated[StrictStr, AfterValidator(_hex_checker(48))]
Hex32Or48 = Annotated[StrictStr, AfterValidator(_hex_checker(32, 48))]
"""Hex strings of a fixed number of bytes, normalised to lower case."""

Hex16List = Annotated[tuple[Hex16, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
Hex32List = Annotated[tuple[Hex32, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
Hex48List = Annotated[tuple[Hex48, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
Hex32Or48List = Annotated[tuple[Hex32Or48, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
"""One hex string or a non-empty list of them, meaning "any of"; always a tuple once parsed."""

TextList = Annotated[tuple[StrictStr, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
"""One string or a non-empty list of strings, meaning "any of"."""


# Units of the ``humantime`` duration syntax SCONE uses for ``valid_for`` ("1 year", "59d").
_UNITS: dict[str, int] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 7 * 86400),
    (("M", "month", "months"), 2_630_016),  # 30.44 days, as humantime
    (("y", "year", "years"), 31_557_600),  # 365.25 days, as humantime
):
    for _n in _names:
        _UNITS[_n] = _seconds

_DURATION_PART = re.compile(r"\s*([0-9]{1,9})\s*([A-Za-z]+)")
MAX_DURATION = 200 * 31_557_600


def duration_seconds(text: str) -> int:
    """Seconds in a duration such as ``90 days``, ``59d`` or ``1y 6months``."""
    pos, total = 0, 0
    stripped = text.rstrip()
    if not stripped.strip():
        raise ValueError("got an empty duration, expected e.g. '90 days' or '1y'")
    while pos < len(stripped):
        m = _DURATION_PART.match(stripped, pos)
        if not m or m.group(2) not in _UNITS:
            raise ValueError(
                f"got {short(text)}, expected a duration like '90 days', '59d' or '1 year' "
                f"(units: {', '.join(sorted(set(_UNITS)))})"
            )
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not 0 < total <= MAX_DURATION:
        raise ValueError(f"got {short(text)}, expected a duration between 1 second and 200 years")
    return total


def option_duration(text: str, option: str, low: int, high: int, example: str) -> int:
    """Seconds of a command-line option's duration in the policies' syntax (``--max-age 1h``),
    from ``low`` to ``high`` seconds; otherwise a :class:`~confide.errors.UsageError` naming the
    option, what it got and the range (with ``example``)."""
    from confide.errors import UsageError  # noqa: PLC0415 - the policy model's types stay import-light

    expected = f"expected a duration from {low} seconds to {high // 86400} days (e.g. {example})"
    try:
        seconds = duration_seconds(text)
    except (ValueError, TypeError):
        raise UsageError(f"{option}: got {text[:40]!r}, {expected}") from None
    if not low <= seconds <= high:
        raise UsageError(f"{option}: got {seconds} seconds, {expected}")
    return seconds


def _check_duration(value: str) -> str:
    duration_seconds(value)
    return value


Duration = Annotated[StrictStr, AfterValidator(_check_duration)]
