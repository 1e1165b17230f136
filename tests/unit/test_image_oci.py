"""Reading OCI layouts and docker-save archives: formats, compressions, hostile inputs."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from confide.errors import ParseError, UsageError
from confide.image import SconifyOptions, open_image, parse_ref, sconify
from confide.image.flatten import index_layers
from confide.volume import VolumeKey
from image_builder import PYTHON_BASE, Image, M, compress, layer_tar, read_layout, sha

KEY = VolumeKey(b"\x07" * 32)


def simple(compression: str = "gzip") -> Image:
    return Image(
        [[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"run"), M("app/s", data=b"SECRET-oci-1")]],
        compression=compression,
    )


def index_of(ref: str):
    img = open_image(parse_ref(ref))
    try:
        return index_layers(img.layers, ["app"])
    finally:
        img.close()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layout_compressions(tmp_path: Path, compression: str) -> None:
    simple(compression).write_layout(tmp_path / "l")
    idx = index_of(f"oci:{tmp_path / 'l'}")
    assert idx.compressions == [compression]
    assert idx.lookup("app/s") is not None and idx.touches_protected == [True]


@pytest.mark.parametrize("new_layout", [False, True])
def test_docker_archive(tmp_path: Path, new_layout: bool) -> None:
    archive = simple().write_archive(tmp_path / "a.tar", new_layout=new_layout)
    idx = index_of(str(archive))
    assert idx.lookup("app/run.sh") is not None
    assert idx.compressions == ["gzip" if new_layout else "none"]
    res = sconify(
        SconifyOptions(parse_ref(str(archive)), parse_ref(f"docker-archive:{tmp_path / 'o.tar'}:app:2"),
                       protect=["/app"], policy="p", service="s"),
        KEY,
    )  # fmt: skip
    with tarfile.open(tmp_path / "o.tar") as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        names = tf.getnames()
    assert manifest[0]["RepoTags"] == ["app:2"]
    assert "index.json" in names and "oci-layout" in names
    assert all(b"SECRET-oci-1" not in blob for blob in _archive_blobs(tmp_path / "o.tar"))
    # the written archive reads back, digests checked
    again = index_of(f"docker-archive:{tmp_path / 'o.tar'}")
    assert again.lookup("confide/sconify.json") is not None and again.lookup("app/s") is None
    assert res.manifest_digest.startswith("sha256:")


def _archive_blobs(path: Path) -> list[bytes]:
    from image_builder import all_blob_bytes

    return all_blob_bytes(path)


def test_written_layout_reads_back(tmp_path: Path) -> None:
    simple().write_layout(tmp_path / "src")
    sconify(
        SconifyOptions(
            parse_ref(str(tmp_path / "src")), parse_ref(str(tmp_path / "out")), protect=["/app/s"]
        ),
        KEY,
    )
    idx = index_of(f"oci:{tmp_path / 'out'}")
    assert idx.lookup("app/run.sh") is not None
    node = idx.lookup("app/s")
    assert node is not None and node.size == 0  # the empty mount point


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed (Debian package skopeo)")
def test_skopeo_reads_the_output(tmp_path: Path) -> None:
    simple().write_layout(tmp_path / "src")
    res = sconify(
        SconifyOptions(
            parse_ref(str(tmp_path / "src")), parse_ref(f"oci:{tmp_path / 'out'}:v1"), protect=["/app"]
        ),
        KEY,
    )
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path / 'out'}:v1"], capture_output=True, text=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["Digest"] == res.manifest_digest and len(info["Layers"]) == 3
    # skopeo can copy it into a docker archive, which we read back (digests checked)
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{tmp_path / 'out'}:v1", f"docker-archive:{tmp_path / 'd.tar'}:x:1"],
        check=True,
    )
    idx = index_of(f"docker-archive:{tmp_path / 'd.tar'}")
    assert idx.lookup("confide/bin/confide") is not None
    # negative twin: a corrupted output is refused by skopeo too
    blob = max((tmp_path / "out/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)  # the runtime layer
    data = blob.read_bytes()  # its last byte changed (gzip's ISIZE ends in 0x00 for a layer under 16 MiB)
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    bad = subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'copy'}:v1"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


# ------------------------------------------------------------------ hostile inputs


def _layout(tmp_path: Path) -> tuple[Path, dict, Path]:
    root = simple().write_layout(tmp_path / "l")
    manifest, _, _ = read_layout(root)
    return root, manifest, root / "blobs/sha256"


def _rewrite_manifest(root: Path, manifest: dict) -> None:
    data = json.dumps(manifest).encode()
    (root / "blobs/sha256" / sha(data)[7:]).write_bytes(data)
    index = json.loads((root / "index.json").read_bytes())
    index["manifests"][0].update(digest=sha(data), size=len(data))
    (root / "index.json").write_text(json.dumps(index))


def test_bad_layer_digest(tmp_path: Path) -> None:
    root, manifest, blobs = _layout(tmp_path)
    p = blobs / manifest["layers"][0]["digest"][7:]
    raw = gzip_member_flip(p.read_bytes())
    p.write_bytes(raw)
    with pytest.raises(ParseError, match=r"digest|gzip|tar"):
        index_of(str(root))


def gzip_member_flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


def test_diff_id_mismatch(tmp_path: Path) -> None:
    """A layer whose blob digest matches the manifest but whose content is not the config's diff_id."""
    root, manifest, blobs = _layout(tmp_path)
    other = compress(layer_tar([M("evil", data=b"x")]), "gzip")
    (blobs / sha(other)[7:]).write_bytes(other)
    manifest["layers"][0].update(digest=sha(other), size=len(other))
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="diff_id"):
        index_of(str(root))


