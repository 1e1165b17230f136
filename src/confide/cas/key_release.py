"""Attested master-key release between CAS instances: the releasing side and the rule.

A CAS that joins (``confide cas serve --join URL``, :mod:`confide.cas.join`) gets the master key
from a running CAS without the operator ever seeing it (docs/cas.md "Joining a running CAS"):

1. ``POST /v1/cas/key-release/nonce``: a single-use nonce (stateless as the attestation nonces:
   expiry, randomness and a MAC, here under a key derived for ``confide-key-release-nonce/v1``,
   so an attestation nonce is no key-release nonce and the other way round).
2. The joiner obtains evidence whose report data is :func:`key_release_binding`:
   SHA-512("confide-key-release/v1" || 0 || SPKI DER of a fresh P-256 key || nonce).
3. ``POST /v1/cas/key-release`` with platform, evidence, aux, public key and nonce.
   :meth:`KeyReleaser.release` verifies the evidence with the CAS's verifier (the ``verify``
   layer, as for services), checks the binding, and appraises it with :func:`appraise_peer`
   against the releasing CAS's *own current* evidence, verified again now. The rule is fixed:
   no option, policy or request weakens it. A joiner that differs only in its identity claims
   (another version) is released to only with the successor board's authorisation of exactly
   those claims (:meth:`confide.cas.successor.Successors.authorise`, in step 4's transaction,
   recorded as ``successor`` in the release's event). A retired version (docs/cas.md "Retiring
   the old version"; matched on its code identity) is released to by no one and releases to no
   one but a successor whose approvals retiring it still meet the board's rule (the hand-over
   again, when its answer was lost; :meth:`~confide.cas.successor.Successors.check_retired`, in
   step 4's transaction); a release whose approvals name the releasing version to retire retires
   it in that transaction.
4. In one write transaction: the nonce and the evidence are spent (single use; the ``nonces``
   and ``evidence_seen`` tables of the attestations), the database must name the key this CAS
   holds and no online rotation may be in progress, and a ``master-key-released`` event (ledger
   ``key.released``) or, for every refusal, ``master-key-release-refused`` (``key.release-
   refused``) is recorded: names, claims and hashes, never the key.
5. The answer is the master key encrypted to the joiner's key, with the release encryption of
   the attestation flow (:meth:`confide.cas.core.Cas._encrypt`: ECDH P-256, HKDF-SHA256,
   AES-256-GCM): ``{"type": "confide/master-key/v1", "master_key", "master_key_id"}``.

:func:`appraise_peer` is used by both sides: the releasing CAS appraises the joiner, and the
joiner appraises the releasing CAS before it sends anything. Every mismatch is reported.

SEV-SNP has no TCB status (its verification only checks that the VCEK certifies the report's
``REPORTED_TCB``), so the fixed rule alone would release the key to the same image on a host
whose firmware or microcode is older and vulnerable. ``cas serve --replica-min-tcb`` (parsed by
:func:`parse_replica_min_tcb`) gives the minimum SPLs an SEV-SNP peer's ``REPORTED_TCB`` must
reach (SEV-SNP ABI spec Table 23 offset 0x180, Table 3/4 ``TCB_VERSION``), compared as a
policy's ``sev-snp`` ``min_tcb`` (:func:`confide.policy.appraise.check_snp_min_tcb`); both sides
apply it: the releasing CAS to the joiner, a joiner to the releasing CAS. It is a minimum the
operator sets, not "at least this CAS's TCB": SPLs of different AMD products are not
comparable, and that rule would force equal TCBs on every host. It is one minimum for every
product, or one per product (:class:`ReplicaMinTcb`): a peer is then judged by the minimum of the
product of its verified VCEK/VLEK chain, and a peer of a product given none is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, select

from confide.cas.db import meta, raw_execute
from confide.cas.rotation import KEY_ID_META, NEXT_KEY_META
from confide.cas.verifier import check_binding
from confide.errors import (
    AppraisalError,
    BindingError,
    ConfideError,
    ConflictError,
    ParseError,
    StorageError,
    UsageError,
)
from confide.evidence.sev_snp import Product
from confide.policy.appraise import check_security, check_snp_min_tcb
from confide.policy.attestation import SnpTcbMinimum
from confide.policy.model import AttestationSecurity, Tolerance
from confide.verify.result import ClaimValue, Platform, VerifiedEvidence

if TYPE_CHECKING:
    from confide.cas.core import Cas
    from confide.cas.successor import Successors

__all__ = [
    "IDENTITY_CLAIMS",
    "KEY_RELEASE_PREFIX",
    "PAYLOAD_TYPE",
    "KeyReleaser",
    "OwnEvidence",
    "OwnTcbWatch",
    "ReplicaMinTcb",
    "appraise_peer",
    "appraise_platform",
    "identity_differences",
    "identity_of",
    "key_release_binding",
    "min_tcb_text",
    "parse_replica_min_tcb",
]

KEY_RELEASE_PREFIX = b"confide-key-release/v1\x00"
NONCE_PURPOSE = b"confide-key-release-nonce/v1"
NONCE_TTL = 60.0
PAYLOAD_TYPE = "confide/master-key/v1"
EVENT_RELEASED = "master-key-released"
EVENT_REFUSED = "master-key-release-refused"
_MAX_AUX = 8
MIN_TCB_OPTION = "--replica-min-tcb"
"""The ``cas serve`` option, and the field a peer's TCB below it is reported under."""
_MIN_TCB_REQUIRED = ("bootloader", "tee", "snp", "microcode")
_MIN_TCB_NAMES = (*_MIN_TCB_REQUIRED, "fmc")

