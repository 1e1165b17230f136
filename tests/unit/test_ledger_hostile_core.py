"""Hostile review of the ledger's core (2026-12-07): the CAS operator rewrites or forks history,
or feeds verifiers hostile input, and an entitled verifier must notice or refuse.

Each test is one attack. Those marked *fix* were accepted before their fix (the rest pin down
behaviour that already held). Specifications: RFC 9162 §2.1 (Merkle trees and proofs),
c2sp.org/signed-note, tlog-checkpoint, tlog-tiles, tlog-cosignature, tlog-witness.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from _ledger_ref import MemNodes, ref_mth
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from confide import httpbody
from confide.errors import (
    ConsistencyError,
    EntryMismatchError,
    NetworkError,
    ParseError,
    RollbackError,
    SignatureError,
    StorageError,
    UnknownKeyError,
    UsageError,
)
from confide.ledger.auditor import (
    Auditor,
    AuditorState,
    LocalLogClient,
    parse_bundle,
    verify_checkpoint_update,
)
from confide.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from confide.ledger.cli import _make_witness
from confide.ledger.http import MAX_ANSWER_TIME, HttpLogClient
from confide.ledger.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    hash_children,
    hash_leaf,
    inclusion_proof,
    mth,
    verify_consistency,
    verify_inclusion,
)
from confide.ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    SIG_TYPE_ED25519,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
)
from confide.ledger.serve import CHECKPOINT_PATH
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.tiles import TiledNodes
from confide.ledger.witness import Witness, WitnessConflictError, http_status

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ORIGIN = "cas.example/ledger"

# The eight points of small order of edwards25519 (and non-canonical encodings of them).
SMALL_ORDER = [
    "01" + "00" * 31,  # the identity
    "ec" + "ff" * 30 + "7f",  # order 2
    "00" * 32,  # order 4
    "00" * 31 + "80",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "ee" + "ff" * 30 + "7f",  # the identity, y = 1 + p
]
FORGED = bytes([1]) + bytes(63)  # R = the identity point, S = 0: made without any private key


def _leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") for i in range(n)]


def _vkey(name: str, sig_type: int, public: bytes) -> str:
    kid = key_id(name, sig_type, public)
    return f"{name}+{kid:08x}+{base64.b64encode(bytes([sig_type]) + public).decode()}"


# --- signed-note keys --------------------------------------------------------------------


@pytest.mark.parametrize("key", SMALL_ORDER)
@pytest.mark.parametrize("sig_type", [SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1])
def test_fix_a_small_order_log_or_witness_key_is_refused(key: str, sig_type: int) -> None:
    """*fix*: an operator publishing the identity point as its log key could have everyone
    forge its checkpoints (and deny any fork it signed); a witness key like it, any
    cosignature. RFC 8032 §5.1.7 verification, cofactorless as OpenSSL does it, takes them."""
    public = bytes.fromhex(key)
    with pytest.raises(ParseError, match="small order"):
        NoteVerifier.from_vkey(_vkey("log.example", sig_type, public))
    with pytest.raises(ParseError, match="small order"):
        NoteVerifier("log.example", sig_type, public)


def test_fix_the_forgery_a_small_order_key_allows_is_real() -> None:
    """The premise of the fix above: the library alone takes a checkpoint and a cosignature
    nobody signed, for any text, under the identity point."""
    identity = Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER[0]))
    text = Checkpoint(ORIGIN, 5, bytes(32)).to_text()
    identity.verify(FORGED, text.encode())  # no InvalidSignature: a forgery verifies
    identity.verify(FORGED, f"cosignature/v1\ntime 7\n{text}".encode())


def test_a_key_id_collision_between_log_and_witness_rejects_and_never_accepts() -> None:
    """signed-note: a line matching a known key's name and ID must verify. Two keys sharing a
    (name, ID) (4 bytes: 2**32 work to grind) are never both asked at once here (the log key
    alone opens the checkpoint, each witness key alone its cosignature), so a collision makes
    the note fail (SignatureError), never count one key's signature for the other."""
    log = NoteSigner.generate(ORIGIN)
    text = Checkpoint(ORIGIN, 1, hash_leaf(b"x")).to_text()
    # A cosignature line presented under the log's own name and key ID: a failing signature of
    # a known key, which rejects the note (it is not ignored, nor counted).
    witness = NoteSigner.generate("w", SIG_TYPE_COSIGNATURE_V1)
    cosig = witness.sign(text, timestamp=1)
    disguised = NoteSignature(log.name, log.key_id, cosig.signature)
    note = Note(text, (log.sign(text), disguised)).to_bytes()
    with pytest.raises(SignatureError):
        open_checkpoint(note, log.verifier)


