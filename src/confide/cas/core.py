"""The CAS itself, without HTTP: governance, secrets, attestation and release.

Every public method is one transaction: it checks, changes state and records the event in the
same database transaction (``confide.cas.db``), or changes nothing.

Signed documents (all signatures are Ed25519 over RFC 8785 canonical JSON of the document
without its ``signature`` member; ``type`` names the purpose):

- ``confide/policy/v2``: ``{"type", "policy": <policy JSON>, "cas": <hex SHA-256 of the CAS's
  TLS SubjectPublicKeyInfo>, "signer": <base64 key>}`` (taken only by the one CAS it names;
  ``confide/policy/v1``, which named no CAS, is refused and read only from ledger entries and
  ``policies`` rows recorded before; the version's hash is the policy's alone, so the same
  policy has the same hash at every CAS)
- ``confide/approval/v2``: ``{"type", "name", "hash", "cas": <hex SHA-256 of the CAS's TLS
  SubjectPublicKeyInfo>, "signer"}`` (counted only at the one CAS it names; ``confide/approval/v1``,
  which named no CAS, is refused and read only from ledger entries recorded before)
- ``confide/read/v3``: ``{"type", "name", "nonce": <hex read nonce from POST /v1/read/nonce>,
  "cas": <hex SHA-256 of the CAS's TLS SubjectPublicKeyInfo>, "route": "show" | "events" |
  "crl" | "list", "signer"}`` (``list``: the policies the signer may read, ``name`` ""; served
  once, while its nonce is valid, at the one CAS and for the one route and policy its nonce was
  issued for; ``confide/read/v2``, which carried a time and no nonce and
  could be sent again for five minutes, is refused with a message to upgrade the client)
- ``confide/revoke/v2``: ``{"type", "name", "secret", "reason", "serial" | "all_valid", "time",
  "cas", "signer"}`` (valid 5 minutes, at the one CAS it names, carried out once;
  :mod:`confide.cas.owner_revocation`; ``confide/revoke/v1``, which named no CAS, is refused)

The successor board's documents (:mod:`confide.cas.successor`, :mod:`confide.cas.board_change`,
:mod:`confide.cas.retirement`) name the CAS by its ``master_key_id`` instead: they are for every
CAS holding that master key (the replicas of one deployment), and for no other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, and_, insert, select, update

from confide import jsonstrict
from confide.cas import db as t
from confide.cas.crl import (
    CESSATION,
    DEFAULT_CRL_VALIDITY,
    MAX_CRL_VALIDITY,
    MIN_CRL_VALIDITY,
    SUPERSEDED,
    CrlRow,
    RuntimeCertificate,
    crl_due,
    crl_pem,
    current_crl,
    generated_ca,
    issue_crls,
    issued_by_generated_ca,
    not_after,
    record_runtime_certificates,
    revoke,
    revoke_runtime_certificates,
    runtime_certificate,
)
from confide.cas.db import Database, EventSink, raw_connection, raw_execute, raw_executemany
from confide.cas.declaration import WITHHELD, declaration, fingerprints
from confide.cas.documents import (
    APPROVAL_TYPE,
    APPROVAL_V1_TYPE,
    POLICY_TYPE,
    POLICY_V1_TYPE,
    READ_NONCE_PATH,
    READ_TYPE,
    READ_V2_TYPE,
    READABLE_PATH,
    sign_document,
    spki_sha256,
    verify_signed,
)
from confide.cas.entry_types import ENTRY_TYPES
from confide.cas.head_index import HeadRefused, HeadView, check_leaf, reread_behind_ledger
from confide.cas.owner_revocation import REVOKE_TYPE, REVOKE_V1_TYPE, parse_request, refusal, revoke_request
from confide.cas.policy_auth import Head, PolicyAuth, PolicyRowsAltered, Version
from confide.cas.policy_rows import open_column, seal_column
from confide.cas.release_crypto import (
    RELEASE_INFO,
    _is_p256_spki,
    _release_key_der,
    _spki,
    binding_report_data,
    decrypt_release,
)
from confide.cas.renewal import RenewalDue, RenewalSchedule, renew_due, renew_policy
from confide.cas.secret_heads import SecretHeads
from confide.cas.secrets import (
    CA_PATH,
    CERTIFICATE_KINDS,
    CRL_PATH,
    OCSP_PATH,
    Published,
    Sealer,
    SecretValue,
    ca_path_lengths,
    crl_distribution_id,
    crl_distribution_id_of,
    generate,
    identity_of,
    issue_to_runtime,
    public_part,
    render,
    renewable,
    template_value,
)
from confide.cas.verifier import CollateralJob, GpuEvidence, Prefetched, check_binding, split_gpu_aux
from confide.errors import (
    AccessDeniedError,
    AppraisalError,
    BindingError,
    ConfideError,
    ConflictError,
    ParseError,
    PolicyError,
    StorageError,
    UsageError,
)
from confide.hmacsha256 import HmacSha256
from confide.identity import PublicIdentity
from confide.jsonencode import encoder
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.db import Conn
from confide.ledger.db import execute as ledger_execute
from confide.ledger.encoding import Entry
from confide.ledger.note import parse_note
from confide.ledger.store import MAX_ENTRY_SIZE, Ledger
from confide.lru import Lru
from confide.policy import Policy, appraise, loads_policy, policy_hash
from confide.policy._types import is_name, is_policy_name
from confide.policy.access import (
    RequireAll,
    RequireAtLeast,
    SignerRule,
    is_authorized,
    placeholder_names,
    resolve_rules,
)
from confide.policy.canonical import canonical_json, jcs
from confide.policy.model import ImageVolume, UpdatePolicy
from confide.policy.placeholders import (
    Context,
    Encoding,
    Placeholder,
    RenderBudget,
    encoding_for,
    find_placeholders,
    render_command,
    render_environment,
    render_file,
)
from confide.policy.secret import Secret, generation_order
from confide.verify.result import Platform, VerifiedEvidence

if TYPE_CHECKING:
    from confide.cas.key_release import KeyReleaser

__all__ = [
    "APPROVAL_TYPE",
    "APPROVAL_V1_TYPE",
    "POLICY_TYPE",
    "POLICY_V1_TYPE",
    "READABLE_PATH",
    "READ_NONCE_PATH",
    "READ_TYPE",
    "READ_V2_TYPE",
    "Cas",
    "EvidenceVerifier",
    "binding_report_data",
    "check_binding",
    "decrypt_release",
    "is_opaque_refusal",
    "sign_document",
    "spki_sha256",
    "verify_signed",
]

READ_RULES_CACHE = 1 << 16
"""Policy versions whose read rules the CAS keeps in memory (``GET /v1/read/policies`` looks at
every current policy: docs/cas.md "Reading a policy")."""
READ_WINDOW = 300  # seconds: the freshness window of revocation requests and withdrawals
# What a read request is for (its ``route``): the answers differ, so one request reads one of them.
# ``list``: the names of the policies its signer may read (no policy: its ``name`` is "").
READ_ROUTES = ("show", "events", "crl", "list")
READ_NONCE_PURPOSE = b"confide-read-nonce/v1"
NONCE_TTL = 60.0
SWEEP_GRACE = NONCE_TTL
"""Seconds a spent nonce's row is kept past its expiry (docs/cas.md "Reading a policy"): a
replica whose clock is ahead, or a clock stepped back, must not sweep a row that a clock behind
still needs (the nonce is refused by its MAC'd expiry only once that clock has passed it)."""
SESSION_TTL = 24 * 3600.0
# At most this many imports between a volume's owner and its final importer (docs/cas.md,
# "Volumes shared between policies"): a longer chain is refused, never followed.
MAX_VOLUME_CHAIN = 8
# json.dumps(config) for the release's plaintext, its C encoder made once (confide.jsonencode)
_RELEASE_JSON = encoder()
_FETCHING_PLATFORMS = frozenset(
    p.value
    for p in (Platform.SEV_SNP, Platform.NVIDIA_GPU, Platform.SGX, Platform.TDX, Platform.AZURE_TDX_VTPM)
)
"""Evidence whose verification may fetch or read collateral (``--kds``, ``--nvidia-ocsp``,
``--collateral URL|FILE|DIR``); so may composite requests' GPU reports (``gpu<k>`` aux keys)."""
_DCAP_PLATFORMS = frozenset(p.value for p in (Platform.SGX, Platform.TDX, Platform.AZURE_TDX_VTPM))


class EvidenceVerifier(Protocol):
    """One method: verify evidence of ``platform`` at ``at`` (collateral is the verifier's
    business: a configured source, or ``aux`` blobs sent with the evidence; ``prefetched``: what
    its ``collateral_job``, if it has one, fetched for this attestation)."""

    def verify(
        self,
        platform: Platform,
        evidence: bytes,
        aux: dict[str, bytes],
        *,
        at: datetime,
        prefetched: Prefetched | None = None,
    ) -> VerifiedEvidence: ...


def _explicit_volume_key(key: object) -> bool:
    # a placeholder ($$SCONE::name$$) names a generated secret; anything else is the key itself
    return isinstance(key, str) and "$$" not in key


def holds_explicit_values(policy: Policy) -> bool:
    """Whether the policy's document carries secret material: an explicit secret ``value`` or
    an explicit volume or service ``fspf_key`` (docs/policy.md). Its submission then stays out
    of the ledger (only its hash goes in), as the ledger is read by every reader of the policy."""
    return (
        any(sec.value is not None for sec in policy.secrets)
        or any(_explicit_volume_key(vol.fspf_key) for vol in policy.volumes)
        or any(_explicit_volume_key(svc.fspf_key) for svc in policy.services)
    )


def withhold_explicit_values(document: dict[str, Any]) -> dict[str, Any]:
    """The canonical policy JSON as ``policy show`` returns it: every explicit secret
    ``value`` and explicit volume or service ``fspf_key`` replaced by :data:`WITHHELD` (docs/cas.md,
    command-line contract: "never secret values"; a reader need not be the owner)."""
    for sec in document.get("secrets") or []:
        if isinstance(sec, dict) and "value" in sec:
            sec["value"] = WITHHELD
    for vol in [*(document.get("volumes") or []), *(document.get("services") or [])]:
        if isinstance(vol, dict) and _explicit_volume_key(vol.get("fspf_key")):
            vol["fspf_key"] = WITHHELD
    return document


@dataclass(frozen=True)
class VolumeSource:
    """Where a volume a policy mounts comes from (docs/cas.md, "Volumes shared between
    policies"): the owner's ``(policy, volume)``, whose key and tag it uses; for an import, the
    composed ``update_policy`` of every export on the way (``exported``, None for an own
    volume), the re-exporting importers between the owner and this policy (``via``, from the
    owner on), the exporter of an ``ephemeral`` link (``ephemeral_by``), and the versions of
    the exporters that were checked (``heads``, policy name to hash)."""

    policy: str
    volume: str
    exported: UpdatePolicy | None = None
    via: tuple[tuple[str, str], ...] = ()
    ephemeral_by: str | None = None
    heads: tuple[tuple[str, str], ...] = ()

    def links(self, policy: str, volume: str, digest: str) -> list[dict[str, str]]:
        """The resolved chain as frozen at release (docs/policy.md, "Frozen at release"): the
        mounting policy's ``(policy, volume, hash)`` first, then each exporter's towards the
        owner (last); an own volume's is the one entry."""
        out = [{"policy": policy, "volume": volume, "hash": digest}]
        if self.exported is not None:
            towards_owner = [*reversed(self.via), (self.policy, self.volume)]
            out += [
                {"policy": p, "volume": v, "hash": h}
                for (p, v), (_, h) in zip(towards_owner, self.heads, strict=True)
            ]
        return out

    def audit(self) -> dict[str, Any]:
        """The owner and the chain, for a release entry and the ledger (never a key)."""
        out: dict[str, Any] = {"owner": {"policy": self.policy, "volume": self.volume}}
        if self.via:
            out["via"] = [{"policy": p, "volume": v} for p, v in self.via]
        return out


class FrozenVolume(NamedTuple):
    """What governs a session's tag reports for one volume, as frozen at its release
    (``session_volumes``; docs/policy.md, "Frozen at release")."""

    mode: UpdatePolicy
    ephemeral_by: str | None
    links: list[dict[str, str]]
    released_tag: str
    released_generation: int
    tag: str  # the base of the session's next rollback_protected report


class SecretRow(NamedTuple):
    """The latest version of a sealed secret (``secrets`` table)."""

    policy: str
    name: str
    version: int
    kind: str
    sealed: bytes
    public: str


_LOG = logging.getLogger("confide.cas")

# Phase-1 snapshots kept (one per policy and service); docs/cas.md "Phase 1 from a snapshot".
SNAPSHOTS = 1024

# ``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"): the one answer to every
# recorded attestation refusal, and to every refused volume tag report of a session, whatever
# the reason; the reason itself goes to the ledger (attestations) and the CAS's log (both).
OPAQUE_ATTEST_REFUSAL = (
    "attestation refused (this CAS tells the attester no reason: its operator finds it in the CAS's"
    " log and ledger)"
)
OPAQUE_TAG_REFUSAL = (
    "volume tag report refused (this CAS tells the session no reason: its operator finds it in the CAS's log)"
)
# How much of a reason the ledger entry (and the log line) keeps.
REASON_CHARS = 500


def is_opaque_refusal(exc: ConfideError) -> bool:
    """Whether ``exc`` is one of the two opaque answers (docs/cas.md "Opaque refusals"): what
    ``cas serve --refusal-delay`` holds back until its deadline (confide.cas.refusal_delay).
    Only this module makes them, and only with ``--opaque-refusals``."""
    kind = type(exc)
    return (kind is AppraisalError and exc.message == OPAQUE_ATTEST_REFUSAL) or (
        kind is AccessDeniedError and exc.message == OPAQUE_TAG_REFUSAL
    )


class _Miss(Exception):
    """Phase 1 asked a snapshot for something it does not hold (read it afresh)."""


# A renewal check of a rendering: ("secret", policy, its Secret spec, version, public) or
# ("crl", policy, CA, this_update, next_update); made again whenever the rendering is reused.
_Due = tuple[str, str, Any, Any, Any]


class _Rendered(NamedTuple):
    """A service's rendered configuration, what it releases and its volume rows (``frozen``),
    and the renewal checks it made: a function of the answers it read alone (nothing issued to
    the runtime's key), so it is reused with them."""

    config: dict[str, Any]
    released: list[Any]
    frozen: tuple[tuple[object, ...], ...]
    dues: tuple[_Due, ...]
    # ``config`` as the release's plaintext JSON writes it (``_RELEASE_JSON``), once a release
    # made from this rendering has written it (:meth:`PendingAttestation._release_plaintext`)
    encoded: list[str]


class _Snapshot(NamedTuple):
    """What a phase 1 read of the CAS's state, in one read transaction: every answer (by key:
    see :class:`_Reads`) and the policy versions it loaded, and its rendering when that can be
    reused. Kept by (policy, service); ``head`` is the policy's (hash, revision) it was read at."""

    head: tuple[str, int]
    answers: dict[tuple[str, str, str], Any]
    policies: dict[tuple[str, str], Policy]
    rendered: _Rendered | None


class _Reads:
    """What phase 1 of an attestation reads of the CAS's state (policy heads, the latest secret
    rows, volume tags, current CRLs, policy versions), answered from a database connection or
    from a :class:`_Snapshot`, and the answers it got (``got``). Phase 2 reads each of them again
    inside its write transaction (:meth:`current`), so a release is only ever made from answers
    that are the current state at commit (docs/cas.md "Phase 1 from a snapshot")."""

    __slots__ = ("cas", "conn", "dues", "got", "policies", "source")

    def __init__(self, cas: Cas, conn: Connection | None, source: _Snapshot | None = None) -> None:
        self.cas, self.conn, self.source = cas, conn, source
        self.got: dict[tuple[str, str, str], Any] = {}
        self.policies: dict[tuple[str, str], Policy] = {}
        self.dues: list[_Due] = []  # the renewal checks the rendering made

    def _ask(self, key: tuple[str, str, str]) -> Any:
        if key in self.got:
            return self.got[key]
        if self.source is not None:
            if key not in self.source.answers:
                raise _Miss(key)
            value = self.source.answers[key]
        else:
            assert self.conn is not None
            value = _query(self.cas, self.conn, key)
        self.got[key] = value
        return value

    def head(self, name: str) -> tuple[str, int] | None:
        """The policy's current (hash, revision), ``None`` when there is no such policy."""
        answer: tuple[str, int] | None = self._ask(("head", name, ""))
        return answer

    def secret(self, policy: str, name: str) -> SecretRow | None:
        answer: SecretRow | None = self._ask(("secret", policy, name))
        return answer

    def tag(self, policy: str, volume: str) -> tuple[str, int] | None:
        """The volume's current (tag, generation)."""
        answer: tuple[str, int] | None = self._ask(("tag", policy, volume))
        return answer

    def crl(self, policy: str, ca: str) -> CrlRow | None:
        answer: CrlRow | None = self._ask(("crl", policy, ca))
        return answer

    def governed(self, namespace: str, name: str) -> bool:
        """Whether namespace ``namespace`` governed the creation of policy ``name``
        (:meth:`Cas._governed`)."""
        answer: bool = self._ask(("governed", namespace, name))
        return answer

    def policy(self, name: str, digest: str) -> Policy:
        """The policy version ``digest`` (immutable: the snapshot's or loaded)."""
        key = (name, digest)
        found = self.policies.get(key)
        if found is None:
            if self.source is not None:
                found = self.source.policies.get(key)
                if found is None:
                    raise _Miss(key)
            else:
                assert self.conn is not None
                found = self.cas._load(self.conn, name, digest)
            self.policies[key] = found
        return found

    def current(self, conn: Connection) -> bool:
        """Whether every answer this phase 1 used is still the database's (read in ``conn``, a
        write transaction). Each answer is read once per transaction: the attestations of a
        group commit share it (they write none of these rows, and the write lock keeps every
        other writer out until the commit)."""
        answers = self.cas._answers_in(conn)
        for key, value in self.got.items():
            now = answers.get(key, _UNREAD)
            if now is _UNREAD:
                now = answers[key] = _query(self.cas, conn, key)
            if now != value:
                return False
        return True

    def snapshot(self, policy: str, rendered: _Rendered | None) -> _Snapshot | None:
        """These answers as a snapshot, when they were read in one transaction (not from a
        snapshot) and ``policy`` exists."""
        head = self.got.get(("head", policy, ""))
        if self.source is not None or head is None:
            return None
        return _Snapshot(head, dict(self.got), dict(self.policies), rendered)


_UNREAD = object()


def _query(cas: Cas, conn: Connection, key: tuple[str, str, str]) -> Any:
    """One answer of :class:`_Reads`, from the database."""
    what, a, b = key
    if what == "head":  # verified: confide.cas.policy_auth
        head = cas.policy_auth.head(conn, a)
        return None if head is None else (head.hash, head.revision)
    if what == "secret":
        return cas._latest_secret(conn, a, b)
    if what == "tag":
        row = raw_execute(
            conn, "SELECT tag, generation FROM volume_tags WHERE policy = ? AND volume = ?", (a, b)
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))
    if what == "crl":
        return current_crl(conn, a, b)
    if what == "governed":
        return cas._governed(conn, a, b)
    raise AssertionError(what)


