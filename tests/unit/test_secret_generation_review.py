"""What each secret kind generates and how each placeholder format renders it, against SCONE's
session language v0.3 ("Secret Kinds", "x509 and x509-ca") and RFC 5280: the defaults, the
certificate subject, the ``chain`` and ``.chain`` orders, and the formats refused at load."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.secrets import SecretValue, generate, render
from confide.errors import PolicyError
from confide.policy.loader import loads_policy
from confide.policy.model import Policy
from confide.policy.placeholders import Encoding
from confide.policy.secret import Secret

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _policy(secrets: str, content: str = "none") -> str:
    return f"""version: "0.3"
name: p
services:
  - name: svc
    image_name: img
    command: app
    attestation: {{sim: {{measurement: "{"00" * 32}"}}}}
images:
  - name: img
    injection_files:
      - path: /x
        content: "{content}"
secrets:
{secrets}
security:
  attestation:
    tolerate: [simulation]
"""


def _generate_all(policy: Policy) -> dict[str, SecretValue]:
    """Every secret of ``policy``, in declaration order after the ones they reference."""
    resolved: dict[str, SecretValue] = {}
    pending = list(policy.secrets)
    while pending:
        for spec in pending:
            needs = {spec.private_key, spec.issuer} - {None}
            if needs <= set(resolved):
                resolved[spec.name] = generate(spec, resolved=resolved, now=NOW)
                pending.remove(spec)
                break
        else:
            raise AssertionError("unresolvable references")
    return resolved


PKI = """  - name: root_key
    kind: private-key
  - name: root
    kind: x509-ca
    private_key: root_key
  - name: mid_key
    kind: private-key
  - name: mid
    kind: x509-ca
    private_key: mid_key
    issuer: root
  - name: leaf_key
    kind: private-key
  - name: leaf
    kind: x509
    private_key: leaf_key
    issuer: mid
"""


@pytest.fixture(scope="module")
def pki() -> dict[str, SecretValue]:
    return _generate_all(loads_policy(_policy(PKI)))


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem) if pem else []


def test_chain_is_the_issuers_without_the_certificate(pki: dict[str, SecretValue]) -> None:
    """SCONE v0.3: ``chain`` starts at the first intermediate, ends at the root, and does not
    include the certificate; ``crt`` followed by ``chain`` is the full chain."""
    leaf, mid, root = (
        x509.load_der_x509_certificate(pki[n].certificate or b"") for n in ("leaf", "mid", "root")
    )
    assert _certs(render(pki["leaf"], Encoding.CHAIN_PEM)) == [mid, root]
    assert _certs(render(pki["mid"], Encoding.CHAIN_PEM)) == [root]
    assert render(pki["root"], Encoding.CHAIN_PEM) == b""  # self-signed: no issuers
    full = render(pki["leaf"], Encoding.CERT_PEM) + render(pki["leaf"], Encoding.CHAIN_PEM)
    assert _certs(full) == [leaf, mid, root]


def test_legacy_chain_is_root_first_certificate_last(pki: dict[str, SecretValue]) -> None:
    """SCONE's deprecated ``.chain``: root first, then intermediates, the certificate last."""
    leaf, mid, root = (
        x509.load_der_x509_certificate(pki[n].certificate or b"") for n in ("leaf", "mid", "root")
    )
    assert _certs(render(pki["leaf"], Encoding.LEGACY_CHAIN_PEM)) == [root, mid, leaf]
    assert _certs(render(pki["root"], Encoding.LEGACY_CHAIN_PEM)) == [root]


def test_default_sizes_are_scones_twenty() -> None:
    """SCONE v0.3 "ascii"/"binary": ``size`` defaults to 20 (characters, bytes); docs/policy.md."""
    policy = loads_policy(_policy("  - name: a\n    kind: ascii\n  - name: b\n    kind: binary\n"))
    values = _generate_all(policy)
    assert len(values["a"].data) == 20
    assert len(values["b"].data) == 20


