"""sconify on small generated images: whiteouts, opaque dirs, hard links, symlinks, no plaintext left."""

from __future__ import annotations

import json
import os
import random
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from confide.errors import ParseError, UsageError
from confide.image import SconifyOptions, parse_ref, policy_yaml, sconify
from confide.volume import VolumeKey, open_volume
from confide.volume.store import load_sealed
from image_builder import (
    PYTHON_BASE,
    Image,
    M,
    all_blob_bytes,
    blocks,
    extract_volume,
    layer_names,
    layer_tar,
    raw_file,
    raw_header,
    raw_pax,
    read_layout,
    sparse_content,
)

KEY = VolumeKey(bytes(range(32)))
S_OLD = b"SECRET-v1-overwritten-later-7d1c"
S_DELETED = b"SECRET-deleted-above-91aa"
S_FINAL = b"SECRET-v2-final-content-3e0f"
S_MODEL = b"SECRET-model-weights-5b2e" * 100
S_OPAQUE = b"SECRET-hidden-by-opaque-0c4d"


def base_image(**kw: object) -> Image:
    lower = [
        *PYTHON_BASE,
        M("etc/", "d"),
        M("etc/motd", data=b"public motd"),
        M("app/", "d"),
        M("app/run.sh", data=b"#!/bin/sh\nexec cat /app/conf.txt\n", mode=0o755),
        M("app/conf.txt", data=S_OLD, mode=0o640, uid=1000, gid=1000),
        M("app/old.key", data=S_DELETED),
        M("app/cache/", "d"),
        M("app/cache/blob", data=S_OPAQUE),
        M("app/link-to-conf", "h", link="app/conf.txt"),
        M("app/current", "l", link="conf.txt"),
        M("data/", "d"),
        M("data/model.bin", data=S_MODEL),
        M("data/readme", data=b"public readme"),
        M("dev/", "d"),
        M("dev/null", "c", mode=0o666),
        M("run/", "d"),
        M("run/fifo", "p"),
    ]
    upper = [
        M("app/.wh.old.key", "f"),  # deleted above
        M("app/conf.txt", data=S_FINAL, mode=0o600, uid=1000, gid=1000),  # overwritten above
        M("app/cache/", "d"),
        M("app/cache/.wh..wh..opq", "f"),  # opaque: the lower cache/blob disappears
        M("app/cache/fresh", data=b"new cache entry"),
        M("etc/.wh.motd", "f"),
    ]
    return Image([lower, upper], **kw)  # type: ignore[arg-type]


def run(tmp_path: Path, img: Image, *, out: str = "out", key: VolumeKey = KEY, **kw: object):
    src = tmp_path / "src"
    if not src.exists():
        img.write_layout(src)
    kw.setdefault("protect", ["/app", "/data/model.bin"])
    opts = SconifyOptions(
        parse_ref(f"oci:{src}"), parse_ref(f"oci:{tmp_path / out}"), policy="pol", service="svc", **kw
    )  # type: ignore[arg-type]
    return sconify(opts, key)


SECRETS = [S_OLD, S_DELETED, S_FINAL, S_MODEL[:200], S_OPAQUE]


def test_no_plaintext_of_protected_files_in_any_blob(tmp_path: Path) -> None:
    run(tmp_path, base_image())
    blobs = all_blob_bytes(tmp_path / "out")
    assert len(blobs) >= 10
    for secret in SECRETS:
        assert not any(secret in b for b in blobs), secret
    # negative twin: the source image has every one of them
    src_blobs = all_blob_bytes(tmp_path / "src")
    for secret in SECRETS:
        assert any(secret in b for b in src_blobs), secret


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_volume_holds_the_final_contents(tmp_path: Path, compression: str) -> None:
    res = run(tmp_path, base_image(compression=compression), compression=compression)
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    opened = tmp_path / "opened"
    open_volume(vol, KEY, opened, res.volume_tag)
    assert (opened / "app/conf.txt").read_bytes() == S_FINAL  # the upper layer's version
    assert (opened / "app/link-to-conf").read_bytes() == S_OLD  # hard link: content at link time
    assert not (opened / "app/old.key").exists()  # deleted by a whiteout
    assert not (opened / "app/cache/blob").exists()  # hidden by the opaque directory
    assert (opened / "app/cache/fresh").read_bytes() == b"new cache entry"
    assert (opened / "app/current").readlink() == Path("conf.txt")
    assert (opened / "data/model.bin").read_bytes() == S_MODEL
    assert not (opened / "data/readme").exists()  # not protected: stays in the image
    assert res.files == 5
    assert (opened / "app/conf.txt").stat().st_mode & 0o777 == 0o600


def test_unprotected_content_and_special_files_survive(tmp_path: Path) -> None:
    run(tmp_path, base_image())
    _manifest, config, layers = read_layout(tmp_path / "out")
    lower = layer_names(layers[0])
    assert "data/readme" in lower and "dev/null" in lower and "run/fifo" in lower
    assert not any(n == "app" or n.startswith("app/") for n in lower)
    assert "data/model.bin" not in lower
    upper = layer_names(layers[1])
    assert "etc/.wh.motd" in upper  # whiteouts of unprotected paths are kept
    assert not any(n.startswith("app/") for n in upper)
    top = layer_names(layers[-1])
    assert "app" in top and "data/model.bin" in top  # mount points (empty)
    assert "confide/sconify.json" in top
    assert len(layers) == 4 and len(config["rootfs"]["diff_ids"]) == 4
    assert len(config["history"]) == 4


def test_entrypoint_and_policy(tmp_path: Path) -> None:
    res = run(tmp_path, base_image())
    _, config, _ = read_layout(tmp_path / "out")
    assert config["config"]["Entrypoint"] == [
        "/confide/bin/confide", "run", "--config-id", "pol/svc", "--tee", "sim", "--", "/app/run.sh", "--serve",
    ]  # fmt: skip
    assert "Cmd" not in config["config"]
    assert config["created"] == "2024-01-02T03:04:05Z"
    svc = res.policy["services"][0]
    assert svc["command"] == "/app/run.sh --serve"
    assert svc["environment"] == {"PATH": "/usr/bin:/bin", "MODE": "prod"}
    assert svc["pwd"] == "/app"
    vol = res.policy["volumes"][0]
    assert vol["fspf_tag"] == res.volume_tag
    contract = json.loads(open_contract(tmp_path / "out"))
    assert [m["path"] for m in contract["volumes"][0]["mounts"]] == ["/app", "/data/model.bin"]
    text = policy_yaml(res.policy, KEY, "src")
    assert KEY.hex() in text and 'version: "0.3"' in text.replace("'", '"')
    # /app/run.sh is inside the protected /app: measured as absent (docs/sconify.md "The
    # measurement"); its #! /bin/sh is not in the image, so confide run would refuse it
    assert "REPLACE the measurement" not in text and res.measurement in text
    assert any("will refuse to start /app/run.sh" in w for w in res.warnings)
    from confide.policy import loads_policy

    loaded = loads_policy(text)  # the template is a valid policy as it stands
    assert (
        loaded.volumes[0].fspf_key == KEY.hex()
        and loaded.images[0].volumes[0].path == "/confide/volumes/image"
    )