log = logging.getLogger("confide.cas")

IDENTITY_CLAIMS: Mapping[Platform, tuple[str, ...]] = {
    # The simulated measurement of a dev CAS: its code (confide.cas.dev_measurement).
    Platform.SIMULATED: ("measurement",),
    # SGX: the enclave (MRENCLAVE), its signer and product, and what its SIGSTRUCT and KSS
    # configuration say (ISVSVN, CONFIGID/CONFIGSVN, ISVEXTPRODID, ISVFAMILYID). The debug
    # attribute is judged by check_security; the other attributes are constrained by the
    # SIGSTRUCT that MRSIGNER signed (XFRM differs between CPUs and is not compared).
    Platform.SGX: (
        "mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "config_id", "config_svn",
        "isv_ext_prod_id", "isv_family_id",
    ),
    # TDX: MR_TD (the TD's initial memory: firmware) and all four RTMRs (RTMR0 firmware
    # configuration with the ACPI tables, RTMR1 kernel and boot loader, RTMR2 command line and
    # initrd, RTMR3 what the guest extends), the host-set MRCONFIGID/MROWNER/MROWNERCONFIG and
    # the TD attributes. So a replica must be the same image in the same VM shape.
    Platform.TDX: (
        "mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config",
        "td_attributes",
    ),
    # SEV-SNP: the launch digest (image and vCPU count), the guest policy, HOST_DATA, the VMPL
    # of the requester and the ID block's identity fields.
    Platform.SEV_SNP: (
        "measurement", "policy", "host_data", "vmpl", "family_id", "image_id", "id_key_digest",
        "author_key_digest",
    ),
}  # fmt: skip
"""The claims that must be equal, per platform, for a key release (both directions). The Azure
vTPM platforms are absent on purpose: their hardware measurement is the paravisor's, the same
for every confidential VM of that Azure release, and the CAS's code is in PCRs only."""


def key_release_binding(public_key_der: bytes, nonce: bytes) -> bytes:
    """The 64 bytes of report data of a joiner's evidence:
    SHA-512("confide-key-release/v1" || 0 || SPKI DER || nonce)."""
    return hashlib.sha512(KEY_RELEASE_PREFIX + public_key_der + nonce).digest()


def identity_of(evidence: VerifiedEvidence) -> dict[str, ClaimValue]:
    """The identity claims of ``evidence`` (:data:`IDENTITY_CLAIMS`; those it has)."""
    names = IDENTITY_CLAIMS.get(evidence.platform, ())
    return {name: evidence.claims[name] for name in names if name in evidence.claims}


def _shown(value: ClaimValue) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:40] + "…"


