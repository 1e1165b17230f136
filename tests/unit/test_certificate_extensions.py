"""The extensions of the certificates the CAS generates (docs/policy.md "Certificate
extensions"): RFC 5280 §4.2.1.3 keyUsage, §4.2.1.9 basicConstraints with a pathLenConstraint
derived from the policy's x509-ca chain (or ``path_len``), §4.2.1.12 extendedKeyUsage. Checked
with ``cryptography`` (fields and its X.509 verifier) and with ``openssl verify -x509_strict
-purpose sslserver|sslclient``: chains from a generated CA validate, a leaf cannot act as a CA,
a CA cannot certify more CA levels than its policy declares. Also the certificates issued to a
runtime's key, renewal, re-issue at a policy update, and the CAS's own TLS certificate."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from test_secret_generation_review import _policy

from confide.cas.declaration import fingerprints
from confide.cas.renewal import renew_due
from confide.cas.secrets import (
    SecretValue,
    ca_path_lengths,
    ca_reissue_reason,
    generate,
    issue_to_runtime,
    key_usage_changed,
    renew_certificate,
)
from confide.cas.server import _tls_identity
from confide.errors import PolicyError
from confide.ledger.encoding import EntryType
from confide.policy.loader import loads_policy
from confide.policy.model import Policy
from confide.policy.secret import Secret, ca_levels_below
from crl_env import DAY, T0, policy, started

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

# root -> mid -> {srv (server), cli (client), both (no endpoint), rsa (RSA key)}; ed (Ed25519) under
# root; self (self-signed leaf)
PKI = """  - name: root_key
    kind: private-key
  - name: root
    kind: x509-ca
    private_key: root_key
  - name: mid_key
    kind: private-key
    key_type: P-384
  - name: mid
    kind: x509-ca
    private_key: mid_key
    issuer: root
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: mid
    endpoint: server
    dns: [srv.local]
  - name: cli_key
    kind: private-key
  - name: cli
    kind: x509
    private_key: cli_key
    issuer: mid
    endpoint: client
  - name: both
    kind: x509
    private_key: srv_key
    issuer: mid
    dns: [both.local]
  - name: rsa_key
    kind: private-key
    key_type: RSA-2048
  - name: rsa
    kind: x509
    private_key: rsa_key
    issuer: mid
    endpoint: server
    dns: [rsa.local]
  - name: ed_key
    kind: private-key
    key_type: Ed25519
  - name: ed
    kind: x509
    private_key: ed_key
    issuer: root
    dns: [ed.local]
  - name: self
    kind: x509
    private_key: srv_key
    endpoint: server
    dns: [self.local]
