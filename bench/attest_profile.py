"""Where an attestation flow's CPU goes in the CAS process, without TLS or sockets.

Not a benchmark with a peer (``bench/attest_load.py`` is that): an in-process harness that
drives the CAS's ASGI app (``create_app``, its fast path, the group-commit writer, SQLite WAL
with ``synchronous=FULL``, the ledger sink: what ``confide cas serve --dev`` runs) through
full flows like the load benchmark's (nonce, simulated evidence bound to a fresh P-256 key,
attestation), and accounts for the CPU of each side:

- the event-loop thread per nonce request and per attestation request (``time.thread_time``),
- the group-commit writer thread per attestation (its thread CPU clock),

with the client's work (key generation, evidence, decryption of the release) done outside the
measured phases. ``--cprofile FILE`` profiles the event-loop thread's attestation phase (and
``--cprofile-writer FILE`` the writer thread); ``--top N`` prints the N most expensive
functions by their own time. Run ``py-spy``/``perf`` on it with ``--repeat`` for longer runs.
``--core N`` pins the process as ``attest_load.py`` pins the CAS; ``--log`` writes the request
log lines as ``cas serve`` does; ``--inline`` (an experiment) commits on the event loop.
``--callgrind`` (under valgrind: ``bench/attest_instructions.py`` runs it) dumps callgrind's
counts of each measured part of each thread; ``--commit-interval`` sets the group commit's pacing
and ``--warmup`` the flows before the measured rounds.

``--phases B`` instead runs the flows in one thread, without the ASGI app: phase 1
(``attest_begin``), phase 2 in write transactions of B attestations, the release; and prints
the CPU per flow of each part and of the functions inside (``time.thread_time`` around each
call, so ~1 µs per timed call is the timer's own).

    PYTHONPATH=src .venv/bin/python bench/attest_profile.py [-n 2000] [--concurrency 64]
    PYTHONPATH=src .venv/bin/python bench/attest_profile.py --core 0 --log
    PYTHONPATH=src .venv/bin/python bench/attest_profile.py --core 0 --phases 8
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _callgrind import Callgrind  # noqa: E402
from _sim_request import MEASUREMENT, POLICY, sim_attest_request  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from confide.cas import core, ledger_sink  # noqa: E402
from confide.cas.app import create_app  # noqa: E402
from confide.cas.client import policy_submission  # noqa: E402
from confide.cas.core import decrypt_release  # noqa: E402
from confide.cas.db import WriteBatcher  # noqa: E402
from confide.cas.server import _configure_logging as configure_logging  # noqa: E402
from confide.cas.server import prepare  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.ledger.store import Ledger  # noqa: E402
from confide.policy.loader import loads_policy  # noqa: E402
from confide.sim.platform import SimPlatform  # noqa: E402


async def call(app: Any, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One POST through the ASGI app, as uvicorn would deliver it (one body message)."""
    sent = False
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "https", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    await app(scope, receive, send)
    return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:])


class Writer:
    """The group-commit writer thread's CPU clock (found when it has started)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def cpu(self) -> float:
        if self.thread is None:
            self.thread = next((t for t in threading.enumerate() if t.name == "cas-group-commit"), None)
            if self.thread is None:
                return 0.0
        assert self.thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident))


class Marks:
    """Callgrind's counters zeroed and dumped on the event-loop thread and on the writer thread
    (a client request acts on the thread that makes it); the writer's by a job of its own, in an
    otherwise empty transaction."""

    def __init__(self, batcher: WriteBatcher) -> None:
        self.callgrind, self.batcher = Callgrind(), batcher

    async def zero(self) -> None:
        await self.batcher.submit_async(lambda _conn: self.callgrind.zero())
        self.callgrind.zero()

    async def dump(self, what: str) -> None:
        self.callgrind.dump(what)
        await self.batcher.submit_async(lambda _conn: self.callgrind.dump(what))


def client_requests(
    platform: SimPlatform, nonces: list[str]
) -> list[tuple[ec.EllipticCurvePrivateKey, str, bytes]]:
    """The client's side (not measured): a key, evidence bound to it and the nonce, the body."""
    out = []
    for nonce in nonces:
        key, request = sim_attest_request(
            platform, nonce, policy="bench", service="app", measurement=MEASUREMENT
        )
        body = json.dumps(request).encode()
        out.append((key, nonce, body))
    return out


