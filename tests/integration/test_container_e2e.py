"""A real container end to end: build a native image (static busybox + a script + data),
sconify it (which computes the simulated measurement of the command and writes it into the
policy template), unpack it with umoci, run it with runc as root (host network, so the runtime
reaches the CAS on loopback) on the simulated TEE with that policy as written. The app reads its
protected files and injected secret and appends to a protected file; the new volume tag reaches
the CAS; a changed byte of a protected file and an old copy of the volume are both refused.

The image's Python (which the vendored runtime needs, see docs/sconify.md) comes from the host:
/usr, /lib and /lib64 are bind-mounted read-only, like a distribution base image would provide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from cas_harness import ROOT, CasProcess
from confide import errors
from image_builder import Image, M

BUSYBOX = Path("/bin/busybox")
RUN_SH = b"""echo "secret: $APP_SECRET"
echo "model: $(cat /app/model.txt)"
echo "notes:"
cat /data/notes.txt
echo "written by run $$" >> /data/notes.txt
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("runc")
    or not shutil.which("umoci")
    or not BUSYBOX.exists()
    or not Path("/dev/fuse").exists()
    or not Path("/usr/bin/python3.11").exists(),
    reason="needs root, runc, umoci, busybox-static, /dev/fuse and /usr/bin/python3.11 (make test installs them)",
)


def _confide(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # $XDG_CACHE_HOME: this test process's own (tests/conftest.py), not the user's ~/.cache,
    # where sconify keeps its runtime layers
    base = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(ROOT / "src"),
            "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "confide", *args], capture_output=True, text=True, timeout=300,
                       env={**base, **env}, check=False)  # fmt: skip
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _native_image(path: Path) -> None:
    base = [M("bin/", "d"), M("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)]
    base += [M(f"bin/{a}", "l", link="busybox") for a in ("sh", "cat", "echo")]
    app = [
        M("app/", "d"), M("app/run.sh", data=RUN_SH, mode=0o755), M("app/model.txt", data=b"TOP-SECRET-MODEL"),
        M("data/", "d"), M("data/notes.txt", data=b"first-note-7f3a\n"),
    ]  # fmt: skip
    Image(layers=[base, app], entrypoint=["/bin/sh", "/app/run.sh"], cmd=None, env=["PATH=/usr/bin:/bin"],
          workdir="/").write_layout(path, ref="latest")  # fmt: skip


def _prepare_bundle(bundle: Path, env: dict[str, str], binds: list[tuple[str, str, bool]]) -> None:
    cfg_path = bundle / "config.json"
    c = json.loads(cfg_path.read_text())
    c["process"]["terminal"] = False
    c["process"]["env"] += [f"{k}={v}" for k, v in env.items()]
    c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]  # host network
    for caps in c["process"]["capabilities"].values():  # FUSE / mount namespace inside the container
        caps.append("CAP_SYS_ADMIN")
    c["root"]["readonly"] = False
    for src, dst, ro in binds:
        c["mounts"].append(
            {"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro" if ro else "rw"]}
        )
    c["linux"].setdefault("devices", []).append(
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}
    )
    c["linux"].setdefault("resources", {}).setdefault("devices", []).append(
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    )
    cfg_path.write_text(json.dumps(c))


