"""Entry salts (docs/ledger.md "Entries"): the CAS's entries are version 2, each with a fresh
salt, so a leaf hash in the public level-0 tiles cannot be confirmed by one who guesses the
rest of the entry (docs/limitations.md, "## CAS"); readers of a policy get the salt with the
entry and verify its inclusion as before."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import submission
from confide import errors
from confide.cas.audit import verified_events
from confide.cas.core import READ_TYPE, Cas, sign_document
from confide.cas.db import raw_connection, raw_execute
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.server import prepare
from confide.identity import Identity
from confide.ledger.encoding import ENTRY_VERSION, SALT_SIZE, Entry, EntryType
from confide.ledger.merkle import HASH_SIZE, hash_leaf
from confide.ledger.note import NoteSigner
from confide.ledger.serve import serve
from confide.ledger.store import Ledger
from confide.ledger.tiles import TileId

# The salts the CAS draws, fixed here so that no test outcome depends on random bytes.
SALT = bytes(range(0x40, 0x40 + SALT_SIZE))


def _fixed(n: int) -> bytes:
    return (SALT * (n // SALT_SIZE + 1))[:n]


def _policy(name: str) -> str:
    return f'name: {name}\nversion: "0.3"\n'


def _read(cas: Cas, name: str, who: Identity) -> dict[str, Any]:
    body = {"type": READ_TYPE, "name": name, "nonce": cas.new_read_nonce(name, "events"),
            "cas": cas.tls_spki_sha256, "route": "events"}  # fmt: skip
    return sign_document(body, who.sign, who.public.public_base64)


class _Answer:
    """A CasClient's ``events`` answered with a fixed (possibly tampered) reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply

    def events(self, name: str, identity: Identity) -> dict[str, Any]:
        return self.reply


@pytest.fixture
def started(tmp_path: Path) -> tuple[Cas, NoteSigner]:
    cas, _evidence, _key, _cert, _env, signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    assert isinstance(cas.events, LedgerEventSink)
    cas.events.random = _fixed
    return cas, signer


def _public_leaves(cas: Cas, signer: NoteSigner) -> tuple[bytes, list[bytes]]:
    """What anyone can fetch: a freshly signed checkpoint and the level-0 tile's hashes."""
    with cas.db.write() as conn:
        note = Ledger().sign_checkpoint(raw_connection(conn), signer)
    with cas.db.read() as conn:
        raw = raw_connection(conn)
        size = Ledger.size(raw)
        assert size < 256  # one partial tile holds every leaf
        tile = serve(raw, TileId(0, 0, size).path)
    assert tile is not None
    return note, [tile.body[i : i + HASH_SIZE] for i in range(0, len(tile.body), HASH_SIZE)]


def _stored(cas: Cas, event: str) -> tuple[int, bytes]:
    with cas.db.read() as conn:
        seq = raw_execute(conn, "SELECT seq FROM events WHERE type = ?", (event,)).fetchone()[0]
        entry = Ledger.entry(raw_connection(conn), seq - 1)
    assert entry is not None
    return seq - 1, entry


