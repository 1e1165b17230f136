"""A self-attesting asyncio service with a protected volume: ``AsyncCas.mount_volumes`` (docs/sdk.md).

The owner creates a protected volume (``notes.txt``), applies a policy that gives it to the
service ``notes-RUN/app`` (this file run with ``--serve``, pinned by its simulated measurement;
RUN a new id each run, so the example runs again on the same CAS),
then starts the service twice, stopping it each time with SIGTERM as a service manager would.
The service attests itself, mounts its released volume, appends a line to ``notes.txt`` and
waits for SIGTERM (an event loop signal handler: the SDK's signal hold leaves those alone); on
it, the ``async with`` block ends, the volume is sealed and its new tag reported to the CAS,
and the service exits 0. The second run attests again, is released the tag the first one
reported, and sees the first run's line. The owner checks that the directory's sealed tag is
the last one the CAS recorded.

Usage, against a development CAS (``confide cas serve --data-dir DIR --dev``)::

    python3 examples/sdk/volume_service.py DIR/client.env WORKDIR

WORKDIR must be new or empty. Exit 0 when every step went as described, 1 otherwise, or a
one-line error and its class's exit code. As root the volume is mounted with FUSE
(or tmpfs) in a private mount namespace of the service; otherwise in a private directory of
``/dev/shm``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from confide.errors import ConfideError
from confide.sdk import AsyncCas, Cas, create_identity, load_identity, measure
from confide.volume import VolumeKey, add_sources, create_volume, load_sealed, seal_volume

SCRIPT = Path(__file__).resolve()

POLICY = """\
name: {name}
version: "0.3"
services:
  - name: app
    image_name: app-image
    attestation:
      sim:
        measurement: "{measurement}"
volumes:
  - name: data
    fspf_key: {key}
    fspf_tag: "{tag}"
images:
  - name: app-image
    volumes:
      - name: data
        path: {directory}
access_policy:
  read: [CREATOR]
  update: [CREATOR]
security:
  attestation:
    tolerate: [simulation]
"""


def service_command(config_id: str) -> list[str]:
    """The command line the simulated TEE measures: this interpreter, this file, its arguments."""
    return [sys.executable, str(SCRIPT), "--serve", config_id]


# --- the service -----------------------------------------------------------------------------------


async def serve(config_id: str) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with await AsyncCas.from_env() as cas:
            release = await cas.attest(config_id, await cas.simulated_provider(service_command(config_id)))
            async with cas.mount_volumes(release) as volumes:
                notes = volumes.paths["data"] / "notes.txt"
                text = notes.read_text() + f"run with the tag {release.volumes[0].tag[:16]}…\n"
                notes.write_text(text)
                print("ready", flush=True)  # the owner waits for this line, then sends SIGTERM
                await stop.wait()
            # here the volume is sealed and its new tag reported to the CAS
    except ConfideError as exc:
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({"lines": text.count("\n"), "released_tag": release.volumes[0].tag}), flush=True)
    return 0


# --- the owner --------------------------------------------------------------------------------------


def client_env(path: Path) -> dict[str, str]:
    """This process's environment with the CAS's client.env (for the service's process)."""
    env = dict(os.environ)
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    return env


def run_service(config_id: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Start the service, wait for its ``ready``, stop it with SIGTERM; its exit code and output."""
    proc = subprocess.Popen(  # noqa: S603 - the example's own service
        service_command(config_id), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if first.strip() == "ready":
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, (first + out).strip(), err.strip()


def main(env_file: Path, work: Path) -> int:
    if work.exists() and any(work.iterdir()):
        print(f"error: {work} is not empty: give a new WORKDIR (the example writes its volume there)",
              file=sys.stderr)  # fmt: skip
        return 2
    work.mkdir(parents=True, exist_ok=True)
    name = f"notes-{secrets.token_hex(4)}"  # each run creates its own policy
    try:
        return steps(env_file, work, name)
    except ConfideError as exc:  # a step the CAS refused unexpectedly: one line, its exit code
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return exc.exit_code


def steps(env_file: Path, work: Path, name: str) -> int:
    config_id = f"{name}/app"
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        if not ok:
            failures += 1
            print(f"FAILED: {what}")

    # 1. The owner's volume: a new key, one file, sealed (the tag pins this version).
    key = VolumeKey.generate()
    volume, source = work / "volume", work / "source"
    source.mkdir()
    (source / "notes.txt").write_text("created by the owner\n")
    create_volume(volume, key)
    add_sources(volume, key, [source / "notes.txt"])
    tag0 = seal_volume(volume, key)
    print(f"volume sealed: tag {tag0[:16]}…")

    env = client_env(env_file)
    with Cas.from_env_file(env_file) as cas:
        # 2. The owner's policy gives the volume to the service whose measurement it pins.
        create_identity(work / "owner.id", name="owner")
        owner = load_identity(work / "owner.id")
        measurement = measure(service_command(config_id))
        policy = POLICY.format(name=name, measurement=measurement, key=key.hex(), tag=tag0, directory=volume)
        status = cas.apply(policy, owner)
        print(f"owner applied {name}: {status.hash[:16]}… ({status.state})")

        # 3. Two runs of the service, each stopped by SIGTERM once it has written its line.
        for run in (1, 2):
            rc, out, err = run_service(config_id, env)
            print(f"service run {run}: exit {rc}: {out.splitlines()[-1] if out else err}")
            check(rc == 0 and out.startswith("ready"), f"run {run} exits 0 after SIGTERM")
            if rc == 0:
                lines = json.loads(out.splitlines()[-1])["lines"]
                check(lines == run + 1, f"run {run} sees the earlier runs' lines")

        # 4. What the CAS recorded: one tag per version, the last one the directory's.
        tags = [str(e.payload["tag"]) for e in cas.events(name, owner) if e.type == "volume-tag"]
        _, sealed = load_sealed(volume, key)
        print(f"volume tags the CAS recorded: {len(tags)}, the last {tags[-1][:16]}…; sealed {sealed[:16]}…")
        check(len(tags) == 3 and tags[0] == tag0 and tags[-1] == sealed, "the CAS knows the sealed tag")
    print("OK" if failures == 0 else f"{failures} step(s) failed")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"] and len(sys.argv) == 3:
        sys.exit(asyncio.run(serve(sys.argv[2])))
    if len(sys.argv) != 3:
        print(__doc__.strip().split("Usage")[1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
