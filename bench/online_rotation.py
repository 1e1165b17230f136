"""Benchmark: attestations of a served CAS (SQLite) while it rotates its master key online,
next to the same load while it does not (docs/cas.md "Online rotation").

The CAS runs as its own process (``cas serve --dev``) with ``--secrets`` stored secrets (in
policies of 400, the attested one among them); ``--clients`` closed-loop threads attest against it (fresh TLS connection, nonce,
simulated evidence, attestation, decryption of the release) for the whole run. Windows
alternate: ``--window`` seconds idle, then one online rotation (``--batch-size`` rows per
transaction, ``--pause-ms`` between batches) timed from the request until the CAS reports it
done; ``--rounds`` of each. Reported: attestations per second in the idle windows and during
the rotations (their ratio is the rotation's cost to the load), the slowest attestation of each,
and the rotation's rows per second under that load.

    .venv/bin/python bench/online_rotation.py [--secrets 2000] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _served_cas import start_cas  # noqa: E402
from _sim_request import sim_attest_request  # noqa: E402

from confide.cas import admin  # noqa: E402
from confide.cas.client import CasClient  # noqa: E402
from confide.cas.core import decrypt_release  # noqa: E402
from confide.identity import Identity  # noqa: E402
from confide.policy import loads_policy  # noqa: E402
from confide.sim.platform import SimPlatform  # noqa: E402

MEASUREMENT = "ab" * 48


PER_POLICY = 400  # a policy's ledger entry is at most 64 KiB


def policy(name: str, n: int) -> str:
    secrets = "".join(f"  - name: s{i}\n    kind: ascii\n" for i in range(n))
    return f"""name: {name}
version: "0.3"
services:
  - name: app
    environment:
      S: "$$SCONE::s0$$"
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
secrets:
{secrets}security:
  attestation:
    tolerate: [simulation]
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secrets", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--pause-ms", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proc, env = start_cas(work)
        try:
            run(work, env, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run(work: Path, env: dict[str, str], args: argparse.Namespace) -> None:
    url, cert = env["CONFIDE_CAS_URL"], Path(env["CONFIDE_CAS_CERT"])
    platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
    with CasClient(url, cert, timeout=120) as c:
        owner = Identity.generate()
        for i in range(0, args.secrets, PER_POLICY):
            name = "bench" if i == 0 else f"bench{i // PER_POLICY}"
            c.apply(loads_policy(policy(name, min(PER_POLICY, args.secrets - i))), owner)
    done: list[tuple[float, float]] = []  # (end time, latency)
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with CasClient(url, cert, timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    key, body = sim_attest_request(
                        platform, c.nonce(), policy="bench", service="app", measurement=MEASUREMENT
                    )
                    response = c.attest(body)
                    assert decrypt_release(key, response, bytes.fromhex(body["nonce"]))["environment"]["S"]
                except Exception as exc:  # counted: the run fails below
                    errors.append(exc)
                    return
                done.append((time.perf_counter(), time.perf_counter() - t0))

    threads = [threading.Thread(target=load) for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # warm-up
    idle: list[tuple[float, float]] = []
    rotating: list[tuple[float, float]] = []
    rows_per_s: list[float] = []
    data_dir = work / "cas"
    try:
        for _ in range(args.rounds):
            start = time.perf_counter()
            time.sleep(args.window)
            idle.append((start, time.perf_counter()))
            start = time.perf_counter()
            admin.request(data_dir, {"op": "rotate-master-key", "batch_size": args.batch_size,
                                     "pause_ms": args.pause_ms})  # fmt: skip
            while (status := admin.request(data_dir, {"op": "rotation-status"})["status"])[
                "state"
            ] == "running":
                time.sleep(0.02)
            end = time.perf_counter()
            if status["state"] != "done":
                raise SystemExit(f"rotation failed: {status['error']}")
            rotating.append((start, end))
            rows_per_s.append(status["resealed"] / (end - start))
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise SystemExit(f"{len(errors)} attestations failed: {errors[0]!r}")

    def rate(windows: list[tuple[float, float]]) -> tuple[float, float, int]:
        inside = [lat for end, lat in done for a, b in windows if a <= end < b]
        seconds = sum(b - a for a, b in windows)
        return len(inside) / seconds, max(inside, default=0.0), len(inside)

    idle_rate, idle_max, idle_n = rate(idle)
    rot_rate, rot_max, rot_n = rate(rotating)
    rot_seconds = [b - a for a, b in rotating]
    print(f"secrets: {args.secrets}, clients: {args.clients}, rounds: {args.rounds}, "
          f"batch: {args.batch_size} rows, pause {args.pause_ms} ms")  # fmt: skip
    print(f"idle:     {idle_rate:7.1f} attestations/s ({idle_n} in {sum(b - a for a, b in idle):.1f} s), "
          f"slowest {idle_max * 1000:.0f} ms")  # fmt: skip
    print(f"rotating: {rot_rate:7.1f} attestations/s ({rot_n} in {sum(rot_seconds):.1f} s), "
          f"slowest {rot_max * 1000:.0f} ms")  # fmt: skip
    print(f"ratio rotating/idle: {rot_rate / idle_rate:.2f}")
    print(f"rotation: median {statistics.median(rot_seconds):.2f} s, "
          f"{statistics.median(rows_per_s):.0f} rows/s under load")  # fmt: skip


if __name__ == "__main__":
    main()
