"""The CRL a CAS answers is checked before anyone gets it (docs/cas.md "Revocation", fetching
it): ``Cas.crl`` / ``Cas.checked_crl`` / ``AsyncCas.crl`` and ``confide policy crl`` against a
real ``confide cas serve --dev`` (SQLite, over TLS), with the CAS's answer altered on its way to
the client (``CasClient.crl`` wrapped): a signature byte flipped, another CA's CRL, two CRLs
concatenated, PEM with bytes around it, a CRL past its nextUpdate, a CA certificate whose key
may not sign CRLs. Before 2026-12-07 the SDK returned the answer as it came and the command
checked only its form."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess, running_cas
from confide import errors
from confide.cas.client import CasClient
from confide.cas.crl import crl_pem
from confide.sdk import AsyncCas, Cas, Identity
from sdk_env import pki_policy

CA_NAME = "Checked CRL CA"


def public_policy(name: str, common_name: str) -> str:
    """:func:`pki_policy` with its CA declared ``export_public``: its CRL is served to anyone."""
    return pki_policy(name, common_name).replace(
        f"    common_name: {common_name}\n", f"    common_name: {common_name}\n    export_public: true\n", 1
    )


class World:
    """The CAS and what the tests fetch from it: ``alice`` reads ``mine`` (its CA ``ca``,
    ``CA_NAME``), ``twin`` (a CA of the same subject and another key), ``other`` (another
    subject) and ``public`` (a CA declared ``export_public``)."""

    def __init__(self, proc: CasProcess, alice: Identity, alice_file: Path) -> None:
        self.proc, self.alice, self.alice_file = proc, alice, alice_file

    def raw(self, name: str, *, pem: bool = False) -> bytes:
        """The CRL of ``name``/``ca`` as the CAS answers it (unchecked)."""
        client = CasClient.from_env(self.proc.env)
        try:
            return client.crl(name, "ca", self.alice, pem=pem)
        finally:
            client.http.close()

    def ca(self, name: str) -> x509.Certificate:
        with Cas.from_env(self.proc.env) as cas:
            shown = cas.show(name, self.alice).secrets["ca"].certificate
        assert shown is not None
        return x509.load_pem_x509_certificate(shown.encode())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("crl-checked")
    alice = Identity.generate()
    alice_file = directory / "alice.id"
    alice.save(alice_file)
    with running_cas(directory / "cas", None) as proc:
        with Cas.from_env(proc.env) as cas:
            cas.apply(pki_policy("mine", CA_NAME), alice)
            cas.apply(pki_policy("twin", CA_NAME), alice)
            cas.apply(pki_policy("other", "Another CA"), alice)
            cas.apply(public_policy("public", "Public CA"), alice)
        yield World(proc, alice, alice_file)


@pytest.fixture
def cas(world: World) -> Iterator[Cas]:
    with Cas.from_env(world.proc.env) as connected:
        yield connected


def altered(monkeypatch: pytest.MonkeyPatch, change: Callable[[bytes, bool], bytes]) -> None:
    """Every CRL the client receives from now on, passed through ``change(answer, pem)``: what a
    hostile CAS (or anything between it and the client) could send instead."""
    real = CasClient.crl

    def crl(
        self: CasClient, name: str, secret: str, identity: Identity | None, *, pem: bool = False
    ) -> bytes:
        return change(real(self, name, secret, identity, pem=pem), pem)

    monkeypatch.setattr(CasClient, "crl", crl)


def flip_signature(answer: bytes, pem: bool) -> bytes:
    """The last byte (inside the signature BIT STRING) flipped."""
    der = x509.load_pem_x509_crl(answer).public_bytes(serialization.Encoding.DER) if pem else answer
    der = der[:-1] + bytes([der[-1] ^ 0x01])
    return crl_pem(der) if pem else der


def main(args: list[str], monkeypatch: pytest.MonkeyPatch, world: World) -> int:
    """``confide ARGS`` in this process, as ``python -m confide`` runs it: the exit code."""
    from confide.cli import main as confide_main

    for key, value in world.proc.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["confide", *args])
    try:
        confide_main()
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


# --- the good path --------------------------------------------------------------------------------


@pytest.mark.parametrize("pem", [False, True], ids=["der", "pem"])
def test_the_cas_crl_is_checked_against_the_ca_policy_show_gives(cas: Cas, world: World, pem: bool) -> None:
    ca = world.ca("mine")
    checked = cas.checked_crl("mine", "ca", world.alice, pem=pem)
    assert (
        checked.verified
        and checked.ca_sha256 == hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert checked.data == world.raw("mine", pem=pem)  # the bytes the CAS sent, unchanged
    crl = x509.load_pem_x509_crl(checked.data) if pem else x509.load_der_x509_crl(checked.data)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert (checked.this_update, checked.next_update) == (crl.last_update_utc, crl.next_update_utc)
    assert checked.issuer == f"CN={CA_NAME}" and checked.number is not None and not checked.expired
    assert cas.crl("mine", "ca", world.alice, pem=pem) == checked.data
    # the CA certificate given: the same check, no policy show
    assert cas.crl("mine", "ca", world.alice, pem=pem, ca=ca) == checked.data


def test_the_command_writes_the_checked_crl_and_says_what_was_checked(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "ca.crl"
    args = ["policy", "crl", "mine", "ca", "--identity", str(world.alice_file), "--der", "--out", str(out)]
    assert main(args, monkeypatch, world) == 0
    assert out.read_bytes() == world.raw("mine")
    err = capsys.readouterr().err
    sha = hashlib.sha256(world.ca("mine").public_bytes(serialization.Encoding.DER)).hexdigest()
    assert f"CRL of CN={CA_NAME}: number " in err and "nextUpdate 20" in err and sha in err, err
    assert main(["policy", "crl", "mine", "ca", "--identity", str(world.alice_file)], monkeypatch, world) == 0
    assert capsys.readouterr().out.encode() == world.raw("mine", pem=True)  # PEM on standard output


# --- what a hostile answer is refused with -------------------------------------------------------


@pytest.mark.parametrize("pem", [False, True], ids=["der", "pem"])
def test_a_crl_with_a_flipped_signature_byte_is_refused(
    cas: Cas, world: World, monkeypatch: pytest.MonkeyPatch, pem: bool
) -> None:
    altered(monkeypatch, flip_signature)
    with pytest.raises(errors.SignatureError, match="signature does not verify"):
        cas.crl("mine", "ca", world.alice, pem=pem)


def test_a_crl_with_a_flipped_signature_byte_is_refused_by_async_cas(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    altered(monkeypatch, flip_signature)

    async def fetch() -> None:
        async with await AsyncCas.from_env(world.proc.env) as cas:
            with pytest.raises(errors.SignatureError):
                await cas.crl("mine", "ca", world.alice)
            with pytest.raises(errors.SignatureError):
                await cas.checked_crl("mine", "ca", world.alice, pem=True)

    asyncio.run(fetch())


@pytest.mark.parametrize("der", [False, True], ids=["pem", "der"])
def test_the_command_writes_nothing_for_a_tampered_crl(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    der: bool,
) -> None:
    altered(monkeypatch, flip_signature)
    out = tmp_path / "ca.crl"
    args = ["policy", "crl", "mine", "ca", "--identity", str(world.alice_file), "--out", str(out)]
    assert main(args + (["--der"] if der else []), monkeypatch, world) == errors.SignatureError.exit_code
    assert not out.exists()
    assert main(args[:-2], monkeypatch, world) == errors.SignatureError.exit_code
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("error: SignatureError: "), captured.err


@pytest.mark.parametrize(
    ("other", "error", "message"),
    [
        ("other", errors.CollateralError, "not issued by"),  # another subject
        ("twin", errors.CollateralError, "authorityKeyIdentifier"),  # the same subject, another key
    ],
)
def test_the_crl_of_another_ca_is_refused(
    cas: Cas,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    other: str,
    error: type[errors.ConfideError],
    message: str,
) -> None:
    theirs = {pem: world.raw(other, pem=pem) for pem in (False, True)}
    altered(monkeypatch, lambda _answer, pem: theirs[pem])
    for pem in (False, True):
        with pytest.raises(error, match=message):
            cas.crl("mine", "ca", world.alice, pem=pem)
    assert main(["policy", "crl", "mine", "ca", "--identity", str(world.alice_file)], monkeypatch, world) == (
        error.exit_code
    )


def test_a_crl_checked_against_a_certificate_given_of_another_ca_is_refused(cas: Cas, world: World) -> None:
    """``ca=`` is what the caller trusts: the CAS's CA of another key is not that."""
    with pytest.raises(errors.CollateralError):
        cas.crl("mine", "ca", world.alice, ca=world.ca("twin"))
    with pytest.raises(errors.CollateralError, match="not issued by"):
        cas.crl("mine", "ca", world.alice, ca=world.ca("other").public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    "change",
    [
        lambda answer, pem: answer + answer,  # two CRLs concatenated
        lambda answer, pem: answer + (b"\x1b]52;c;cm0gLXJmIH4K\x07" if pem else b"\x00"),  # junk after
        lambda answer, pem: (b"junk\n" if pem else b"\x30\x00") + answer,  # junk before
        lambda answer, pem: answer.replace(b"\n", b"\r\n") if pem else answer[:-1],  # re-flowed, cut
    ],
    ids=["two-crls", "junk-after", "junk-before", "reflowed-or-cut"],
)
@pytest.mark.parametrize("pem", [False, True], ids=["der", "pem"])
def test_an_answer_that_is_not_one_crl_alone_is_refused(
    cas: Cas, world: World, monkeypatch: pytest.MonkeyPatch, change: Callable[[bytes, bool], bytes], pem: bool
) -> None:
    altered(monkeypatch, change)
    with pytest.raises(errors.ParseError, match=r"expected one CRL in (PEM|DER) and nothing else"):
        cas.crl("mine", "ca", world.alice, pem=pem)
    with pytest.raises(errors.ParseError):  # with no CA certificate to check it against too
        cas.crl("public", "ca", pem=pem, allow_expired=True)  # export_public: no identity