def test_a_refused_submission_cannot_be_confirmed_from_its_tile(started: tuple[Cas, NoteSigner]) -> None:
    """The refused caller knows everything in its refusal's entry but the salt: its signer, the
    two filings (under the name if the policy exists, under the namespace if not), and, granted
    here, the exact time. No guess matches the public tile; the entry itself does."""
    cas, signer = started
    alice, mallory = Identity.generate(), Identity.generate()
    cas.apply(submission(cas, _policy("acme"), alice))
    cas.apply(submission(cas, _policy("acme/secret-project"), alice))
    with pytest.raises(errors.AccessDeniedError) as refused:
        cas.apply(submission(cas, _policy("acme/secret-project"), mallory))
    index, stored = _stored(cas, "policy-update-refused")
    note, leaves = _public_leaves(cas, signer)
    assert leaves[index] == hash_leaf(stored)

    entry = Entry.from_bytes(stored)
    assert (entry.version, entry.salt) == (ENTRY_VERSION, SALT)
    # everything but the salt is what mallory guesses
    assert (entry.type, entry.policy, entry.payload) == (
        EntryType.POLICY_REFUSED, "acme/secret-project", {"signer": mallory.fingerprint}
    )  # fmt: skip
    filings = [
        ("acme/secret-project", {"signer": mallory.fingerprint}),  # the policy exists
        ("acme", {"signer": mallory.fingerprint, "name": "acme/secret-project"}),  # it does not
    ]
    guesses = [
        Entry(EntryType.POLICY_REFUSED, entry.time, policy, payload, salt).to_bytes()
        for policy, payload in filings
        for salt in (None, bytes(SALT_SIZE), b"\xff" * SALT_SIZE, SALT[::-1])  # unsalted, or guessed
    ]
    assert not {hash_leaf(g) for g in guesses} & set(leaves)
    # the same guess with the salt (which only the entry's readers get) is the entry
    assert Entry(EntryType.POLICY_REFUSED, entry.time, *filings[0], SALT).to_bytes() == stored
    # nothing public carries the salt: the refusal, the checkpoint, the tile
    for public in (refused.value.message.encode(), note, b"".join(leaves)):
        assert SALT.hex().encode() not in public and SALT not in public


def test_readers_verify_salted_entries_and_a_changed_salt_breaks_the_proof(
    started: tuple[Cas, NoteSigner],
) -> None:
    """``confide ledger history|accesses`` (verified_events): the CAS answers a reader with the
    entries, salts included; each is proven included in the signed checkpoint. The same answer
    with one salt changed (payload, type and time as recorded) fails its inclusion proof."""
    cas, signer = started
    alice = Identity.generate()
    cas.apply(submission(cas, _policy("team"), alice))
    cas.apply(submission(cas, _policy("team/db"), alice))
    _public_leaves(cas, signer)  # a checkpoint covering them
    reply = cas.events_for(_read(cas, "team/db", alice))
    assert reply["events"]
    _, events = verified_events(_Answer(reply), "team/db", alice, signer.verifier)  # type: ignore[arg-type]
    assert [e.included for e in events] == [True] * len(events)
    for ev in reply["events"]:
        assert Entry.from_bytes(base64.b64decode(ev["entry"])).salt == SALT

    first = reply["events"][0]
    entry = Entry.from_bytes(base64.b64decode(first["entry"]))
    other = Entry(entry.type, entry.time, entry.policy, entry.payload, bytes(SALT_SIZE))
    tampered = {**reply, "events": [{**first, "entry": base64.b64encode(other.to_bytes()).decode()}]}
    with pytest.raises(errors.EntryMismatchError, match="inclusion"):
        verified_events(_Answer(tampered), "team/db", alice, signer.verifier)  # type: ignore[arg-type]
    unsalted = Entry(entry.type, entry.time, entry.policy, entry.payload, None)  # the salt removed
    stripped = {**reply, "events": [{**first, "entry": base64.b64encode(unsalted.to_bytes()).decode()}]}
    with pytest.raises(errors.EntryMismatchError, match="inclusion"):
        verified_events(_Answer(stripped), "team/db", alice, signer.verifier)  # type: ignore[arg-type]
    # the untampered answer still verifies (the twin of the two refusals above)
    verified_events(_Answer(reply), "team/db", alice, signer.verifier)  # type: ignore[arg-type]


def test_each_entry_of_a_change_gets_its_own_salt(tmp_path: Path) -> None:
    """The salts of one change's entries are drawn at once and cut in SALT_SIZE pieces: with
    the operating system's randomness (the default), no two entries share one."""
    cas, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    alice = Identity.generate()
    for name in ("a", "a/b", "a/c"):
        cas.apply(submission(cas, _policy(name), alice))
    with cas.db.read() as conn:
        raw = raw_connection(conn)
        entries = [Entry.from_bytes(data) for _, data in Ledger.entries(raw, 0, Ledger.size(raw))]
    salts = [e.salt for e in entries]
    assert len(salts) >= 4 and all(s is not None and len(s) == SALT_SIZE for s in salts)
    assert len(set(salts)) == len(salts)  # 16-byte draws: a collision has probability ~2**-120
