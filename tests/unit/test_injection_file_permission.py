"""An injection file's ``permission`` (SCONE v0.3.10, ``injection_files: - path: ...
permission: 0o100``): validated at load time with line and column, warned about when group or
others may read, released by the CAS and applied by the runtime when it creates the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from confide.errors import ParseError, PolicyError
from confide.policy import loads_policy, policy_hash, policy_warnings
from confide.policy.model import DEFAULT_FILE_MODE, injection_file_warning
from confide.runtime import run


def _policy(entry: str) -> str:
    return f"""version: "0.3"
name: p
services:
  - name: svc
    image_name: img
    command: app
    attestation: {{sim: {{measurement: "{"00" * 32}"}}}}
images:
  - name: img
    injection_files:
      - path: /dev/shm/app.conf
        content: "x=1"
{entry}
security:
  attestation:
    tolerate: [simulation]
"""


@pytest.mark.parametrize(("written", "mode"), [("0o600", 0o600), ("0o400", 0o400), ("0o700", 0o700)])
def test_scones_octal_syntax_gives_the_mode(written: str, mode: int) -> None:
    policy = loads_policy(_policy(f"        permission: {written}"))
    [f] = policy.images[0].injection_files
    assert f.permission == mode and f.mode == mode
    assert policy_warnings(policy) == ()


def test_without_permission_the_mode_is_0600_and_the_hash_unchanged() -> None:
    plain = loads_policy(_policy(""))
    assert plain.images[0].injection_files[0].mode == DEFAULT_FILE_MODE == 0o600
    assert "permission" not in plain.model_dump(exclude_defaults=True)["images"][0]["injection_files"][0]
    # an explicit permission is part of the policy (and of its hash)
    assert policy_hash(loads_policy(_policy("        permission: 0o600"))) != policy_hash(plain)


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("0o620", "group or others could write the secret file"),
        ("0o602", "group or others could write the secret file"),
        ("0o666", "group or others could write the secret file"),
        ("0o100", "its owner could not read the file"),
        ("0o200", "its owner could not read the file"),
        ("0o4600", "expected permission bits 0o000 to 0o777"),
        ("0600", r"got 600 \(0o1130\), expected permission bits 0o000 to 0o777 written in octal"),
        ("-1", "expected permission bits"),
        ('"0o600"', "got string '0o600', expected an integer"),
        ("true", "got boolean True, expected an integer"),
    ],
)
def test_a_bad_permission_is_refused_with_line_and_column(written: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why) as info:
        loads_policy(_policy(f"        permission: {written}"))
    assert "<policy>:13:21: images[0].injection_files[0].permission" in str(info.value)


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        loads_policy(_policy("        mode: 0o600"))
    assert "<policy>:13:9: images[0].injection_files[0].mode: got unknown key 'mode'" in str(info.value)
    with pytest.raises(PolicyError, match="got unknown key 'owner'"):  # SCONE has no owner either
        loads_policy(_policy("        owner: 0"))


@pytest.mark.parametrize(("written", "who"), [("0o640", "file's group"), ("0o644", "every local user")])
def test_group_or_other_read_is_allowed_with_a_warning(written: str, who: str) -> None:
    policy = loads_policy(_policy(f"        permission: {written}"))
    mode = int(written, 8)
    assert policy_warnings(policy) == (injection_file_warning("img", "/dev/shm/app.conf", mode),)
    assert who in policy_warnings(policy)[0] and written in policy_warnings(policy)[0]


@pytest.mark.parametrize(
    ("written", "who"),
    [
        ("0o750", "file's group"),
        ("0o740", "file's group"),
        ("0o741", "file's group"),
        ("0o714", "every local user"),
    ],
)
def test_read_is_what_is_warned_about_whatever_the_execute_bits(written: str, who: str) -> None:
    """The warning's ``who`` follows the read bits: ``0o741`` lets others execute the file but
    only the group read it."""
    policy = loads_policy(_policy(f"        permission: {written}"))
    [warning] = policy_warnings(policy)
    assert warning == injection_file_warning("img", "/dev/shm/app.conf", int(written, 8))
    assert f"{who} can read" in warning


@pytest.mark.parametrize("written", ["0o710", "0o701", "0o711", "0o500", "0o700"])
def test_execute_only_for_group_or_others_is_not_warned_about(written: str) -> None:
    """Execute without read reveals nothing of the file's contents (docs/policy.md "Injection
    files"): accepted, with no warning from ``policy apply``, the SDK or the web page (all
    :func:`policy_warnings`)."""
    policy = loads_policy(_policy(f"        permission: {written}"))
    assert policy.images[0].injection_files[0].mode == int(written, 8)
    assert policy_warnings(policy) == ()


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o640, 0o750, 0o710])
def test_the_runtime_creates_the_file_with_the_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: True)
    old = os.umask(0o077)  # the mode is the policy's whatever the umask
    try:
        target, other = tmp_path / "a.conf", tmp_path / "b.conf"
        run._write_files({str(target): b"secret", str(other): b"other"}, {str(target): mode})
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode and target.read_bytes() == b"secret"
    assert stat.S_IMODE(other.stat().st_mode) == 0o600


def test_the_mode_is_set_before_any_byte_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is created empty under a random name, given its mode, then filled and renamed:
    no moment at which the content sits in a file of another mode, or at its path half-written."""
    seen: list[tuple[int, int]] = []
    real_write = os.write

    def spy(fd: int, data: object) -> int:
        st = os.fstat(fd)
        seen.append((stat.S_IMODE(st.st_mode), st.st_size))
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "is_memory_backed", lambda _p, **_k: True)
    monkeypatch.setattr(os, "write", spy)
    target = tmp_path / "c.conf"
    run._write_files({str(target): b"s3cret"}, {str(target): 0o400})
    assert seen and seen[0] == (0o400, 0)
    assert stat.S_IMODE(target.stat().st_mode) == 0o400


@pytest.mark.parametrize(
    "modes", [[], {"/x": 0o622}, {"/x": 0o1600}, {"/x": 0o200}, {"/x": "0o600"}, {"/x": True}]
)
def test_the_runtime_refuses_a_release_with_a_bad_mode(modes: object) -> None:
    with pytest.raises(ParseError, match="modes"):
        run._modes(modes)


def test_the_runtime_reads_good_modes() -> None:
    assert run._modes(None) == {}
    assert run._modes({"/x": 0o600, "/y": 0o644}) == {"/x": 0o600, "/y": 0o644}
