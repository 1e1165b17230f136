"""``confide run``'s rule for components measured as absent (docs/simulator.md, "Absent
components"): after the volumes are mounted each must lie inside one, or nothing is executed.
Volumes are mounted on the tmpfs fallback (/dev/shm), as in test_runtime_volume_update_policy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from confide.errors import MeasurementError
from confide.runtime import run as run_module
from confide.runtime.absent import check_absent
from confide.runtime.run import Launch, launch, supervise
from confide.runtime.volumes import MountedVolumes, VolumeRelease
from confide.sim.measure import measure_command
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume.mount import _TmpfsMount
from confide.volume.store import load_sealed

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")

SH = os.path.realpath(shutil.which("sh") or "/bin/sh")


class _Client:
    def __init__(self) -> None:
        self.reports: list[Any] = []

    def report_volume_tag(self, *args: Any) -> None:
        self.reports.append(args)


def _exe(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def _mounted(tmp: Path, files: dict[str, bytes], mnt: Path) -> MountedVolumes:
    """A volume holding ``files`` (executable), mounted at ``mnt``."""
    src = tmp / "src"
    for name, content in files.items():
        _exe(src / name, content)
    key = VolumeKey.generate()
    vol = tmp / "vol"
    create_volume(vol, key)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    release = VolumeRelease("app", vol, key.raw, tag)
    manifest, tag = load_sealed(vol, key, release.expected_tag)
    handle = _TmpfsMount(vol, key, mnt, tag, True, manifest, None, private_namespace=False)
    return MountedVolumes([(release, handle)], {}, mounted_tags={"app": tag})


def _supervise(monkeypatch: pytest.MonkeyPatch, plan: Launch, mounted: MountedVolumes) -> int:
    monkeypatch.setattr(run_module, "mount_released", lambda _volumes, _locks=None: mounted)
    return supervise(plan, _Client())  # type: ignore[arg-type]


def _plan(argv: list[str], measured: Any) -> Launch:
    return Launch(argv, {"PATH": "/usr/bin:/bin"}, {}, None, "pol", (), "s", measured)


def test_a_program_found_only_in_the_mounted_volume_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = tmp_path / "mnt"
    marker = tmp_path / "ran"
    argv = [str(mnt / "run.sh"), str(marker)]
    measured = measure_command(argv, cwd=tmp_path)  # before mounting: the program is absent
    assert measured.manifest["chain"] == [{"role": "program", "absent": True}]
    # the script's interpreter is in the volume too (a copy of sh), so nothing unmeasured runs
    script = f'#!{mnt}/sh\necho ran > "$1"\nexit 7\n'.encode()
    mounted = _mounted(tmp_path, {"run.sh": script, "sh": Path(SH).read_bytes()}, mnt)
    assert _supervise(monkeypatch, _plan(argv, measured), mounted) == 7
    assert marker.read_text() == "ran\n"


def test_a_program_planted_outside_the_volumes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "host" / "run.sh"
    argv = [str(planted), str(marker)]
    measured = measure_command(argv, cwd=tmp_path)
    assert measured.absent
    # the host puts the program in place after the measurement, outside any volume
    _exe(planted, f'#!{SH}\necho ran > "$1"\n'.encode())
    mounted = _mounted(tmp_path, {"other": b"x"}, tmp_path / "mnt")
    with pytest.raises(MeasurementError, match="not inside a protected volume mounted by this run"):
        _supervise(monkeypatch, _plan(argv, measured), mounted)
    assert not marker.exists()
    # without volumes (launch, no exec): refused the same way
    with pytest.raises(MeasurementError, match="not inside a protected volume"):
        launch(_plan(argv, measured))
    assert not marker.exists()


def test_a_symlink_in_the_volume_pointing_outside_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    argv = [str(mnt / "link.sh")]
    measured = measure_command(argv, cwd=tmp_path)
    outside = _exe(tmp_path / "outside.sh", f"#!{SH}\n".encode())
    mounted = _mounted(tmp_path, {"x": b"x"}, mnt)
    try:
        (mounted.handles[0][1].path / "link.sh").symlink_to(outside)
        with pytest.raises(MeasurementError, match=f"resolves to {outside}, which is not inside"):
            check_absent(measured, argv, {}, str(tmp_path), mounted.regions())
    finally:
        mounted.abort()


def test_an_unmeasured_interpreter_outside_the_volumes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = tmp_path / "mnt"
    marker = tmp_path / "ran"
    argv = [str(mnt / "run.sh"), str(marker)]
    measured = measure_command(argv, cwd=tmp_path)
    mounted = _mounted(tmp_path, {"run.sh": f'#!{SH}\necho ran > "$1"\n'.encode()}, mnt)
    with pytest.raises(MeasurementError, match=f"its interpreter {SH} is neither inside a protected volume"):
        _supervise(monkeypatch, _plan(argv, measured), mounted)
    assert not marker.exists()


def test_interpreter_script_form_runs_a_protected_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sh /mnt/run.sh: sh is measured present, the script (below an empty mount point) absent."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    marker = tmp_path / "ran"
    argv = [SH, str(mnt / "run.sh"), str(marker)]
    measured = measure_command(argv, cwd=tmp_path)
    assert measured.manifest["files"] == [{"arg": 1, "absent": True}]
    mnt.rmdir()  # the shm fallback puts a symlink there
    mounted = _mounted(tmp_path, {"run.sh": b'echo ran > "$1"\n'}, mnt)
    assert _supervise(monkeypatch, _plan(argv, measured), mounted) == 0
    assert marker.read_text() == "ran\n"


def test_an_absent_argument_file_planted_outside_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [SH, str(empty / "run.sh")]
    measured = measure_command(argv, cwd=tmp_path)
    # still missing after mounting: allowed (the program may create it)
    assert check_absent(measured, argv, {}, str(tmp_path), []) is None
    (empty / "run.sh").write_bytes(b"echo planted\n")
    with pytest.raises(MeasurementError, match=r"argument file .* not inside a protected volume"):
        check_absent(measured, argv, {}, str(tmp_path), [])


def test_the_policy_command_must_be_the_measured_absent_program(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    measured = measure_command([str(mnt / "run.sh")], cwd=tmp_path)
    mounted = _mounted(tmp_path, {"run.sh": b"\x7fELF", "other": b"\x7fELF"}, mnt)
    try:
        with pytest.raises(MeasurementError, match="they must be the same file"):
            check_absent(measured, [str(mnt / "other")], {}, str(tmp_path), mounted.regions())
    finally:
        mounted.abort()


class _ReleasingClient:
    """Releases ``config`` to whoever attests (the CAS's side of the release, no policy check)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def nonce(self) -> str:
        return "ab" * 32

    def attest(self, request: dict[str, Any]) -> dict[str, Any]:
        import base64
        import json

        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        from confide.cas.core import RELEASE_INFO, _release_key_der, _spki

        runtime = load_der_public_key(base64.b64decode(request["public_key"]))
        assert isinstance(runtime, ec.EllipticCurvePublicKey)
        cas = ec.generate_private_key(ec.SECP256R1())
        key = _release_key_der(
            cas.exchange(ec.ECDH(), runtime),
            _spki(cas.public_key()),
            _spki(runtime),
            bytes.fromhex(request["nonce"]),
        )
        iv = os.urandom(12)
        sealed = AESGCM(key).encrypt(iv, json.dumps(self.config).encode(), RELEASE_INFO)
        return {
            "cas_key": base64.b64encode(_spki(cas.public_key())).decode(),
            "iv": base64.b64encode(iv).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }


def test_the_policy_may_name_the_absent_program_by_the_same_path(tmp_path: Path) -> None:
    from confide.errors import UsageError
    from confide.runtime.quote import SimQuoteProvider
    from confide.runtime.run import attest_and_prepare
    from confide.sim.platform import SimPlatform

    program = str(tmp_path / "mnt" / "run.sh")
    SimPlatform.load_or_create(tmp_path / "sim")
    provider = SimQuoteProvider.for_command(tmp_path / "sim", [program])
    assert provider.launch_measurement is not None and provider.launch_measurement.absent
    same = _ReleasingClient({"command": [program, "--serve"], "environment": {"PATH": "/usr/bin:/bin"}})
    plan = attest_and_prepare(same, provider, "pol", "svc", [program])  # type: ignore[arg-type]
    assert plan.argv == [program, "--serve"]
    other = _ReleasingClient({"command": [str(tmp_path / "mnt" / "other")], "environment": {}})
    with pytest.raises(UsageError, match="they must be the same program"):
        attest_and_prepare(other, provider, "pol", "svc", [program])  # type: ignore[arg-type]
