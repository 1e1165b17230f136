"""The runtime layer: confide and its dependencies, vendored into ``/confide/lib/python``.

What the image needs (checked at sconify time against the image's final file system):

* CPython at ``/usr/local/bin/python3``, ``/usr/bin/python3`` or ``/bin/python3`` whose
  version satisfies every vendored native wheel: ``cpXY-abi3`` wheels need >= X.Y,
  ``cpXY-cpXY`` wheels need exactly X.Y (today: the version of the Python running sconify);
* the CPU architecture of those wheels (the image config's ``architecture``);
* for ``manylinux`` wheels a glibc dynamic loader (``ld-linux-*.so.*``), for ``musllinux``
  ones musl's (``ld-musl-*.so.1``).

The layer holds ``/confide/bin/confide``, a Python script whose ``#!`` line names the image's
interpreter with ``-I`` (isolated: no ``PYTHON*`` variables, no user site, no current
directory on ``sys.path``), which puts ``/confide/lib/python`` first on ``sys.path`` and calls
``confide.cli:main``. No shell is needed.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement as PReq

import confide
from confide.errors import UsageError
from confide.image.flatten import DIR, FILE, SYMLINK, FsIndex

__all__ = [
    "LAUNCHER",
    "LIB_DIR",
    "ImagePython",
    "Requirement",
    "check_image",
    "find_python",
    "launcher_script",
    "requirement",
    "resolve_path",
    "vendored_files",
]

LIB_DIR = "confide/lib/python"
LAUNCHER = "confide/bin/confide"
PYTHON_CANDIDATES = ("usr/local/bin/python3", "usr/bin/python3", "bin/python3")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}
_LOADERS = {
    ("glibc", "amd64"): ("ld-linux-x86-64.so.2",),
    ("glibc", "arm64"): ("ld-linux-aarch64.so.1",),
    ("musl", "amd64"): ("ld-musl-x86_64.so.1",),
    ("musl", "arm64"): ("ld-musl-aarch64.so.1",),
}
_LOADER_DIRS = ("lib", "lib64", "usr/lib", "usr/lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")


@dataclass(frozen=True)
class Requirement:
    """What the vendored runtime needs from the image."""

    min_version: tuple[int, int]
    exact_version: tuple[int, int] | None  # set when a cpXY-cpXY wheel is vendored
    architecture: str | None  # OCI architecture name, None if everything is pure Python
    libc: str | None  # "glibc" / "musl" / None

    def describe(self) -> str:
        py = (
            f"CPython {self.exact_version[0]}.{self.exact_version[1]}"
            if self.exact_version
            else f"CPython >= {self.min_version[0]}.{self.min_version[1]}"
        )
        parts = [py]
        if self.architecture:
            parts.append(f"architecture {self.architecture}")
        if self.libc:
            parts.append(self.libc)
        return ", ".join(parts)


@dataclass(frozen=True)
class ImagePython:
    path: str  # absolute path in the image, as found (used in the #! line)
    version: tuple[int, int] | None


def _closure() -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = ["confide"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = PReq(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    seen.pop("confide", None)  # vendored from the running source tree instead
    return [seen[k] for k in sorted(seen)]


@functools.lru_cache(maxsize=1)
def vendored_files() -> tuple[tuple[str, Path], ...]:
    """(path below LIB_DIR, source file) for confide and every runtime dependency, sorted."""
    out: dict[str, Path] = {}
    pkg = Path(confide.__file__).parent
    for p in pkg.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            out[f"confide/{p.relative_to(pkg).as_posix()}"] = p
    for dist in _closure():
        for f in dist.files or []:
            rel = PurePosixPath(str(f))
            if (
                rel.parts[0] == ".."
                or "__pycache__" in rel.parts
                or rel.suffix == ".pyc"
                or rel.name == "RECORD"
            ):
                continue
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                out[rel.as_posix()] = src
    return tuple(sorted(out.items()))


@functools.lru_cache(maxsize=1)
def requirement() -> Requirement:
    """Derive the image requirement from the wheel tags of the vendored native distributions."""
    min_v, exact, arch, libc = (3, 11), None, None, None
    for dist in _closure():
        if not any(str(f).endswith(".so") for f in dist.files or []):
            continue
        tags = [
            line.split(":", 1)[1].strip()
            for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")
        ]
        for tag in tags[:1]:
            interp, abi, plat = tag.split("-", 2)
            m = re.fullmatch(r"cp(\d)(\d+)", interp)
            if m:
                v = (int(m.group(1)), int(m.group(2)))
                if abi == "abi3":
                    min_v = max(min_v, v)
                else:
                    exact = v
            for machine, oci in _ARCH.items():
                if plat.endswith(machine):
                    arch = oci
            libc = "musl" if plat.startswith("musllinux") else "glibc" if "linux" in plat else libc
    return Requirement(min_v, exact, arch, libc)


def resolve_path(idx: FsIndex, path: str, hops: int = 40) -> str | None:
    """The final path of ``path`` in the image, every component's symlinks followed inside the
    image root (an absolute target from the image's root, ``..`` at the root stays there, as in
    a chroot), at most ``hops`` symlinks (Linux's MAXSYMLINKS is 40); None when a component is
    missing, is not a directory where one is needed, or the links do not end.

    Every component, not only the last: on a merged-``/usr`` system (Debian since bookworm,
    Ubuntu, Fedora) ``/lib64`` and ``/lib`` are symlinks into ``/usr``, so the glibc loader
    ``/lib64/ld-linux-x86-64.so.2`` is found only through its directory's link."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        node = idx.lookup("/".join([*done, part]))
        if node is None:
            return None
        if node.kind == SYMLINK:
            links += 1
            if links > hops:
                return None
            target = node.linkname
            if target.startswith("/"):
                done = []
            pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
            continue
        if pending and node.kind != DIR:
            return None
        done.append(part)
    return "/".join(done)


def find_python(idx: FsIndex) -> ImagePython | None:
    for cand in PYTHON_CANDIDATES:
        final = resolve_path(idx, cand)
        if final is None:
            continue
        node = idx.lookup(final)
        if node is None or node.kind != FILE:
            continue
        m = re.fullmatch(r"python(\d)\.(\d+)", PurePosixPath(final).name)
        version = (int(m.group(1)), int(m.group(2))) if m else None
        if version is None:
            found = set()
            for libdir in ("usr/local/lib", "usr/lib"):
                d = idx.lookup(libdir)
                for name in (d.children or {}) if d is not None and d.kind == DIR else {}:
                    mm = re.fullmatch(r"python(\d)\.(\d+)", name)
                    if mm and idx.lookup(f"{libdir}/{name}/os.py") is not None:
                        found.add((int(mm.group(1)), int(mm.group(2))))
            version = found.pop() if len(found) == 1 else None
        return ImagePython("/" + cand, version)
    return None


def _has_loader(idx: FsIndex, libc: str, arch: str) -> bool:
    names = _LOADERS.get((libc, arch), ())
    return any(resolve_path(idx, f"{d}/{n}") is not None for d in _LOADER_DIRS for n in names)


def check_image(idx: FsIndex, architecture: str) -> ImagePython:
    """Check the image can run the vendored runtime; return its Python. UsageError listing what is missing."""
    req = requirement()
    problems = []
    py = find_python(idx)
    if py is None:
        problems.append(f"no python3 in {', '.join('/' + c for c in PYTHON_CANDIDATES)}")
    elif py.version is None:
        problems.append(f"cannot tell the version of {py.path} (no python3.N name or lib/python3.N/os.py)")
    elif (req.exact_version is not None and py.version != req.exact_version) or py.version < req.min_version:
        problems.append(f"got Python {py.version[0]}.{py.version[1]} at {py.path}")
    if req.architecture is not None and architecture != req.architecture:
        problems.append(f"got architecture {architecture!r}")
    if (
        req.libc is not None
        and req.architecture is not None
        and not _has_loader(idx, req.libc, req.architecture)
    ):
        problems.append(f"no {req.libc} dynamic loader")
    if problems:
        raise UsageError(
            f"the image cannot run the confide runtime: {'; '.join(problems)}; expected {req.describe()} "
            "(see docs/sconify.md; --no-runtime-check skips this check)"
        )
    assert py is not None
    return py


UNSAFE_ENVIRONMENT_PREFIXES = ("OPENSSL_", "PYTHON", "FUSE_LIBRARY_", "CONFIDE_CAS_SPKI")
"""Variables the launcher removes from its environment (see :data:`UNSAFE_ENVIRONMENT`)."""

UNSAFE_ENVIRONMENT = (
    "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH",
    "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "SSL_CERT_DIR", "SSL_CERT_FILE", "TMPDIR", "TZDIR",
)  # fmt: skip
"""Variables that make a library load code or files the caller chose, which the launcher of a
converted image removes before anything else is imported: the image's environment comes from
the host's operator, and ``-I`` covers only Python's own ``PYTHON*`` variables.
``OPENSSL_CONF`` (with ``OPENSSL_MODULES``, ``OPENSSL_ENGINES``) names a configuration whose
``providers`` section makes OpenSSL (``ssl``, ``hashlib``, ``cryptography``) load a shared
library the operator chose into the process that then gets the release; ``FUSE_LIBRARY_PATH``
(``FUSE_LIBRARY_NAME``) names the library the FUSE server, holding a volume key, loads;
``PYTHON*`` would reach no process (every Python the runtime starts runs ``-I``; the program
gets the released environment only): removed all the same. The rest are the variables glibc
ignores in a setuid program (its ``unsecvars``) that it reads when first needed (``GCONV_PATH``:
iconv modules, shared libraries; the resolver's), and the certificate stores of OpenSSL's
defaults. ``LD_*`` stay: the dynamic loader read them when the interpreter started (an
``LD_PRELOAD`` library already runs, ``LD_LIBRARY_PATH`` already chose the libraries
``dlopen`` finds), so removing them protects nothing and would break an interpreter that needs
``LD_LIBRARY_PATH`` in the processes the runtime starts: docs/limitations.md "sconify"."""


CONTRACT = "/confide/sconify.json"
"""The image's contract (``confide.image.sconify.CONTRACT_PATH``), which the launcher names in
``CONFIDE_SCONIFY`` whatever the host set there: where the protected volumes are bound is the
image's to say."""


def launcher_script(python: str, lib_dir: str = "/" + LIB_DIR, cas_spki: str | None = None) -> bytes:
    """``/confide/bin/confide``: ``python -I``, the :data:`UNSAFE_ENVIRONMENT` removed,
    ``CONFIDE_SCONIFY`` set to :data:`CONTRACT`, with ``cas_spki`` ``CONFIDE_CAS_SPKI`` set to it
    (the CAS is pinned by the image: :data:`confide.cas.client.ENV_PIN`), the vendored ``lib_dir``
    first on ``sys.path``, then ``confide.cli:main``."""
    if cas_spki is not None and not re.fullmatch(r"[0-9a-f]{64}", cas_spki):
        raise UsageError(f"the CAS's key hash: got {cas_spki[:80]!r}, expected 64 lowercase hex digits")
    pin = f"os.environ['CONFIDE_CAS_SPKI'] = {cas_spki!r}\n" if cas_spki is not None else ""
    return (
        f"#!{python} -I\n"
        '"""confide runtime launcher (written by confide sconify)."""\n'
        "import os\n"
        "import sys\n"
        "for name in list(os.environ):\n"
        f"    if name.startswith({UNSAFE_ENVIRONMENT_PREFIXES!r}) or name in {UNSAFE_ENVIRONMENT!r}:\n"
        "        del os.environ[name]\n"
        f"os.environ['CONFIDE_SCONIFY'] = {CONTRACT!r}\n"
        f"{pin}"
        f"sys.path.insert(0, {lib_dir!r})\n"
        "from confide.cli import main\n"
        "main()\n"
    ).encode()


def iter_lib_dirs(files: tuple[tuple[str, Path], ...]) -> Iterator[str]:
    """Every directory (below LIB_DIR) that the vendored files need, parents first."""
    seen: set[str] = set()
    for rel, _ in files:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                yield d