def test_runtime_layer_launcher(tmp_path: Path) -> None:
    run(tmp_path, base_image())
    _, _, layers = read_layout(tmp_path / "out")
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(layers[2])) as tf:
        names = tf.getnames()
        launcher = tf.extractfile("confide/bin/confide").read()  # type: ignore[union-attr]
        mtimes = {m.mtime for m in tf}
    assert launcher.startswith(b"#!/usr/bin/python3 -I\n")
    assert "confide/lib/python/confide/cli.py" in names
    assert "confide/lib/python/cryptography/__init__.py" in names
    assert names == sorted(names, key=str.encode)
    assert mtimes == {0}


def test_reproducible_same_key_same_digests(tmp_path: Path) -> None:
    a = run(tmp_path, base_image(), out="a")
    b = run(tmp_path, base_image(), out="b")
    assert a.manifest_digest == b.manifest_digest and a.volume_tag == b.volume_tag
    assert sorted(p.name for p in (tmp_path / "a/blobs/sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/blobs/sha256").iterdir()
    )
    c = run(tmp_path, base_image(), out="c", key=VolumeKey(b"\x01" * 32))  # negative twin: another key
    assert c.manifest_digest != a.manifest_digest and c.volume_tag != a.volume_tag


class _Reversed:
    """An ``os.scandir`` iterator that yields its entries in reverse (still a context manager)."""

    def __init__(self, it: Any) -> None:
        self._it, self._entries = it, list(it)

    def __iter__(self) -> Any:
        return iter(self._entries[::-1])

    def __enter__(self) -> _Reversed:
        return self

    def __exit__(self, *exc: object) -> None:
        self._it.close()


