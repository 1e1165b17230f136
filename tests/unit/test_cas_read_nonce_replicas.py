"""Read nonces on replicas of one PostgreSQL database (docs/cas.md "Reading a policy"): the
replicas share the master key, so a nonce one issued is valid at the other, and its spend is
one ``INSERT ... ON CONFLICT DO NOTHING`` on the shared ``nonces`` table, so the same signed
request sent to both at once is served by exactly one. The replicas' clocks differ: a spent
nonce's row is kept ``SWEEP_GRACE`` past its expiry, so a replica ahead does not sweep a row
that one behind still needs (nor does one CAS whose clock steps back)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cas_read_binding import POLICY, read_request

from cas_inproc import InProcessCas
from confide import errors
from confide.cas.core import NONCE_TTL, SWEEP_GRACE
from confide.cas.db import raw_execute
from confide.cas.master_key import PLAIN_NAME
from confide.identity import Identity


@pytest.fixture
def replicas(tmp_path: Path, postgres: Any) -> Iterator[tuple[InProcessCas, InProcessCas, Identity]]:
    db_url = postgres.new_database()
    owner = Identity.generate()
    a = InProcessCas.start(tmp_path / "a", "", db_url=db_url)
    try:
        (tmp_path / "b").mkdir(mode=0o700)
        (tmp_path / "b" / PLAIN_NAME).write_bytes((tmp_path / "a" / PLAIN_NAME).read_bytes())
        b = InProcessCas.start(tmp_path / "b", "", db_url=db_url)
        try:
            a.apply(POLICY, owner)
            yield a, b, owner
        finally:
            b.cas.db.dispose()
    finally:
        a.cas.db.dispose()


def test_one_request_sent_to_two_replicas_at_once_is_served_once(
    replicas: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    a, b, owner = replicas
    # Replicas behind one name that serve one certificate (its key copied to each data
    # directory): a request for one is a request for the other. (With a key of its own, a
    # replica refuses the other's requests as another CAS's.)
    b.cas.tls_spki_sha256 = a.cas.tls_spki_sha256
    for _ in range(5):  # each round a new request, sent to both replicas at the same moment
        doc = read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show")
        start = threading.Barrier(2)
        outcomes: list[str] = []

        def read(replica: InProcessCas, doc: dict[str, Any] = doc, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                outcomes.append(replica.cas.show(doc)["name"])
            except errors.AccessDeniedError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=read, args=(r,)) for r in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == 2 and outcomes.count("shared") == 1, outcomes
        assert "served before" in next(o for o in outcomes if o != "shared"), outcomes
    # A nonce issued by one replica is good at the other (the same key), once.
    doc = read_request(owner, b.cas, cas=a.cas.tls_spki_sha256, route="events")
    assert a.cas.events_for(doc)["events"]
    with pytest.raises(errors.AccessDeniedError, match="served before"):
        b.cas.events_for(doc)


def test_a_replica_whose_clock_is_ahead_does_not_sweep_a_nonce_the_other_still_accepts(
    replicas: tuple[InProcessCas, InProcessCas, Identity],
) -> None:
    """Replicas' clocks differ a little: the one ahead sweeps the spent nonces' rows by its own
    clock, while the other still accepts those nonces by their MAC'd expiry on its clock. A
    row is kept for a grace period past its nonce's expiry, so a request served by the replica
    behind is not served again there once the replica ahead has swept (fails without it: the
    row gone, the replay was served)."""
    a, b, owner = replicas
    now = time.time()
    b.cas.clock = lambda: now
    doc = read_request(owner, b.cas, cas=b.cas.tls_spki_sha256, route="show")  # for b, to b
    assert b.cas.show(doc)["name"] == "shared"
    # a, 5 s ahead of b, spends a nonce of its own just past the first one's expiry (it sweeps)
    a.cas.clock = lambda: now + NONCE_TTL + 1
    assert a.cas.show(read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show"))
    b.cas.clock = lambda: now + NONCE_TTL - 4
    with pytest.raises(errors.AccessDeniedError, match="served before"):
        b.cas.show(doc)
    # Once past the grace too, the row goes; the request stays refused by its nonce's expiry.
    a.cas.clock = lambda: now + NONCE_TTL + SWEEP_GRACE + 2
    assert a.cas.show(read_request(owner, a.cas, cas=a.cas.tls_spki_sha256, route="show"))
    with a.cas.db.read() as conn:
        assert raw_execute(conn, "SELECT 1 FROM nonces WHERE nonce = ?", (doc["nonce"],)).fetchone() is None
    b.cas.clock = lambda: now + NONCE_TTL + 1
    with pytest.raises(errors.AccessDeniedError, match="read nonce has expired"):
        b.cas.show(doc)


def test_a_clock_stepped_back_does_not_serve_a_request_again(tmp_path: Path) -> None:
    """One CAS whose clock steps back (an NTP correction) after it swept: as for two replicas."""
    owner = Identity.generate()
    cas = InProcessCas.start(tmp_path / "cas", "")
    cas.apply(POLICY, owner)
    now = time.time()
    cas.cas.clock = lambda: now
    doc = read_request(owner, cas.cas, cas=cas.cas.tls_spki_sha256, route="show")
    cas.cas.show(doc)
    cas.cas.clock = lambda: now + NONCE_TTL + 3
    cas.cas.show(read_request(owner, cas.cas, cas=cas.cas.tls_spki_sha256, route="show"))  # sweeps
    cas.cas.clock = lambda: now + NONCE_TTL - 1
    with pytest.raises(errors.AccessDeniedError, match="served before"):
        cas.cas.show(doc)
