"""Client-side checks of a policy's ledger entries: ``confide ledger history`` and
``confide ledger accesses``.

The CAS returns a policy's entries (to identities that may read the policy), each with an
inclusion proof in the latest signed checkpoint. Nothing here trusts the CAS's word: the
checkpoint must be signed by the pinned log key, every entry must be included in it (RFC 9162
§2.1.3.2), and every entry must say exactly what the CAS's summary of it says. Entries newer than
the checkpoint are reported as such (a checkpoint covers them within a second).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confide import jsonstrict
from confide.cas.client import CasClient
from confide.cas.documents import APPROVAL_TYPE, APPROVAL_V1_TYPE, POLICY_TYPE, POLICY_V1_TYPE, verify_signed
from confide.cas.entry_types import ENTRY_TYPES
from confide.errors import (
    AccessDeniedError,
    ConfideError,
    EntryMismatchError,
    EntryMissingError,
    ParseError,
    UsageError,
)
from confide.identity import Identity
from confide.ledger.checkpoint import SignedCheckpoint, open_checkpoint
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.freshness import NO_WITNESS, Freshness
from confide.ledger.merkle import hash_leaf, verify_inclusion
from confide.ledger.note import NoteVerifier
from confide.policy import loads_policy, policy_hash

if TYPE_CHECKING:
    from confide.ledger.auditor import CosignWait, LogClient, LogVerification, ViewUpdate

__all__ = [
    "PolicyChainChecker",
    "VerifiedEvent",
    "accesses",
    "history",
    "read_audited",
    "verified_events",
    "verify_readable",
]


@dataclass(frozen=True)
class VerifiedEvent:
    index: int
    type: str
    time: str
    payload: dict[str, Any]
    included: bool  # proven included in the signed checkpoint


def verified_events(
    client: CasClient, name: str, identity: Identity, log_key: NoteVerifier
) -> tuple[SignedCheckpoint | None, list[VerifiedEvent]]:
    signed, _head, listed = _listed_events(client.events(name, identity), log_key)
    out: list[VerifiedEvent] = []
    for ev in listed:
        entry = _listed_entry(name, ev)
        included = False
        if signed is not None and ev.index < signed.checkpoint.size:
            proof = _proof(ev.index, ev.event.get("inclusion_proof", []))
            verify_inclusion(
                ev.index, signed.checkpoint.size, hash_leaf(ev.data), proof, signed.checkpoint.root
            )
            included = True
            if entry.type is EntryType.EXPORT_RELEASED:
                _verify_attestation_link(ev, entry, signed)
        out.append(VerifiedEvent(ev.index, entry.type.value, entry.time, entry.payload, included))
    return signed, out


@dataclass(frozen=True)
class _Listed:
    """One event of a policy's events answer: its index, its ledger entry's bytes, the event."""

    index: int
    data: bytes
    event: dict[str, Any]


def _listed_events(
    data: object, log_key: NoteVerifier
) -> tuple[SignedCheckpoint | None, str | None, list[_Listed]]:
    """A policy's events answer (hostile input): its checkpoint (signed by ``log_key``), the
    current version it reports (``head``; ``None`` from a CAS that reports none) and its events,
    indexes increasing, each with its entry's bytes (not yet parsed)."""
    if not isinstance(data, dict) or not isinstance(data.get("events", []), list):
        raise ParseError("expected an object with a list of events", structure="events")
    signed = None
    if data.get("checkpoint"):
        signed = open_checkpoint(str(data["checkpoint"]).encode(), log_key)
    head = data.get("head")
    if head is not None and not (isinstance(head, str) and _HASH_HEX.fullmatch(head)):
        raise ParseError("head: expected a policy hash (64 hex digits)", structure="events")
    out: list[_Listed] = []
    for ev in data.get("events", []):
        try:
            index = ev["index"]
            if type(index) is not int or index < 0:
                raise TypeError(index)
            entry_bytes = base64.b64decode(ev["entry"], validate=True)
        except (KeyError, ValueError, TypeError):
            raise ParseError(
                "the CAS returned an event without its ledger entry", structure="events"
            ) from None
        # One entry is one event: the same index twice (or out of order) would show one release
        # or approval as several.
        if out and index <= out[-1].index:
            raise EntryMismatchError(
                f"entry {index}: the CAS returned it after entry {out[-1].index} (indices must increase)"
            )
        out.append(_Listed(index, entry_bytes, ev))
    return signed, head, out