def _runc(bundle: Path, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg_path = bundle / "config.json"
    original = cfg_path.read_text()
    if args is not None:
        c = json.loads(original)
        c["process"]["args"] = args
        cfg_path.write_text(json.dumps(c))
    try:
        return subprocess.run(["runc", "run", "--bundle", str(bundle), f"confide-{uuid.uuid4().hex[:8]}"],
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    finally:
        cfg_path.write_text(original)


def _sconify(
    env: dict[str, str], src: Path, out: Path, tmp: Path, *protect: str
) -> subprocess.CompletedProcess[str]:
    """sconify the native image ``src`` into ``out`` (policy ``app``, service ``main``), writing
    ``tmp/policy.yaml`` and ``tmp/volume.key``."""
    flags = [arg for path in protect for arg in ("--protect", path)]
    return _confide(env, "sconify", "--from", f"oci:{src}:latest", "--to", f"oci:{out}:latest", *flags,
                    "--policy", "app", "--service", "main", "--policy-out", str(tmp / "policy.yaml"),
                    "--key-out", str(tmp / "volume.key"), "--no-runtime-check")  # fmt: skip


def _unpack(env: dict[str, str], out: Path, bundle: Path) -> None:
    """umoci-unpack ``out`` into the runc ``bundle``, with the host's /usr and /lib (the runtime's
    Python), the CAS's certificate and the simulated platform bound in, read-only."""
    subprocess.run(["umoci", "unpack", "--image", f"{out}:latest", str(bundle)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    inside = {"CONFIDE_CAS_URL": env["CONFIDE_CAS_URL"], "CONFIDE_CAS_CERT": "/cas/cas-cert.pem",
              "CONFIDE_SIM_DIR": "/cas/sim"}  # fmt: skip
    _prepare_bundle(bundle, inside, [("/usr", "/usr", True), ("/lib", "/lib", True), ("/lib64", "/lib64", True),
                                     (env["CONFIDE_CAS_CERT"], "/cas/cas-cert.pem", True),
                                     (env["CONFIDE_SIM_DIR"], "/cas/sim", True)])  # fmt: skip


def test_sconified_container_runs_with_runc(tmp_path: Path) -> None:
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        env = dict(cas.env)
        src, out, bundle = tmp_path / "src", tmp_path / "out", tmp_path / "bundle"
        _native_image(src)
        made = _sconify(env, src, out, tmp_path, "/app/model.txt", "/data")
        # sconify computed the simulated measurement of `/bin/sh /app/run.sh` in the image (busybox
        # and the script are the image's; the bind-mounted host /usr is the runtime's Python only)
        computed = made.stdout.split("measurement: ", 1)[1].split()[0]
        # No plaintext of a protected file in any blob of the output image.
        for blob in (out / "blobs" / "sha256").iterdir():
            import gzip

            data = blob.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            assert b"TOP-SECRET-MODEL" not in data and b"first-note-7f3a" not in data
        _unpack(env, out, bundle)
        # ... and it is what the runtime measures in the running container
        measured = _runc(bundle, ["/confide/bin/confide", "sim", "measure", "--", "/bin/sh", "/app/run.sh"])
        assert measured.returncode == 0, measured.stderr
        assert measured.stdout.strip() == computed
        policy = (tmp_path / "policy.yaml").read_text()
        assert computed in policy and "00" * 48 not in policy  # used as written, nothing replaced
        policy = policy.replace("  environment:\n", "  environment:\n    APP_SECRET: $$SCONE::app_secret$$\n")
        policy += "secrets:\n- name: app_secret\n  kind: ascii\n  size: 12\n"
        (tmp_path / "policy.yaml").write_text(policy)
        _confide(env, "identity", "create", "--out", str(tmp_path / "owner.id"))
        _confide(
            env, "policy", "apply", str(tmp_path / "policy.yaml"), "--identity", str(tmp_path / "owner.id")
        )
        volume = bundle / "rootfs" / "confide" / "volumes" / "image"
        pristine = tmp_path / "volume-as-shipped"
        shutil.copytree(volume, pristine)

        first = _runc(bundle)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "model: TOP-SECRET-MODEL" in first.stdout
        assert "first-note-7f3a" in first.stdout
        secret = first.stdout.split("secret: ", 1)[1].split()[0]
        assert len(secret) == 12
        second = _runc(bundle)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "written by run" in second.stdout  # the first run's write, under the new tag
        events = _confide(env, "policy", "events", "app", "--identity", str(tmp_path / "owner.id")).stdout
        generations = [
            json.loads(e)["payload"]["generation"] for e in events.splitlines() if '"volume-tag"' in e
        ]
        assert generations == [0, 1, 2]

        # One byte of a protected file changed in the image: refused.
        current = tmp_path / "volume-current"
        shutil.copytree(volume, current)
        chunks = sorted(
            p for p in volume.rglob("*") if p.is_file() and p.stat().st_size > 0 and "MANIFEST" not in p.name
        )
        victim = max(chunks, key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        victim.write_bytes(bytes(raw))
        tampered = _runc(bundle)
        assert tampered.returncode == errors.SignatureError.exit_code, tampered.stdout + tampered.stderr
        assert "does not authenticate" in tampered.stderr
        assert "first-note-7f3a" not in tampered.stdout
        # The volume as shipped (an old tag) put back: refused before anything is served.
        shutil.rmtree(volume)
        shutil.copytree(pristine, volume)
        old = _runc(bundle)
        assert old.returncode == errors.RollbackError.exit_code, old.stdout + old.stderr
        assert "TOP-SECRET-MODEL" not in old.stdout
    finally:
        cas.stop()


def test_a_script_inside_a_protected_directory_runs_with_runc(tmp_path: Path) -> None:
    """--protect /app (the whole directory, the script included): `/bin/sh /app/run.sh` is
    measured with the script as an absent argument file (docs/simulator.md, "Absent
    components"); sconify computes that measurement and confide run, after mounting the volume,
    finds the script inside it and runs it."""
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        env = dict(cas.env)
        src, out, bundle = tmp_path / "src", tmp_path / "out", tmp_path / "bundle"
        _native_image(src)
        made = _sconify(env, src, out, tmp_path, "/app", "/data")
        computed = made.stdout.split("measurement: ", 1)[1].split()[0]
        _unpack(env, out, bundle)
        measured = _runc(
            bundle, ["/confide/bin/confide", "sim", "measure", "--json", "--", "/bin/sh", "/app/run.sh"]
        )
        assert measured.returncode == 0, measured.stderr
        assert json.loads(measured.stdout)["measurement"] == computed
        assert json.loads(measured.stdout)["manifest"]["files"] == [{"arg": 1, "absent": True}]
        assert "/app/run.sh does not exist: measured as absent" in measured.stderr
        policy = (tmp_path / "policy.yaml").read_text()
        assert computed in policy and "00" * 48 not in policy
        _confide(env, "identity", "create", "--out", str(tmp_path / "owner.id"))
        _confide(
            env, "policy", "apply", str(tmp_path / "policy.yaml"), "--identity", str(tmp_path / "owner.id")
        )
        first = _runc(bundle)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "model: TOP-SECRET-MODEL" in first.stdout and "first-note-7f3a" in first.stdout
        assert "/app/run.sh does not exist yet: measured as absent" in first.stderr
    finally:
        cas.stop()


def _evil_kit(kit: Path) -> None:
    """What a host operator puts into the container (bound at /evil) for the runtime to run: a
    ``sitecustomize`` for ``PYTHONPATH``, programs named like the helpers and compilers the
    runtime might look up on ``PATH`` (each copies what the protected mount shows to /leak), and,
    with a C compiler, an OpenSSL provider library for ``OPENSSL_CONF``."""
    (kit / "py").mkdir(parents=True)
    (kit / "py" / "sitecustomize.py").write_text(
        "import os\nopen('/leak/python-%d' % os.getpid(), 'w').write('sitecustomize ran')\n"
    )
    (kit / "bin").mkdir()
    for name in ("fusermount3", "fusermount", "umount", "gcc", "cc", "ld", "objdump"):
        prog = kit / "bin" / name
        prog.write_text(
            f'#!/bin/sh\necho "{name} $*" >> /leak/helpers\ncat /app/model.txt >> /leak/helpers 2>/dev/null\n'
            f'for d in /usr/bin /bin; do [ -x "$d/{name}" ] && exec "$d/{name}" "$@"; done\nexit 1\n'
        )
        prog.chmod(0o755)
    if shutil.which("cc"):
        (kit / "evil.c").write_text(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {\n"
            '  FILE *f = fopen("/leak/openssl", "a"); if (f) { fputs("provider loaded\\n", f); fclose(f); }\n}\n'
        )
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-o", str(kit / "evil.so"), str(kit / "evil.c")], check=True
        )
        (kit / "openssl.cnf").write_text(
            "openssl_conf = init\n[init]\nproviders = providers\n[providers]\nevil = evil\n"
            "[evil]\nmodule = /evil/evil.so\nactivate = 1\n"
        )


def test_the_operators_environment_runs_no_code_of_theirs_in_the_runtime(tmp_path: Path) -> None:
    """The hostile review of 2026-12-07, for real: the host's operator starts the converted container with
    ``PYTHONPATH`` (a ``sitecustomize``), ``PATH`` (their ``fusermount3``, ``umount``, ``gcc``...)
    and ``OPENSSL_CONF`` (a provider library) of their own, their files bound in. The service runs
    as before, and none of it ran in the runtime, the FUSE server or the unmount (before: the
    FUSE server imported the sitecustomize, the unmount ran their ``fusermount3`` while the
    protected files were mounted, OpenSSL loaded their library into ``confide run``)."""
    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        env = dict(cas.env)
        src, out, bundle = tmp_path / "src", tmp_path / "out", tmp_path / "bundle"
        _native_image(src)
        _sconify(env, src, out, tmp_path, "/app", "/data")
        _unpack(env, out, bundle)
        _confide(env, "identity", "create", "--out", str(tmp_path / "owner.id"))
        _confide(
            env, "policy", "apply", str(tmp_path / "policy.yaml"), "--identity", str(tmp_path / "owner.id")
        )
        kit, leak = tmp_path / "kit", tmp_path / "leak"
        _evil_kit(kit)
        leak.mkdir()
        cfg_path = bundle / "config.json"
        c = json.loads(cfg_path.read_text())
        hostile = {
            "PATH": "/evil/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": "/evil/py", "OPENSSL_CONF": "/evil/openssl.cnf",
        }  # fmt: skip
        c["process"]["env"] = [e for e in c["process"]["env"] if e.split("=", 1)[0] not in hostile]
        c["process"]["env"] += [f"{k}={v}" for k, v in hostile.items()]
        c["mounts"] += [
            {"destination": "/evil", "type": "bind", "source": str(kit), "options": ["rbind", "ro"]},
            {"destination": "/leak", "type": "bind", "source": str(leak), "options": ["rbind", "rw"]},
        ]
        cfg_path.write_text(json.dumps(c))
        ran = _runc(bundle)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "model: TOP-SECRET-MODEL" in ran.stdout  # the service itself is unaffected
        left = {p.name: p.read_text() for p in leak.iterdir()}
        assert left == {}, left
    finally:
        cas.stop()


def test_an_image_converted_with_cas_talks_to_that_cas_only(tmp_path: Path) -> None:
    """The hostile review of 2026-12-07: ``sconify --cas`` pins the CAS's key in the launcher. The operator's
    ``CONFIDE_CAS_CERT`` of another key (a CAS of theirs at ``CONFIDE_CAS_URL``), and their own
    ``CONFIDE_CAS_SPKI`` for it, are refused (exit 40) before anything is sent; the real CAS's
    certificate runs the service."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from pki import self_signed_pem

    cas = CasProcess(tmp_path / "cas", None).start()
    try:
        env = dict(cas.env)
        src, out, bundle = tmp_path / "src", tmp_path / "out", tmp_path / "bundle"
        _native_image(src)
        _confide(env, "identity", "create", "--out", str(tmp_path / "owner.id"))
        _confide(env, "sconify", "--from", f"oci:{src}:latest", "--to", f"oci:{out}:latest", "--protect", "/app",
                 "--policy", "app", "--service", "main", "--cas", env["CONFIDE_CAS_URL"],
                 "--identity", str(tmp_path / "owner.id"), "--no-runtime-check")  # fmt: skip
        _unpack(env, out, bundle)
        fake = self_signed_pem(tmp_path / "fake-cas.pem", "not the cas")
        cfg_path = bundle / "config.json"
        original = cfg_path.read_text()
        c = json.loads(original)
        c["process"]["env"] = [e for e in c["process"]["env"] if not e.startswith("CONFIDE_CAS_CERT=")]
        c["process"]["env"] += ["CONFIDE_CAS_CERT=/fake/cas.pem", f"CONFIDE_CAS_SPKI={'ab' * 32}"]
        c["mounts"].append(
            {"destination": "/fake/cas.pem", "type": "bind", "source": str(fake), "options": ["rbind", "ro"]}
        )
        cfg_path.write_text(json.dumps(c))
        refused = _runc(bundle)
        assert refused.returncode == errors.NetworkError.exit_code, refused.stdout + refused.stderr
        assert "not the CAS this runtime is pinned to" in refused.stderr
        assert "TOP-SECRET-MODEL" not in refused.stdout
        cfg_path.write_text(original)
        ran = _runc(bundle)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "model: TOP-SECRET-MODEL" in ran.stdout
    finally:
        cas.stop()
