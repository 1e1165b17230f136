"""Retiring a version on its own, with the successor board's quorum (docs/cas.md "Retiring a
version on its own"; ADR 0006).

A hand-over retires the version that releases the key (:mod:`confide.cas.successor`, "Retiring
the old version"). This module retires a version without one: an old version that still holds
the key, or could be relaunched, found vulnerable or broken.

1. **The retirement** names a version by its *code identity claims*
   (:data:`~confide.cas.successor.CODE_CLAIMS`: SGX ``mr_enclave``; TDX ``mr_td``, ``rtmr1``,
   ``rtmr2``; SEV-SNP and sim ``measurement``), what every retirement matches on, with the
   platform, the board's generation and the CAS's master key id. Its *retirement id* is SHA-256
   of RFC 8785 JSON of ``{"code", "generation", "master_key_id", "platform"}``.
2. **Approvals** (``confide/successor-retirement/v1``, signed as the other approvals: Ed25519
   over RFC 8785 JSON without ``signature``): ``{"type", "master_key_id", "generation",
   "platform", "code", "expires", "signer"}``, each member separately. One is stored (its newest
   per member and retirement) after the checks every board approval passes
   (:meth:`~confide.cas.successor.Successors._admit`: not withdrawn, this key id, the current
   generation, expiry ahead and at most 90 days away, a member), and two of its own: the CAS
   taking it does not run that code (a CAS does not retire itself: the version applying a
   retirement must be another one, module docstring 4), the CAS taking it is not retired itself,
   and the code is not retired already.
   Each is recorded (``successor-retirement-approved``); every refusal after the signature
   verified too (``successor-retirement-refused``).
3. **The retirement is applied** in the write transaction of the approval that makes the
   approvals of one retirement that count (each verified again: signature, a current member,
   the current generation and key id, not expired, not withdrawn) meet the board's rule: the
   version's code claims are stored in ``successor_retired`` (identity digest over those claims,
   ``retired_by`` "board"), the board is authenticated again over the set of retired versions
   (:func:`~confide.cas.successor_board.bind_state`), the retirement's approvals are deleted,
   and ``successor-version-retired`` is recorded (the retirement id, the code claims, the
   approvers, the digests of the approvals counted, the board's SHA-256 and generation). From
   then on the code is retired as after a hand-over: no CAS of the database releases the key to
   or from it, and it does not start.
4. **Not itself.** The CAS that takes an approval must have evidence of its own, its code must
   not be the one named, and its own version must not be retired: a CAS that retired its own
   version would release to no one at once and not start again, and if it was the only version
   holding the key, no version could get it afterwards (the hand-over needs a releasing CAS); a
   retired CAS that is still running is in that state already. So when a retirement is applied,
   the CAS applying it holds the key and can still release it. A board that wants the last key
   holder retired hands over first, with ``retire``.
5. **Withdrawals** are the successor withdrawals (:meth:`Successors.withdraw`, naming the
   approval's digest). A board change deletes every pending retirement approval (they name the
   old generation and would not count anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select

from confide.cas.core import verify_signed
from confide.cas.db import successor_retirement_approvals
from confide.cas.documents import RETIREMENT_TYPE
from confide.cas.successor_board import (
    Board,
    current_key_id,
    read_generation,
    read_key_id,
    read_platform,
    read_unix_time,
    store_newest,
    stored_document,
)
from confide.cas.versions import CODE_CLAIMS, EVENT_RETIRED, check_claims, code_identity
from confide.errors import AppraisalError, ConflictError, ParseError, UsageError
from confide.policy.canonical import jcs
from confide.verify.result import Platform

if TYPE_CHECKING:
    from confide.cas.successor import Successors

__all__ = [
    "RETIREMENT_TYPE",
    "RetirementApproval",
    "Retirements",
    "parse_retirement_approval",
    "retirement_id",
]

EVENT_RETIREMENT_APPROVED = "successor-retirement-approved"
EVENT_RETIREMENT_REFUSED = "successor-retirement-refused"
_FIELDS = frozenset(
    {"type", "master_key_id", "generation", "platform", "code", "expires", "signer", "signature"}
)
_ROW = (
    successor_retirement_approvals.c.retirement,
    successor_retirement_approvals.c.signer,
    successor_retirement_approvals.c.document,
)


def retirement_id(master_key_id: str, generation: int, platform: str, code: Mapping[str, str]) -> str:
    """What a retirement approval approves, as one SHA-256 (hex) (module docstring, 1)."""
    named = {"code": dict(code), "generation": generation, "master_key_id": master_key_id,
             "platform": platform}  # fmt: skip
    return hashlib.sha256(jcs(named)).hexdigest()


@dataclass(frozen=True)
class RetirementApproval:
    """A parsed, signature-checked approval of retiring a version."""

    signer: str
    master_key_id: str
    generation: int  # the board's generation it was signed under
    platform: Platform
    code: dict[str, str]  # the version's code identity claims (CODE_CLAIMS), text form
    expires: int
    digest: str  # SHA-256 of the document's RFC 8785 JSON, signature included: what a withdrawal names

    @property
    def retirement(self) -> str:
        return retirement_id(self.master_key_id, self.generation, self.platform.value, self.code)

    @property
    def code_identity(self) -> str:
        return code_identity(self.platform.value, self.code)


def parse_retirement_approval(doc: Any) -> RetirementApproval:
    """A retirement approval, read strictly, its signature verified (hostile input)."""
    what = RETIREMENT_TYPE
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise ParseError(
            "expected exactly type, master_key_id, generation, platform, code, expires, signer, signature",
            structure=what,
        )
    body, signer = verify_signed(doc, RETIREMENT_TYPE)
    key_id = read_key_id(body["master_key_id"], what)
    generation = read_generation(body["generation"], what)
    platform = read_platform(body["platform"], CODE_CLAIMS, what)
    check_claims(body["code"], CODE_CLAIMS[platform], platform, "code", what)
    expires = read_unix_time(body["expires"], "expires", what)
    digest = hashlib.sha256(jcs(doc)).hexdigest()
    return RetirementApproval(
        signer.fingerprint, key_id, generation, platform, dict(body["code"]), expires, digest
    )


def _checked(document: str, retirement: str, signer: str) -> RetirementApproval | None:
    key = attrgetter("retirement", "signer")
    return stored_document(document, parse_retirement_approval, key, retirement, signer)


class Retirements:
    """Retirements on their own of the CAS that ``successors`` serves (module docstring)."""

    def __init__(self, successors: Successors) -> None:
        self.successors = successors

    def approve(self, doc: Any) -> dict[str, Any]:
        """Store a member's approval of a retirement and record it; apply the retirement when the
        board's rule is met (module docstring, 3). Every refusal after the signature verified is
        recorded and raised."""
        approval = parse_retirement_approval(doc)
        s = self.successors
        now = s.clock()
        outcome: dict[str, Any] = {
            "signer": approval.signer, "retirement": approval.retirement,
            "master_key_id": approval.master_key_id, "generation": approval.generation,
            "platform": approval.platform.value, "code": approval.code, "expires": approval.expires,
        }  # fmt: skip
        applied: dict[str, Any] | None = None
        with s._refusals_recorded(outcome, EVENT_RETIREMENT_REFUSED):
            mine = self._not_itself(approval, now)
            with s.cas.db.write() as conn:
                board = s._board(conn)
                s._admit(
                    conn, board, approval, now, withdrawn_hint=" (sign a new one, e.g. with another expiry)",
                    stale='the successor board changed since (docs/cas.md "Changing the successor board"); '
                    "sign again under the current one",
                )  # fmt: skip
                retired = s._retired(conn)
                if mine in retired:
                    raise AppraisalError(
                        "this CAS's own version was retired: it takes no retirement (it could not hand the "
                        "key on after it); submit it to a CAS of a version that is not retired"
                    )
                if approval.code_identity in retired:
                    raise ConflictError("that version is retired already")
                store_newest(
                    conn, successor_retirement_approvals, "retirement", approval.retirement, approval.signer,
                    approval.expires, jcs(doc).decode(), now,
                )  # fmt: skip
                outcome.update({"approval": jcs(doc).decode(), "digest": approval.digest})
                outcome["board_sha256"] = board.sha256
                counted = self.tally(conn, board, approval.retirement, now, outcome)
                s.cas.events.record(conn, EVENT_RETIREMENT_APPROVED, None, outcome)
                if outcome["authorised"]:
                    applied = self._apply(conn, board, approval, counted, now)
        return {
            "retirement": approval.retirement, "digest": approval.digest, "approvers": outcome["approvers"],
            "needed": board.needed, "authorised": outcome["authorised"], "applied": applied is not None,
            **({"identity": applied["identity"]} if applied is not None else {}),
        }  # fmt: skip

    def _not_itself(self, approval: RetirementApproval, now: float) -> str:
        """Module docstring, 4: this CAS's own code (its current evidence, verified) is not the
        one the approval names; returns it (its code identity)."""
        s = self.successors
        if s.own is None:
            raise UsageError(
                "this CAS has no evidence of its own (started without --tee or --dev): it cannot tell "
                "whether the retirement names its own version; submit it to a CAS that has"
            )
        mine = s.code(s.own(datetime.fromtimestamp(now, UTC)))
        if mine is None:
            raise AppraisalError("this CAS's own evidence has no identity claims: it takes no retirement")
        if mine[0] == approval.code_identity:
            raise UsageError(
                "the retirement names this CAS's own code: a CAS does not retire itself (it would release "
                'the key to no one and not start again; docs/cas.md "Retiring a version on its own"); '
                "submit it to a CAS of another version holding the key, or hand over with retire"
            )
        return mine[0]

    def _apply(
        self,
        conn: Connection,
        board: Board,
        approval: RetirementApproval,
        counted: list[RetirementApproval],
        now: float,
    ) -> dict[str, Any]:
        """Module docstring, 3: in the transaction of the approval that met the rule."""
        s = self.successors
        identity = s.store_retired(
            conn, approval.platform.value, approval.code, approval.retirement, now, retired_by="board"
        )
        conn.execute(
            delete(successor_retirement_approvals).where(
                successor_retirement_approvals.c.retirement == approval.retirement
            )
        )
        event = {
            "identity": identity, "platform": approval.platform.value, "claims": approval.code,
            "retirement": approval.retirement, "retired_by": "board",
            "approvers": sorted(a.signer for a in counted), "approvals": sorted(a.digest for a in counted),
            "board_sha256": board.sha256, "generation": board.generation,
        }  # fmt: skip
        s.cas.events.record(conn, EVENT_RETIRED, None, event)
        return event

    def counted(
        self, conn: Connection, board: Board, retirement: str, now: float
    ) -> list[RetirementApproval]:
        """The stored approvals of ``retirement`` that count: each verifies, is a current
        member's, for the current generation and key id, not expired, not withdrawn
        (:meth:`~confide.cas.successor.Successors.counting`)."""
        rows = conn.execute(select(*_ROW).where(successor_retirement_approvals.c.retirement == retirement))
        checked = (_checked(r.document, retirement, r.signer) for r in rows)
        return self.successors.counting(conn, board, checked, now)

    def tally(
        self, conn: Connection, board: Board, retirement: str, now: float, outcome: dict[str, Any]
    ) -> list[RetirementApproval]:
        """The approvals of ``retirement`` that count now, noted in ``outcome`` (approvers,
        whether they meet the board's rule)."""
        counted = self.counted(conn, board, retirement, now)
        approvers = {a.signer for a in counted}
        outcome.update({"approvers": sorted(approvers), "authorised": board.satisfied_by(approvers)})
        return counted

    def stored(self, conn: Connection, digest: str) -> RetirementApproval | None:
        """The stored retirement approval whose document has ``digest``, checked again (``None``:
        there is none); only a row whose text hashes to ``digest`` is parsed."""
        return self.successors.find_stored(conn.execute(select(*_ROW)), _checked, digest)

    def show(self) -> dict[str, Any]:
        """The board, its generation, the pending retirements that have not expired (each with
        its approvers and withdrawn approvals) and the retired versions (for ``cas successor
        retire show``)."""
        s = self.successors
        now = s.clock()
        with s.cas.db.read() as conn:
            board = s._board(conn)
            key_id = current_key_id(conn)
            rows = conn.execute(select(*_ROW)).all()
            checked = (_checked(r.document, r.retirement, r.signer) for r in rows)
            approvals = [a for a in checked if a and a.expires > now]
            withdrawn = s._withdrawn(conn, {a.digest for a in approvals})
            retired = s.retired_shown(conn)
        pending: dict[str, dict[str, Any]] = {}
        for a in approvals:
            if a.generation != board.generation or a.master_key_id != key_id or a.signer not in board.members:
                continue
            entry = pending.setdefault(
                a.retirement,
                {"retirement": a.retirement, "platform": a.platform.value, "code": a.code,
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
            "retirements": sorted(pending.values(), key=lambda e: e["retirement"]), "retired": retired,
        }  # fmt: skip
