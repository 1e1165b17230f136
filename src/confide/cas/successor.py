"""Handing the master key over to a successor version: the successor board and its approvals.

A CAS update changes the measurement, so the attested release (:mod:`confide.cas.key_release`)
refuses the new version: its identity claims are not the running CAS's. docs/cas.md "Handing
over to a successor version" describes the authorised hand-over implemented here:

1. **The board** is set when the CAS is initialised (``cas serve --successor-board FILE`` on
   the start that creates the master key; :func:`parse_board_file`): a ``require-all`` or
   ``require-at-least-N`` rule over stakeholder identities, the policy boards' format and
   evaluation (:mod:`confide.policy.access`). It is stored as one row (``successor_board``) whose
   record is authenticated with HMAC-SHA256 under a key derived from the master key with
   HKDF-SHA256 (RFC 5869 §2; no salt, info ``confide-successor-board/v1``;
   :meth:`confide.cas.secrets.Sealer.derive_key`): the operator, who controls the database,
   can delete it (no hand-over then) but cannot write one the CAS accepts, and a CAS started on
   an existing key never sets one. :func:`load_board` checks it at every use; a mismatch is a
   :class:`~confide.errors.StorageError`. A master-key rotation re-authenticates it under the
   new key in its transaction (:func:`reauthenticate_board`). Only its own quorum changes it
   (:mod:`confide.cas.board_change`); approvals name the board's generation and count only
   under it.
2. **Approvals** (``confide/successor-approval/v1``, signed as policy approvals are: Ed25519
   over RFC 8785 JSON without ``signature``): ``{"type", "master_key_id", "platform",
   "claims", "expires", "signer"}``. ``claims`` are exactly the identity claims the join rule
   compares for ``platform`` (:data:`~confide.cas.key_release.IDENTITY_CLAIMS`), in their text
   form (:func:`claim_text`); ``master_key_id`` names the CAS (its current master key);
   ``expires`` is a Unix time at most :data:`MAX_LIFETIME` ahead; optionally ``generation``
   (the board's, left out for 0) and ``retire`` (the identity claims of the version it
   retires, 5. below). The *target*,
   SHA-256 of RFC 8785 JSON of ``{"claims", "master_key_id", "platform"}`` (and
   ``"generation"`` when it is not 0), names what is approved. A member's
   approval is stored (its newest per target) and recorded in the ledger; anything else after
   the signature verified is refused and recorded.
3. **The release** (:meth:`Successors.authorise`, in the key release's write transaction): for a
   joiner whose only difference from the running CAS is its identity claims, the board is
   checked, every stored approval for the joiner's target is verified again (signature, signer
   a member, not expired, not withdrawn), and the board's rule must be met by their signers.
4. **Withdrawals** (``confide/successor-withdrawal/v1``, signed the same way; docs/cas.md
   "Withdrawing an approval"): ``{"type", "approval", "master_key_id", "time", "signer"}``.
   ``approval`` is the approval's *digest*, SHA-256 of its RFC 8785 JSON (signature included);
   ``time`` must be within :data:`~confide.cas.core.READ_WINDOW` of the CAS clock, as for
   revocation requests (reads carry a nonce instead). Only the approval's own signer can
   withdraw it, once, before it expires. The withdrawal is stored (``successor_withdrawals``,
   kept for good: the same approval is never accepted or counted again) and recorded in the
   same transaction, which also authenticates the board again with the set of withdrawals
   (:func:`~confide.cas.successor_board.bind_state`: deleting one is a StorageError). The
   release's transaction reads them, so a withdrawal committed before the release wins; its
   ledger entry names the digests of the approvals it counted.
5. **Retirement** (docs/cas.md "Retiring the old version"): an approval may also name, in
   ``retire``, the identity claims of the version it retires; it then counts, for the hand-over
   too, only in a release by exactly that version in which those naming it meet the board's
   rule, and that release's transaction retires the releasing CAS's version (:meth:`Successors.retire`:
   its identity digest stored, covered by the board's MAC, recorded). A retirement matches on
   the *code identity* (:data:`CODE_CLAIMS`, :func:`code_identity`), whatever the host-set
   claims: a retired code releases the key to no one but a successor its retiring approvals
   name (the hand-over again, when its answer was lost), is released to by no one
   (:meth:`Successors.check_retired`, in every release's transaction) and does not start
   (:meth:`Successors.refuse_retired_start`). An approval that would retire its successor's
   code is refused; ``"retire": true`` (schema 9) is refused, and a stored one counts for
   nothing. Approvals are not consumed by a release (ADR 0004, amendment).
6. **Retirement on its own** (docs/cas.md "Retiring a version on its own";
   :mod:`confide.cas.retirement`, :attr:`Successors.retirements`): the board's quorum retires a
   version named by its code claims without a hand-over, through a CAS of another version
   (``own``: this CAS's evidence, so that it refuses to retire itself); stored by
   :meth:`Successors.store_retired`, as a hand-over's retirement is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from sqlalchemy import Connection, insert, select

from confide.cas.board_change import BoardChanges, ChangeApproval
from confide.cas.core import READ_WINDOW, verify_signed
from confide.cas.db import successor_approvals, successor_retired, successor_withdrawals
from confide.cas.documents import SUCCESSOR_APPROVAL_TYPE as APPROVAL_TYPE
from confide.cas.documents import WITHDRAWAL_TYPE
from confide.cas.key_release import IDENTITY_CLAIMS, OwnEvidence
from confide.cas.retirement import RetirementApproval, Retirements
from confide.cas.successor_board import (
    MAX_LIFETIME,
    Board,
    bind_state,
    current_key_id,
    load_board,
    read_key_id,
    read_platform,
    read_stored_time,
    read_unix_time,
    store_newest,
    stored_document,
)
from confide.cas.versions import (
    CODE_CLAIMS,
    EVENT_RETIRED,
    check_claims,
    claim_text,
    claim_text_ok,
    code_identity,
    identity_digest,
)
from confide.errors import (
    AccessDeniedError,
    AppraisalError,
    ConfideError,
    ConflictError,
    ParseError,
    StorageError,
    UsageError,
)
from confide.policy.canonical import jcs
from confide.verify.result import Platform, VerifiedEvidence

if TYPE_CHECKING:
    from confide.cas.core import Cas

__all__ = [
    "APPROVAL_TYPE",
    "CODE_CLAIMS",
    "MAX_LIFETIME",
    "WITHDRAWAL_TYPE",
    "Approval",
    "Successors",
    "Withdrawal",
    "check_claims",
    "claim_text",
    "claim_text_ok",
    "code_identity",
    "current_key_id",
    "identity_digest",
    "parse_approval",
    "parse_withdrawal",
    "target_of",
]

EVENT_APPROVED = "successor-approved"
EVENT_REFUSED = "successor-approval-refused"
EVENT_WITHDRAWN = "successor-withdrawn"
EVENT_WITHDRAWAL_REFUSED = "successor-withdrawal-refused"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_APPROVAL_FIELDS = frozenset(
    {"type", "master_key_id", "platform", "claims", "expires", "signer", "signature"}
)
_APPROVAL_OPTIONAL = frozenset({"generation", "retire"})
_WITHDRAWAL_FIELDS = frozenset({"type", "approval", "master_key_id", "time", "signer", "signature"})
_ROW = (successor_approvals.c.target, successor_approvals.c.signer, successor_approvals.c.document)


def target_of(master_key_id: str, platform: str, claims: Mapping[str, str], generation: int = 0) -> str:
    """What an approval approves, as one SHA-256 (hex): the CAS, the platform and the claims,
    under the board of ``generation`` (named only when it is not 0, so a target of a board
    never changed is what it was before boards could change)."""
    named: dict[str, Any] = {"claims": dict(claims), "master_key_id": master_key_id, "platform": platform}
    if generation:
        named["generation"] = generation
    return hashlib.sha256(jcs(named)).hexdigest()


# --- approvals ---------------------------------------------------------------------------------


class _Admitted(Protocol):
    """What :meth:`Successors._admit` and :meth:`Successors.counting` read of a successor,
    board-change or retirement approval."""

    @property
    def signer(self) -> str: ...
    @property
    def master_key_id(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def expires(self) -> int: ...
    @property
    def digest(self) -> str: ...


_A = TypeVar("_A", bound=_Admitted)


@dataclass(frozen=True)
class Approval:
    """A parsed, signature-checked approval."""

    signer: str
    master_key_id: str
    platform: Platform
    claims: dict[str, str]
    expires: int
    digest: str  # SHA-256 of the document's RFC 8785 JSON, signature included: what a withdrawal names
    generation: int = 0  # its board's generation (docs/cas.md "Changing the successor board")
    # the identity claims of the version it approves retiring ("Retiring the old version"):
    # it counts only for a release by exactly that version
    retire: dict[str, str] | None = None

    @property
    def retire_identity(self) -> str | None:
        return None if self.retire is None else identity_digest(self.platform.value, self.retire)

    @property
    def target(self) -> str:
        return target_of(self.master_key_id, self.platform.value, self.claims, self.generation)


def parse_approval(doc: Any) -> Approval:
    """An approval document, read strictly, its signature verified (hostile input)."""
    what = APPROVAL_TYPE
    if not isinstance(doc, dict) or not _APPROVAL_FIELDS <= set(doc) <= _APPROVAL_FIELDS | _APPROVAL_OPTIONAL:
        raise ParseError(
            "expected type, master_key_id, platform, claims, expires, signer, signature, and "
            "optionally generation and retire",
            structure=what,
        )
    body, signer = verify_signed(doc, APPROVAL_TYPE)
    key_id, platform_text, claims, expires = (
        body["master_key_id"], body["platform"], body["claims"], body["expires"],
    )  # fmt: skip
    read_key_id(key_id, what)
    platform = read_platform(platform_text, IDENTITY_CLAIMS, what)
    names = IDENTITY_CLAIMS[platform]
    check_claims(claims, names, platform, "claims", what)
    read_unix_time(expires, "expires", what)
    # One document per meaning: generation 0 and "not retire" are said by leaving the field out.
    generation = body.get("generation", 0)
    if "generation" in body and (isinstance(generation, bool) or not isinstance(generation, int)
                                 or not 0 < generation < 2**53):  # fmt: skip
        raise ParseError("generation: expected a positive integer (left out for 0)", structure=what)
    retire = body.get("retire")
    if retire is True:
        raise ParseError(
            "retire: true names no version (the form before schema 10, which retired whichever "
            "version handed the key over): name the version to retire by its identity claims, and "
            "sign again",
            structure=what,
        )
    if isinstance(retire, dict) or "retire" in body:
        check_claims(retire, names, platform, "retire", what)
        retire = cast("dict[str, str]", retire)
        # docs/cas.md "Retiring the old version": retiring the successor's own code would retire
        # the successor too (a retirement matches on the code, whatever the host-set claims).
        if code_identity(platform.value, retire) == code_identity(platform.value, claims):
            raise UsageError(
                "retire: the version to retire has the successor's code identity "
                f"({', '.join(CODE_CLAIMS[platform])}): the approval would retire the successor"
            )
    digest = hashlib.sha256(jcs(doc)).hexdigest()
    return Approval(
        signer.fingerprint, key_id, platform, dict(claims), expires, digest, generation,
        dict(retire) if isinstance(retire, dict) else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Withdrawal:
    """A parsed, signature-checked withdrawal of an approval (module docstring, 4)."""

    signer: str
    approval: str
    master_key_id: str
    time: int


def parse_withdrawal(doc: Any) -> Withdrawal:
    """A withdrawal document, read strictly, its signature verified (hostile input)."""
    what = WITHDRAWAL_TYPE
    if not isinstance(doc, dict) or set(doc) != _WITHDRAWAL_FIELDS:
        raise ParseError(
            "expected exactly type, approval, master_key_id, time, signer, signature", structure=what
        )
    body, signer = verify_signed(doc, WITHDRAWAL_TYPE)
    digest, key_id, when = body["approval"], body["master_key_id"], body["time"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ParseError("approval: expected its SHA-256, 64 lower-case hex digits", structure=what)
    read_key_id(key_id, what)
    read_unix_time(when, "time", what)
    return Withdrawal(signer.fingerprint, digest, key_id, when)


class Successors:
    """The board and approvals of ``cas`` (module docstring)."""

    def __init__(
        self, cas: Cas, *, clock: Callable[[], float] = time.time, own: OwnEvidence | None = None
    ) -> None:
        """``own``: this CAS's own current evidence, verified (``None``: it has none and takes no
        retirement approval; :mod:`confide.cas.retirement`, module docstring 4)."""
        self.cas, self.clock, self.own = cas, clock, own
        self.board_changes = BoardChanges(self)
        self.retirements = Retirements(self)

    def load(self, conn: Connection) -> Board | None:
        """The stored board, authenticated (:func:`load_board`) and judged against the ledger's
        board entries as ``conn``'s transaction sees the ledger (docs/cas.md "What the successor
        board rests on"; :mod:`confide.cas.board_ledger`): every read of the board that decides
        or shows anything goes through here; rows older than the ledger are a
        :class:`~confide.cas.board_ledger.BoardRolledBack`."""
        return load_board(conn, self.cas.sealer, self.cas.policy_auth.index.view(conn).board())

    def _board(self, conn: Connection) -> Board:
        board = self.load(conn)
        if board is None:
            raise UsageError(
                "this CAS has no successor board (one is set only when the CAS is initialised, with "
                "cas serve --successor-board): it hands its master key over to no other version"
            )
        return board

    def approve(self, doc: Any) -> dict[str, Any]:
        """Store a board member's approval and record it; every refusal after the signature
        verified is recorded and raised."""
        approval = parse_approval(doc)
        now = self.clock()
        outcome: dict[str, Any] = {
            "signer": approval.signer, "target": approval.target, "master_key_id": approval.master_key_id,
            "platform": approval.platform.value, "claims": approval.claims, "expires": approval.expires,
            "generation": approval.generation, "retire": approval.retire,
            "retire_identity": approval.retire_identity,
        }  # fmt: skip
        with self._refusals_recorded(outcome, EVENT_REFUSED), self.cas.db.write() as conn:
            board = self._board(conn)
            self._admit(
                conn, board, approval, now,
                withdrawn_hint=" (sign a new one, e.g. with another expiry)",
                stale='the successor board changed since (docs/cas.md "Changing the successor board"); '
                "sign again under the current one",
            )  # fmt: skip
            store_newest(
                conn, successor_approvals, "target", approval.target, approval.signer, approval.expires,
                jcs(doc).decode(), now,
            )  # fmt: skip
            outcome.update({"approval": jcs(doc).decode(), "digest": approval.digest})
            approvers = self._tally(conn, board, approval.target, now, outcome)
            self.cas.events.record(conn, EVENT_APPROVED, None, outcome)
        return {
            "target": approval.target, "digest": approval.digest, "approvers": sorted(approvers),
            "needed": board.needed, "authorised": outcome["authorised"],
            "retire": outcome["retire_authorised"],
        }  # fmt: skip

    def withdraw(self, doc: Any) -> dict[str, Any]:
        """Withdraw a stored approval at its signer's request (module docstring, 4): stored and
        recorded in one transaction; every refusal after the signature verified is recorded
        and raised."""
        withdrawal = parse_withdrawal(doc)
        now = self.clock()
        outcome: dict[str, Any] = {
            "signer": withdrawal.signer, "approval": withdrawal.approval,
            "master_key_id": withdrawal.master_key_id, "time": withdrawal.time,
        }  # fmt: skip
        with self._refusals_recorded(outcome, EVENT_WITHDRAWAL_REFUSED):
            if abs(now - withdrawal.time) > READ_WINDOW:
                raise AccessDeniedError(
                    f"withdrawal time {withdrawal.time} is more than {READ_WINDOW}s from the CAS clock"
                )
            with self.cas.db.write() as conn:
                board = self._board(conn)
                current = current_key_id(conn)
                if current != withdrawal.master_key_id:
                    raise UsageError(
                        f"master_key_id: got {withdrawal.master_key_id}, expected {current} (this CAS's)"
                    )
                if self._withdrawn(conn, {withdrawal.approval}):
                    raise ConflictError(f"approval {withdrawal.approval[:16]}… was withdrawn already")
                approval: Approval | ChangeApproval | RetirementApproval | None = self._stored(
                    conn, withdrawal.approval
                )
                if approval is None:  # a board change's approval (docs/cas.md "Changing the successor board")
                    approval = self.board_changes.stored(conn, withdrawal.approval)
                if approval is None:  # a retirement's ("Retiring a version on its own")
                    approval = self.retirements.stored(conn, withdrawal.approval)
                if approval is None:
                    raise UsageError(
                        f"no stored approval has the digest {withdrawal.approval} (cas successor show, "
                        "cas successor board show and cas successor retire show list them; a newer approval "
                        "of the same claims, change or retirement by the same member replaces the older)"
                    )
                if isinstance(approval, Approval):
                    target = approval.target
                    found = {"platform": approval.platform.value, "claims": approval.claims}
                    outcome.update({"target": target, **found})
                elif isinstance(approval, RetirementApproval):
                    target = approval.retirement
                    found = {"platform": approval.platform.value, "code": approval.code}
                    outcome.update({"target": target, "retirement": target, **found})
                else:
                    target = approval.change
                    outcome.update({"target": target, "change": target, "board": approval.board.to_json()})
                if approval.signer != withdrawal.signer:
                    raise AccessDeniedError(
                        f"approval {withdrawal.approval[:16]}… was signed by {approval.signer[:16]}…: only "
                        "its signer can withdraw it"
                    )
                if approval.expires <= now:
                    raise UsageError("the approval has expired already: it counts no more")
                conn.execute(
                    insert(successor_withdrawals).values(
                        approval=approval.digest, signer=approval.signer, target=target,
                        document=jcs(doc).decode(), created_at=now,
                    )
                )  # fmt: skip
                bind_state(conn, self.cas.sealer)
                outcome["withdrawal"] = jcs(doc).decode()
                if isinstance(approval, Approval):
                    approvers = self._tally(conn, board, target, now, outcome)
                elif isinstance(approval, RetirementApproval):
                    approvers = {a.signer for a in self.retirements.tally(conn, board, target, now, outcome)}
                else:
                    counted = self.board_changes.tally(conn, board, target, now, outcome)
                    approvers = {a.signer for a in counted}
                self.cas.events.record(conn, EVENT_WITHDRAWN, None, outcome)
        return {
            "approval": approval.digest, "target": target, "approvers": sorted(approvers),
            "needed": board.needed, "authorised": outcome["authorised"],
        }  # fmt: skip

    def _admit(
        self,
        conn: Connection,
        board: Board,
        approval: _Admitted,
        now: float,
        *,
        withdrawn_hint: str,
        stale: str,
    ) -> None:
        """The checks a successor, board-change and retirement approval share before they are
        stored (module docstring, 4; docs/cas.md "Changing the successor board", "Retiring a
        version on its own"): not withdrawn,
        this CAS's master key, the current board's generation (``stale`` says why another one is
        refused), an expiry ahead and at most :data:`MAX_LIFETIME` away, a member signer."""
        if self._withdrawn(conn, {approval.digest}):
            raise ConflictError(
                f"approval {approval.digest[:16]}… was withdrawn: it is never accepted again{withdrawn_hint}"
            )
        current = current_key_id(conn)
        if current != approval.master_key_id:
            raise UsageError(f"master_key_id: got {approval.master_key_id}, expected {current} (this CAS's)")
        if approval.generation != board.generation:
            raise ConflictError(
                f"generation: got {approval.generation}, expected {board.generation}: {stale}"
            )
        if approval.expires <= now:
            raise UsageError("the approval has expired already")
        if approval.expires > now + MAX_LIFETIME:
            raise UsageError(f"expires: at most {MAX_LIFETIME // 86400} days ahead")
        if approval.signer not in board.members:
            raise AccessDeniedError(f"identity {approval.signer[:16]}… is not on the successor board")

    @contextlib.contextmanager
    def _refusals_recorded(self, outcome: dict[str, Any], event: str) -> Iterator[None]:
        """A refusal raised inside (after the signature verified) is recorded as ``event``, with
        ``outcome`` and the reason, in a transaction of its own, and raised again."""
        try:
            yield
        except ConfideError as exc:
            outcome.update({"reason_class": exc.kind, "reason": exc.message[:500]})
            with self.cas.db.write() as conn:
                self.cas.events.record(conn, event, None, outcome)
            raise

    def _tally(
        self, conn: Connection, board: Board, target: str, now: float, outcome: dict[str, Any]
    ) -> set[str]:
        """The approvers that count for ``target`` now, noted in ``outcome`` with the board's
        hash and whether they authorise it."""
        counted = self._counted(conn, board, target, now)
        approvers = {a.signer for a in counted}
        outcome.update(
            {
                "board_sha256": board.sha256,
                "approvers": sorted(approvers),
                "authorised": _authorised(board, counted),
                "retire_authorised": _retirements(board, counted),
            }
        )
        return approvers

    @staticmethod
    def _withdrawn(conn: Connection, digests: set[str]) -> dict[str, int | None]:
        """Which of the approvals ``digests`` were withdrawn, and when (``None``: the stored time
        is not a number, :func:`~confide.cas.successor_board.read_stored_time`; the withdrawal
        still stands, its digest being bound by the board's MAC)."""
        if not digests:
            return {}
        rows = conn.execute(
            select(successor_withdrawals.c.approval, successor_withdrawals.c.created_at).where(
                successor_withdrawals.c.approval.in_(sorted(digests))
            )
        )
        return {str(row.approval): read_stored_time(row.created_at) for row in rows}

    @staticmethod
    def find_stored(
        rows: Iterable[Any], check: Callable[[str, str, str], _A | None], digest: str
    ) -> _A | None:
        """The stored approval whose document has ``digest`` among ``rows`` (``(key, signer,
        document)``: a successor's target, a change id or a retirement id), checked again by
        ``check(document, key, signer)``; ``None`` when there is none. A row is stored as its
        document's RFC 8785 text, whose SHA-256 is the digest: only a row whose text hashes to
        ``digest`` is parsed and its signature verified (not every row)."""
        for key, signer, document in rows:
            if hashlib.sha256(str(document).encode()).hexdigest() != digest:
                continue
            approval = check(document, key, signer)
            if approval is not None and approval.digest == digest:
                return approval
        return None

    @staticmethod
    def _stored(conn: Connection, digest: str) -> Approval | None:
        """The stored successor approval whose document has ``digest``, checked again (its
        signature, and the row's target and signer its own; :meth:`find_stored`)."""
        return Successors.find_stored(conn.execute(select(*_ROW)), _checked, digest)

    def counting(
        self, conn: Connection, board: Board, approvals: Iterable[_A | None], now: float
    ) -> list[_A]:
        """Of ``approvals`` (stored rows checked again, ``None`` for a row that is not what it
        says: the operator may have written it), those that count: a member's, signed under the
        current board's generation for the current master key id, not expired, not withdrawn.
        The same for successor, board-change and retirement approvals."""
        key_id = current_key_id(conn)
        valid = [
            a for a in approvals
            if a is not None and a.expires > now and a.signer in board.members
            and a.generation == board.generation and a.master_key_id == key_id
        ]  # fmt: skip
        withdrawn = self._withdrawn(conn, {a.digest for a in valid})
        return [a for a in valid if a.digest not in withdrawn]

    def _counted(self, conn: Connection, board: Board, target: str, now: float) -> list[Approval]:
        """The stored approvals of ``target`` that count (:meth:`counting`)."""
        rows = conn.execute(select(*_ROW).where(successor_approvals.c.target == target))
        return self.counting(conn, board, (_checked(r.document, target, r.signer) for r in rows), now)

    def authorise(
        self,
        conn: Connection,
        peer: VerifiedEvidence,
        key_id: str,
        now: float,
        releaser: VerifiedEvidence,
        *,
        retired: bool = False,
    ) -> dict[str, Any]:
        """In the key release's write transaction: the board's authorisation of ``peer`` (its
        platform and identity claims) for the master key ``key_id``, released by ``releaser``
        (this CAS's own evidence), for the ledger; an :class:`AppraisalError` without it, a
        :class:`StorageError` for an altered board. An approval that names a version to retire
        counts only when ``releaser`` is exactly that version (all its identity claims) and the
        approvals naming it meet the board's rule. ``retire`` in the result: they do (docs/cas.md
        "Retiring the old version"; :meth:`retire` does it). ``retired``: ``releaser``'s version
        was retired already (:meth:`check_retired`): only the approvals naming it count, they
        must meet the rule by themselves (the hand-over that retired it, asked for again when its
        answer was lost), and nothing is retired again (``retire`` false, ``retired_before``)."""
        board = self.load(conn)
        if board is None:
            raise AppraisalError("this CAS has no successor board: it hands its key over to no other version")
        names = IDENTITY_CLAIMS.get(peer.platform, ())
        missing = [n for n in names if n not in peer.claims]
        if not names or missing:
            lacking = ", ".join(missing) or "-"
            raise AppraisalError(f"the joiner's evidence lacks the identity claims {lacking}")
        claims = {n: claim_text(peer.claims[n]) for n in names}
        target = target_of(key_id, peer.platform.value, claims, board.generation)
        mine = self.identity(releaser)
        releasing = None if mine is None else mine[0]
        valid = self._counted(conn, board, target, now)
        # ADR 0004, amendment: an approval naming a version to retire counts, for the hand-over
        # too, only in a release that retires that version: by it, with those naming it meeting
        # the board's rule. Otherwise a plain approval (of a member below the quorum) would make
        # it count for a hand-over without the retirement its signer tied it to.
        naming = [a for a in valid if a.retire is not None and a.retire_identity == releasing]
        retires = board.satisfied_by({a.signer for a in naming})
        if retired:
            # A retired version releases to no one but a successor its retiring approvals name:
            # they authorise this very hand-over (its answer may have been lost after the
            # transaction that retired it), and no plain approval stands in for one of them.
            if not retires:
                shown = "" if mine is None else f" ({_claims_shown(mine[1])})"
                raise AppraisalError(
                    f"this CAS's version{shown} was retired: it hands the key over only to a successor whose "
                    f"approvals retiring it meet the board's rule (target {target[:16]}…: "
                    f"{len({a.signer for a in naming})} such approval(s), the board needs {board.needed})"
                )
            counted = naming
        else:
            counted = [a for a in valid if a.retire is None] + (naming if retires else [])
        approvers = {a.signer for a in counted}
        if not board.satisfied_by(approvers):
            raise AppraisalError(
                f"no successor authorisation for these claims (target {target[:16]}…): "
                f"{len(approvers)} valid approval(s), the successor board needs {board.needed}"
            )
        retirers = {a.signer for a in counted if a.retire is not None}
        return {
            "authorisation": target, "approvers": sorted(approvers), "board_sha256": board.sha256,
            "generation": board.generation, "claims": claims, "approvals": sorted(a.digest for a in counted),
            "retire": retires and not retired, "retire_approvers": sorted(retirers),
            "retire_identity": releasing if retirers else None,
            **({"retired_before": True} if retired else {}),
        }  # fmt: skip

    # --- retirement (docs/cas.md "Retiring the old version") ----------------------------------

    @staticmethod
    def identity(evidence: VerifiedEvidence) -> tuple[str, dict[str, str]] | None:
        """The identity digest (:func:`identity_digest`) and claims of ``evidence``; ``None`` on
        a platform without identity claims, or evidence that lacks one."""
        names = IDENTITY_CLAIMS.get(evidence.platform, ())
        if not names or any(n not in evidence.claims for n in names):
            return None
        claims = {n: claim_text(evidence.claims[n]) for n in names}
        return identity_digest(evidence.platform.value, claims), claims

    @staticmethod
    def code(evidence: VerifiedEvidence) -> tuple[str, dict[str, str]] | None:
        """The code identity (:func:`code_identity`) of ``evidence`` and its identity claims;
        ``None`` as for :meth:`identity`."""
        mine = Successors.identity(evidence)
        return None if mine is None else (code_identity(evidence.platform.value, mine[1]), mine[1])

    def _retired(self, conn: Connection, *, ledger: bool = True) -> set[str]:
        """The code identities of the retired versions, authenticated: the board's MAC covers
        the set of retired identity digests, and each row's platform and claims must hash to its
        digest (a StorageError otherwise), so the code identity derived from them is as
        authentic. Rows without a board are a StorageError: a retirement is only ever written
        with one, so the operator deleted the board (to un-retire a version). ``ledger``: the
        board is judged against the ledger's board entries too (:meth:`load`)."""
        board = self.load(conn) if ledger else load_board(conn, self.cas.sealer)
        rows = conn.execute(select(successor_retired)).all()
        if board is None and rows:
            raise StorageError(
                "retired versions are stored but the successor board is gone: the database was altered"
            )
        codes: set[str] = set()
        for row in rows:
            shown = _retired_row(row)
            if shown is None:
                raise StorageError(
                    "a retired version's claims do not match its identity: the database was altered"
                )
            try:
                codes.add(code_identity(shown["platform"], shown["claims"]))
            except (ValueError, ConfideError):
                raise StorageError(
                    "a retired version's claims are not a version's: the database was altered"
                ) from None
        return codes

    def check_retired(
        self, conn: Connection, own: VerifiedEvidence, peer: VerifiedEvidence, *, successor: bool = False
    ) -> bool:
        """In every key release's write transaction: an :class:`AppraisalError` when the joiner's
        version was retired, or this CAS's own version and the joiner is no other version
        (``successor`` false). True when this CAS's own version was retired and the joiner is
        another version: :meth:`authorise` then counts only the approvals that retire this
        version (docs/cas.md "What "retired" means": the hand-over that retired it, asked for
        again after its answer was lost)."""
        retired = self._retired(conn)
        if not retired:
            return False
        mine, theirs = self.code(own), self.code(peer)
        own_retired = mine is not None and mine[0] in retired
        if own_retired and not successor:
            assert mine is not None
            raise AppraisalError(
                f"this CAS's version ({_claims_shown(mine[1])}) was retired (by a hand-over to its "
                'successor, or by the board on its own: cas successor show lists it under "retired"): it '
                "releases the key to no one but a successor whose approvals retiring it meet the board's rule"
            )
        if theirs is not None and theirs[0] in retired:
            raise AppraisalError(
                f"the joining CAS's version ({_claims_shown(theirs[1])}) was retired: no CAS of this "
                "database releases the master key to it"
            )
        return own_retired

    def refuse_retired_start(
        self, own: Callable[[datetime], VerifiedEvidence], *, ledger: bool = True
    ) -> None:
        """At startup (``cas serve``): an :class:`AppraisalError` when this CAS's version
        (``own``: its own evidence, verified at a given time) was retired on this database. Its
        evidence is verified only when some version was retired. ``cas serve`` asks twice:
        before anything is written, on the rows alone (``ledger`` false: the head index, whose
        snapshot is under the master key, is read only once the start has checked that the key
        is the database's), and after its index is loaded, against the ledger's board entries
        too (:meth:`load`)."""
        with self.cas.db.read() as conn:
            retired = self._retired(conn, ledger=ledger)
        if not retired:
            return
        mine = self.code(own(datetime.fromtimestamp(self.clock(), UTC)))
        if mine is not None and mine[0] in retired:
            raise AppraisalError(
                f"this CAS's version ({_claims_shown(mine[1])}) was retired on this database (docs/cas.md "
                '"Retiring the old version"): it does not start; start its successor instead'
            )

    def retire(
        self, conn: Connection, releaser: VerifiedEvidence, authorisation: dict[str, Any], now: float
    ) -> dict[str, Any]:
        """In the key release's write transaction, after the release was recorded, when
        :meth:`authorise` said ``retire``: retire the releasing CAS's version (its own evidence's
        identity), authenticate the board with it, and record it."""
        mine = self.identity(releaser)
        if mine is None:
            raise AppraisalError("this CAS's own evidence has no identity claims: it cannot be retired")
        digest, claims = mine
        self.store_retired(
            conn, releaser.platform.value, claims, authorisation["authorisation"], now, retired_by="hand-over"
        )
        event = {
            "identity": digest, "platform": releaser.platform.value, "claims": claims,
            "successor": authorisation["authorisation"], "successor_claims": authorisation["claims"],
            "approvers": authorisation["retire_approvers"], "board_sha256": authorisation["board_sha256"],
            "generation": authorisation["generation"],
        }  # fmt: skip
        self.cas.events.record(conn, EVENT_RETIRED, None, event)
        return event

    def store_retired(
        self,
        conn: Connection,
        platform: str,
        claims: Mapping[str, str],
        by: str,
        now: float,
        *,
        retired_by: str,
    ) -> str:
        """In a retirement's write transaction, after :func:`load_board` authenticated the board:
        store the version (``claims``: all its identity claims after a hand-over, its code claims
        for a retirement on its own) with ``by`` (the successor's target, or the retirement id),
        and authenticate the board over the new set of retired versions; returns its identity
        digest."""
        digest = identity_digest(platform, claims)
        conn.execute(
            insert(successor_retired).values(
                identity=digest, platform=platform, claims=jcs(dict(claims)).decode(), successor=by,
                created_at=now, retired_by=retired_by,
            )
        )  # fmt: skip
        bind_state(conn, self.cas.sealer)
        return digest

    @staticmethod
    def retired_shown(conn: Connection) -> list[dict[str, Any]]:
        """The retired versions as ``show`` lists them (:func:`_retired_row`), oldest first."""
        return [
            shown
            for r in conn.execute(select(successor_retired).order_by(successor_retired.c.created_at))
            if (shown := _retired_row(r)) is not None
        ]

    def show(self) -> dict[str, Any]:
        """The board, this CAS's master key id and the approvals (for ``cas successor show``
        and for approvers, who sign the key id)."""
        now = self.clock()
        with self.cas.db.read() as conn:
            board = self._board(conn)
            key_id = current_key_id(conn)
            retired = self.retired_shown(conn)
            rows = conn.execute(select(*_ROW)).all()
            checked = [(r, _checked(r.document, r.target, r.signer)) for r in rows]
            approvals = [a for _r, a in checked if a and a.expires > now]
            void = [
                {"target": str(r.target), "signer": str(r.signer), "reason": reason}
                for r, a in checked
                if a is None and (reason := _void(r.document, r.signer)) is not None
            ]
            withdrawn = self._withdrawn(conn, {a.digest for a in approvals})
            targets: dict[str, dict[str, Any]] = {}
            for approval in approvals:
                entry = targets.setdefault(
                    approval.target,
                    {"target": approval.target, "platform": approval.platform.value,
                     "claims": approval.claims, "master_key_id": approval.master_key_id, "approvers": [],
                     "withdrawn": []},
                )  # fmt: skip
                if (
                    approval.signer not in board.members
                    or approval.generation != board.generation
                    or approval.master_key_id != key_id  # void after a rotation: counts for nothing
                ):
                    continue
                shown = {"signer": approval.signer, "expires": approval.expires, "approval": approval.digest,
                         "retire": approval.retire, "retire_identity": approval.retire_identity}  # fmt: skip
                if approval.digest in withdrawn:
                    entry["withdrawn"].append({**shown, "withdrawn_at": withdrawn[approval.digest]})
                else:
                    entry["approvers"].append(shown)
        for entry in targets.values():
            plain = {a["signer"] for a in entry["approvers"] if a["retire"] is None}
            named: dict[str, set[str]] = {}
            for a in entry["approvers"]:
                if a["retire_identity"] is not None:
                    named.setdefault(a["retire_identity"], set()).add(a["signer"])
            # authorised for a release by some version: the plain approvals, or those naming it
            # (with the plain ones) when they meet the rule themselves (ADR 0004, amendment)
            entry["retire"] = sorted(i for i, s in named.items() if board.satisfied_by(s))
            entry["authorised"] = board.satisfied_by(plain) or bool(entry["retire"])
        return {
            "board": board.to_json(), "board_sha256": board.sha256, "generation": board.generation,
            "needed": board.needed, "master_key_id": key_id,
            "approvals": sorted((e for e in targets.values() if e["approvers"] or e["withdrawn"]),
                                key=lambda e: e["target"]),
            "retired": retired, "void": void,
        }  # fmt: skip


def _checked(document: str, target: str, signer: str) -> Approval | None:
    return stored_document(document, parse_approval, attrgetter("target", "signer"), target, signer)


def _authorised(board: Board, counted: list[Approval]) -> bool:
    """Whether the approvals ``counted`` (of one target) authorise a release by some version:
    those naming no version to retire, or those naming one version when they meet the board's
    rule themselves (they count only in a release by it that retires it; ADR 0004, amendment)."""
    plain = {a.signer for a in counted if a.retire_identity is None}
    return board.satisfied_by(plain) or bool(_retirements(board, counted))


def _retirements(board: Board, counted: list[Approval]) -> list[str]:
    """The identity digests of the versions whose retirement the approvals ``counted`` (of one
    target) authorise: those naming it meet the board's rule."""
    named: dict[str, set[str]] = {}
    for a in counted:
        if a.retire_identity is not None:
            named.setdefault(a.retire_identity, set()).add(a.signer)
    return sorted(i for i, s in named.items() if board.satisfied_by(s))


def _void(document: str, signer: str) -> str | None:
    """Why a stored approval that no longer parses counts for nothing, when it is a schema-9
    ``"retire": true`` one signed by the row's signer (``None`` otherwise: not an approval this
    CAS ever stored)."""
    try:
        doc = json.loads(document)
        if not isinstance(doc, dict) or doc.get("retire") is not True:
            return None
        _body, identity = verify_signed(doc, APPROVAL_TYPE)
    except (ValueError, RecursionError, ConfideError):
        return None
    if identity.fingerprint != signer:
        return None
    return "retire: true names no version (before schema 10): it counts for nothing; sign again"


def _claims_shown(claims: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v[:16]}…" if len(v) > 16 else f"{k}={v}" for k, v in claims.items())


def _retired_row(row: Any) -> dict[str, Any] | None:
    """A ``successor_retired`` row as ``show`` lists it, when its platform and claims hash to its
    identity (the set of identities is authenticated by the board's MAC; the text beside each is
    checked here); ``None`` otherwise."""
    try:
        claims = json.loads(row.claims)
        if not isinstance(claims, dict) or identity_digest(str(row.platform), claims) != row.identity:
            return None
    except (ValueError, TypeError, RecursionError, ConfideError):
        return None
    # "retired_by" is shown, not authenticated (NULL: a hand-over's, stored before schema 11)
    by = "board" if row.retired_by == "board" else "hand-over"
    named = {"retirement": str(row.successor)} if by == "board" else {"successor": str(row.successor)}
    return {"identity": str(row.identity), "platform": str(row.platform), "claims": claims, **named,
            "retired_at": read_stored_time(row.created_at), "retired_by": by}  # fmt: skip
