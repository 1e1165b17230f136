"""confide.runtime.run: exit status, injection failures, the measured program, malformed releases."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confide.cas import core
from confide.cas.client import CasClient
from confide.errors import ParseError, UsageError
from confide.runtime import run
from confide.runtime.quote import Evidence
from confide.runtime.run import Launch, supervise
from confide.sim.measure import measure_command
from confide.verify.result import Platform


def test_supervise_reports_a_program_killed_by_a_signal_as_128_plus_n() -> None:
    plan = Launch(["/bin/sh", "-c", "kill -KILL $$"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 128 + signal.SIGKILL  # type: ignore[arg-type]  # no volumes: no CAS call
    plan = Launch(["/bin/sh", "-c", "exit 3"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 3  # type: ignore[arg-type]


def test_nothing_is_written_when_a_later_path_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, disk = tmp_path / "shm" / "secret", tmp_path / "disk" / "app.conf"
    monkeypatch.setattr(run, "is_memory_backed", lambda p, **_k: p == memory)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="would land on persistent storage"):
        run._write_files({str(memory): b"s3cret", str(disk): b"other"})
    assert not memory.exists() and not disk.exists()


def test_a_failed_write_removes_the_files_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: True)
    first = tmp_path / "a"
    (tmp_path / "dir").mkdir()  # a directory where the second file goes: its write fails
    (tmp_path / "dir" / "sub").mkdir()
    with pytest.raises(UsageError, match=r"injection file .*dir: cannot write it: Is a directory"):
        run._write_files({str(first): b"s3cret", str(tmp_path / "dir"): b"x"})
    assert not first.exists()


def test_injected_files_are_removed_when_the_program_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: True)
    secret = tmp_path / "secret"
    plan = Launch(["no-such-program-xyz"], {"PATH": str(tmp_path)}, {str(secret): b"s3cret"}, None)
    with pytest.raises(UsageError, match="not found on PATH"):
        run.launch(plan)
    assert not secret.exists()
    with pytest.raises(UsageError, match="not found on PATH"):
        supervise(plan, None)  # type: ignore[arg-type]
    assert not secret.exists()

    def refuse() -> None:
        raise UsageError("not ready")

    ok = Launch(["/bin/true"], {}, {str(secret): b"s3cret"}, None)
    with pytest.raises(UsageError, match="not ready"):
        run.launch(ok, before_exec=refuse)
    assert not secret.exists()


def _prog(directory: Path, marker: Path, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    prog = directory / "prog"
    prog.write_text(f"#!/bin/sh\necho {text} > {marker}\n")
    prog.chmod(0o755)


def test_the_measured_program_runs_not_another_found_with_the_released_path_or_pwd(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    measured_dir, other_dir = tmp_path / "measured", tmp_path / "other"
    _prog(measured_dir, marker, "measured")
    _prog(other_dir, marker, "other")
    # measured with one PATH; the release sets another one that names another file "prog"
    measured = measure_command(["prog"], search_path=str(measured_dir), cwd=tmp_path)
    plan = Launch(["prog"], {"PATH": f"{other_dir}:/bin:/usr/bin"}, {}, None, measured=measured)
    assert supervise(plan, None) == 0  # type: ignore[arg-type]
    assert marker.read_text() == "measured\n"
    # measured as ./prog in one directory; the release's pwd holds another ./prog
    measured = measure_command(["./prog"], cwd=measured_dir)
    plan = Launch(["./prog"], {"PATH": "/bin:/usr/bin"}, {}, str(other_dir), measured=measured)
    assert supervise(plan, None) == 0  # type: ignore[arg-type]
    assert marker.read_text() == "measured\n"


def test_a_program_name_is_not_looked_up_in_the_hosts_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prog(tmp_path / "host", tmp_path / "ran", "host")
    monkeypatch.setenv("PATH", f"{tmp_path / 'host'}:{os.defpath}")
    with pytest.raises(UsageError, match="not found on PATH"):
        run._resolve("prog", {})  # the release sets no PATH: the default search path applies
    assert run._resolve("prog", {"PATH": str(tmp_path / "host")}) == str(tmp_path / "host" / "prog")
    assert run._resolve("sh", {}) in ("/bin/sh", "/usr/bin/sh")


class _HostileCas:
    """A CAS client whose answers are given: the release is encrypted to the runtime's key
    exactly as confide.cas.core does it, so only its content is hostile."""

    def __init__(self, config: Any, nonce: Any = "00" * 16) -> None:
        self.config, self.nonce_answer = config, nonce

    def nonce(self) -> Any:
        return self.nonce_answer

    def attest(self, request: dict[str, Any]) -> dict[str, Any]:
        runtime_der = base64.b64decode(request["public_key"])
        runtime_key = serialization.load_der_public_key(runtime_der)
        assert isinstance(runtime_key, ec.EllipticCurvePublicKey)
        eph = ec.generate_private_key(ec.SECP256R1())
        eph_der = core._spki(eph.public_key())
        key = core._release_key_der(
            eph.exchange(ec.ECDH(), runtime_key), eph_der, runtime_der, bytes.fromhex(request["nonce"])
        )
        iv = os.urandom(12)
        ciphertext = AESGCM(key).encrypt(iv, json.dumps(self.config).encode(), core.RELEASE_INFO)
        return {"cas_key": base64.b64encode(eph_der).decode(), "iv": base64.b64encode(iv).decode(),
                "ciphertext": base64.b64encode(ciphertext).decode()}  # fmt: skip


class _Provider:
    def get_evidence(self, report_data: bytes) -> Evidence:
        return Evidence(platform=Platform.SIMULATED, raw=report_data, provider="test")


def _prepare(config: Any, nonce: Any = "00" * 16) -> Launch:
    return run.attest_and_prepare(_HostileCas(config, nonce), _Provider(), "p", "s", ["/bin/true"])  # type: ignore[arg-type]


def test_a_well_formed_release_is_taken_as_given() -> None:
    plan = _prepare({"command": None, "environment": {"A": "b"}, "files": {"/dev/shm/x": "eA=="}, "pwd": "/"})
    assert plan.argv == ["/bin/true"] and plan.environment == {"A": "b"}
    assert plan.files == {"/dev/shm/x": b"x"} and plan.pwd == "/"


def test_the_secrets_in_the_released_command_are_named_for_the_warning() -> None:
    """The CAS names the secrets its command's placeholders put into the arguments
    (``command_secrets``, names only): confide run warns about them before exec. Without the
    policy's command (the caller's runs) there are none; a CAS that does not say, none."""
    config = {"command": ["/bin/true", "s3cret"], "command_secrets": ["pw", "cert"]}
    release = run.attest_release(_HostileCas(config), _Provider(), "p", "s")  # type: ignore[arg-type]
    assert release.command_secrets == ("pw", "cert") and _prepare(config).command_secrets == ("pw", "cert")
    assert _prepare({"command": None, "command_secrets": ["pw"]}).command_secrets == ()
    assert _prepare({"command": ["/bin/true"]}).command_secrets == ()


def test_the_session_token_is_in_no_repr_of_the_release_or_the_launch() -> None:
    """The session token is a bearer credential (it reports the session's volume tags; the CAS
    keeps only its SHA-256): neither the SDK's Release nor confide run's Launch shows it."""
    token = "5e" * 32
    config = {"command": None, "environment": {"A": "s3cret"}, "files": {}, "session": token}
    release = run.attest_release(_HostileCas(config), _Provider(), "p", "s")  # type: ignore[arg-type]
    plan = _prepare(config)
    assert release.session == token and plan.session == token
    for shown in (repr(release), str(release), repr(plan), str(plan)):
        assert token not in shown and "s3cret" not in shown


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"command": "/bin/sh"}, "command"),  # a string was run as ["/", "b", "i", ...]
        ({"command": ["/bin/sh", 1]}, "command"),
        ({"command": ["/bin/sh", "-c", "s3cret\0"]}, "command"),  # execve: ValueError
        ({"environment": {"A": {"nested": 1}}}, "environment"),  # was str()-ed into the environment
        ({"environment": ["A"]}, "environment"),
        ({"environment": {"A": "s3cret\0x"}}, "environment"),
        ({"environment": {"A=B": "x"}}, "environment"),  # execve: ValueError
        ({"environment": {"": "x"}}, "environment"),
        ({"files": {"/dev/shm/x": "eA==!"}}, None),  # invalid characters were dropped: b"x"
        ({"files": {"/dev/shm/x\0": "eA=="}}, "files"),
        ({"pwd": ["/"]}, "pwd"),
        ({"session": 5}, "session"),
        ({"command": ["/bin/true"], "command_secrets": "pw"}, "command_secrets"),
    ],
)
def test_a_malformed_release_is_a_parse_error_naming_the_field_not_the_value(
    config: Any, field: str | None
) -> None:
    with pytest.raises(ParseError, match="release") as info:
        _prepare(config)
    assert "s3cret" not in str(info.value)
    if field is not None:
        assert f"field {field}" in str(info.value)


@pytest.mark.parametrize("answer", ["not hex", 5, None])
def test_a_malformed_nonce_is_a_parse_error(answer: Any) -> None:
    with pytest.raises(ParseError, match="nonce"):
        _prepare({}, nonce=answer)


def test_the_clients_nonce_answer_must_be_an_object_with_a_string(monkeypatch: pytest.MonkeyPatch) -> None:
    client = CasClient(
        "http://127.0.0.1:1", None, plain_http_for_tests=True
    )  # never connects: _call is replaced
    for answer in ([], {}, {"nonce": 5}):
        monkeypatch.setattr(client, "_call", lambda *_a, answer=answer, **_k: answer)
        with pytest.raises(ParseError, match="nonce"):
            client.nonce()
    monkeypatch.setattr(client, "_call", lambda *_a, **_k: {"nonce": "ab"})
    assert client.nonce() == "ab"
    client.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_is_memory_backed_tells_tmpfs_from_other_file_systems() -> None:
    assert run.is_memory_backed(Path("/dev/shm/x"))
    assert not run.is_memory_backed(Path("/proc/x"))  # proc
    assert not run.is_memory_backed(Path("/no-such-dir/x"))


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_symlink_planted_at_a_parent_after_the_check_does_not_redirect_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if run.is_memory_backed(disk / "x"):
        pytest.skip("tmp_path is on a memory file system")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        app = shm / "app"
        checked = run.is_memory_backed

        def racing(path: Path, **kwargs: Any) -> bool:
            answer = checked(path, **kwargs)
            # another process swaps the (checked, memory-backed) directory for a link to a disk
            app.rename(shm / "app.old")
            app.symlink_to(disk)
            return answer

        monkeypatch.setattr(run, "is_memory_backed", racing)
        run._write_files({str(app / "secret"): b"s3cret"})
        assert not (disk / "secret").exists()
        assert (shm / "app.old" / "secret").read_bytes() == b"s3cret"
    finally:
        shutil.rmtree(shm)


# prctl option 3: PR_GET_DUMPABLE (<linux/prctl.h>)
_DUMPABLE_CHILD = """
import ctypes, sys
from confide.runtime import run