def test_unknown_keys_and_duplicate_lines_neither_count_nor_hide() -> None:
    """signed-note: lines by unknown keys are ignored (never counted), a key signing twice is one
    signer, and one bad line of a known key rejects the note even after a good one."""
    log = NoteSigner.generate(ORIGIN)
    text = Checkpoint(ORIGIN, 1, hash_leaf(b"x")).to_text()
    good = log.sign(text)
    stranger = NoteSigner.generate(ORIGIN)  # same name, another key: another key ID
    _, verified = open_note(Note(text, (stranger.sign(text), good, good)).to_bytes(), [log.verifier])
    assert verified == [good]
    bad = NoteSignature(good.name, good.key_id, bytes(64))
    with pytest.raises(SignatureError):
        open_note(Note(text, (good, bad)).to_bytes(), [log.verifier])
    with pytest.raises(UnknownKeyError):
        open_note(Note(text, (stranger.sign(text),)).to_bytes(), [log.verifier])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n + b"trailing",  # data after the last signature line
        lambda n: n + b"\n",  # a blank line after the signatures
        lambda n: n.replace(b"\n\n", b"\nextension\n\n").replace(b"extension", b"\xff"),  # not UTF-8
        lambda n: n.replace(b"\n", b"\r\n", 1),  # CR in the text
        lambda n: n.replace(b"\n\n", b"\n\n\n", 1).replace(b"\n\n\n", b"\n\n", 1)[:-1],  # no final LF
        lambda n: n + b"x" * (1 << 20),  # past the note size limit
    ],
)
def test_malformed_checkpoint_notes_are_parse_errors(mangle: object) -> None:
    log = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, hash_leaf(b"x")), log)
    assert callable(mangle)
    with pytest.raises(ParseError):
        open_checkpoint(mangle(note), log.verifier)


def test_a_blank_line_moved_into_the_text_is_refused() -> None:
    """Two blank lines before the signatures: the text (up to the last blank line, as Go's
    note.Open takes it) gains an empty line, which is not what the log signed."""
    log = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, hash_leaf(b"x")), log)
    with pytest.raises(SignatureError):
        open_checkpoint(note.replace(b"\n\n", b"\n\n\n"), log.verifier)
    with pytest.raises(ParseError, match="extension"):
        Checkpoint.from_text(Checkpoint(ORIGIN, 1, hash_leaf(b"x")).to_text() + "\n")
    # Texts the log key did sign, but no checkpoint: an empty origin, a size with a sign or
    # leading zero, a root of 31 bytes.
    root = base64.b64encode(hash_leaf(b"x")).decode()
    for text in (f"\n1\n{root}\n", f"{ORIGIN}\n+1\n{root}\n", f"{ORIGIN}\n01\n{root}\n",
                 f"{ORIGIN}\n1\n{base64.b64encode(bytes(31)).decode()}\n"):  # fmt: skip
        with pytest.raises(ParseError):
            open_checkpoint(Note(text, (log.sign(text),)).to_bytes(), log.verifier)


