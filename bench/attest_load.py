"""Benchmark: full attestation flows against a CAS on SQLite, next to the TLS handshake capacity.

Each flow is what ``confide run`` does: fresh TLS connection, nonce, simulated evidence bound
to a fresh P-256 key, attestation (verify, appraise, render secrets, encrypt the release, record
events durably), decryption of the release. The CAS runs as its own process (uvicorn, one
worker) pinned to one core, the load generator (asyncio on uvloop, HTTP/1.1 written by hand on
``ssl`` streams, so that the client is not the limit) to the other.

Three measurements in one run:

1. the TLS 1.3 handshake capacity of the CAS's core: a bare ``ssl`` server (uvloop) pinned to
   that core, driven by the same client code and concurrency (handshake, one request, close);
   and the framework floor: the CAS's own stack (uvicorn over TLS) answering the same two
   requests with a constant; all of them send as many TLS 1.3 session tickets per handshake as
   the CAS (``--tls-tickets``, default the CAS's own default, printed), so the ratio compares the
   same handshake;
2. throughput: ``--clients`` closed-loop clients, each starting its next flow as soon as the
   previous one ends (the CAS saturated; latency here is queueing: Little's law);
3. latency: an open-loop load of ``--rate-fraction`` × the handshake capacity, spread over the
   same number of clients (Poisson arrivals; each flow's latency counts from its scheduled
   start, so a stalled CAS cannot hide its queue), reported as p50/p99.

CPU use of both processes is printed, to show which side was the limit: the share of each
one's core, and CPU per operation: the CAS's per flow and per bare handshake, and the load
generator's per flow (the closed loop) and per handshake (the bare reference, whose rate the
load generator's side of the handshake bounds when it is near 100 % of its core).
``bench/client_instructions.py`` counts the load generator's instructions per flow.

    .venv/bin/python bench/attest_load.py [--clients 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _served_cas import start_cas as served_cas  # noqa: E402
from _sim_request import MEASUREMENT, POLICY, sim_attest_request  # noqa: E402

from confide.cas.core import decrypt_release  # noqa: E402
from confide.cas.server import SESSION_TICKETS, uvicorn_server  # noqa: E402
from confide.httpserve.limits import HttpLimits  # noqa: E402
from confide.sim.platform import SimPlatform  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))
CAS_CORE, LOAD_CORE = CORES[0], CORES[-1]
Flow = Callable[[], Awaitable[None]]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_cas(work: Path, clients: int, tickets: int) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """The CAS with its defaults but for two limits: the bench is one client address driving the
    CAS to saturation on purpose, which the per-client attestation rate (200 requests/s) exists to
    stop; so it runs with a rate limit it never reaches (the limiter still runs, and is measured)
    and with room for all its concurrent connections on the one address."""
    limits = ["--attest-rate", "1000000", "--max-connections-per-ip", str(max(128, 2 * clients)),
              "--tls-session-tickets", str(tickets)]  # fmt: skip
    return served_cas(work, *limits, prefix=["taskset", "-c", str(CAS_CORE)])


def tls_server(cert: str, key: str, port_file: Path, tickets: int = SESSION_TICKETS) -> None:
    """A bare TLS 1.3 server: handshake, read a request, answer, close (the capacity reference).
    ``tickets``: TLS 1.3 session tickets sent after each handshake, as the CAS sends."""
    os.sched_setaffinity(0, {CAS_CORE})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = tickets
    ctx.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port_file.write_text(str(sock.getsockname()[1]))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=sock, ssl=ctx)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def floor_server(cert: str, key: str, port_file: Path, tickets: int = SESSION_TICKETS) -> None:
    """The framework floor: the CAS's stack (uvicorn, httptools, uvloop, TLS 1.3) serving a
    constant for every request, so the attestation's own cost can be told from the stack's."""
    os.sched_setaffinity(0, {CAS_CORE})
    body = json.dumps({"nonce": "00" * 32, "expires_in": 60}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(
        scope: dict[str, object], receive: Callable[[], Awaitable[dict[str, object]]], send: object
    ) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(
        app, ssl_keyfile=key, ssl_certfile=cert, log_config=None, access_log=False,
        http="httptools", loop="uvloop", lifespan="off", proxy_headers=False,
    )  # fmt: skip
    config.load()
    assert config.ssl is not None
    config.ssl.num_tickets = tickets
    uvicorn.Server(config).run(sockets=[sock])


def limited_floor_server(cert: str, key: str, port_file: Path, tickets: int = SESSION_TICKETS) -> None:
    """The framework floor served as the CAS serves: ``confide.cas.server.uvicorn_server`` with
    the default ``HttpLimits`` (connections counted at accept, TLS put in per connection, head
    and body timers), so that the limits' cost is measured against the plain floor."""
    os.sched_setaffinity(0, {CAS_CORE})
    body = json.dumps({"nonce": "00" * 32, "expires_in": 60}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(
        scope: dict[str, object], receive: Callable[[], Awaitable[dict[str, object]]], send: Any
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port_file.write_text(str(sock.getsockname()[1]))
    uvicorn_server(app, Path(key), Path(cert), None, HttpLimits(), session_tickets=tickets).run(
        sockets=[sock]
    )


def reference(
    target: Callable[[str, str, Path, int], None], cert: str, key: str, work: Path, tickets: int
) -> tuple[multiprocessing.Process, int]:
    port_file = work / f"{target.__name__}.port"
    server = multiprocessing.Process(target=target, args=(cert, key, port_file, tickets))
    server.start()
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    return server, int(port_file.read_text())


async def http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 POST on an open connection (keep-alive); returns the body of a 200."""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: cas\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    # Content-Length (field names are case-insensitive; int() takes the value's surrounding spaces)
    at = head.lower().find(b"\r\ncontent-length:")
    length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
    data = await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"{path}: HTTP {status.decode()} {data[:200]!r}")
    return data


def attest_flow(host: str, port: int, ctx: ssl.SSLContext, platform: SimPlatform) -> Flow:
    """One attestation flow, as ``confide run`` makes it: a fresh TLS connection (the CAS's
    certificate verified), a nonce, simulated evidence bound to a fresh P-256 key, the
    attestation, the release decrypted and checked."""

    async def flow() -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)  # fresh TLS
        try:
            nonce = json.loads(await http(reader, writer, "/v1/attest/nonce"))["nonce"]
            key, request = sim_attest_request(
                platform, nonce, policy="bench", service="app", measurement=MEASUREMENT
            )
            body = json.dumps(request).encode()
            release = json.loads(await http(reader, writer, "/v1/attest", body))
        finally:
            writer.close()
        der = base64.b64decode(request["public_key"])
        config = decrypt_release(key, release, bytes.fromhex(nonce), public_key_der=der)
        assert config["environment"]["KEY"]

    return flow


def handshake_flow(port: int, ctx: ssl.SSLContext) -> Flow:
    """The bare-TLS reference's flow: a fresh TLS connection, one request, the answer, close."""

    async def handshake() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    return handshake


FLOOR_SAMPLE = json.dumps({"policy": "bench", "evidence": "A" * 400, "public_key": "A" * 120}).encode()


def floor_flow(port: int, ctx: ssl.SSLContext) -> Flow:
    """The framework floors' flow: a fresh TLS connection and the attestation's two requests
    (``FLOOR_SAMPLE`` as the second body), answered by a constant."""

    async def flow() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        try:
            await http(reader, writer, "/v1/attest/nonce")
            await http(reader, writer, "/v1/attest", FLOOR_SAMPLE)
        finally:
            writer.close()

    return flow


async def flow_count(n: int, n_clients: int, flow: Flow) -> None:
    """``n`` flows, ``n_clients`` at a time (the instruction counts' fixed amount of work)."""
    todo = iter(range(n))

    async def client() -> None:
        for _ in todo:
            await flow()

    await asyncio.gather(*(client() for _ in range(n_clients)))


async def closed_loop(n_clients: int, seconds: float, flow: Flow) -> tuple[int, list[float]]:
    """Each client starts its next flow when the previous one ends."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await flow()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client() for _ in range(n_clients)))
    return len(latencies), latencies


async def open_loop(n_clients: int, seconds: float, rate: float, flow: Flow) -> tuple[int, list[float]]:
    """Poisson arrivals at ``rate``/s over ``n_clients`` clients; latency from the scheduled
    start (a client that falls behind starts late flows at once and they count as late)."""
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    rng = random.Random(1)

    async def client() -> None:
        due = start + rng.expovariate(rate / n_clients)
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await flow()
            latencies.append(time.perf_counter() - due)
            due += rng.expovariate(rate / n_clients)

    await asyncio.gather(*(client() for _ in range(n_clients)))
    return len(latencies), latencies


def _metrics(url: str, cert: str) -> dict[str, float]:
    """The CAS's Prometheus counters (unlabelled samples only)."""
    text = httpx2.get(f"{url}/metrics", verify=ssl.create_default_context(cafile=cert), timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="closed-loop (throughput) phase")
    parser.add_argument("--rate-fraction", type=float, default=0.5, help="open-loop load / TLS capacity")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--tls-tickets", type=int, default=SESSION_TICKETS,
        help="TLS 1.3 session tickets per handshake, of the CAS and of every reference server alike"
        " (default: the CAS's default)",
    )  # fmt: skip
    args = parser.parse_args()
    tickets = args.tls_tickets
    os.sched_setaffinity(0, {LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="confide-bench-"))
    cas, env = start_cas(work, args.clients, tickets)
    try:
        ctx = ssl.create_default_context(cafile=env["CONFIDE_CAS_CERT"])
        host, port = env["CONFIDE_CAS_URL"].removeprefix("https://").rsplit(":", 1)
        platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
        identity = work / "alice.id"
        run = lambda *a: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "confide", *a], env={**os.environ, **env, "PYTHONPATH": str(ROOT / "src")},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        run("identity", "create", "--out", str(identity))
        (work / "p.yaml").write_text(POLICY)
        run("policy", "apply", str(work / "p.yaml"), "--identity", str(identity))

        flow = attest_flow(host, int(port), ctx, platform)

        # 1. The references: TLS handshakes/s of the CAS's core, and the framework floor (the
        #    same two requests answered by a constant on the CAS's stack); same client code.
        cert, key = env["CONFIDE_CAS_CERT"], str(work / "cas" / "cas-key.pem")
        server, tls_port = reference(tls_server, cert, key, work, tickets)

        handshake = handshake_flow(tls_port, ctx)

        half = args.seconds / 2
        uvloop.run(closed_loop(4, 1.0, handshake))
        assert server.pid is not None
        scpu0, hload0, ht0 = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        nh, _ = uvloop.run(closed_loop(args.clients, half, handshake))
        tls_cpu = (cpu_seconds(server.pid) - scpu0) / nh  # CPU seconds per handshake
        # the load generator's side of the same handshakes (seconds per handshake, share of its core)
        hload = time.process_time() - hload0
        hload_cpu, hload_share = hload / nh, hload / (time.perf_counter() - ht0)
        server.terminate()
        server.join()
        tls_rate = nh / half

        # The floor, and the floor served as the CAS serves (its connection limits and timers),
        # both running, the load alternating between them: the limits' cost per flow.
        floor, floor_port = reference(floor_server, cert, key, work, tickets)
        limited, limited_port = reference(limited_floor_server, cert, key, work, tickets)

        floors = ((floor, floor_port), (limited, limited_port))
        done = {fport: [0, 0.0] for _, fport in floors}  # flows, CPU seconds
        for _, fport in floors:
            uvloop.run(closed_loop(4, 1.0, floor_flow(fport, ctx)))
        for _ in range(2):
            for proc, fport in floors:
                assert proc.pid is not None
                fcpu0 = cpu_seconds(proc.pid)
                nf, _ = uvloop.run(closed_loop(args.clients, half / 4, floor_flow(fport, ctx)))
                done[fport][0] += nf
                done[fport][1] += cpu_seconds(proc.pid) - fcpu0
        floor_cpu = done[floor_port][1] / done[floor_port][0]
        limited_cpu = done[limited_port][1] / done[limited_port][0]
        for proc, _ in floors:
            proc.terminate()
            proc.join()

        # 2. Throughput, closed loop (two halves, to see whether memory stays flat).
        uvloop.run(closed_loop(4, 2.0, flow))  # warm-up
        rss_before = rss_mib(cas.pid)
        cpu0, load0, t0 = cpu_seconds(cas.pid), time.process_time(), time.perf_counter()
        n1, lat1 = uvloop.run(closed_loop(args.clients, half, flow))
        rss_mid = rss_mib(cas.pid)
        n2, lat2 = uvloop.run(closed_loop(args.clients, half, flow))
        wall = time.perf_counter() - t0
        metrics = _metrics(env["CONFIDE_CAS_URL"], env["CONFIDE_CAS_CERT"])
        batch = metrics.get("confide_group_commit_jobs_total", 0) / max(
            1.0, metrics.get("confide_group_commits_total", 0)
        )
        cas_cpu, load_cpu = (cpu_seconds(cas.pid) - cpu0) / wall, (time.process_time() - load0) / wall
        flow_cpu = (cpu_seconds(cas.pid) - cpu0) / (n1 + n2)  # CAS CPU seconds per flow
        load_flow_cpu = load_cpu * wall / (n1 + n2)  # the load generator's CPU seconds per flow
        rate = (n1 + n2) / args.seconds
        lat = sorted(lat1 + lat2)

        # 3. Latency, open loop: at the target (a fraction of the handshake capacity) and at
        #    half the throughput the CAS reached (a CAS run at 50 % of its capacity).
        open_runs = []
        for offered in (args.rate_fraction * tls_rate, rate / 2):
            t1 = time.perf_counter()
            no, olat = uvloop.run(open_loop(args.clients, args.latency_seconds, offered, flow))
            open_runs.append((offered, no / (time.perf_counter() - t1), sorted(olat)))
        rss_end = rss_mib(cas.pid)
        print(
            f"clients: {args.clients}, CAS on core {CAS_CORE}, load on core {LOAD_CORE}, "
            f"{args.seconds:.0f}s closed loop + {args.latency_seconds:.0f}s open loop"
        )
        print(f"TLS 1.3 session tickets per handshake, the CAS and every reference server: {tickets}")
        print(
            f"TLS 1.3 handshakes/s (CAS core, bare ssl server): {tls_rate:,.0f}   (load generator: "
            f"{hload_share:.0%} of its core, {hload_cpu * 1e3:.2f} ms CPU per handshake: near 100 % it, "
            "not the server, bounds this rate)"
        )
        print(
            f"throughput (closed loop): {rate:,.0f} attestations/s = {rate / tls_rate:.2f}x handshake capacity"
            f"   (p50 {statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99):.1f} ms: queueing)"
        )
        print(
            f"CPU during the closed loop: CAS {cas_cpu:.0%} of its core, load generator {load_cpu:.0%}"
            f" ({load_flow_cpu * 1e3:.2f} ms per flow: its core allows {1 / load_flow_cpu:,.0f} flows/s);"
            f" group commit: {batch:.1f} attestations per transaction on average"
        )
        print(
            f"CPU cost: {tls_cpu * 1e3:.2f} ms per bare TLS handshake, {flow_cpu * 1e3:.2f} ms per attestation "
            f"flow in the CAS: ratio {tls_cpu / flow_cpu:.2f}x (the throughput ratio both would reach at "
            "full CPU)"
        )
        print(
            f"framework floor (uvicorn + TLS, the same two requests answered by a constant): "
            f"{floor_cpu * 1e3:.2f} ms CPU per flow; the best ratio any application on this stack "
            f"reaches: {tls_cpu / floor_cpu:.2f}x; the attestation's own CPU: {(flow_cpu - floor_cpu) * 1e3:.2f} ms"
        )
        print(
            f"the floor served as the CAS serves (connection limits, timers; alternating with the floor):"
            f" {limited_cpu * 1e3:.3f} ms CPU per flow vs {floor_cpu * 1e3:.3f} ms:"
            f" {(limited_cpu - floor_cpu) * 1e6:+.0f} µs"
        )
        for (offered, rate_done, olat), what in zip(
            open_runs,
            (f"{args.rate_fraction:.2f}x handshake capacity", "0.50x the CAS's throughput"),
            strict=True,
        ):
            print(
                f"latency (open loop, {offered:,.0f}/s offered = {what}, {rate_done:,.0f}/s done): "
                f"p50 {pct(olat, 0.5):.1f} ms   p99 {pct(olat, 0.99):.1f} ms"
            )
        print(
            f"CAS peak RSS: {rss_before:.0f} MiB after warm-up, {rss_mid:.0f} MiB at half time, {rss_end:.0f} MiB at the end"
        )
    finally:
        cas.send_signal(signal.SIGTERM)
        cas.wait(timeout=30)


if __name__ == "__main__":
    main()
