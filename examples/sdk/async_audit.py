"""An asyncio service that audits a CAS with confide.sdk.AsyncCas, without blocking its loop.

It applies a policy, then reads it back, lists its events and history and audits the CAS's
log, all at once on two connections (calls on one AsyncCas run one at a time; each connection
is its own), while a heartbeat task keeps ticking: every call runs in a worker thread.
A refusal arrives through ``await`` as the class the command exits with.

Usage (against a development CAS, ``confide cas serve --dev``)::

    python3 async_audit.py DATA_DIR/client.env WORK_DIR

The policy is named ``audited-RUN``, RUN a new id each run, so the example runs again on the
same CAS; WORK_DIR must be new or empty.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from pathlib import Path

from confide.errors import AccessDeniedError, ConfideError
from confide.sdk import AsyncCas, create_identity

POLICY = """name: {name}
version: "0.3"
services:
  - name: job
    attestation:
      sim:
        measurement: "{measurement}"
access_policy:
  read: [CREATOR]
  update: [CREATOR]
security:
  attestation:
    tolerate: [simulation]
"""


async def heartbeat(ticks: list[float], stop: asyncio.Event) -> None:
    """Tick every 10 ms until ``stop``: the gaps show whether anything blocked the loop."""
    while not stop.is_set():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


async def main(env_file: Path, work: Path) -> int:
    if work.exists() and any(work.iterdir()):
        print(f"error: {work} is not empty: give a new WORK_DIR (the example writes its identity there)",
              file=sys.stderr)  # fmt: skip
        return 2
    work.mkdir(parents=True, exist_ok=True)
    try:
        return await steps(env_file, work, f"audited-{secrets.token_hex(4)}")
    except ConfideError as exc:  # a step the CAS refused unexpectedly: one line, its exit code
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return exc.exit_code


async def steps(env_file: Path, work: Path, name: str) -> int:
    owner = create_identity(work / "owner.id", name="owner")
    ticks: list[float] = []
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(ticks, stop))
    async with (
        await AsyncCas.from_env_file(env_file) as cas,
        await AsyncCas.from_env_file(env_file) as auditor,
    ):
        status = await cas.apply(POLICY.format(name=name, measurement="00" * 48), owner)
        print(f"applied {status.name}: {status.hash[:16]}… ({status.state})")
        started = time.monotonic()
        info, events, history, log = await asyncio.gather(
            cas.show(name, owner),
            cas.events(name, owner),
            auditor.history(name, owner),
            auditor.verify_log(state=work / "auditor.json"),
        )
        took = time.monotonic() - started
        kinds = ", ".join(e.type for e in events)
        print(f"read back {info.name}: {len(info.versions)} version(s), events: {kinds}")
        print(f"history: {[e.event for e in history.entries]}")
        print(f"log verified: size {log.size}, root {log.root[:16]}…, previous size {log.previous_size}")
        try:
            await cas.show(name, create_identity(name="stranger"))
        except AccessDeniedError as exc:
            print(f"stranger reads {name}: {exc.kind} (exit {exc.exit_code})")
    stop.set()
    await beating
    during = [t for t in ticks if started <= t <= started + took]
    print(f"heartbeat: {len(during)} ticks during {took * 1000:.0f} ms of calls")
    print("OK")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]))))
