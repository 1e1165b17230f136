"""The fingerprint of a secret's declaration (docs/cas.md "Secrets", "Declaration fingerprints").

A secret keeps its stored value across policy updates while its declaration does not change.
The CAS tells by a SHA-256 fingerprint of the declaration, stored in the clear
``secrets.public`` column (``"spec"``) of each version it writes. What is fingerprinted is the
declaration as far as the value depends on it (:func:`declaration`): exports do not matter,
nor do ``crl_distribution``, ``ca_issuers`` and ``ocsp`` (certificates get their distribution
point, caIssuers and OCSP URLs at their next version), nor ``path_len`` (a CA certificate whose
pathLenConstraint changes is re-issued for the same key). An explicit ``value`` of an
``ascii``, ``binary`` or ``private-key`` secret is replaced by :data:`WITHHELD` (a hash of it
would let whoever reads the database test guesses offline; the CAS compares the sealed value
instead); an explicit certificate is marked (``confide_explicit_certificate``: before 2026-12
the CAS stored a generated certificate for one, which the mark replaces at the next update).

Forms, newest first (:func:`fingerprints`):

1. **Without defaults** (written from 2026-12-06): SHA-256 of the JCS (RFC 8785) of
   ``{"fingerprint": 2, "declaration": D}``, where D holds only the fields whose value is not
   the model's default. A field added to the secret model later, with a default, is absent
   from D for every declaration that leaves it out, so an upgrade regenerates nothing.
2. **Whole dump** (written until 2026-12-06): SHA-256 of the JCS of the model dump with every
   field, defaults included, restricted to :data:`WHOLE_DUMP_FIELDS` (the fields the model had
   then), so that later fields do not change it either. Honoured only when the declaration
   sets no field outside them: a declaration using a later field never had this form.
3. **Value hashed in** (written before 2026-12, withheld values only): form 2 with the explicit
   value in place of :data:`WITHHELD`. Matching it proves the value too.

A stored form 2 or 3 is replaced by form 1 in the same row when an update keeps the value, and
a renewal writes form 1 for its new version; the comparison with every form is what keeps an
existing deployment from regenerating anything when it is upgraded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from confide.policy.canonical import jcs
from confide.policy.secret import Secret, SecretKind

__all__ = [
    "NOT_DECLARED",
    "WHOLE_DUMP_FIELDS",
    "WITHHELD",
    "Fingerprints",
    "declaration",
    "fingerprints",
    "value_withheld",
]

WITHHELD = "(withheld)"
"""What ``policy show`` returns in place of an explicit secret value or volume key, and what an
explicit secret value is replaced by in a declaration's fingerprint."""

NOT_DECLARED = frozenset({"export", "export_public", "crl_distribution", "ca_issuers", "ocsp", "path_len"})
"""Fields of a secret its value does not depend on (left out of every fingerprint)."""

WHOLE_DUMP_FIELDS = frozenset(
    {
        "name", "kind", "size", "value", "key_type", "migrate", "private_key", "issuer",
        "common_name", "endpoint", "dns", "san", "valid_for", "renew_before", "issue_to_runtime",
        "import",
    }
)  # fmt: skip
"""The fields (as dumped, by alias) of the whole-dump form 2: the secret model's on 2026-12-06
minus :data:`NOT_DECLARED`. Fixed: a field added to the model later is never in it."""

_CERTIFICATE_KINDS = frozenset({SecretKind.X509, SecretKind.X509_CA})
_FORM = 2


def declaration(spec: Secret) -> dict[str, Any]:
    """A secret's declaration as far as its value depends on it: the model dump (JSON mode, by
    alias, defaults included) without :data:`NOT_DECLARED`."""
    out: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude=set(NOT_DECLARED))
    return out


def value_withheld(spec: Secret) -> bool:
    """Whether a secret's explicit ``value`` is secret (everything but a certificate or a public
    key): left out of the declaration fingerprint stored in the clear ``secrets.public``."""
    return spec.value is not None and spec.kind not in (*_CERTIFICATE_KINDS, SecretKind.PUBLIC_KEY)


@dataclass(frozen=True)
class Fingerprints:
    """The fingerprints of one declaration: ``current`` is written, any of ``accepted`` stored
    in a row means the declaration did not change (form 3, ``value_hashed``, with the value
    too; the others, for a ``withheld`` value, still need the sealed value compared)."""

    current: str
    accepted: frozenset[str]
    withheld: bool
    value_hashed: str | None


def _sha256(obj: Any) -> str:
    return hashlib.sha256(jcs(obj)).hexdigest()


def fingerprints(spec: Secret) -> Fingerprints:
    """Forms 1-3 of the module docstring for ``spec``."""
    withheld = value_withheld(spec)
    marks: dict[str, Any] = {}
    if withheld:
        marks["value"] = WITHHELD
    if spec.value is not None and spec.kind in _CERTIFICATE_KINDS:
        marks["confide_explicit_certificate"] = 2
    compact: dict[str, Any] = spec.model_dump(
        mode="json", by_alias=True, exclude=set(NOT_DECLARED), exclude_defaults=True
    )
    current = _sha256({"fingerprint": _FORM, "declaration": {**compact, **marks}})
    accepted = {current}
    value_hashed = None
    if compact.keys() <= WHOLE_DUMP_FIELDS:
        whole = {k: v for k, v in declaration(spec).items() if k in WHOLE_DUMP_FIELDS}
        accepted.add(_sha256({**whole, **marks}))
        if withheld:
            value_hashed = _sha256(whole)
            accepted.add(value_hashed)
    return Fingerprints(current, frozenset(accepted), withheld, value_hashed)
