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

The measurement is SHA-384 over the canonical JSON (sorted keys, no white space, ASCII) of the
*manifest*: ``{"args", "chain": [{"role", "sha384"}], "files": [{"arg", "sha384"}], "kind",
"program", "version"}``. Paths are *not* part of it (only contents are), so the same program
installed elsewhere measures the same. Not covered: shared libraries and the dynamic loader,
files the program opens that are not named on its command line, the environment, the working
directory. ``confide sim measure --json`` prints the manifest next to the paths it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confide.errors import UsageError
from confide.evidence.sim import MEASUREMENT_SIZE

__all__ = [
    "MANIFEST_KIND",
    "MANIFEST_VERSION",
    "ArgumentFile",
    "ChainLink",
    "Measurement",
    "canonical_json",
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
    path: str  # resolved absolute path (informational: not measured)
    sha384: str


@dataclass(frozen=True, slots=True)
class ArgumentFile:
    """An argument naming a regular file whose content is measured."""

    arg: int  # index into argv
    path: str  # resolved absolute path (informational: not measured)
    sha384: str


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

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": self.hex,
            "algorithm": "sha384",
            "executable": self.executable,
            "argv": list(self.argv),
            "chain": [{"role": c.role, "path": c.path, "sha384": c.sha384} for c in self.chain],
            "files": [{"arg": f.arg, "path": f.path, "sha384": f.sha384} for f in self.files],
            "manifest": self.manifest,
        }


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
        "chain": [{"role": c.role, "sha384": c.sha384} for c in chain],
        "files": [{"arg": f.arg, "sha384": f.sha384} for f in files],
    }


def _hash_file(path: Path) -> tuple[str, bytes]:
    """SHA-384 of the file and its first BINPRM_BUF_SIZE bytes."""
    h = hashlib.sha384()
    try:
        with path.open("rb") as fh:
            head = fh.read(BINPRM_BUF_SIZE)
            h.update(head)
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r} to measure it: {exc.strerror or exc}") from None
    return h.hexdigest(), head


def _real_file(path: Path, what: str) -> Path:
    try:
        real = Path(os.path.realpath(path, strict=True))
        mode = real.stat().st_mode
    except OSError as exc:
        raise UsageError(f"{what}: cannot resolve {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what}: got {str(real)!r}, expected a regular file")
    if not os.access(real, os.X_OK):
        raise UsageError(f"{what}: {str(real)!r} is not executable")
    return real


def resolve_command(name: str, *, search_path: str | None = None, cwd: Path | None = None) -> Path:
    """Resolve a command name as ``execvp`` does; returns the real (symlink-free) path.

    ``search_path`` defaults to ``$PATH`` (``os.defpath`` when unset); empty entries mean the
    working directory, as in POSIX.
    """
    base = cwd if cwd is not None else Path.cwd()
    if not name:
        raise UsageError("got an empty command name, expected a program")
    if "/" in name:
        return _real_file(base / name, "command")
    dirs = search_path if search_path is not None else os.environ.get("PATH", os.defpath)
    for entry in dirs.split(os.pathsep):
        candidate = base / (entry or ".") / name
        try:
            if stat.S_ISREG(candidate.stat().st_mode) and os.access(candidate, os.X_OK):
                return _real_file(candidate, "command")
        except OSError:
            continue
    raise UsageError(f"command: got {name!r}, expected a program found in PATH ({dirs})")


def _parse_shebang(head: bytes, path: Path) -> tuple[str, str | None]:
    """Interpreter and optional argument of a ``#!`` line (Linux fs/binfmt_script.c rules)."""
    line, newline, _ = head[2:].partition(b"\n")
    if not newline and len(head) >= BINPRM_BUF_SIZE:
        raise UsageError(f"{str(path)!r}: #! line longer than {BINPRM_BUF_SIZE} bytes")
    line = line.strip(b" \t")
    if not line:
        raise UsageError(f"{str(path)!r}: got an empty #! line, expected an interpreter")
    interpreter, _, rest = line.replace(b"\t", b" ").partition(b" ")
    arg = rest.strip(b" \t")
    return os.fsdecode(interpreter), (os.fsdecode(arg) if arg else None)