async def run_flows(app: Any, platform: SimPlatform, n: int, concurrency: int, writer: Writer,
                    profile: cProfile.Profile | None, marks: Marks | None = None) -> dict[str, float]:  # fmt: skip
    sem = asyncio.Semaphore(concurrency)

    async def one_nonce() -> str:
        async with sem:
            status, body = await call(app, "/v1/attest/nonce")
            assert status == 200, body
            return str(json.loads(body)["nonce"])

    if marks is not None:
        await marks.zero()
    t0 = time.thread_time()
    nonces = await asyncio.gather(*(one_nonce() for _ in range(n)))
    nonce_cpu = time.thread_time() - t0
    if marks is not None:
        await marks.dump("nonce")
    requests = client_requests(platform, nonces)

    async def one_attest(body: bytes) -> bytes:
        async with sem:
            status, out = await call(app, "/v1/attest", body)
            assert status == 200, out
            return out

    if marks is not None:
        await marks.zero()
    w0, t0, wall0 = writer.cpu() if writer.thread else 0.0, time.thread_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    releases = await asyncio.gather(*(one_attest(body) for _, _, body in requests))
    if profile is not None:
        profile.disable()
    if marks is not None:
        await marks.dump("attest")
    attest_cpu, wall = time.thread_time() - t0, time.perf_counter() - wall0
    writer_cpu = writer.cpu() - w0
    for (key, nonce, _), release in zip(requests[:20], releases[:20], strict=True):
        config = decrypt_release(key, json.loads(release), bytes.fromhex(nonce))
        assert config["environment"]["KEY"]
    return {"nonce": nonce_cpu / n, "attest": attest_cpu / n, "writer": writer_cpu / n, "wall": wall / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000, help="flows per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds (after one warm-up)")
    parser.add_argument("--cprofile", help="write the event loop's attestation profile here")
    parser.add_argument("--cprofile-writer", help="write the writer thread's profile here")
    parser.add_argument("--log", action="store_true", help="log as `cas serve` does (to a temporary file)")
    parser.add_argument(
        "--core", type=int, help="pin the process to this core (as attest_load.py pins the CAS)"
    )
    parser.add_argument(
        "--inline", action="store_true", help="(experiment) commit on the event loop, no writer thread"
    )
    parser.add_argument("--warmup", type=int, help="flows of the warm-up round (default: min(n, 500))")
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=0.008,
        help="the group commit's pacing (WriteBatcher interval)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="(under valgrind, see bench/attest_instructions.py) dump the counts of each measured part",
    )
    parser.add_argument("--phases", type=int, help="one thread, B attestations per transaction, per part")
    parser.add_argument("--top", type=int, default=0, help="print the N top functions by own time")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    work = Path(tempfile.mkdtemp(prefix="confide-profile-"))
    if args.log:  # the request log lines `cas serve` writes to stderr, here to a file
        configure_logging()
        stream = (work / "cas.log").open("w")
        for handler in logging.getLogger().handlers:
            handler.setStream(stream)  # type: ignore[attr-defined]
    cas, cas_evidence, _key, _cert, env, _signer = prepare(
        work / "cas", host="127.0.0.1", dev=True, db_url=None, collateral=None
    )
    cas.apply(policy_submission(loads_policy(POLICY), Identity.generate(), cas=cas.tls_spki_sha256))
    platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
    if args.phases:
        for _ in range(args.repeat):
            phases(cas, platform, args.n, args.phases)
        shutil.rmtree(work)
        return
    init = WriteBatcher.__init__

    def remember(self: WriteBatcher, *a: Any, **kw: Any) -> None:
        init(self, *a, **{**kw, "interval": args.commit_interval})
        WriteBatcher.instances.append(self)  # type: ignore[attr-defined]

    WriteBatcher.instances = []  # type: ignore[attr-defined]
    WriteBatcher.__init__ = remember  # type: ignore[method-assign]
    app = create_app(cas, cas_evidence=cas_evidence)

    writer_profile = cProfile.Profile(time.thread_time) if args.cprofile_writer else None
    if writer_profile is not None:
        original = WriteBatcher._commit

        def profiled(self: WriteBatcher, batch: Any) -> None:
            writer_profile.enable()
            try:
                original(self, batch)
            finally:
                writer_profile.disable()

        WriteBatcher._commit = profiled  # type: ignore[method-assign]

    if args.inline:

        def inline(self: WriteBatcher, job: Any) -> Any:
            fut: Future[Any] = Future()
            with self.db.write() as conn:
                result = job(conn)
            self.commits += 1
            self.committed_jobs += 1
            fut.set_result(result)
            return fut

        WriteBatcher.submit = inline  # type: ignore[method-assign]
    writer = Writer()
    profile = cProfile.Profile(time.thread_time) if args.cprofile else None

    marks = Marks(WriteBatcher.instances[-1]) if args.callgrind else None  # type: ignore[attr-defined]

    async def main_async() -> list[dict[str, float]]:
        warmup = min(args.n, 500) if args.warmup is None else args.warmup
        if warmup:
            await run_flows(app, platform, warmup, args.concurrency, writer, None)
        return [
            await run_flows(app, platform, args.n, args.concurrency, writer, profile, marks)
            for _ in range(args.repeat)
        ]

    rounds = uvloop.run(main_async())
    print(f"{args.n} flows per round, concurrency {args.concurrency}, pid {os.getpid()}")
    print("round  nonce(loop)  attest(loop)  writer  sum   [ms CPU per flow]   wall/flow")
    for i, r in enumerate(rounds):
        total = r["nonce"] + r["attest"] + r["writer"]
        print(
            f"{i:5d}  {r['nonce'] * 1e3:11.3f}  {r['attest'] * 1e3:12.3f}  {r['writer'] * 1e3:6.3f}  "
            f"{total * 1e3:.3f}   {r['wall'] * 1e3:.3f}"
        )
    batcher = WriteBatcher.instances[-1]  # type: ignore[attr-defined]
    print(f"group commit: {batcher.committed_jobs / max(1, batcher.commits):.1f} jobs per transaction")
    for prof, path in ((profile, args.cprofile), (writer_profile, args.cprofile_writer)):
        if prof is not None and path:
            prof.dump_stats(path)
            if args.top:
                pstats.Stats(path).sort_stats("tottime").print_stats(args.top)
    shutil.rmtree(work)


