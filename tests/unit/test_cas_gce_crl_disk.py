"""``cas serve --gce-crl fetch`` across restarts: the fetched CRLs kept on disk
(``DATA_DIR/gce-crl-cache``) and the rollback memory (``DATA_DIR/gce-crl-newest.json``). A
restarted fetcher (a new ``GceCrlFetcher`` on the same files) still refuses an older CRL, verifies
with its cached CRLs while the points are unreachable (the source injected behind its one-method
interface), and treats both files as hostile: a tampered, foreign, expired or rolled-back cached
CRL is not used (removed or left, and fetched again), a rollback memory that does not parse
stops the start; two writers never leave a torn file. Time is the attestation's ``at``."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_cas_gce_crl_fetch import AT, CHAIN, GOOGLE, INT_URL, ROOT_URL, Points, _der

from confide import errors
from confide.cas.gce_crl import (
    CACHE_DIR_NAME,
    MAX_STATE_SIZE,
    NEWEST_ENTRIES,
    STATE_NAME,
    GceCrlFetcher,
    HttpCrlSource,
    RollbackMemory,
    crl_scope,
    gce_crl_source,
)
from confide.cas.secrets import Sealer
from confide.cas.server import prepare
from confide.verify.gce_crl import load_crls


class Offline:
    """A source with no network: every fetch fails, and is counted."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.asked.append(url)
        raise errors.NetworkError(f"GET {url}: ConnectError: no route to host")


SEALER = Sealer(bytes(32))  # the master key the rollback memory is MAC'd under (a CAS's)


def _fetcher(tmp_path: Path, points: Points | Offline) -> GceCrlFetcher:
    """A fetcher on the files in ``tmp_path``, its rollback memory authenticated as a CAS's start
    does (no ledger here: see test_cas_gce_crl_auth)."""
    files = {"directory": tmp_path / CACHE_DIR_NAME, "state": tmp_path / STATE_NAME}
    if isinstance(points, Offline):
        fetcher = GceCrlFetcher(source=points, **files)
    else:
        fetcher = GceCrlFetcher(transport=httpx2.MockTransport(points.handler), **files)
    fetcher.newest.authenticate(SEALER, None)
    return fetcher


def _cached(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / CACHE_DIR_NAME).glob("*.crl"))


def _int_file(tmp_path: Path) -> Path:
    """The cache file of the intermediate's CRL (the AK certificate's)."""
    (path,) = [
        p
        for p in _cached(tmp_path)
        if load_crls(p.read_bytes(), "t")[0].issuer == GOOGLE.intermediate.subject
    ]
    return path


def test_a_restarted_fetcher_still_refuses_the_older_crl(tmp_path: Path) -> None:
    newer = Points(AT, number=7)
    _fetcher(tmp_path, newer).crls(CHAIN, AT)
    state = json.loads((tmp_path / STATE_NAME).read_text())
    assert len(state["crls"]) == 2 and {e["crl_number"] for e in state["crls"].values()} == {"1", "7"}
    # a restart, the cache emptied: the points (a network attacker) answer an older CRL of the
    # issuer, signed and still current (from before a revocation)
    for path in _cached(tmp_path):
        path.unlink()
    later = AT + timedelta(days=3)
    old = GOOGLE.crl(
        revoked=[], this_update=AT - timedelta(days=2), next_update=AT + timedelta(days=30), number=6
    )
    points = Points(later)
    points.answers[INT_URL] = (200, _der(old))
    with pytest.raises(errors.CollateralError, match="older than that of a CRL of this issuer seen before"):
        _fetcher(tmp_path, points).crls(CHAIN, later)
    # a later thisUpdate with a lower CRL number is refused too
    lower = GOOGLE.crl(
        this_update=later - timedelta(hours=1), next_update=later + timedelta(days=1), number=3
    )
    points.answers[INT_URL] = (200, _der(lower))
    with pytest.raises(errors.CollateralError, match=r"CRL number 0x3 is lower than .*\(0x7\)"):
        _fetcher(tmp_path, points).crls(CHAIN, later)
    # the newer one of the points is taken, and raises the memory on disk
    points.answers = Points(later, number=8).answers
    crls = _fetcher(tmp_path, points).crls(CHAIN, later)
    assert crls[0].last_update_utc == later - timedelta(days=1)
    memory = RollbackMemory(tmp_path / STATE_NAME)
    newest = memory.get(crl_scope(crls[0], GOOGLE.intermediate))
    assert newest is not None and (newest.this_update, newest.crl_number) == (later - timedelta(days=1), 8)


