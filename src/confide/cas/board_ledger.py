"""The successor board's state as the ledger's entries record it (docs/cas.md "What the successor
board rests on"): the rows checked against it whenever the board is read.

The board row's MAC covers the board's generation, the set of withdrawals and the set of retired
versions (:mod:`confide.cas.successor_board`), so an edited or deleted row is detected; but the
operator, who writes the database, can write back the row's earlier ``record`` and ``mac`` and
delete the withdrawals and retirements added since: a genuine earlier state. The ledger keeps
the later entries (their leaf hashes are in the tiles, under every checkpoint signed since), so
the board is judged against them too:

- every ``successor.board-set`` (generation 0) and ``successor.board-changed`` entry (its
  ``generation`` and ``board_sha256``), every ``successor.version-retired`` entry (its
  ``identity``) and every ``successor.withdrawn`` entry (its ``approval``) is a :class:`Mark`,
  with its ledger index. :class:`~confide.cas.head_index.HeadIndex` finds them in the same scan
  as the policies' head entries (each entry's bytes checked against its leaf hash) and keeps
  them, as :class:`BoardMarks`, in the same MAC'd snapshot (``policy_head_anchor.board``,
  schema 18), so a process starts from it and scans only the entries appended since.
- a read of the board (:func:`confide.cas.successor_board.load_board`, for every hand-over,
  approval, board change, retirement, withdrawal, retirement check at start and release, and
  ``show``) is judged against the marks below the ledger size its transaction sees
  (:class:`BoardLedger`): the board row missing while the ledger records a retirement (missing
  while it records none is what it was: no hand-over, nothing un-retired), a generation
  older than the latest the ledger records (or the same one with another board), a retired
  version or a withdrawal the ledger records missing from the rows: :class:`BoardRolledBack`,
  logged (``successor-board-rolled-back``) and counted. Nothing is accepted on the ledger's
  word: the check only refuses. So the rows may be *newer* than the marks (a change, retirement
  or withdrawal writes its row and its entry in one transaction; an index that has not scanned
  that entry yet, or a reader whose transaction began before it, lacks it): never refused. And a
  well-formed entry appended by whoever writes the database can only make the CAS refuse (as
  deleting the board does), never count an approval or un-retire a version.

What remains (docs/limitations.md): a whole-database rollback (entries, tiles, snapshot and rows
together) is what ``--witness-quorum`` detects."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import NamedTuple

from confide.errors import ParseError, StorageError
from confide.ledger.encoding import Entry, EntryType

__all__ = [
    "BOARD_SUFFIXES",
    "BoardLedger",
    "BoardMarks",
    "BoardRolledBack",
    "Mark",
    "board_mark",
]

_LOG = logging.getLogger("confide.cas")
_SET, _CHANGED, _RETIRED, _WITHDRAWN = (
    EntryType.SUCCESSOR_BOARD_SET, EntryType.SUCCESSOR_BOARD_CHANGED,
    EntryType.SUCCESSOR_VERSION_RETIRED, EntryType.SUCCESSOR_WITHDRAWN,
)  # fmt: skip
_TYPES = (_SET, _CHANGED, _RETIRED, _WITHDRAWN)
# Canonical JSON sorts an entry's members, ``type`` and ``v`` last (confide.ledger.encoding): a
# board entry is recognised by its last bytes (confide.cas.head_index.scan)
BOARD_SUFFIXES = tuple(f',"type":"{t.value}","v":{v}}}'.encode() for t in _TYPES for v in (1, 2))
_HEX = frozenset("0123456789abcdef")


class Mark(NamedTuple):
    """A board entry: its ledger index (``at``), its type (``board``, ``retired`` or
    ``withdrawn``), what it names (the board's SHA-256, the retired identity digest, the
    withdrawn approval's digest) and, for a board, its generation (0 otherwise)."""

    at: int
    kind: str
    value: str
    generation: int


def _digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def board_mark(index: int, data: bytes) -> Mark | None:
    """The :class:`Mark` of the ledger entry ``data`` at ``index`` (``None``: not a board entry,
    or malformed: logged; a genuine entry never is)."""
    try:
        entry = Entry.from_bytes(data)
    except ParseError:
        entry = None
    if entry is None or entry.type not in _TYPES:
        return _ignored(index, "is not a well-formed successor board entry")
    payload = entry.payload
    if entry.type in (_SET, _CHANGED):
        generation = 0 if entry.type is _SET else payload.get("generation")
        sha = payload.get("board_sha256")
        if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation < 2**53:
            return _ignored(index, "names no board generation")
        if not _digest(sha):
            return _ignored(index, "names no board SHA-256")
        return Mark(index, "board", str(sha), generation)
    retired = entry.type is _RETIRED
    kind, value = ("retired", payload.get("identity")) if retired else ("withdrawn", payload.get("approval"))
    if not _digest(value):
        return _ignored(index, f"names no {kind} digest")
    return Mark(index, kind, str(value), 0)


def _ignored(index: int, why: str) -> Mark | None:
    """Log a malformed board entry (ignored: a genuine entry never is); ``None``."""
    _LOG.warning(json.dumps({"event": "successor-board-entry-ignored", "index": index, "why": why}))
    return None


class BoardRolledBack(StorageError):
    """The successor board's rows are older than the ledger's entries say (module docstring)."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"the successor board's rows are older than the ledger: {why}; the database was altered "
            "(rolled back), and the CAS takes no decision on the board until the rows are restored"
        )


class BoardMarks:
    """The board entries of the ledger entries scanned so far, in ledger order; immutable (a
    scan makes a new one), so a view keeps the one it was given."""

    __slots__ = ("marks",)

    def __init__(self, marks: tuple[Mark, ...] = ()) -> None:
        self.marks = marks

    def extended(self, found: Iterable[Mark]) -> BoardMarks:
        more = tuple(found)
        return BoardMarks(self.marks + more) if more else self

    def encode(self) -> str:
        """The snapshot's text: canonical JSON, a list of ``[at, kind, value, generation]``."""
        return json.dumps([list(m) for m in self.marks], separators=(",", ":"))

    @staticmethod
    def decode(text: str, malformed: Callable[[], StorageError]) -> BoardMarks:
        try:
            value = json.loads(text)
        except ValueError:
            raise malformed() from None
        if not isinstance(value, list):
            raise malformed()
        marks = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 4 and type(item[0]) is int
                    and item[1] in ("board", "retired", "withdrawn") and _digest(item[2])
                    and type(item[3]) is int):  # fmt: skip
                raise malformed()
            marks.append(Mark(item[0], item[1], item[2], item[3]))
        return BoardMarks(tuple(marks))

    def as_of(self, size: int, refused: Callable[[], None]) -> BoardLedger:
        """The marks below ledger size ``size`` (what a transaction that sees ``size`` entries
        can have rows for); ``refused``: called on every refusal (the index's metric)."""
        board: Mark | None = None
        retired: dict[str, int] = {}
        withdrawn: dict[str, int] = {}
        for mark in self.marks:
            if mark.at >= size:
                break
            if mark.kind == "board":
                if board is None or mark.generation >= board.generation:
                    board = mark
            else:
                (retired if mark.kind == "retired" else withdrawn).setdefault(mark.value, mark.at)
        return BoardLedger(board, retired, withdrawn, refused)


