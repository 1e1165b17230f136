"""Attested master-key release between CAS instances (docs/cas.md "Joining a running CAS").

The rule (:func:`appraise_peer`) with each platform's verified-result type: SGX and TDX claims
as the DCAP verifier names them (real quotes cannot carry a test binding, so these are
constructed :class:`VerifiedEvidence`), SEV-SNP with reports signed by a private AMD-shaped PKI
(snp_fakes.py) and verified for real, and the simulator. The releasing side
(:class:`KeyReleaser`) on an in-process dev CAS from the real ``prepare()``: a release that
decrypts to the CAS's key, and every refusal (replay, tampered evidence, wrong binding, another
measurement, an attestation nonce, an expired nonce, a rotation in progress) recorded in the
ledger. The joining side's checks that need no network (``prepare(join=...)``), the released
payload's checks, and the dev measurement.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from snp_fakes import AT, FakeAmd, make_fake_amd

from asgi_call import call
from confide import errors
from confide.cas import key_release as key_release_module
from confide.cas.app import create_app
from confide.cas.core import Cas, binding_report_data, decrypt_release
from confide.cas.db import raw_connection, raw_execute
from confide.cas.dev_measurement import cas_dev_measurement, measure_package
from confide.cas.join import _open_payload
from confide.cas.key_release import (
    EVENT_REFUSED,
    EVENT_RELEASED,
    IDENTITY_CLAIMS,
    PAYLOAD_TYPE,
    KeyReleaser,
    appraise_peer,
    key_release_binding,
)
from confide.cas.master_key import SEALED_NAME, install_master_key, unseal_master_key
from confide.cas.online_rotation import OnlineRotation
from confide.cas.rotation import master_key_id
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.evidence.sev_snp import GuestPolicy
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.store import Ledger
from confide.runtime.quote import SimQuoteProvider
from confide.sim.platform import SimPlatform
from confide.verify.result import ClaimValue, Platform, TcbStatus, VerifiedEvidence

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _evidence(
    platform: Platform,
    claims: dict[str, ClaimValue],
    *,
    tcb: TcbStatus | None = TcbStatus.UP_TO_DATE,
    advisories: tuple[str, ...] = (),
) -> VerifiedEvidence:
    return VerifiedEvidence(
        platform=platform, claims=claims, verified_at=NOW, evidence_digest="00" * 32, tcb_status=tcb,
        advisory_ids=advisories, simulated=platform is Platform.SIMULATED,
    )  # fmt: skip


SGX_CLAIMS: dict[str, ClaimValue] = {
    "mr_enclave": "11" * 32, "mr_signer": "22" * 32, "isv_prod_id": 3, "isv_svn": 4, "config_id": "00" * 64,
    "config_svn": 0, "isv_ext_prod_id": "00" * 16, "isv_family_id": "00" * 16, "debug": False,
    "attributes": "07" + "00" * 15, "report_data": "ab" * 64,
}  # fmt: skip
TDX_CLAIMS: dict[str, ClaimValue] = {
    "mr_td": "31" * 48, "rtmr0": "32" * 48, "rtmr1": "33" * 48, "rtmr2": "34" * 48, "rtmr3": "00" * 48,
    "mr_config_id": "00" * 48, "mr_owner": "00" * 48, "mr_owner_config": "00" * 48,
    "td_attributes": "0000001000000000", "debug": False, "xfam": "e702060000000000", "report_data": "ab" * 64,
}  # fmt: skip
SNP_CLAIMS: dict[str, ClaimValue] = {
    "measurement": "cd" * 48, "policy": 0x30000, "host_data": "ef" * 32, "vmpl": 0, "family_id": "00" * 16,
    "image_id": "01" * 16, "id_key_digest": "00" * 48, "author_key_digest": "00" * 48, "debug": False,
    "chip_id": "aa" * 64, "report_data": "ab" * 64,
}  # fmt: skip
SIM_CLAIMS: dict[str, ClaimValue] = {"measurement": "5a" * 48, "debug": False, "svn": 0}
CASES = [(Platform.SGX, SGX_CLAIMS), (Platform.TDX, TDX_CLAIMS), (Platform.SEV_SNP, SNP_CLAIMS)]


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("platform", "claims"), [*CASES, (Platform.SIMULATED, SIM_CLAIMS)])
def test_the_same_cas_on_the_same_platform_may_join(
    platform: Platform, claims: dict[str, ClaimValue]
) -> None:
    tcb = None if platform in (Platform.SEV_SNP, Platform.SIMULATED) else TcbStatus.UP_TO_DATE
    own = _evidence(platform, claims, tcb=tcb)
    # Claims outside the identity (another chip, another report) do not matter.
    peer = _evidence(platform, {**claims, "report_data": "cd" * 64, "chip_id": "bb" * 64}, tcb=tcb)
    assert appraise_peer(own, peer) == ()


@pytest.mark.parametrize(
    ("platform", "claims", "name"),
    [(p, c, name) for p, c in CASES for name in IDENTITY_CLAIMS[p]]
    + [(Platform.SIMULATED, SIM_CLAIMS, "measurement")],
)
def test_every_identity_claim_must_be_equal(
    platform: Platform, claims: dict[str, ClaimValue], name: str
) -> None:
    own = _evidence(platform, claims)
    value = claims[name]
    changed: ClaimValue = value + 1 if isinstance(value, int) else "9" + str(value)[1:]
    reasons = appraise_peer(own, _evidence(platform, {**claims, name: changed}))
    assert len(reasons) == 1 and reasons[0].startswith(f"{name}: got "), reasons
    # A missing claim is a mismatch too, never a pass.
    missing = {k: v for k, v in claims.items() if k != name}
    assert appraise_peer(own, _evidence(platform, missing)) == (
        f"{name}: missing, expected {str(value)[:40]}{'…' if len(str(value)) > 40 else ''} (this CAS's)",
    )


def test_hex_claims_compare_case_insensitively_and_types_strictly() -> None:
    own = _evidence(Platform.SGX, SGX_CLAIMS)
    assert appraise_peer(own, _evidence(Platform.SGX, {**SGX_CLAIMS, "mr_enclave": "11" * 32})) == ()
    upper = {**SGX_CLAIMS, "mr_signer": str(SGX_CLAIMS["mr_signer"]).upper()}
    assert appraise_peer(own, _evidence(Platform.SGX, upper)) == ()
    assert appraise_peer(own, _evidence(Platform.SGX, {**SGX_CLAIMS, "isv_prod_id": "3"}))  # not the number 3


@pytest.mark.parametrize(("platform", "claims"), CASES)
def test_a_debug_peer_is_refused_even_with_the_same_measurement(
    platform: Platform, claims: dict[str, ClaimValue]
) -> None:
    own = _evidence(platform, claims)
    reasons = appraise_peer(own, _evidence(platform, {**claims, "debug": True}))
    assert any("debug" in r for r in reasons), reasons


@pytest.mark.parametrize("tcb", [s for s in TcbStatus if s is not TcbStatus.UP_TO_DATE], ids=str)
@pytest.mark.parametrize("platform", [Platform.SGX, Platform.TDX])
def test_a_tcb_status_other_than_up_to_date_is_refused_without_any_tolerance(
    platform: Platform, tcb: TcbStatus
) -> None:
    claims = SGX_CLAIMS if platform is Platform.SGX else TDX_CLAIMS
    own = _evidence(platform, claims)
    reasons = appraise_peer(own, _evidence(platform, claims, tcb=tcb))
    assert reasons and any(str(tcb) in r for r in reasons), reasons


def test_an_advisory_is_refused() -> None:
    own = _evidence(Platform.TDX, TDX_CLAIMS)
    reasons = appraise_peer(own, _evidence(Platform.TDX, TDX_CLAIMS, advisories=("INTEL-SA-00615",)))
    assert any("INTEL-SA-00615" in r for r in reasons), reasons


def test_another_platform_is_refused() -> None:
    own = _evidence(Platform.SEV_SNP, SNP_CLAIMS, tcb=None)
    (reason,) = appraise_peer(own, _evidence(Platform.SIMULATED, {**SNP_CLAIMS}, tcb=None))
    assert reason == "platform: got sim, expected sev-snp (this CAS's)"
    (reason,) = appraise_peer(_evidence(Platform.SIMULATED, SIM_CLAIMS, tcb=None), own)
    assert reason == "platform: got sev-snp, expected sim (this CAS's)"


@pytest.mark.parametrize("platform", [Platform.AZURE_SNP_VTPM, Platform.AZURE_TDX_VTPM, Platform.AWS_NITRO])
def test_a_cas_on_a_platform_without_identity_claims_releases_to_no_one(platform: Platform) -> None:
    own = _evidence(platform, {"measurement": "cd" * 48, "debug": False}, tcb=None)
    (reason,) = appraise_peer(own, own)
    assert reason.startswith(f"this CAS runs on {platform}; the master key is released only between CAS on")


def test_every_mismatch_is_reported_at_once() -> None:
    own = _evidence(Platform.TDX, TDX_CLAIMS)
    peer = _evidence(Platform.TDX, {**TDX_CLAIMS, "debug": True, "rtmr1": "00" * 48, "mr_td": "00" * 48},
                     tcb=TcbStatus.OUT_OF_DATE)  # fmt: skip
    reasons = appraise_peer(own, peer)
    assert len(reasons) == 4, reasons


def test_the_key_release_binding_is_not_the_attestation_binding() -> None:
    key, nonce = b"\x30" * 91, b"\x01" * 32
    assert key_release_binding(key, nonce) != binding_report_data(key, nonce)
    assert len(key_release_binding(key, nonce)) == 64


# --- SEV-SNP, verified for real under a private AMD PKI ----------------------------------------


AMD = make_fake_amd()


def _snp(amd: FakeAmd, report_data: bytes, **changes: object) -> bytes:
    return amd.sign(amd.report(report_data=report_data, **changes))


def _vcek(amd: FakeAmd) -> dict[str, bytes]:
    return {"vcek": amd.vek.public_bytes(serialization.Encoding.DER)}


# --- the releasing side, in process -------------------------------------------------------------


@dataclasses.dataclass
class Releaser:
    cas: Cas
    releaser: KeyReleaser
    sim: SimPlatform
    data_dir: Path

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The key-release events, each checked against its ledger entry."""
        out = []
        kinds = {EVENT_RELEASED: EntryType.KEY_RELEASED, EVENT_REFUSED: EntryType.KEY_RELEASE_REFUSED}
        with self.cas.db.read() as conn:
            rows = raw_execute(
                conn, "SELECT seq, type, payload FROM events WHERE type IN (?, ?) ORDER BY seq", tuple(kinds)
            ).fetchall()
            for seq, type_, payload in rows:
                entry = Entry.from_bytes(Ledger.entry(raw_connection(conn), seq - 1) or b"")
                assert entry.type is kinds[type_] and entry.payload == json.loads(payload)
                out.append((type_, json.loads(payload)))
        return out


