"""The launch measurement of the simulated TEE.

A real TEE measures the code it loads before running it (SGX: MRENCLAVE over the enclave's
pages; Gramine: the manifest with its entrypoint, trusted files and fixed ``argv``). The
simulator measures the *launch* of a command the way the Linux kernel would execute it:

1. **Program.** ``argv[0]`` is resolved as ``execvp`` does: a name containing ``/`` is a path
   (relative to the working directory); otherwise the first executable regular file named so in
   the ``PATH`` directories. Symbolic links are followed to the real file. Its bytes are hashed.
2. **Interpreters.** If the file starts with ``#!`` (``binfmt_script``), the interpreter named on
   that line (symlinks followed) is hashed too, recursively (at most 4 levels, as the kernel).
   For ``#!/usr/bin/env NAME`` (or ``env -S NAME ...``) the program ``env`` would start, NAME
   looked up in ``PATH``, is hashed as well; likewise for a command ``env [-i] [VAR=val] NAME``.
   The shebang line itself, with its interpreter path and argument, is part of the script.
3. **Arguments.** The base name of ``argv[0]`` (so ``python3`` and ``/usr/bin/python3`` agree,
   while busybox-style programs that dispatch on their name differ) and ``argv[1:]`` verbatim.
4. **Argument files.** Every argument that names an existing regular file (relative to the
   working directory, symlinks followed, not under ``/proc``, ``/sys`` or ``/dev``) has its
   content hashed, so ``python3 app.py`` covers ``app.py``.
5. **Absent components.** A program or ``#!`` interpreter given as a path (with ``/``) that does
   not exist (ENOENT) is measured as *absent*: ``{"role", "absent": true}`` in the chain instead
   of failing, as is an argument with ``/`` that does not exist but whose nearest existing
   ancestor is an empty directory (a mount point waiting for its volume): ``{"arg",
   "absent": true}``. ``confide run`` then requires each to lie inside a protected volume it
   mounted (``confide.runtime.absent``; docs/simulator.md, "Absent components"). A command
   with no absent component measures exactly as before.

The measurement is SHA-384 over the canonical JSON (sorted keys, no white space, ASCII) of the
*manifest*: ``{"args", "chain": [{"role", "sha384"}], "files": [{"arg", "sha384"}], "kind",
"program", "version"}``. Paths are *not* part of it (only contents are), so the same program
installed elsewhere measures the same. Not covered: shared libraries and the dynamic loader,
files the program opens that are not named on its command line, the environment, the working
directory. ``confide sim measure --json`` prints the manifest next to the paths it came from.

The rules apply to a :class:`FileView`: the host (:class:`HostView`, the default), a directory
taken as the root (:class:`RootedView`, ``sim measure --root``) or an image's tree (sconify,
``confide.image.measure``); rooted views resolve symlinks inside the root and refuse ``..``
above it (docs/simulator.md, "Other file systems").
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from confide.errors import UsageError
from confide.evidence.sim import MEASUREMENT_SIZE

__all__ = [
    "MANIFEST_KIND",
    "MANIFEST_VERSION",
    "ArgumentFile",
    "ChainLink",
    "FileView",
    "HostView",
    "Measurement",
    "RootEscapeError",
    "RootedView",
    "TreeEntry",
    "TreeView",
    "canonical_json",
    "hash_stream",
    "measure_chain",
    "measure_command",
    "measure_current_process",
    "resolve_command",
]

MANIFEST_KIND = "confide-sim-measurement"
MANIFEST_VERSION = 1
# Linux fs/exec.c: "This allows 4 levels of binfmt rewrites before failing hard."
MAX_INTERPRETER_DEPTH = 4
# Linux include/uapi/linux/binfmts.h: BINPRM_BUF_SIZE (the kernel reads this much of a script).
BINPRM_BUF_SIZE = 256
_EXCLUDED_TREES = ("/proc", "/sys", "/dev")
_CHUNK = 1 << 20

assert hashlib.sha384().digest_size == MEASUREMENT_SIZE


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One file of the execution chain: the program, an interpreter, or env's target."""

    role: str  # "program" | "interpreter" | "env-target"
    path: str  # resolved absolute path (informational: not measured); absent: as named
    sha384: str  # "" when absent
    absent: bool = False  # did not exist at measurement time (docs/simulator.md "Absent components")


@dataclass(frozen=True, slots=True)
class ArgumentFile:
    """An argument naming a regular file whose content is measured."""

    arg: int  # index into argv
    path: str  # resolved absolute path (informational: not measured); absent: as named
    sha384: str  # "" when absent
    absent: bool = False