def phases(cas: Any, platform: SimPlatform, n: int, batch: int) -> None:
    """Full flows in this thread, each part and the functions inside timed (thread CPU)."""
    spent: collections.Counter[str] = collections.Counter()

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def call(*a: Any, **kw: Any) -> Any:
            t0 = time.thread_time()
            try:
                return inner(*a, **kw)
            finally:
                spent[label] += time.thread_time() - t0

        setattr(owner, name, call)

    timed(cas, "attest_begin", "phase 1 (attest_begin)")
    timed(cas.verifier, "verify", "  evidence verification")
    timed(core, "appraise", "  appraisal")
    timed(core.serialization, "load_der_public_key", "  runtime key load")
    timed(core, "raw_execute", "  policy-head SELECT (first statement of the read transaction)")
    timed(cas, "_render", "  rendering")
    timed(cas, "_latest_secret", "    secret SELECTs")
    timed(cas, "_unseal", "    unsealing (cached)")
    timed(core.PendingAttestation, "commit", "phase 2 per attestation (PendingAttestation.commit)")
    timed(cas, "_use_once", "  nonce and evidence spent")
    timed(cas.events, "record_many", "  ledger entries and events rows")
    timed(ledger_sink, "encode_entry", "    encode_entry (checks, salt, canonical JSON)")
    timed(Ledger, "append_batch", "    ledger append (SQL, tiles)")
    timed(ledger_sink, "insert_events", "    events rows")
    timed(cas, "_encrypt", "release encryption (_encrypt)")
    requests = client_requests(platform, [cas.new_nonce() for _ in range(n)])
    pending: list[Any] = []
    for i, (_, _, body) in enumerate(requests):
        t0 = time.thread_time()
        request = json.loads(body)
        spent["request JSON"] += time.thread_time() - t0
        pending.append(cas.attest_begin(request))
        if len(pending) == batch or i == n - 1:
            t0 = time.thread_time()
            with cas.db.write() as conn:
                for p in pending:
                    p.commit(conn)
            spent["phase 2 transaction (all of it, commit and fsync included)"] += time.thread_time() - t0
            for p in pending:
                t0 = time.thread_time()
                out = json.dumps(p.result()).encode()
                spent["release (result, JSON)"] += time.thread_time() - t0
                assert out
            pending = []
    print(f"{n} flows, {batch} per transaction, µs of CPU per flow:")
    for label, seconds in spent.items():
        print(f"{seconds / n * 1e6:8.1f}  {label}")


if __name__ == "__main__":
    main()
