"""``confide run``: attest to the CAS, receive the configuration, inject it, exec the program.

1. Create an ephemeral P-256 key pair and ask the CAS for a nonce.
2. Get evidence whose report data is SHA-512("confide-attest/v1" || 0 || key SPKI || nonce)
   from the platform's quote provider (the simulator measures the command being launched).
3. Send evidence, public key, policy and service to the CAS over TLS (pinned certificate).
4. Decrypt the release with the ephemeral key: command, environment, files, working directory.
5. Write injected files (memory only, mode 0600 or the policy's ``permission``), set exactly
   the released environment (the host environment does not leak in), and ``exec`` the program.

Injected files never reach persistent storage. A path on a tmpfs/ramfs gets a new file renamed
over it (whatever the host left there is replaced, never written into: :func:`_write_private`).
Any other path is served from memory: as root, ``confide run`` enters a private mount
namespace (what the program then inherits), mounts a tmpfs at :data:`INJECT_STAGING`, writes
the content there and bind-mounts it over the path; the file on disk is not changed (a missing
one is created empty, mode 0600, as the mount point). Without root such a path is refused.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.cas.client import CasClient
from confide.cas.release_crypto import binding_report_data, decrypt_release
from confide.cas.secrets import RUNTIME_KEY_MARKER, render, template_secret
from confide.errors import (
    ConfideError,
    ParseError,
    PolicyError,
    RollbackError,
    StorageError,
    UsageError,
    WaitStoppedError,
)
from confide.frozenmap import FrozenMap
from confide.fsutil import read_bounded
from confide.policy.model import UpdatePolicy
from confide.policy.placeholders import PREFIX, Context, Placeholder, encoding_for, render_file
from confide.runtime.absent import check_absent
from confide.runtime.quote import QuoteProvider
from confide.runtime.volumes import (
    MountedVolumes,
    VolumeRelease,
    bind_mount,
    lock_released,
    mount_released,
    seal_and_report,
)
from confide.sim.measure import Measurement
from confide.volume.keys import VolumeKey
from confide.volume.lock import _signal_name
from confide.volume.lock import volume_wait as lock_wait_setting
from confide.volume.mount import STOP_SIGNALS, _private_namespace, mount_tmpfs_at
from confide.volume.store import load_sealed

log = logging.getLogger(__name__)

__all__ = [
    "INJECT_STAGING",
    "Launch",
    "Release",
    "attest_and_prepare",
    "attest_release",
    "is_memory_backed",
    "launch",
    "not_dumpable",
    "supervise",
]

_MEMORY_FS = frozenset({"tmpfs", "ramfs"})
INJECT_STAGING = Path("/run/confide/inject")
"""Where the tmpfs holding injected files for persistent paths is mounted (private namespace)."""


@dataclass(frozen=True)
class Launch:
    # what the CAS released holds secrets: never in a repr (a log line, a test failure)
    argv: list[str] = field(repr=False)
    environment: dict[str, str] = field(repr=False)
    files: dict[str, bytes] = field(repr=False)
    pwd: str | None
    policy: str = ""
    volumes: tuple[VolumeRelease, ...] = ()
    session: str = field(default="", repr=False)  # a bearer token (volume tag reports)
    measured: Measurement | None = None
    """The simulated TEE's measurement of the command (``--tee sim``): its absent components are
    checked after the volumes are mounted (:mod:`confide.runtime.absent`)."""
    command_secrets: tuple[str, ...] = ()
    """The secrets the policy put into :attr:`argv` (names: :attr:`Release.command_secrets`)."""
    modes: dict[str, int] = field(default_factory=dict)
    """The mode of each injection file the policy gives a ``permission`` (others: 0600)."""


def _mount_id(fd: int) -> str | None:
    """The mount ID of the file open at ``fd`` (``mnt_id`` in /proc/self/fdinfo, Linux >= 3.15)."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "mnt_id":
            return value.strip()
    return None