# What a policy's readers are shown of the events filed under its name (docs/cas.md "A policy's
# events"), by type: a whitelist, so a type in neither set is never shown (every ledger entry
# type is either here or never filed under a policy: tests/unit/test_cas_events_lineage.py).
# Events about one version, named by the payload's ``hash``: shown when that version is of the
# current policy's lineage (Cas._lineage). A competing creation of the name (a board member's
# pending creation turned ``stale`` when someone else created the name first), its approvals and
# its stale mark were filed under the name too, and are not shown.
_VERSION_EVENTS = frozenset(
    {"policy-pending", "policy-approved", "policy-stale", "policy-created", "policy-updated"}
)
# Events recorded under a policy's name only while that policy exists (its head is read in the
# recording transaction; a refusal of a creation is filed under the namespace's existing policy),
# and a name is never created twice (a head is never deleted): all the current policy's.
_POLICY_EVENTS = frozenset(
    {
        "policy-update-refused", "policy-create-refused", "revocation-refused", "secrets-generated",
        "certificates-renewed", "certificates-revoked", "crl-issued", "revocations-altered",
        "attestation", "secret-release", "export-release", "volume-tag", "volume-key",
    }
)  # fmt: skip


class _Refused(Exception):
    """A refused governance request: its transaction is rolled back, then ``event`` is recorded
    under ``filed_under`` in a transaction of its own and ``error`` raised."""

    def __init__(
        self, error: ConfideError, event: str, filed_under: str | None, payload: dict[str, Any]
    ) -> None:
        super().__init__(error.message)
        self.error, self.event, self.filed_under, self.payload = error, event, filed_under, payload


@dataclass(frozen=True)
class ApplyResult:
    name: str
    hash: str
    state: str  # "active" or "pending"
    missing: str = ""


def _decrypt_key(sealer: Sealer, row: Any) -> SecretValue:
    return sealer.unseal(row.sealed, policy=row.policy, name=row.name, version=row.version)


_CRL_ID = re.compile(r"[0-9a-f]{32}")
_READ_NONCE = re.compile(r"[0-9a-f]{64}")  # a read nonce (32 bytes), as new_read_nonce writes it
RunWrite = Callable[[Callable[[Connection], str | None]], str | None]
"""Runs a write job in a write transaction and returns its result (the read nonce's spend)."""
_VOLUME_TAG = re.compile(r"[0-9a-f]{64}")  # a volume tag (docs/volume-format.md)
_FULL_HASH = re.compile(r"[0-9a-f]{64}")  # a policy version (docs/policy.md "The policy hash")
_DECLARED_TAG = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")  # or a policy's fspf_tag (16 or 32 bytes)