def test_missing_blob(tmp_path: Path) -> None:
    root, manifest, blobs = _layout(tmp_path)
    (blobs / manifest["layers"][0]["digest"][7:]).unlink()
    with pytest.raises(ParseError, match="missing"):
        index_of(str(root))


def test_missing_config(tmp_path: Path) -> None:
    root, manifest, blobs = _layout(tmp_path)
    (blobs / manifest["config"]["digest"][7:]).unlink()
    with pytest.raises(ParseError, match="missing"):
        open_image(parse_ref(str(root)))


def test_bad_json_index(tmp_path: Path) -> None:
    root, _, _ = _layout(tmp_path)
    (root / "index.json").write_text("{not json")
    with pytest.raises(ParseError, match="not JSON"):
        open_image(parse_ref(str(root)))


def test_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParseError, match="oci-layout missing"):
        open_image(parse_ref(str(tmp_path / "empty")))


@pytest.mark.parametrize(
    ("media", "match"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "encrypted"),
        ("application/x-unknown", "expected one of"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "got gzip data, expected zstd"),
    ],
)
def test_layer_media_types(tmp_path: Path, media: str, match: str) -> None:
    root, manifest, _ = _layout(tmp_path)
    manifest["layers"][0]["mediaType"] = media
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match=match):
        index_of(str(root))


def test_config_media_type(tmp_path: Path) -> None:
    root, manifest, _ = _layout(tmp_path)
    manifest["config"]["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="expected an image config"):
        open_image(parse_ref(str(root)))


def test_manifest_digest_mismatch(tmp_path: Path) -> None:
    root, _manifest, blobs = _layout(tmp_path)
    index = json.loads((root / "index.json").read_bytes())
    p = blobs / index["manifests"][0]["digest"][7:]
    p.write_bytes(p.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    index["manifests"][0]["size"] = p.stat().st_size
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ParseError, match="got digest"):
        open_image(parse_ref(str(root)))


def test_bad_digest_syntax(tmp_path: Path) -> None:
    root, manifest, _ = _layout(tmp_path)
    manifest["layers"][0]["digest"] = "sha256:../../../etc/passwd"
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="expected sha256"):
        open_image(parse_ref(str(root)))


def test_size_mismatch(tmp_path: Path) -> None:
    root, manifest, _ = _layout(tmp_path)
    manifest["layers"][0]["size"] -= 10
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="more than"):
        index_of(str(root))


def test_diff_ids_count(tmp_path: Path) -> None:
    root, manifest, blobs = _layout(tmp_path)
    cfg_path = blobs / manifest["config"]["digest"][7:]
    cfg = json.loads(cfg_path.read_bytes())
    cfg["rootfs"]["diff_ids"].append(cfg["rootfs"]["diff_ids"][0])
    data = json.dumps(cfg).encode()
    (blobs / sha(data)[7:]).write_bytes(data)
    manifest["config"].update(digest=sha(data), size=len(data))
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="one per layer"):
        open_image(parse_ref(str(root)))


