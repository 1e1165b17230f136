"""A ``--dev`` CAS with either simulated platform key: a new sim directory gets ECDSA P-256 and
its evidence is version 2; a sim directory made before version 2 (an Ed25519 key) keeps working
with version 1. Each CAS accepts only its own key's version (docs/simulator.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cas_inproc import MEASUREMENT, InProcessCas, RuntimeKey, refused
from confide import errors
from confide.cas.pin import verify_cas_evidence
from confide.cas.server import prepare
from confide.sim.platform import PRIVATE_KEY_FILE, SimPlatform


def _ed25519_sim_dir(data_dir: Path) -> None:
    """The sim directory as `cas serve --dev` made it before version 2: an Ed25519 key."""
    sim = data_dir / "sim"
    sim.mkdir(parents=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (sim / PRIVATE_KEY_FILE).write_bytes(pem)
    (sim / PRIVATE_KEY_FILE).chmod(0o600)


@pytest.fixture(params=[2, 1], ids=["new-p256", "old-ed25519"])
def dev(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[InProcessCas, int]]:
    if request.param == 1:
        _ed25519_sim_dir(tmp_path / "cas")
    ipc = InProcessCas.start(tmp_path / "cas")
    yield ipc, request.param
    ipc.cas.db.dispose()


def _request(ipc: InProcessCas, platform: SimPlatform) -> tuple[dict[str, object], RuntimeKey]:
    rt = RuntimeKey(ipc.cas)
    evidence = platform.issue(
        report_data=rt.binding, measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time())
    ).to_bytes()
    return rt.body(policy="app", service="svc", platform="sim", evidence=evidence), rt


def test_the_sim_directory_key_decides_the_version_and_attestation_works(
    dev: tuple[InProcessCas, int],
) -> None:
    ipc, version = dev
    assert ipc.platform.version == version
    body, rt = _request(ipc, ipc.platform)
    config = rt.open(ipc.cas.attest(body))  # released, and decrypted with the runtime key
    assert isinstance(config, dict)


def test_the_other_versions_evidence_is_refused_naming_the_mismatch(dev: tuple[InProcessCas, int]) -> None:
    ipc, version = dev
    other = SimPlatform.generate(ed25519=version == 2)
    body, _rt = _request(ipc, other)
    refused(ipc.cas, body, errors.SignatureError, f"version {other.version} is signed with")


@pytest.mark.parametrize("ed25519", [False, True])
def test_the_dev_cas_own_evidence_verifies_with_its_platform_key(tmp_path: Path, ed25519: bool) -> None:
    if ed25519:
        _ed25519_sim_dir(tmp_path / "cas")
    cas, evidence, _key, cert_path, env, _signer = prepare(
        tmp_path / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    cas.db.dispose()
    assert evidence is not None
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    sim_key = (Path(env["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem").read_bytes()
    pinned = verify_cas_evidence(cert_der, evidence.body, sim_key_pem=sim_key, at=datetime.now(UTC))
    assert pinned.evidence.details["format_version"] == (1 if ed25519 else 2)
    # A client holding the other type of key refuses it, with the mismatch named.
    other = SimPlatform.generate(ed25519=not ed25519).public_key_pem()
    with pytest.raises(errors.SignatureError, match="version"):
        verify_cas_evidence(cert_der, evidence.body, sim_key_pem=other, at=datetime.now(UTC))
