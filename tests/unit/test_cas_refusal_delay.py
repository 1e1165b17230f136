"""``cas serve --opaque-refusals --refusal-delay SECONDS`` (docs/cas.md "Opaque refusals"): each
opaque refusal (of an attestation, of a volume tag report) is answered no earlier than the delay
after its request's body was read, waiting on the event loop; acceptances, malformed requests
and a CAS without ``--opaque-refusals`` are answered at once; a refusal decided after its
deadline is answered at once and counted as missed.

No assertion here bounds a duration from above: the delays are checked as lower bounds on the
loop's own clock (a 0.2 s delay answered no earlier than 0.2 s after the request was sent), and
what was not delayed by the waits recorded (none) and the counters. Whether a deadline is met
depends on how long deciding took, so where that is asserted the clock is injected (a machine
too loaded to decide within the delay would otherwise turn "met" into "missed"); where the
loop's own clock is used, met and missed are counted together."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cas_opaque_refusals import CASES
from test_cas_volume_update_policy import TAG0, TAG1, owner_policy

from asgi_call import call_async
from cas_inproc import InProcessCas, last_attestation
from cli import run_confide
from confide import errors
from confide.cas.app import create_app
from confide.cas.core import OPAQUE_ATTEST_REFUSAL, OPAQUE_TAG_REFUSAL, decrypt_release
from confide.cas.refusal_delay import DEFAULT_REFUSAL_DELAY, RefusalDelay, check_refusal_delay

DELAY = 0.2


class Recorded:
    """A :class:`RefusalDelay` whose waits are recorded (and really slept, on the loop)."""

    def __init__(self, seconds: float = DELAY, clock: Callable[[], float] | None = None) -> None:
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.sleep(seconds)

        self.delay = RefusalDelay(seconds, clock=clock, sleep=sleep)


def _timed(app: Any, path: str, body: dict[str, Any]) -> tuple[int, bytes, float]:
    """One request through ``app``: its status, body, and the loop's clock from before the
    request was handed to the app until its answer (an upper bound of the time from the body's
    arrival to the answer)."""

    async def run() -> tuple[int, bytes, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        status, answer = await call_async(app, path, [json.dumps(body).encode()])
        return status, answer, loop.time() - start

    return asyncio.run(run())


def _metric(app: Any, route: str, deadline: str) -> float:
    status, text = asyncio.run(call_async(app, "/metrics", [b""], method="GET"))
    assert status == 200
    found = re.search(
        rf'^confide_opaque_refusals_total\{{deadline="{deadline}",route="{re.escape(route)}"\}} (\S+)$',
        text.decode(),
        re.MULTILINE,
    )
    assert found is not None, text.decode()
    return float(found.group(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_attestation_refusal_waits_for_the_delay(tmp_path: Path, case: str) -> None:
    """Every kind of recorded refusal (before the evidence verified, at the appraisal, in phase
    2): the same opaque bytes, no earlier than the delay (really slept on the loop), one wait of
    what is left of the delay, counted met. The clock is held still (deciding takes no time on
    it), so the wait is the whole delay whatever the machine's load."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    recorded = Recorded(clock=lambda: 100.0)
    app = create_app(ipc.cas, refusal_delay=recorded.delay)
    status, body, took = _timed(app, "/v1/attest", CASES[case][0](ipc))
    assert (status, json.loads(body)) == (
        403,
        {"error": {"class": "AppraisalError", "message": OPAQUE_ATTEST_REFUSAL, "exit_code": 31}},
    )
    assert took >= DELAY
    assert recorded.sleeps == [pytest.approx(DELAY)]
    assert _metric(app, "/v1/attest", "met") == 1.0
    assert _metric(app, "/v1/attest", "missed") == 0.0
    # The ledger entry is recorded as without the delay, with its reason.
    event = last_attestation(ipc.cas)
    assert event["verdict"] == "refused" and event["reason_class"] == CASES[case][1].__name__


