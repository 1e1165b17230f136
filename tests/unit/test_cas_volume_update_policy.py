"""Volume update policies (SCONE ``update_policy``) enforced by the CAS: the release names each
volume's mode, the tag-update endpoint refuses ``ephemeral`` and records
``no_rollback_protection`` without compare-and-swap, and for an imported volume the exporter's
policy applies, which the importer's image may only make stricter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import MEASUREMENT, InProcessCas
from confide import errors
from confide.cas.core import decrypt_release
from confide.cas.db import raw_execute
from confide.errors import ParseError
from confide.identity import Identity
from confide.policy.model import UpdatePolicy
from confide.runtime.volumes import VolumeRelease

KEY, TAG0, TAG1, TAG2 = "c7" * 32, "01" * 32, "02" * 32, "03" * 32


def owner_policy(image_policy: str = "", export: str = "") -> str:
    mode = f"        update_policy: {image_policy}\n" if image_policy else ""
    return f"""name: hospital
version: "0.3"
services:
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
{export}
images:
  - name: img
    volumes:
      - name: records
        path: /data/records
{mode}
security:
  attestation:
    tolerate: [simulation]
"""


def export_to_lab(mode: str = "") -> str:
    if not mode:
        return "    export:\n      - session: lab\n"
    return f"    export:\n      - to:\n          session: lab\n        update_policy: {mode}\n"


def importer_policy(image_policy: str = "") -> str:
    mode = f"        update_policy: {image_policy}\n" if image_policy else ""
    return f"""name: lab
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
{mode}
security:
  attestation:
    tolerate: [simulation]
