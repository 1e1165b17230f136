"""Where a served flow's CPU goes: the served CAS against the framework floor, by thread and by
kernel/user time, with ``perf stat`` (software events and system calls) and optionally
``perf record``, during a closed loop of ``bench/attest_load.py``'s flows.

For each server (the CAS as ``attest_load.py`` starts it, pinned to the first core; the floor
served as the CAS serves it, ``limited_floor_server``, on the same core), one warm-up and a
closed loop of ``--seconds`` with ``--clients`` clients on the other core, while

- ``/proc/PID/task/*/stat`` (utime, stime; fields 14 and 15) is read before and after, per thread;
- ``perf stat -p PID`` counts task-clock, context switches, page faults and system calls;
- with ``--record DIR``, ``perf record -g -p PID`` samples the CPU clock (perf.data per server).

Everything is printed per flow. Needs ``perf`` and ``kernel.perf_event_paranoid`` ≤ 1 (or root).

    flock -x /tmp/confide-cpu.lock .venv/bin/python bench/served_probe.py [--seconds 8] [--record DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import attest_load as al  # noqa: E402

from confide.sim.platform import SimPlatform  # noqa: E402

EVENTS = (
    "task-clock,context-switches,cpu-migrations,page-faults,minor-faults,major-faults,"
    "raw_syscalls:sys_enter,syscalls:sys_enter_pwrite64,syscalls:sys_enter_fdatasync,"
    "syscalls:sys_enter_futex,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,"
    "syscalls:sys_enter_brk,syscalls:sys_enter_madvise,syscalls:sys_enter_write,"
    "syscalls:sys_enter_read,syscalls:sys_enter_getpid,syscalls:sys_enter_pread64,"
    "syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg"
)
TICK = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[float, float, int, int]]:
    """utime and stime (seconds) and voluntary and involuntary context switches of each
    thread, by ``tid:name``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        status = dict(
            line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line
        )
        out[f"{task.name}:{name}"] = (
            int(fields[11]) / TICK, int(fields[12]) / TICK,
            int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"]),
        )  # fmt: skip
    return out


def probe(
    label: str,
    pid: int,
    flow: al.Flow,
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str] | None = None,
) -> None:
    uvloop.run(al.closed_loop(args.clients, 2.0, flow))  # warm-up
    stat_out = work / f"{label}.perfstat"
    perf = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", EVENTS, "-p", str(pid), "-o", str(stat_out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    record = None
    if args.record:
        record = subprocess.Popen(
            ["perf", "record", "-F", "1999", "-g", "-p", str(pid), "-o",
             str(Path(args.record) / f"{label}.perf.data")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    time.sleep(0.5)
    m0 = al._metrics(env["CONFIDE_CAS_URL"], env["CONFIDE_CAS_CERT"]) if env else {}
    t0, c0 = threads(pid), time.perf_counter()
    n, _ = uvloop.run(al.closed_loop(args.clients, args.seconds, flow))
    wall = time.perf_counter() - c0
    t1 = threads(pid)
    for p in (perf, record):
        if p is not None:
            p.send_signal(signal.SIGINT)
            p.wait()
    print(f"\n== {label}: {n} flows in {wall:.1f} s = {n / wall:.0f}/s")
    if env:
        m1 = al._metrics(env["CONFIDE_CAS_URL"], env["CONFIDE_CAS_CERT"])
        jobs, commits = (
            m1.get(k, 0) - m0.get(k, 0)
            for k in ("confide_group_commit_jobs_total", "confide_group_commits_total")
        )
        print(f"  group commits: {commits:.0f}, {jobs / max(1, commits):.1f} jobs per transaction")
    tot_u = tot_s = 0.0
    for key, (u1, s1, v1, i1) in sorted(t1.items()):
        u0, s0, v0, i0 = t0.get(key, (0.0, 0.0, 0, 0))
        du, ds = u1 - u0, s1 - s0
        tot_u, tot_s = tot_u + du, tot_s + ds
        if du + ds > 0:
            print(f"  thread {key:<28} user {du / n * 1e3:.3f}  sys {ds / n * 1e3:.3f} ms per flow;"
                  f" context switches {(v1 - v0) / n:.2f} voluntary, {(i1 - i0) / n:.2f} involuntary")  # fmt: skip
    print(f"  all threads: user {tot_u / n * 1e3:.3f}  sys {tot_s / n * 1e3:.3f}  "
          f"total {(tot_u + tot_s) / n * 1e3:.3f} ms per flow; {100 * (tot_u + tot_s) / wall:.0f} % of a core")  # fmt: skip
    # perf stat counts over a window 0.5 s longer than the loop: per flow at the loop's rate
    span = wall + 0.5
    for line in stat_out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
            continue
        value, event = float(parts[0]), parts[2]
        print(f"  {event:<36} {value / (n * span / wall):10.2f} per flow")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--record", help="write perf.data files here")
    parser.add_argument("--only", choices=("cas", "floor"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {al.LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="confide-probe-"))
    cas, env = al.start_cas(work, args.clients, al.SESSION_TICKETS)
    try:
        ctx = al.ssl.create_default_context(cafile=env["CONFIDE_CAS_CERT"])
        host, port = env["CONFIDE_CAS_URL"].removeprefix("https://").rsplit(":", 1)
        run_env = {**os.environ, **env, "PYTHONPATH": str(al.ROOT / "src")}
        identity = work / "alice.id"
        subprocess.run(
            [sys.executable, "-m", "confide", "identity", "create", "--out", str(identity)],
            env=run_env, check=True, capture_output=True,
        )  # fmt: skip
        (work / "p.yaml").write_text(al.POLICY)
        subprocess.run(
            [sys.executable, "-m", "confide", "policy", "apply", str(work / "p.yaml"), "--identity", str(identity)],
            env=run_env, check=True, capture_output=True,
        )  # fmt: skip
        cert, key = env["CONFIDE_CAS_CERT"], str(work / "cas" / "cas-key.pem")
        if args.only != "floor":
            platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
            probe("cas", cas.pid, al.attest_flow(host, int(port), ctx, platform), args, work, env)
        if args.only != "cas":
            floor, fport = al.reference(al.limited_floor_server, cert, key, work, al.SESSION_TICKETS)
            try:
                assert floor.pid is not None
                probe("floor", floor.pid, al.floor_flow(fport, ctx), args, work)
            finally:
                floor.terminate()
                floor.join()
    finally:
        cas.terminate()
        cas.wait()


if __name__ == "__main__":
    main()