def test_acceptances_and_malformed_requests_are_not_delayed(tmp_path: Path) -> None:
    """An acceptance shows itself anyway (the release); a malformed request's 400 depends on
    the request alone (nothing is looked up or recorded): neither waits."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    recorded = Recorded()
    app = create_app(ipc.cas, refusal_delay=recorded.delay)
    request, key = ipc.request()
    status, body, _ = _timed(app, "/v1/attest", request)
    assert status == 200
    assert "session" in decrypt_release(key, json.loads(body), bytes.fromhex(request["nonce"]))
    malformed, _ = ipc.request()
    del malformed["nonce"]
    status, body, _ = _timed(app, "/v1/attest", malformed)
    assert status == 400 and json.loads(body)["error"]["class"] == "ParseError"
    assert recorded.sleeps == [] and recorded.delay.counts == {}
    assert _metric(app, "/v1/attest", "met") == _metric(app, "/v1/attest", "missed") == 0.0


def test_without_opaque_refusals_nothing_waits(tmp_path: Path) -> None:
    """A refusal that says why is not one the delay is for (and ``cas serve`` refuses
    ``--refusal-delay`` without ``--opaque-refusals``, below)."""
    ipc = InProcessCas.start(tmp_path / "cas")
    recorded = Recorded()
    app = create_app(ipc.cas, refusal_delay=recorded.delay)
    status, body, _ = _timed(app, "/v1/attest", ipc.request(policy="nope")[0])
    assert status == 403 and json.loads(body)["error"]["message"] == "no policy nope"
    assert recorded.sleeps == []


def test_a_refusal_decided_after_its_deadline_is_answered_at_once_and_counted(tmp_path: Path) -> None:
    """An injected clock: the request arrives at 100.0, its refusal is decided at 100.5, past
    the 0.2 s deadline: no wait, counted missed."""
    ipc = InProcessCas.start(tmp_path / "cas")
    ipc.cas.opaque_refusals = True
    times = itertools.chain([100.0, 100.5], itertools.repeat(200.0))  # then /metrics
    recorded = Recorded(clock=lambda: next(times))
    app = create_app(ipc.cas, refusal_delay=recorded.delay)
    status, body, _ = _timed(app, "/v1/attest", ipc.request(policy="nope")[0])
    assert status == 403 and json.loads(body)["error"]["message"] == OPAQUE_ATTEST_REFUSAL
    assert recorded.sleeps == []
    assert _metric(app, "/v1/attest", "missed") == 1.0
    assert _metric(app, "/v1/attest", "met") == 0.0


def test_the_wait_is_until_the_arrival_plus_the_delay() -> None:
    """On an injected clock: what is left of the delay, from the arrival, is slept."""
    now = [10.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    delay = RefusalDelay(0.05, clock=lambda: now[0], sleep=sleep)
    arrived = delay.now()
    now[0] += 0.01  # deciding took 10 ms
    asyncio.run(delay.wait(arrived, "/v1/volumes/tag"))
    assert slept == [pytest.approx(0.04)] and now[0] == pytest.approx(10.05)
    asyncio.run(delay.wait(arrived, "/v1/volumes/tag"))  # its deadline has passed now
    assert len(slept) == 1
    assert delay.counts == {("/v1/volumes/tag", "met"): 1, ("/v1/volumes/tag", "missed"): 1}


def test_volume_tag_access_refusals_wait_and_conflicts_do_not(tmp_path: Path) -> None:
    """Through the full stack (the route runs in a worker thread; the wait is on the loop): each
    access refusal of a tag report no earlier than the delay; a conflict on the tag (which says
    so) and an accepted report at once."""
    ipc = InProcessCas.start(tmp_path / "cas", "")
    ipc.apply(owner_policy())
    body, key = ipc.request(policy="hospital", service="writer")
    session = str(decrypt_release(key, ipc.cas.attest(body), bytes.fromhex(body["nonce"]))["session"])
    ipc.cas.opaque_refusals = True
    recorded = Recorded()
    app = create_app(ipc.cas, refusal_delay=recorded.delay)

    def tag(policy: str, volume: str, token: str, old: str, new: str) -> tuple[int, dict[str, Any], float]:
        request = {"policy": policy, "volume": volume, "session": token, "old_tag": old, "new_tag": new}
        status, answer, took = _timed(app, "/v1/volumes/tag", request)
        return status, json.loads(answer), took

    def waited() -> float:
        return _metric(app, "/v1/volumes/tag", "met") + _metric(app, "/v1/volumes/tag", "missed")

    refused = {"error": {"class": "AccessDeniedError", "message": OPAQUE_TAG_REFUSAL, "exit_code": 33}}
    for policy, volume, token in [
        ("hospital", "records", "ab" * 32),  # no attested session presented that token
        ("app", "records", session),  # another policy's
        ("hospital", "elsewhere", session),  # a volume the service does not mount
    ]:
        status, answer, took = tag(policy, volume, token, TAG0, TAG1)
        assert (status, answer) == (403, refused)
        assert took >= DELAY  # on the loop's clock, from before the request was sent
    # each counted once, met (or, on a machine too loaded to decide within 0.2 s, missed)
    assert waited() == 3.0
    status, answer, _ = tag("hospital", "records", session, TAG1, TAG1)
    assert status == 409 and answer["error"]["class"] == "ConflictError"
    status, answer, _ = tag("hospital", "records", session, TAG0, TAG1)
    assert status == 200 and answer["generation"] == 1
    assert waited() == 3.0  # neither the conflict nor the accepted report waited


def test_the_arrival_is_the_running_loops_clock() -> None:
    """Without an injected clock, the arrival and the deadline are the event loop's monotonic
    clock, the one its timers (asyncio.sleep) run on."""
    delay = RefusalDelay(DELAY)

    async def read() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        return loop.time(), delay.now(), loop.time()

    before, now, after = asyncio.run(read())
    assert before <= now <= after


def test_the_delay_takes_0_to_10_seconds() -> None:
    assert check_refusal_delay(0.0) == 0.0 and check_refusal_delay(10.0) == 10.0
    assert 0 < DEFAULT_REFUSAL_DELAY <= 10.0
    for bad in (-0.001, 10.5, float("nan"), float("inf")):
        with pytest.raises(errors.UsageError, match="--refusal-delay must be from 0 to 10 seconds"):
            check_refusal_delay(bad)


def test_cli_refuses_a_refusal_delay_without_opaque_refusals_or_out_of_range(tmp_path: Path) -> None:
    serve = ("cas", "serve", "--data-dir", str(tmp_path / "cas"), "--listen", "127.0.0.1:0", "--dev")
    r = run_confide(*serve, "--refusal-delay", "0.05")
    assert r.returncode == errors.UsageError.exit_code
    assert "--refusal-delay needs --opaque-refusals" in r.stderr
    r = run_confide(*serve, "--opaque-refusals", "--refusal-delay", "11")
    assert r.returncode == errors.UsageError.exit_code
    assert "--refusal-delay must be from 0 to 10 seconds, got 11.0" in r.stderr
    r = run_confide(*serve, "--opaque-refusals", "--refusal-delay", "soon")
    assert r.returncode == 2 and "'soon' is not a valid float" in r.stderr
    assert not (tmp_path / "cas").exists()  # refused before anything was created


def test_the_cli_help_gives_the_modules_default() -> None:
    from confide.cas.cli import cas_serve

    (option,) = [p for p in cas_serve.params if p.name == "refusal_delay"]
    assert f"default {DEFAULT_REFUSAL_DELAY:g}." in str(getattr(option, "help", ""))
