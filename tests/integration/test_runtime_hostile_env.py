"""The host operator's environment against the runtime (docs/limitations.md "confide run", task
the hostile review of 2026-12-07): ``PYTHON*`` variables, ``HOME`` (user site), ``PATH`` must not make the processes that
hold a volume key or a mount of decrypted data run code the operator chose."""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from confide.cas.client import CasClient
from confide.errors import NetworkError
from confide.image.runtime import launcher_script
from confide.volume import VolumeKey, add_sources, create_volume, seal_volume, write_key
from confide.volume.mount import find_shared_library, fuse3_library, fuse_usable

SRC = Path(__file__).resolve().parents[2] / "src"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pki import self_signed_pem  # noqa: E402

SECRET = b"decrypted protected content\n"


def _volume(root: Path) -> tuple[Path, Path, str]:
    src = root / "src"
    src.mkdir()
    (src / "secret.txt").write_bytes(SECRET)
    key = VolumeKey.generate()
    key_file = root / "key"
    write_key(key_file, key)
    vol = root / "vol"
    create_volume(vol, key, chunk_size=4096)
    add_sources(vol, key, [src])
    return vol, key_file, seal_volume(vol, key)


def _hostile_env(root: Path, marker: Path) -> dict[str, str]:
    """What an operator can put into the environment of a container's ``confide``: a
    ``PYTHONPATH`` and a user site holding ``sitecustomize``/``usercustomize``/``ctypes``, and a
    ``PATH`` whose first directory holds programs named like the helpers a mount runs. Each
    records where it ran (and, a helper, what the mount shows) in ``marker``."""
    evil = root / "evil"
    evil.mkdir()
    note = f"import os\nwith open({str(marker)!r}, 'a') as f: f.write('python code ran in %d\\n' % os.getpid())\n"
    (evil / "sitecustomize.py").write_text(note)
    site = (
        root
        / "home"
        / ".local"
        / "lib"
        / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        / "site-packages"
    )
    site.mkdir(parents=True)
    (site / "usercustomize.py").write_text(note)
    (root / "startup.py").write_text(note)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name in ("fusermount3", "fusermount", "umount", "gcc", "cc", "ld", "objdump", "ldconfig"):
        prog = bin_dir / name
        real = (
            shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or "/bin/false"
        )  # the mount still works
        prog.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {marker}\nfor a; do cat "$a/secret.txt" >> {marker} 2>/dev/null; done\n'
            f'exec {real} "$@"\n'
        )
        prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    return {
        "PYTHONPATH": f"{SRC}{os.pathsep}{evil}",
        "PYTHONSTARTUP": str(root / "startup.py"),
        "HOME": str(root / "home"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="a FUSE mount as root (the runtime's case)")
@pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))
def test_fuse_server_and_unmount_ignore_the_operators_python_variables_and_path(tmp_path: Path) -> None:
    vol, key_file, tag = _volume(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    marker = tmp_path / "marker"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFIDE_", "PYTHON", "FUSE_"))}
    env.update(_hostile_env(tmp_path, marker))
    # the mounting command itself is started cleanly (in an image, the launcher's `-I` does that)
    cmd = [
        sys.executable,
        "-I",
        "-c",
        f"import sys; sys.path.insert(0, {str(SRC)!r}); from confide.cli import main; main()",
    ]
    proc = subprocess.Popen(
        [*cmd, "volume", "mount", str(vol), str(mnt), "--key", str(key_file), "--tag", tag, "--mode", "fuse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    try:
        assert "via fuse" in first, proc.stderr.read() if proc.poll() is not None else first
        assert (mnt / "secret.txt").read_bytes() == SECRET
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ran = marker.read_text() if marker.exists() else ""
    # Before: the FUSE server (`python -m`, no -I, the caller's environment) imported the
    # PYTHONPATH's sitecustomize and the user site's usercustomize, and the unmount ran the
    # PATH's `fusermount3` while the mount still showed the decrypted files.
    assert ran == ""


def test_library_lookup_runs_no_program_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ctypes.util.find_library runs ``gcc``/``cc``/``ld``/``objdump`` from ``PATH`` when ldconfig
    lists no such library (an image without libfuse, or without ldconfig): the runtime's lookups
    of libfuse and libc run none of them."""
    marker = tmp_path / "marker"
    env = _hostile_env(tmp_path, marker)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.delenv("FUSE_LIBRARY_PATH", raising=False)
    monkeypatch.delenv("FUSE_LIBRARY_NAME", raising=False)
    assert find_shared_library("confide-no-such-library") is None
    chosen = fuse3_library()["FUSE_LIBRARY_PATH"]
    assert chosen.startswith(("libfuse", "/"))
    assert not marker.exists(), marker.read_text()
    # what find_library does with the same PATH (the reason for find_shared_library)
    assert ctypes.util.find_library("confide-no-such-library") is None
    assert "gcc" in marker.read_text() or "cc" in marker.read_text()


def _launcher(tmp_path: Path, lib_dir: Path) -> Path:
    """A converted image's ``/confide/bin/confide``, for this interpreter and ``lib_dir``."""
    launcher = tmp_path / "confide-launcher"
    launcher.write_bytes(launcher_script(sys.executable, str(lib_dir)))
    launcher.chmod(0o755)
    return launcher


def test_launcher_removes_what_makes_libraries_load_the_operators_code(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "confide").mkdir(parents=True)
    (lib / "confide" / "__init__.py").write_text("")
    (lib / "confide" / "cli.py").write_text(
        "import json, os, sys, warnings\ndef main():\n"
        "    loaded = [m for m in ('ssl', '_ssl', '_hashlib', 'evil') if m in sys.modules]\n"
        "    flags = [sys.flags.inspect, sys.flags.dev_mode, sys.flags.no_user_site, sys.flags.ignore_environment]\n"
        "    print(json.dumps([sorted(os.environ), loaded, flags, sys.warnoptions, sys.path]))\n"
        "    print(os.environ['CONFIDE_SCONIFY'])\n"
    )
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    for name in ("sitecustomize.py", "evil.py", "startup.py"):
        (evil / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    hostile = {
        "OPENSSL_CONF": "/x/openssl.cnf", "OPENSSL_MODULES": "/x", "OPENSSL_ENGINES": "/x",
        "FUSE_LIBRARY_PATH": "/x/libfuse3.so.3", "FUSE_LIBRARY_NAME": "x", "PYTHONPATH": str(evil),
        "PYTHONSTARTUP": str(evil / "startup.py"), "PYTHONINSPECT": "1", "PYTHONDEVMODE": "1",
        "PYTHONWARNINGS": "error", "PYTHONHOME": "/nonexistent", "PYTHONSAFEPATH": "",
        "GCONV_PATH": "/x", "SSL_CERT_FILE": "/x/ca.pem", "HOSTALIASES": "/x/hosts",
        "CONFIDE_CAS_SPKI": "00" * 32, "CONFIDE_SCONIFY": "/x/contract.json",
    }  # fmt: skip
    kept = {"CONFIDE_CAS_URL": "https://cas:8081", "LD_LIBRARY_PATH": "/opt/lib", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(_launcher(tmp_path, lib))], env={**hostile, **kept}, capture_output=True, text=True, check=True,
        stdin=subprocess.DEVNULL, cwd=evil, timeout=60,
    ).stdout  # fmt: skip
    first, contract = out.splitlines()
    names, loaded, flags, warnoptions, path = json.loads(first)
    assert contract == "/confide/sconify.json"  # the image's contract, not the host's
    assert not (set(hostile) - {"CONFIDE_SCONIFY"}) & set(names)
    assert set(kept) <= set(names)
    assert loaded == []  # nothing had loaded OpenSSL before the variables were removed
    assert flags == [0, False, 1, 1] and warnoptions == []  # -I: PYTHON* ignored, no user site
    assert str(evil) not in path and "" not in path  # nor PYTHONPATH nor the current directory
    assert not marker.exists()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the provider library")
def test_openssl_conf_loads_no_provider_into_the_runtime(tmp_path: Path) -> None:
    """Tried for real: an OpenSSL configuration naming a provider module of the operator's makes
    ``confide run`` (Python's ``ssl``/``hashlib`` and ``cryptography``) load it, before it
    attests; the launcher of a converted image removes ``OPENSSL_CONF`` first."""
    marker = tmp_path / "loaded"
    (tmp_path / "evil.c").write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {\n"
        f'  FILE *f = fopen("{marker}", "a"); if (f) {{ fputs("provider loaded\\n", f); fclose(f); }}\n}}\n'
    )
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(tmp_path / "evil.so"), str(tmp_path / "evil.c")], check=True
    )
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        "openssl_conf = init\n[init]\nproviders = providers\n[providers]\nevil = evil\n"
        f"[evil]\nmodule = {tmp_path / 'evil.so'}\nactivate = 1\n"
    )
    env = {
        "PATH": os.environ.get("PATH", os.defpath), "OPENSSL_CONF": str(conf),
        "CONFIDE_CAS_URL": "https://127.0.0.1:9", "CONFIDE_SIM_DIR": str(tmp_path / "sim"),
    }  # fmt: skip
    cmd = [str(_launcher(tmp_path, SRC)), "run", "--config-id", "p/s", "--tee", "sim", "--", "/bin/true"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr  # no simulated platform key: refused, nothing attested
    assert not marker.exists()
    # the same interpreter started without the launcher's clean-up loads it (the attack)
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import ssl"], env=env, capture_output=True, check=False
    )
    assert probe.returncode == 0 and marker.exists()