@pytest.fixture
def dev_cas(tmp_path: Path) -> Iterator[Releaser]:
    cas, evidence, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    assert cas.key_release is not None and evidence is not None
    yield Releaser(cas, cas.key_release, SimPlatform.load(tmp_path / "cas" / "sim"), tmp_path / "cas")
    cas.db.dispose()


class Joiner:
    """A joining CAS's request: a fresh key, a nonce, evidence over both."""

    def __init__(self, nonce: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.nonce = nonce

    @property
    def binding(self) -> bytes:
        return key_release_binding(self.der, bytes.fromhex(self.nonce))

    def request(self, platform: str, evidence: bytes, aux: dict[str, bytes] | None = None) -> dict[str, Any]:
        return {
            "platform": platform, "evidence": base64.b64encode(evidence).decode(),
            "aux": {k: base64.b64encode(v).decode() for k, v in (aux or {}).items()},
            "public_key": base64.b64encode(self.der).decode(), "nonce": self.nonce,
        }  # fmt: skip

    def sim_request(self, sim: SimPlatform, measurement: bytes | None = None, **kw: Any) -> dict[str, Any]:
        evidence = SimQuoteProvider(sim, measurement or cas_dev_measurement(), **kw).get_evidence(
            self.binding
        )
        return self.request("sim", evidence.raw)

    def open(self, response: dict[str, Any]) -> tuple[bytes, str]:
        return _open_payload(decrypt_release(self.key, response, bytes.fromhex(self.nonce)))


def test_the_same_dev_cas_gets_the_master_key(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    key, key_id = joiner.open(dev_cas.releaser.release(joiner.sim_request(dev_cas.sim)))
    assert key == (dev_cas.data_dir / "master.key").read_bytes()
    assert key_id == master_key_id(key) == dev_cas.cas.sealer.sealing_key_id
    ((kind, payload),) = dev_cas.events()
    assert kind == EVENT_RELEASED
    assert payload["verdict"] == "released" and payload["simulated"] is True
    assert payload["master_key_id"] == key_id
    assert (
        payload["identity"] == {"measurement": cas_dev_measurement().hex()} == payload["releaser"]["identity"]
    )
    assert payload["public_key_sha256"] and payload["evidence_sha256"]
    assert "master_key" not in payload and key.hex() not in json.dumps(payload)


def _refused(
    r: Releaser, request: dict[str, Any], error: type[errors.ConfideError], text: str | None
) -> dict[str, Any]:
    before = len(r.events())
    with pytest.raises(error, match=text):
        r.releaser.release(request)
    events = r.events()
    assert len(events) == before + 1
    kind, payload = events[-1]
    assert (
        kind == EVENT_REFUSED
        and payload["verdict"] == "refused"
        and payload["reason_class"] == error.__name__
    )
    return payload


def test_a_replayed_request_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    request = joiner.sim_request(dev_cas.sim)
    dev_cas.releaser.release(request)
    _refused(dev_cas, request, errors.BindingError, "already used")
    # The same evidence with a fresh nonce does not bind it.
    _refused(dev_cas, {**request, "nonce": dev_cas.releaser.new_nonce()}, errors.BindingError, "report data")


def test_tampered_evidence_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    request = joiner.sim_request(dev_cas.sim)
    raw = bytearray(base64.b64decode(request["evidence"]))
    raw[-1] ^= 1  # the signature
    payload = _refused(
        dev_cas, {**request, "evidence": base64.b64encode(bytes(raw)).decode()}, errors.SignatureError, None
    )
    assert "identity" not in payload  # nothing of unverified evidence is recorded as a claim
    # The nonce was spent by the refusal: the untampered request no longer passes either.
    _refused(dev_cas, request, errors.BindingError, "already used")


def test_evidence_of_another_simulated_platform_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    _refused(dev_cas, joiner.sim_request(SimPlatform.generate()), errors.SignatureError, "platform key id")


def test_evidence_bound_to_another_key_is_refused(dev_cas: Releaser) -> None:
    joiner, other = Joiner(dev_cas.releaser.new_nonce()), Joiner("")
    request = joiner.sim_request(dev_cas.sim)
    request["public_key"] = base64.b64encode(other.der).decode()
    _refused(dev_cas, request, errors.BindingError, None)


def test_another_measurement_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    payload = _refused(dev_cas, joiner.sim_request(dev_cas.sim, bytes(48)), errors.AppraisalError,
                       "not the same CAS as this one: measurement: got 0000")  # fmt: skip
    assert payload["identity"] == {"measurement": "00" * 48}


def test_debug_simulated_evidence_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    _refused(dev_cas, joiner.sim_request(dev_cas.sim, debug=True), errors.AppraisalError, "debug")


def test_an_attestation_nonce_is_no_key_release_nonce(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.cas.new_nonce())
    _refused(
        dev_cas, joiner.sim_request(dev_cas.sim), errors.BindingError, "not issued by this CAS for a key"
    )


def test_an_expired_nonce_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    dev_cas.releaser.clock = lambda: 4e9
    _refused(dev_cas, joiner.sim_request(dev_cas.sim), errors.BindingError, "expired")


def test_no_key_is_released_during_an_online_rotation(dev_cas: Releaser) -> None:
    with dev_cas.cas.db.write() as conn:
        raw_execute(conn, "INSERT INTO meta (key, value) VALUES ('master_key_next', ?)", ("ab" * 16,))
    joiner = Joiner(dev_cas.releaser.new_nonce())
    _refused(dev_cas, joiner.sim_request(dev_cas.sim), errors.ConflictError, "rotation is in progress")


def test_a_rotation_finishing_before_the_reply_answers_with_the_key_released(
    dev_cas: Releaser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An online rotation that runs to its end (dropping the old key) between the release's
    transaction and its reply: the answer is the key that transaction recorded as released (no
    KeyError), and the rotation is not held up."""
    old_key = (dev_cas.data_dir / "master.key").read_bytes()
    rotated: list[str] = []
    info = key_release_module.log.info

    def rotate_then_log(message: str, *args: Any) -> None:
        if EVENT_RELEASED in message and not rotated:  # the log line after the commit, before the reply
            cas = dev_cas.cas
            rotation = OnlineRotation(dev_cas.data_dir, cas.db, cas.sealer, None, cas.events, None)
            rotated.append(rotation.run().state)
        info(message, *args)

    monkeypatch.setattr(key_release_module.log, "info", rotate_then_log)
    joiner = Joiner(dev_cas.releaser.new_nonce())
    key, key_id = joiner.open(dev_cas.releaser.release(joiner.sim_request(dev_cas.sim)))
    assert rotated == ["done"]
    assert key == old_key and key_id == master_key_id(old_key)
    assert key_id not in dev_cas.cas.sealer.key_ids  # the rotation did drop it
    ((kind, payload),) = dev_cas.events()
    assert kind == EVENT_RELEASED and payload["master_key_id"] == key_id


def test_a_cas_without_evidence_of_its_own_releases_to_no_one(dev_cas: Releaser) -> None:
    releaser = KeyReleaser(dev_cas.cas, None)
    joiner = Joiner(releaser.new_nonce())
    dev_cas.releaser = releaser
    _refused(dev_cas, joiner.sim_request(dev_cas.sim), errors.UsageError, "releases its master key to no one")


@pytest.mark.parametrize(
    "request_body",
    [[], {}, {"platform": "sim"}, {"platform": "nope", "evidence": "", "public_key": "", "nonce": ""},
     {"platform": "sim", "evidence": "!", "public_key": "", "nonce": "00"}],
)  # fmt: skip
def test_a_malformed_request_is_a_parse_error_and_not_recorded(dev_cas: Releaser, request_body: Any) -> None:
    with pytest.raises(errors.ParseError):
        dev_cas.releaser.release(request_body)
    assert dev_cas.events() == []


def test_a_public_key_that_is_not_p256_is_refused(dev_cas: Releaser) -> None:
    joiner = Joiner(dev_cas.releaser.new_nonce())
    request = joiner.sim_request(dev_cas.sim)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    request["public_key"] = base64.b64encode(
        p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    with pytest.raises(errors.ParseError, match="P-256"):
        dev_cas.releaser.release(request)


@pytest.fixture
def snp_cas(dev_cas: Releaser) -> Releaser:
    """The dev CAS's database and key, verifying SEV-SNP under the private AMD PKI at ``AT``, as
    a CAS in an SEV-SNP guest whose own report has the measurement of ``AMD.report()``."""
    dev_cas.cas.verifier = PlatformVerifier(amd_roots=AMD.roots())
    own_report = _snp(AMD, bytes(64))

    def own(at: datetime) -> VerifiedEvidence:
        return dev_cas.cas.verifier.verify(Platform.SEV_SNP, own_report, _vcek(AMD), at=at)

    dev_cas.releaser = KeyReleaser(dev_cas.cas, own, clock=AT.timestamp)
    return dev_cas


def test_sev_snp_the_same_image_gets_the_key(snp_cas: Releaser) -> None:
    joiner = Joiner(snp_cas.releaser.new_nonce())
    request = joiner.request("sev-snp", _snp(AMD, joiner.binding, report_id=bytes([2]) * 32), _vcek(AMD))
    key, _ = joiner.open(snp_cas.releaser.release(request))
    assert key == (snp_cas.data_dir / "master.key").read_bytes()
    ((_kind, payload),) = snp_cas.events()
    assert payload["simulated"] is False and payload["identity"]["measurement"] == "cd" * 48


@pytest.mark.parametrize(
    ("changes", "text"),
    [({"measurement": bytes(48)}, "measurement: got 0000"), ({"host_data": bytes(32)}, "host_data: got"),
     ({"policy": GuestPolicy(0x30000 | 1 << 19)}, "debug"), ({"vmpl": 1}, "vmpl: got 1"),
     ({"image_id": bytes(16)}, "image_id: got")],
)  # fmt: skip
def test_sev_snp_another_image_or_a_debug_guest_is_refused(
    snp_cas: Releaser, changes: dict[str, object], text: str
) -> None:
    joiner = Joiner(snp_cas.releaser.new_nonce())
    request = joiner.request("sev-snp", _snp(AMD, joiner.binding, **changes), _vcek(AMD))
    _refused(snp_cas, request, errors.AppraisalError, text)


def test_sev_snp_another_chip_with_the_same_image_gets_the_key(snp_cas: Releaser) -> None:
    """A replica on another machine: another chip, the same launch measurement and policy."""
    other = make_fake_amd(chip_id=bytes([7]) * 64)
    joiner = Joiner(snp_cas.releaser.new_nonce())
    request = joiner.request("sev-snp", _snp(other, joiner.binding), _vcek(other))
    key, _ = joiner.open(snp_cas.releaser.release(request))
    assert key == (snp_cas.data_dir / "master.key").read_bytes()


def test_sev_snp_a_forged_report_is_refused(snp_cas: Releaser) -> None:
    joiner = Joiner(snp_cas.releaser.new_nonce())
    forged = AMD.sign(AMD.report(report_data=joiner.binding), key=ec.generate_private_key(ec.SECP384R1()))
    _refused(snp_cas, joiner.request("sev-snp", forged, _vcek(AMD)), errors.SignatureError, None)


def test_sev_snp_simulated_evidence_is_refused_by_a_tee_cas(snp_cas: Releaser) -> None:
    snp_cas.cas.verifier = PlatformVerifier(amd_roots=AMD.roots(), sim_key=snp_cas.sim.public_key)
    joiner = Joiner(snp_cas.releaser.new_nonce())
    _refused(
        snp_cas, joiner.sim_request(snp_cas.sim), errors.AppraisalError, "platform: got sim, expected sev-snp"
    )


# --- the joining side ---------------------------------------------------------------------------


def test_the_released_payload_is_checked() -> None:
    key = bytes(range(32))
    good = {
        "type": PAYLOAD_TYPE,
        "master_key": base64.b64encode(key).decode(),
        "master_key_id": master_key_id(key),
    }
    assert _open_payload(good) == (key, master_key_id(key))
    with pytest.raises(errors.BindingError, match="has id"):
        _open_payload({**good, "master_key_id": "00" * 16})
    with pytest.raises(errors.ParseError, match="33-byte"):
        _open_payload({**good, "master_key": base64.b64encode(key + b"x").decode()})
    for bad in ({**good, "type": "confide/other"}, {"type": PAYLOAD_TYPE}, [], {**good, "master_key": "!!"}):
        with pytest.raises(errors.ParseError):
            _open_payload(bad)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"dev": False}, "--join needs --tee or --dev"),
     ({"dev": False, "tee": "az-vtpm"}, "not with --tee az-vtpm"),
     ({"dev": True, "join": "http://127.0.0.1:1"}, "expected the https:// URL")],
)  # fmt: skip
def test_join_is_refused_before_any_request(tmp_path: Path, kwargs: dict[str, Any], text: str) -> None:
    args: dict[str, Any] = {"join": "https://127.0.0.1:1", **kwargs}
    with pytest.raises(errors.UsageError, match=text):
        prepare(tmp_path / "cas", host="127.0.0.1", db_url=None, collateral=None, **args)
    assert not (tmp_path / "cas").exists()  # nothing written


def test_join_is_refused_into_a_data_directory_with_a_key(tmp_path: Path) -> None:
    cas, *_ = prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None)
    cas.db.dispose()
    with pytest.raises(errors.UsageError, match=r"already holds master\.key: start without --join"):
        prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None,
                join="https://127.0.0.1:1")  # fmt: skip


def test_join_cannot_reach_the_cas(tmp_path: Path) -> None:
    with pytest.raises(
        errors.NetworkError, match=r"--join https://127\.0\.0\.1:1: cannot obtain the master key"
    ):
        prepare(tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None,
                join="https://127.0.0.1:1")  # fmt: skip
    assert (
        not list((tmp_path / "cas").glob("master.key*")) and not (tmp_path / "cas" / "cas-key.pem").exists()
    )


class _FakeSeal:
    name, binding = "fake", "fake-binding"

    def __init__(self, key: bytes = b"\x42" * 32) -> None:
        self.key = key

    def sealing_key(self) -> bytes:
        return self.key


def test_a_released_key_is_sealed_only_into_an_empty_data_directory(tmp_path: Path) -> None:
    key, seal = bytes(range(32)), _FakeSeal()
    install_master_key(tmp_path, key, seal)
    assert unseal_master_key((tmp_path / SEALED_NAME).read_bytes(), seal) == key
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(errors.UsageError, match=r"already holds master\.key\.sealed"):
        install_master_key(tmp_path, key, seal)


# --- the dev measurement ------------------------------------------------------------------------


def test_the_dev_measurement_is_the_code_not_the_place(tmp_path: Path) -> None:
    interpreter = tmp_path / "python"
    interpreter.write_bytes(b"interpreter")
    for where in ("a", "b"):
        pkg = tmp_path / where / "confide"
        (pkg / "cas" / "__pycache__").mkdir(parents=True)
        (pkg / "__init__.py").write_text("x = 1\n")
        (pkg / "cas" / "core.py").write_text("y = 2\n")
    (tmp_path / "b" / "confide" / "cas" / "__pycache__" / "core.cpython-312.pyc").write_bytes(b"derived")
    a = measure_package(tmp_path / "a" / "confide", interpreter)
    assert len(a) == 48 and a == measure_package(tmp_path / "b" / "confide", interpreter)
    (tmp_path / "b" / "confide" / "cas" / "core.py").write_text("y = 3\n")
    assert measure_package(tmp_path / "b" / "confide", interpreter) != a
    (tmp_path / "b" / "confide" / "cas" / "core.py").write_text("y = 2\n")
    (tmp_path / "b" / "confide" / "cas" / "extra.py").write_text("")
    assert measure_package(tmp_path / "b" / "confide", interpreter) != a
    interpreter.write_bytes(b"another interpreter")
    assert measure_package(tmp_path / "a" / "confide", interpreter) != a


def test_a_request_with_a_duplicated_key_is_refused_over_http(dev_cas: Releaser) -> None:
    """``POST /v1/cas/key-release`` giving ``public_key`` twice: Python's json reads the last,
    another reader the first (a parser differential); 400 (ParseError naming the key), nothing
    recorded, the nonce not spent: the same request without the duplicate gets the key."""
    app = create_app(dev_cas.cas)
    joiner = Joiner(dev_cas.releaser.new_nonce())
    request = joiner.sim_request(dev_cas.sim)
    other = base64.b64encode(b"another key").decode()
    body = json.dumps(request)
    status, answer = call(app, "/v1/cas/key-release", [f'{{"public_key": "{other}", {body[1:]}'.encode()])
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error["class"] == "ParseError" and "duplicate key 'public_key'" in error["message"]
    assert other not in error["message"] and dev_cas.events() == []
    status, answer = call(app, "/v1/cas/key-release", [body.encode()])
    assert status == 200, answer
    assert joiner.open(json.loads(answer))[0] == (dev_cas.data_dir / "master.key").read_bytes()
    assert [kind for kind, _ in dev_cas.events()] == [EVENT_RELEASED]
