"""`confide volume` driven as a user would: a real subprocess per command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli import run_confide


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_confide("volume", *args, env=env, drop=("CONFIDE_VOLUME_KEY", "SOURCE_DATE_EPOCH"))


def test_volume_cli_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "public").mkdir()
    (src / "public" / "README").write_text("hello\n")
    vol, key = tmp_path / "vol", tmp_path / "vol.key"

    r = _run("create", str(vol), "--key-out", str(key))
    assert r.returncode == 0, r.stderr
    key_hex = key.read_text().strip()
    assert len(key_hex) == 64 and oct(key.stat().st_mode & 0o777) == "0o600"

    r = _run("add", str(vol), str(src), "--key", str(key), "--authenticate", "public")
    assert r.returncode == 0, r.stderr
    r = _run("seal", str(vol), "--key", str(key))
    assert r.returncode == 0, r.stderr
    tag = r.stdout.strip()
    assert len(tag) == 64

    r = _run("verify", str(vol), "--key", str(key), "--tag", tag)
    assert r.returncode == 0 and "verified: 2 files" in r.stdout, r.stdout + r.stderr

    # key from the environment; the key never appears in any output
    out = tmp_path / "out"
    r = _run("open", str(vol), "--to", str(out), "--tag", tag, env={"CONFIDE_VOLUME_KEY": key_hex})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "public" / "README").read_text() == "hello\n"
    assert (tmp_path / "out" / "models" / "weights.bin").read_bytes() == (
        src / "models" / "weights.bin"
    ).read_bytes()
    assert key_hex not in r.stdout + r.stderr

    # no key at all: usage error
    r = _run("verify", str(vol))
    assert r.returncode == 2 and "no volume key" in r.stderr

    # rollback: an old copy presented after an update exits 60
    old = tmp_path / "old"
    subprocess.run(["cp", "-a", str(vol), str(old)], check=True)
    (src / "public" / "README").write_text("v2\n")
    assert _run("add", str(vol), str(src / "public"), "--dest", "public", "--key", str(key)).returncode == 0
    new_tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()
    assert new_tag != tag
    r = _run("verify", str(old), "--key", str(key), "--tag", new_tag)
    assert r.returncode == 60 and "RollbackError" in r.stderr
    r = _run("open", str(old), "--key", str(key), "--to", str(tmp_path / "o2"), "--tag", new_tag)
    assert r.returncode == 60

    # one flipped byte: verify names the file (exit 21), open refuses and leaves nothing
    obj = next(p for p in (vol / "objects").iterdir() if p.stat().st_size > 1000)
    raw = bytearray(obj.read_bytes())
    raw[1234] ^= 1
    obj.write_bytes(raw)
    r = _run("verify", str(vol), "--key", str(key), "--tag", new_tag, "--json")
    assert r.returncode == 21, r.stdout
    assert '"path": "models/weights.bin"' in r.stdout
    r = _run("open", str(vol), "--key", str(key), "--to", str(tmp_path / "o3"), "--tag", new_tag)
    assert r.returncode == 21 and "models/weights.bin" in r.stderr
    assert list((tmp_path / "o3").iterdir()) == []


def test_volume_rm(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "old.csv").write_text("1,2\n")
    (src / "app.py").write_text("print(1)\n")
    vol, key = tmp_path / "vol", tmp_path / "vol.key"
    assert _run("create", str(vol), "--key-out", str(key)).returncode == 0
    assert _run("add", str(vol), str(src), "--key", str(key)).returncode == 0
    tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()

    r = _run("rm", str(vol), "data", "--key", str(key))
    assert r.returncode == 2 and "--recursive" in r.stderr
    r = _run("rm", str(vol), "missing", "--key", str(key))
    assert r.returncode == 2 and "'missing' is not in the volume" in r.stderr
    r = _run("rm", str(vol), "/data", "--recursive", "--key", str(key))
    assert r.returncode == 0 and "removed 2 entries (1 files); not sealed yet" in r.stdout, r.stderr
    new_tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()
    assert new_tag != tag
    r = _run("verify", str(vol), "--key", str(key), "--tag", new_tag)
    assert r.returncode == 0 and "verified: 1 files" in r.stdout, r.stdout + r.stderr


def test_volume_cli_keeps_times_with_source_date_epoch_and_mtime(tmp_path: Path) -> None:
    ns = 1_000_000_000
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_text("old\n")
    (src / "new").write_text("new\n")
    os.utime(src / "old", ns=(0, 1_000_000_000 * ns + 7))
    os.utime(src / "new", ns=(0, 2_000_000_000 * ns))
    vol, key = tmp_path / "vol", tmp_path / "vol.key"
    assert _run("create", str(vol), "--key-out", str(key)).returncode == 0

    r = _run("add", str(vol), str(src), "--key", str(key), env={"SOURCE_DATE_EPOCH": "1.5"})
    assert r.returncode == 2 and "SOURCE_DATE_EPOCH" in r.stderr  # malformed: the build fails
    r = _run("add", str(vol), str(src), "--key", str(key), env={"SOURCE_DATE_EPOCH": "1500000000"})
    assert r.returncode == 0, r.stderr
    tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()
    out = tmp_path / "out"
    assert _run("open", str(vol), "--key", str(key), "--to", str(out), "--tag", tag).returncode == 0
    assert (out / "old").stat().st_mtime_ns == 1_000_000_000 * ns + 7  # older: kept
    assert (out / "new").stat().st_mtime_ns == 1_500_000_000 * ns  # newer: clamped

    r = _run("add", str(vol), str(src / "old"), "--key", str(key), "--mtime", "86400")
    assert r.returncode == 0, r.stderr
    tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()
    out2 = tmp_path / "out2"
    assert _run("open", str(vol), "--key", str(key), "--to", str(out2), "--tag", tag).returncode == 0
    assert (out2 / "old").stat().st_mtime_ns == 86400 * ns
    assert _run("add", str(vol), str(src), "--key", str(key), "--mtime", "-1").returncode == 2


def test_a_writer_given_the_arguments_swapped_says_the_volume_comes_first(tmp_path: Path) -> None:
    """`confide volume add SRC DIR` (or a volume directory that does not exist) was "cannot lock:
    Not a directory": the message now says it is not a protected volume and that DIR comes
    first. Exit code unchanged (50, StorageError)."""
    vol, key = tmp_path / "vol", tmp_path / "vol.key"
    assert _run("create", str(vol), "--key-out", str(key)).returncode == 0
    src = tmp_path / "a.txt"
    src.write_text("a\n")
    hint = "not a protected volume (the volume DIR comes first, as in `confide volume add DIR SRC...`"
    for args in (
        ("add", str(src), str(vol)),
        ("add", str(tmp_path / "absent"), str(src)),
        ("seal", str(src)),
    ):
        r = _run(*args, "--key", str(key))
        assert r.returncode == 50, (args, r.stderr)
        assert "cannot lock" in r.stderr and hint in r.stderr, (args, r.stderr)
    assert src.read_text() == "a\n"  # the source is left as it was


def test_a_writer_in_an_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    """`volume add`, `rm` or `seal` in an existing directory that is not a volume is refused
    (exit 2, "not a protected volume") without creating the writer lock file there (it used to
    leave `.lock` behind): the directory stays empty, and
    `volume create` still accepts it afterwards."""
    vol, key = tmp_path / "empty", tmp_path / "vol.key"
    assert _run("create", str(tmp_path / "other"), "--key-out", str(key)).returncode == 0
    vol.mkdir()
    src = tmp_path / "a.txt"
    src.write_text("a\n")
    for args in (("add", str(vol), str(src)), ("rm", str(vol), "a.txt"), ("seal", str(vol))):
        r = _run(*args, "--key", str(key))
        assert r.returncode == 2, (args, r.stderr)
        assert f"{str(vol)!r} is not a protected volume: MANIFEST missing" in r.stderr, (args, r.stderr)
        assert list(vol.iterdir()) == [], args
    r = _run("create", str(vol), "--key-out", str(tmp_path / "new.key"))
    assert r.returncode == 0, r.stderr
    assert _run("add", str(vol), str(src), "--key", str(tmp_path / "new.key")).returncode == 0
    assert (vol / ".lock").is_file()  # a volume's writers lock it


def test_a_malformed_tag_is_a_usage_error_not_a_rollback(tmp_path: Path) -> None:
    """`--tag` of verify, open and mount is checked as `--expect-tag` is: a value that is not a
    volume tag (64 hex digits) is exit 2 before the volume is read, not a RollbackError (exit 60,
    "an old or different version of the volume") naming the mistyped value as the expected one."""
    vol, key = tmp_path / "vol", tmp_path / "vol.key"
    assert _run("create", str(vol), "--key-out", str(key)).returncode == 0
    tag = _run("seal", str(vol), "--key", str(key)).stdout.strip()
    for bad in ("00", tag[:-1], tag + "0", tag[:-1] + "g"):
        r = _run("verify", str(vol), "--key", str(key), "--tag", bad)
        assert r.returncode == 2 and "expected 64 hex digits (a volume tag)" in r.stderr, r.stderr
        r = _run("verify", str(vol), "--key", str(key), "--tag", bad, "--json")
        assert r.returncode == 2 and '"class": "UsageError"' in r.stdout, r.stdout
        out = tmp_path / "out"
        r = _run("open", str(vol), "--key", str(key), "--to", str(out), "--tag", bad)
        assert r.returncode == 2 and "expected 64 hex digits" in r.stderr, r.stderr
        assert not out.exists()
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        r = _run("mount", str(vol), str(mnt), "--key", str(key), "--tag", bad)
        assert r.returncode == 2 and "expected 64 hex digits" in r.stderr, r.stderr
    # the right tag in upper case is the same tag; another well-formed one is still a rollback
    r = _run("verify", str(vol), "--key", str(key), "--tag", tag.upper())
    assert r.returncode == 0, r.stderr
    r = _run("verify", str(vol), "--key", str(key), "--tag", "0" * 64)
    assert r.returncode == 60 and "RollbackError" in r.stderr
