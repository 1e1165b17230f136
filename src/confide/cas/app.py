"""The CAS HTTP API (FastAPI): thin routes that parse, call :class:`confide.cas.core.Cas`, and
serialise. Errors come back as ``{"error": {"class", "message", "exit_code"}}`` with an HTTP
status per error class, so clients can re-raise the same class (and exit with the same code).

Logs are one JSON object per line and never contain request bodies or secret values.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.exceptions import HTTPException

from confide import __version__, errors, jsonstrict
from confide.cas.core import NONCE_TTL, READ_NONCE_PATH, READ_TYPE, READABLE_PATH, Cas, is_opaque_refusal
from confide.cas.crl import crl_pem
from confide.cas.db import WriteBatcher, raw_connection
from confide.cas.fetch_stats import BUCKETS, FetchStats
from confide.cas.key_release import KeyReleaser, OwnTcbWatch
from confide.cas.ocsp_responder import OcspResponder
from confide.cas.own_evidence import CasEvidence
from confide.cas.public_http import (
    PUBLIC_MAX_AGE,
    PublicApp,
    PublicResponse,
    ca_response,
    crl_response,
    ocsp_response,
)
from confide.cas.readiness import Readiness
from confide.cas.refusal_delay import ARRIVED, RefusalDelay, RefusalDelayCollector
from confide.cas.secrets import OCSP_PATH
from confide.cas.successor import Successors
from confide.cas.verifier import Prefetched
from confide.cas.witness_quorum import WitnessGuard
from confide.errors import ConfideError, ParseError
from confide.httpserve.limits import HttpLimits
from confide.httpserve.metrics_listener import MetricsAuth, limits_refused
from confide.httpserve.ratelimit import RateLimiter, client_key, retry_after
from confide.ledger.serve import serve as serve_log

__all__ = ["MAX_BODIES", "MAX_BODY", "STATUS", "BodyBudget", "create_app"]

log = logging.getLogger("confide.cas")

LISTING_RETRY = 1.0
"""Seconds a ``GET /v1/read/policies`` sent while another is answered is told to wait (429,
``Retry-After``): one is answered at a time."""

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


_JSON = "application/json"


class _JsonBody(Response):
    """A 200 response whose body is JSON bytes made already: what ``Response(body,
    media_type="application/json")`` and ``JSONResponse`` make (status, body, ``background``, and the
    same header fields in the same order: ``content-length``, ``content-type``), without
    starlette's ``render`` and ``init_headers`` (4,323 instructions against 10,641 per response,
    ``bench/crypto_instructions.py``)."""

    media_type = _JSON

    def __init__(self, body: bytes) -> None:  # Response.__init__ is not called (above)
        self.status_code, self.background, self.body = 200, None, body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]


# What phase 1 is handed when nothing was fetched for it (Prefetched is immutable: one for all).
NOTHING_PREFETCHED = Prefetched()


_REQUEST_LINE = '{"event": "request", "method": "%s", "route": "%s", "status": %d, "ms": %.2f}'
"""The request log line (docs/cas.md "Request log"), logged as ``log.info(_REQUEST_LINE, ...)``."""


def _line_handler(log: logging.Logger) -> Any:
    """The handler that ``log.info`` of a request line would reach, when it is the only one and
    writes the line as given (a handler with ``accepts_lines()`` true: ``cas serve``'s, whose
    formatter writes a JSON message as it is): then the line needs no ``LogRecord``, nor
    logging's path to the handler (~23,000 of the ~37,000 instructions a request's line cost).
    ``None`` when anything else is configured (a filter on ``log``, a record factory, another
    handler at INFO, no handler: ``logging.lastResort``); ``log.info`` is then called as before.
    The caller has checked ``log.isEnabledFor(logging.INFO)`` (levels, ``disabled``,
    ``logging.disable``); this walks the handlers as ``Logger.callHandlers`` does."""
    if log.filters or logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    found: Any = None
    current: logging.Logger | None = log
    while current is not None:
        for handler in current.handlers:
            if handler.level <= logging.INFO:
                if found is not None:
                    return None
                found = handler
        current = current.parent if current.propagate else None
    accepts = getattr(found, "accepts_lines", None)
    return found if accepts is not None and accepts() else None


def _read_doc(header: str | None) -> Any:
    if not header:
        raise errors.AccessDeniedError(
            f"reading needs a signed X-Confide-Read header ({READ_TYPE}, over a nonce from POST "
            f"{READ_NONCE_PATH})"
        )
    try:
        raw = base64.b64decode(header, validate=True)
    except (ValueError, binascii.Error):
        raise ParseError("X-Confide-Read is not base64 JSON", structure="read request") from None
    return jsonstrict.loads(raw, structure="X-Confide-Read")


def create_app(
    cas: Cas,
    *,
    cas_evidence: CasEvidence | None = None,
    http_limits: HttpLimits | None = None,
    attest_limiter: RateLimiter | None = None,
    write_limiter: RateLimiter | None = None,
    public_http: PublicApp | None = None,
    witness_guard: WitnessGuard | None = None,
    refusal_delay: RefusalDelay | None = None,
    metrics_on_api: bool = True,
    metrics_auth: MetricsAuth | None = None,
) -> _CasApp:
    """The CAS's API; ``cas_evidence``: its own evidence (``GET /v1/cas/evidence``), whose
    refreshes and their failures ``/metrics`` counts. ``http_limits``: the server's connection
    and timeout limits, whose refusals ``/metrics`` counts. ``attest_limiter``: the per-client
    rate of ``POST /v1/attest/nonce``, ``POST /v1/attest`` and ``POST /v1/read/nonce`` (no
    database write; a read spends its nonce); ``write_limiter``: of every other POST (policy
    submissions and updates, board approvals, volume tags) and of ``GET /v1/read/policies``
    (which looks at every current policy; one is also answered at a time); ``None``: unlimited.
    ``public_http``: the public plain-HTTP listener's application, whose responses and
    connection limits ``/metrics`` counts too (``cas serve --public-http-listen``).
    ``witness_guard``: with ``cas serve --witness-quorum`` (docs/cas.md "Witness quorum"), every
    POST but OCSP's and read nonces' (releases, other nonces, policy and board changes, volume
    tags) is answered 503 while the guard refuses (a witness's rollback or fork answer, or
    ``--witness-max-lag`` passed), and ``/metrics`` shows what the witnesses said.
    ``refusal_delay``: with ``cas serve --opaque-refusals`` (docs/cas.md "Opaque refusals"), each
    opaque refusal (``confide.cas.core.is_opaque_refusal``) is answered no earlier than the
    delay after its request's body was read (``None``: at once). ``metrics_on_api``: whether
    this application serves ``GET /metrics`` (``cas serve --metrics-listen`` serves it on a
    listener of its own, :mod:`confide.httpserve.metrics_listener`: then this one has no such
    route, a 404 as any unknown path, and the OpenAPI schema does not list it); the registry
    is the application's ``metrics_registry`` and ``render_metrics()`` either way.
    ``metrics_auth``: the bearer token ``/metrics`` requires here (``--metrics-token-file``;
    ``None``: none), its refusals counted in the registry."""
    registry = CollectorRegistry()
    requests = _Counts("confide_requests", "HTTP requests", ("route", "status"))
    registry.register(requests)
    attestations = _Counts("confide_attestations", "Attestation outcomes", ("verdict",))
    registry.register(attestations)
    accepted, refused = attestations.child("accepted"), attestations.child("refused")
    latency = _Latency("confide_request_seconds", "Request latency", "route")
    registry.register(latency)

    # With the ledger sink: one ledger append per group-commit transaction (its attestations'
    # entries together), not one per attestation.
    writer = WriteBatcher(cas.db, around=getattr(cas.events, "batched", None))
    budget = BodyBudget(MAX_BODIES)

    def spend(job: Any) -> Any:
        # A read's nonce is spent by the group commit (with the attestations' spends), from the
        # worker thread FastAPI runs the read in (docs/cas.md "Reading a policy").
        return writer.submit(job).result()

    metric_children: dict[tuple[str, int], tuple[list[float], list[Any]]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(writer.close)

    app = _CasApp(title="confide CAS", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.router.route_class = _StrictRoute  # JSON bodies read by confide.jsonstrict

    @app.exception_handler(ConfideError)
    async def _confide_error(request: Request, exc: ConfideError) -> JSONResponse:
        response = _error_response(exc)
        if refusal_delay is not None and is_opaque_refusal(exc):
            # docs/cas.md "Opaque refusals": a refusal the full stack answers (a volume tag
            # report's; an attestation the fast path declined) waits here, on the event loop,
            # once the worker thread that decided it is free. The arrival is observe's.
            scope = request.scope
            arrived = scope.get(ARRIVED)
            await refusal_delay.wait(refusal_delay.now() if arrived is None else arrived, scope["path"])
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own answer to a body that is not JSON or not an object (422, ``detail``),
        without echoing the input: Python's json reads ``NaN`` and ``1e400`` as floats that no
        JSON response can carry (FastAPI's default handler then failed with a 500: fuzz3)."""
        detail = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})

    async def observe(scope: Any, receive: Any, send: Any, inner: Any) -> None:
        """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): metrics and one JSON log line
        per request, never the body."""
        if scope["type"] != "http" or scope.get("confide.observed"):
            await inner(scope, receive, send)
            return
        scope["confide.observed"] = True  # once per request, also when the fast path declines
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = 500
        route: str | None = None
        held = [0]  # bytes of this request's body counted in the budget, given back at the end
        try:
            fast = hot.get(path) if method == "POST" else None
            if fast is not None:
                route = path
            # GET /v1/read/policies looks at every current policy: limited per client as the
            # writes are (docs/cas.md "Reading a policy"), before anything is read.
            listing = method == "GET" and path == READABLE_PATH
            if method == "POST" or listing:
                # Per-client rate limits (confide.httpserve.ratelimit), before the body is read: a
                # refused request costs a bucket lookup; its body is discarded as it comes.
                # Read nonces are issued as attestation nonces are (no database write): limited
                # with them (docs/cas.md "Reading a policy").
                limiter = attest_limiter if fast is not None or path == READ_NONCE_PATH else write_limiter
                if path.startswith(OCSP_PATH):
                    # An OCSP request writes nothing: bounded like the other public routes, and
                    # its signatures by the responder's own per-client rate (docs/cas.md "OCSP").
                    limiter = None
                if limiter is not None:
                    client = scope.get("client")
                    wait = limiter.take(client_key(client[0]) if client else "")
                    if wait:
                        route = route or _write_route(path)
                        response: Response = _too_many(wait)
                        status = response.status_code
                        await _send_response(response, send)
                        return
                # docs/cas.md "Witness quorum": no release or change from a database a witness
                # says was rolled back or forked (or, with --witness-max-lag, not cosigned lately).
                halted = _witness_refusal(witness_guard, path) if method == "POST" else None
                if halted is not None:
                    route = route or _write_route(path)
                    status = halted.status_code
                    await _send_response(halted, send)
                    return
            # Every request body is read here, bounded by MAX_BODY, before anything parses it:
            # a larger one (declared or sent) is refused with 413 without being read further;
            # one that would take the bodies held at once past MAX_BODIES, with 503.
            body, whole = await _read_body(scope, receive, budget, held)
            # docs/cas.md "Opaque refusals": the request arrived once its body is in; an opaque
            # refusal is answered no earlier than --refusal-delay after this.
            arrived = refusal_delay.now() if refusal_delay is not None else 0.0
            if body is None:
                response = _refusal(held[0] < 0)
                status = response.status_code
                await _send_response(response, send)
                return
            # Asked again once the body is in: reading it may take --body-timeout, and a
            # witness's rollback or fork answer (or the lag bound) that came meanwhile must
            # refuse this request too (docs/cas.md "Witness quorum").
            halted = _witness_refusal(witness_guard, path) if method == "POST" else None
            if halted is not None:
                route = route or _write_route(path)
                status = halted.status_code
                await _send_response(halted, send)
                return
            if fast is not None:
                # The attestation endpoints skip FastAPI's routing and body validation for a
                # well-formed JSON object (the same endpoint function runs); anything else takes
                # the full stack below and gets its usual error.
                endpoint, wants_body = fast
                data = (_json_object(body) if whole else None) if wants_body else {}
                if data is not None:
                    opaque = False
                    try:
                        response = await (endpoint(data) if wants_body else endpoint())
                    except ConfideError as exc:
                        response = _error_response(exc)
                        opaque = refusal_delay is not None and is_opaque_refusal(exc)
                    if opaque and refusal_delay is not None:
                        # docs/cas.md "Opaque refusals": the answer waits for its deadline on
                        # the loop; the body (up to MAX_BODY) is not held meanwhile.
                        body = data = None
                        budget.give(held[0])
                        held[0] = 0
                        await refusal_delay.wait(arrived, path)
                    status = response.status_code
                    await _send_response(response, send)
                    return
            # The full stack: its status seen as its response starts.
            seen = [500]

            async def send_wrapper(message: Any) -> None:
                if message["type"] == "http.response.start":
                    seen[0] = message["status"]
                await send(message)

            if refusal_delay is not None:
                scope[ARRIVED] = arrived
            try:
                await inner(scope, _replay(body, whole, receive), send_wrapper)
            finally:
                status = seen[0]
        finally:
            budget.give(max(held[0], 0))
            elapsed = time.perf_counter() - start
            route = route or str(getattr(scope.get("route"), "path", "unmatched"))
            key = (route, status)
            children = metric_children.get(key)
            if children is None:
                children = metric_children[key] = (requests.child(route, str(status)), latency.child(route))
            _count_request(children, elapsed)
            if log.isEnabledFor(logging.INFO):
                args = (method, route, status, elapsed * 1000)
                handler = _line_handler(log)
                if handler is not None:  # the line logging would write, without the record
                    handler.emit_line(_REQUEST_LINE % args)
                else:
                    log.info(_REQUEST_LINE, *args)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    readiness = Readiness(cas.db)

    @app.get("/v1/ready")
    def ready() -> dict[str, str]:
        # docs/cas.md "HTTP API": the database answers (503 StorageError otherwise); run in the
        # request thread pool, one check at a time (confide.cas.readiness)
        readiness.check()
        return {"status": "ready", "version": __version__}

    @app.get("/v1/cas/evidence")
    def cas_evidence_route() -> Response:
        if cas_evidence is None:
            raise errors.UsageError("this CAS has no evidence of its own (not running in a TEE or simulator)")
        # The document serialised when it was obtained (one reference read: never half of an
        # old and half of a refreshed document).
        body = cas_evidence.body
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.post("/v1/policies")
    def apply_policy(submission: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        result = cas.apply(submission)
        return {"name": result.name, "hash": result.hash, "state": result.state}

    # Policy names may be namespaced (a/b/c): {name:path} takes the slashes, raw or as %2F. The
    # events route comes first; a GET of a policy whose last segment is "events" also reaches it,
    # and the signed read request (which names the policy) tells the two apart.
    @app.post("/v1/policies/{name:path}/approvals")
    def approve_policy(name: str, approval: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        if approval.get("name") != name:
            raise ParseError("approval names another policy than the URL", structure="approval")
        result = cas.approve(approval)
        return {"name": result.name, "hash": result.hash, "state": result.state}

    @app.post("/v1/policies/{name:path}/revocations")
    def revoke_certificates(name: str, request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """An owner's revocation of certificates under a generated CA (docs/cas.md "Revocation")."""
        if request.get("name") != name:
            raise ParseError("revocation request names another policy than the URL", structure="revocation")
        return cas.revoke_certificates(request)

    @app.get("/v1/policies/{name:path}/events")
    def policy_events(name: str, x_confide_read: str | None = Header(default=None)) -> Response:
        doc = _read_doc(x_confide_read)
        if isinstance(doc, dict) and doc.get("name") == f"{name}/events":
            return _private(cas.show(doc, spend))  # GET /v1/policies/<a/events>: the policy named a/events
        if not isinstance(doc, dict) or doc.get("name") != name:
            raise ParseError("read request names another policy than the URL", structure="read request")
        return _private(cas.events_for(doc, spend))

    @app.get("/v1/policies/{name:path}/crl/{secret}")
    def policy_crl(
        name: str, secret: str, format: str = "der", x_confide_read: str | None = Header(default=None)
    ) -> Response:
        """The current CRL of a generated CA (docs/cas.md "Revocation"): with a signed read
        request for readers of the policy, without one for a CA declared ``export_public``.
        DER (``application/pkix-crl``, RFC 2585 §4.2) or ``?format=pem``."""
        if format not in ("der", "pem"):
            raise errors.UsageError(f"got format {format[:16]!r}, expected der or pem")
        doc = _read_doc(x_confide_read) if x_confide_read else None
        if isinstance(doc, dict) and doc.get("name") == f"{name}/crl/{secret}":
            return _private(cas.show(doc, spend))  # GET /v1/policies/<a/crl/b>: the policy named a/crl/b
        der, next_update, public = cas.crl(name, secret, doc, spend)
        if public:  # cached at most 5 minutes: a new revocation is published at once
            max_age = max(0, min(CRL_MAX_AGE, int(next_update - cas.clock())))
            cache = f"public, max-age={max_age}"
        else:
            cache = "private, no-store"
        headers = {"Cache-Control": cache}
        if format == "pem":
            return Response(crl_pem(der), media_type="application/x-pem-file", headers=headers)
        return Response(der, media_type="application/pkix-crl", headers=headers)

    @app.get("/v1/crl/{file}")
    def distributed_crl(file: str) -> Response:
        """A CRL distribution point (RFC 5280 §4.2.1.13; docs/cas.md "CRL distribution points"):
        the DER CRL (``application/pkix-crl``, RFC 2585 §4.2) of a CA declared
        ``crl_distribution``, to anyone. The same bare 404 for every other id. Also served by
        the public HTTP listener (:mod:`confide.cas.public_http`)."""
        return _public(crl_response(cas, file))

    @app.get("/v1/ca/{file}")
    def published_ca(file: str) -> Response:
        """A caIssuers URL (RFC 5280 §4.2.2.1; docs/cas.md "CA certificates (caIssuers)"): the
        DER certificate (``application/pkix-cert``, RFC 2585 §4.1) of a CA declared
        ``ca_issuers``, to anyone. The same bare 404 for every other id. Also served by the
        public HTTP listener."""
        return _public(ca_response(cas, file))

    async def ocsp(request: Request, rest: str) -> Response:
        """The OCSP responder of a CA declared ``ocsp`` (RFC 6960 Appendix A.1; docs/cas.md
        "OCSP"), to anyone: ``POST /v1/ocsp/<id>`` or ``GET /v1/ocsp/<id>/<request>``. Also
        served by the public HTTP listener. (``rest``, the path after the prefix, is declared
        for the OpenAPI schema; the raw path is read, as there.)"""
        del rest
        return _public(await ocsp_response(cas, request.scope, request.receive))

    # One route per method, each with its own OpenAPI operation id: one route of three methods
    # gave all three the same id, FastAPI's warning (an error under the tests' filterwarnings)
    # and the schemathesis run of tests/integration/test_cas_schemathesis.py stopped at
    # collection (found by the fuzz4 campaign).
    for method in ("GET", "HEAD", "POST"):
        app.add_api_route(
            "/v1/ocsp/{rest:path}", ocsp, methods=[method], operation_id=f"ocsp_{method.lower()}"
        )

    # One GET /v1/read/policies at a time (it looks at every current policy): another, sent
    # meanwhile, is answered 429 before its nonce is spent, and sent again (docs/cas.md
    # "Reading a policy"); each client is also held to --write-rate (observe, above).
    listing = threading.Lock()

    @app.get(READABLE_PATH)
    def readable_policies(x_confide_read: str | None = Header(default=None)) -> Response:
        """The policies the signer of a ``confide/read/v3`` request (route ``list``, name ``""``)
        may read (docs/cas.md "Reading a policy")."""
        if not listing.acquire(blocking=False):
            return _too_many(LISTING_RETRY, "another list of readable policies is being answered")
        try:
            return _private(cas.readable(_read_doc(x_confide_read), spend))
        finally:
            listing.release()

    @app.get("/v1/policies/{name:path}")
    def show_policy(name: str, x_confide_read: str | None = Header(default=None)) -> Response:
        doc = _read_doc(x_confide_read)
        if not isinstance(doc, dict) or doc.get("name") != name:
            raise ParseError("read request names another policy than the URL", structure="read request")
        return _private(cas.show(doc, spend))

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
    async def nonce() -> Response:  # no I/O: served on the event loop
        # {"nonce": ..., "expires_in": 60} as JSONResponse writes it, without the encoder: the nonce
        # is hex (nothing to escape)
        return _JsonBody(b'{"nonce":"%s","expires_in":60}' % cas.new_nonce().encode("ascii"))

    @app.post(READ_NONCE_PATH)
    async def read_nonce(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        """A single-use nonce for one signed read (``confide/read/v3``) of the policy ``name`` on
        ``route`` (``show``, ``events`` or ``crl``), valid ``expires_in`` seconds (docs/cas.md
        "Reading a policy"). No I/O: served on the event loop."""
        if set(request) != {"name", "route"}:
            raise ParseError("expected exactly name and route", structure="read nonce request")
        return {"nonce": cas.new_read_nonce(request["name"], request["route"]), "expires_in": int(NONCE_TTL)}

    @app.post("/v1/attest")
    async def attest(request: dict[str, Any] = Body(...)) -> Response:  # noqa: B008
        # Phase 1 on the event loop: CPU-bound (verification, appraisal, rendering), so a thread
        # hand-off would cost more than it saves. Collateral it would fetch or read (DCAP
        # collateral from Intel PCS or a PCCS, or from a local --collateral file or directory;
        # an SEV-SNP VCEK from AMD KDS; OCSP responses for NVIDIA GPU chains) is fetched first,
        # in a thread, and handed to phase 1 with what was in memory already (a Prefetched):
        # phase 1 never fetches or reads collateral on the loop, even when the shared caches
        # dropped the entries meanwhile. No thread hand-off when everything was in memory.
        # Phase 2 (spend the nonce, record the outcome) goes to the group commit: the loop goes
        # on with other requests while the disk syncs.
        job = cas.collateral_job(request)
        if job is None:
            prefetched = NOTHING_PREFETCHED
        elif job.fetch is None:
            prefetched = job.found
        else:
            prefetched = await asyncio.to_thread(job.run)
        pending = cas.attest_begin(request, prefetched=prefetched)
        await writer.submit_async(pending.commit)
        try:
            # the bytes JSONResponse(pending.result()) writes, without the encoder (core.release_json)
            out = pending.result_body()
        except ConfideError:
            refused[0] += 1.0
            raise
        accepted[0] += 1.0
        return _JsonBody(out)

    @app.post("/v1/cas/key-release/nonce")
    def key_release_nonce() -> dict[str, Any]:
        # docs/cas.md "Joining a running CAS" (confide.cas.key_release)
        return {"nonce": _key_releaser(cas).new_nonce(), "expires_in": 60}

    @app.post("/v1/cas/key-release")
    def key_release(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        # Blocking (verification, collateral, a write transaction): FastAPI runs it in a thread.
        return _key_releaser(cas).release(request)

    @app.get("/v1/cas/successor")
    def successor_show() -> dict[str, Any]:
        # docs/cas.md "Handing over to a successor version" (confide.cas.successor)
        return _successors(cas).show()

    @app.post("/v1/cas/successor/approvals")
    def successor_approve(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return _successors(cas).approve(request)

    @app.post("/v1/cas/successor/withdrawals")
    def successor_withdraw(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        # docs/cas.md "Withdrawing an approval" (confide.cas.successor)
        return _successors(cas).withdraw(request)

    @app.get("/v1/cas/successor/board")
    def successor_board_show() -> dict[str, Any]:
        # docs/cas.md "Changing the successor board" (confide.cas.board_change)
        return _successors(cas).board_changes.show()

    @app.post("/v1/cas/successor/board/approvals")
    def successor_board_approve(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return _successors(cas).board_changes.approve(request)

    @app.get("/v1/cas/successor/retirements")
    def successor_retirements_show() -> dict[str, Any]:
        # docs/cas.md "Retiring a version on its own" (confide.cas.retirement)
        return _successors(cas).retirements.show()

    @app.post("/v1/cas/successor/retirements/approvals")
    def successor_retirement_approve(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return _successors(cas).retirements.approve(request)

    @app.post("/v1/volumes/tag")
    def volume_tag(request: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return cas.update_volume_tag(request)

    hot: dict[str, tuple[Any, bool]] = {"/v1/attest/nonce": (nonce, False), "/v1/attest": (attest, True)}

    registry.register(_GroupCommitCollector(writer))
    registry.register(_LimitsCollector(http_limits, {"attest": attest_limiter, "write": write_limiter}))
    registry.register(_FetchCollector(cas))
    registry.register(_OcspCollector(cas))
    registry.register(_HeadIndexCollector(cas))
    if public_http is not None:
        registry.register(_PublicHttpCollector(public_http))
    if cas_evidence is not None:
        registry.register(_EvidenceCollector(cas_evidence))
    if witness_guard is not None:
        registry.register(_WitnessCollector(witness_guard))
    if cas.key_release is not None and cas.key_release.own_tcb is not None:
        registry.register(_OwnTcbCollector(cas.key_release.own_tcb))
    if refusal_delay is not None:
        registry.register(RefusalDelayCollector(refusal_delay))

    if metrics_auth is not None:
        registry.register(metrics_auth)

    def render_metrics() -> bytes:
        return bytes(generate_latest(registry))

    if metrics_on_api:

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            # docs/cas.md "Metrics": with --metrics-token-file, only with the bearer token
            refused = metrics_auth.refusal(request.scope, "api") if metrics_auth is not None else None
            if refused is not None:
                status, headers, body = refused
                raw = {k.decode(): v.decode() for k, v in headers}
                media_type = raw.pop("content-type")
                return Response(body, status_code=status, headers=raw, media_type=media_type)
            return Response(await asyncio.to_thread(render_metrics), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Observe, observe=observe)
    app.observe, app.fast_paths, app.body_budget = observe, frozenset(hot), budget
    app.metrics_registry, app.render_metrics = registry, render_metrics
    return app


CRL_MAX_AGE = PUBLIC_MAX_AGE  # seconds a public CRL may be cached (docs/cas.md "Revocation")


def _private(content: dict[str, Any]) -> Response:
    """A reader's answer (``policy show``, its events): ``Cache-Control: no-store`` (RFC 9111
    §5.2.2.5). It depends on the signed ``X-Confide-Read`` header, which no HTTP cache keys on
    (§3.5 keeps only responses to ``Authorization`` out of shared caches): a cache between
    reader and CAS must not hand one reader's answer to the next request for the same URL."""
    return JSONResponse(content, headers={"Cache-Control": "no-store"})


def _public(response: PublicResponse) -> Response:
    status, headers, body = response
    headers = dict(headers)
    media_type = headers.pop("content-type", None)
    return Response(body, status_code=status, media_type=media_type, headers=headers)


# The largest request body the CAS reads (RFC 9110 §15.5.14, 413 Content Too Large). The
# largest legitimate requests are attestations with GPU evidence: 8 reports, their chains and
# up to 16 RIMs, ~2-3 MiB in JSON; a policy document is at most 1 MiB (policy.loader.MAX_BYTES).
MAX_BODY = 16 << 20
# The request bodies the CAS holds at once, over all connections (503 past it): many clients
# sending bodies just under MAX_BODY cannot make it hold more than this.
MAX_BODIES = 256 << 20


class BodyBudget:
    """The bytes of request bodies held at once, over all requests (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


async def _read_body(
    scope: Any, receive: Any, budget: BodyBudget, held: list[int]
) -> tuple[bytes | None, bool]:
    """The request body and whether it is whole (False: the client disconnected first). ``None``
    when it exceeds :data:`MAX_BODY`, by its Content-Length (then nothing is read) or by what was
    sent (reading stops there), or when the budget of bodies held at once is spent (then
    ``held[0]`` is negative). ``held[0]``: the bytes taken from ``budget``, for the caller to
    give back. What was read is replayed to the full stack."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # httptools/uvicorn refuse a malformed Content-Length before the app is called.
            if value.isdigit() and (len(value) > 18 or int(value) > MAX_BODY):
                return None, False
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None, False
        if chunk:
            if not budget.take(len(chunk)):
                budget.give(held[0])
                held[0] = -1
                return None, False
            held[0] += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _refusal(busy: bool) -> JSONResponse:
    """413 for a body over MAX_BODY; 503 when the bodies held at once would pass MAX_BODIES."""
    if busy:
        exc: ConfideError = errors.NetworkError(
            "the CAS holds too many request bodies at once; retry shortly"
        )
        status = 503
    else:
        exc = ParseError(f"the request body exceeds the CAS's limit of {MAX_BODY} bytes", structure="request")
        status = 413
    response = _error_response(exc)
    response.status_code = status
    response.headers["Connection"] = "close"  # the rest of the body is not read
    if busy:
        response.headers["Retry-After"] = "1"
    return response


def _too_many(wait: float, why: str = "too many requests from this client") -> JSONResponse:
    """429 (RFC 6585 §4) for a client over its rate (or ``why``); the connection is kept (the
    unread body is discarded by uvicorn once the response is complete)."""
    delay = retry_after(wait)
    response = _error_response(errors.NetworkError(f"{why}; retry after {delay} s"))
    response.status_code = 429
    response.headers["Retry-After"] = delay
    return response


def _witness_refusal(guard: WitnessGuard | None, path: str) -> JSONResponse | None:
    """The answer to a POST while the witness guard refuses (``None`` when it does not, or for
    OCSP and read nonces, which write nothing: reads are served during a halt, as before read
    nonces): 503 with its error's class, so clients exit with its code; the
    connection is kept (the unread body is discarded by uvicorn once the response is complete).
    A halt lasts until the CAS restarts; a lag, until the next quorum."""
    if guard is None or path.startswith(OCSP_PATH) or path == READ_NONCE_PATH:
        return None
    exc = guard.refusal()
    if exc is None:
        return None
    response = _error_response(exc)
    response.status_code = 503
    return response


def _key_releaser(cas: Cas) -> KeyReleaser:
    if cas.key_release is None:
        raise errors.UsageError("this CAS releases its master key to no one")
    return cas.key_release


def _successors(cas: Cas) -> Successors:
    successors = _key_releaser(cas).successors
    if successors is None:
        raise errors.UsageError("this CAS hands its master key over to no other version")
    return successors


def _write_route(path: str) -> str:
    """The metrics label of a rate-limited POST outside the fast path, or of ``GET
    /v1/read/policies`` (never the policy name)."""
    if path in (
        READABLE_PATH,
        "/v1/policies",
        "/v1/volumes/tag",
        "/v1/cas/key-release/nonce",
        "/v1/cas/key-release",
        READ_NONCE_PATH,
        "/v1/cas/successor/approvals",
        "/v1/cas/successor/withdrawals",
        "/v1/cas/successor/board/approvals",
        "/v1/cas/successor/retirements/approvals",
    ):
        return path
    if path.startswith("/v1/policies/") and path.endswith("/approvals"):
        return "/v1/policies/{name}/approvals"
    return "unmatched"


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The fast path's reading of a body; ``None`` for anything but a JSON object, which the
    full stack then refuses with its usual error (a duplicate key: 400, :class:`_StrictRoute`)."""
    try:
        value = jsonstrict.decode(body)
    except (ValueError, ParseError):
        return None
    return value if isinstance(value, dict) else None


class _StrictRequest(Request):
    """A request whose JSON body FastAPI reads with :func:`confide.jsonstrict.decode`: a syntax
    error is FastAPI's usual 422; a duplicate key, NaN, Infinity, bytes that are not UTF-8,
    too deep nesting a ParseError (400)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = jsonstrict.decode(await self.body(), structure="request body")
        return self._json


class _StrictRoute(APIRoute):
    """Routes whose handlers see a :class:`_StrictRequest`. FastAPI answers an exception of its
    body reading other than a JSON syntax error with a bare 400 ("There was an error parsing the
    body") raised from it: the ParseError is raised instead, for the CAS's error answer."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            try:
                return await handler(_StrictRequest(request.scope, request.receive))
            except HTTPException as exc:
                cause = exc.__cause__
                if isinstance(cause, ParseError):
                    raise cause from None
                raise

        return strict


async def _send_response(response: Response, send: Any) -> None:
    """What ``await response(scope, receive, send)`` sends for the responses the fast path and
    the refusals make (http scope, no background task), without its call."""
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def _replay(body: bytes, whole: bool, receive: Any) -> Any:
    """A ``receive`` that first hands back the body already read, then the rest."""
    pending = [{"type": "http.request", "body": body, "more_body": not whole}]

    async def replay() -> Any:
        return pending.pop() if pending else await receive()

    return replay


def _error_response(exc: ConfideError) -> JSONResponse:
    return JSONResponse(
        status_code=status_for(exc),
        content={"error": {"class": exc.kind, "message": exc.message, "exit_code": exc.exit_code}},
    )


LATENCY_BOUNDS = tuple(float(b) for b in Histogram.DEFAULT_BUCKETS)  # +Inf last
_LE = tuple(floatToGoString(b) for b in LATENCY_BOUNDS)  # type: ignore[no-untyped-call]


def _count_request(children: tuple[list[float], list[Any]], seconds: float) -> None:
    """One request in its ``_Counts`` child and its ``_Latency`` child: as ``Counter.inc()`` and
    ``Histogram.observe(seconds)`` count it (the first bucket whose bound is >= ``seconds``)."""
    children[0][0] += 1.0
    counts = children[1]
    counts[0][bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1.0
    counts[1] += seconds


def _created_series() -> bool:
    """Whether prometheus_client writes the ``_created`` series (PROMETHEUS_DISABLE_CREATED_SERIES,
    ``disable_created_metrics()``)."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class _Counts:
    """A labelled counter, exposed as prometheus_client's ``Counter`` exposes one (``NAME_total``
    and ``NAME_created`` per label set, in the order the sets were first counted, float values),
    counted without ``Counter.inc``'s lock and checks: only the event loop's thread counts (the
    request path), and a scrape (``/metrics``, in a worker thread) copies the table, which is
    atomic under the GIL. A child is ``[value, created]``."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.children: dict[tuple[str, ...], list[float]] = {}

    def child(self, *labels: str) -> list[float]:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = [0.0, time.time()]
        return found

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _created_series()
        for labels, (value, at) in list(self.children.items()):
            family.add_metric(labels, value, created=at if created else None)
        yield family


class _Latency:
    """A histogram with one label and prometheus_client's default buckets, exposed as its
    ``Histogram`` exposes one (cumulative ``_bucket`` series, ``_count``, ``_sum``, ``_created``
    per label value, float values), counted as :class:`_Counts` counts. A child is ``[counts per
    bucket, sum, created]``."""

    def __init__(self, name: str, documentation: str, labelname: str) -> None:
        self.name, self.documentation, self.labelname = name, documentation, labelname
        self.children: dict[str, list[Any]] = {}

    def child(self, label: str) -> list[Any]:
        found = self.children.get(label)
        if found is None:
            found = self.children[label] = [[0.0] * len(LATENCY_BOUNDS), 0.0, time.time()]
        return found

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.labelname])
        created = _created_series()
        for label, (counts, total, at) in list(self.children.items()):
            acc, buckets = 0.0, []
            for le, n in zip(_LE, list(counts), strict=True):
                acc += n
                buckets.append((le, acc))
            family.add_metric([label], buckets, total)
            if created:
                family.add_sample(self.name + "_created", {self.labelname: label}, at)
        yield family


class _GroupCommitCollector:
    """The group commit's own counts, read at scrape time: transactions, and the attestations
    committed in them (their ratio is the mean batch size)."""

    def __init__(self, writer: WriteBatcher) -> None:
        self.writer = writer

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "confide_group_commits", "Write transactions of the group commit", value=self.writer.commits
        )
        yield CounterMetricFamily(
            "confide_group_commit_jobs",
            "Jobs (attestation outcomes) committed by the group commit",
            value=self.writer.committed_jobs,
        )


class _LimitsCollector:
    """The connections open and what the HTTP limits and rate limits refused, read at scrape
    time (docs/cas.md "HTTP API")."""

    def __init__(self, limits: HttpLimits | None, limiters: dict[str, RateLimiter | None]) -> None:
        self.limits = limits
        self.limiters = {name: lim for name, lim in limiters.items() if lim is not None}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        limits = self.limits
        if limits is not None:
            yield GaugeMetricFamily(
                "confide_cas_connections", "Connections open (TLS handshakes included)", value=limits.open
            )
            refused = CounterMetricFamily(
                "confide_cas_connections_refused",
                "Connections closed when accepted, over --max-connections or --max-connections-per-ip",
                labels=["limit"],
            )
            refused.add_metric(["total"], limits.refused_total)
            refused.add_metric(["per_ip"], limits.refused_per_client)
            yield refused
            requests = CounterMetricFamily(
                "confide_cas_requests_refused",
                "Requests refused by the HTTP layer (reason: head_too_large 431, head_timeout 408"
                " or close, body_timeout 408, pipeline_too_deep 503)",
                labels=["reason"],
            )
            requests.add_metric(["head_too_large"], limits.head_too_large)
            requests.add_metric(["head_timeout"], limits.head_timeouts)
            requests.add_metric(["body_timeout"], limits.body_timeouts)
            requests.add_metric(["pipeline_too_deep"], limits.pipeline_too_deep)
            yield requests
        if self.limiters:
            limited = CounterMetricFamily(
                "confide_cas_rate_limited",
                "Requests refused with 429 (per-client rate limits)",
                labels=["limit"],
            )
            evicted = CounterMetricFamily(
                "confide_cas_rate_limit_evictions",
                "Client buckets dropped to keep the table within its bound",
                labels=["limit"],
            )
            clients = GaugeMetricFamily(
                "confide_cas_rate_limit_clients", "Client buckets held", labels=["limit"]
            )
            for name, limiter in sorted(self.limiters.items()):
                limited.add_metric([name], limiter.limited)
                evicted.add_metric([name], limiter.evicted)
                clients.add_metric([name], len(limiter))
            yield limited
            yield evicted
            yield clients


class _PublicHttpCollector:
    """The public plain-HTTP listener's responses by route and status, its open connections and
    what its limits refused, read at scrape time (docs/cas.md "The public HTTP listener")."""

    def __init__(self, public: PublicApp) -> None:
        self.public = public

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        responses = CounterMetricFamily(
            "confide_cas_public_http_requests",
            "Requests answered by the public HTTP listener",
            labels=["route", "status"],
        )
        for (route, status), n in sorted(dict(self.public.responses).items()):
            responses.add_metric([route, str(status)], n)
        yield responses
        limits = self.public.limits
        if limits is None:
            return
        yield GaugeMetricFamily(
            "confide_cas_public_http_connections", "Connections open on the public HTTP listener",
            value=limits.open,
        )  # fmt: skip
        yield limits_refused("confide_cas_public_http_refused", "the public HTTP listener", limits)


class _OcspCollector:
    """The OCSP responder's answers by outcome, both listeners together, read at scrape time
    (docs/cas.md "OCSP")."""

    def __init__(self, cas: Cas) -> None:
        self.cas = cas

    def collect(self) -> Iterator[CounterMetricFamily]:
        responder = OcspResponder.of(self.cas)
        answers = CounterMetricFamily(
            "confide_cas_ocsp_answers",
            "OCSP answers (outcome: signed, cached, malformed, unauthorized, try_later)",
            labels=["outcome"],
        )
        for outcome, n in (("signed", responder.signed), ("cached", responder.cached),
                           ("malformed", responder.malformed), ("unauthorized", responder.unauthorized),
                           ("try_later", responder.limited)):  # fmt: skip
            answers.add_metric([outcome], n)
        yield answers


class _HeadIndexCollector:
    """The head index's scans of the ledger, read at scrape time (docs/cas.md "What a policy's
    current version rests on"): entries scanned, tampering met (an entry that does not hash to
    its leaf, an altered snapshot), head entries ignored (out of their chain), successor board
    reads refused against the ledger's board entries (confide.cas.board_ledger), and the ledger
    size the index has read up to."""

    def __init__(self, cas: Cas) -> None:
        self.cas = cas

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        index = self.cas.policy_auth.index
        yield CounterMetricFamily(
            "confide_cas_head_index_entries_scanned",
            "Ledger entries the head index scanned",
            value=index.scanned,
        )
        yield CounterMetricFamily(
            "confide_cas_head_index_altered",
            "Altered ledger entries or head-entry snapshots the head index refused",
            value=index.refusals,
        )
        yield CounterMetricFamily(
            "confide_cas_head_index_ignored",
            "Head entries the head index ignored (not continuing their policy's chain)",
            value=index.ignored,
        )
        yield CounterMetricFamily(
            "confide_cas_successor_board_rolled_back",
            "Reads of the successor board refused: its rows older than the ledger's board entries",
            value=index.board_refusals,
        )
        yield GaugeMetricFamily(
            "confide_cas_head_index_size",
            "The ledger size the head index has read up to",
            value=index.size or 0,
        )


class _FetchCollector:
    """The collateral fetches of the CAS's verifier (:mod:`confide.cas.fetch_stats`), by source,
    read at scrape time: the current verifier's (tests and restarts may replace it)."""

    def __init__(self, cas: Cas) -> None:
        self.cas = cas

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        stats_of = getattr(self.cas.verifier, "fetch_stats", None)
        sources: dict[str, FetchStats] = stats_of() if callable(stats_of) else {}
        fetches = CounterMetricFamily(
            "confide_cas_collateral_fetches",
            "Collateral fetches by the CAS (source: pcs, kds, ocsp, rim, gce-crl; outcome: ok, error)",
            labels=["source", "outcome"],
        )
        seconds = HistogramMetricFamily(
            "confide_cas_collateral_fetch_seconds", "Duration of collateral fetches", labels=["source"]
        )
        for source, stats in sorted(sources.items()):
            snap = stats.snapshot()
            fetches.add_metric([source, "ok"], snap.ok)
            fetches.add_metric([source, "error"], snap.error)
            bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
            seconds.add_metric([source], list(zip(bounds, snap.buckets, strict=True)), snap.seconds)
        yield fetches
        yield seconds


class _EvidenceCollector:
    """The CAS's own evidence, read at scrape time: refreshes, failed refreshes (the previous
    evidence stays served) and when the served evidence was obtained."""

    def __init__(self, evidence: CasEvidence) -> None:
        self.evidence = evidence

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "confide_cas_evidence_refreshes",
            "Refreshes of the CAS's own evidence that published new evidence",
            value=self.evidence.refreshes,
        )
        yield CounterMetricFamily(
            "confide_cas_evidence_refresh_failures",
            "Failed refreshes of the CAS's own evidence (the previous evidence stays served)",
            value=self.evidence.failures,
        )
        yield GaugeMetricFamily(
            "confide_cas_evidence_obtained_timestamp_seconds",
            "When the CAS obtained the evidence it serves (Unix time)",
            value=self.evidence.obtained_at.timestamp(),
        )


class _OwnTcbCollector:
    """``--replica-min-tcb`` judged against the CAS's own SEV-SNP evidence (at start and after
    every refresh, :class:`~confide.cas.key_release.OwnTcbWatch`), read at scrape time. Absent
    while not judged (and without the option, or without SEV-SNP evidence of its own)."""

    def __init__(self, watch: OwnTcbWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily]:
        below = self.watch.below
        if below is not None:
            yield GaugeMetricFamily(
                "confide_cas_own_tcb_below_replica_min_tcb",
                "1 while the CAS's own SEV-SNP REPORTED_TCB is below --replica-min-tcb for its product"
                " (or its product has none), 0 while it reaches it",
                value=1 if below else 0,
            )


class _WitnessCollector:
    """What the witnesses said (``--witness-quorum``, confide.cas.witness_quorum), read at
    scrape time."""

    def __init__(self, guard: WitnessGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        guard = self.guard
        yield GaugeMetricFamily(
            "confide_cas_witness_quorum", "Witnesses that must cosign a checkpoint", value=guard.config.quorum
        )
        yield GaugeMetricFamily(
            "confide_cas_witness_halted",
            "1 once a witness said the database was rolled back or forked (releases stop until restart)",
            value=0 if guard.halted is None else 1,
        )
        refused = guard.refusal()
        yield GaugeMetricFamily(
            "confide_cas_witness_refusing",
            "1 while releases and changes are refused (halted, or --witness-max-lag passed)",
            value=0 if refused is None else 1,
        )
        yield GaugeMetricFamily(
            "confide_cas_witness_quorum_size",
            "Size of the newest checkpoint cosigned by a quorum (-1: none)",
            value=guard.quorum_size,
        )
        age = guard.age()
        yield GaugeMetricFamily(
            "confide_cas_witness_quorum_age_seconds",
            "Seconds since the newest checkpoint cosigned by a quorum (NaN: none)",
            value=math.nan if age is None else age,
        )
        if guard.quorum_wall is not None:
            yield GaugeMetricFamily(
                "confide_cas_witness_quorum_timestamp_seconds",
                "When the newest checkpoint cosigned by a quorum was (Unix time)",
                value=guard.quorum_wall,
            )
        cosigned = CounterMetricFamily(
            "confide_cas_witness_cosignatures", "Cosignatures got, per witness", labels=["witness"]
        )
        failed = CounterMetricFamily(
            "confide_cas_witness_failures",
            "Witness requests that failed (unreachable, another answer), per witness",
            labels=["witness"],
        )
        for name, cosignatures, failures in guard.witnesses:
            cosigned.add_metric([name], cosignatures)
            failed.add_metric([name], failures)
        yield cosigned
        yield failed


class _CasApp(FastAPI):
    """FastAPI, with the attestation endpoints' fast path entered before the middleware stack
    (server-error and telemetry layers included): it has its own metrics, log line and error
    responses, and hands anything it declines to the full stack."""

    observe: Any = None
    fast_paths: frozenset[str] = frozenset()
    metrics_registry: CollectorRegistry | None = None
    render_metrics: Any = None
    body_budget: BodyBudget | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.fast_paths:
            await self.observe(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


class _Observe:
    def __init__(self, app: Any, observe: Any) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.observe(scope, receive, send, self.app)