def _listed_entry(name: str, ev: _Listed) -> Entry:
    """The entry of a listed event of policy ``name``: canonical (else ``ParseError``), of that
    policy, and saying what the CAS's summary of it (type, payload) says
    (else :class:`EntryMismatchError`)."""
    entry = Entry.from_bytes(ev.data)
    if ENTRY_TYPES.get(str(ev.event.get("type"))) != entry.type or entry.policy != name:
        raise EntryMismatchError(
            f"entry {ev.index}: the CAS calls it {ev.event.get('type')!r}, the ledger says {entry.type}"
        )
    if entry.payload != ev.event.get("payload"):
        raise EntryMismatchError(f"entry {ev.index}: the CAS's summary differs from the ledger entry")
    return entry


def _attestation_link(index: int, entry: Entry) -> tuple[int, bytes]:
    """The importer's attestation entry an exporter's record of a release (``export.released``,
    ledger entry ``index``) names: its index (before the record) and leaf hash; anything else
    is an :class:`EntryMismatchError` naming the record."""
    link = entry.payload.get("attestation")
    at = link.get("index") if isinstance(link, dict) else None
    leaf = link.get("leaf_hash") if isinstance(link, dict) else None
    if (
        type(at) is not int
        or not 0 <= at < index
        or not (isinstance(leaf, str) and _HASH_HEX.fullmatch(leaf))
    ):
        raise EntryMismatchError(f"entry {index}: the release names no attestation entry before it")
    return at, bytes.fromhex(leaf)


def _verify_attestation_link(ev: _Listed, entry: Entry, signed: SignedCheckpoint) -> None:
    """An exporter's record of a release, included in ``signed``: the importer's attestation
    entry it names (an entry the exporter may not read) must be in the same checkpoint at that
    index with that leaf hash (``attestation_proof``), else :class:`EntryMismatchError`."""
    at, leaf = _attestation_link(ev.index, entry)
    proof = _proof(ev.index, ev.event.get("attestation_proof"))
    try:
        verify_inclusion(at, signed.checkpoint.size, leaf, proof, signed.checkpoint.root)
    except ConfideError:
        raise EntryMismatchError(
            f"entry {ev.index}: the attestation entry it names ({at}) is not in the checkpoint"
        ) from None


Read = Callable[[], tuple[str, SignedCheckpoint | None, list[VerifiedEvent]]]
"""A read of one policy's verified events: (the policy read, its checkpoint, the events)."""


