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
from confide.cas.secrets import SecretValue
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
    with pytest.raises(
        errors.AccessDeniedError,
        match=r"at the version the import pins \(0000000000000000…\) does not export volume records",
    ):
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
    with pytest.raises(
        errors.AccessDeniedError, match="hospital does not export volume records to this version of lab"
    ):
        ipc.cas.attest(body)
    ipc.apply(exporter(EXPORT_TO_LAB).replace("name: records", "name: other"))
    body, _ = ipc.request(policy="lab", service="analytics")
    with pytest.raises(
        errors.AccessDeniedError, match="hospital does not export volume records to this version of lab"
    ):
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


def keyed_exporter(secret: str, *, export: str = EXPORT_TO_LAB, predecessor: str = "") -> str:
    """The exporter with ``fspf_key: $$SCONE::k$$`` and ``secret`` (k's fields) declaring k."""
    text = exporter(export, predecessor=f"predecessor: {predecessor}" if predecessor else "")
    text = text.replace(f"    fspf_key: {KEY}\n", '    fspf_key: "$$SCONE::k$$"\n')
    return text.replace("volumes:\n", f"secrets:\n  - name: k\n{secret}volumes:\n", 1)


def test_a_volume_key_given_as_a_placeholder_is_that_secrets_value(ipc: InProcessCas) -> None:
    """``fspf_key: $$SCONE::k$$`` (docs/policy.md): the volume's key is the policy's binary
    secret k, for its own services and for importers, and follows k when an update gives k a
    new value; a secret of another size, or an imported one, is refused."""
    hospital = Identity.generate()
    explicit, other = "5a" * 32, "a5" * 32
    ipc.apply(keyed_exporter(f"    kind: binary\n    value: {explicit}\n"), hospital)
    ipc.apply(importer())
    assert release(ipc, "hospital", "writer")["volumes"][0]["key"] == explicit
    assert release(ipc, "lab", "analytics")["volumes"][0]["key"] == explicit
    # k changes (the owner sealed the volume anew under another key): the volume follows
    update = keyed_exporter(f"    kind: binary\n    value: {other}\n", predecessor=head(ipc, "hospital"))
    ipc.apply(update, hospital)
    assert release(ipc, "hospital", "writer")["volumes"][0]["key"] == other
    assert release(ipc, "lab", "analytics")["volumes"][0]["key"] == other
    # a generated k of 16 bytes is no AES-256 key: the update is refused, nothing changes
    before = head(ipc, "hospital")
    with pytest.raises(errors.PolicyError, match="16-byte secret, expected 32 bytes"):
        ipc.apply(keyed_exporter("    kind: binary\n    size: 16\n", predecessor=before), hospital)
    assert head(ipc, "hospital") == before
    assert release(ipc, "hospital", "writer")["volumes"][0]["key"] == other
    # an imported k is refused (the key must not change under the owner when k's exporter
    # changes it)
    clinic = keyed_exporter("    import:\n      session: hospital\n      secret: k\n")
    with pytest.raises(errors.PolicyError, match="names an imported secret"):
        ipc.apply(clinic.replace("name: hospital", "name: clinic", 1))


def test_a_volume_key_generated_before_the_placeholder_was_honoured_is_kept(ipc: InProcessCas) -> None:
    """A volume whose key the CAS generated at random while its ``fspf_key`` already named a
    secret (before that was honoured) keeps it across updates that keep the placeholder: data
    its services sealed stays readable (docs/limitations.md)."""
    hospital = Identity.generate()
    ipc.apply(keyed_exporter("    kind: binary\n    size: 32\n", export=""), hospital)
    # What the CAS stored before the fix: a random key, no key_from.
    legacy = SecretValue("volume-key", bytes.fromhex("3c" * 32))
    sealed = ipc.cas.sealer.seal(legacy, policy="hospital", name="volume/records", version=1)
    meta = json.dumps({"kind": "volume-key", "declared_key_sha256": None})
    with ipc.cas.db.write() as conn:
        raw_execute(
            conn,
            "UPDATE secrets SET sealed = ?, public = ? WHERE policy = 'hospital' AND name = 'volume/records'",
            (sealed, meta),
        )
    update = keyed_exporter("    kind: binary\n    size: 32\n", predecessor=head(ipc, "hospital"))
    ipc.apply(update, hospital)  # another export, the same placeholder
    assert release(ipc, "hospital", "writer")["volumes"][0]["key"] == "3c" * 32