def _one_layer_layout(tmp_path: Path, raw_tar: bytes) -> Path:
    """A layout whose single layer is the given (possibly malformed) tar, with correct digests."""
    root = simple().write_layout(tmp_path / "m")
    manifest, _, _ = read_layout(root)
    blob = compress(raw_tar, "gzip")
    (root / "blobs/sha256" / sha(blob)[7:]).write_bytes(blob)
    manifest["layers"][0].update(digest=sha(blob), size=len(blob))
    cfg_path = root / "blobs/sha256" / manifest["config"]["digest"][7:]
    cfg = json.loads(cfg_path.read_bytes())
    cfg["rootfs"]["diff_ids"] = [sha(raw_tar)]
    data = json.dumps(cfg).encode()
    (root / "blobs/sha256" / sha(data)[7:]).write_bytes(data)
    manifest["config"].update(digest=sha(data), size=len(data))
    _rewrite_manifest(root, manifest)
    return root


def test_truncated_tar(tmp_path: Path) -> None:
    raw = layer_tar([M("big", data=b"x" * 5000)])[:2048]
    with pytest.raises(ParseError, match=r"truncated|corrupt|tar"):
        index_of(str(_one_layer_layout(tmp_path, raw)))


def test_garbage_tar(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="tar"):
        index_of(str(_one_layer_layout(tmp_path, b"\x01" * 1024)))


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([M("../escape", data=b"x")], r"'\.\.'"),
        ([M("a/../../escape", data=b"x")], r"'\.\.'"),
        ([M("/etc/passwd", data=b"x")], "absolute"),
        ([M("lnk", "l", link="/etc"), M("lnk/passwd", data=b"x")], "symlink"),
        ([M("f", data=b"x"), M("f/child", data=b"x")], "expected a directory"),
        ([M("h", "h", link="../outside")], r"'\.\.'"),
        ([M("h", "h", link="nothing-here")], "missing"),
    ],
)
def test_hostile_members(tmp_path: Path, members: list[M], match: str) -> None:
    with pytest.raises(ParseError, match=match):
        index_of(str(_one_layer_layout(tmp_path, layer_tar(members))))


def test_benign_twin_of_hostile_members(tmp_path: Path) -> None:
    idx = index_of(
        str(
            _one_layer_layout(
                tmp_path,
                layer_tar([M("./a/b", data=b"x"), M("lnk", "l", link="/etc"), M("h", "h", link="a/b")]),
            )
        )
    )
    assert idx.lookup("a/b") is not None and idx.lookup("h").size == 1  # type: ignore[union-attr]


def test_archive_missing_layer(tmp_path: Path) -> None:
    archive = simple().write_archive(tmp_path / "a.tar")
    with tarfile.open(archive) as tf:
        kept = [(m, tf.extractfile(m).read()) for m in tf if not m.name.endswith("layer.tar")]  # type: ignore[union-attr]
    with tarfile.open(tmp_path / "b.tar", "w") as tf:
        for m, data in kept:
            tf.addfile(m, io.BytesIO(data))
    with pytest.raises(ParseError, match="missing"):
        open_image(parse_ref(str(tmp_path / "b.tar")))


def test_archive_bad_manifest(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        data = b'[{"Config": "../x.json", "Layers": []}]'
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(ParseError, match="relative name"):
        open_image(parse_ref(str(tmp_path / "a.tar")))


def test_archive_truncated(tmp_path: Path) -> None:
    archive = simple().write_archive(tmp_path / "a.tar")
    data = archive.read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError):
        index_of(str(tmp_path / "t.tar"))


def test_archive_tampered_layer(tmp_path: Path) -> None:
    archive = simple().write_archive(tmp_path / "a.tar")
    data = archive.read_bytes().replace(b"SECRET-oci-1", b"SECRET-oci-2")
    (tmp_path / "t.tar").write_bytes(data)
    with pytest.raises(ParseError, match="diff_id"):
        index_of(str(tmp_path / "t.tar"))


def test_parse_ref() -> None:
    assert parse_ref("docker://localhost:5000/app:1").kind == "docker"
    r = parse_ref("oci:/x/y:tag")
    assert (r.kind, r.location, r.ref) == ("oci", "/x/y", "tag")
    assert parse_ref("img.tar").kind == "docker-archive"
    with pytest.raises(UsageError):
        parse_ref("oci:")