"""


def _generate_all(pol: Policy) -> dict[str, SecretValue]:
    """Every secret of ``pol`` as the CAS generates them (declaration order, pathLen from the
    policy)."""
    lengths = ca_path_lengths(pol.secrets)
    resolved: dict[str, SecretValue] = {}
    for spec in pol.secrets:
        resolved[spec.name] = generate(
            spec, resolved=resolved, now=NOW, path_length=lengths.get(spec.name, 0)
        )
    return resolved


@pytest.fixture(scope="module")
def pki() -> dict[str, SecretValue]:
    return _generate_all(loads_policy(_policy(PKI)))


def _cert(value: SecretValue | bytes) -> x509.Certificate:
    der = value if isinstance(value, bytes) else value.certificate
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _pem(ders: Sequence[bytes]) -> bytes:
    return b"".join(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in ders)


def openssl_verify(
    tmp: Path,
    leaf: bytes,
    anchors: Sequence[bytes],
    untrusted: Sequence[bytes] = (),
    purpose: str = "sslserver",
    at: float | None = None,
) -> tuple[bool, str]:
    """``openssl verify -x509_strict -purpose PURPOSE`` of the DER ``leaf`` against ``anchors``
    (the only trusted certificates) with ``untrusted`` intermediates, at ``at`` (POSIX
    seconds; default an hour after :data:`NOW`): (verified, output)."""
    assert OPENSSL is not None
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "leaf.pem").write_bytes(_pem([leaf]))
    (tmp / "anchors.pem").write_bytes(_pem(anchors))
    args = [
        OPENSSL,
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-attime",
        str(int(NOW.timestamp() + 3600 if at is None else at)),
    ]
    args += ["-CAfile", str(tmp / "anchors.pem")]
    if untrusted:
        (tmp / "untrusted.pem").write_bytes(_pem(untrusted))
        args += ["-untrusted", str(tmp / "untrusted.pem")]
    proc = subprocess.run([*args, str(tmp / "leaf.pem")], capture_output=True, text=True, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ what each certificate carries


def test_ca_certificates_carry_critical_key_usage_and_a_path_length(pki: dict[str, SecretValue]) -> None:
    for name, path_length in (("root", 1), ("mid", 0)):
        cert = _cert(pki[name])
        bc = _ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=path_length), name
        ku = _ext(cert, x509.KeyUsage)
        assert ku.critical
        assert ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature  # no ``ocsp: {signer: ca}``
        assert not ku.value.key_encipherment and not ku.value.key_agreement
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.ExtendedKeyUsage)  # a CA's purposes are not narrowed


@pytest.mark.parametrize(
    ("name", "encipherment", "usages"),
    [
        ("srv", False, [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("cli", False, [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", False, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("rsa", True, [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("ed", False, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("self", False, [ExtendedKeyUsageOID.SERVER_AUTH]),
    ],
)
def test_leaf_certificates_carry_critical_key_usage_and_no_ca(
    pki: dict[str, SecretValue], name: str, encipherment: bool, usages: list[x509.ObjectIdentifier]
) -> None:
    cert = _cert(pki[name])
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value == x509.KeyUsage(True, False, encipherment, False, False, False, False, False, False)
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == usages


def test_a_runtime_certificate_carries_the_same_leaf_extensions(pki: dict[str, SecretValue]) -> None:
    spec = Secret.model_validate(
        {"name": "rt", "kind": "x509", "issuer": "mid", "issue_to_runtime": True, "dns": ["rt.local"]}
    )
    runtime_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    value = issue_to_runtime(spec, runtime_key, pki["mid"], NOW)
    cert = _cert(value)
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign


# ------------------------------------------------------------------ relying parties


def test_cryptography_verifies_the_generated_chains(pki: dict[str, SecretValue]) -> None:
    store = verification.Store([_cert(pki["root"])])
    at = NOW + timedelta(hours=1)
    mid = _cert(pki["mid"])
    server = (
        verification.PolicyBuilder().store(store).time(at).build_server_verifier(x509.DNSName("srv.local"))
    )
    assert server.verify(_cert(pki["srv"]), [mid])[-1] == _cert(pki["root"])
    server_rsa = (
        verification.PolicyBuilder().store(store).time(at).build_server_verifier(x509.DNSName("rsa.local"))
    )
    server_rsa.verify(_cert(pki["rsa"]), [mid])
    client = verification.PolicyBuilder().store(store).time(at).build_client_verifier()
    # Its client profile requires a subjectAltName, which an ``endpoint: client`` certificate
    # cannot have (docs/policy.md): the one without endpoint is both.
    client.verify(_cert(pki["both"]), [mid])
    # Its verifier checks extendedKeyUsage: a client certificate is no server's.
    with pytest.raises(verification.VerificationError):
        server.verify(_cert(pki["cli"]), [mid])
    # The check of its extendedKeyUsage is openssl's -purpose below.


@needs_openssl
@pytest.mark.parametrize(
    ("name", "purpose", "ok"),
    [
        ("srv", "sslserver", True),
        ("srv", "sslclient", False),
        ("cli", "sslclient", True),
        ("cli", "sslserver", False),
        ("both", "sslserver", True),
        ("both", "sslclient", True),
        ("rsa", "sslserver", True),
    ],
)
def test_openssl_verifies_each_leaf_for_its_purpose_only(
    pki: dict[str, SecretValue], tmp_path: Path, name: str, purpose: str, ok: bool
) -> None:
    assert pki["root"].certificate is not None and pki["mid"].certificate is not None
    leaf = pki[name].certificate
    assert leaf is not None
    verified, out = openssl_verify(
        tmp_path, leaf, [pki["root"].certificate], [pki["mid"].certificate], purpose
    )
    assert verified is ok, out
    # The chain the CAS releases with the certificate (``chain``: its issuers) is that chain.
    assert pki[name].chain == (pki["mid"].certificate, pki["root"].certificate)


@needs_openssl
def test_openssl_verifies_an_ed25519_leaf_and_a_self_signed_one(
    pki: dict[str, SecretValue], tmp_path: Path
) -> None:
    assert pki["root"].certificate is not None and pki["ed"].certificate is not None
    verified, out = openssl_verify(tmp_path / "ed", pki["ed"].certificate, [pki["root"].certificate])
    assert verified, out
    own = pki["self"].certificate
    assert own is not None
    verified, out = openssl_verify(tmp_path / "self", own, [own])  # trusted as itself
    assert verified, out


def _signed_by(
    issuer: SecretValue, cn: str, *, ca: bool, path_length: int | None = None
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A certificate for a new key signed with ``issuer``'s private key, naming ``issuer`` as
    its issuer: what anyone holding that key could make."""
    issuer_cert = _cert(issuer)
    issuer_key = serialization.load_der_private_key(issuer.data, None)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )  # type: ignore[arg-type]
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    cert = builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER), key


