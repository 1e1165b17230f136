"""Volumes exported by one policy and imported by another (SCONE ``volumes[].export`` /
``volumes[].import``): the importer's service gets the exporter's key and current tag, and its
tag updates move the exporter's tag, so both stakeholders see one fresh volume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import MEASUREMENT, InProcessCas
from confide import errors
from confide.cas.core import decrypt_release
from confide.cas.db import raw_execute
from confide.identity import Identity

KEY, TAG0 = "ab" * 32, "01" * 32


def exporter(export: str, *, predecessor: str = "") -> str:
    return f"""name: hospital
version: "0.3"
{predecessor}
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
security:
  attestation:
    tolerate: [simulation]
"""


def importer(pin: str = "") -> str:
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
{pin}
images:
  - name: img
    volumes:
      - name: input
        path: /in
security:
  attestation:
    tolerate: [simulation]
"""


EXPORT_TO_LAB = "    export:\n      - session: lab\n"


def head(ipc: InProcessCas, name: str) -> str:
    with ipc.cas.db.read() as conn:
        return str(raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()[0])


def release(ipc: InProcessCas, policy: str, service: str) -> dict[str, Any]:
    body, key = ipc.request(policy=policy, service=service)
    return decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))


@pytest.fixture
def ipc(tmp_path: Path) -> InProcessCas:
    return InProcessCas.start(tmp_path / "cas")


def test_the_importer_gets_the_exporters_volume_and_moves_its_tag(ipc: InProcessCas) -> None:
    hospital, lab = Identity.generate(), Identity.generate()
    ipc.apply(exporter(EXPORT_TO_LAB), hospital)
    ipc.apply(importer(), lab)
    got = release(ipc, "lab", "analytics")
    [vol] = got["volumes"]
    assert (vol["name"], vol["path"], vol["key"], vol["tag"]) == ("input", "/in", KEY, TAG0)
    assert vol["owner"] == {"policy": "hospital", "volume": "records"}
    # the lab's service writes and reports the new tag under its own name for the volume
    tag1 = "02" * 32
    done = ipc.cas.update_volume_tag(
        {"policy": "lab", "volume": "input", "session": got["session"], "old_tag": TAG0, "new_tag": tag1}
    )
    assert done["generation"] == 1
    # the hospital's own service now gets the new tag: one freshness chain for both
    [own] = release(ipc, "hospital", "writer")["volumes"]
    assert (own["key"], own["tag"]) == (KEY, tag1) and "owner" not in own
    # an update from the old state is refused, for either stakeholder
    with pytest.raises(errors.ConflictError):
        ipc.cas.update_volume_tag(
            {
                "policy": "lab",
                "volume": "input",
                "session": got["session"],
                "old_tag": TAG0,
                "new_tag": "03" * 32,
            }
        )
    # the change is in the exporter's events, naming who made it
    with ipc.cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT policy, payload FROM events WHERE type = 'volume-tag' ORDER BY seq"
        ).fetchall()
    assert [r[0] for r in rows] == ["hospital", "hospital"]
    assert json.loads(rows[-1][1])["by"] == {"policy": "lab", "volume": "input"}


def test_a_volume_not_exported_to_the_importer_is_refused(ipc: InProcessCas) -> None:
    ipc.apply(exporter("    export:\n      - session: someone-else\n"))
    ipc.apply(importer())
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(
        errors.AccessDeniedError, match="does not export volume records to this version of lab"
    ):
        ipc.cas.attest(body)


def test_a_pinned_exporter_version_must_be_current(ipc: InProcessCas) -> None:
    ipc.apply(exporter(EXPORT_TO_LAB))
    ipc.apply(importer(f'      session_hash: "{"00" * 32}"\n'))
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(errors.AccessDeniedError, match="the import pins 0000"):
        ipc.cas.attest(body)


def test_an_export_pinned_to_the_importers_version_and_its_withdrawal(ipc: InProcessCas) -> None:
    hospital, lab = Identity.generate(), Identity.generate()
    ipc.apply(importer(), lab)
    lab_hash = head(ipc, "lab")
    pinned = f'    export:\n      - to:\n          session: lab\n          session_hash: "{lab_hash}"\n'
    ipc.apply(exporter(pinned), hospital)
    assert release(ipc, "lab", "analytics")["volumes"][0]["key"] == KEY
    # the hospital withdraws the export: the lab's next attestation gets nothing
    update = exporter("", predecessor=f"predecessor: {head(ipc, 'hospital')}")
    ipc.apply(update, hospital)
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(errors.AccessDeniedError, match="does not export volume records"):
        ipc.cas.attest(body)


def test_importing_a_missing_policy_or_volume_is_refused(ipc: InProcessCas) -> None:
    ipc.apply(importer())
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(errors.AccessDeniedError, match="policy hospital does not exist"):
        ipc.cas.attest(body)
    ipc.apply(exporter(EXPORT_TO_LAB).replace("name: records", "name: other"))
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(errors.AccessDeniedError, match="has no volume records"):
        ipc.cas.attest(body)


def current_tag(ipc: InProcessCas) -> tuple[str, int]:
    with ipc.cas.db.read() as conn:
        row = raw_execute(
            conn, "SELECT tag, generation FROM volume_tags WHERE policy = 'hospital' AND volume = 'records'"
        ).fetchone()
    return str(row[0]), int(row[1])


def test_an_update_that_keeps_the_declared_tag_keeps_the_current_tag(ipc: InProcessCas) -> None:
    """The owner's policy update that changes something else (here: an export) and keeps its
    ``fspf_tag`` must not set the volume back to that declared tag: the services' newer tag
    stays current (else the current copy is refused and the old one accepted). A newly
    declared tag is adopted."""
    hospital = Identity.generate()
    ipc.apply(exporter(""), hospital)
    got = release(ipc, "hospital", "writer")
    tag1 = "02" * 32
    ipc.cas.update_volume_tag(
        {
            "policy": "hospital",
            "volume": "records",
            "session": got["session"],
            "old_tag": TAG0,
            "new_tag": tag1,
        }
    )
    assert current_tag(ipc) == (tag1, 1)
    ipc.apply(exporter(EXPORT_TO_LAB, predecessor=f"predecessor: {head(ipc, 'hospital')}"), hospital)
    assert current_tag(ipc) == (tag1, 1)
    assert release(ipc, "hospital", "writer")["volumes"][0]["tag"] == tag1
    # the owner declares another tag (e.g. a version it sealed itself): adopted
    tag2 = "04" * 32
    redeclared = exporter(EXPORT_TO_LAB, predecessor=f"predecessor: {head(ipc, 'hospital')}").replace(
        TAG0, tag2
    )
    ipc.apply(redeclared, hospital)
    assert current_tag(ipc) == (tag2, 2)
