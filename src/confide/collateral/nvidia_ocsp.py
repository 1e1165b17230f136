"""Where OCSP responses for NVIDIA certificates come from (RFC 6960; checked by
:mod:`confide.verify.ocsp`, never here).

One interface, :class:`OcspSource` (one method, ``fetch(cert, issuer)``), two implementations:

* :class:`HttpOcspSource` POSTs a DER request (``Content-Type: application/ocsp-request``,
  RFC 6960 Appendix A.1) to NVIDIA's responder (default :data:`DEFAULT_OCSP_URL`, the endpoint
  NVIDIA documents; nvtrust's local verifier asks the same host) with a fresh 32-byte nonce, as
  nvtrust does. The answer is read up to :data:`MAX_RESPONSE_SIZE` bytes; a transport error or
  any HTTP status but 200 is a :class:`NetworkError`, never a "good" status. URL and transport
  (any ``httpx2.BaseTransport``) are injectable.
* :class:`DirOcspSource` reads stored responses from a directory: ``{serial}.der`` where
  ``serial`` is the certificate's serial number in lower-case hex (e.g. saved with ``openssl ocsp
  -respout``). They carry no nonce: their ``nextUpdate`` bounds their use.

:func:`source_for` picks one for a ``URL|DIR`` option (``evidence verify --ocsp``, ``cas serve
--nvidia-ocsp``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Protocol

import httpx2
from cryptography import x509

from confide.collateral import public_url
from confide.errors import CollateralMissingError, NetworkError, ParseError, UsageError
from confide.fsutil import read_regular
from confide.httpbody import answer_client, fetch
from confide.verify.ocsp import MAX_RESPONSE_SIZE, NONCE_SIZE, OcspResponse, ocsp_request_der

__all__ = ["DEFAULT_OCSP_URL", "DirOcspSource", "HttpOcspSource", "OcspSource", "fetch_all", "source_for"]

DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
_HTTP_OK = 200
ANSWER_TIME = 30.0
"""Seconds one answer of the responder may take to arrive, its connection, status line,
headers and body (:func:`confide.httpbody.fetch`); longer is a :class:`NetworkError`."""


class OcspSource(Protocol):
    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> OcspResponse:
        """The responder's answer about ``cert`` (issued by ``issuer``), unverified."""
        ...


def fetch_all(
    source: OcspSource, targets: list[tuple[x509.Certificate, x509.Certificate]]
) -> list[OcspResponse]:
    """One response per (certificate, issuer) pair, in order."""
    return [source.fetch(cert, issuer) for cert, issuer in targets]


def source_for(location: str, option: str = "--ocsp") -> HttpOcspSource | DirOcspSource:
    """The source ``location`` names: an http(s) responder URL, else a directory of stored
    responses (:class:`UsageError` when it is neither)."""
    if location.startswith(("http://", "https://")):
        return HttpOcspSource(location, option=option)
    return DirOcspSource(Path(location), option=option)


class HttpOcspSource:
    """An OCSP responder over HTTP(S) (RFC 6960 Appendix A.1, POST)."""

    def __init__(
        self,
        url: str = DEFAULT_OCSP_URL,
        *,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        nonce: bool = True,
        option: str = "--ocsp",
        answer_time: float = ANSWER_TIME,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{option}: got {url!r}, expected an http(s) URL or a directory")
        self.url = url
        self.nonce = nonce
        self.answer_time = answer_time
        self._client = answer_client(transport=transport, timeout=timeout)
        self.requests_made = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpOcspSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> OcspResponse:
        nonce = secrets.token_bytes(NONCE_SIZE) if self.nonce else None
        body = ocsp_request_der(cert, issuer, nonce)
        self.requests_made += 1
        headers = {"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"}
        where = f"OCSP responder {public_url(self.url)}"

        def status(resp: httpx2.Response) -> None:
            if resp.status_code != _HTTP_OK:
                raise NetworkError(f"{where}: got HTTP {resp.status_code}, expected 200")

        try:
            data = fetch(
                self._client, "POST", self.url, content=body, headers=headers, limit=MAX_RESPONSE_SIZE,
                within=self.answer_time, check=status,
                too_large=lambda how: ParseError(how, structure=f"OCSP response from {public_url(self.url)}"),
                too_slow=lambda how: NetworkError(f"{where}: the answer {how}"),
            ).content  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"{where}: {type(exc).__name__}: {exc}") from None
        return OcspResponse(data, nonce)


class DirOcspSource:
    """Stored DER responses in a directory, named by the certificate's serial number in hex."""

    def __init__(self, root: Path, *, option: str = "--ocsp") -> None:
        if not root.is_dir():
            raise UsageError(f"{option}: {str(root)!r} is not a directory (or give an http(s) URL)")
        self.root = root

    def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> OcspResponse:
        path = self.root / f"{cert.serial_number:x}.der"
        try:
            data = read_regular(path, MAX_RESPONSE_SIZE)  # a FIFO there is refused, not waited on
        except FileNotFoundError:
            raise CollateralMissingError(
                f"no OCSP response for serial {cert.serial_number:x}: expected {str(path)!r}"
            ) from None
        except OSError as exc:
            raise CollateralMissingError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_RESPONSE_SIZE:
            raise ParseError(f"more than {MAX_RESPONSE_SIZE} bytes", structure=f"OCSP response {str(path)!r}")
        return OcspResponse(data, None)