@dataclass(frozen=True, slots=True)
class Measurement:
    """The measured launch of a command."""

    digest: bytes
    executable: str
    """The resolved program file: exec exactly this path to run what was measured."""
    argv: tuple[str, ...]
    chain: tuple[ChainLink, ...]
    files: tuple[ArgumentFile, ...]

    @property
    def hex(self) -> str:
        return self.digest.hex()

    @property
    def manifest(self) -> dict[str, Any]:
        return _manifest(self.argv, self.chain, self.files)

    @property
    def absent(self) -> tuple[ChainLink | ArgumentFile, ...]:
        """The components that did not exist at measurement time."""
        return (*(c for c in self.chain if c.absent), *(f for f in self.files if f.absent))

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": self.hex,
            "algorithm": "sha384",
            "executable": self.executable,
            "argv": list(self.argv),
            "chain": [_entry({"role": c.role, "path": c.path}, c) for c in self.chain],
            "files": [_entry({"arg": f.arg, "path": f.path}, f) for f in self.files],
            "manifest": self.manifest,
        }


def _entry(head: dict[str, Any], item: ChainLink | ArgumentFile) -> dict[str, Any]:
    """A manifest entry: the digest, or the absent marker (docs/simulator.md "Absent components")."""
    return {**head, "absent": True} if item.absent else {**head, "sha384": item.sha384}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant white space, ASCII only (non-ASCII as ``\\uXXXX``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _manifest(
    argv: Sequence[str], chain: Sequence[ChainLink], files: Sequence[ArgumentFile]
) -> dict[str, Any]:
    return {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "program": os.path.basename(argv[0]),
        "args": list(argv[1:]),
        "chain": [_entry({"role": c.role}, c) for c in chain],
        "files": [_entry({"arg": f.arg}, f) for f in files],
    }


class FileView(Protocol):
    """The file system a command is measured in: the host's (:class:`HostView`), a directory
    taken as the root (:class:`RootedView`), or an image's final tree (``confide.image.measure``).

    Paths are POSIX text; ``real_path`` returns the path with every symbolic link resolved, as
    the view names it (host paths for the host, paths inside the root for a rooted view).
    """

    def real_path(self, path: str, cwd: str) -> str:
        """``path`` (relative to ``cwd``) with every symlink followed; ``OSError`` if missing."""
        ...

    def mode(self, real: str) -> int:
        """``st_mode`` of a resolved path; ``OSError`` if missing."""
        ...

    def executable(self, real: str) -> bool:
        """Whether the measuring process may execute the resolved regular file."""
        ...

    def digest(self, real: str) -> tuple[str, bytes]:
        """SHA-384 (hex) of the resolved file and its first ``BINPRM_BUF_SIZE`` bytes."""
        ...

    def is_empty_dir(self, real: str) -> bool:
        """Whether the resolved path is a directory with no entries (``OSError`` if missing)."""
        ...


def hash_stream(fh: IO[bytes]) -> tuple[str, bytes]:
    """SHA-384 (hex) of a stream's bytes and its first ``BINPRM_BUF_SIZE`` bytes."""
    h = hashlib.sha384()
    head = fh.read(BINPRM_BUF_SIZE)
    h.update(head)
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest(), head


class HostView:
    """The host's file system as the measuring process sees it (``confide run``, ``sim measure``)."""

    def real_path(self, path: str, cwd: str) -> str:
        return os.path.realpath(os.path.join(cwd, path), strict=True)

    def mode(self, real: str) -> int:
        return os.stat(real).st_mode

    def executable(self, real: str) -> bool:
        return os.access(real, os.X_OK)

    def digest(self, real: str) -> tuple[str, bytes]:
        with open(real, "rb") as fh:
            return hash_stream(fh)

    def is_empty_dir(self, real: str) -> bool:
        with os.scandir(real) as it:
            return next(it, None) is None


MAX_SYMLINKS = 40
"""Linux include/linux/namei.h MAXSYMLINKS: symlinks followed in one path walk (ELOOP past it)."""


class RootEscapeError(UsageError):
    """A path of a rooted view that climbs above its root (``..`` at ``/``, e.g. via a symlink)."""


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """What a rooted view knows of one path (``lstat``: symlinks not followed)."""

    mode: int  # st_mode, with the file type bits
    link: str = ""  # a symlink's target


class TreeView:
    """A file tree taken as the root ``/``, as ``chroot`` would show it to a process running as
    root: absolute symlinks are resolved from the tree's root, nothing outside the tree is read,
    and a path climbing above the root (``..`` at ``/``, e.g. through a relative symlink) is
    refused (:class:`RootEscapeError`) rather than clamped as the kernel would. Execute
    permission is root's: a regular file with any execute bit.

    A subclass provides :meth:`lstat` (of a symlink-free absolute path), :meth:`digest` and
    :meth:`describe`: :class:`RootedView` for a directory, ``confide.image.measure`` for an
    image's tree."""

    def lstat(self, path: str) -> TreeEntry | None:
        raise NotImplementedError

    def digest(self, real: str) -> tuple[str, bytes]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def is_empty_dir(self, real: str) -> bool:
        raise NotImplementedError

    def real_path(self, path: str, cwd: str) -> str:
        """Resolve component by component (Linux fs/namei.c path walk, inside the root)."""
        if not path:
            raise FileNotFoundError(errno.ENOENT, "empty path")
        pending = (path if path.startswith("/") else f"{cwd}/{path}").split("/")
        pending.reverse()  # a stack: the next component last
        done: list[str] = []
        links = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise RootEscapeError(f"{path!r} climbs above the root of {self.describe()}")
                done.pop()
                continue
            here = "/" + "/".join([*done, part])
            entry = self.lstat(here)
            if entry is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), here)
            if stat.S_ISLNK(entry.mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), here)
                if entry.link.startswith("/"):
                    done = []
                pending.extend(reversed(entry.link.split("/")))
                continue
            if any(p not in ("", ".") for p in pending) and not stat.S_ISDIR(entry.mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), here)
            done.append(part)
        return "/" + "/".join(done)

    def mode(self, real: str) -> int:
        entry = self.lstat(real)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), real)
        return entry.mode

    def executable(self, real: str) -> bool:
        # root may execute a regular file with any execute bit (Linux generic_permission,
        # CAP_DAC_OVERRIDE)
        mode = self.mode(real)
        return stat.S_ISREG(mode) and mode & 0o111 != 0


