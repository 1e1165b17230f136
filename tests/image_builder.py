"""Build small OCI image layouts and docker-save archives for tests (tarfile + hashlib + json)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class M:
    """One tar member: kind f (file), d (dir), l (symlink), h (hard link), c (char dev), p (fifo),
    s (sparse file), raw (``data`` is spliced in as tar blocks: see :func:`blocks`)."""

    name: str
    kind: str = "f"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000  # the ustar header's seconds
    pax_mtime: str | None = None  # a pax "mtime" record, written as given (e.g. with a fraction)
    pax: dict[str, str] | None = None  # other pax records, written as given (hostile ones too)
    # kind s (a GNU sparse file in a pax header, format "0.1" or "1.0"): the data regions
    # (offset, bytes) of a file of real_size bytes, zeros elsewhere
    regions: list[tuple[int, bytes]] = field(default_factory=list)
    real_size: int = 0
    sparse_format: str = "0.1"


def sparse_content(m: M) -> bytes:
    """The expanded contents of a kind-s member."""
    out = bytearray(m.real_size)
    for off, data in m.regions:
        out[off : off + len(data)] = data
    return bytes(out)


def _add_sparse(tf: tarfile.TarFile, ti: tarfile.TarInfo, m: M) -> None:
    # GNU tar's pax sparse formats (GNU tar manual, "Storing Sparse Files": 0.1 keeps the map in
    # GNU.sparse.map; 1.0 keeps it in decimal lines at the start of the data, padded to a block,
    # and the real name in GNU.sparse.name, the header naming DIR/GNUSparseFile.0/NAME)
    stored = b"".join(d for _, d in m.regions)
    flat = [str(v) for off, d in m.regions for v in (off, len(d))]
    ti.mode = 0o644 if m.mode is None else m.mode
    if m.sparse_format == "0.1":
        ti.pax_headers = {**ti.pax_headers, "GNU.sparse.size": str(m.real_size),
                          "GNU.sparse.numblocks": str(len(m.regions)), "GNU.sparse.map": ",".join(flat)}  # fmt: skip
    else:
        head, _, base = m.name.rpartition("/")
        ti.name = f"{head}/GNUSparseFile.0/{base}" if head else f"GNUSparseFile.0/{base}"
        ti.pax_headers = {**ti.pax_headers, "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": m.name, "GNU.sparse.realsize": str(m.real_size)}  # fmt: skip
        table = ("\n".join([str(len(m.regions)), *flat]) + "\n").encode()
        stored = table.ljust(-(-len(table) // 512) * 512, b"\0") + stored
    ti.size = len(stored)
    tf.addfile(ti, io.BytesIO(stored))


def layer_tar(members: list[M]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.mtime, ti.uid, ti.gid = m.mtime, m.uid, m.gid
            if m.pax_mtime is not None:
                ti.pax_headers = {"mtime": m.pax_mtime}
            if m.pax is not None:
                ti.pax_headers = {**ti.pax_headers, **m.pax}
            if m.kind == "s":
                _add_sparse(tf, ti, m)
                continue
            if m.kind == "raw":  # header and data blocks written as given (hostile headers)
                assert len(m.data) % tarfile.BLOCKSIZE == 0
                tf.fileobj.write(m.data)
                tf.offset += len(m.data)
                continue
            if m.kind == "f":
                ti.size, ti.mode = len(m.data), 0o644 if m.mode is None else m.mode
                tf.addfile(ti, io.BytesIO(m.data))
                continue
            ti.mode = 0o755 if m.mode is None else m.mode
            ti.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE,
                       "p": tarfile.FIFOTYPE}[m.kind]  # fmt: skip
            ti.linkname = m.link
            if m.kind == "c":
                ti.devmajor, ti.devminor = 1, 3
            tf.addfile(ti)
    return buf.getvalue()


def blocks(
    name: str,
    data: bytes = b"",
    *,
    fmt: int = tarfile.PAX_FORMAT,
    pax: dict[str, str] | None = None,
    glob: dict[str, str] | None = None,
    only_header: bool = False,
    link: str | None = None,
) -> bytes:
    """The tar blocks tarfile writes for one regular file (no end-of-archive blocks), for an
    M(kind="raw"): ``pax`` records, a global header (``glob``), or a GNU long name (fmt GNU and
    a name over 100 bytes); ``only_header``: just the first extended header (2 blocks); ``link``:
    a hard link to that name instead (a GNU long link when over 100 bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=glob) as tf:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
        if link is not None:
            ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, link, 0
        if pax:
            ti.pax_headers = dict(pax)
        tf.addfile(ti, io.BytesIO(data))
        out = buf.getvalue()[: tf.offset]  # before close() adds the end-of-archive blocks
    return out[: 2 * tarfile.BLOCKSIZE] if only_header else out


