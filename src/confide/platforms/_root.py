"""Reading a ``--root`` override (one trust-anchor certificate, tests only) for the platform
front ends whose verifiers take an ``x509.Certificate`` (Nitro, GCE vTPM, NVIDIA)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from confide.errors import ParseError, UsageError
from confide.verify.x509util import CERTIFICATE_ERRORS, check_certificate_fields

__all__ = ["MAX_ROOT_FILE", "load_root_certificate"]

MAX_ROOT_FILE = 64 * 1024
"""Largest ``--root`` file read: one certificate is a few KiB."""


def load_root_certificate(path: Path, what: str) -> x509.Certificate:
    """Exactly one certificate in ``path``: PEM when the file has a ``-----BEGIN`` line, DER
    otherwise. :class:`~confide.errors.UsageError` when the file cannot be read, is larger than
    :data:`MAX_ROOT_FILE` or holds several certificates (a trust anchor is one certificate,
    never silently the first of a bundle); :class:`~confide.errors.ParseError` when it holds no
    certificate."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ROOT_FILE + 1)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_ROOT_FILE:
        raise UsageError(
            f"{what}: {str(path)!r} is larger than {MAX_ROOT_FILE} bytes, expected one certificate"
        )
    try:
        roots = (
            x509.load_pem_x509_certificates(data)
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
        for root in roots:
            check_certificate_fields(root)
    except CERTIFICATE_ERRORS as exc:
        raise ParseError(f"{what}: not a PEM or DER certificate: {exc}") from None
    if len(roots) != 1:
        raise UsageError(f"{what}: got {len(roots)} certificates, expected exactly one")
    return roots[0]