@needs_openssl
def test_a_leaf_cannot_act_as_a_ca(pki: dict[str, SecretValue], tmp_path: Path) -> None:
    """A certificate signed with a generated leaf's key (which a service holds) is refused: the
    leaf is no CA (cA false) and its keyUsage has no keyCertSign."""
    forged, _ = _signed_by(pki["srv"], "forged.local", ca=False)
    assert pki["root"].certificate is not None and pki["mid"].certificate is not None
    assert pki["srv"].certificate is not None
    untrusted = [pki["srv"].certificate, pki["mid"].certificate]
    verified, out = openssl_verify(tmp_path, forged, [pki["root"].certificate], untrusted)
    assert not verified and "invalid CA certificate" in out, out
    store = verification.Store([_cert(pki["root"])])
    builder = verification.PolicyBuilder().store(store).time(NOW + timedelta(hours=1))
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("forged.local")).verify(
            _cert(forged), [_cert(pki["srv"]), _cert(pki["mid"])]
        )


@needs_openssl
def test_a_ca_cannot_certify_more_ca_levels_than_its_policy_declares(
    pki: dict[str, SecretValue], tmp_path: Path
) -> None:
    """mid issues only leaves in its policy (pathLen 0): a CA made with its key (a service that
    holds it) cannot certify anything that validates; root (pathLen 1) can certify one level."""
    assert pki["root"].certificate is not None and pki["mid"].certificate is not None
    sub_der, sub_key = _signed_by(pki["mid"], "sub.local", ca=True)
    sub = SecretValue("x509-ca", sub_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), sub_der)  # fmt: skip
    leaf, _ = _signed_by(sub, "under-sub.local", ca=False)
    verified, out = openssl_verify(
        tmp_path / "mid", leaf, [pki["root"].certificate], [sub_der, pki["mid"].certificate]
    )
    assert not verified and "path length constraint exceeded" in out, out
    # The same leaf under a CA of the same depth as mid but signed by root directly validates.
    sibling_der, sibling_key = _signed_by(pki["root"], "sibling.local", ca=True, path_length=0)
    sibling = SecretValue("x509-ca", sibling_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), sibling_der)  # fmt: skip
    ok_leaf, _ = _signed_by(sibling, "under-sibling.local", ca=False)
    verified, out = openssl_verify(tmp_path / "root", ok_leaf, [pki["root"].certificate], [sibling_der])
    assert verified, out