class BoardLedger:
    """The board as the ledger's entries below one transaction's ledger size record it: the
    latest board entry, and the retired identities and withdrawn approvals (each with the index
    of its entry)."""

    __slots__ = ("board", "refused", "retired", "withdrawn")

    def __init__(
        self,
        board: Mark | None,
        retired: dict[str, int],
        withdrawn: dict[str, int],
        refused: Callable[[], None],
    ) -> None:
        self.board, self.retired, self.withdrawn, self.refused = board, retired, withdrawn, refused

    def check(
        self, generation: int | None, sha256: str | None, retired: Iterable[str], withdrawn: Iterable[str]
    ) -> None:
        """:class:`BoardRolledBack` unless the stored board (``generation`` and ``sha256``;
        ``None``: no board row) and the stored ``retired`` identities and ``withdrawn`` approvals
        are at least as new as the ledger's entries (module docstring)."""
        why = self._why(generation, sha256, set(retired), set(withdrawn))
        if why is not None:
            self.refused()
            _LOG.warning(json.dumps({"event": "successor-board-rolled-back", "why": why}))
            raise BoardRolledBack(why)

    def _why(
        self, generation: int | None, sha256: str | None, retired: set[str], withdrawn: set[str]
    ) -> str | None:
        mark = self.board
        if generation is None:
            # No board row: no hand-over, approval or change is possible (as when it is deleted
            # alone), but the retired versions would run again: refused, as retirement rows
            # without the board are (confide.cas.successor.Successors._retired).
            if self.retired:
                at = min(self.retired.values())
                return f"there is no board row, ledger entry {at} retired a version under one"
            return None
        if mark is not None and generation < mark.generation:
            return (
                f"the stored board is generation {generation}, ledger entry {mark.at} "
                f"(successor.board-changed) made generation {mark.generation} current"
            )
        if mark is not None and generation == mark.generation and sha256 != mark.value:
            return f"the stored board of generation {generation} is not the one ledger entry {mark.at} names"
        for digest, at in sorted(self.retired.items(), key=lambda i: i[1]):
            if digest not in retired:
                return f"the version ledger entry {at} retired ({digest[:16]}…) is not among the retired ones"
        for digest, at in sorted(self.withdrawn.items(), key=lambda i: i[1]):
            if digest not in withdrawn:
                return f"the approval ledger entry {at} withdrew ({digest[:16]}…) is not withdrawn"
        return None