class RootedView(TreeView):
    """A directory (an unpacked image's rootfs) as the root ``/`` (see :class:`TreeView`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lstat(self, path: str) -> TreeEntry | None:
        host = self.root / path.lstrip("/")
        try:
            st = os.lstat(host)
            link = os.readlink(host) if stat.S_ISLNK(st.st_mode) else ""
        except FileNotFoundError:
            return None
        return TreeEntry(st.st_mode, link)

    def digest(self, real: str) -> tuple[str, bytes]:
        fd = os.open(self.root / real.lstrip("/"), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return hash_stream(fh)

    def describe(self) -> str:
        return str(self.root)

    def is_empty_dir(self, real: str) -> bool:
        with os.scandir(self.root / real.lstrip("/")) as it:
            return next(it, None) is None


_HOST = HostView()


def _hash_file(fs: FileView, path: str) -> tuple[str, bytes]:
    """SHA-384 of the file and its first BINPRM_BUF_SIZE bytes."""
    try:
        return fs.digest(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path!r} to measure it: {exc.strerror or exc}") from None


def _real_file(fs: FileView, path: str, cwd: str, what: str) -> str:
    try:
        real = fs.real_path(path, cwd)
        mode = fs.mode(real)
    except OSError as exc:
        raise UsageError(f"{what}: cannot resolve {path!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what}: got {real!r}, expected a regular file")
    if not fs.executable(real):
        raise UsageError(f"{what}: {real!r} is not executable")
    return real


def _real_or_absent(fs: FileView, path: str, cwd: str, what: str) -> str | None:
    """Like :func:`_real_file`, but None when ``path`` does not exist (ENOENT): an absent
    component (docs/simulator.md "Absent components")."""
    try:
        fs.real_path(path, cwd)
    except FileNotFoundError:
        return None
    except OSError:
        pass  # _real_file reports it
    return _real_file(fs, path, cwd, what)


def resolve_command(
    name: str, *, search_path: str | None = None, cwd: Path | str | None = None, fs: FileView | None = None
) -> Path:
    """Resolve a command name as ``execvp`` does; returns the real (symlink-free) path.

    ``search_path`` defaults to ``$PATH`` (``os.defpath`` when unset); empty entries mean the
    working directory, as in POSIX. ``fs`` is the file system to look in (default: the host's).
    """
    view = fs if fs is not None else _HOST
    return Path(_resolve(view, name, search_path, _cwd(cwd)))


def _cwd(cwd: Path | str | None) -> str:
    return str(cwd) if cwd is not None else os.getcwd()


def _resolve(fs: FileView, name: str, search_path: str | None, base: str) -> str:
    if not name:
        raise UsageError("got an empty command name, expected a program")
    if "/" in name:
        return _real_file(fs, name, base, "command")
    dirs = search_path if search_path is not None else os.environ.get("PATH", os.defpath)
    for entry in dirs.split(os.pathsep):
        try:
            candidate = fs.real_path(f"{entry or '.'}/{name}", base)
            if stat.S_ISREG(fs.mode(candidate)) and fs.executable(candidate):
                return _real_file(fs, candidate, base, "command")
        except OSError:
            continue
    raise UsageError(f"command: got {name!r}, expected a program found in PATH ({dirs})")


def _parse_shebang(head: bytes, path: str) -> tuple[str, str | None]:
    """Interpreter and optional argument of a ``#!`` line (Linux fs/binfmt_script.c rules)."""
    line, newline, _ = head[2:].partition(b"\n")
    if not newline and len(head) >= BINPRM_BUF_SIZE:
        raise UsageError(f"{path!r}: #! line longer than {BINPRM_BUF_SIZE} bytes")
    line = line.strip(b" \t")
    if not line:
        raise UsageError(f"{path!r}: got an empty #! line, expected an interpreter")
    interpreter, _, rest = line.replace(b"\t", b" ").partition(b" ")
    arg = rest.strip(b" \t")
    return os.fsdecode(interpreter), (os.fsdecode(arg) if arg else None)


def _env_target(arg: str | None, path: str) -> str | None:
    """The program ``#!/usr/bin/env ARG`` starts, or None if env was given none."""
    if arg is None:
        return None
    tokens = arg[2:].split() if arg.startswith("-S") else [arg]
    for token in tokens:
        if "=" in token and not token.startswith("-"):
            continue  # NAME=VALUE assignment
        if token.startswith("-") or any(c.isspace() for c in token):
            raise UsageError(f"{path!r}: env option {token!r} in the #! line is not supported")
        return token
    return None


def _env_command(args: Sequence[str]) -> str | None:
    """The program ``env [-i] [NAME=VALUE ...] PROGRAM ...`` starts (None: env only prints)."""
    for arg in args:
        if arg in ("-i", "--ignore-environment", "-"):
            continue
        if arg.startswith("-"):
            raise UsageError(f"env option {arg!r} is not supported by the measurement; use -i or NAME=VALUE")
        if "=" in arg:
            continue
        return arg
    return None


def _walk_chain(
    fs: FileView,
    program: str,
    *,
    search_path: str | None,
    cwd: str,
    chain: list[ChainLink],
    role: str,
    depth: int,
) -> None:
    digest, head = _hash_file(fs, program)
    chain.append(ChainLink(role=role, path=program, sha384=digest))
    if not head.startswith(b"#!"):
        return
    if depth >= MAX_INTERPRETER_DEPTH:
        raise UsageError(f"{program!r}: more than {MAX_INTERPRETER_DEPTH} levels of #! interpreters")
    interpreter_name, arg = _parse_shebang(head, program)
    interpreter = _real_or_absent(fs, interpreter_name, cwd, f"#! interpreter of {program!r}")
    if interpreter is None:
        named = posixpath.join(cwd, interpreter_name)
        chain.append(ChainLink(role="interpreter", path=named, sha384="", absent=True))
    else:
        _walk_chain(
            fs,
            interpreter,
            search_path=search_path,
            cwd=cwd,
            chain=chain,
            role="interpreter",
            depth=depth + 1,
        )
    if os.path.basename(interpreter_name) == "env" or os.path.basename(interpreter or "") == "env":
        target = _env_target(arg, program)
        if target is not None:
            resolved = _resolve(fs, target, search_path, cwd)
            _walk_chain(
                fs,
                resolved,
                search_path=search_path,
                cwd=cwd,
                chain=chain,
                role="env-target",
                depth=depth + 1,
            )


def _argument_file(fs: FileView, arg: str, cwd: str) -> str | None:
    if not arg:
        return None
    try:
        real = fs.real_path(arg, cwd)
        if not stat.S_ISREG(fs.mode(real)):
            return None
    except (OSError, ValueError):
        return None
    if any(is_under(real, tree) for tree in _EXCLUDED_TREES):
        return None
    return real


def _absent_argument(fs: FileView, arg: str, cwd: str) -> str | None:
    """The path an argument names if it is an absent argument file: it has a ``/``, does not
    exist (ENOENT), and its nearest existing ancestor is an empty directory other than ``/``
    (a mount point waiting for its volume). Any other missing path is an ordinary argument."""
    if "/" not in arg or "\0" in arg:
        return None
    named = posixpath.join(cwd, arg)
    if any(is_under(posixpath.normpath(named), tree) for tree in _EXCLUDED_TREES):
        return None
    try:
        fs.real_path(arg, cwd)
        return None
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return None
    parent = posixpath.dirname(named.rstrip("/"))
    while parent not in ("", "/"):
        try:
            real = fs.real_path(parent, cwd)
            mode = fs.mode(real)
        except FileNotFoundError:
            parent = posixpath.dirname(parent)
            continue
        except (OSError, ValueError):
            return None
        try:
            empty = stat.S_ISDIR(mode) and real != "/" and fs.is_empty_dir(real)
        except OSError:
            return None
        return named if empty else None
    return None


def is_under(path: str, tree: str) -> bool:
    """Whether the absolute ``path`` is ``tree`` or below it."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def measure_command(
    argv: Sequence[str],
    *,
    search_path: str | None = None,
    cwd: Path | str | None = None,
    fs: FileView | None = None,
) -> Measurement:
    """Measure the launch of ``argv`` (see the module documentation for what is covered).

    ``fs`` is the file system the command is resolved and read in: the host's by default, or
    a :class:`RootedView` (an unpacked image) or an image's tree (``confide.image.measure``);
    ``cwd`` is then a path inside that view.
    """
    if not argv:
        raise UsageError("got no command, expected CMD [ARGS...]")
    view = fs if fs is not None else _HOST
    base = _cwd(cwd)
    program: str | None
    if "/" in argv[0]:
        program = _real_or_absent(view, argv[0], base, "command")
    else:
        program = _resolve(view, argv[0], search_path, base)
    return _measure(view, tuple(argv), program, search_path=search_path, cwd=base)


def measure_chain(
    program: str, *, search_path: str | None = None, cwd: Path | str | None = None, fs: FileView | None = None
) -> tuple[ChainLink, ...]:
    """The execution chain of the existing file ``program`` (it, its ``#!`` interpreters and
    env's target) as :func:`measure_command` measures it; ``UsageError`` if a link is absent.
    ``confide run`` uses it to check what a component measured as absent will run."""
    view = fs if fs is not None else _HOST
    base = _cwd(cwd)
    chain: list[ChainLink] = []
    real = _real_file(view, program, base, "command")
    _walk_chain(view, real, search_path=search_path, cwd=base, chain=chain, role="program", depth=0)
    for link in chain:
        if link.absent:
            raise UsageError(f"{link.role} {link.path!r} of {program!r} does not exist")
    return tuple(chain)


def measure_current_process(*, proc: Path = Path("/proc/self")) -> Measurement:
    """The measurement of this process as the kernel started it (for a service attesting itself).

    The program is the running executable (``/proc/self/exe``) and the arguments its command
    line (``/proc/self/cmdline``). A script started through ``#!`` runs as its interpreter with
    the script as first argument, so it measures as ``INTERPRETER SCRIPT ARGS`` would.
    """
    try:
        raw = (proc / "cmdline").read_bytes()
        program = Path(os.path.realpath(proc / "exe", strict=True))
    except OSError as exc:
        raise UsageError(
            f"cannot read the current process from {str(proc)!r}: {exc.strerror or exc}"
        ) from None
    argv = tuple(os.fsdecode(a) for a in raw.split(b"\0")[:-1]) or (program.name,)
    return _measure(_HOST, argv, str(program), search_path=None, cwd=os.getcwd())


def _measure(
    fs: FileView, argv: tuple[str, ...], program: str | None, *, search_path: str | None, cwd: str
) -> Measurement:
    chain: list[ChainLink] = []
    if program is None:  # absent (docs/simulator.md "Absent components"): nothing to read
        program = posixpath.join(cwd, argv[0])
        chain.append(ChainLink(role="program", path=program, sha384="", absent=True))
    else:
        _walk_chain(fs, program, search_path=search_path, cwd=cwd, chain=chain, role="program", depth=0)
    if os.path.basename(argv[0]) == "env" or os.path.basename(program) == "env":
        target = _env_command(argv[1:])
        if target is not None:
            resolved = _resolve(fs, target, search_path, cwd)
            _walk_chain(
                fs, resolved, search_path=search_path, cwd=cwd, chain=chain, role="env-target", depth=1
            )
    files: list[ArgumentFile] = []
    for index, arg in enumerate(argv[1:], start=1):
        real = _argument_file(fs, arg, cwd)
        if real is not None:
            files.append(ArgumentFile(arg=index, path=real, sha384=_hash_file(fs, real)[0]))
        elif (named := _absent_argument(fs, arg, cwd)) is not None:
            files.append(ArgumentFile(arg=index, path=named, sha384="", absent=True))
    digest = hashlib.sha384(canonical_json(_manifest(argv, chain, files))).digest()
    return Measurement(digest=digest, executable=program, argv=argv, chain=tuple(chain), files=tuple(files))
