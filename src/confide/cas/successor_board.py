"""The successor board: who may authorise handing the master key over to another version.

Set when the CAS is initialised (``cas serve --successor-board FILE`` on the start that creates
the master key), changed afterwards only with its own quorum (:mod:`confide.cas.board_change`,
docs/cas.md "Changing the successor board"): a ``require-all`` or ``require-at-least-N`` rule
over stakeholder identities,
in the policy boards' format and evaluated by their code (:mod:`confide.policy.access`). Stored
as one row (``successor_board``) whose record is authenticated with HMAC-SHA256 under a key
derived from the master key with HKDF-SHA256 (RFC 5869 §2: no salt, info
``confide-successor-board/v1``; :meth:`confide.cas.secrets.Sealer.derive_key`), so the operator,
who controls the database, can delete it (then no hand-over happens) but cannot write one the
CAS accepts. :func:`load_board` checks it at every use; a mismatch is a
:class:`~confide.errors.StorageError`. A master-key rotation checks it under the old key and
authenticates it under the new one in its transaction (:func:`reauthenticate_board`). The
approvals it counts are :mod:`confide.cas.successor`'s.

The record carries the board's *generation*: 0 when it is set at initialisation (a
:data:`BOARD_RECORD_TYPE` record, without ``generation``), one more at every change
(:func:`replace_board`; a :data:`CHANGED_RECORD_TYPE` record, which code from before schema 9
refuses rather than misreads); approvals name the generation they were signed under, so none
signed under an earlier board counts (docs/cas.md "Changing the successor board").

The MAC also covers the set of withdrawn approvals (docs/cas.md "Withdrawing an approval") and
the set of retired versions (docs/cas.md "Retiring the old version"), once there is one of
each: a withdrawal or a retirement rewrites the MAC in its transaction (:func:`bind_state`), so
the operator cannot delete a withdrawal (to make its approval count again) or a retirement (to
let the retired version have the key again) without the board failing to authenticate (a
StorageError, and no hand-over, no release at all). A *rollback* of those rows to an earlier
genuine state (the row's earlier record and MAC written back, the later withdrawals and
retirements deleted) authenticates; it is caught against the ledger's board entries
(:mod:`confide.cas.board_ledger`), which :func:`load_board` is given for every read that decides
anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Connection, Table, and_, delete, insert, select

from confide.cas.board_ledger import BoardLedger
from confide.cas.db import meta, successor_board, successor_retired, successor_withdrawals
from confide.cas.secrets import Sealer
from confide.errors import ConfideError, ParseError, PolicyError, StorageError, UsageError
from confide.identity import PublicIdentity
from confide.policy.access import RequireAll, RequireAtLeast, is_authorized
from confide.policy.canonical import jcs
from confide.policy.loader import parse_yaml
from confide.verify.result import Platform

__all__ = [
    "BOARD_INFO",
    "EVENT_BOARD",
    "MAX_LIFETIME",
    "Board",
    "bind_state",
    "board_from_json",
    "current_key_id",
    "load_board",
    "parse_board_file",
    "read_generation",
    "read_key_id",
    "read_platform",
    "read_stored_time",
    "read_unix_time",
    "reauthenticate_board",
    "replace_board",
    "retired_identities",
    "store_board",
    "store_newest",
    "stored_document",
]

BOARD_RECORD_TYPE = "confide/successor-board/v1"  # the board set at initialisation (generation 0)
# A board a change stored (generation 1 or more; docs/cas.md "Changing the successor board").
# Another type on purpose: code from before schema 9, which may still run on the migrated
# database, reads a v1 record's board and ignores a generation, so it would apply a changed
# board's rule to approvals signed before the change; it refuses a v2 record instead.
CHANGED_RECORD_TYPE = "confide/successor-board/v2"
BOARD_INFO = b"confide-successor-board/v1"  # the HKDF info of the board's MAC key (RFC 5869 §2.3)
EVENT_BOARD = "successor-board-set"
MAX_LIFETIME = (
    90 * 24 * 3600
)  # an approval (of a successor or a board change) expires at most this long ahead
_KEY_ID_META = "master_key_id"  # confide.cas.rotation.KEY_ID_META (rotation imports this module)
_MAX_MEMBERS = 64
_MAX_BOARD_FILE = 64 * 1024
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")


# --- the fields every signed board document shares (successor, board-change and retirement
# approvals, withdrawals), read strictly: hostile input ---------------------------------------


def read_key_id(value: object, what: str) -> str:
    """``master_key_id``: 32 lower-case hex digits."""
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise ParseError("master_key_id: expected 32 lower-case hex digits", structure=what)
    return value


def read_generation(value: object, what: str) -> int:
    """``generation``: the current board's generation, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ParseError("generation: expected the current board's generation (0 or more)", structure=what)
    return value


