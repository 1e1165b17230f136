"""Reading an HTTP answer's body up to a limit, for every confide client of a remote party that
may be hostile (the CAS client, the ledger auditor, the witness client).

A larger answer, declared (``Content-Length``, RFC 9110 §8.6) or sent, stops the read with the
caller's own error (its class and wording).
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

import httpx2

from confide.errors import ConfideError

# At most this many digits are read as a number: more is larger than any limit (and int() of
# thousands of digits is a ValueError).
_MAX_LENGTH_DIGITS = 18


def read_body(
    response: httpx2.Response,
    limit: int,
    too_large: Callable[[str], ConfideError],
    *,
    within: float | None = None,
) -> bytes:
    """The body of a streamed ``response`` (after content decoding), at most ``limit`` bytes;
    ``too_large(how)`` is raised before anything is read when its ``Content-Length`` says more,
    or as soon as more has come (``how``: "declares N bytes, ..." / "is larger than ...").

    ``within``: seconds the whole body may take (monotonic clock, checked at each chunk), else
    ``too_large("took more than N s to arrive")``. A client's read timeout bounds the wait for
    each chunk only: a server sending a byte just within it would hold the client for as long as
    the limit in bytes allows (16 MiB at a byte per 30 s: fifteen years)."""
    start = monotonic()
    declared = response.headers.get("content-length", "")
    if (
        declared.isascii()
        and declared.isdigit()
        and (len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limit)
    ):
        raise too_large(f"declares {declared[:20]} bytes, more than {limit}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(f"is larger than {limit} bytes")
        if within is not None and monotonic() - start > within:
            raise too_large(f"took more than {within:g} s to arrive ({size} bytes by then)")
        chunks.append(chunk)
    return b"".join(chunks)
