"""Hostile review of 2026-12-07: ``ledger verify --max-age`` judged at the time a checkpoint is read
(not at the audit's start), a quiet log's stored cosignature never replaced by an older one (a
replayed answer), attacks on freshness that are refused already, and a malformed
``CONFIDE_CAS_SPKI``. Time is injected."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest
from _ledger_ref import MemNodes
from click.testing import CliRunner

from confide import errors
from confide.cas.client import CasClient
from confide.ledger.auditor import LocalLogClient, verify_checkpoint_update, verify_log
from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.cli import ledger
from confide.ledger.freshness import Freshness
from confide.ledger.merkle import consistency_proof, mth
from confide.ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    Note,
    NoteSignature,
    NoteSigner,
    cosignature_message,
    parse_note,
)
from confide.ledger.store import Ledger, connect, write_transaction
from confide.ledger.witness import Witness
from confide.ledger.witness_http import request_cosignatures
from pki import self_signed_pem

ORIGIN = "cas.example/log"
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _witness(tmp_path: Path, log: NoteSigner, name: str = "w1.example") -> Witness:
    return Witness(
        NoteSigner.generate(name, SIG_TYPE_COSIGNATURE_V1), tmp_path / f"{name}.json", {ORIGIN: log.verifier}
    )


def _log_db(path: Path, log: NoteSigner, n: int) -> Any:
    conn = connect(path)
    Ledger.init_schema(conn)
    with write_transaction(conn):
        Ledger().append_batch(conn, [b"e" + i.to_bytes(4, "big") for i in range(n)])
    Ledger().sign_checkpoint(conn, log)
    return conn


def _cosign_stored(conn: Any, w: Witness, at: datetime) -> None:
    note = Ledger.latest_checkpoint(conn)
    assert note is not None
    bare = parse_note(note)
    size = Checkpoint.from_text(bare.text).size
    latest = w.latest(ORIGIN)
    sig = w.add_checkpoint(0 if latest is None else latest.size, [], note, at=at)
    kept = tuple(s for s in bare.signatures if s.name != w.verifier.name)
    with write_transaction(conn):
        Ledger.store_checkpoint_note(conn, size, Note(bare.text, (*kept, sig)).to_bytes())


class MovingTime(datetime):
    """``datetime`` whose ``now`` reads ``times`` one after the other (the last one stays):
    the CLI's clock as a wait for the state file's lock (or a long listing) passes."""

    times: ClassVar[list[datetime]] = []

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> MovingTime:  # type: ignore[override]
        at = cls.times.pop(0) if len(cls.times) > 1 else cls.times[0]
        return cls.fromtimestamp(at.timestamp(), tz)


@pytest.mark.parametrize(
    ("cosigned", "passes"),
    [
        # made while the audit waited (2 min after its start): not a cosignature "from the future"
        (T0 + timedelta(minutes=2) - timedelta(seconds=5), True),
        # 59 min old at the start, 69 min when read: --max-age 1h does not stretch by the wait
        (T0 - timedelta(minutes=59), False),
    ],
)
def test_cli_max_age_judges_a_checkpoint_when_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cosigned: datetime, passes: bool
) -> None:
    log = NoteSigner.generate(ORIGIN)
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 3)
    _cosign_stored(conn, w, cosigned)
    conn.close()
    # the clock reads T0 when the options are read, then T0 + 2 min (or + 10) once the log is read
    later = T0 + (timedelta(minutes=2) if passes else timedelta(minutes=10))
    monkeypatch.setattr(MovingTime, "times", [T0, later])
    monkeypatch.setattr("confide.ledger.cli.datetime", MovingTime)
    args = ["verify", "--log-db", str(tmp_path / "log.db"), "--key", log.verifier.vkey]
    result = CliRunner().invoke(ledger, [*args, "--witness", w.verifier.vkey, "--max-age", "1h"])
    if passes:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == errors.FreshnessError.exit_code, result.output
        assert "69 min old" in result.output


def test_a_given_now_stays_the_time_of_every_check(tmp_path: Path) -> None:
    """The SDK's ``now=`` (no clock): every checkpoint is judged at it, as before."""
    log = NoteSigner.generate(ORIGIN)
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 3)
    _cosign_stored(conn, w, T0)
    fixed = Freshness(T0 + HOUR, HOUR)
    assert fixed.renewed() is fixed
    assert (
        verify_log(LocalLogClient(conn), log.verifier, None, witnesses=[w.verifier], freshness=fixed).size
        == 3
    )


