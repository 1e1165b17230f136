"""``Cas.mount_volumes`` and ``Release.write_files`` end to end: a real ``confide cas serve
--dev``, a policy whose service gets a protected volume, the SDK in this process mounting it
(FUSE, else tmpfs; not root: /dev/shm) with the code ``confide run`` uses, sealing at the end
of the block and reporting the new tag. (The ``confide run`` side of the same code:
tests/integration/test_cas_e2e.py, ``test_confide_run_*volume*``.)

As root, mounting moves the calling thread (pytest's) into a private mount namespace, as
``confide run`` does: the mounts never show outside this process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import CasProcess, running_cas
from confide import errors
from confide.sdk import AsyncCas, Cas, Identity, Release, VolumeMounts, measure
from confide.volume import VolumeKey, add_sources, create_volume, load_sealed, seal_volume
from confide.volume.mount import fuse_usable
from confide.volume.store import object_path
from sdk_env import command


@pytest.fixture(scope="module")
def cas_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasProcess]:
    with running_cas(tmp_path_factory.mktemp("sdkvol") / "cas", None) as proc:
        yield proc


@pytest.fixture
def cas(cas_proc: CasProcess) -> Iterator[Cas]:
    with Cas.from_env(cas_proc.env) as connected:
        yield connected


@dataclasses.dataclass
class Setup:
    policy: str
    argv: list[str]
    vol: Path
    key: VolumeKey
    tag0: str
    alice: Identity


def volume_setup(cas: Cas, tmp_path: Path, name: str, *, update_policy: str = "", inject: str = "") -> Setup:
    """A sealed volume (``notes.txt``: "first line") and policy ``name`` whose service ``app``
    gets it as volume ``data`` (with ``update_policy`` when given, injection files ``inject``)."""
    key = VolumeKey.generate()
    vol, src = tmp_path / "vol", tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first line\n")
    create_volume(vol, key)
    add_sources(vol, key, [src / "notes.txt"])
    tag0 = seal_volume(vol, key)
    argv = command(tmp_path, "true")
    mode = f"        update_policy: {update_policy}\n" if update_policy else ""
    alice = Identity.generate()
    cas.apply(
        f"""name: {name}
version: "0.3"
services:
  - name: app
    image_name: img
    attestation:
      sim:
        measurement: "{measure(argv)}"
volumes:
  - name: data
    fspf_key: {key.hex()}
    fspf_tag: "{tag0}"
images:
  - name: img
    volumes:
      - name: data
        path: {vol}
{mode}{inject}security:
  attestation:
    tolerate: [simulation]
""",
        alice,
    )
    return Setup(name, argv, vol, key, tag0, alice)


def attest(cas: Cas, s: Setup) -> Release:
    return cas.attest(f"{s.policy}/app", cas.simulated_provider(s.argv), dumpable=True)


def reported(cas: Cas, s: Setup) -> list[tuple[int, str]]:
    """The volume's (generation, tag) the CAS recorded, oldest first."""
    return [
        (int(e.payload["generation"]), str(e.payload["tag"]))
        for e in cas.events(s.policy, s.alice)
        if e.type == "volume-tag"
    ]


def test_mount_write_and_exit_reports_the_new_tag_and_the_next_attest_gets_it(
    cas: Cas, tmp_path: Path
) -> None:
    s = volume_setup(cas, tmp_path, "sdkvol-rw")
    first = attest(cas, s)
    [released] = first.volumes
    assert (released.name, released.directory, released.tag) == ("data", s.vol, s.tag0)
    old_copy = tmp_path / "old-copy"
    shutil.copytree(s.vol, old_copy)
    with cas.mount_volumes(first) as volumes:
        assert isinstance(volumes, VolumeMounts)
        path = volumes.paths["data"]
        assert dict(volumes.environment) == {"CONFIDE_VOLUME_DATA": str(path)}  # as confide run sets it
        assert (path / "notes.txt").read_text() == "first line\n"
        (path / "notes.txt").write_text("first line\nsdk was here\n")
        (path / "new.txt").write_text("new file\n")
        assert volumes.integrity_failure() is None
    _, tag1 = load_sealed(s.vol, s.key)
    assert tag1 != s.tag0
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]  # the new tag reached the CAS
    # the release is spent: its tag is the old one, the directory's is newer
    with pytest.raises(errors.RollbackError), cas.mount_volumes(first):
        pass
    second = attest(cas, s)
    assert second.volumes[0].tag == tag1
    with cas.mount_volumes(second) as volumes:
        path = volumes.paths["data"]
        assert (path / "notes.txt").read_text() == "first line\nsdk was here\n"
        assert (path / "new.txt").read_text() == "new file\n"
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]  # nothing changed: nothing reported
    assert load_sealed(s.vol, s.key)[1] == tag1
    # the operator puts back the old copy: refused before anything is served
    shutil.rmtree(s.vol)
    shutil.copytree(old_copy, s.vol)
    with pytest.raises(errors.RollbackError), cas.mount_volumes(attest(cas, s)):
        pytest.fail("an old copy was mounted")


