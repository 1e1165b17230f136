"""Volume modes frozen at release (docs/policy.md, "Frozen at release"), on SQLite and
PostgreSQL: a tag report is judged by the mode and tag its session was released, whatever the
policies say by then, while access (the service's mount, every export link) is still checked as
of the report; sessions opened before schema 4 are judged by the current policies."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_inproc import MEASUREMENT, InProcessCas
from confide import errors
from confide.cas.core import SESSION_TTL, decrypt_release
from confide.cas.db import SCHEMA_VERSION, raw_connection, raw_execute
from confide.identity import Identity
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger

KEY = "c7" * 32
TAG0, TAG1, TAG2, TAG3 = "01" * 32, "02" * 32, "03" * 32, "04" * 32
RP, NRP, EPH = "rollback_protected", "no_rollback_protection", "ephemeral"


def hospital(
    mode: str = "",
    export: str = "",
    *,
    predecessor: str = "",
    scratch: bool = False,
    name: str = "hospital",
    mounted: bool = True,
) -> str:
    """The owner: service ``writer`` mounts ``records`` (image ``update_policy`` ``mode``; not
    at all unless ``mounted``), and with ``scratch`` a second volume of its own."""
    pred = f"predecessor: {predecessor}\n" if predecessor else ""
    image_mode = f"        update_policy: {mode}\n" if mode else ""
    scratch_vol = "  - name: scratch\n" if scratch else ""
    scratch_mount = "      - name: scratch\n        path: /data/scratch\n" if scratch else ""
    records_mount = f"      - name: records\n        path: /data/records\n{image_mode}" if mounted else ""
    return f"""name: {name}
version: "0.3"
{pred}services:
  - name: writer
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
volumes:
  - name: records
    fspf_key: {KEY}
    fspf_tag: "{TAG0}"
{export}{scratch_vol}
images:
  - name: img
    volumes:
{records_mount}{scratch_mount}
security:
  attestation:
    tolerate: [simulation]
"""


def export_to_lab(mode: str = "") -> str:
    if not mode:
        return "    export:\n      - session: lab\n"
    return f"    export:\n      - to:\n          session: lab\n        update_policy: {mode}\n"


def lab_policy(source: str = "hospital", predecessor: str = "") -> str:
    pred = f"predecessor: {predecessor}\n" if predecessor else ""
    return LAB.replace("      session: hospital\n", f"      session: {source}\n").replace(
        'version: "0.3"\n', f'version: "0.3"\n{pred}'
    )


LAB = f"""name: lab
version: "0.3"
services:
  - name: analytics
    image_name: img
    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
volumes:
  - name: input
    import:
      session: hospital
      volume: records
images:
  - name: img
    volumes:
      - name: input
        path: /in
security:
  attestation:
    tolerate: [simulation]
