"""Placeholders: syntax, formats per kind, contexts, substitution, command splitting."""

from __future__ import annotations

import pytest

from confide.errors import PolicyError
from confide.policy import placeholders
from confide.policy.placeholders import (
    Context,
    Encoding,
    Placeholder,
    PlaceholderSyntaxError,
    RenderBudget,
    encode_bytes,
    encoding_for,
    find_placeholders,
    formats_for_kind,
    render_command,
    render_environment,
    render_file,
    split_command,
    substitute_text,
)


def test_find_placeholders_with_and_without_format() -> None:
    text = "a $$SCONE::pw$$ b $$SCONE::cert:crt:der$$ c $$SCONE::x509.chain$$ $$ not one"
    found = find_placeholders(text)
    assert [(p.name, p.format) for p in found] == [("pw", None), ("cert", "crt:der"), ("x509", ".chain")]
    assert [text[p.start : p.end] for p in found] == [str(p) for p in found]


@pytest.mark.parametrize(
    "text",
    [
        "$$SCONE::",
        "$$SCONE::name",
        "$$SCONE::$$",
        "$$SCONE::a b$$",
        "$$SCONE::a:$$",
        "$$SCONE::a:HEX$$",
        "$$SCONE::a.$$",
        "$$SCONE::" + "a" * 300 + "$$",
        "x $$SCONE::a:b:$$",
    ],
)
def test_malformed_placeholders_are_errors_not_literals(text: str) -> None:
    with pytest.raises(PlaceholderSyntaxError) as info:
        find_placeholders(text)
    assert "expected" in str(info.value)


def test_dollars_without_scone_prefix_are_literal() -> None:
    assert find_placeholders("cost: $$5 $$ $$SCONE") == []


@pytest.mark.parametrize(
    ("kind", "fmt", "encoding"),
    [
        ("ascii", None, Encoding.TEXT),
        ("binary", None, Encoding.BINARY),
        ("binary", "bin", Encoding.BINARY),
        ("binary", "hex", Encoding.HEX),
        ("binary", ".hex", Encoding.HEX),
        ("binary", "base64", Encoding.BASE64),
        ("binary", "base64url", Encoding.BASE64URL),
        ("binary", "base32", Encoding.BASE32),
        ("binary", "base32nopad", Encoding.BASE32_NOPAD),
        ("private-key", None, Encoding.PEM_PKCS8),
        ("private-key", "pkcs8:pem", Encoding.PEM_PKCS8),
        ("private-key", "der", Encoding.DER_PKCS8),
        ("public-key", "pem", Encoding.PEM_SPKI),
        ("public-key", "der", Encoding.DER_SPKI),
        ("x509", None, Encoding.CERT_PEM),
        ("x509", "crt:pem", Encoding.CERT_PEM),
        ("x509", ".crt", Encoding.CERT_PEM),
        ("x509", "crt:der", Encoding.CERT_DER),
        ("x509-ca", "privatekey:pkcs8:der", Encoding.DER_PKCS8),
        ("x509", ".key", Encoding.PEM_PKCS8),
        ("x509", "chain", Encoding.CHAIN_PEM),
        ("x509", ".chain", Encoding.LEGACY_CHAIN_PEM),
    ],
)
def test_formats_per_kind_in_files(kind: str, fmt: str | None, encoding: Encoding) -> None:
    assert encoding_for(kind, fmt, Context.FILE) is encoding


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("ascii", "hex"),
        ("binary", "crt"),
        ("private-key", "chain"),
        ("x509", "hex"),
        ("public-key", "pkcs8:pem"),
    ],
)
def test_format_the_kind_does_not_have(kind: str, fmt: str) -> None:
    with pytest.raises(ValueError, match=f"got format '{fmt}' for a {kind} secret, expected"):
        encoding_for(kind, fmt, Context.FILE)


@pytest.mark.parametrize("context", [Context.COMMAND, Context.ENVIRONMENT])
@pytest.mark.parametrize(
    ("kind", "fmt"), [("binary", None), ("binary", "bin"), ("private-key", "der"), ("x509", "crt:der")]
)
def test_binary_encodings_only_in_files(context: Context, kind: str, fmt: str | None) -> None:
    with pytest.raises(ValueError, match="binary values only go into injected files"):
        encoding_for(kind, fmt, context)
    assert encoding_for(kind, fmt, Context.FILE) is not None


