"""The outer ``docker save`` archive is read under the layer tars' rules (docs/sconify.md
"Hostile archives"; confide.image.tarcheck): names that Python's and Go's tar readers resolve
alike, bounded extended headers, nothing but zeros after the end, no name twice, no links for
manifest.json, index.json or blobs; and a single-entry OCI image index is judged by its
platform like an index of several entries. Every archive and layout is built here, with a
benign twin for each refusal."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from confide.errors import ParseError, UsageError
from confide.image import SconifyOptions, open_image, parse_ref, sconify
from confide.image.flatten import index_layers
from confide.volume import VolumeKey
from image_builder import PYTHON_BASE, Image, M, blocks, raw_file

KEY = VolumeKey(b"\x07" * 32)
END = b"\0" * (2 * tarfile.BLOCKSIZE)
LONG_DIR = "l" * 110  # an old-layout layer directory whose name needs a GNU long name


def _image() -> Image:
    return Image([[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"run"), M("app/s", data=b"SECRET-a")]])


def _files(tmp_path: Path, *, new_layout: bool = True) -> dict[str, bytes]:
    """The members of the archive Image.write_archive makes, by name (in its order), with an
    ``index.json`` in the new layout as docker 25+ writes one (sconify reads manifest.json)."""
    archive = _image().write_archive(tmp_path / "base.tar", new_layout=new_layout)
    with tarfile.open(archive) as tf:
        out = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    archive.unlink()
    if new_layout:
        config, layers = _manifest_names(out)
        manifest = _oci_manifest(out, config, layers)
        out["blobs/sha256/" + hashlib.sha256(manifest).hexdigest()] = manifest
        out["index.json"] = _index([(manifest, "docker.io/library/app:1")])
    return out


def _oci_manifest(files: dict[str, bytes], config: str, layers: list[str]) -> bytes:
    """The OCI image manifest docker 25+ stores among the blobs for ``config`` and ``layers``."""

    def desc(name: str, media: str) -> dict[str, object]:
        return {"mediaType": media, "digest": "sha256:" + name.rsplit("/", 1)[1], "size": len(files[name])}

    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc(n, "application/vnd.oci.image.layer.v1.tar+gzip") for n in layers],
    }).encode()  # fmt: skip


def _index(manifests: list[tuple[bytes, str | None]], *, missing: int = 0) -> bytes:
    """An index.json listing each manifest (with its containerd name annotation) and
    ``missing`` entries whose blobs the archive does not hold (other platforms)."""
    entries: list[dict[str, object]] = []
    for manifest, name in manifests:
        entry: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                    "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                                    "size": len(manifest)}  # fmt: skip
        if name is not None:
            entry["annotations"] = {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": "1",
            }
        entries.append(entry)
    for i in range(missing):
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + f"{i:064x}", "size": 100,
                        "platform": {"os": "linux", "architecture": "arm64"}})  # fmt: skip
    return json.dumps({"schemaVersion": 2, "manifests": entries}).encode()


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def _archive(files: dict[str, bytes], *, after: bytes = b"", end: bytes = END) -> bytes:
    """``files`` as tar blocks (pax format), then ``end`` (the end-of-archive blocks, or what
    stands in their place), then ``after``."""
    return b"".join(blocks(name, data) for name, data in files.items()) + end + after


def _read(ref: str | Path, platform: str = "linux/amd64") -> list[str]:
    """The diff_ids of the image ``ref``, each layer verified (pass 1)."""
    img = open_image(parse_ref(str(ref)), platform=platform)
    try:
        return index_layers(img.layers, ["app"]).diff_ids
    finally:
        img.close()


def _manifest_names(files: dict[str, bytes]) -> tuple[str, list[str]]:
    entry = json.loads(files["manifest.json"])[0]
    return entry["Config"], entry["Layers"]


# ------------------------------------------------------------------ the outer archive's tar


def _pax_header(**records: str) -> bytes:
    return blocks("x", pax=records, only_header=True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        # tarfile applies a chain of extended headers from the last to the first: the pax path
        # names the member manifest.json; Go's archive/tar (docker load) takes the GNU long name.
        (
            lambda f: (
                _archive({k: v for k, v in f.items() if k != "manifest.json"})[: -len(END)]
                + _pax_header(path="manifest.json")
                + blocks(LONG_DIR + "/manifest.json", f["manifest.json"], fmt=tarfile.GNU_FORMAT)
                + END
            ),
            "readers disagree",
        ),
        (
            lambda f: _archive(
                {k: v for k, v in f.items() if k != "manifest.json"},
                end=_pax_header(path="decoy.json")
                + blocks("manifest.json", f["manifest.json"], pax={"path": "manifest.json"})
                + END,
            ),
            "two pax headers",
        ),
        (
            lambda f: blocks("oci-layout", b"{}", glob={"path": "manifest.json"}) + _archive(f),
            "global pax header",
        ),
        # a prefix field in a GNU header: tarfile names it decoy/manifest.json, Go's archive/tar
        # (docker load) manifest.json, the second one, which replaces the first on extraction
        (
            lambda f: _archive(
                f, end=raw_file(b"manifest.json", b"[]", magic=b"ustar  \0", prefix=b"decoy") + END
            ),
            "prefix field outside a ustar header",
        ),
        # numbers Python's and Go's readers parse apart (confide.image.tarcheck): a mode field
        # with a leading NUL (tarfile 0, Go 0o644), a pax mtime Go refuses (docker load fails)
        (
            lambda f: _archive(f, end=raw_file(b"extra", b"x", fields={100: b"\x00000644\0"}) + END),
            "mode field",
        ),
        (lambda f: _archive(f, end=blocks("extra", b"x", pax={"mtime": "nan"}) + END), "pax mtime record"),
        (lambda f: _archive(f, after=blocks("manifest.json", b"[]") + END), "data after the end-of-archive"),
        (
            lambda f: _archive(f, end=b"\0" * 512 + blocks("extra", b"x") + END),
            "data after the end-of-archive",
        ),
    ],
)
def test_a_hostile_outer_tar_is_refused(tmp_path: Path, build: object, message: str) -> None:
    files = _files(tmp_path)
    assert callable(build)
    path = _write(tmp_path / "a.tar", build(files))
    with pytest.raises(ParseError, match=message):
        _read(path)


def test_an_oversized_extended_header_in_the_outer_tar_is_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    raw = blocks("oci-layout", b"{}", pax={"comment": "x" * (2 << 20)}) + _archive(files)
    with pytest.raises(ParseError, match="extended header, expected at most"):
        _read(_write(tmp_path / "a.tar", raw))


def test_benign_twins_of_the_outer_tar_rules(tmp_path: Path) -> None:
    """A pax path that agrees, a global comment, a GNU long name read alike by every reader,
    zero padding past the end, and a gzip-compressed archive (``docker save | gzip``)."""
    files = _files(tmp_path)
    expected = _read(_write(tmp_path / "plain.tar", _archive(files)))
    agreeing = (
        blocks("repositories", b"{}", glob={"comment": "saved"})
        + b"".join(blocks(name, data, pax={"path": name}) for name, data in files.items())
        + END
        + b"\0" * 30_000
    )
    assert _read(_write(tmp_path / "agree.tar", agreeing)) == expected
    old = _files(tmp_path, new_layout=False)
    config, layers = _manifest_names(old)
    renamed = {n.replace("layer0", LONG_DIR): d for n, d in old.items()}
    renamed["manifest.json"] = json.dumps(
        [{"Config": config, "RepoTags": ["app:1"], "Layers": [n.replace("layer0", LONG_DIR) for n in layers]}]
    ).encode()
    long_named = b"".join(blocks(n, d, fmt=tarfile.GNU_FORMAT) for n, d in renamed.items()) + END
    assert _read(_write(tmp_path / "long.tar", long_named)) == expected
    assert (
        _read(_write(tmp_path / "a.tar.gz", gzip.compress(_archive(files) + b"\0" * 10_000, mtime=0)))
        == expected
    )


# ------------------------------------------------------------------ names and links


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, target
        tf.addfile(ti)
        raw = buf.getvalue()[: tf.offset]
    return raw


def test_symlinked_or_hard_linked_index_manifest_and_blobs_are_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    config, (layer,) = _manifest_names(files)
    others = {k: v for k, v in files.items() if k not in ("index.json", layer)}
    cases = {
        # index.json (read by containerd's importer, not by sconify) as a link
        "index-sym": (
            _archive({**others, "blobs/sha256/" + "0" * 64: files["index.json"]}, end=b"")
            + _link("index.json", "blobs/sha256/" + "0" * 64)
            + blocks(layer, files[layer])
            + END,
            "'index.json' is a symlink",
        ),
        "index-hard": (
            _archive({**others, "real-index.json": files["index.json"]}, end=b"")
            + _link("index.json", "real-index.json", tarfile.LNKTYPE)
            + blocks(layer, files[layer])
            + END,
            "'index.json' is a hard link",
        ),
        # a layer blob as a symlink was followed (only the old layout's DIR/layer.tar may be one)
        "blob-sym": (
            _archive({**others, "elsewhere": files[layer], "index.json": files["index.json"]}, end=b"")
            + _link(layer, "../../elsewhere")
            + END,
            "is a symlink, expected a regular file",
        ),
        "blob-hard": (
            _archive({**others, "elsewhere": files[layer], "index.json": files["index.json"]}, end=b"")
            + _link(layer, "elsewhere", tarfile.LNKTYPE)
            + END,
            "is a hard link",
        ),
        "blobs-dir-sym": (
            _link("blobs", "store")
            + _archive({k.replace("blobs/", "store/", 1): v for k, v in files.items()}),
            "'blobs' is a symlink",
        ),
        "manifest-sym": (
            _archive({k: v for k, v in files.items() if k != "manifest.json"}, end=b"")
            + blocks("m.json", files["manifest.json"])
            + _link("manifest.json", "m.json")
            + END,
            "'manifest.json' is a symlink",
        ),
    }
    for label, (raw, message) in cases.items():
        with pytest.raises(ParseError, match=message):
            _read(_write(tmp_path / f"{label}.tar", raw))
    assert config in files  # the config is a regular member in every case


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (lambda f, layer: blocks(layer.replace("/sha256/", "//sha256/"), f[layer]), "appears twice"),
        (lambda f, layer: blocks("./" + layer, f[layer]), "appears twice"),
        (
            lambda f, layer: blocks("manifest.json/child", b"x"),
            "below 'manifest.json', which is not a directory",
        ),
        (lambda f, layer: blocks("../outside", b"x"), "expected a relative name inside the archive"),
        (lambda f, layer: _link("dev", "", tarfile.FIFOTYPE), "is a tar type"),
    ],
)
def test_names_that_extraction_and_lookup_see_differently_are_refused(
    tmp_path: Path, extra: object, message: str
) -> None:
    """``docker load`` extracts the archive to disk and reads files by path; sconify looks
    members up by name: two members for one path, or a member below a file, are two readings."""
    files = _files(tmp_path)
    _, (layer,) = _manifest_names(files)
    assert callable(extra)
    raw = _archive(files, end=b"") + extra(files, layer) + END
    with pytest.raises(ParseError, match=message):
        _read(_write(tmp_path / "a.tar", raw))


def test_directory_members_and_an_old_layout_layer_symlink_are_still_read(tmp_path: Path) -> None:
    files = _files(tmp_path, new_layout=False)
    config, (layer,) = _manifest_names(files)
    twin = "other/layer.tar"
    manifest = json.dumps([{"Config": config, "RepoTags": ["app:1"], "Layers": [twin]}]).encode()
    raw = (
        _link("layer0/", "", tarfile.DIRTYPE)
        + _link("other/", "", tarfile.DIRTYPE)
        + blocks(layer, files[layer])
        + _link(twin, "../" + layer)
        + blocks(config, files[config])
        + blocks("manifest.json", manifest)
        + END
    )
    assert len(_read(_write(tmp_path / "a.tar", raw))) == 1


def test_a_tag_given_to_two_images_of_an_archive_is_refused(tmp_path: Path) -> None:
    """``docker load`` applies the entries of ``manifest.json`` in order, each RepoTag moved to
    the last image that names it; sconify took the first: ``docker-archive:FILE:app:1``
    converted another image than ``docker load`` then tags ``app:1``."""
    files = _files(tmp_path, new_layout=False)
    config, layers = _manifest_names(files)
    other = json.loads(files[config])
    other["config"]["Env"] = [*other["config"]["Env"], "OTHER=1"]
    other_bytes = json.dumps(other).encode()
    other_name = hashlib.sha256(other_bytes).hexdigest() + ".json"

    def archive(second_tag: str) -> Path:
        entries = [{"Config": config, "RepoTags": ["app:1"], "Layers": layers},
                   {"Config": other_name, "RepoTags": [second_tag], "Layers": layers}]  # fmt: skip
        raw = _archive({**files, other_name: other_bytes, "manifest.json": json.dumps(entries).encode()})
        return _write(tmp_path / f"{second_tag.replace(':', '-')}.tar", raw)

    with pytest.raises(ParseError, match="2 images tagged 'app:1'"):
        _read(f"docker-archive:{archive('app:1')}:app:1")
    # benign twin: each tag names one image
    path = archive("app:2")
    assert _read(f"docker-archive:{path}:app:1") == _read(f"docker-archive:{path}:app:2")


# ------------------------------------------------------------------ a single-entry image index


def _layout_with_platform(tmp_path: Path, platform: dict[str, str] | None, *, ref: str | None = None) -> Path:
    root = _image().write_layout(tmp_path / "layout", ref=ref)
    index = json.loads((root / "index.json").read_bytes())
    if platform is not None:
        index["manifests"][0]["platform"] = platform
    (root / "index.json").write_text(json.dumps(index))
    return root


ARM64 = {"os": "linux", "architecture": "arm64"}


def test_a_single_entry_index_for_another_platform_is_refused(tmp_path: Path) -> None:
    root = _layout_with_platform(tmp_path, ARM64)
    with pytest.raises(
        UsageError,
        match=r"the only image is for platform linux/arm64, and the requested platform is linux/amd64;"
        r" give --platform linux/arm64",
    ):
        open_image(parse_ref(f"oci:{root}"))
    # benign twins: the platform it declares, or an entry that declares none
    assert len(_read(root, platform="linux/arm64")) == 1
    assert len(_read(_layout_with_platform(tmp_path / "none", None), platform="linux/s390x")) == 1


def test_a_single_named_entry_for_another_platform_is_refused(tmp_path: Path) -> None:
    root = _layout_with_platform(tmp_path, ARM64, ref="app")
    with pytest.raises(UsageError, match=r"the only image named 'app' is for platform linux/arm64"):
        open_image(parse_ref(f"oci:{root}:app"))
    assert len(_read(f"oci:{root}:app", platform="linux/arm64")) == 1


def test_a_single_entry_variant_is_judged_like_one_of_several(tmp_path: Path) -> None:
    root = _layout_with_platform(tmp_path, {"os": "linux", "architecture": "arm", "variant": "v7"})
    assert len(_read(root, platform="linux/arm")) == 1  # no variant asked: any variant
    assert len(_read(root, platform="linux/arm/v7")) == 1
    with pytest.raises(
        UsageError, match=r"platform linux/arm/v7, and the requested platform is linux/arm/v6"
    ):
        open_image(parse_ref(f"oci:{root}"), platform="linux/arm/v6")


def test_a_nested_single_entry_index_is_judged_too(tmp_path: Path) -> None:
    """An index whose only entry is an index whose only entry is for arm64."""
    root = _layout_with_platform(tmp_path, ARM64)
    inner = (root / "index.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(inner).hexdigest()
    (root / "blobs/sha256" / digest[7:]).write_bytes(inner)
    outer = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(inner)}
    ]}  # fmt: skip
    (root / "index.json").write_text(json.dumps(outer))
    with pytest.raises(UsageError, match="the only image is for platform linux/arm64"):
        open_image(parse_ref(f"oci:{root}"))
    assert len(_read(root, platform="linux/arm64")) == 1


def test_sconify_refuses_a_single_entry_index_for_another_platform_and_writes_nothing(tmp_path: Path) -> None:
    root = _layout_with_platform(tmp_path, ARM64)
    out = tmp_path / "out"
    opts = SconifyOptions(parse_ref(f"oci:{root}"), parse_ref(f"oci:{out}"), protect=["/app"], policy="p",
                          service="s", runtime_check=False)  # fmt: skip
    with pytest.raises(UsageError, match="requested platform is linux/amd64"):
        sconify(opts, KEY)
    assert not out.exists()
    shutil.rmtree(tmp_path / "layout")


# ------------------------------------------------------------------ index.json against manifest.json


def _other_image_files(tmp_path: Path) -> dict[str, bytes]:
    other = Image([[*PYTHON_BASE, M("app/", "d"), M("app/s", data=b"OTHER-image")]])
    archive = other.write_archive(tmp_path / "other.tar", new_layout=True)
    with tarfile.open(archive) as tf:
        out = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    archive.unlink()
    return out


def test_an_index_json_that_names_another_image_is_refused(tmp_path: Path) -> None:
    """containerd's importer (``docker load`` with the containerd image store) reads index.json,
    sconify and docker's own store manifest.json: the two must describe the same image."""
    files = _files(tmp_path)
    config, layers = _manifest_names(files)
    mine = _oci_manifest(files, config, layers)
    other = _other_image_files(tmp_path)
    other_config, other_layers = _manifest_names(other)
    theirs = _oci_manifest(other, other_config, other_layers)
    blobs = {k: v for k, v in other.items() if k.startswith("blobs/")}
    blobs["blobs/sha256/" + hashlib.sha256(theirs).hexdigest()] = theirs
    # only the other image in the index
    only_other = {**files, **blobs, "index.json": _index([(theirs, "docker.io/library/app:1")])}
    with pytest.raises(ParseError, match=r"index\.json does not list the image manifest\.json gives"):
        _read(_write(tmp_path / "a.tar", _archive(only_other)))
    # both, but the index gives manifest.json's tag (app:1) to the other one
    both = {**files, **blobs, "index.json": _index([(mine, None), (theirs, "docker.io/library/app:1")])}
    with pytest.raises(ParseError, match=r"index\.json names docker\.io/library/app:1 another image"):
        _read(_write(tmp_path / "b.tar", _archive(both)))
    # a malformed index.json is refused, not ignored
    broken = {**files, "index.json": b'{"schemaVersion": 2}'}
    with pytest.raises(ParseError, match="manifests list"):
        _read(_write(tmp_path / "c.tar", _archive(broken)))
    # benign twins: both images under their own names, and entries for platforms not saved
    fine = {**files, **blobs,
            "index.json": _index([(mine, "docker.io/library/app:1"), (theirs, "docker.io/library/other:1")],
                                 missing=2)}  # fmt: skip
    assert len(_read(_write(tmp_path / "d.tar", _archive(fine)))) == 1
    assert len(_read(_write(tmp_path / "e.tar", _archive(files)))) == 1


