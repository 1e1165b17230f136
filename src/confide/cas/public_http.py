"""The CAS's public artefacts, and the plain-HTTP listener that serves only them (``cas serve
--public-http-listen``; docs/cas.md "The public HTTP listener").

Three kinds of resource, to anyone, without authentication:

- ``/v1/crl/<id>.crl``: the current CRL of a generated CA declared ``crl_distribution``, DER,
  ``application/pkix-crl`` (RFC 2585 §4.2; :meth:`confide.cas.core.Cas.distributed_crl`);
- ``/v1/ca/<id>.crt``: the current certificate of a generated CA declared ``ca_issuers``, DER,
  ``application/pkix-cert`` (RFC 2585 §4.1; RFC 5280 §4.2.2.1: a caIssuers URI "http" names a
  single DER certificate; :meth:`confide.cas.core.Cas.published_ca_certificate`);
- ``/v1/ocsp/<id>``: the OCSP responder of a generated CA declared ``ocsp`` (RFC 6960 Appendix
  A.1: ``POST`` of a DER request, ``application/ocsp-request``; or ``GET /v1/ocsp/<id>/<the
  request, base64 then URL-encoded>``), DER ``application/ocsp-response``
  (:mod:`confide.cas.ocsp_responder`).

:func:`crl_response`, :func:`ca_response` and :func:`ocsp_response` build them for both
listeners (the TLS API's routes in :mod:`confide.cas.app`, and :class:`PublicApp`). All are
signed objects: a relying
party checks a CRL's signature against a CA it already trusts (RFC 5280 §6.3.3), and a
certificate fetched through caIssuers is a candidate for path building, verified like any
other (§4.2.2.1), so neither needs an authenticated channel; and the fetchers of CRL
distribution points speak plain HTTP (OpenSSL 3.0's fetches no ``https://`` one).

:class:`PublicApp` is a bare ASGI application, not the API's: it has no other route, so nothing
that needs authentication, writes a policy or takes evidence can be reached through it. GET and
HEAD (RFC 9110 §9.3.1-2) of those paths, and POST of an OCSP request; any other path a bare
``404``; any other method ``405`` with ``Allow`` (RFC 9110 §15.5.6: ``GET, HEAD, POST`` under
``/v1/ocsp/``, ``GET, HEAD`` elsewhere); a request other than an OCSP POST that carries content
``413`` and the connection closed (the listener reads no other request body), an OCSP request
body over :data:`~confide.cas.ocsp_responder.MAX_REQUEST` bytes the same. Its connections and
request heads are bounded by an :class:`~confide.httpserve.limits.HttpLimits` of their own
(:meth:`~confide.httpserve.limits.HttpLimits.plain_protocol`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization

from confide.cas.ocsp_responder import MAX_REQUEST, OcspResponder
from confide.cas.secrets import CA_PATH, CRL_PATH, OCSP_PATH

if TYPE_CHECKING:
    from confide.cas.core import Cas
    from confide.httpserve.limits import HttpLimits

__all__ = [
    "OCSP_REQUEST_TYPE",
    "OCSP_RESPONSE_TYPE",
    "OCSP_ROUTE",
    "PUBLIC_MAX_AGE",
    "PublicApp",
    "PublicResponse",
    "ca_response",
    "crl_response",
    "ocsp_response",
]

PUBLIC_MAX_AGE = 300
"""Seconds a public CRL or CA certificate may be cached: a revocation, or a renewed CA, is
published at once (docs/cas.md "Revocation")."""

PublicResponse = tuple[int, dict[str, str], bytes]
"""Status, headers (lower-case names) and body."""

_FILE = re.compile(r"([0-9a-f]{32})\.(crl|crt)")
_NOT_FOUND: PublicResponse = (404, {"cache-control": "no-store"}, b"")
_log = logging.getLogger("confide.cas")


def _id(file: str, suffix: str) -> str | None:
    match = _FILE.fullmatch(file)
    return match.group(1) if match is not None and match.group(2) == suffix else None


def _max_age(until: float, now: float) -> str:
    return f"public, max-age={max(0, min(PUBLIC_MAX_AGE, int(until - now)))}"


def crl_response(cas: Cas, file: str) -> PublicResponse:
    """``GET /v1/crl/<file>``: a CRL distribution point (RFC 5280 §4.2.1.13; docs/cas.md "CRL
    distribution points"), cached at most :data:`PUBLIC_MAX_AGE` (never past nextUpdate). The
    same bare 404 for every other file name."""
    crl_id = _id(file, "crl")
    row = cas.distributed_crl(crl_id) if crl_id is not None else None
    if row is None:
        return _NOT_FOUND
    headers = {
        "content-type": "application/pkix-crl",
        "cache-control": _max_age(row.next_update, cas.clock()),
    }
    return 200, headers, row.der


def ca_response(cas: Cas, file: str) -> PublicResponse:
    """``GET /v1/ca/<file>``: a CA's certificate for caIssuers (RFC 5280 §4.2.2.1; docs/cas.md
    "CA certificates (caIssuers)"), cached at most :data:`PUBLIC_MAX_AGE` (never past its
    notAfter). The same bare 404 for every other file name."""
    ca_id = _id(file, "crt")
    cert = cas.published_ca_certificate(ca_id) if ca_id is not None else None
    if cert is None:
        return _NOT_FOUND
    until = cert.not_valid_after_utc.timestamp()
    headers = {"content-type": "application/pkix-cert", "cache-control": _max_age(until, cas.clock())}
    return 200, headers, cert.public_bytes(serialization.Encoding.DER)


OCSP_REQUEST_TYPE = "application/ocsp-request"  # RFC 6960 Appendix A.1 (and C.1)
OCSP_RESPONSE_TYPE = "application/ocsp-response"  # RFC 6960 Appendix A.2 (and C.2)
OCSP_ROUTE = "/v1/ocsp/{id}"
_CA_ID = re.compile(r"[0-9a-f]{32}")
_TOO_LARGE: PublicResponse = (413, {"connection": "close", "cache-control": "no-store"}, b"")


async def ocsp_response(cas: Cas, scope: Any, receive: Any) -> PublicResponse:
    """An OCSP request under ``/v1/ocsp/`` (RFC 6960 Appendix A.1; docs/cas.md "OCSP"):
    ``POST /v1/ocsp/<id>`` with a DER request of at most
    :data:`~confide.cas.ocsp_responder.MAX_REQUEST` bytes (``Content-Type:
    application/ocsp-request``, else ``415``; larger ``413``, the connection closed), or ``GET``
    (``HEAD``) ``/v1/ocsp/<id>/<request>``, the request's DER base64-encoded then URL-encoded
    (read from the raw path: a ``%2F`` in the base64 is not a path separator). Any other path
    under the prefix, an id that is not 32 lower-case hex digits, the same bare ``404``. What
    does not decode is answered ``malformedRequest`` (HTTP 200, as every OCSP answer), and the
    rest by :meth:`~confide.cas.ocsp_responder.OcspResponder.respond`."""
    raw = scope.get("raw_path") or scope["path"].encode()
    raw = raw.partition(b"?")[0]
    if not raw.startswith(OCSP_PATH.encode()):
        return _NOT_FOUND  # e.g. /v1/%6Fcsp/...: only the plain prefix is served
    rest = raw[len(OCSP_PATH) :]
    client = scope.get("client")
    address = str(client[0]) if client else None
    if scope["method"] == "POST":
        ca_id = rest.decode("ascii", "replace")
        if not _CA_ID.fullmatch(ca_id):
            return _NOT_FOUND
        if _content_type(scope) != OCSP_REQUEST_TYPE:
            return 415, {"cache-control": "no-store"}, b""
        der = await _read_bounded(scope, receive, MAX_REQUEST)
        if der is None:
            return _TOO_LARGE
    else:
        head, sep, encoded = rest.partition(b"/")
        ca_id = head.decode("ascii", "replace")
        if not sep or not _CA_ID.fullmatch(ca_id):
            return _NOT_FOUND
        try:
            der = base64.b64decode(unquote(encoded.decode("ascii"), errors="strict"), validate=True)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            der = b""  # answered malformedRequest
    responder = OcspResponder.of(cas)
    answer = await asyncio.to_thread(responder.respond, ca_id, der, address)
    cache = f"public, max-age={answer.max_age}" if answer.max_age > 0 else "no-store"
    return 200, {"content-type": OCSP_RESPONSE_TYPE, "cache-control": cache}, answer.der


def _content_type(scope: Any) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return str(value.decode("latin-1")).partition(";")[0].strip().lower()
    return None


async def _read_bounded(scope: Any, receive: Any, limit: int) -> bytes | None:
    """The request body, at most ``limit`` bytes: ``None`` when its Content-Length says more
    (nothing is read) or more was sent (reading stops there), or the client left."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and (not value.isdigit() or len(value) > 18 or int(value) > limit):
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_ROUTES = ((CRL_PATH, "/v1/crl/{id}", crl_response), (CA_PATH, "/v1/ca/{id}", ca_response))
_METHODS = frozenset({"GET", "HEAD"})
_ALLOW = "GET, HEAD"
_OCSP_METHODS = frozenset({"GET", "HEAD", "POST"})
_OCSP_ALLOW = "GET, HEAD, POST"


