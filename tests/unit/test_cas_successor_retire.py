"""Retirement names its version and matches on code identity (docs/cas.md "Retiring the old
version"): an approval's ``retire`` names the version to retire by its identity claims; only a
release by exactly that version retires it (the operator choosing another releaser retires
nothing); a retired version is its *code* identity, so the retired code with another host-set
claim (SEV-SNP HOST_DATA, in process with the forged AMD-shaped PKI) neither gets the key nor
starts; an approval that would retire its own successor's code is refused; the schema-9 form
``"retire": true`` is refused at the door, and such a stored approval counts for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from snp_fakes import AT
from test_cas_key_release import AMD, Joiner, Releaser, _refused, _snp, _vcek
from test_cas_successor_release import NEW, _approve, _retired, board_cas, people, snp_board_cas

from confide import errors
from confide.cas.core import sign_document
from confide.cas.db import SCHEMA_VERSION, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement
from confide.cas.key_release import IDENTITY_CLAIMS, KeyReleaser
from confide.cas.successor import (
    APPROVAL_TYPE,
    claim_text,
    code_identity,
    identity_digest,
    parse_approval,
    target_of,
)
from confide.identity import Identity
from confide.runtime.quote import SimQuoteProvider
from confide.verify.result import Platform, VerifiedEvidence

__all__ = ["board_cas", "people", "snp_board_cas"]  # fixtures, re-used

OTHER = bytes([0xDD]) * 48  # a second old version holding the key


def _approve_retiring(
    r: Releaser, who: Identity, platform: str, claims: dict[str, str], retire: dict[str, str], expires: float
) -> Any:
    successors = r.releaser.successors
    assert successors is not None
    body = {"type": APPROVAL_TYPE, "master_key_id": r.cas.sealer.sealing_key_id, "platform": platform,
            "claims": claims, "expires": int(expires), "retire": retire}  # fmt: skip
    return successors.approve(sign_document(body, who.sign, who.public.public_base64))


def _sim_own(r: Releaser, measurement: bytes) -> Callable[[datetime], VerifiedEvidence]:
    provider = SimQuoteProvider(r.sim, measurement)

    def own(at: datetime) -> VerifiedEvidence:
        return r.cas.verifier.verify(Platform.SIMULATED, provider.get_evidence(bytes(64)).raw, {}, at=at)

    return own


def test_only_the_named_version_is_retired_whichever_the_operator_lets_release(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """Two old versions hold the key (OLD, the dev CAS, and OTHER); the board approves NEW
    retiring OLD. OTHER releasing counts none of those approvals (they are OLD's), so the
    operator cannot get OTHER retired (or the hand-over without OLD's retirement) with them;
    OLD releasing is retired, OTHER is not."""
    alice, bob, _carol = people
    successors = board_cas.releaser.successors
    assert successors is not None
    old = {"measurement": cas_dev_measurement().hex()}
    new = {"measurement": NEW.hex()}
    for who in (alice, bob):
        result = _approve_retiring(board_cas, who, "sim", new, old, time.time() + 600)
    assert result["authorised"] is True
    assert result["retire"] == [identity_digest("sim", old)]
    releaser_old = board_cas.releaser
    board_cas.releaser = KeyReleaser(board_cas.cas, _sim_own(board_cas, OTHER), successors=successors)
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "0 valid approval")
    assert _retired(board_cas) == []
    board_cas.releaser = releaser_old
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    (retired,) = _retired(board_cas)
    assert retired["claims"] == old
    assert [x["claims"] for x in successors.show()["retired"]] == [old]
    # OTHER is not retired: it still releases to its own version.
    board_cas.releaser = KeyReleaser(board_cas.cas, _sim_own(board_cas, OTHER), successors=successors)
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, OTHER)))


def _snp_claims(r: Releaser, **changes: object) -> dict[str, str]:
    probe = r.cas.verifier.verify(Platform.SEV_SNP, _snp(AMD, bytes(64), **changes), _vcek(AMD), at=AT)
    return {n: claim_text(probe.claims[n]) for n in IDENTITY_CLAIMS[Platform.SEV_SNP]}


def test_the_retired_code_with_another_host_data_gets_no_key_and_does_not_start(
    snp_board_cas: Releaser, people: list[Identity]
) -> None:
    r = snp_board_cas
    successors = r.releaser.successors
    assert successors is not None
    new_image = bytes([0x77]) * 48
    old, new = _snp_claims(r), _snp_claims(r, measurement=new_image)
    for who in people[:2]:
        _approve_retiring(r, who, "sev-snp", new, old, AT.timestamp() + 600)
    joiner = Joiner(r.releaser.new_nonce())
    request = joiner.request("sev-snp", _snp(AMD, joiner.binding, measurement=new_image), _vcek(AMD))
    joiner.open(r.releaser.release(request))
    assert [x["claims"] for x in successors.show()["retired"]] == [old]
    # The successor's CAS, asked by the old image relaunched with another HOST_DATA, whose claims
    # the board even approved: refused, the code is retired.
    new_report = _snp(AMD, bytes(64), measurement=new_image)

    def own_new(at: datetime) -> VerifiedEvidence:
        return r.cas.verifier.verify(Platform.SEV_SNP, new_report, _vcek(AMD), at=at)

    r.releaser = KeyReleaser(r.cas, own_new, successors=successors, clock=AT.timestamp)
    relaunched = _snp_claims(r, host_data=bytes([0x42]) * 32)
    assert relaunched != old and relaunched["measurement"] == old["measurement"]
    for who in people[:2]:
        _approve(r, who, "sev-snp", relaunched, AT.timestamp() + 600)
    joiner = Joiner(r.releaser.new_nonce())
    report = _snp(AMD, joiner.binding, host_data=bytes([0x42]) * 32)
    _refused(r, joiner.request("sev-snp", report, _vcek(AMD)), errors.AppraisalError,
             "the joining CAS's version .* was retired")  # fmt: skip
    # ... and it does not start on the database (its own evidence, another HOST_DATA).
    other_own = _snp(AMD, bytes(64), host_data=bytes([0x42]) * 32)
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        successors.refuse_retired_start(
            lambda at: r.cas.verifier.verify(Platform.SEV_SNP, other_own, _vcek(AMD), at=at)
        )
    # The successor's own code with that HOST_DATA is not retired.
    successors.refuse_retired_start(
        lambda at: r.cas.verifier.verify(
            Platform.SEV_SNP,
            _snp(AMD, bytes(64), measurement=new_image, host_data=bytes(32)),
            _vcek(AMD),
            at=at,
        )
    )


def test_code_identity_leaves_out_the_host_set_claims() -> None:
    sgx = {n: "1" for n in IDENTITY_CLAIMS[Platform.SGX]}
    tdx = {n: "1" for n in IDENTITY_CLAIMS[Platform.TDX]}
    snp = {n: "1" for n in IDENTITY_CLAIMS[Platform.SEV_SNP]}
    for platform, claims, host_set in (
        ("sgx", sgx, ("config_id", "config_svn", "mr_signer", "isv_svn", "isv_prod_id")),
        ("tdx", tdx, ("mr_owner", "mr_owner_config", "mr_config_id", "rtmr0", "rtmr3", "td_attributes")),
        ("sev-snp", snp, ("host_data", "vmpl", "policy", "family_id", "image_id", "id_key_digest")),
    ):
        for name in host_set:
            assert code_identity(platform, {**claims, name: "2"}) == code_identity(platform, claims), name
    assert code_identity("sgx", {**sgx, "mr_enclave": "2"}) != code_identity("sgx", sgx)
    for name in ("mr_td", "rtmr1", "rtmr2"):
        assert code_identity("tdx", {**tdx, name: "2"}) != code_identity("tdx", tdx), name
    assert code_identity("sev-snp", {**snp, "measurement": "2"}) != code_identity("sev-snp", snp)


def test_an_approval_retiring_its_own_successors_code_is_refused(people: list[Identity]) -> None:
    alice = people[0]
    base = {"type": APPROVAL_TYPE, "master_key_id": "ab" * 16, "expires": int(time.time()) + 600}
    doc = sign_document({**base, "platform": "sim", "claims": {"measurement": NEW.hex()},
                         "retire": {"measurement": NEW.hex()}}, alice.sign, alice.public.public_base64)  # fmt: skip
    with pytest.raises(errors.UsageError, match="would retire the successor"):
        parse_approval(doc)
    snp = {n: "1" for n in IDENTITY_CLAIMS[Platform.SEV_SNP]}
    doc = sign_document({**base, "platform": "sev-snp", "claims": snp, "retire": {**snp, "host_data": "2"}},
                        alice.sign, alice.public.public_base64)  # fmt: skip
    with pytest.raises(errors.UsageError, match="would retire the successor"):
        parse_approval(doc)
    for retire in ({"measurement": 1}, {"mr_td": "00"}, {}, ["00"], True):
        doc = sign_document({**base, "platform": "sim", "claims": {"measurement": NEW.hex()}, "retire": retire},
                            alice.sign, alice.public.public_base64)  # fmt: skip
        with pytest.raises(errors.ParseError):
            parse_approval(doc)
    doc = sign_document({**base, "platform": "sim", "claims": {"measurement": NEW.hex()},
                         "retire": {"measurement": OTHER.hex()}}, alice.sign, alice.public.public_base64)  # fmt: skip
    approval = parse_approval(doc)
    assert approval.retire == {"measurement": OTHER.hex()}
    assert approval.target == target_of("ab" * 16, "sim", {"measurement": NEW.hex()})


def test_a_schema_9_retire_true_approval_is_refused_and_a_stored_one_counts_for_nothing(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """``"retire": true`` (schema 9) names no version: refused at the door (ParseError); one
    stored before the upgrade is neither counted for the hand-over nor for a retirement, and
    ``show`` lists it under ``void``."""
    alice, bob, _carol = people
    successors = board_cas.releaser.successors
    assert successors is not None
    new = {"measurement": NEW.hex()}
    key_id = board_cas.cas.sealer.sealing_key_id
    body = {"type": APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim", "claims": new,
            "expires": int(time.time()) + 600, "retire": True}  # fmt: skip
    docs = [sign_document(body, who.sign, who.public.public_base64) for who in (alice, bob)]
    with pytest.raises(errors.ParseError, match="names no version"):
        successors.approve(docs[0])
    # As schema-9 code stored them (the same table and row format).
    from confide.policy.canonical import jcs

    target = target_of(key_id, "sim", new)
    with board_cas.cas.db.write() as conn:
        for who, doc in zip((alice, bob), docs, strict=True):
            raw_execute(
                conn,
                "INSERT INTO successor_approvals (target, signer, document, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (target, who.fingerprint, jcs(doc).decode(), float(body["expires"]), time.time()),  # type: ignore[arg-type]
            )
    joiner = Joiner(board_cas.releaser.new_nonce())
    _refused(board_cas, joiner.sim_request(board_cas.sim, NEW), errors.AppraisalError, "0 valid approval")
    assert _retired(board_cas) == []
    shown = successors.show()
    assert shown["approvals"] == []
    assert sorted(v["signer"] for v in shown["void"]) == sorted([alice.fingerprint, bob.fingerprint])


def test_migration_10_from_a_schema_9_database_with_a_retirement(
    board_cas: Releaser, people: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema-9 database holding a retirement (its identity over all claims, as schema-9 code
    stored it: the same row) and an approval migrates to 10, keeping both, and its retirement
    then holds for the code; code from before schema 10 (which matches retirements on all the
    claims, host-set ones included) no longer starts on it."""
    assert SCHEMA_VERSION >= 10
    old = {"measurement": cas_dev_measurement().hex()}
    for who in people[:2]:
        _approve_retiring(board_cas, who, "sim", {"measurement": NEW.hex()}, old, time.time() + 600)
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    db = board_cas.cas.db
    with db.write() as conn:
        raw_execute(conn, "UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    assert db.migrate() == SCHEMA_VERSION
    with db.read() as conn:
        version = raw_execute(conn, "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(SCHEMA_VERSION)
        assert raw_execute(conn, "SELECT COUNT(*) FROM successor_retired").fetchone()[0] == 1
        assert raw_execute(conn, "SELECT COUNT(*) FROM successor_approvals").fetchone()[0] == 2
    successors = board_cas.releaser.successors
    assert successors is not None
    assert [x["claims"] for x in successors.show()["retired"]] == [old]
    with pytest.raises(errors.AppraisalError, match="was retired on this database"):
        successors.refuse_retired_start(_sim_own(board_cas, cas_dev_measurement()))
    # Code of schema 9 refuses the migrated database.
    from confide.cas import db as db_module

    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 9)
    with pytest.raises(errors.StorageError, match="newer than this CAS"):
        db.migrate()


def test_a_retired_row_whose_claims_do_not_hash_to_its_identity_is_detected(
    board_cas: Releaser, people: list[Identity]
) -> None:
    """The code identity is derived from a row's claims, which the board's MAC does not cover
    itself: claims that no longer hash to the row's (authenticated) digest are a StorageError,
    not a retirement of other code."""
    old = {"measurement": cas_dev_measurement().hex()}
    for who in people[:2]:
        _approve_retiring(board_cas, who, "sim", {"measurement": NEW.hex()}, old, time.time() + 600)
    joiner = Joiner(board_cas.releaser.new_nonce())
    joiner.open(board_cas.releaser.release(joiner.sim_request(board_cas.sim, NEW)))
    with board_cas.cas.db.write() as conn:
        raw_execute(conn, "UPDATE successor_retired SET claims = ?", (f'{{"measurement":"{OTHER.hex()}"}}',))
    successors = board_cas.releaser.successors
    assert successors is not None
    with pytest.raises(errors.StorageError, match="database was altered"):
        successors.refuse_retired_start(_sim_own(board_cas, cas_dev_measurement()))


def test_retire_attested_refuses_a_cas_that_is_not_the_pinned_one(
    tmp_path: Path, people: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cas successor approve --retire-attested``: the CAS's evidence, verified again, must be
    bound to the pinned certificate; a CAS presenting another one (the operator's, say) is
    refused before anything is signed or sent."""
    import hashlib

    from click.testing import CliRunner
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from confide.cas import client, pin
    from confide.cas.cli import cas as cas_group

    def certificate() -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cas")])
        now = datetime.now(tz=UTC)
        return (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )  # fmt: skip

    pinned, presented = certificate(), certificate()
    (tmp_path / "cas.pem").write_bytes(pinned.public_bytes(serialization.Encoding.PEM))
    alice_file = tmp_path / "alice.id"
    people[0].save(alice_file)
    called: list[str] = []

    def attest(url: str, **_kw: object) -> pin.PinnedCas:
        called.append(url)
        der = presented.public_bytes(serialization.Encoding.DER)
        return pin.PinnedCas(url, b"", hashlib.sha256(der).hexdigest(), "log", None)  # type: ignore[arg-type]

    def no_client() -> object:
        raise AssertionError("nothing may be sent")

    monkeypatch.setattr(pin, "attest_cas", attest)
    monkeypatch.setattr(client.CasClient, "from_env", staticmethod(no_client))
    env = {"CONFIDE_CAS_URL": "https://127.0.0.1:9", "CONFIDE_CAS_CERT": str(tmp_path / "cas.pem")}
    result = CliRunner().invoke(
        cas_group,
        ["successor", "approve", "--platform", "sim", "--claim", f"measurement={NEW.hex()}", "--expires", "1d",
         "--identity", str(alice_file), "--retire-attested"],
        env=env,
    )  # fmt: skip
    assert called == ["https://127.0.0.1:9"]
    assert isinstance(result.exception, errors.AppraisalError), result.exception
    assert "another certificate than the pinned one" in result.exception.message


@pytest.mark.parametrize(
    "retire",
    [
        None,  # "retire": null is not "left out"
        {},
        [NEW.hex()],
        "00" * 48,
        {"measurement": "00" * 48, "mr_enclave": "00" * 32},  # an unknown name
        {"mr_enclave": "00" * 32},  # another platform's claim
        {"measurement": ("AB" * 48)},  # not the text form: upper-case hex
        {"measurement": ""},  # a missing value is not an empty one
        {"measurement": 7},
        {"measurement": True},
        {"measurement": None},
        {"measurement": "ab" * 129},  # over 256 characters
        {"measurement": "ab cd"},
    ],
)
def test_retire_claims_are_read_strictly(people: list[Identity], retire: object) -> None:
    """``retire`` is exactly the platform's identity claims, each in text form, as ``claims``."""
    body = {"type": APPROVAL_TYPE, "master_key_id": "ab" * 16, "platform": "sim",
            "claims": {"measurement": NEW.hex()}, "expires": int(time.time()) + 600,
            "retire": retire}  # fmt: skip
    doc = sign_document(body, people[0].sign, people[0].public.public_base64)
    with pytest.raises(errors.ParseError, match="retire"):
        parse_approval(doc)