def _subject_cn(value: SecretValue) -> str:
    cert = x509.load_der_x509_certificate(value.certificate or b"")
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_common_name_defaults_to_the_first_dns_name_then_the_secret_name() -> None:
    """SCONE v0.3: "If omitted, the first dns name will be used as the common name. If no DNS
    name has been specified, the secret's name will be used"."""
    policy = loads_policy(
        _policy(
            """  - name: k
    kind: private-key
  - name: with_dns
    kind: x509
    private_key: k
    dns: [api.example.com, db.example.com]
  - name: plain
    kind: x509
    private_key: k
  - name: named
    kind: x509
    private_key: k
    common_name: Named
    dns: [api.example.com]
"""
        )
    )
    values = _generate_all(policy)
    assert _subject_cn(values["with_dns"]) == "api.example.com"
    assert _subject_cn(values["plain"]) == "plain"
    assert _subject_cn(values["named"]) == "Named"


def test_a_common_name_longer_than_64_is_refused_at_load() -> None:
    """RFC 5280 ub-common-name is 64: a secret name that long, used as the common name, is
    refused when the policy is loaded, not by a ValueError when the CAS generates it. A first
    dns name that long is passed over for the name (it is in the subjectAltName)."""
    long_name = "n" * 65
    with pytest.raises(PolicyError, match=r"got the name of 65 characters as the certificate's common name"):
        loads_policy(
            _policy(
                f"  - name: k\n    kind: private-key\n  - name: {long_name}\n    kind: x509\n    private_key: k\n"
            )
        )
    # a version stored before the check still loads; the CAS refuses to issue it, clearly
    long_text = _policy(
        f"  - name: k\n    kind: private-key\n  - name: {long_name}\n    kind: x509\n    private_key: k\n"
    )
    with pytest.raises(PolicyError, match=r"got a common name of 65 characters, expected at most 64"):
        _generate_all(loads_policy(long_text, stored=True))
    long_dns = ("a" * 60) + ".example"
    text = f"""  - name: k
    kind: private-key
  - name: c
    kind: x509
    private_key: k
    dns: [{long_dns}, short.example]
  - name: {long_name}
    kind: x509
    private_key: k
    dns: [short.example]
"""
    values = _generate_all(loads_policy(_policy(text)))
    assert _subject_cn(values["c"]) == "c"
    assert _subject_cn(values[long_name]) == "short.example"
    spec = Secret.model_validate(
        {"name": long_name, "kind": "x509", "private_key": "k", "dns": [long_dns], "common_name": "short"}
    )
    assert spec.subject_common_name == "short"


def test_ip_addresses_are_ip_addresses_in_dns_and_san() -> None:
    """RFC 5280 §4.2.1.6: an address is an iPAddress; as a dNSName no client would match it, so
    also one written under dns becomes an iPAddress."""
    text = (
        "  - name: k\n    kind: private-key\n  - name: c\n    kind: x509\n    private_key: k\n"
        "    dns: [a.example, 10.0.0.2]\n    san: ['10.0.0.1', '::1', 'b.example']\n"
    )
    value = _generate_all(loads_policy(_policy(text)))["c"]
    san = x509.load_der_x509_certificate(value.certificate or b"").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.2", "10.0.0.1", "::1"]
    assert san.value.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]


RUNTIME = """  - name: ca_key
    kind: private-key
  - name: ca
    kind: x509-ca
    private_key: ca_key
  - name: rt
    kind: x509
    issuer: ca
    issue_to_runtime: true
"""


