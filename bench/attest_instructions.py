"""Instructions per attestation flow in the CAS process, counted by callgrind: a repeatable
measure for A/B comparisons of the CAS's own code on a VM whose timings are noisy.

Runs ``bench/attest_profile.py --callgrind`` (the CAS's ASGI app in process: the fast path,
phase 1 on the event loop, the group-commit writer thread, SQLite WAL with
``synchronous=FULL``; no TLS, no sockets) under ``valgrind --tool=callgrind``, which counts the
instructions of the measured parts only (the nonce requests and the attestation requests of
each measured round, every thread of the process; not the warm-up, nor the client's key
generation, evidence and decryption). Prints the instructions per flow of the event-loop thread
(nonce, attestation) and of the writer thread, and their sum.

The group commit's pacing is wall-clock (8 ms in ``cas serve``); under valgrind, which runs
~50–100× slower, the harness uses ``--commit-interval`` (default 3 s) with ``--concurrency``
(default 8) concurrent flows, so each transaction holds about as many attestations as in the
served benchmark (7–8) and the batches do not depend on the timing. Instructions are not time:
a cache miss or a system call's time in the kernel is not counted, so this measures the
CPU work of the CAS's code (Python and the C libraries it calls), not the whole flow.

    .venv/bin/python bench/attest_instructions.py [-n 200] [--warmup 100]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def totals(path: Path) -> tuple[str, int]:
    """(the dump's trigger, its instruction count) of one callgrind output file."""
    text = path.read_text(errors="replace")
    trigger = re.search(r"^desc: Trigger: (.*)$", text, re.M)
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return (trigger.group(1) if trigger else "", int(total.group(1)) if total else 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200, help="measured flows")
    parser.add_argument("--warmup", type=int, default=100, help="flows before counting")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--commit-interval", type=float, default=3.0)
    parser.add_argument("--keep", help="keep callgrind's output files in this directory")
    parser.add_argument("profile_args", nargs="*", help="more arguments for attest_profile.py (after --)")
    args = parser.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="confide-instructions-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}
    cmd = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes",
        f"--callgrind-out-file={out}/cg.out.%p", sys.executable, str(ROOT / "bench" / "attest_profile.py"),
        "--callgrind", "-n", str(args.n), "--repeat", "1", "--warmup", str(args.warmup),
        "--concurrency", str(args.concurrency), "--commit-interval", str(args.commit_interval),
        *args.profile_args,
    ]  # fmt: skip
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])
        raise SystemExit(run.returncode)
    batch = next((line for line in run.stdout.splitlines() if line.startswith("group commit")), "")
    # --separate-threads: one file per dump and thread, cg.out.PID.DUMP-THREAD (thread 1 is
    # the main thread, which runs the event loop; the writer is the thread with the commits).
    parts: dict[tuple[str, str], int] = {}
    for path in out.glob("cg.out.*.*-*"):
        trigger, count = totals(path)
        thread = path.name.rsplit("-", 1)[1]
        what = trigger.removeprefix("Client Request: ")
        if what in ("nonce", "attest"):
            key = (what, "loop" if thread == "01" else "writer")
            parts[key] = parts.get(key, 0) + count
    n = args.n
    loop_nonce, loop_attest = parts.get(("nonce", "loop"), 0) / n, parts.get(("attest", "loop"), 0) / n
    other = (parts.get(("nonce", "writer"), 0) + parts.get(("attest", "writer"), 0)) / n
    print(f"{n} flows after {args.warmup} of warm-up, concurrency {args.concurrency}; {batch}")
    print("instructions per flow:")
    print(f"  event loop, nonce request      {loop_nonce:12,.0f}")
    print(f"  event loop, attestation        {loop_attest:12,.0f}")
    print(f"  writer thread                  {other:12,.0f}")
    print(f"  total                          {loop_nonce + loop_attest + other:12,.0f}")
    if not args.keep:
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


if __name__ == "__main__":
    main()