@dataclass(frozen=True)
class ReplicaMinTcb:
    """``--replica-min-tcb``: the minimum ``REPORTED_TCB`` of SEV-SNP replicas, either one for
    every AMD product (``uniform``, the option given once without a product) or one per product
    (``per_product``, ``--replica-min-tcb PRODUCT:...`` repeated), since the SPLs of Milan, Genoa
    and Turin are numbered independently (Turin also has ``fmc``, SEV-SNP ABI spec Table 4). With
    per-product minimums a replica of a product without one is refused (fail-closed)."""

    uniform: SnpTcbMinimum | None = None
    per_product: Mapping[Product, SnpTcbMinimum] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.uniform is None) == (not self.per_product):
            raise ValueError("a ReplicaMinTcb has either one uniform minimum or per-product minimums")

    def reasons(self, evidence: VerifiedEvidence) -> tuple[str, ...]:
        """Every reason ``evidence`` (SEV-SNP, verified) does not reach its minimum: the one of
        its product, judged by :func:`confide.policy.appraise.check_snp_min_tcb`; a product
        without a minimum (per-product minimums only) is a reason of its own."""
        option = MIN_TCB_OPTION.removeprefix("--")
        if self.uniform is not None:
            return tuple(str(r) for r in check_snp_min_tcb(evidence, self.uniform, option))
        product = evidence.claims.get("product")  # from the verified VCEK/VLEK chain
        found = next(((p, m) for p, m in self.per_product.items() if p.value == product), None)
        if found is None:
            given = ", ".join(p.value.lower() for p in self.per_product)
            return (
                f"{option}: got product {_shown(product)}, expected one with a minimum (given for {given});"
                " a product without one is refused",
            )
        named, minimum = found
        return tuple(str(r) for r in check_snp_min_tcb(evidence, minimum, f"{option}[{named.value.lower()}]"))

    def text(self) -> str:
        """As the option reads it (for the log and the ledger): the uniform minimum as before,
        per-product minimums as ``product:...`` separated by spaces, in product order."""
        if self.uniform is not None:
            return _min_tcb_text(self.uniform)
        return " ".join(
            f"{p.value.lower()}:{_min_tcb_text(m)}"
            for p in Product
            if (m := self.per_product.get(p)) is not None
        )


def parse_replica_min_tcb(texts: str | Sequence[str]) -> ReplicaMinTcb:
    """``--replica-min-tcb``, given once as ``bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]`` (one
    minimum for every product, as before per-product minimums existed), or one or more times as
    ``PRODUCT:bootloader=N,...`` with PRODUCT ``milan``, ``genoa`` or ``turin`` (case
    insensitive), each product once, ``fmc`` for ``turin`` only. Both forms together, or the
    first twice, is a :class:`UsageError`."""
    items = (texts,) if isinstance(texts, str) else tuple(texts)
    if not items:
        raise UsageError(f"{MIN_TCB_OPTION}: got no value, expected at least one")
    uniform: SnpTcbMinimum | None = None
    per_product: dict[Product, SnpTcbMinimum] = {}
    for text in items:
        head, colon, rest = text.partition(":")
        if not colon:
            if uniform is not None or len(items) > 1:
                raise UsageError(
                    f"{MIN_TCB_OPTION}: got {len(items)} values, one without a product; give it once"
                    " without a product (every product) or once per product as PRODUCT:bootloader=N,..."
                )
            uniform = _parse_minimum(text)
            continue
        product = next((p for p in Product if p.value.lower() == head.strip().lower()), None)
        if product is None:
            raise UsageError(
                f"{MIN_TCB_OPTION}: got product {head.strip()[:20]!r}, expected milan, genoa or turin"
            )
        if product in per_product:
            raise UsageError(
                f"{MIN_TCB_OPTION}: got {product.value.lower()} twice, expected each product once"
            )
        minimum = _parse_minimum(rest)
        if minimum.fmc is not None and product is not Product.TURIN:
            raise UsageError(
                f"{MIN_TCB_OPTION}: got fmc for {product.value.lower()}, expected fmc only for turin"
                " (SEV-SNP ABI spec Table 4: only Turin's TCB_VERSION has an FMC SPL)"
            )
        per_product[product] = minimum
    return ReplicaMinTcb(uniform=uniform, per_product=per_product)


