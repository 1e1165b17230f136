"""Reading and writing OCI images: image layout directories, ``docker save`` archives, registries.

Every input is hostile: JSON documents are size-bounded and checked field by field, media
types must be known, every blob's size and SHA-256 digest are checked while it is streamed,
and each layer's uncompressed digest is checked against the config's ``rootfs.diff_ids``.
Registry references go through ``skopeo`` (copied to a temporary OCI layout first).

References (``SRC``/``DST``)::

    oci:DIR[:REF]            OCI image layout (REF: org.opencontainers.image.ref.name)
    docker-archive:FILE[:REF] docker save archive (old layout or the newer blobs/sha256 one)
    docker://HOST/NAME:TAG   registry, through skopeo
    DIR | FILE               a directory with oci-layout, or a tar file (docker save)

Specs: OCI image-spec v1.1 (image-layout.md, image-index.md, manifest.md, config.md,
descriptor.md, layer.md); the docker save format (moby image/tarexport).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confide import jsonstrict
from confide.errors import NetworkError, ParseError, StorageError, UsageError
from confide.fsutil import fsync_dir
from confide.image.blobs import GZIP, NONE, ZSTD, check_digest, sha256_digest
from confide.image.tarcheck import BoundedTarInfo, check_names, check_tail, clean_name

__all__ = [
    "CONFIG_TYPES",
    "LAYER_TYPES",
    "MEDIA_OCI_CONFIG",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_LAYER",
    "MEDIA_OCI_MANIFEST",
    "BlobStore",
    "Descriptor",
    "ImageRef",
    "Layer",
    "SourceImage",
    "open_image",
    "parse_ref",
    "write_image",
]

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
CONFIG_TYPES = (MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG)
# layer media type -> compression it must have (image-spec layer.md, moby distribution)
LAYER_TYPES = {
    MEDIA_OCI_LAYER: NONE,
    MEDIA_OCI_LAYER + "+gzip": GZIP,
    MEDIA_OCI_LAYER + "+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": GZIP,
}
MAX_JSON = 4 << 20  # bytes of any JSON document (manifest, index, config)
MAX_LAYERS = 1000
MAX_BLOB = 1 << 40
REF_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageRef:
    """A parsed SRC/DST: ``kind`` is ``oci``, ``docker-archive`` or ``docker``."""

    kind: str
    location: str
    ref: str | None = None

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.location}"
        return f"{self.kind}:{self.location}" + (f":{self.ref}" if self.ref else "")


def parse_ref(text: str) -> ImageRef:
    """Parse an image reference (see the module docstring)."""
    if text.startswith("docker://"):
        rest = text[len("docker://") :]
        if not rest:
            raise UsageError(f"image reference {text!r}: expected docker://HOST/NAME[:TAG]")
        return ImageRef("docker", rest)
    for kind in ("oci", "docker-archive"):
        if text.startswith(kind + ":"):
            rest = text[len(kind) + 1 :]
            loc, sep, ref = rest.partition(":")
            if not loc:
                raise UsageError(f"image reference {text!r}: expected {kind}:PATH[:REF]")
            return ImageRef(kind, loc, ref if sep else None)
    p = Path(text)
    if p.is_dir() or (not p.exists() and not text.endswith(".tar")):
        return ImageRef("oci", text)
    return ImageRef("docker-archive", text)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (descriptor.md)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        d = _obj(obj, what)
        media = d.get("mediaType")
        if not isinstance(media, str) or not media:
            raise ParseError(
                f"got {media!r}, expected a media type string", structure=what, field="mediaType"
            )
        digest = check_digest(d.get("digest"), f"{what}.digest")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB:
            raise ParseError(f"got {size!r}, expected an integer 0..{MAX_BLOB}", structure=what, field="size")
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in ann.items()
        ):
            raise ParseError("expected a string-to-string map", structure=what, field="annotations")
        plat = d.get("platform")
        if plat is not None and not isinstance(plat, dict):
            raise ParseError("expected an object", structure=what, field="platform")
        return cls(media, digest, size, dict(ann), plat)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            out["platform"] = self.platform
        return out


Opener = Callable[[], AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class Layer:
    """One layer: digest/size of the blob as stored (when known), its diff_id and an opener."""

    index: int
    media_type: str
    digest: str | None  # None for old docker-save layer.tar members (checked via diff_id)
    size: int | None
    diff_id: str
    compression: str | None  # required compression (from the media type), None = any
    open: Opener


@dataclass
class SourceImage:
    """A parsed source image: config (raw and parsed) and layers, valid while ``close`` is not called."""

    config: dict[str, Any]
    config_bytes: bytes
    layers: list[Layer]
    description: str
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"got {type(value).__name__}, expected a JSON object", structure=what)
    return value


def _json(data: bytes, what: str) -> Any:
    if len(data) > MAX_JSON:
        raise ParseError(f"got {len(data)} bytes, expected at most {MAX_JSON}", structure=what)
    return jsonstrict.loads(data, structure=what)


def _read_bounded(f: IO[bytes], what: str, limit: int = MAX_JSON) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise ParseError(f"got more than {limit} bytes, expected at most {limit}", structure=what)
    return data


def _check_config(config_bytes: bytes, n_layers: int) -> tuple[dict[str, Any], list[str]]:
    """Parse the image config (config.md); return it and its diff_ids."""
    cfg = _obj(_json(config_bytes, "image config"), "image config")
    rootfs = _obj(cfg.get("rootfs"), "image config rootfs")
    if rootfs.get("type") != "layers":
        raise ParseError(
            f"got {rootfs.get('type')!r}, expected 'layers'", structure="image config", field="rootfs.type"
        )
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise ParseError("expected a list", structure="image config", field="rootfs.diff_ids")
    if len(ids) != n_layers:
        raise ParseError(
            f"got {len(ids)} diff_ids, expected {n_layers} (one per layer)",
            structure="image config",
            field="rootfs.diff_ids",
        )
    diff_ids = [check_digest(d, f"rootfs.diff_ids[{i}]") for i, d in enumerate(ids)]
    inner = cfg.get("config")
    if inner is not None:
        inner = _obj(inner, "image config .config")
        for key in ("Entrypoint", "Cmd", "Env"):
            v = inner.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                raise ParseError(
                    "expected a list of strings or null", structure="image config", field=f"config.{key}"
                )
        wd = inner.get("WorkingDir")
        if wd is not None and not isinstance(wd, str):
            raise ParseError("expected a string", structure="image config", field="config.WorkingDir")
    return cfg, diff_ids


def _layer_compression(media_type: str, what: str) -> str:
    if "+encrypted" in media_type or media_type.endswith(".encrypted"):
        raise ParseError(
            f"got an encrypted layer ({media_type}), expected a plain one", structure=what, field="mediaType"
        )
    if media_type not in LAYER_TYPES:
        raise ParseError(
            f"got media type {media_type!r}, expected one of {', '.join(sorted(LAYER_TYPES))}",
            structure=what,
            field="mediaType",
        )
    return LAYER_TYPES[media_type]


# ---------------------------------------------------------------- OCI image layout


def _blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


@contextmanager
def _open_blob(root: Path, digest: str, what: str) -> Iterator[IO[bytes]]:
    path = _blob_path(root, digest)
    try:
        # O_NONBLOCK: a FIFO in a blob's place is refused below, not waited on for ever
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ParseError(f"blob {digest} is missing ({path})", structure=what) from None
    except OSError as exc:
        raise ParseError(f"cannot open blob {digest}: {exc.strerror or exc}", structure=what) from None
    with os.fdopen(fd, "rb") as f:
        if not _is_regular(fd):
            raise ParseError(f"blob {digest} is not a regular file", structure=what)
        yield f


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _read_blob(root: Path, desc: Descriptor, what: str) -> bytes:
    if desc.size > MAX_JSON:
        raise ParseError(f"got a {desc.size}-byte document, expected at most {MAX_JSON}", structure=what)
    with _open_blob(root, desc.digest, what) as f:
        data = _read_bounded(f, what)
    if len(data) != desc.size:
        raise ParseError(f"got {len(data)} bytes, expected {desc.size}", structure=what, field="size")
    got = sha256_digest(data)
    if got != desc.digest:
        raise ParseError(f"got digest {got}, expected {desc.digest}", structure=what, field="digest")
    return data


def _for_platform(declared: dict[str, Any], platform: str) -> bool:
    """Whether an index entry's ``platform`` (image-index.md: ``os`` and ``architecture``
    required, ``variant`` optional) is the requested ``OS/ARCH[/VARIANT]``: a request without a
    variant takes any variant, one with a variant only that variant."""
    os_, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    return (
        declared.get("os") == os_
        and declared.get("architecture") == arch
        and (not variant or declared.get("variant") == variant)
    )


def _select(manifests: list[Descriptor], ref: str | None, platform: str, what: str) -> Descriptor:
    """The entry of an index to read: among the ones named ``ref`` (annotation
    ``org.opencontainers.image.ref.name``, image-layout.md "index.json"), or all, the one for
    ``platform`` (``OS/ARCH[/VARIANT]``; image-index.md "platform": ``os``, ``architecture``,
    ``variant``). A single entry is taken when it declares no platform (the image config's
    architecture is then what the runtime check judges) and refused when it declares another
    one, as an entry of several would be: its config, layers and binaries are another
    platform's. Several entries for the platform (e.g. two variants, or two images under one
    name) are refused, not resolved by their order in the index."""
    found = manifests
    if ref is not None:
        found = [m for m in manifests if m.annotations.get(REF_ANNOTATION) == ref]
        if not found:
            names = sorted({m.annotations.get(REF_ANNOTATION, "") for m in manifests} - {""})
            raise UsageError(f"{what}: no image named {ref!r} (got {', '.join(names) or 'no named images'})")
    named = f" named {ref!r}" if ref is not None else ""
    if len(found) == 1:
        only = found[0]
        if not only.platform or _for_platform(only.platform, platform):
            return only
        declared = _platform_name(only.platform)
        raise UsageError(
            f"{what}: the only image{named} is for platform {declared}, and the requested platform is"
            f" {platform}; give --platform {declared} to convert it"
        )
    found = [m for m in found if m.platform and _for_platform(m.platform, platform)]
    if not found:
        raise UsageError(
            f"{what}: {len(manifests)} images{named} and none for platform {platform}; name one with :REF"
        )
    if len({m.digest for m in found}) > 1:
        plats = ", ".join(sorted({_platform_name(m.platform or {}) for m in found}))
        raise UsageError(
            f"{what}: {len(found)} different images{named} for platform {platform} ({plats}): "
            "ambiguous; give --platform OS/ARCH/VARIANT or name one with :REF"
        )
    return found[0]


def _platform_name(platform: dict[str, Any]) -> str:
    parts = [str(platform.get(k, "")) for k in ("os", "architecture", "variant")]
    return "/".join(parts).rstrip("/")


def _read_layout_file(root: Path, name: str, what: str) -> bytes:
    """``oci-layout`` or ``index.json`` (image-layout.md): a regular file, read up to
    MAX_JSON + 1 bytes (a larger one is refused without being read whole; a FIFO or a device
    in its place is refused, not read until it ends)."""
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ParseError(f"{name} missing: not an OCI image layout", structure=what) from None
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not _is_regular(fd):
            raise ParseError(f"{name} is not a regular file", structure=what)
        try:
            return _read_bounded(f, name)
        except OSError as exc:
            raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None


def _open_layout(root: Path, ref: str | None, platform: str) -> SourceImage:
    what = f"OCI layout {str(root)!r}"
    layout = _read_layout_file(root, "oci-layout", what)
    index_bytes = _read_layout_file(root, "index.json", what)
    lv = _obj(_json(layout, "oci-layout"), "oci-layout").get("imageLayoutVersion")
    if lv != "1.0.0":
        raise ParseError(f"got {lv!r}, expected '1.0.0'", structure="oci-layout", field="imageLayoutVersion")
    desc = _pick_manifest(root, _obj(_json(index_bytes, "index.json"), "index.json"), ref, platform, what)
    manifest_bytes = _read_blob(root, desc, "image manifest")
    manifest = _obj(_json(manifest_bytes, "image manifest"), "image manifest")
    if manifest.get("schemaVersion") != 2:
        raise ParseError(
            f"got {manifest.get('schemaVersion')!r}, expected 2",
            structure="image manifest",
            field="schemaVersion",
        )
    mt = manifest.get("mediaType", desc.media_type)
    if mt not in MANIFEST_TYPES:
        raise ParseError(
            f"got {mt!r}, expected an image manifest", structure="image manifest", field="mediaType"
        )
    cdesc = Descriptor.from_json(manifest.get("config"), "manifest config")
    if cdesc.media_type not in CONFIG_TYPES:
        raise ParseError(
            f"got {cdesc.media_type!r}, expected an image config ({', '.join(CONFIG_TYPES)})",
            structure="manifest config",
            field="mediaType",
        )
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list) or len(raw_layers) > MAX_LAYERS:
        raise ParseError(
            f"expected a list of at most {MAX_LAYERS} layers", structure="image manifest", field="layers"
        )
    ldescs = [Descriptor.from_json(d, f"layer {i}") for i, d in enumerate(raw_layers)]
    config_bytes = _read_blob(root, cdesc, "image config")
    cfg, diff_ids = _check_config(config_bytes, len(ldescs))
    layers = []
    for i, (ld, diff_id) in enumerate(zip(ldescs, diff_ids, strict=True)):
        comp = _layer_compression(ld.media_type, f"layer {i}")

        def opener(digest: str = ld.digest, i: int = i) -> AbstractContextManager[IO[bytes]]:
            return _open_blob(root, digest, f"layer {i}")

        layers.append(Layer(i, ld.media_type, ld.digest, ld.size, diff_id, comp, opener))
    return SourceImage(cfg, config_bytes, layers, what)


def _pick_manifest(
    root: Path, index: dict[str, Any], ref: str | None, platform: str, what: str
) -> Descriptor:
    for depth in range(3):
        if index.get("schemaVersion") != 2:
            raise ParseError(
                f"got {index.get('schemaVersion')!r}, expected 2",
                structure="image index",
                field="schemaVersion",
            )
        entries = index.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise ParseError("expected a non-empty list", structure="image index", field="manifests")
        descs = [Descriptor.from_json(m, f"image index manifests[{i}]") for i, m in enumerate(entries)]
        desc = _select(descs, ref if depth == 0 else None, platform, what)
        if desc.media_type in MANIFEST_TYPES:
            return desc
        if desc.media_type not in INDEX_TYPES:
            raise ParseError(
                f"got {desc.media_type!r}, expected an image manifest or index",
                structure="image index",
                field="mediaType",
            )
        index = _obj(_json(_read_blob(root, desc, "nested image index"), "image index"), "image index")
    raise ParseError("image indexes nested too deeply", structure="image index")


# ---------------------------------------------------------------- docker save archives


def _archive_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ParseError(
            f"got {name!r}, expected a file name in the archive", structure="manifest.json", field=what
        )
    norm = name.removeprefix("./")
    parts = norm.split("/")
    if norm.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in norm:
        raise ParseError(
            f"got {name!r}, expected a relative name inside the archive",
            structure="manifest.json",
            field=what,
        )
    return norm


class _ArchiveTarInfo(BoundedTarInfo):
    structure = "docker archive"


MAX_ARCHIVE_MEMBERS = 100_000  # members of a docker save archive (a few per layer and image)


def _archive_members(tf: tarfile.TarFile, what: str) -> dict[str, tarfile.TarInfo]:
    """The members of a ``docker save`` archive by name (``./a//b`` is ``a/b``), read under the
    rules of the layer tars (:mod:`confide.image.tarcheck`: bounded extended headers, names
    that Python's and Go's tar readers resolve alike, only zeros after the end), since
    ``docker load`` reads the same archive with Go's ``archive/tar`` and extracts it to disk
    (moby image/tarexport). Also refused, as what a reader that extracts and one that looks
    members up would see differently: a name twice (after cleaning), a name that is absolute or
    has ``..``, a member below one that is not a directory, and any member but a regular file
    or directory, except a symlink at ``DIR/layer.tar`` (docker before 25 writes a layer
    saved already so; ``Layers`` resolves it inside the archive). So ``manifest.json``,
    ``index.json``, ``oci-layout``, the config and the ``blobs/`` are regular files, never
    links."""
    members: dict[str, tarfile.TarInfo] = {}
    for m in tf:
        if len(members) >= MAX_ARCHIVE_MEMBERS:
            raise ParseError(f"more than {MAX_ARCHIVE_MEMBERS} members", structure=what)
        check_names(m, tf, what)
        name = clean_name(m.name)
        parts = name.split("/")
        if not name or m.name.startswith("/") or ".." in parts or "\x00" in m.name:
            raise ParseError(
                f"member {m.name!r}: expected a relative name inside the archive", structure=what
            )
        if name in members:
            raise ParseError(f"member {name!r} appears twice", structure=what)
        if m.issym():
            if len(parts) != 2 or parts[1] != "layer.tar":
                raise ParseError(
                    f"member {name!r} is a symlink, expected a regular file (only an old-layout "
                    "DIR/layer.tar may link to another layer)",
                    structure=what,
                )
        elif not m.isdir() and not (m.isreg() and not m.issparse()):
            kind = "hard link" if m.islnk() else "sparse file" if m.issparse() else f"tar type {m.type!r}"
            raise ParseError(
                f"member {name!r} is a {kind}, expected a regular file or a directory", structure=what
            )
        members[name] = m
    check_tail(tf, what, seek=True)
    for name in members:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = members.get("/".join(parts[:i]))
            if parent is not None and not parent.isdir():
                raise ParseError(
                    f"member {name!r} is below {'/'.join(parts[:i])!r}, which is not a directory",
                    structure=what,
                )
    return members


def _open_archive(path: Path, ref: str | None) -> SourceImage:
    what = f"docker archive {str(path)!r}"
    try:
        tf = tarfile.open(path, mode="r:*", tarinfo=_ArchiveTarInfo)  # noqa: SIM115 - closed by SourceImage.close
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ParseError(f"not a tar archive: {exc}", structure=what) from None
    image = None
    try:
        try:
            members = _archive_members(tf, what)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ParseError(f"truncated or corrupt archive: {exc}", structure=what) from None

        def read_member(name: str, field_: str) -> bytes:
            m = members.get(name)
            if m is None:
                raise ParseError(f"{name!r} is missing", structure=what, field=field_)
            if not m.isreg():
                raise ParseError(f"{name!r} is not a regular file", structure=what, field=field_)
            f = tf.extractfile(m)
            assert f is not None
            return _read_bounded(f, name)

        entries = _json(read_member("manifest.json", "manifest.json"), "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ParseError("expected a non-empty JSON list", structure="manifest.json")
        matching = []
        for raw_entry in entries:
            e = _obj(raw_entry, "manifest.json entry")
            tags = e.get("RepoTags") or []
            if ref is None or (isinstance(tags, list) and ref in tags):
                matching.append(e)
        if not matching:
            raise UsageError(f"{what}: no image tagged {ref!r}")
        if ref is not None and len(matching) > 1:
            # docker load (moby image/tarexport) tags the entries in order: the last one that
            # names a tag keeps it, so taking the first would convert another image
            raise ParseError(
                f"{len(matching)} images tagged {ref!r}: readers disagree on which one it names "
                "(docker load keeps the last)",
                structure="manifest.json",
                field="RepoTags",
            )
        chosen = matching[0]
        if ref is None and len(entries) > 1:
            raise UsageError(f"{what}: {len(entries)} images; name one with docker-archive:FILE:REPO:TAG")
        config_name = _archive_name(chosen.get("Config"), "Config")
        config_bytes = read_member(config_name, "Config")
        expected = _name_digest(config_name)
        if expected is not None and sha256_digest(config_bytes) != expected:
            raise ParseError(
                f"got digest {sha256_digest(config_bytes)}, expected {expected}", structure="image config"
            )
        names = chosen.get("Layers")
        if not isinstance(names, list) or len(names) > MAX_LAYERS:
            raise ParseError(
                f"expected a list of at most {MAX_LAYERS} names", structure="manifest.json", field="Layers"
            )
        layer_names = [_archive_name(n, f"Layers[{i}]") for i, n in enumerate(names)]
        cfg, diff_ids = _check_config(config_bytes, len(layer_names))
        if "index.json" in members:
            # a blob's digest is in its name; an old-layout layer.tar is the uncompressed layer
            digests = tuple(_name_digest(n) or d for n, d in zip(layer_names, diff_ids, strict=True))
            tags = chosen.get("RepoTags") or []
            named = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
            _check_archive_index(read_member, members, (sha256_digest(config_bytes), digests), named, what)
        layers = []
        for i, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
            lm = members.get(name)
            if lm is not None and lm.issym():
                # docker save before 25 (moby image/tarexport, old layout) writes a layer whose
                # diff_id was saved already as a relative symlink to that layer.tar
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), lm.linkname))
                if lm.linkname.startswith("/") or target.startswith("../") or target == "..":
                    raise ParseError(
                        f"layer {name!r} is a symlink to {lm.linkname!r}, outside the archive",
                        structure=what,
                        field=f"Layers[{i}]",
                    )
                lm = members.get(target)
            if lm is None or not lm.isreg():
                raise ParseError(f"layer {name!r} is missing", structure=what, field=f"Layers[{i}]")

            @contextmanager
            def opener(m: tarfile.TarInfo = lm) -> Iterator[IO[bytes]]:
                f = tf.extractfile(m)
                assert f is not None
                with f:
                    yield f

            digest = _name_digest(name)
            layers.append(Layer(i, MEDIA_OCI_LAYER, digest, lm.size, diff_id, None, opener))
        image = SourceImage(cfg, config_bytes, layers, what, [tf.close])
        return image
    finally:
        if image is None:
            tf.close()


CONTAINERD_NAME = "io.containerd.image.name"
MAX_INDEX_MANIFESTS = 1000  # image manifests read from a docker save archive's index.json


def _docker_name(tag: str) -> str:
    """A ``RepoTags`` entry as docker names it in full (distribution/reference, "normalized
    named"): a first component without ``.`` or ``:`` that is not ``localhost`` is on
    ``docker.io``, and a name of one component is below ``library/``."""
    first, sep, _ = tag.partition("/")
    if not sep:
        return "docker.io/library/" + tag
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + tag
    return tag


def _archive_index_images(
    read_member: Callable[[str, str], bytes], members: dict[str, tarfile.TarInfo]
) -> list[tuple[str, tuple[str, ...], str | None]]:
    """(config digest, layer digests, name) of every image manifest the archive's
    ``index.json`` reaches (image-index.md; nested indexes up to 3 deep). The name is the
    entry's ``io.containerd.image.name`` for an entry of ``index.json`` itself whose layers are
    all image layers, else ``None``: below a nested (multi-platform) index one name covers an
    image per platform and their attestation manifests. An entry whose blob is not in the
    archive is passed over (a multi-platform index saved for one platform lists the others); a
    blob that is there must have its descriptor's size and digest."""
    out: list[tuple[str, tuple[str, ...], str | None]] = []

    def blob(desc: Descriptor, what: str) -> bytes | None:
        name = f"blobs/sha256/{desc.digest[7:]}"
        if name not in members:
            return None
        data = read_member(name, what)
        if len(data) != desc.size or sha256_digest(data) != desc.digest:
            raise ParseError(f"got a blob of another size or digest than {desc.digest}", structure=what)
        return data

    def walk(data: bytes, depth: int) -> None:
        index = _obj(_json(data, "index.json"), "index.json")
        entries = index.get("manifests")
        if index.get("schemaVersion") != 2 or not isinstance(entries, list):
            raise ParseError("expected schemaVersion 2 and a manifests list", structure="index.json")
        for i, raw in enumerate(entries):
            desc = Descriptor.from_json(raw, f"index.json manifests[{i}]")
            if desc.media_type in INDEX_TYPES:
                if depth >= 2:
                    raise ParseError("image indexes nested too deeply", structure="index.json")
                nested = blob(desc, "nested image index")
                if nested is not None:
                    walk(nested, depth + 1)
                continue
            if desc.media_type not in MANIFEST_TYPES:
                continue
            found = blob(desc, "image manifest")
            if found is None:
                continue
            if len(out) >= MAX_INDEX_MANIFESTS:
                raise ParseError(f"more than {MAX_INDEX_MANIFESTS} image manifests", structure="index.json")
            manifest = _obj(_json(found, "image manifest"), "image manifest")
            config = Descriptor.from_json(manifest.get("config"), "manifest config")
            raw_layers = manifest.get("layers")
            if not isinstance(raw_layers, list) or len(raw_layers) > MAX_LAYERS:
                raise ParseError(
                    f"expected a list of at most {MAX_LAYERS} layers",
                    structure="image manifest",
                    field="layers",
                )
            descs = [Descriptor.from_json(d, f"layer {j}") for j, d in enumerate(raw_layers)]
            image = depth == 0 and all(d.media_type in LAYER_TYPES for d in descs)
            name = desc.annotations.get(CONTAINERD_NAME) if image else None
            out.append((config.digest, tuple(d.digest for d in descs), name))

    walk(read_member("index.json", "index.json"), 0)
    return out


def _check_archive_index(
    read_member: Callable[[str, str], bytes],
    members: dict[str, tarfile.TarInfo],
    image: tuple[str, tuple[str, ...]],
    tags: list[str],
    what: str,
) -> None:
    """A ``docker save`` archive with an ``index.json`` (docker 25 and later) describes its
    images twice: ``manifest.json``, which sconify and docker's own image store read, and the
    OCI index, which containerd's importer reads (``docker load`` with the containerd image
    store, ``ctr import``). Refuse an archive whose two descriptions disagree on the image
    converted: ``image`` (config digest, layer digests, from ``manifest.json``) must be one the
    index reaches, and no image the index names directly like one of its ``tags`` may be
    another (:func:`_archive_index_images`: names below a nested index are not compared)."""
    images = _archive_index_images(read_member, members)
    if not any((config, layers) == image for config, layers, _ in images):
        raise ParseError(
            f"index.json does not list the image manifest.json gives (config {image[0]}): "
            "readers of the index would load other images",
            structure=what,
        )
    names = {_docker_name(t) for t in tags}
    for config, layers, name in images:
        if name in names and (config, layers) != image:
            raise ParseError(
                f"index.json names {name} another image than manifest.json does (config {config})",
                structure=what,
            )


def _name_digest(name: str) -> str | None:
    """The digest a docker-archive member name promises (``blobs/sha256/<hex>`` or ``<hex>.json``)."""
    base = name.rsplit("/", 1)[-1].removesuffix(".json")
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return "sha256:" + base
    return None


# ---------------------------------------------------------------- registries (skopeo)


def _skopeo(args: list[str], what: str) -> None:
    exe = shutil.which("skopeo")
    if exe is None:
        raise UsageError(
            f"{what}: registry references need skopeo (Debian package 'skopeo'); not found in PATH"
        )
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603 - fixed argv, no shell
    except subprocess.TimeoutExpired:
        raise NetworkError(f"{what}: skopeo timed out") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetworkError(f"{what}: skopeo failed: {msg[-1] if msg else proc.returncode}")


def open_image(src: ImageRef, *, platform: str = "linux/amd64", tls_verify: bool = True) -> SourceImage:
    """Open ``src`` for reading; call :meth:`SourceImage.close` when done."""
    if src.kind == "oci":
        return _open_layout(Path(src.location), src.ref, platform)
    if src.kind == "docker-archive":
        return _open_archive(Path(src.location), src.ref)
    tmp = Path(tempfile.mkdtemp(prefix="confide-pull-"))
    try:
        os_, _, arch = platform.partition("/")
        arch, _, variant = arch.partition("/")
        _skopeo(
            ["copy", "--quiet", f"--src-tls-verify={str(tls_verify).lower()}", "--override-os", os_,
             "--override-arch", arch, *(["--override-variant", variant] if variant else []),
             str(src), f"oci:{tmp}:image"],
            f"pull {src}",
        )  # fmt: skip
        image = _open_layout(tmp, "image", platform)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    image.description = str(src)
    image._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return image


# ---------------------------------------------------------------- writing


class BlobStore:
    """A directory of blobs (``blobs/sha256/<hex>``) being assembled into an output image."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def temp(self) -> tuple[Path, IO[bytes]]:
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".blob-")
        return Path(name), os.fdopen(fd, "wb")

    def commit(self, tmp: Path, digest: str) -> Path:
        final = _blob_path(self.root, digest)
        _fsync_file(tmp)  # durable before the image naming it is published
        os.replace(tmp, final)
        os.chmod(final, 0o644)
        return final

    def path(self, digest: str) -> Path:
        return _blob_path(self.root, digest)

    def put(self, data: bytes) -> Descriptor:
        digest = sha256_digest(data)
        path = _blob_path(self.root, digest)
        _write_synced(path, data)
        return Descriptor("", digest, len(data))

    def sync(self) -> None:
        """Make the directory entries durable (the files were synced when written)."""
        for d in (self.root / "blobs" / "sha256", self.root / "blobs", self.root):
            fsync_dir(d)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_image(
    store: BlobStore,
    dst: ImageRef,
    config: dict[str, Any],
    layers: list[Descriptor],
    *,
    tls_verify: bool = True,
) -> str:
    """Write config + manifest into ``store`` and publish the image at ``dst``; return the manifest digest.

    The output is assembled next to the destination and renamed into place (layouts), or
    written to a temporary file and renamed (archives), so a failure leaves no partial image.
    """
    cdesc = store.put(_canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": cdesc.digest, "size": cdesc.size},
        "layers": [d.to_json() for d in layers],
    }
    mdesc = store.put(_canonical(manifest))
    ref = dst.ref or ("latest" if dst.kind != "oci" else None)
    ann = {REF_ANNOTATION: ref} if ref else {}
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [Descriptor(MEDIA_OCI_MANIFEST, mdesc.digest, mdesc.size, ann).to_json()],
    }
    _write_synced(store.root / "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
    _write_synced(store.root / "index.json", _canonical(index))
    if dst.kind == "oci":
        # every file and directory entry durable before the rename publishes the layout: a
        # crash must not leave an image at DST whose blobs are empty or missing
        store.sync()
        _publish_layout(store.root, Path(dst.location))
    elif dst.kind == "docker-archive":
        docker_manifest = [
            {
                "Config": f"blobs/sha256/{cdesc.digest[7:]}",
                "RepoTags": [dst.ref] if dst.ref and ":" in dst.ref else [],
                "Layers": [f"blobs/sha256/{d.digest[7:]}" for d in layers],
            }
        ]
        _write_synced(store.root / "manifest.json", _canonical(docker_manifest))
        _write_archive(store.root, Path(dst.location))
    else:
        _skopeo(
            [
                "copy",
                "--quiet",
                f"--dest-tls-verify={str(tls_verify).lower()}",
                f"oci:{store.root}:{ref}",
                str(dst),
            ],
            f"push {dst}",
        )
    return mdesc.digest


def _publish_layout(src: Path, dst: Path) -> None:
    try:
        if dst.exists():
            if not dst.is_dir() or any(dst.iterdir()):
                raise UsageError(
                    f"output {str(dst)!r}: got an existing non-empty path, expected an absent/empty directory"
                )
            dst.rmdir()
        dst.parent.mkdir(parents=True, exist_ok=True)
        for leftover in src.glob(".blob-*"):
            leftover.unlink()
        try:
            os.rename(src, dst)  # the work area is beside dst: usually the same file system
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
            shutil.copytree(src, tmp)
            for d, _, files in os.walk(tmp):
                for name in files:
                    _fsync_file(Path(d) / name)
                fsync_dir(Path(d))
            os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {str(dst)!r}: {exc.strerror or exc}") from None


def _write_archive(src: Path, dst: Path) -> None:
    """A reproducible docker-save archive (docker 25+ layout: OCI layout + manifest.json)."""
    names = ["blobs/", "blobs/sha256/"]
    names += sorted(f"blobs/sha256/{p.name}" for p in (src / "blobs" / "sha256").iterdir())
    names += ["index.json", "manifest.json", "oci-layout"]
    if dst.exists():
        raise UsageError(f"output {str(dst)!r} exists; refusing to overwrite")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in names:
                ti = tarfile.TarInfo(name.rstrip("/"))
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
                if name.endswith("/"):
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tf.addfile(ti)
                    continue
                p = src / name
                ti.size, ti.mode = p.stat().st_size, 0o644
                with p.open("rb") as f:
                    tf.addfile(ti, f)
        _fsync_file(tmp)  # durable before the rename publishes it
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {str(dst)!r}: {exc.strerror or exc}") from None
        raise
    try:
        fsync_dir(dst.parent)
    except OSError as exc:
        raise StorageError(
            f"wrote {str(dst)!r} but cannot sync its directory: {exc.strerror or exc}"
        ) from None
