"""Secrets generated and renewed in dependency order, whatever order the policy declares them
in (a key before what is made of it, an issuer before what it signs; docs/cas.md "Secrets"),
and the declaration fingerprint that leaves defaults out, so that a field added to the secret
model does not regenerate stored secrets (confide.cas.declaration). The real in-process CAS
on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pydantic import StrictBool

from confide.cas.db import raw_execute
from confide.cas.declaration import WITHHELD, fingerprints
from confide.cas.renewal import renew_due
from confide.errors import PolicyError
from confide.ledger.encoding import EntryType
from confide.policy import load_policy, loads_policy
from confide.policy.canonical import jcs
from confide.policy.secret import Secret, generation_order
from crl_env import DAY, FILES, T0, Env, header, started

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"

# Declared in reverse: the public key and the leaf before their key and issuer, the
# intermediate before its root, every key last; ``token`` references nothing.
REVERSED = """secrets:
  - name: pub
    kind: public-key
    private_key: srv_key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: int
    common_name: srv.local
    dns: [{dns}]
    valid_for: 300 days
  - name: int
    kind: x509-ca
    private_key: int_key
    issuer: root
    common_name: Intermediate CA
    valid_for: 30 days
    renew_before: 10 days
  - name: token
    kind: ascii
  - name: root
    kind: x509-ca
    private_key: root_key
    common_name: {root_cn}
    valid_for: 365 days
  - name: srv_key
    kind: private-key
  - name: int_key
    kind: private-key
  - name: root_key
    kind: private-key
images:
  - name: img
    injection_files:
      - path: {files}/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
security:
  attestation:
    tolerate: [simulation]
"""


def reversed_policy(
    predecessor: str | None = None, *, root_cn: str = "Root CA", dns: str = "srv.local"
) -> str:
    return header("tls", predecessor) + REVERSED.format(root_cn=root_cn, dns=dns, files=FILES)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture
def env(tmp_path: Path, db_url: str | None) -> Iterator[Env]:
    with started(tmp_path / "cas", db_url, reversed_policy()) as out:
        yield out


def names(secrets: tuple[Secret, ...]) -> list[str]:
    return [s.name for s in secrets]


def latest(env: Env, name: str) -> tuple[int, dict[str, Any]]:
    return env.versions(name)[-1]


def assert_chain(env: Env) -> None:
    """srv is signed by int, int by root, each with the key its private_key secret holds, and
    the public key is srv_key's; the release carries srv with its chain."""
    root, intermediate, srv = (env.certificate(n) for n in ("root", "int", "srv"))
    srv.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    for cert, key in (("srv", "srv_key"), ("int", "int_key"), ("root", "root_key")):
        assert latest(env, cert)[1]["public_key"] == latest(env, key)[1]["public_key"]
    assert latest(env, "pub")[1]["public_key"] == latest(env, "srv_key")[1]["public_key"]
    env.clock.now += 1
    released = x509.load_pem_x509_certificates(env.release()[f"{FILES}/srv.pem"])
    assert released == [srv, intermediate, root]


# ------------------------------------------------------------------ the order


def test_a_policy_that_declares_references_first_keeps_its_declaration_order() -> None:
    """Nothing changes for the policies that worked before: every example, as declared."""
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for path in examples:
        policy = load_policy(path)
        assert generation_order(policy.secrets) == policy.secrets, path.name


def test_references_come_first_and_independent_secrets_keep_their_order() -> None:
    policy = loads_policy(reversed_policy())
    assert names(generation_order(policy.secrets)) == [
        "srv_key", "pub", "int_key", "root_key", "root", "int", "srv", "token",
    ]  # fmt: skip


def test_a_cycle_built_without_validation_is_refused() -> None:
    def ca(name: str, issuer: str) -> Secret:
        return Secret.model_construct(name=name, kind="x509-ca", private_key=None, issuer=issuer)

    with pytest.raises(PolicyError, match="reference cycle a -> b -> a"):
        generation_order((ca("a", "b"), ca("b", "a")))
    with pytest.raises(PolicyError, match="reference cycle c -> c"):
        generation_order((ca("c", "c"),))


def test_a_long_issuer_chain_declared_leaf_first_is_ordered_without_recursion() -> None:
    n = 5000
    chain = tuple(
        Secret.model_construct(name=f"ca{i}", kind="x509-ca", private_key=None, issuer=f"ca{i + 1}" if i + 1 < n else None)
        for i in range(n)
    )  # fmt: skip
    assert names(generation_order(chain)) == [f"ca{i}" for i in reversed(range(n))]


# ------------------------------------------------------------------ refused at load