"""


class Env:
    """An in-process CAS on one database; each policy is created and updated by one identity."""

    def __init__(self, data_dir: Path, db_url: str | None) -> None:
        self.data_dir, self.db_url = data_dir, db_url
        self.ipc = InProcessCas.start(data_dir, "", db_url=db_url)
        self.ids: dict[str, Identity] = {}

    def restart(self) -> None:
        self.ipc.cas.db.dispose()
        self.ipc = InProcessCas.start(self.data_dir, "", db_url=self.db_url)

    def apply(self, name: str, text: str) -> str:
        ident = self.ids.setdefault(name, Identity.generate())
        return str(self.ipc.apply(text, ident).hash)

    def release(self, policy: str = "hospital", service: str = "writer") -> dict[str, Any]:
        body, key = self.ipc.request(policy=policy, service=service)
        return decrypt_release(key, self.ipc.cas.attest(body), bytes.fromhex(body["nonce"]))

    def report(self, got: dict[str, Any], old: str, new: str, policy: str = "hospital") -> dict[str, Any]:
        volume = got["volumes"][0]["name"]
        return self.ipc.cas.update_volume_tag(
            {"policy": policy, "volume": volume, "session": got["session"], "old_tag": old, "new_tag": new}
        )

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self.ipc.cas.db.read() as conn:
            return list(raw_execute(conn, sql, params).fetchall())

    def tag(self) -> tuple[str, int]:
        [(tag, generation)] = self.query(
            "SELECT tag, generation FROM volume_tags WHERE policy = 'hospital' AND volume = 'records'"
        )
        return str(tag), int(generation)

    def last_tag_event(self) -> dict[str, Any]:
        """The newest volume-tag event, checked against its ledger entry."""
        with self.ipc.cas.db.read() as conn:
            seq, payload = raw_execute(
                conn, "SELECT seq, payload FROM events WHERE type = 'volume-tag' ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            entry = Ledger.entry(raw_connection(conn), seq - 1)
        assert entry is not None
        recorded: dict[str, Any] = json.loads(payload)
        assert Entry.from_bytes(entry).payload == recorded
        return recorded


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    e = Env(tmp_path / "cas", db_url)
    yield e
    e.ipc.cas.db.dispose()


def test_the_release_freezes_mode_chain_and_tag(env: Env) -> None:
    h = env.apply("hospital", hospital(export=export_to_lab(NRP)))
    lab = env.apply("lab", LAB)
    got = env.release("lab", "analytics")
    rows = env.query(
        "SELECT volume, update_policy, owner_policy, owner_volume, chain, released_tag, "
        "released_generation, tag FROM session_volumes"
    )
    assert len(rows) == 1
    volume, mode, owner, owned, chain, released, generation, tag = rows[0]
    assert (volume, mode, owner, owned, released, generation, tag) == (
        "input",
        NRP,
        "hospital",
        "records",
        TAG0,
        0,
        TAG0,
    )
    assert json.loads(chain) == {
        "links": [
            {"policy": "lab", "volume": "input", "hash": lab},
            {"policy": "hospital", "volume": "records", "hash": h},
        ],
        "ephemeral_by": None,
    }
    assert got["volumes"][0]["update_policy"] == NRP
    [(frozen,)] = env.query("SELECT volumes_frozen FROM sessions")
    assert frozen == 1


def test_a_mode_loosened_after_release_does_not_loosen_the_session(env: Env) -> None:
    """rollback_protected at release, no_rollback_protection after: the running session still
    cannot persist a version built on an older tag; a session released after the update can."""
    h = env.apply("hospital", hospital())
    old = env.release()
    env.apply("hospital", hospital(NRP, predecessor=h))
    new = env.release()
    assert (old["volumes"][0]["update_policy"], new["volumes"][0]["update_policy"]) == (RP, NRP)
    env.report(old, TAG0, TAG1)
    event = env.last_tag_event()
    assert (event["update_policy"], event["judged_by"], event["current_update_policy"]) == (
        RP,
        "release",
        NRP,
    )
    assert event["released"]["tag"] == TAG0 and event["released"]["generation"] == 0
    with pytest.raises(errors.ConflictError, match="the current tag is 0202"):
        env.report(old, TAG0, TAG2)
    env.report(new, TAG0, TAG2)  # the new session's mode: last writer wins
    assert env.tag() == (TAG2, 2)
    event = env.last_tag_event()
    assert (event["update_policy"], event["judged_by"], event["based_on"]) == (NRP, "release", TAG0)
    assert "current_update_policy" not in event


def test_a_mode_tightened_after_release_does_not_bind_the_session(env: Env) -> None:
    """no_rollback_protection at release, rollback_protected after: the session keeps the
    mode it was started under (last writer wins); a session released after the update does not."""
    h = env.apply("hospital", hospital(NRP))
    old = env.release()
    env.apply("hospital", hospital(RP, predecessor=h))
    new = env.release()
    env.report(new, TAG0, TAG1)
    env.report(old, TAG0, TAG2)  # built on TAG0, not the current TAG1: allowed by its frozen mode
    assert env.tag() == (TAG2, 2)
    event = env.last_tag_event()
    assert (event["update_policy"], event["current_update_policy"], event["based_on"]) == (NRP, RP, TAG0)
    with pytest.raises(errors.ConflictError, match="the current tag is 0303"):
        env.report(new, TAG1, TAG3)


def test_ephemeral_is_frozen_in_both_directions(env: Env) -> None:
    h = env.apply("hospital", hospital(EPH))
    eph = env.release()
    h = env.apply("hospital", hospital(RP, predecessor=h))
    with pytest.raises(errors.AccessDeniedError, match=r"ephemeral .*\(the mode frozen at its release\)"):
        env.report(eph, TAG0, TAG1)
    assert env.tag() == (TAG0, 0)
    rp = env.release()
    env.apply("hospital", hospital(EPH, predecessor=h))
    env.report(rp, TAG0, TAG1)  # started rollback_protected: its exit report persists
    assert env.tag() == (TAG1, 1)
    assert env.last_tag_event()["current_update_policy"] == EPH
    with pytest.raises(errors.AccessDeniedError, match="ephemeral"):
        env.report(env.release(), TAG1, TAG2)


@pytest.mark.parametrize(("released", "after"), [(NRP, RP), (RP, NRP)])
def test_an_importer_keeps_the_export_mode_it_was_released(env: Env, released: str, after: str) -> None:
    h = env.apply("hospital", hospital(export=export_to_lab(released)))
    env.apply("lab", LAB)
    lab = env.release("lab", "analytics")
    env.apply("hospital", hospital(export=export_to_lab(after), predecessor=h))
    own = env.release()
    env.report(own, TAG0, TAG1)  # another writer moves the tag
    if released == NRP:
        env.report(lab, TAG0, TAG2, "lab")
        event = env.last_tag_event()
        assert (event["update_policy"], event["current_update_policy"]) == (NRP, RP)
        assert event["by"] == {"policy": "lab", "volume": "input"}
        assert [link["policy"] for link in event["released"]["chain"]] == ["lab", "hospital"]
        assert env.tag() == (TAG2, 2)
    else:
        with pytest.raises(errors.ConflictError, match="the current tag is 0202"):
            env.report(lab, TAG0, TAG2, "lab")
        assert env.tag() == (TAG1, 1)


def test_a_withdrawn_export_refuses_the_report_and_a_restored_one_allows_it(env: Env) -> None:
    """The owner's consent is checked as of the report, frozen mode or not."""
    h = env.apply("hospital", hospital(export=export_to_lab(NRP)))
    env.apply("lab", LAB)
    lab = env.release("lab", "analytics")
    h = env.apply("hospital", hospital(predecessor=h))
    with pytest.raises(errors.AccessDeniedError, match="hospital does not export volume records"):
        env.report(lab, TAG0, TAG1, "lab")
    assert env.tag() == (TAG0, 0)
    env.apply("hospital", hospital(export=export_to_lab(RP), predecessor=h))
    env.report(lab, TAG0, TAG1, "lab")
    assert env.last_tag_event()["update_policy"] == NRP  # as released, not the restored export's


