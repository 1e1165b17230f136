"""Changing the successor board with the quorum of the current board (docs/cas.md "Changing the
successor board").

1. **The change** names the new board (a ``require-all`` or ``require-at-least-N`` rule, read as
   ``cas serve --successor-board`` reads it: :func:`~confide.cas.successor_board.board_from_json`),
   the *generation* of the board it replaces (0 for the board set at initialisation, one more
   at every change) and the CAS's master key id. Its *change id* is SHA-256 of RFC 8785 JSON of
   ``{"board", "generation", "master_key_id"}``, the board in its normalised form (fingerprints,
   sorted): two members who spell the same board differently approve the same change.
2. **Approvals** (``confide/successor-board-change/v1``, signed as the successor approvals:
   Ed25519 over RFC 8785 JSON without ``signature``): ``{"type", "master_key_id", "generation",
   "board", "expires", "signer"}``, each member separately. One is stored (its newest per
   member and change) only when its signer is a member of the *current* board, its generation
   is the current board's (an approval of a change to an earlier board, replayed, is stale: a
   :class:`~confide.errors.ConflictError`), its key id the CAS's, its expiry ahead and at most
   :data:`~confide.cas.successor.MAX_LIFETIME` away, and the new board not the current one.
   Each is recorded (``successor-board-change-approved``); every refusal after the signature
   verified too (``successor-board-change-refused``).
3. **The change is applied** in the write transaction of the approval that makes the approvals of
   one change that count (each verified again: signature, a current member, not expired, not
   withdrawn, the current generation and key id) meet the current board's rule: the new board is
   stored as generation + 1 (a ``confide/successor-board/v2`` record, which code from before
   schema 9 refuses), authenticated under the master key like the old one
   (:func:`~confide.cas.successor_board.replace_board`); every pending board-change approval,
   every successor approval and every pending retirement approval (:mod:`confide.cas.retirement`)
   is deleted, and ``successor-board-changed`` is recorded (the change,
   both boards' SHA-256, the approvers, the digests of the approvals counted, how many pending
   approvals were voided). Successor approvals name the generation they were signed under
   (:func:`~confide.cas.successor.target_of`), so none signed under the old board counts after
   the change, even when the operator writes it back: a member signs under one board's rule and
   membership, and carried over to another rule (fewer members needed, others on it) the same
   signature would say more than the member said.
4. **Withdrawals** of a board-change approval are the successor withdrawals
   (``confide/successor-withdrawal/v1`` naming the approval's digest; :meth:`Successors.withdraw`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, select

from confide.cas.core import verify_signed
from confide.cas.db import successor_approvals, successor_board_approvals, successor_retirement_approvals
from confide.cas.documents import BOARD_CHANGE_TYPE as CHANGE_TYPE
from confide.cas.successor_board import (
    Board,
    board_from_json,
    current_key_id,
    read_generation,
    read_key_id,
    read_unix_time,
    replace_board,
    store_newest,
    stored_document,
)
from confide.errors import ParseError, UsageError
from confide.policy.canonical import jcs

if TYPE_CHECKING:
    from confide.cas.successor import Successors

__all__ = [
    "CHANGE_TYPE",
    "BoardChanges",
    "ChangeApproval",
    "change_id",
    "parse_change_approval",
]

EVENT_CHANGE_APPROVED = "successor-board-change-approved"
EVENT_CHANGE_REFUSED = "successor-board-change-refused"
EVENT_BOARD_CHANGED = "successor-board-changed"
_FIELDS = frozenset({"type", "master_key_id", "generation", "board", "expires", "signer", "signature"})
_ROW = (
    successor_board_approvals.c.change,
    successor_board_approvals.c.signer,
    successor_board_approvals.c.document,
)


def change_id(master_key_id: str, generation: int, board: Board) -> str:
    """What a board-change approval approves, as one SHA-256 (hex) (module docstring, 1)."""
    return hashlib.sha256(
        jcs({"board": board.to_json(), "generation": generation, "master_key_id": master_key_id})
    ).hexdigest()


@dataclass(frozen=True)
class ChangeApproval:
    """A parsed, signature-checked approval of a board change."""

    signer: str
    master_key_id: str
    generation: int  # the generation of the board it replaces
    board: Board  # the new board
    expires: int
    digest: str  # SHA-256 of the document's RFC 8785 JSON, signature included: what a withdrawal names

    @property
    def change(self) -> str:
        return change_id(self.master_key_id, self.generation, self.board)


def parse_change_approval(doc: Any) -> ChangeApproval:
    """A board-change approval, read strictly, its signature verified (hostile input)."""
    what = CHANGE_TYPE
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise ParseError(
            "expected exactly type, master_key_id, generation, board, expires, signer, signature",
            structure=what,
        )
    body, signer = verify_signed(doc, CHANGE_TYPE)
    key_id = read_key_id(body["master_key_id"], what)
    generation = read_generation(body["generation"], what)
    expires = read_unix_time(body["expires"], "expires", what)
    board = board_from_json(body["board"], f"{what} board")
    digest = hashlib.sha256(jcs(doc)).hexdigest()
    return ChangeApproval(signer.fingerprint, key_id, generation, board, expires, digest)


def _checked(document: str, change: str, signer: str) -> ChangeApproval | None:
    return stored_document(document, parse_change_approval, attrgetter("change", "signer"), change, signer)


class BoardChanges:
    """Board changes of the CAS that ``successors`` serves (module docstring)."""

    def __init__(self, successors: Successors) -> None:
        self.successors = successors

    def approve(self, doc: Any) -> dict[str, Any]:
        """Store a current member's approval of a board change and record it; apply the change
        when the current board's rule is met (module docstring, 3). Every refusal after the
        signature verified is recorded and raised."""
        approval = parse_change_approval(doc)
        s = self.successors
        now = s.clock()
        outcome: dict[str, Any] = {
            "signer": approval.signer, "change": approval.change, "master_key_id": approval.master_key_id,
            "generation": approval.generation, "board": approval.board.to_json(),
            "board_sha256": approval.board.sha256, "expires": approval.expires,
        }  # fmt: skip
        applied: dict[str, Any] | None = None
        with s._refusals_recorded(outcome, EVENT_CHANGE_REFUSED), s.cas.db.write() as conn:
            board = s._board(conn)
            s._admit(
                conn, board, approval, now, withdrawn_hint="",
                stale="the successor board this change replaces is not the current one (stale, or replayed)",
            )  # fmt: skip
            if approval.board.to_json() == board.to_json():
                raise UsageError("the proposed board is the current successor board")
            store_newest(
                conn, successor_board_approvals, "change", approval.change, approval.signer, approval.expires,
                jcs(doc).decode(), now,
            )  # fmt: skip
            outcome.update({"approval": jcs(doc).decode(), "digest": approval.digest})
            outcome["current_board_sha256"] = board.sha256
            counted = self.tally(conn, board, approval.change, now, outcome)
            s.cas.events.record(conn, EVENT_CHANGE_APPROVED, None, outcome)
            if outcome["authorised"]:
                applied = self._apply(conn, board, approval, counted, now)
        return {
            "change": approval.change, "digest": approval.digest, "approvers": outcome["approvers"],
            "needed": board.needed, "authorised": outcome["authorised"],
            "generation": board.generation if applied is None else applied["generation"],
            "applied": applied is not None,
        }  # fmt: skip

    def _apply(
        self,
        conn: Connection,
        board: Board,
        approval: ChangeApproval,
        counted: list[ChangeApproval],
        now: float,
    ) -> dict[str, Any]:
        """Module docstring, 3: in the transaction of the approval that met the rule."""
        s = self.successors
        record = replace_board(conn, s.cas.sealer, board, approval.board, approval.change, now)
        pending = conn.execute(select(func.count()).select_from(successor_board_approvals)).scalar_one()
        voided = conn.execute(select(func.count()).select_from(successor_approvals)).scalar_one()
        retiring = conn.execute(select(func.count()).select_from(successor_retirement_approvals)).scalar_one()
        conn.execute(delete(successor_board_approvals))
        conn.execute(delete(successor_approvals))
        conn.execute(delete(successor_retirement_approvals))
        event = {
            "change": approval.change, "generation": record["generation"], "board": record["board"],
            "board_sha256": approval.board.sha256, "previous_board_sha256": board.sha256,
            "previous_generation": board.generation, "master_key_id": approval.master_key_id,
            "approvers": sorted(a.signer for a in counted), "approvals": sorted(a.digest for a in counted),
            "voided_board_change_approvals": int(pending) - len(counted),
            "voided_successor_approvals": int(voided), "voided_retirement_approvals": int(retiring),
        }  # fmt: skip
        s.cas.events.record(conn, EVENT_BOARD_CHANGED, None, event)
        return event

    def counted(self, conn: Connection, board: Board, change: str, now: float) -> list[ChangeApproval]:
        """The stored approvals of ``change`` that count: each verifies, is a current member's,
        for the current generation and key id, not expired, not withdrawn
        (:meth:`~confide.cas.successor.Successors.counting`)."""
        rows = conn.execute(select(*_ROW).where(successor_board_approvals.c.change == change))
        checked = (_checked(r.document, change, r.signer) for r in rows)
        return self.successors.counting(conn, board, checked, now)

    def tally(
        self, conn: Connection, board: Board, change: str, now: float, outcome: dict[str, Any]
    ) -> list[ChangeApproval]:
        """The approvals of ``change`` that count now, noted in ``outcome`` (approvers, whether
        they meet the current board's rule)."""
        counted = self.counted(conn, board, change, now)
        approvers = {a.signer for a in counted}
        outcome.update({"approvers": sorted(approvers), "authorised": board.satisfied_by(approvers)})
        return counted

    def stored(self, conn: Connection, digest: str) -> ChangeApproval | None:
        """The stored board-change approval whose document has ``digest``, checked again
        (``None``: there is none); only a row whose text hashes to ``digest`` is parsed."""
        return self.successors.find_stored(conn.execute(select(*_ROW)), _checked, digest)

    def show(self) -> dict[str, Any]:
        """The current board, its generation and the pending changes that have not expired,
        each with its approvers and withdrawn approvals (for ``cas successor board show``)."""
        s = self.successors
        now = s.clock()
        with s.cas.db.read() as conn:
            board = s._board(conn)
            key_id = current_key_id(conn)
            rows = conn.execute(select(*_ROW)).all()
            approvals = [
                a for a in (_checked(r.document, r.change, r.signer) for r in rows) if a and a.expires > now
            ]
            withdrawn = s._withdrawn(conn, {a.digest for a in approvals})
        changes: dict[str, dict[str, Any]] = {}
        for a in approvals:
            if a.generation != board.generation or a.master_key_id != key_id or a.signer not in board.members:
                continue
            entry = changes.setdefault(
                a.change,
                {"change": a.change, "board": a.board.to_json(), "board_sha256": a.board.sha256,
                 "generation": a.generation, "master_key_id": a.master_key_id, "approvers": [],
                 "withdrawn": []},
            )  # fmt: skip
            shown = {"signer": a.signer, "expires": a.expires, "approval": a.digest}
            if a.digest in withdrawn:
                entry["withdrawn"].append({**shown, "withdrawn_at": withdrawn[a.digest]})
            else:
                entry["approvers"].append(shown)
        return {
            "board": board.to_json(), "board_sha256": board.sha256, "generation": board.generation,
            "needed": board.needed, "master_key_id": key_id,
            "changes": sorted(changes.values(), key=lambda e: e["change"]),
        }  # fmt: skip