def test_a_block_that_raises_seals_and_reports_as_confide_run_after_a_failing_program(
    cas: Cas, tmp_path: Path
) -> None:
    s = volume_setup(cas, tmp_path, "sdkvol-raise")
    release = attest(cas, s)
    with pytest.raises(RuntimeError, match="the service failed"), cas.mount_volumes(release) as volumes:
        (volumes.paths["data"] / "partial.txt").write_text("written before the failure\n")
        raise RuntimeError("the service failed")
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0
    with cas.mount_volumes(attest(cas, s)) as volumes:
        assert (volumes.paths["data"] / "partial.txt").read_text() == "written before the failure\n"


def test_an_ephemeral_volumes_changes_are_discarded(cas: Cas, tmp_path: Path) -> None:
    s = volume_setup(cas, tmp_path, "sdkvol-eph", update_policy="ephemeral")
    for _ in range(2):
        release = attest(cas, s)
        assert release.volumes[0].update_policy == "ephemeral"
        with cas.mount_volumes(release) as volumes:
            path = volumes.paths["data"]
            assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]  # the last run left nothing
            (path / "notes.txt").write_text("changed\n")
            (path / "scratch.txt").write_text("scratch\n")
            assert (path / "notes.txt").read_text() == "changed\n"  # writable during the session
    manifest, tag = load_sealed(s.vol, s.key)
    assert tag == s.tag0 and list(manifest.by_path()) == ["notes.txt"]
    assert reported(cas, s) == [(0, s.tag0)]


def test_a_report_the_cas_refuses_raises_its_class_after_sealing(cas: Cas, tmp_path: Path) -> None:
    """A session token the CAS does not know: the volume is sealed (its directory holds the new
    version), the report is refused with AccessDeniedError, as confide run would exit 33; the
    CAS keeps the old tag, so the sealed version is not accepted by the next release."""
    s = volume_setup(cas, tmp_path, "sdkvol-refused")
    forged = dataclasses.replace(attest(cas, s), session="00" * 32)
    with pytest.raises(errors.AccessDeniedError), cas.mount_volumes(forged) as volumes:
        (volumes.paths["data"] / "x.txt").write_text("x\n")
    _, sealed = load_sealed(s.vol, s.key)
    assert sealed != s.tag0
    assert reported(cas, s) == [(0, s.tag0)]
    release = attest(cas, s)
    with pytest.raises(errors.RollbackError), cas.mount_volumes(release):  # not the released tag
        pass


def test_a_tampered_manifest_is_refused_at_mount(cas: Cas, tmp_path: Path) -> None:
    s = volume_setup(cas, tmp_path, "sdkvol-manifest")
    manifest = s.vol / "MANIFEST"
    raw = bytearray(manifest.read_bytes())
    raw[-1] ^= 0x01
    manifest.write_bytes(bytes(raw))
    with pytest.raises(errors.SignatureError), cas.mount_volumes(attest(cas, s)):
        pytest.fail("a tampered volume was mounted")
    assert reported(cas, s) == [(0, s.tag0)]