class PublicApp:
    """The ASGI application of the public listener (module docstring). ``limits``: the
    listener's own connection limits, for ``/metrics`` of the API. Counts its responses by
    route and status (``confide_cas_public_http_requests_total``)."""

    def __init__(self, cas: Cas, limits: HttpLimits | None = None) -> None:
        self.cas, self.limits = cas, limits
        self.responses: dict[tuple[str, int], int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets never reach a plain HTTP/1.1 app
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        route, response = "unmatched", _NOT_FOUND
        if path.startswith(OCSP_PATH):
            route = OCSP_ROUTE
            if method not in _OCSP_METHODS:
                response = (405, {"allow": _OCSP_ALLOW, "cache-control": "no-store"}, b"")
            elif method != "POST" and _has_content(scope):
                response = (413, {"connection": "close", "cache-control": "no-store"}, b"")
            else:
                response = await ocsp_response(self.cas, scope, receive)
        elif method not in _METHODS:
            response = (405, {"allow": _ALLOW, "cache-control": "no-store"}, b"")
        elif _has_content(scope):
            # No request body is read here: refused, and the connection closed, before any is.
            response = (413, {"connection": "close", "cache-control": "no-store"}, b"")
        else:
            for prefix, label, build in _ROUTES:
                if path.startswith(prefix):
                    route = label
                    response = await asyncio.to_thread(build, self.cas, path[len(prefix) :])
                    break
        status, headers, body = response
        raw = [(b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"x-content-type-options", b"nosniff"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        key = (route, status)
        self.responses[key] = self.responses.get(key, 0) + 1
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                json.dumps(
                    {"event": "request", "listener": "public-http", "method": method[:16], "route": route,
                     "status": status, "ms": round((time.perf_counter() - start) * 1000, 2)}
                )
            )  # fmt: skip


def _has_content(scope: Any) -> bool:
    """Whether the request carries content (RFC 9112 §6.3: a Transfer-Encoding, or a
    Content-Length other than 0); GET and HEAD give it no meaning (RFC 9110 §9.3.1-2)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip().strip(b"0")):
            return True
    return False
