"""PEM certificate chains: strict parsing (for evidence), lenient re-flow (for collateral
transported in HTTP headers and JSON bundles), and encoding."""

from __future__ import annotations

import base64
import re

from confide.errors import ParseError

__all__ = ["normalise_pem", "parse_pem_chain", "pem_chain"]

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/=\n]+?)-----END CERTIFICATE-----\n?")
MAX_CHAIN_LENGTH = 8


def _canonical_pem_body(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    return b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))


def parse_pem_chain(data: bytes, *, structure: str = "pck_cert_chain", base: int = 0) -> list[bytes]:
    """Split a PEM certificate chain into DER certificates, strictly.

    Only the canonical encoding (64-character lines, ``\\n`` line ends, optional trailing NUL
    bytes) is accepted, so that no byte of the certification data can change without either
    changing a certificate or failing here.
    """
    certs: list[bytes] = []
    pos = 0
    while True:
        m = _PEM_BLOCK.match(data, pos)
        if m is None:
            break
        body = m.group(1)
        try:
            der = base64.b64decode(body.replace(b"\n", b""), validate=True)
        except ValueError:
            raise ParseError(
                "invalid base64",
                structure=structure,
                field=f"certificate[{len(certs)}]",
                offset=base + m.start(),
            ) from None
        if _canonical_pem_body(der) != body:
            raise ParseError(
                "non-canonical PEM encoding",
                structure=structure,
                field=f"certificate[{len(certs)}]",
                offset=base + m.start(),
            )
        certs.append(der)
        if len(certs) > MAX_CHAIN_LENGTH:
            raise ParseError(
                f"more than {MAX_CHAIN_LENGTH} certificates", structure=structure, offset=base + pos
            )
        pos = m.end()
    rest = data[pos:]
    if rest.strip(b"\x00") or (rest and not data[:pos].endswith(b"\n")):
        raise ParseError(
            "unexpected bytes outside PEM certificate blocks", structure=structure, offset=base + pos
        )
    if not certs:
        raise ParseError("no PEM certificate found", structure=structure, offset=base)
    return certs


def pem_chain(ders: tuple[bytes, ...] | list[bytes]) -> str:
    """Encode DER certificates as canonical PEM text."""
    return "".join(
        "-----BEGIN CERTIFICATE-----\n" + _canonical_pem_body(d).decode() + "-----END CERTIFICATE-----\n"
        for d in ders
    )


_LENIENT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def normalise_pem(data: bytes, *, structure: str = "pem") -> bytes:
    """Re-flow PEM certificates into the canonical form (CRLF, missing newlines and URL-decoded
    header chains are common in collateral; the certificates themselves are verified later)."""
    out = []
    for m in _LENIENT_BLOCK.finditer(data):
        body = b"".join(m.group(1).split())
        try:
            der = base64.b64decode(body, validate=True)
        except ValueError:
            raise ParseError("invalid base64 in certificate", structure=structure) from None
        out.append(
            b"-----BEGIN CERTIFICATE-----\n" + _canonical_pem_body(der) + b"-----END CERTIFICATE-----\n"
        )
    if not out:
        raise ParseError("no PEM certificate found", structure=structure)
    return b"".join(out)
