"""The auditor: proves each new checkpoint of a log extends the last one it saw.

The transport is one method, :meth:`LogClient.fetch` ``(path) -> bytes | None``, over the
C2SP tlog-tiles resources (``checkpoint``, ``tile/...``, ``tile/entries/...``):
:class:`LocalLogClient` answers from a ledger database; an HTTP client answers from a CAS.
Proofs are computed client side from the fetched tiles and then *verified* against the
signed roots (RFC 9162 §2.1.4.2), so nothing the server says is taken on trust.

Errors, each with its own exit code: :class:`SignatureError` (bad signature by the pinned
key), :class:`UnknownKeyError` (checkpoint not signed by the pinned key),
:class:`ConsistencyError` (fork), :class:`RollbackError` (tree shrank),
:class:`EntryMismatchError` / :class:`EntryMissingError` (``--full``: an entry differs from,
or is absent from, what the tree commits to; :func:`audit_view`: a policy's entry seen before is
no longer returned), :class:`ParseError` (malformed input).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from confide import jsonstrict
from confide.errors import (
    ConfideError,
    ConsistencyError,
    EntryMismatchError,
    EntryMissingError,
    NetworkError,
    ParseError,
    RollbackError,
    StorageError,
    UnknownKeyError,
    UsageError,
    VerificationError,
)
from confide.fsutil import lock_beside, read_bounded, write_atomic
from confide.ledger.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from confide.ledger.db import Conn, db_errors
from confide.ledger.freshness import NO_WITNESS, Freshness, check_fresh, not_cosigned
from confide.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    consistency_proof,
    hash_leaf,
    subtree_hash,
    verify_consistency,
)
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, SIG_TYPE_ED25519, NoteVerifier, open_note, parse_note
from confide.ledger.serve import CHECKPOINT_PATH, serve
from confide.ledger.tiles import TILE_WIDTH, TiledNodes, TileId, format_tile_path, tile_width

__all__ = [
    "Auditor",
    "AuditorState",
    "CosignWait",
    "LocalLogClient",
    "LogClient",
    "LogVerification",
    "NotCosignedError",
    "PolicyEntries",
    "ViewUpdate",
    "atomic_write",
    "audit_view",
    "distinct_witnesses",
    "log_verifier",
    "parse_bundle",
    "remember_view",
    "verify_checkpoint_update",
    "verify_log",
    "witness_verifier",
]


class NotCosignedError(UnknownKeyError):
    """A log's checkpoint (signed by the pinned key) has no cosignature by a required witness
    (``--witness``), or the log shows no checkpoint at all: to every caller the
    :class:`UnknownKeyError` it was before (exit 65; its ``kind`` is ``UnknownKeyError``, as the
    CLI's one-line errors and ``--json``'s ``class`` show it). Its own class only so that a
    reader can tell it from a checkpoint not signed by the log key: on a growing log the newest
    checkpoint is cosigned a witness round trip after it is signed, and :class:`CosignWait` reads
    the log again on this error alone."""

    @property
    def kind(self) -> str:
        return "UnknownKeyError"


class LogClient(Protocol):
    """Fetch one tlog-tiles resource; ``None`` when the log does not have it (HTTP 404)."""

    def fetch(self, path: str) -> bytes | None: ...


class LocalLogClient:
    """LogClient over a local ledger database (read-only use of the connection)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def fetch(self, path: str) -> bytes | None:
        try:
            resource = serve(self.conn, path)
        except db_errors() as exc:
            raise StorageError(f"reading {path}: {exc}") from None
        return None if resource is None else resource.body


