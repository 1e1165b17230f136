"""Two versions pending on the same predecessor, their last approvals sent at once: exactly
one becomes active, the other turns stale and its approvals never count (docs/cas.md
"Policies and governance"), on SQLite and on PostgreSQL (the CAS write lock serialises them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas_inproc import InProcessCas, submission
from confide import errors
from confide.cas.core import APPROVAL_TYPE, sign_document
from confide.cas.db import raw_execute
from confide.identity import Identity


@pytest.fixture(params=["sqlite", "postgresql"])
def cas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProcessCas]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    ipc = InProcessCas.start(tmp_path / "cas", "", db_url=db_url)
    try:
        yield ipc
    finally:
        ipc.cas.db.dispose()


def test_racing_board_approvals_activate_exactly_one_version(cas: InProcessCas) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    head = f'name: race\nversion: "0.3"\naccess_policy:\n  update:\n    require-all: [{alice.fingerprint}, {bob.fingerprint}]\n'
    first = cas.cas.apply(submission(cas.cas, head, alice))
    pending = [
        cas.cas.apply(
            submission(
                cas.cas,
                head + f"predecessor: {first.hash}\nsecrets:\n  - name: s{i}\n    kind: ascii\n",
                alice,
            )
        )
        for i in range(2)
    ]
    assert [p.state for p in pending] == ["pending", "pending"]
    approvals = [
        sign_document(
            {"type": APPROVAL_TYPE, "name": "race", "hash": p.hash, "cas": cas.cas.tls_spki_sha256},
            bob.sign,
            bob.public.public_base64,
        )
        for p in pending
    ]
    results: list[object] = [None, None]
    start = threading.Barrier(2)

    def approve(i: int) -> None:
        start.wait()
        try:
            results[i] = cas.cas.approve(approvals[i]).state
        except errors.ConflictError as exc:
            results[i] = exc

    threads = [threading.Thread(target=approve, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(type, results), key=str) == sorted([str, errors.ConflictError], key=str), results
    winner = results.index("active")
    loser = 1 - winner
    with cas.cas.db.read() as conn:
        states = dict(raw_execute(conn, "SELECT hash, state FROM policies WHERE name = 'race'").fetchall())
        current = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = 'race'").fetchone()[0]
    assert current == pending[winner].hash
    assert states == {first.hash: "superseded", pending[winner].hash: "active", pending[loser].hash: "stale"}
    # The stale version's approval, sent again, counts for nothing.
    with pytest.raises(errors.ConflictError, match="is stale, not pending"):
        cas.cas.approve(approvals[loser])
