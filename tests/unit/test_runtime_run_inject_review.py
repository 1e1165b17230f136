"""confide.runtime.run, reviewed adversarially: injected files replace what the host left at
their paths (never written into it), failures are one-line confide errors, a persistent path's
bind mount cannot be redirected, signals reach a program being started, the release's
secrets stay out of reprs and template errors and are not expanded again, and the CAS client
survives a malformed Retry-After."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from test_runtime_run_review import _prepare

from confide.cas.client import CasClient
from confide.cas.secrets import SecretValue, template_value
from confide.errors import ParseError, PolicyError, StorageError, UsageError
from confide.runtime import run
from confide.runtime.run import Launch

SRC = str(Path(run.__file__).resolve().parents[2])


@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory on a memory file system (tmpfs), where injected files are written in place."""
    if not os.path.isdir("/dev/shm") or not run.is_memory_backed(Path("/dev/shm/x")):
        pytest.skip("no tmpfs at /dev/shm")
    directory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".confide-inject-")]


def test_an_existing_file_is_replaced_never_written_into(shm: Path) -> None:
    # the host left a file at the path and keeps a way to read that very file: a descriptor
    # opened on it and another hard link; the secret must reach neither
    target = shm / "app.conf"
    target.write_bytes(b"host's")
    target.chmod(0o644)
    (shm / "host-link").hardlink_to(target)
    fd = os.open(target, os.O_RDONLY)
    try:
        run._write_files({str(target): b"s3cret"})
        assert os.pread(fd, 100, 0) == b"host's"
    finally:
        os.close(fd)
    assert (shm / "host-link").read_bytes() == b"host's"
    assert target.read_bytes() == b"s3cret" and target.stat().st_mode & 0o777 == 0o600
    assert target.stat().st_nlink == 1 and _leftovers(shm) == []


def test_a_symlink_at_the_path_is_replaced_not_followed(shm: Path, tmp_path: Path) -> None:
    disk = tmp_path / "elsewhere.conf"
    (shm / "app.conf").symlink_to(disk)
    run._write_files({str(shm / "app.conf"): b"s3cret"})
    assert not disk.exists()  # nothing was written where the link pointed
    assert not (shm / "app.conf").is_symlink() and (shm / "app.conf").read_bytes() == b"s3cret"