class _ClientTiles:
    def __init__(self, client: LogClient) -> None:
        self.client = client

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        path = format_tile_path(TileId(level, index, width))
        data = self.client.fetch(path)
        if data is None and width < TILE_WIDTH:
            # tlog-tiles "Partial Tiles": a log "MAY delete any partial tile once the
            # corresponding full tile is available", and clients may fetch the full tile
            # instead; its first hashes are the partial tile's (checked against the signed root
            # like any other).
            full = self.client.fetch(format_tile_path(TileId(level, index)))
            if full is not None and len(full) == TILE_WIDTH * HASH_SIZE:
                return full[: width * HASH_SIZE]
        if data is None:
            raise ConsistencyError(f"the log does not serve {path}, which its checkpoint requires")
        if len(data) != width * HASH_SIZE:
            raise ConsistencyError(f"{path}: got {len(data)} bytes, expected {width * HASH_SIZE}")
        return data

    def read_bundle(self, index: int, width: int) -> tuple[str, list[bytes] | None]:
        """The entries of bundle ``index`` up to ``width`` (the path asked for, and ``None``
        when the log has neither the partial bundle nor the full one); a bundle that does not
        parse is a ParseError."""
        path = format_tile_path(TileId(-1, index, width))
        data = self.client.fetch(path)
        if data is None and width < TILE_WIDTH:
            full = self.client.fetch(format_tile_path(TileId(-1, index)))
            if full is not None:  # tlog-tiles: the full bundle instead of a deleted partial one
                entries = parse_bundle(full)
                return path, entries[:width] if len(entries) == TILE_WIDTH else entries
        return path, None if data is None else parse_bundle(data)


def verify_checkpoint_update(
    old: Checkpoint | None,
    new_checkpoint: bytes,
    proof: list[bytes],
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
) -> SignedCheckpoint:
    """Verify a new signed checkpoint and that it extends ``old`` (pure; no I/O).

    Each of ``witnesses`` must have cosigned the checkpoint (tlog-cosignature): a missing
    cosignature is a :class:`NotCosignedError` (an :class:`UnknownKeyError`), an invalid one a
    :class:`SignatureError`. With
    ``freshness`` (``--max-age``; its ``now`` given, never read here), each one's newest
    cosignature must be within it (:func:`~confide.ledger.freshness.check_fresh`), else a
    :class:`~confide.errors.FreshnessError`, checked last: a rollback or a fork is named first,
    before a missing or invalid cosignature too.
    """
    distinct_witnesses(witnesses)
    # 1. Signature by the pinned key (SignatureError / UnknownKeyError / ParseError).
    signed = open_checkpoint(
        new_checkpoint, log_key, origin=origin if origin else (old.origin if old else None)
    )
    new = signed.checkpoint
    if old is not None:
        # 2. The tree must not shrink.
        if new.size < old.size:
            raise RollbackError(f"the log presents tree size {new.size}, but size {old.size} was seen before")
        # 3. The new tree must extend the old one (RFC 9162 §2.1.4.2).
        try:
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        except ConsistencyError as exc:
            raise ConsistencyError(f"fork: {exc.message}") from None
    # 4. Cosignatures by every required witness: checked after a rollback or a fork is named (a
    # reader waiting for the cosignatures, CosignWait, does not wait on a rolled-back log).
    note = None
    for witness in witnesses:
        try:
            note, _ = open_note(new_checkpoint, [witness])
        except UnknownKeyError:
            raise NotCosignedError(not_cosigned(new.size, witness.vkey)) from None
    # 5. Fresh: a required witness cosigned it within --max-age of now (a log frozen on an old
    # checkpoint, with its old cosignatures, would hide every later entry without forking).
    if freshness is not None:  # (without witnesses a UsageError)
        check_fresh(note if note is not None else parse_note(new_checkpoint), new.size, witnesses, freshness)
    return signed


def distinct_witnesses(witnesses: Sequence[NoteVerifier]) -> None:
    """A :class:`UsageError` unless each witness key is another public key. tlog-cosignature
    "Ed25519 signed message": the message "doesn't commit to the cosigner name, so the same
    public key can't be used across multiple cosigners": one cosignature line, renamed (the key
    ID recomputed for the other name), verifies under every name of its key, so one witness given
    under two names would pass as two."""
    seen: dict[bytes, str] = {}
    for witness in witnesses:
        if witness.public_key in seen:
            raise UsageError(
                f"--witness: the key of {witness.name!r} is given twice (also as "
                f"{seen[witness.public_key]!r}): one witness, whose cosignature verifies under both names"
            )
        seen[witness.public_key] = witness.name