def test_an_extension_line_changes_what_is_signed() -> None:
    """tlog-checkpoint: extension lines are part of the signed text (and of the cosigned
    message, tlog-cosignature): one added or removed after signing breaks the signature."""
    log = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, hash_leaf(b"x"), ("ext",)), log)
    assert open_checkpoint(note, log.verifier).checkpoint.extensions == ("ext",)
    with pytest.raises(SignatureError):
        open_checkpoint(note.replace(b"ext\n", b""), log.verifier)


# --- RFC 9162 proofs at edge sizes ------------------------------------------------------------

EDGE_SIZES = sorted({0, 1, 2, 3} | {n for k in range(2, 11) for n in (2**k - 1, 2**k, 2**k + 1)})
BIG = _leaves(max(EDGE_SIZES) + 1)
NODES = MemNodes(BIG)


def _root(n: int) -> bytes:
    return ref_mth(tuple(BIG[:n]))


@pytest.mark.parametrize("size2", [n for n in EDGE_SIZES if n > 0])
def test_consistency_proofs_at_edge_sizes_admit_nothing_else(size2: int) -> None:
    """RFC 9162 §2.1.4.2 at 0, 1, 2**k and 2**k +- 1: the right proof verifies; with an extra
    hash, a missing one, one changed, against another size or from a larger old size, it fails."""
    for size1 in [n for n in EDGE_SIZES if n <= size2]:
        root1, root2 = _root(size1), _root(size2)
        proof = consistency_proof(NODES, size1, size2)
        verify_consistency(size1, size2, root1, root2, proof)
        wrong: list[tuple[int, int, list[bytes]]] = [(size1, size2, [*proof, bytes(32)])]
        if proof:
            wrong += [(size1, size2, proof[:-1]), (size1, size2, proof[1:])]
            wrong += [(size1, size2, [proof[0][::-1], *proof[1:]])]
            wrong += [(size1, size2, [*proof[:-1], hash_children(proof[-1], proof[-1])])]
        if 0 < size1 < size2:
            wrong += [(size1 + 1, size2, proof), (size1, size2 + 1, proof), (size1, size2 - 1, proof)]
        for s1, s2, p in wrong:  # each against the roots of the sizes it claims
            with pytest.raises(ConsistencyError):
                verify_consistency(s1, s2, _root(s1), _root(s2), p)
        if size1 < size2:
            with pytest.raises(ConsistencyError, match="smaller"):  # a rollback: old above new
                verify_consistency(size2, size1, root2, root1, [])