def raw_header(
    name: bytes,
    size: int = 0,
    *,
    typeflag: bytes = b"0",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    size_field: bytes | None = None,
    fields: dict[int, bytes] | None = None,
    checksum: Callable[[int], bytes] | None = None,
) -> bytes:
    """One 512-byte tar header block written field by field (valid checksum), for headers no
    tar writer makes: ``magic`` (``ustar\\0`` + ``00`` ustar, ``ustar  \\0`` GNU, zeros V7), a
    ``prefix`` field under any magic, a ``size_field`` of 12 bytes as given; ``fields``: bytes
    written at an offset last (mode 100, uid 108, gid 116, mtime 136, uname 265, devmajor 329);
    ``checksum``: the 8-byte checksum field, made from the right sum."""
    b = bytearray(tarfile.BLOCKSIZE)
    b[0 : len(name)] = name
    b[100:108], b[108:116], b[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    b[124:136] = size_field if size_field is not None else b"%011o\0" % size
    b[136:148] = b"%011o\0" % 1_700_000_000
    b[156:157] = typeflag
    b[257:265] = magic
    b[345 : 345 + len(prefix)] = prefix
    for offset, value in (fields or {}).items():
        b[offset : offset + len(value)] = value
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b) if checksum is None else checksum(sum(b))
    return bytes(b)


def raw_pax(records: dict[bytes, bytes]) -> bytes:
    """A pax extended header ('x') with ``records`` written as given (empty values too)."""
    body = b""
    for key, value in records.items():
        rec = b" %s=%s\n" % (key, value)
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        body += str(n).encode() + rec
    return raw_header(b"PaxHeader", len(body), typeflag=b"x") + _padded(body)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def raw_file(name: bytes, data: bytes, **kw: object) -> bytes:
    """A header (:func:`raw_header`) and its data blocks."""
    return raw_header(name, len(data), **kw) + _padded(data)  # type: ignore[arg-type]


