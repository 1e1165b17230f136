"""The Python SDK of confide: what stakeholders and services do with a CAS, from Python.

A thin, typed facade over the code the ``confide`` command runs: every call below makes the
same requests as its command (docs/cas.md "Command-line contract"), signs the same documents,
checks the same things and raises the same :mod:`confide.errors` classes, so a script can move
between the two. Results are frozen dataclasses; JSON the CAS returns inside them is read-only
(:data:`JsonValue`: mappings and tuples). docs/sdk.md has a worked example.

Connecting (each returns a :class:`Cas`, a context manager that closes its connection)::

    Cas.from_env()                    # the variables of client.env (CONFIDE_CAS_URL, ...)
    Cas.from_env_file("DIR/client.env")
    Cas.connect(url, ca_cert=PATH_OR_PEM, log_key=VKEY)
    Cas.attested(url, sim_key=..., measurements=[...])   # as ``confide cas attest``: pin by evidence

Stakeholders (:class:`Identity` signs)::

    cas.apply(policy, identity) -> PolicyStatus      # confide policy apply
    cas.approve(name, hash, identity) -> PolicyStatus
    cas.show(name, identity) -> PolicyInfo           # never secret values
    cas.events(name, identity) -> tuple[PolicyEvent, ...]
    cas.history(name, identity) -> History           # confide ledger history (proven in the log)
    cas.accesses(name, identity, secret=None) -> Accesses (a tuple of Access)
    cas.crl(name, secret, identity=None, ca=None) -> bytes   # checked: signed by the CA, current
    cas.checked_crl(name, secret, identity=None, ca=None) -> CheckedCrl   # and what was checked
    cas.revoke(name, secret, identity, serial=... | all_valid=True) -> Revocation

The auditor's check of the CAS's log (``confide ledger verify --state FILE``)::

    cas.verify_log(state="auditor.json") -> LogVerification
    cas.verify_log(state="auditor.json", full=True, identity=me) -> LogVerification  # its policies' entries

The successor board (``confide cas successor ...``; ``expires``: a datetime or a timedelta)::

    cas.successor() -> SuccessorBoard                                    # show
    cas.approve_successor(platform, claims, identity, expires=...) -> SuccessorApproval
    cas.withdraw_successor_approval(approval, identity) -> SuccessorWithdrawal
    cas.board_changes() -> BoardChanges                                  # board show
    cas.propose_board_change(board, identity, expires=...) -> BoardChangeApproval
    cas.approve_board_change(change, identity, expires=...) -> BoardChangeApproval
    cas.retirements() -> Retirements                                     # retire show
    cas.propose_retirement(platform, code, identity, expires=...) -> RetirementApproval
    cas.approve_retirement(retirement, identity, expires=...) -> RetirementApproval

asyncio: :class:`AsyncCas` has the same calls as coroutines (each run in a worker thread)::

    async with await AsyncCas.from_env() as cas:
        status = await cas.apply(policy, identity)
        async with cas.mount_volumes(release) as volumes: ...   # a session thread mounts and seals

Services that attest themselves (not started by ``confide run``)::

    cas.attest("POLICY/SERVICE", provider) -> Release   # the same code as confide run
    release.write_files() -> tuple[Path, ...]          # its injection files, as confide run
    with cas.mount_volumes(release) as volumes:        # its protected volumes, as confide run:
        volumes.paths["data"]                          # sealed and new tags reported at exit

Errors: every call raises :class:`~confide.errors.ConfideError` subclasses only (its docstring
names which); the CAS's refusals arrive as the class the CAS raised (``AccessDeniedError`` for a
policy the identity may not read, ``ConflictError`` for a stale predecessor, ``AppraisalError``
for evidence a policy refuses, ...), and ``NetworkError`` when the CAS cannot be reached or is
not the one trusted. Each error's ``exit_code`` is the one the command exits with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import logging
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeAlias, TypeVar

from confide.cas.answer import flag as _bool
from confide.cas.answer import integer as _int
from confide.cas.answer import mapping as _mapping
from confide.cas.answer import obj as _answer_object
from confide.cas.answer import objects, policy_state, texts
from confide.cas.answer import optional_text as _opt_str
from confide.cas.answer import text as _str
from confide.cas.client import CasClient
from confide.errors import ParseError, StorageError, UsageError
from confide.frozenmap import FrozenMap
from confide.fsutil import read_small_file
from confide.identity import Identity, PublicIdentity, load_identity

if TYPE_CHECKING:
    from cryptography import x509

    from confide.cas.audit import VerifiedEvent
    from confide.cas.pin import PinnedCas
    from confide.ledger.auditor import CosignWait, LogVerification, ViewUpdate
    from confide.ledger.checkpoint import SignedCheckpoint
    from confide.ledger.freshness import Freshness
    from confide.ledger.note import NoteVerifier
    from confide.policy import Policy
    from confide.runtime.quote import Evidence, QuoteProvider, SimQuoteProvider
    from confide.runtime.run import Release
    from confide.runtime.volumes import MountedVolumes, VolumeRelease
    from confide.verify.crl_answer import CheckedCrl

__all__ = [
    "ENV_LOG_KEY",
    "ENV_SIM_DIR",
    "MAX_ANSWER_DEPTH",
    "Access",
    "Accesses",
    "AsyncCas",
    "BoardApprover",
    "BoardChange",
    "BoardChangeApproval",
    "BoardChanges",
    "CaCertificate",
    "Cas",
    "CheckedCrl",
    "Evidence",
    "Expiry",
    "History",
    "HistoryEntry",
    "Identity",
    "JsonValue",
    "LogVerification",
    "PendingRetirement",
    "PolicyEvent",
    "PolicyInfo",
    "PolicyStatus",
    "PolicyVersion",
    "PublicIdentity",
    "QuoteProvider",
    "Release",
    "ReleasedSecret",
    "RetirementApproval",
    "Retirements",
    "Revocation",
    "RevocationReason",
    "SecretInfo",
    "SimQuoteProvider",
    "SuccessorApproval",
    "SuccessorBoard",
    "SuccessorTarget",
    "SuccessorWithdrawal",
    "ViewState",
    "VolumeMounts",
    "VolumeRelease",
    "create_identity",
    "load_identity",
    "measure",
]

_SERVICE_SIDE = {
    "Evidence": "confide.runtime.quote",
    "QuoteProvider": "confide.runtime.quote",
    "SimQuoteProvider": "confide.runtime.quote",
    "Release": "confide.runtime.run",
    "VolumeRelease": "confide.runtime.volumes",
}
"""The service side's names, imported when first used: a stakeholder's script does not load the
runtime (secret rendering, volumes, quote providers)."""
_LAZY = {
    **_SERVICE_SIDE,
    "LogVerification": "confide.ledger.auditor",
    "CheckedCrl": "confide.verify.crl_answer",
}
"""Names imported when first used (the log auditor's too)."""


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


ENV_LOG_KEY = "CONFIDE_LOG_KEY"
"""The variable of client.env holding the CAS's transparency-log verifier key."""
ENV_SIM_DIR = "CONFIDE_SIM_DIR"
"""The variable of client.env (``cas serve --dev``) naming the simulated platform's directory."""

JsonValue: TypeAlias = "bool | int | float | str | tuple[JsonValue, ...] | Mapping[str, JsonValue] | None"
"""JSON as the SDK returns it: read-only (objects are mappings, arrays tuples)."""

RevocationReason: TypeAlias = Literal[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]
"""RFC 5280 §5.3.1 reasons ``confide policy revoke --reason`` takes."""

CaCertificate: TypeAlias = "x509.Certificate | bytes | str | os.PathLike[str]"
"""A CA's certificate as :meth:`Cas.crl` takes it: loaded, PEM or DER bytes, or a file's path."""

_EMPTY: Mapping[str, JsonValue] = FrozenMap({})


def _edge_now(now: datetime | None) -> datetime:
    """``now``, or this machine's clock: the one place the CRL check's time is read."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise UsageError("now: give the time zone (a datetime with tzinfo, e.g. UTC)")
    return now


def _ca_certificate(ca: CaCertificate) -> x509.Certificate:
    """The CA certificate a caller gave :meth:`Cas.crl` (``ParseError`` unless it is one
    certificate; ``UsageError`` for a file that cannot be read)."""
    from cryptography import x509  # noqa: PLC0415

    from confide.verify.crl_answer import load_ca_certificate  # noqa: PLC0415
    from confide.verify.x509util import CERTIFICATE_ERRORS, check_certificate_fields  # noqa: PLC0415

    what = "the CA certificate (ca=)"
    if isinstance(ca, x509.Certificate):
        try:
            return check_certificate_fields(ca)
        except CERTIFICATE_ERRORS as exc:
            raise ParseError(f"got a malformed certificate ({exc})", structure=what) from None
    data = ca if isinstance(ca, bytes) else read_small_file(Path(ca), 1 << 20, what)
    return load_ca_certificate(data, what)


def _scalar(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ParseError(f"got a {type(value).__name__}, expected JSON", structure="the CAS's answer")


def _children(
    value: dict[object, object] | list[object] | tuple[object, ...],
) -> Iterator[tuple[str, object]]:
    if isinstance(value, dict):
        return ((str(k), v) for k, v in value.items())
    return (("", v) for v in value)


MAX_ANSWER_DEPTH = 200
"""Deepest nesting of a CAS answer the SDK takes (a policy nests at most 64 deep): deeper is a
``ParseError``, so that ``repr``, ``dataclasses.asdict`` or ``json.dumps`` of a result, which
recurse, cannot exhaust the stack either."""


def _freeze(value: object) -> JsonValue:
    """Parsed JSON, read-only: dicts as mappings, lists as tuples. Without recursion: an answer
    nested as deeply as the JSON reader takes (almost the interpreter's recursion limit) is a
    ``ParseError`` beyond :data:`MAX_ANSWER_DEPTH`, not a ``RecursionError``."""
    # Each frame: its key in the parent, whether it is an object, its children still to freeze,
    # the ones frozen. The root is wrapped in a one-element frame.
    stack: list[tuple[str, bool, Iterator[tuple[str, object]], list[tuple[str, JsonValue]]]]
    stack = [("", False, iter([("", value)]), [])]
    while True:
        _key, _is_object, children, done = stack[-1]
        for key, child in children:
            if isinstance(child, dict | list | tuple):
                if len(stack) > MAX_ANSWER_DEPTH:
                    raise ParseError(f"nested deeper than {MAX_ANSWER_DEPTH}", structure="the CAS's answer")
                stack.append((key, isinstance(child, dict), _children(child), []))
                break
            done.append((key, _scalar(child)))
        else:
            key, is_object, _, done = stack.pop()
            if not stack:
                return done[0][1]
            frozen: JsonValue = FrozenMap(dict(done)) if is_object else tuple(v for _, v in done)
            stack[-1][3].append((key, frozen))


def _object(value: object, what: str) -> Mapping[str, JsonValue]:
    """A CAS answer, read-only (:func:`_freeze`), an object: its members are read with
    :mod:`confide.cas.answer`'s readers, as the commands read them."""
    return _answer_object(_freeze(value), what)


def _strs(obj: Mapping[str, JsonValue], key: str, what: str) -> tuple[str, ...]:
    return texts(obj, key, what, optional=True)


def _objects(obj: Mapping[str, JsonValue], key: str, what: str) -> tuple[Mapping[str, JsonValue], ...]:
    return objects(obj, key, what, optional=True)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyStatus:
    """A version's state after ``apply`` or ``approve``: ``active`` (current) or ``pending``
    (awaiting approvals of the policy's update board)."""

    name: str
    hash: str
    state: str
    warnings: tuple[str, ...] = ()
    """``apply``'s warnings about the policy it applied, one line each (what ``confide policy
    apply`` prints on stderr): a secret a service's command puts into its arguments (readable
    in ``/proc/PID/cmdline``; :func:`confide.policy.command_warnings`), an injection file whose
    ``permission`` lets group or others read it (:func:`confide.policy.policy_warnings`), an
    attestation variant the policy's tolerances let nothing match
    (:func:`confide.policy.model.tolerance_warnings`)."""

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    @classmethod
    def _from(cls, answer: object, warnings: tuple[str, ...] = ()) -> PolicyStatus:
        return cls(*policy_state(_freeze(answer), "the CAS's policy answer"), warnings)


@dataclass(frozen=True)
class PolicyVersion:
    """One version of a policy's lineage, as ``policy show`` lists it."""

    hash: str
    seq: int
    state: str
    predecessor: str | None
    submitter: str | None


@dataclass(frozen=True)
class SecretInfo:
    """The public parts of one secret (``policy show``): its kind and version, and for keys and
    certificates the certificate (PEM), public key (PEM), serial, ``not_after``, ``renew_at``,
    a generated CA's current ``crl``. Never the value: the CAS does not send it.
    ``details``: everything the CAS said about it."""

    name: str
    kind: str | None
    version: int
    certificate: str | None
    public_key: str | None
    serial: str | None
    not_after: str | None
    details: Mapping[str, JsonValue] = field(repr=False)


@dataclass(frozen=True)
class PolicyInfo:
    """A policy as its readers see it (``confide policy show``): the current version's hash,
    its creator's fingerprint, the policy document (explicit secret values and volume keys read
    ``(withheld)``), the lineage's versions and the secrets' public parts."""

    name: str
    hash: str
    creator: str
    document: Mapping[str, JsonValue] = field(repr=False)
    versions: tuple[PolicyVersion, ...]
    secrets: Mapping[str, SecretInfo]

    @classmethod
    def _from(cls, answer: object) -> PolicyInfo:
        what = "the CAS's policy"
        obj = _object(answer, what)
        versions = tuple(
            PolicyVersion(
                _str(v, "hash", what),
                _int(v, "seq", what),
                _str(v, "state", what),
                _opt_str(v, "predecessor"),
                _opt_str(v, "submitter"),
            )
            for v in _objects(obj, "versions", what)
        )
        secrets_obj = obj.get("secrets") or _EMPTY
        if not isinstance(secrets_obj, Mapping):
            raise ParseError("expected an object", structure=what, field="secrets")
        secrets = {}
        for name, info in secrets_obj.items():
            if not isinstance(info, Mapping):
                raise ParseError("expected an object", structure=what, field=f"secrets.{name}")
            secrets[name] = SecretInfo(
                name, _opt_str(info, "kind"), _int(info, "version", what), _opt_str(info, "certificate"),
                _opt_str(info, "public_key"), _opt_str(info, "serial"), _opt_str(info, "not_after"), info,
            )  # fmt: skip
        document = obj.get("policy")
        if not isinstance(document, Mapping):
            raise ParseError("expected an object", structure=what, field="policy")
        return cls(
            _str(obj, "name", what), _str(obj, "hash", what), _str(obj, "creator", what), document, versions,
            FrozenMap(secrets),
        )  # fmt: skip


@dataclass(frozen=True)
class PolicyEvent:
    """One ledger entry of a policy (``confide policy events``): its sequence number and log
    index, when (Unix seconds), its type and payload. As the command shows them: not checked
    against the log (:meth:`Cas.history` and :meth:`Cas.accesses` are)."""

    seq: int
    index: int
    at: float
    type: str
    payload: Mapping[str, JsonValue]


@dataclass(frozen=True)
class HistoryEntry:
    """One version event of a policy (``confide ledger history``): ``event`` is
    ``policy.created``, ``policy.updated``, ``policy.submitted``, ``policy.approved`` or
    ``policy.stale``; ``included``: proven included in the signed checkpoint (else newer than
    it)."""

    index: int
    time: str
    event: str
    hash: str | None
    predecessor: str | None
    signer: str | None
    approvers: tuple[str, ...]
    included: bool


@dataclass(frozen=True)
class ViewState:
    """What a state file held (``ledger history --json``'s ``state``): the size of the
    checkpoint remembered before (``None`` on the first run), how many entries of the policy it
    remembered (all returned again) and how many it remembers now."""

    previous_size: int | None
    entries_known: int
    entries_remembered: int


@dataclass(frozen=True)
class History:
    """A policy's versions, each entry verified against the pinned log key
    (``confide ledger history --json``); ``state``: with a state file, what it held."""

    checkpoint_size: int
    entries: tuple[HistoryEntry, ...]
    state: ViewState | None = None


@dataclass(frozen=True)
class ReleasedSecret:
    """A secret named in a release: its policy, name and version (never its value)."""

    policy: str | None
    name: str | None
    version: int | None


@dataclass(frozen=True)
class Access:
    """One release of secrets to an attested service (``confide ledger accesses``), verified
    against the pinned log key."""

    index: int
    time: str
    service: str | None
    measurement: str | None
    policy_hash: str | None
    secrets: tuple[ReleasedSecret, ...]
    runtime_key_sha256: str | None
    included: bool
    volumes: tuple[Mapping[str, JsonValue], ...] = ()
    # A release of secrets or volumes this policy exports, to a service of another policy (the
    # exporter's record, ledger ``export.released``): the importing policy (``policy_hash`` is
    # then its version), the platform, and the ledger index of the importer's attestation entry
    # (proven in the same checkpoint); ``None`` for a release to this policy's own services.
    importer: str | None = None
    platform: str | None = None
    attestation_index: int | None = None


def _view(update: ViewUpdate | None) -> ViewState | None:
    """What a state file held, as :class:`History` and :class:`Accesses` say it."""
    if update is None:
        return None
    previous = None if update.previous is None else update.previous.size
    return ViewState(previous, update.known, update.remembered)


class Accesses(tuple[Access, ...]):
    """The releases :meth:`Cas.accesses` found (a tuple of :class:`Access`, as before), with
    what :class:`History` also says: ``checkpoint_size``, the signed checkpoint's size, and
    ``state``, with a state file what it held (``None`` without one)."""

    checkpoint_size: int
    state: ViewState | None

    def __new__(
        cls, entries: Iterable[Access] = (), checkpoint_size: int = 0, state: ViewState | None = None
    ) -> Accesses:
        self = super().__new__(cls, entries)
        object.__setattr__(self, "checkpoint_size", checkpoint_size)
        object.__setattr__(self, "state", state)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Accesses is read-only: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Accesses is read-only: cannot delete {name}")

    def __repr__(self) -> str:
        return f"Accesses({tuple(self)!r}, checkpoint_size={self.checkpoint_size}, state={self.state!r})"


@dataclass(frozen=True)
class Revocation:
    """What an owner's revocation did (``confide policy revoke``): the certificates revoked, the
    versions re-issued, whether the key was replaced, the CRLs issued (``details``: the whole
    answer)."""

    name: str
    secret: str
    reason: str
    revoked: tuple[Mapping[str, JsonValue], ...]
    reissued: tuple[Mapping[str, JsonValue], ...]
    key_replaced: bool
    crls: tuple[Mapping[str, JsonValue], ...]
    details: Mapping[str, JsonValue] = field(repr=False)


@dataclass(frozen=True)
class BoardApprover:
    """One board member's approval as the CAS lists it: the signer's fingerprint, when it
    expires (Unix seconds), its digest (what a withdrawal names); ``details``: all the CAS said
    of it (``retire``, ``withdrawn_at``, ...)."""

    signer: str
    expires: int
    approval: str
    details: Mapping[str, JsonValue] = field(repr=False)

    @classmethod
    def _all(cls, obj: Mapping[str, JsonValue], key: str, what: str) -> tuple[BoardApprover, ...]:
        return tuple(
            cls(_str(a, "signer", what), _int(a, "expires", what), _str(a, "approval", what), a)
            for a in _objects(obj, key, what)
        )


@dataclass(frozen=True)
class _Board:
    """The successor board as every ``show`` of it starts: the rule (its JSON form, members as
    fingerprints), its SHA-256, its generation (how many changes made it), how many approvals
    it needs, and the CAS's master key id (what approvals sign)."""

    board: Mapping[str, JsonValue]
    board_sha256: str
    generation: int
    needed: int
    master_key_id: str

    @staticmethod
    def _fields(
        obj: Mapping[str, JsonValue], what: str
    ) -> tuple[Mapping[str, JsonValue], str, int, int, str]:
        return (
            _mapping(obj, "board", what), _str(obj, "board_sha256", what), _int(obj, "generation", what),
            _int(obj, "needed", what), _str(obj, "master_key_id", what),
        )  # fmt: skip


@dataclass(frozen=True)
class SuccessorTarget:
    """A successor version with approvals (``cas successor show``'s ``approvals``): its target
    digest, platform and identity claims, whether the approvals that count authorise handing the
    key over, who approved (and withdrew), and the versions they authorise retiring."""

    target: str
    platform: str
    claims: Mapping[str, JsonValue]
    authorised: bool
    approvers: tuple[BoardApprover, ...]
    withdrawn: tuple[BoardApprover, ...]
    retire: tuple[str, ...]
    details: Mapping[str, JsonValue] = field(repr=False)


@dataclass(frozen=True)
class SuccessorBoard(_Board):
    """``confide cas successor show``: the board, the approvals of successor versions that have
    not expired, the retired versions and the void approvals (``details``: the whole answer)."""

    approvals: tuple[SuccessorTarget, ...] = ()
    retired: tuple[Mapping[str, JsonValue], ...] = ()
    void: tuple[Mapping[str, JsonValue], ...] = ()
    details: Mapping[str, JsonValue] = field(default_factory=lambda: _EMPTY, repr=False)

    @classmethod
    def _from(cls, answer: object) -> SuccessorBoard:
        what = "the CAS's successor board"
        obj = _object(answer, what)
        targets = tuple(
            SuccessorTarget(
                _str(t, "target", what),
                _str(t, "platform", what),
                _mapping(t, "claims", what),
                _bool(t, "authorised", what),
                BoardApprover._all(t, "approvers", what),
                BoardApprover._all(t, "withdrawn", what),
                _strs(t, "retire", what),
                t,
            )
            for t in _objects(obj, "approvals", what)
        )
        return cls(*cls._fields(obj, what), targets, _objects(obj, "retired", what),
                   _objects(obj, "void", what), obj)  # fmt: skip


@dataclass(frozen=True)
class SuccessorApproval:
    """What an approval of a successor version did (``cas successor approve``): its target and
    digest, the approvers that count now (fingerprints) of ``needed``, whether the target is
    authorised, and the versions it is authorised to retire when it hands over."""

    target: str
    digest: str
    approvers: tuple[str, ...]
    needed: int
    authorised: bool
    retire: tuple[str, ...]

    @classmethod
    def _from(cls, answer: object) -> SuccessorApproval:
        what = "the CAS's successor approval answer"
        obj = _object(answer, what)
        return cls(
            _str(obj, "target", what), _str(obj, "digest", what), _strs(obj, "approvers", what),
            _int(obj, "needed", what), _bool(obj, "authorised", what), _strs(obj, "retire", what),
        )  # fmt: skip


@dataclass(frozen=True)
class SuccessorWithdrawal:
    """What a withdrawal did (``cas successor withdraw``): the approval withdrawn, its target,
    the approvals of the target that still count and whether they still authorise it."""

    approval: str
    target: str
    approvers: tuple[str, ...]
    needed: int
    authorised: bool

    @classmethod
    def _from(cls, answer: object) -> SuccessorWithdrawal:
        what = "the CAS's withdrawal answer"
        obj = _object(answer, what)
        return cls(_str(obj, "approval", what), _str(obj, "target", what), _strs(obj, "approvers", what),
                   _int(obj, "needed", what), _bool(obj, "authorised", what))  # fmt: skip


@dataclass(frozen=True)
class BoardChange:
    """A pending change of the successor board (``cas successor board show``): its id (what
    members approve), the new board, the generation it replaces, its approvers."""

    change: str
    board: Mapping[str, JsonValue]
    board_sha256: str
    generation: int
    approvers: tuple[BoardApprover, ...]
    withdrawn: tuple[BoardApprover, ...]


@dataclass(frozen=True)
class BoardChanges(_Board):
    """``confide cas successor board show``: the board and its pending changes."""

    changes: tuple[BoardChange, ...] = ()

    @classmethod
    def _from(cls, answer: object) -> BoardChanges:
        what = "the CAS's board changes"
        obj = _object(answer, what)
        changes = tuple(
            BoardChange(
                _str(c, "change", what),
                _mapping(c, "board", what),
                _str(c, "board_sha256", what),
                _int(c, "generation", what),
                BoardApprover._all(c, "approvers", what),
                BoardApprover._all(c, "withdrawn", what),
            )
            for c in _objects(obj, "changes", what)
        )
        return cls(*cls._fields(obj, what), changes)


@dataclass(frozen=True)
class BoardChangeApproval:
    """What an approval of a board change did (``cas successor board propose|approve``): the
    change id, the approval's digest, the approvers so far of ``needed``, whether it is
    authorised and ``applied`` (then ``generation`` is the new board's)."""

    change: str
    digest: str
    approvers: tuple[str, ...]
    needed: int
    authorised: bool
    generation: int
    applied: bool

    @classmethod
    def _from(cls, answer: object) -> BoardChangeApproval:
        what = "the CAS's board change answer"
        obj = _object(answer, what)
        return cls(_str(obj, "change", what), _str(obj, "digest", what), _strs(obj, "approvers", what),
                   _int(obj, "needed", what), _bool(obj, "authorised", what), _int(obj, "generation", what),
                   _bool(obj, "applied", what))  # fmt: skip


@dataclass(frozen=True)
class PendingRetirement:
    """A pending retirement (``cas successor retire show``): its id, the version's platform and
    code identity claims, the board's generation, its approvers."""

    retirement: str
    platform: str
    code: Mapping[str, JsonValue]
    generation: int
    approvers: tuple[BoardApprover, ...]
    withdrawn: tuple[BoardApprover, ...]


@dataclass(frozen=True)
class Retirements(_Board):
    """``confide cas successor retire show``: the board, the pending retirements and the
    retired versions."""

    retirements: tuple[PendingRetirement, ...] = ()
    retired: tuple[Mapping[str, JsonValue], ...] = ()

    @classmethod
    def _from(cls, answer: object) -> Retirements:
        what = "the CAS's retirements"
        obj = _object(answer, what)
        pending = tuple(
            PendingRetirement(
                _str(r, "retirement", what),
                _str(r, "platform", what),
                _mapping(r, "code", what),
                _int(r, "generation", what),
                BoardApprover._all(r, "approvers", what),
                BoardApprover._all(r, "withdrawn", what),
            )
            for r in _objects(obj, "retirements", what)
        )
        return cls(*cls._fields(obj, what), pending, _objects(obj, "retired", what))


@dataclass(frozen=True)
class RetirementApproval:
    """What an approval of a retirement did (``cas successor retire propose|approve``): the
    retirement id, the approval's digest, the approvers so far of ``needed``, whether it is
    authorised and ``applied`` (then ``identity``: the version retired)."""

    retirement: str
    digest: str
    approvers: tuple[str, ...]
    needed: int
    authorised: bool
    applied: bool
    identity: str | None

    @classmethod
    def _from(cls, answer: object) -> RetirementApproval:
        what = "the CAS's retirement answer"
        obj = _object(answer, what)
        return cls(_str(obj, "retirement", what), _str(obj, "digest", what), _strs(obj, "approvers", what),
                   _int(obj, "needed", what), _bool(obj, "authorised", what), _bool(obj, "applied", what),
                   _opt_str(obj, "identity"))  # fmt: skip


Expiry: TypeAlias = "datetime | timedelta"
"""When an approval expires: a time with a zone, or a duration from now (at most 90 days)."""


def _expires(expires: Expiry) -> int:
    """``expires`` as Unix seconds, checked as ``--expires`` is (ahead, at most 90 days)."""
    from confide.cas.successor_client import check_expiry  # noqa: PLC0415

    now = int(time.time())
    if isinstance(expires, timedelta):
        at, shown = now + int(expires.total_seconds()), str(expires)
    elif isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise UsageError("expires: give the time zone (a datetime with tzinfo, e.g. UTC)")
        at, shown = int(expires.timestamp()), expires.isoformat()
    else:
        raise UsageError(f"expires: got a {type(expires).__name__}, expected a datetime or a timedelta")
    return check_expiry(at, now, shown, "expires")


# --- identities and measurements -------------------------------------------------------------


def create_identity(out: str | os.PathLike[str] | None = None, *, name: str = "") -> Identity:
    """A new stakeholder identity (an Ed25519 key pair; ``confide identity create``), written to
    ``out`` (mode 0600, atomically, never over an existing file) when given. Its
    ``fingerprint`` is what policies name. Raises ``UsageError`` (``out`` exists, or its
    directory does not) and ``StorageError`` (the disk failed)."""
    identity = Identity.generate(name)
    if out is not None:
        identity.save(Path(out))
    return identity


def measure(command: Sequence[str], *, cwd: str | os.PathLike[str] | None = None) -> str:
    """The simulated TEE's measurement of launching ``command`` (hex; ``confide sim measure``):
    what a policy's ``attestation: {sim: {measurement: ...}}`` pins. ``UsageError`` when the
    program is not found."""
    from confide.sim.measure import measure_command  # noqa: PLC0415 - only where a command is measured

    return measure_command(list(command), cwd=None if cwd is None else Path(cwd)).hex


# --- the CAS ---------------------------------------------------------------------------------


_MAX_FILE = 1 << 20
"""The largest client.env or simulated platform key read (bytes)."""


def _parse_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of a client.env (values shell-quoted)."""
    try:
        text = read_small_file(path, _MAX_FILE, "client.env").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"client.env: {os.fspath(path)} is not UTF-8 text") from None
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            raise ParseError("malformed line", structure=str(path), field=f"line {number}") from None
        if words and words[0] == "export":
            words = words[1:]
        name, sep, value = words[0].partition("=") if len(words) == 1 else ("", "", "")
        if not sep or not name:
            raise ParseError("expected export NAME=VALUE", structure=str(path), field=f"line {number}")
        env[name] = value
    return env


@dataclass(frozen=True)
class VolumeMounts:
    """A release's protected volumes, mounted by :meth:`Cas.mount_volumes` (valid inside its
    ``with`` block only)."""

    paths: Mapping[str, Path]
    """Where each volume's files are, by volume name."""
    environment: Mapping[str, str]
    """``CONFIDE_VOLUME_<NAME>``: path, as ``confide run`` sets them for a program (volumes that
    an image contract binds at their original places are not in it), e.g. for a child process."""
    _mounted: MountedVolumes = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", FrozenMap(self.paths))
        object.__setattr__(self, "environment", FrozenMap(self.environment))

    def integrity_failure(self) -> str | None:
        """``volume:path`` of the first file that failed authentication since mounting, if any
        (never blocks): FUSE mounts verify lazily, and the file's reads fail (EIO). A service
        that finds one should stop using the volume; the block's end then discards the
        session's changes and raises ``SignatureError``."""
        return self._mounted.integrity_failure()


class Cas:
    """A connection to one CAS, trusting only its certificate (from client.env, given, or
    pinned by attestation). Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        client: CasClient,
        *,
        log_key: str | None = None,
        sim_dir: Path | None = None,
        attestation: PinnedCas | None = None,
    ) -> None:
        """Prefer :meth:`from_env`, :meth:`connect` or :meth:`attested`."""
        self._client = client
        self.log_key = log_key
        """The CAS's transparency-log verifier key (C2SP vkey): what :meth:`history` and
        :meth:`accesses` check the log against; None when not known."""
        self.sim_dir = sim_dir
        """The simulated platform's directory (``CONFIDE_SIM_DIR``, ``cas serve --dev``)."""
        self.attestation = attestation
        """The CAS's verified evidence and pinned certificate, when connected by :meth:`attested`."""

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Cas:
        """The CAS named by ``CONFIDE_CAS_URL`` and ``CONFIDE_CAS_CERT`` (with
        ``CONFIDE_LOG_KEY`` and ``CONFIDE_SIM_DIR`` when set), as the commands read them, from
        ``environ`` (default: this process's environment). ``UsageError`` when the URL or the
        certificate is missing, the URL is not ``https://`` or the certificate does not load."""
        env = os.environ if environ is None else environ
        sim = env.get(ENV_SIM_DIR)
        return cls(
            CasClient.from_env(env), log_key=env.get(ENV_LOG_KEY) or None, sim_dir=Path(sim) if sim else None
        )

    @classmethod
    def from_env_file(cls, path: str | os.PathLike[str]) -> Cas:
        """:meth:`from_env` with the ``export`` lines of a ``client.env`` file (``confide cas
        serve`` writes ``DATA_DIR/client.env``), without touching this process's environment.
        ``UsageError`` when it cannot be read, ``ParseError`` for a malformed line."""
        return cls.from_env(_parse_env_file(Path(path)))

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        ca_cert: str | os.PathLike[str] | bytes,
        log_key: str | None = None,
        sim_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> Cas:
        """The CAS at ``url`` (``https://`` only), trusting exactly the certificate ``ca_cert``
        (a PEM file, or PEM bytes: the host name is then not checked, as for a certificate
        pinned by attestation). ``UsageError`` for another scheme, a malformed URL or a
        certificate that does not load."""
        cert: Path | bytes = ca_cert if isinstance(ca_cert, bytes) else Path(ca_cert)
        client = CasClient(url, cert, timeout=timeout)
        return cls(client, log_key=log_key, sim_dir=None if sim_dir is None else Path(sim_dir))

    @classmethod
    def attested(
        cls,
        url: str,
        *,
        sim_key: str | os.PathLike[str] | bytes | None = None,
        measurements: Iterable[str] = (),
        expect: Mapping[str, Sequence[str]] | None = None,
        collateral: str | None = None,
        tolerate: Iterable[str] = (),
        ignore_advisories: Iterable[str] = (),
        expect_witnesses: int | None = None,
        expect_witness_keys: Iterable[str] = (),
        min_tcb_eval_number: int | str | None = None,
        tcb_recovery_grace_days: int | None = None,
        pcs_update: str | None = None,
        pcs_tcb_eval_number: int | None = None,
        any_measurement: bool = False,
        at: datetime | None = None,
        sim_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> Cas:
        """Verify the CAS's own evidence bound to its TLS certificate and log key, then connect
        trusting exactly that certificate (in memory) and that log key: ``confide cas attest``
        with the same options (``sim_key``: the simulated platform's public key, a file or PEM
        bytes; ``measurements``: hex, one of which the CAS must run; ``expect``: claim to
        allowed values; ``collateral``: SGX/TDX DCAP collateral location; ``tolerate``: policy
        tolerances such as ``outdated-tcb``; ``expect_witnesses``/``expect_witness_keys``: the
        attested witness quorum; ``min_tcb_eval_number``: an integer, or ``"auto"``, the number
        Intel's TCB evaluation data numbers require at ``at`` after ``tcb_recovery_grace_days``
        (default 365), which needs ``collateral`` a PCS directory or URL: ``--min-tcb-eval-number
        N|auto`` and ``--tcb-recovery-grace``). :attr:`attestation` keeps what was verified (with
        ``"auto"``, the requirement and its reason in ``attestation.evidence.details
        ["required_tcb_evaluation"]``; ``pcs_update``: ``"early"`` or ``"standard"``, the
        ``update`` a ``collateral`` URL asks Intel PCS for, ``--pcs-update``;
        ``pcs_tcb_eval_number``: the one TCB evaluation data number it asks for instead, answers
        of another refused, ``--pcs-tcb-eval-number``).

        ``measurements`` (or an ``expect`` of the platform's measurement claim) is required:
        evidence alone proves only that *some* code runs in a TEE, and ``cas attest`` without
        ``--measurement`` leaves the check to the person reading the measurement it prints.
        ``any_measurement=True`` pins whatever the CAS runs; check
        ``cas.attestation.evidence.claims`` yourself before trusting it.

        Raises what ``cas attest`` exits with: ``MeasurementError`` (another measurement or
        claim), ``AppraisalError`` (a debug TEE, a TCB status not tolerated, a witness quorum
        below the expectation), ``BindingError``, ``SignatureError`` and the other
        ``VerificationError`` classes, ``NetworkError``, ``UsageError`` for malformed options."""
        from confide.cas.pin import (  # noqa: PLC0415
            MEASUREMENT_CLAIMS,
            WitnessExpectation,
            attest_cas,
            attest_collateral,
        )
        from confide.platforms import tcb_evaluation_minimum  # noqa: PLC0415
        from confide.policy.model import Tolerance  # noqa: PLC0415

        expected = []
        for m in measurements:
            text = m.strip().lower()
            if len(text) not in (64, 96) or any(c not in "0123456789abcdef" for c in text):
                raise UsageError(f"measurements: got {m[:40]!r}, expected 32 or 48 bytes in hex")
            expected.append(text)
        if not expected and not any_measurement and not set(expect or {}) & set(MEASUREMENT_CLAIMS.values()):
            raise UsageError(
                "measurements: give the CAS's expected measurement (hex), or expect={claim: [...]} "
                "for its measurement claim, or any_measurement=True to pin whatever it runs and "
                "check cas.attestation.evidence.claims yourself"
            )
        try:
            tolerances = tuple(Tolerance(t) for t in tolerate)
        except ValueError as exc:
            raise UsageError(f"tolerate: {exc}") from None
        for (
            tolerance
        ) in tolerances:  # as cas attest --tolerate: simulation is sim_key's, gpu-only a service's
            if tolerance in (Tolerance.SIMULATION, Tolerance.GPU_ONLY):
                raise UsageError(f"tolerate: {tolerance.value!r} is not a tolerance of a CAS's evidence")
        for claim, values in (expect or {}).items():
            if isinstance(values, str | bytes):  # tuple("abc") would allow "a", "b" and "c"
                raise UsageError(f"expect: {claim!r}: got a string, expected a list of allowed values")
        # as cas attest's --expect-witnesses (click.IntRange) takes it
        if expect_witnesses is not None and (type(expect_witnesses) is not int or expect_witnesses < 1):
            raise UsageError(f"expect_witnesses: got {expect_witnesses!r}, expected an integer, at least 1")
        # as cas attest's --min-tcb-eval-number N|auto and --tcb-recovery-grace (the same check)
        minimum = tcb_evaluation_minimum(
            min_tcb_eval_number,
            tcb_recovery_grace_days,
            option="min_tcb_eval_number",
            grace_option="tcb_recovery_grace_days",
        )
        witness_expectation = WitnessExpectation.of(
            expect_witnesses, tuple(expect_witness_keys), "expect_witness_keys"
        )
        if isinstance(sim_key, bytes) or sim_key is None:
            key_pem = sim_key
        else:
            key_pem = read_small_file(Path(sim_key), _MAX_FILE, "sim_key")
        pinned = attest_cas(
            url,
            sim_key_pem=key_pem,
            at=at,
            measurements=tuple(expected),
            collateral=attest_collateral(
                collateral,
                minimum,
                option="min_tcb_eval_number='auto'",
                collateral_option="collateral= a PCS directory or URL",
                pcs_update=pcs_update,
                pcs_tcb_eval_number=pcs_tcb_eval_number,
            ),
            tolerate=tolerances,
            ignore_advisories=tuple(ignore_advisories),
            expect={k: tuple(v) for k, v in (expect or {}).items()},
            expect_witnesses=witness_expectation,
            min_tcb_evaluation_data_number=minimum,
        )
        client = CasClient(url, pinned.certificate_pem, timeout=timeout)
        return cls(
            client,
            log_key=pinned.log_key,
            sim_dir=None if sim_dir is None else Path(sim_dir),
            attestation=pinned,
        )

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def cas_key_sha256(self) -> str | None:
        """The SHA-256 of the CAS's TLS key (SubjectPublicKeyInfo): what signed documents name."""
        return self._client.cas_spki_sha256

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Cas:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cas(url={self.url!r})"

    # -- stakeholders -------------------------------------------------------------------------

    def apply(self, policy: Policy | str | bytes | os.PathLike[str], identity: Identity) -> PolicyStatus:
        """Create or update a policy, signed by ``identity`` for this CAS (``confide policy
        apply``). ``policy``: a :class:`~confide.policy.Policy`, YAML text (``str`` or
        ``bytes``) or the path of a YAML file (a :class:`~pathlib.Path`: a ``str`` is text).
        An update names the version it replaces (``predecessor``). Returns the new version's
        hash and state (``pending`` while the update board has not approved it), and
        ``warnings``: one line per secret a service's command puts into its arguments.

        Raises ``PolicyError`` for an invalid policy, each problem with its line and column
        (``problems``), before anything is sent; ``UsageError`` for a file that cannot be read;
        from the CAS ``ConflictError`` (no or a stale predecessor), ``AccessDeniedError`` (the
        identity may not create or update it), ``PolicyError``; ``NetworkError``."""
        from confide.policy import (  # noqa: PLC0415 - the model loads here
            Policy,
            load_policy,
            loads_policy,
            policy_warnings,
        )

        if isinstance(policy, Policy):
            doc = policy
        elif isinstance(policy, str | bytes):
            doc = loads_policy(policy)
        else:
            doc = load_policy(policy)
        return PolicyStatus._from(self._client.apply(doc, identity), policy_warnings(doc))

    def approve(self, name: str, hash: str, identity: Identity) -> PolicyStatus:
        """A board member's signed approval of the pending version ``hash`` of ``name``
        (``confide policy approve``); the state after it (``active`` once the board's quorum
        approved). Raises ``AccessDeniedError`` (not on the board, or no such policy),
        ``ConflictError`` (no such submitted version, or no longer pending), ``NetworkError``."""
        return PolicyStatus._from(self._client.approve(name, hash, identity))

    def show(self, name: str, identity: Identity) -> PolicyInfo:
        """The policy as ``identity`` may read it (``confide policy show``): never secret
        values. Raises ``AccessDeniedError`` when the identity may not read it or there is no
        such policy (the same answer for both), ``NetworkError``."""
        return PolicyInfo._from(self._client.show(name, identity))

    def events(self, name: str, identity: Identity) -> tuple[PolicyEvent, ...]:
        """The policy's ledger entries (``confide policy events``), as the CAS lists them; to
        check them against the log, use :meth:`history` and :meth:`accesses`. Raises as
        :meth:`show`."""
        what = "the CAS's events"
        answer = _object(self._client.events(name, identity), what)
        out = []
        for ev in _objects(answer, "events", what):
            at = ev.get("at")
            payload = ev.get("payload") or _EMPTY
            if not isinstance(at, int | float) or isinstance(at, bool) or not isinstance(payload, Mapping):
                raise ParseError("expected a time and a payload object", structure=what)
            try:
                seconds = float(at)
            except OverflowError:  # an integer beyond a double's range
                raise ParseError("expected a time (Unix seconds)", structure=what, field="at") from None
            out.append(PolicyEvent(_int(ev, "seq", what), _int(ev, "index", what), seconds,
                                   _str(ev, "type", what), payload))  # fmt: skip
        return tuple(out)

    def _log_verifier(self, log_key: str | None) -> NoteVerifier:
        from confide.ledger.note import NoteVerifier  # noqa: PLC0415

        if log_key and self.attestation is not None and self.log_key:
            # The key Cas.attested pinned came with the CAS's verified evidence: another one
            # given here would check the log against a key the evidence does not vouch for.
            try:
                given = NoteVerifier.from_vkey(log_key.strip()).vkey
            except ParseError as exc:
                raise UsageError(f"log_key: {exc.message}") from None
            if given != NoteVerifier.from_vkey(self.log_key.strip()).vkey:  # public keys
                raise UsageError(
                    "log_key: differs from the log key this CAS's attestation pinned (Cas.attested): leave "
                    "log_key out, or connect with Cas.connect to check another key"
                )
        key = log_key or self.log_key
        if not key:
            raise UsageError(
                f"no log key: give log_key (the CAS's {ENV_LOG_KEY} from client.env, or connect with "
                "Cas.attested, which pins it)"
            )
        try:
            return NoteVerifier.from_vkey(key.strip())
        except ParseError as exc:
            raise UsageError(f"log_key: {exc.message}") from None

    def history(
        self,
        name: str,
        identity: Identity,
        *,
        log_key: str | None = None,
        state: str | os.PathLike[str] | None = None,
        witnesses: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> History:
        """Every version of the policy, who signed and who approved it (``confide ledger
        history``): the checkpoint must be signed by the log key (``log_key``, default
        :attr:`log_key`) and every entry proven included in it, or match what the CAS says of
        it. With ``state`` (a state file, ``ledger history --state FILE``, docs/ledger.md "A
        policy's view across runs"), the checkpoint must also extend the one remembered there
        and every entry remembered for the policy be returned again; the file then remembers
        this run (``History.state`` says what it held). ``witnesses`` (vkeys, ``--witness``):
        each must have cosigned the checkpoint; ``max_age`` and ``now`` (``--max-age``) as
        :meth:`verify_log` takes them: each one's newest cosignature at most that old;
        ``witness_wait`` as :meth:`verify_log` takes it.

        Raises ``UnknownKeyError`` (a checkpoint not signed by that key or not cosigned by a
        witness, or a state file of another log), ``EntryMismatchError`` (an entry not
        included, or not what the CAS says), ``ParseError``, ``UsageError`` (no log key,
        ``max_age`` without ``witnesses`` or out of range); with ``state`` ``RollbackError`` (an
        older log), ``ConsistencyError`` (a fork), ``EntryMissingError`` (an entry seen before
        left out); with ``max_age`` ``FreshnessError`` (69: an old checkpoint); and as
        :meth:`show`."""
        from confide.cas.audit import history  # noqa: PLC0415

        signed, events, update = self._audited(
            name, identity, log_key, state, witnesses, max_age, now, witness_wait
        )
        entries = []
        for row in history(events):
            approvers = row.get("approvers") or []
            entries.append(
                HistoryEntry(
                    int(row["index"]),
                    str(row["time"]),
                    str(row["event"]),
                    _str_or_none(row.get("hash")),
                    _str_or_none(row.get("predecessor")),
                    _str_or_none(row.get("signer")),
                    tuple(str(a) for a in approvers) if isinstance(approvers, list) else (),
                    bool(row["included"]),
                )
            )
        return History(signed.checkpoint.size if signed is not None else 0, tuple(entries), _view(update))

    def _audited(
        self,
        name: str,
        identity: Identity,
        log_key: str | None,
        state: str | os.PathLike[str] | None,
        witnesses: Iterable[str],
        max_age: str | timedelta | None,
        now: datetime | None,
        witness_wait: float,
    ) -> tuple[SignedCheckpoint | None, list[VerifiedEvent], ViewUpdate | None]:
        """The policy's events verified against the log key (with ``witnesses``, cosigned, and
        with ``max_age`` recently; with ``state``, against the file)."""
        from confide.cas.audit import read_audited, verified_events  # noqa: PLC0415
        from confide.ledger.auditor import witness_verifier  # noqa: PLC0415

        verifier = self._log_verifier(log_key)
        cosigners = [witness_verifier(w, "witnesses") for w in witnesses]
        freshness = _freshness(max_age, cosigners, now)

        def read() -> tuple[str, SignedCheckpoint | None, list[VerifiedEvent]]:
            return (name, *verified_events(self._client, name, identity, verifier))

        state_file = None if state is None else Path(state)
        _name, signed, events, update = read_audited(
            self._client, verifier, state_file, read, witnesses=cosigners, freshness=freshness,
            wait=_cosign_wait(witness_wait),
        )  # fmt: skip
        return signed, events, update

    def accesses(
        self,
        name: str,
        identity: Identity,
        *,
        secret: str | None = None,
        log_key: str | None = None,
        state: str | os.PathLike[str] | None = None,
        witnesses: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> Accesses:
        """Which attested services received the policy's secrets (only ``secret``'s, when
        given), when, under which measurement (``confide ledger accesses``), verified as
        :meth:`history` verifies (with ``state``, ``witnesses`` and ``max_age`` too). A tuple of
        :class:`Access` whose ``checkpoint_size`` and ``state`` say what :class:`History`'s do
        (with ``state``, what the file held). Raises as :meth:`history`."""
        from confide.cas.audit import accesses  # noqa: PLC0415

        signed, events, update = self._audited(
            name, identity, log_key, state, witnesses, max_age, now, witness_wait
        )
        out = []
        for row in accesses(events, secret):
            released = []
            for s in row.get("secrets") or []:
                if isinstance(s, dict):
                    version = s.get("version")
                    released.append(
                        ReleasedSecret(
                            _str_or_none(s.get("policy")),
                            _str_or_none(s.get("name")),
                            version if type(version) is int else None,
                        )
                    )
            volumes = _objects({"volumes": _freeze(row.get("volumes"))}, "volumes", "ledger entry volumes")
            out.append(
                Access(
                    int(row["index"]),
                    str(row["time"]),
                    _str_or_none(row.get("service")),
                    _str_or_none(row.get("measurement")),
                    _str_or_none(row.get("policy_hash")),
                    tuple(released),
                    _str_or_none(row.get("runtime_key_sha256")),
                    bool(row["included"]),
                    volumes,
                    _str_or_none(row.get("importer")),
                    _str_or_none(row.get("platform")),
                    at if type(at := row.get("attestation_index")) is int else None,
                )
            )
        return Accesses(out, signed.checkpoint.size if signed is not None else 0, _view(update))

    def crl(
        self,
        name: str,
        secret: str,
        identity: Identity | None = None,
        *,
        pem: bool = False,
        ca: CaCertificate | None = None,
        allow_expired: bool = False,
        now: datetime | None = None,
    ) -> bytes:
        """The current CRL of the CA ``secret`` of policy ``name`` (DER, or PEM with ``pem``;
        ``confide policy crl``), read as ``identity`` or, without one, as the public (a CA
        declared ``export_public``), once :meth:`checked_crl` has checked it: the bytes the CAS
        sent. Raises as :meth:`checked_crl`."""
        return self.checked_crl(
            name,
            secret,
            identity,
            pem=pem,
            ca=ca,
            allow_expired=allow_expired,
            now=now,
        ).data

    def checked_crl(
        self,
        name: str,
        secret: str,
        identity: Identity | None = None,
        *,
        pem: bool = False,
        ca: CaCertificate | None = None,
        allow_expired: bool = False,
        now: datetime | None = None,
    ) -> CheckedCrl:
        """:meth:`crl` and what was checked (``confide policy crl``; docs/cas.md "Revocation"):
        the CAS's answer must be one CRL in the form asked for (DER, or PEM with ``pem``) and
        nothing else (``ParseError``); issued and signed by the CA's certificate, which may sign
        CRLs (``CollateralError``, ``SignatureError``, ``CertificateChainError``); and current
        at ``now`` (a timezone-aware time; default: this machine's clock): a nextUpdate before
        it is ``CollateralExpiredError`` unless ``allow_expired``.

        The CA's certificate: ``ca`` (an ``x509.Certificate``, PEM or DER bytes, or the path of
        a PEM or DER file: the certificate you trust for that CA), else the one ``policy show``
        gives ``identity`` for ``secret`` (one more request). Read as the public (no
        ``identity``) without ``ca`` there is none to check against: only the form and the dates
        are checked, and :attr:`CheckedCrl.verified` is false. Also raises ``UsageError`` (a
        ``ca`` file that cannot be read, ``now`` without a timezone), ``AccessDeniedError``,
        ``PolicyError`` (not a generated CA), ``NetworkError``."""
        from confide.verify.crl_answer import check_crl_answer  # noqa: PLC0415

        at = _edge_now(now)
        cert = None if ca is None else _ca_certificate(ca)
        data = self._client.crl(name, secret, identity, pem=pem)
        if cert is None and identity is not None:
            cert = self._shown_ca_certificate(name, secret, identity)
        return check_crl_answer(data, pem=pem, ca=cert, now=at, allow_expired=allow_expired)

    def _shown_ca_certificate(self, name: str, secret: str, identity: Identity) -> x509.Certificate:
        """The certificate of the CA ``secret`` as ``policy show`` gives it to ``identity``."""
        from confide.verify.crl_answer import load_ca_certificate  # noqa: PLC0415

        what = f"the CAS's policy: the certificate of {secret}"
        info = self.show(name, identity).secrets.get(secret)
        if info is None or info.certificate is None:
            raise ParseError("got no certificate, expected the CA's (policy show)", structure=what)
        return load_ca_certificate(info.certificate.encode(), what)

    def revoke(
        self,
        name: str,
        secret: str,
        identity: Identity,
        *,
        serial: str | None = None,
        all_valid: bool = False,
        reason: RevocationReason = "unspecified",
    ) -> Revocation:
        """Revoke the certificate ``serial`` (hex) of ``secret``, or with ``all_valid`` every
        one still valid, without a policy update (``confide policy revoke``); the CA's next CRL
        is issued at once. Raises ``UsageError`` unless exactly one of ``serial`` and
        ``all_valid`` is given; from the CAS ``AccessDeniedError`` (not on the update rules),
        ``PolicyError`` (not a certificate under a generated CA), ``NetworkError``."""
        if (serial is None) == (not all_valid):
            raise UsageError("give exactly one of serial and all_valid")
        what = "the CAS's revocation answer"
        obj = _object(self._client.revoke(name, secret, identity, reason=reason, serial=serial), what)
        return Revocation(
            _str(obj, "name", what), _str(obj, "secret", what), _str(obj, "reason", what),
            _objects(obj, "revoked", what), _objects(obj, "reissued", what),
            obj.get("key_replaced") is True, _objects(obj, "crls", what), obj,
        )  # fmt: skip

    # -- the auditor --------------------------------------------------------------------------

    def verify_log(
        self,
        *,
        state: str | os.PathLike[str] | None = None,
        log_key: str | None = None,
        witnesses: Iterable[str] = (),
        full: bool = False,
        identity: Identity | None = None,
        policies: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> LogVerification:
        """Audit the CAS's transparency log as ``confide ledger verify --url URL --state FILE``
        does (the same code, :func:`confide.ledger.auditor.verify_log`, over the CAS's
        ``/v1/log`` tiles on this connection): the latest checkpoint must be signed by the log
        key (``log_key``, default :attr:`log_key`) and cosigned by each of ``witnesses``
        (vkeys); with ``state`` (an auditor state file, the format ``ledger verify --state``,
        ``history`` and ``accesses`` share), it must extend the checkpoint remembered there,
        proven from the log's tiles, and the file then remembers it (mode 0600, atomically;
        nothing written on an error). Returns a :class:`LogVerification`: ``size``, ``root``,
        ``previous_size`` (the remembered size, ``None`` on a first run or without ``state``).
        With ``full`` and ``identity``, as ``ledger verify --full --identity FILE [--policy
        NAME]...`` (:func:`confide.cas.audit.verify_readable`): the tree is recomputed from every
        leaf hash, and the entries of ``policies`` (default: every policy ``identity`` may read
        and, with ``state``, every one the file remembers) are each matched with their leaf hash
        (an entry past the latest checkpoint waited for, up to 5 s) and re-checked (signatures,
        policy hashes, one linear chain ending at the current version); ``LogVerification.policies`` and
        ``reader`` say what was. ``full`` without ``identity`` raises ``AccessDeniedError`` (a
        CAS serves no entry bundles: every entry is audited from the log database).
        ``max_age`` (``--max-age``: a duration as the option takes it, ``"1h"``, or a
        ``timedelta`` in the same range; only with ``witnesses``): each witness's newest
        cosignature of the checkpoint must be at most that old at ``now`` (an aware datetime;
        default the clock, read as each checkpoint is fetched) and none dated more than 60 s after it,
        else ``FreshnessError`` (69: the log shows an old checkpoint, e.g. frozen to hide later
        entries). ``witness_wait`` (seconds, 0 to 60, default 5; only with ``witnesses``): while
        the checkpoint read lacks a required witness's cosignature (on a growing log the newest
        is cosigned a witness round trip after it is signed), it is read again, every 0.2 s,
        until this long has passed; then ``UnknownKeyError`` (65).

        Raises ``RollbackError`` (60: a log smaller than the one remembered),
        ``ConsistencyError`` (61: another tree, a fork), ``UnknownKeyError`` (65: a checkpoint
        or state file of another key), ``SignatureError``, ``ParseError`` (a malformed state
        file or answer), ``UsageError`` (no log key, or not a log key), ``NetworkError``,
        ``StorageError`` (the state file cannot be written); with ``full``,
        ``EntryMismatchError`` (63: an entry differs from its leaf hash, is not a canonical
        entry, or its documents do not verify), ``EntryMissingError`` (64: the CAS leaves out an
        entry of a policy's chain, or one returned before), ``AccessDeniedError`` (no
        ``identity``, or a policy of ``policies`` it may not read)."""
        from confide.ledger.auditor import log_verifier, verify_log, witness_verifier  # noqa: PLC0415
        from confide.ledger.http import HttpLogClient  # noqa: PLC0415

        verifier = log_verifier(self._log_verifier(log_key).vkey, "log_key")
        cosigners = [witness_verifier(w, "witnesses") for w in witnesses]
        freshness = _freshness(max_age, cosigners, now)
        wait = _cosign_wait(witness_wait)
        names = tuple(policies)
        if (names or identity is not None) and not full:
            raise UsageError("identity and policies go with full=True (whose policies' entries are checked)")
        if names and identity is None:
            raise UsageError("policies go with identity (whose policies' entries full=True checks)")
        path = None if state is None else Path(state)
        with HttpLogClient(f"{self.url}/v1/log", client=self._client.http) as tiles:
            if identity is not None:
                from confide.cas.audit import verify_readable  # noqa: PLC0415

                return verify_readable(
                    self._client, tiles, verifier, identity, names, path, witnesses=cosigners,
                    freshness=freshness, wait=wait,
                )  # fmt: skip
            return verify_log(
                tiles, verifier, path, full=full, witnesses=cosigners, freshness=freshness, wait=wait
            )

    # -- the successor board ------------------------------------------------------------------

    def successor(self) -> SuccessorBoard:
        """The successor board, the CAS's master key id, the approvals of successor versions
        that have not expired, the retired versions (``confide cas successor show``). Raises
        ``UsageError`` (a CAS that hands its key over to no other version), ``NetworkError``."""
        return SuccessorBoard._from(self._client.successor())

    def approve_successor(
        self,
        platform: str,
        claims: Mapping[str, str],
        identity: Identity,
        *,
        expires: Expiry,
        master_key_id: str | None = None,
        retire: Mapping[str, str] | None = None,
        retire_attested: bool = False,
    ) -> SuccessorApproval:
        """A board member's signed approval of the successor version of ``platform`` (``sim``,
        ``sgx``, ``tdx``, ``sev-snp``) with the identity ``claims`` (every claim the join rule
        compares for it, in text form: lower-case hex or decimal), expiring at ``expires``, for
        the CAS ``master_key_id`` (default: the id the CAS reports) under the current board
        (``confide cas successor approve``). ``retire``: the identity claims of the version
        that hands the key over, whose code it then retires (``--retire-claim``);
        ``retire_attested``: that version is the CAS this connection's evidence verified
        (``--retire-attested``; only on a connection made by :meth:`attested`).

        Raises ``UsageError`` before anything is signed (an unknown platform, other claims, a
        claim not in text form, a retirement of the successor's own code, an expiry not ahead
        or beyond 90 days); from the CAS ``AccessDeniedError`` (not on the board),
        ``ConflictError``, ``UsageError``; ``NetworkError``."""
        from confide.cas.successor_client import (  # noqa: PLC0415
            approve_successor,
            attested_identity_claims,
            check_successor_claims,
        )

        names = ("platform", "claims", "retire")
        check_successor_claims(platform, claims, what=names)
        if retire is not None and retire_attested:
            raise UsageError("retire and retire_attested: give one")
        if retire_attested:
            if self.attestation is None:
                raise UsageError(
                    "retire_attested: this connection was not made by Cas.attested (no verified evidence)"
                )
            retire = attested_identity_claims(self.attestation.evidence, platform, "retire_attested")
        check_successor_claims(platform, claims, retire, retire_given=not retire_attested, what=names)
        at = _expires(expires)
        answer = approve_successor(
            self._client, identity, platform, claims, at, master_key_id=master_key_id, retire=retire
        )
        return SuccessorApproval._from(answer)

    def withdraw_successor_approval(
        self, approval: str, identity: Identity, *, master_key_id: str | None = None
    ) -> SuccessorWithdrawal:
        """Withdraw one's own approval ``approval`` (its digest, as :meth:`approve_successor`
        and :meth:`successor` give it) before it expires (``confide cas successor withdraw``).
        (An approval of a board change or a retirement is withdrawn the same way.) Raises from
        the CAS ``AccessDeniedError`` (another signer's approval), ``ConflictError`` (withdrawn
        already), ``UsageError`` (no such approval, or expired already); ``NetworkError``."""
        from confide.cas.successor_client import withdraw_successor  # noqa: PLC0415

        answer = withdraw_successor(self._client, identity, approval, master_key_id=master_key_id)
        return SuccessorWithdrawal._from(answer)

    def board_changes(self) -> BoardChanges:
        """The successor board, its generation and the pending changes with their approvers
        (``confide cas successor board show``)."""
        return BoardChanges._from(self._client.successor_board())

    def propose_board_change(
        self,
        board: Mapping[str, Sequence[str]] | os.PathLike[str],
        identity: Identity,
        *,
        expires: Expiry,
    ) -> BoardChangeApproval:
        """Propose a new successor board, signing the first approval of the change (``confide
        cas successor board propose``). ``board``: one rule, ``{"require-all": [...]}`` or
        ``{"require-at-least-N": [...]}`` over identity fingerprints or public keys (base64),
        or the path of a YAML or JSON file of it. The other members approve the returned
        ``change`` id with :meth:`approve_board_change`.

        Raises ``ParseError`` (not a board), ``UsageError`` (the current board, an expiry out of
        range) before anything is signed; from the CAS ``AccessDeniedError`` (not on the
        board); ``NetworkError``."""
        from confide.cas.successor_board import board_from_json, parse_board_file  # noqa: PLC0415
        from confide.cas.successor_client import new_board_change, sign_board_change  # noqa: PLC0415

        if isinstance(board, Mapping):
            if any(isinstance(v, str | bytes) for v in board.values()):  # list("ab") would be members
                raise UsageError("board: each rule's members are a list, got a string")
            parsed = board_from_json({k: list(v) for k, v in board.items()}, "board")
        else:
            parsed = parse_board_file(Path(board))
        at = _expires(expires)
        draft = new_board_change(self._client, parsed, "board")
        return BoardChangeApproval._from(sign_board_change(self._client, identity, draft, at))

    def approve_board_change(
        self, change: str, identity: Identity, *, expires: Expiry
    ) -> BoardChangeApproval:
        """Approve the pending board change ``change`` (its id: 64 hex digits) (``confide cas
        successor board approve``). The change the CAS lists under that id is checked to hash
        to it (its board, generation and the key id) before it is signed: the member signs the
        board the id names, whatever the CAS says.

        Raises ``UsageError`` before anything is signed (a malformed id, no such pending
        change, a listed change that does not hash to its id, an expiry out of range); from the
        CAS ``AccessDeniedError`` (not on the board); ``NetworkError``."""
        from confide.cas.successor_client import check_hex_id, listed_board_change, sign_board_change  # noqa: PLC0415

        wanted = check_hex_id(change, "change", "change")
        at = _expires(expires)
        draft = listed_board_change(self._client, wanted, "change")
        return BoardChangeApproval._from(sign_board_change(self._client, identity, draft, at))

    def retirements(self) -> Retirements:
        """The successor board, its generation, the pending retirements and the retired
        versions (``confide cas successor retire show``)."""
        return Retirements._from(self._client.successor_retirements())

    def propose_retirement(
        self, platform: str, code: Mapping[str, str], identity: Identity, *, expires: Expiry
    ) -> RetirementApproval:
        """Propose retiring the version of ``platform`` whose code identity claims are ``code``
        (exactly those of the platform: ``sim`` and ``sev-snp`` measurement, ``sgx``
        mr_enclave, ``tdx`` mr_td, rtmr1, rtmr2; text form), signing the first approval
        (``confide cas successor retire propose``). A CAS refuses to retire its own version.

        Raises ``UsageError`` before anything is signed; from the CAS ``AccessDeniedError``
        (not on the board), ``UsageError`` (its own version); ``NetworkError``."""
        from confide.cas.successor_client import check_code_claims, new_retirement, sign_retirement  # noqa: PLC0415

        check_code_claims(platform, code, ("platform", "code"))
        at = _expires(expires)
        draft = new_retirement(self._client, platform, code)
        return RetirementApproval._from(sign_retirement(self._client, identity, draft, at))

    def approve_retirement(
        self, retirement: str, identity: Identity, *, expires: Expiry
    ) -> RetirementApproval:
        """Approve the pending retirement ``retirement`` (its id) (``confide cas successor
        retire approve``). The version the CAS lists under that id is checked to hash to it
        (platform, code claims, the board's generation and the key id) before it is signed.
        Raises as :meth:`approve_board_change`."""
        from confide.cas.successor_client import check_hex_id, listed_retirement, sign_retirement  # noqa: PLC0415

        wanted = check_hex_id(retirement, "retirement", "retirement")
        at = _expires(expires)
        draft = listed_retirement(self._client, wanted, "retirement")
        return RetirementApproval._from(sign_retirement(self._client, identity, draft, at))

    # -- services -----------------------------------------------------------------------------

    def simulated_provider(
        self, command: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
    ) -> SimQuoteProvider:
        """A quote provider of the simulated TEE (development only; ``confide run --tee sim``)
        that reports the measurement of ``command`` (:func:`measure`), with the platform key in
        :attr:`sim_dir`. ``UsageError`` without a simulated platform (``CONFIDE_SIM_DIR``) or
        when the program is not found."""
        if self.sim_dir is None:
            raise UsageError(f"no simulated TEE: {ENV_SIM_DIR} is not set (source the CAS's client.env)")
        from confide.runtime.quote import SimQuoteProvider  # noqa: PLC0415 - the service side loads here

        return SimQuoteProvider.for_command(
            self.sim_dir, list(command), cwd=None if cwd is None else Path(cwd)
        )

    def attest(self, config_id: str, provider: QuoteProvider, *, dumpable: bool = False) -> Release:
        """Attest this program as service ``SERVICE`` of policy ``POLICY`` (``config_id``
        ``POLICY/SERVICE``) with evidence from ``provider`` and return what the CAS released,
        decrypted: the code path of ``confide run`` (:func:`confide.runtime.run.attest_release`),
        without writing files, mounting volumes or executing anything; the program uses the
        :class:`Release` (environment, files, volume keys) itself. Unless ``dumpable``, this
        process is first made not dumpable (``prctl(PR_SET_DUMPABLE, 0)``, as ``confide run``:
        no core dump, no ptrace by other processes of the user), since it is about to hold the
        secrets.

        Raises ``UsageError`` for a malformed ``config_id``; from the CAS ``AppraisalError``
        (evidence the policy does not accept: another measurement, simulated evidence without
        ``tolerate: [simulation]``, ...), ``AccessDeniedError``, ``PolicyError``,
        ``ConflictError`` (attest again); ``NetworkError``, ``ParseError`` (a malformed
        answer), and the provider's errors."""
        from confide.runtime.run import attest_release, not_dumpable  # noqa: PLC0415

        policy, sep, service = config_id.rpartition("/")
        if not sep or not policy or not service:
            raise UsageError(f"config_id: got {config_id!r}, expected POLICY/SERVICE")
        if not dumpable:
            not_dumpable()
        return attest_release(self._client, provider, policy, service)

    def mount_volumes(self, release: Release) -> contextlib.AbstractContextManager[VolumeMounts]:
        """Mount every protected volume of ``release`` (from :meth:`attest` on this CAS) for
        the ``with`` block, and at its end seal them and report each changed volume's new tag
        to the CAS: the code of ``confide run`` (:func:`confide.runtime.volumes.mount_released`
        and :func:`~confide.runtime.volumes.seal_and_report`), with the block as the program.

        Each volume is mounted writable at ``/run/confide/volumes/NAME`` (FUSE, else tmpfs; not
        root: at ``/run/confide/volumes/run-XXXXXXXX/NAME``, a directory of the block's own, and
        in the tmpfs fallback a private directory under /dev/shm linked from there; see
        ``VolumeMounts.paths``) after its tag was checked against the released
        one; an image contract (``$CONFIDE_SCONIFY``) binds its protected paths at their
        original places, which needs root. As root, the mounts are made in a private mount
        namespace of the calling thread: use them from that thread and the processes it starts.

        At the end of the block, also when it raises (as ``confide run`` seals after a program
        that failed): ``rollback_protected`` and ``no_rollback_protection`` volumes are sealed
        and their new tags reported (``session``, old tag, new tag); ``ephemeral`` ones
        discarded. A volume with an integrity failure: nothing is sealed, ``SignatureError``;
        one whose mount was lost during the block (its FUSE server died, or the mount was
        removed from outside, docs/volume-mount.md "Signals"): nothing is sealed, ``StorageError``.
        A report the CAS refuses raises its class (``ConflictError``, ``AccessDeniedError``,
        ...), a volume that could not be sealed ``StorageError``, each after every other volume
        was handled; such an error replaces an exception of the block (which is its
        ``__context__``), as ``confide run``'s error replaces the program's exit code.

        Mounting raises ``RollbackError`` (a volume older than the released tag: also a second
        mount of one release after its first one sealed; attest again), ``SignatureError`` (a
        volume that does not authenticate), ``UsageError`` (an image contract without root,
        unsealed changes left in the directory), ``StorageError``; nothing stays mounted.

        SIGINT, SIGTERM and SIGHUP during the seal and the reports (the block ending in the main
        thread): held back until the last report is done, then delivered as they would have been:
        to the handler found (Python's SIGINT default: the ``KeyboardInterrupt`` raised out of the
        ``with`` statement, after the new tags reached the CAS; an error of the seal or a report
        is then its ``__context__``), or, for a default action, the signal raised again with it
        (the process then ends by that signal, after the reports). An ignored signal, one whose
        handler is not Python's (``signal.getsignal`` is None) or an event loop's (asyncio's or
        uvloop's ``loop.add_signal_handler``: it runs on the loop, not in between) is not held. The
        application's handlers are put back as they were at the block's end. One its handler
        raises for a signal that came in the instant before (the first instruction of this
        context manager's ``__exit__`` is the only one left unprotected) is raised after the
        reports too. Otherwise an interrupt or a termination would leave a sealed volume whose new
        tag the CAS never heard of: the CAS keeps releasing the old tag, and the next mount of the
        volume is refused (``RollbackError``, the directory newer than the released tag).
        Called in another thread, nothing is held (no handler can be set there; Python raises
        ``KeyboardInterrupt`` in the main thread only, but SIGTERM's default action still ends
        the process mid-seal), and the main thread must wait for the block's end (a daemon
        thread dies with the interpreter)."""
        return _VolumeSession(self._client, release)


class _VolumeSession:
    """:meth:`Cas.mount_volumes`' context manager (a class, not a generator: its ``__exit__``
    holds the signals back at its first instruction)."""

    def __init__(self, client: CasClient, release: Release) -> None:
        self._client = client
        self._release = release
        self._mounted: MountedVolumes | None = None

    def __enter__(self) -> VolumeMounts:
        from confide.runtime.volumes import mount_released  # noqa: PLC0415 - the service side loads here

        if self._mounted is not None:
            raise UsageError("mount_volumes: one with block per call")
        self._mounted = mount_released(list(self._release.volumes))
        return _volume_mounts(self._mounted)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        early: BaseException | None = None
        while True:  # first: an application's handler may raise here for a signal of the instant before
            try:
                held = _HOLD.enter()
                break
            except BaseException as caught:  # raised again after the reports
                early = early or caught
        try:  # an error here replaces the block's exception (its __context__)
            from confide.runtime.volumes import seal_and_report  # noqa: PLC0415

            assert self._mounted is not None
            seal_and_report(self._mounted, self._client, self._release.policy, self._release.session)
        finally:
            try:
                if held:
                    _HOLD.leave()
            finally:
                if early is not None:
                    raise early


def _volume_mounts(mounted: MountedVolumes) -> VolumeMounts:
    return VolumeMounts(mounted.paths(), dict(mounted.environment), mounted)


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _SignalHold:
    """SIGINT, SIGTERM and SIGHUP held back in the main thread while volumes are sealed and
    their new tags reported (:meth:`Cas.mount_volumes`, :meth:`AsyncCas.mount_volumes`).

    :meth:`enter` replaces each signal's handler by one that notes the signal (not for an
    ignored signal, a handler not set from Python, or an asyncio loop's); the last
    :meth:`leave` (holds nest, and asynchronous sessions may end in any order) puts the
    handlers found back and raises each signal noted again (:func:`signal.raise_signal`) for
    them: a Python handler runs, a default action ends the process. Main thread only: off it,
    :meth:`enter` holds nothing and returns False.

    What cannot be held: a signal handled in the instant before :meth:`enter` replaced its
    handler. Python runs a signal's handler in the main thread at the next bytecode boundary,
    the handler in place then; masking the signal (:func:`signal.pthread_sigmask`) would have
    to happen before the application's block ends, and masks the calling thread only: another
    thread then takes a signal sent to the process, and Python still runs the handler in the
    main thread. So the caller enters first thing and keeps what such a handler raises for
    after :meth:`leave`; a default action there ends the process before anything was sealed
    (consistent: the CAS's tag is still the volume's)."""

    def __init__(self) -> None:
        self._depth = 0
        self._holding = False  # from the first enter until the last leave has put the handlers back
        self._found: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        self._notes: dict[int, Callable[[int, FrameType | None], None]] = {}
        self._came: list[int] = []

    def _note_taker(
        self, found: Callable[[int, FrameType | None], object] | int
    ) -> Callable[[int, FrameType | None], None]:
        """The handler of a hold whose signal found ``found`` in place: while a hold is on, it
        notes the signal (raised again at the last :meth:`leave`). Once the hold is over it can
        still be called: other code that set a handler of its own during the hold saved this
        one and put it back after (uvicorn's ``capture_signals``). It then passes the signal on
        to ``found``, the handler it stood in for (a default action: set back, then raised),
        instead of noting it for a hold that will never deliver it."""

        def note(signum: int, frame: FrameType | None) -> None:
            if self._holding:  # this hold, or a later one (delivered at its last leave)
                if signum not in self._came:
                    self._came.append(signum)
            elif callable(found):
                found(signum, frame)
            else:  # SIG_DFL (SIG_IGN and handlers not set from Python are not held)
                signal.signal(signum, found)
                signal.raise_signal(signum)

        return note

    def enter(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if self._depth == 0:
            self._holding = True
            for signum in _HELD_SIGNALS:
                # What is replaced is noted first: an application's handler may raise (see the
                # caller) as signal.signal returns, and the caller then enters again, when the
                # handler in place is already the hold's own.
                if signum not in self._found:
                    found = signal.getsignal(signum)
                    if found is None or found is signal.SIG_IGN or _loop_handler(found):
                        continue
                    self._notes[signum] = self._note_taker(found)
                    self._found[signum] = found
                signal.signal(signum, self._notes[signum])  # again after an interrupted enter: the same
        self._depth += 1
        return True

    def leave(self) -> None:
        self._depth -= 1
        if self._depth:
            return
        found, self._found = self._found, {}
        notes, self._notes = self._notes, {}
        first: BaseException | None = None
        for signum, handler in found.items():
            while True:  # a held signal still pending is noted first; another's handler may raise
                try:
                    # not over a handler the application set meanwhile (asynchronous sessions:
                    # the loop runs other tasks during the hold)
                    if signal.getsignal(signum) is notes[signum]:
                        signal.signal(signum, handler)
                    break
                except BaseException as exc:
                    first = first or exc
        self._holding = False
        came, self._came = self._came, []
        for signum in came:
            try:
                signal.raise_signal(signum)
            except BaseException as exc:  # the first is raised, after every signal
                first = first or exc
        if first is not None:
            raise first


def _loop_handler(handler: object) -> bool:
    """Whether ``handler`` is what an event loop's ``add_signal_handler`` puts in place: its
    handler runs on the loop (from the wakeup fd), not here. asyncio's is
    ``asyncio.unix_events._sighandler_noop``; uvloop's a bound method of the loop."""
    if handler is getattr(getattr(asyncio, "unix_events", None), "_sighandler_noop", None):
        return True
    return isinstance(getattr(handler, "__self__", None), asyncio.AbstractEventLoop)


_HOLD = _SignalHold()

_log = logging.getLogger("confide.sdk")


_OWNER_POLL = 0.2
"""Seconds between checks, by an :meth:`AsyncCas.mount_volumes` session's thread, that the
thread which entered the block is still alive."""


class _VolumeThread(threading.Thread):
    """The thread of one :meth:`AsyncCas.mount_volumes` session: it mounts the release's
    volumes, waits for the block's end, then seals and reports (or discards) them. One thread
    for the whole session, alive until its end: the FUSE server and the ``shm`` guard end with
    the thread that started them (PR_SET_PDEATHSIG), and as root the mounts are made in its
    private mount namespace (:func:`confide.runtime.volumes.mount_released`). Not a daemon:
    the interpreter waits for the seal before it exits. Should the thread that entered the block
    end (for the main thread: the interpreter shutting down) while the block has not, the block
    can no longer end: the session is discarded (unmounted unsealed, as after a crash) rather
    than the interpreter waiting for it forever."""

    def __init__(self, client: CasClient, using: threading.Lock, release: Release) -> None:
        super().__init__(name="confide-volumes")
        self._client = client
        self._using = using
        self._release = release
        self._end = threading.Event()
        self._discard = False
        self._owner = threading.current_thread()  # the event loop's, entering the block
        self.mounted: concurrent.futures.Future[tuple[MountedVolumes, int | None]]
        self.mounted = concurrent.futures.Future()
        """The volumes, and an open ``/proc/thread-self/ns/mnt`` of this thread as root."""
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run(self) -> None:
        from confide.runtime.volumes import mount_released, seal_and_report  # noqa: PLC0415

        try:
            mounted = mount_released(list(self._release.volumes))
        except BaseException as exc:  # raised by __aenter__
            self.mounted.set_exception(exc)
            return
        namespace: int | None = None
        if os.geteuid() == 0 and self._release.volumes:
            try:
                namespace = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                failure = StorageError(f"cannot open the volumes' mount namespace: {exc.strerror or exc}")
                try:
                    mounted.abort()
                finally:
                    self.mounted.set_exception(failure)
                return
        self.mounted.set_result((mounted, namespace))
        while not self._end.wait(_OWNER_POLL):
            if not self._owner.is_alive():
                self._discard = True
                break
        try:
            if self._discard:
                mounted.abort()
            else:
                with self._using:  # the Cas, one thread at a time (AsyncCas._locked)
                    seal_and_report(mounted, self._client, self._release.policy, self._release.session)
        except BaseException as exc:  # raised by __aexit__
            self.ended.set_exception(exc)
        else:
            self.ended.set_result(None)

    def end(self, *, discard: bool) -> None:
        """Seal and report now (or, with ``discard``, unmount unsealed: the block never ran)."""
        self._discard = discard
        self._end.set()


async def _through_cancellation(done: concurrent.futures.Future[_R]) -> asyncio.CancelledError | None:
    """Wait until ``done`` is done, also when the task is cancelled meanwhile (what it waits
    for cannot be stopped); return the first cancellation, for the caller to raise after."""
    if done.done():
        return None
    waiting = asyncio.wrap_future(done)
    cancelled: asyncio.CancelledError | None = None
    while not waiting.done():
        try:
            await asyncio.wait({waiting})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if not waiting.cancelled():
        waiting.exception()  # retrieved here: the caller reads ``done``
    return cancelled


class _AsyncVolumeSession:
    """:meth:`AsyncCas.mount_volumes`' asynchronous context manager."""

    def __init__(self, client: CasClient, using: threading.Lock, release: Release) -> None:
        self._client = client
        self._using = using
        self._release = release
        self._thread: _VolumeThread | None = None

    async def __aenter__(self) -> VolumeMounts:
        from confide.volume.mount import join_namespace  # noqa: PLC0415

        if self._thread is not None:
            raise UsageError("mount_volumes: one async with block per call")
        thread = self._thread = _VolumeThread(self._client, self._using, self._release)
        thread.start()
        try:
            cancelled = await _through_cancellation(thread.mounted)
        except BaseException:  # GeneratorExit: closed with its loop, the block never runs
            # Nobody takes the namespace the thread may open after this: it closes it (at once
            # if it is open already), and an error of the discard is logged (nobody awaits it).
            thread.mounted.add_done_callback(_close_namespace)
            thread.ended.add_done_callback(functools.partial(_log_unawaited, "discard"))
            thread.end(discard=True)
            raise
        failure = thread.mounted.exception()
        if failure is not None:  # nothing is mounted; an error of the volumes wins over a cancellation
            raise failure
        mounted, namespace = thread.mounted.result()
        try:
            if cancelled is None and namespace is not None:
                join_namespace(namespace)  # this thread sees what the volume thread mounted
        except BaseException as exc:  # raised after the discard
            failure = exc
        finally:
            if namespace is not None:
                os.close(namespace)
        if cancelled is None and failure is None:
            return _volume_mounts(mounted)
        thread.end(discard=True)  # the block never runs: nothing to seal
        cancelled = await _through_cancellation(thread.ended) or cancelled
        failure = thread.ended.exception() or failure or cancelled
        assert failure is not None
        raise failure

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        early: BaseException | None = None
        while True:  # first: an application's handler may raise here for a signal of the instant before
            try:
                held = _HOLD.enter()
                break
            except BaseException as caught:  # raised again after the reports
                early = early or caught
        try:  # an error here replaces the block's exception (its __context__)
            assert self._thread is not None
            self._thread.end(discard=False)
            try:
                cancelled = await _through_cancellation(self._thread.ended)
            except BaseException:  # GeneratorExit: closed with its loop (not cancelled)
                # The thread still seals and reports; nobody awaits its end: an error is logged.
                self._thread.ended.add_done_callback(functools.partial(_log_unawaited, "seal and report"))
                raise
            error = self._thread.ended.exception()
            if error is not None:  # wins over a cancellation: the CancelledError may be swallowed
                raise error
            if cancelled is not None:
                raise cancelled
        finally:
            try:
                if held:
                    _HOLD.leave()
            finally:
                if early is not None:
                    raise early


def _close_namespace(mounted: concurrent.futures.Future[tuple[MountedVolumes, int | None]]) -> None:
    """Close the mount namespace descriptor a :class:`_VolumeThread` opened for an
    ``__aenter__`` that no longer takes it (closed while it waited)."""
    if not mounted.cancelled() and mounted.exception() is None:
        namespace = mounted.result()[1]
        if namespace is not None:
            os.close(namespace)


def _log_unawaited(what: str, ended: concurrent.futures.Future[None]) -> None:
    """Log, at error level, an error of an :meth:`AsyncCas.mount_volumes` session's end that no
    coroutine awaits any more (its ``__aenter__`` or ``__aexit__`` closed with its event loop,
    not cancelled): the sync path would raise it. Its message only (no secret: errors.py)."""
    error = None if ended.cancelled() else ended.exception()
    if error is not None:
        _log.error(
            "confide.sdk: AsyncCas.mount_volumes: the %s after the coroutine was closed failed: %s: %s",
            what,
            type(error).__name__,
            error,
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _cosign_wait(witness_wait: object) -> CosignWait:
    """``witness_wait`` of :meth:`Cas.history`, ``accesses`` and ``verify_log``: seconds, 0 to
    60 (:class:`confide.ledger.auditor.CosignWait`)."""
    from confide.ledger.auditor import CosignWait  # noqa: PLC0415

    if (
        isinstance(witness_wait, bool)
        or not isinstance(witness_wait, int | float)
        or not 0 <= witness_wait <= 60
    ):
        raise UsageError(f"witness_wait: got {witness_wait!r}, expected seconds from 0 to 60")
    return CosignWait(float(witness_wait))


def _freshness(
    max_age: str | timedelta | None, witnesses: Sequence[NoteVerifier], now: datetime | None
) -> Freshness | None:
    """``max_age`` (and ``now``) of :meth:`Cas.verify_log`, :meth:`Cas.history` and
    :meth:`Cas.accesses`, as ``--max-age`` reads it (:func:`confide.ledger.freshness.freshness_for`);
    without ``now``, judged at the clock, read as each checkpoint is fetched."""
    from confide.ledger.freshness import freshness_for  # noqa: PLC0415

    return freshness_for(
        max_age, witnesses, lambda: datetime.now(UTC), now=now, option="max_age",
        no_witness="max_age goes with witnesses: only a witness's cosignature carries a time",
    )  # fmt: skip


# --- asyncio ---------------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


class AsyncCas:
    """:class:`Cas` for asyncio: the same calls as coroutines, so that an async service does
    not block its event loop. A thread-offloading wrapper, not a second client: each call runs
    the :class:`Cas` this object owns in a worker thread (:func:`asyncio.to_thread`), with the
    same requests, checks, results and errors (raised through ``await``).

    Concurrency: calls on one ``AsyncCas`` run one at a time, in the order they were awaited (a
    :class:`Cas` is never used by two threads at once; a call cancelled while its thread runs
    still holds the connection until the thread finishes). For parallel calls, use several
    ``AsyncCas`` objects: each has its own connection. Use one on one event loop. Close it with
    ``async with`` or :meth:`aclose`.

    Make one with :meth:`from_env`, :meth:`from_env_file`, :meth:`connect` or
    :meth:`attested` (coroutines: they read files, and ``attested`` verifies the CAS's
    evidence over the network), or wrap a :class:`Cas` that nothing else uses: ``AsyncCas(cas)``.
    """

    def __init__(self, cas: Cas) -> None:
        self._cas = cas
        self._queue = asyncio.Lock()  # one call at a time, waiting on the loop (no thread held)
        self._using = threading.Lock()  # and one thread at a time, even after a cancellation

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    async def from_env(cls, environ: Mapping[str, str] | None = None) -> AsyncCas:
        """:meth:`Cas.from_env`."""
        return cls(await asyncio.to_thread(Cas.from_env, environ))

    @classmethod
    async def from_env_file(cls, path: str | os.PathLike[str]) -> AsyncCas:
        """:meth:`Cas.from_env_file`."""
        return cls(await asyncio.to_thread(Cas.from_env_file, path))

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ca_cert: str | os.PathLike[str] | bytes,
        log_key: str | None = None,
        sim_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> AsyncCas:
        """:meth:`Cas.connect`."""
        call = functools.partial(
            Cas.connect, url, ca_cert=ca_cert, log_key=log_key, sim_dir=sim_dir, timeout=timeout
        )
        return cls(await asyncio.to_thread(call))

    @classmethod
    async def attested(
        cls,
        url: str,
        *,
        sim_key: str | os.PathLike[str] | bytes | None = None,
        measurements: Iterable[str] = (),
        expect: Mapping[str, Sequence[str]] | None = None,
        collateral: str | None = None,
        tolerate: Iterable[str] = (),
        ignore_advisories: Iterable[str] = (),
        expect_witnesses: int | None = None,
        expect_witness_keys: Iterable[str] = (),
        min_tcb_eval_number: int | str | None = None,
        tcb_recovery_grace_days: int | None = None,
        pcs_update: str | None = None,
        pcs_tcb_eval_number: int | None = None,
        any_measurement: bool = False,
        at: datetime | None = None,
        sim_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> AsyncCas:
        """:meth:`Cas.attested`: the CAS's evidence verified in a worker thread."""
        call = functools.partial(
            Cas.attested, url, sim_key=sim_key, measurements=tuple(measurements), expect=expect,
            collateral=collateral, tolerate=tuple(tolerate), ignore_advisories=tuple(ignore_advisories),
            expect_witnesses=expect_witnesses, expect_witness_keys=tuple(expect_witness_keys),
            min_tcb_eval_number=min_tcb_eval_number, tcb_recovery_grace_days=tcb_recovery_grace_days,
            pcs_update=pcs_update, pcs_tcb_eval_number=pcs_tcb_eval_number,
            any_measurement=any_measurement, at=at,
            sim_dir=sim_dir, timeout=timeout,
        )  # fmt: skip
        return cls(await asyncio.to_thread(call))

    @property
    def url(self) -> str:
        return self._cas.url

    @property
    def cas_key_sha256(self) -> str | None:
        """:attr:`Cas.cas_key_sha256`."""
        return self._cas.cas_key_sha256

    @property
    def log_key(self) -> str | None:
        """:attr:`Cas.log_key`."""
        return self._cas.log_key

    @property
    def sim_dir(self) -> Path | None:
        """:attr:`Cas.sim_dir`."""
        return self._cas.sim_dir

    @property
    def attestation(self) -> PinnedCas | None:
        """:attr:`Cas.attestation`."""
        return self._cas.attestation

    async def _run(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn(*args, **kwargs)`` in a worker thread, after the calls awaited before it."""
        call = functools.partial(fn, *args, **kwargs)
        async with self._queue:
            return await asyncio.to_thread(self._locked, call)

    def _locked(self, call: Callable[[], _R]) -> _R:
        with self._using:
            return call()

    async def aclose(self) -> None:
        """Close the HTTP connections, after the calls awaited before."""
        await self._run(self._cas.close)

    async def __aenter__(self) -> AsyncCas:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncCas(url={self.url!r})"

    # -- stakeholders -------------------------------------------------------------------------

    async def apply(
        self, policy: Policy | str | bytes | os.PathLike[str], identity: Identity
    ) -> PolicyStatus:
        """:meth:`Cas.apply`."""
        return await self._run(self._cas.apply, policy, identity)

    async def approve(self, name: str, hash: str, identity: Identity) -> PolicyStatus:
        """:meth:`Cas.approve`."""
        return await self._run(self._cas.approve, name, hash, identity)

    async def show(self, name: str, identity: Identity) -> PolicyInfo:
        """:meth:`Cas.show`."""
        return await self._run(self._cas.show, name, identity)

    async def events(self, name: str, identity: Identity) -> tuple[PolicyEvent, ...]:
        """:meth:`Cas.events`."""
        return await self._run(self._cas.events, name, identity)

    async def history(
        self,
        name: str,
        identity: Identity,
        *,
        log_key: str | None = None,
        state: str | os.PathLike[str] | None = None,
        witnesses: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> History:
        """:meth:`Cas.history`."""
        return await self._run(
            self._cas.history, name, identity, log_key=log_key, state=state, witnesses=tuple(witnesses),
            max_age=max_age, now=now, witness_wait=witness_wait,
        )  # fmt: skip

    async def accesses(
        self,
        name: str,
        identity: Identity,
        *,
        secret: str | None = None,
        log_key: str | None = None,
        state: str | os.PathLike[str] | None = None,
        witnesses: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> Accesses:
        """:meth:`Cas.accesses`."""
        return await self._run(
            self._cas.accesses, name, identity, secret=secret, log_key=log_key, state=state,
            witnesses=tuple(witnesses), max_age=max_age, now=now, witness_wait=witness_wait,
        )  # fmt: skip

    async def crl(
        self,
        name: str,
        secret: str,
        identity: Identity | None = None,
        *,
        pem: bool = False,
        ca: CaCertificate | None = None,
        allow_expired: bool = False,
        now: datetime | None = None,
    ) -> bytes:
        """:meth:`Cas.crl`."""
        return await self._run(
            self._cas.crl, name, secret, identity, pem=pem, ca=ca, allow_expired=allow_expired,
            now=now,
        )  # fmt: skip

    async def checked_crl(
        self,
        name: str,
        secret: str,
        identity: Identity | None = None,
        *,
        pem: bool = False,
        ca: CaCertificate | None = None,
        allow_expired: bool = False,
        now: datetime | None = None,
    ) -> CheckedCrl:
        """:meth:`Cas.checked_crl`."""
        return await self._run(
            self._cas.checked_crl, name, secret, identity, pem=pem, ca=ca, allow_expired=allow_expired,
            now=now,
        )  # fmt: skip

    async def revoke(
        self,
        name: str,
        secret: str,
        identity: Identity,
        *,
        serial: str | None = None,
        all_valid: bool = False,
        reason: RevocationReason = "unspecified",
    ) -> Revocation:
        """:meth:`Cas.revoke`."""
        return await self._run(
            self._cas.revoke, name, secret, identity, serial=serial, all_valid=all_valid, reason=reason
        )

    # -- the auditor --------------------------------------------------------------------------

    async def verify_log(
        self,
        *,
        state: str | os.PathLike[str] | None = None,
        log_key: str | None = None,
        witnesses: Iterable[str] = (),
        max_age: str | timedelta | None = None,
        now: datetime | None = None,
        witness_wait: float = 5.0,
    ) -> LogVerification:
        """:meth:`Cas.verify_log`."""
        return await self._run(
            self._cas.verify_log, state=state, log_key=log_key, witnesses=tuple(witnesses), max_age=max_age,
            now=now, witness_wait=witness_wait,
        )  # fmt: skip

    # -- the successor board ------------------------------------------------------------------

    async def successor(self) -> SuccessorBoard:
        """:meth:`Cas.successor`."""
        return await self._run(self._cas.successor)

    async def approve_successor(
        self,
        platform: str,
        claims: Mapping[str, str],
        identity: Identity,
        *,
        expires: Expiry,
        master_key_id: str | None = None,
        retire: Mapping[str, str] | None = None,
        retire_attested: bool = False,
    ) -> SuccessorApproval:
        """:meth:`Cas.approve_successor`."""
        return await self._run(
            self._cas.approve_successor, platform, claims, identity, expires=expires,
            master_key_id=master_key_id, retire=retire, retire_attested=retire_attested,
        )  # fmt: skip

    async def withdraw_successor_approval(
        self, approval: str, identity: Identity, *, master_key_id: str | None = None
    ) -> SuccessorWithdrawal:
        """:meth:`Cas.withdraw_successor_approval`."""
        return await self._run(
            self._cas.withdraw_successor_approval, approval, identity, master_key_id=master_key_id
        )

    async def board_changes(self) -> BoardChanges:
        """:meth:`Cas.board_changes`."""
        return await self._run(self._cas.board_changes)

    async def propose_board_change(
        self,
        board: Mapping[str, Sequence[str]] | os.PathLike[str],
        identity: Identity,
        *,
        expires: Expiry,
    ) -> BoardChangeApproval:
        """:meth:`Cas.propose_board_change`."""
        return await self._run(self._cas.propose_board_change, board, identity, expires=expires)

    async def approve_board_change(
        self, change: str, identity: Identity, *, expires: Expiry
    ) -> BoardChangeApproval:
        """:meth:`Cas.approve_board_change`."""
        return await self._run(self._cas.approve_board_change, change, identity, expires=expires)

    async def retirements(self) -> Retirements:
        """:meth:`Cas.retirements`."""
        return await self._run(self._cas.retirements)

    async def propose_retirement(
        self, platform: str, code: Mapping[str, str], identity: Identity, *, expires: Expiry
    ) -> RetirementApproval:
        """:meth:`Cas.propose_retirement`."""
        return await self._run(self._cas.propose_retirement, platform, code, identity, expires=expires)

    async def approve_retirement(
        self, retirement: str, identity: Identity, *, expires: Expiry
    ) -> RetirementApproval:
        """:meth:`Cas.approve_retirement`."""
        return await self._run(self._cas.approve_retirement, retirement, identity, expires=expires)

    # -- services -----------------------------------------------------------------------------

    async def simulated_provider(
        self, command: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
    ) -> SimQuoteProvider:
        """:meth:`Cas.simulated_provider` (the command's files are read and measured in a
        worker thread)."""
        return await self._run(self._cas.simulated_provider, tuple(command), cwd=cwd)

    async def attest(self, config_id: str, provider: QuoteProvider, *, dumpable: bool = False) -> Release:
        """:meth:`Cas.attest`: the provider's ``get_evidence`` runs in the worker thread too."""
        return await self._run(self._cas.attest, config_id, provider, dumpable=dumpable)

    def mount_volumes(self, release: Release) -> contextlib.AbstractAsyncContextManager[VolumeMounts]:
        """:meth:`Cas.mount_volumes` as an asynchronous context manager (``async with
        cas.mount_volumes(release) as volumes:``): the same mounts, the same seal and reports
        at the block's end (also when it raises), the same errors, the blocking parts in a
        thread of the session's own (not the loop's executor: one thread mounts, lives through
        the block and seals, as the FUSE server and the ``shm`` guard end with the thread that
        started them). As root, that thread's private mount namespace is joined by the thread
        that enters the block (the event loop's, as :meth:`Cas.mount_volumes` moves its calling
        thread into one): the loop and the processes it starts see the mounts. The report
        waits for a call of this object running then (one thread uses the :class:`Cas` at a
        time), not for the calls queued.

        Cancellation: the seal and the reports cannot be stopped. A task cancelled at the
        block's end (or while the block awaits: that is the block raising ``CancelledError``)
        still seals and reports; ``CancelledError`` is raised after the last report, unless
        the seal or a report failed: their error is raised instead (a cancellation is often
        swallowed by whoever cancelled, which would hide a tag left unreported). Cancelled while
        mounting: the mount finishes and is discarded (unmounted unsealed: the block never
        ran), then ``CancelledError`` (or the mount's error). SIGINT, SIGTERM and SIGHUP are held
        back in the main thread from the block's end to the last report, as by
        :meth:`Cas.mount_volumes` (a loop's own handlers, ``loop.add_signal_handler``, run
        meanwhile; ``asyncio.run``'s SIGINT handler, a Python one, is held and then cancels the
        main task)."""
        return _AsyncVolumeSession(self._cas._client, self._using, release)