@pytest.mark.parametrize("size", [n for n in EDGE_SIZES if n > 0])
def test_inclusion_proofs_at_edge_sizes_admit_nothing_else(size: int) -> None:
    root = _root(size)
    for index in sorted({0, 1, size // 2, size - 2, size - 1} & set(range(size))):
        leaf = hash_leaf(BIG[index])
        proof = inclusion_proof(NODES, index, size)
        verify_inclusion(index, size, leaf, proof, root)
        for i, s, p in [
            (index, size, [*proof, bytes(32)]),
            (index, size + 1, proof),
            (index + 1, size, proof),
        ]:
            with pytest.raises(EntryMismatchError):  # against the root of the size it claims
                verify_inclusion(i, s, leaf, p, _root(s))
        if proof:
            with pytest.raises(EntryMismatchError):
                verify_inclusion(index, size, leaf, proof[:-1], root)


def test_equal_sizes_and_the_empty_tree() -> None:
    """old_size == new_size: an empty proof and the same root, nothing else; size 0 has one root."""
    r = _root(5)
    verify_consistency(5, 5, r, r, [])
    with pytest.raises(ConsistencyError, match="two different roots"):
        verify_consistency(5, 5, r, _root(4), [])
    with pytest.raises(ConsistencyError, match="must be empty"):
        verify_consistency(5, 5, r, r, [r])
    with pytest.raises(ConsistencyError):
        verify_consistency(0, 5, bytes(32), r, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])


def test_a_leaf_is_not_a_node_and_one_entry_has_one_leaf() -> None:
    """RFC 9162 §2.1.1 domain separation (0x00 leaves, 0x01 nodes): an entry that is the
    concatenation of two child hashes does not hash to their parent, so no entry proves an
    interior node included (nor makes the tree of size 1 over it the tree of size 2). A proof
    binds the root, not the size: the size is the signed checkpoint's (never the prover's)."""
    a, b = hash_leaf(b"a"), hash_leaf(b"b")
    assert hash_leaf(a + b) != hash_children(a, b)
    assert mth([a + b]) != mth([b"a", b"b"])
    with pytest.raises(EntryMismatchError):  # the entry a||b offered at index 0 of the 2-tree
        verify_inclusion(0, 2, hash_leaf(a + b), [], mth([b"a", b"b"]))
    with pytest.raises(EntryMismatchError):
        verify_inclusion(0, 1, hash_leaf(a + b), [], mth([b"a", b"b"]))


# --- tiles ------------------------------------------------------------------------------------


class _Tiles:
    """A log's tiles over MemNodes, with one resource replaced."""

    def __init__(self, leaves: list[bytes], override: dict[str, bytes | None]) -> None:
        self.conn = connect(":memory:")
        Ledger.init_schema(self.conn)
        ledger = Ledger()
        with write_transaction(self.conn):
            ledger.append_batch(self.conn, leaves)
        self.log = NoteSigner.generate(ORIGIN)
        self.local = LocalLogClient(self.conn)
        self.override = override

    def sign(self) -> bytes:
        return Ledger().sign_checkpoint(self.conn, self.log)

    def fetch(self, path: str) -> bytes | None:
        if path in self.override:
            return self.override[path]
        return self.local.fetch(path)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("tile/0/000.p/44", bytes(32 * 44)),  # right width, wrong hashes
        ("tile/0/000.p/44", bytes(32 * 43)),  # one hash short
        ("tile/0/000.p/44", bytes(32 * 45)),  # one hash more
        ("tile/0/000.p/44", b""),  # empty
        ("tile/0/000.p/44", None),  # missing (no full tile to fall back on)
    ],
)
def test_a_wrong_or_missing_tile_is_never_accepted(path: str, body: bytes | None) -> None:
    log = _Tiles(_leaves(44), {})
    raw = log.sign()
    log.override[path] = body
    with pytest.raises(ConsistencyError):
        Auditor(log, log.log.verifier).extend(None, raw)


def test_tiles_of_another_tree_size_do_not_stand_in() -> None:
    """A partial tile of the tree at size 40 served for the checkpoint at 44 (as if the log had
    not grown): its width is wrong, and padded to 44 its hashes do not give the signed root."""
    log = _Tiles(_leaves(40), {})
    log.sign()
    old_tile = log.local.fetch("tile/0/000.p/40")
    assert old_tile is not None
    with write_transaction(log.conn):
        Ledger().append_batch(log.conn, _leaves(4, b"more"))
    raw = log.sign()
    log.override["tile/0/000.p/44"] = old_tile
    with pytest.raises(ConsistencyError, match="expected 1408"):
        Auditor(log, log.log.verifier).extend(None, raw)
    log.override["tile/0/000.p/44"] = old_tile + bytes(32 * 4)
    with pytest.raises(ConsistencyError, match="tiles give root"):
        Auditor(log, log.log.verifier).extend(None, raw)


def test_a_node_beyond_the_tree_is_never_read() -> None:
    nodes = TiledNodes(_NoTiles(), 3)
    with pytest.raises(StorageError, match="not complete"):
        nodes.node(2, 0)


class _NoTiles:
    def read_tile(self, level: int, index: int, width: int) -> bytes:
        raise AssertionError("no tile is read for a node outside the tree")


def test_entry_bundles_with_overrun_or_truncated_prefixes_are_parse_errors() -> None:
    assert parse_bundle(struct.pack(">H", 1) + b"a") == [b"a"]
    for bad in (b"\x00", struct.pack(">H", 2) + b"a", struct.pack(">H", 1) + b"a" + b"\x00"):
        with pytest.raises(ParseError):
            parse_bundle(bad)