def _parse_minimum(text: str) -> SnpTcbMinimum:
    """``bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]``: the four SPLs every SEV-SNP product
    has, ``fmc`` (Turin only, SEV-SNP ABI spec Table 4) optional, each a decimal 0 to 255 (one
    byte of ``TCB_VERSION``), each once. Anything else is a :class:`UsageError`."""
    expected = (
        "expected [PRODUCT:]bootloader=N,tee=N,snp=N,microcode=N[,fmc=N] with each N a decimal 0 to 255"
        " (the SPLs of REPORTED_TCB)"
    )
    shown = repr(text[:80])
    values: dict[str, int] = {}
    for item in text.split(","):
        name, sep, number = item.strip().partition("=")
        name, number = name.strip(), number.strip()
        if not sep or name not in _MIN_TCB_NAMES:
            raise UsageError(f"{MIN_TCB_OPTION}: got {shown}, {expected}")
        if name in values:
            raise UsageError(f"{MIN_TCB_OPTION}: got {shown}, {name} given twice; {expected}")
        if not number.isascii() or not number.isdigit() or len(number) > 3 or int(number) > 0xFF:
            raise UsageError(f"{MIN_TCB_OPTION}: got {name}={number[:20]!r}, {expected}")
        values[name] = int(number)
    missing = [n for n in _MIN_TCB_REQUIRED if n not in values]
    if missing:
        raise UsageError(f"{MIN_TCB_OPTION}: got {shown}, {', '.join(missing)} missing; {expected}")
    return SnpTcbMinimum(**values)


def _min_tcb_text(minimum: SnpTcbMinimum) -> str:
    return ",".join(f"{n}={getattr(minimum, n)}" for n in _MIN_TCB_NAMES if getattr(minimum, n) is not None)


def min_tcb_text(minimum: ReplicaMinTcb) -> str:
    """``minimum`` as :func:`parse_replica_min_tcb` reads it (for the log and the ledger)."""
    return minimum.text()


def appraise_peer(
    own: VerifiedEvidence, peer: VerifiedEvidence, *, min_tcb: ReplicaMinTcb | None = None
) -> tuple[str, ...]:
    """Whether ``peer`` (verified) may share this CAS's master key, given ``own``, this CAS's
    own evidence (verified): every reason it may not, empty when it may.

    1. ``own`` is on a platform of :data:`IDENTITY_CLAIMS`, and ``peer`` on the same one
       (simulated evidence only ever matches simulated evidence);
    2. ``peer`` is acceptable under a policy's ``security.attestation`` without tolerances
       (:func:`confide.policy.appraise.check_security`): not debug, TCB status UpToDate, no
       advisory; the only tolerance is ``simulation``, and only when both are simulated; with
       ``min_tcb`` (``--replica-min-tcb``), SEV-SNP evidence's ``REPORTED_TCB`` reaches it in
       every component given (:func:`confide.policy.appraise.check_snp_min_tcb`);
    3. every identity claim of the platform is present in both and equal
       (:func:`identity_differences`; a successor version differs only there)."""
    reasons = appraise_platform(own, peer, min_tcb=min_tcb)
    if own.platform not in IDENTITY_CLAIMS or peer.platform is not own.platform:
        return reasons
    return reasons + identity_differences(own, peer)


def appraise_platform(
    own: VerifiedEvidence, peer: VerifiedEvidence, *, min_tcb: ReplicaMinTcb | None = None
) -> tuple[str, ...]:
    """Steps 1 and 2 of :func:`appraise_peer`: what a successor version must pass as well."""
    reasons: list[str] = []
    names = IDENTITY_CLAIMS.get(own.platform)
    if names is None:
        known = ", ".join(p.value for p in IDENTITY_CLAIMS)
        return (f"this CAS runs on {own.platform}; the master key is released only between CAS on {known}",)
    if peer.platform is not own.platform:
        return (f"platform: got {peer.platform}, expected {own.platform} (this CAS's)",)
    tolerate = (Tolerance.SIMULATION,) if own.simulated and peer.simulated else ()
    security_reasons, _ = check_security(peer, AttestationSecurity(tolerate=tolerate))
    reasons += [str(r) for r in security_reasons]
    if min_tcb is not None and peer.platform is Platform.SEV_SNP:
        reasons += min_tcb.reasons(peer)
    return tuple(reasons)