def read_unix_time(value: object, name: str, what: str) -> int:
    """``expires`` / ``time``: a Unix time in whole seconds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise ParseError(f"{name}: expected a Unix time in seconds", structure=what)
    return value


def read_platform(value: object, table: Mapping[Platform, object], what: str) -> Platform:
    """``platform``: one of the platforms ``table`` (the claims each one names) knows."""
    try:
        platform = Platform(value) if isinstance(value, str) else None
    except ValueError:
        platform = None
    if platform is None or platform not in table:
        known = ", ".join(p.value for p in table)
        raise ParseError(f"platform: got {str(value)[:40]!r}, expected one of {known}", structure=what)
    return platform


def read_stored_time(value: object) -> int | None:
    """A stored row's ``created_at`` as whole seconds, for display only (not authenticated: the
    operator may have written anything, and SQLite keeps text or a blob in a REAL column);
    ``None`` when it is not a finite number from 0 to 2^53."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and 0 <= value < 2**53):
        return None
    return int(value)


_S = TypeVar("_S")


def stored_document(
    document: str, parse: Callable[[Any], _S], key: Callable[[_S], tuple[str, str]], value: str, signer: str
) -> _S | None:
    """A stored approval row's ``document``, parsed and verified again with ``parse``, when it is
    what the row says (``key`` of it, what it approves and its signer, is ``(value, signer)``);
    ``None`` otherwise (the operator may have written the row)."""
    try:
        parsed = parse(json.loads(document))
    except (ValueError, RecursionError, ConfideError):
        return None
    return parsed if key(parsed) == (value, signer) else None


@dataclass(frozen=True)
class Board:
    """A successor board: a ``require-all`` or ``require-at-least-N`` rule over identity
    fingerprints (:mod:`confide.policy.access`); ``generation``: how many changes made it the
    stored board (0: set at initialisation; not part of :meth:`to_json` or :attr:`sha256`)."""

    rule: RequireAll | RequireAtLeast
    generation: int = field(default=0)

    @property
    def members(self) -> frozenset[str]:
        rules = self.rule.require_all if isinstance(self.rule, RequireAll) else self.rule.rules
        return frozenset(str(r) for r in rules)

    @property
    def needed(self) -> int:
        return len(self.members) if isinstance(self.rule, RequireAll) else self.rule.n

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.rule.model_dump(by_alias=True, mode="json")
        return data

    def satisfied_by(self, signers: set[str]) -> bool:
        return is_authorized((self.rule,), signers, creator=None)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(jcs(self.to_json())).hexdigest()


def _member(value: object) -> str:
    """An identity fingerprint (64 lower-case hex digits) or an Ed25519 public key in base64,
    as ``confide identity create`` makes them, as the fingerprint."""
    if isinstance(value, str) and _FINGERPRINT.fullmatch(value):
        return value
    if isinstance(value, dict) and set(value) == {"signer"}:
        return _member(value["signer"])
    try:
        return PublicIdentity.from_base64(value).fingerprint
    except ParseError:
        raise ParseError(
            f"got {str(value)[:80]!r}, expected an identity fingerprint (64 hex digits) or its "
            "public key (base64)",
            structure="successor board",
        ) from None


def board_from_json(data: object, what: str = "successor board") -> Board:
    """A board from its JSON form (``{"require-all": [...]}`` or ``{"require-at-least-N":
    [...]}``, members as :func:`_member` reads them), read strictly."""
    if not isinstance(data, dict) or len(data) != 1:
        raise ParseError(
            "expected one rule: {require-all: [...]} or {require-at-least-N: [...]}", structure=what
        )
    ((key, members),) = data.items()
    if not isinstance(members, list) or not 1 <= len(members) <= _MAX_MEMBERS:
        raise ParseError(f"expected a list of 1 to {_MAX_MEMBERS} members", structure=what)
    fingerprints = sorted(_member(m) for m in members)
    if len(set(fingerprints)) != len(fingerprints):
        raise ParseError("an identity is listed twice (one signature must not count twice)", structure=what)
    try:
        if key == "require-all":
            return Board(RequireAll.model_validate({"require-all": fingerprints}))
        rule = RequireAtLeast.model_validate({key: fingerprints})
    except ValidationError as exc:
        raise ParseError(str(exc.errors()[0].get("msg", "invalid"))[:200], structure=what) from None
    return Board(rule)