# --- split views, rollbacks and the witness ---------------------------------------------------


@pytest.fixture
def log() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witness(tmp_path: Path, log: NoteSigner) -> Witness:
    signer = NoteSigner.generate("witness.example/w1", SIG_TYPE_COSIGNATURE_V1)
    return Witness(signer, tmp_path / "w.json", {ORIGIN: log.verifier})


def _cp(log: NoteSigner, leaves: list[bytes]) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), mth(leaves)), log)


def test_a_split_view_is_caught_by_the_witness_and_by_verifiers_requiring_it(
    log: NoteSigner, witness: Witness
) -> None:
    """Two checkpoints of one size with different roots, one for each verifier: each alone is
    signed and self-consistent; the witness cosigns the first and answers 409 to the second, so
    a verifier requiring its cosignature refuses the second."""
    a, b = _leaves(8, b"a"), _leaves(8, b"b")
    view_a, view_b = _cp(log, a), _cp(log, b)
    cosig = witness.add_checkpoint(0, [], view_a, at=AT)
    with pytest.raises(WitnessConflictError) as exc:
        witness.add_checkpoint(8, [], view_b, at=AT)
    assert http_status(exc.value) == 409
    with pytest.raises(WitnessConflictError):  # nor from scratch (old size 0)
        witness.add_checkpoint(0, [], view_b, at=AT)
    a_cosigned = view_a + cosig.line().encode()
    verify_checkpoint_update(None, a_cosigned, [], log.verifier, witnesses=[witness.verifier])
    with pytest.raises(UnknownKeyError, match="no cosignature"):
        verify_checkpoint_update(None, view_b, [], log.verifier, witnesses=[witness.verifier])
    # The witness's cosignature moved onto the other view does not verify: it signs the root.
    moved = view_b + NoteSignature(cosig.name, cosig.key_id, cosig.signature).line().encode()
    with pytest.raises(SignatureError):
        verify_checkpoint_update(None, moved, [], log.verifier, witnesses=[witness.verifier])
    # Without a witness, a verifier that saw view A before (its state) refuses view B as a fork.
    old = open_checkpoint(view_a, log.verifier).checkpoint
    with pytest.raises(ConsistencyError, match="fork"):
        verify_checkpoint_update(old, view_b, [], log.verifier)


def test_a_rollback_is_refused_by_the_witness_and_the_auditor(log: NoteSigner, witness: Witness) -> None:
    leaves = _leaves(10)
    witness.add_checkpoint(0, [], _cp(log, leaves), at=AT)
    smaller = _cp(log, leaves[:7])
    with pytest.raises(WitnessConflictError):  # old size 0: not what it cosigned
        witness.add_checkpoint(0, [], smaller, at=AT)
    with pytest.raises(RollbackError):  # old size 10 above the checkpoint's 7: 400
        witness.add_checkpoint(10, [], smaller, at=AT)
    old = open_checkpoint(_cp(log, leaves), log.verifier).checkpoint
    with pytest.raises(RollbackError):
        verify_checkpoint_update(old, smaller, [], log.verifier)


def test_the_witness_never_cosigns_without_a_valid_consistency_proof(
    log: NoteSigner, witness: Witness
) -> None:
    """A witness that cosigned size 4 is asked for a fork of size 8 (the first 4 leaves
    rewritten): with the fork's own proof, with the honest tree's proof, with no proof, with
    one hash extra: 422 each time, and its state keeps size 4."""
    honest = _leaves(8)
    fork = _leaves(4, b"forged") + honest[4:]
    witness.add_checkpoint(0, [], _cp(log, honest[:4]), at=AT)
    proofs = [
        consistency_proof(MemNodes(fork), 4, 8),
        consistency_proof(MemNodes(honest), 4, 8),
        [],
        [*consistency_proof(MemNodes(honest), 4, 8), bytes(32)],
    ]
    for proof in proofs:
        with pytest.raises(ConsistencyError) as exc:
            witness.add_checkpoint(4, proof, _cp(log, fork), at=AT)
        assert http_status(exc.value) == 422
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size == 4


