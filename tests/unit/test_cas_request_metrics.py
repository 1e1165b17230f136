"""The request and attestation metrics of the CAS API (``confide.cas.app._Counts`` and
``_Latency``): counted without prometheus_client's locks, exposed exactly as its ``Counter`` and
``Histogram`` expose the same counts (the same text in ``/metrics``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics

from confide.cas.app import LATENCY_BOUNDS, _count_request, _Counts, _Latency

# Around every bucket bound: below, on, just above; and past the last finite one.
SECONDS = [0.0, 1e-6, *(b + d for b in LATENCY_BOUNDS[:-1] for d in (-1e-9, 0.0, 1e-9)), 12.5, 1e6]


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def created(request: pytest.FixtureRequest) -> Iterator[bool]:
    if not request.param:
        prometheus_metrics.disable_created_metrics()
    yield request.param
    prometheus_metrics.enable_created_metrics()


def test_the_exposition_is_prometheus_clients(monkeypatch: pytest.MonkeyPatch, created: bool) -> None:
    del created
    # each time twice: a child of theirs, then the same child of ours (made in lockstep below)
    clock = iter(t // 2 for t in range(2_000_000, 4_000_000))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    requests = Counter("confide_requests_total", "HTTP requests", ["route", "status"], registry=theirs)
    verdicts = Counter("confide_attestations_total", "Attestation outcomes", ["verdict"], registry=theirs)
    latency = Histogram("confide_request_seconds", "Request latency", ["route"], registry=theirs)
    our_requests = _Counts("confide_requests", "HTTP requests", ("route", "status"))
    our_verdicts = _Counts("confide_attestations", "Attestation outcomes", ("verdict",))
    our_latency = _Latency("confide_request_seconds", "Request latency", "route")
    for collector in (our_requests, our_verdicts, our_latency):
        ours.register(collector)
    accepted, our_accepted = verdicts.labels("accepted"), our_verdicts.child("accepted")
    refused, our_refused = verdicts.labels("refused"), our_verdicts.child("refused")
    assert generate_latest(theirs) == generate_latest(ours)  # nothing counted yet
    for i, seconds in enumerate(SECONDS):
        route, status = ("/v1/attest", "200") if i % 3 else ("/v1/attest/nonce", "429")
        requests.labels(route, status).inc()
        child = our_requests.child(route, status)
        latency.labels(route).observe(seconds)
        _count_request((child, our_latency.child(route)), seconds)
        if i % 4:
            accepted.inc()
            our_accepted[0] += 1.0
        else:
            refused.inc()
            our_refused[0] += 1.0
    text = generate_latest(ours)
    assert text == generate_latest(theirs)
    assert b'confide_request_seconds_bucket{le="0.005",route="/v1/attest"}' in text