def test_named_ref_in_layout(tmp_path: Path) -> None:
    simple().write_layout(tmp_path / "l", ref="v1")
    assert open_image(parse_ref(f"oci:{tmp_path / 'l'}:v1")).layers
    with pytest.raises(UsageError, match="no image named"):
        open_image(parse_ref(f"oci:{tmp_path / 'l'}:v2"))


def test_oversized_pax_header(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"comment": "x" * (2 << 20)}
        tf.addfile(ti, io.BytesIO(b""))
    with pytest.raises(ParseError, match="extended header"):
        index_of(str(_one_layer_layout(tmp_path, buf.getvalue())))
    # negative twin: a small pax header is fine
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"comment": "x" * 1000}
        tf.addfile(ti, io.BytesIO(b""))
    assert index_of(str(_one_layer_layout(tmp_path / "ok", buf.getvalue()))).lookup("f") is not None


def test_many_members_stream_without_keeping_headers(tmp_path: Path) -> None:
    members = [M(f"d/f{i}", data=b"x") for i in range(3000)]
    idx = index_of(str(_one_layer_layout(tmp_path, layer_tar(members))))
    assert len(idx.lookup("d").children) == 3000  # type: ignore[union-attr, arg-type]


def test_the_members_of_all_layers_together_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each layer may hold up to MAX_MEMBERS members, but the tree pass 1 keeps grows with all
    of them: 1000 layers of 2,000,000 members each were read (and kept) until memory ran out."""
    from confide.image import flatten

    monkeypatch.setattr(flatten, "MAX_MEMBERS", 100)
    monkeypatch.setattr(flatten, "MAX_TOTAL_MEMBERS", 150)
    layers = [[M(f"l{k}/", "d"), *(M(f"l{k}/f{i}", data=b"x") for i in range(79))] for k in range(2)]
    with pytest.raises(ParseError, match="layer 1: more than 150 tar members in the layers up to this one"):
        index_of(str(Image(layers).write_layout(tmp_path / "two")))
    # benign twin: the same members in layers below the total
    idx = index_of(str(Image([layers[0], layers[1][:70]]).write_layout(tmp_path / "ok")))
    assert len(idx.lookup("l1").children) == 69  # type: ignore[union-attr, arg-type]


_VALID_TAR = layer_tar(
    [M("a/", "d"), M("a/b", data=b"hello" * 50), M("a/l", "l", link="b"), M("a/h", "h", link="a/b")]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_layers_only_raise_parse_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Mutated tars (with digests that match, so the tar parser itself is exercised) → ParseError or success."""
    raw = bytearray(_VALID_TAR)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    root = _one_layer_layout(tmp_path_factory.mktemp("fz"), bytes(raw))
    try:
        index_of(str(root))
    except ParseError:
        pass


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(blob=st.binary(max_size=4096))
def test_fuzzed_archives_only_raise_parse_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes
) -> None:
    path = tmp_path_factory.mktemp("fa") / "a.tar"
    path.write_bytes(blob)
    with pytest.raises(ParseError):
        open_image(parse_ref(f"docker-archive:{path}"))


def test_public_names_sorted() -> None:
    import confide.image as pkg

    assert list(pkg.__all__) == sorted(pkg.__all__)
    assert all(hasattr(pkg, n) for n in pkg.__all__)