def test_the_time_in_a_cosignature_is_signed(log: NoteSigner, witness: Witness) -> None:
    """tlog-cosignature: the timestamp is in the signed message; changing it (to make an old
    cosignature look fresh) breaks the signature."""
    note = _cp(log, _leaves(3))
    cosig = witness.add_checkpoint(0, [], note, at=AT)
    assert struct.unpack(">Q", cosig.signature[:8])[0] == int(AT.timestamp())
    later = struct.pack(">Q", int(AT.timestamp()) + 3600) + cosig.signature[8:]
    forged = note + NoteSignature(cosig.name, cosig.key_id, later).line().encode()
    with pytest.raises(SignatureError):
        verify_checkpoint_update(None, forged, [], log.verifier, witnesses=[witness.verifier])
    past_limit = struct.pack(">Q", 1 << 63) + cosig.signature[8:]  # "MUST NOT exceed 2^63 - 1"
    forged = note + NoteSignature(cosig.name, cosig.key_id, past_limit).line().encode()
    with pytest.raises(SignatureError):
        verify_checkpoint_update(None, forged, [], log.verifier, witnesses=[witness.verifier])


# --- auditor state files ------------------------------------------------------------------------


def test_a_tampered_or_truncated_state_file_is_refused_and_not_rewritten(tmp_path: Path) -> None:
    log = _Tiles(_leaves(20), {})
    first = log.sign()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "checkpoint": first.decode()}))
    good = state.read_bytes()
    variants = {
        "truncated": good[: len(good) // 2],
        "root changed": good.replace(
            base64.b64encode(mth(_leaves(20))).decode().encode(),
            base64.b64encode(bytes(32)).decode().encode(),
        ),
        "size lowered": good.replace(b"\\n20\\n", b"\\n19\\n"),
        "extra member": json.dumps({"version": 1, "checkpoint": first.decode(), "x": 1}).encode(),
        "not UTF-8": b"\xff" + good,
    }
    for why, data in variants.items():
        state.write_bytes(data)
        with pytest.raises((ParseError, SignatureError)):
            AuditorState(state).load(log.log.verifier)
        assert state.read_bytes() == data, why


def test_a_state_file_of_another_checkpoint_signed_by_the_log_still_catches_a_fork(tmp_path: Path) -> None:
    """The state remembers a checkpoint the log signed; a later checkpoint of a rewritten tree
    (the operator rewrote every entry and re-signed) is a fork against it."""
    honest = _Tiles(_leaves(20), {})
    remembered = open_checkpoint(honest.sign(), honest.log.verifier).checkpoint
    rewritten = _leaves(20, b"rewritten") + _leaves(5)
    forged = _Tiles(rewritten, {})
    forged.log = honest.log  # the same operator, the same key
    raw = forged.sign()
    with pytest.raises(ConsistencyError, match="fork"):
        Auditor(forged, honest.log.verifier).extend(remembered, raw)
    assert forged.fetch(CHECKPOINT_PATH) == raw


def test_hostile_hash_lengths_are_refused_not_crashed() -> None:
    with pytest.raises(ConsistencyError):
        verify_consistency(1, 2, bytes(31), bytes(32), [bytes(32)])
    with pytest.raises(ConsistencyError):
        verify_consistency(1, 2, bytes(32), bytes(32), [bytes(33)])
    with pytest.raises(EntryMismatchError):
        verify_inclusion(0, 2, bytes(32), [b""], bytes(32))
    huge = [bytes(32)] * 100_000  # far too many elements: refused after one pass, no hang
    with pytest.raises(ConsistencyError, match="too many"):
        verify_consistency(3, 7, bytes(32), bytes(32), huge)


# --- the witness's own state --------------------------------------------------------------------


def test_fix_a_damaged_witness_state_is_a_storage_error_not_the_requests_fault(
    log: NoteSigner, witness: Witness
) -> None:
    """*fix*: a state file whose note for the origin no longer parses (or is another origin's)
    was a ParseError, answered 400 as if the log's request were malformed; it is the witness's
    own failure (StorageError, 500), and it cosigns nothing meanwhile."""
    leaves = _leaves(5)
    witness.add_checkpoint(0, [], _cp(log, leaves[:3]), at=AT)
    good = json.loads(witness.state_path.read_text())
    other = sign_checkpoint(Checkpoint("other.example/log", 3, mth(leaves[:3])), log)
    for damaged in ("not a note", other.decode()):
        doc = {"version": 1, "logs": {ORIGIN: damaged}}
        witness.state_path.write_text(json.dumps(doc))
        proof = consistency_proof(MemNodes(leaves), 3, 5)
        with pytest.raises(StorageError, match="witness state") as exc:
            witness.add_checkpoint(3, proof, _cp(log, leaves), at=AT)
        assert http_status(exc.value) == 500
        with pytest.raises(StorageError):
            witness.latest(ORIGIN)
    witness.state_path.write_text(json.dumps(good))
    proof = consistency_proof(MemNodes(leaves), 3, 5)
    witness.add_checkpoint(3, proof, _cp(log, leaves), at=AT)


def test_fix_a_log_cannot_fill_the_witness_state_shared_by_every_log(tmp_path: Path, log: NoteSigner) -> None:
    """*fix*: the witness kept each log's whole request note (up to 1 MiB: junk signature lines
    of unknown keys, or extension lines), and its state, shared by every log it witnesses, is
    read up to 16 MiB: a few logs of one operator filled it and the witness refused every log
    after. It keeps the text with the log's own signature only, and refuses a checkpoint text
    past MAX_CHECKPOINT_TEXT (400)."""
    signer = NoteSigner.generate("witness.example/w1", SIG_TYPE_COSIGNATURE_V1)
    witness = Witness(signer, tmp_path / "w.json", {ORIGIN: log.verifier})
    note = _cp(log, _leaves(3))
    # Signature lines of unknown keys, as many whole lines as fit a request (1 MiB).
    junk = "".join(NoteSignature(f"junk{i}", i, bytes(9000)).line() for i in range(90)).encode()
    request = note + junk[: (1 << 20) - len(note) - 200].rsplit(b"\n", 1)[0] + b"\n"
    assert len(request) > 1_000_000
    witness.add_checkpoint(0, [], request, at=AT)
    assert witness.state_path.stat().st_size < 1024
    stored = json.loads(witness.state_path.read_text())["logs"][ORIGIN]
    assert stored.encode() == note
    big = sign_checkpoint(Checkpoint(ORIGIN, 3, mth(_leaves(3)), ("x" * 1000,) * 70), log)
    with pytest.raises(ParseError, match="at most") as exc:
        witness.add_checkpoint(3, [], big, at=AT)
    assert http_status(exc.value) == 400
    stranger = sign_checkpoint(Checkpoint("other.example/log", 3, mth(_leaves(3)), ("x" * 1000,) * 70), log)
    with pytest.raises(UnknownKeyError) as unknown:  # an unknown origin is a 404 first (tlog-witness)
        witness.add_checkpoint(0, [], stranger, at=AT)
    assert http_status(unknown.value, origin_known=False) == 404
    small = sign_checkpoint(Checkpoint(ORIGIN, 3, mth(_leaves(3)), ("x" * 1000,) * 60), log)
    witness.add_checkpoint(3, [], small, at=AT)  # 60 KB of extension lines: still taken


# --- configuration an attacker can exploit ---------------------------------------------------------


def test_fix_one_witness_key_under_two_names_is_refused(log: NoteSigner, witness: Witness) -> None:
    """*fix*: tlog-cosignature's Ed25519 message does not commit to the cosigner's name, so the
    operator renames one witness's cosignature line (key ID recomputed for the other name) and
    it verifies under both: a verifier requiring "w1" and "w2", both that key, counted one
    witness as two. A key given twice is now a usage error, before anything is fetched."""
    note = _cp(log, _leaves(3))
    cosig = witness.add_checkpoint(0, [], note, at=AT)
    public = witness.verifier.public_key
    alias = NoteVerifier("witness.example/w2", SIG_TYPE_COSIGNATURE_V1, public)
    renamed = NoteSignature(alias.name, alias.key_id, cosig.signature)
    both = note + cosig.line().encode() + renamed.line().encode()
    open_note(both, [alias])  # the premise: the renamed line verifies under the other name
    with pytest.raises(UsageError, match="given twice"):
        verify_checkpoint_update(None, both, [], log.verifier, witnesses=[witness.verifier, alias])
    with pytest.raises(UsageError, match="given twice"):
        Auditor(_NoFetch(), log.verifier, witnesses=[witness.verifier, alias])
    verify_checkpoint_update(None, both, [], log.verifier, witnesses=[witness.verifier])


class _NoFetch:
    def fetch(self, path: str) -> bytes | None:
        raise AssertionError(f"fetched {path} before the witnesses were checked")


def test_fix_a_witness_takes_only_log_keys_one_per_origin(tmp_path: Path, log: NoteSigner) -> None:
    """*fix*: ``witness serve --log`` took a cosignature key (type 0x04) as a log key (the
    "log signature" then a timestamped cosignature by whoever holds it), and a second key for an
    origin silently replaced the first."""
    key_file = tmp_path / "w.key"
    key_file.write_text(NoteSigner.generate("w", SIG_TYPE_COSIGNATURE_V1).skey + "\n")
    state = tmp_path / "w.json"
    assert _make_witness(state, key_file, (log.verifier.vkey,)).logs == {ORIGIN: log.verifier}
    cosigner = NoteSigner.generate(ORIGIN, SIG_TYPE_COSIGNATURE_V1)
    with pytest.raises(UsageError, match="log key"):
        _make_witness(state, key_file, (cosigner.verifier.vkey,))
    other = NoteSigner.generate(ORIGIN)
    with pytest.raises(UsageError, match="two keys"):
        _make_witness(state, key_file, (log.verifier.vkey, other.verifier.vkey))


# --- a log that answers too slowly ------------------------------------------------------------------


class _Drip(httpx2.SyncByteStream):
    """An answer of ``chunks`` one-byte chunks, each (on the fake clock) ``pace`` seconds after
    the one before: within any read timeout, never finished in time."""

    def __init__(self, clock: list[float], chunks: int, pace: float) -> None:
        self.clock, self.chunks, self.pace, self.read = clock, chunks, pace, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.clock[0] += self.pace
            self.read += 1
            yield b"x"


def test_fix_a_log_dripping_its_answer_cannot_hold_the_auditor(monkeypatch: pytest.MonkeyPatch) -> None:
    """*fix*: the auditor's client bounded each wait for more of an answer (the read timeout)
    and its size, not its time: a hostile log sending a byte every 29 s held ``ledger verify``
    for as long as 16 MiB take at that pace (years), so it never reported anything. An answer
    now has MAX_ANSWER_TIME in all (NetworkError after that); the witness client likewise."""
    clock = [1000.0]
    monkeypatch.setattr(httpbody, "monotonic", lambda: clock[0], raising=False)
    drip = _Drip(clock, 1 << 20, 29.0)
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, stream=drip))
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    with pytest.raises(NetworkError, match=f"took more than {MAX_ANSWER_TIME:g} s"):
        client.fetch("checkpoint")
    assert drip.read == int(MAX_ANSWER_TIME // 29) + 1  # stopped at the first chunk past the time
    clock[0] = 0.0
    steady = _Drip(clock, 100, 1.0)  # 100 s in all: within the bound, read whole
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, stream=steady))
    client = HttpLogClient("http://log.test", client=httpx2.Client(transport=transport))
    assert client.fetch("checkpoint") == b"x" * 100