def test_a_tampered_file_discards_the_session_with_the_runtimes_error(cas: Cas, tmp_path: Path) -> None:
    """One byte of an encrypted file flipped at rest. FUSE verifies lazily: the read fails (EIO),
    the volume reports the integrity failure, and the block's end discards the session's writes
    with SignatureError (confide run's class: exit 21), reporting nothing. tmpfs verifies every
    file before the mount appears: SignatureError at mount."""
    s = volume_setup(cas, tmp_path, "sdkvol-tamper")
    manifest, _ = load_sealed(s.vol, s.key)
    obj = object_path(s.vol, manifest.by_path()["notes.txt"].file_id)
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    obj.write_bytes(bytes(raw))
    release = attest(cas, s)
    if fuse_usable() is not None:
        with pytest.raises(errors.SignatureError), cas.mount_volumes(release):
            pytest.fail("a tampered volume was mounted")
    else:
        failure = r"integrity failure in data:.*notes\.txt"
        with (
            pytest.raises(errors.SignatureError, match=failure) as got,
            cas.mount_volumes(release) as volumes,
        ):
            (volumes.paths["data"] / "log.txt").write_text("started\n")
            with pytest.raises(OSError):
                (volumes.paths["data"] / "notes.txt").read_bytes()
            assert volumes.integrity_failure() == "data:notes.txt"
        assert "service was stopped" not in got.value.message  # nothing was stopped: the block ended
    assert reported(cas, s) == [(0, s.tag0)]
    assert "log.txt" not in load_sealed(s.vol, s.key)[0].by_path()


