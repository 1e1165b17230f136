"""The simulated TEE's measurement of a sconified image's command, computed from the image.

``confide run --tee sim`` (the entrypoint sconify writes) measures its command before it
attests, so before any protected volume is mounted (docs/simulator.md, "The measurement";
docs/sconify.md, "The measurement"). It runs in the container with the image config's ``Env``
(``PATH``), in its ``WorkingDir``, as root. So the measurement is that of the *output* image's
tree: every layer applied, each protected path replaced by its mount point (an empty directory
or an empty file with the image's mode), nothing below it.

This module shows that tree to :func:`confide.sim.measure.measure_command` as a
:class:`~confide.sim.measure.TreeView` (symlinks resolved inside the image, absolute ones from
its root; climbing above the root is refused). File contents are not kept by pass 1: a file the
measurement needs is read from its layer (digests checked again) and the measurement retried,
so the layers holding the program, its interpreters and its argument files are read once more.

Paths whose content comes from the container engine at run time (``/proc``, ``/sys``, ``/dev``,
``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``, the config's ``Volumes``) and
``/confide`` (added by sconify) are not measured from the image: reaching one gives no
measurement (:class:`NotFromImageError`), as does a missing file; the caller keeps the
placeholder and says why. A program or ``#!`` interpreter below a protected path is not
missing: it is measured as absent (docs/simulator.md, "Absent components"), as ``confide run``
does, which then requires it to be inside the mounted volume.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from confide.errors import UsageError
from confide.image.flatten import BLOCK, CHAR, DIR, FIFO, FILE, SYMLINK, FsIndex, Node, is_under, read_members
from confide.image.oci import Layer
from confide.sim.measure import Measurement, TreeEntry, TreeView, hash_stream, measure_chain, measure_command

__all__ = [
    "DEFAULT_PATH",
    "RUN_TIME_PATHS",
    "ImageMeasurement",
    "ImageView",
    "NotFromImageError",
    "measure_image_command",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` Docker, containerd and Podman give a container whose image sets none."""

RUN_TIME_PATHS = {
    "proc": "the proc file system",
    "sys": "the sysfs file system",
    "dev": "the container's /dev",
    "etc/hosts": "written by the container engine",
    "etc/hostname": "written by the container engine",
    "etc/resolv.conf": "written by the container engine",
    "confide": "added by sconify",
}
"""Paths whose content at run time is not the image's (OCI runtime-spec config-linux.md
"Default Filesystems" and "Devices"; the files Docker/Podman bind-mount)."""

_TYPES = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    CHAR: stat.S_IFCHR,
    BLOCK: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}
_EMPTY = (hashlib.sha384(b"").hexdigest(), b"")
MAX_ROUNDS = 64  # each round reads at least one more file; a chain has at most a dozen


class NotFromImageError(UsageError):
    """The measurement needs a path whose run-time content is not the image's."""


class _NeedContent(Exception):
    def __init__(self, source: tuple[int, int]) -> None:
        super().__init__(source)
        self.source = source


