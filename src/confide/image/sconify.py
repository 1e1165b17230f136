"""sconify: a native OCI image -> a confidential image, a protected volume and a policy template.

Steps (docs/sconify.md):

1. Open the source image; pass 1 verifies every blob and builds the final file system tree.
2. Check the protected paths (exist, regular files or directories, no special files below,
   no hard link across their boundary) and that the image can run the runtime.
3. Pass 2 rewrites each layer that holds any member at or below a protected path without
   those members (lower layers too: a file deleted or overwritten later is dropped as well);
   layers without such members are copied byte for byte. The final contents of the
   protected paths are staged in a private (0700) directory of the work area.
4. A protected volume is built from them (deterministic volume id and file ids, so the same
   input and key give the same bytes), the staging area is removed.
5. Two layers are added: the runtime (``/confide/bin``, ``/confide/lib``) and the volume with
   the mount placeholders and ``/confide/sconify.json``. The entrypoint becomes
   ``/confide/bin/confide run --config-id POLICY/SERVICE --tee TEE -- <entrypoint + cmd>``.
6. The image is written (reproducibly: fixed mtimes, sorted members, gzip mtime 0) and the
   policy template is returned; a :class:`PolicySink` may apply it. Its
   measurement is ``--measurement``, or with ``--tee sim`` the one ``confide run`` will report
   in the output image (computed after step 2 by :mod:`confide.image.measure`), or the
   placeholder with warnings saying why.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from confide import jsonstrict
from confide.errors import ParseError, StorageError, UsageError
from confide.evidence.sim import MEASUREMENT_SIZE
from confide.image.blobs import GZIP, NONE, ZSTD, CompressingWriter, HashingReader, HashingWriter
from confide.image.flatten import BLOCK, CHAR, DIR, FIFO, FILE, SYMLINK, FsIndex, Node, index_layers, is_under
from confide.image.flatten import rewrite_layer as _rewrite
from confide.image.measure import measure_image_command
from confide.image.oci import (
    MAX_BLOB,
    MEDIA_OCI_LAYER,
    BlobStore,
    Descriptor,
    ImageRef,
    SourceImage,
    open_image,
    write_image,
)
from confide.image.runtime import (
    LAUNCHER,
    LIB_DIR,
    ImagePython,
    check_image,
    iter_lib_dirs,
    launcher_script,
    resolve_path,
)
from confide.image.runtime import vendored_files as _vendored
from confide.volume.format import (
    Region,
    RegionRule,
    check_path,
    check_symlink_target,
    clamp_mtime_ns,
    decode_manifest,
    encode_manifest,
)
from confide.volume.keys import VolumeKey
from confide.volume.store import PENDING_NAME, add_sources, create_volume, seal_volume

__all__ = ["CONTRACT_PATH", "VOLUMES_DIR", "PolicySink", "SconifyOptions", "SconifyResult", "sconify"]

VOLUMES_DIR = "confide/volumes"
CONTRACT_PATH = "confide/sconify.json"  # the launcher names it too (runtime.CONTRACT)
_MEDIA = {NONE: MEDIA_OCI_LAYER, GZIP: MEDIA_OCI_LAYER + "+gzip", ZSTD: MEDIA_OCI_LAYER + "+zstd"}
_VOLUME_ID_INFO = b"confide sconify volume id\x00"


class PolicySink(Protocol):
    """Where a finished policy goes besides the returned template (a library caller's hook; the
    CLI's ``--cas`` applies the template with :class:`~confide.cas.client.CasClient`)."""

    def apply(self, policy: dict[str, Any]) -> None: ...


Progress = Callable[[str, int, int | None], None]  # (phase, advance bytes, total or None)


@dataclass(frozen=True)
class SconifyOptions:
    src: ImageRef
    dst: ImageRef
    protect: Sequence[str]
    authenticate: Sequence[str] = ()
    policy: str = "policy"
    service: str = "service"
    volume_name: str = "image"
    compression: str = GZIP
    runtime_check: bool = True
    platform: str = "linux/amd64"
    tls_verify: bool = True
    tee: str = "sim"
    measurement: str | None = None
    """Written into the template as it is (96 hex digits); None: computed for ``tee == "sim"``."""
    cas_spki: str | None = None
    """The SHA-256 (hex) of the CAS's key (its certificate's SubjectPublicKeyInfo): the launcher
    pins the runtime to that CAS (``CONFIDE_CAS_SPKI``); None: the host's environment names it."""


@dataclass(frozen=True)
class SconifyResult:
    manifest_digest: str
    volume_tag: str
    policy: dict[str, Any]
    command: list[str]
    files: int
    bytes: int
    rewritten_layers: list[int] = field(default_factory=list)
    measurement: str | None = None
    """In the template: given, or computed (``--tee sim``); None: the placeholder is there."""
    warnings: list[str] = field(default_factory=list)


def _roots(opts: SconifyOptions) -> list[tuple[str, Region]]:
    out: dict[str, Region] = {}
    for paths, region in ((opts.protect, Region.ENCRYPTED), (opts.authenticate, Region.AUTHENTICATED)):
        for p in paths:
            if not p.startswith("/"):
                raise UsageError(f"protected path {p!r}: expected an absolute path in the image")
            parts = [x for x in p.split("/") if x not in ("", ".")]
            if ".." in parts or not parts:
                raise UsageError(f"protected path {p!r}: expected a path below / without '..'")
            rel = "/".join(parts)
            if is_under(rel, "confide"):
                raise UsageError(f"protected path {p!r}: /confide is reserved for the runtime")
            if rel in out and out[rel] is not region:
                raise UsageError(f"{p!r} is given both to --protect and --authenticate")
            out[rel] = region
    if not out:
        raise UsageError("nothing to protect: give at least one --protect or --authenticate PATH")
    return sorted(out.items())


def _outer(roots: Sequence[str]) -> list[str]:
    return [r for r in roots if not any(o != r and is_under(r, o) for o in roots)]


def _check_paths(
    idx: FsIndex, roots: Sequence[str], outer: Sequence[str]
) -> dict[tuple[int, int], list[str]]:
    for r in roots:
        node = idx.lookup(r)
        if node is None:
            raise UsageError(
                f"protected path {'/' + r!r} does not exist in the image (or a parent is a symlink)"
            )
        if node.kind == SYMLINK:
            raise UsageError(
                f"protected path {'/' + r!r} is a symlink to {node.linkname!r}; protect its target"
            )
        if node.kind not in (FILE, DIR):
            raise UsageError(
                f"protected path {'/' + r!r} is a {node.kind} device/fifo, expected a file or directory"
            )
    wanted: dict[tuple[int, int], list[str]] = {}
    for r in outer:
        for p, n in idx.walk(r):
            if n.kind in (CHAR, BLOCK, FIFO):
                raise UsageError(
                    f"{'/' + p!r} below a protected path is a {n.kind}; a volume holds no special files"
                )
            if n.xattrs:
                # a volume entry has no extended attributes (docs/volume-format.md): file
                # capabilities (security.capability) would be lost and a POSIX ACL
                # (system.posix_acl_access) dropped, leaving the group bits, the ACL's mask,
                # as the owning group's permissions
                raise UsageError(
                    f"{'/' + p!r} below a protected path has extended attributes "
                    f"({', '.join(n.xattrs)}); a volume holds none: protect another path or "
                    "remove them from the image"
                )
            try:  # what the volume's manifest cannot hold, refused before any layer is rewritten
                check_path(p)
                if n.kind == SYMLINK:
                    check_symlink_target(n.linkname)
            except ParseError as exc:
                raise UsageError(
                    f"{'/' + p!r} below a protected path: {exc.message}; a protected volume cannot "
                    "hold it (protect another path or rename it in the image)"
                ) from None
            if n.kind == FILE:
                assert n.source is not None
                wanted.setdefault(n.source, []).append(p)
    return wanted


class _Staging:
    """Receives the final contents of protected files (a private 0700 directory)."""

    def __init__(self, root: Path, wanted: dict[tuple[int, int], list[str]]) -> None:
        self.root = root
        root.mkdir(mode=0o700)
        self.wanted = wanted
        self.done: set[tuple[int, int]] = set()

    def _dir(self, rel: str) -> Path:
        d = self.root / rel
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def __call__(self, key: tuple[int, int], data: IO[bytes], size: int) -> None:
        paths = self.wanted[key]
        first = self._dir(os.path.dirname(paths[0])) / os.path.basename(paths[0])
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            copied = 0
            while chunk := data.read(1 << 20):
                f.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise ParseError(
                f"member {paths[0]!r}: got {copied} bytes, expected {size}", structure="layer tar"
            )
        for other in paths[1:]:  # hard links become separate files in the volume
            shutil.copyfile(first, self._dir(os.path.dirname(other)) / os.path.basename(other))
        self.done.add(key)

    def finish(self, idx: FsIndex, outer: Sequence[str]) -> None:
        missing = set(self.wanted) - self.done
        if missing:
            raise ParseError(
                f"{len(missing)} protected file(s) were not found again in pass 2", structure="image"
            )
        for r in outer:
            for p, n in idx.walk(r):
                if n.kind == DIR:
                    self._dir(p)
                elif n.kind == SYMLINK:
                    self._dir(os.path.dirname(p))
                    os.symlink(n.linkname, self.root / p)


def _volume_id(key: VolumeKey, name: str) -> bytes:
    return hmac.new(key.raw, _VOLUME_ID_INFO + name.encode(), hashlib.sha256).digest()[:16]


def _build_volume(
    vol: Path, key: VolumeKey, name: str, staging: Path, idx: FsIndex, roots: Sequence[tuple[str, Region]]
) -> str:
    create_volume(vol, key, volume_id=_volume_id(key, name), rules=[RegionRule(r, g) for r, g in roots])
    for r in _outer([r for r, _ in roots]):
        dest = r if idx.lookup(r) is not None and idx.lookup(r).kind == DIR else os.path.dirname(r)  # type: ignore[union-attr]
        add_sources(vol, key, [staging / r], dest=dest, deterministic=True)
    # owners, modes and modification times from the image (the tar headers), not from the
    # staging copy: the same image gives the same manifest (docs/sconify.md)
    pending = vol / PENDING_NAME
    m = decode_manifest(pending.read_bytes(), key.raw)
    entries = []
    for e in m.entries:
        n = idx.lookup(e.path)
        assert n is not None
        entries.append(
            replace(e, mode=n.mode & 0o7777, uid=n.uid, gid=n.gid, mtime_ns=clamp_mtime_ns(n.mtime_ns))
        )
    pending.write_bytes(encode_manifest(replace(m, entries=tuple(entries)), key.raw))
    return seal_volume(vol, key)


@dataclass
class _Entry:
    path: str
    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes | None = None
    source: Path | None = None


def _write_layer(store: BlobStore, entries: list[_Entry], compression: str) -> tuple[Descriptor, str]:
    """A reproducible layer: sorted members, mtime 0, no user/group names, PAX format, each path
    once (containers/storage refuses a layer that names a path twice)."""
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise AssertionError(
            f"a new layer names a path twice: {sorted(p for p in paths if paths.count(p) > 1)[:5]}"
        )
    tmp, f = store.temp()
    try:
        with f:
            hw = HashingWriter(f)
            cw = CompressingWriter(hw, compression)
            with tarfile.open(fileobj=cw, mode="w|", format=tarfile.PAX_FORMAT) as tw:  # type: ignore[call-overload]
                for e in sorted(entries, key=lambda e: e.path.encode()):
                    ti = tarfile.TarInfo(e.path)
                    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode = 0, e.uid, e.gid, "", "", e.mode
                    if e.kind == DIR:
                        ti.type = tarfile.DIRTYPE
                        tw.addfile(ti)
                    elif e.source is not None:
                        ti.size = e.source.stat().st_size
                        with e.source.open("rb") as src:
                            tw.addfile(ti, src)
                    else:
                        data = e.data or b""
                        ti.size = len(data)
                        tw.addfile(ti, _BytesReader(data))
            digest, diff_id = cw.close()
        store.commit(tmp, digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Descriptor(_MEDIA[compression], digest, hw.count), diff_id


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out


def _dirs(path: str) -> list[_Entry]:
    parts = path.split("/")
    return [_Entry("/".join(parts[: i + 1]), DIR, 0o755) for i in range(len(parts))]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "confide" / "runtime-layers"


def _runtime_key(python: ImagePython, compression: str, cas_spki: str | None) -> str:
    h = hashlib.sha256(f"v2\0{python.path}\0{compression}\0".encode())
    h.update(launcher_script(python.path, cas_spki=cas_spki))
    for rel, src in _vendored():
        st = src.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _runtime_layer(
    store: BlobStore, python: ImagePython, compression: str, cas_spki: str | None = None
) -> tuple[Descriptor, str]:
    """The runtime layer. It is deterministic, so it is cached (user cache directory, keyed by
    the interpreter path, the compression and every vendored file's name, size and mtime); a
    cached blob is used only if its SHA-256 still matches its name."""
    cache = _cache_dir() / f"{_runtime_key(python, compression, cas_spki)}.json"
    try:
        meta = jsonstrict.loads(cache.read_bytes(), structure="runtime layer cache")
        data = (cache.parent / meta["digest"][7:]).read_bytes()
        if hashlib.sha256(data).hexdigest() == meta["digest"][7:] and isinstance(meta["diff_id"], str):
            desc = store.put(data)
            return Descriptor(_MEDIA[compression], desc.digest, desc.size), meta["diff_id"]
    except (OSError, ValueError, KeyError, TypeError, ParseError):
        pass
    desc, diff_id = _build_runtime_layer(store, python, compression, cas_spki)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        blob = cache.parent / desc.digest[7:]
        if not blob.exists():
            shutil.copyfile(store.path(desc.digest), blob)
        cache.write_text(json.dumps({"digest": desc.digest, "diff_id": diff_id}))
    except OSError:
        pass  # the cache is an optimisation only
    return desc, diff_id


def _build_runtime_layer(
    store: BlobStore, python: ImagePython, compression: str, cas_spki: str | None = None
) -> tuple[Descriptor, str]:
    files = _vendored()
    # each directory once: containers/storage (podman, buildah, CRI-O) refuses to apply a layer
    # that names a path twice ("duplicates of file paths not supported"), as the runtime layer
    # did with "confide/" (from both directory chains) until podman was made to pull an output
    entries = list({e.path: e for e in _dirs("confide/bin") + _dirs(LIB_DIR)}.values())
    entries.append(_Entry(LAUNCHER, FILE, 0o755, data=launcher_script(python.path, cas_spki=cas_spki)))
    entries += [_Entry(f"{LIB_DIR}/{d}", DIR, 0o755) for d in iter_lib_dirs(files)]
    entries += [_Entry(f"{LIB_DIR}/{rel}", FILE, 0o644, source=src) for rel, src in files]
    return _write_layer(store, entries, compression)


def _volume_layer(
    store: BlobStore,
    vol: Path,
    name: str,
    idx: FsIndex,
    outer: Sequence[str],
    contract: dict[str, Any],
    compression: str,
) -> tuple[Descriptor, str]:
    base = f"{VOLUMES_DIR}/{name}"
    entries = [*_dirs(base), _Entry(f"{base}/objects", DIR, 0o755)]
    entries.append(_Entry(f"{base}/MANIFEST", FILE, 0o644, source=vol / "MANIFEST"))
    for obj in sorted((vol / "objects").iterdir()):
        entries.append(_Entry(f"{base}/objects/{obj.name}", FILE, 0o644, source=obj))
    entries.append(
        _Entry(
            CONTRACT_PATH, FILE, 0o644, data=json.dumps(contract, indent=2, sort_keys=True).encode() + b"\n"
        )
    )
    for r in outer:  # mount points: an empty directory or an empty file, owner and mode as in the image
        n: Node | None = idx.lookup(r)
        assert n is not None
        entries.append(_Entry(r, n.kind, n.mode, n.uid, n.gid, data=b""))
    return _write_layer(store, entries, compression)


def _copy_blob(store: BlobStore, image: SourceImage, i: int, idx: FsIndex) -> Descriptor:
    """Copy layer ``i`` byte for byte, checked against the digest pass 1 verified: a docker-save
    ``layer.tar`` has no digest of its own (its diff_id was checked in pass 1), so a blob
    changed between the passes was copied as it now was, under the old diff_id."""
    layer = image.layers[i]
    tmp, f = store.temp()
    try:
        with f, layer.open() as raw:
            hr = HashingReader(raw, f"layer {i}", digest=idx.digests[i], size=layer.size, limit=MAX_BLOB)
            while chunk := hr.read(1 << 20):
                f.write(chunk)
            digest = hr.verify()
        store.commit(tmp, digest)
        return Descriptor(_MEDIA[idx.compressions[i]], digest, hr.count)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _work_dir(dst: ImageRef) -> Path:
    parent = Path(dst.location).resolve().parent if dst.kind != "docker" else Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".confide-sconify-", dir=parent))
    except OSError as exc:
        raise StorageError(
            f"cannot create a work directory in {str(parent)!r}: {exc.strerror or exc}"
        ) from None


