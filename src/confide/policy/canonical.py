"""The canonical encoding of a policy and its hash.

``canonical_json(policy)`` is the RFC 8785 (JSON Canonicalization Scheme) serialisation of the
*validated model*, never of the YAML text: ``policy.model_dump(mode="json", by_alias=True,
exclude_defaults=True)`` - field names as written in policies (``sev-snp``, ``import``,
``require-at-least-N``), values normalised by the model (lower-case hex, lists for single
values, commands split into arguments, ``tolerate`` sorted), and every field that equals its
default left out, so that writing a default explicitly and omitting it give the same hash, and
adding an optional field in a later version does not change the hash of existing policies.

``policy_hash(policy)`` is the lower-case hex SHA-256 of those bytes. It is what ``predecessor``
and ``session_hash`` refer to.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from confide.errors import ParseError
from confide.policy.model import Policy

__all__ = ["canonical_json", "jcs", "policy_hash"]


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


def canonical_json(policy: Policy) -> bytes:
    """The canonical bytes of a validated policy (see the module docstring)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"got {type(policy).__name__}, expected a validated Policy")
    return jcs(policy.model_dump(mode="json", by_alias=True, exclude_defaults=True))


def policy_hash(policy: Policy) -> str:
    """Lower-case hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(policy)).hexdigest()
