"""A CAS version's identity and code identity: what successor approvals name and retirements
match on (docs/cas.md "Retiring the old version", "Retiring a version on its own").

Shared by :mod:`confide.cas.successor` (hand-overs, their retirements) and
:mod:`confide.cas.retirement` (retirements on their own); :mod:`confide.cas.successor`
re-exports the names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from confide.errors import AppraisalError, ParseError
from confide.policy.canonical import jcs
from confide.verify.result import ClaimValue, Platform

__all__ = [
    "CODE_CLAIMS",
    "EVENT_RETIRED",
    "check_claims",
    "claim_text",
    "claim_text_ok",
    "code_identity",
    "identity_digest",
]

EVENT_RETIRED = "successor-version-retired"  # after a hand-over, or a retirement on its own
_MAX_CLAIM = 256
_CLAIM_TEXT = re.compile(r"[0-9a-z_.:-]{1,256}")


def claim_text(value: ClaimValue) -> str:
    """The text an approval names a claim value by: lower-case for strings (the hex of
    measurements), decimal for integers, ``true``/``false`` for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.lower()
    return json.dumps(value, sort_keys=True)  # not an identity claim type: never matches a text


CODE_CLAIMS: Mapping[Platform, tuple[str, ...]] = {
    # docs/cas.md "Retiring the old version": the identity claims that measure the CAS's code,
    # per platform; a retirement matches on these only, so the retired code launched with
    # other host-set claims is still retired.
    Platform.SIMULATED: ("measurement",),  # the dev CAS's code measurement is all there is
    # MRENCLAVE measures the enclave's code and initial data; MRSIGNER, ISVPRODID/ISVSVN and
    # the KSS fields are what a SIGSTRUCT (anyone may sign one for the same enclave) or the
    # host's CONFIGID say, so the same enclave re-signed or configured otherwise stays retired.
    Platform.SGX: ("mr_enclave",),
    # MRTD: the TD's initial memory (the firmware); RTMR1: kernel and boot loader; RTMR2: the
    # command line and initrd (with them the root file system's hash). Left out: RTMR0 (the
    # firmware's configuration, ACPI tables that change with the host's VM shape), RTMR3 (what
    # the running guest extends), MRCONFIGID/MROWNER/MROWNERCONFIG (host-set), TD attributes.
    Platform.TDX: ("mr_td", "rtmr1", "rtmr2"),
    # The launch digest (firmware, kernel, initrd, command line, the VMSAs). Left out: the
    # guest policy, HOST_DATA, the VMPL and the ID block's fields, all set by the host at launch.
    Platform.SEV_SNP: ("measurement",),
}  # fmt: skip


def code_identity(platform: str, claims: Mapping[str, str]) -> str:
    """A version's *code* identity as one SHA-256 (hex) of RFC 8785 JSON of ``{"code",
    "platform"}``, ``code`` the :data:`CODE_CLAIMS` of ``platform`` among ``claims`` (text
    form): what a retirement matches on (docs/cas.md "Retiring the old version")."""
    names = CODE_CLAIMS.get(Platform(platform), ())
    if not names or any(n not in claims for n in names):
        raise AppraisalError(f"no code identity claims for {platform[:16]}")
    code = {n: claims[n] for n in names}
    return hashlib.sha256(jcs({"code": code, "platform": platform})).hexdigest()


def identity_digest(platform: str, claims: Mapping[str, str]) -> str:
    """A version's identity as one SHA-256 (hex) of RFC 8785 JSON of ``{"claims", "platform"}``
    (claims in :func:`claim_text` form): what a retirement names (docs/cas.md "Retiring the
    old version")."""
    return hashlib.sha256(jcs({"claims": dict(claims), "platform": platform})).hexdigest()


def claim_text_ok(value: str) -> bool:
    """Whether ``value`` is a claim's text form as an approval names it (lower-case hex or
    decimal, at most the length the CAS accepts): the CLI's check before anything is signed."""
    return _CLAIM_TEXT.fullmatch(value) is not None


def check_claims(claims: object, names: tuple[str, ...], platform: Platform, field: str, what: str) -> None:
    """``claims`` (``field`` of a ``what`` document): exactly the claims ``names`` of
    ``platform``, each in text form; a :class:`ParseError` otherwise."""
    if not isinstance(claims, dict) or set(claims) != set(names):
        raise ParseError(f"{field}: expected exactly {', '.join(names)} for {platform.value}", structure=what)
    for name, value in claims.items():
        if not isinstance(value, str) or not _CLAIM_TEXT.fullmatch(value):
            raise ParseError(
                f"{field}.{name}: expected its text (lower-case hex, or decimal), at most "
                f"{_MAX_CLAIM} characters",
                structure=what,
            )