@pytest.mark.parametrize(
    ("upper", "match"),
    [
        # image-spec layer.md "Whiteouts": ".wh." + a basename; an engine joining ".." or "."
        # deletes the marker's directory or its parent (here all of /etc)
        ([M("etc/sub/.wh...")], "names '..'"),
        ([M("etc/.wh..")], "names '.'"),
        ([M("etc/.wh.")], "names ''"),
        # through a lower symlink: an engine resolves lnk -> /etc and deletes /etc/passwd
        ([M("lnk/.wh.passwd")], "through the symlink 'lnk'"),
        ([M("lnk/sub/.wh..wh..opq")], "through the symlink 'lnk'"),
        # containerd resolves the marker's directory: lnk -> /etc, and empties /etc
        ([M("lnk/.wh..wh..opq")], "through the symlink 'lnk'"),
        ([M("lnk/.wh..wh..opq"), M("lnk/", "d")], "through the symlink 'lnk'"),  # replaced after
        # in tar order (the engines' order) the whiteout comes last: the engines write
        # /etc/passwd through lnk, then delete lnk; the image-spec keeps a new lnk/passwd
        ([M("lnk/passwd", data=b"evil"), M(".wh.lnk")], "follows an entry at or below 'lnk'"),
        ([M("etc/passwd", data=b"new"), M("etc/.wh.passwd")], "follows an entry at or below 'etc/passwd'"),
    ],
)
def test_hostile_whiteouts(tmp_path: Path, upper: list[M], match: str) -> None:
    lower = [M("etc/", "d"), M("etc/passwd", data=b"root"), M("etc/sub/", "d"), M("lnk", "l", link="/etc")]
    Image([lower, upper]).write_layout(tmp_path / "l")
    with pytest.raises(ParseError, match=match):
        index_of(f"oci:{tmp_path / 'l'}")
    # benign twins: a whiteout of a file, an opaque directory that replaces the symlink itself
    # first (overlayfs records a directory made over a lower symlink so), a whiteout in it
    twin = [
        M("etc/.wh.passwd"),
        M("lnk/", "d"),
        M("lnk/.wh..wh..opq"),
        M("lnk/.wh.passwd"),
        M("lnk/x", data=b"x"),
    ]
    Image([lower, twin]).write_layout(tmp_path / "t")
    idx = index_of(f"oci:{tmp_path / 't'}")
    assert idx.lookup("etc/passwd") is None and idx.lookup("etc/sub") is not None
    assert idx.lookup("lnk/x") is not None
    Image(
        [lower, [M(".wh.lnk"), M("lnk/passwd", data=b"p"), M("etc/.wh.passwd"), M("etc/passwd")]]
    ).write_layout(tmp_path / "u")
    idx = index_of(f"oci:{tmp_path / 'u'}")  # whiteouts first: every reader agrees
    assert idx.lookup("lnk/passwd").size == 1 and idx.lookup("etc/passwd").size == 0  # type: ignore[union-attr]


def _multi_layout(tmp_path: Path, entries: list[tuple[str, dict[str, str], str | None]]) -> Path:
    """One layout whose index.json lists one image per entry (its app/which file says which),
    with the entry's platform and ref name (image-index.md, image-layout.md)."""
    root = tmp_path / "multi"
    (root / "blobs/sha256").mkdir(parents=True)
    descs = []
    for i, (which, plat, ref) in enumerate(entries):
        img = Image([[*PYTHON_BASE, M("app/", "d"), M("app/which", data=which.encode())]])
        one = img.write_layout(tmp_path / f"one{i}", ref=ref)
        for blob in (one / "blobs/sha256").iterdir():
            shutil.copyfile(blob, root / "blobs/sha256" / blob.name)
        desc = json.loads((one / "index.json").read_bytes())["manifests"][0]
        descs.append({**desc, "platform": plat})
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs}
    (root / "index.json").write_text(json.dumps(index))
    return root


def _which(ref: str, platform: str) -> bytes:
    img = open_image(parse_ref(ref), platform=platform)
    try:
        idx = index_layers(img.layers, [])
        node = idx.lookup("app/which")
        assert node is not None and node.source is not None
        got: list[bytes] = []
        from confide.image.flatten import read_members

        read_members(img.layers[node.source[0]], {node.source[1]}, lambda _o, f, _n: got.append(f.read()))
        return got[0]
    finally:
        img.close()


AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64"}


def test_an_ambiguous_platform_in_an_index_is_refused(tmp_path: Path) -> None:
    """Two images for linux/amd64 (or two under one name): the first listed was taken silently."""
    root = _multi_layout(tmp_path, [("arm", ARM64, None), ("one", AMD64, None), ("two", AMD64, None)])
    with pytest.raises(UsageError, match="2 different images for platform linux/amd64"):
        open_image(parse_ref(f"oci:{root}"))
    assert _which(f"oci:{root}", "linux/arm64") == b"arm"  # benign twin: one image for arm64


def test_a_ref_naming_several_platforms_picks_the_platform(tmp_path: Path) -> None:
    """Both images are named "app": the first listed (arm64) was taken whatever --platform said."""
    root = _multi_layout(tmp_path, [("arm", ARM64, "app"), ("amd", AMD64, "app"), ("other", AMD64, "x")])
    assert _which(f"oci:{root}:app", "linux/amd64") == b"amd"
    assert _which(f"oci:{root}:app", "linux/arm64") == b"arm"
    with pytest.raises(UsageError, match="named 'app' and none for platform linux/s390x"):
        open_image(parse_ref(f"oci:{root}:app"), platform="linux/s390x")