def compress(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        from backports import zstd

        return zstd.compress(raw)
    return raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# a fake CPython 3.11 + glibc loader, enough for the runtime check
PYTHON_BASE = [
    M("usr/", "d"),
    M("usr/bin/", "d"),
    M("usr/bin/python3.11", data=b"\x7fELF fake python", mode=0o755),
    M("usr/bin/python3", "l", link="python3.11"),
    M("lib64/", "d"),
    M("lib64/ld-linux-x86-64.so.2", data=b"\x7fELF fake loader", mode=0o755),
]


@dataclass
class Image:
    layers: list[list[M]]
    compression: str = "gzip"
    entrypoint: list[str] = field(default_factory=lambda: ["/app/run.sh"])
    cmd: list[str] | None = field(default_factory=lambda: ["--serve"])
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/bin:/bin", "MODE=prod"])
    workdir: str = "/app"
    architecture: str = "amd64"

    def blobs(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        raws = [layer_tar(ms) for ms in self.layers]
        config = {
            "architecture": self.architecture,
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha(r) for r in raws]},
            "history": [
                {"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"} for i in range(len(raws))
            ],
        }
        return json.dumps(config).encode(), [(r, compress(r, self.compression)) for r in raws]

    def write_layout(self, root: Path, *, ref: str | None = None) -> Path:
        config, layers = self.blobs()
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)

        def put(data: bytes) -> str:
            d = sha(data)
            (blobs / d[7:]).write_bytes(data)
            return d

        media = OCI_LAYER + ({"gzip": "+gzip", "zstd": "+zstd"}.get(self.compression, ""))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
            "layers": [{"mediaType": media, "digest": put(c), "size": len(c)} for _, c in layers],
        }
        mbytes = json.dumps(manifest).encode()
        desc = {"mediaType": OCI_MANIFEST, "digest": put(mbytes), "size": len(mbytes)}
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
        return root

    def write_archive(self, path: Path, *, new_layout: bool = False) -> Path:
        config, layers = self.blobs()
        files: dict[str, bytes] = {}
        if new_layout:
            cname = f"blobs/sha256/{sha(config)[7:]}"
            lnames = []
            for _, c in layers:
                lnames.append(f"blobs/sha256/{sha(c)[7:]}")
                files[lnames[-1]] = c
        else:
            cname = f"{sha(config)[7:]}.json"
            lnames = []
            for i, (r, _) in enumerate(layers):
                lnames.append(f"layer{i}/layer.tar")
                files[lnames[-1]] = r
        files[cname] = config
        files["manifest.json"] = json.dumps(
            [{"Config": cname, "RepoTags": ["app:1"], "Layers": lnames}]
        ).encode()
        with tarfile.open(path, "w") as tf:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return path


def decompressed(blob: bytes) -> bytes:
    if blob.startswith(b"\x1f\x8b"):
        return gzip.decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        from backports import zstd

        return zstd.decompress(blob)
    return blob


def all_blob_bytes(path: Path) -> list[bytes]:
    """Every blob of an output layout or docker archive, raw and decompressed."""
    out = []
    if path.is_dir():
        for p in sorted((path / "blobs" / "sha256").iterdir()):
            raw = p.read_bytes()
            out += [raw, decompressed(raw)]
    else:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    raw = f.read()
                    out += [raw, decompressed(raw)]
    return out


def read_layout(path: Path) -> tuple[dict, dict, list[bytes]]:
    """(manifest, config, uncompressed layer tars) of a single-image layout."""
    index = json.loads((path / "index.json").read_bytes())
    blobs = path / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    layers = [decompressed((blobs / d["digest"][7:]).read_bytes()) for d in manifest["layers"]]
    return manifest, config, layers


def layer_names(tar_bytes: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return [m.name for m in tf]


def extract_volume(path: Path, dest: Path, name: str = "image") -> Path:
    """Extract /confide/volumes/NAME of the output layout's top layers into dest; return the volume dir."""
    _, _, layers = read_layout(path)
    for raw in layers:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            members = [m for m in tf if m.name.startswith(f"confide/volumes/{name}")]
            tf.extractall(dest, members=members, filter="data")
    return dest / "confide" / "volumes" / name


def unpack_rootfs(layout: Path, dest: Path) -> Path:
    """The root file system of a single-image layout, every layer applied in order (whiteouts
    too), as ``umoci unpack`` lays it out; symlinks are extracted as they are (not followed)."""
    import shutil

    _, _, layers = read_layout(layout)
    dest.mkdir()
    for raw in layers:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            members = []
            for m in tf:
                head, _, base = m.name.rpartition("/")
                if base == ".wh..wh..opq":
                    for child in (dest / head).iterdir():
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                    continue
                if base.startswith(".wh."):
                    victim = dest / head / base[4:]
                    if victim.is_dir() and not victim.is_symlink():
                        shutil.rmtree(victim)
                    elif victim.is_symlink() or victim.exists():
                        victim.unlink()
                    continue
                members.append(m)
            tf.extractall(dest, members=members, filter="tar")
    return dest