@pytest.mark.parametrize("fmt", ["privatekey:der", "privatekey:pkcs8:der"])
def test_a_der_key_of_a_runtime_certificate_is_refused_at_load(fmt: str) -> None:
    """The runtime's own key is written by confide run as PEM only: asking for DER is refused
    when the policy is loaded, not at the release."""
    with pytest.raises(PolicyError, match=r"DER private-key format for a certificate issued to the runtime"):
        loads_policy(_policy(RUNTIME, f"$$SCONE::rt:{fmt}$$"))
    loads_policy(_policy(RUNTIME, "$$SCONE::rt:privatekey$$"))  # PEM is fine
    # a version stored before the check still loads (and is refused at release, by render)
    loads_policy(_policy(RUNTIME, f"$$SCONE::rt:{fmt}$$"), stored=True)
    runtime_value = SecretValue("x509", b"", b"cert", runtime_key=True)
    with pytest.raises(PolicyError, match="only as PEM"):
        render(runtime_value, Encoding.DER_PKCS8)


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Explicit CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW.replace(year=2027))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("fmt", ["crl", "crl:pem", "crl:der"])
def test_a_crl_of_an_explicit_ca_is_refused_at_load(fmt: str) -> None:
    """The CAS keeps a CRL only for the CAs it generates: ``:crl`` of a CA given as a value is
    refused when the policy is loaded, not at the release."""
    pem = "\n".join("      " + line for line in _ca_pem().strip().splitlines())
    secrets = f"  - name: ext\n    kind: x509-ca\n    value: |\n{pem}\n"
    with pytest.raises(PolicyError, match=r"crl format for a CA given as an explicit value"):
        loads_policy(_policy(secrets, f"$$SCONE::ext:{fmt}$$"))
    # a version stored before the check still loads (the CAS refuses its release: test_cas_crl)
    loads_policy(_policy(secrets, f"$$SCONE::ext:{fmt}$$"), stored=True)


def test_an_explicit_public_key_renders_as_spki_whatever_pem_it_was_given_in() -> None:
    """``public-key`` ``pem`` is a PEM SubjectPublicKeyInfo (``BEGIN PUBLIC KEY``), ``der`` its
    DER: a value given as a PKCS#1 ``RSA PUBLIC KEY``, or with text around the PEM block, is
    released as that SPKI, not verbatim."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048).public_key()
    spki_der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki_pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    for given in (pkcs1, "comment line\n" + spki_pem.decode()):
        block = "\n".join("      " + line for line in given.strip().splitlines())
        policy = loads_policy(_policy(f"  - name: pub\n    kind: public-key\n    value: |\n{block}\n"))
        value = _generate_all(policy)["pub"]
        assert render(value, Encoding.PEM_SPKI) == spki_pem
        assert render(value, Encoding.DER_SPKI) == spki_der


@pytest.mark.parametrize(("kind", "encoding"), [("ascii", Encoding.TEXT), ("binary", Encoding.BINARY)])
def test_a_value_holding_the_runtime_key_marker_is_never_rendered(kind: str, encoding: Encoding) -> None:
    """``confide run`` replaces the runtime-key marker with the runtime's own private key
    wherever it appears in what the CAS released. A value holding the marker (an ascii secret
    exported by another stakeholder, say, that the importer's program sends back to them) would
    have the runtime's key put in its place: such a value is refused, and the error shows no
    part of it."""
    from confide.cas.secrets import RUNTIME_KEY_MARKER

    value = SecretValue(kind, b"token-" + RUNTIME_KEY_MARKER + b"-secret-tail")
    with pytest.raises(PolicyError) as raised:
        render(value, encoding)
    assert "secret-tail" not in str(raised.value) and "token" not in str(raised.value)
    assert render(SecretValue(kind, b"token"), encoding) == b"token"


def test_values_that_spell_the_runtime_key_marker_together_are_refused() -> None:
    """Two values side by side (or a value and the text next to it) that form the marker
    between them are refused as well; a marker a runtime certificate rendered is kept."""
    from confide.policy.placeholders import RUNTIME_KEY_MARKER, render_file, substitute_text

    half = len(RUNTIME_KEY_MARKER) // 2
    parts = {"a": RUNTIME_KEY_MARKER[:half], "b": RUNTIME_KEY_MARKER[half:], "rt": RUNTIME_KEY_MARKER}

    def resolve(ph: object) -> bytes:
        return parts[ph.name]  # type: ignore[attr-defined]

    with pytest.raises(PolicyError, match="together spell"):
        render_file("$$SCONE::a$$$$SCONE::b$$", resolve, where="f")
    with pytest.raises(PolicyError, match="together spell"):
        substitute_text("$$SCONE::a$$" + RUNTIME_KEY_MARKER[half:].decode(), resolve, where="env")
    assert render_file("key: $$SCONE::rt$$", resolve, where="f") == b"key: " + RUNTIME_KEY_MARKER