def test_a_pem_crl_with_junk_between_two_crls_is_refused_and_writes_nothing(
    cas: Cas,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    altered(monkeypatch, lambda answer, pem: answer + b"\x1b[2J" + answer)
    with pytest.raises(errors.ParseError, match="expected one CRL in PEM and nothing else"):
        cas.crl("mine", "ca", world.alice, pem=True)
    out = tmp_path / "ca.crl"
    args = ["policy", "crl", "mine", "ca", "--identity", str(world.alice_file), "--out", str(out)]
    assert main(args, monkeypatch, world) == errors.ParseError.exit_code
    assert not out.exists() and "\x1b" not in capsys.readouterr().err


# --- dates ---------------------------------------------------------------------------------------


def test_a_crl_past_its_next_update_is_refused_unless_allowed(cas: Cas, world: World) -> None:
    crl = x509.load_der_x509_crl(world.raw("mine"))
    next_update = crl.next_update_utc
    assert next_update is not None
    cas.crl("mine", "ca", world.alice, now=next_update)  # at nextUpdate: still current
    later = next_update + timedelta(seconds=1)
    with pytest.raises(errors.CollateralExpiredError, match="expired: got nextUpdate"):
        cas.crl("mine", "ca", world.alice, now=later)
    allowed = cas.checked_crl("mine", "ca", world.alice, now=later, allow_expired=True)
    assert allowed.expired and allowed.verified
    with pytest.raises(errors.UsageError, match="time zone"):
        cas.crl("mine", "ca", world.alice, now=datetime(2026, 12, 7))


def test_the_command_refuses_an_expired_crl_unless_allowed(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The command reads this machine's clock: here, 8 days ahead (the CAS's CRLs are valid 7)."""
    import confide.cas.cli

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Later:
            return cls.fromtimestamp(datetime.now(UTC).timestamp() + 8 * 86400, tz)

    monkeypatch.setattr(confide.cas.cli, "datetime", Later)
    out = tmp_path / "ca.crl"
    args = ["policy", "crl", "mine", "ca", "--identity", str(world.alice_file), "--out", str(out)]
    assert main(args, monkeypatch, world) == errors.CollateralExpiredError.exit_code
    assert not out.exists()
    assert main([*args, "--allow-expired"], monkeypatch, world) == 0
    assert out.read_bytes() == world.raw("mine", pem=True)
    assert "(EXPIRED, allowed)" in capsys.readouterr().err


# --- the CA certificate ---------------------------------------------------------------------------


def test_a_ca_certificate_whose_key_may_not_sign_crls_is_refused(cas: Cas, world: World) -> None:
    """The CA's subject and key, in a certificate whose keyUsage lacks cRLSign (RFC 5280
    §6.3.3 (f)): the CRL's signature would verify, its issuer may not sign CRLs."""
    ca = world.ca("mine")
    signer = ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    no_crl_sign = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(ca.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(usage, critical=True)
        .sign(signer, hashes.SHA256())
    )
    with pytest.raises(errors.CertificateChainError, match="without cRLSign"):
        cas.crl("mine", "ca", world.alice, ca=no_crl_sign)
    assert cas.crl("mine", "ca", world.alice, ca=ca)  # the CA's own certificate signs CRLs