# ------------------------------------------------------------------ the policy: levels, path_len


def _three_levels(extra: str = "", root_extra: str = "") -> str:
    return f"""  - name: k
    kind: private-key
  - name: a
    kind: x509-ca
    private_key: k
{root_extra}  - name: b
    kind: x509-ca
    private_key: k
    issuer: a
  - name: c
    kind: x509-ca
    private_key: k
    issuer: b
  - name: d
    kind: x509-ca
    private_key: k
    issuer: a
  - name: leaf
    kind: x509
    private_key: k
    issuer: c
{extra}"""


def test_path_lengths_are_the_ca_levels_declared_below() -> None:
    pol = loads_policy(_policy(_three_levels()))
    assert ca_levels_below(pol.secrets) == {"a": 2, "b": 1, "c": 0, "d": 0}
    assert ca_path_lengths(pol.secrets) == {"a": 2, "b": 1, "c": 0, "d": 0}
    raised = loads_policy(_policy(_three_levels(root_extra="    path_len: 5\n")))
    assert ca_path_lengths(raised.secrets)["a"] == 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_three_levels(root_extra="    path_len: 1\n"), "got path_len 1, expected at least 2"),
        (_three_levels(root_extra="    path_len: -1\n"), "got integer -1, expected >= 0"),
        (_three_levels(root_extra="    path_len: 33\n"), "got integer 33, expected <= 32"),
        (_three_levels(root_extra='    path_len: "1"\n'), "got string .1., expected an integer"),
        (_three_levels(extra="    path_len: 0\n"), "got path_len for a x509 secret"),
    ],
)
def test_a_path_len_that_does_not_fit_is_refused_at_load(text: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        loads_policy(_policy(text))


def _explicit_ca_pem(path_length: int | None, *, ca: bool = True) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Explicit CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines())


def _explicit_root(path_length: int | None, *, ca: bool = True, sub_ca: bool = True) -> str:
    cert_pem, key_pem = _explicit_ca_pem(path_length, ca=ca)
    below = "x509-ca" if sub_ca else "x509"
    return f"""  - name: root_key
    kind: private-key
    value: |
{_indent(key_pem)}
  - name: root
    kind: x509-ca
    private_key: root_key
    value: |
{_indent(cert_pem)}
  - name: sub
    kind: {below}
    private_key: root_key
    issuer: root
"""


def test_an_explicit_ca_must_allow_the_ca_levels_below_it() -> None:
    with pytest.raises(PolicyError, match="pathLenConstraint 0, expected at least 1"):
        loads_policy(_policy(_explicit_root(0)))
    with pytest.raises(PolicyError, match="cA false, expected a CA certificate"):
        loads_policy(_policy(_explicit_root(None, ca=False)))
    with pytest.raises(PolicyError, match="got path_len with an explicit value"):
        loads_policy(
            _policy(
                _explicit_root(1).replace(
                    "    value: |\n      -----BEGIN CERTIFICATE",
                    "    path_len: 1\n    value: |\n      -----BEGIN CERTIFICATE",
                    1,
                )
            )
        )
    loads_policy(_policy(_explicit_root(1)))  # allows one level
    loads_policy(_policy(_explicit_root(None)))  # no constraint
    loads_policy(_policy(_explicit_root(0, sub_ca=False)))  # only a leaf below it
    # A version the CAS stored before the check still loads (its chain was issued already).
    loads_policy(_policy(_explicit_root(0)), stored=True)


