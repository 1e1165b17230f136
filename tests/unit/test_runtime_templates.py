"""confide.runtime.run.render_templates: injection files given by path only (SCONE's template
form), rendered at start with the secrets the CAS released for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.secrets import SecretValue, template_value
from confide.errors import ParseError, PolicyError, StorageError
from confide.runtime.run import MAX_TEMPLATE, render_templates
from pki import issue

NOW = datetime.now(UTC)


def _cert() -> SecretValue:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue("t", key.public_key(), issuer="t", signing_key=key, not_before=NOW,
                 not_after=NOW + timedelta(days=1), ca=True)  # fmt: skip
    return SecretValue("x509-ca", b"", cert.public_bytes(serialization.Encoding.DER))


def release(paths: list[Path]) -> dict[str, object]:
    return {
        "paths": [str(p) for p in paths],
        "secrets": {
            "token": template_value(SecretValue("ascii", b"s3cret")),
            "blob": template_value(SecretValue("binary", b"\x00\x01")),
            "ca": template_value(_cert()),
        },
    }


def test_placeholders_are_substituted_with_the_file_formats(tmp_path: Path) -> None:
    t = tmp_path / "app.conf"
    t.write_text("pw=$$SCONE::token$$\nhex=$$SCONE::blob:hex$$\n$$SCONE::ca:crt$$")
    out = render_templates(release([t]))[str(t)]
    head, cert = out.split(b"\n", 2)[:2], out.split(b"\n", 2)[2]
    assert head == [b"pw=s3cret", b"hex=0001"]
    assert x509.load_pem_x509_certificate(cert).subject.rfc4514_string() == "CN=t"
    assert t.read_text().startswith("pw=$$SCONE::token$$")  # the template itself is not changed


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("$$SCONE::missing$$", PolicyError, "no such secret is available"),
        ("$$SCONE::token:privatekey$$", PolicyError, "got format 'privatekey' for a ascii secret"),
        ("$$SCONE::bad", PolicyError, "template injection file"),
    ],
)
def test_bad_templates_are_clear_errors(
    tmp_path: Path, content: str, error: type[Exception], message: str
) -> None:
    t = tmp_path / "t"
    t.write_text(content)
    with pytest.raises(error, match=message):
        render_templates(release([t]))


def test_unreadable_oversized_or_binary_templates(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="template injection file"):
        render_templates(release([tmp_path / "missing"]))
    big = tmp_path / "big"
    big.write_bytes(b"a" * (MAX_TEMPLATE + 1))
    with pytest.raises(ParseError, match="at most 1 MiB"):
        render_templates(release([big]))
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ParseError, match="not UTF-8"):
        render_templates(release([binary]))
    with pytest.raises(ParseError, match="template list is malformed"):
        render_templates({"paths": [str(big)]})
    with pytest.raises(ParseError, match="malformed template secret"):
        render_templates({"paths": [], "secrets": {"x": {"kind": "ascii", "data": "zz"}}})


@pytest.mark.parametrize(
    ("content", "values"),
    [
        ("upstream_token=$$SCONE::imported$$\n", {"imported": b"$$SCONE::own$$"}),
        ("$$SCONE::a$$$$SCONE::b$$", {"a": b"$$SC", "b": b"ONE::own$$"}),  # values side by side
        ("$$SCONE$$SCONE::a$$", {"a": b"::own$$"}),  # a value and the text before it
    ],
)
def test_a_template_rendering_that_spells_a_placeholder_is_refused(
    tmp_path: Path, content: str, values: dict[str, bytes]
) -> None:
    # confide run replaces a template on a tmpfs (the only place one can be without root) with
    # its rendering, so the next start renders the rendered file: a value spelling
    # $$SCONE::own$$ (another stakeholder's export) was then expanded into this policy's own
    # secret, where the exporter's value was.
    t = tmp_path / "app.conf"
    t.write_text(content)
    secrets = {n: template_value(SecretValue("ascii", v)) for n, v in values.items()}
    secrets["own"] = template_value(SecretValue("ascii", b"OWN-SECRET"))
    templates = {"paths": [str(t)], "secrets": secrets}
    with pytest.raises(PolicyError, match=r"template injection file .*spell '\$\$SCONE::'") as info:
        rendered = render_templates(templates)[str(t)]
        t.write_bytes(rendered)  # what confide run leaves at a template's path on a tmpfs
        assert b"OWN-SECRET" not in render_templates(templates)[str(t)]
    assert "::own" not in str(info.value) and "OWN-SECRET" not in str(info.value)
    assert t.read_text() == content