class Cas:
    def __init__(
        self,
        database: Database,
        sealer: Sealer,
        verifier: EvidenceVerifier,
        *,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        crl_validity: float = DEFAULT_CRL_VALIDITY,
        public_url: str | None = None,
        tls_spki_sha256: str,
    ) -> None:
        if not (math.isfinite(crl_validity) and MIN_CRL_VALIDITY <= crl_validity <= MAX_CRL_VALIDITY):
            raise UsageError(
                f"CRL validity: got {crl_validity!r}, expected {MIN_CRL_VALIDITY} to "
                f"{MAX_CRL_VALIDITY} seconds"
            )
        self.crl_validity = crl_validity
        # ``cas serve --public-url``: the base of the CRL distribution points (parse_public_url).
        self.public_url = public_url
        # spki_sha256 of the TLS certificate this CAS serves: a read request names it (``cas``).
        self.tls_spki_sha256 = tls_spki_sha256
        self.db = database
        self.sealer = sealer
        self.verifier = verifier
        self.events = events or EventSink()
        self.clock = clock
        self.nonce_key = sealer.derive_key(b"confide-nonce/v1")
        # Read nonces' MAC key: its own purpose, so no attestation or key-release nonce is a read
        # nonce and the other way round (docs/cas.md "Reading a policy").
        self.read_nonce_key = sealer.derive_key(READ_NONCE_PURPOSE)
        self._policies: Lru[tuple[str, str], Policy] = Lru(256)
        # The read rules of policy versions, by (name, hash): what GET /v1/read/policies asks of
        # every current policy, without parsing each document again (docs/cas.md "Reading a
        # policy"; a version's rules never change, its $$SCONE::k$$ entries are resolved per read).
        self._read_rules: Lru[tuple[str, str], tuple[Any, ...]] = Lru(READ_RULES_CACHE)
        # Policy heads and version states, MAC'd under the master key (confide.cas.policy_auth).
        self.policy_auth = PolicyAuth(sealer, db=database)
        # Each secret's current version, MAC'd under the master key (confide.cas.secret_heads).
        # Each checked against the ledger's newest version of it when not verified before; a scan
        # that finds a newer one drops the verified head (confide.cas.secret_ledger).
        self.secret_heads = SecretHeads(sealer, ledger=self._ledger_view)
        self.policy_auth.index.on_secrets = self.secret_heads.forget
        # Unsealed values by (policy, name, version, sealed bytes), in memory only: the rows
        # stay sealed at rest, and a row sealed anew (new version, another master key) misses.
        self._unsealed: Lru[tuple[str, str, int, bytes], SecretValue] = Lru(1024)
        # What phase 1 read, by (policy, service) (docs/cas.md "Phase 1 from a snapshot").
        self._snapshots: Lru[tuple[str, str], _Snapshot] = Lru(SNAPSHOTS)
        # The answers phase 2 read in the current write transaction (_Reads.current).
        self._txn_answers: tuple[object, dict[tuple[str, str, str], Any]] = (None, {})
        self._next_sweep = 0.0
        self.renewals = RenewalSchedule()
        # docs/cas.md "Joining a running CAS": set by confide.cas.server.prepare.
        self.key_release: KeyReleaser | None = None  # releases the master key to attested CAS
        self.master_key_in_memory = False  # the key came from an attested CAS and has no file
        # ``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"): every recorded
        # attestation refusal is answered with OPAQUE_ATTEST_REFUSAL (AppraisalError), every
        # access refusal (any PolicyError but a ConflictError) of a volume tag report with
        # OPAQUE_TAG_REFUSAL (AccessDeniedError); the reasons are logged (and attestation
        # refusals recorded in the ledger, as always). Set by confide.cas.server.
        self.opaque_refusals = False

    # -- governance ---------------------------------------------------------------------------
    def apply(self, submission: Any) -> ApplyResult:
        if isinstance(submission, dict) and submission.get("type") == POLICY_V1_TYPE:
            raise ParseError(
                f"a {POLICY_V1_TYPE} submission names no CAS, so it could be sent again to any CAS; "
                f"submit it again with a current client ({POLICY_TYPE} names this CAS)",
                structure=POLICY_V1_TYPE,
            )
        body, signer = verify_signed(submission, POLICY_TYPE)
        policy_obj, cas = body.get("policy"), body.get("cas")
        if not isinstance(cas, str):
            raise ParseError("cas must be a string", structure=POLICY_TYPE, field="cas")
        # The CAS the signer submitted to (its TLS key, as approvals and read requests name it):
        # a submission signed for one CAS (a staging CAS whose policy tolerates simulation, say)
        # is refused at another with the same policy history, whether it would create a free
        # name, update under a plain list or count as the signer's voice before a board. Checked
        # before the policy is parsed or any stored policy looked at, so the refusal is the same
        # for an existing and a missing policy, and nothing is stored or recorded. Public values:
        # a plain comparison leaks nothing.
        if cas != self.tls_spki_sha256:
            raise AccessDeniedError(
                f"policy submission is for another CAS (TLS key SHA-256 {cas[:16]!r}…, this CAS has "
                f"{self.tls_spki_sha256[:16]}…)"
            )
        if not isinstance(policy_obj, dict):
            raise ParseError("policy must be a JSON object", structure=POLICY_TYPE, field="policy")
        policy = loads_policy(json.dumps(policy_obj), source=f"policy {policy_obj.get('name', '?')!s:.64}")
        digest = policy_hash(policy)
        document = canonical_json(policy).decode()
        now = self.clock()
        try:
            return self._apply(submission, policy, digest, document, signer.fingerprint, now)
        except _Refused as refused:
            # Recorded in a transaction of its own: the refused change's was rolled back.
            with self.db.write() as conn:
                self.events.record(conn, refused.event, refused.filed_under, refused.payload)
            raise refused.error from None

    def _apply(
        self, submission: Any, policy: Policy, digest: str, document: str, submitter: str, now: float
    ) -> ApplyResult:
        with self.db.write() as conn:
            head = self.policy_auth.head(conn, policy.name)
            # Who may submit is decided first: an identity that may not create or update the
            # policy learns neither its current hash nor which versions were submitted.
            if head is None:
                creator = submitter
                state = self._creation_state(conn, policy.name, submitter)
                if policy.predecessor is not None:
                    raise ConflictError(
                        f"policy {policy.name} does not exist; a new policy has no predecessor"
                    )
            else:
                creator = head.creator
                current = self._load(conn, policy.name, head.hash)
                rules = self._rules_in_force(conn, policy.name, head.hash, current.access_policy.update)
                if is_authorized(rules, {submitter}, creator=creator):
                    state = "active"
                elif _mentions(rules, submitter, creator):
                    state = "pending"
                else:
                    raise _Refused(
                        _submission_refused(submitter, policy.name),
                        "policy-update-refused",
                        policy.name,
                        {"signer": submitter},
                    )
                if policy.predecessor is None:
                    # docs/cas.md "Policies and governance", Update: an update names the version
                    # it replaces; a file without one is a creation of a name that is taken.
                    raise ConflictError(
                        f"policy {policy.name} exists: an update must name the version it replaces; "
                        f"add `predecessor: {head.hash}` (the current version) to the file"
                    )
                if policy.predecessor != head.hash:
                    raise ConflictError(
                        f"policy {policy.name}: predecessor is {policy.predecessor}, the current "
                        f"version is {head.hash} (someone else updated it first; rebase your change)"
                    )
            existing = conn.execute(
                select(t.policies.c.state).where(
                    and_(t.policies.c.name == policy.name, t.policies.c.hash == digest)
                )
            ).first()
            if existing is not None:
                raise ConflictError(
                    f"policy {policy.name} version {digest[:16]}… was already submitted ({existing.state})"
                )
            seq = 1 + (
                conn.execute(
                    select(t.policies.c.seq)
                    .where(t.policies.c.name == policy.name)
                    .order_by(t.policies.c.seq.desc())
                    .limit(1)
                ).scalar()
                or 0
            )
            conn.execute(
                insert(t.policies).values(
                    name=policy.name, hash=digest, seq=seq, predecessor=policy.predecessor,
                    # sealed at rest (confide.cas.policy_rows, docs/cas.md "Policies at rest")
                    document=seal_column(self.sealer, "document", policy.name, digest, document),
                    submission=seal_column(
                        self.sealer, "submission", policy.name, digest, json.dumps(submission, sort_keys=True)
                    ),
                    submitter=submitter, creator=creator, state=state, created_at=now,
                )
            )  # fmt: skip
            # its state and who submitted it, MAC'd (confide.cas.policy_auth)
            self.policy_auth.put_version(
                conn, Version(policy.name, digest, seq, policy.predecessor, submitter, creator, state)
            )
            payload: dict[str, Any] = {
                "hash": digest, "predecessor": policy.predecessor, "signer": submitter,
                "submission_sha256": hashlib.sha256(jcs(submission)).hexdigest(),
            }  # fmt: skip
            if holds_explicit_values(policy):
                # The document carries explicit secret values or volume keys: the ledger records
                # its hash only (docs/cas.md "Transparency").
                payload["submission_withheld"] = "explicit secret values"
            else:
                payload["submission"] = jcs(submission).decode()
                _check_submission_record(policy.name, payload)
            if state == "active":
                self._activate(conn, policy, digest, creator, head is None, payload)
            else:
                self.events.record(conn, "policy-pending", policy.name, payload)
        return ApplyResult(policy.name, digest, state)

    def _namespace_owner(self, conn: Connection, name: str) -> tuple[str, Head] | None:
        """The nearest existing policy whose name is a namespace prefix of ``name`` (``a/b`` for
        ``a/b/c`` if it exists, else ``a``), with its head (verified); ``None`` for a free name."""
        parts = name.split("/")
        for depth in range(len(parts) - 1, 0, -1):
            parent = "/".join(parts[:depth])
            head = self.policy_auth.head(conn, parent)
            if head is not None:
                return parent, head
        return None

    def _creation_rules(self, conn: Connection, name: str) -> tuple[str, Head, tuple[Any, ...]] | None:
        """Who may create ``name``: its namespace owner's ``access_policy.create_sessions`` (the
        ``update`` rules when absent), with the owner's name and head; ``None`` when no policy
        owns the namespace (first come, as for top-level names)."""
        owner = self._namespace_owner(conn, name)
        if owner is None:
            return None
        parent, head = owner
        rules = self._load(conn, parent, head.hash).access_policy.effective_create_sessions
        return parent, head, self._rules_in_force(conn, parent, head.hash, rules)

    def _governed(self, conn: Connection, namespace: str, name: str) -> bool:
        """Whether the existing policy ``name`` (named ``namespace/...``) was created as the
        policy ``namespace`` governs (docs/cas.md "Secrets", ``export: {namespace: N}``): its
        creation, and that of each existing policy between it and ``namespace``, is one the
        ``create_sessions`` rules in force of the nearest existing policy above it allow, its
        submitter alone or with the approvals stored for it (a board's). A name taken first come
        before ``namespace`` was claimed, or created below such a name, is not governed, and so
        receives nothing a namespace export shares. Judged by the rules as they are now: a
        creator the namespace no longer allows is not governed either (fails closed)."""
        current = name
        head = self.policy_auth.head(conn, current)
        while head is not None:
            found = self._creation_rules(conn, current)
            if found is None:
                return False
            parent, parent_head, rules = found
            root = head.hash
            while (up := self.policy_auth.predecessor(conn, current, root)) is not None:
                root = up
            signers = self._approvers(conn, current, root)
            version = self.policy_auth.version(conn, current, root)
            if version is None:
                return False
            signers.add(version.submitter)
            if not is_authorized(rules, signers, creator=parent_head.creator):
                return False
            if parent == namespace:
                return True
            current, head = parent, parent_head
        return False

    def _creation_state(self, conn: Connection, name: str, submitter: str) -> str:
        """A new policy's state: active, pending (a board of the namespace must approve it), or
        refused with :class:`AccessDeniedError` (recorded under the namespace)."""
        found = self._creation_rules(conn, name)
        if found is None:
            return "active"
        parent, head, rules = found
        if is_authorized(rules, {submitter}, creator=head.creator):
            return "active"
        if _mentions(rules, submitter, head.creator):
            return "pending"
        # Filed under the namespace: the name itself does not exist (and may never).
        raise _Refused(
            _submission_refused(submitter, name),
            "policy-create-refused",
            parent,
            {"signer": submitter, "name": name},
        )

    def approve(self, approval: Any) -> ApplyResult:
        if isinstance(approval, dict) and approval.get("type") == APPROVAL_V1_TYPE:
            raise ParseError(
                f"a {APPROVAL_V1_TYPE} approval names no CAS, so it could count at any CAS where the "
                f"version is pending; approve again with a current client ({APPROVAL_TYPE} names this CAS)",
                structure=APPROVAL_V1_TYPE,
            )
        body, signer = verify_signed(approval, APPROVAL_TYPE)
        name, digest, cas = body.get("name"), body.get("hash"), body.get("cas")
        if not isinstance(name, str) or not isinstance(digest, str) or not isinstance(cas, str):
            raise ParseError("name, hash and cas must be strings", structure=APPROVAL_TYPE)
        # The CAS the member approved at (its TLS key, as a read request names it): an approval
        # given at one CAS (a staging CAS, another deployment with the same policy history) is
        # refused at another, before any policy is looked at, so the refusal says nothing of it.
        # Public values: a plain comparison leaks nothing.
        if cas != self.tls_spki_sha256:
            raise AccessDeniedError(
                f"approval is for another CAS (TLS key SHA-256 {cas[:16]!r}…, this CAS has "
                f"{self.tls_spki_sha256[:16]}…)"
            )
        with self.db.write() as conn:
            outcome = self._approve(conn, approval, signer, name, digest)
        if isinstance(outcome, ConfideError):
            raise outcome
        return outcome

    def _approve(
        self, conn: Connection, approval: Any, signer: Any, name: str, digest: str
    ) -> ApplyResult | ConfideError:
        # Both verified under the master key (confide.cas.policy_auth): a state or a submitter
        # the operator wrote is a PolicyRowsAltered, never a decision.
        row = self.policy_auth.version(conn, name, digest)
        head = self.policy_auth.head(conn, name)
        # The board first: an identity on no board that decides this name learns nothing of it
        # (whether the policy or the version exists, its state), as ``policy show`` says nothing
        # to a non-reader, and changes nothing (no stale mark). A creation (a version without
        # predecessor, or an unknown version of a name that does not exist) is decided by the
        # namespace's create_sessions board, read now (it may be nearer than at submission);
        # an update by the current version's update board.
        creation = row.predecessor is None if row is not None else head is None
        rules: tuple[Any, ...] = ()
        rules_creator = ""
        if creation:
            found = self._creation_rules(conn, name)
            if found is not None:
                _parent, parent_head, rules = found
                rules_creator = parent_head.creator
        elif head is not None:
            rules_creator = head.creator
            rules = self._rules_in_force(
                conn, name, head.hash, self._load(conn, name, head.hash).access_policy.update
            )
        if not rules or not _mentions(rules, signer.fingerprint, rules_creator):
            raise AccessDeniedError(
                f"identity {signer.fingerprint[:16]}… may not approve version {digest[:16]}… of policy "
                f"{name} (it is on no board that decides it)"
            )
        if row is None:
            if not _FULL_HASH.fullmatch(digest):
                # The messages show versions cut to 16 digits and "…": a board member who copies
                # one is told a version is named by its full hash (docs/cas.md, approvals).
                raise ConflictError(
                    f"no submitted version {digest[:80]!r} of policy {name}: a version is named by its "
                    "full hash, 64 lower-case hex digits (the one `confide policy apply` printed)"
                )
            raise ConflictError(f"no submitted version {digest[:16]}… of policy {name}")
        if row.state != "pending":
            raise ConflictError(f"policy {name} version {digest[:16]}… is {row.state}, not pending approval")
        if (head.hash if head is not None else None) != row.predecessor:
            self.policy_auth.put_version(conn, row._replace(state="stale"))
            self.events.record(conn, "policy-stale", name, {"hash": digest})
            # Returned, not raised: the stale mark and its event are committed.
            return ConflictError(
                f"policy {name} changed since version {digest[:16]}… was submitted; "
                "it can no longer be applied"
            )
        # Not stale: an update's predecessor is the head, a creation's name is still free.
        creator = row.creator if head is None else head.creator
        # The signer's approval with its MAC, replacing any row stored under its name (one the
        # operator wrote would otherwise keep the genuine approval out, and count for nothing).
        self.policy_auth.put_approval(
            conn, name, digest, signer.fingerprint, json.dumps(approval, sort_keys=True), self.clock()
        )
        self.events.record(
            conn, "policy-approved", name,
            {"hash": digest, "signer": signer.fingerprint, "approval": jcs(approval).decode()},
        )  # fmt: skip
        approvers = self._approvers(conn, name, digest)
        approvers.add(row.submitter)
        if not is_authorized(rules, approvers, creator=rules_creator):
            return ApplyResult(name, digest, "pending")
        policy = self._load(conn, name, digest)
        self.policy_auth.put_version(conn, row._replace(state="active"))
        event = {"hash": digest, "predecessor": row.predecessor, "approvers": sorted(approvers)}
        self._activate(conn, policy, digest, creator, creation, event)
        return ApplyResult(name, digest, "active")

    def _approvers(self, conn: Connection, name: str, digest: str) -> set[str]:
        """The signers of the stored approvals of version ``digest`` of ``name`` that count: each
        row's MAC verified (confide.cas.policy_auth: a CAS holding the master key accepted it,
        for this name, hash and signer) and its document verified again (an Ed25519 signature by
        the row's signer over a ``confide/approval/v2`` document naming this name and hash). A
        row the operator wrote or copied from another version, signer or CAS is not counted
        (logged, ``policy-approval-not-counted``; no values)."""
        rows = raw_execute(
            conn,
            "SELECT signer, document, key_id, mac FROM approvals WHERE name = ? AND hash = ?",
            (name, digest),
        ).fetchall()
        counted: set[str] = set()
        for signer_fp, document, key_id, mac in rows:
            fine = self.policy_auth.approval_verifies(name, digest, signer_fp, document, key_id, mac)
            try:
                body, signer = verify_signed(jsonstrict.loads(str(document)), APPROVAL_TYPE)
            except (ValueError, RecursionError, ConfideError):
                fine = False
            else:
                named = (signer.fingerprint, body.get("name"), body.get("hash"))
                fine = fine and named == (signer_fp, name, digest)
            if fine:
                counted.add(str(signer_fp))
            else:
                _LOG.warning(
                    json.dumps({"event": "policy-approval-not-counted", "policy": name[:128],
                                "hash": digest, "signer": str(signer_fp)[:64]})
                )  # fmt: skip
        return counted

    def _load(self, conn: Connection, name: str, digest: str, *, keep: bool = True) -> Policy:
        # A version's hash names its content and versions are never deleted, so the parsed,
        # validated object is cached by (name, hash) and the document is read only on a miss.
        # ``keep=False``: not cached (a walk over every policy must not evict the hot ones).
        cached = self._policies.get((name, digest))
        if cached is not None:
            return cached
        row = raw_execute(
            conn, "SELECT document FROM policies WHERE name = ? AND hash = ?", (name, digest)
        ).fetchone()
        if row is None:
            raise ConflictError(f"policy {name} version {digest} not found")
        document = open_column(self.sealer, "document", name, digest, row[0])
        cached = loads_policy(document, source=f"stored policy {name}", stored=True)
        if policy_hash(cached) != digest:
            raise ConflictError(f"stored policy {name} does not hash to {digest}: the database was altered")
        if keep:
            self._policies.put((name, digest), cached)
        return cached

    def _activate(
        self,
        conn: Connection,
        policy: Policy,
        digest: str,
        creator: str,
        created: bool,
        event: dict[str, Any],
    ) -> None:
        """Make version ``digest`` of ``policy`` current and record ``event`` (its payload, naming
        ``digest`` as ``hash``) as ``policy-created`` / ``policy-updated`` right after the head
        moves, before anything in this transaction reads the head again: a head is current only
        when that policy's latest such event names it (confide.cas.policy_auth)."""
        now = self.clock()
        previous: Policy | None = None
        auth = self.policy_auth
        if created:
            auth.put_head(conn, policy.name, Head(digest, 0, creator), now, new=True)
        else:
            old_head = auth.head(conn, policy.name)  # verified, as every version superseded here
            if old_head is None:
                raise PolicyRowsAltered(policy.name, "current version (policy_heads)")
            previous = self._load(conn, policy.name, old_head.hash)
            active = raw_execute(
                conn, "SELECT hash FROM policies WHERE name = ? AND state = 'active' AND hash != ?",
                (policy.name, digest),
            ).fetchall()  # fmt: skip
            for (old,) in active:
                version = auth.version(conn, policy.name, str(old))
                assert version is not None  # read in this transaction
                auth.put_version(conn, version._replace(state="superseded"))
            auth.put_head(conn, policy.name, old_head._replace(hash=digest), now, new=False)
        assert event["hash"] == digest
        self.events.record(conn, "policy-created" if created else "policy-updated", policy.name, event)
        self._generate_secrets(conn, policy, digest, previous)
        self._check_access_identities(conn, policy, digest)
        # A CA whose OCSP signer this version changed gets its certificate re-issued with the
        # same key and subject (keyUsage digitalSignature with ``signer: ca``; docs/cas.md
        # "OCSP"), with what it signed, in this transaction: nothing is regenerated or revoked.
        renew_policy(self, conn, policy.name, now, at_update=True)
        # Revocation (docs/cas.md "Revocation"): every generated CA's CRL reflects what this
        # version superseded or removed, in this transaction.
        issue_crls(self, conn, policy, digest, now)
        self._prepare_volumes(conn, policy, digest, previous)

    def _access_identity(self, conn: Connection, policy: Policy, digest: str, name: str) -> str:
        """The identity (fingerprint) an access entry ``$$SCONE::name$$`` of ``policy`` (at
        ``digest``) names: the public key of the current value of its secret ``name``
        (:func:`confide.cas.secrets.identity_of`; docs/policy.md "access_policy"), the policy's
        own or, for an import, the exporter's, which must export it to this version or declare
        it ``export_public`` (a public key is all that is used). The current value is that of
        the version in force: secrets are generated when a version is activated, so a version
        being judged has none yet and cannot change the identities that judge it. A value is
        read from its sealed row, never from the clear ``public`` column, which whoever controls
        the database could rewrite. :class:`PolicyError` (:class:`AccessDeniedError` for an
        import not exported) when it names no identity."""
        try:
            spec = policy.secret(name)
        except KeyError:
            raise PolicyError(f"secret {name} is not declared by {policy.name}") from None
        owner, secret = policy.name, name
        if spec.import_ is not None:
            imp = spec.import_
            reads = _Reads(self, conn)
            exported: Secret | None = None
            try:
                exporter, _ = self._exporter(reads, imp.session, imp.session_hash, "")
                exported = exporter.secret(imp.secret)
            except (AccessDeniedError, KeyError):
                exported = None
            if exported is None or not (
                exported.export_public
                or any(self._exports_to(reads, e, policy.name, digest) for e in exported.export)
            ):
                # One message whether the exporter does not exist, is not at the pinned version,
                # has no such secret or does not share it: whoever submits a policy learns
                # nothing of another's (refusals say nothing of existence, docs/cas.md).
                raise AccessDeniedError(
                    f"import {name}: no policy {imp.session} (at the version the import pins, if it "
                    f"pins one) shares a secret {imp.secret} with this version of {policy.name}"
                )
            spec, owner, secret = exported, imp.session, imp.secret
        if spec.issue_to_runtime or spec.import_ is not None:
            what = "issued to runtimes" if spec.issue_to_runtime else "itself an import"
            raise PolicyError(f"secret {owner}/{secret} is {what}: the CAS holds no value of it")
        row = self._latest_secret(conn, owner, secret)
        if row is None:
            raise PolicyError(f"secret {owner}/{secret} has no value")
        try:
            return identity_of(self._unseal(row))
        except PolicyError as exc:
            raise PolicyError(f"secret {owner}/{secret}: {exc.message}") from None

    def _rules_in_force(
        self, conn: Connection, name: str, digest: str, rules: Sequence[Any]
    ) -> tuple[Any, ...]:
        """One operation's ``rules`` of version ``digest`` of policy ``name`` (the version in
        force), with each ``$$SCONE::k$$`` entry replaced by the identity it names now
        (:meth:`_access_identity`), as :func:`is_authorized` and :func:`_mentions` are to judge
        them (sconedocs "Governance": the secret's value "at permission evaluation time"). The
        version's own entries were checked when it was activated; one that names no identity
        now (an exporter stopped exporting the key, a version stored before the check) stands
        for no one: it grants nothing and makes no one a board member."""
        rules = tuple(rules)
        if not placeholder_names(rules):
            return rules
        policy = self._load(conn, name, digest)

        def resolve(secret: str) -> str | None:
            try:
                return self._access_identity(conn, policy, digest, secret)
            except ConfideError:
                return None

        return resolve_rules(rules, resolve)

    def _check_access_identities(self, conn: Connection, policy: Policy, digest: str) -> None:
        """Every ``$$SCONE::k$$`` entry of ``policy``'s access rules (version ``digest``, being
        activated, its secrets generated) names an identity (:meth:`_access_identity`), else
        :class:`PolicyError` and the activation is rolled back: an entry that would grant
        nothing is refused rather than kept (docs/policy.md "access_policy"). The loader checks
        what the policy alone tells (kinds, key types, explicit values); this checks the values,
        imports included."""
        ap = policy.access_policy
        for secret in placeholder_names((*ap.read, *ap.update, *(ap.create_sessions or ()))):
            try:
                self._access_identity(conn, policy, digest, secret)
            except ConfideError as exc:
                raise PolicyError(
                    f"policy {policy.name}: access_policy entry $$SCONE::{secret}$$ names no identity: "
                    f"{exc.message}"
                ) from None

    def _prepare_volumes(
        self, conn: Connection, policy: Policy, digest: str, previous: Policy | None
    ) -> None:
        """Each volume gets a key (the policy's ``fspf_key``, else generated and kept across
        updates) and a current tag (the policy's ``fspf_tag`` when it declares a new one: one
        the previous version did not declare for this volume; an update that keeps its
        ``fspf_tag`` keeps the tag the services reported since, docs/cas.md "Volumes shared
        between policies"). The keys' new versions are recorded in one ``volume-key`` event
        (ledger ``volume.key``: names, versions and where each key came from, never a key)."""
        keys: list[dict[str, Any]] = []
        declared_before = {
            vol.name: vol.fspf_tag for vol in (previous.volumes if previous else ()) if vol.import_ is None
        }
        key_before = {
            vol.name: vol.fspf_key for vol in (previous.volumes if previous else ()) if vol.import_ is None
        }
        for vol in policy.volumes:
            if vol.import_ is not None:
                continue
            key_name = f"volume/{vol.name}"
            row = self._latest_secret(conn, policy.name, key_name)
            public = json.loads(row.public) if row is not None else {}
            declared_key = vol.fspf_key if vol.fspf_key and "$$" not in vol.fspf_key else None
            # ``fspf_key: $$SCONE::k$$``: the key is secret k's current value (docs/cas.md
            # "Volumes shared between policies"), a new volume-key version when k has a new one.
            # A key generated before this was honoured, under the same placeholder, is kept:
            # data the services sealed with it would otherwise become unreadable.
            placeholder = bool(vol.fspf_key) and not declared_key
            legacy = (
                placeholder
                and row is not None
                and "key_from" not in public
                and public.get("declared_key_sha256") is None
                and key_before.get(vol.name) == vol.fspf_key
            )
            named = self._volume_key_secret(conn, policy, vol) if placeholder and not legacy else None
            if (
                row is None
                or (declared_key and public.get("declared_key_sha256") != _sha(declared_key))
                or (named is not None and public.get("key_from") != named[1])
            ):
                if named is not None:
                    data, source = named[0], "secret"
                elif declared_key:
                    data, source = bytes.fromhex(declared_key), "declared"
                else:
                    data, source = os.urandom(32), "generated"
                value = SecretValue("volume-key", data)
                version = (row.version + 1) if row is not None else 1
                meta: dict[str, Any] = {
                    "kind": "volume-key",
                    "declared_key_sha256": _sha(declared_key) if declared_key else None,
                }
                if named is not None:
                    meta["key_from"] = named[1]
                conn.execute(
                    insert(t.secrets).values(
                        policy=policy.name, name=key_name, version=version, kind="volume-key",
                        sealed=self.sealer.seal(value, policy=policy.name, name=key_name, version=version),
                        public=json.dumps(meta), created_at=self.clock(),
                    )
                )  # fmt: skip
                self._put_secret_head(conn, policy.name, key_name, version)
                key: dict[str, Any] = {"volume": vol.name, "name": key_name, "version": version,
                                       "source": source}  # fmt: skip
                if named is not None:
                    key["key_from"] = named[1]
                keys.append(key)
            current = conn.execute(
                select(t.volume_tags).where(
                    and_(t.volume_tags.c.policy == policy.name, t.volume_tags.c.volume == vol.name)
                )
            ).first()
            declared = vol.fspf_tag or ""
            if current is None:
                conn.execute(
                    insert(t.volume_tags).values(
                        policy=policy.name,
                        volume=vol.name,
                        tag=declared,
                        generation=0,
                        updated_at=self.clock(),
                    )
                )
                self.events.record(
                    conn,
                    "volume-tag",
                    policy.name,
                    {"volume": vol.name, "tag": declared, "generation": 0, "by": digest},
                )
            elif (
                vol.fspf_tag and vol.fspf_tag != current.tag and declared_before.get(vol.name) != vol.fspf_tag
            ):
                conn.execute(
                    update(t.volume_tags)
                    .where(and_(t.volume_tags.c.policy == policy.name, t.volume_tags.c.volume == vol.name))
                    .values(tag=vol.fspf_tag, generation=current.generation + 1, updated_at=self.clock())
                )
                self.events.record(
                    conn,
                    "volume-tag",
                    policy.name,
                    {
                        "volume": vol.name,
                        "tag": vol.fspf_tag,
                        "generation": current.generation + 1,
                        "by": digest,
                    },
                )
        if keys:  # each version a ledger entry names (confide.cas.secret_ledger)
            self.events.record(conn, "volume-key", policy.name, {"hash": digest, "keys": keys})

    def _volume_key_secret(self, conn: Connection, policy: Policy, vol: Any) -> tuple[bytes, dict[str, Any]]:
        """The key a volume's ``fspf_key: $$SCONE::k$$`` names: the current value of the
        policy's own binary secret k (generated in this transaction when new or changed), 32
        bytes, with ``{"secret": k, "version": n}``. An imported k is refused (``PolicyError``):
        the volume's key must not change under its owner when the exporter changes k."""
        (found,) = find_placeholders(vol.fspf_key)
        spec = policy.secret(found.name)
        where = f"volume {vol.name} of {policy.name}: fspf_key $$SCONE::{found.name}$$"
        if spec.import_ is not None:
            raise PolicyError(f"{where} names an imported secret; a volume key must be the policy's own")
        row = self._latest_secret(conn, policy.name, found.name)
        if row is None or row.kind != "binary":
            raise PolicyError(f"{where}: expected a binary secret of the policy")
        data = self._unseal(row).data
        if len(data) != 32:
            raise PolicyError(f"{where}: got a {len(data)}-byte secret, expected 32 bytes (an AES-256 key)")
        return data, {"secret": found.name, "version": row.version}

    def update_volume_tag(self, request: Any) -> dict[str, Any]:
        """A running, attested service reports its volume's new tag (docs/policy.md, "Frozen at
        release"; docs/cas.md, "Volume update policies"). Access is checked as of now: the
        service still mounts the volume and every export on the chain still names its importer,
        resolving to the owner the session was released; the session's mode as released judges
        the update: ``rollback_protected``: the update starts from the tag the session was given
        (or its own last report) and compare-and-swap on the current tag, so neither an old copy
        nor a concurrent writer's update is lost; ``ephemeral``: refused (nothing of such a
        service's changes persists, whatever its runtime does); ``no_rollback_protection``:
        recorded without comparing (last writer wins). A session opened before schema 4 has no
        frozen mode and is judged by the current policies' (as before)."""
        if not isinstance(request, dict):
            raise ParseError("expected a JSON object", structure="volume tag update")
        try:
            policy_name, volume = str(request["policy"]), str(request["volume"])
            token = bytes.fromhex(str(request["session"]))
            old_tag, new_tag = request["old_tag"], request["new_tag"]
            # docs/volume-format.md: a volume's tag is the lower-case hex SHA-256 of its sealed
            # manifest, what confide run reports; the tag it started from may also be a
            # declared SCONE FSPF tag (16 bytes) or none yet (""). Any other text (an empty new
            # tag, which the next release would take as "no tag yet, accept any authentic
            # version", or one of any length for the ledger) is malformed.
            if not (isinstance(new_tag, str) and _VOLUME_TAG.fullmatch(new_tag)):
                raise ValueError
            if not (isinstance(old_tag, str) and (old_tag == "" or _DECLARED_TAG.fullmatch(old_tag))):
                raise ValueError
        except (KeyError, ValueError, TypeError):
            raise ParseError(
                "expected policy, volume, session (hex), old_tag (the tag started from: 32 or 64"
                " lower-case hex digits, or empty), new_tag (64 lower-case hex digits)",
                structure="volume tag update",
            ) from None
        try:
            return self._update_volume_tag(policy_name, volume, token, old_tag, new_tag)
        except PolicyError as exc:
            if not self.opaque_refusals or isinstance(exc, ConflictError):
                raise
            # docs/cas.md "Opaque refusals": whether the session's policy still has its service,
            # whether the service mounts the volume, what the export chain holds (its links, a
            # cycle or a chain too long: PolicyError), the volume's mode, and whether there is
            # such a session at all: one answer for all of them. A conflict on the tag itself
            # (the session's own volume, found mounted) still says so.
            _LOG.warning(
                json.dumps(
                    {"event": "volume-tag-refused", "reason_class": exc.kind,
                     "reason": exc.message[:REASON_CHARS]}
                )
            )  # fmt: skip
            raise AccessDeniedError(OPAQUE_TAG_REFUSAL) from None

    def _update_volume_tag(
        self, policy_name: str, volume: str, token: bytes, old_tag: str, new_tag: str
    ) -> dict[str, Any]:
        """:meth:`update_volume_tag` once the request parsed."""
        token_sha256 = hashlib.sha256(token).hexdigest()
        with self.db.write() as conn:
            session = conn.execute(
                select(t.sessions).where(t.sessions.c.token_sha256 == token_sha256)
            ).first()
            if session is None or session.expires_at < self.clock() or session.policy != policy_name:
                raise AccessDeniedError("no attested session of this policy presented that token")
            head = self.policy_auth.head(conn, policy_name)
            if head is None:  # a session's policy is never deleted
                raise PolicyRowsAltered(policy_name, "current version (policy_heads)")
            policy = self._load(conn, policy_name, head.hash)
            try:
                service = policy.service(session.service)
            except KeyError:  # removed by a policy update since the release: the session is void
                raise AccessDeniedError(f"policy {policy_name} has no service {session.service}") from None
            mount = next((v for v in _service_volumes(policy, service) if v.name == volume), None)
            if mount is None:
                raise AccessDeniedError(f"service {session.service} does not mount volume {volume}")
            # An imported volume's tag is the owner's: every export on the chain is checked as
            # of now (docs/cas.md, "Volumes shared between policies"): a withdrawn link refuses
            # the report even under a frozen mode (docs/policy.md, "Frozen at release").
            source = self._volume_source(_Reads(self, conn), policy, head.hash, volume)
            owner, owned, exported = source.policy, source.volume, source.exported
            current_mode = _update_policy(mount, exported)
            frozen = self._frozen_volume(conn, session, token_sha256, volume, (owner, owned))
            if frozen is None:  # opened before schema 4: judged by the current policies
                mode, ephemeral_by = current_mode, source.ephemeral_by
            else:
                mode, ephemeral_by = frozen.mode, frozen.ephemeral_by
            if mode is UpdatePolicy.EPHEMERAL:
                reason = f"the export by {ephemeral_by}" if ephemeral_by is not None else "its image"
                raise AccessDeniedError(
                    f"volume {volume} is ephemeral for service {session.service} (update_policy of "
                    f"{reason}): its changes are never persisted, so its tag cannot be updated"
                    + (" (the mode frozen at its release)" if frozen is not None else "")
                )
            row = conn.execute(
                select(t.volume_tags).where(
                    and_(t.volume_tags.c.policy == owner, t.volume_tags.c.volume == owned)
                )
            ).first()
            if row is None:
                raise ConflictError(f"policy {owner} has no volume {owned}")
            if mode is UpdatePolicy.ROLLBACK_PROTECTED:
                # Compare-and-swap on the current tag, then the tag chain: a session builds only
                # on the version it was given (or its own last report), never on another
                # writer's that it claims as its base.
                if not hmac.compare_digest(row.tag, old_tag):
                    raise ConflictError(
                        f"volume {volume}: the update starts from tag {old_tag[:16]}…, "
                        f"the current tag is {row.tag[:16]}…"
                    )
                if frozen is not None and not hmac.compare_digest(frozen.tag, old_tag):
                    raise ConflictError(
                        f"volume {volume}: the update starts from tag {old_tag[:16]}…, this session "
                        f"was given tag {frozen.tag[:16]}… (at its release or its own last report)"
                    )
            generation = row.generation + 1
            conn.execute(
                update(t.volume_tags)
                .where(and_(t.volume_tags.c.policy == owner, t.volume_tags.c.volume == owned))
                .values(tag=new_tag, generation=generation, updated_at=self.clock())
            )
            # "previous" is the tag this update replaced; under no_rollback_protection the version
            # the service started from ("based_on") may be another, older one.
            payload = {"volume": owned, "tag": new_tag, "previous": row.tag, "generation": generation,
                       "service": session.service, "measurement": session.measurement,
                       "update_policy": mode.value}  # fmt: skip
            if old_tag != row.tag:
                payload["based_on"] = old_tag
            if exported is not None:
                payload["by"] = {"policy": policy_name, "volume": volume}
                if source.via:
                    payload["via"] = source.audit()["via"]
            # Which rules judged it (docs/cas.md, "Volume update policies"): the mode frozen at
            # the release, with the tag and policy versions released, or the current one.
            if frozen is None:
                payload["judged_by"] = "current"
            else:
                payload["judged_by"] = "release"
                payload["released"] = {"tag": frozen.released_tag, "generation": frozen.released_generation,
                                       "chain": frozen.links}  # fmt: skip
                if current_mode is not mode:
                    payload["current_update_policy"] = current_mode.value
                conn.execute(
                    update(t.session_volumes)
                    .where(
                        and_(
                            t.session_volumes.c.token_sha256 == token_sha256,
                            t.session_volumes.c.volume == volume,
                        )
                    )
                    .values(tag=new_tag)
                )
            self.events.record(conn, "volume-tag", owner, payload)
        return {"volume": volume, "tag": new_tag, "generation": generation}

    def _frozen_volume(
        self, conn: Connection, session: Any, token_sha256: str, volume: str, owner: tuple[str, str]
    ) -> FrozenVolume | None:
        """What the session was released for ``volume`` (docs/policy.md, "Frozen at release"),
        or None for a session opened before schema 4. Refused: a volume that was not released to
        the session (its service mounts it since a later policy version), and one that now
        resolves to another owner's volume than at the release."""
        if session.volumes_frozen is None:
            return None
        row = conn.execute(
            select(t.session_volumes).where(
                and_(t.session_volumes.c.token_sha256 == token_sha256, t.session_volumes.c.volume == volume)
            )
        ).first()
        if row is None:
            raise AccessDeniedError(
                f"volume {volume} was not released to this session of service {session.service}"
            )
        if (row.owner_policy, row.owner_volume) != owner:
            raise AccessDeniedError(
                f"volume {volume} now resolves to {owner[0]}/{owner[1]}, this session was released "
                f"{row.owner_policy}/{row.owner_volume}"
            )
        chain = json.loads(row.chain)
        return FrozenVolume(
            mode=UpdatePolicy(row.update_policy),
            ephemeral_by=chain.get("ephemeral_by"),
            links=chain["links"],
            released_tag=row.released_tag,
            released_generation=row.released_generation,
            tag=row.tag,
        )

    def _exporter(self, reads: _Reads, session: str, pinned: str | None, refused: str) -> tuple[Policy, str]:
        """The current version (and its hash) of the policy an import names (secrets and volumes
        alike); it must exist and, when the import pins ``session_hash``, be that version, else
        :class:`AccessDeniedError` with ``refused``: the message of an export that does not share
        the secret or volume (:func:`_not_shared`), so the importer, its runtime and its
        policy's readers (the refusal is recorded in its events) learn neither whether another
        stakeholder's policy exists nor whether a guessed hash is its current version."""
        head = reads.head(session)
        if head is None or (pinned is not None and pinned != head[0]):
            raise AccessDeniedError(refused)
        return reads.policy(session, head[0]), head[0]

    def _volume_source(self, reads: _Reads, policy: Policy, digest: str, name: str) -> VolumeSource:
        """Where volume ``name`` of ``policy`` (at ``digest``) comes from: itself for an own
        volume; for an import, the chain of imports followed to the volume's owner, the policy
        that holds its key and its one current tag (docs/cas.md, "Volumes shared between
        policies"). Every link is checked as for a single import, against the policies' current
        versions: the exporter exists (and is at the pinned ``session_hash``), has the volume,
        and exports it to this version of the importer. The importer's service then reads and
        writes the owner's volume, and its tag updates move the owner's tag.

        ``exported`` composes the links (docs/policy.md, "Volume update policies"): each link's
        mode is its export's ``update_policy`` (``rollback_protected`` when absent; the
        strictest when several entries name the importer), and the chain's is the strictest of
        all links'. A chain that comes back to a volume it passed (a cycle) or that has more
        than ``MAX_VOLUME_CHAIN`` links is refused (``PolicyError``)."""
        start = f"volume import {name} of {policy.name}"
        importer, importer_hash, volume = policy, digest, name
        seen = {(policy.name, name)}
        links: list[tuple[str, str]] = []  # (exporter, its volume), from this policy towards the owner
        modes: list[UpdatePolicy] = []
        heads: list[tuple[str, str]] = []
        ephemeral_by: str | None = None
        while True:
            vol = next((v for v in importer.volumes if v.name == volume), None)
            if vol is None or vol.import_ is None:
                if not links:
                    return VolumeSource(policy.name, name)
                owner, owned = links[-1]
                via = tuple(reversed(links[:-1]))
                return VolumeSource(owner, owned, UpdatePolicy.strictest(*modes), via, ephemeral_by,
                                    tuple(heads))  # fmt: skip
            imp = vol.import_
            if len(links) == MAX_VOLUME_CHAIN:
                raise PolicyError(
                    f"{start}: the chain of imports is longer than {MAX_VOLUME_CHAIN} links "
                    f"(at {importer.name}/{volume})"
                )
            if (imp.session, imp.volume) in seen:
                path = " -> ".join(
                    f"{p}/{v}" for p, v in [(policy.name, name), *links, (imp.session, imp.volume)]
                )
                raise PolicyError(f"{start}: the chain of imports is a cycle ({path})")
            what = f"volume import {volume}" if not links else f"{start} via {importer.name}/{volume}"
            refused = _not_shared(what, imp.session, imp.session_hash, f"volume {imp.volume}", importer.name)
            exporter, exporter_hash = self._exporter(reads, imp.session, imp.session_hash, refused)
            exported = next((v for v in exporter.volumes if v.name == imp.volume), None)
            link = []
            for e in exported.export if exported is not None else ():
                session, pinned = (
                    (e.session, e.session_hash) if e.to is None else (e.to.session, e.to.session_hash)
                )
                if session == importer.name and (pinned is None or pinned == importer_hash):
                    link.append(e.update_policy or UpdatePolicy.ROLLBACK_PROTECTED)
            if not link:
                raise AccessDeniedError(refused)
            mode = UpdatePolicy.strictest(*link)
            if mode is UpdatePolicy.EPHEMERAL and ephemeral_by is None:
                ephemeral_by = imp.session
            modes.append(mode)
            heads.append((imp.session, exporter_hash))
            links.append((imp.session, imp.volume))
            seen.add((imp.session, imp.volume))
            importer, importer_hash, volume = exporter, exporter_hash, imp.volume

    def _answers_in(self, conn: Connection) -> dict[tuple[str, str, str], Any]:
        """The answers read so far in ``conn``'s current transaction (a new dict per
        transaction: the entry holds the transaction object, so its identity is not reused)."""
        txn = conn.get_transaction()
        entry = self._txn_answers
        if txn is None or entry[0] is not txn:
            entry = (txn, {})
            if txn is not None:
                self._txn_answers = entry
        return entry[1]

    def _unseal(self, row: SecretRow) -> SecretValue:
        """A secret row's value for a release: unsealed on first use, then from memory."""
        key = (row.policy, row.name, row.version, row.sealed)
        value = self._unsealed.get(key)
        if value is None:
            value = _decrypt_key(self.sealer, row)
            self._unsealed.put(key, value)
        return value

    def _latest_secret(self, conn: Connection, policy: str, name: str) -> SecretRow | None:
        """A secret's current version: its newest row, only when it is the version the
        secret's authenticated head names and not older than the newest version the ledger
        records (confide.cas.secret_heads, confide.cas.secret_ledger; SecretRowsAltered
        otherwise). ``None``: neither a row nor a head (not generated yet)."""
        # a refusal for a newer ledger entry is read once more, judged against that entry
        # (PostgreSQL's READ COMMITTED; confide.cas.head_index.reread_behind_ledger)
        return reread_behind_ledger(self._read_secret, conn, policy, name)

    def _read_secret(
        self, conn: Connection, policy: str, name: str, refusal: HeadRefused | None
    ) -> SecretRow | None:
        below = None if refusal is None or refusal.ledger_at is None else refusal.ledger_at + 1
        row = raw_execute(
            conn,
            "SELECT s.policy, s.name, s.version, s.kind, s.sealed, s.public, h.version, h.key_id, h.mac "
            "FROM secrets s LEFT JOIN secret_heads h ON h.policy = s.policy AND h.name = s.name "
            "WHERE s.policy = ? AND s.name = ? ORDER BY s.version DESC LIMIT 1",
            (policy, name),
        ).fetchone()
        if row is None:  # no row: refused if a head or the ledger names a version (rows deleted)
            head = self.secret_heads.head(conn, policy, name)
            self.secret_heads.checked(conn, policy, name, None, head, below)
            return None
        head = None if row[6] is None else (row[6], row[7], row[8])
        self.secret_heads.checked(conn, policy, name, row[2], head, below)
        return SecretRow(row[0], row[1], row[2], row[3], bytes(row[4]), row[5])

    def _ledger_view(self, conn: Connection) -> HeadView:
        """The ledger as ``conn``'s transaction sees it: the newest version of each secret it
        records (confide.cas.secret_ledger; a secret head-cache miss only)."""
        return self.policy_auth.index.view(conn)

    def _put_secret_head(self, conn: Connection, policy: str, name: str, version: int) -> None:
        """Make ``version`` (its row just inserted in ``conn``) the secret's current version."""
        self.secret_heads.put(conn, policy, name, version, self.clock())

    def _generate_secrets(
        self,
        conn: Connection,
        policy: Policy,
        digest: str,
        previous: Policy | None = None,
        *,
        regenerate: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Generate what a policy version declares; keep values whose declaration did not change
        (secrets survive updates), create a new version where it did, and where ``regenerate``
        names it (an owner's revocation of the current certificate or its key; what derives
        from it follows). A certificate that ``previous`` (the version this one replaces) had
        issued under one of its generated CAs is recorded as revoked when a new version
        supersedes it, or when this version no longer declares it as a generated secret, together
        with its earlier versions that a renewal replaced and that are still valid; so are the
        certificates issued to runtimes for an ``issue_to_runtime`` secret whose declaration
        changed, whose issuer was regenerated, or that is gone (docs/cas.md "Revocation").
        Returns the new versions."""
        resolved: dict[str, SecretValue] = {}
        created: list[dict[str, Any]] = []
        created_names: set[str] = set()
        path_lengths = ca_path_lengths(policy.secrets)
        revoked: list[dict[str, Any]] = []
        now = self.clock()

        def revoke_previous(name: str, reason: str) -> None:
            if previous is None:
                return
            try:
                old_spec = previous.secret(name)
            except KeyError:
                return
            if not issued_by_generated_ca(previous, old_spec):
                return
            # Every version still valid: the current one, and those a renewal replaced (renewal
            # revokes nothing, so that services still running with them keep working).
            rows = raw_execute(
                conn,
                "SELECT version, public FROM secrets WHERE policy = ? AND name = ? ORDER BY version",
                (policy.name, name),
            ).fetchall()
            for version, public in rows:
                if not_after(public) > now:
                    entry = revoke(conn, self.sealer, policy.name, name, int(version), public, reason, now)
                    if entry is not None:
                        revoked.append(entry)

        # The secrets whose value the replaced version held (generated or explicit). A stored
        # value of another name is from an earlier version that removed it, or turned it into an
        # import or ``issue_to_runtime``; a certificate then was revoked, and "a secret
        # re-declared later gets a new version" (docs/cas.md "Revocation"), whatever its kind.
        held_before = (
            None
            if previous is None
            else {s.name for s in previous.secrets if s.import_ is None and not s.issue_to_runtime}
        )
        if previous is not None:
            names = {s.name for s in policy.secrets}
            for old_spec in previous.secrets:
                if old_spec.name not in names:
                    revoke_previous(old_spec.name, CESSATION)
        # Generated in dependency order: a key before the certificates and public keys made of
        # it, an issuer before what it signs; otherwise in declaration order (docs/cas.md
        # "Secrets").
        for spec in generation_order(policy.secrets):
            if spec.import_ is not None or spec.issue_to_runtime:
                revoke_previous(spec.name, SUPERSEDED)  # no longer a value the CAS holds
                continue
            # The fingerprint is stored in the clear ``public`` column: an explicit value that is
            # secret is left out of it and compared with the sealed value instead; a stored form
            # of before is honoured and replaced (confide.cas.declaration).
            prints = fingerprints(spec)
            row = self._latest_secret(conn, policy.name, spec.name)
            # A value derived from one regenerated here (its key, its issuer) is regenerated too,
            # so a certificate always matches its private key and chains to its issuer's version.
            derived_from_new = any(d in created_names for d in (spec.private_key, spec.issuer))
            stored_spec = json.loads(row.public).get("spec") if row is not None else None
            unchanged = (
                row is not None
                and stored_spec in prints.accepted
                and (held_before is None or spec.name in held_before)
            )
            if row is not None and unchanged and not derived_from_new and spec.name not in regenerate:
                current = _decrypt_key(self.sealer, row)
                if (
                    not prints.withheld
                    or stored_spec == prints.value_hashed
                    or _same_explicit(spec, current, resolved)
                ):
                    if stored_spec != prints.current:  # an earlier form: the current one instead
                        conn.execute(
                            update(t.secrets)
                            .where(t.secrets.c.policy == row.policy)
                            .where(t.secrets.c.name == row.name)
                            .where(t.secrets.c.version == row.version)
                            .values(public=json.dumps({**json.loads(row.public), "spec": prints.current}))
                        )
                    resolved[spec.name] = current
                    continue
            if row is not None:
                revoke_previous(spec.name, SUPERSEDED)
            value = generate(spec, resolved=resolved, now=datetime.fromtimestamp(self.clock(), UTC),
                             published=self.published(policy, spec),
                             path_length=path_lengths.get(spec.name, 0))  # fmt: skip
            resolved[spec.name] = value
            version = (row.version + 1) if row is not None else 1
            public = {**value.public_info(), "spec": prints.current}
            conn.execute(
                insert(t.secrets).values(
                    policy=policy.name, name=spec.name, version=version, kind=value.kind,
                    sealed=self.sealer.seal(value, policy=policy.name, name=spec.name, version=version),
                    public=json.dumps(public), created_at=self.clock(),
                )
            )  # fmt: skip
            self._put_secret_head(conn, policy.name, spec.name, version)
            created.append({"name": spec.name, "version": version, "kind": value.kind})
            created_names.add(spec.name)
        if previous is not None:
            revoked += self._revoke_runtime_issued(conn, policy, previous, created_names, now)
        if created:
            payload: dict[str, Any] = {"hash": digest, "secrets": created}
            if regenerate:
                payload["cause"] = "revocation"
            self.events.record(conn, "secrets-generated", policy.name, payload)
        if revoked:
            self.events.record(
                conn, "certificates-revoked", policy.name, {"hash": digest, "certificates": revoked}
            )
        return created

    def _revoke_runtime_issued(
        self, conn: Connection, policy: Policy, previous: Policy, regenerated: set[str], now: float
    ) -> list[dict[str, Any]]:
        """Revoke the still-valid certificates issued to runtimes under ``previous`` for an
        ``issue_to_runtime`` secret signed by a generated CA of the policy, when ``policy`` (the
        version replacing it) no longer declares it (``cessationOfOperation``), declares it
        otherwise or regenerated its issuer (``superseded``)."""
        out: list[dict[str, Any]] = []
        current = {s.name: s for s in policy.secrets}
        for old in previous.secrets:
            if not old.issue_to_runtime or old.issuer is None:
                continue
            try:
                if not generated_ca(previous.secret(old.issuer)):
                    continue
            except KeyError:
                continue
            new = current.get(old.name)
            if new is None:
                reason = CESSATION
            elif declaration(new) != declaration(old) or old.issuer in regenerated:
                reason = SUPERSEDED
            else:
                continue
            out += revoke_runtime_certificates(conn, self.sealer, policy.name, old.name, reason, now)[1]
        return out

    def revoke_certificates(self, request: Any) -> dict[str, Any]:
        """An owner's revocation of a certificate, or of every valid one of a secret, without a
        policy update: a signed ``confide/revoke/v2`` request (:mod:`confide.cas.owner_revocation`,
        docs/cas.md "Revocation"). Returns what was revoked and re-issued, and the CRLs issued."""
        if isinstance(request, dict) and request.get("type") == REVOKE_V1_TYPE:
            raise ParseError(
                f"a {REVOKE_V1_TYPE} request names no CAS, so it could be carried out at any CAS where "
                f"its signer owns the policy; sign it again with a current client ({REVOKE_TYPE} names "
                "this CAS)",
                structure=REVOKE_V1_TYPE,
            )
        body, signer = verify_signed(request, REVOKE_TYPE)
        req = parse_request(body, signer.fingerprint)
        # For this CAS (its TLS key), before the time and any policy are looked at: the same
        # refusal for an existing and a missing policy, nothing recorded. Public values.
        if req.cas != self.tls_spki_sha256:
            raise AccessDeniedError(
                f"revocation request is for another CAS (TLS key SHA-256 {req.cas[:16]!r}…, this CAS "
                f"has {self.tls_spki_sha256[:16]}…)"
            )
        now = self.clock()
        if abs(now - req.time) > READ_WINDOW:
            raise AccessDeniedError(
                f"revocation request time {req.time} is more than {READ_WINDOW}s from the CAS clock"
            )
        try:
            with self.db.write() as conn:
                head = self.policy_auth.head(conn, req.name)
                if head is None:
                    # Recorded too, filed under no policy (there is none to file it under): the
                    # public checkpoint's size grows by one entry whether or not the policy
                    # exists, so a refused caller cannot tell (docs/cas.md "Revoking a
                    # certificate").
                    raise _Refused(
                        refusal(req.name, req.signer),
                        "revocation-refused",
                        None,
                        {"signer": req.signer, "name": req.name, "secret": req.secret,
                         "request_sha256": req.digest},
                    )  # fmt: skip
                # Step 1: listed in the update rules, alone or as a board member (no approvals).
                rules = self._rules_in_force(
                    conn, req.name, head.hash, self._load(conn, req.name, head.hash).access_policy.update
                )
                if not (
                    is_authorized(rules, {req.signer}, creator=head.creator)
                    or _mentions(rules, req.signer, head.creator)
                ):
                    raise _Refused(
                        refusal(req.name, req.signer),
                        "revocation-refused",
                        req.name,
                        {"signer": req.signer, "secret": req.secret, "request_sha256": req.digest},
                    )
                return revoke_request(self, conn, req, now, spent_until=req.time + READ_WINDOW + 1)
        except _Refused as refused:
            with self.db.write() as conn:
                self.events.record(conn, refused.event, refused.filed_under, refused.payload)
            raise refused.error from None

    def _read_request(
        self, read_request: Any, route: str, run: RunWrite | None = None, *, name: str | None = None
    ) -> tuple[dict[str, Any], PublicIdentity]:
        """A signed ``confide/read/v3`` request (docs/cas.md "Reading a policy") for this CAS (its
        ``cas``: :attr:`tls_spki_sha256`), ``route`` (one of :data:`READ_ROUTES`) and, when given,
        the policy ``name`` (the URL's), with a read nonce this CAS issued for that route and the
        policy the request names, not expired: its body and signer, once its nonce is spent.

        Everything is checked before anything is written: a request for another CAS, route or
        policy, or with a nonce that is forged, for another route or policy, or expired, is
        refused without a database write, before any policy is looked at, so the refusal says
        nothing of the policy. The nonce is then spent (single use) in a write transaction of
        its own, run by ``run`` (the group commit under the HTTP API; default: one
        :meth:`Database.write`): a request sent again is refused, as is the second of two sent
        at once. The nonce is spent whether or not the signer may then read the policy."""
        if isinstance(read_request, dict) and read_request.get("type") == READ_V2_TYPE:
            raise ParseError(
                f"a {READ_V2_TYPE} read request carries no nonce from the CAS, so whoever holds it "
                f"could send it again for five minutes; this CAS serves {READ_TYPE} requests only "
                f"(signed over a single-use nonce from POST {READ_NONCE_PATH}): upgrade the client",
                structure=READ_V2_TYPE,
            )
        body, signer = verify_signed(read_request, READ_TYPE)
        read_name, nonce_text, cas, for_route = (
            body.get("name"), body.get("nonce"), body.get("cas"), body.get("route")
        )  # fmt: skip
        if (
            not isinstance(read_name, str)
            or not isinstance(nonce_text, str)
            or not _READ_NONCE.fullmatch(nonce_text)
            or not isinstance(cas, str)
            or for_route not in READ_ROUTES
        ):
            raise ParseError(
                f"name, nonce (64 lowercase hex digits, from POST {READ_NONCE_PATH}), cas and route "
                f"(one of {', '.join(READ_ROUTES)}) are required",
                structure=READ_TYPE,
            )
        # Public values (the CAS's key hash, a route name): a plain comparison leaks nothing.
        if cas != self.tls_spki_sha256:
            raise AccessDeniedError(
                f"read request is for another CAS (TLS key SHA-256 {cas[:16]!r}…, this CAS has "
                f"{self.tls_spki_sha256[:16]}…)"
            )
        if for_route != route:
            raise AccessDeniedError(f"read request is for {for_route}, not {route}")
        if name is not None and read_name != name:
            raise ParseError("read request names another policy than the URL", structure=READ_TYPE)
        nonce = bytes.fromhex(nonce_text)
        expires = self._check_read_nonce(nonce, read_name, route)
        refusal = (run or self._in_write)(lambda conn: self._spend_read_nonce(conn, nonce, expires))
        if refusal is not None:
            raise AccessDeniedError(refusal)
        return body, signer

    # -- read nonces (docs/cas.md "Reading a policy") -----------------------------------------
    def new_read_nonce(self, name: Any, route: Any) -> str:
        """A single-use nonce for one read of policy ``name`` on ``route``, valid
        :data:`NONCE_TTL` seconds; like :meth:`new_nonce` it needs no database write: expiry (ms)
        || route (its index in :data:`READ_ROUTES`) || 15 random bytes || MAC over these and
        the SHA-256 of the policy name, under a key of its own purpose. The name need not be
        of an existing policy (nothing is looked up: the answer is the same for every name a
        policy can have; any other name is a ParseError)."""
        # A name no policy can have (docs/policy.md) is refused before it is hashed: a name may
        # otherwise be as long as the request body (megabytes hashed on the event loop).
        if (
            not isinstance(name, str)
            or route not in READ_ROUTES
            or (name != "" if route == "list" else not is_policy_name(name))
        ):
            raise ParseError(
                f"expected name (a name a policy can have: '/'-separated segments of 1-128 characters"
                f' of A-Z a-z 0-9 _ - . ~; "" for route list) and route (one of {", ".join(READ_ROUTES)})',
                structure="read nonce request",
            )
        expiry = int((self.clock() + NONCE_TTL) * 1000).to_bytes(8, "big")
        body = expiry + bytes((READ_ROUTES.index(route),)) + os.urandom(15)
        return (body + self._read_nonce_mac(body, name)).hex()

    def _read_nonce_mac(self, body: bytes, name: str) -> bytes:
        # surrogatepass: a JSON string may hold a lone surrogate; its bytes are MAC'd all the same
        named = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
        return hmac.digest(self.read_nonce_key, body + named, "sha256")[:8]

    def _check_read_nonce(self, nonce: bytes, name: str, route: str) -> float:
        """The nonce's expiry, once its MAC (for ``name`` and the route it carries), its route
        and its expiry are checked: no database access."""
        issued_for = nonce[8]
        if issued_for >= len(READ_ROUTES) or not hmac.compare_digest(
            self._read_nonce_mac(nonce[:24], name), nonce[24:]
        ):
            raise AccessDeniedError(
                f"read nonce was not issued by this CAS for policy {name[:64]!r} (each nonce is for "
                f"one policy and route: ask POST {READ_NONCE_PATH} for one)"
            )
        if READ_ROUTES[issued_for] != route:
            raise AccessDeniedError(f"read nonce was issued for {READ_ROUTES[issued_for]}, not {route}")
        expires = int.from_bytes(nonce[:8], "big") / 1000
        if expires < self.clock():
            raise AccessDeniedError("read nonce has expired; sign the request again over a new one")
        return expires

    def _spend_read_nonce(self, conn: Connection, nonce: bytes, expires: float) -> str | None:
        """Spend a read nonce in the write transaction (single use): ``None``, or why it cannot
        be (it expired meanwhile, or was spent before). A write job of the group commit, so it
        returns its refusal rather than raising it (confide.cas.db.WriteBatcher)."""
        now = self.clock()
        if expires < now:
            return "read nonce has expired; sign the request again over a new one"
        raw = raw_connection(conn)
        self._sweep(raw, now)
        if not self._spend_nonce_row(raw, nonce, expires):
            return (
                "read request was served before (its nonce is spent): a replay is refused; sign "
                "a new request over a new nonce"
            )
        return None

    def _in_write(self, job: Callable[[Connection], str | None]) -> str | None:
        with self.db.write() as conn:
            return job(conn)

    def show(self, read_request: Any, run: RunWrite | None = None) -> dict[str, Any]:
        """The policy a signed read request (route ``show``) names, for an identity that may read
        it; ``run``: as for :meth:`_read_request`."""
        return self._show(*self._read_request(read_request, "show", run))

    def readable(self, read_request: Any, run: RunWrite | None = None) -> dict[str, Any]:
        """The names of the policies the signer of a signed read request (route ``list``, name
        ``""``) may read, by the rule :meth:`show` applies to each (its ``read`` rules in force, or
        its creator), sorted: ``{"policies": [NAME, ...]}`` (``confide ledger verify --full
        --identity``). ``run``: as for :meth:`_read_request`. Every current policy is looked at,
        in one read transaction."""
        _body, signer = self._read_request(read_request, "list", run, name="")
        try:
            with self.db.read() as conn:
                # A policy's head row deleted would drop it from every list (its readers would
                # not check it): the ledger's head entries name every policy that has one (a
                # head is never deleted). The entries are read first: a policy created after
                # them is in the rows read next, not missing from them (PostgreSQL reads each
                # statement's committed rows).
                ledger_heads = self.policy_auth.index.view(conn).current()
                heads = self.policy_auth.heads(conn)
                gone = [name for name in ledger_heads if name not in heads]
                if gone:
                    raise PolicyRowsAltered(gone[0], "current version (policy_heads: no row)")
                names = [
                    name
                    for name, head in heads.items()
                    if self._may_read(conn, name, head, signer, keep=False)
                ]
        except ConfideError as exc:
            # A policy's rows altered (or a database failure): the error names the policy, which
            # this signer may not be allowed to know of. The operator's log says which; the
            # answer says only that the list is refused (nothing is left out of a list answered).
            _LOG.warning(json.dumps({"event": "readable-policies-refused", "why": exc.message[:512]}))
            raise StorageError(
                "a stored policy or the database does not verify (the CAS's log says which): the "
                "CAS lists no readable policies until it is restored"
            ) from None
        return {"policies": sorted(names)}

    def _may_read(
        self, conn: Connection, name: str, head: Head, signer: PublicIdentity, *, keep: bool = True
    ) -> bool:
        """Whether ``signer`` may read policy ``name`` at its current version ``head``: named by
        the ``read`` rules in force, or its creator (docs/cas.md "Reading a policy"). The
        version's rules are cached (:data:`READ_RULES_CACHE`); ``keep``: as for :meth:`_load`."""
        rules = self._read_rules.get((name, head.hash))
        if rules is None:
            rules = tuple(self._load(conn, name, head.hash, keep=keep).access_policy.read)
            self._read_rules.put((name, head.hash), rules)
        readers = self._rules_in_force(conn, name, head.hash, rules)
        return is_authorized(readers, {signer.fingerprint}, creator=head.creator)

    def _show(self, body: dict[str, Any], signer: PublicIdentity) -> dict[str, Any]:
        name = body["name"]
        with self.db.read() as conn:
            head = self.policy_auth.head(conn, name)
            if head is None:
                raise AccessDeniedError(f"no policy {name} readable by {signer.fingerprint[:16]}…")
            policy = self._load(conn, name, head.hash)
            if not self._may_read(conn, name, head, signer):
                raise AccessDeniedError(f"no policy {name} readable by {signer.fingerprint[:16]}…")
            lineage = self._lineage(conn, name, head.hash)
            versions = [
                {
                    "hash": r.hash,
                    "seq": r.seq,
                    "state": r.state,
                    "predecessor": r.predecessor,
                    "submitter": r.submitter,
                }
                for r in self.policy_auth.versions(conn, name)  # each verified
                if r.hash in lineage  # not a competing creation's version (_lineage)
            ]
            secrets: dict[str, Any] = {}
            declared = {spec.name: spec for spec in policy.secrets}
            for r in conn.execute(
                select(t.secrets).where(t.secrets.c.policy == name).order_by(t.secrets.c.version)
            ):
                info = json.loads(r.public)
                info.pop("spec", None)
                secrets[r.name] = {**info, "version": r.version}
                if r.kind in CERTIFICATE_KINDS and r.name in declared:
                    due = self.renewals.due_at(name, declared[r.name], r.version, r.public)
                    if due != math.inf:  # when the CAS renews it (docs/cas.md "Certificate renewal")
                        secrets[r.name]["renew_at"] = datetime.fromtimestamp(due, UTC).isoformat()
            for spec in policy.secrets:  # each generated CA's current CRL (docs/cas.md "Revocation")
                crl = (
                    current_crl(conn, name, spec.name)
                    if generated_ca(spec) and spec.name in secrets
                    else None
                )
                if crl is not None:
                    secrets[spec.name]["crl"] = {
                        "number": crl.number,
                        "this_update": datetime.fromtimestamp(crl.this_update, UTC).isoformat(),
                        "next_update": datetime.fromtimestamp(crl.next_update, UTC).isoformat(),
                        "sha256": hashlib.sha256(crl.der).hexdigest(),
                    }
                    dist = crl_distribution_id_of(crl.der) if spec.crl_distribution else None
                    if dist is not None:  # served to anyone (docs/cas.md "CRL distribution points")
                        path = f"{CRL_PATH}{dist}.crl"
                        secrets[spec.name]["crl"]["public_path"] = path
                        if self.public_url is not None:
                            secrets[spec.name]["crl"]["distribution_point"] = self.public_url + path
                    dist = crl_distribution_id_of(crl.der) if spec.ca_issuers else None
                    if dist is not None:  # served to anyone (docs/cas.md "CA certificates (caIssuers)")
                        path = f"{CA_PATH}{dist}.crt"
                        published = secrets[spec.name]["ca_issuers"] = {"public_path": path}
                        if self.public_url is not None:
                            published["url"] = self.public_url + path
                    dist = crl_distribution_id_of(crl.der) if spec.ocsp else None
                    if dist is not None:  # answered to anyone (docs/cas.md "OCSP")
                        path = f"{OCSP_PATH}{dist}"
                        published = secrets[spec.name]["ocsp"] = {"public_path": path}
                        if self.public_url is not None:
                            published["url"] = self.public_url + path
                        assert spec.ocsp_signer is not None
                        published["signer"] = spec.ocsp_signer.value
        return {
            "name": name,
            "hash": head.hash,
            "creator": head.creator,
            "policy": withhold_explicit_values(json.loads(canonical_json(policy))),
            "versions": versions,
            "secrets": secrets,
        }

    # -- attestation --------------------------------------------------------------------------
    def new_nonce(self) -> str:
        """A nonce that needs no database write: expiry (ms) || 16 random bytes || MAC. The CAS
        checks the MAC and expiry at attestation and records the nonce as used there (single
        use); replicas sharing the master key accept each other's nonces."""
        expiry = int((self.clock() + NONCE_TTL) * 1000).to_bytes(8, "big")
        body = expiry + os.urandom(16)
        return (body + self._nonce_mac(body)).hex()

    @property
    def nonce_key(self) -> bytes:
        """The key of the nonces' MACs (derived from the master key)."""
        return self._nonce_key

    @nonce_key.setter
    def nonce_key(self, key: bytes) -> None:
        self._nonce_key, self._nonce_hmac = key, HmacSha256(key)

    def _nonce_mac(self, body: bytes) -> bytes:
        # HMAC-SHA256 (RFC 2104) with the padded-key blocks hashed once (confide.hmacsha256):
        # the same bytes as hmac.digest(self.nonce_key, body, "sha256")
        return self._nonce_hmac.digest(body)[:8]

    def _check_nonce_mac(self, nonce: bytes) -> float:
        if len(nonce) != 32 or not hmac.compare_digest(self._nonce_mac(nonce[:24]), nonce[24:]):
            raise BindingError("nonce was not issued by this CAS")
        expires = int.from_bytes(nonce[:8], "big") / 1000
        if expires < self.clock():
            raise BindingError("nonce has expired")
        return expires

    def _use_once(
        self,
        conn: Connection,
        nonce: bytes,
        digest: str,
        expires: float | None = None,
        raw: Conn | None = None,
    ) -> None:
        """Spend the nonce and the evidence (single use), inside the write transaction.
        ``expires``: the nonce's expiry when phase 1 checked its MAC already (only the expiry
        is checked again, as time has passed), else both are checked here. ``raw``: the DB-API
        connection under ``conn`` when the caller has it (the same transaction)."""
        if expires is None:
            expires = self._check_nonce_mac(nonce)
        elif expires < self.clock():
            raise BindingError("nonce has expired")
        if raw is None:
            raw = raw_connection(conn)
        now = self.clock()
        self._sweep(raw, now)
        if not self._spend_nonce_row(raw, nonce, expires):
            raise BindingError("nonce was already used")
        seen = ledger_execute(
            raw,
            "INSERT INTO evidence_seen (digest, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (digest, now),
        )
        if seen.rowcount != 1:
            raise BindingError("this evidence was presented before (replay)")

    @staticmethod
    def _spend_nonce_row(raw: Conn, nonce: bytes, expires: float) -> bool:
        """Record ``nonce`` (attestation, key-release or read) as spent in the caller's write
        transaction: whether it was unspent. One statement per spend (no SELECT first): the
        insert is skipped when the key is there, and its row count says which. ON CONFLICT DO
        NOTHING is the same statement on SQLite and PostgreSQL, and a conflict is not an error
        (on PostgreSQL an error would abort the group commit's whole transaction)."""
        spent = ledger_execute(
            raw,
            "INSERT INTO nonces (nonce, expires_at, used) VALUES (?, ?, 1) ON CONFLICT DO NOTHING",
            (nonce.hex(), expires),
        )
        return bool(spent.rowcount == 1)

    def _sweep(self, raw: Conn, now: float) -> None:
        """Expired rows, at most once per second, in the caller's write transaction: a used
        nonce (attestation, key-release or read) is refused by its MAC'd expiry once its row is
        gone (kept :data:`SWEEP_GRACE` past that expiry, for clocks behind this one), and spent
        evidence can only be replayed with its own nonce."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        # Kept SWEEP_GRACE past expiry: other replicas' clocks may be behind this one's, and
        # they refuse a nonce by its expiry on their own clock.
        ledger_execute(raw, "DELETE FROM nonces WHERE expires_at < ?", (now - SWEEP_GRACE,))
        ledger_execute(raw, "DELETE FROM evidence_seen WHERE seen_at < ?", (now - 2 * NONCE_TTL,))
        ledger_execute(raw, "DELETE FROM sessions WHERE expires_at < ?", (now,))
        # Runtime certificates past their notAfter: no longer revocable (docs/cas.md "Revocation").
        ledger_execute(raw, "DELETE FROM runtime_certificates WHERE not_after < ?", (now,))

    def collateral_job(self, request: Any) -> CollateralJob | None:
        """The collateral that phase 1 of ``request`` would need from a source (the DCAP
        collateral of an SGX/TDX quote's platform, with ``cas serve --collateral URL``:
        :mod:`confide.cas.pcs`, or read from ``--collateral FILE|DIR``; SEV-SNP evidence
        without its VCEK, with ``cas serve --kds``: :mod:`confide.cas.kds`; the OCSP responses
        for NVIDIA reports, GPU-only or ``gpu<k>`` blobs of a composite request, with ``cas
        serve --nvidia-ocsp``: :mod:`confide.cas.revocation`; the RIMs NVIDIA reports were not
        sent with, with ``cas serve --nvidia-rim``: :mod:`confide.cas.rims`): what is in memory now
        (``found``), and a blocking ``fetch`` of the rest to run before :meth:`attest_begin`
        and off the event loop (:class:`~confide.cas.verifier.CollateralJob`); hand its
        ``run()`` to :meth:`attest_begin` as ``prefetched``. ``None`` when there is none. Cheap for every
        other request; never raises (phase 1 refuses what is malformed)."""
        if not isinstance(request, dict):
            return None
        raw_aux = request.get("aux")
        platform_name = request.get("platform")
        if not isinstance(platform_name, str):
            platform_name = None  # e.g. a list (unhashable): phase 1 refuses it
        gpus = isinstance(raw_aux, dict) and any(str(k).startswith("gpu") for k in raw_aux)
        if platform_name in _DCAP_PLATFORMS and getattr(self.verifier, "dcap_source", None) is None:
            platform_name = None  # no DCAP source: nothing to fetch or read
        if platform_name not in _FETCHING_PLATFORMS and not gpus:
            return None
        job = getattr(self.verifier, "collateral_job", None)
        if job is None:
            return None
        try:
            evidence = base64.b64decode(request["evidence"], validate=True)
            aux = {
                str(k): base64.b64decode(v, validate=True) for k, v in dict(request.get("aux") or {}).items()
            }
        except (KeyError, ValueError, TypeError):
            return None
        try:
            platform = Platform(str(request.get("platform")))
        except ValueError:
            return None
        at = datetime.fromtimestamp(self.clock(), UTC)
        result: CollateralJob | None = job(platform, evidence, aux, at=at)
        return result

    def attest(self, request: Any) -> dict[str, Any]:
        """Verify, bind, appraise, release. Returns the release encrypted to the runtime key."""
        job = self.collateral_job(request)
        pending = self.attest_begin(request, prefetched=job.run() if job is not None else None)
        with self.db.write() as conn:
            pending.commit(conn)
        return pending.result()

    def attest_begin(
        self, request: Any, *, prefetched: Prefetched | None = None, fresh: bool = False, _renewals: int = 0
    ) -> PendingAttestation:
        """Phase 1 of :meth:`attest`, without the write lock: parse, verify, bind, appraise and
        render against the policy versions current now. ``prefetched``: what the job of
        :meth:`collateral_job` returned for this request (then no collateral is fetched here:
        what it lacks and memory lacks is refused); ``None``: what is missing from memory is
        fetched, blocking (callers that ran no prefetch). Raises :class:`ParseError` for a
        malformed request (nothing recorded); every other outcome is recorded by the returned
        attestation's :meth:`PendingAttestation.commit`, in a write transaction of the caller's
        choosing (one of its own, or a group commit shared with other attestations). ``fresh``:
        read the CAS's state in a transaction even when a snapshot of it is kept."""
        if not isinstance(request, dict):
            raise ParseError("expected a JSON object", structure="attestation request")
        try:
            policy_name, service_name = request["policy"], request["service"]
            platform = Platform(str(request["platform"]))
            evidence = base64.b64decode(request["evidence"], validate=True)
            key_der = base64.b64decode(request["public_key"], validate=True)
            nonce = bytes.fromhex(str(request["nonce"]))
            aux = {
                str(k): base64.b64decode(v, validate=True) for k, v in dict(request.get("aux") or {}).items()
            }
        except (KeyError, ValueError, TypeError):
            raise ParseError(
                "expected policy, service, platform, evidence (base64), public_key (base64 DER), nonce (hex)",
                structure="attestation request",
            ) from None
        if not (is_policy_name(policy_name) and is_name(service_name)):
            # Names no policy can have (docs/policy.md): refused unrecorded, as the request is
            # malformed. Recorded, a name of any length went into the refusal's ledger entry
            # (before the nonce is checked), and one over the ledger's entry limit failed the
            # whole group-commit transaction that carried it.
            raise ParseError(
                "expected policy and service to be names a policy can have ('/'-separated segments"
                " of 1-128 characters of A-Z a-z 0-9 _ - . ~)",
                structure="attestation request",
            )
        try:
            runtime_key = serialization.load_der_public_key(key_der)
        except (ValueError, UnsupportedAlgorithm):  # the latter: a well-formed SPKI of an unknown key type
            raise ParseError(
                "public_key is not a DER SubjectPublicKeyInfo", structure="attestation request"
            ) from None
        if not isinstance(runtime_key, ec.EllipticCurvePublicKey) or not isinstance(
            runtime_key.curve, ec.SECP256R1
        ):
            raise ParseError("public_key must be a P-256 key", structure="attestation request")
        at = datetime.fromtimestamp(self.clock(), UTC)
        digest = hashlib.sha256(evidence).hexdigest()
        outcome: dict[str, Any] = {
            "service": service_name,
            "platform": platform.value,
            "evidence_sha256": digest,
        }
        pending = PendingAttestation(
            self, policy_name, service_name, nonce, digest, key_der, runtime_key, outcome
        )
        try:
            pending.expires = self._check_nonce_mac(nonce)
            cpu_aux, gpus = split_gpu_aux(platform, aux)
            # Verify (signatures, chains, collateral).
            verified = self.verifier.verify(platform, evidence, cpu_aux, at=at, prefetched=prefetched)
            outcome.update(_evidence_summary(verified))
            # The evidence binds the runtime's key and our nonce.
            binding = binding_report_data(key_der, nonce)
            check_binding(verified, binding)
            # Composite attestation: every GPU report sent with it is verified and bound to the
            # same key and nonce (its SPDM requester nonce), so all pieces belong to this request.
            devices = self._verify_gpus(gpus, binding, outcome, at, prefetched)
        except ConfideError as exc:
            pending.refused = exc
            return pending
        pending.verified = (verified, devices, at)
        # Appraise against the service's policy, then render its configuration: from the
        # snapshot of the state a previous attestation of this service read, when there is one
        # (no read transaction; phase 2 checks every answer used again, and appraises and
        # renders again if one changed), else from a read transaction (docs/cas.md "Phase 1
        # from a snapshot").
        key = (policy_name, service_name)
        snapshot = None if fresh else self._snapshots.get(key)
        try:
            if snapshot is not None:
                try:
                    self._appraise_and_render(pending, _Reads(self, None, snapshot))
                    return pending
                except _Miss:
                    pass  # the snapshot does not cover it: read afresh
            with self.db.read() as conn:
                reads = _Reads(self, conn)
                self._appraise_and_render(pending, reads)
            rendered = None
            if not pending.issued:  # else the rendering depends on the runtime's key
                frozen = tuple(pending.frozen)
                rendered = _Rendered(pending.config, pending.released, frozen, tuple(reads.dues), [])
            kept = reads.snapshot(policy_name, rendered)
            if kept is not None and pending.refused is None:
                # only a rendered release is kept: requests naming a policy or service that
                # does not exist cannot fill the cache
                self._snapshots.put(key, kept)
        except RenewalDue as due:
            # A certificate to release is due (docs/cas.md "Certificate renewal"): renew it in a
            # write transaction of its own, then run phase 1 again on a fresh snapshot. Once per
            # certificate lifetime (the sweep of `cas serve` usually renews first), not per request.
            self._snapshots.pop(key)
            if _renewals >= 3:
                pending.refused = ConflictError(f"{due}, and renewing it did not succeed; attest again")
                return pending
            try:
                renew_due(self, [due.policy])
            except ConfideError as exc:
                pending.refused = exc
                return pending
            return self.attest_begin(request, prefetched=prefetched, fresh=True, _renewals=_renewals + 1)
        except ConfideError as exc:  # e.g. the database could not be read
            pending.refused = exc
        return pending

    def _appraise_and_render(self, pending: PendingAttestation, reads: _Reads) -> None:
        """The part of phase 1 that depends on the CAS's state (what ``reads`` answers): appraise
        the verified evidence against the service's policy and render its configuration, into
        ``pending`` (a refusal into ``pending.refused``). ``RenewalDue`` and ``_Miss`` are raised.
        Run again by phase 2, inside its write transaction, when an answer changed."""
        pending.reset(reads)
        assert pending.verified is not None
        verified, devices, at = pending.verified
        policy_name, outcome = pending.policy, pending.outcome
        try:
            head = reads.head(policy_name)
            if head is None:
                raise AccessDeniedError(f"no policy {policy_name}")
            pending.policy_known = True
            outcome["policy_hash"] = pending.policy_hash = head[0]
            policy = reads.policy(policy_name, head[0])
            try:
                service = policy.service(pending.service)
            except KeyError:
                raise AccessDeniedError(f"policy {policy_name} has no service {pending.service}") from None
            result = appraise(verified, policy, pending.service, at=at, devices=devices)
            outcome["tolerated"] = sorted(str(x) for x in getattr(result, "tolerated", ()) or ())
            if not result.accepted:
                raise AppraisalError(
                    f"{len(result.reasons)} mismatch(es): " + "; ".join(str(r) for r in result.reasons),
                    problems=[str(r) for r in result.reasons],
                )
            source = reads.source
            if source is not None and source.rendered is not None:
                # The snapshot's rendering, made from the same answers (all of which phase 2
                # checks again); only its renewal checks depend on the time.
                config, released, frozen, dues, _ = source.rendered
                self._check_dues(dues)
                reads.got.update(source.answers)
                reads.policies.update(source.policies)
                pending.config, pending.released = dict(config), list(released)
                pending.frozen.extend(frozen)
                pending.rendering = source.rendered
                return
            pending.config, pending.released = self._render(
                reads, policy, head[0], service, pending.runtime_key, pending.frozen, pending.issued
            )
            _check_release_record(policy_name, pending.service, pending.released, pending.config)
        except ConfideError as exc:
            pending.refused = exc

    def _check_dues(self, dues: tuple[_Due, ...]) -> None:
        """The renewal checks a rendering made, again: :class:`RenewalDue` for the first
        certificate or CRL due now (docs/cas.md "Certificate renewal")."""
        now = self.clock()
        for kind, owner, what, a, b in dues:
            if kind == "secret":
                if self.renewals.due_at(owner, what, a, b) <= now:
                    raise RenewalDue(owner, what.name)
            elif crl_due(a, b, now):
                raise RenewalDue(owner, what)

    def _verify_gpus(
        self,
        gpus: list[GpuEvidence],
        binding: bytes,
        outcome: dict[str, Any],
        at: datetime,
        prefetched: Prefetched | None,
    ) -> list[VerifiedEvidence]:
        """Verify and bind the GPU reports of a composite request; each verified GPU is recorded
        in ``outcome["gpus"]`` (a refusal names the slot of the GPU that failed)."""
        devices: list[VerifiedEvidence] = []
        for gpu in gpus:
            try:
                device = self.verifier.verify(
                    Platform.NVIDIA_GPU, gpu.report, gpu.aux, at=at, prefetched=prefetched
                )
                outcome.setdefault("gpus", []).append(_gpu_summary(gpu.slot, device))
                check_binding(device, binding)
            except ConfideError as exc:
                exc.message = f"{gpu.slot}: {exc.message}"
                exc.args = (exc.message,)
                raise
            devices.append(device)
        return devices

    def _encrypt(
        self, config: dict[str, Any], runtime_key: ec.EllipticCurvePublicKey, nonce: bytes, runtime_der: bytes
    ) -> dict[str, Any]:
        """``runtime_der``: the SPKI DER ``runtime_key`` was loaded from. The key derivation
        binds the key's own encoding (uncompressed point); the request's bytes are that
        encoding when they have its fixed form, and are then not serialised again."""
        eph_der, iv, ciphertext = self._seal(_RELEASE_JSON(config).encode(), runtime_key, nonce, runtime_der)
        return {
            "cas_key": base64.b64encode(eph_der).decode(),
            "iv": base64.b64encode(iv).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
        }

    @staticmethod
    def _seal(
        plaintext: bytes, runtime_key: ec.EllipticCurvePublicKey, nonce: bytes, runtime_der: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """The release of ``plaintext`` to ``runtime_key`` (:meth:`_encrypt`): the CAS's fresh
        key (SPKI DER), the IV and the AES-GCM ciphertext."""
        eph = ec.generate_private_key(ec.SECP256R1())
        eph_der = _spki(eph.public_key())
        if not _is_p256_spki(runtime_der):
            runtime_der = _spki(runtime_key)  # e.g. a compressed point: re-encode it
        key = _release_key_der(eph.exchange(ec.ECDH(), runtime_key), eph_der, runtime_der, nonce)
        iv = os.urandom(12)
        return eph_der, iv, AESGCM(key).encrypt(iv, plaintext, RELEASE_INFO)

    def _secret_value(
        self, reads: _Reads, policy: Policy, digest: str, name: str
    ) -> tuple[SecretValue, dict[str, Any]]:
        spec = policy.secret(name)
        if spec.import_ is None:
            row = reads.secret(policy.name, name)
            if row is None:
                raise PolicyError(f"secret {name} of {policy.name} has no value")
            if row.kind in CERTIFICATE_KINDS:
                reads.dues.append(("secret", policy.name, spec, row.version, row.public))
                if self.renewals.due_at(policy.name, spec, row.version, row.public) <= self.clock():
                    raise RenewalDue(policy.name, name)
            return self._unseal(row), {
                "policy": policy.name,
                "name": name,
                "version": row.version,
            }
        imp = spec.import_
        refused = _not_shared(f"import {name}", imp.session, imp.session_hash, imp.secret, policy.name)
        exporter, _ = self._exporter(reads, imp.session, imp.session_hash, refused)
        try:
            exported: Secret | None = exporter.secret(imp.secret)
        except KeyError:
            exported = None
        allowed = exported is not None and any(
            self._exports_to(reads, e, policy.name, digest) for e in exported.export
        )
        # export_public: the public part (certificate and chain, public key) to every policy.
        public_only = not allowed and exported is not None and exported.export_public
        if exported is None or (not allowed and not public_only):
            # One message whether the exporter exists (at the pinned version), has such a secret
            # or exports it: the importer learns nothing of another's policies (its readers see it).
            raise AccessDeniedError(refused)
        if exported.issue_to_runtime or exported.import_ is not None:
            # The CAS holds no value of it in the exporter's current version: a stored row is
            # from an earlier version (for a certificate, the one revoked as superseded).
            what = "issued to runtimes" if exported.issue_to_runtime else "itself an import"
            raise PolicyError(
                f"import {name}: {imp.session}/{imp.secret} is {what}: the CAS holds no value of it"
            )
        row = reads.secret(imp.session, imp.secret)
        if row is None:
            raise PolicyError(f"import {name}: {imp.session}/{imp.secret} has no value")
        if row.kind in CERTIFICATE_KINDS:
            reads.dues.append(("secret", imp.session, exported, row.version, row.public))
            if self.renewals.due_at(imp.session, exported, row.version, row.public) <= self.clock():
                raise RenewalDue(imp.session, imp.secret)  # importers receive the renewed version
        value = self._unseal(row)
        if public_only:
            try:
                value = public_part(value)
            except PolicyError as exc:
                raise AccessDeniedError(f"import {name}: {imp.session}/{imp.secret}: {exc.message}") from None
        return value, {
            "policy": imp.session,
            "name": imp.secret,
            "version": row.version,
        }

    def _render(
        self,
        reads: _Reads,
        policy: Policy,
        digest: str,
        service: Any,
        runtime_key: ec.EllipticCurvePublicKey | None = None,
        frozen: list[tuple[object, ...]] | None = None,
        issued: list[RuntimeCertificate] | None = None,
    ) -> tuple[dict[str, Any], list[Any]]:
        """The service's configuration and the secrets it releases, from what ``reads`` answers
        (each answer it used is checked again at commit). ``frozen`` collects each volume's
        ``session_volumes`` row but the token (docs/policy.md, "Frozen at release").
        Certificates issued to ``runtime_key`` are appended to ``issued``, which the release
        records (docs/cas.md "Revocation")."""
        released: dict[tuple[str, str], dict[str, Any]] = {}
        cache: dict[str, SecretValue] = {}
        specs = {x.name: x for x in policy.secrets}

        def value_of(name: str) -> SecretValue:
            """The value of the policy's secret ``name`` (resolved once, recorded as released)."""
            spec = specs.get(name)
            if name not in cache and spec is not None and spec.issue_to_runtime:
                if runtime_key is None or spec.issuer is None:
                    raise PolicyError(f"secret {name} is issued to the runtime, which has no key here")
                issuer, issuer_ref = self._secret_value(reads, policy, digest, spec.issuer)
                released[(issuer_ref["policy"], issuer_ref["name"])] = issuer_ref
                now = self.clock()
                value = cache[name] = issue_to_runtime(
                    spec, runtime_key, issuer, datetime.fromtimestamp(now, UTC), self.published(policy, spec)
                )
                assert value.certificate is not None
                record = runtime_certificate(
                    policy.name, name, service.name, issuer_ref, value.certificate, now
                )
                if issued is not None and record is not None:
                    issued.append(record)
                released[(policy.name, name)] = {
                    "policy": policy.name,
                    "name": name,
                    "issued_to_runtime": True,
                    "serial": None if record is None else record.serial,
                }
            if name not in cache:
                value, ref = self._secret_value(reads, policy, digest, name)
                cache[name] = value
                released[(ref["policy"], ref["name"])] = ref
            return cache[name]

        def resolver(context: Context) -> Callable[[Placeholder], bytes]:
            def resolve(ph: Placeholder) -> bytes:
                value = value_of(ph.name)
                try:
                    encoding = encoding_for(value.kind, ph.format, context)
                except ValueError as exc:
                    raise PolicyError(f"$$SCONE::{ph.name}$$: {exc}") from None
                assert encoding is not None
                if encoding in (Encoding.CRL_PEM, Encoding.CRL_DER):
                    der = self._crl_of(reads, policy, digest, ph.name)
                    return crl_pem(der) if encoding == Encoding.CRL_PEM else der
                return render(value, encoding)

            return resolve

        # One budget for everything the release renders (placeholders.MAX_RENDERED): a short
        # placeholder repeated can stand for gigabytes, built in memory at every attestation.
        budget = RenderBudget()
        config: dict[str, Any] = {
            "command": render_command(service.command, resolver(Context.COMMAND), budget)
            if service.command
            else None,
            "environment": render_environment(service.environment, resolver(Context.ENVIRONMENT), budget),
            "pwd": service.pwd,
            "files": {},
        }
        if service.command and (named := service.command_secrets()):
            # the names (never values) of the secrets in the arguments, for confide run's
            # warning (docs/limitations.md "confide run"); an older runtime ignores it
            config["command_secrets"] = list(named)
        volumes = []
        for mount in _service_volumes(policy, service):
            source = self._volume_source(reads, policy, digest, mount.name)
            owner, owned = source.policy, source.volume
            key_row = reads.secret(owner, f"volume/{owned}")
            tag_row = reads.tag(owner, owned)
            if key_row is None or tag_row is None:
                raise PolicyError(f"volume {owned} of {owner} has no key or tag")
            key = self._unseal(key_row)
            if key.kind != "volume-key":
                # The row name is shared with a CA's OCSP responder (a CA secret named "volume",
                # a volume named "ocsp-responder", in a version stored before that was refused):
                # never release another kind of key as the volume's. The kind is sealed.
                raise PolicyError(
                    f"volume {owned} of {owner}: its latest key row is not a volume key (a CA secret "
                    "named 'volume' shares its row name); rename the volume or the secret"
                )
            # The runtime enforces the mode (which tag it accepts, whether it reports a new one);
            # update_volume_tag enforces it again on the CAS's side.
            mode = _update_policy(mount, source.exported)
            entry = {"name": mount.name, "path": mount.path, "key": key.data.hex(), "tag": tag_row[0],
                     "generation": tag_row[1], "update_policy": mode.value}  # fmt: skip
            if source.exported is not None:
                entry.update(source.audit())  # owner, and via for a chain
            volumes.append(entry)
            if frozen is not None:
                chain = {"links": source.links(policy.name, mount.name, digest),
                         "ephemeral_by": source.ephemeral_by}  # fmt: skip
                frozen.append((mount.name, mode.value, owner, owned, json.dumps(chain, sort_keys=True),
                               tag_row[0], tag_row[1], tag_row[0]))  # fmt: skip
            ref = {"policy": owner, "name": f"volume/{owned}", "version": key_row.version}
            released[(owner, f"volume/{owned}")] = ref
        config["volumes"] = volumes
        image = (
            next((i for i in policy.images if i.name == service.image_name), None)
            if service.image_name
            else None
        )
        if image is not None:
            templates: list[str] = []
            modes = {f.path: f.permission for f in image.injection_files if f.permission is not None}
            if modes:
                # SCONE's ``permission`` of an injection file (docs/policy.md "Injection files"):
                # confide run creates the file with it; without it, 0600. A runtime that does not
                # know the member writes every file 0600 (stricter).
                config["modes"] = modes
            for f in image.injection_files:
                if f.content is None:
                    templates.append(f.path)
                    continue
                content = render_file(
                    f.content, resolver(Context.FILE), where=f"injection file {f.path}", budget=budget
                )
                config["files"][f.path] = base64.b64encode(content).decode()
            if templates:
                # SCONE's path-only form: the file in the image is a template that the runtime
                # renders at start, so it may name any secret of the policy. Every secret the
                # policy can resolve now is released with it (and recorded as released); one
                # that cannot be (an import no longer exported) is left out, and a template
                # naming it fails in the runtime.
                values: dict[str, dict[str, Any]] = {}
                for spec in policy.secrets:
                    try:
                        values[spec.name] = template_value(value_of(spec.name))
                    except (AccessDeniedError, PolicyError):
                        continue
                    value = values[spec.name]
                    budget.take(
                        len(value["data"]) + len(value["certificate"] or "") + sum(map(len, value["chain"])),
                        f"secret {spec.name} for the templates",
                    )
                config["templates"] = {"paths": templates, "secrets": values}
        return config, sorted(released.values(), key=lambda r: (r["policy"], r["name"]))

    @staticmethod
    def _exports_to(reads: _Reads, target: Any, name: str, digest: str) -> bool:
        """Whether a secret's ``export`` entry names this version (``digest``) of policy
        ``name`` (docs/cas.md "Secrets"): ``{session, session_hash?}`` that policy (at that
        hash when pinned); ``{namespace: N}`` every policy named ``N/...``, while a policy named
        ``N`` exists (it governs who creates policies in ``N``; an unclaimed namespace would be
        anyone's to create names in, docs/cas.md "Policies and governance"), and only a policy whose
        creation N governed (:meth:`Cas._governed`: not one taken first come before N was
        claimed, nor one below it)."""
        if target.session is not None:
            return bool(target.session == name and target.session_hash in (None, digest))
        namespace = target.namespace
        return (
            namespace is not None
            and name.startswith(namespace + "/")
            and reads.head(namespace) is not None
            and reads.governed(namespace, name)
        )

    def _crl_of(self, reads: _Reads, policy: Policy, digest: str, name: str) -> bytes:
        """The current CRL (DER) of the CA that secret ``name`` of ``policy`` is (its own, or the
        exporter's for an import, whose access :meth:`_secret_value` has checked). Raises
        :class:`RenewalDue` when it is missing or due (the caller issues it and renders again)."""
        spec = policy.secret(name)
        owner, ca, ca_spec = policy.name, name, spec
        if spec.import_ is not None:
            imp = spec.import_
            refused = _not_shared(f"import {name}", imp.session, imp.session_hash, imp.secret, policy.name)
            exporter, _ = self._exporter(reads, imp.session, imp.session_hash, refused)
            owner, ca, ca_spec = imp.session, imp.secret, exporter.secret(imp.secret)
        if not generated_ca(ca_spec):
            raise PolicyError(
                f"$$SCONE::{name}:crl$$: {owner}/{ca} is not a CA the CAS generated: it has no CRL"
            )
        row = reads.crl(owner, ca)
        if row is None or crl_due(row.this_update, row.next_update, self.clock()):
            raise RenewalDue(owner, ca)
        reads.dues.append(("crl", owner, ca, row.this_update, row.next_update))
        return row.der

    def published(self, policy: Policy, spec: Secret) -> Published | None:
        """What certificates of ``spec`` name of their issuer's publications, when the CAS's
        public URL is set (``cas serve --public-url``) and ``spec``'s certificates are generated
        (or issued to runtimes) under a CA of ``policy`` that the CAS generated: its CRL when the
        CA is declared ``crl_distribution`` (docs/cas.md "CRL distribution points"), its
        certificate when declared ``ca_issuers`` ("CA certificates (caIssuers)"), its OCSP
        responder when declared ``ocsp`` ("OCSP"). ``None`` when they name none."""
        if self.public_url is None or spec.issuer is None:
            return None
        if not (renewable(spec) or spec.issue_to_runtime):
            return None  # an explicit or imported certificate: the CAS issues none
        try:
            issuer = policy.secret(spec.issuer)
        except KeyError:
            return None
        if not generated_ca(issuer) or not (issuer.crl_distribution or issuer.ca_issuers or issuer.ocsp):
            return None
        return Published(
            self.public_url, issuer.crl_distribution, issuer.ca_issuers, issuer.ocsp_signer is not None
        )

    def crl(
        self, name: str, ca: str, read_request: Any | None, run: RunWrite | None = None
    ) -> tuple[bytes, float, bool]:
        """The current CRL (DER) of the generated CA ``ca`` of policy ``name``, when it is due
        for refresh (its nextUpdate, seconds) and whether it was served as public. Who may
        fetch it (docs/cas.md "Revocation"): an identity the policy's ``access_policy.read``
        allows (a signed read request naming ``name``), or anyone when the CA is declared
        ``export_public``. Every other request is refused with the same error, whether or not the
        policy or the CA exists. ``run``: as for :meth:`_read_request`."""
        signer = None
        if read_request is not None:
            signer = self._read_request(read_request, "crl", run, name=name)[1].fingerprint
        refused = AccessDeniedError(
            f"no CRL of {name}/{ca} readable by {signer[:16]}…"
            if signer
            else f"no public CRL of {name}/{ca} (only a CA declared export_public has one; "
            "otherwise send a signed read request)"
        )
        for attempt in range(2):
            with self.db.read() as conn:
                head = self.policy_auth.head(conn, name)
                if head is None:
                    raise refused
                policy = self._load(conn, name, head.hash)
                may_read = signer is not None and is_authorized(
                    self._rules_in_force(conn, name, head.hash, policy.access_policy.read),
                    {signer},
                    creator=head.creator,
                )
                if signer is not None and not may_read:
                    raise refused
                try:
                    spec: Any = policy.secret(ca)
                except KeyError:
                    spec = None
                if not may_read and (spec is None or not spec.export_public):
                    raise refused
                if not generated_ca(spec):
                    raise PolicyError(f"{name}/{ca} is not a CA the CAS generated: it has no CRL")
                row = current_crl(conn, name, ca)
            if row is not None and not crl_due(row.this_update, row.next_update, self.clock()):
                return row.der, row.next_update, not may_read
            if attempt == 0:  # missing (a CA from before schema 3) or due: issue it, read again
                renew_due(self, [name])
        if row is None:
            raise ConflictError(f"the CRL of {name}/{ca} could not be issued; try again")
        return row.der, row.next_update, not may_read

    def distributed_crl(self, crl_id: str) -> CrlRow | None:
        """The current CRL served at the public URL ``/v1/crl/<crl_id>.crl`` (docs/cas.md "CRL
        distribution points"), to anyone: that of the one generated CA whose distribution id
        (:func:`confide.cas.secrets.crl_distribution_id`) is ``crl_id`` and that the current
        version of its policy declares ``crl_distribution``. ``None`` for anything else (no such
        CA, not declared so, or two such CAs with the same subject and key), all alike."""
        if not _CRL_ID.fullmatch(crl_id):
            return None
        row: CrlRow | None = None
        for attempt in range(2):
            with self.db.read() as conn:
                served = self._published_ca(conn, crl_id, "crl_distribution")
                if served is None:
                    return None
                row = current_crl(conn, *served)
            if row is not None and not crl_due(row.this_update, row.next_update, self.clock()):
                return row
            if attempt == 0:  # due (the sweep has not run yet): issue it, read again
                renew_due(self, [served[0]])
        return row

    def published_ca_certificate(self, ca_id: str) -> x509.Certificate | None:
        """The certificate served at the public URL ``/v1/ca/<ca_id>.crt`` (docs/cas.md "CA
        certificates (caIssuers)"), to anyone: the current version's certificate of the one
        generated CA whose id (:func:`confide.cas.secrets.crl_distribution_id`, the same as its
        CRL's) is ``ca_id`` and that the current version of its policy declares ``ca_issuers``.
        ``None`` for anything else, all alike, as :meth:`distributed_crl`. Only the row's public
        metadata is read: nothing is unsealed."""
        if not _CRL_ID.fullmatch(ca_id):
            return None
        with self.db.read() as conn:
            served = self._published_ca(conn, ca_id, "ca_issuers")
            row = None if served is None else self._latest_secret(conn, *served)
        if row is None:
            return None
        try:
            cert = x509.load_pem_x509_certificate(json.loads(row.public)["certificate"].encode())
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except (KeyError, TypeError, ValueError, AttributeError, x509.ExtensionNotFound):
            return None
        # The id the crls row was found by names the CA's key of the CRL issued with its current
        # version (same transaction); checked again against the certificate served.
        return cert if crl_distribution_id(cert.subject, ski) == ca_id else None

    def _published_ca(self, conn: Connection, dist_id: str, flag: str) -> tuple[str, str] | None:
        """The (policy, CA) of the one generated CA with distribution id ``dist_id`` whose policy's
        current version declares ``flag`` (``crl_distribution``, ``ca_issuers`` or ``ocsp``) on
        it; ``None`` when none or several do (two CAs with one subject and key cannot be told
        apart)."""
        found = self._published_ca_declaration(conn, dist_id, flag)
        return None if found is None else (found[0], found[1])

    def _published_ca_declaration(
        self, conn: Connection, dist_id: str, flag: str
    ) -> tuple[str, str, Secret] | None:
        """:meth:`_published_ca` with the CA's declaration in its policy's current version."""
        found = raw_execute(
            conn, "SELECT policy, ca FROM crls WHERE distribution_id = ? ORDER BY policy, ca LIMIT 8",
            (dist_id,),
        ).fetchall()  # fmt: skip
        served = []
        for name, ca in found:
            head = self.policy_auth.head(conn, name)
            if head is None:
                continue
            try:
                spec: Any = self._load(conn, name, head.hash).secret(ca)
            except KeyError:
                continue
            if generated_ca(spec) and getattr(spec, flag):
                served.append((str(name), str(ca), spec))
        return served[0] if len(served) == 1 else None

    def _lineage(self, conn: Connection, name: str, head_hash: str) -> set[str]:
        """The versions of the current policy ``name`` (head ``head_hash``): the version that
        created it (reached from the head through ``predecessor``) and every version whose
        predecessor chain reaches that one, its updates pending, stale or superseded included
        (its own boards decided them). Not a competing creation of the name (a version without
        predecessor that is not this root: a namespace board member's pending creation, turned
        ``stale`` when someone else created the name first), which another stakeholder
        submitted and this policy's readers must not read (docs/cas.md "A policy's events")."""
        parent: dict[str, str | None] = {
            r.hash: r.predecessor
            for r in self.policy_auth.versions(conn, name)  # each verified
        }
        root, seen = head_hash, {head_hash}
        while (up := parent.get(root)) is not None and up not in seen:  # hashes name content: no cycle
            seen.add(up)
            root = up
        verdict: dict[str, bool] = {root: True}
        for digest in parent:
            path: list[str] = []
            at: str | None = digest
            while at is not None and at not in verdict and at not in path:
                path.append(at)
                at = parent.get(at)
            found = verdict.get(at, False) if at is not None else False
            verdict.update(dict.fromkeys(path, found))
        return {digest for digest, ours in verdict.items() if ours}

    def events_for(self, read_request: Any, run: RunWrite | None = None) -> dict[str, Any]:
        """The ledger entries of a policy, for identities that may read it, each with its
        inclusion proof in the latest signed checkpoint (``checkpoint``, a C2SP signed note).

        Only the policy's own: of the events filed under its name, those of the types in
        ``_POLICY_EVENTS``, and those of ``_VERSION_EVENTS`` about a version of its lineage
        (:meth:`_lineage`, read in the same transaction). The others stay in the ledger (an
        auditor's ``ledger verify --full`` reads them); each entry's proof is its own, so
        leaving one out changes no other's. ``run``: as for :meth:`_read_request`."""
        info = self._show(*self._read_request(read_request, "events", run))
        name = info["name"]
        # One snapshot (PostgreSQL: REPEATABLE READ): a policy update committed between the head's
        # read and the events rows' (or the ledger's) would otherwise list rows the head and the
        # checkpoint do not agree with, or refuse a listing as altered that was not.
        with self.db.read(snapshot=True) as conn:
            raw = raw_connection(conn)
            note = Ledger.latest_checkpoint(raw)
            size = Checkpoint.from_text(parse_note(note).text).size if note else 0
            # read again in this transaction, verified like every reader of it (confide.cas.policy_auth)
            head = self.policy_auth.head(conn, name)
            if head is None:
                raise PolicyRowsAltered(name, "current version (policy_heads)")
            lineage = self._lineage(conn, name, head.hash)
            ledger = Ledger()
            out = []
            rows = conn.execute(select(t.events).where(t.events.c.policy == name).order_by(t.events.c.seq))
            for r in rows:
                payload = json.loads(r.payload)
                if r.type in _VERSION_EVENTS:
                    digest = payload.get("hash") if isinstance(payload, dict) else None
                    if not (isinstance(digest, str) and digest in lineage):
                        continue
                elif r.type not in _POLICY_EVENTS:
                    continue
                index = r.seq - 1
                entry = _listed_entry(raw, name, index, r.type, payload)
                event: dict[str, Any] = {"seq": r.seq, "index": index, "at": r.at, "type": r.type,
                                         "payload": payload,
                                         "entry": base64.b64encode(entry).decode()}  # fmt: skip
                if index < size:
                    event["inclusion_proof"] = [h.hex() for h in ledger.inclusion_proof(raw, index, size)]
                    link = payload.get("attestation") if r.type == "export-release" else None
                    at = link.get("index") if isinstance(link, dict) else None
                    if type(at) is int and 0 <= at < index:
                        # the importer's attestation entry, by index and leaf hash only (its
                        # content is the importer's): proven in the same checkpoint (a record
                        # without a well-formed link gets none: its readers refuse it)
                        event["attestation_proof"] = [h.hex() for h in ledger.inclusion_proof(raw, at, size)]
                out.append(event)
            # The events rows are an unauthenticated index of the ledger: the policy's latest
            # head entry (read from the ledger itself, confide.cas.head_index) must be among them
            latest, _held = self.policy_auth.index.view(conn).latest(name)
            if latest is not None and all(e["index"] != latest.at for e in out):
                raise EventsAltered(f"the events of policy {name[:128]!r} leave out ledger entry {latest.at}")
        # ``head``: the current version, read in this transaction (the end of the chain of the
        # policy.created/updated entries above, which ``ledger verify --full --identity`` checks)
        return {"checkpoint": note.decode() if note else None, "size": size, "head": head.hash, "events": out}


class EventsAltered(StorageError):
    """An ``events`` row does not match the ledger entry at its index, or the rows leave out a
    policy's latest head entry: the database was altered (the listing is refused)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{why}: the database was altered; the events are not listed until it is restored")


def _listed_entry(raw: Conn, name: str, index: int, type_: str, payload: object) -> bytes:
    """The bytes of ledger entry ``index``, which an ``events`` row of policy ``name`` (type
    ``type_``, ``payload``) indexes: they must hash to the entry's stored leaf hash and say what
    the row says; :class:`EventsAltered` (or ``LedgerEntriesAltered``) otherwise."""
    data = Ledger.entry(raw, index)
    if data is None:
        raise EventsAltered(f"events row {index + 1} of policy {name[:128]!r} names no ledger entry")
    check_leaf(raw, index, data)
    try:
        entry = Entry.from_bytes(data)
    except ParseError:
        raise EventsAltered(f"ledger entry {index} does not parse") from None
    if ENTRY_TYPES.get(type_) != entry.type or entry.policy != name or entry.payload != payload:
        raise EventsAltered(
            f"events row {index + 1} of policy {name[:128]!r} does not say what ledger entry {index} says"
        )
    return data


class PendingAttestation:
    """An attestation between its two phases (:meth:`Cas.attest_begin`): the verdict of phase 1
    (``error``) or the rendered configuration, waiting for :meth:`commit` to spend the nonce and
    evidence, check that the policy and volume versions used are still current, open the session
    and record the outcome and the release, all in the caller's write transaction."""

    def __init__(
        self,
        cas: Cas,
        policy: str,
        service: str,
        nonce: bytes,
        digest: str,
        key_der: bytes,
        runtime_key: ec.EllipticCurvePublicKey,
        outcome: dict[str, Any],
    ) -> None:
        self.cas, self.policy, self.service = cas, policy, service
        self.nonce, self.digest, self.key_der, self.runtime_key = nonce, digest, key_der, runtime_key
        self.outcome = outcome
        # (evidence, GPU evidence, time) once verified and bound: what appraisal needs again
        # when phase 2 renders anew
        self.verified: tuple[VerifiedEvidence, list[VerifiedEvidence], datetime] | None = None
        self.reads: _Reads | None = None  # what the appraisal and rendering read (and were told)
        self.policy_hash = ""
        self.config: dict[str, Any] = {}
        self.released: list[Any] = []
        self.frozen: list[tuple[object, ...]] = []  # session_volumes rows but the token
        self.issued: list[RuntimeCertificate] = []  # certificates issued to the runtime's key
        self.policy_known = False  # the policy existed in phase 1
        self.refused: ConfideError | None = None  # the verdict of phase 1
        self.error: ConfideError | None = None  # the final verdict, set by commit
        self.token = os.urandom(32)
        self.committed = False
        self.expires: float | None = None  # the nonce's expiry, once phase 1 checked its MAC
        self.rendered_at_commit = False  # phase 2 appraised and rendered again (an answer had changed)
        self.rendering: _Rendered | None = None  # the snapshot's rendering ``config`` is a copy of

    def reset(self, reads: _Reads) -> None:
        """Forget the appraisal and rendering (before they run, again, on ``reads``)."""
        self.reads = reads
        self.policy_hash, self.policy_known, self.refused = "", False, None
        self.config, self.released, self.rendering = {}, [], None
        self.frozen.clear()
        self.issued.clear()
        for k in ("policy_hash", "tolerated"):
            self.outcome.pop(k, None)

    def commit(self, conn: Connection) -> None:
        """Phase 2, inside a write transaction. Never raises for a refusal: the refusal is
        recorded and kept in ``error`` (so a shared group commit is not rolled back by it).

        Every answer phase 1's appraisal and rendering used (policy heads with their revisions,
        the latest secret rows, volume tags, CRLs: ``reads``) is read again here; if one changed
        since (another request, another CAS process sharing the database, or a snapshot older
        than the change), the appraisal and rendering run again on the state as of this
        transaction, which holds the write lock: the release is always the current state's."""
        cas, outcome = self.cas, self.outcome
        for k in ("verdict", "reason_class", "reason"):  # a retry after a rolled-back group commit
            outcome.pop(k, None)
        if self.reads is not None and not self.reads.current(conn):
            cas._snapshots.pop((self.policy, self.service))
            self.rendered_at_commit = True
            try:
                cas._appraise_and_render(self, _Reads(cas, conn))
            except RenewalDue as due:  # the renewal needs a write transaction of its own
                self.refused = ConflictError(f"{due}; attest again")
        self.error = self.refused  # a retry after a rolled-back group commit starts afresh
        if self.error is not None:
            # Refused in phase 1: the nonce and evidence are spent all the same (a replay is
            # recorded with the original reason).
            with contextlib.suppress(ConfideError):
                cas._use_once(conn, self.nonce, self.digest, self.expires)
            outcome.update(
                {"verdict": "refused", "reason_class": self.error.kind,
                 "reason": self.error.message[:REASON_CHARS]}
            )  # fmt: skip
            # A refusal for a policy name that does not exist is not filed under that name: it
            # would show up in the events of whoever creates a policy of that name later.
            cas.events.record(conn, "attestation", self.policy if self.policy_known else None, outcome)
            self.committed = True
            return
        try:
            raw = raw_connection(conn)  # the DB-API connection, resolved once per attestation
            cas._use_once(conn, self.nonce, self.digest, self.expires, raw)
            token_sha256 = hashlib.sha256(self.token).hexdigest()
            ledger_execute(
                raw,
                "INSERT INTO sessions (token_sha256, policy, service, measurement, expires_at, "
                "volumes_frozen) VALUES (?, ?, ?, ?, ?, 1)",
                (token_sha256, self.policy, self.service, outcome.get("measurement"),
                 cas.clock() + SESSION_TTL),
            )  # fmt: skip
            if self.frozen:
                # what governs the session's tag reports (docs/policy.md, "Frozen at release")
                raw_executemany(
                    conn,
                    "INSERT INTO session_volumes (token_sha256, volume, update_policy, owner_policy, "
                    "owner_volume, chain, released_tag, released_generation, tag) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(token_sha256, *row) for row in self.frozen],
                )
            if self.issued:  # so that they can be revoked (docs/cas.md "Revocation")
                record_runtime_certificates(conn, token_sha256, self.issued)
        except ConfideError as exc:
            self.error = exc
            outcome.update(
                {"verdict": "refused", "reason_class": exc.kind, "reason": exc.message[:REASON_CHARS]}
            )
            cas.events.record(conn, "attestation", self.policy, outcome)
        else:
            outcome["verdict"] = "accepted"
            release = _release_record(
                self.service,
                self.policy_hash,
                self.released,
                hashlib.sha256(self.key_der).hexdigest(),
                outcome.get("measurement"),
                self.config.get("volumes"),
            )
            events = [("attestation", self.policy, outcome), ("secret-release", self.policy, release)]
            exports = _export_records(self.policy, release, outcome)
            if exports:  # imports released: each exporter's record, linked to the attestation entry
                cas.events.record_linked(conn, events, exports)
            else:
                cas.events.record_many(conn, events)
        self.committed = True

    @property
    def accepted(self) -> bool:
        return self.committed and self.error is None

    def _opaque_refusal(self) -> AppraisalError:
        """``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"): the one answer to a
        recorded refusal, whatever its reason (no policy, no service, a mismatch, a tolerance, a
        revoked or out-of-date platform, a spent nonce, evidence that does not verify...), so that
        the attester learns neither whether the policy and service exist nor what they expect.
        The reason is in the ledger entry :meth:`commit` recorded and in the line logged here."""
        assert self.error is not None
        outcome = self.outcome
        _LOG.warning(
            json.dumps(
                {"event": "attestation-refused", "policy": self.policy, "service": self.service,
                 "platform": outcome.get("platform"), "evidence_sha256": outcome.get("evidence_sha256"),
                 "reason_class": self.error.kind, "reason": self.error.message[:REASON_CHARS]}
            )
        )  # fmt: skip
        return AppraisalError(OPAQUE_ATTEST_REFUSAL)

    def _raise_if_refused(self) -> None:
        """Before a release is made: a :class:`UsageError` before :meth:`commit` was committed,
        the refusal (or, with ``--opaque-refusals``, its opaque answer) raised."""
        if not self.committed:
            raise UsageError("PendingAttestation.result() before commit()")
        if self.error is not None:
            if self.cas.opaque_refusals:
                raise self._opaque_refusal()
            raise self.error

    def result(self) -> dict[str, Any]:
        """After :meth:`commit` has been committed: the release encrypted to the runtime's key,
        or the refusal raised."""
        self._raise_if_refused()
        config = dict(self.config)
        config["session"] = self.token.hex()
        return self.cas._encrypt(config, self.runtime_key, self.nonce, self.key_der)

    def result_body(self) -> bytes:
        """:meth:`result` as the JSON bytes of the CAS's answer (``POST /v1/attest``): the same
        bytes as that dict written by ``json`` with compact separators and ``ensure_ascii=False``
        (starlette's ``JSONResponse``), made without the encoder (:func:`release_json`); the same
        refusals, raised the same way."""
        self._raise_if_refused()
        plaintext = self._release_plaintext()
        return release_json(*self.cas._seal(plaintext, self.runtime_key, self.nonce, self.key_der))

    def _release_plaintext(self) -> bytes:
        """``_RELEASE_JSON`` of the configuration with the session token added (the plaintext
        :meth:`result` encrypts). From a snapshot's rendering, whose configuration this one is
        a copy of, the configuration's text is written once per rendering and the token's
        member added to it: ``json`` writes a member added last to a ``dict`` as ``, "session":
        "<hex>"`` before the closing brace (default separators), so the bytes are the same."""
        session = self.token.hex()
        rendering = self.rendering
        if rendering is None or not self.config or "session" in self.config:
            config = dict(self.config)
            config["session"] = session
            return _RELEASE_JSON(config).encode()
        if not rendering.encoded:
            rendering.encoded.append(_RELEASE_JSON(rendering.config))
        return f'{rendering.encoded[0][:-1]}, "session": "{session}"}}'.encode()


def release_json(cas_key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """``{"cas_key":…,"iv":…,"ciphertext":…}`` (each base64) as compact JSON: the bytes ``json``
    writes for :meth:`Cas._encrypt`'s dict with ``separators=(",", ":")`` (with or without
    ``ensure_ascii``). Base64's alphabet (RFC 4648 §4: A-Z a-z 0-9 + / =) has no character that
    JSON escapes (RFC 8259 §7: quotation mark, reverse solidus, controls), so each value is
    written as it is, between quotation marks."""
    return b"".join(
        (b'{"cas_key":"', base64.b64encode(cas_key), b'","iv":"', base64.b64encode(iv),
         b'","ciphertext":"', base64.b64encode(ciphertext), b'"}')
    )  # fmt: skip


def _release_record(
    service: str,
    policy_hash: str,
    released: list[Any],
    key_sha256: str,
    measurement: Any,
    volumes: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The payload of a release's ``secret-release`` event (ledger ``secret.released``): names,
    versions and hashes, never a value."""
    release = {
        "service": service, "policy_hash": policy_hash, "secrets": released,
        "runtime_key_sha256": key_sha256, "measurement": measurement,
    }  # fmt: skip
    if volumes:
        # each volume's mode as released (never its key), so the ledger shows how the service
        # was allowed to change it
        release["volumes"] = [
            {k: v[k] for k in ("name", "owner", "via", "tag", "generation", "update_policy") if k in v}
            for v in volumes
        ]
    return release


def _export_records(
    policy: str, release: dict[str, Any], outcome: dict[str, Any]
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The ``export-release`` events of a release (``release``: its ``secret-release`` payload)
    to a service of ``policy``: one filed under each other policy whose secret or volume it
    holds (a volume's owner, and every re-exporter on its chain), saying what that exporter may
    know and no more: the importer, its version, the service, the exporter's own secrets and
    volumes released (names, versions, tags; never the importer's other secrets, its mount
    names or configuration) and the attestation's platform and measurement. The sink adds the
    attestation entry's index and leaf hash (``attestation``). None for a release without
    imports (the common case: one pass over the released names)."""
    secrets: dict[str, list[dict[str, Any]]] = {}
    for ref in release["secrets"]:
        if ref["policy"] != policy:
            secrets.setdefault(ref["policy"], []).append(ref)
    if not secrets:
        return []  # a volume's chain starts at its owner, whose key ref is released: none here
    volumes: dict[str, list[dict[str, Any]]] = {}
    for v in release.get("volumes") or ():
        owner = v.get("owner")
        if owner is None:
            continue
        link = {k: v[k] for k in ("owner", "via", "tag", "generation", "update_policy") if k in v}
        ref = next(r for r in secrets[owner["policy"]] if r["name"] == f"volume/{owner['volume']}")
        volumes.setdefault(owner["policy"], []).append(link)
        for hop in v.get("via") or ():
            # a re-exporter sees its own volume as released, with the owner's key version
            if hop["policy"] == policy:
                continue
            mine = {"policy": hop["policy"], "name": f"volume/{hop['volume']}", "version": ref["version"]}
            if mine not in secrets.setdefault(hop["policy"], []):
                secrets[hop["policy"]].append(mine)
            volumes.setdefault(hop["policy"], []).append(link)
    summary = {k: outcome.get(k) for k in ("platform", "measurement", "tcb_status", "simulated")}
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    for exporter in sorted(secrets):
        record: dict[str, Any] = {
            "importer": policy, "importer_policy_hash": release["policy_hash"],
            "service": release["service"], "secrets": secrets[exporter], **summary,
        }  # fmt: skip
        if exporter in volumes:
            record["volumes"] = volumes[exporter]
        out.append(("export-release", exporter, record))
    return out


# What a ledger entry adds to its payload (docs/ledger.md: the members "policy", "time", "type"
# and "v"), without the policy name, with room to spare.
_ENTRY_OVERHEAD = 256


def _release_record_bound(policy: str, service: str, released: list[Any], config: dict[str, Any]) -> int:
    """An upper bound of the size of the ledger entry of this rendering's ``secret-release``
    event (:func:`_check_release_record`)."""
    record = _release_record(service, "0" * 64, released, "0" * 64, "0" * 128, config.get("volumes"))
    return len(json.dumps(record, separators=(",", ":"))) + len(json.dumps(policy)) + _ENTRY_OVERHEAD


def _export_records_bound(policy: str, service: str, released: list[Any], config: dict[str, Any]) -> int:
    """An upper bound of the size of the largest ``export-release`` entry of this rendering
    (:func:`_export_records`), with the longest summary and attestation link any has."""
    release = _release_record(service, "0" * 64, released, "0" * 64, "0" * 128, config.get("volumes"))
    outcome = {"platform": "x" * 32, "measurement": "0" * 128, "tcb_status": "x" * 64, "simulated": False}
    link = {"index": 2**53 - 1, "leaf_hash": "0" * 64}
    return (
        max(
            len(json.dumps({**record, "attestation": link}, separators=(",", ":")))
            + len(json.dumps(exporter))
            for _, exporter, record in _export_records(policy, release, outcome)
        )
        + _ENTRY_OVERHEAD
    )


def _check_release_record(policy: str, service: str, released: list[Any], config: dict[str, Any]) -> None:
    """Refuse (``PolicyError``) a rendering whose ``secret-release`` event could not be recorded:
    a ledger entry holds at most :data:`~confide.ledger.store.MAX_ENTRY_SIZE` bytes (C2SP
    tlog-tiles: a uint16 length), and an entry too large failed the write transaction of the
    release, and with it the group commit's other attestations. Measured on the record with the
    longest key hash and measurement any release has, as compact JSON with ASCII escapes, never
    shorter than the entry's canonical JSON (UTF-8); made once per rendering (a snapshot's
    rendering passed it)."""
    size = _release_record_bound(policy, service, released, config)
    if size <= MAX_ENTRY_SIZE and any(r["policy"] != policy for r in released):
        size = max(size, _export_records_bound(policy, service, released, config))
    if size > MAX_ENTRY_SIZE:
        raise PolicyError(
            f"service {service} would release {len(released)} secrets and volumes, whose record (about"
            f" {size} bytes) does not fit in one ledger entry ({MAX_ENTRY_SIZE} bytes): release fewer"
            " to one service (its environment, command, injection files and templates), or shorten"
            " the names"
        )


def _check_submission_record(name: str, payload: dict[str, Any]) -> None:
    """Refuse (``PolicyError``) a submission recorded whole (no explicit values) whose event
    could not be: a ledger entry holds at most :data:`~confide.ledger.store.MAX_ENTRY_SIZE`
    bytes, and the loader accepts policies of up to 1 MiB, so a valid policy of more than about
    64 KB was refused at the ledger's write as a ``UsageError`` about "entry 0". Measured as
    compact UTF-8 JSON (the entry's form), with room for the entry's other members."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    size = len(body) + len(json.dumps(name)) + _ENTRY_OVERHEAD
    if size > MAX_ENTRY_SIZE:
        raise PolicyError(
            f"policy {name}: its submission (about {size} bytes) does not fit in one ledger entry"
            f" ({MAX_ENTRY_SIZE} bytes), where the CAS records it whole: expected a smaller policy"
        )


def _evidence_summary(v: VerifiedEvidence) -> dict[str, Any]:
    c = v.claims
    measurement = c.get("measurement") or c.get("mr_enclave") or c.get("mr_td") or c.get("pcr0")
    summary = {
        "measurement": measurement,
        "tcb_status": v.tcb_status.value if v.tcb_status else None,
        "advisories": list(v.advisory_ids),
        "debug": c.get("debug"),
        "simulated": v.simulated,
    }
    if v.platform is Platform.NVIDIA_GPU:  # a GPU-only attestation: as _gpu_summary records it
        summary["rims_compared"] = c.get("rims_compared")
        summary.update(_revocation_summary(v))
    if v.platform is Platform.SEV_SNP:  # the runtime sent the VCEK, or the CAS fetched it (--kds)
        summary["vcek_source"] = v.details.get("vcek_source")
    if v.platform is Platform.GCE_TPM:  # the VM, as the AK certificate Google issued names it
        summary["gce_instance"] = _gce_instance_summary(c.get("instance"))
        summary["gce_tee"] = _gce_tee_summary(c.get("tee"), v.details.get("tee_vcek_source"))
    if v.tcb_evaluation is not None:
        # Intel DCAP: the tcbEvaluationDataNumber of the TCB Info and QE Identity that judged
        # this evidence (Intel PCS API v4), so that an auditor sees the collateral's vintage
        numbers: dict[str, Any] = {
            "tcb_info": v.tcb_evaluation.tcb_info,
            "qe_identity": v.tcb_evaluation.qe_identity,
        }
        required = v.details.get("required_tcb_evaluation")
        if isinstance(required, dict):
            # cas serve --min-tcb-eval-number auto: the minimum Intel's list set, and why
            numbers["required"] = required.get("required")
            numbers["reason"] = required.get("reason")
        summary["tcb_evaluation"] = numbers
    return summary


def _gce_instance_summary(instance: Any) -> dict[str, Any] | None:
    """Project, zone and instance of a ``gce-tpm`` attestation's production instance (``None``:
    the AK certificate names none); numbers as decimal strings (a uint64 does not fit the
    ledger's RFC 8785 JSON numbers)."""
    if not isinstance(instance, Mapping):
        return None
    out: dict[str, Any] = {}
    for key in ("project_id", "project_number", "zone", "instance_name", "instance_id"):
        value = instance.get(key)
        out[key] = None if value is None or isinstance(value, bool) else str(value)
    return out


def _gce_tee_summary(tee: Any, vcek_source: Any) -> dict[str, Any] | None:
    """The Confidential VM's hardware report of a ``gce-tpm`` attestation (``None``: none): its
    technology, its launch measurement (SEV-SNP ``measurement``, TDX ``mr_td``) and, for SEV-SNP,
    where the VCEK/VLEK came from (``sent`` with the report, or ``kds``)."""
    if not isinstance(tee, Mapping):
        return None
    kind = tee.get("type")
    out: dict[str, Any] = {"type": kind, "measurement": tee.get("measurement") or tee.get("mr_td")}
    if kind == "sev-snp":
        out["vcek_source"] = vcek_source
    return out


def _revocation_summary(v: VerifiedEvidence) -> dict[str, Any]:
    """Whether the GPU's chain (and its RIMs' signing chains) were checked by OCSP (``cas serve
    --nvidia-ocsp``): auditors can tell which accepted GPUs were not."""
    c = v.claims
    return {
        "revocation_checked": c.get("revocation_checked") is True,
        "rim_revocation_checked": c.get("rim_revocation_checked") is True,
        # The RIMs the measurements were compared with: sent by the runtime, or fetched by the CAS
        # (cas serve --nvidia-rim: "service" for a URL, "dir" for a directory); None: none.
        "rims_source": v.details.get("rims_source"),
        # Where the device chain's OCSP status came from: "stapled" (sent with the evidence,
        # confide run --gpu-ocsp), "responder", "dir", or "stapled+responder"/"stapled+dir";
        # None: not checked.
        "ocsp_source": v.details.get("ocsp_source"),
    }


def _gpu_summary(slot: str, v: VerifiedEvidence) -> dict[str, Any]:
    """Which GPU was attested, for the ledger: identities and the SHA-256 of the RFC 8785 JSON
    of its measurements claim (no secrets are in a GPU report)."""
    c = v.claims
    measurements = c.get("measurements")
    digest = None if measurements is None else hashlib.sha256(jcs(measurements)).hexdigest()
    return {
        "slot": slot,
        "evidence_sha256": v.evidence_digest,
        "fwid": c.get("fwid"),
        "ueid": c.get("ueid"),
        "attestation_key_sha256": c.get("attestation_key_sha256"),
        "measurements_sha256": digest,
        "driver_version": c.get("driver_version"),
        "vbios_version": c.get("vbios_version"),
        "rims_compared": c.get("rims_compared"),
        **_revocation_summary(v),
    }


def _same_explicit(spec: Any, current: SecretValue, resolved: dict[str, SecretValue]) -> bool:
    """Whether the sealed value ``current`` is the explicit value ``spec`` declares (what the
    fingerprint does not say when the value is withheld from it); constant time."""
    declared = generate(spec, resolved=resolved)
    return declared.kind == current.kind and hmac.compare_digest(declared.data, current.data)


def _sha(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def _update_policy(mount: ImageVolume, exported: UpdatePolicy | None) -> UpdatePolicy:
    """The update policy of a service for a volume it mounts (``images[].volumes[]``).

    Own volume: the image's ``update_policy``, ``rollback_protected`` when absent. Imported
    volume: the exporter decides how others may change its data, so the export's policy
    applies; the importer's image may only make it stricter (``UpdatePolicy.strictness``),
    never looser: an exported ``ephemeral`` stays ``ephemeral``, an importer's
    ``no_rollback_protection`` under a ``rollback_protected`` export is ``rollback_protected``."""
    if exported is None:
        return mount.update_policy or UpdatePolicy.ROLLBACK_PROTECTED
    return UpdatePolicy.strictest(exported, mount.update_policy or exported)


def _service_volumes(policy: Policy, service: Any) -> list[Any]:
    """The volumes a service mounts: those of its image (``images[].volumes``: name and path)."""
    if not service.image_name:
        return []
    image = next((i for i in policy.images if i.name == service.image_name), None)
    return list(image.volumes) if image is not None else []


def _submission_refused(submitter: str, name: str) -> AccessDeniedError:
    """The one refusal of a submission by an identity that may neither create ``name`` (its
    namespace's ``create_sessions``) nor update it (its ``update`` rules), whether or not the
    policy exists (docs/cas.md "Policies and governance"): its existence is shown only to those
    who may read it, as by ``policy show`` and approvals."""
    return AccessDeniedError(
        f"identity {submitter[:16]}… may not create or update policy {name} (its access_policy.update, "
        "or for a new name its namespace's create_sessions)"
    )


def _not_shared(what: str, exporter: str, pinned: str | None, shared: str, importer: str) -> str:
    """The one refusal of an import (``what``) of ``shared`` (a secret's name, or ``volume V``)
    from policy ``exporter``: whether it does not exist, is not at the version ``pinned`` or
    does not export it to this version of ``importer`` (docs/cas.md "Secrets")."""
    at = "" if pinned is None else f" at the version the import pins ({pinned[:16]}…)"
    return f"{what}: {exporter}{at} does not export {shared} to this version of {importer}"


def _mentions(rules: Any, fingerprint: str, creator: str) -> bool:
    """Whether one of the rules' identities, at any depth of their boards, is ``fingerprint``
    (itself, or ``CREATOR`` when it is the creator): a board member (docs/cas.md "Policies and
    governance"). Identities are compared whole: one that merely contains the fingerprint (or
    ``CREATOR``), such as a certificate, does not name it. ``$$SCONE::name$$`` entries are
    resolved before (:meth:`Cas._rules_in_force`); one left unresolved names no one."""
    for rule in rules:
        if isinstance(rule, RequireAll):
            nested: Any = rule.require_all
        elif isinstance(rule, RequireAtLeast):
            nested = rule.rules
        else:
            identity = rule.signer if isinstance(rule, SignerRule) else rule
            if identity == fingerprint or (identity == "CREATOR" and fingerprint == creator):
                return True
            continue
        if _mentions(nested, fingerprint, creator):
            return True
    return False