def test_path_len_leaves_the_declaration_fingerprint_of_stored_secrets_as_it_was() -> None:
    """A secret keeps its stored value while its declaration's fingerprint matches (docs/cas.md
    "Declaration fingerprints"): these are the fingerprints of the version before ``path_len``
    (the whole-dump form), still honoured; ``path_len`` is in neither form."""
    expected = {
        "root": "1bca4e25075db424f2a3d65e1007ddbb49f282b00612ad72bc6bd9f6f680ddaa",
        "srv": "cd82ba4e890d4e06bb9d09499a28721af77b8a0fa1b6520696aaea101b7c4f2e",
    }
    specs = [
        {"name": "root", "kind": "x509-ca", "private_key": "root_key", "common_name": "Root CA", "valid_for": "365 days"},
        {"name": "srv", "kind": "x509", "private_key": "srv_key", "issuer": "root", "dns": ["srv.local"],
         "endpoint": "server"},
    ]  # fmt: skip
    for declared in specs:
        spec = Secret.model_validate(declared)
        assert expected[spec.name] in fingerprints(spec).accepted
    # path_len is not part of the fingerprint: changing it re-issues, it does not regenerate.
    root = Secret.model_validate(specs[0])
    raised = Secret.model_validate({**specs[0], "path_len": 3})
    assert expected["root"] in fingerprints(raised).accepted
    assert fingerprints(raised).current == fingerprints(root).current


# ------------------------------------------------------------------ renewal and re-issue


def _public(value: SecretValue) -> str:
    return json.dumps(value.public_info())


def test_renewal_keeps_the_extensions(pki: dict[str, SecretValue]) -> None:
    pol = loads_policy(_policy(PKI))
    later = NOW + timedelta(days=200)
    root = renew_certificate(pol.secret("root"), pki["root"], issuer=None, now=later, path_length=1)
    srv = renew_certificate(pol.secret("srv"), pki["srv"], issuer=pki["mid"], now=later)
    for old, new in ((pki["root"], root), (pki["srv"], srv)):
        for kind in (x509.BasicConstraints, x509.KeyUsage):
            assert _ext(_cert(new), kind) == _ext(_cert(old), kind)


def test_reissue_reasons(pki: dict[str, SecretValue]) -> None:
    pol = loads_policy(_policy(PKI))
    root, mid = pol.secret("root"), pol.secret("mid")
    assert ca_reissue_reason(root, _public(pki["root"]), 1) is None
    assert ca_reissue_reason(root, _public(pki["root"]), 2) == "path-length"  # a level added
    assert ca_reissue_reason(mid, _public(pki["mid"]), 0) is None
    assert ca_reissue_reason(pol.secret("srv"), _public(pki["srv"]), 0) is None  # not a CA
    # A level removed: a constraint larger than the policy's is tightened too.
    assert ca_reissue_reason(root, _public(pki["root"]), 0) == "path-length"
    # A CA certificate issued before confide set a pathLenConstraint is left until its renewal
    # (it refuses no path), unless the policy declares path_len.
    old = _reissued_without_path_length(pki["root"])
    assert _ext(_cert(old), x509.BasicConstraints).value.path_length is None
    assert ca_reissue_reason(root, _public(old), 1) is None
    declared = root.model_copy(update={"path_len": 1})
    assert ca_reissue_reason(declared, _public(old), 1) == "path-length"
    # A renewal for path_length 0 under a declared path_len 1 is re-issued; one for 1 is not.
    tight = renew_certificate(root, pki["root"], issuer=None, now=NOW, path_length=0)
    assert ca_reissue_reason(declared, _public(tight), 1) == "path-length"
    exact = renew_certificate(root, pki["root"], issuer=None, now=NOW, path_length=1)
    assert ca_reissue_reason(declared, _public(exact), 1) is None