def test_a_session_builds_only_on_the_tag_it_was_given(env: Env) -> None:
    """Two writers released the same tag under rollback_protected: the second cannot persist,
    neither from the tag it was given (no longer current) nor by claiming the first's."""
    env.apply("hospital", hospital())
    a, b = env.release(), env.release()
    env.report(a, TAG0, TAG1)
    with pytest.raises(errors.ConflictError, match="the current tag is 0202"):
        env.report(b, TAG0, TAG2)
    with pytest.raises(errors.ConflictError, match="this session was given tag 0101"):
        env.report(b, TAG1, TAG2)
    env.report(a, TAG1, TAG3)  # a's own last report is its base
    assert env.tag() == (TAG3, 2)
    [(base,)] = env.query(
        "SELECT s.tag FROM session_volumes s JOIN sessions USING (token_sha256) WHERE s.released_tag = ? "
        "AND s.tag <> s.released_tag",
        (TAG0,),
    )
    assert base == TAG3


@pytest.mark.parametrize("mode", [RP, NRP])
def test_concurrent_writers(env: Env, mode: str) -> None:
    """Writers released the same tag report at once: under rollback_protected exactly one
    persists; under no_rollback_protection every one does, in some order."""
    env.apply("hospital", hospital(mode))
    sessions = [env.release() for _ in range(4)]
    outcomes: list[object] = [None] * len(sessions)
    start = threading.Barrier(len(sessions))

    def writer(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = env.report(sessions[i], TAG0, f"{i + 10:02x}" * 32)["generation"]
        except errors.ConfideError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(sessions))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    won = [o for o in outcomes if isinstance(o, int)]
    if mode == RP:
        assert won == [1]
        assert all(isinstance(o, errors.ConflictError) for o in outcomes if not isinstance(o, int))
        assert env.tag()[1] == 1
    else:
        assert sorted(won) == [1, 2, 3, 4]
        assert env.tag()[1] == 4