def _write(tmp_path: Path, secrets: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text('name: p\nversion: "0.3"\nsecrets:\n' + secrets)
    return path


@pytest.mark.parametrize(
    ("secrets", "where", "message"),
    [
        (
            "  - name: k\n    kind: private-key\n  - name: a\n    kind: x509-ca\n    private_key: k\n"
            "    issuer: b\n  - name: b\n    kind: x509-ca\n    private_key: k\n    issuer: a\n",
            "p.yaml:9:13: secrets[1].issuer",
            "issuer cycle",
        ),
        (
            "  - name: k\n    kind: private-key\n  - name: a\n    kind: x509-ca\n    private_key: k\n"
            "    issuer: a\n",
            "p.yaml:9:13: secrets[1].issuer",
            "issuer cycle through 'a'",
        ),
        (
            "  - name: a\n    kind: x509\n    private_key: a\n",
            "p.yaml:6:18: secrets[0].private_key",
            "got 'a' of kind x509, expected a private-key secret",
        ),
        (
            "  - name: c\n    kind: x509\n    private_key: nope\n",
            "p.yaml:6:18: secrets[0].private_key",
            "got 'nope', expected the name of a private-key secret",
        ),
        (
            "  - name: k\n    kind: private-key\n  - name: c\n    kind: x509\n    private_key: k\n"
            "    issuer: ca\n  - name: ca\n    import: {session: pki, secret: ca}\n",
            "p.yaml:9:13: secrets[1].issuer",
            "got 'ca', an imported secret, expected a x509-ca secret of this policy",
        ),
        (
            "  - name: pub\n    kind: public-key\n    private_key: k\n"
            "  - name: k\n    import: {session: pki, secret: k}\n",
            "p.yaml:6:18: secrets[0].private_key",
            "got 'k', an imported secret, expected a private-key secret of this policy",
        ),
    ],
    ids=["cycle", "self-issued", "self-key", "missing", "imported issuer", "imported key"],
)
def test_reference_problems_are_load_errors_at_their_line_and_column(
    tmp_path: Path, secrets: str, where: str, message: str
) -> None:
    path = _write(tmp_path, secrets)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    text = str(info.value).replace(str(tmp_path) + "/", "")
    assert f"{where}: " in text and message in text, text


def test_an_imported_issuer_of_certificates_issued_to_runtimes_still_loads() -> None:
    """An imported CA is resolved at each release, for a runtime's own key (issue_to_runtime);
    a stored version that names one otherwise still loads (it is refused when applied)."""
    loads_policy(
        'name: p\nversion: "0.3"\nsecrets:\n  - name: rt\n    kind: x509\n    issuer: ca\n'
        "    issue_to_runtime: true\n  - name: ca\n    import: {session: pki, secret: ca}\n"
    )
    loads_policy(
        'name: p\nversion: "0.3"\nsecrets:\n  - name: k\n    kind: private-key\n  - name: c\n'
        "    kind: x509\n    private_key: k\n    issuer: ca\n  - name: ca\n"
        "    import: {session: pki, secret: ca}\n",
        stored=True,
    )


# ------------------------------------------------------------------ in the CAS


def test_secrets_declared_before_what_they_reference_are_generated(env: Env) -> None:
    assert {n: [v for v, _ in env.versions(n)] for n in ("srv", "int", "root", "pub", "token")} == {
        n: [1] for n in ("srv", "int", "root", "pub", "token")
    }
    assert_chain(env)
    [generated] = env.events("secrets-generated", EntryType.SECRETS_GENERATED)
    assert [s["name"] for s in generated["secrets"]] == [
        "srv_key", "pub", "int_key", "root_key", "root", "int", "srv", "token",
    ]  # fmt: skip


def test_a_regenerated_issuer_declared_last_regenerates_what_it_signs(env: Env) -> None:
    """The root's declaration changes: it is regenerated before the intermediate and the leaf
    declared above it, which follow it (new versions signed by the new root, the same keys)."""
    keys = {n: latest(env, n)[1]["public_key"] for n in ("srv_key", "int_key", "root_key")}
    env.apply_text(reversed_policy(env.head(), root_cn="Root CA 2"))
    versions = {n: [v for v, _ in env.versions(n)] for n in ("root", "int", "srv", "pub", "token")}
    assert versions == {"root": [1, 2], "int": [1, 2], "srv": [1, 2], "pub": [1], "token": [1]}
    assert {n: latest(env, n)[1]["public_key"] for n in keys} == keys
    assert_chain(env)


def test_renewal_follows_an_issuer_declared_after_what_it_signs(env: Env) -> None:
    """At day 21 the intermediate is due (30 days, renewed 10 before) and the leaf is not (300
    days): the leaf, declared first, is re-issued under the renewed intermediate."""
    env.clock.now = T0 + 21 * DAY
    renewed = renew_due(env.cas)["tls"]
    assert {c["name"]: c["reason"] for c in renewed if c["name"] in ("int", "srv")} == {
        "int": "due",
        "srv": "issuer-renewed",
    }
    assert [v for v, _ in env.versions("int")] == [1, 2]
    assert [v for v, _ in env.versions("srv")] == [1, 2]
    assert_chain(env)


# ------------------------------------------------------------------ the fingerprint


def whole_dump_fingerprint(spec: Secret) -> str:
    """The fingerprint CAS versions before 2026-12-06 stored for a declaration without an
    explicit value: SHA-256 of the JCS of the whole model dump, defaults included, without the
    fields the value does not depend on (computed here as they did)."""
    exclude = {"export", "export_public", "crl_distribution", "ca_issuers", "ocsp", "path_len"}
    return hashlib.sha256(jcs(spec.model_dump(mode="json", by_alias=True, exclude=exclude))).hexdigest()


def set_spec(env: Env, name: str, fingerprint: str) -> None:
    version, public = latest(env, name)
    with env.cas.db.write() as conn:
        raw_execute(
            conn,
            "UPDATE secrets SET public = ? WHERE policy = 'tls' AND name = ? AND version = ?",
            (json.dumps({**public, "spec": fingerprint}), name, version),
        )


def test_new_rows_store_the_fingerprint_without_defaults(env: Env) -> None:
    policy = loads_policy(reversed_policy())
    for spec in policy.secrets:
        expected = hashlib.sha256(
            jcs(
                {
                    "fingerprint": 2,
                    "declaration": spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
                }
            )
        ).hexdigest()
        assert latest(env, spec.name)[1]["spec"] == expected, spec.name


def test_rows_stored_with_the_whole_dump_keep_their_values_and_get_the_new_form(env: Env) -> None:
    """What an upgraded deployment holds: every row with the whole-dump fingerprint. The next
    update regenerates nothing, and writes the new form into the rows it keeps."""
    policy = loads_policy(reversed_policy())
    before = {}
    for spec in policy.secrets:
        set_spec(env, spec.name, whole_dump_fingerprint(spec))
        before[spec.name] = latest(env, spec.name)
    env.apply_text(
        reversed_policy(env.head()).replace(
            "  - name: token", "  - name: other\n    kind: binary\n  - name: token"
        )
    )
    for spec in policy.secrets:
        version, public = latest(env, spec.name)
        assert version == before[spec.name][0], spec.name
        assert public == {**before[spec.name][1], "spec": fingerprints(spec).current}, spec.name
    assert [v for v, _ in env.versions("other")] == [1]


def test_a_changed_field_still_regenerates_from_either_form(env: Env) -> None:
    """A real change of the declaration (the leaf's DNS name) is a new version whether its row
    holds the whole-dump form or the new one; what is unchanged keeps its version."""
    spec = loads_policy(reversed_policy()).secret("srv")
    set_spec(env, "srv", whole_dump_fingerprint(spec))
    env.apply_text(reversed_policy(env.head(), dns="srv2.local"))
    assert [v for v, _ in env.versions("srv")] == [1, 2]
    env.apply_text(reversed_policy(env.head(), dns="srv3.local"))
    assert [v for v, _ in env.versions("srv")] == [1, 2, 3]
    assert [v for v, _ in env.versions("int")] == [1]
    assert env.certificate("srv").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["srv3.local"]


def test_a_renewal_writes_the_new_form(env: Env) -> None:
    spec = loads_policy(reversed_policy()).secret("int")
    set_spec(env, "int", whole_dump_fingerprint(spec))
    env.clock.now = T0 + 21 * DAY
    renew_due(env.cas)
    (v1, p1), (v2, p2) = env.versions("int")
    assert (v1, v2) == (1, 2)
    assert p1["spec"] == whole_dump_fingerprint(spec)
    assert p2["spec"] == fingerprints(spec).current


class FutureSecret(Secret):
    """The secret model after an upgrade that adds a field with a default."""

    future_flag: StrictBool = False


def test_a_field_added_to_the_model_with_a_default_changes_no_fingerprint() -> None:
    declared = {"name": "srv", "kind": "x509", "private_key": "k", "issuer": "ca", "dns": ["srv.local"],
                "endpoint": "server", "valid_for": "30 days"}  # fmt: skip
    now, later = Secret.model_validate(declared), FutureSecret.model_validate(declared)
    assert "future_flag" in later.model_dump()  # the whole dump changed...
    assert whole_dump_fingerprint(later) != whole_dump_fingerprint(now)
    # ...the new form did not, and the whole-dump form stored by the earlier CAS is still honoured
    assert fingerprints(later).current == fingerprints(now).current
    assert whole_dump_fingerprint(now) in fingerprints(later).accepted
    # Using the new field is a change: neither form of the stored declaration matches.
    used = FutureSecret.model_validate({**declared, "future_flag": True})
    assert fingerprints(used).current != fingerprints(now).current
    assert not fingerprints(used).accepted & fingerprints(now).accepted


def test_an_explicit_value_stays_out_of_every_form_written() -> None:
    """The earlier fix holds for the new form: an explicit ascii value is withheld, so the
    fingerprint is the same for any value and a guess cannot be confirmed from it."""
    a = Secret.model_validate({"name": "pw", "kind": "ascii", "value": "correct horse"})
    b = Secret.model_validate({"name": "pw", "kind": "ascii", "value": "battery staple"})
    fa, fb = fingerprints(a), fingerprints(b)
    assert fa.withheld and fa.current == fb.current
    expected = hashlib.sha256(
        jcs({"fingerprint": 2, "declaration": {"name": "pw", "kind": "ascii", "value": WITHHELD}})
    ).hexdigest()
    assert fa.current == expected
    # the form with the value hashed in (stored before 2026-12) is honoured for that value only
    assert fa.value_hashed is not None and fa.value_hashed not in fb.accepted
