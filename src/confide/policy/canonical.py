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

from confide.jcs import jcs  # re-exported: its home before it had its own module
from confide.policy.model import Policy

__all__ = ["canonical_json", "jcs", "policy_hash"]


def canonical_json(policy: Policy) -> bytes:
    """The canonical bytes of a validated policy (see the module docstring)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"got {type(policy).__name__}, expected a validated Policy")
    return jcs(policy.model_dump(mode="json", by_alias=True, exclude_defaults=True))


def policy_hash(policy: Policy) -> str:
    """Lower-case hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(policy)).hexdigest()
