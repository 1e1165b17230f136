"""Volumes re-exported along a chain of policies (docs/cas.md, "Volumes shared between
policies"): an importer exports the volume it imported, and the CAS follows the imports to the
owner. Every link is checked at every release and tag update, the links' ``update_policy``
values compose to the strictest, and a cycle or a chain over ``MAX_VOLUME_CHAIN`` links is
refused with ``PolicyError``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cas_inproc import MEASUREMENT, InProcessCas, refused
from confide import errors
from confide.cas.core import MAX_VOLUME_CHAIN, OPAQUE_TAG_REFUSAL, decrypt_release
from confide.cas.db import raw_execute
from confide.identity import Identity
from confide.policy.loader import loads_policy

KEY, TAG0, TAG1, TAG2 = "5e" * 32, "01" * 32, "02" * 32, "03" * 32


@dataclass
class Link:
    """One policy of a chain: its volume (own, or imported from ``source``, a (policy, volume)
    pair), the policies it exports the volume to, and its image's ``update_policy``."""

    name: str
    volume: str
    source: tuple[str, str] | None = None
    pin: str | None = None  # the import's session_hash
    exports: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # to, pin, mode
    image_mode: str | None = None

    def export(self, to: str, pin: str | None = None, mode: str | None = None) -> Link:
        self.exports.append((to, pin, mode))
        return self

    def yaml(self, predecessor: str | None = None) -> str:
        lines = [f"name: {self.name}", 'version: "0.3"']
        if predecessor:
            lines.append(f"predecessor: {predecessor}")
        lines += [
            "services:",
            "  - name: svc",
            "    image_name: img",
            "    command: svc",
            "    attestation:",
            "      sim:",
            f'        measurement: "{MEASUREMENT}"',
            "volumes:",
            f"  - name: {self.volume}",
        ]
        if self.source is None:
            lines += [f"    fspf_key: {KEY}", f'    fspf_tag: "{TAG0}"']
        else:
            lines += ["    import:", f"      session: {self.source[0]}", f"      volume: {self.source[1]}"]
            if self.pin:
                lines.append(f'      session_hash: "{self.pin}"')
        if self.exports:
            lines.append("    export:")
        for to, pin, mode in self.exports:
            if mode is None:  # SCONE's first form, {session, session_hash}
                lines.append(f"      - session: {to}")
                if pin:
                    lines.append(f'        session_hash: "{pin}"')
            else:
                lines += ["      - to:", f"          session: {to}"]
                if pin:
                    lines.append(f'          session_hash: "{pin}"')
                lines.append(f"        update_policy: {mode}")
        lines += [
            "images:",
            "  - name: img",
            "    volumes:",
            f"      - name: {self.volume}",
            "        path: /v",
        ]
        if self.image_mode:
            lines.append(f"        update_policy: {self.image_mode}")
        lines += ["security:", "  attestation:", "    tolerate: [simulation]", ""]
        return "\n".join(lines)