def test_an_image_contract_without_root_is_a_usage_error(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binding protected paths at their original places needs root: not root, mounting refuses
    with confide run's UsageError and leaves nothing mounted or changed."""
    from confide.runtime import volumes as runtime_volumes
    from confide.volume.mount import _private_namespace

    s = volume_setup(cas, tmp_path, "sdkvol-contract")
    contract = tmp_path / "sconify.json"
    contract.write_text('{"volumes": [{"name": "data", "mounts": [{"path": "/srv/data", "kind": "dir"}]}]}')
    monkeypatch.setenv("CONFIDE_SCONIFY", str(contract))
    if os.geteuid() == 0:  # seen as another user by the runtime's check only (the mount is root's)
        _private_namespace()  # what mount_released does as root: nothing shows outside
        fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        fake.geteuid = lambda: 1000
        monkeypatch.setattr(runtime_volumes, "os", fake)
    release = attest(cas, s)
    with pytest.raises(errors.UsageError, match="original places needs root"), cas.mount_volumes(release):
        pytest.fail("mounted without binding the protected paths")
    assert load_sealed(s.vol, s.key)[1] == s.tag0
    assert reported(cas, s) == [(0, s.tag0)]


def test_write_files_injects_the_release_files_in_memory(cas: Cas, tmp_path: Path) -> None:
    where = Path("/dev/shm") / f"confide-sdkvol-{os.getpid()}-{tmp_path.name}"
    inject = (
        "    injection_files:\n"
        f"      - path: {where}/app.conf\n"
        '        content: "volume key is secret; this is not"\n'
        f"      - path: {where}/ro.conf\n"
        '        content: "read only"\n'
        "        permission: 0o440\n"
    )
    s = volume_setup(cas, tmp_path, "sdkvol-files", inject=inject)
    release = attest(cas, s)
    assert release.modes == {f"{where}/ro.conf": 0o440}  # the policy's permission, released
    try:
        written = release.write_files()
        assert sorted(written) == [where / "app.conf", where / "ro.conf"]
        assert (where / "app.conf").read_text() == "volume key is secret; this is not"
        assert stat.S_IMODE((where / "app.conf").stat().st_mode) == 0o600
        assert (where / "ro.conf").read_text() == "read only"
        assert stat.S_IMODE((where / "ro.conf").stat().st_mode) == 0o440
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if os.geteuid() != 0:  # a path on disk: refused, nothing written
        on_disk = dataclasses.replace(release, files={str(tmp_path / "app.conf"): b"x"})
        with pytest.raises(errors.UsageError, match="persistent storage"):
            on_disk.write_files()
        assert not (tmp_path / "app.conf").exists()


def test_a_mount_point_that_cannot_be_made_is_a_storage_error(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging directory cannot be created (here: a file where its parent should be): one
    StorageError naming it, not an OSError, and nothing changed."""
    from confide.runtime import volumes as runtime_volumes

    s = volume_setup(cas, tmp_path, "sdkvol-staging")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr(runtime_volumes, "STAGING", blocker / "volumes")
    release = attest(cas, s)
    failure = "cannot create the volume's mount point"
    with pytest.raises(errors.StorageError, match=failure), cas.mount_volumes(release):
        pytest.fail("mounted without a mount point")
    assert load_sealed(s.vol, s.key)[1] == s.tag0
    assert reported(cas, s) == [(0, s.tag0)]


@pytest.mark.parametrize("at", ["seal", "report"])
def test_sigint_at_the_blocks_end_is_raised_after_the_new_tag_was_reported(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """A SIGINT right after the volumes were sealed (``seal``) or right before the new tag is
    sent (``report``): the ``KeyboardInterrupt`` used to leave the seal and report step there,
    a sealed volume whose new tag the CAS never heard of. It now comes out of the ``with``
    statement after the report; SIGINT's handler is Python's default again."""
    from confide.runtime.volumes import MountedVolumes

    assert threading.current_thread() is threading.main_thread()
    s = volume_setup(cas, tmp_path, f"sdkvol-sigint-{at}")
    release = attest(cas, s)
    if at == "seal":
        seal = MountedVolumes.seal

        def sealed_then_interrupted(self: MountedVolumes) -> tuple[dict[str, tuple[str, str]], list[str]]:
            result = seal(self)
            signal.raise_signal(signal.SIGINT)
            return result

        monkeypatch.setattr(MountedVolumes, "seal", sealed_then_interrupted)
    else:
        report = cas._client.report_volume_tag

        def interrupted_then_reported(*args: str) -> object:
            signal.raise_signal(signal.SIGINT)
            return report(*args)

        monkeypatch.setattr(cas._client, "report_volume_tag", interrupted_then_reported)
    with pytest.raises(KeyboardInterrupt), cas.mount_volumes(release) as volumes:
        (volumes.paths["data"] / "late.txt").write_text("written before the interrupt\n")
    _, tag1 = load_sealed(s.vol, s.key)
    assert tag1 != s.tag0
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]  # the new tag reached the CAS
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    with cas.mount_volumes(attest(cas, s)) as volumes:  # the next session mounts it
        assert (volumes.paths["data"] / "late.txt").read_text() == "written before the interrupt\n"


def test_mount_volumes_off_the_main_thread_seals_and_reports(cas: Cas, tmp_path: Path) -> None:
    """No SIGINT handler can be set there (``signal.signal`` raises ``ValueError`` off the main
    thread): the block's end seals and reports as it is."""
    s = volume_setup(cas, tmp_path, "sdkvol-thread")
    release = attest(cas, s)
    failures: list[BaseException] = []

    def service() -> None:
        try:
            with cas.mount_volumes(release) as volumes:
                (volumes.paths["data"] / "thread.txt").write_text("from a thread\n")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=service)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and failures == []
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0


class _Seam:
    """A seam at the block's end: ``hook`` called right after the volumes were sealed (``seal``)
    or right before the new tag is sent (``report``); ``done`` gets "reported" after each report."""

    def __init__(self, cas: Cas, monkeypatch: pytest.MonkeyPatch, at: str, hook: Callable[[], None]) -> None:
        from confide.runtime.volumes import MountedVolumes

        self.done: list[str] = []
        seal, report = MountedVolumes.seal, cas._client.report_volume_tag

        def sealed_then_hook(mounted: MountedVolumes) -> tuple[dict[str, tuple[str, str]], list[str]]:
            result = seal(mounted)
            if at == "seal":
                hook()
            return result

        def hook_then_reported(*args: str) -> object:
            if at == "report":
                hook()
            result = report(*args)
            self.done.append("reported")
            return result

        monkeypatch.setattr(MountedVolumes, "seal", sealed_then_hook)
        monkeypatch.setattr(cas._client, "report_volume_tag", hook_then_reported)


@pytest.mark.parametrize("at", ["seal", "report"])
def test_the_applications_sigterm_and_sighup_handlers_run_after_the_report_and_stay_in_place(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """The application's own SIGTERM and SIGHUP handlers: in place during the block and after it;
    a SIGTERM and a SIGHUP sent during the seal reach them once each, after the report."""
    s = volume_setup(cas, tmp_path, f"sdkvol-handlers-{at}")
    release = attest(cas, s)
    calls: list[tuple[int, list[str]]] = []

    def handler(signum: int, _frame: types.FrameType | None) -> None:
        calls.append((signum, list(seam.done)))

    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)

    seam = _Seam(cas, monkeypatch, at, signalled)
    before = signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGHUP, handler)
    try:
        with cas.mount_volumes(release) as volumes:
            assert signal.getsignal(signal.SIGTERM) is handler and signal.getsignal(signal.SIGHUP) is handler
            (volumes.paths["data"] / "late.txt").write_text("written before the signals\n")
        assert calls == [(signal.SIGTERM, ["reported"]), (signal.SIGHUP, ["reported"])]
        assert signal.getsignal(signal.SIGTERM) is handler and signal.getsignal(signal.SIGHUP) is handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0