def identity_differences(own: VerifiedEvidence, peer: VerifiedEvidence) -> tuple[str, ...]:
    """Step 3 of :func:`appraise_peer`: every identity claim that is not the same in both."""
    reasons: list[str] = []
    for name in IDENTITY_CLAIMS.get(own.platform, ()):
        if name not in own.claims:
            reasons.append(f"{name}: this CAS's own evidence has no such claim")
        elif name not in peer.claims:
            reasons.append(f"{name}: missing, expected {_shown(own.claims[name])} (this CAS's)")
        elif not _equal(own.claims[name], peer.claims[name]):
            reasons.append(
                f"{name}: got {_shown(peer.claims[name])}, expected {_shown(own.claims[name])} (this CAS's)"
            )
    return tuple(reasons)


def _equal(a: ClaimValue, b: ClaimValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, str) and isinstance(b, str)):
        return type(a) is type(b) and a == b
    return hmac.compare_digest(a.lower().encode(), b.lower().encode())


OwnEvidence = Callable[[datetime], VerifiedEvidence]
"""This CAS's own current evidence, verified at the given time (raises when it cannot be)."""

EVENT_OWN_BELOW = "cas-own-tcb-below-replica-min-tcb"
EVENT_OWN_MET = "cas-own-tcb-meets-replica-min-tcb"