def parse_board_file(path: Path) -> Board:
    """``cas serve --successor-board FILE``: YAML or JSON of one rule, e.g.::

    require-at-least-2:
      - <fingerprint or base64 public key>
      - ...
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_BOARD_FILE + 1)
    except OSError as exc:
        raise UsageError(f"--successor-board: cannot read {path}: {exc.strerror}") from None
    if len(raw) > _MAX_BOARD_FILE:
        raise ParseError(f"larger than {_MAX_BOARD_FILE} bytes", structure=f"successor board {path}")
    try:  # the policy loader's hardened YAML (no aliases, tags, duplicate keys; bounded)
        data, _tree = parse_yaml(raw, source=str(path))
    except PolicyError as exc:
        raise ParseError(exc.message[:300], structure=f"successor board {path}") from None
    return board_from_json(data, f"successor board {path}")


def _mac(key: bytes, key_id: str, record: str, bound: tuple[str | None, str | None]) -> str:
    """HMAC-SHA256 of the board's record under its key; ``bound``: :func:`_bound` (``None``
    parts are left out: the message of a board with no withdrawal and no retirement is the one
    a board had before either existed)."""
    withdrawn, retired = bound
    message = BOARD_INFO + b"\x00" + key_id.encode() + b"\x00" + record.encode()
    if withdrawn is not None:
        message += b"\x00withdrawn\x00" + withdrawn.encode()
    if retired is not None:
        message += b"\x00retired\x00" + retired.encode()
    return hmac.new(key, message, "sha256").hexdigest()


def _digest_of(values: list[str]) -> str | None:
    return hashlib.sha256("\n".join(values).encode()).hexdigest() if values else None


def _stored_sets(conn: Connection) -> tuple[list[str], list[str]]:
    """The withdrawn approvals' digests and the retired identities, each sorted. Each must be 64
    lower-case hex digits (a StorageError otherwise): only then is "one a line" (:func:`_bound`)
    injective. SQLite does not enforce ``String(64)``, and one row holding two digests joined by
    a newline would hash as the two rows did, leaving neither withdrawn nor retired under a MAC
    that still verifies."""
    rows = conn.execute(select(successor_withdrawals.c.approval).order_by(successor_withdrawals.c.approval))
    withdrawn = [str(r.approval) for r in rows]
    retired = sorted(retired_identities(conn))
    if not all(_FINGERPRINT.fullmatch(v) for v in (*withdrawn, *retired)):
        raise StorageError(
            "a stored withdrawal or retirement is not a SHA-256 in hex: the database was altered"
        )
    return withdrawn, retired


def _bound(conn: Connection) -> tuple[str | None, str | None]:
    """SHA-256 of the withdrawn approvals' digests and of the retired identities, each sorted,
    one a line (``None`` for none; :func:`_stored_sets`)."""
    withdrawn, retired = _stored_sets(conn)
    return _digest_of(withdrawn), _digest_of(retired)


def retired_identities(conn: Connection) -> set[str]:
    """The stored retired identities (SHA-256 hex each), *not* authenticated by themselves:
    :func:`load_board` in the same transaction checks that the board's MAC covers them."""
    return {str(r.identity) for r in conn.execute(select(successor_retired.c.identity))}


def current_key_id(conn: Connection) -> str | None:
    """The id of the master key the database names (``None``: none yet)."""
    value = conn.execute(select(meta.c.value).where(meta.c.key == _KEY_ID_META)).scalar()
    return None if value is None else str(value)


def store_newest(
    conn: Connection, table: Table, key: str, value: str, signer: str, expires: int, document: str, now: float
) -> None:
    """Keep ``document`` as ``signer``'s only approval of ``value`` in ``table`` (its ``key``
    column: a successor target, a board change or a retirement): the previous one is replaced."""
    conn.execute(delete(table).where(and_(table.c[key] == value, table.c.signer == signer)))
    conn.execute(
        insert(table).values(
            {key: value, "signer": signer, "document": document,
             "expires_at": float(expires), "created_at": now}
        )
    )  # fmt: skip