class Client:  # stops the run at its first CAS call, reporting whether the process is dumpable
    def nonce(self):
        sys.exit(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))

run.attest_and_prepare(Client(), None, "p", "s", ["/bin/true"])
"""


def test_the_runtime_is_not_dumpable_before_it_holds_a_key_or_a_secret() -> None:
    src = str(Path(run.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    child = subprocess.run([sys.executable, "-c", _DUMPABLE_CHILD], env=env, check=False, timeout=60)
    assert child.returncode == 0  # PR_GET_DUMPABLE: 0
    # the program it executes is dumpable again (execve resets it)
    code = "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    plan = Launch([sys.executable, "-c", code], {}, {}, None)
    assert supervise(plan, None) == 1  # type: ignore[arg-type]


_RELOAD_CHILD = """
import os, pathlib, signal, sys, threading, time
from confide.runtime.run import Launch, supervise

ready = pathlib.Path(sys.argv[1])
script = f'trap "exit 5" HUP; touch {ready}; for i in $(seq 200); do sleep 0.05; done; exit 9'
plan = Launch(["/bin/sh", "-c", script], {"PATH": "/bin:/usr/bin"}, {}, None)

def reload():
    while not ready.exists():
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGHUP)  # e.g. a service manager's "reload"

threading.Thread(target=reload, daemon=True).start()
print(supervise(plan, None))
"""


def test_supervise_passes_a_reload_signal_on_to_the_program(tmp_path: Path) -> None:
    src = str(Path(run.__file__).resolve().parents[2])
    child = subprocess.run(
        [sys.executable, "-c", _RELOAD_CHILD, str(tmp_path / "ready")],
        env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert (child.returncode, child.stdout) == (0, "5\n"), child.stderr


@pytest.mark.parametrize("mode", ["launch", "supervise"])
def test_a_missing_working_directory_is_named_as_such(tmp_path: Path, mode: str) -> None:
    plan = Launch(["/bin/true"], {}, {}, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"cannot change to the service's working directory .*missing"):
        run.launch(plan) if mode == "launch" else supervise(plan, None)  # type: ignore[arg-type]


def test_a_partial_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret"
    real_write = os.write

    def full_after_some(fd: int, data: Any) -> int:
        if real_write(fd, bytes(data[:3])) and fd > 2:
            raise OSError(28, "No space left on device")
        return 3

    monkeypatch.setattr(os, "write", full_after_some)
    with pytest.raises(OSError, match="No space left"):
        run._write_private(target, b"s3cret-value")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # neither the file nor its staged copy


_SHOW_SIGNALS = ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]  # no shell: sh clears the mask


@pytest.mark.parametrize("how", ["launch", "supervise"])
def test_the_program_gets_default_signal_dispositions_and_an_empty_mask(how: str) -> None:
    """Ignored signals and the signal mask survive execve(2). Python ignores SIGPIPE and SIGXFSZ
    for itself: the exec'd program (``launch``, confide run without volumes) got them ignored, so
    a pipeline in it (``producer | head``) never ended its producer by SIGPIPE. A mask
    ``confide run`` was started with (here SIGUSR1 and SIGTERM blocked) must not reach the
    program either: it must see the signals it is sent (confide run forwards them)."""
    code = (
        "import signal, sys\n"
        "from confide.runtime.run import Launch, launch, supervise\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGTERM])\n"
        f"plan = Launch({_SHOW_SIGNALS!r}, {{'PATH': '/bin:/usr/bin'}}, {{}}, None)\n"
        f"sys.exit(supervise(plan, None)) if {how == 'supervise'!r} else launch(plan)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(run.__file__).parents[2])}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    # What the caller ignores on purpose (nohup's SIGHUP; here whatever this test process was
    # started with, which the child inherits) stays ignored; Python's own SIGPIPE and SIGXFSZ
    # (subprocess resets them for the child, which ignores them again at start) must not reach
    # the program.
    pythons = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    ours = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("SigIgn:"))
    expected_ignored = int(ours.split()[1], 16) & ~pythons
    assert r.stdout.split()[:3] == ["SigBlk:", "0" * 16, "SigIgn:"]
    assert int(r.stdout.split()[3], 16) == expected_ignored


def test_an_exec_failing_otherwise_than_oserror_gives_python_its_signal_settings_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """launch() sets SIGPIPE and SIGXFSZ to their default and empties the mask just before the
    exec; an exec that raises anything (not only OSError: a ValueError for a NUL, or a test's
    stand-in) must put Python's settings back. Left at SIG_DFL, a later write to a closed pipe
    killed this process by SIGPIPE (a pytest worker crashed so, in a FUSE test after the NVIDIA
    test that replaces execve)."""

    class Stop(Exception):
        pass

    def refusing_execve(*_: object) -> None:
        raise Stop

    monkeypatch.setattr(os, "execve", refusing_execve)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        with pytest.raises(Stop):
            run.launch(run.Launch(["/bin/true"], {"PATH": "/bin:/usr/bin"}, {}, None))
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