class OwnTcbWatch:
    """``--replica-min-tcb`` judged against this CAS's own SEV-SNP evidence (docs/cas.md
    "Joining a running CAS", "Its own host"): at start and again after every refresh of that
    evidence (:attr:`confide.cas.own_evidence.CasEvidence.on_refresh`). Below it, this CAS's key
    is released to no replica on a host like its own and, with ``--join``, it obtained the key
    from a peer of a TCB it would not accept itself. Logged and shown, not refused: the operator
    may be raising the minimum ahead of a firmware update.

    :attr:`below` is ``True`` when the own ``REPORTED_TCB`` is below the minimum of its product
    (or, with per-product minimums, its product has none; :meth:`ReplicaMinTcb.reasons`),
    ``False`` when it reaches it, and ``None`` while not judged (own evidence not SEV-SNP, or not
    verified at the first judgement). ``/metrics`` shows it as
    ``confide_cas_own_tcb_below_replica_min_tcb``. A judgement whose own evidence does not
    verify (:class:`ConfideError`) leaves :attr:`below` as it was, as does any other error (logged
    as ``cas-own-tcb-not-judged`` with its class only). Logged only when the state
    changes: ``cas-own-tcb-below-replica-min-tcb`` (warning) on becoming below, including at
    start, ``cas-own-tcb-meets-replica-min-tcb`` (info) on becoming met after being below;
    judgements that find the same state log nothing. Never raises (it runs in the refresher)."""

    def __init__(
        self, own: OwnEvidence, minimum: ReplicaMinTcb, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.own, self.minimum = own, minimum
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()  # one judgement at a time: state and log stay in order
        self.below: bool | None = None
        self.judgements = 0  # judgements that reached a state (SEV-SNP evidence verified)

    def judge(self) -> bool | None:
        """Judge the own evidence now; returns :attr:`below` afterwards."""
        with self._lock:
            try:
                evidence = self.own(self._clock())
            except ConfideError:  # checked before it was published; a release reports the reason
                return self.below
            except Exception as exc:  # never into the refresher: logged, state kept
                log.warning(json.dumps({"event": "cas-own-tcb-not-judged", "error": type(exc).__name__}))
                return self.below
            if evidence.platform is not Platform.SEV_SNP:
                return self.below
            reasons = self.minimum.reasons(evidence)
            before, self.below = self.below, bool(reasons)
            self.judgements += 1
            if self.below == before or (before is None and not self.below):
                return self.below
            summary = {
                "product": evidence.claims.get("product"),
                "reported_tcb": evidence.claims.get("reported_tcb"),
                "replica_min_tcb": self.minimum.text(),
            }
            if self.below:
                log.warning(
                    json.dumps(
                        {
                            "event": EVENT_OWN_BELOW,
                            **summary,
                            "reasons": list(reasons),
                            "reason": "this CAS's own host does not reach --replica-min-tcb: replicas on"
                            " hosts like it are refused the master key",
                        }
                    )
                )
            else:
                log.info(json.dumps({"event": EVENT_OWN_MET, **summary}))
            return self.below


class _Parsed:
    __slots__ = ("aux", "evidence", "key", "key_der", "nonce", "platform")

    def __init__(
        self,
        platform: Platform,
        evidence: bytes,
        aux: dict[str, bytes],
        key_der: bytes,
        key: ec.EllipticCurvePublicKey,
        nonce: bytes,
    ) -> None:
        self.platform, self.evidence, self.aux = platform, evidence, aux
        self.key_der, self.key, self.nonce = key_der, key, nonce


_FIELDS = frozenset({"platform", "evidence", "aux", "public_key", "nonce"})
_REQUIRED = frozenset({"platform", "evidence", "public_key", "nonce"})
_HEX = frozenset("0123456789abcdef")


def _b64(value: Any) -> bytes:
    """A JSON string of canonical base64 (RFC 4648 §4; §3.5: the unused bits of the last
    character zero, so one text per byte string); raises ValueError for anything else (another
    JSON type, white space, missing or extra padding)."""
    if not isinstance(value, str):
        raise ValueError
    raw = base64.b64decode(value, validate=True)
    if base64.b64encode(raw).decode() != value:
        raise ValueError
    return raw


def _parse(request: Any) -> _Parsed:
    """The request as docs/cas.md "Joining a running CAS" step 5 describes it, read strictly (the
    fuzz4 campaign: ``str()`` of any JSON value was taken, so ``"aux": ""``, a number as the
    nonce or white space in it were second texts of a request): an object of exactly those
    fields (``aux`` optional), strings where strings are meant, canonical base64, a nonce of
    lower-case hex, ``aux`` an object of at most 8 names to canonical base64."""
    what = "key-release request"
    expected = (
        "expected platform, evidence (base64), aux (names to base64), public_key (base64 DER), nonce (hex)"
    )
    if not isinstance(request, dict):
        raise ParseError("expected a JSON object", structure=what)
    if set(request) - _FIELDS or not set(request) >= _REQUIRED:
        raise ParseError(expected, structure=what)
    try:
        raw_aux = request.get("aux", {})
        if not isinstance(raw_aux, dict) or len(raw_aux) > _MAX_AUX:
            raise TypeError
        if not isinstance(request["platform"], str):
            raise TypeError
        platform = Platform(request["platform"])
        evidence = _b64(request["evidence"])
        aux = {str(k): _b64(v) for k, v in raw_aux.items()}
        key_der = _b64(request["public_key"])
        nonce_text = request["nonce"]
        if not isinstance(nonce_text, str) or not set(nonce_text) <= _HEX:
            raise TypeError
        nonce = bytes.fromhex(nonce_text)
    except (KeyError, ValueError, TypeError, binascii.Error):
        raise ParseError(expected, structure=what) from None
    try:
        key = serialization.load_der_public_key(key_der)
    except (ValueError, UnsupportedAlgorithm):
        raise ParseError("public_key is not a DER SubjectPublicKeyInfo", structure=what) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ParseError("public_key must be a P-256 key", structure=what)
    return _Parsed(platform, evidence, aux, key_der, key, nonce)


class KeyReleaser:
    """The releasing side (module docstring) for ``cas``; ``own`` gives this CAS's own current
    evidence, verified (``None``: the CAS has none, and releases its key to no one).
    ``successors``: the successor board and its approvals (:mod:`confide.cas.successor`), which
    may authorise a joiner whose identity claims differ from this CAS's (``None``: never).
    ``min_tcb``: ``--replica-min-tcb``, the minimum ``REPORTED_TCB`` of an SEV-SNP joiner
    (:func:`appraise_peer`; ``None``: its TCB is not judged), recorded in every event."""

    def __init__(
        self,
        cas: Cas,
        own: OwnEvidence | None,
        *,
        successors: Successors | None = None,
        clock: Callable[[], float] = time.time,
        min_tcb: ReplicaMinTcb | None = None,
    ) -> None:
        self.cas, self.own, self.successors, self.clock = cas, own, successors, clock
        self.min_tcb = min_tcb
        self.own_tcb: OwnTcbWatch | None = None  # with min_tcb and own evidence (confide.cas.server)
        self._nonce_key = cas.sealer.derive_key(NONCE_PURPOSE)

    # --- nonces (as Cas.new_nonce: expiry ms || 16 random bytes || MAC) ------------------------

    def new_nonce(self) -> str:
        expiry = int((self.clock() + NONCE_TTL) * 1000).to_bytes(8, "big")
        body = expiry + os.urandom(16)
        return (body + self._mac(body)).hex()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._nonce_key, body, hashlib.sha256).digest()[:8]

    def _check_nonce(self, nonce: bytes) -> float:
        if len(nonce) != 32 or not hmac.compare_digest(self._mac(nonce[:24]), nonce[24:]):
            raise BindingError("the nonce was not issued by this CAS for a key release")
        expires = int.from_bytes(nonce[:8], "big") / 1000
        if expires < self.clock():
            raise BindingError("the key-release nonce has expired")
        return expires

    def _spend(self, conn: Connection, nonce: bytes, digest: str) -> None:
        """Spend the nonce and the evidence in the write transaction (single use); the rows
        are swept with the attestations' (confide.cas.core.Cas._use_once)."""
        expires = self._check_nonce(nonce)
        spent = raw_execute(
            conn,
            "INSERT INTO nonces (nonce, expires_at, used) VALUES (?, ?, 1) ON CONFLICT DO NOTHING",
            (nonce.hex(), expires),
        )
        if spent.rowcount != 1:
            raise BindingError("the key-release nonce was already used (replay)")
        seen = raw_execute(
            conn,
            "INSERT INTO evidence_seen (digest, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (digest, self.clock()),
        )
        if seen.rowcount != 1:
            raise BindingError("this evidence was presented before (replay)")

    # --- the release -------------------------------------------------------------------------

    def release(self, request: Any) -> dict[str, Any]:
        """Verify, bind, appraise, record, and return the master key encrypted to the joiner's
        key; every refusal after parsing is recorded and raised. A malformed request is a
        :class:`ParseError` (not recorded)."""
        parsed = _parse(request)
        digest = hashlib.sha256(parsed.evidence).hexdigest()
        outcome: dict[str, Any] = {
            "platform": parsed.platform.value,
            "evidence_sha256": digest,
            "public_key_sha256": hashlib.sha256(parsed.key_der).hexdigest(),
        }
        if self.min_tcb is not None:
            outcome["replica_min_tcb"] = min_tcb_text(self.min_tcb)
        at = datetime.fromtimestamp(self.clock(), UTC)
        try:
            self._check_nonce(parsed.nonce)
            if self.own is None:
                raise UsageError(
                    "this CAS has no evidence of its own (started without --tee or --dev): it releases"
                    " its master key to no one"
                )
            own = self.own(at)
            outcome["releaser"] = {"platform": own.platform.value, "identity": identity_of(own)}
            peer = self.cas.verifier.verify(parsed.platform, parsed.evidence, parsed.aux, at=at)
            outcome.update(
                {
                    "simulated": peer.simulated,
                    "identity": identity_of(peer),
                    "tcb_status": peer.tcb_status.value if peer.tcb_status else None,
                    "advisories": list(peer.advisory_ids),
                }
            )
            if "reported_tcb" in peer.claims:  # SEV-SNP: the SPLs --replica-min-tcb judges
                outcome["reported_tcb"] = peer.claims["reported_tcb"]
            check_binding(peer, key_release_binding(parsed.key_der, parsed.nonce))
            reasons = appraise_peer(own, peer, min_tcb=self.min_tcb)
            # Another version (only its identity claims differ) needs the successor board's
            # authorisation, checked in the write transaction (docs/cas.md "Handing over to a
            # successor version"); anything else is refused here.
            other_version = bool(reasons) and not appraise_platform(own, peer, min_tcb=self.min_tcb)
            if reasons and (not other_version or self.successors is None):
                raise AppraisalError(
                    "the joining CAS is not the same CAS as this one: " + "; ".join(reasons),
                    problems=list(reasons),
                )
        except ConfideError as exc:
            self._refuse(parsed, digest, outcome, exc)
            raise
        try:
            with self.cas.db.write() as conn:
                self._spend(conn, parsed.nonce, digest)
                key_id = self._current_key_id(conn)
                # The bytes are taken here, where the database names this key and no rotation is in
                # progress: an online rotation that starts and finishes (dropping the old key)
                # after this commit but before the reply must not turn the recorded release into
                # a KeyError; the answer is the key this transaction released (step 5).
                master_key = self._export(key_id)
                own_retired = False
                if self.successors is not None:
                    # docs/cas.md "Retiring the old version": a retired version is released to by
                    # no one, and releases to no one but the successor its retiring approvals
                    # name (again, when the answer of the hand-over that retired it was lost).
                    own_retired = self.successors.check_retired(conn, own, peer, successor=other_version)
                if other_version and self.successors is not None:
                    try:
                        outcome["successor"] = self.successors.authorise(
                            conn, peer, key_id, self.clock(), own, retired=own_retired
                        )
                    except AppraisalError as exc:
                        raise AppraisalError(
                            "the joining CAS is not the same CAS as this one: "
                            + "; ".join(reasons)
                            + "; "
                            + exc.message,
                            problems=[*reasons, exc.message],
                        ) from None
                outcome.update({"verdict": "released", "master_key_id": key_id})
                self.cas.events.record(conn, EVENT_RELEASED, None, outcome)
                if self.successors is not None and outcome.get("successor", {}).get("retire"):
                    # The board's quorum approved retiring this (the releasing) version too.
                    retired = self.successors.retire(conn, own, outcome["successor"], self.clock())
                    log.info(json.dumps({"event": "successor-version-retired", **retired}))
        except ConfideError as exc:
            self._refuse(parsed, digest, outcome, exc)
            raise
        log.info(json.dumps({"event": EVENT_RELEASED, **outcome}))
        payload = {
            "type": PAYLOAD_TYPE,
            "master_key": base64.b64encode(master_key).decode(),
            "master_key_id": key_id,
        }
        return self.cas._encrypt(payload, parsed.key, parsed.nonce, parsed.key_der)

    def _current_key_id(self, conn: Connection) -> str:
        wanted = (KEY_ID_META, NEXT_KEY_META)
        query = select(meta.c.key, meta.c.value).where(meta.c.key.in_(wanted))
        rows = {r.key: r.value for r in conn.execute(query)}
        if rows.get(NEXT_KEY_META) is not None:
            raise ConflictError(
                "an online master-key rotation is in progress: the master key is released after it"
            )
        key_id = rows.get(KEY_ID_META)
        if key_id is None or key_id not in self.cas.sealer.key_ids:
            raise StorageError("the database does not name the master key this CAS holds")
        return str(key_id)

    def _export(self, key_id: str) -> bytes:
        try:
            return self.cas.sealer.export_key(key_id)
        except KeyError:  # dropped between _current_key_id and here: a rotation outside this database
            raise ConflictError(
                f"master key {key_id} was retired by a rotation during the release: ask again"
            ) from None

    def _refuse(self, parsed: _Parsed, digest: str, outcome: dict[str, Any], exc: ConfideError) -> None:
        outcome.update({"verdict": "refused", "reason_class": exc.kind, "reason": exc.message[:500]})
        try:
            with self.cas.db.write() as conn:
                with contextlib.suppress(ConfideError):  # spent all the same (a replay is recorded too)
                    self._spend(conn, parsed.nonce, digest)
                self.cas.events.record(conn, EVENT_REFUSED, None, outcome)
        finally:
            log.warning(json.dumps({"event": EVENT_REFUSED, **outcome}))
