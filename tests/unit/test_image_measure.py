"""sconify computes the simulated measurement of the image's command (docs/sconify.md, "The
measurement"): exactly what `confide run --tee sim` measures in the output image, i.e. what
measure_command gives on the output's unpacked tree with the image's PATH and WorkingDir."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from confide.errors import UsageError
from confide.image import SconifyOptions, parse_ref, policy_yaml, sconify
from confide.sim.measure import RootedView, measure_command
from confide.volume import VolumeKey
from image_builder import PYTHON_BASE, Image, M, unpack_rootfs

KEY = VolumeKey(bytes(range(32)))
SH = b"\x7fELF the image's own sh"
ENV = b"\x7fELF the image's own env"
LOCAL_PY = b"\x7fELF the image's /usr/local python3.11"
BASE = [
    *PYTHON_BASE,
    M("bin/", "d"),
    M("bin/sh", data=SH, mode=0o755),
    M("usr/bin/env", data=ENV, mode=0o755),
    M("etc/", "d"),
    M("etc/hosts", data=b"127.0.0.1 localhost\n"),
]
SCRIPT = b"#!/bin/sh\necho hello\n"


def sha(data: bytes) -> str:
    return hashlib.sha384(data).hexdigest()


def sconified(tmp_path: Path, img: Image, **kw: object):
    src = tmp_path / "src"
    img.write_layout(src)
    kw.setdefault("protect", ["/data"])
    opts = SconifyOptions(
        parse_ref(f"oci:{src}"), parse_ref(f"oci:{tmp_path / 'out'}"), policy="pol", service="svc", **kw
    )  # type: ignore[arg-type]
    return sconify(opts, KEY)


def image(app: list[M], entrypoint: list[str], **kw: object) -> Image:
    data = [M("data/", "d"), M("data/secret", data=b"SECRET")]
    kw.setdefault("cmd", None)
    return Image([BASE, [*app, *data]], entrypoint=entrypoint, **kw)  # type: ignore[arg-type]


def unpack(layout: Path, dest: Path) -> Path:
    return unpack_rootfs(layout, dest)


def in_unpacked(tmp_path: Path, argv: list[str], path: str, cwd: str = "/") -> str:
    root = unpack(tmp_path / "out", tmp_path / "rootfs")
    return measure_command(argv, search_path=path, cwd=cwd, fs=RootedView(root)).hex


def policy_measurement(res: object) -> str:
    return res.policy["services"][0]["attestation"][0]["sim"]["measurement"]  # type: ignore[attr-defined]


def test_a_shell_script_measures_with_the_images_interpreter(tmp_path: Path) -> None:
    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh", "--serve"]))
    assert res.warnings == []
    assert policy_measurement(res) == res.measurement
    expected = in_unpacked(tmp_path, ["/app/run.sh", "--serve"], "/usr/bin:/bin")
    assert res.measurement == expected
    # the chain is the image's script and the image's /bin/sh, not the host's
    root = tmp_path / "rootfs"
    m = measure_command(["/app/run.sh", "--serve"], search_path="/usr/bin:/bin", cwd="/", fs=RootedView(root))
    assert [(c.role, c.sha384) for c in m.chain] == [("program", sha(SCRIPT)), ("interpreter", sha(SH))]
    text = policy_yaml(res.policy, KEY, "src")
    assert "REPLACE" not in text and res.measurement in text


def test_a_protected_script_file_measures_as_its_empty_mount_point(tmp_path: Path) -> None:
    """confide run measures before the volume is mounted: /app/run.sh is then the empty file."""
    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh"]), protect=["/app/run.sh", "/data"])
    assert res.measurement == in_unpacked(tmp_path, ["/app/run.sh"], "/usr/bin:/bin")
    m = measure_command(["/app/run.sh"], search_path="", cwd="/", fs=RootedView(tmp_path / "rootfs"))
    assert [c.sha384 for c in m.chain] == [sha(b"")]
    assert any("empty mount point at the protected path /app/run.sh" in w for w in res.warnings)


def test_a_script_inside_a_protected_directory_is_measured_as_absent(tmp_path: Path) -> None:
    """--protect /app, entrypoint /app/run.sh: the measurement confide run reports (the program
    absent), with warnings: the program is checked after mounting, and its #! interpreter
    /bin/sh is outside the volume and unmeasured, so confide run will refuse it."""
    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh", "--serve"]), protect=["/app"])
    expected = in_unpacked(tmp_path, ["/app/run.sh", "--serve"], "/usr/bin:/bin")
    assert res.measurement == expected == policy_measurement(res)
    assert "REPLACE" not in policy_yaml(res.policy, KEY, "src")
    m = measure_command(
        ["/app/run.sh", "--serve"], search_path="", cwd="/", fs=RootedView(tmp_path / "rootfs")
    )
    assert m.manifest["chain"] == [{"role": "program", "absent": True}]
    assert any("will refuse to start /app/run.sh: its interpreter /bin/sh" in w for w in res.warnings)
    assert any('["/bin/sh", "/app/run.sh", ...]' in w for w in res.warnings)
    assert any("/app/run.sh is in a protected path: measured as absent" in w for w in res.warnings)


def test_a_protected_program_with_a_protected_interpreter_is_not_refused(tmp_path: Path) -> None:
    app = [
        M("app/", "d"),
        M("app/bin/", "d"),
        M("app/bin/sh", data=SH, mode=0o755),
        M("app/run.sh", data=b"#!/app/bin/sh\necho hi\n", mode=0o755),
    ]
    res = sconified(tmp_path, image(app, ["/app/run.sh"]), protect=["/app"])
    assert res.measurement == in_unpacked(tmp_path, ["/app/run.sh"], "/usr/bin:/bin")
    assert not any("refuse" in w for w in res.warnings)


def test_a_missing_program_outside_protected_paths_keeps_the_placeholder(tmp_path: Path) -> None:
    res = sconified(tmp_path, image([M("app/", "d")], ["/app/run.sh"]), protect=["/data"])
    assert res.measurement is None and policy_measurement(res) == "00" * 48
    assert (
        "the program '/app/run.sh' does not exist in the image and is not under a protected path"
        in (res.warnings[0])
    )
    assert "REPLACE the measurement" in policy_yaml(res.policy, KEY, "src")


def test_env_python3_is_looked_up_in_the_images_path(tmp_path: Path) -> None:
    script = b"#!/usr/bin/env python3\nprint('hi')\n"
    app = [
        M("usr/local/", "d"),
        M("usr/local/bin/", "d"),
        M("usr/local/bin/python3.11", data=LOCAL_PY, mode=0o755),
        M("usr/local/bin/python3", "l", link="python3.11"),
        M("srv/", "d"),
        M("srv/app.py", data=script, mode=0o755),
    ]
    path = "/usr/local/bin:/usr/bin:/bin"
    img = image(app, ["./app.py"], env=[f"PATH={path}"], workdir="/srv")
    res = sconified(tmp_path, img)
    assert res.warnings == []
    assert res.measurement == in_unpacked(tmp_path, ["./app.py"], path, cwd="/srv")
    m = measure_command(["./app.py"], search_path=path, cwd="/srv", fs=RootedView(tmp_path / "rootfs"))
    assert [(c.role, c.path, c.sha384) for c in m.chain] == [
        ("program", "/srv/app.py", sha(script)),
        ("interpreter", "/usr/bin/env", sha(ENV)),
        ("env-target", "/usr/local/bin/python3.11", sha(LOCAL_PY)),
    ]
    # another PATH order picks the other python3: a different measurement
    other = measure_command(
        ["./app.py"], search_path="/usr/bin:/usr/local/bin", cwd="/srv", fs=RootedView(tmp_path / "rootfs")
    )
    assert other.hex != res.measurement


def test_symlinks_resolve_inside_the_image(tmp_path: Path) -> None:
    """An absolute symlink names the image's file (never the host's), a relative one its neighbour."""
    real = b"\x7fELF /opt/py/real"
    app = [
        M("opt/", "d"),
        M("opt/py/", "d"),
        M("opt/py/real", data=real, mode=0o755),
        M("opt/py/python", "l", link="real"),  # relative
        M("app/", "d"),
        M("app/python3", "l", link="/opt/py/python"),  # absolute: from the image's root
        M("app/main.py", data=b"print(1)\n"),
        M("app/main-link.py", "l", link="../app/main.py"),
    ]
    argv = ["/app/python3", "main-link.py"]
    res = sconified(tmp_path, image(app, argv, workdir="/app"))
    assert res.warnings == []
    assert res.measurement == in_unpacked(tmp_path, argv, "/usr/bin:/bin", cwd="/app")
    m = measure_command(argv, search_path="", cwd="/app", fs=RootedView(tmp_path / "rootfs"))
    assert m.executable == "/opt/py/real" and m.chain[0].sha384 == sha(real)
    assert [(f.arg, f.path, f.sha384) for f in m.files] == [(1, "/app/main.py", sha(b"print(1)\n"))]
    assert m.manifest["program"] == "python3"


def test_an_absolute_symlink_to_a_host_path_names_the_images_file(tmp_path: Path) -> None:
    """/usr/bin/python3 exists on the host too; the image's own file is measured."""
    app = [M("app/", "d"), M("app/py", "l", link="/usr/bin/python3")]
    res = sconified(tmp_path, image(app, ["/app/py", "-V"]))
    m = measure_command(
        ["/app/py", "-V"], search_path="", cwd="/", fs=RootedView(unpack(tmp_path / "out", tmp_path / "r"))
    )
    assert res.measurement == m.hex
    assert m.chain[0].path == "/usr/bin/python3.11"
    assert m.chain[0].sha384 == sha(b"\x7fELF fake python")  # PYTHON_BASE's, not the host's python
    assert res.measurement != measure_command(["/usr/bin/python3", "-V"], search_path="").hex


