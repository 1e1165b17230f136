"""Reading a ``--root`` override (one trust-anchor certificate, tests only) for the platform
front ends whose verifiers take an ``x509.Certificate``."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from confide.errors import ParseError, UsageError

__all__ = ["load_root_certificate"]


def load_root_certificate(path: Path, what: str) -> x509.Certificate:
    """The certificate in ``path``: PEM (the first one) when the file has a ``-----BEGIN``
    line, DER otherwise. :class:`~confide.errors.UsageError` when the file cannot be read,
    :class:`~confide.errors.ParseError` when it holds no certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ParseError(f"{what}: not a PEM or DER certificate: {exc}") from None
