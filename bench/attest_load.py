"""Benchmark: full attestation flows against a CAS on SQLite, next to the TLS handshake capacity.

Each flow is what ``confide run`` does: fresh TLS connection, nonce, simulated evidence bound
to a fresh P-256 key, attestation (verify, appraise, render secrets, encrypt the release, record
events durably), decryption of the release. ``--clients`` flows run concurrently (asyncio, one
load-generator process); the CAS runs as its own process (uvicorn, one worker), pinned to one
core, the load generator to the other.

The same run measures the TLS 1.3 handshake capacity of that core: a bare ``ssl`` server in a
process pinned to the CAS's core, driven by the same load generator with the same concurrency.

    .venv/bin/python bench/attest_load.py [--clients 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx2  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from confide.cas.core import binding_report_data, decrypt_release  # noqa: E402
from confide.sim.platform import SimPlatform  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))
CAS_CORE, LOAD_CORE = CORES[0], CORES[-1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_cas(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        ["taskset", "-c", str(CAS_CORE), sys.executable, "-m", "confide", "cas", "serve", "--data-dir",
         str(work / "cas"), "--listen", "127.0.0.1:0", "--dev"],
        stdout=subprocess.DEVNULL, stderr=(work / "cas.log").open("wb"), env=env,
    )  # fmt: skip
    client_env = work / "cas" / "client.env"
    for _ in range(600):
        if client_env.exists():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    out = {}
    for line in client_env.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        out[k] = v.strip("'")
    return proc, out


def tls_server(cert: str, key: str, port_file: Path) -> None:
    """A bare TLS 1.3 server: handshake, read a line, answer, close (the capacity reference)."""
    os.sched_setaffinity(0, {CAS_CORE})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port_file.write_text(str(sock.getsockname()[1]))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=sock, ssl=ctx)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def run_load(n_clients: int, seconds: float, flow: object) -> tuple[int, list[float]]:
    latencies: list[float] = []
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await flow()  # type: ignore[operator]
            latencies.append(time.perf_counter() - t0)
            done += 1

    await asyncio.gather(*(worker() for _ in range(n_clients)))
    return done, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="confide-bench-"))
    cas, env = start_cas(work)
    try:
        ctx = ssl.create_default_context(cafile=env["CONFIDE_CAS_CERT"])
        url = env["CONFIDE_CAS_URL"]
        platform = SimPlatform.load(Path(env["CONFIDE_SIM_DIR"]))
        identity = work / "alice.id"
        run = lambda *a: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "confide", *a], env={**os.environ, **env, "PYTHONPATH": str(ROOT / "src")},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        run("identity", "create", "--out", str(identity))
        measurement = "ab" * 48
        (work / "p.yaml").write_text(
            f"""name: bench
version: "0.3"
services:
  - name: app
    command: app --token $$SCONE::token$$
    environment:
      KEY: "$$SCONE::key:hex$$"
    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: token
    kind: ascii
  - name: key
    kind: binary
security:
  attestation:
    tolerate: [simulation]
"""
        )
        run("policy", "apply", str(work / "p.yaml"), "--identity", str(identity))

        async def flow() -> None:
            key = ec.generate_private_key(ec.SECP256R1())
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            async with httpx2.AsyncClient(base_url=url, verify=ctx, timeout=60) as client:  # fresh TLS
                nonce = (await client.post("/v1/attest/nonce")).json()["nonce"]
                evidence = platform.issue(
                    report_data=binding_report_data(der, bytes.fromhex(nonce)),
                    measurement=bytes.fromhex(measurement), timestamp=int(time.time()),
                ).to_bytes()  # fmt: skip
                response = await client.post("/v1/attest", json={
                    "policy": "bench", "service": "app", "platform": "sim",
                    "evidence": base64.b64encode(evidence).decode(), "public_key": base64.b64encode(der).decode(),
                    "nonce": nonce,
                })  # fmt: skip
                response.raise_for_status()
                config = decrypt_release(key, response.json(), bytes.fromhex(nonce))
                assert config["environment"]["KEY"]

        asyncio.run(run_load(4, 2.0, flow))  # warm-up
        rss_before = rss_mib(cas.pid)
        half = args.seconds / 2
        n1, lat1 = asyncio.run(run_load(args.clients, half, flow))
        rss_mid = rss_mib(cas.pid)
        n2, lat2 = asyncio.run(run_load(args.clients, half, flow))
        rss_end = rss_mib(cas.pid)
        lat = sorted(lat1 + lat2)
        rate = (n1 + n2) / args.seconds

        # The reference: TLS handshakes/s of the same core, same client concurrency.
        port_file = work / "tls.port"
        server = multiprocessing.Process(
            target=tls_server, args=(env["CONFIDE_CAS_CERT"], str(work / "cas" / "cas-key.pem"), port_file)
        )
        server.start()
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())

        async def handshake() -> None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            writer.write(b"GET / HTTP/1.1\r\n")
            await writer.drain()
            await reader.read()
            writer.close()

        nh, _ = asyncio.run(run_load(args.clients, half, handshake))
        server.terminate()
        server.join()
        tls_rate = nh / half
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        print(
            f"clients: {args.clients}, duration: {args.seconds:.0f}s, CAS on core {CAS_CORE}, load on core {LOAD_CORE}"
        )
        print(f"attestations/s: {rate:,.0f}   p50 {p50:.1f} ms   p99 {p99:.1f} ms")
        print(f"TLS 1.3 handshakes/s (same core, bare ssl server): {tls_rate:,.0f}")
        print(f"ratio attestations / handshake capacity: {rate / tls_rate:.2f}x")
        print(
            f"CAS peak RSS: {rss_before:.0f} MiB after warm-up, {rss_mid:.0f} MiB at half time, {rss_end:.0f} MiB at the end"
        )
    finally:
        cas.send_signal(signal.SIGTERM)
        cas.wait(timeout=30)


if __name__ == "__main__":
    main()
