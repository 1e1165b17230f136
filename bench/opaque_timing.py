"""How long the CAS takes to refuse an attestation, by cause: what ``cas serve --opaque-refusals``
does not hide (docs/cas.md "Opaque refusals"). An in-process CAS (SQLite, the simulated TEE, the
attestation benchmarks' policy), the same genuine simulated evidence for every cause but the
measurement and debug ones; per cause, phase 1 (``Cas.attest_begin``: verify, bind, appraise,
render) and the whole attestation (``Cas.attest``: phase 1, then phase 2 in a write transaction
of its own that spends the nonce and records the outcome in the ledger). The causes are timed in
interleaved rounds (each round one request of each, in a rotating order), so all see the same
machine load; each reports its median and 10th percentile, and the ratio of its median to the
accepted attestation's (the peer measured in the same run). Request building (runtime key,
evidence) is outside the timed calls.

    PYTHONPATH=src .venv/bin/python bench/opaque_timing.py [--rounds 300] [--json]

With ``--served``, the same causes over real HTTPS instead, against two ``cas serve --dev
--opaque-refusals`` processes running at once (SQLite, the group commit's durable write; no rate
limits): one with ``--refusal-delay 0`` (answered when ready), one with ``--refusal-delay D``
(``--delay``, default the CAS's default). Each round sends one request of each cause to each
CAS, in a rotating order, so both see the same machine load. Each sample is one ``POST
/v1/attest`` on a kept-alive connection, timed by the client from the request's start to the
whole answer (the nonce is fetched and the evidence built before). Per cause and CAS: median,
p10, p90, p99, max, the ratio of its median to the accepted attestation's (the peer, measured
in the same run), and the refusals' spread (the largest refusal median over the smallest);
``confide_opaque_refusals_total`` from each CAS's ``/metrics`` says how many refusals missed
the deadline. ``--background R``: meanwhile ``--loaders K`` processes per CAS send it R
accepted attestations a second in all (open loop; the rate achieved is printed: a loader that
cannot keep up falls behind), a CAS under load.

    PYTHONPATH=src .venv/bin/python bench/opaque_timing.py --served [--rounds 200] [--delay 0.05]
        [--background 0 [--loaders 1]]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import multiprocessing
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from _served_cas import ROOT, start_cas
from _sim_request import MEASUREMENT, POLICY, sim_attest_request

from confide.cas.client import policy_submission
from confide.cas.core import OPAQUE_ATTEST_REFUSAL, binding_report_data
from confide.cas.refusal_delay import DEFAULT_REFUSAL_DELAY
from confide.cas.server import prepare
from confide.identity import Identity
from confide.policy.loader import loads_policy
from confide.sim.platform import SimPlatform


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--served", action="store_true", help="over HTTPS against cas serve (above)")
    parser.add_argument("--delay", type=float, default=DEFAULT_REFUSAL_DELAY, help="--refusal-delay")
    parser.add_argument("--background", type=float, default=0.0, help="accepted attestations/s meanwhile")
    parser.add_argument("--loaders", type=int, default=1, help="processes sending the background load")
    args = parser.parse_args()
    if args.served:
        served(args)
        return
    # the refusals' log lines (one per refusal, WARNING) are not what is measured: dropped here
    logging.getLogger("confide.cas").addHandler(logging.NullHandler())
    logging.getLogger("confide.cas").propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        cas, _evidence, _key, _cert, env, _signer = prepare(
            Path(tmp) / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
        )
        cas.opaque_refusals = True
        cas.apply(policy_submission(loads_policy(POLICY), Identity.generate(), cas=cas.tls_spki_sha256))
        platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))

        causes = _causes(platform, cas.new_nonce)
        names = list(causes)
        phase1: dict[str, list[float]] = {n: [] for n in names}
        whole: dict[str, list[float]] = {n: [] for n in names}
        cas.attest(causes["accepted"]())  # warm: the snapshot of an accepted service is kept
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                body = causes[name]()
                start = time.perf_counter()
                cas.attest_begin(body)
                phase1[name].append(time.perf_counter() - start)
                body = causes[name]()
                start = time.perf_counter()
                try:
                    cas.attest(body)
                except Exception as exc:  # every refusal is the one AppraisalError
                    assert type(exc).__name__ == "AppraisalError", exc
                    assert name != "accepted"
                whole[name].append(time.perf_counter() - start)
        cas.db.dispose()

    def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        base = statistics.median(samples["accepted"])
        out = {}
        for name, unsorted in samples.items():
            xs = sorted(unsorted)
            median = statistics.median(xs)
            out[name] = {
                "median_us": median * 1e6,
                "p10_us": xs[len(xs) // 10] * 1e6,
                "median_over_accepted": median / base,
            }
        return out

    result = {"rounds": args.rounds, "phase1": summary(phase1), "attest": summary(whole)}
    if args.json:
        print(json.dumps(result))
        return
    for what in ("phase1", "attest"):
        print(f"{what} (Cas.{'attest_begin' if what == 'phase1' else 'attest'}), {args.rounds} each:")
        for name, row in result[what].items():  # type: ignore[union-attr]
            print(f"  {name:20s} median {row['median_us']:8.0f} us  p10 {row['p10_us']:8.0f} us  "
                  f"{row['median_over_accepted']:.2f}x accepted")  # fmt: skip


def _causes(platform: SimPlatform, nonce: Callable[[], str]) -> dict[str, Callable[[], dict[str, Any]]]:
    """The request of each cause, for a fresh nonce (over HTTP: fetched from the CAS)."""

    def plain(policy: str, service: str, measurement: str = MEASUREMENT) -> Callable[[], dict[str, Any]]:
        return lambda: sim_attest_request(
            platform, nonce(), policy=policy, service=service, measurement=measurement
        )[1]

    def debug() -> dict[str, Any]:
        _, body = sim_attest_request(
            platform, nonce(), policy="bench", service="app", measurement=MEASUREMENT
        )
        der = base64.b64decode(body["public_key"])
        body["evidence"] = base64.b64encode(
            platform.issue(
                report_data=binding_report_data(der, bytes.fromhex(body["nonce"])),
                measurement=bytes.fromhex(MEASUREMENT), timestamp=int(time.time()), debug=True,
            ).to_bytes()
        ).decode()  # fmt: skip
        return body

    return {
        "accepted": plain("bench", "app"),
        "unknown_policy": plain("nope", "app"),
        "unknown_service": plain("bench", "other"),
        "wrong_measurement": plain("bench", "app", "cd" * 48),
        "debug_not_tolerated": debug,
    }


def _client(env: dict[str, str]) -> httpx2.Client:
    return httpx2.Client(
        base_url=env["CONFIDE_CAS_URL"],
        verify=ssl.create_default_context(cafile=env["CONFIDE_CAS_CERT"]),
        timeout=60,
    )


def _background(env: dict[str, str], rate: float, stop: Any, done: Any) -> None:
    """Accepted attestations at ``rate`` a second (open loop: each at its scheduled time, or at
    once when late), until ``stop`` is set; ``done`` counts them."""
    platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
    with _client(env) as http:
        accepted = _causes(platform, lambda: str(http.post("/v1/attest/nonce").json()["nonce"]))["accepted"]
        due = time.monotonic()
        while not stop.is_set():
            response = http.post("/v1/attest", json=accepted())
            assert response.status_code == 200, response.text
            with done.get_lock():
                done.value += 1
            due += 1.0 / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def _deadlines(metrics: str, deadline: str) -> float:
    """``confide_opaque_refusals_total{route="/v1/attest", deadline=...}`` in a scrape."""
    pattern = rf'^confide_opaque_refusals_total\{{deadline="{deadline}",route="/v1/attest"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class _Served:
    """One ``cas serve --dev --opaque-refusals --refusal-delay DELAY`` with the bench policy, a
    kept-alive client and the request of each cause."""

    def __init__(self, work: Path, delay: float) -> None:
        self.delay = delay
        work.mkdir()
        (work / "p.yaml").write_text(POLICY)
        self.proc, self.env = start_cas(
            work,
            "--opaque-refusals",
            "--refusal-delay",
            str(delay),
            "--attest-rate",
            "0",
            "--write-rate",
            "0",
        )
        try:
            run_env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT / "src")}
            identity = work / "alice.id"
            for command in (["identity", "create", "--out", str(identity)],
                            ["policy", "apply", str(work / "p.yaml"), "--identity", str(identity)]):  # fmt: skip
                subprocess.run([sys.executable, "-m", "confide", *command], env=run_env, check=True,
                               capture_output=True)  # fmt: skip
            self.http = _client(self.env)
            platform = SimPlatform.load(Path(self.env["CONFIDE_SIM_DIR"]))
            self.causes = _causes(platform, lambda: str(self.http.post("/v1/attest/nonce").json()["nonce"]))
            self.samples: dict[str, list[float]] = {n: [] for n in self.causes}
            for body in self.causes.values():  # warm: the connection, the accepted service's snapshot
                self.http.post("/v1/attest", json=body())
        except BaseException:
            self.proc.terminate()
            raise

    def sample(self, name: str) -> None:
        body = self.causes[name]()
        start = time.perf_counter()
        response = self.http.post("/v1/attest", json=body)
        self.samples[name].append(time.perf_counter() - start)
        if name == "accepted":
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 403, response.text
            assert response.json()["error"]["message"] == OPAQUE_ATTEST_REFUSAL

    def deadlines(self) -> dict[str, float]:
        metrics = self.http.get("/metrics").text
        return {deadline: _deadlines(metrics, deadline) for deadline in ("met", "missed")}

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def served(args: argparse.Namespace) -> None:
    """Both CAS at once (``--refusal-delay 0`` and ``--delay``), their samples interleaved: each
    round one request of each cause to each, in a rotating order, so both see the same load."""
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[_Served] = []
        loaders: list[multiprocessing.Process] = []
        stop = multiprocessing.Event()
        done = [multiprocessing.Value("l", 0) for _ in range(2)]
        try:
            for k, delay in enumerate((0.0, args.delay)):
                cases.append(_Served(Path(tmp) / f"cas{k}", delay))
            if args.background > 0:
                for k, case in enumerate(cases):
                    for _ in range(args.loaders):
                        loader = multiprocessing.Process(
                            target=_background, args=(case.env, args.background / args.loaders, stop, done[k])
                        )
                        loader.start()
                        loaders.append(loader)
                time.sleep(1.0)
            counted = [d.value for d in done]
            began = time.monotonic()
            names = list(cases[0].causes)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    for case in cases if r % 2 == 0 else cases[::-1]:
                        case.sample(name)
            took = time.monotonic() - began
            achieved = [(d.value - c) / took for d, c in zip(done, counted, strict=True)]
            deadlines = [case.deadlines() for case in cases]
        finally:
            stop.set()
            for loader in loaders:
                loader.join(timeout=30)
            for case in cases:
                case.stop()
    out: list[dict[str, Any]] = []
    for case, counts, rate in zip(cases, deadlines, achieved, strict=True):
        base = statistics.median(case.samples["accepted"])
        rows = {}
        for name, unsorted in case.samples.items():
            xs = sorted(unsorted)
            rows[name] = {
                "median_ms": statistics.median(xs) * 1e3,
                "p10_ms": xs[len(xs) // 10] * 1e3,
                "p90_ms": xs[len(xs) * 9 // 10] * 1e3,
                "p99_ms": xs[min(len(xs) - 1, len(xs) * 99 // 100)] * 1e3,
                "max_ms": xs[-1] * 1e3,
                "median_over_accepted": statistics.median(xs) / base,
            }
        refusal_medians = [row["median_ms"] for name, row in rows.items() if name != "accepted"]
        out.append({"refusal_delay": case.delay, "causes": rows, "deadlines": counts,
                    "background_achieved_per_second": rate,
                    "refusal_spread": max(refusal_medians) / min(refusal_medians)})  # fmt: skip
    result = {"rounds": args.rounds, "background_per_second": args.background, "runs": out}
    if args.json:
        print(json.dumps(result))
        return
    for run in out:
        print(f"--refusal-delay {run['refusal_delay']:g} s, POST /v1/attest over HTTPS, {args.rounds} each"
              f" (background: {run['background_achieved_per_second']:.0f} accepted/s achieved of"
              f" {args.background:g} asked):")  # fmt: skip
        for name, row in run["causes"].items():
            print(f"  {name:20s} median {row['median_ms']:7.2f} ms  p10 {row['p10_ms']:7.2f}  p90 "
                  f"{row['p90_ms']:7.2f}  p99 {row['p99_ms']:7.2f}  max {row['max_ms']:7.2f} ms  "
                  f"{row['median_over_accepted']:6.2f}x accepted")  # fmt: skip
        print(
            f"  refusals' medians, largest over smallest: {run['refusal_spread']:.3f}x;"
            f" deadlines met {run['deadlines']['met']:g}, missed {run['deadlines']['missed']:g}"
        )


if __name__ == "__main__":
    main()