def test_a_stored_certificate_whose_extensions_do_not_parse_is_left_alone(
    pki: dict[str, SecretValue],
) -> None:
    """A CA certificate edited in the database so that its extensions no longer parse
    (``cryptography`` parses them lazily) is treated like one that does not parse at all:
    no reason to re-issue, and no exception outside ``confide.errors``."""
    pol = loads_policy(_policy(PKI))
    root = pol.secret("root")
    der = pki["root"].certificate
    assert der is not None
    basic, key_usage = bytes.fromhex("0603551d13"), bytes.fromhex("0603551d0f")
    assert der.count(basic) == 1 and der.count(key_usage) == 1
    broken = SecretValue(pki["root"].kind, pki["root"].data, der.replace(basic, key_usage), pki["root"].chain)
    cert = x509.load_der_x509_certificate(der.replace(basic, key_usage))
    with pytest.raises(x509.DuplicateExtension):
        _ = cert.extensions
    assert key_usage_changed(root, _public(broken)) is False
    assert ca_reissue_reason(root, _public(broken), 1) is None


def _reissued_without_path_length(ca: SecretValue) -> SecretValue:
    """``ca``'s certificate as confide issued it before pathLenConstraint: the same, without it."""
    cert = _cert(ca)
    key = serialization.load_der_private_key(ca.data, None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        value = (
            x509.BasicConstraints(ca=True, path_length=None)
            if isinstance(ext.value, x509.BasicConstraints)
            else ext.value
        )
        builder = builder.add_extension(value, critical=ext.critical)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]
    return SecretValue(ca.kind, ca.data, der, ca.chain)


# ------------------------------------------------------------------ in the CAS


INTERMEDIATE = """  - name: int_key
    kind: private-key
  - name: int
    kind: x509-ca
    private_key: int_key
    issuer: ca
    common_name: Intermediate CA
    valid_for: 60 days
  - name: below_key
    kind: private-key
  - name: below
    kind: x509
    private_key: below_key
    issuer: int
    common_name: below.local
    dns: [below.local]
    valid_for: 30 days
"""


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@needs_openssl
def test_an_update_that_adds_a_ca_level_reissues_the_ca_above_it(tmp_path: Path) -> None:
    with started(tmp_path / "cas") as env:
        first = env.ca_cert()
        assert _ext(first, x509.BasicConstraints).value.path_length == 0
        srv_before = env.certificate("srv")
        env.apply_text(policy(predecessor=env.head(), ca_extra=INTERMEDIATE))
        ca = env.ca_cert()
        # Re-issued, not regenerated: same key and subject, pathLen 1 for the new level.
        assert _ext(ca, x509.BasicConstraints).value.path_length == 1
        assert _spki(ca) == _spki(first) and ca.subject == first.subject
        assert ca.serial_number != first.serial_number
        renewed = env.events("certificates-renewed", EntryType.CERTIFICATES_RENEWED)
        reasons = {c["name"]: c["reason"] for c in renewed[-1]["certificates"]}
        assert reasons["ca"] == "path-length"
        assert reasons["srv"] == "issuer-renewed"  # what it signed follows it
        assert _spki(env.certificate("srv")) == _spki(srv_before)
        # Nothing was revoked: the update changed no declaration.
        assert env.events("certificates-revoked", EntryType.CERTIFICATES_REVOKED) == []
        # The new intermediate is under the re-issued CA, and the chain validates.
        # Generated under the CA's previous certificate, then re-issued in the same transaction.
        assert [v for v, _ in env.versions("int")] == [1, 2]
        int_cert, below = env.certificate("int"), env.certificate("below")
        assert _ext(int_cert, x509.BasicConstraints).value.path_length == 0
        assert int_cert.verify_directly_issued_by(ca) is None
        verified, out = openssl_verify(
            tmp_path / "v1", _der(below), [_der(ca)], [_der(int_cert)], at=env.clock.now
        )
        assert verified, out
        verified, out = openssl_verify(
            tmp_path / "v2", _der(env.certificate("srv")), [_der(ca)], at=env.clock.now
        )
        assert verified, out
        # The released files carry the same chain.
        env.clock.now += 1
        files = env.release()
        assert x509.load_pem_x509_certificate(files["/dev/shm/crl/ca.pem"]) == ca

        # Removing the level tightens the CA again (re-issued with pathLen 0).
        env.apply_text(policy(predecessor=env.head()))
        assert _ext(env.ca_cert(), x509.BasicConstraints).value.path_length == 0
        assert _spki(env.ca_cert()) == _spki(first)

        # The sweep's renewal keeps the pathLenConstraint and the keyUsage.
        env.clock.now = T0 + 61 * DAY
        renew_due(env.cas)
        renewed_ca = env.ca_cert()
        assert renewed_ca.serial_number != env.certificate("ca", 1, "tls").serial_number
        assert _ext(renewed_ca, x509.BasicConstraints) == _ext(first, x509.BasicConstraints)
        assert _ext(renewed_ca, x509.KeyUsage) == _ext(first, x509.KeyUsage)
        assert _ext(env.certificate("srv"), x509.KeyUsage).value.digital_signature