def test_an_index_json_blob_that_does_not_match_its_descriptor_is_refused(tmp_path: Path) -> None:
    files = _files(tmp_path)
    index = json.loads(files["index.json"])
    index["manifests"][0]["size"] += 1
    files["index.json"] = json.dumps(index).encode()
    with pytest.raises(ParseError, match="another size or digest"):
        _read(_write(tmp_path / "a.tar", _archive(files)))


def test_a_multi_platform_index_with_attestations_is_read(tmp_path: Path) -> None:
    """What a containerd image store saves: index.json names one nested index (all platforms,
    and buildx's attestation manifests), whose blobs the archive holds only for one platform."""
    files = _files(tmp_path)
    config, layers = _manifest_names(files)
    mine = _oci_manifest(files, config, layers)
    statement = b'{"_type": "https://in-toto.io/Statement/v0.1"}'
    attestation = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": "application/vnd.in-toto+json",
                    "digest": "sha256:" + hashlib.sha256(statement).hexdigest(), "size": len(statement)}],
    }).encode()  # fmt: skip
    nested = json.loads(_index([(mine, None), (attestation, None)], missing=1))
    nested["mediaType"] = "application/vnd.oci.image.index.v1+json"
    nested_bytes = json.dumps(nested).encode()
    top = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json",
         "digest": "sha256:" + hashlib.sha256(nested_bytes).hexdigest(), "size": len(nested_bytes),
         "annotations": {"io.containerd.image.name": "docker.io/library/app:1"}}]}  # fmt: skip
    saved = {**files, "index.json": json.dumps(top).encode()}
    for blob in (nested_bytes, attestation, statement, b"{}"):
        saved["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    assert len(_read(_write(tmp_path / "a.tar", _archive(saved)))) == 1
    # negative twin: the nested index without this image
    nested["manifests"] = nested["manifests"][1:]
    other_nested = json.dumps(nested).encode()
    top["manifests"][0].update(
        digest="sha256:" + hashlib.sha256(other_nested).hexdigest(), size=len(other_nested)
    )
    saved["blobs/sha256/" + hashlib.sha256(other_nested).hexdigest()] = other_nested
    saved["index.json"] = json.dumps(top).encode()
    with pytest.raises(ParseError, match="does not list the image"):
        _read(_write(tmp_path / "b.tar", _archive(saved)))


@pytest.mark.parametrize(
    ("tag", "name"),
    [("app:1", "docker.io/library/app:1"), ("user/app:1", "docker.io/user/app:1"),
     ("ghcr.io/o/app:1", "ghcr.io/o/app:1"), ("localhost/app:1", "localhost/app:1"),
     ("localhost:5000/app:1", "localhost:5000/app:1")],
)  # fmt: skip
def test_docker_names(tag: str, name: str) -> None:
    from confide.image.oci import _docker_name

    assert _docker_name(tag) == name