def test_reproducible_whatever_the_listing_order_staging_times_and_runtime_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same input + same key -> same digests, with what a loaded machine or another file system
    may change between two runs: the order directories are listed in (os.scandir/os.listdir,
    hence Path.iterdir and rglob: the vendored files, the staging area, the volume's objects),
    the modification times of the files sconify stages itself, the clock, and a cold
    runtime-layer cache (the layer rebuilt) against a warm one (the cached blob)."""
    sc = sys.modules["confide.image.sconify"]
    img = base_image()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-a"))
    a = run(tmp_path, img, out="a")
    warm = run(tmp_path, img, out="warm")  # the runtime layer from the cache
    scandir, listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda *args, **kw: _Reversed(scandir(*args, **kw)))
    monkeypatch.setattr(os, "listdir", lambda *args, **kw: listdir(*args, **kw)[::-1])
    probe = tmp_path / "probe"
    for name in ("1", "2", "3"):
        (probe / name).mkdir(parents=True)
    assert [p.name for p in probe.iterdir()] == listdir(probe)[::-1]  # the patch is in effect
    stage = sc._Staging.__call__
    rng = random.Random(7)

    def stage_at_other_times(self: Any, key: tuple[int, int], data: Any, size: int) -> None:
        stage(self, key, data, size)
        for p in self.wanted[key]:
            os.utime(self.root / p, ns=(0, rng.randrange(1, 2**62)))

    monkeypatch.setattr(sc._Staging, "__call__", stage_at_other_times)
    clock, clock_ns = time.time, time.time_ns  # three years later, should anything read the clock
    monkeypatch.setattr(time, "time", lambda: clock() + 1e8)
    monkeypatch.setattr(time, "time_ns", lambda: clock_ns() + 10**17)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-b"))  # cold: rebuilt, reversed listings
    b = run(tmp_path, img, out="b")
    assert warm.manifest_digest == a.manifest_digest and b.manifest_digest == a.manifest_digest
    assert b.volume_tag == a.volume_tag
    assert sorted(p.name for p in (tmp_path / "a/blobs/sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "b/blobs/sha256").iterdir()
    )
    # negative twin: the running confide is input (its source tree is vendored): one more file
    # in it (a merge landing between two runs) gives another runtime layer and image digest,
    # the same volume
    extra = tmp_path / "extra.py"
    extra.write_text("# landed between the runs\n")
    vendored = sc._vendored
    monkeypatch.setattr(sc, "_vendored", lambda: tuple(sorted((*vendored(), ("confide/extra.py", extra)))))
    c = run(tmp_path, img, out="c")
    assert c.manifest_digest != a.manifest_digest and c.volume_tag == a.volume_tag


def test_untouched_layers_are_copied_byte_for_byte(tmp_path: Path) -> None:
    img = base_image()
    img.layers.append([M("opt/", "d"), M("opt/tool", data=b"tool")])
    res = run(tmp_path, img)
    assert res.rewritten_layers == [0, 1]
    src_manifest, _, _ = read_layout(tmp_path / "src")
    out_manifest, _, _ = read_layout(tmp_path / "out")
    assert out_manifest["layers"][2]["digest"] == src_manifest["layers"][2]["digest"]
    assert out_manifest["layers"][0]["digest"] != src_manifest["layers"][0]["digest"]


def test_authenticate_region(tmp_path: Path) -> None:
    res = run(tmp_path, base_image(), protect=["/app"], authenticate=["/app/run.sh", "/data"])
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    opened = tmp_path / "opened"
    open_volume(vol, KEY, opened, res.volume_tag)
    assert (opened / "app/run.sh").read_bytes().startswith(b"#!/bin/sh")
    assert (opened / "data/readme").read_bytes() == b"public readme"
    regions = {
        r["path"]: r["region"] for r in json.loads(open_contract(tmp_path / "out"))["volumes"][0]["regions"]
    }
    assert regions == {"/app": "encrypted", "/app/run.sh": "authenticated", "/data": "authenticated"}
    blobs = all_blob_bytes(tmp_path / "out")
    assert not any(S_FINAL in b for b in blobs)
    # authenticated-only files are stored in plaintext (with MACs) in the volume, by design
    assert any(b"exec cat /app/conf.txt" in b for b in blobs)
    contract = json.loads(open_contract(tmp_path / "out"))
    assert contract["volumes"][0]["mounts"] == [
        {"path": "/app", "kind": "dir"},
        {"path": "/data", "kind": "dir"},
    ]


def open_contract(path: Path) -> bytes:
    import io
    import tarfile

    _, _, layers = read_layout(path)
    with tarfile.open(fileobj=io.BytesIO(layers[-1])) as tf:
        return tf.extractfile("confide/sconify.json").read()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("protect", "message"),
    [
        (["/nope"], "does not exist"),
        (["/app/current"], "is a symlink"),
        (["/dev/null"], "char"),
        (["/dev"], "a volume holds no special files"),
        (["relative"], "absolute"),
        (["/"], "below /"),
        (["/confide"], "reserved"),
        ([], "nothing to protect"),
    ],
)
def test_bad_protected_paths(tmp_path: Path, protect: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run(tmp_path, base_image(), protect=protect)
    assert not (tmp_path / "out").exists()


def test_hard_link_across_the_boundary_is_refused(tmp_path: Path) -> None:
    img = base_image()
    img.layers[0].append(M("etc/conf-copy", "h", link="app/conf.txt"))
    with pytest.raises(UsageError, match="crosses the boundary"):
        run(tmp_path, img)
    # negative twin: protecting both sides works
    res = run(tmp_path, img, protect=["/app", "/etc/conf-copy", "/data/model.bin"])
    assert res.files == 6


def test_runtime_check(tmp_path: Path) -> None:
    img = base_image()
    img.layers[0] = [m for m in img.layers[0] if not m.name.startswith("usr/bin/python")]
    with pytest.raises(UsageError, match="no python3"):
        run(tmp_path, img)
    res = run(tmp_path, img, runtime_check=False)  # explicit opt-out
    assert res.files == 5


def _usrmerged_image(loader: bool = True) -> Image:
    """A merged-/usr base as Debian bookworm's (mmdebstrap, python:3.11-slim-bookworm) lays it
    out: /lib, /lib64 and /bin are symlinks into /usr, and /usr/lib64's loader is an absolute
    symlink through /lib."""
    img = base_image()
    real = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    img.layers[0] = [
        *(m for m in img.layers[0] if not m.name.startswith("lib64")),
        M("usr/lib/", "d"),
        M("usr/lib/x86_64-linux-gnu/", "d"),
        *([M(real, data=b"\x7fELF fake loader", mode=0o755)] if loader else []),
        M("usr/lib64/", "d"),
        M("usr/lib64/ld-linux-x86-64.so.2", "l", link="/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        M("lib", "l", link="usr/lib"),
        M("lib64", "l", link="usr/lib64"),
        M("bin", "l", link="usr/bin"),
    ]
    return img


def test_runtime_check_follows_merged_usr_directory_links(tmp_path: Path) -> None:
    """The loader of a merged-/usr image is reached only through the symlinks /lib64 and /lib
    (found converting the image `make image-local` builds: every component is resolved now,
    not only the last)."""
    res = run(tmp_path, _usrmerged_image())
    assert res.files == 5
    # negative twin: the same links with no loader at their end
    with pytest.raises(UsageError, match="no glibc dynamic loader"):
        run(tmp_path / "b", _usrmerged_image(loader=False))


def test_resolve_path_in_the_image() -> None:
    from confide.image.flatten import DIR, FILE, SYMLINK, FsIndex, Node
    from confide.image.runtime import resolve_path

    idx = FsIndex()
    for path, kind, link in [
        ("usr", DIR, ""), ("usr/bin", DIR, ""), ("usr/bin/python3.11", FILE, ""),
        ("usr/bin/python3", SYMLINK, "python3.11"), ("usr/lib", DIR, ""), ("usr/lib/x86_64-linux-gnu", DIR, ""),
        ("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", FILE, ""), ("usr/lib64", DIR, ""),
        ("usr/lib64/ld-linux-x86-64.so.2", SYMLINK, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ("lib", SYMLINK, "usr/lib"), ("lib64", SYMLINK, "usr/lib64"), ("bin", SYMLINK, "usr/bin"),
        ("loop", SYMLINK, "loop/x"),
    ]:  # fmt: skip
        idx.put(path, Node(kind, 0o755, 0, 0, linkname=link, children={} if kind == DIR else None))
    loader = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert resolve_path(idx, "lib64/ld-linux-x86-64.so.2") == loader
    assert resolve_path(idx, "bin/python3") == "usr/bin/python3.11"
    assert resolve_path(idx, "bin/../lib64/./ld-linux-x86-64.so.2") == loader  # '..' of bin's target
    assert resolve_path(idx, "../../lib64/ld-linux-x86-64.so.2") == loader  # '..' at the root stays there
    assert resolve_path(idx, "usr/bin/python3.11/x") is None  # a file is no directory
    assert resolve_path(idx, "lib/missing") is None
    assert resolve_path(idx, "loop") is None  # links that do not end


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_every_layer_names_each_path_once(tmp_path: Path, compression: str) -> None:
    """containers/storage (podman, buildah, CRI-O) refuses to apply a layer that names a path
    twice ("duplicates of file paths not supported"): the runtime layer named "confide/" twice
    until an output was pulled with podman (tests/integration/test_sconify_real_images.py)."""
    run(tmp_path, base_image(), compression=compression)
    _, _, layers = read_layout(tmp_path / "out")
    assert len(layers) == 4
    for i, tar in enumerate(layers):
        names = [n.rstrip("/") for n in layer_names(tar)]
        assert len(names) == len(set(names)), (i, sorted(n for n in names if names.count(n) > 1)[:5])


def test_runtime_check_architecture(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="architecture 'arm64'"):
        run(tmp_path, base_image(architecture="arm64"))


def test_no_command(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="neither Entrypoint nor Cmd"):
        run(tmp_path, base_image(entrypoint=[], cmd=None))


def test_output_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(UsageError, match="non-empty"):
        run(tmp_path, base_image())
    assert not list(tmp_path.glob(".confide-sconify-*"))  # the work area is removed


def test_tampered_source_blob(tmp_path: Path) -> None:
    img = base_image()
    img.write_layout(tmp_path / "src")
    manifest, _, _ = read_layout(tmp_path / "src")
    blob = tmp_path / "src/blobs/sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[-20] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ParseError):
        run(tmp_path, img)
    assert not (tmp_path / "out").exists()


def test_interpreter_inside_a_protected_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="interpreter"):
        run(tmp_path, base_image(), protect=["/usr/bin"])


BUSYBOX = Path("/bin/busybox")


@pytest.mark.skipif(not BUSYBOX.exists(), reason="needs Debian's busybox-static (/bin/busybox)")
def test_busybox_image(tmp_path: Path) -> None:
    """A realistic base: the static busybox binary, an app script and data files."""
    bb = BUSYBOX.read_bytes()
    secret = b"SECRET-busybox-app-data-77aa"
    img = Image(
        [
            [*PYTHON_BASE, M("bin/", "d"), M("bin/busybox", data=bb, mode=0o755), M("bin/sh", "l", link="busybox")],
            [M("app/", "d"), M("app/main.sh", data=b"#!/bin/sh\ncat /app/data/*\n", mode=0o755),
             M("app/data/", "d"), M("app/data/a.txt", data=secret), M("app/data/b.bin", data=secret * 1000)],
        ],
        entrypoint=["/bin/sh", "/app/main.sh"],
        cmd=None,
    )  # fmt: skip
    res = run(tmp_path, img, protect=["/app/data"], authenticate=["/app/main.sh"])
    _, config, layers = read_layout(tmp_path / "out")
    assert res.rewritten_layers == [1]
    assert config["config"]["Entrypoint"][-2:] == ["/bin/sh", "/app/main.sh"]
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(layers[0])) as tf:
        assert tf.extractfile("bin/busybox").read() == bb  # type: ignore[union-attr]
    assert not any(secret in b for b in all_blob_bytes(tmp_path / "out"))
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    open_volume(vol, KEY, tmp_path / "o", res.volume_tag)
    assert (tmp_path / "o/app/data/b.bin").read_bytes() == secret * 1000
    assert (tmp_path / "o/app/main.sh").stat().st_mode & 0o777 == 0o755


def _timed_image(conf_mtime: int = 1_650_000_000) -> Image:
    return Image(
        [
            [
                *PYTHON_BASE,
                M("app/", "d", mtime=1_600_000_000),
                M(
                    "app/run.sh",
                    data=b"#!/bin/sh\n",
                    mode=0o755,
                    mtime=1_500_000_000,
                    pax_mtime="1500000000.25",
                ),
                M("app/conf.txt", data=S_FINAL, mtime=conf_mtime),
                M("app/same-inode", "h", link="app/conf.txt", mtime=1_000),
                M("app/current", "l", link="conf.txt", mtime=1_400_000_000),
                M("app/sub/", "d", mtime=1_300_000_000),
                M("app/sub/deep", data=b"deep", pax_mtime="1200000000.123456789"),
            ]
        ],
        entrypoint=["/app/run.sh"],
    )


def test_volume_keeps_the_tar_header_mtimes(tmp_path: Path) -> None:
    res = run(tmp_path, _timed_image(), protect=["/app"])
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    recorded = {e.path: e.mtime_ns for e in load_sealed(vol, KEY, res.volume_tag)[0].entries}
    ns = 1_000_000_000
    expected = {
        "app": 1_600_000_000 * ns,
        "app/run.sh": 1_500_000_000 * ns + 250_000_000,  # the pax record, to the nanosecond
        "app/conf.txt": 1_650_000_000 * ns,
        "app/same-inode": 1_650_000_000 * ns,  # a hard link is the same inode: its target's time
        "app/current": 1_400_000_000 * ns,
        "app/sub": 1_300_000_000 * ns,
        "app/sub/deep": 1_200_000_000 * ns + 123_456_789,
    }
    assert recorded == expected
    opened = tmp_path / "opened"
    open_volume(vol, KEY, opened, res.volume_tag)
    assert {p: (opened / p).lstat().st_mtime_ns for p in expected} == expected


def test_a_different_mtime_gives_a_different_volume_and_image(tmp_path: Path) -> None:
    a = run(tmp_path / "a", _timed_image(), out="o", protect=["/app"])
    a2 = run(tmp_path / "a2", _timed_image(), out="o", protect=["/app"])
    b = run(tmp_path / "b", _timed_image(conf_mtime=1_650_000_001), out="o", protect=["/app"])
    assert a.volume_tag == a2.volume_tag and a.manifest_digest == a2.manifest_digest
    assert b.volume_tag != a.volume_tag and b.manifest_digest != a.manifest_digest


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"uid": 2**33}, "got uid 8589934592"),  # a pax "uid" record: any integer
        ({"uid": -5}, "got uid -5"),
        ({"gid": 2**32}, "got gid 4294967296"),
    ],
)
def test_an_owner_outside_u32_is_a_parse_error(tmp_path: Path, member: dict[str, int], message: str) -> None:
    """Found by the fuzz2 mutation campaign: a protected member whose pax uid/gid does not fit
    the manifest's u32 raised struct.error out of sconify. Now a ParseError naming the path,
    and no output is left."""
    img = Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("app/conf.txt", data=S_FINAL, **member)]],  # type: ignore[arg-type]
        entrypoint=["/app/run.sh"],
    )  # fmt: skip
    with pytest.raises(ParseError, match=f"'app/conf.txt': {message}, expected 0..4294967295"):
        run(tmp_path, img, protect=["/app"])
    assert not (tmp_path / "out").exists()
    # The same owner outside the protected paths is copied as the image has it.
    res = run(tmp_path, img, protect=["/app/run.sh"])
    assert res.files == 1


def test_a_huge_pax_mtime_is_clamped_in_the_volume(tmp_path: Path) -> None:
    """Found by the fuzz2 mutation campaign: pax ``mtime="1e300"`` raised OverflowError (now
    refused: Go's archive/tar refuses it, test_a_pax_number_go_refuses_is_refused); the
    largest times both readers take are clamped."""
    img = Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("app/conf.txt", data=S_FINAL, pax_mtime=str(2**63 - 1)),
          M("app/old", data=b"x", pax_mtime=str(-(2**63)))]],
        entrypoint=["/app/run.sh"],
    )  # fmt: skip
    res = run(tmp_path, img, protect=["/app"])
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    recorded = {e.path: e.mtime_ns for e in load_sealed(vol, KEY, res.volume_tag)[0].entries}
    assert (recorded["app/conf.txt"], recorded["app/old"]) == (2**63 - 1, 0)


@pytest.mark.parametrize(
    ("member", "pax", "message"),
    [
        ("etc/x", {"GNU.sparse.size": "0x10"}, "malformed extended header"),  # tarfile: int() -> ValueError
        ("app/conf.txt", {"GNU.sparse.realsize": " "}, "malformed extended header"),
        ("etc/x", {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": "1,x"}, "malformed"),
        ("etc/x", {"size": "-1"}, "'etc/x' has size -1, expected at least 0"),  # was OSError in pass 2
        ("app/conf.txt", {"size": "-1"}, "'app/conf.txt' has size -1"),
    ],
)
def test_hostile_pax_records_are_parse_errors(
    tmp_path: Path, member: str, pax: dict[str, str], message: str
) -> None:
    """Found by the fuzz2 mutation campaign: tarfile raised ValueError for GNU sparse records it
    cannot read, and took a negative pax ``size`` (OSError when the layer was rewritten)."""
    members = [
        *PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
        M("app/conf.txt", data=S_FINAL), M("etc/", "d"), M("etc/x", data=b"x"),
    ]  # fmt: skip
    hostile = [replace(m, pax=pax) if m.name == member else m for m in members]
    with pytest.raises(ParseError, match=message):
        run(tmp_path, Image([hostile], entrypoint=["/app/run.sh"]), protect=["/app"])
    assert not (tmp_path / "out").exists()
    assert run(tmp_path / "ok", Image([members], entrypoint=["/app/run.sh"]), protect=["/app"]).files == 2


def test_mutated_pax_records_only_raise_confide_errors(tmp_path: Path) -> None:
    """Mutation campaign, bounded (fixed seed, 16 images): hostile pax records on a protected
    or an unprotected member; sconify succeeds or raises a confide error."""
    import random

    from confide.errors import ConfideError

    rng = random.Random("fuzz2/sconify-pax")
    values = ["1e300", "-1e300", "nan", "inf", "-1", "4294967296", "99999999999999999999", "1.5", "", " ",
              "0x10", "\u0661", "18446744073709551616", "a/../../b", "/abs"]  # fmt: skip
    keys = ["mtime", "uid", "gid", "atime", "uname", "size", "linkpath", "path", "GNU.sparse.size",
            "GNU.sparse.realsize", "GNU.sparse.map", "SCHILY.xattr.user.x"]  # fmt: skip
    members = [
        *PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
        M("app/conf.txt", data=S_FINAL), M("app/l", "l", link="conf.txt"), M("etc/", "d"), M("etc/x", data=b"x"),
    ]  # fmt: skip
    for i in range(16):
        target = rng.choice(["app/conf.txt", "app/", "app/l", "etc/x"])
        pax = {rng.choice(keys): rng.choice(values) for _ in range(rng.randrange(1, 3))}
        hostile = [replace(m, pax=pax) if m.name == target else m for m in members]
        try:
            run(tmp_path / str(i), Image([hostile], entrypoint=["/app/run.sh"]), protect=["/app"])
        except ConfideError:
            assert not (tmp_path / str(i) / "out").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mtime", "nan"), ("mtime", "inf"), ("mtime", "1e300"), ("mtime", ".5"), ("mtime", "1.5e3"),
        ("atime", "-inf"), ("ctime", " 1"), ("uid", " 5"), ("uid", "5_0"), ("gid", "\u0661"),
        ("gid", "0x10"), ("uid", "abc"), ("uid", str(2**63)), ("size", " 1"), ("mtime", str(2**63)),
    ],
)  # fmt: skip
def test_a_pax_number_go_refuses_is_refused(tmp_path: Path, key: str, value: str) -> None:
    """A pax record Go's archive/tar (``mergePAX``: ParseInt, ``parsePAXTime``) refuses, and so
    the engine's whole layer, where tarfile 3.11 reads a number (int()/float(): whitespace,
    "_", Unicode digits, exponents, "nan"; 0 when it cannot). Before, the fuzz2 campaign's
    non-finite mtimes were copied into a layer the engines could not apply. Outside the
    protected paths: the layer would be copied as it is."""
    img = Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("etc/", "d"), M("etc/x", data=b"x", pax={key: value})]],
        entrypoint=["/app/run.sh"],
    )  # fmt: skip
    with pytest.raises(ParseError, match=f"'etc/x': its pax {key} record .* refused by Go's tar reader"):
        run(tmp_path, img, protect=["/app"])
    assert not (tmp_path / "out").exists()


def test_pax_numbers_both_readers_take_still_convert(tmp_path: Path) -> None:
    """Benign twins: a sign, leading zeros, a fraction (or a bare "."), a negative time."""
    pax = {"mtime": "+1700000000.123456789", "atime": "1700000000.", "ctime": "-1.5", "uid": "+0007",
           "gid": "0", "size": "+1"}  # fmt: skip
    img = Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("app/conf.txt", data=S_FINAL, pax=dict(pax, size=str(len(S_FINAL)))),
          M("etc/", "d"), M("etc/x", data=b"x", pax=pax)]],
        entrypoint=["/app/run.sh"],
    )  # fmt: skip
    res = run(tmp_path, img, protect=["/app"])
    vol = extract_volume(tmp_path / "out", tmp_path / "x")
    entries = {e.path: e for e in load_sealed(vol, KEY, res.volume_tag)[0].entries}
    assert entries["app/conf.txt"].mtime_ns == 1_700_000_000_123_456_789


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (2**39, "a tar member is larger than the layer"),
        (2**63, "the members' contents exceed the limit"),  # now refused before it is skipped
    ],
)
def test_a_member_larger_than_the_layer_is_a_parse_error_not_a_hang(
    tmp_path: Path, size: int, message: str
) -> None:
    """Found by the fuzz2 mutation campaign: a pax size of 2**63 made tarfile skip the data
    block by block past the end of the stream, for ever."""
    img = Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
          M("etc/", "d"), M("etc/x", data=b"x", pax={"size": str(size)})]],
        entrypoint=["/app/run.sh"],
    )  # fmt: skip
    with pytest.raises(ParseError, match=message):
        run(tmp_path, img, protect=["/app"])


SPARSE = [(0, b"A" * 700), (19_000, b"B" * 512), (40_000, b"C" * 3)]


@pytest.mark.parametrize("fmt", ["0.1", "1.0"])
def test_a_sparse_file_is_refused(tmp_path: Path, fmt: str) -> None:
    """A GNU sparse member (pax formats 0.1 and 1.0): tarfile 3.11 and Go's archive/tar find
    and map sparse files by different rules (which records make a file sparse, how a map is
    checked), so the contents of the file, or its name (GNU.sparse.name), could depend on the
    reader. Image layers hold none (Docker's and containerd's Go writer writes no sparse
    files); before, they were written back expanded."""
    sparse = M("data/sparse.bin", "s", regions=SPARSE, real_size=40_003, sparse_format=fmt, mode=0o640)
    members = [
        *PYTHON_BASE,
        M("app/", "d"),
        M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
        M("data/", "d"),
    ]
    with pytest.raises(ParseError, match=r"'data/sparse.bin': a GNU sparse file \(GNU.sparse"):
        run(tmp_path, Image([[*members, sparse]], entrypoint=["/app/run.sh"]), protect=["/app"])
    assert not (tmp_path / "out").exists()
    ok = M("data/sparse.bin", data=sparse_content(sparse), mode=0o640)  # the same file, not sparse
    assert (
        run(tmp_path / "ok", Image([[*members, ok]], entrypoint=["/app/run.sh"]), protect=["/app"]).files == 1
    )


LONG = "app/" + "k" * 110  # a GNU long name (over 100 bytes) below the protected /app
S_NAMED = b"SECRET-named-twice-6a0b"


def _xhd(**records: str) -> bytes:
    return blocks("x", pax=records, only_header=True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # tarfile applies a chain of headers from the last to the first, so the pax path won;
        # Go's archive/tar (Docker, containerd) lets the GNU long name win: /app/kkk...
        (_xhd(path="etc/innocent") + blocks(LONG, S_NAMED, fmt=tarfile.GNU_FORMAT), "readers disagree"),
        (_xhd(path="etc/innocent") + blocks("app/s", S_NAMED, pax={"path": "app/s"}), "two pax headers"),
        (blocks("app/s", S_NAMED, glob={"path": "etc/innocent"}), "global pax header sets path"),
        (blocks("app/s", S_NAMED, pax={"GNU.sparse.name": "etc/innocent"}), "a GNU sparse file"),
        (
            blocks(LONG, S_NAMED, fmt=tarfile.GNU_FORMAT)
            + _xhd(linkpath="etc/innocent")
            + blocks("etc/h", link=LONG, fmt=tarfile.GNU_FORMAT),
            "links to",
        ),
    ],
)
def test_a_member_named_differently_by_tar_readers_is_refused(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    """Python's tarfile (sconify) named these members /etc/innocent, the engines' Go reader names
    them below /app: the protected file's plaintext was copied into the output layer."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("etc/", "d"),
               M("etc/innocent", data=b"i")]  # fmt: skip
    with pytest.raises(ParseError, match=message):
        run(
            tmp_path,
            Image([[*members, M("x", "raw", data=raw)]], entrypoint=["/app/run.sh"]),
            protect=["/app"],
        )
    assert not (tmp_path / "out").exists()
    # benign twins: one GNU long name, one pax path, a global header with a comment only
    ok = [M("a", "raw", data=blocks(LONG, S_NAMED, fmt=tarfile.GNU_FORMAT)),
          M("b", "raw", data=blocks("app/p", S_FINAL, pax={"path": "app/p"})),
          M("c", "raw", data=blocks("etc/c", b"c", glob={"comment": "git"}))]  # fmt: skip
    res = run(tmp_path / "ok", Image([[*members, *ok]], entrypoint=["/app/run.sh"]), protect=["/app"])
    assert res.files == 3  # run.sh, the long-named file, p
    assert not any(S_NAMED in b or S_FINAL in b for b in all_blob_bytes(tmp_path / "ok" / "out"))