def test_a_public_crl_is_checked_against_the_ca_certificate_given(
    cas: Cas,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Read as the public (no identity), the CRL is checked against the certificate given
    (``ca=``, ``--ca FILE``); without one, only its form and dates, and the result says so."""
    ca = world.ca("public")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    assert cas.checked_crl("public", "ca", ca=ca_file).verified
    assert cas.checked_crl("public", "ca", ca=ca.public_bytes(serialization.Encoding.DER)).verified
    unchecked = cas.checked_crl("public", "ca")
    assert not unchecked.verified and unchecked.ca_sha256 is None
    with pytest.raises(errors.CollateralError):
        cas.crl("public", "ca", ca=world.ca("mine"))
    with pytest.raises(errors.ParseError, match="expected the CA's certificate alone"):
        cas.crl("public", "ca", ca=ca.public_bytes(serialization.Encoding.PEM) * 2)
    out = tmp_path / "public.crl"
    assert (
        main(["policy", "crl", "public", "ca", "--ca", str(ca_file), "--out", str(out)], monkeypatch, world)
        == 0
    )
    assert out.read_bytes() == cas.crl("public", "ca", ca=ca, pem=True)
    assert "signature verified" in capsys.readouterr().err
    assert main(["policy", "crl", "public", "ca", "--out", str(out)], monkeypatch, world) == 0
    assert "UNVERIFIED" in capsys.readouterr().err
    altered(monkeypatch, flip_signature)
    out.unlink()
    args = ["policy", "crl", "public", "ca", "--ca", str(ca_file), "--out", str(out)]
    assert main(args, monkeypatch, world) == errors.SignatureError.exit_code
    assert not out.exists()