def parse_bundle(data: bytes) -> list[bytes]:
    """Split a tlog-tiles entry bundle (uint16 big-endian length prefixes)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ParseError("truncated length prefix", structure="entry bundle", offset=pos)
        (n,) = struct.unpack_from(">H", data, pos)
        if pos + 2 + n > len(data):
            raise ParseError(f"entry of {n} bytes overruns the bundle", structure="entry bundle", offset=pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


EntryCheck = Callable[[int, bytes], None]

_T = TypeVar("_T")

COSIGN_WAIT = 5.0
"""Seconds a reader that requires witnesses (``--witness``) reads the log again while its newest
checkpoint lacks a required cosignature: a CAS signs a checkpoint at most every 0.5 s while
entries are appended and its witnesses cosign it a round trip later
(:mod:`confide.cas.witness_rounds`), so on a growing log the newest checkpoint is often not
cosigned yet when it is read (docs/ledger.md "Reading while the log grows")."""
COSIGN_POLL = 0.2
"""Seconds between two reads of the log while waiting for a cosigned checkpoint: not a divisor
of the CAS's 0.5 s checkpoint interval, so that successive reads fall at different points of it
(a read at the same point each time could keep landing between a signature and its
cosignatures)."""


@dataclass(frozen=True)
class CosignWait:
    """How long a reader that requires witnesses waits for the log's newest checkpoint to carry
    their cosignatures: :meth:`run` repeats a read-and-verify while it fails with
    :class:`NotCosignedError` alone (no other error is retried: a rollback, a fork, a bad
    signature or a stale cosignature fails at once), every ``poll`` seconds, until ``seconds``
    have passed on ``monotonic`` since the first attempt; then the last error is raised. Each
    attempt verifies the checkpoint it read against everything the reader holds, as a single
    read would, and nothing is written before one passes: waiting never accepts an older
    checkpoint than a single read would. Time is injected (``monotonic``, ``sleep``) for tests."""

    seconds: float = COSIGN_WAIT
    poll: float = COSIGN_POLL
    monotonic: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.seconds <= 60 or not 0 < self.poll <= 60:
            raise ValueError("seconds: 0 to 60; poll: above 0, at most 60")

    def run(self, attempt: Callable[[], _T]) -> _T:
        """``attempt()``, repeated while it raises :class:`NotCosignedError`, within the bound."""
        deadline = self.monotonic() + self.seconds
        while True:
            try:
                return attempt()
            except NotCosignedError:
                left = deadline - self.monotonic()
                if left <= 0:
                    raise
                self.sleep(min(self.poll, left))


def cosign_wait(wait: CosignWait | None, attempt: Callable[[], _T]) -> _T:
    """``attempt()`` once (``wait`` ``None``) or as ``wait`` repeats it."""
    return attempt() if wait is None else wait.run(attempt)


@dataclass
class Auditor:
    client: LogClient
    log_key: NoteVerifier
    origin: str | None = None
    witnesses: Sequence[NoteVerifier] = ()
    freshness: Freshness | None = None
    """``--max-age``: each checkpoint verified must have a cosignature of each of ``witnesses``
    within it."""
    wait: CosignWait | None = None
    """With ``witnesses``: :meth:`update` reads the log's checkpoint again, within this bound,
    while it lacks a required cosignature (``None``: one read)."""

    def __post_init__(self) -> None:
        distinct_witnesses(self.witnesses)  # refused before anything is fetched
        if self.freshness is not None and not self.witnesses:
            raise UsageError(NO_WITNESS)

    def fetch_checkpoint(self) -> bytes:
        raw = self.client.fetch(CHECKPOINT_PATH)
        if raw is None:
            raise NetworkError("the log serves no checkpoint")
        return raw

    def update(self, old: Checkpoint | None) -> SignedCheckpoint:
        """Fetch the latest checkpoint, verify it and its consistency with ``old``; with
        ``witnesses`` and a ``wait``, fetched again while it lacks a required cosignature."""
        return cosign_wait(
            self.wait if self.witnesses else None, lambda: self.extend(old, self.fetch_checkpoint())
        )

    def extend(self, old: Checkpoint | None, raw: bytes) -> SignedCheckpoint:
        """Verify the signed checkpoint ``raw`` (the log's latest, or one the log sent with
        other answers) and its consistency with ``old``, by a proof computed from the log's
        tiles; the tiles must also hash to its root."""
        signed = open_checkpoint(raw, self.log_key, origin=self.origin or (old.origin if old else None))
        new = signed.checkpoint
        nodes = TiledNodes(_ClientTiles(self.client), new.size)
        proof: list[bytes] = []
        if old is not None and old.size <= new.size:
            proof = consistency_proof(nodes, old.size, new.size)
        signed = verify_checkpoint_update(
            old, raw, proof, self.log_key, origin=self.origin, witnesses=self.witnesses,
            # judged at the time it was fetched (its clock read now), not the audit's start
            freshness=None if self.freshness is None else self.freshness.renewed(),
        )  # fmt: skip
        # The tiles must hash to the signed root (else the log serves a tree it did not sign).
        tiles_root = EMPTY_ROOT if new.size == 0 else subtree_hash(nodes, 0, new.size)
        if tiles_root != new.root:
            raise ConsistencyError(
                f"the log's tiles give root {tiles_root.hex()} for size {new.size}, but its checkpoint "
                f"says {new.root.hex()}"
            )
        return signed

    def verify_entries(self, checkpoint: Checkpoint, entry_check: EntryCheck | None = None) -> int:
        """``--full``: download every entry, recompute the root, name any differing entry.

        Level-0 tiles are recomputed into the root first (so they are what the checkpoint
        commits to); each entry is then compared with its leaf hash. Memory is O(log n).
        """
        first_bad: ConfideError | None = None

        def tile(tile_index: int, width: int, hashes: list[bytes]) -> None:
            nonlocal first_bad
            if first_bad is not None:
                return
            start = tile_index * TILE_WIDTH
            path = format_tile_path(TileId(-1, tile_index, width))
            try:
                path, entries = _ClientTiles(self.client).read_bundle(tile_index, width)
            except ParseError as exc:
                first_bad = EntryMismatchError(f"{path}: {exc.message}")
                return
            if entries is None:
                first_bad = EntryMissingError(f"entries {start}..{start + width - 1} are missing ({path})")
                return
            first_bad = _compare(start, hashes, entries, entry_check)

        self._level0(checkpoint, tile)
        if first_bad is not None:
            raise first_bad
        return checkpoint.size

    def leaf_hashes(self, checkpoint: Checkpoint, indexes: Iterable[int]) -> dict[int, bytes]:
        """The leaf hashes at ``indexes`` (each below the checkpoint's size), once every level-0
        tile of the checkpoint's tree is recomputed into its root (:class:`ConsistencyError`
        otherwise): what ``ledger verify --full --identity`` compares a stakeholder's entries
        with. Memory is O(log n) plus the hashes asked for."""
        wanted = set(indexes)
        if any(not 0 <= i < checkpoint.size for i in wanted):
            raise ValueError("indexes: each below the checkpoint's size")
        found: dict[int, bytes] = {}

        def tile(tile_index: int, width: int, hashes: list[bytes]) -> None:
            start = tile_index * TILE_WIDTH
            for i in range(width):
                if start + i in wanted:
                    found[start + i] = hashes[i]

        self._level0(checkpoint, tile)
        return found

    def _level0(self, checkpoint: Checkpoint, tile: Callable[[int, int, list[bytes]], None]) -> None:
        """Read every level-0 tile of ``checkpoint``'s tree, in order, calling ``tile(index,
        width, leaf hashes)`` for each, and recompute the root from them: a
        :class:`ConsistencyError` unless it is the checkpoint's."""
        size = checkpoint.size
        rng = CompactRange()
        for tile_index in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
            width = tile_width(0, tile_index, size)
            leaf_hashes = _ClientTiles(self.client).read_tile(0, tile_index, width)
            hashes = [leaf_hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(width)]
            rng.extend(hashes)
            tile(tile_index, width, hashes)
        if rng.root() != checkpoint.root:
            raise ConsistencyError(
                f"the log's leaf hashes give root {rng.root().hex()} for size {size}, but its checkpoint "
                f"says {checkpoint.root.hex()}"
            )