def test_path_len_declared_on_an_update_reissues_the_ca(tmp_path: Path) -> None:
    with started(tmp_path / "cas") as env:
        first = env.ca_cert()
        srv_versions = len(env.versions("srv"))
        env.apply_text(policy(predecessor=env.head(), ca_extra="    path_len: 2"))
        ca = env.ca_cert()
        assert _ext(ca, x509.BasicConstraints).value.path_length == 2
        assert _spki(ca) == _spki(first)
        assert len(env.versions("srv")) == srv_versions + 1  # re-issued under it, same key
        # Applying the same path_len again changes nothing.
        count = len(env.versions("ca"))
        env.apply_text(policy(predecessor=env.head(), ca_extra="    path_len: 2", dns="srv2.local"))
        assert len(env.versions("ca")) == count


@needs_openssl
def test_the_cas_tls_certificate_verifies_strictly_as_a_server_and_is_no_client(tmp_path: Path) -> None:
    _, cert_path = _tls_identity(tmp_path, "127.0.0.1")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_cert_sign
    assert _ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    der = _der(cert)
    at = cert.not_valid_before_utc.timestamp() + 3600  # made at the wall clock's time
    verified, out = openssl_verify(tmp_path / "srv", der, [der], purpose="sslserver", at=at)
    assert verified, out
    verified, out = openssl_verify(tmp_path / "cli", der, [der], purpose="sslclient", at=at)
    assert not verified, out


def _with_basic_constraints_twice() -> str:
    """An explicit CA certificate whose basicConstraints appears twice (cA TRUE with pathLen 1,
    then pathLen 0): built with a placeholder OID of the same length in the second extension,
    then renamed in the DER (nothing here checks its signature)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Explicit CA")])
    second = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), bytes.fromhex("30060101ff020100"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(second, critical=True)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    placeholder, basic_constraints = (
        bytes.fromhex("0603551d63"),
        bytes.fromhex("0603551d13"),
    )  # 2.5.29.99, .19
    assert der.count(placeholder) == 1
    b64 = base64.b64encode(der.replace(placeholder, basic_constraints)).decode()
    cert_pem = "\n".join(
        ["-----BEGIN CERTIFICATE-----", *textwrap.wrap(b64, 64), "-----END CERTIFICATE-----"]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return f"""  - name: root_key
    kind: private-key
    value: |
{_indent(key_pem)}
  - name: root
    kind: x509-ca
    private_key: root_key
    value: |
{_indent(cert_pem)}
  - name: sub
    kind: x509-ca
    private_key: root_key
    issuer: root
"""


def test_an_explicit_ca_with_an_extension_twice_is_a_policy_error() -> None:
    """Which basicConstraints counts depends on the reader; the loader refuses the certificate
    with a PolicyError (it raised cryptography's DuplicateExtension, a traceback)."""
    text = _policy(_with_basic_constraints_twice())
    with pytest.raises(PolicyError, match=r"extensions do not parse \(Duplicate 2\.5\.29\.19 extension"):
        loads_policy(text)
    loads_policy(text, stored=True)  # a stored version is not judged again