"""


def release(ipc: InProcessCas, policy: str, service: str) -> dict[str, Any]:
    body, key = ipc.request(policy=policy, service=service)
    return decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))


def report(ipc: InProcessCas, policy: str, volume: str, session: str, old: str, new: str) -> dict[str, Any]:
    return ipc.cas.update_volume_tag(
        {"policy": policy, "volume": volume, "session": session, "old_tag": old, "new_tag": new}
    )


def current_tag(ipc: InProcessCas) -> tuple[str, int]:
    with ipc.cas.db.read() as conn:
        row = raw_execute(
            conn, "SELECT tag, generation FROM volume_tags WHERE policy = 'hospital' AND volume = 'records'"
        ).fetchone()
    return str(row[0]), int(row[1])


def events(ipc: InProcessCas, type_: str) -> list[dict[str, Any]]:
    with ipc.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


@pytest.fixture
def ipc(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas")


def test_strictness_order() -> None:
    e, rp, nrp = UpdatePolicy.EPHEMERAL, UpdatePolicy.ROLLBACK_PROTECTED, UpdatePolicy.NO_ROLLBACK_PROTECTION
    assert UpdatePolicy.strictest(nrp, e, rp) is e
    assert UpdatePolicy.strictest(nrp, rp) is rp
    assert UpdatePolicy.strictest(nrp) is nrp
    assert UpdatePolicy.strictest() is rp


def test_default_is_rollback_protected_with_compare_and_swap(ipc: InProcessCas) -> None:
    ipc.apply(owner_policy())
    got = release(ipc, "hospital", "writer")
    assert got["volumes"][0]["update_policy"] == "rollback_protected"
    assert report(ipc, "hospital", "records", got["session"], TAG0, TAG1)["generation"] == 1
    with pytest.raises(errors.ConflictError, match="the current tag is 0202"):
        report(ipc, "hospital", "records", got["session"], TAG0, TAG2)
    assert current_tag(ipc) == (TAG1, 1)
    # the ledger entry of the release names the mode, never the key
    [rel] = events(ipc, "secret-release")
    assert rel["volumes"] == [
        {"name": "records", "tag": TAG0, "generation": 0, "update_policy": "rollback_protected"}
    ]
    assert KEY not in json.dumps(rel)


def test_an_ephemeral_volume_tag_update_is_refused(ipc: InProcessCas) -> None:
    ipc.apply(owner_policy("ephemeral"))
    got = release(ipc, "hospital", "writer")
    [vol] = got["volumes"]
    assert (vol["tag"], vol["update_policy"]) == (TAG0, "ephemeral")
    # a runtime that reports anyway (tampered with) cannot persist: the CAS refuses
    with pytest.raises(
        errors.AccessDeniedError,
        match=r"volume records is ephemeral for service writer \(update_policy of its image\)",
    ):
        report(ipc, "hospital", "records", got["session"], TAG0, TAG1)
    assert current_tag(ipc) == (TAG0, 0)
    assert [e["generation"] for e in events(ipc, "volume-tag")] == [0]
    assert events(ipc, "secret-release")[0]["volumes"][0]["update_policy"] == "ephemeral"


def test_no_rollback_protection_records_any_reported_tag(ipc: InProcessCas) -> None:
    ipc.apply(owner_policy("no_rollback_protection"))
    got = release(ipc, "hospital", "writer")
    assert got["volumes"][0]["update_policy"] == "no_rollback_protection"
    assert report(ipc, "hospital", "records", got["session"], TAG0, TAG1)["generation"] == 1
    # started from an older version (TAG0, not the current TAG1): recorded all the same
    assert report(ipc, "hospital", "records", got["session"], TAG0, TAG2)["generation"] == 2
    assert current_tag(ipc) == (TAG2, 2)
    last = events(ipc, "volume-tag")[-1]
    assert (last["previous"], last["based_on"], last["update_policy"]) == (
        TAG1,
        TAG0,
        "no_rollback_protection",
    )


@pytest.mark.parametrize("mode", ["no_rollback_protection", "rollback_protected"])
def test_a_tag_update_during_an_attestation(ipc: InProcessCas, mode: str) -> None:
    """A tag update between the two phases of an attestation: phase 2 reads the tag again, and
    the release carries the tag as of its commit (under every mode)."""
    ipc.apply(owner_policy(mode))
    first = release(ipc, "hospital", "writer")
    body, key = ipc.request(policy="hospital", service="writer")
    pending = ipc.cas.attest_begin(body)
    report(ipc, "hospital", "records", first["session"], TAG0, TAG1)
    with ipc.cas.db.write() as conn:
        pending.commit(conn)
    assert pending.rendered_at_commit
    got = decrypt_release(key, pending.result(), bytes.fromhex(body["nonce"]))
    assert got["volumes"][0]["tag"] == TAG1


def test_an_exporters_ephemeral_binds_the_importer(ipc: InProcessCas) -> None:
    ipc.apply(owner_policy(export=export_to_lab("ephemeral")), Identity.generate())
    ipc.apply(importer_policy("rollback_protected"), Identity.generate())
    got = release(ipc, "lab", "analytics")
    [vol] = got["volumes"]
    assert (vol["update_policy"], vol["owner"]) == ("ephemeral", {"policy": "hospital", "volume": "records"})
    with pytest.raises(errors.AccessDeniedError, match="update_policy of the export by hospital"):
        report(ipc, "lab", "input", got["session"], TAG0, TAG1)
    assert current_tag(ipc) == (TAG0, 0)
    # the exporter's own service is not bound by what it exports: its image has no mode
    own = release(ipc, "hospital", "writer")
    assert own["volumes"][0]["update_policy"] == "rollback_protected"
    assert report(ipc, "hospital", "records", own["session"], TAG0, TAG1)["generation"] == 1


@pytest.mark.parametrize(
    ("exported", "imported", "effective"),
    [
        ("", "", "rollback_protected"),
        ("", "no_rollback_protection", "rollback_protected"),
        ("", "ephemeral", "ephemeral"),
        ("no_rollback_protection", "", "no_rollback_protection"),
        ("no_rollback_protection", "rollback_protected", "rollback_protected"),
        ("rollback_protected", "no_rollback_protection", "rollback_protected"),
        ("ephemeral", "no_rollback_protection", "ephemeral"),
    ],
)
def test_the_importer_may_only_make_the_export_stricter(
    ipc: InProcessCas, exported: str, imported: str, effective: str
) -> None:
    ipc.apply(owner_policy(export=export_to_lab(exported)), Identity.generate())
    ipc.apply(importer_policy(imported), Identity.generate())
    got = release(ipc, "lab", "analytics")
    assert got["volumes"][0]["update_policy"] == effective
    if effective == "ephemeral":
        source = "the export by hospital" if exported == "ephemeral" else "its image"
        with pytest.raises(errors.AccessDeniedError, match=f"update_policy of {source}"):
            report(ipc, "lab", "input", got["session"], TAG0, TAG1)
    else:
        report(ipc, "lab", "input", got["session"], TAG0, TAG1)
        if effective == "no_rollback_protection":
            assert report(ipc, "lab", "input", got["session"], TAG0, TAG2)["generation"] == 2
        else:
            with pytest.raises(errors.ConflictError):
                report(ipc, "lab", "input", got["session"], TAG0, TAG2)


def test_the_runtime_reads_the_mode_from_the_release() -> None:
    item = {"name": "v", "path": "/v", "key": KEY, "tag": TAG0}
    assert VolumeRelease.from_config(item).update_policy is UpdatePolicy.ROLLBACK_PROTECTED
    assert VolumeRelease.from_config(item).expected_tag == TAG0
    nrp = VolumeRelease.from_config({**item, "update_policy": "no_rollback_protection"})
    assert nrp.expected_tag is None  # any authentic version
    eph = VolumeRelease.from_config({**item, "update_policy": "ephemeral"})
    assert eph.expected_tag == TAG0
    for bad in ("", "EPHEMERAL", 3, None, ["ephemeral"]):
        with pytest.raises(ParseError):
            VolumeRelease.from_config({**item, "update_policy": bad})
