"""Instructions per flow in a server process, counted by callgrind (not a timing: repeatable on a
shared VM, whatever else runs on it).

The server runs under ``valgrind --tool=callgrind`` with collection off; after ``--warmup``
flows, collection is switched on (``callgrind_control -i on``) for ``--flows`` flows from
``--clients`` concurrent clients, then the counts are dumped. The result is the server process's
instructions (all its threads) per flow, and the dump, for ``callgrind_annotate``. The servers
are ``bench/attest_load.py``'s: ``cas`` (``confide cas serve --dev``, the full attestation flow:
nonce, attestation, decryption on the client), ``floor`` (uvicorn answering the same two
requests with a constant), ``limited`` (that constant served as the CAS serves:
``confide.cas.server.uvicorn_server`` with its ``HttpLimits``), ``tls`` (the bare TLS
reference: handshake, one request, close). ``--root DIR`` takes the servers (``DIR/src``,
``DIR/bench/attest_load.py``) from another checkout, for before/after comparisons with the
same client code. Also printed: the event loop's thread alone (callgrind's
``--separate-threads``), which repeats more closely than the total on ``cas``, whose other
threads are paced by wall-clock time. ``--tool strace`` counts the server's system calls per flow instead
(``strace -f -c`` attached after the warm-up; the server runs at full speed until then).

    PYTHONPATH=src .venv/bin/python bench/serve_instructions.py --server cas [--flows 200]
    PYTHONPATH=src .venv/bin/python bench/serve_instructions.py --server limited --root /tmp/before
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import attest_load  # noqa: E402
from _sim_request import POLICY  # noqa: E402

from confide.sim.platform import SimPlatform  # noqa: E402


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root / "src")}


def _valgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}", "-q"]  # fmt: skip


def _wait_file(path: Path, proc: subprocess.Popen[bytes], seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def _client_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        out[k] = v.strip("'")
    return out


def _setup_cas(root: Path, work: Path) -> None:
    """The CAS's data directory with the bench policy (the CAS run once, plainly, then stopped)."""
    env = _env(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(work / "cas"), "--listen",
         "127.0.0.1:0", "--dev"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        _wait_file(work / "cas" / "client.env", proc)
        cenv = {**env, **_client_env(work / "cas" / "client.env")}
        run = lambda *a: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "confide", *a], env=cenv, capture_output=True, text=True, check=True
        )
        run("identity", "create", "--out", str(work / "alice.id"))
        (work / "p.yaml").write_text(POLICY)
        run("policy", "apply", str(work / "p.yaml"), "--identity", str(work / "alice.id"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    (work / "cas" / "client.env").unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=("cas", "floor", "limited", "tls"), default="cas")
    parser.add_argument("--flows", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--root", type=Path, default=BENCH.parent, help="checkout whose servers to run")
    parser.add_argument("--tool", choices=("callgrind", "strace"), default="callgrind")
    parser.add_argument(
        "--tickets", type=int, default=None, help="TLS 1.3 session tickets (default: the server's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the callgrind dump here")
    args = parser.parse_args()
    root = args.root.resolve()
    work = Path(tempfile.mkdtemp(prefix="confide-cg-"))
    dump = work / "callgrind.out"
    env = _env(root)
    _setup_cas(root, work)
    cert, key = str(work / "cas" / "cas-cert.pem"), str(work / "cas" / "cas-key.pem")
    if args.server == "cas":
        cmd = [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(work / "cas"),
               "--listen", "127.0.0.1:0", "--dev", "--attest-rate", "1000000",
               "--max-connections-per-ip", "256"]  # fmt: skip
        if args.tickets is not None:
            cmd += ["--tls-session-tickets", str(args.tickets)]
        ready = work / "cas" / "client.env"
    else:
        name = {"floor": "floor_server", "limited": "limited_floor_server", "tls": "tls_server"}[args.server]
        ready = work / "port"
        code = (
            f"import sys; sys.path.insert(0, {str(root / 'bench')!r}); import attest_load, pathlib; "
            f"attest_load.{name}({cert!r}, {key!r}, pathlib.Path({str(ready)!r})"
            + ("" if args.tickets is None else f", {args.tickets}")
            + ")"
        )
        cmd = [sys.executable, "-c", code]
    wrap = _valgrind(dump) if args.tool == "callgrind" else []
    proc = subprocess.Popen(
        wrap + cmd, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("wb"), env=env
    )
    try:
        _wait_file(ready, proc)
        if args.server == "cas":
            cenv = _client_env(ready)
            host, port = cenv["CONFIDE_CAS_URL"].removeprefix("https://").rsplit(":", 1)
        else:
            host, port = "127.0.0.1", ready.read_text().strip()
        ctx = ssl.create_default_context(cafile=cert)
        platform = SimPlatform.load(work / "cas" / "sim")

        if args.server == "tls":
            flow = attest_load.handshake_flow(int(port), ctx)
        elif args.server == "cas":
            flow = attest_load.attest_flow(host, int(port), ctx, platform)
        else:  # the floors: the same two requests, answered by a constant
            flow = attest_load.floor_flow(int(port), ctx)

        def flows(n: int) -> Coroutine[Any, Any, None]:
            return attest_load.flow_count(n, args.clients, flow)

        uvloop.run(flows(args.warmup))
        if args.tool == "strace":
            strace = subprocess.Popen(
                ["strace", "-f", "-c", "-o", str(work / "strace.txt"), "-p", str(proc.pid)],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # attached to every thread
            uvloop.run(flows(args.flows))
            time.sleep(0.5)
            strace.send_signal(signal.SIGINT)
            strace.wait(timeout=30)
        else:
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            uvloop.run(flows(args.flows))
            time.sleep(0.5)  # what the last flows left to the server (closes, the writer's commit)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    tickets = "the server's default" if args.tickets is None else args.tickets
    what = f"({args.flows} flows, {args.clients} clients, TLS session tickets: {tickets})"
    if args.tool == "strace":
        print(f"{args.server} ({root}): system calls per flow {what}")
        for line in (work / "strace.txt").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit():  # % time, seconds, usecs/call, calls, ...
                print(f"  {fields[-1]:<16} {int(fields[3]) / args.flows:8.2f}")
        shutil.rmtree(work, ignore_errors=True)
        return
    # --separate-threads: one file per thread of the dump taken after the flows,
    # callgrind.out.1-NN; thread 01 is the main thread, which runs the event loop
    total = loop = 0
    dumps = sorted(work.glob("callgrind.out*"))
    for path in dumps:
        if not path.name.startswith("callgrind.out.1-"):
            continue
        text = path.read_text(errors="replace")
        m = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
            if path.name.endswith("-01"):
                loop = int(m.group(1))
    if not total:
        raise SystemExit(f"no callgrind dump with counts in {work}: {[p.name for p in dumps]}")
    print(f"{args.server} ({root}): {total / args.flows:,.0f} instructions per flow {what}")
    # The event loop's thread alone: the other threads (the CAS's group commit, checkpointer and
    # sweeps) are paced by wall-clock time, which valgrind stretches, so their share per flow
    # varies from run to run; the loop's work is per request.
    print(f"  of which the event loop's thread: {loop / args.flows:,.0f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in dumps:
            shutil.copy(path, args.out / path.name)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