class ImageView(TreeView):
    """The sconified image's tree as ``confide run`` sees it before the volumes are mounted."""

    def __init__(self, idx: FsIndex, protected: Sequence[str], run_time: dict[str, str]) -> None:
        self.idx = idx
        self.protected = list(protected)  # outermost protected paths, relative
        self.run_time = dict(run_time)  # relative path -> why its content is not the image's
        self.contents: dict[tuple[int, int], tuple[str, bytes]] = {}
        self.placeholders: set[str] = set()  # protected mount points the measurement read

    def _node(self, path: str) -> tuple[str, Node] | None:
        rel = path.lstrip("/")
        for tree, why in self.run_time.items():
            if tree == "" or is_under(rel, tree):  # "": a volume declared at / covers everything
                raise NotFromImageError(
                    f"{path!r} is under /{tree} ({why}): its content at run time is not the image's"
                )
        for outer in self.protected:
            if is_under(rel, outer) and rel != outer:
                return None  # below a protected mount point: empty until the volume is mounted
        node = self.idx.lookup(rel)
        return None if node is None else (rel, node)

    def lstat(self, path: str) -> TreeEntry | None:
        found = self._node(path)
        if found is None:
            return None
        rel, node = found
        if rel in self.protected:  # the mount point: an empty directory or file, image's mode
            return TreeEntry(_TYPES[node.kind] | (node.mode & 0o7777))
        return TreeEntry(_TYPES[node.kind] | (node.mode & 0o7777), node.linkname)

    def digest(self, real: str) -> tuple[str, bytes]:
        found = self._node(real)
        if found is None or found[1].kind != FILE:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), real)
        rel, node = found
        if rel in self.protected:
            self.placeholders.add("/" + rel)
            return _EMPTY
        assert node.source is not None
        cached = self.contents.get(node.source)
        if cached is None:
            raise _NeedContent(node.source)
        return cached

    def describe(self) -> str:
        return "the image"

    def is_empty_dir(self, real: str) -> bool:
        found = self._node(real)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), real)
        rel, node = found
        if rel in self.protected:  # the mount point: empty until the volume is mounted
            return node.kind == DIR
        return node.kind == DIR and not node.children

    def below_protected(self, path: str) -> bool:
        """Whether the missing ``path`` lies below a protected mount point once its existing
        ancestors are resolved (symlinks followed): the volume will provide it at run time."""
        parent, rest = path, list[str]()
        while parent not in ("", "/"):
            try:
                real = self.real_path(parent, "/")
            except FileNotFoundError:
                rest.insert(0, posixpath.basename(parent))
                parent = posixpath.dirname(parent)
                continue
            except (OSError, UsageError):
                return False
            rel = posixpath.join(real, *rest).lstrip("/")
            return any(is_under(rel, outer) and rel != outer for outer in self.protected)
        return False

    def source_of(self, path: str, cwd: str) -> tuple[int, int] | None:
        """The layer member holding ``path``'s content, if it is a file the image provides."""
        try:
            real = self.real_path(path, cwd)
            found = self._node(real)
        except (OSError, UsageError):
            return None
        if found is None or found[0] in self.protected or found[1].kind != FILE:
            return None
        return found[1].source

    def load(self, layers: Sequence[Layer], sources: set[tuple[int, int]]) -> None:
        """Hash the given members, one pass per layer; kept only once the layer's digests match."""
        for layer_no in sorted({s[0] for s in sources}):
            got: dict[int, tuple[str, bytes]] = {}

            def sink(
                ordinal: int, data: IO[bytes], size: int, got: dict[int, tuple[str, bytes]] = got
            ) -> None:
                got[ordinal] = hash_stream(data)

            read_members(layers[layer_no], {o for s, o in sources if s == layer_no}, sink)
            self.contents.update({(layer_no, o): v for o, v in got.items()})


def _unmeasured_link(
    layers: Sequence[Layer], view: ImageView, measured: Measurement, path: str, search_path: str, cwd: str
) -> str | None:
    """Why ``confide run`` will refuse the absent program or interpreter ``path`` once the
    volume (holding the image's files) is mounted, or None: each link of its ``#!`` chain must
    be inside a protected path or be part of the measurement (confide.runtime.absent)."""
    inner = ImageView(view.idx, [], view.run_time)  # the tree with the volume's content in place
    present = {(link.path, link.sha384) for link in measured.chain if not link.absent}
    wanted: set[tuple[int, int]] = set()
    for _ in range(MAX_ROUNDS):
        if wanted:
            inner.load(layers, wanted)
        try:
            chain = measure_chain(path, search_path=search_path, cwd=cwd, fs=inner)
        except _NeedContent as need:
            wanted = {need.source}
            continue
        except UsageError as exc:
            return f"confide run --tee sim will refuse to start {path}: {exc}"
        for link in chain:
            inside = any(is_under(link.path.lstrip("/"), outer) for outer in view.protected)
            if not inside and (link.path, link.sha384) not in present:
                return (
                    f"confide run --tee sim will refuse to start {path}: its {link.role} {link.path} is "
                    "outside the protected paths and not measured: make the image's command run it as "
                    f'INTERPRETER SCRIPT (["{link.path}", "{path}", ...]) or protect the interpreter too'
                )
        return None
    return f"confide run --tee sim may refuse to start {path}: too many files to read to check it"