def test_a_handlers_exception_raised_as_the_hold_begins_comes_after_the_report(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT that arrived in the instant before the hold: Python's handler raises
    ``KeyboardInterrupt`` at the next bytecode boundary, here inside the hold's entry (raised
    there for real). It no longer skips the seal: it comes out after the report."""
    from confide import sdk

    s = volume_setup(cas, tmp_path, "sdkvol-early")
    release = attest(cas, s)
    enter = sdk._HOLD.enter
    first: list[bool] = []

    def interrupted_enter() -> bool:
        if not first:
            first.append(True)
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt from Python's handler
        return enter()

    monkeypatch.setattr(sdk._HOLD, "enter", interrupted_enter)
    with pytest.raises(KeyboardInterrupt), cas.mount_volumes(release) as volumes:
        (volumes.paths["data"] / "late.txt").write_text("written before the interrupt\n")
    assert first == [True]
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_SIGNALLED_CHILD = """
import asyncio, json, os, signal, sys
from confide.runtime.volumes import MountedVolumes
from confide.sdk import AsyncCas, Cas

policy, argv, signame, at, kind = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
signum = getattr(signal, signame)
assert signal.getsignal(signum) is signal.SIG_DFL
cas = Cas.from_env()
release = cas.attest(policy + "/app", cas.simulated_provider(argv), dumpable=True)
seal, report = MountedVolumes.seal, cas._client.report_volume_tag

def sealed(self):
    result = seal(self)
    if at == "seal":
        os.kill(os.getpid(), signum)
        print("signalled", flush=True)
    return result

def reporting(*args):
    if at == "report":
        os.kill(os.getpid(), signum)
        print("signalled", flush=True)
    result = report(*args)
    print("reported", flush=True)
    return result

MountedVolumes.seal = sealed
cas._client.report_volume_tag = reporting
if kind == "sync":
    with cas.mount_volumes(release) as volumes:
        (volumes.paths["data"] / "late.txt").write_text("written before the signal\\n")
else:
    async def main():
        async with AsyncCas(cas).mount_volumes(release) as volumes:
            (volumes.paths["data"] / "late.txt").write_text("written before the signal\\n")
    asyncio.run(main())
print("survived", flush=True)
"""


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("at", ["seal", "report"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_default_sigterm_or_sighup_during_the_seal_ends_the_process_after_the_report(
    cas_proc: CasProcess, cas: Cas, tmp_path: Path, signame: str, at: str, kind: str
) -> None:
    """A process with the default action for SIGTERM (SIGHUP) receives it right after the seal
    (right before the report): it used to die there, the sealed volume's new tag unreported (the
    next mount then refused). Now the tag reaches the CAS first, then the process ends by that
    signal (exit status -15, -1: what a service manager expects), never going on."""
    s = volume_setup(cas, tmp_path, f"sdkvol-{signame.lower()}-{at}-{kind}")
    env = {**os.environ, **cas_proc.env, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    child = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_CHILD, s.policy, json.dumps(s.argv), signame, at, kind],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == -getattr(signal, signame), child.stderr
    assert child.stdout.split() == ["signalled", "reported"], child.stderr
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0
    with cas.mount_volumes(attest(cas, s)) as volumes:  # the next session mounts it
        assert (volumes.paths["data"] / "late.txt").read_text() == "written before the signal\n"


@pytest.fixture(params=["fuse", "tmpfs"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mount mode ``mount_released`` picks (``auto``): FUSE where usable, else tmpfs (as
    root; not root: /dev/shm), forced by making FUSE look unusable."""
    from confide.volume import mount as volume_mount

    if request.param == "fuse" and fuse_usable() is not None:
        pytest.skip(f"FUSE unavailable: {fuse_usable()}")
    if request.param == "tmpfs":
        monkeypatch.setattr(volume_mount, "fuse_usable", lambda: "forced off by the test")
    return str(request.param)