@pytest.mark.parametrize("number", [1 << 160, 1 << 200])
def test_a_crl_number_the_memory_cannot_hold_is_refused(tmp_path: Path, number: int) -> None:
    """RFC 5280 §5.2.3 bounds the CRL number to 20 octets, and so does the file's parser: a CRL
    beyond it is refused, not written into a memory the next start could not read."""
    points = Points(AT, number=number)
    with pytest.raises(errors.ParseError, match="cRLNumber: expected a non-negative integer"):
        _fetcher(tmp_path, points).crls(CHAIN, AT)
    RollbackMemory(tmp_path / STATE_NAME)  # parses


def test_without_the_rollback_memory_or_a_ledger_the_first_crl_is_trusted(tmp_path: Path) -> None:
    """A fetcher without its file and without a ledger to restore it from (a fresh data directory
    and database): trust on first use. A CAS restores a deleted file from its ledger
    (test_cas_gce_crl_auth)."""
    _fetcher(tmp_path, Points(AT, number=7)).crls(CHAIN, AT)
    (tmp_path / STATE_NAME).unlink()
    for path in _cached(tmp_path):
        path.unlink()
    later = AT + timedelta(days=3)
    old = GOOGLE.crl(this_update=AT - timedelta(days=2), next_update=AT + timedelta(days=30), number=6)
    points = Points(later)
    points.answers[INT_URL] = (200, _der(old))
    assert _fetcher(tmp_path, points).crls(CHAIN, later)[0].last_update_utc == AT - timedelta(days=2)


def test_cached_crls_verify_after_a_restart_without_network(tmp_path: Path) -> None:
    points = Points(AT)
    first = _fetcher(tmp_path, points).crls(CHAIN, AT)
    assert len(_cached(tmp_path)) == 2
    assert {p.read_bytes() for p in _cached(tmp_path)} == {body for _, body in points.answers.values()}
    assert {oct(p.stat().st_mode & 0o777) for p in _cached(tmp_path)} == {"0o600"}
    offline = Offline()
    restarted = _fetcher(tmp_path, offline)
    assert restarted.cached(CHAIN, AT) is None  # memory is empty: the disk is read in a fetch
    crls = restarted.crls(CHAIN, AT + timedelta(hours=12))
    assert [_der(c) for c in crls] == [_der(c) for c in first]
    assert offline.asked == [] and restarted.requests_made == 0 and restarted.rejected_files == 0
    assert restarted.cached(CHAIN, AT + timedelta(hours=12)) == crls
    # without the cache, the same restart verifies nothing
    with pytest.raises(errors.NetworkError, match="no route to host"):
        GceCrlFetcher(source=Offline(), directory=tmp_path / "empty").crls(CHAIN, AT)