def test_access_policy_and_fspf_key_contexts() -> None:
    assert encoding_for("x509", None, Context.ACCESS_POLICY) is Encoding.CERT_PEM
    with pytest.raises(ValueError, match="no format suffix"):
        encoding_for("x509", "crt", Context.ACCESS_POLICY)
    # Which kinds may name an identity is the policy model's check (it knows the key types).
    assert encoding_for("private-key", None, Context.ACCESS_POLICY) is Encoding.PEM_PKCS8
    assert encoding_for("binary", None, Context.FSPF_KEY) is Encoding.BINARY
    with pytest.raises(ValueError, match="expected a binary secret"):
        encoding_for("ascii", None, Context.FSPF_KEY)


def test_import_without_kind_checks_only_that_the_format_exists() -> None:
    assert encoding_for(None, "crt", Context.COMMAND) is None
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        encoding_for(None, "nope", Context.FILE)


def test_formats_for_kind() -> None:
    assert formats_for_kind("ascii") == ()
    assert "base64" in formats_for_kind("binary")
    # crl (confide): a CA's CRL; a leaf has none.
    assert {"crl", "crl:pem", "crl:der"} <= set(formats_for_kind("x509-ca"))
    assert not {"crl", "crl:pem", "crl:der"} & set(formats_for_kind("x509"))


def test_a_der_crl_goes_into_files_only() -> None:
    assert encoding_for("x509-ca", "crl", Context.ENVIRONMENT) is Encoding.CRL_PEM
    assert encoding_for("x509-ca", "crl:der", Context.FILE) is Encoding.CRL_DER
    with pytest.raises(ValueError, match="binary format 'crl:der'"):
        encoding_for("x509-ca", "crl:der", Context.COMMAND)
    with pytest.raises(ValueError, match="format 'crl' for a x509 secret"):
        encoding_for("x509", "crl", Context.FILE)


def test_encode_bytes() -> None:
    raw = b"\x00\xffhi"
    assert encode_bytes(raw, Encoding.HEX) == b"00ff6869"
    assert encode_bytes(raw, Encoding.BASE64) == b"AP9oaQ=="
    assert encode_bytes(raw, Encoding.BASE64URL) == b"AP9oaQ=="
    assert encode_bytes(b"\xfb\xff", Encoding.BASE64URL) == b"-_8="
    assert encode_bytes(raw, Encoding.BASE32) == b"AD7WQ2I="
    assert encode_bytes(raw, Encoding.BASE32_NOPAD) == b"AD7WQ2I"
    assert encode_bytes(raw, Encoding.BINARY) == raw
    with pytest.raises(ValueError):
        encode_bytes(raw, Encoding.CERT_PEM)


VALUES = {"pw": b"s3cr et", "bin": b"\x00\x01", "cert": b"-----BEGIN CERTIFICATE-----\n"}


def resolve(p: Placeholder) -> bytes:
    return encode_bytes(VALUES[p.name], Encoding.HEX) if p.format == "hex" else VALUES[p.name]


def test_command_is_split_before_substitution() -> None:
    argv = split_command("app --password $$SCONE::pw$$ --x 'a b' \"c'd\"")
    assert argv == ["app", "--password", "$$SCONE::pw$$", "--x", "a b", "c'd"]
    assert render_command(argv, resolve) == ["app", "--password", "s3cr et", "--x", "a b", "c'd"]
    assert split_command("  ") == []
    assert split_command("a '' b") == ["a", "", "b"]
    with pytest.raises(ValueError, match="unterminated"):
        split_command("a 'b")


def test_environment_substitution_and_nul_refusal_without_leaking() -> None:
    assert render_environment({"K": "x$$SCONE::bin:hex$$y"}, resolve) == {"K": "x0001y"}
    with pytest.raises(PolicyError) as info:
        render_environment({"K": "$$SCONE::bin$$"}, resolve)
    assert "NUL" in str(info.value) and "\x00" not in str(info.value)
    with pytest.raises(PolicyError):
        substitute_text("$$SCONE::bad", resolve, where="x")


def test_files_take_binary() -> None:
    out = render_file("key=$$SCONE::bin$$\n$$SCONE::cert$$", resolve, where="/etc/f")
    assert out == b"key=\x00\x01\n-----BEGIN CERTIFICATE-----\n"
    assert render_file("no placeholders: $$ ok", resolve, where="/f") == b"no placeholders: $$ ok"
    with pytest.raises(PolicyError, match="/etc/f"):
        render_file("$$SCONE::x:", resolve, where="/etc/f")


