"""The CAS's public artefacts, and the plain-HTTP listener that serves only them (``cas serve
--public-http-listen``; docs/cas.md "The public HTTP listener").

Two kinds of resource, to anyone, without authentication:

- ``/v1/crl/<id>.crl``: the current CRL of a generated CA declared ``crl_distribution``, DER,
  ``application/pkix-crl`` (RFC 2585 §4.2; :meth:`confide.cas.core.Cas.distributed_crl`);
- ``/v1/ca/<id>.crt``: the current certificate of a generated CA declared ``ca_issuers``, DER,
  ``application/pkix-cert`` (RFC 2585 §4.1; RFC 5280 §4.2.2.1: a caIssuers URI "http" names a
  single DER certificate; :meth:`confide.cas.core.Cas.published_ca_certificate`).

:func:`crl_response` and :func:`ca_response` build them for both listeners (the TLS API's
routes in :mod:`confide.cas.app`, and :class:`PublicApp`). Both are signed objects: a relying
party checks a CRL's signature against a CA it already trusts (RFC 5280 §6.3.3), and a
certificate fetched through caIssuers is a candidate for path building, verified like any
other (§4.2.2.1), so neither needs an authenticated channel; and the fetchers of CRL
distribution points speak plain HTTP (OpenSSL 3.0's fetches no ``https://`` one).

:class:`PublicApp` is a bare ASGI application, not the API's: it has no other route, so nothing
that needs authentication, writes a policy or takes evidence can be reached through it. GET and
HEAD (RFC 9110 §9.3.1-2) of those two paths; any other path a bare ``404``; any other method
``405`` with ``Allow`` (RFC 9110 §15.5.6), the same for every path; a request that carries content
``413`` and the connection closed (the listener reads no request body). Its connections and
request heads are bounded by an :class:`~confide.cas.http_limits.HttpLimits` of their own
(:meth:`~confide.cas.http_limits.HttpLimits.plain_protocol`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from confide.cas.secrets import CA_PATH, CRL_PATH

if TYPE_CHECKING:
    from confide.cas.core import Cas
    from confide.cas.http_limits import HttpLimits

__all__ = ["PUBLIC_MAX_AGE", "PublicApp", "PublicResponse", "ca_response", "crl_response"]

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


_ROUTES = ((CRL_PATH, "/v1/crl/{id}", crl_response), (CA_PATH, "/v1/ca/{id}", ca_response))
_METHODS = frozenset({"GET", "HEAD"})
_ALLOW = "GET, HEAD"


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
        if method not in _METHODS:
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