def test_a_volume_mounted_since_a_later_version_was_not_released(env: Env) -> None:
    h = env.apply("hospital", hospital())
    got = env.release()
    env.apply("hospital", hospital(predecessor=h, scratch=True))
    with pytest.raises(errors.AccessDeniedError, match="volume scratch was not released to this session"):
        env.ipc.cas.update_volume_tag(
            {"policy": "hospital", "volume": "scratch", "session": got["session"], "old_tag": "",
             "new_tag": TAG1}
        )  # fmt: skip


def test_expired_sessions_take_their_frozen_volumes_with_them(env: Env) -> None:
    env.apply("hospital", hospital())
    env.release()
    assert len(env.query("SELECT token_sha256 FROM session_volumes")) == 1
    later = time.time() + 2 * SESSION_TTL
    env.ipc.cas.clock = lambda: later
    env.release()  # the sweep before it removes the expired session
    assert len(env.query("SELECT token_sha256 FROM sessions")) == 1
    assert env.query("SELECT token_sha256 FROM session_volumes") == env.query(
        "SELECT token_sha256 FROM sessions"
    )


def test_sessions_opened_before_schema_4_are_judged_by_the_current_policies(env: Env) -> None:
    h = env.apply("hospital", hospital())
    old = env.release()
    with env.ipc.cas.db.write() as conn:  # what a schema-3 CAS left: no frozen volumes
        raw_execute(conn, "DROP TABLE session_volumes")
        raw_execute(conn, "ALTER TABLE sessions DROP COLUMN volumes_frozen")
        raw_execute(conn, "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    env.restart()  # migrates to the current schema
    assert env.query("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert env.query("SELECT volumes_frozen FROM sessions") == [(None,)]
    assert env.query("SELECT COUNT(*) FROM session_volumes") == [(0,)]
    env.apply("hospital", hospital(NRP, predecessor=h))
    new = env.release()
    env.report(old, TAG0, TAG1)
    env.report(old, TAG0, TAG2)  # the current mode, no_rollback_protection, judges it
    event = env.last_tag_event()
    assert (event["update_policy"], event["judged_by"], event["based_on"]) == (NRP, "current", TAG0)
    assert "released" not in event
    env.report(new, TAG0, TAG3)
    assert env.last_tag_event()["judged_by"] == "release"
    assert env.tag() == (TAG3, 3)


def test_a_mount_withdrawn_from_the_image_refuses_the_report(env: Env) -> None:
    """The policy owner's way to stop a running service's changes from persisting."""
    h = env.apply("hospital", hospital(scratch=True))
    got = env.release()
    env.apply("hospital", hospital(predecessor=h, scratch=True, mounted=False))
    with pytest.raises(errors.AccessDeniedError, match="service writer does not mount volume records"):
        env.report(got, TAG0, TAG1)
    assert env.tag() == (TAG0, 0)


def test_a_chain_re_routed_to_another_owner_is_refused(env: Env) -> None:
    """lab imported hospital's records at release, then imports clinic's: the session's key is
    hospital's, so it may move neither tag."""
    env.apply("hospital", hospital(export=export_to_lab()))
    env.apply("clinic", hospital(export=export_to_lab(), name="clinic"))
    lab = env.apply("lab", lab_policy())
    got = env.release("lab", "analytics")
    env.apply("lab", lab_policy("clinic", predecessor=lab))
    with pytest.raises(
        errors.AccessDeniedError,
        match="now resolves to clinic/records, this session was released hospital/records",
    ):
        env.report(got, TAG0, TAG1, "lab")
    assert env.tag() == (TAG0, 0)