def sconify(
    opts: SconifyOptions,
    key: VolumeKey,
    *,
    progress: Progress | None = None,
    sink: PolicySink | None = None,
) -> SconifyResult:
    """Convert ``opts.src`` into a confidential image at ``opts.dst`` (see the module docstring)."""
    if not opts.policy or "/" in opts.policy or not opts.service or "/" in opts.service:
        raise UsageError(
            f"policy/service: got {opts.policy!r}/{opts.service!r}, expected two names without '/'"
        )
    if not opts.volume_name or not opts.volume_name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"volume name: got {opts.volume_name!r}, expected letters, digits, '-' or '_'")
    roots = _roots(opts)
    if opts.measurement is not None:
        _given_measurement(opts.measurement)  # refused before any layer is read
    names = [r for r, _ in roots]
    outer = _outer(names)
    image = open_image(opts.src, platform=opts.platform, tls_verify=opts.tls_verify)
    work: Path | None = None
    try:
        cfg = image.config
        inner = cfg.get("config") or {}
        command = list(inner.get("Entrypoint") or []) + list(inner.get("Cmd") or [])
        if not command:
            raise UsageError("the image has neither Entrypoint nor Cmd: nothing for confide run to start")

        def step(phase: str) -> Callable[[int], None] | None:
            return None if progress is None else (lambda n: progress(phase, n, None))

        idx = index_layers(image.layers, outer, step("verify"))
        if idx.lookup("confide") is not None:
            raise UsageError("the image already has /confide (sconified already?); refusing to overwrite it")
        wanted = _check_paths(idx, names, outer)
        arch = str(cfg.get("architecture", ""))
        python = check_image(idx, arch) if opts.runtime_check else ImagePython("/usr/bin/python3", None)
        real = resolve_path(idx, python.path.lstrip("/")) or python.path.lstrip("/")
        for r in outer:
            if is_under(real, r) or is_under(python.path.lstrip("/"), r):
                raise UsageError(f"protected path {'/' + r!r} holds the runtime's interpreter {'/' + real!r}")
        measurement, warnings = _measurement(opts, image, idx, outer, inner, command)
        if progress is not None:
            progress("rewrite", 0, sum(idx.sizes[i] for i, t in enumerate(idx.touches_protected) if t))
        work = _work_dir(opts.dst)
        store = BlobStore(work / "image")
        staging = _Staging(work / "staging", wanted)
        layers: list[Descriptor] = []
        diff_ids: list[str] = []
        rewritten = []
        for i, layer in enumerate(image.layers):
            if not idx.touches_protected[i]:
                layers.append(_copy_blob(store, image, i, idx))
                diff_ids.append(idx.diff_ids[i])
                continue
            tmp, f = store.temp()
            with f:
                hw = HashingWriter(f)
                cw = CompressingWriter(hw, opts.compression)
                _rewrite(layer, outer, cw, staging, set(wanted), step("rewrite"))
                digest, diff_id = cw.close()
            store.commit(tmp, digest)
            layers.append(Descriptor(_MEDIA[opts.compression], digest, hw.count))
            diff_ids.append(diff_id)
            rewritten.append(i)
        staging.finish(idx, outer)
        vol = work / "volume"
        tag = _build_volume(vol, key, opts.volume_name, staging.root, idx, roots)
        shutil.rmtree(staging.root)
        files = sum(1 for r in outer for _, n in idx.walk(r) if n.kind == FILE)
        size = sum(n.size for r in outer for _, n in idx.walk(r) if n.kind == FILE)
        entrypoint = [
            "/" + LAUNCHER,
            "run",
            "--config-id",
            f"{opts.policy}/{opts.service}",
            "--tee",
            opts.tee,
            "--",
        ]
        contract = {
            "version": 1,
            "config_id": f"{opts.policy}/{opts.service}",
            "tee": opts.tee,
            "command": command,
            "volumes": [
                {
                    "name": opts.volume_name,
                    "dir": f"/{VOLUMES_DIR}/{opts.volume_name}",
                    "initial_tag": tag,
                    "mounts": [
                        {"path": "/" + r, "kind": idx.lookup(r).kind}  # type: ignore[union-attr]
                        for r in outer
                    ],
                    "regions": [{"path": "/" + r, "region": g.label} for r, g in roots],
                }
            ],
        }
        for desc, diff_id in (
            _runtime_layer(store, python, opts.compression, opts.cas_spki),
            _volume_layer(
                store, vol, opts.volume_name, idx, outer, contract, NONE
            ),  # ciphertext: incompressible
        ):
            layers.append(desc)
            diff_ids.append(diff_id)
        new_cfg = _new_config(cfg, diff_ids, entrypoint, command)
        digest = write_image(store, opts.dst, new_cfg, layers, tls_verify=opts.tls_verify)
        policy = make_policy(opts, cfg, command, tag, digest, outer, roots, measurement=measurement)
        result = SconifyResult(digest, tag, policy, command, files, size, rewritten, measurement, warnings)
    except OSError as exc:
        # the file system refused a write (no space left while staging or writing a layer, a
        # path longer than PATH_MAX below the work directory, ...): a clear error, not a traceback
        name = f" ({str(exc.filename)[:200]!r})" if exc.filename else ""
        raise StorageError(f"sconify: {exc.strerror or exc}{name}") from None
    finally:
        image.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    if sink is not None:  # outside the OSError handling: a sink's errors are its own
        sink.apply(policy)
    return result