def _board_key(sealer: Sealer, key_id: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the master key with id ``key_id``, info :data:`BOARD_INFO`."""
    try:
        return sealer.only(key_id).derive_key(BOARD_INFO)
    except (KeyError, ValueError):
        raise StorageError(
            f"the successor board is authenticated under master key id {key_id[:32]!r}, which this CAS "
            "does not hold: the database was altered"
        ) from None


def store_board(conn: Connection, sealer: Sealer, key_id: str, board: Board, at: float) -> dict[str, Any]:
    """Write the board (the CAS is being initialised: there is none); returns the record."""
    if conn.execute(select(successor_board.c.id)).first() is not None:
        raise UsageError(
            "this database has a successor board already: it is fixed when the CAS is initialised"
        )
    record = {"board": board.to_json(), "set_at": int(at), "type": BOARD_RECORD_TYPE}
    text = jcs(record).decode()
    mac = _mac(_board_key(sealer, key_id), key_id, text, _bound(conn))
    conn.execute(insert(successor_board).values(id=1, record=text, key_id=key_id, mac=mac))
    return record


def load_board(conn: Connection, sealer: Sealer, ledger: BoardLedger | None = None) -> Board | None:
    """The stored board, authenticated (``None``: this CAS has none). A row that does not
    authenticate under the master key it names, or does not parse, is a StorageError.
    ``ledger``: the board as the ledger's entries record it (:mod:`confide.cas.board_ledger`),
    for a read that decides anything: rows older than it (the board row, the withdrawals or the
    retirements written back to an earlier state, or deleted) are
    :class:`~confide.cas.board_ledger.BoardRolledBack`."""
    row = conn.execute(select(successor_board)).first()
    if row is None:
        if ledger is not None:  # refused when the ledger retired a version under a board
            ledger.check(None, None, (), ())
        return None
    altered = (
        "the stored successor board does not authenticate under the master key: the database was altered"
    )
    if row.id != 1 or not isinstance(row.key_id, str) or not _KEY_ID.fullmatch(row.key_id):
        raise StorageError(altered)
    withdrawn, retired = _stored_sets(conn)
    bound = _digest_of(withdrawn), _digest_of(retired)
    expected = _mac(_board_key(sealer, row.key_id), row.key_id, str(row.record), bound)
    if not hmac.compare_digest(expected.encode(), str(row.mac).encode()):
        raise StorageError(altered)
    try:
        record = json.loads(row.record)
        if not isinstance(record, dict):
            raise ValueError
        if record.get("type") == BOARD_RECORD_TYPE and "generation" not in record:
            generation = 0
        elif record.get("type") == CHANGED_RECORD_TYPE:
            generation, change = record["generation"], record["change"]
            if isinstance(generation, bool) or not isinstance(generation, int) or not 0 < generation < 2**53:
                raise ValueError
            if not isinstance(change, str) or not _FINGERPRINT.fullmatch(change):
                raise ValueError
        else:
            raise ValueError
        board = board_from_json(record["board"], "stored successor board")
    except (ValueError, KeyError, ConfideError):
        raise StorageError(altered) from None
    stored = Board(board.rule, generation)
    if ledger is not None:
        ledger.check(generation, stored.sha256, retired, withdrawn)
    return stored


def reauthenticate_board(conn: Connection, old: Sealer, new: Sealer, new_key_id: str) -> bool:
    """In a master-key rotation's transaction: check the board under the old key and
    authenticate it under the new one (``False``: there is none)."""
    if load_board(conn, old) is None:
        return False
    record = str(conn.execute(select(successor_board.c.record)).scalar_one())
    mac = _mac(_board_key(new, new_key_id), new_key_id, record, _bound(conn))
    conn.execute(successor_board.update().values(key_id=new_key_id, mac=mac))
    return True


def bind_state(conn: Connection, sealer: Sealer) -> None:
    """In a withdrawal's or a retirement's transaction, after :func:`load_board` authenticated
    the board and the row was stored: authenticate the board with the new sets of withdrawals
    and retirements."""
    row = conn.execute(select(successor_board.c.record, successor_board.c.key_id)).one()
    mac = _mac(_board_key(sealer, row.key_id), row.key_id, str(row.record), _bound(conn))
    conn.execute(successor_board.update().values(mac=mac))


def replace_board(
    conn: Connection, sealer: Sealer, current: Board, new: Board, change: str, at: float
) -> dict[str, Any]:
    """In a board change's transaction, after :func:`load_board` authenticated ``current`` and
    its quorum approved ``change``: store ``new`` as generation ``current.generation + 1``,
    authenticated under the same master key as the old record; returns the new record."""
    key_id = str(conn.execute(select(successor_board.c.key_id)).scalar_one())
    record = {
        "board": new.to_json(), "change": change, "generation": current.generation + 1,
        "set_at": int(at), "type": CHANGED_RECORD_TYPE,
    }  # fmt: skip
    text = jcs(record).decode()
    mac = _mac(_board_key(sealer, key_id), key_id, text, _bound(conn))
    conn.execute(successor_board.update().values(record=text, mac=mac))
    return record
