"""RFC 8785 (JSON Canonicalization Scheme) encoding of signed documents and policies.

Its own module, free of the policy model, so that a client that only signs documents (``confide
policy show``, ``confide run``) does not import the policy model's validators; re-exported by
:mod:`confide.policy.canonical`.
"""

from __future__ import annotations

from typing import Any

import rfc8785

from confide.errors import ParseError

__all__ = ["jcs"]


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical JSON of a JSON-shaped value; a :class:`~confide.errors.ParseError` for
    one it cannot encode (hostile JSON as Python's ``json`` reads it: NaN, infinities, integers
    beyond IEEE 754's exact range, lone surrogates). The message names the kind, not the value."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        what = "an integer beyond 2^53 - 1 in magnitude (RFC 8785 §3.2.2.3: IEEE 754 doubles)"
    except rfc8785.FloatDomainError:
        what = "NaN or an infinity (RFC 8785 §3.2.2.3)"
    except (rfc8785.CanonicalizationError, UnicodeError):  # a key with a lone surrogate: UnicodeEncodeError
        what = "a lone surrogate, a non-string key or a value of no JSON type (RFC 8785 §3.1: I-JSON)"
    except RecursionError:
        what = "values nested too deeply"
    raise ParseError(f"not representable in canonical JSON: {what}", structure="RFC 8785 JSON")
