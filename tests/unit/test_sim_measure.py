from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from confide.errors import UsageError
from confide.sim.measure import canonical_json, measure_command, measure_current_process, resolve_command

SH = os.path.realpath(shutil.which("sh") or "/bin/sh")


def _exe(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


@pytest.fixture
def interp(tmp_path: Path) -> Path:
    """A private copy of the system shell, used as a #! interpreter."""
    return _exe(tmp_path / "bin" / "myshell", Path(SH).read_bytes())


@pytest.fixture
def script(tmp_path: Path, interp: Path) -> Path:
    return _exe(tmp_path / "app.sh", f"#!{interp}\necho hello\n".encode())


def test_same_program_gives_the_same_measurement(script: Path, tmp_path: Path) -> None:
    a = measure_command([str(script), "x"], cwd=tmp_path)
    b = measure_command([str(script), "x"], cwd=tmp_path)
    assert a.hex == b.hex
    assert len(a.digest) == 48
    assert a.hex == a.hex.lower()


def test_measurement_is_sha384_of_the_canonical_manifest(script: Path, tmp_path: Path) -> None:
    m = measure_command([str(script), "--flag", "ä"], cwd=tmp_path)
    assert m.digest == hashlib.sha384(canonical_json(m.manifest)).digest()
    assert m.manifest == {
        "kind": "confide-sim-measurement",
        "version": 1,
        "program": "app.sh",
        "args": ["--flag", "ä"],
        "chain": [
            {"role": "program", "sha384": hashlib.sha384(script.read_bytes()).hexdigest()},
            {"role": "interpreter", "sha384": hashlib.sha384(Path(SH).read_bytes()).hexdigest()},
        ],
        "files": [],
    }
    assert b"\\u00e4" in canonical_json(m.manifest)


def test_one_byte_change_in_the_script_changes_it(script: Path, tmp_path: Path) -> None:
    before = measure_command([str(script)], cwd=tmp_path).hex
    script.write_bytes(script.read_bytes().replace(b"hello", b"hellp"))
    assert measure_command([str(script)], cwd=tmp_path).hex != before


def test_one_byte_change_in_the_interpreter_path_changes_it(
    script: Path, interp: Path, tmp_path: Path
) -> None:
    before = measure_command([str(script)], cwd=tmp_path).hex
    other = _exe(interp.with_name("myshelk"), interp.read_bytes())  # identical bytes, other path
    script.write_bytes(script.read_bytes().replace(b"myshell", b"myshelk"))
    after = measure_command([str(script)], cwd=tmp_path)
    assert after.hex != before
    assert after.chain[1].path == str(other)


def test_one_byte_change_in_the_interpreter_changes_it(script: Path, interp: Path, tmp_path: Path) -> None:
    before = measure_command([str(script)], cwd=tmp_path).hex
    data = bytearray(interp.read_bytes())
    data[-1] ^= 0x01
    interp.write_bytes(bytes(data))
    assert measure_command([str(script)], cwd=tmp_path).hex != before


def test_arguments_change_it(script: Path, tmp_path: Path) -> None:
    a = measure_command([str(script), "a"], cwd=tmp_path).hex
    assert measure_command([str(script), "b"], cwd=tmp_path).hex != a
    assert measure_command([str(script), "a", ""], cwd=tmp_path).hex != a
    assert measure_command([str(script)], cwd=tmp_path).hex != a


def test_argument_files_are_measured(tmp_path: Path, interp: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("print('v1')\n")
    m1 = measure_command([str(interp), "app.py"], cwd=tmp_path)
    assert [(f.arg, f.path) for f in m1.files] == [(1, str(app))]
    app.write_text("print('v2')\n")
    assert measure_command([str(interp), "app.py"], cwd=tmp_path).hex != m1.hex


def test_directories_devices_proc_and_missing_paths_are_not_argument_files(
    tmp_path: Path, interp: Path
) -> None:
    m = measure_command(
        [str(interp), str(tmp_path), "/dev/null", "/proc/self/status", "/no/such/file", "x" * 5000],
        cwd=tmp_path,
    )
    assert m.files == ()


def test_symlinks_are_followed_to_the_real_file(tmp_path: Path, script: Path) -> None:
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "app.sh"
    link.symlink_to(script)
    via_link = measure_command([str(link)], cwd=tmp_path)
    assert via_link.executable == str(script)
    assert via_link.hex == measure_command([str(script)], cwd=tmp_path).hex
    # ... and a symlinked interpreter is measured by its target's bytes.
    real_interp = via_link.chain[1].path
    (tmp_path / "interp-link").symlink_to(real_interp)
    relinked = _exe(
        tmp_path / "b" / "app.sh",
        script.read_bytes().replace(real_interp.encode(), str(tmp_path / "interp-link").encode()),
    )
    m = measure_command([str(relinked)], cwd=tmp_path)
    assert m.chain[1].path == real_interp
    assert m.chain[1].sha384 == via_link.chain[1].sha384


def test_path_lookup_finds_the_first_executable(tmp_path: Path) -> None:
    one = _exe(tmp_path / "one" / "tool", b"\x7fELF one")
    two = _exe(tmp_path / "two" / "tool", b"\x7fELF two")
    _exe(tmp_path / "zero" / "tool", b"not executable").chmod(0o644)
    path12 = os.pathsep.join(str(tmp_path / d) for d in ("zero", "one", "two"))
    path21 = os.pathsep.join(str(tmp_path / d) for d in ("zero", "two", "one"))
    assert resolve_command("tool", search_path=path12) == one
    assert resolve_command("tool", search_path=path21) == two
    by_name = measure_command(["tool", "-v"], search_path=path12, cwd=tmp_path)
    assert by_name.executable == str(one)
    assert by_name.hex == measure_command([str(one), "-v"], search_path="", cwd=tmp_path).hex
    assert by_name.hex != measure_command(["tool", "-v"], search_path=path21, cwd=tmp_path).hex


def test_relative_program_paths_resolve_against_the_working_directory(tmp_path: Path, script: Path) -> None:
    assert measure_command(["./app.sh"], cwd=tmp_path).hex == measure_command([str(script)], cwd=tmp_path).hex


def test_program_name_is_measured_by_base_name(tmp_path: Path) -> None:
    real = _exe(tmp_path / "busybox", b"\x7fELF busybox")
    (tmp_path / "ls").symlink_to(real)
    (tmp_path / "cat").symlink_to(real)
    ls = measure_command([str(tmp_path / "ls")], cwd=tmp_path)
    cat = measure_command([str(tmp_path / "cat")], cwd=tmp_path)
    assert ls.executable == cat.executable == str(real)
    assert ls.hex != cat.hex  # busybox-style programs dispatch on their name


def test_env_shebang_measures_the_program_env_starts(tmp_path: Path, interp: Path) -> None:
    env = os.path.realpath(shutil.which("env") or "/usr/bin/env")
    path = str(interp.parent)
    app = _exe(tmp_path / "app", f"#!{env} myshell\necho hi\n".encode())
    m = measure_command([str(app)], search_path=path, cwd=tmp_path)
    assert [c.role for c in m.chain] == ["program", "interpreter", "env-target"]
    assert m.chain[2].path == str(interp)
    before = m.hex
    interp.write_bytes(interp.read_bytes() + b"\0")
    assert measure_command([str(app)], search_path=path, cwd=tmp_path).hex != before
    split = _exe(tmp_path / "app2", f"#!{env} -S A=1 myshell -e\necho hi\n".encode())
    assert measure_command([str(split)], search_path=path, cwd=tmp_path).chain[2].path == str(interp)
    bad = _exe(tmp_path / "app3", f"#!{env} -i myshell\n".encode())
    with pytest.raises(UsageError, match="not supported"):
        measure_command([str(bad)], search_path=path, cwd=tmp_path)


def test_nested_interpreters_are_followed_up_to_the_kernel_limit(tmp_path: Path, interp: Path) -> None:
    previous = interp
    for level in range(4):
        previous = _exe(tmp_path / f"level{level}", f"#!{previous}\n".encode())
    m = measure_command([str(previous)], cwd=tmp_path)
    assert len(m.chain) == 5
    too_deep = _exe(tmp_path / "level4", f"#!{previous}\n".encode())
    with pytest.raises(UsageError, match="levels"):
        measure_command([str(too_deep)], cwd=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"#!\n", "empty #! line"),
        (b"#!" + b"/x" * 200, "longer than 256"),
    ],
)
def test_bad_shebang_lines_are_usage_errors(tmp_path: Path, content: bytes, message: str) -> None:
    app = _exe(tmp_path / "app", content)
    with pytest.raises(UsageError, match=message):
        measure_command([str(app)], cwd=tmp_path)