def test_platform_variants(tmp_path: Path) -> None:
    v7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
    v6 = {"os": "linux", "architecture": "arm", "variant": "v6"}
    root = _multi_layout(tmp_path, [("v6", v6, None), ("v7", v7, None), ("amd", AMD64, None)])
    assert _which(f"oci:{root}", "linux/arm/v7") == b"v7"  # was: no image for "arm/v7"
    assert _which(f"oci:{root}", "linux/arm/v6") == b"v6"
    with pytest.raises(
        UsageError, match=r"2 different images for platform linux/arm \(linux/arm/v6, linux/arm/v7\)"
    ):
        open_image(parse_ref(f"oci:{root}"), platform="linux/arm")


def test_a_huge_or_special_index_json_is_not_read_whole(tmp_path: Path) -> None:
    """index.json (and oci-layout) were read whole before the 4 MiB limit was applied: a large
    file took its size in memory, a FIFO or /dev/zero in its place never ended."""
    import os
    import tracemalloc

    root = simple().write_layout(tmp_path / "l")
    with (root / "index.json").open("r+b") as f:
        f.truncate(64 << 20)  # sparse: no disk used
    tracemalloc.start()
    try:
        with pytest.raises(ParseError, match="expected at most"):
            open_image(parse_ref(f"oci:{root}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    (root / "index.json").unlink()
    os.mkfifo(root / "index.json")
    with pytest.raises(ParseError, match=r"index\.json is not a regular file"):
        open_image(parse_ref(f"oci:{root}"))
    (root / "index.json").unlink()
    (root / "index.json").symlink_to("/dev/zero")
    with pytest.raises(ParseError, match=r"index\.json is not a regular file"):
        open_image(parse_ref(f"oci:{root}"))
    # benign twin: a symlink to a regular index.json is read
    simple().write_layout(tmp_path / "m")
    (root / "index.json").unlink()
    (root / "index.json").symlink_to(tmp_path / "m" / "index.json")
    shutil.rmtree(root / "blobs")
    shutil.copytree(tmp_path / "m" / "blobs", root / "blobs")
    assert open_image(parse_ref(f"oci:{root}")).layers


@pytest.mark.parametrize("which", ["manifest", "layer"])
def test_a_fifo_in_a_blobs_place_is_refused_not_waited_on(tmp_path: Path, which: str) -> None:
    """Opening a FIFO named like a blob waited for a writer for ever (no O_NONBLOCK)."""
    import os

    root, manifest, blobs = _layout(tmp_path)
    index = json.loads((root / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"] if which == "manifest" else manifest["layers"][0]["digest"]
    (blobs / digest[7:]).unlink()
    os.mkfifo(blobs / digest[7:])
    with pytest.raises(ParseError, match="is not a regular file"):
        index_of(f"oci:{root}")


def _archive_with_symlinked_layer(tmp_path: Path, link: str) -> Path:
    """A docker save archive (old layout) whose third layer repeats the first: docker before 25
    writes it as a relative symlink to the first layer.tar (moby image/tarexport)."""
    same = [M("opt/", "d"), M("opt/tool", data=b"tool")]
    img = Image([same, [*PYTHON_BASE, M("app/", "d"), M("app/s", data=b"s")], same])
    archive = img.write_archive(tmp_path / "a.tar")
    out = tmp_path / f"b{len(list(tmp_path.iterdir()))}.tar"
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for m in src:
            if m.name == "layer2/layer.tar":
                ti = tarfile.TarInfo(m.name)
                ti.type, ti.linkname = tarfile.SYMTYPE, link
                dst.addfile(ti)
            else:
                dst.addfile(m, src.extractfile(m))
    archive.unlink()
    return out


def test_archive_layer_symlinked_to_an_identical_one(tmp_path: Path) -> None:
    """Was refused as "missing" (only regular members were layers)."""
    idx = index_of(str(_archive_with_symlinked_layer(tmp_path, "../layer0/layer.tar")))
    assert idx.lookup("opt/tool") is not None and len(idx.diff_ids) == 3
    assert idx.diff_ids[0] == idx.diff_ids[2]
    with pytest.raises(ParseError, match="outside the archive"):
        open_image(parse_ref(str(_archive_with_symlinked_layer(tmp_path, "../../layer0/layer.tar"))))
    with pytest.raises(ParseError, match="outside the archive"):
        open_image(parse_ref(str(_archive_with_symlinked_layer(tmp_path, "/etc/passwd"))))
    with pytest.raises(ParseError, match="missing"):
        open_image(parse_ref(str(_archive_with_symlinked_layer(tmp_path, "../layer9/layer.tar"))))


@pytest.mark.parametrize("where", ["end", "start", "between"])
def test_zstd_skippable_frames(tmp_path: Path, where: str) -> None:
    """RFC 8878 3.1.2: a decoder skips skippable frames; zstd:chunked layers (podman,
    containers/storage) end with ones holding their table of contents. They were refused
    ("got bytes after the zstd stream"; at the start: "got none data, expected zstd")."""
    import struct

    from backports import zstd

    root = simple("zstd").write_layout(tmp_path / "l")
    manifest, _, (raw,) = read_layout(root)
    skip = struct.pack("<II", 0x184D2A5E, 9) + b"TOC-bytes"
    half = len(raw) // 2
    blob = {
        "end": zstd.compress(raw) + skip,
        "start": skip + zstd.compress(raw),
        "between": zstd.compress(raw[:half]) + skip + zstd.compress(raw[half:]) + skip,
    }[where]
    (root / "blobs/sha256" / sha(blob)[7:]).write_bytes(blob)
    manifest["layers"][0].update(digest=sha(blob), size=len(blob))
    _rewrite_manifest(root, manifest)
    idx = index_of(f"oci:{root}")
    assert idx.diff_ids == [sha(raw)] and idx.lookup("app/s") is not None
    # negative twin: other bytes after the last frame are still refused
    bad = zstd.compress(raw) + b"\x00garbage"
    (root / "blobs/sha256" / sha(bad)[7:]).write_bytes(bad)
    manifest["layers"][0].update(digest=sha(bad), size=len(bad))
    _rewrite_manifest(root, manifest)
    with pytest.raises(ParseError, match="after the zstd stream"):
        index_of(f"oci:{root}")


def test_a_sparse_bomb_is_refused_in_pass_1(tmp_path: Path) -> None:
    """A GNU sparse member of a few stored bytes declaring 2 TiB of holes was accepted: pass 2
    then wrote it out expanded (a rewritten layer) or staged it on disk (protected). Sparse
    files are now refused whatever their size (the tar readers map them differently)."""
    from confide.image.flatten import MAX_LAYER_BYTES

    bomb = M("app/holes", "s", regions=[(MAX_LAYER_BYTES * 2 - 1, b"x")], real_size=MAX_LAYER_BYTES * 2)
    with pytest.raises(ParseError, match="'app/holes': a GNU sparse file"):
        index_of(str(_one_layer_layout(tmp_path / "a", layer_tar([*PYTHON_BASE, bomb]))))
    small = M("app/holes", "s", regions=[(1 << 30, b"x")], real_size=(1 << 30) + 1)
    with pytest.raises(ParseError, match="'app/holes': a GNU sparse file"):
        index_of(str(_one_layer_layout(tmp_path / "b", layer_tar([*PYTHON_BASE, small]))))
    # benign twin: the same name as a regular file
    ok = M("app/holes", data=b"x")
    idx = index_of(str(_one_layer_layout(tmp_path / "c", layer_tar([*PYTHON_BASE, ok]))))
    assert idx.lookup("app/holes").size == 1  # type: ignore[union-attr]


def test_data_after_the_end_of_a_layer_tar_is_refused(tmp_path: Path) -> None:
    """A second tar appended to a layer (or a header after one zero block) is in no reader's
    tree but was copied with the layer: a protected file's plaintext could ride along."""
    first = layer_tar([*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"run")])
    hidden = layer_tar([M("etc/", "d"), M("etc/copy-of-secret", data=b"SECRET-hidden-tail")])
    with pytest.raises(ParseError, match="data after the end-of-archive blocks"):
        index_of(str(_one_layer_layout(tmp_path / "a", first + hidden)))
    end = first.rstrip(b"\0")
    end += b"\0" * (-len(end) % 512)  # the members, no end-of-archive blocks
    with pytest.raises(ParseError, match="data after the end-of-archive blocks"):
        index_of(str(_one_layer_layout(tmp_path / "b", end + b"\0" * 512 + hidden)))
    # benign twins: no end blocks at all, or more zero padding than a record
    assert index_of(str(_one_layer_layout(tmp_path / "c", end))).lookup("app/run.sh") is not None
    assert index_of(str(_one_layer_layout(tmp_path / "d", first + b"\0" * 30_000))).lookup("app/run.sh")