# What Go's archive/tar reads as a directory "x/" followed by the member app/s, where tarfile
# reads a file "x" holding those blocks as its data (and so never sees app/s).
_HIDDEN = raw_file(b"app/s", S_NAMED)
_GNU, _V7 = b"ustar  \0", b"\0" * 8


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # a prefix field outside a ustar header: tarfile names it etc/app/s, Go app/s
        (raw_file(b"app/s", S_NAMED, magic=_GNU, prefix=b"etc"), "prefix field outside a ustar header"),
        (raw_file(b"app/s", S_NAMED, magic=_V7, prefix=b"etc"), "prefix field outside a ustar header"),
        # type NUL named "x" with a pax path "x/": tarfile a file "x" (its data skipped), Go a
        # directory (no data): Go reads the hidden member app/s
        (raw_pax({b"path": b"x/"}) + raw_header(b"x", len(_HIDDEN), typeflag=b"\0") + _HIDDEN, "type NUL"),
        # ... and the other way round: tarfile a directory (no data), Go a file "x"
        (raw_pax({b"path": b"x"}) + raw_header(b"x/", len(_HIDDEN), typeflag=b"\0") + _HIDDEN, "type NUL"),
        # an empty pax path: tarfile names the member "" (the root, ignored), Go app/s
        (raw_pax({b"path": b""}) + raw_file(b"app/s", S_NAMED), "empty pax record"),
        # an empty pax size: tarfile size 0 (reads the data as headers), Go the header's size
        (raw_pax({b"size": b""}) + raw_file(b"etc/f", _HIDDEN), "empty pax record"),
        # a pax record's length with a sign: tarfile (3.11) stops at it and ignores the path,
        # Go's ParseInt takes "+15" and names the member app/s
        (
            raw_header(b"PaxHeader", 15, typeflag=b"x")
            + b"+15 path=app/s\n".ljust(512, b"\0")
            + raw_file(b"etc/s", S_NAMED),
            "malformed pax record",
        ),
        # ... and bytes after the last record (tarfile ignores them, Go refuses the header)
        (
            raw_header(b"PaxHeader", 12, typeflag=b"x")
            + b"8 a=bcd\nxyz\n".ljust(512, b"\0")
            + raw_file(b"etc/s", b"s"),
            "malformed pax record",
        ),
        # a size field with a leading NUL: tarfile 0 (the same), Go 1024
        (raw_header(b"etc/f", size_field=b"\0" + b"%010o\0" % len(_HIDDEN)) + _HIDDEN, "size field"),
        # the other numbers: tarfile's nti (cut at the first NUL, then int(text.strip(), 8)), Go's
        # parseNumeric (spaces and NULs trimmed at both ends, then digits 0-7 only; base-256 on
        # any high first bit, at most 63 bits)
        (raw_file(b"etc/m", b"m", fields={100: b"\0000755\0"}), "mode field"),  # tarfile 0, Go 0o755
        (raw_file(b"etc/u", b"u", fields={108: b"\t001750\0"}), "uid field"),  # tarfile 1000, Go refuses
        (raw_file(b"etc/g", b"g", fields={116: b"0_01750\0"}), "gid field"),  # tarfile 1000, Go refuses
        (raw_file(b"etc/t", b"t", fields={136: b"0o1234567012"}), "mtime field"),  # tarfile takes "0o"
        (raw_file(b"etc/t", b"t", fields={136: b"\x80" + b"\xff" * 11}), "mtime field"),  # Go: > 63 bits
        # a V7 header (no magic): Go reads no device numbers or owner names, tarfile does
        (raw_file(b"etc/d", b"d", magic=_V7, fields={329: b"0000001\0"}), "devmajor field"),
        (raw_file(b"etc/o", b"o", magic=_V7, fields={265: b"root"}), "uname field"),
        # a star header (trailer "tar\0"): Go parses its atime field and refuses it, tarfile ignores it
        (raw_file(b"etc/st", b"s", fields={476: b"garbage!", 508: b"tar\0"}), "star atime field"),
        # a base-256 checksum: tarfile takes it, Go's getFormat reads it as octal and refuses
        (raw_file(b"etc/c", b"c", checksum=lambda n: b"\x80" + n.to_bytes(7, "big")), "checksum field"),
        # type flags: '7' a regular file for tarfile, TypeCont for Go (the engines refuse it); 'X'
        # a pax header for tarfile, a member of unknown type for Go; 'S' old GNU sparse
        (raw_file(b"etc/s", S_NAMED, typeflag=b"7"), "contiguous file"),
        (
            raw_header(b"PaxHeader", 15, typeflag=b"X")
            + b"15 path=app/s\n".ljust(512, b"\0")
            + raw_file(b"etc/s", S_NAMED),
            "Solaris extended header",
        ),
        (raw_file(b"etc/s", S_NAMED, typeflag=b"S", magic=_GNU), "old GNU sparse file"),
        # a GNU long name filling its data without a NUL: tarfile reads on into the padding
        # ("etc/s-shadow"), Go stops at the data's end ("etc/s")
        (
            raw_header(b"././@LongLink", 5, typeflag=b"L", magic=_GNU)
            + b"etc/s-shadow".ljust(512, b"\0")
            + raw_file(b"x", S_NAMED, magic=_GNU),
            "runs into non-zero padding",
        ),
        # ... and a GNU long link (tarfile links etc/l to "etc/a-shadow", Go to "etc/a")
        (
            raw_header(b"././@LongLink", 5, typeflag=b"K", magic=_GNU)
            + b"etc/a-shadow".ljust(512, b"\0")
            + raw_header(b"etc/l", typeflag=b"2", magic=_GNU),
            "GNU long link .* runs into non-zero padding",
        ),
    ],
)
def test_a_header_field_read_differently_by_tar_readers_is_refused(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    """Header fields Python's tarfile (sconify) and Go's archive/tar (the engines) parse by
    different rules: a layer sconify read without any member below /app, and so copied byte for
    byte, gave the engine the file app/s (or sconify a tree the engine does not build)."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("etc/", "d")]
    with pytest.raises(ParseError, match=message):
        run(
            tmp_path,
            Image(
                [members, [M("etc/innocent", data=b"i"), M("x", "raw", data=raw)]], entrypoint=["/app/run.sh"]
            ),
            protect=["/app"],
        )
    assert not (tmp_path / "out").exists()


def test_benign_twins_of_header_fields_read_alike(tmp_path: Path) -> None:
    """What both readers read alike still converts: a ustar prefix, a GNU or V7 header without
    one, a type-NUL directory ("d/", no data) and file, a size field padded with spaces."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("etc/", "d")]
    ok = (
        raw_file(b"u", b"ustar", prefix=b"etc")
        + raw_file(b"etc/gnu", b"gnu", magic=_GNU)
        + raw_file(b"etc/v7", b"v7", magic=_V7)
        + raw_header(b"etc/d/", typeflag=b"\0")
        + raw_file(b"etc/d/f", b"nul", typeflag=b"\0")
        + raw_header(b"etc/sp", size_field=b"         14\0")  # octal 14: 12 bytes
        + b"spaced bytes".ljust(512, b"\0")
    )
    run(tmp_path, Image([members, [M("x", "raw", data=ok)]], entrypoint=["/app/run.sh"]), protect=["/app"])
    _, _, layers = read_layout(tmp_path / "out")
    assert layers[1] == layer_tar([M("x", "raw", data=ok)])  # copied byte for byte
    import io

    with tarfile.open(fileobj=io.BytesIO(layers[1])) as tf:
        got = {m.name: (m.type, tf.extractfile(m).read() if m.isreg() else None) for m in tf}  # type: ignore[union-attr]
    assert got == {
        "etc/u": (b"0", b"ustar"), "etc/gnu": (b"0", b"gnu"), "etc/v7": (b"0", b"v7"), "etc/d": (b"5", None),
        "etc/d/f": (b"\0", b"nul"), "etc/sp": (b"0", b"spaced bytes"),
    }  # fmt: skip


def test_benign_twins_of_numeric_fields_read_alike(tmp_path: Path) -> None:
    """What both readers read alike still converts, copied byte for byte: octal fields padded
    with spaces at both ends, base-256 owners and times (Go's writer uses them for values
    octal cannot hold), a negative base-256 time, a GNU header with owner names and device
    numbers, a V7 header without them, a star header with its times, a GNU long name that fills
    its data exactly."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("etc/", "d")]
    b256 = b"\x80" + (1_700_000_000).to_bytes(11, "big")
    ok = (
        raw_file(b"etc/pad", b"p", fields={100: b" 000644 ", 108: b"   1750 ", 116: b"0001750\0"})
        + raw_file(b"etc/b256", b"b", fields={108: b"\x80" + (3_000_000).to_bytes(7, "big"), 136: b256})
        + raw_file(b"etc/neg", b"n", fields={136: b"\xff" * 12})
        + raw_file(b"etc/gnu", b"g", magic=_GNU, fields={265: b"root", 297: b"wheel", 329: b"0000000\0"})
        + raw_file(b"etc/v7", b"v", magic=_V7)
        + raw_file(b"etc/star", b"s", fields={476: b"%011o\0" % 1_700_000_000, 508: b"tar\0"})
        + raw_header(b"././@LongLink", 9, typeflag=b"L", magic=_GNU)
        + b"etc/long1".ljust(512, b"\0")
        + raw_file(b"x", b"l", magic=_GNU)
    )
    run(tmp_path, Image([members, [M("x", "raw", data=ok)]], entrypoint=["/app/run.sh"]), protect=["/app"])
    _, _, layers = read_layout(tmp_path / "out")
    assert layers[1] == layer_tar([M("x", "raw", data=ok)])  # copied byte for byte
    import io

    with tarfile.open(fileobj=io.BytesIO(layers[1])) as tf:
        got = {m.name: (m.mode, m.uid, m.gid, m.mtime, m.uname) for m in tf}
    assert got == {
        "etc/pad": (0o644, 1000, 1000, 1_700_000_000, ""), "etc/b256": (0o644, 3_000_000, 0, 1_700_000_000, ""),
        "etc/neg": (0o644, 0, 0, -1, ""), "etc/gnu": (0o644, 0, 0, 1_700_000_000, "root"),
        "etc/v7": (0o644, 0, 0, 1_700_000_000, ""), "etc/star": (0o644, 0, 0, 1_700_000_000, ""),
        "etc/long1": (0o644, 0, 0, 1_700_000_000, ""),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"bad\xffname", r"'/app/bad\\udcffname' below a protected path: .*valid UTF-8"),
        (b"ctl\x1bname", r"'/app/ctl\\x1bname' below a protected path: .*control"),
    ],
)
def test_a_protected_name_a_volume_cannot_hold_is_refused_before_any_rewrite(
    tmp_path: Path, name: bytes, message: str
) -> None:
    """A name that is not UTF-8, or has a control character, below a protected path was found
    only when the staged copy was added to the volume, after every layer was rewritten, and
    the error named the staging copy's path in the (removed) work directory."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755)]
    Image([[*members, M("x", "raw", data=raw_file(b"app/" + name, b"x"))]]).write_layout(tmp_path / "src")
    opts = SconifyOptions(
        parse_ref(f"oci:{tmp_path / 'src'}"), parse_ref(f"oci:{tmp_path / 'out'}"), protect=["/app"],
        policy="pol", service="svc",
    )  # fmt: skip
    seen: list[str] = []
    with pytest.raises(UsageError, match=message) as err:
        sconify(opts, KEY, progress=lambda phase, *_: seen.append(phase))
    assert "staging" not in str(err.value) and "rewrite" not in seen
    assert not (tmp_path / "out").exists()
    # benign twin: outside the protected paths such a name is copied as it is
    run(
        tmp_path / "ok",
        Image([[*members, M("x", "raw", data=raw_file(b"etc/" + name, b"x"))]]),
        protect=["/app"],
    )


def test_a_docker_save_layer_changed_between_the_passes_is_refused(tmp_path: Path) -> None:
    """A docker-save ``layer.tar`` has no digest of its own: an untouched one changed (same size)
    after pass 1 verified its diff_id was copied as it then was, under the old diff_id."""
    img = base_image()
    img.layers.append([M("opt/", "d"), M("opt/tool", data=b"tool-version-1")])
    archive = img.write_archive(tmp_path / "src.tar")

    def tamper(phase: str, _advance: int, total: int | None) -> None:
        if phase == "rewrite" and total is not None:  # after pass 1, before any layer is copied
            with tarfile.open(archive) as tf:
                offset = tf.getmember("layer2/layer.tar").offset_data
            data = archive.read_bytes()
            at = data.index(b"tool-version-1", offset)
            with archive.open("r+b") as f:
                f.seek(at)
                f.write(b"TOOL-version-2")

    opts = SconifyOptions(
        parse_ref(f"docker-archive:{archive}"), parse_ref(f"oci:{tmp_path / 'out'}"),
        protect=["/app", "/data/model.bin"], policy="pol", service="svc",
    )  # fmt: skip
    with pytest.raises(ParseError, match="layer 2: got digest"):
        sconify(opts, KEY, progress=tamper)
    assert not (tmp_path / "out").exists()
    # benign twin: the archive untouched converts, the layer copied as it was
    archive.unlink()
    img.write_archive(archive)
    res = sconify(opts, KEY, progress=lambda *_: None)
    assert res.rewritten_layers == [0, 1]


def test_a_protected_file_with_extended_attributes_is_refused(tmp_path: Path) -> None:
    """A volume entry has no extended attributes: a protected file's capabilities (or ACL) were
    dropped silently (the ACL's mask then read as the owning group's permissions)."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755), M("etc/", "d")]
    cap = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00"}
    img = Image([[*members, M("app/ping", data=b"ping", mode=0o755, pax=cap)]], entrypoint=["/app/run.sh"])
    with pytest.raises(
        UsageError, match=r"'/app/ping' below a protected path has extended attributes \(security"
    ):
        run(tmp_path, img, protect=["/app"])
    assert not (tmp_path / "out").exists()
    # benign twin: outside the protected paths the attributes are kept in the rewritten layer
    img = Image([[*members, M("etc/ping", data=b"ping", mode=0o755, pax=cap)]], entrypoint=["/app/run.sh"])
    run(tmp_path / "ok", img, protect=["/app"])
    _, _, layers = read_layout(tmp_path / "ok" / "out")
    import io

    with tarfile.open(fileobj=io.BytesIO(layers[0])) as tf:
        assert "SCHILY.xattr.security.capability" in tf.getmember("etc/ping").pax_headers


def test_names_the_file_system_refuses_are_clear_errors(tmp_path: Path) -> None:
    """A 300-byte name (over NAME_MAX), or a protected path that fits the tar limit but not
    PATH_MAX once below the work directory, raised a bare OSError (a traceback)."""
    members = [*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755)]
    img = Image([[*members, M("app/" + "n" * 300, data=b"x")]], entrypoint=["/app/run.sh"])
    with pytest.raises(ParseError, match="path component of 300 characters"):
        run(tmp_path / "a", img, protect=["/app"])
    deep = "app/" + "/".join(["d" * 200] * 19) + "/f"  # 3,823 bytes: under the 4,096 of a tar name
    img = Image([[*members, M(deep, data=b"x")]], entrypoint=["/app/run.sh"])
    from confide.errors import StorageError

    with pytest.raises(StorageError, match="File name too long"):
        run(tmp_path / "b" / ("w" * 200) / ("w" * 200), img, protect=["/app"])
    assert not (tmp_path / "b" / ("w" * 200) / ("w" * 200) / "out").exists()
    # benign twin: a 255-byte name converts
    img = Image([[*members, M("app/" + "n" * 255, data=b"x")]], entrypoint=["/app/run.sh"])
    assert run(tmp_path / "c", img, protect=["/app"]).files == 2


def test_runtime_layer_launcher_pins_the_cas_given(tmp_path: Path) -> None:
    """The hostile review of 2026-12-07: with the CAS's key hash (``sconify --cas``), the launcher sets
    ``CONFIDE_CAS_SPKI`` after removing the host's, so the image names its CAS; another key
    hash gives another runtime layer (not the cached one of the first)."""
    import io

    pin = "ab" * 32
    run(tmp_path, base_image(), out="pinned", cas_spki=pin)
    run(tmp_path, base_image(), out="plain")
    launchers = []
    for out in ("pinned", "plain"):
        _, _, layers = read_layout(tmp_path / out)
        with tarfile.open(fileobj=io.BytesIO(layers[2])) as tf:
            launchers.append(tf.extractfile("confide/bin/confide").read())  # type: ignore[union-attr]
    pinned, plain = launchers
    assert f"os.environ['CONFIDE_CAS_SPKI'] = '{pin}'".encode() in pinned
    assert b"CONFIDE_CAS_SPKI'] =" not in plain
    # the host's value goes first (prefix list), then the image's is set
    assert pinned.index(b"del os.environ[name]") < pinned.index(b"os.environ['CONFIDE_CAS_SPKI']")
    with pytest.raises(UsageError, match="64 lowercase hex"):
        run(tmp_path, base_image(), out="bad", cas_spki="AB" * 32)