def test_async_mount_write_and_exit_reports_the_new_tag(cas: Cas, tmp_path: Path, mode: str) -> None:
    """``AsyncCas.mount_volumes`` end to end: attest, mount (the loop keeps running: another call
    and a child process of the loop's thread meanwhile), write, seal and report at the block's
    end; the next session sees the files and nothing new is reported when nothing changed."""
    s = volume_setup(cas, tmp_path, f"sdkvol-async-{mode}")
    acas = AsyncCas(cas)

    async def session(write: bool) -> str:
        release = await acas.attest(f"{s.policy}/app", await acas.simulated_provider(s.argv), dumpable=True)
        async with acas.mount_volumes(release) as volumes:
            path = volumes.paths["data"]
            assert dict(volumes.environment) == {"CONFIDE_VOLUME_DATA": str(path)}
            if write:
                (path / "notes.txt").write_text("first line\nasync was here\n")
                events, _ = await asyncio.gather(acas.events(s.policy, s.alice), asyncio.sleep(0))
                assert [e.type for e in events].count("volume-tag") == 1  # only the initial tag yet
            child = await asyncio.create_subprocess_exec(
                "cat", str(path / "notes.txt"), stdout=subprocess.PIPE
            )
            out, _ = await child.communicate()  # the loop's children see the mounts (root: its namespace)
            assert volumes.integrity_failure() is None
            return out.decode()

    assert asyncio.run(session(True)) == "first line\nasync was here\n"
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0
    assert asyncio.run(session(False)) == "first line\nasync was here\n"
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]
    assert load_sealed(s.vol, s.key)[1] == tag1


