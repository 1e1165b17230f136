"""The CAS HTTP API (FastAPI): thin routes that parse, call :class:`confide.cas.core.Cas`, and
serialise. Errors come back as ``{"error": {"class", "message", "exit_code"}}`` with an HTTP
status per error class, so clients can re-raise the same class (and exit with the same code).

Logs are one JSON object per line and never contain request bodies or secret values.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from confide import __version__, errors
from confide.cas.core import Cas
from confide.cas.db import raw_connection
from confide.errors import ConfideError, ParseError
from confide.ledger.serve import serve as serve_log

__all__ = ["STATUS", "create_app"]

log = logging.getLogger("confide.cas")

STATUS: dict[type[ConfideError], int] = {
    errors.UsageError: 400,
    errors.ParseError: 400,
    errors.AccessDeniedError: 403,
    errors.AppraisalError: 403,
    errors.ConflictError: 409,
    errors.PolicyError: 422,
    errors.VerificationError: 403,
    errors.NetworkError: 502,
    errors.StorageError: 503,
}


def status_for(exc: ConfideError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _read_doc(header: str | None) -> Any:
    if not header:
        raise errors.AccessDeniedError("reading needs a signed X-Confide-Read header (confide/read/v1)")
    try:
        return json.loads(base64.b64decode(header, validate=True))
    except (ValueError, binascii.Error):
        raise ParseError("X-Confide-Read is not base64 JSON", structure="read request") from None


def create_app(cas: Cas, *, cas_evidence: dict[str, Any] | None = None) -> FastAPI:
    registry = CollectorRegistry()
    requests = Counter("confide_requests_total", "HTTP requests", ["route", "status"], registry=registry)
    attestations = Counter(
        "confide_attestations_total", "Attestation outcomes", ["verdict"], registry=registry
    )
    latency = Histogram("confide_request_seconds", "Request latency", ["route"], registry=registry)

    app = FastAPI(title="confide CAS", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(ConfideError)
    async def _confide_error(request: Request, exc: ConfideError) -> JSONResponse:
        return JSONResponse(
            status_code=status_for(exc),
            content={"error": {"class": exc.kind, "message": exc.message, "exit_code": exc.exit_code}},
        )

    @app.middleware("http")
    async def _log(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        route = request.url.path
        response = await call_next(request)
        elapsed = time.perf_counter() - start
        template = request.scope.get("route")
        route = getattr(template, "path", route)
        requests.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(elapsed)
        log.info(
            json.dumps(
                {"event": "request", "method": request.method, "route": route, "status": response.status_code,
                 "ms": round(elapsed * 1000, 2)}
            )
        )  # fmt: skip
        return response

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/cas/evidence")
    def cas_evidence_route() -> dict[str, Any]:
        if cas_evidence is None:
            raise errors.UsageError("this CAS has no evidence of its own (not running in a TEE or simulator)")
        return cas_evidence

    @app.post("/v1/policies")
    def apply_policy(submission: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        result = cas.apply(submission)
        return {"name": result.name, "hash": result.hash, "state": result.state}

    @app.post("/v1/policies/{name}/approvals")
    def approve_policy(name: str, approval: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        if approval.get("name") != name:
            raise ParseError("approval names another policy than the URL", structure="approval")
        result = cas.approve(approval)
        return {"name": result.name, "hash": result.hash, "state": result.state}

    @app.get("/v1/policies/{name}")
    def show_policy(name: str, x_confide_read: str | None = Header(default=None)) -> dict[str, Any]:
        doc = _read_doc(x_confide_read)
        if not isinstance(doc, dict) or doc.get("name") != name:
            raise ParseError("read request names another policy than the URL", structure="read request")
        return cas.show(doc)

    @app.get("/v1/policies/{name}/events")
    def policy_events(name: str, x_confide_read: str | None = Header(default=None)) -> dict[str, Any]:
        doc = _read_doc(x_confide_read)
        if not isinstance(doc, dict) or doc.get("name") != name:
            raise ParseError("read request names another policy than the URL", structure="read request")
        return cas.events_for(doc)

    @app.get("/v1/log/{path:path}")
    def log_resource(path: str) -> Response:
        """C2SP tlog-tiles: the signed checkpoint and the hash tiles are public; entry bundles
        are not served here (entries are read per policy, with inclusion proofs)."""
        if path.startswith("tile/entries/"):
            raise errors.AccessDeniedError("entry bundles are not public; read a policy's events instead")
        with cas.db.read() as conn:
            resource = serve_log(raw_connection(conn), path)
        if resource is None:
            return Response(status_code=404)
        cache = "public, max-age=31536000, immutable" if resource.immutable else "no-store"
        return Response(resource.body, media_type=resource.content_type, headers={"Cache-Control": cache})

    @app.post("/v1/attest/nonce")
    def nonce() -> dict[str, Any]:
        return {"nonce": cas.new_nonce(), "expires_in": 60}

    @app.post("/v1/attest")
    def attest(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        try:
            out = cas.attest(request)
        except ConfideError:
            attestations.labels("refused").inc()
            raise
        attestations.labels("accepted").inc()
        return out

    @app.post("/v1/volumes/tag")
    def volume_tag(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return cas.update_volume_tag(request)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