@pytest.mark.parametrize("damage", ["signature", "truncated", "garbage", "foreign", "two", "oversized"])
def test_a_tampered_cached_crl_is_ignored_and_fetched_again(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    points = Points(AT)
    _fetcher(tmp_path, points).crls(CHAIN, AT)
    path = _int_file(tmp_path)
    good = path.read_bytes()
    foreign = GOOGLE.crl(
        key=ec.generate_private_key(ec.SECP384R1()),
        this_update=AT - timedelta(days=1),
        next_update=AT + timedelta(days=1),
    )
    path.write_bytes(
        {
            "signature": good[:-1] + bytes([good[-1] ^ 1]),
            "truncated": good[: len(good) // 2],
            "garbage": b"\x00" * 100,
            "foreign": _der(foreign),
            "two": good + good,
            "oversized": good + b"\x00" * (1024 * 1024),
        }[damage]
    )
    # no network: the tampered file is not used, and nothing else verifies
    offline = Offline()
    with caplog.at_level(logging.WARNING, logger="confide.cas"), pytest.raises(errors.NetworkError):
        _fetcher(tmp_path, offline).crls(CHAIN, AT)
    assert offline.asked == [INT_URL] and not path.exists()
    assert any("gce-crl-cache-rejected" in r.getMessage() for r in caplog.records)
    # tampered again, with the points reachable: fetched again, and the file replaced
    path.write_bytes(b"\x30\x03\x02\x01\x00")
    points.asked.clear()
    restarted = _fetcher(tmp_path, points)
    assert _der(restarted.crls(CHAIN, AT)[0]) == good
    assert points.asked == [INT_URL] and restarted.rejected_files == 1 and path.read_bytes() == good


def test_an_expired_cached_crl_is_not_used(tmp_path: Path) -> None:
    _fetcher(tmp_path, Points(AT)).crls(CHAIN, AT)  # nextUpdate AT + 1 day
    later = AT + timedelta(days=2)
    offline = Offline()
    with pytest.raises(errors.NetworkError):
        _fetcher(tmp_path, offline).crls(CHAIN, later)
    assert offline.asked == [INT_URL]
    before = AT - timedelta(days=2)  # before its thisUpdate: not used either
    offline.asked.clear()
    with pytest.raises(errors.NetworkError):
        _fetcher(tmp_path, offline).crls(CHAIN, before)
    assert offline.asked == [INT_URL] and len(_cached(tmp_path)) == 2  # left in place
    points = Points(later)
    fresh = _fetcher(tmp_path, points).crls(CHAIN, later)
    assert points.asked == [INT_URL, ROOT_URL]
    assert {p.read_bytes() for p in _cached(tmp_path)} == {_der(c) for c in fresh}


def test_a_cached_crl_older_than_the_memory_is_a_rollback(tmp_path: Path) -> None:
    """An older genuine CRL put in the cache (a restored backup, an attacker with write access to
    the directory but not the memory) is refused and removed, as from the points."""
    _fetcher(tmp_path, Points(AT, number=7)).crls(CHAIN, AT)
    path = _int_file(tmp_path)
    old = GOOGLE.crl(this_update=AT - timedelta(days=2), next_update=AT + timedelta(days=30), number=6)
    path.write_bytes(_der(old))
    offline = Offline()
    restarted = _fetcher(tmp_path, offline)
    with pytest.raises(errors.NetworkError):
        restarted.crls(CHAIN, AT)
    assert restarted.rejected_files == 1 and not path.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "expected"),
        (b'{"v": 3, "crls": {}}', "expected"),
        (b'{"v": 1, "crls": {}, "macs": {}}', "expected"),
        (b'{"v": 2, "crls": {}, "macs": {"a": "b"}}', "macs: expected key id"),
        (b'{"v": 2, "crls": {}, "macs": []}', "macs: expected key id"),
        (b'{"v": true, "crls": {}}', "expected"),
        (b'{"v": 1.0, "crls": {}}', "expected"),
        (b'{"v": 1, "crls": {}, "x": 1}', "expected"),
        (b'{"v": 1, "v": 1, "crls": {}}', "a key given twice"),
        (b'{"v": 1, "crls": {"x": {}}}', "not 64 lower-case hex digits"),
        (b'{"v": 1, "crls": {"%s": {"this_update": "2026-01-01T00:00:00Z"}}}' % (b"a" * 64), "expected"),
        (
            b'{"v": 1, "crls": {"%s": {"this_update": "2026-13-01T00:00:00Z", "crl_number": null}}}'
            % (b"a" * 64),
            "not a date",
        ),
        (
            b'{"v": 1, "crls": {"%s": {"this_update": "2026-01-01 00:00:00", "crl_number": null}}}'
            % (b"a" * 64),
            "this_update",
        ),
        (
            b'{"v": 1, "crls": {"%s": {"this_update": "2026-01-01T00:00:00Z", "crl_number": 5}}}'
            % (b"a" * 64),
            "crl_number",
        ),
        (
            b'{"v": 1, "crls": {"%s": {"this_update": "2026-01-01T00:00:00Z", "crl_number": "%s"}}}'
            % (b"a" * 64, b"f" * 41),
            "crl_number",
        ),
        (b'{"v": NaN, "crls": {}}', "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (MAX_STATE_SIZE + 1), f"more than {MAX_STATE_SIZE} bytes"),
    ],
)
def test_a_rollback_memory_that_does_not_parse_stops_the_start(
    tmp_path: Path, content: bytes, message: str
) -> None:
    state = tmp_path / STATE_NAME
    state.write_bytes(content)
    with pytest.raises(errors.ParseError, match=message) as info:
        RollbackMemory(state)
    assert "deleting it makes the CAS take the newest CRLs its ledger recorded" in str(info.value)
    assert "\n" not in str(info.value)


def test_too_many_remembered_scopes_do_not_parse(tmp_path: Path) -> None:
    entry = {"this_update": "2026-01-01T00:00:00Z", "crl_number": None}
    state = tmp_path / STATE_NAME
    crls = {format(i, "064x"): entry for i in range(NEWEST_ENTRIES)}
    state.write_text(json.dumps({"v": 1, "crls": crls}))
    assert len(RollbackMemory(state)) == NEWEST_ENTRIES
    crls[format(NEWEST_ENTRIES, "064x")] = entry
    state.write_text(json.dumps({"v": 1, "crls": crls}))
    with pytest.raises(errors.ParseError, match=f"at most {NEWEST_ENTRIES} entries"):
        RollbackMemory(state)