def test_missing_non_executable_and_non_regular_programs_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="found in PATH"):
        measure_command(["no-such-program-xyz"], search_path=str(tmp_path))
    plain = tmp_path / "plain"
    plain.write_bytes(b"data")
    with pytest.raises(UsageError, match="not executable"):
        measure_command([str(plain)])
    with pytest.raises(UsageError, match="regular file"):
        measure_command([str(tmp_path)])
    with pytest.raises(UsageError, match="no command"):
        measure_command([])
    with pytest.raises(UsageError, match="empty command"):
        measure_command([""])


def test_env_as_the_program_measures_the_program_it_starts(tmp_path: Path, interp: Path) -> None:
    env = os.path.realpath(shutil.which("env") or "/usr/bin/env")
    path = str(interp.parent)
    m = measure_command([env, "-i", "A=1", "myshell", "-c", "true"], search_path=path, cwd=tmp_path)
    assert [c.role for c in m.chain] == ["program", "env-target"]
    assert m.chain[1].path == str(interp)
    assert measure_command([env, "A=1"], search_path=path, cwd=tmp_path).chain[-1].role == "program"
    with pytest.raises(UsageError, match="not supported"):
        measure_command([env, "-u", "A", "myshell"], search_path=path, cwd=tmp_path)


def test_the_current_process_measures_as_its_command_line(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(
        "from confide.sim.measure import measure_current_process\nprint(measure_current_process().hex)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run(
        [sys.executable, str(child), "--flag"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    expected = measure_command([sys.executable, str(child), "--flag"], cwd=tmp_path)
    assert out.stdout.decode().strip() == expected.hex
    assert [f.path for f in expected.files] == [str(child)]
    child.write_text(child.read_text() + "# changed\n")
    again = subprocess.run(
        [sys.executable, str(child), "--flag"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert again.stdout != out.stdout


def test_current_process_without_proc_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="current process"):
        measure_current_process(proc=tmp_path / "nope")


def test_rooted_view_resolves_absolute_symlinks_inside_the_root(tmp_path: Path) -> None:
    from confide.sim.measure import RootedView

    root = tmp_path / "root"
    _exe(root / "usr/bin/python3.11", b"\x7fELF inside the root")
    (root / "usr/bin/python3").symlink_to("/usr/bin/python3.11")  # absolute: from the root
    (root / "app").mkdir()
    (root / "app/py").symlink_to("../usr/bin/python3")
    (root / "app/main.py").write_bytes(b"print(1)\n")
    m = measure_command(["/app/py", "main.py"], search_path="", cwd="/app", fs=RootedView(root))
    assert m.executable == "/usr/bin/python3.11"
    assert m.chain[0].sha384 == hashlib.sha384(b"\x7fELF inside the root").hexdigest()
    assert [(f.arg, f.path) for f in m.files] == [(1, "/app/main.py")]
    by_name = measure_command(["python3", "main.py"], search_path="/usr/bin", cwd="/app", fs=RootedView(root))
    assert by_name.chain == m.chain and by_name.hex != m.hex  # program name differs: py vs python3


def test_rooted_view_refuses_to_climb_above_the_root_and_symlink_loops(tmp_path: Path) -> None:
    from confide.sim.measure import RootedView, RootEscapeError

    root = tmp_path / "root"
    _exe(tmp_path / "outside", b"\x7fELF outside the root")
    (root / "bin").mkdir(parents=True)
    (root / "bin/out").symlink_to("../../outside")
    with pytest.raises(RootEscapeError, match="climbs above the root"):
        measure_command(["/bin/out"], search_path="", cwd="/", fs=RootedView(root))
    # an argument escaping is refused too, not silently left unmeasured
    _exe(root / "bin/tool", b"\x7fELF tool")
    with pytest.raises(RootEscapeError):
        measure_command(["/bin/tool", "../outside"], search_path="", cwd="/", fs=RootedView(root))
    (root / "bin/a").symlink_to("b")
    (root / "bin/b").symlink_to("a")
    with pytest.raises(UsageError, match="cannot resolve"):
        measure_command(["/bin/a"], search_path="", cwd="/", fs=RootedView(root))
    # a file below a regular file: ENOTDIR, an unmeasured argument
    m = measure_command(["/bin/tool", "/bin/tool/x"], search_path="", cwd="/", fs=RootedView(root))
    assert m.files == ()


# --- absent components (docs/simulator.md, "Absent components") -------------------------------


def test_a_missing_program_path_is_measured_as_absent(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    m = measure_command(["/nonexistent-confide/app/run.sh", "--serve"], cwd=tmp_path)
    assert [(c.role, c.absent, c.sha384) for c in m.chain] == [("program", True, "")]
    assert m.manifest["chain"] == [{"role": "program", "absent": True}]
    assert m.executable == "/nonexistent-confide/app/run.sh" and m.absent == m.chain
    assert m.to_json()["chain"] == [
        {"role": "program", "path": "/nonexistent-confide/app/run.sh", "absent": True}
    ]
    expected = {
        "kind": "confide-sim-measurement", "version": 1, "program": "run.sh", "args": ["--serve"],
        "chain": [{"role": "program", "absent": True}], "files": [],
    }  # fmt: skip
    assert m.digest == hashlib.sha384(canonical_json(expected)).digest()
    # once the file exists it measures with its content: a different measurement
    real = _exe(tmp_path / "app" / "run.sh", b"\x7fELF")
    present = measure_command([str(real), "--serve"], cwd=tmp_path)
    assert not present.absent and present.hex != m.hex


def test_a_missing_name_in_path_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="expected a program found in PATH"):
        measure_command(["no-such-confide-program"], search_path=str(tmp_path), cwd=tmp_path)


def test_a_missing_interpreter_is_measured_as_absent(tmp_path: Path) -> None:
    content = b"#!/nonexistent-confide/python3\nprint(1)\n"
    app = _exe(tmp_path / "app", content)
    m = measure_command([str(app)], cwd=tmp_path)
    assert m.manifest["chain"] == [
        {"role": "program", "sha384": hashlib.sha384(content).hexdigest()},
        {"role": "interpreter", "absent": True},
    ]
    assert [c.path for c in m.absent] == ["/nonexistent-confide/python3"]


def test_other_resolution_failures_are_still_errors(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    for path, message in ((tmp_path / "dir", "expected a regular file"), (plain, "not executable")):
        with pytest.raises(UsageError, match=message):
            measure_command([str(path)], cwd=tmp_path)


def test_an_argument_below_an_empty_directory_is_an_absent_file(tmp_path: Path, script: Path) -> None:
    mount_point = tmp_path / "app"
    mount_point.mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "other").write_bytes(b"x")
    argv = [str(script), str(mount_point / "sub" / "main.py"), str(full / "out.json"), "8080", "a/b"]
    m = measure_command(argv, cwd=tmp_path)
    # only the path below the empty directory: a missing file in a non-empty directory, a word
    # and a relative path below a non-empty working directory stay plain arguments
    assert m.manifest["files"] == [{"arg": 1, "absent": True}]
    assert [f.path for f in m.absent] == [str(mount_point / "sub" / "main.py")]
    # an existing file is measured as before
    (mount_point / "sub").mkdir()
    (mount_point / "sub" / "main.py").write_bytes(b"print(1)")
    after = measure_command(argv, cwd=tmp_path)
    assert after.manifest["files"] == [{"arg": 1, "sha384": hashlib.sha384(b"print(1)").hexdigest()}]


def test_excluded_trees_and_the_root_give_no_absent_file(script: Path, tmp_path: Path) -> None:
    m = measure_command([str(script), "/proc/nonexistent/x", "/nonexistent-confide"], cwd=tmp_path)
    assert m.files == ()


def test_present_commands_keep_their_manifest_shape(script: Path, interp: Path, tmp_path: Path) -> None:
    """No absent component: the manifest is exactly the documented one (known digests elsewhere)."""
    data = tmp_path / "data.txt"
    data.write_bytes(b"d")
    m = measure_command([str(script), str(data)], cwd=tmp_path)
    assert m.manifest == {
        "kind": "confide-sim-measurement", "version": 1, "program": "app.sh", "args": [str(data)],
        "chain": [
            {"role": "program", "sha384": hashlib.sha384(script.read_bytes()).hexdigest()},
            {"role": "interpreter", "sha384": hashlib.sha384(interp.read_bytes()).hexdigest()},
        ],
        "files": [{"arg": 1, "sha384": hashlib.sha384(b"d").hexdigest()}],
    }  # fmt: skip
    assert m.absent == ()


def test_sim_measure_warns_about_absent_components(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from confide.sim.cli import sim

    result = CliRunner().invoke(sim, ["measure", "--", "/nonexistent-confide/run.sh"])
    assert result.exit_code == 0, result.output
    out = result.stdout.strip()
    assert out == measure_command(["/nonexistent-confide/run.sh"]).hex
    assert "/nonexistent-confide/run.sh does not exist: measured as absent" in result.stderr