def _fstype_of_mount(mount_id: str) -> str | None:
    """The file system type of the mount ``mount_id`` (proc(5), /proc/self/mountinfo)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == mount_id and "-" in parts:
            sep = parts.index("-")
            return parts[sep + 1] if len(parts) > sep + 1 else None
    return None


def is_memory_backed(path: Path, *, dir_fd: int | None = None) -> bool:
    """Whether ``path`` would be stored on a memory file system (tmpfs/ramfs). ``dir_fd``: its
    directory, open: the answer is then about that very directory (the one a write through
    ``dir_fd`` reaches), whatever its path names by then."""
    if dir_fd is not None:
        mount_id = _mount_id(dir_fd)
        return mount_id is not None and _fstype_of_mount(mount_id) in _MEMORY_FS
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return is_memory_backed(path, dir_fd=fd)
    finally:
        os.close(fd)


_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0) (prctl(2)): no core dump of this process, which is about to
    hold the ephemeral key and the released secrets (and, supervising, the volume keys for the
    program's lifetime), and no ptrace or /proc/PID/mem access by other processes of the same
    user. ``execve`` resets it for the program (it is not inherited across exec)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:  # not Linux: nothing to disable this way
        log.warning("confide: cannot disable core dumps of confide run: %s", exc)


@dataclass(frozen=True)
class Release:
    """What the CAS released to an attested service, decrypted and checked: the configuration
    ``confide run`` injects, and what :meth:`confide.sdk.Cas.attest` returns to a program that
    attests itself. Holds secrets (environment, files, command, volume keys): never in a
    ``repr``."""

    policy: str
    service: str
    command: tuple[str, ...] = field(repr=False)
    """The policy's command for the service (with ``$$SCONE::...$$`` rendered), or, when it
    names none, the command the caller gave (``confide run``'s); may be empty."""
    environment: Mapping[str, str] = field(repr=False)
    """Exactly the released environment (the host's is not merged in)."""
    files: Mapping[str, bytes] = field(repr=False)
    """Injection files, absolute path to content (templates given by path only rendered)."""
    pwd: str | None
    volumes: tuple[VolumeRelease, ...] = ()
    session: str = field(default="", repr=False)
    """The attested session's token (hex): a bearer credential (the CAS keeps its SHA-256 only),
    which reports the session's volume tags; a secret like the others."""
    command_released: bool = False
    """Whether :attr:`command` is the policy's (True) or the caller's (False)."""
    command_secrets: tuple[str, ...] = ()
    """The names of the secrets the policy's command put into :attr:`command` (its placeholders,
    as the CAS says; empty from a CAS that does not say): readable by every local user in
    ``/proc/PID/cmdline`` while the program runs (``confide run`` warns)."""
    modes: Mapping[str, int] = field(default_factory=dict)
    """The mode of each file of :attr:`files` whose policy entry has a ``permission``
    (docs/policy.md "Injection files"); the others are written 0600."""

    def __post_init__(self) -> None:  # read-only views: a frozen result stays as released
        object.__setattr__(self, "environment", FrozenMap(self.environment))
        object.__setattr__(self, "files", FrozenMap(self.files))
        object.__setattr__(self, "modes", FrozenMap(self.modes))

    def write_files(self) -> tuple[Path, ...]:
        """Write :attr:`files` as ``confide run`` does before it starts the program (the same code): to memory
        only, mode 0600 or the policy's ``permission`` (:attr:`modes`). A path on a tmpfs/ramfs gets a new
        file renamed over it; any other path, as root, a tmpfs copy bound over it in a private mount namespace
        of the calling thread (use it from that thread and the processes it starts), and without root a
        :class:`UsageError`. Every path is checked before any is written; on a failure those written are
        removed. Returns the paths written in place (on a memory file system): removing them when done is the
        caller's business."""
        return tuple(_write_files(self.files, self.modes))


def attest_release(
    client: CasClient,
    provider: QuoteProvider,
    policy: str,
    service: str,
    *,
    command: Sequence[str] = (),
    require_command: bool = False,
) -> Release:
    """Attest ``service`` of ``policy`` to the CAS ``client`` talks to and return the release
    it decrypted (steps 1 to 4 of the module doc); the one code path of ``confide run``
    (:func:`attest_and_prepare`) and of :meth:`confide.sdk.Cas.attest`.

    An ephemeral P-256 key (never leaving this process) is bound into the evidence ``provider``
    returns for a fresh CAS nonce; the CAS's answer is decrypted with it. ``command``: the
    command to use when the policy names none; ``require_command``: a release with neither is a
    :class:`UsageError` (``confide run`` has nothing to execute). Certificates the CAS issued to
    the ephemeral key get its private key (PEM) where the policy puts the runtime key.

    Raises the CAS's refusal as its error class (``AppraisalError`` for evidence the policy does
    not accept, ``AccessDeniedError``, ...), ``NetworkError`` when the CAS cannot be reached,
    ``ParseError`` for a malformed answer, and the provider's errors."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce_hex = client.nonce()
    try:
        nonce = bytes.fromhex(nonce_hex)
    except (TypeError, ValueError):
        raise ParseError("expected a hex string", structure="the CAS's nonce answer", field="nonce") from None
    evidence = provider.get_evidence(binding_report_data(key_der, nonce))
    request: dict[str, Any] = {
        "policy": policy,
        "service": service,
        "platform": evidence.platform.value,
        "evidence": base64.b64encode(evidence.raw).decode(),
        "public_key": base64.b64encode(key_der).decode(),
        "nonce": nonce_hex,
    }
    aux = getattr(evidence, "aux", None)
    if aux:
        request["aux"] = {k: base64.b64encode(v).decode() for k, v in dict(aux).items()}
    config = decrypt_release(key, client.attest(request), nonce, public_key_der=key_der)
    released = _strings(config.get("command"), "command")
    argv = released or list(command)
    environment = _string_map(config.get("environment"), "environment")
    for name in environment:
        if not name or "=" in name:
            raise ParseError("expected variable names without '='", structure="release", field="environment")
    try:
        files = {
            p: base64.b64decode(c, validate=True)
            for p, c in _string_map(config.get("files"), "files").items()
        }
        volumes = tuple(VolumeRelease.from_config(v) for v in config.get("volumes") or [])
    except (TypeError, ValueError):
        raise ParseError("the CAS's configuration is malformed", structure="release") from None
    modes = _modes(config.get("modes"))
    pwd = _optional_string(config.get("pwd"), "pwd")
    session = _optional_string(config.get("session"), "session") or ""
    if require_command and not argv:
        raise UsageError("no command: give one after -- or in the policy's service")
    templates = config.get("templates")
    if templates:
        files.update(render_templates(templates))
    # Certificates issued to this runtime's key: its private key (PEM) goes where the policy
    # asks for it; it never left this process.
    marker = RUNTIME_KEY_MARKER.decode()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    argv = [a.replace(marker, pem.decode()) for a in argv]
    environment = {k: v.replace(marker, pem.decode()) for k, v in environment.items()}
    files = {p: c.replace(RUNTIME_KEY_MARKER, pem) for p, c in files.items()}
    named = _strings(config.get("command_secrets"), "command_secrets") if released else []
    return Release(
        policy, service, tuple(argv), environment, files, pwd or None, volumes, session,
        command_released=bool(config.get("command")), command_secrets=tuple(named),
        modes={p: m for p, m in modes.items() if p in files},
    )  # fmt: skip


def attest_and_prepare(
    client: CasClient, provider: QuoteProvider, policy: str, service: str, command: Sequence[str]
) -> Launch:
    """``confide run``: :func:`attest_release` (refusing a release without a command), then the
    check that the policy's command runs the program that was measured."""
    not_dumpable()
    release = attest_release(client, provider, policy, service, command=command, require_command=True)
    argv = list(release.command)
    environment = dict(release.environment)
    if command and release.command_released:
        measured = shutil.which(command[0])
        released = shutil.which(argv[0], path=_search_path(environment))
        # a program measured as absent is found by neither before the volumes are mounted: the
        # same name is required, and confide.runtime.absent checks the file after mounting
        absent_same = measured is None and released is None and command[0] == argv[0] and "/" in argv[0]
        if not absent_same and (
            measured is None or released is None or Path(measured).resolve() != Path(released).resolve()
        ):
            raise UsageError(
                f"the policy's command runs {argv[0]!r}, but {command[0]!r} was measured; "
                "they must be the same program"
            )
    return Launch(
        argv, environment, dict(release.files), release.pwd, policy, release.volumes, release.session,
        command_secrets=release.command_secrets, modes=dict(release.modes),
    )  # fmt: skip


def _no_nul(text: str, field: str) -> str:
    # execve(2) and open(2) take C strings: a NUL would cut the value (Python refuses it with a
    # ValueError). The value itself may be a secret: the reason names the field only.
    if "\0" in text:
        raise ParseError("contains a NUL character", structure="release", field=field)
    return text


def _strings(value: Any, field: str) -> list[str]:
    """A released list of strings (None or empty: none)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParseError("expected a list of strings", structure="release", field=field)
    return [_no_nul(v, field) for v in value]


def _string_map(value: Any, field: str) -> dict[str, str]:
    """A released object of string values (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ParseError("expected an object of strings", structure="release", field=field)
    return {_no_nul(k, field): _no_nul(v, field) for k, v in value.items()}


def _modes(value: Any) -> dict[str, int]:
    """The released modes of injection files (None: none). The CAS sends only what a policy may
    hold (docs/policy.md "Injection files"); a mode that gives group or others write, or the
    owner no read, is refused here too."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParseError("expected an object of modes", structure="release", field="modes")
    out: dict[str, int] = {}
    for path, mode in value.items():
        if (
            not isinstance(mode, int)
            or isinstance(mode, bool)
            or not 0 <= mode <= 0o777
            or mode & 0o022
            or not mode & 0o400
        ):
            raise ParseError(
                "expected modes of 0o400 to 0o755 without write for group or others",
                structure="release",
                field="modes",
            )
        out[_no_nul(str(path), "modes")] = mode
    return out


def _optional_string(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"got {type(value).__name__}, expected a string", structure="release", field=field)
    return _no_nul(value, field)


MAX_TEMPLATE = 1 << 20
"""Largest template (an injection file given by path only) read from the image."""


def render_templates(templates: Any) -> dict[str, bytes]:
    """Render the injection files the policy gives by path only (SCONE's template form): each is
    read from the image (at most :data:`MAX_TEMPLATE` bytes, UTF-8) and its placeholders are
    substituted with the secrets the CAS released for it, with the CAS's own rules for formats
    in files."""
    try:
        listed = templates["paths"]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise TypeError
        paths = [_no_nul(p, "templates") for p in listed]
        values = {str(n): template_secret(v) for n, v in dict(templates["secrets"]).items()}
    except (KeyError, TypeError, ValueError):
        raise ParseError("the CAS's template list is malformed", structure="release") from None

    def resolve(ph: Placeholder) -> bytes:
        value = values.get(ph.name)
        if value is None:
            raise PolicyError(f"$$SCONE::{ph.name}$$: no such secret is available to this service")
        try:
            encoding = encoding_for(value.kind, ph.format, Context.FILE)
        except ValueError as exc:
            raise PolicyError(f"$$SCONE::{ph.name}$$: {exc}") from None
        assert encoding is not None
        try:
            return render(value, encoding)
        except ValueError:  # e.g. a certificate in the release that does not load
            raise ParseError(f"$$SCONE::{ph.name}$$: malformed value", structure="release") from None

    out: dict[str, bytes] = {}
    for path in paths:
        raw = read_bounded(
            Path(path), MAX_TEMPLATE, label="template injection file", expected="a template of at most 1 MiB",
            structure=path, regular=True,
        )  # fmt: skip
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("not UTF-8 text", structure=f"template injection file {path}") from None
        rendered = render_file(text, resolve, where=f"template injection file {path}")
        if PREFIX.encode() in rendered:
            # Every "$$SCONE::" of the template was a placeholder: this one is spelt by a value (or
            # values side by side, or a value and the text around it). The rendering replaces a
            # template on a tmpfs (the only place one can be without root), so the next start
            # would render it again and expand it: another stakeholder's value naming one of this
            # policy's secrets would get that secret put where the value was.
            raise PolicyError(
                f"template injection file {path}: its rendering would spell '{PREFIX}', which the"
                " next start would render again (a value must not read as a placeholder): refused"
            )
        out[path] = rendered
    return out


_STAGING_PREFIX = ".confide-inject-"


def _write_private(path: Path, content: bytes, *, dir_fd: int | None = None, mode: int = 0o600) -> None:
    """Put ``content`` at ``path`` as a new file of ``mode`` (0600 unless the policy gives the file a
    ``permission``; set on the new, still empty file before any byte is written), atomically; with ``dir_fd``,
    at the entry of that name in the directory open there. The content is written under a fresh random name in
    the same directory (``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing planted there is opened) and renamed over
    the name (rename(2) replaces the entry itself, never following a symlink there). A file already at
    ``path`` is replaced, never written into: another hard link to it, or a descriptor opened on it before,
    never sees the content, and its owner cannot make it readable; on a failure it stays as it was, and no
    partial secret stays behind."""
    if dir_fd is None:
        own_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _write_private(path, content, dir_fd=own_fd, mode=mode)
        finally:
            os.close(own_fd)
        return
    staged = _STAGING_PREFIX + secrets.token_hex(8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(staged, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask, before the content
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        os.rename(staged, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged, dir_fd=dir_fd)  # no partial secret stays behind
        raise


def _inject_error(path: Path, exc: OSError) -> UsageError | StorageError:
    """One line for an injection file that cannot be written: the path and the reason (never
    the content). What the path names (a directory, a symlink, no permission, a read-only file
    system) is the policy's or the host's setup: UsageError; the rest (no space, I/O): StorageError."""
    reason = exc.strerror or str(exc)
    if exc.errno in _USAGE_ERRNOS:
        return UsageError(f"injection file {path}: cannot write it: {reason}")
    return StorageError(f"injection file {path}: cannot write it: {reason}")


_USAGE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG,
     errno.EROFS, errno.EEXIST, errno.ENOTEMPTY, errno.EBUSY}
)  # fmt: skip


def _remove_at(path: Path, dir_fd: int) -> None:
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    except OSError as exc:
        log.warning("confide: cannot remove the injected file %s: %s", path, exc.strerror or exc)


def _remove(paths: Sequence[Path], *, missing_ok: bool = False) -> None:
    """Remove injected files written in place (a failure before the program started, or the
    supervised program's end: ``missing_ok``, the program may have removed them itself)."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                log.warning("confide: cannot remove the injected file %s: %s", path, exc.strerror or exc)


def _mount_point_for(path: Path) -> int:
    """``path`` as a bind-mount target, opened ``O_PATH | O_NOFOLLOW``: an existing regular file
    (not a symlink), or a new empty one (mode 0600; the injected content never goes there). The
    mount goes onto the file open here (``/proc/self/fd/N``), so a symlink put at ``path`` after
    the check cannot redirect it onto another file. Returns the descriptor."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(
            f"injection file {path}: cannot create its mount point: {exc.strerror or exc}"
        ) from None
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(
            f"injection file {path}: cannot open its mount point: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # O_PATH | O_NOFOLLOW opens a symlink itself
        os.close(fd)
        raise UsageError(
            f"injection file {path}: the path exists and is not a regular file; expected a file or nothing"
        )
    return fd


def _inject_over_persistent(items: Sequence[tuple[Path, bytes, int]]) -> None:
    """Serve ``items`` from a private tmpfs bind-mounted over their paths (see the module doc).
    The tmpfs is used through a descriptor opened right after mounting it and checked to be the
    fresh tmpfs (:func:`_is_fresh_tmpfs`): its path (on the host's /run) can be renamed from
    another mount namespace, and what another user then puts there is never written to."""
    _check_root_for(items[0][0])
    _private_namespace()
    try:
        INJECT_STAGING.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create {INJECT_STAGING}: {exc.strerror or exc}") from None
    mount_tmpfs_at(INJECT_STAGING, b"mode=0700")
    try:
        staging = os.open(INJECT_STAGING, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open the tmpfs at {INJECT_STAGING}: {exc.strerror or exc}") from None
    try:
        if not _is_fresh_tmpfs(staging):
            raise StorageError(f"{INJECT_STAGING} is not the tmpfs just mounted there: nothing is written")
        for index, (path, content, mode) in enumerate(items):
            try:
                _write_private(Path(str(index)), content, dir_fd=staging, mode=mode)
            except OSError as exc:
                raise _inject_error(path, exc) from None
            target = _mount_point_for(path)
            try:
                bind_mount(Path(f"/proc/self/fd/{staging}/{index}"), Path(f"/proc/self/fd/{target}"))
            finally:
                os.close(target)
    finally:
        os.close(staging)


def _is_fresh_tmpfs(dir_fd: int) -> bool:
    """Whether the directory open at ``dir_fd`` is the root of the tmpfs this process just
    mounted with ``mode=0700``: a memory file system, owned by this user with mode 0700, empty.
    A directory put at that path by another user (through another mount namespace) is not ours."""
    st = os.fstat(dir_fd)
    return (
        is_memory_backed(INJECT_STAGING, dir_fd=dir_fd)
        and st.st_uid == os.geteuid()
        and stat.S_IMODE(st.st_mode) == 0o700
        and not os.listdir(dir_fd)
    )


def _check_root_for(path: Path) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            f"injection file {path} would land on persistent storage; confide writes injected files "
            "only to memory: run confide run as root (it then binds a tmpfs copy over the path in a private "
            "mount namespace), or mount a tmpfs at its directory (e.g. under /dev/shm or /run)"
        )


def _write_files(files: Mapping[str, bytes], modes: Mapping[str, int] | None = None) -> list[Path]:
    """Inject ``files``, each of mode ``modes[path]`` or 0600 (created so: never readable more
    widely while it is written, and at its path only once complete): every path is checked
    before any is written, and on a failure the files
    already written are removed. Returns the paths written in place (on a memory file system),
    for the caller to remove if the program then does not start."""
    # Each file on a memory file system is written through its directory opened when it was
    # checked: a symlink planted at a parent afterwards cannot redirect it onto a disk.
    memory: list[tuple[Path, bytes, int, int]] = []
    persistent: list[tuple[Path, bytes, int]] = []
    written: list[tuple[Path, int]] = []
    try:
        for path_text, content in files.items():
            path = Path(path_text)
            mode = (modes or {}).get(path_text, 0o600)
            if not path.is_absolute():
                raise UsageError(f"injection file {path_text}: expected an absolute path")
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise UsageError(
                    f"injection file {path}: cannot create or open its directory: {exc.strerror or exc}"
                ) from None
            memory.append((path, content, dir_fd, mode))
            if not is_memory_backed(path, dir_fd=dir_fd):
                memory.pop()
                os.close(dir_fd)
                persistent.append((path, content, mode))
        if persistent:
            _check_root_for(persistent[0][0])
        for path, content, dir_fd, mode in memory:
            try:
                _write_private(path, content, dir_fd=dir_fd, mode=mode)
            except OSError as exc:
                raise _inject_error(path, exc) from None
            written.append((path, dir_fd))
        if persistent:
            _inject_over_persistent(persistent)
    except BaseException:
        for path, dir_fd in written:
            _remove_at(path, dir_fd)
        raise
    finally:
        for _p, _c, dir_fd, _m in memory:
            os.close(dir_fd)
    return [path for path, _fd in written]


def _search_path(env: Mapping[str, str]) -> str:
    """Where a program name is looked up: the released ``PATH``, else the default search path
    (``os.defpath``, as ``execvp`` without ``PATH``), never the host's ``PATH``."""
    return env.get("PATH") or os.defpath


def _resolve(program: str, env: Mapping[str, str]) -> str:
    if "/" in program:
        return program
    for directory in _search_path(env).split(":"):
        candidate = Path(directory) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise UsageError(f"{program}: not found on PATH")


FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals the supervising ``confide run`` passes on to the program (as ``exec`` would have them
reach it), instead of being stopped by them itself and leaving the program and its volumes
without their supervisor (e.g. SIGHUP or SIGUSR1, a service's "reload")."""

INTEGRITY_POLL = 0.2  # seconds between checks of the volume servers' integrity reports


def _wait(proc: subprocess.Popen[bytes], mounted: MountedVolumes) -> tuple[int, str | None, str | None]:
    """Wait for the program; stop it (SIGTERM, then SIGKILL) as soon as a protected volume
    reports an integrity failure or its mount lost (its FUSE server died, or the mount was
    removed from outside). Returns (exit code, failing ``volume:path`` or None, ``volume at mountpoint``
    of the lost mount or None)."""
    while True:
        try:
            code = proc.wait(timeout=INTEGRITY_POLL)
        except subprocess.TimeoutExpired:
            pass
        else:
            tampered = mounted.integrity_failure()
            return code, tampered, None if tampered is not None else mounted.lost_mount()
        tampered = mounted.integrity_failure()
        lost = None if tampered is not None else mounted.lost_mount()
        if tampered is None and lost is None:
            continue
        if tampered is not None:
            log.error("confide: integrity failure in protected volume %s; stopping the service", tampered)
        else:
            log.error(
                "confide: the mount of protected volume %s was lost (its FUSE server died or it was "
                "unmounted from outside): what the service writes there from now on is outside the "
                "volume (failing, or unencrypted in the directory below); stopping the service",
                lost,
            )
        proc.terminate()
        try:
            return proc.wait(timeout=5), tampered, lost
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), tampered, lost


def _run_supervised(
    plan: Launch,
    before_exec: Callable[[], None] | None,
    started: list[subprocess.Popen[bytes]],
    pending: list[int],
    volume_wait: float | None,
    reattest: Callable[[], Launch] | None,
    announce: Callable[[Launch], None] | None = None,
) -> tuple[int, str | None, str | None, MountedVolumes, Launch, list[Path]]:
    """:func:`supervise` up to the program's exit (the signals are already forwarded): lock the
    volumes (waiting up to ``volume_wait`` seconds; a stop signal among the ``pending`` ones
    ends the wait, and one that came during the wait or the new attestation ends the run there),
    attest again if one changed meanwhile (``reattest``), inject, mount, ``before_exec`` and
    ``announce`` the plan used, start the program, pass on the ``pending`` signals, wait.
    Returns (exit code, failing ``volume:path`` or None, lost ``volume at mountpoint`` or None,
    the mounted volumes, still to be sealed, the plan they were mounted under, and the injected
    files written in place, still to be removed)."""

    def stop() -> int | None:
        return next((sig for sig in pending if sig in STOP_SIGNALS), None)

    wait = lock_wait_setting() if volume_wait is None else volume_wait
    # Before anything is injected or decrypted: a wait that times out or is stopped leaves
    # nothing behind (no file written, nothing mounted, no mount point directory made).
    locks = lock_released(list(plan.volumes), wait, stop)
    try:
        if wait > 0 and plan.volumes:
            # a stop signal that came in the wait's last instant (the lock was free on the next
            # try) or while attesting again ends the run as one during the wait: nothing injected
            _stopped(stop(), plan.volumes, "waiting for the locks of")
            if reattest is not None and _stale(plan.volumes):
                plan = _attest_again(plan, reattest)
                _stopped(stop(), plan.volumes, "attesting again after waiting for the locks of")
        injected = _write_files(plan.files, plan.modes)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    try:
        mounted = mount_released(list(plan.volumes), locks)
    except BaseException:
        _remove(injected)
        raise
    env = {**plan.environment, **mounted.environment}
    try:
        checked = None
        if plan.measured is not None:
            checked = check_absent(plan.measured, plan.argv, env, plan.pwd, mounted.regions())
        program = checked or _program(plan, env)
        if before_exec is not None:
            before_exec()
        if announce is not None:
            announce(plan)  # the release it runs on: the one attested again, if it was
    except BaseException:
        _unwind(mounted, injected)
        raise
    try:
        # an empty mask for the program (Popen restores the dispositions Python changed, not the
        # mask, which exec passes on): set on this thread while it forks, put back after
        mask = signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            proc = subprocess.Popen(plan.argv, executable=program, env=env, cwd=plan.pwd or None)  # noqa: S603
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    except OSError as exc:
        _unwind(mounted, injected)
        if plan.pwd and exc.filename == plan.pwd:  # the child's chdir failed, as in launch()
            raise UsageError(
                f"cannot change to the service's working directory {plan.pwd}: {exc.strerror}"
            ) from None
        raise UsageError(f"cannot execute {plan.argv[0]}: {exc.strerror}") from None
    except BaseException:
        _unwind(mounted, injected)
        raise
    started.append(proc)
    for sig in pending:
        proc.send_signal(sig)
    code, tampered, lost = _wait(proc, mounted)
    return code, tampered, lost, mounted, plan, injected


def _unwind(mounted: MountedVolumes, injected: Sequence[Path]) -> None:
    """The program did not start: close the volumes, and remove the injected files whatever
    the close does (a volume that fails to seal raises: the secrets must not stay behind)."""
    try:
        mounted.close()
    finally:
        _remove(injected)


def _stale(volumes: Sequence[VolumeRelease]) -> bool:
    """Whether a volume's sealed version is no longer the one its release names: another run
    sealed it while this one waited for its lock (which it now holds: nothing changes it
    until this run ends). Its key authenticates the manifest; anything else wrong is left to
    the mount to report."""
    for vol in volumes:
        try:
            load_sealed(vol.directory.resolve(), VolumeKey(vol.key), vol.expected_tag)
        except RollbackError:
            return True
        except ConfideError:
            continue
    return False


def _stopped(sig: int | None, volumes: Sequence[VolumeRelease], doing: str) -> None:
    """Raise :class:`WaitStoppedError` for a stop signal ``sig`` that came while this run was
    ``doing`` (something with) its ``volumes``, before anything was injected or mounted."""
    if sig is None:
        return
    names = ", ".join(repr(str(v.directory)) for v in volumes)
    which = f"volume {names}" if len(volumes) == 1 else f"volumes {names}"
    raise WaitStoppedError(
        f"stopped by {_signal_name(sig)} while {doing} {which}: nothing was injected, mounted or changed",
        signal=sig,
    )


def _attest_again(plan: Launch, reattest: Callable[[], Launch]) -> Launch:
    """The release of a new attestation, for the volumes' current versions (the CAS has their
    new tags: a run reports them before it lets the volume go). Its volumes must be the ones
    locked: the same directories, shared or not alike."""
    log.warning(
        "confide run: a protected volume was sealed anew while this run waited for its lock; "
        "attesting again for its current version"
    )
    fresh = reattest()

    def shape(p: Launch) -> list[tuple[str, str, bool]]:
        return [(v.name, str(v.directory), v.update_policy is UpdatePolicy.EPHEMERAL) for v in p.volumes]

    if shape(fresh) != shape(plan):
        raise StorageError(
            "the policy's volumes changed while this run waited for their locks (attested again, the "
            "release names others): nothing was mounted; run it again"
        )
    return fresh


def supervise(
    plan: Launch,
    client: CasClient,
    *,
    before_exec: Callable[[], None] | None = None,
    volume_wait: float | None = None,
    reattest: Callable[[], Launch] | None = None,
    announce: Callable[[Launch], None] | None = None,
) -> int:
    """With protected volumes: mount them, run the program as a child, then seal changed
    volumes and report their new tags to the CAS; returns the program's exit code.
    ``volume_wait``: seconds to wait for the volumes' locks while other mounts hold them
    (None: $CONFIDE_VOLUME_WAIT, else 0: refused at once); a stop signal (SIGINT, SIGTERM,
    SIGHUP) during that wait ends it with :class:`~confide.errors.WaitStoppedError`, nothing
    injected or mounted. ``reattest``: attests anew (the first step of ``confide run``) when,
    after waiting, a volume is no longer at the version its release names (another run sealed
    it meanwhile): the new release, for the current versions, is the one used (once; its
    volumes must be the same).
    A stop signal that came during the wait or the new attestation (its handler only notes it)
    ends the run before anything is injected, as one during the wait does.
    ``before_exec`` runs after everything else was prepared, right before the program starts
    (``confide run --gpus`` sets the GPUs' ready state there), then ``announce`` with the plan the
    program runs on (the new release's, if attested again: ``confide run`` warns about its command's
    secrets there); if either raises, the program does not start and the volumes are closed."""
    # The forwarding is in place before anything is injected or mounted and stays until the
    # volumes are sealed and reported: a signal that arrives while the volumes are mounted or
    # the program is being started is kept and passed on as soon as it runs; one that arrives
    # after it exited, while the volumes are sealed, is ignored (it would otherwise stop confide
    # run itself, leaving the program and its volumes without their supervisor, or a volume
    # sealed and its new tag unreported). execve(2) resets the handlers in the program.
    started: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if started:
            started[0].send_signal(sig)  # a no-op once the program was waited for
        else:
            pending.append(sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code, tampered, lost, mounted, plan, injected = _run_supervised(
            plan, before_exec, started, pending, volume_wait, reattest, announce
        )
        # The program has ended: its injected files written in place (a tmpfs such as /dev/shm,
        # which may be the host's, --ipc=host) go now, whatever the seal does; they stayed there
        # after the run before (as they must with exec, where nothing is left to remove them).
        _remove(injected, missing_ok=True)
        # A volume's storage modified behind our back: stop, keep nothing of this session (a seal
        # would bless state derived from an attack) and tell the operator. So too when a volume's
        # mount was lost (its FUSE server died, or it was unmounted from outside): the program's
        # writes since failed or went to the bare mountpoint directory, and the session's end is
        # unknown. Otherwise every sealed volume's new tag is reported, also when another volume
        # failed to seal.
        seal_and_report(mounted, client, plan.policy, plan.session, tampered=tampered, lost=lost)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Popen reports a program killed by signal N as -N; sys.exit(-N) would exit 256 - N. Report it
    # as a shell does (128 + N), the status a caller of an exec'd program sees as "killed by N".
    return 128 - code if code < 0 else code


def launch(
    plan: Launch,
    *,
    before_exec: Callable[[], None] | None = None,
    announce: Callable[[Launch], None] | None = None,
) -> None:
    """Inject and exec; does not return on success. ``before_exec`` runs after everything else
    was prepared, right before the ``exec`` (``confide run --gpus`` sets the GPUs' ready state
    there), then ``announce`` with ``plan`` (as :func:`supervise`); if either raises, nothing is
    executed."""
    injected = _write_files(plan.files, plan.modes)
    ready = before_exec
    if announce is not None:

        def ready() -> None:
            if before_exec is not None:
                before_exec()
            announce(plan)

    try:
        _exec(plan, ready)
    except BaseException:
        _remove(injected)  # the program did not start: its secrets do not stay behind
        raise


def _program(plan: Launch, env: Mapping[str, str]) -> str:
    """The file to execute. With ``--tee sim`` it is the file that was measured (resolved with the
    measuring ``PATH`` and working directory, docs/simulator.md "For confide run"), not a new
    lookup with the released ``PATH`` or after changing to the released ``pwd``, which can name
    another file than the one the evidence vouches for."""
    if plan.measured is not None:
        return plan.measured.executable
    return _resolve(plan.argv[0], env)


def _close_on_exec_above_stderr() -> None:
    """Mark every descriptor above 2 close-on-exec: the program gets standard input, output and
    error only, as a supervised one does (``Popen(close_fds=True)``), not what the host passed
    to ``confide run`` without close-on-exec (or a library left open). Marked, not closed: if
    ``execve`` fails, this process still has them."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: the descriptors Python opened are close-on-exec already (PEP 446)
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)


def _exec(plan: Launch, before_exec: Callable[[], None] | None) -> None:
    if plan.pwd:
        try:
            os.chdir(plan.pwd)
        except OSError as exc:
            raise UsageError(
                f"cannot change to the service's working directory {plan.pwd}: {exc.strerror}"
            ) from None
    env = dict(plan.environment)
    checked = None
    if plan.measured is not None:  # no volumes: any absent component is refused
        checked = check_absent(plan.measured, plan.argv, env, None, ())
    program = checked or _program(plan, env)
    if before_exec is not None:
        before_exec()
    _close_on_exec_above_stderr()
    restore = _program_signals()
    try:
        os.execve(program, plan.argv, env)  # noqa: S606 - exec of the attested program is the point
    except OSError as exc:
        restore()
        raise UsageError(f"cannot execute {program}: {exc.strerror}") from None
    except BaseException:  # ValueError (a NUL), anything else: this process keeps Python's settings
        restore()
        raise


# What Python sets to SIG_IGN for itself at start (as ``Popen(restore_signals=True)`` restores).
_PYTHON_IGNORED = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _program_signals() -> Callable[[], None]:
    """Before the ``execve`` of the program: give it what a program started from a shell gets,
    as the supervised one gets it (``Popen``). Ignored signals and the signal mask survive
    exec: the program got SIGPIPE and SIGXFSZ ignored (Python's own settings: a ``producer |
    head`` in it never ended its producer) and any mask ``confide run`` was started with. Those
    dispositions go back to their default and the mask is emptied; other ignored signals came
    from the caller (``nohup``) and stay, as a plain exec leaves them. Returns what undoes it
    (the exec failed)."""
    before = {sig: signal.signal(sig, signal.SIG_DFL) for sig in _PYTHON_IGNORED}
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, [])

    def restore() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in before.items():
            signal.signal(sig, handler)

    return restore