def test_an_async_session_keeps_the_loops_working_directory(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root the loop's thread joins the volume thread's mount namespace, and setns(2) moves a
    thread's working directory to that namespace's root: it used to be ``/`` from then on, a
    relative path of the block (or of the application after it) resolving from there. It is
    the directory it was, in the block and after it, as with :meth:`Cas.mount_volumes`."""
    s = volume_setup(cas, tmp_path, "sdkvol-async-cwd")
    acas = AsyncCas(cas)
    here = tmp_path / "workdir"
    here.mkdir()
    (here / "config.txt").write_text("relative\n")
    monkeypatch.chdir(here)

    async def session() -> tuple[str, str]:
        release = await acas.attest(f"{s.policy}/app", await acas.simulated_provider(s.argv), dumpable=True)
        async with acas.mount_volumes(release) as volumes:
            inside = os.getcwd(), Path("config.txt").read_text()
            (volumes.paths["data"] / "notes.txt").write_text("changed\n")
        assert (os.getcwd(), Path("config.txt").read_text()) == inside
        return inside

    assert asyncio.run(session()) == (str(here), "relative\n")
    Path("written-after.txt").write_text("x\n")  # in the directory it was, not in /
    assert (here / "written-after.txt").exists()


def test_async_mount_errors_and_refused_reports_raise_as_the_sync_ones(cas: Cas, tmp_path: Path) -> None:
    """A spent release: RollbackError at ``async with``, nothing mounted; a report the CAS
    refuses: its class after the seal, replacing the block's exception."""
    s = volume_setup(cas, tmp_path, "sdkvol-async-errors")
    acas = AsyncCas(cas)
    forged = dataclasses.replace(attest(cas, s), session="00" * 32)

    async def refused() -> None:
        async with acas.mount_volumes(forged) as volumes:
            (volumes.paths["data"] / "x.txt").write_text("x\n")
            raise RuntimeError("the service failed")

    with pytest.raises(errors.AccessDeniedError) as got:
        asyncio.run(refused())
    assert isinstance(got.value.__context__, RuntimeError)
    assert load_sealed(s.vol, s.key)[1] != s.tag0 and reported(cas, s) == [(0, s.tag0)]

    async def spent() -> None:
        async with acas.mount_volumes(forged):
            pytest.fail("a spent release was mounted")

    with pytest.raises(errors.RollbackError):
        asyncio.run(spent())


@pytest.mark.parametrize("when", ["in-block", "seal", "report", "refused"])
def test_a_cancelled_async_session_still_seals_and_reports_then_is_cancelled(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, when: str
) -> None:
    """The task is cancelled while the block awaits (``in-block``: the block raises
    ``CancelledError``), or at the block's end right after the seal (``seal``) or right before
    the report (``report``): the new tag still reaches the CAS, then ``CancelledError`` comes
    out of ``async with``. A report the CAS refuses (``refused``, cancelled after the seal):
    its error, not the ``CancelledError`` (which would hide it), after the seal."""
    s = volume_setup(cas, tmp_path, f"sdkvol-cancel-{when}-{mode}")
    acas = AsyncCas(cas)
    release = attest(cas, s)
    if when == "refused":
        release = dataclasses.replace(release, session="00" * 32)
    loop = asyncio.new_event_loop()
    seen: list[int] = []
    task: asyncio.Task[None] | None = None

    async def cancel_and_let_it_arrive() -> None:
        assert task is not None
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append(task.cancelling())

    def cancelled_from_the_volume_thread() -> None:
        asyncio.run_coroutine_threadsafe(cancel_and_let_it_arrive(), loop).result(30)

    _Seam(cas, monkeypatch, "seal" if when == "refused" else when, cancelled_from_the_volume_thread)

    async def service() -> None:
        async with acas.mount_volumes(release) as volumes:
            (volumes.paths["data"] / "late.txt").write_text("written before the cancellation\n")
            if when == "in-block":
                asyncio.get_running_loop().call_later(0.05, lambda: task.cancel() if task else None)
                await asyncio.sleep(60)
                pytest.fail("not cancelled")

    async def main() -> None:
        nonlocal task
        task = asyncio.ensure_future(service())
        await asyncio.wait({task})

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert task is not None and task.done()
    _, tag1 = load_sealed(s.vol, s.key)
    assert tag1 != s.tag0
    if when == "refused":
        assert isinstance(task.exception(), errors.AccessDeniedError)
        assert reported(cas, s) == [(0, s.tag0)]
        return
    assert task.cancelled()
    if when != "in-block":
        assert seen == [1]  # the cancellation reached the task while it waited for the seal
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]
    monkeypatch.undo()
    with cas.mount_volumes(attest(cas, s)) as volumes:
        assert (volumes.paths["data"] / "late.txt").read_text() == "written before the cancellation\n"