COMMAND_SECRETS = """
name: p
version: "0.3"
services:
  - name: app
    command: /bin/app --pw=$$SCONE::pw$$ $$SCONE::cert:privatekey$$ $$SCONE::pw$$ --ca $$SCONE::cert:chain$$
    environment:
      ENV_PW: "$$SCONE::env_only$$"
    image_name: img
    attestation: {sim: {measurement: "MEASUREMENT"}}
  - name: quiet
    command: /bin/app --no-secret "$$ literal"
    environment:
      PW: "$$SCONE::pw$$"
    image_name: img
    attestation: {sim: {measurement: "MEASUREMENT"}}
secrets:
  - {name: pw, kind: ascii, size: 16}
  - {name: env_only, kind: ascii, size: 16}
  - {name: file_only, kind: binary, size: 16}
  - {name: ca_key, kind: private-key}
  - {name: ca, kind: x509-ca, private_key: ca_key, common_name: CA}
  - {name: cert, kind: x509, issuer: ca, issue_to_runtime: true, common_name: app}
images:
  - name: img
    injection_files:
      - path: /run/f
        content: "$$SCONE::file_only:hex$$ $$SCONE::cert:privatekey$$"
security: {attestation: {tolerate: [simulation]}}
""".replace("MEASUREMENT", "ab" * 48)


def test_secrets_in_the_command_are_warned_about_by_name() -> None:
    """docs/limitations.md "confide run": a secret in the command's arguments is readable by
    every local user in /proc/PID/cmdline. Each service's command placeholders name their
    secrets (any format: a certificate's runtime private key too), each once; those of the
    environment and of injected files are not warned about; the warning names the service and
    the secret, never a value, on one line."""
    from confide.policy import command_secret_warning, command_warnings, loads_policy

    policy = loads_policy(COMMAND_SECRETS)
    assert policy.service("app").command_secrets() == ("pw", "cert")
    assert policy.service("quiet").command_secrets() == ()
    warnings = command_warnings(policy)
    assert warnings == (command_secret_warning("app", "pw"), command_secret_warning("app", "cert"))
    for line in warnings:
        assert "\n" not in line and line.startswith("warning: ") and "/proc/PID/cmdline" in line
        assert "env_only" not in line and "file_only" not in line and "quiet" not in line
    assert "service 'app'" in warnings[0] and "secret 'pw'" in warnings[0]


def test_a_render_budget_bounds_everything_rendered_with_it_without_a_value_in_the_error() -> None:
    value = b"S3CRET" * 100  # 600 bytes for a 13-byte placeholder

    def resolve(_ph: Placeholder) -> bytes:
        return value

    budget = RenderBudget(2000)
    assert render_command(["$$SCONE::a$$", "x"], resolve, budget) == [value.decode(), "x"]
    assert budget.left == 2000 - 601
    assert render_environment({"K": "$$SCONE::a$$"}, resolve, budget) == {"K": value.decode()}
    assert budget.left == 2000 - 601 - 2 - 600
    with pytest.raises(PolicyError, match=r"^injection file /f: got more than 2000 bytes") as info:
        render_file("$$SCONE::a$$" * 2, resolve, where="injection file /f", budget=budget)
    assert "S3CRET" not in str(info.value)
    # refused as soon as the output passes the budget: the rest is never resolved
    calls: list[str] = []

    def counting(ph: Placeholder) -> bytes:
        calls.append(ph.name)
        return value

    with pytest.raises(PolicyError, match="bytes to release"):
        render_file("$$SCONE::a$$" * 1000, counting, where="f", budget=RenderBudget(2000))
    assert len(calls) == 4
    # without a budget, each call has a fresh one of MAX_RENDERED
    assert render_file("$$SCONE::a$$" * 1000, resolve, where="f") == value * 1000


def test_the_placeholder_cache_keeps_no_large_text() -> None:
    # The CAS renders every attestation's texts through a cache of 1024 texts: a 1 MiB file of
    # placeholders (a policy with an explicit value is recorded withheld, so it may be 1 MiB) held
    # ~10 MB of parsed placeholders, ~11 GB for 1024 such policies attested once each.
    big = "$$SCONE::a$$" * 80_000
    small = "x=$$SCONE::a$$"
    placeholders._cached_placeholders.cache_clear()
    assert render_file(big, lambda _ph: b"v", where="f") == b"v" * 80_000
    assert render_file(small, lambda _ph: b"v", where="f") == b"x=v"
    assert placeholders._cached_placeholders.cache_info().currsize == 1  # the small text only
    assert render_file(small, lambda _ph: b"w", where="f") == b"x=w"
    assert placeholders._cached_placeholders.cache_info().hits == 1
