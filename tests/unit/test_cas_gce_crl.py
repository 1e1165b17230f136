"""``cas serve --gce-crl FILE``: the CAS checks ``gce-tpm`` evidence's AK certificate and
intermediate against Google's CRLs in a file (``confide.cas.gce_crl``), read before phase 1 and
again when the file changes: current CRLs accept; a revoked AK certificate, a CRL not signed by
the issuer, a stale CRL and a missing one refuse (recorded as refused with their class); a file
that cannot be read or parsed refuses attestations, and the CAS does not start with one. The
evidence is the runtime provider's on swtpm under a test Google-like PKI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_cas_attest_gce_tpm import policy_text

from cas_inproc import RuntimeKey, last_attestation, production_cas, refused
from confide import errors
from confide.cas.core import Cas
from confide.cas.gce_crl import MAX_FILE_SIZE, GceCrlFile
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.evidence.gce_tpm import parse_gce_attestation
from confide.runtime.gce_tpm import GceTpmQuoteProvider
from confide.runtime.tpm import Tpm
from gce_fakes import FakeGoogle, clear_gce_indices, provision_gce_vtpm

GOOGLE = FakeGoogle.make()


def _window(days: float = 1) -> dict[str, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return {"this_update": now - timedelta(days=days), "next_update": now + timedelta(days=days)}


def _write(path: Path, crls: list[x509.CertificateRevocationList], pem: bool = False) -> None:
    """Replace ``path`` atomically, as an operator should."""
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(c.public_bytes(encoding) for c in crls))
    os.replace(tmp, path)


@pytest.fixture
def vm(swtpm_tpm: Tpm) -> Iterator[GceTpmQuoteProvider]:
    provision_gce_vtpm(swtpm_tpm, GOOGLE)
    try:
        yield GceTpmQuoteProvider(swtpm_tpm, event_log=None, intermediates=[GOOGLE.intermediate_der])
    finally:
        clear_gce_indices(swtpm_tpm)


@pytest.fixture
def crl_file(tmp_path: Path) -> Path:
    path = tmp_path / "google.crl"
    _write(path, [GOOGLE.crl("root", **_window()), GOOGLE.crl(**_window())])  # type: ignore[arg-type]
    return path


@pytest.fixture
def cas(tmp_path: Path, swtpm_tpm: Tpm, crl_file: Path) -> Cas:
    pcrs = swtpm_tpm.pcr_read(range(24))
    verifier = PlatformVerifier(gce_roots=(GOOGLE.root,), gce_crl=GceCrlFile(crl_file))
    return production_cas(tmp_path / "cas", verifier, policy_text(pcrs))


def _body(cas: Cas, vm: GceTpmQuoteProvider) -> tuple[RuntimeKey, dict[str, object], int]:
    rt = RuntimeKey(cas)
    raw = vm.get_evidence(rt.binding).raw
    serial = x509.load_der_x509_certificate(parse_gce_attestation(raw).ak_cert or b"").serial_number
    return rt, rt.body(policy="app", service="vm", platform="gce-tpm", evidence=raw), serial


def test_current_crls_accept_and_a_revoked_ak_certificate_is_refused(
    cas: Cas, vm: GceTpmQuoteProvider, crl_file: Path
) -> None:
    rt, body, serial = _body(cas, vm)
    rt.open(cas.attest(body))
    assert last_attestation(cas)["verdict"] == "accepted"
    # the file replaced (PEM now): read again before the next attestation
    _write(crl_file, [GOOGLE.crl("root", **_window()), GOOGLE.crl(revoked=[serial], **_window())], pem=True)  # type: ignore[arg-type]
    _rt, body, _ = _body(cas, vm)
    refused(cas, body, errors.RevocationError, rf"AK certificate \(serial {serial:#x}\) is revoked")


@pytest.mark.parametrize(
    ("crls", "error", "match"),
    [
        (lambda: [GOOGLE.crl("root", **_window()), GOOGLE.crl(key=ec.generate_private_key(ec.SECP384R1()), **_window())],
         errors.SignatureError, "signature does not verify with"),
        (lambda: [GOOGLE.crl("root", **_window()),
                  GOOGLE.crl(this_update=datetime.now(UTC) - timedelta(days=3), next_update=datetime.now(UTC) - timedelta(days=1))],
         errors.CollateralExpiredError, "expired"),
        (lambda: [GOOGLE.crl("root", **_window())], errors.CollateralMissingError, "AK certificate: no CRL of its issuer"),
        (lambda: [GOOGLE.crl(**_window())], errors.CollateralMissingError, "intermediate 'Test EK/AK CA Intermediate': no CRL"),
    ],
)  # fmt: skip
def test_what_the_crls_do_not_vouch_for_is_refused(
    cas: Cas,
    vm: GceTpmQuoteProvider,
    crl_file: Path,
    crls: object,
    error: type[errors.ConfideError],
    match: str,
) -> None:
    _write(crl_file, crls())  # type: ignore[operator]
    _rt, body, _ = _body(cas, vm)
    refused(cas, body, error, match)


def test_a_file_that_cannot_be_read_or_parsed_refuses(
    cas: Cas, vm: GceTpmQuoteProvider, crl_file: Path
) -> None:
    crl_file.write_bytes(b"\x30\x03\x02\x01")
    _rt, body, _ = _body(cas, vm)
    refused(cas, body, errors.ParseError, "--gce-crl")
    crl_file.unlink()
    _rt, body, _ = _body(cas, vm)
    refused(cas, body, errors.StorageError, "No such file or directory")


def test_the_file_is_parsed_again_only_when_it_changed(crl_file: Path) -> None:
    source = GceCrlFile(crl_file)
    first = source.load()
    assert source.load() is first
    _write(crl_file, [GOOGLE.crl(**_window(2))])  # type: ignore[arg-type]
    assert source.load() is not first and len(source.load()) == 1
    crl_file.write_bytes(b"\x30" * (MAX_FILE_SIZE + 1))
    with pytest.raises(errors.ParseError, match=f"more than {MAX_FILE_SIZE} bytes"):
        source.load()


def test_the_cas_does_not_start_with_a_bad_file(tmp_path: Path) -> None:
    """Refused before any key or database state is made: the data directory is not created (a
    start that fails for an option leaves nothing behind; since 2026-12-07), and one that exists
    is left as it was."""
    bad = tmp_path / "bad.crl"
    bad.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n")
    with pytest.raises(errors.ParseError, match="not base64") as info:
        prepare(tmp_path / "cas", host="127.0.0.1", dev=False, db_url=None, collateral=None, gce_crl=str(bad))
    assert info.value.exit_code == 10 and not (tmp_path / "cas").exists()
    (tmp_path / "cas2").mkdir()
    with pytest.raises(errors.StorageError, match="No such file") as stored:
        prepare(
            tmp_path / "cas2",
            host="127.0.0.1",
            dev=True,
            db_url=None,
            collateral=None,
            gce_crl=str(tmp_path / "none"),
        )
    assert stored.value.exit_code == 50 and list((tmp_path / "cas2").iterdir()) == []
    with pytest.raises(errors.UsageError, match="--kds"):
        prepare(tmp_path / "cas3", host="127.0.0.1", dev=True, db_url=None, collateral=None, kds="ftp://x")
    assert not (tmp_path / "cas3").exists()