def _given_measurement(text: str) -> str:
    value = text.lower()
    if len(value) != 2 * MEASUREMENT_SIZE or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(
            f"--measurement: got {text[:100]!r}, expected {2 * MEASUREMENT_SIZE} hex digits (SHA-384)"
        )
    return value


def _measurement(
    opts: SconifyOptions,
    image: SourceImage,
    idx: FsIndex,
    outer: Sequence[str],
    inner: dict[str, Any],
    command: list[str],
) -> tuple[str | None, list[str]]:
    """The measurement for the template and the warnings about it (docs/sconify.md, "The
    measurement"): ``--measurement`` as given; for ``--tee sim`` what ``confide run`` will
    measure in the output image; otherwise none (the placeholder)."""
    if opts.measurement is not None:
        return _given_measurement(opts.measurement), []
    if opts.tee != "sim":
        return None, []
    result = measure_image_command(image.layers, idx, outer, inner, command)
    warnings = list(result.warnings)
    if result.measurement is None:
        warnings.append(
            "the policy template keeps the placeholder measurement (it matches nothing): replace it "
            "with the output of `confide sim measure -- COMMAND` run in the container, "
            "or give --measurement HEX"
        )
        return None, warnings
    return result.measurement.hex, warnings


def _new_config(
    cfg: dict[str, Any], diff_ids: list[str], entrypoint: list[str], command: list[str]
) -> dict[str, Any]:
    new = copy.deepcopy(cfg)
    new["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    inner = new.setdefault("config", {})
    inner["Entrypoint"] = entrypoint + command
    inner.pop("Cmd", None)
    env = [e for e in inner.get("Env") or [] if not e.startswith("CONFIDE_SCONIFY=")]
    inner["Env"] = [*env, f"CONFIDE_SCONIFY=/{CONTRACT_PATH}"]
    history = new.get("history")
    if isinstance(history, list):
        created = cfg.get("created", "1970-01-01T00:00:00Z")
        for what in ("runtime", "protected volume"):
            history.append(
                {"created": created, "created_by": f"confide sconify: {what}", "comment": "confide"}
            )
    return new


PLACEHOLDER_MEASUREMENT = "00" * 48


def make_policy(
    opts: SconifyOptions,
    cfg: dict[str, Any],
    command: list[str],
    tag: str,
    image_digest: str,
    outer: Sequence[str],
    roots: Sequence[tuple[str, Region]],
    key_hex: str | None = None,
    *,
    measurement: str | None = None,
) -> dict[str, Any]:
    """The policy template in the SCONE session language (``docs/policy.md``): the service with
    the image's command, environment and working directory; the volume with its current tag
    (``fspf_tag``; the key is added by :func:`policy_yaml`); the image naming where the volume
    lives. Protected paths and regions are in the image's contract (``/confide/sconify.json``)."""
    inner = cfg.get("config") or {}
    env: dict[str, str] = {}
    for item in inner.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    image_name = f"{opts.service}-image"
    policy: dict[str, Any] = {
        "name": opts.policy,
        "version": "0.3",
        "services": [
            {
                "name": opts.service,
                "image_name": image_name,
                "command": shlex.join(command),
                "environment": env,
                "pwd": inner.get("WorkingDir") or "/",
                "attestation": [{opts.tee: {"measurement": measurement or PLACEHOLDER_MEASUREMENT}}],
            }
        ],
        "volumes": [{"name": opts.volume_name, "fspf_tag": tag}],
        "images": [
            {
                "name": image_name,
                "volumes": [{"name": opts.volume_name, "path": f"/{VOLUMES_DIR}/{opts.volume_name}"}],
            }
        ],
    }
    if opts.tee == "sim":
        policy["security"] = {"attestation": {"tolerate": ["simulation"]}}
    return policy


def policy_yaml(policy: dict[str, Any], key: VolumeKey, source: str) -> str:
    """Render the policy with the volume key as YAML, with comments for what must be filled in."""
    doc = CommentedMap(copy.deepcopy(policy))
    doc.yaml_set_start_comment(
        f"confide policy template written by `confide sconify` from {source}.\n"
        "It contains the volume key: keep it secret and give it only to the CAS."
    )
    vol = CommentedMap(doc["volumes"][0])
    vol.insert(1, "fspf_key", key.hex())
    doc["volumes"][0] = vol
    svc = CommentedMap(doc["services"][0])
    measured = [m for a in svc.get("attestation") or [] for t in a.values() if (m := t.get("measurement"))]
    if measured and measured[0] != PLACEHOLDER_MEASUREMENT:
        comment = (
            "The measurement of the command that `confide run --tee sim` will report in this image\n"
            "(computed by sconify, or given with --measurement)."
        )
    else:
        comment = (
            "REPLACE the measurement with the one of the TEE running this image\n"
            "(for the simulator: `confide sim measure -- <command>` inside the image); "
            "the placeholder matches nothing."
        )
    svc.yaml_set_comment_before_after_key("attestation", before=comment, indent=4)
    doc["services"][0] = svc
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