def test_a_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    app = [M("app/", "d"), M("app/tool", "l", link="../../../../bin/sh")]
    res = sconified(tmp_path, image(app, ["/app/tool"]))
    assert res.measurement is None and policy_measurement(res) == "00" * 48
    assert "climbs above the root" in res.warnings[0]
    with pytest.raises(UsageError, match="climbs above the root"):
        in_unpacked(tmp_path, ["/app/tool"], "/usr/bin:/bin")


def test_a_missing_interpreter_keeps_the_placeholder_with_a_warning(tmp_path: Path) -> None:
    app = [M("app/", "d"), M("app/run.sh", data=b"#!/usr/bin/nope\n", mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh"]))
    assert res.measurement is None and policy_measurement(res) == "00" * 48
    assert (
        "the interpreter '/usr/bin/nope' does not exist in the image and is not under a protected"
        in (res.warnings[0])
    )
    assert any("--measurement HEX" in w for w in res.warnings)


def test_a_file_the_container_engine_provides_is_not_measured_from_the_image(tmp_path: Path) -> None:
    res = sconified(tmp_path, image([], ["/bin/sh", "/etc/hosts"]))
    assert res.measurement is None
    assert "'/etc/hosts' is under /etc/hosts (written by the container engine)" in res.warnings[0]


@pytest.mark.parametrize(("volume", "shown"), [("/srv/", "/srv"), ("/", "/"), ("/srv/../srv", "/srv")])
def test_a_declared_volume_is_not_measured_from_the_image(tmp_path: Path, volume: str, shown: str) -> None:
    img = image([M("srv/", "d"), M("srv/app.sh", data=SCRIPT, mode=0o755)], ["/srv/app.sh"])
    src = tmp_path / "src"
    img.write_layout(src)
    import json

    blobs = src / "blobs" / "sha256"
    # a config with Volumes: rewrite the layout by hand (image_builder does not write it)
    index = json.loads((src / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    config["config"]["Volumes"] = {volume: {}, "relative": {}, "/elsewhere": {}}
    cbytes = json.dumps(config).encode()
    cdigest = hashlib.sha256(cbytes).hexdigest()
    (blobs / cdigest).write_bytes(cbytes)
    manifest["config"] = {**manifest["config"], "digest": "sha256:" + cdigest, "size": len(cbytes)}
    mbytes = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(mbytes).hexdigest()
    (blobs / mdigest).write_bytes(mbytes)
    index["manifests"][0] = {**index["manifests"][0], "digest": "sha256:" + mdigest, "size": len(mbytes)}
    (src / "index.json").write_text(json.dumps(index))
    opts = SconifyOptions(
        parse_ref(f"oci:{src}"),
        parse_ref(f"oci:{tmp_path / 'out'}"),
        protect=["/data"],
        policy="p",
        service="s",
    )
    res = sconify(opts, KEY)
    assert res.measurement is None
    assert f"under {shown} (a volume the image config declares)" in res.warnings[0]


def test_a_bare_command_without_path_in_the_image_uses_the_engines_default(tmp_path: Path) -> None:
    res = sconified(tmp_path, image([], ["sh", "-c", "true"], env=["MODE=x"]))
    assert any("sets no PATH" in w for w in res.warnings)
    assert res.measurement == in_unpacked(
        tmp_path, ["sh", "-c", "true"], "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )


def test_the_layers_are_read_for_the_files_the_measurement_needs(tmp_path: Path) -> None:
    """An argument file and the program in different layers, a hard link, a file overwritten later."""
    img = Image(
        [
            BASE,
            [M("srv/", "d"), M("srv/conf", data=b"old"), M("srv/tool", data=SCRIPT, mode=0o755)],
            [M("srv/conf", data=b"new"), M("srv/tool2", "h", link="srv/tool")],
        ],
        entrypoint=["/srv/tool2", "conf", "missing-file"],
        cmd=None,
        workdir="/srv",
    )
    res = sconified(tmp_path, img, protect=["/etc/hosts"])
    m = measure_command(
        ["/srv/tool2", "conf", "missing-file"],
        search_path="/usr/bin:/bin",
        cwd="/srv",
        fs=RootedView(unpack(tmp_path / "out", tmp_path / "r")),
    )
    assert res.measurement == m.hex
    assert [f.sha384 for f in m.files] == [sha(b"new")]


def test_measurement_option(tmp_path: Path) -> None:
    given = "ab" * 48
    app = [M("app/", "d"), M("app/run.sh", data=b"#!/usr/bin/nope\n", mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh"]), measurement=given.upper())
    assert res.measurement == given and res.warnings == [] and policy_measurement(res) == given
    assert "REPLACE" not in policy_yaml(res.policy, KEY, "src")
    with pytest.raises(UsageError, match="96 hex digits"):
        sconified(tmp_path / "x", image(app, ["/app/run.sh"]), measurement="ab" * 32)


def test_other_tees_keep_the_placeholder_without_computing(tmp_path: Path) -> None:
    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    res = sconified(tmp_path, image(app, ["/app/run.sh"]), tee="tdx")
    assert res.measurement is None and res.warnings == []
    assert res.policy["services"][0]["attestation"] == [{"tdx": {"measurement": "00" * 48}}]


def test_unpacked_and_sconify_agree_on_the_host_root_semantics(tmp_path: Path) -> None:
    """RootedView on / resolves like the host for paths without absolute symlinks."""
    sh = os.path.realpath("/bin/sh")
    assert (
        measure_command([sh, "-c", "x"], search_path="").hex
        == measure_command([sh, "-c", "x"], search_path="", cwd="/", fs=RootedView(Path("/"))).hex
    )


def test_a_protected_script_passed_to_its_interpreter_is_an_absent_file(tmp_path: Path) -> None:
    """/bin/sh /app/run.sh with /app protected: the script is not there before the volume is
    mounted, so sh is measured, the script as an absent argument file (covered by the volume)."""
    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    res = sconified(tmp_path, image(app, ["/bin/sh", "/app/run.sh"]), protect=["/app"])
    assert res.warnings == []
    m = measure_command(
        ["/bin/sh", "/app/run.sh"],
        search_path="",
        cwd="/",
        fs=RootedView(unpack(tmp_path / "out", tmp_path / "r")),
    )
    assert res.measurement == m.hex and [c.sha384 for c in m.chain] == [sha(SH)]
    assert m.manifest["files"] == [{"arg": 1, "absent": True}]


def test_the_layers_read_for_the_measurement_are_verified_again(tmp_path: Path) -> None:
    """A layer changed after pass 1 is a ParseError; nothing read from it is kept."""
    from confide.errors import ParseError
    from confide.image import open_image
    from confide.image.flatten import index_layers
    from confide.image.measure import ImageView, measure_image_command

    app = [M("app/", "d"), M("app/run.sh", data=SCRIPT, mode=0o755)]
    image(app, ["/app/run.sh"], compression="none").write_layout(tmp_path / "src")
    src = open_image(parse_ref(f"oci:{tmp_path / 'src'}"))
    try:
        idx = index_layers(src.layers, ["data"])
        inner = src.config["config"]
        good = measure_image_command(src.layers, idx, ["data"], inner, ["/app/run.sh"])
        assert good.measurement is not None
        blob = tmp_path / "src" / "blobs" / "sha256" / src.layers[1].digest[7:]  # type: ignore[index]
        raw = bytearray(blob.read_bytes())
        raw[raw.index(b"echo hello")] ^= 0x20  # the script's bytes, same size
        blob.write_bytes(bytes(raw))
        view = ImageView(idx, ["data"], {})
        node = idx.lookup("app/run.sh")
        assert node is not None and node.source is not None
        with pytest.raises(ParseError):
            view.load(src.layers, {node.source})
        assert view.contents == {}
        with pytest.raises(ParseError):
            measure_image_command(src.layers, idx, ["data"], inner, ["/app/run.sh"])
    finally:
        src.close()
