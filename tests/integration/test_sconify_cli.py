"""`confide sconify` driven as a real process: layouts, archives, key/policy files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from cli import SRC, run_confide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from image_builder import PYTHON_BASE, Image, M, all_blob_bytes, read_layout, unpack_rootfs
from pki import self_signed_pem

SECRET = b"SECRET-cli-protected-payload-81f2"


def confide(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_confide(*args, cwd=cwd, timeout=300)


def image() -> Image:
    return Image(
        [
            [
                *PYTHON_BASE,
                M("app/", "d"),
                M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
                M("app/secret", data=SECRET),
            ],
            [M("app/.wh.secret", "f"), M("app/secret2", data=SECRET + b"-2")],
        ]
    )


def test_sconify_layout_with_key_and_policy_files(tmp_path: Path) -> None:
    image().write_layout(tmp_path / "src")
    r = confide(
        "sconify", "--from", f"oci:{tmp_path / 'src'}", "--to", f"oci:{tmp_path / 'out'}", "--protect", "/app",
        "--policy", "pol", "--service", "svc", "--key-out", str(tmp_path / "key"), "--policy-out", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    digest = r.stdout.split("image: ", 1)[1].split()[0]
    assert stat.S_IMODE((tmp_path / "p.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    policy = YAML(typ="safe").load((tmp_path / "p.yaml").read_text())
    assert policy["volumes"][0]["fspf_key"] == (tmp_path / "key").read_text().strip()
    assert digest.startswith("sha256:")
    from confide.policy import load_policy

    assert load_policy(tmp_path / "p.yaml").name == "pol"
    assert all(SECRET not in b for b in all_blob_bytes(tmp_path / "out"))
    # no progress output when stderr is not a terminal; /app/run.sh is inside the protected /app,
    # so it is measured as absent (the template gets what confide run --tee sim reports), but its
    # interpreter /bin/sh lies outside every volume and was never measured, so confide run would
    # refuse to start it after mounting: said (docs/simulator.md "Absent components")
    assert [line.split(":", 1)[0] for line in r.stderr.splitlines()] == ["warning", "warning"]
    assert "will refuse to start /app/run.sh: interpreter '/bin/sh'" in r.stderr
    measured = r.stdout.split("measurement: ", 1)[1].split()[0]
    assert len(measured) == 96 and measured != "00" * 48
    assert policy["services"][0]["attestation"] == [{"sim": {"measurement": measured}}]
    # same input + same key -> identical digest
    r2 = confide(
        "sconify", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out2"), "--protect", "/app",
        "--policy", "pol", "--service", "svc", "--key", str(tmp_path / "key"),
    )  # fmt: skip
    assert r2.returncode == 0, r2.stderr
    assert f"image: {digest}" in r2.stdout
    _, config, _ = read_layout(tmp_path / "out2")
    assert config["config"]["Entrypoint"][:4] == ["/confide/bin/confide", "run", "--config-id", "pol/svc"]


def test_sconify_writes_the_measurement_confide_sim_measure_gives_in_the_unpacked_image(
    tmp_path: Path,
) -> None:
    sh = b"\x7fELF the image's sh"
    Image(
        [[*PYTHON_BASE, M("bin/", "d"), M("bin/sh", data=sh, mode=0o755)],
         [M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("app/secret", data=SECRET)]],
    ).write_layout(tmp_path / "src")  # fmt: skip
    r = confide(
        "sconify", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out"), "--protect", "/app/secret",
        "--policy", "pol", "--service", "svc", "--policy-out", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr
    computed = r.stdout.split("measurement: ", 1)[1].split()[0]
    policy = YAML(typ="safe").load((tmp_path / "p.yaml").read_text())
    assert policy["services"][0]["attestation"] == [{"sim": {"measurement": computed}}]
    rootfs = unpack_rootfs(tmp_path / "out", tmp_path / "rootfs")
    measured = run_confide(
        "sim", "measure", "--root", rootfs, "--cwd", "/app", "--", "/app/run.sh", "--serve",
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert measured.returncode == 0, measured.stderr
    assert measured.stdout.strip() == computed
    # the host's /bin/sh is another file: measured on the host, the command differs
    assert confide("sim", "measure", "--", "/bin/sh").stdout.strip() != computed


def test_sconify_docker_archive_round_trip(tmp_path: Path) -> None:
    image().write_archive(tmp_path / "in.tar")
    r = confide(
        "sconify", "--from", f"docker-archive:{tmp_path / 'in.tar'}", "--to", f"docker-archive:{tmp_path / 'out.tar'}:app:conf",
        "--protect", "/app/secret2", "--policy", "p", "--service", "s", "--policy-out", str(tmp_path / "p.yaml"),
        "--compression", "zstd",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    blobs = all_blob_bytes(tmp_path / "out.tar")
    assert not any(SECRET + b"-2" in b for b in blobs)
    # the lower layer's deleted /app/secret is not protected: it stays (only protected paths are removed)
    assert any(SECRET in b for b in blobs)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--protect", "/missing"], 2, "does not exist"),
        (["--protect", "/app", "--cas", "https://cas"], 2, "--cas needs --identity"),
        (["--protect", "/app", "--no-key"], 2, "would be lost"),
    ],
)
def test_usage_errors(tmp_path: Path, extra: list[str], code: int, message: str) -> None:
    image().write_layout(tmp_path / "src")
    args = [
        "sconify",
        "--from",
        str(tmp_path / "src"),
        "--to",
        str(tmp_path / "out"),
        "--policy",
        "p",
        "--service",
        "s",
    ]
    if "--no-key" in extra:
        extra = [e for e in extra if e != "--no-key"]
    else:
        args += ["--policy-out", str(tmp_path / "p.yaml")]
    r = confide(*args, *extra)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "p.yaml").exists()


def test_an_unwritable_policy_out_fails_before_the_image_is_written(tmp_path: Path) -> None:
    """The policy template holds the only copy of a new key (no --key-out): it was written after
    the image, so a path that could not be written left an image whose key was lost."""
    image().write_layout(tmp_path / "src")
    args = ["sconify", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out"), "--protect", "/app",
            "--policy", "p", "--service", "s"]  # fmt: skip
    r = confide(*args, "--policy-out", str(tmp_path / "missing-dir" / "p.yaml"))
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and "No such file or directory" in r.stderr
    assert not (tmp_path / "out").exists()
    # an existing template is replaced whole, mode 0600, nothing left beside it
    (tmp_path / "p.yaml").write_text("old")
    r = confide(*args, "--policy-out", str(tmp_path / "p.yaml"))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "p.yaml").stat().st_mode) == 0o600
    assert "fspf_key" in (tmp_path / "p.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.yaml", "src"]


@pytest.mark.parametrize(
    ("url", "cert", "message"),
    [
        ("https://127.0.0.1:9", None, "CONFIDE_CAS_CERT is not set"),
        ("http://127.0.0.1:9", "cas.pem", "must be an https:// URL"),
        ("https://127.0.0.1:9", "missing.pem", "cannot read the CAS certificate"),
    ],
)
def test_cas_settings_the_policy_cannot_be_sent_with_fail_before_the_image_is_written(
    tmp_path: Path, url: str, cert: str | None, message: str
) -> None:
    """--cas with no --key-out/--policy-out: the new volume key is only in the policy sent to the
    CAS. A CAS URL or certificate the client cannot use was found after the image was written:
    the image was left under a key that nothing held."""
    image().write_layout(tmp_path / "src")
    self_signed_pem(tmp_path / "cas.pem", "not-a-cas")
    assert confide("identity", "create", "--out", str(tmp_path / "owner.id")).returncode == 0
    env = {"CONFIDE_CAS_CERT": str(tmp_path / cert)} if cert is not None else {}
    r = run_confide(
        "sconify", "--from", f"oci:{tmp_path / 'src'}", "--to", f"oci:{tmp_path / 'out'}", "--protect", "/app",
        "--policy", "p", "--service", "s", "--cas", url, "--identity", tmp_path / "owner.id",
        env=env, drop=("CONFIDE_CAS_CERT",), timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.splitlines()[-1]], r.stderr
    assert message in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cas_says_the_image_may_be_unusable_not_that_the_cas_refused(tmp_path: Path) -> None:
    """Nothing answers at --cas: the image is written, its key only in the policy that was not
    delivered. The warning says so, without claiming that the CAS refused it (a connection
    failure can also come after a CAS took the policy)."""
    image().write_layout(tmp_path / "src")
    self_signed_pem(tmp_path / "cas.pem", "not-a-cas")
    assert confide("identity", "create", "--out", str(tmp_path / "owner.id")).returncode == 0
    r = run_confide(
        "sconify", "--from", f"oci:{tmp_path / 'src'}", "--to", f"oci:{tmp_path / 'out'}", "--protect", "/app",
        "--policy", "p", "--service", "s", "--cas", f"https://127.0.0.1:{_free_port()}",
        "--identity", tmp_path / "owner.id", env={"CONFIDE_CAS_CERT": str(tmp_path / "cas.pem")}, timeout=300,
    )  # fmt: skip
    assert r.returncode == 40, r.stderr
    warning, error = r.stderr.splitlines()[-2:]
    assert warning.startswith("warning: unless the CAS took the policy before this stopped"), r.stderr
    assert "confide policy show p says" in warning and "refused" not in warning
    assert error.startswith("error: NetworkError: cannot reach the CAS"), r.stderr


def test_an_interrupt_while_the_cas_is_asked_still_warns_that_the_key_may_be_lost(tmp_path: Path) -> None:
    """Ctrl-C while waiting for the CAS (which never answers here): the image is written and its
    key was only in the policy; the warning came only for a ConfideError, not for this."""
    image().write_layout(tmp_path / "src")
    self_signed_pem(tmp_path / "cas.pem", "not-a-cas")
    assert confide("identity", "create", "--out", str(tmp_path / "owner.id")).returncode == 0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(240)
        env = {**os.environ, "PYTHONPATH": str(SRC), "CONFIDE_CAS_CERT": str(tmp_path / "cas.pem")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "confide", "sconify", "--from", f"oci:{tmp_path / 'src'}", "--to",
             f"oci:{tmp_path / 'out'}", "--protect", "/app", "--policy", "p", "--service", "s", "--cas",
             f"https://127.0.0.1:{listener.getsockname()[1]}", "--identity", str(tmp_path / "owner.id")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            conn, _ = listener.accept()  # the policy is being sent: the image is written
            with conn:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert (tmp_path / "out").exists()
    assert "warning: unless the CAS took the policy before this stopped (confide policy show p says)" in err
    assert err.splitlines()[-1] == "aborted", err


def test_tampered_image_exit_code(tmp_path: Path) -> None:
    image().write_layout(tmp_path / "src")
    manifest, _, _ = read_layout(tmp_path / "src")
    blob = tmp_path / "src/blobs/sha256" / manifest["layers"][1]["digest"][7:]
    blob.write_bytes(blob.read_bytes() + b"\x00")
    r = confide(
        "sconify", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "out"), "--protect", "/app",
        "--policy", "p", "--service", "s", "--policy-out", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    assert r.returncode == 10, r.stderr
    assert "ParseError" in r.stderr and "layer 1" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_run_that_wrote_no_image_leaves_no_key_behind(tmp_path: Path) -> None:
    """A mistyped --from left the --key-out file behind, so the same command run again (fixed)
    said "key file exists": the key goes when the run fails and the local DST it would have
    written does not exist; it stays when DST existed before (something may use the key)."""
    key = tmp_path / "key"
    args = ["sconify", "--to", f"oci:{tmp_path / 'out'}", "--protect", "/app", "--policy", "p", "--service", "s",
            "--key-out", str(key)]  # fmt: skip
    for _ in range(2):  # the second run is told the same, not "key file 'key' exists"
        r = confide(*args, "--from", f"oci:{tmp_path / 'no-such-image'}")
        assert r.returncode == 10 and "oci-layout missing" in r.stderr, r.stderr
        assert not key.exists() and not (tmp_path / "out").exists()
    image().write_layout(tmp_path / "src")
    r = confide(*args, "--from", f"oci:{tmp_path / 'src'}")
    assert r.returncode == 0, r.stderr
    assert len(key.read_text().strip()) == 64
    # DST existed before the failed run: the key is kept, as is DST.
    kept = tmp_path / "kept.key"
    (tmp_path / "existing").mkdir()
    r = confide("sconify", "--from", f"oci:{tmp_path / 'no-such-image'}", "--to", f"oci:{tmp_path / 'existing'}",
                "--protect", "/app", "--policy", "p", "--service", "s", "--key-out", str(kept))  # fmt: skip
    assert r.returncode == 10, r.stderr
    assert len(kept.read_text().strip()) == 64 and (tmp_path / "existing").is_dir()


# ------------------------------------------------------------------ a real local registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path):
    exe = shutil.which("docker-registry")
    if exe is None or shutil.which("skopeo") is None:
        pytest.skip("needs the Debian packages docker-registry and skopeo")
    cfg = tmp_path / "registry.yml"
    for _ in range(5):  # a port found free is not reserved: when it was taken meanwhile, another
        port = _free_port()
        cfg.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
            f"{tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
        )
        proc = subprocess.Popen(
            [exe, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    pytest.fail("docker-registry did not start")
                time.sleep(0.1)
        if proc.poll() is None:
            break
    else:
        pytest.fail("docker-registry did not start (5 attempts)")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_registry_pull_and_push(tmp_path: Path, registry: str) -> None:
    image().write_layout(tmp_path / "src", ref="v1")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"oci:{tmp_path / 'src'}:v1",
            f"docker://{registry}/app:1",
        ],
        check=True,
    )
    r = confide(
        "sconify", "--from", f"docker://{registry}/app:1", "--to", f"docker://{registry}/app:conf", "--no-tls-verify",
        "--protect", "/app", "--policy", "p", "--service", "s", "--policy-out", str(tmp_path / "p.yaml"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry}/app:conf"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    info = json.loads(out.stdout)
    assert len(info["Layers"]) == 4
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{registry}/app:conf",
            f"oci:{tmp_path / 'pulled'}:x",
        ],
        check=True,
    )
    assert all(SECRET not in b for b in all_blob_bytes(tmp_path / "pulled"))
    # negative twin: an image that is not there
    r = confide(
        "sconify", "--from", f"docker://{registry}/nothing:1", "--to", str(tmp_path / "o2"), "--no-tls-verify",
        "--protect", "/app", "--policy", "p", "--service", "s", "--policy-out", str(tmp_path / "p2.yaml"),
    )  # fmt: skip
    assert r.returncode == 40 and "skopeo failed" in r.stderr