def _compare(
    start: int, hashes: list[bytes], entries: list[bytes], check: EntryCheck | None
) -> ConfideError | None:
    for i, expected in enumerate(hashes):
        index = start + i
        if i >= len(entries):
            return EntryMissingError(f"entry {index} is missing")
        if hash_leaf(entries[i]) != expected:
            if len(entries) < len(hashes) and i + 1 < len(hashes) and hash_leaf(entries[i]) == hashes[i + 1]:
                return EntryMissingError(f"entry {index} is missing")
            return EntryMismatchError(
                f"entry {index}: content hashes to {hash_leaf(entries[i]).hex()}, the tree commits to "
                f"{expected.hex()}"
            )
        if check is not None:
            try:
                check(index, entries[i])
            except ConfideError as exc:
                return EntryMismatchError(f"entry {index}: {exc.message}")
    if len(entries) > len(hashes):
        return EntryMismatchError(
            f"entry bundle at {start} holds {len(entries)} entries, expected {len(hashes)}"
        )
    return None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, mode 0600 (:func:`confide.fsutil.write_atomic`)."""
    write_atomic(Path(path), data, mode=0o600)


MAX_STATE_FILE = 64 * 1024 * 1024
"""The largest state file read (bytes): about eight million remembered entry indexes."""


class AuditorState:
    """What an auditor remembers of one log between runs: the last checkpoint it verified (the
    signed note itself) and, for ``ledger history|accesses --state``, per policy the indexes of
    the entries it was shown, each proven included in that checkpoint or an earlier one.

    Version 1 (``ledger verify`` alone): ``{"version": 1, "checkpoint": "<signed note>"}``.
    Version 2: ``{"version": 2, "log_key": "<vkey>", "checkpoint": "<signed note>",
    "policies": {"<name>": [index, ...]}}`` (indexes increasing, each below the checkpoint's
    size). ``ledger verify`` keeps a version 1 file at version 1, and a version 2 file's
    policies as they are. A file is hostile input: read strictly and bounded; the note is
    verified again with the pinned key (editing the file cannot rewind the auditor); a version 2
    file names its log key, and one of another key is refused before anything is written.
    Use :meth:`locked` around load, checks and save: runs sharing a file do not lose each
    other's updates.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.policies: dict[str, list[int]] | None = None  # None: not a version 2 file (yet)
        self._log_key: NoteVerifier | None = None

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold ``<file>.lock`` (mode 0600, left in place) until the block ends."""
        return _locked_state(self.path)

    def _fail(self, expected: str) -> ParseError:
        return ParseError(f"expected {expected}", structure=f"auditor state file {str(self.path)!r}")

    def load(self, log_key: NoteVerifier, *, origin: str | None = None) -> Checkpoint | None:
        self._log_key = log_key
        self.policies = None
        try:
            raw = read_bounded(
                self.path, MAX_STATE_FILE, label="state file", expected="an auditor state file",
                structure="auditor state file", regular=True,
            )  # fmt: skip
        except StorageError:
            if not os.path.lexists(self.path):
                return None
            raise
        doc = jsonstrict.loads(raw, structure=f"auditor state file {str(self.path)!r}")
        if isinstance(doc, dict) and doc.get("version") == 2:
            return self._load_v2(doc, log_key, origin)
        if not isinstance(doc, dict) or set(doc) != {"version", "checkpoint"} or doc["version"] != 1:
            raise self._fail('{"version": 1, "checkpoint": "..."} or version 2')
        return self._open(doc["checkpoint"], log_key, origin)

    def _open(self, note: object, log_key: NoteVerifier, origin: str | None) -> Checkpoint:
        if not isinstance(note, str):
            raise self._fail("the checkpoint as a string")
        try:
            signed = open_checkpoint(note.encode("utf-8"), log_key, origin=origin)
        except (VerificationError, ParseError) as exc:
            raise type(exc)(f"state file {str(self.path)!r}: {exc.message}") from None
        return signed.checkpoint

    def _load_v2(self, doc: dict[str, object], log_key: NoteVerifier, origin: str | None) -> Checkpoint:
        members = {"version", "log_key", "checkpoint", "policies"}
        if set(doc) != members or not isinstance(doc["log_key"], str):
            raise self._fail('{"version": 2, "log_key": ..., "checkpoint": ..., "policies": {...}}')
        if doc["log_key"] != log_key.vkey:
            raise UnknownKeyError(
                f"state file {str(self.path)!r} is the state of the log with key {doc['log_key'][:200]!r}, "
                f"not of the pinned {log_key.vkey!r} (another CAS's, or its log was replaced); "
                "give another --state file"
            )
        checkpoint = self._open(doc["checkpoint"], log_key, origin)
        policies = doc["policies"]
        if not isinstance(policies, dict):
            raise self._fail("policies as an object")
        for name, indexes in policies.items():
            if (
                not name
                or not isinstance(indexes, list)
                or not all(type(i) is int for i in indexes)
                or not _increasing(indexes, checkpoint.size)
            ):
                raise self._fail(
                    f"policy {name[:200]!r}: increasing entry indexes below the checkpoint's size "
                    f"{checkpoint.size}"
                )
        self.policies = {str(name): list(indexes) for name, indexes in policies.items()}
        return checkpoint

    def entries(self, name: str) -> list[int]:
        """The indexes remembered for ``name`` (after :meth:`load`)."""
        return list((self.policies or {}).get(name, []))

    def remember(self, name: str, indexes: list[int]) -> None:
        """Remember ``indexes`` (increasing) for ``name``: the file becomes version 2."""
        if self.policies is None:
            self.policies = {}
        self.policies[name] = indexes

    def save(self, signed: SignedCheckpoint) -> None:
        doc: dict[str, object]
        if self.policies is None:
            doc = {"version": self.VERSION, "checkpoint": signed.raw.decode("utf-8")}
        else:
            assert self._log_key is not None, "load() first"
            doc = {
                "version": 2, "log_key": self._log_key.vkey, "checkpoint": signed.raw.decode("utf-8"),
                "policies": dict(sorted(self.policies.items())),
            }  # fmt: skip
        try:
            atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            raise StorageError(f"cannot write state file {str(self.path)!r}: {exc.strerror}") from None


def _increasing(indexes: Sequence[int], size: int) -> bool:
    """Entry indexes in increasing order, each in ``0..size-1``."""
    return all(a < b for a, b in itertools.pairwise([-1, *indexes, size]))


@contextlib.contextmanager
def _locked_state(path: Path) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock_beside(path))
        except OSError as exc:
            raise StorageError(f"cannot lock state file {str(path)!r}: {exc.strerror or exc}") from None
        yield


@dataclass(frozen=True)
class ViewUpdate:
    """What :func:`audit_view` found: the checkpoint remembered before (``None`` on a first
    run), how many entries of the policy were remembered, and how many it remembers now."""

    previous: Checkpoint | None
    known: int
    remembered: int


def audit_view(
    client: LogClient,
    log_key: NoteVerifier,
    state: AuditorState,
    previous: Checkpoint | None,
    name: str,
    signed: SignedCheckpoint | None,
    proven: Sequence[int],
    *,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
) -> ViewUpdate:
    """One policy's view of the log against what ``state`` remembers (loaded: ``previous``).

    ``signed``: the checkpoint the log sent with the policy's entries; ``proven``: the indexes of
    the entries it proved included in it (increasing). The checkpoint must extend ``previous``
    (else :class:`RollbackError` / :class:`ConsistencyError`, proof from the log's tiles through
    ``client``), and be cosigned by ``witnesses`` (with ``freshness``, recently: as
    :meth:`Auditor.extend` checks it); every entry remembered for ``name`` must be among ``proven`` (else
    :class:`EntryMissingError`: the log left out an entry it showed before). Then the state
    remembers the new checkpoint and ``proven`` too, written atomically; on any error nothing
    is written. Call with ``state.locked()`` held since the load."""
    if signed is None:
        if previous is not None:
            raise RollbackError(f"the log presents no checkpoint, but size {previous.size} was seen before")
        return ViewUpdate(None, 0, 0)  # nothing proven: nothing to remember
    size = signed.checkpoint.size
    if not _increasing(proven, size):
        raise ValueError("proven: increasing indexes below the checkpoint's size")
    new = Auditor(client, log_key, witnesses=witnesses, freshness=freshness).extend(previous, signed.raw)
    known, merged = remember_view(state, name, proven)
    state.save(new)
    return ViewUpdate(previous, len(known), len(merged))


def remember_view(state: AuditorState, name: str, proven: Sequence[int]) -> tuple[list[int], list[int]]:
    """Every entry ``state`` remembers for policy ``name`` must be among ``proven`` (the indexes
    the log proved for it this time), else :class:`EntryMissingError` (the log left out an entry
    it showed before); then ``state`` remembers both (not saved: the caller saves once every
    policy is checked). Returns (remembered before, remembered now)."""
    known = state.entries(name)
    missing = sorted(set(known).difference(proven))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(map(str, missing[:5])) + more
        raise EntryMissingError(
            f"{name}: the log no longer returns entr{'y' if len(missing) == 1 else 'ies'} {shown}, shown "
            f"before and proven in its log (state file {str(state.path)!r}): it leaves out what it logged"
        )
    merged = sorted(set(known).union(proven))
    state.remember(name, merged)
    return known, merged


def audit_once(
    client: LogClient,
    log_key: NoteVerifier,
    state: AuditorState | None,
    *,
    full: bool = False,
    entry_check: EntryCheck | None = None,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> tuple[Checkpoint | None, SignedCheckpoint]:
    """One audit round: verify the latest checkpoint against the state (and, with
    ``freshness``, that its witnesses cosigned it recently; with ``wait``, read again while it
    lacks a required cosignature), optionally all entries, then remember it. Returns (previous,
    new)."""
    auditor = Auditor(client, log_key, witnesses=witnesses, freshness=freshness, wait=wait)
    with state.locked() if state is not None else contextlib.nullcontext():
        old = state.load(log_key) if state is not None else None
        signed = auditor.update(old)
        if full:
            auditor.verify_entries(signed.checkpoint, entry_check)
        if state is not None:
            state.save(signed)
    return old, signed


def log_verifier(vkey: str, what: str = "--key") -> NoteVerifier:
    """A log's verifier key (C2SP vkey, signature type 0x01): ``ledger verify --key``."""
    key = NoteVerifier.from_vkey(vkey.strip())
    if key.sig_type != SIG_TYPE_ED25519:
        raise UsageError(f"{what}: expected a log key (signature type 0x01)")
    return key