class Chain:
    """Policies applied to an in-process CAS, each by an identity of its own (kept for updates)."""

    def __init__(self, ipc: InProcessCas) -> None:
        self.ipc = ipc
        self.identities: dict[str, Identity] = {}

    def apply(self, *links: Link) -> None:
        for link in links:
            known = link.name in self.identities
            identity = self.identities.setdefault(link.name, Identity.generate())
            self.ipc.apply(link.yaml(self.head(link.name) if known else None), identity)

    def head(self, name: str) -> str:
        with self.ipc.cas.db.read() as conn:
            row = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def request(self, name: str) -> tuple[dict[str, Any], Any]:
        return self.ipc.request(policy=name, service="svc")

    def release(self, name: str) -> dict[str, Any]:
        body, key = self.request(name)
        return decrypt_release(key, self.ipc.cas.attest(body), bytes.fromhex(body["nonce"]))

    def refused(self, name: str, error: type[errors.ConfideError], match: str) -> Any:
        body, _ = self.request(name)
        return refused(self.ipc.cas, body, error, match)

    def report(self, name: str, volume: str, session: str, old: str, new: str) -> dict[str, Any]:
        return self.ipc.cas.update_volume_tag(
            {"policy": name, "volume": volume, "session": session, "old_tag": old, "new_tag": new}
        )

    def events(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        with self.ipc.cas.db.read() as conn:
            rows = raw_execute(
                conn, "SELECT policy, payload FROM events WHERE type = ? ORDER BY seq", (kind,)
            ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def tag(self, owner: str, volume: str) -> tuple[str, int]:
        with self.ipc.cas.db.read() as conn:
            row = raw_execute(
                conn,
                "SELECT tag, generation FROM volume_tags WHERE policy = ? AND volume = ?",
                (owner, volume),
            ).fetchone()
        return str(row[0]), int(row[1])


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return Chain(InProcessCas.start(tmp_path / "cas"))


def abc(*, a_mode: str | None = None, b_mode: str | None = None) -> tuple[Link, Link, Link]:
    """hospital owns records and exports them to lab, which imports them as input and
    re-exports input to audit, which imports it as evidence."""
    a = Link("hospital", "records").export("lab", mode=a_mode)
    b = Link("lab", "input", ("hospital", "records")).export("audit", mode=b_mode)
    c = Link("audit", "evidence", ("lab", "input"))
    return a, b, c


def test_a_two_link_chain_resolves_to_the_owner_and_shares_one_tag(chain: Chain) -> None:
    chain.apply(*abc())
    got = chain.release("audit")
    [vol] = got["volumes"]
    assert (vol["name"], vol["path"], vol["key"], vol["tag"]) == ("evidence", "/v", KEY, TAG0)
    assert vol["owner"] == {"policy": "hospital", "volume": "records"}
    assert vol["via"] == [{"policy": "lab", "volume": "input"}]
    assert vol["update_policy"] == "rollback_protected"
    # the release's ledger entry makes the chain auditable, and never holds the key
    policy, entry = chain.events("secret-release")[-1]
    assert policy == "audit"
    assert entry["volumes"] == [
        {"name": "evidence", "owner": {"policy": "hospital", "volume": "records"},
         "via": [{"policy": "lab", "volume": "input"}], "tag": TAG0, "generation": 0,
         "update_policy": "rollback_protected"}
    ]  # fmt: skip
    assert KEY not in json.dumps(entry)
    # the last importer's report moves the owner's tag, filed under the owner, naming who and how
    assert chain.report("audit", "evidence", got["session"], TAG0, TAG1)["generation"] == 1
    assert chain.tag("hospital", "records") == (TAG1, 1)
    owner, event = chain.events("volume-tag")[-1]
    assert owner == "hospital"
    assert event["by"] == {"policy": "audit", "volume": "evidence"}
    assert event["via"] == [{"policy": "lab", "volume": "input"}]
    assert (event["volume"], event["tag"], event["previous"]) == ("records", TAG1, TAG0)
    # one freshness chain: the owner and the middle importer see the new tag, and an update
    # from the old one is refused whoever sends it
    [own] = chain.release("hospital")["volumes"]
    assert (own["key"], own["tag"]) == (KEY, TAG1) and "owner" not in own
    middle = chain.release("lab")
    [mid] = middle["volumes"]
    assert (mid["key"], mid["tag"], mid["owner"]) == (KEY, TAG1, {"policy": "hospital", "volume": "records"})
    assert "via" not in mid
    with pytest.raises(errors.ConflictError, match="the current tag is 0202"):
        chain.report("lab", "input", middle["session"], TAG0, TAG2)
    chain.report("lab", "input", middle["session"], TAG1, TAG2)
    assert chain.release("audit")["volumes"][0]["tag"] == TAG2


def test_a_three_link_chain_names_every_re_exporter_in_order(chain: Chain) -> None:
    a, b, c = abc()
    c.export("archive")
    d = Link("archive", "copy", ("audit", "evidence"))
    chain.apply(a, b, c, d)
    got = chain.release("archive")
    [vol] = got["volumes"]
    assert (vol["key"], vol["tag"], vol["owner"]) == (KEY, TAG0, {"policy": "hospital", "volume": "records"})
    assert vol["via"] == [{"policy": "lab", "volume": "input"}, {"policy": "audit", "volume": "evidence"}]
    chain.report("archive", "copy", got["session"], TAG0, TAG1)
    assert chain.tag("hospital", "records") == (TAG1, 1)
    # no tag of its own anywhere on the chain: the importers have none
    assert {(r[0], r[1]["volume"]) for r in chain.events("volume-tag")} == {("hospital", "records")}
    assert chain.release("audit")["volumes"][0]["tag"] == TAG1


def test_a_middle_link_that_stops_exporting_cuts_off_the_end_of_the_chain(chain: Chain) -> None:
    a, b, c = abc()
    chain.apply(a, b, c)
    session = chain.release("audit")["session"]
    b.exports.clear()
    chain.apply(b)
    # the next tag update and the next release of the last importer are refused ...
    with pytest.raises(
        errors.AccessDeniedError, match="lab does not export volume input to this version of audit"
    ):
        chain.report("audit", "evidence", session, TAG0, TAG1)
    assert chain.tag("hospital", "records") == (TAG0, 0)
    chain.refused("audit", errors.AccessDeniedError, "via lab/input|lab does not export volume input")
    # ... while the middle importer, still exported to, keeps its access
    assert chain.release("lab")["volumes"][0]["key"] == KEY
    # the owner withdrawing its export cuts off everyone behind it
    b.export("audit")
    a.exports.clear()
    chain.apply(b, a)
    err = chain.refused(
        "audit", errors.AccessDeniedError, "hospital does not export volume records to this version of lab"
    )
    assert "volume import evidence of audit via lab/input" in err.message
    chain.refused("lab", errors.AccessDeniedError, "hospital does not export volume records")


def test_an_update_of_a_link_between_the_two_phases_is_judged_at_commit(chain: Chain) -> None:
    a, b, c = abc()
    chain.apply(a, b, c)
    body, _ = chain.request("audit")
    pending = chain.ipc.cas.attest_begin(body)
    assert pending.refused is None
    b.exports.clear()
    chain.apply(b)  # withdrawn after phase 1 checked it
    with chain.ipc.cas.db.write() as conn:
        pending.commit(conn)
    # phase 2 read lab's head again, saw it move, and judged the chain as it is now
    assert pending.rendered_at_commit
    with pytest.raises(errors.AccessDeniedError, match="lab does not export volume"):
        pending.result()


@pytest.mark.parametrize("where", ["import-c", "import-b", "export-a", "export-b"])
def test_a_pinned_session_hash_that_does_not_match_on_any_link_is_refused(chain: Chain, where: str) -> None:
    a, b, c = abc()
    chain.apply(a, b, c)  # first without pins, for the policies' hashes
    stale = "00" * 32
    if where == "import-c":
        c.pin = stale
        expected = (
            r"volume import evidence: lab at the version the import pins \(0000000000000000…\) does not"
        )
    elif where == "import-b":
        b.pin = stale
        expected = r"via lab/input: hospital at the version the import pins \(0000000000000000…\) does not"
    elif where == "export-a":
        a.exports = [("lab", stale, None)]  # pinned to a version of lab that is not the current one
        expected = "hospital does not export volume records to this version of lab"
    else:
        b.exports = [("audit", stale, "rollback_protected")]
        expected = "lab does not export volume input to this version of audit"
    chain.apply(a, b, c)
    chain.refused("audit", errors.AccessDeniedError, expected)
    # pins that name the current versions hold; a policy's hash covers its pins, so the two
    # ends of the chain are pinned in two rounds
    a.exports, c.pin = [("lab", None, None)], None
    chain.apply(a, c)
    b.pin, b.exports = chain.head("hospital"), [("audit", chain.head("audit"), "rollback_protected")]
    chain.apply(b)
    assert chain.release("audit")["volumes"][0]["key"] == KEY
    b.pin, b.exports = None, [("audit", None, None)]
    chain.apply(b)
    a.exports = [("lab", chain.head("lab"), None)]
    chain.apply(a)
    c.pin = chain.head("lab")
    chain.apply(c)
    assert chain.release("audit")["volumes"][0]["key"] == KEY


@pytest.mark.parametrize(
    ("a_mode", "b_mode", "c_image", "effective", "because"),
    [
        # an ephemeral middle export binds the end even though the owner exports rollback_protected
        ("rollback_protected", "ephemeral", None, "ephemeral", "the export by lab"),
        ("ephemeral", "no_rollback_protection", None, "ephemeral", "the export by hospital"),
        ("no_rollback_protection", None, None, "rollback_protected", None),
        ("no_rollback_protection", "no_rollback_protection", None, "no_rollback_protection", None),
        (
            "no_rollback_protection",
            "no_rollback_protection",
            "rollback_protected",
            "rollback_protected",
            None,
        ),
        ("no_rollback_protection", "no_rollback_protection", "ephemeral", "ephemeral", "its image"),
        ("rollback_protected", "rollback_protected", "no_rollback_protection", "rollback_protected", None),
    ],
)
def test_update_policy_composes_to_the_strictest_link(
    chain: Chain, a_mode: str, b_mode: str | None, c_image: str | None, effective: str, because: str | None
) -> None:
    a, b, c = abc(a_mode=a_mode, b_mode=b_mode)
    c.image_mode = c_image
    chain.apply(a, b, c)
    got = chain.release("audit")
    assert got["volumes"][0]["update_policy"] == effective
    assert chain.events("secret-release")[-1][1]["volumes"][0]["update_policy"] == effective
    # the middle importer's own services follow only the owner's export to it
    middle = chain.release("lab")
    assert middle["volumes"][0]["update_policy"] == a_mode
    if effective == "ephemeral":
        with pytest.raises(errors.AccessDeniedError, match=f"update_policy of {because}"):
            chain.report("audit", "evidence", got["session"], TAG0, TAG1)
        assert chain.tag("hospital", "records") == (TAG0, 0)
        return
    chain.report("audit", "evidence", got["session"], TAG0, TAG1)
    if effective == "no_rollback_protection":  # last writer wins: an older start is recorded
        chain.report("audit", "evidence", got["session"], TAG0, TAG2)
        assert chain.events("volume-tag")[-1][1]["based_on"] == TAG0
    else:
        with pytest.raises(errors.ConflictError):
            chain.report("audit", "evidence", got["session"], TAG0, TAG2)


def test_a_cycle_is_refused_cleanly(chain: Chain) -> None:
    # hospital's records imported back from lab, which imports them from hospital
    a = Link("hospital", "records", ("lab", "input")).export("lab")
    b = Link("lab", "input", ("hospital", "records")).export("hospital")
    chain.apply(a, b)
    err = chain.refused("lab", errors.PolicyError, "the chain of imports is a cycle")
    assert "lab/input -> hospital/records -> lab/input" in err.message
    chain.refused("hospital", errors.PolicyError, "cycle")
    # a longer one: three policies
    c = Link("audit", "evidence", ("lab", "input")).export("hospital")
    a2 = Link("hospital", "records", ("audit", "evidence")).export("lab")
    b2 = Link("lab", "input", ("hospital", "records")).export("audit")
    chain.apply(a2, b2, c)
    err = chain.refused("audit", errors.PolicyError, "cycle")
    assert "audit/evidence -> lab/input -> hospital/records -> audit/evidence" in err.message


def test_a_cycle_made_by_an_update_refuses_a_running_services_tag_update(chain: Chain) -> None:
    a, b, _ = abc()
    chain.apply(a, b)
    session = chain.release("lab")["session"]
    # hospital turns its own volume into an import of lab's, which is its own: a cycle
    chain.apply(Link("hospital", "records", ("lab", "input")).export("lab"))
    with pytest.raises(errors.PolicyError, match="cycle"):
        chain.report("lab", "input", session, TAG0, TAG1)


def test_with_opaque_refusals_a_cycle_is_the_one_tag_refusal(chain: Chain) -> None:
    """``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"): the cycle's message names
    the policies of the chain, so the session gets the one access refusal of tag reports instead
    (and the tag stays)."""
    a, b, _ = abc()
    chain.apply(a, b)
    session = chain.release("lab")["session"]
    chain.apply(Link("hospital", "records", ("lab", "input")).export("lab"))
    chain.ipc.cas.opaque_refusals = True
    with pytest.raises(errors.AccessDeniedError) as info:
        chain.report("lab", "input", session, TAG0, TAG1)
    assert type(info.value) is errors.AccessDeniedError and info.value.message == OPAQUE_TAG_REFUSAL
    with chain.ipc.cas.db.read() as conn:
        tags = raw_execute(conn, "SELECT tag FROM volume_tags ORDER BY policy, volume").fetchall()
    assert TAG1 not in [r[0] for r in tags]


def test_a_chain_through_the_same_policy_twice_is_no_cycle(chain: Chain) -> None:
    # hospital mounts its own records through lab under another name: it ends at an own volume
    a = Link("hospital", "records").export("lab")
    b = Link("lab", "input", ("hospital", "records")).export("hospital")
    chain.apply(a, b)
    text = a.yaml(chain.head("hospital")).replace(
        "images:",
        "  - name: mirror\n    import:\n      session: lab\n      volume: input\n"
        "images:\n  - name: other\n    volumes:\n      - name: mirror\n        path: /m\n",
    )
    text = text.replace("    image_name: img\n", "    image_name: other\n")
    chain.ipc.apply(text, chain.identities["hospital"])
    [vol] = chain.release("hospital")["volumes"]
    assert (vol["name"], vol["key"], vol["owner"]) == (
        "mirror",
        KEY,
        {"policy": "hospital", "volume": "records"},
    )
    assert vol["via"] == [{"policy": "lab", "volume": "input"}]


def test_the_chain_is_bounded(chain: Chain) -> None:
    names = [f"p{i}" for i in range(MAX_VOLUME_CHAIN + 2)]
    links = [Link(names[0], "v0").export(names[1])]
    for i in range(1, len(names)):
        link = Link(names[i], f"v{i}", (names[i - 1], f"v{i - 1}"))
        if i + 1 < len(names):
            link.export(names[i + 1])
        links.append(link)
    chain.apply(*links)
    # MAX_VOLUME_CHAIN links: resolved to the owner through every re-exporter
    [vol] = chain.release(names[MAX_VOLUME_CHAIN])["volumes"]
    assert vol["owner"] == {"policy": "p0", "volume": "v0"} and vol["key"] == KEY
    assert [v["policy"] for v in vol["via"]] == names[1:MAX_VOLUME_CHAIN]
    # one more link is refused, not followed
    chain.refused(names[-1], errors.PolicyError, f"longer than {MAX_VOLUME_CHAIN} links")


def test_an_imported_volume_may_be_exported_but_carries_no_key() -> None:
    policy = loads_policy(Link("lab", "input", ("hospital", "records")).export("audit").yaml())
    assert policy.volumes[0].export[0].session == "audit"
    text = Link("lab", "input", ("hospital", "records")).yaml()
    bad = text.replace(
        "      volume: records\n", f"      volume: records\n    fspf_key: {KEY}\n    fspf_tag: '{TAG0}'\n"
    )
    with pytest.raises(errors.PolicyError, match="fspf_key/fspf_tag on an imported volume"):
        loads_policy(bad)