def _env_target(arg: str | None, path: Path) -> str | None:
    """The program ``#!/usr/bin/env ARG`` starts, or None if env was given none."""
    if arg is None:
        return None
    tokens = arg[2:].split() if arg.startswith("-S") else [arg]
    for token in tokens:
        if "=" in token and not token.startswith("-"):
            continue  # NAME=VALUE assignment
        if token.startswith("-") or any(c.isspace() for c in token):
            raise UsageError(f"{str(path)!r}: env option {token!r} in the #! line is not supported")
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
    program: Path, *, search_path: str | None, cwd: Path, chain: list[ChainLink], role: str, depth: int
) -> None:
    digest, head = _hash_file(program)
    chain.append(ChainLink(role=role, path=str(program), sha384=digest))
    if not head.startswith(b"#!"):
        return
    if depth >= MAX_INTERPRETER_DEPTH:
        raise UsageError(f"{str(program)!r}: more than {MAX_INTERPRETER_DEPTH} levels of #! interpreters")
    interpreter_name, arg = _parse_shebang(head, program)
    interpreter = _real_file(cwd / interpreter_name, f"#! interpreter of {str(program)!r}")
    _walk_chain(
        interpreter, search_path=search_path, cwd=cwd, chain=chain, role="interpreter", depth=depth + 1
    )
    if os.path.basename(interpreter_name) == "env" or interpreter.name == "env":
        target = _env_target(arg, program)
        if target is not None:
            resolved = resolve_command(target, search_path=search_path, cwd=cwd)
            _walk_chain(
                resolved, search_path=search_path, cwd=cwd, chain=chain, role="env-target", depth=depth + 1
            )


def _argument_file(arg: str, cwd: Path) -> Path | None:
    if not arg:
        return None
    try:
        real = Path(os.path.realpath(cwd / arg, strict=True))
        if not stat.S_ISREG(real.stat().st_mode):
            return None
    except (OSError, ValueError):
        return None
    if any(real.is_relative_to(tree) for tree in _EXCLUDED_TREES):
        return None
    return real


def measure_command(
    argv: Sequence[str], *, search_path: str | None = None, cwd: Path | None = None
) -> Measurement:
    """Measure the launch of ``argv`` (see the module documentation for what is covered)."""
    if not argv:
        raise UsageError("got no command, expected CMD [ARGS...]")
    base = cwd if cwd is not None else Path.cwd()
    program = resolve_command(argv[0], search_path=search_path, cwd=base)
    return _measure(tuple(argv), program, search_path=search_path, cwd=base)


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
    return _measure(argv, program, search_path=None, cwd=Path.cwd())


def _measure(argv: tuple[str, ...], program: Path, *, search_path: str | None, cwd: Path) -> Measurement:
    base = cwd
    chain: list[ChainLink] = []
    _walk_chain(program, search_path=search_path, cwd=base, chain=chain, role="program", depth=0)
    if os.path.basename(argv[0]) == "env" or program.name == "env":
        target = _env_command(argv[1:])
        if target is not None:
            resolved = resolve_command(target, search_path=search_path, cwd=base)
            _walk_chain(resolved, search_path=search_path, cwd=base, chain=chain, role="env-target", depth=1)
    files: list[ArgumentFile] = []
    for index, arg in enumerate(argv[1:], start=1):
        real = _argument_file(arg, base)
        if real is not None:
            files.append(ArgumentFile(arg=index, path=str(real), sha384=_hash_file(real)[0]))
    digest = hashlib.sha384(canonical_json(_manifest(argv, chain, files))).digest()
    return Measurement(
        digest=digest, executable=str(program), argv=argv, chain=tuple(chain), files=tuple(files)
    )