def witness_verifier(vkey: str, what: str = "--witness") -> NoteVerifier:
    """A witness's cosignature key (signature type 0x04): ``ledger verify --witness``."""
    key = NoteVerifier.from_vkey(vkey.strip())
    if key.sig_type != SIG_TYPE_COSIGNATURE_V1:
        raise UsageError(f"{what} {key.name}: expected a witness key (signature type 0x04)")
    return key


@dataclass(frozen=True)
class LogVerification:
    """What one audit of a log verified (``confide ledger verify --json``): its latest
    checkpoint (``origin``, ``size``, ``root`` hash in hex) signed by the log key; with a state
    file, consistent with the checkpoint remembered there (``previous_size``, ``None`` on the
    first run or without a file); with ``full``, every entry recomputed into the tree and policy
    entries checked (``entries_checked``, else 0); cosigned by each of ``witnesses`` (vkeys)."""

    origin: str
    size: int
    root: str
    previous_size: int | None
    entries_checked: int
    witnesses: tuple[str, ...] = ()
    max_age: int | None = None
    """``--max-age`` (seconds): each witness's newest cosignature was at most this old."""
    reader: str | None = None
    """``--full --identity``: the fingerprint of the identity whose policies' entries were checked
    (``None``: every entry was, from the log database)."""
    policies: tuple[PolicyEntries, ...] = ()
    """``--full --identity``: the policies whose entries were checked, by name."""

    def to_json(self) -> dict[str, object]:
        """``ledger verify --json``'s object."""
        doc: dict[str, object] = {
            "verified": True, "origin": self.origin, "size": self.size, "root": self.root,
            "previous_size": self.previous_size, "entries_checked": self.entries_checked,
            "witnesses": list(self.witnesses),
        }  # fmt: skip
        if self.max_age is not None:
            doc["max_age"] = self.max_age
        if self.reader is not None:
            doc["reader"] = self.reader
            doc["policies"] = [p.to_json() for p in self.policies]
        return doc