def test_an_async_session_cancelled_while_mounting_is_discarded(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Cancelled while the volume thread mounts: the mount finishes, is unmounted unsealed (the
    block never runs), nothing is reported, and ``CancelledError`` comes out of ``async with``;
    the release's tag is still the volume's, so a new session of a new release mounts it."""
    from confide.runtime import volumes as runtime_volumes

    s = volume_setup(cas, tmp_path, f"sdkvol-cancel-mount-{mode}")
    acas = AsyncCas(cas)
    release = attest(cas, s)
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None
    mount_released = runtime_volumes.mount_released
    staged: list[Path] = []

    async def cancel() -> None:
        assert task is not None
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)

    def mounted_then_cancelled(
        volumes: list[runtime_volumes.VolumeRelease],
    ) -> runtime_volumes.MountedVolumes:
        mounted = mount_released(volumes)
        staged.extend(mounted.paths().values())
        (staged[0] / "never.txt").write_text("not the block's: discarded\n")
        asyncio.run_coroutine_threadsafe(cancel(), loop).result(30)
        return mounted

    monkeypatch.setattr(runtime_volumes, "mount_released", mounted_then_cancelled)

    async def service() -> None:
        async with acas.mount_volumes(release):
            pytest.fail("the block ran")

    async def main() -> None:
        nonlocal task
        task = asyncio.ensure_future(service())
        await asyncio.wait({task})

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert task is not None and task.cancelled()
    assert load_sealed(s.vol, s.key)[1] == s.tag0 and reported(cas, s) == [(0, s.tag0)]
    monkeypatch.undo()
    with cas.mount_volumes(attest(cas, s)) as volumes:
        assert sorted(p.name for p in volumes.paths["data"].iterdir()) == ["notes.txt"]


_ABANDONED_CHILD = """
import asyncio, json, sys
from confide.sdk import AsyncCas, Cas

policy, argv = sys.argv[1], json.loads(sys.argv[2])
cas = Cas.from_env()
release = cas.attest(policy + "/app", cas.simulated_provider(argv), dumpable=True)
loop = asyncio.new_event_loop()
entered = asyncio.Event()

async def service():
    async with AsyncCas(cas).mount_volumes(release) as volumes:
        (volumes.paths["data"] / "abandoned.txt").write_text("the block never ends\\n")
        entered.set()
        await asyncio.sleep(3600)

task = loop.create_task(service())
loop.run_until_complete(entered.wait())
print("entered", flush=True)
"""


def test_an_async_block_abandoned_by_its_loops_thread_is_discarded_at_exit(
    cas_proc: CasProcess, cas: Cas, tmp_path: Path
) -> None:
    """The main thread (the loop's) ends while a task is inside the block and the loop never
    runs again: the block can no longer end. The session's thread (not a daemon: the interpreter
    waits for it) sees its owner gone and discards the session instead of keeping the process
    from exiting forever; nothing is sealed or reported."""
    s = volume_setup(cas, tmp_path, "sdkvol-abandoned")
    env = {**os.environ, **cas_proc.env, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    child = subprocess.run(
        [sys.executable, "-c", _ABANDONED_CHILD, s.policy, json.dumps(s.argv)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["entered"]
    assert load_sealed(s.vol, s.key)[1] == s.tag0 and reported(cas, s) == [(0, s.tag0)]
    with cas.mount_volumes(attest(cas, s)) as volumes:
        assert sorted(p.name for p in volumes.paths["data"].iterdir()) == ["notes.txt"]


def test_sigint_during_an_async_seal_under_asyncio_run_comes_after_the_report(
    cas: Cas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``asyncio.run``'s SIGINT handler (a Python one) is held like Python's default: the new tag
    reaches the CAS, then the handler cancels the main task and ``asyncio.run`` raises
    ``KeyboardInterrupt``; its handler is gone afterwards as usual."""
    s = volume_setup(cas, tmp_path, "sdkvol-async-sigint")
    release = attest(cas, s)
    seam = _Seam(cas, monkeypatch, "seal", lambda: os.kill(os.getpid(), signal.SIGINT))
    after: list[list[str]] = []

    async def session() -> None:
        try:
            async with AsyncCas(cas).mount_volumes(release) as volumes:
                (volumes.paths["data"] / "late.txt").write_text("written before the interrupt\n")
        finally:
            after.append(list(seam.done))
        await asyncio.sleep(5)
        pytest.fail("not interrupted")

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(session())
    assert after == [["reported"]]
    _, tag1 = load_sealed(s.vol, s.key)
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)] and tag1 != s.tag0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(fuse_usable() is not None, reason=f"FUSE unavailable: {fuse_usable()}")
def test_a_stop_signal_to_the_fuse_server_leaves_the_block_its_mount(cas: Cas, tmp_path: Path) -> None:
    """A service manager's stop signals every process of the service, the SDK application's FUSE
    server too: the server ignores SIGTERM, SIGINT and SIGHUP, the block keeps its files and the
    block's end seals and reports (before 2026-12-07 the mount was lost: StorageError, the
    session discarded)."""
    s = volume_setup(cas, tmp_path, "sdkvol-held")
    release = attest(cas, s)
    with cas.mount_volumes(release) as volumes:
        [(_, handle)] = volumes._mounted.handles
        if handle.mode != "fuse":
            pytest.skip(f"mounted via {handle.mode}")
        path = volumes.paths["data"]
        (path / "before.txt").write_text("before\n")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(handle._proc.pid, sig)  # type: ignore[attr-defined]  # ignored: dropped at once
        (path / "after.txt").write_text("after\n")
        assert (path / "notes.txt").read_text() == "first line\n"
        assert volumes._mounted.lost_mount() is None
    manifest, tag1 = load_sealed(s.vol, s.key)
    assert tag1 != s.tag0 and {"before.txt", "after.txt"} <= set(manifest.by_path())
    assert reported(cas, s) == [(0, s.tag0), (1, tag1)]