def test_a_rollback_memory_that_is_not_a_regular_file_stops_the_start(tmp_path: Path) -> None:
    state = tmp_path / STATE_NAME
    os.mkfifo(state)
    with pytest.raises(errors.StorageError, match="not a regular file"):
        RollbackMemory(state)


def test_the_cas_keeps_them_in_its_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "cas"
    source = gce_crl_source("fetch", data_dir)
    assert isinstance(source, GceCrlFetcher)
    assert source.files.directory == data_dir / CACHE_DIR_NAME and source.newest.path == data_dir / STATE_NAME
    data_dir.mkdir()
    (data_dir / STATE_NAME).write_text('{"v": 1}')
    with pytest.raises(errors.ParseError, match="rollback memory"):
        prepare(data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None, gce_crl="fetch")
    # refused before any key or database state is made (since 2026-12-07)
    assert [p.name for p in data_dir.iterdir()] == [STATE_NAME]


def test_a_memory_that_cannot_be_written_is_kept_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher = GceCrlFetcher(
        transport=httpx2.MockTransport(Points(AT).handler), state=tmp_path / "missing" / STATE_NAME
    )
    fetcher.newest.authenticate(SEALER, None)
    with caplog.at_level(logging.WARNING, logger="confide.cas"):
        crls = fetcher.crls(CHAIN, AT)
    assert any("gce-crl-newest-not-written" in r.getMessage() for r in caplog.records)
    assert fetcher.newest.get(crl_scope(crls[0], GOOGLE.intermediate)) is not None


def test_two_writers_never_leave_a_torn_file(tmp_path: Path) -> None:
    """Two fetchers on the same files (as two processes would be) each fetch a newer CRL, hour
    by hour, while a reader checks that every file it reads is one whole CRL of the issuer, and
    every rollback memory it reads parses; no temporary file is left."""
    rounds = 12
    errors_seen: list[BaseException] = []
    done = threading.Event()

    def points_at(hour: int) -> Points:
        at = AT + timedelta(hours=hour)
        points = Points(at)
        window = {"this_update": at - timedelta(minutes=1), "next_update": at + timedelta(minutes=30)}
        points.answers[INT_URL] = (200, _der(GOOGLE.crl(number=hour + 1, **window)))  # type: ignore[arg-type]
        points.answers[ROOT_URL] = (200, _der(GOOGLE.crl("root", number=hour + 1, **window)))  # type: ignore[arg-type]
        return points

    def writer() -> None:
        # one fetcher each, for all rounds (two processes): each memory is its own
        fetcher = _fetcher(tmp_path, Points(AT))
        try:
            for hour in range(rounds):
                fetcher.source = HttpCrlSource(transport=httpx2.MockTransport(points_at(hour).handler))
                fetcher.crls(CHAIN, AT + timedelta(hours=hour))
        except BaseException as exc:  # reported by the main thread
            errors_seen.append(exc)

    def reader() -> None:
        reads = 0
        try:
            while not done.is_set() or reads == 0:
                for path in _cached(tmp_path):
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue  # pruned or replaced between the listing and the read
                    (crl,) = load_crls(data, "read")
                    assert crl.issuer in (GOOGLE.intermediate.subject, GOOGLE.root.subject)
                    reads += 1
                if (tmp_path / STATE_NAME).exists():
                    RollbackMemory(tmp_path / STATE_NAME)
        except BaseException as exc:  # reported by the main thread
            errors_seen.append(exc)

    writers = [threading.Thread(target=writer) for _ in range(2)]
    read = threading.Thread(target=reader)
    read.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    done.set()
    read.join(60)
    assert errors_seen == []
    assert len(_cached(tmp_path)) == 2
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []
    last = [load_crls(p.read_bytes(), "t")[0] for p in _cached(tmp_path)]
    assert {c.last_update_utc for c in last} == {AT + timedelta(hours=rounds - 1, minutes=-1)}
    memory = RollbackMemory(tmp_path / STATE_NAME)
    issuers = {GOOGLE.intermediate.subject: GOOGLE.intermediate, GOOGLE.root.subject: GOOGLE.root}
    for crl in last:
        newest = memory.get(crl_scope(crl, issuers[crl.issuer]))
        assert newest is not None and newest.crl_number == rounds