@dataclass(frozen=True)
class PolicyEntries:
    """``ledger verify --full --identity``: one policy's entries, as checked. ``entries``: those
    the CAS returned, each matched with its leaf hash in the checkpoint verified; ``head``: the
    current version the CAS reports, the end of the entries' chain."""

    name: str
    entries: int
    head: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "entries": self.entries, "head": self.head}


def verify_log(
    client: LogClient,
    log_key: NoteVerifier,
    state_file: Path | None,
    *,
    full: bool = False,
    witnesses: Sequence[NoteVerifier] = (),
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> LogVerification:
    """One audit of the log ``client`` reads (``confide ledger verify``, and
    :meth:`confide.sdk.Cas.verify_log`): its latest checkpoint signed by ``log_key`` and
    cosigned by ``witnesses`` (with ``freshness``, ``--max-age``: each within it, else a
    :class:`~confide.errors.FreshnessError`); with ``state_file``, consistent with the checkpoint remembered
    there (a smaller one is a ``RollbackError``, another tree a ``ConsistencyError``), which the
    file then remembers; with ``full``, every entry downloaded, the tree recomputed and each
    policy entry checked (:class:`confide.cas.audit.PolicyChainChecker`). ``wait``: while the
    latest checkpoint lacks a required cosignature, it is read again within this bound
    (:class:`CosignWait`). Nothing is written on an error."""
    entry_check = None
    if full:  # policy entries re-checked (signatures, hashes, linear predecessor chains)
        from confide.cas.audit import PolicyChainChecker  # noqa: PLC0415 - the CAS's entry types, only here

        entry_check = PolicyChainChecker()
    old, signed = audit_once(
        client,
        log_key,
        AuditorState(state_file) if state_file is not None else None,
        full=full,
        entry_check=entry_check,
        witnesses=witnesses,
        freshness=freshness,
        wait=wait,
    )
    cp = signed.checkpoint
    return LogVerification(
        cp.origin, cp.size, cp.root.hex(), None if old is None else old.size, cp.size if full else 0,
        tuple(w.vkey for w in witnesses),
        max_age=None if freshness is None else int(freshness.max_age.total_seconds()),
    )  # fmt: skip