def test_a_fresh_cosignature_cannot_be_carried_to_an_old_checkpoint(tmp_path: Path) -> None:
    """Attack: the log serves its old checkpoint (size 3) with a fresh cosignature line taken
    from the new one (size 5), and a second line of the witness with another timestamp. The
    line is a signature over another text: refused (a SignatureError, not a fresh pass)."""
    log = NoteSigner.generate(ORIGIN)
    w = _witness(tmp_path, log)
    old_leaves = [bytes([i]) for i in range(3)]
    new_leaves = [bytes([i]) for i in range(5)]
    old = sign_checkpoint(Checkpoint(ORIGIN, 3, mth(old_leaves)), log)
    old_sig = w.add_checkpoint(0, [], old, at=T0)
    new = sign_checkpoint(Checkpoint(ORIGIN, 5, mth(new_leaves)), log)
    new_sig = w.add_checkpoint(3, consistency_proof(MemNodes(new_leaves), 3, 5), new, at=T0 + 2 * HOUR)
    forged = old + old_sig.line().encode() + new_sig.line().encode()
    with pytest.raises(errors.SignatureError):
        verify_checkpoint_update(
            None, forged, [], log.verifier, witnesses=[w.verifier], freshness=Freshness(T0 + 2 * HOUR, HOUR)
        )
    # the old checkpoint with its own (old) cosignature only: stale
    with pytest.raises(errors.FreshnessError, match="checkpoint 3"):
        verify_checkpoint_update(
            None, old + old_sig.line().encode(), [], log.verifier, witnesses=[w.verifier],
            freshness=Freshness(T0 + 2 * HOUR, HOUR),
        )  # fmt: skip


@pytest.mark.parametrize("stamp", [0, 2**63 - 1, 2**63, 2**64 - 1])
def test_extreme_timestamps_are_refused_with_a_one_line_reason(tmp_path: Path, stamp: int) -> None:
    """Timestamps are unsigned 64-bit (no negative one) and signed by the witness's key: zero is
    old, 2^63 - 1 "in the future" (a year past 9999 in the message, no crash); from 2^63 on
    (tlog-cosignature allows none) the line does not verify: a SignatureError."""
    log = NoteSigner.generate(ORIGIN)
    signer = NoteSigner.generate("w1.example", SIG_TYPE_COSIGNATURE_V1)
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, mth([b"x"])), log)
    text = parse_note(note).text
    raw = struct.pack(">Q", stamp) + signer._key.sign(cosignature_message(text, stamp))
    line = NoteSignature(signer.verifier.name, signer.verifier.key_id, raw).line().encode()
    expected = errors.SignatureError if stamp >= 2**63 else errors.FreshnessError
    with pytest.raises(expected) as caught:
        verify_checkpoint_update(
            None, note + line, [], log.verifier, witnesses=[signer.verifier], freshness=Freshness(T0, HOUR)
        )
    assert "\n" not in caught.value.message
    if expected is errors.FreshnessError:
        assert ("after now" in caught.value.message) == (stamp > 0)


def _replaying_witness(answer: bytes) -> httpx2.Client:
    """A witness (or whoever is on the path to it) that answers ``answer`` to every request."""
    return httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(200, content=answer)))


def test_a_replayed_older_cosignature_does_not_replace_the_newer_one(tmp_path: Path) -> None:
    """A quiet log's checkpoint is cosigned again every minute: the witness's earlier answer
    verifies again. Replayed, it must not replace the newer cosignature stored (the log would
    look stale to ``--max-age`` verifiers); a newer one still replaces it."""
    log = NoteSigner.generate(ORIGIN)
    w = _witness(tmp_path, log)
    conn = _log_db(tmp_path / "log.db", log, 3)
    note = Ledger.latest_checkpoint(conn)
    assert note is not None
    text = parse_note(note).text
    older = w.add_checkpoint(0, [], note, at=T0)
    newer = w.add_checkpoint(3, [], note, at=T0 + HOUR)
    _replay = request_cosignatures  # the log's client, as the CAS's checkpointer calls it
    _replay(
        conn, "http://w.example", w.verifier, client=_replaying_witness(newer.line().encode()), old_size=3
    )
    _replay(
        conn, "http://w.example", w.verifier, client=_replaying_witness(older.line().encode()), old_size=3
    )

    def stored_stamp() -> int:
        stored = Ledger.checkpoint_note(conn, 3)
        assert stored is not None and parse_note(stored).text == text
        (sig,) = [s for s in parse_note(stored).signatures if s.name == w.verifier.name]
        return int.from_bytes(sig.signature[:8], "big")

    assert stored_stamp() == int((T0 + HOUR).timestamp())
    newest = w.add_checkpoint(3, [], note, at=T0 + 2 * HOUR)
    _replay(
        conn, "http://w.example", w.verifier, client=_replaying_witness(newest.line().encode()), old_size=3
    )
    assert stored_stamp() == int((T0 + 2 * HOUR).timestamp())


@pytest.mark.parametrize("pin", ["   ", "sha256:" + "ab" * 32, "ab" * 31, "zz" * 32, "ab" * 33])
def test_a_malformed_cas_pin_is_a_usage_error_before_anything(tmp_path: Path, pin: str) -> None:
    """A ``CONFIDE_CAS_SPKI`` that cannot be a key's SHA-256: a UsageError naming it (a blank
    one pinned nothing before; a mistyped one was reported as another CAS's certificate)."""
    cert = self_signed_pem(tmp_path / "cas.pem", "cas")
    env = {"CONFIDE_CAS_URL": "https://127.0.0.1:9", "CONFIDE_CAS_CERT": str(cert), "CONFIDE_CAS_SPKI": pin}
    with pytest.raises(errors.UsageError, match="CONFIDE_CAS_SPKI: got"):
        CasClient.from_env(env)
    # unset or empty: not pinned (the environment names its CAS), as documented
    CasClient.from_env({**env, "CONFIDE_CAS_SPKI": ""}).close()