@dataclass(frozen=True)
class ImageMeasurement:
    """The result: the measurement, or None (keep the placeholder); warnings to show either way."""

    measurement: Measurement | None
    warnings: tuple[str, ...]


def _run_time_paths(config: dict[str, Any]) -> dict[str, str]:
    out = dict(RUN_TIME_PATHS)
    volumes = config.get("Volumes")
    if isinstance(volumes, dict):
        for name in volumes:
            if isinstance(name, str) and name.startswith("/"):
                rel = posixpath.normpath(name).lstrip("/")  # "/" gives "": the whole tree
                out[rel] = "a volume the image config declares"
    return out


def _environment_path(config: dict[str, Any]) -> str | None:
    """The image's ``PATH`` (the last ``PATH=`` of ``Env`` wins, as in the policy's environment)."""
    found = None
    for item in config.get("Env") or []:
        if isinstance(item, str) and item.startswith("PATH="):
            found = item[5:]
    return found


def measure_image_command(
    layers: Sequence[Layer],
    idx: FsIndex,
    protected: Sequence[str],
    config: dict[str, Any],
    argv: Sequence[str],
) -> ImageMeasurement:
    """What ``confide run --tee sim -- ARGV`` will measure in the sconified image (``config`` is
    the image config's ``config`` object: ``Env``, ``WorkingDir``, ``Volumes``)."""
    view = ImageView(idx, protected, _run_time_paths(config))
    image_path = _environment_path(config)
    search_path = image_path if image_path is not None else DEFAULT_PATH
    workdir = config.get("WorkingDir")
    cwd = "/" + workdir.lstrip("/") if isinstance(workdir, str) and workdir else "/"
    # first round: the program and every argument naming an image file
    wanted = {s for a in argv if (s := view.source_of(a, cwd)) is not None}
    warnings: list[str] = []
    for _ in range(MAX_ROUNDS):
        if wanted:
            view.load(layers, wanted)
        try:
            measured = measure_command(argv, search_path=search_path, cwd=cwd, fs=view)
        except _NeedContent as need:
            wanted = {need.source}
            continue
        except UsageError as exc:
            hint = (
                ""
                if isinstance(exc, NotFromImageError)
                else "; confide run --tee sim in this container fails the same way unless a mount "
                "provides the file at run time"
            )
            return ImageMeasurement(None, (f"cannot compute the measurement from the image: {exc}{hint}",))
        outside = [link for link in measured.chain if link.absent and not view.below_protected(link.path)]
        if outside:
            link = outside[0]
            return ImageMeasurement(
                None,
                (
                    f"cannot compute the measurement from the image: the {link.role} {link.path!r} does not "
                    "exist in the image and is not under a protected path; confide run --tee sim in this "
                    "container refuses to start it unless a protected volume provides it",
                ),
            )
        for link in measured.chain:
            if link.absent:
                refused = _unmeasured_link(layers, view, measured, link.path, search_path, cwd)
                if refused is not None:
                    warnings.append(refused)
                warnings.append(
                    f"the {link.role} {link.path} is in a protected path: measured as absent, confide run "
                    'checks after mounting that it lies inside the volume (docs/simulator.md, "Absent '
                    'components")'
                )
        for path in sorted(view.placeholders):
            warnings.append(
                f"the measurement covers the empty mount point at the protected path {path}, not its "
                "content (which is attested through the volume's tag)"
            )
        looked_up = "/" not in argv[0] or any(link.role == "env-target" for link in measured.chain)
        if image_path is None and looked_up:
            warnings.append(f"the image sets no PATH: assumed the container engines' default {DEFAULT_PATH}")
        return ImageMeasurement(measured, tuple(warnings))
    return ImageMeasurement(None, ("cannot compute the measurement from the image: too many files to read",))
