"""confide.platforms._root: the ``--root`` override of the Nitro, GCE and NVIDIA front ends."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from confide.errors import ParseError, UsageError
from confide.platforms._root import load_root_certificate
from confide.platforms.dcap import root_der
from confide.verify.nitro import aws_nitro_root
from malformed_x509 import bad_name_tag, bad_version, bitstring_cn


@pytest.mark.parametrize("encoding", [Encoding.PEM, Encoding.DER])
def test_loads_pem_or_der(tmp_path: Path, encoding: Encoding) -> None:
    root = aws_nitro_root()
    path = tmp_path / "root"
    path.write_bytes(root.public_bytes(encoding))
    assert load_root_certificate(path, "--root") == root


def test_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UsageError, match=rf"^--root: cannot read {re.escape(repr(str(missing)))}: "):
        load_root_certificate(missing, "--root")


@pytest.mark.parametrize("data", [b"junk", b"-----BEGIN CERTIFICATE-----\njunk\n-----END CERTIFICATE-----\n"])
def test_not_a_certificate_is_a_parse_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "root"
    path.write_bytes(data)
    with pytest.raises(ParseError, match=r"^--root: not a PEM or DER certificate: "):
        load_root_certificate(path, "--root")


def test_a_bundle_is_refused_not_its_first_certificate_taken(tmp_path: Path) -> None:
    root = aws_nitro_root()
    path = tmp_path / "root"
    path.write_bytes(root.public_bytes(Encoding.PEM) * 2)
    with pytest.raises(UsageError, match=r"^--root: got 2 certificates, expected exactly one$"):
        load_root_certificate(path, "--root")


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "root"
    path.write_bytes(aws_nitro_root().public_bytes(Encoding.PEM) + b"\n" * (64 * 1024))
    with pytest.raises(UsageError, match=r"is larger than 65536 bytes, expected one certificate$"):
        load_root_certificate(path, "--root")


@pytest.mark.parametrize(
    "edit", [bad_version, bitstring_cn, bad_name_tag], ids=["version 4", "BIT STRING CN", "tag 0 CN"]
)
def test_a_malformed_root_is_a_parse_error(tmp_path: Path, edit: Callable[[bytes], bytes]) -> None:
    # InvalidVersion (not a ValueError) at load, ValueError/TypeError when a name is read later.
    path = tmp_path / "root"
    path.write_bytes(edit(aws_nitro_root().public_bytes(Encoding.DER)))
    with pytest.raises(ParseError, match=r"^--root: not a PEM or DER certificate: "):
        load_root_certificate(path, "--root")
    with pytest.raises(ParseError, match=r"not an X\.509 certificate"):
        root_der(path)