def test_a_failed_write_keeps_the_existing_file_and_is_a_storage_error(
    shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = shm / "app.conf"
    target.write_bytes(b"host's")
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if fd > 2:
            real_write(fd, bytes(data[:3]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(
        StorageError, match=r"injection file .*app.conf: cannot write it: No space left"
    ) as info:
        run._write_files({str(target): b"s3cret-value"})
    monkeypatch.undo()
    assert "s3cret" not in str(info.value)
    assert target.read_bytes() == b"host's" and _leftovers(shm) == []


def test_what_the_path_names_is_a_usage_error_not_a_traceback(shm: Path) -> None:
    (shm / "dir" / "sub").mkdir(parents=True)  # a non-empty directory where the file goes
    (shm / "file").write_text("")  # a file where a directory is needed
    with pytest.raises(UsageError, match=r"injection file .*dir: cannot write it: Is a directory"):
        run._write_files({str(shm / "a"): b"s3cret", str(shm / "dir"): b"x"})
    assert not (shm / "a").exists()  # the one already written was removed
    with pytest.raises(UsageError, match=r"injection file .*file/x: cannot create or open its directory"):
        run._write_files({str(shm / "file" / "x"): b"s3cret"})
    assert _leftovers(shm) == [] and _leftovers(shm / "dir") == []


_REDIRECT_CHILD = """
import os, sys
from pathlib import Path
from confide.runtime import run

base = Path(sys.argv[1])
run.INJECT_STAGING = base / "staging"
target, decoy = base / "app.conf", base / "decoy.conf"
target.write_text("host's")
decoy.write_text("decoy")
real_bind = run.bind_mount

def racing_bind(source, where):
    # after the target was checked, the host swaps it for a symlink to another file
    target.rename(base / "app.conf.checked")
    target.symlink_to(decoy)
    real_bind(source, where)

run.bind_mount = racing_bind
assert not run.is_memory_backed(target)  # served from the private tmpfs
run._write_files({str(target): b"s3cret"})
# read in the private mount namespace the program would inherit
print((base / "decoy.conf").read_text(), (base / "app.conf.checked").read_text())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="binding over a persistent path needs root (CAP_SYS_ADMIN)")
def test_a_symlink_swapped_in_after_the_check_does_not_redirect_the_bind_mount(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _REDIRECT_CHILD, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["decoy", "s3cret"]  # the checked file got the content, not the decoy
    assert (tmp_path / "decoy.conf").read_text() == "decoy"  # outside the namespace: nothing changed
    assert (tmp_path / "app.conf.checked").read_text() == "host's"


_EARLY_SIGNAL_CHILD = """
import os, pathlib, signal, subprocess, sys, time
from confide.runtime import run
from confide.runtime.run import Launch, supervise

ready = pathlib.Path(sys.argv[1])
real_popen = subprocess.Popen

def popen_then_signal(*args, **kwargs):
    proc = real_popen(*args, **kwargs)
    while not ready.exists():  # the program's trap is installed
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGUSR1)  # arrives while supervise is still starting the program
    return proc

run.subprocess.Popen = popen_then_signal
script = f'trap "exit 5" USR1; touch {ready}; for i in $(seq 400); do sleep 0.05; done; exit 9'
print(supervise(Launch(["/bin/sh", "-c", script], {"PATH": "/bin:/usr/bin"}, {}, None), None))
"""


def test_a_signal_arriving_while_the_program_starts_is_passed_on(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _EARLY_SIGNAL_CHILD, str(tmp_path / "ready")],
        env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    # before: the default action of SIGUSR1 stopped confide run itself (-10), the program ran on
    assert (child.returncode, child.stdout) == (0, "5\n"), child.stderr


def test_a_launch_plan_never_shows_the_released_secrets() -> None:
    plan = Launch(
        ["/bin/app", "--token=s3cret-arg"], {"TOKEN": "s3cret-env"}, {"/dev/shm/k": b"s3cret-file"}, None
    )
    assert "s3cret" not in repr(plan) and "s3cret" not in str(plan)


def test_a_template_path_with_nul_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="field templates"):
        run.render_templates({"paths": [f"{tmp_path}/a\0b"], "secrets": {}})
    with pytest.raises(ParseError, match="template list is malformed"):
        run.render_templates({"paths": str(tmp_path / "a"), "secrets": {}})  # a string, not a list


def test_a_template_over_something_else_than_a_file_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "app.conf"
    os.mkfifo(fifo)  # read as before, it would wait for a writer for ever
    with pytest.raises(StorageError, match="not a regular file"):
        run.render_templates({"paths": [str(fifo)], "secrets": {}})


def test_a_malformed_secret_value_in_a_template_is_a_parse_error(tmp_path: Path) -> None:
    template = tmp_path / "app.conf"
    template.write_text("key=$$SCONE::pub:der$$\n")
    secret = template_value(SecretValue("public-key", b"not a PEM public key s3cret"))
    with pytest.raises(ParseError, match=r"\$\$SCONE::pub\$\$: malformed value") as info:
        run.render_templates({"paths": [str(template)], "secrets": {"pub": secret}})
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("retry_after", [b"\xb2", b"\xd9\xa3", b"1e3", b"-1", b""])
def test_a_malformed_retry_after_waits_one_second_not_a_traceback(retry_after: bytes) -> None:
    # RFC 9110 §10.2.3 delay-seconds is 1*DIGIT (ASCII); "²" passed str.isdigit and float() raised
    answers = [
        httpx2.Response(429, headers=[(b"Retry-After", retry_after)]),
        httpx2.Response(200, json={"nonce": "ab"}),
    ]
    waits: list[float] = []
    client = CasClient("http://cas.test", None, plain_http_for_tests=True, sleep=waits.append)
    client.http = httpx2.Client(base_url=client.url, transport=httpx2.MockTransport(lambda _: answers.pop(0)))
    with client:
        assert client.nonce() == "ab"
    assert waits == [1.0]


def test_placeholders_in_released_values_are_not_expanded_again(tmp_path: Path) -> None:
    # the CAS substitutes once; a value that spells a placeholder reaches the program as it is,
    # in the command, the environment and injected files; a template rendered at start that
    # would spell one is refused (on a tmpfs its rendering replaces it, so the next start would
    # render that and expand the value: test_runtime_templates)
    spelled = "$$SCONE::other$$"
    release = {
        "command": ["/bin/true", spelled],
        "environment": {"A": spelled},
        "files": {"/dev/shm/f": "JCRTQ09ORTo6b3RoZXIkJA=="},
    }
    plan = _prepare(release)
    assert plan.argv == ["/bin/true", spelled] and plan.environment == {"A": spelled}
    assert plan.files == {"/dev/shm/f": spelled.encode()}
    template = tmp_path / "app.conf"
    template.write_text("a=$$SCONE::token$$\n")
    value = template_value(SecretValue("ascii", spelled.encode()))
    with pytest.raises(PolicyError, match="would spell"):
        run.render_templates({"paths": [str(template)], "secrets": {"token": value, "other": value}})


_INHERIT_CHILD = """
import os, sys
from confide.runtime.run import Launch, launch

fd = os.open(sys.argv[1], os.O_RDONLY)
os.set_inheritable(fd, True)  # as the host may pass a descriptor to confide run
script = f'test -e /proc/self/fd/{fd} && exit 7; exit 0'
launch(Launch(["/bin/sh", "-c", script], {"PATH": "/bin:/usr/bin"}, {}, None))
"""


def test_the_program_gets_no_descriptor_beyond_stderr_from_the_host(tmp_path: Path) -> None:
    host_file = tmp_path / "host"
    host_file.write_text("host's")
    child = subprocess.run(
        [sys.executable, "-c", _INHERIT_CHILD, str(host_file)],
        env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr  # 7: the host's descriptor reached the program


_STAGING_CHILD = """
import os, sys
from pathlib import Path
from confide.errors import StorageError
from confide.runtime import run

base, host_dir = Path(sys.argv[1]), Path(sys.argv[2])
# another user renamed the staging directory (its tmpfs went with it) and put its own in place,
# on a memory file system, with a file of its own where the first injected file is staged
run.INJECT_STAGING = host_dir
run.mount_tmpfs_at = lambda path, opts: None
target = base / "app.conf"
try:
    run._write_files({str(target): b"s3cret"})
    print("written")
except StorageError as exc:
    print("refused:", exc.message)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="binding over a persistent path needs root (CAP_SYS_ADMIN)")
def test_a_staging_directory_that_is_not_the_fresh_tmpfs_gets_nothing(tmp_path: Path, shm: Path) -> None:
    host_dir = shm / "staging"
    host_dir.mkdir(mode=0o777)
    (host_dir / "0").write_text("host's")
    (host_dir / "0").chmod(0o666)
    os.chown(host_dir, 1000, 1000)
    os.chown(host_dir / "0", 1000, 1000)
    child = subprocess.run(
        [sys.executable, "-c", _STAGING_CHILD, str(tmp_path), str(host_dir)],
        env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("refused:") and "is not the tmpfs just mounted there" in child.stdout
    assert (host_dir / "0").read_text() == "host's" and sorted(os.listdir(host_dir)) == ["0"]
