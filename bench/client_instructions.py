"""Instructions per flow in the load generator of ``bench/attest_load.py``, counted by callgrind:
the client's side of the benchmark (not a timing: repeatable on a shared VM).

``bench/attest_load.py``'s load generator runs on one core and has to stay below the CAS it
loads; this measures its cost per flow. A CAS (``confide cas serve --dev``, the bench policy)
or the bare TLS reference server runs normally; the client runs in a child process under
``valgrind --tool=callgrind --instr-atstart=no``, makes ``--warmup`` flows uninstrumented, then
switches instrumentation on for ``--flows`` flows from ``--clients`` concurrent clients and
dumps the counts: the client process's instructions (all its threads) per flow. ``--server
cas``: ``attest_load.attest_flow`` (fresh TLS connection verifying the CAS's certificate, nonce,
fresh P-256 key, simulated evidence, attestation, decryption of the release); ``--server tls``:
``attest_load.handshake_flow`` (handshake, one request, close). ``--root DIR`` takes the client
code and ``confide`` from another checkout (its ``bench/attest_load.py`` and ``src``), for
before/after comparisons; a checkout whose ``attest_load`` has no ``attest_flow`` or
``handshake_flow`` (before they were factored out) gets the flows as its ``main`` wrote them.

    PYTHONPATH=src .venv/bin/python bench/client_instructions.py [--server cas] [--flows 200]
    PYTHONPATH=src .venv/bin/python bench/client_instructions.py --root /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(args: argparse.Namespace) -> None:
    """Runs under valgrind: the flows, the measured ones instrumented."""
    root = args.root.resolve()
    # the client's code from ``root``; only the callgrind helper from this checkout
    sys.path[:0] = [str(root / "bench"), str(root / "src")]
    callgrind: Any = _load("_callgrind", BENCH / "_callgrind.py").Callgrind()
    uvloop: Any = importlib.import_module("uvloop")
    attest_load: Any = importlib.import_module("attest_load")
    cert = str(args.work / "cas" / "cas-cert.pem")
    ctx = ssl.create_default_context(cafile=cert)
    if args.server == "tls":
        port = int((args.work / "port").read_text())
        if hasattr(attest_load, "handshake_flow"):
            flow = attest_load.handshake_flow(port, ctx)
        else:

            async def flow() -> None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
                )
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                await reader.read()
                writer.close()

    else:
        platform_module: Any = importlib.import_module("confide.sim.platform")
        env = dict(
            line.removeprefix("export ").partition("=")[::2]
            for line in (args.work / "cas" / "client.env").read_text().splitlines()
        )
        host, port_text = env["CONFIDE_CAS_URL"].strip("'").removeprefix("https://").rsplit(":", 1)
        platform = platform_module.SimPlatform.load(args.work / "cas" / "sim")
        if hasattr(attest_load, "attest_flow"):
            flow = attest_load.attest_flow(host, int(port_text), ctx, platform)
        else:
            sim_request: Any = importlib.import_module("_sim_request")
            decrypt_release = importlib.import_module("confide.cas.core").decrypt_release

            async def flow() -> None:
                reader, writer = await asyncio.open_connection(host, int(port_text), ssl=ctx)
                try:
                    nonce = json.loads(await attest_load.http(reader, writer, "/v1/attest/nonce"))["nonce"]
                    key, request = sim_request.sim_attest_request(
                        platform, nonce, policy="bench", service="app", measurement=sim_request.MEASUREMENT
                    )
                    body = json.dumps(request).encode()
                    release = json.loads(await attest_load.http(reader, writer, "/v1/attest", body))
                finally:
                    writer.close()
                config = decrypt_release(key, release, bytes.fromhex(nonce))
                assert config["environment"]["KEY"]

    async def flows(n: int) -> None:
        todo = iter(range(n))

        async def client() -> None:
            for _ in todo:
                await flow()

        await asyncio.gather(*(client() for _ in range(args.clients)))

    uvloop.run(flows(args.warmup))
    callgrind.start()
    callgrind.zero()
    uvloop.run(flows(args.flows))
    callgrind.dump("flows")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=("cas", "tls"), default="cas")
    parser.add_argument("--flows", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--root", type=Path, default=BENCH.parent, help="checkout whose client to run")
    parser.add_argument("--out", type=Path, default=None, help="keep the callgrind dump here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    sys.path.insert(0, str(BENCH))
    helpers: Any = importlib.import_module("serve_instructions")
    _env, _setup_cas, _wait_file = helpers._env, helpers._setup_cas, helpers._wait_file

    root = args.root.resolve()
    work = Path(tempfile.mkdtemp(prefix="confide-cg-client-"))
    _setup_cas(root, work)
    cert, key = str(work / "cas" / "cas-cert.pem"), str(work / "cas" / "cas-key.pem")
    if args.server == "cas":
        cmd = [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(work / "cas"),
               "--listen", "127.0.0.1:0", "--dev", "--attest-rate", "1000000",
               "--max-connections-per-ip", "256"]  # fmt: skip
        ready = work / "cas" / "client.env"
    else:
        ready = work / "port"
        code = (
            f"import sys; sys.path.insert(0, {str(root / 'bench')!r}); import attest_load, pathlib; "
            f"attest_load.tls_server({cert!r}, {key!r}, pathlib.Path({str(ready)!r}))"
        )
        cmd = [sys.executable, "-c", code]
    env = _env(root)
    server = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("wb"), env=env
    )
    try:
        _wait_file(ready, server)
        child = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work}/cg.out",
             "-q", sys.executable, str(Path(__file__).resolve()), "--child", "--work", str(work),
             "--root", str(root), "--server", args.server, "--flows", str(args.flows),
             "--warmup", str(args.warmup), "--clients", str(args.clients)],
            env={**env, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            sys.stderr.write(child.stderr[-4000:])
            raise SystemExit(child.returncode)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    total = 0
    dumps = sorted(work.glob("cg.out*"))
    for path in dumps:
        text = path.read_text(errors="replace")
        if re.search(r"^desc: Trigger: Client Request: flows$", text, re.M):
            m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
            total += int(m.group(1)) if m else 0
    if not total:
        raise SystemExit(f"no callgrind dump with counts in {work}: {[p.name for p in dumps]}")
    what = f"({args.flows} flows, {args.clients} clients)"
    print(
        f"load generator against {args.server} ({root}): {total / args.flows:,.0f} instructions per flow {what}"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in dumps:
            shutil.copy(path, args.out / path.name)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