def test_a_pinned_runtime_refuses_a_cas_certificate_with_another_key(tmp_path: Path) -> None:
    """``CONFIDE_CAS_URL``/``CONFIDE_CAS_CERT`` pointed at a CAS of the operator's: an image
    converted with ``sconify --cas`` pins its CAS's key in the launcher, and the host's own
    ``CONFIDE_CAS_SPKI`` cannot replace it; nothing is sent (the refusal comes before a
    connection: the URL here has no server)."""
    real = self_signed_pem(tmp_path / "real-cas.pem", "real cas")
    fake = self_signed_pem(tmp_path / "fake-cas.pem", "fake cas")
    pin = CasClient("https://127.0.0.1:9", real).cas_spki_sha256
    assert pin is not None
    launcher = tmp_path / "confide-launcher"
    launcher.write_bytes(launcher_script(sys.executable, str(SRC), cas_spki=pin))
    launcher.chmod(0o755)
    fake_pin = CasClient("https://127.0.0.1:9", fake).cas_spki_sha256
    base = {"PATH": os.environ.get("PATH", os.defpath), "CONFIDE_CAS_URL": "https://127.0.0.1:9"}
    env = {**base, "CONFIDE_CAS_CERT": str(fake), "CONFIDE_CAS_SPKI": str(fake_pin)}
    done = subprocess.run(
        [str(launcher), "cas", "successor", "show"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == NetworkError.exit_code, done.stderr
    assert "not the CAS this runtime is pinned to" in done.stderr
    # the real CAS's certificate passes the pin: the same command then tries to connect
    env = {**base, "CONFIDE_CAS_CERT": str(real)}
    done = subprocess.run(
        [str(launcher), "cas", "successor", "show"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == NetworkError.exit_code and "cannot reach the CAS" in done.stderr, done.stderr


def test_cas_client_from_env_checks_the_pin(tmp_path: Path) -> None:
    real = self_signed_pem(tmp_path / "real.pem", "real cas")
    fake = self_signed_pem(tmp_path / "fake.pem", "fake cas")
    pin = CasClient("https://127.0.0.1:9", real).cas_spki_sha256
    assert pin is not None
    url = {"CONFIDE_CAS_URL": "https://127.0.0.1:9"}
    CasClient.from_env({**url, "CONFIDE_CAS_CERT": str(real), "CONFIDE_CAS_SPKI": pin.upper()}).close()
    CasClient.from_env({**url, "CONFIDE_CAS_CERT": str(fake)}).close()  # not pinned: the environment's CAS
    with pytest.raises(NetworkError, match="not the CAS this runtime is pinned to"):
        CasClient.from_env({**url, "CONFIDE_CAS_CERT": str(fake), "CONFIDE_CAS_SPKI": pin})