def read_audited(
    client: CasClient,
    log_key: NoteVerifier,
    state_file: Path | None,
    read: Read,
    *,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> tuple[str, SignedCheckpoint | None, list[VerifiedEvent], ViewUpdate | None]:
    """``read()`` (the policy read, its checkpoint and verified events); with ``state_file``,
    checked against and added to what the file remembers (:func:`confide.ledger.auditor.audit_view`,
    the consistency proof from the CAS's public tiles): the policy, the checkpoint, the events and
    the :class:`~confide.ledger.auditor.ViewUpdate` (``None`` without a state file). ``ledger
    history|accesses --state`` and :meth:`confide.sdk.Cas.history` / ``accesses``.

    ``witnesses`` (``--witness``): each must have cosigned the checkpoint read; ``freshness``
    (``--max-age``), each one's newest cosignature within it, judged when the checkpoint was
    read (:meth:`~confide.ledger.freshness.Freshness.renewed`), as ``ledger verify`` judges its
    checkpoint (:func:`~confide.ledger.auditor.verify_checkpoint_update`): else
    :class:`~confide.ledger.auditor.NotCosignedError` (an :class:`~confide.errors.UnknownKeyError`) /
    :class:`FreshnessError`, after a rollback or fork is named, and with nothing written to the
    state file. ``wait`` (:class:`~confide.ledger.auditor.CosignWait`): while the checkpoint read
    lacks a required cosignature (the CAS's newest, signed a witness round trip before its
    cosignatures come), the whole read is made again, within that bound, and judged anew (against
    the state file as the first was: the checkpoint remembered there is never lowered)."""
    from confide.ledger.auditor import (  # noqa: PLC0415 - the auditor, only here
        AuditorState,
        NotCosignedError,
        audit_view,
        cosign_wait,
        distinct_witnesses,
        verify_checkpoint_update,
    )

    distinct_witnesses(witnesses)  # refused before the CAS is asked
    if freshness is not None and not witnesses:
        raise UsageError(NO_WITNESS)
    if not witnesses:
        wait = None  # nothing to wait for

    def cosigned(signed: SignedCheckpoint | None) -> None:
        if witnesses and signed is None:
            raise NotCosignedError(
                f"the log shows no checkpoint, so none cosigned by witness {witnesses[0].vkey}"
            )

    if state_file is None:

        def attempt() -> tuple[str, SignedCheckpoint | None, list[VerifiedEvent]]:
            policy, signed, events = read()
            cosigned(signed)
            if signed is not None and witnesses:
                fresh = None if freshness is None else freshness.renewed()
                verify_checkpoint_update(None, signed.raw, [], log_key, witnesses=witnesses, freshness=fresh)
            return policy, signed, events

        return (*cosign_wait(wait, attempt), None)
    from confide.ledger.http import HttpLogClient  # noqa: PLC0415 - only with a state file

    state = AuditorState(state_file)
    with state.locked():
        previous = state.load(log_key)  # a bad state file is refused before the CAS is asked
        with HttpLogClient(f"{client.url}/v1/log", client=client.http) as tiles:

            def audited() -> tuple[str, SignedCheckpoint | None, list[VerifiedEvent], ViewUpdate]:
                policy, signed, events = read()
                if previous is None:
                    cosigned(signed)  # (with one remembered, no checkpoint is a RollbackError first)
                proven = [e.index for e in events if e.included]
                # audit_view verifies before it remembers anything or writes the file
                update = audit_view(
                    tiles, log_key, state, previous, policy, signed, proven,
                    witnesses=witnesses, freshness=freshness,
                )  # fmt: skip
                return policy, signed, events, update

            return cosign_wait(wait, audited)


_HASH_HEX = re.compile(r"[0-9a-f]{64}")


def _proof(index: int, value: object) -> list[bytes]:
    """An event's ``inclusion_proof`` (hex SHA-256 hashes, RFC 9162 §2.1.3: at most 63 for a
    tree below 2**63 entries), hostile input: anything else is a ParseError naming the entry."""
    if (
        not isinstance(value, list)
        or len(value) > 63
        or not all(isinstance(h, str) and _HASH_HEX.fullmatch(h) for h in value)
    ):
        raise ParseError(
            f"entry {index}: the inclusion proof is not a list of hex hashes", structure="events"
        )
    return [bytes.fromhex(h) for h in value]


def history(events: list[VerifiedEvent]) -> list[dict[str, Any]]:
    """Every version of the policy: who submitted it, who approved it, what became of it."""
    rows = []
    for ev in events:
        p = ev.payload
        if ev.type.startswith("policy."):
            rows.append(
                {
                    "index": ev.index, "time": ev.time, "event": ev.type, "hash": p.get("hash"),
                    "predecessor": p.get("predecessor"), "signer": p.get("signer"),
                    "approvers": p.get("approvers"), "included": ev.included,
                }
            )  # fmt: skip
    return rows


def accesses(events: list[VerifiedEvent], secret: str | None = None) -> list[dict[str, Any]]:
    """Which attested services received which secrets, when, under which measurement (and, for
    a release with volumes, each volume's update policy as released)."""
    rows = []
    for ev in events:
        exported = ev.type == EntryType.EXPORT_RELEASED.value
        if ev.type != "secret.released" and not exported:
            continue
        secrets = _list_of_objects(ev, "secrets")
        _list_of_objects(ev, "volumes")
        if secret is not None and not any(s.get("name") == secret for s in secrets):
            continue
        p = ev.payload
        rows.append(
            {
                "index": ev.index, "time": ev.time, "service": p.get("service"),
                "measurement": p.get("measurement"),
                "policy_hash": p.get("importer_policy_hash" if exported else "policy_hash"),
                "secrets": secrets, "runtime_key_sha256": p.get("runtime_key_sha256"),
                "included": ev.included,
            }
        )  # fmt: skip
        if p.get("volumes"):
            rows[-1]["volumes"] = p["volumes"]
        if exported:
            # released to a service of another policy, which imports them (the exporter's record)
            link = p.get("attestation")
            rows[-1].update(
                {
                    "importer": p.get("importer"), "platform": p.get("platform"),
                    "tcb_status": p.get("tcb_status"),
                    "attestation_index": link.get("index") if isinstance(link, dict) else None,
                }
            )  # fmt: skip
    return rows


def _list_of_objects(ev: VerifiedEvent, member: str) -> list[dict[str, Any]]:
    """A release's ``member`` (absent or null: none), a list of objects; anything else is a
    ParseError naming the entry (the CAS writes the entries it returns: hostile input)."""
    value = ev.payload.get(member)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ParseError(
            f"entry {ev.index}: the release's {member} are not a list of objects", structure="ledger entry"
        )
    return value


class PolicyChainChecker:
    """``confide ledger verify --full``: re-check every policy document in the log.

    Called with each entry in log order. For each policy version it checks the submitter's
    signature over the submission, that the submission's policy hashes to the recorded hash,
    that approvals are signed by their approvers, and that every policy's history is one linear
    chain: a creation names no predecessor and a new name; an update names the current version.
    Any difference is an :class:`EntryMismatchError` naming the entry.

    ``view``: the entries are one stakeholder's view (``ledger verify --full --identity``: the
    entries of the policies it may read, as the CAS returns them), not the whole log. What only
    an entry left out of the view explains is then an :class:`EntryMissingError` naming the
    entry: an update from a version no entry before it made current (its creation, or an update
    between, left out, the version's submission perhaps shown), an update whose submission entry
    is not among those before it.
    """

    def __init__(self, *, view: bool = False) -> None:
        self.heads: dict[str, str] = {}
        self.submitted: dict[tuple[str, str], str] = {}
        self.view = view
        # (policy, version) made current by a creation or an update: a submission (pending,
        # awaiting approval) makes nothing current, so an update from a version only submitted
        # is, in a view, an update after an activation left out (not a fork)
        self.activated: set[tuple[str, str]] = set()

    def __call__(self, index: int, data: bytes) -> None:
        entry = Entry.from_bytes(data)
        p = entry.payload
        name = entry.policy or ""
        try:
            if entry.type.value in ("policy.created", "policy.updated", "policy.submitted"):
                digest = str(p.get("hash"))
                if "submission" in p:
                    self._check_submission(index, name, digest, str(p["submission"]), str(p.get("signer")))
                    self.submitted[(name, digest)] = str(p.get("signer"))
                elif "submission_withheld" not in p and (name, digest) not in self.submitted:
                    if self.view:
                        raise EntryMissingError(
                            f"entry {index}: policy {name} {digest[:16]}… has no signed submission, and "
                            "no entry before it holds one: its submission's entry is left out"
                        )
                    raise EntryMismatchError(
                        f"entry {index}: policy {name} {digest[:16]}… has no signed submission"
                    )
                if entry.type.value == "policy.created":
                    if name in self.heads or p.get("predecessor") is not None:
                        raise EntryMismatchError(
                            f"entry {index}: policy {name} created twice or with a predecessor"
                        )
                    self.heads[name] = digest
                elif entry.type.value == "policy.updated":
                    predecessor = p.get("predecessor")
                    unmade = (name, predecessor) not in self.activated
                    if self.view and self.heads.get(name) != predecessor and unmade:
                        raise EntryMissingError(
                            f"entry {index}: policy {name} updated from {str(predecessor)[:16]}…, a version "
                            "no entry before it made: an entry of its chain is left out"
                        )
                    if self.heads.get(name) != predecessor:
                        raise EntryMismatchError(
                            f"entry {index}: policy {name} updated from {str(p.get('predecessor'))[:16]}…, "
                            f"but its current version is {str(self.heads.get(name))[:16]}…"
                        )
                    self.heads[name] = digest
                if entry.type.value != "policy.submitted":
                    self.activated.add((name, digest))
            elif entry.type.value == "policy.approved" and "approval" in p:
                doc = _loads(str(p["approval"]))
                # v1 (no ``cas``): entries recorded before approvals named their CAS.
                v1 = isinstance(doc, dict) and doc.get("type") == APPROVAL_V1_TYPE
                kind = APPROVAL_V1_TYPE if v1 else APPROVAL_TYPE
                body, signer = verify_signed(doc, kind)
                if (
                    body.get("name") != name
                    or body.get("hash") != p.get("hash")
                    or signer.fingerprint != p.get("signer")
                ):
                    raise EntryMismatchError(f"entry {index}: the approval does not match the entry")
        except EntryMismatchError:
            raise
        except (ParseError, ConfideError) as exc:
            raise EntryMismatchError(f"entry {index}: {exc.message}") from None

    @staticmethod
    def _check_submission(index: int, name: str, digest: str, text: str, signer_fp: str) -> None:
        doc = _loads(text)
        # v1 (no ``cas``): entries recorded before submissions named their CAS. Which CAS a v2
        # submission names is not compared: each CAS of a cluster has its own TLS key, and a
        # CAS given a new key keeps its ledger.
        v1 = isinstance(doc, dict) and doc.get("type") == POLICY_V1_TYPE
        body, signer = verify_signed(doc, POLICY_V1_TYPE if v1 else POLICY_TYPE)
        if not v1 and not isinstance(body.get("cas"), str):
            raise EntryMismatchError(f"entry {index}: the {POLICY_TYPE} submission names no CAS")
        if signer.fingerprint != signer_fp:
            raise EntryMismatchError(
                f"entry {index}: submission signed by {signer.fingerprint[:16]}…, "
                f"the entry names {signer_fp[:16]}…"
            )
        policy = loads_policy(json.dumps(body.get("policy")), source=f"ledger entry {index}", stored=True)
        if policy.name != name or policy_hash(policy) != digest:
            raise EntryMismatchError(f"entry {index}: the signed policy does not hash to {digest[:16]}…")


def _loads(text: str) -> Any:
    return jsonstrict.loads(text, structure="ledger entry document")


def verify_readable(
    client: CasClient,
    tiles: LogClient,
    log_key: NoteVerifier,
    identity: Identity,
    policies: Sequence[str],
    state_file: Path | None,
    *,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> LogVerification:
    """``confide ledger verify --full --identity FILE [--policy NAME]...`` at a CAS (and
    :meth:`confide.sdk.Cas.verify_log` with ``full=True`` and an identity): one stakeholder's
    full audit, of the whole tree and of the entries it may read.

    The latest checkpoint (``tiles``: the CAS's public ``/v1/log``) must be signed by
    ``log_key``, cosigned by ``witnesses`` (with ``freshness``, ``--max-age``: each cosignature
    within it, :class:`~confide.errors.FreshnessError` otherwise), extend the one ``state_file``
    remembers, and its level-0 tiles hash to its root (every leaf hash is public). The entries
    read are those of ``policies`` (default: every policy the CAS says ``identity`` may read, a
    signed read, and every policy ``state_file`` remembers entries of): each policy's events,
    whose checkpoint must be one of the same tree (consistency proven from the tiles), and which
    must report the policy's current version (``head``, else :class:`ParseError`). Every entry
    returned must be in the tree: one past the latest checkpoint (appended within the last
    second) is waited for, the checkpoint fetched again up to :data:`NEWER_WAIT` times a second
    apart (``client.sleep``), and is an :class:`EntryMismatchError` if no checkpoint holds it
    then. Each entry must hash to the leaf hash at its index (:class:`EntryMismatchError` naming
    the policy and the entry), be a canonical entry of that policy saying what the CAS's summary
    says, and each policy's documents must verify and form one linear chain
    (:class:`PolicyChainChecker` over the view: a gap in the chain is an
    :class:`EntryMissingError` naming the entry), ending at the current version the CAS reports
    (else :class:`EntryMissingError` naming the policy). With ``state_file``, every entry of a
    policy remembered there must be returned again
    (:func:`~confide.ledger.auditor.remember_view`; a remembered policy the CAS no longer lets
    ``identity`` read is an :class:`EntryMissingError` naming it, unless ``policies`` names the
    policies to check), and the file then remembers the checkpoint and the entries proven,
    written once at the end; nothing is written on an error. A stakeholder cannot see the
    entries it may not read: an entry of its policy the CAS leaves out that breaks no chain and
    was not seen before is not detected (docs/limitations.md "Transparency ledger")."""
    from confide.ledger.auditor import (  # noqa: PLC0415 - the auditor's types, only here
        Auditor,
        AuditorState,
        LogVerification,
        PolicyEntries,
        remember_view,
    )

    state = AuditorState(state_file) if state_file is not None else None
    with state.locked() if state is not None else contextlib.nullcontext():
        # a bad state file is refused before the CAS is asked
        old = state.load(log_key) if state is not None else None
        names = list(dict.fromkeys(policies)) if policies else client.readable(identity)
        # A policy whose entries were returned before is checked again even when the CAS no
        # longer lists it (a listing that leaves a policy out would hide all its entries).
        remembered = set()
        if state is not None and not policies:
            remembered = {n for n, known in (state.policies or {}).items() if known} - set(names)
            names += sorted(remembered)
        answers = []
        for name in names:
            try:
                data = client.events(name, identity)
            except AccessDeniedError:
                if name not in remembered:
                    raise
                known = state.entries(name) if state is not None else []
                raise EntryMissingError(
                    f"{name}: the CAS no longer lets {identity.fingerprint[:16]}… read the policy, whose "
                    f"entries {_indexes(known)} it returned before: it hides them, or this identity's read "
                    "access was withdrawn (name the policies to check with --policy to leave it out)"
                ) from None
            signed_by, head, listed = _listed_events(data, log_key)
            if head is None:
                raise ParseError(
                    "head: the CAS reports no current version of the policy, the end of its chain",
                    structure=f"{name[:128]}: events",
                )
            answers.append((name, signed_by, head, listed))
        # (``wait``: the latest checkpoint read again while it lacks a required cosignature)
        auditor = Auditor(tiles, log_key, witnesses=witnesses, freshness=freshness, wait=wait)
        signed = auditor.update(old)
        # Each answer's checkpoint is of the same tree: the largest (the latest, unless an answer
        # came with a newer one) extends the others, proven from the tiles.
        for _, answered, _, _ in answers:
            if answered is not None and answered.checkpoint.size > signed.checkpoint.size:
                signed = auditor.extend(signed.checkpoint, answered.raw)
        proven: set[tuple[int, bytes]] = {(signed.checkpoint.size, signed.checkpoint.root)}
        for _, answered, _, _ in answers:
            tree = None if answered is None else (answered.checkpoint.size, answered.checkpoint.root)
            if answered is not None and tree not in proven:
                Auditor(tiles, log_key).extend(answered.checkpoint, signed.raw)
                proven.add((answered.checkpoint.size, answered.checkpoint.root))
        # Every entry returned must be one the tree holds: an index past the checkpoint would
        # otherwise be matched with no leaf hash at all (a CAS could give any entry such an
        # index). An entry appended within the last second is in the next checkpoint: waited for.
        beyond = [(name, ev.index) for name, _, _, listed in answers for ev in listed]
        for _ in range(NEWER_WAIT):
            if all(index < signed.checkpoint.size for _, index in beyond):
                break
            client.sleep(1.0)
            signed = auditor.update(signed.checkpoint)
        size = signed.checkpoint.size
        for name, index in beyond:
            if index >= size:
                raise EntryMismatchError(
                    f"{name}: entry {index}: the CAS returned it, but its log's latest checkpoint (size "
                    f"{size}) does not hold it {NEWER_WAIT} s later: the tree commits to no such entry"
                )
        # An exporter's record of a release names the importer's attestation entry by index and
        # leaf hash: that leaf is compared too (the entry itself is the importer's)
        linked: dict[int, tuple[int, bytes]] = {}
        for _, _, _, listed in answers:
            for ev in listed:
                with contextlib.suppress(ParseError, EntryMismatchError):  # judged below
                    entry = Entry.from_bytes(ev.data)
                    if entry.type is EntryType.EXPORT_RELEASED:
                        linked[ev.index] = _attestation_link(ev.index, entry)
        wanted = [index for _, index in beyond] + [at for at, _ in linked.values()]
        leaves = auditor.leaf_hashes(signed.checkpoint, wanted)
        checker = PolicyChainChecker(view=True)
        checked: list[PolicyEntries] = []
        for name, _, head, listed in answers:
            for ev in listed:
                if not hmac.compare_digest(hash_leaf(ev.data), leaves[ev.index]):
                    raise EntryMismatchError(
                        f"{name}: entry {ev.index}: content hashes to {hash_leaf(ev.data).hex()}, the tree "
                        f"commits to {leaves[ev.index].hex()}"
                    )
                try:
                    entry = _listed_entry(name, ev)
                except ParseError as exc:
                    raise EntryMismatchError(
                        f"{name}: entry {ev.index} is not a canonical entry: {exc.message}"
                    ) from None
                if entry.type is EntryType.EXPORT_RELEASED:
                    at, leaf = _attestation_link(ev.index, entry)
                    if not hmac.compare_digest(leaf, leaves[at]):
                        raise EntryMismatchError(
                            f"{name}: entry {ev.index}: the attestation entry it names ({at}) has another "
                            "leaf hash in the tree"
                        )
                checker(ev.index, ev.data)
            end = checker.heads.get(name)
            if end != head:
                raise EntryMissingError(
                    f"{name}: the CAS reports version {head[:16]}… current, but the chain of the entries it "
                    f"returned ends at {'no version' if end is None else end[:16] + '…'}: it leaves out "
                    "entries of the policy"
                )
            covered = [ev.index for ev in listed]
            if state is not None:
                remember_view(state, name, covered)
            checked.append(PolicyEntries(name, len(covered), head))
        if state is not None:
            state.save(signed)
    cp = signed.checkpoint
    return LogVerification(
        cp.origin, cp.size, cp.root.hex(), None if old is None else old.size,
        sum(p.entries for p in checked), tuple(w.vkey for w in witnesses),
        max_age=None if freshness is None else int(freshness.max_age.total_seconds()),
        reader=identity.fingerprint, policies=tuple(checked),
    )  # fmt: skip


NEWER_WAIT = 5
"""Seconds :func:`verify_readable` waits, fetching the checkpoint again each second, for one
that holds every entry the CAS returned (the CAS signs one within a second of an append)."""


def _indexes(known: Sequence[int]) -> str:
    """Entry indexes for a message: the first few, and how many more."""
    shown = ", ".join(str(i) for i in known[:5])
    return shown if len(known) <= 5 else f"{shown} and {len(known) - 5} more"
