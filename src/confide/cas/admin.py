"""The CAS admin channel: a unix socket in the data directory (docs/cas.md "Online rotation").

``DATA_DIR/admin.sock``, mode 0600 in a 0700 directory; each connection's peer uid
(``SO_PEERCRED``, unix(7)) must be the CAS's own effective uid, or the request is refused.
There is no network listener: the HTTPS API has no administrative operation, so nobody who
can only reach the CAS over the network can start one, whatever credentials they hold.

Protocol: the client sends one JSON object on one line (at most :data:`MAX_REQUEST` bytes),
``{"op": "rotate-master-key"}`` (optionally with ``"batch_size"``: rows per transaction, and
``"pause_ms"``: milliseconds between batches) or ``{"op": "rotation-status"}``, and gets one
line back:
``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``. The input is hostile:
bounded, read within :data:`_TIMEOUT` seconds in all (not per read: a client trickling bytes
would hold the channel, which serves one connection at a time), anything but the two requests
is refused, numbers are range-checked before they are logged or used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from confide import jsonstrict
from confide.cas.online_rotation import MAX_BATCH, MAX_PAUSE, OnlineRotation
from confide.errors import ConfideError, ParseError, UsageError

__all__ = ["MAX_REQUEST", "SOCKET_NAME", "AdminChannel", "request"]

SOCKET_NAME = "admin.sock"
MAX_REQUEST = 4096
_TIMEOUT = 5.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its terminating NUL (unix(7))
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_LOG = logging.getLogger("confide.cas")


def _address(path: Path) -> tuple[str, int | None]:
    """An address for ``path`` that fits ``sun_path``: through ``/proc/self/fd`` of a directory
    descriptor when the path is too long (the caller closes the descriptor)."""
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        return str(path), None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


class AdminChannel:
    """Serves :data:`SOCKET_NAME` in ``data_dir`` on a daemon thread for ``rotation``."""

    def __init__(self, data_dir: Path, rotation: OnlineRotation) -> None:
        self.path = data_dir / SOCKET_NAME
        self.rotation = rotation
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, *, required: bool = True) -> bool:
        """Listen on the socket; returns whether it does. When it cannot (another CAS process
        serves it, or the directory does not take sockets) and not ``required``, the CAS
        serves without the channel (no online rotation; logged), as it did before it existed."""
        try:
            self._start()
        except (UsageError, OSError) as exc:
            if required:
                raise
            reason = str(exc) if isinstance(exc, UsageError) else (exc.strerror or type(exc).__name__)
            _LOG.warning(json.dumps({"event": "admin-channel-unavailable", "reason": reason}))
            return False
        return True

    def _start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if self._answers():
                raise UsageError(
                    f"{str(self.path)!r} is served by another CAS process on this data directory"
                )
            self.path.unlink()  # left by a CAS that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        address, fd = _address(self.path)
        try:
            sock.bind(address)
            os.chmod(self.path, 0o600, follow_symlinks=False)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        finally:
            if fd is not None:
                os.close(fd)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="cas-admin", daemon=True)
        self._thread.start()

    def _answers(self) -> bool:
        """Whether a live process listens on the socket: one that takes the connection, or is
        too busy to within a second. A socket left by a CAS that died refuses it (ECONNREFUSED).
        Not whether it replies: a client holding the channel delays every reply."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(1.0)
        with sock:
            try:
                address, fd = _address(self.path)
            except OSError:
                return False
            try:
                sock.connect(address)
            except (TimeoutError, BlockingIOError):
                return True  # its backlog is full: alive
            except OSError:
                return False
            finally:
                if fd is not None:
                    os.close(fd)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except OSError:
                    pass
                except Exception as exc:  # the channel outlives any one request
                    _LOG.warning(json.dumps({"event": "admin-request-failed", "error": type(exc).__name__}))

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(_TIMEOUT)
        uid = peer_uid(conn)
        if uid != os.geteuid():
            _LOG.warning(json.dumps({"event": "admin-refused", "peer_uid": uid}))
            conn.sendall(
                _reply({"ok": False, "error": "refused: only the CAS's own uid may use this channel"})
            )
            return
        try:
            req = jsonstrict.loads(_read_line(conn, _TIMEOUT), structure="admin request")
        except (ParseError, UsageError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"[:200]}
        else:
            answer = self._answer(req)
        conn.settimeout(_TIMEOUT)  # _read_line left what remained of its limit
        conn.sendall(_reply(answer))

    def _answer(self, req: Any) -> dict[str, Any]:
        op = req.get("op") if isinstance(req, dict) else None
        allowed = {"op", "batch_size", "pause_ms"} if op == "rotate-master-key" else {"op"}
        if not isinstance(req, dict) or not set(req) <= allowed:
            return {"ok": False, "error": f"expected only {sorted(allowed)}"}
        batch, pause = req.get("batch_size"), req.get("pause_ms")
        for value in (batch, pause):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return {"ok": False, "error": "batch_size and pause_ms are integers"}
        # Before the values are logged or divided (a pause_ms of 10**400 overflowed a float).
        if batch is not None and not 1 <= batch <= MAX_BATCH:
            return {"ok": False, "error": f"batch_size: got {_shown(batch)}, expected 1..{MAX_BATCH}"}
        if pause is not None and not 0 <= pause <= MAX_PAUSE * 1000:
            return {"ok": False, "error": f"pause_ms: got {_shown(pause)}, expected 0..{MAX_PAUSE * 1000:g}"}
        try:
            if op == "rotate-master-key":
                _LOG.info(
                    json.dumps({"event": "admin-request", "op": op, "batch_size": batch, "pause_ms": pause})
                )
                seconds = None if pause is None else pause / 1000
                return {"ok": True, "status": self.rotation.start(batch_size=batch, pause=seconds).to_json()}
            if op == "rotation-status":
                return {"ok": True, "status": self.rotation.status.to_json()}
        except ConfideError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": "unknown op: expected rotate-master-key or rotation-status"}


def _shown(number: int) -> str:
    text = str(number)  # json.loads reads at most sys.get_int_max_str_digits() digits
    return text if len(text) <= 20 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def _reply(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


def _read_line(conn: socket.socket, timeout: float) -> bytes:
    """The first line the client sends, at most :data:`MAX_REQUEST` bytes within ``timeout``
    seconds in all (or what it sent before it closed)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UsageError(f"no complete line within {timeout:g} s")
        conn.settimeout(left)
        try:
            chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
        except TimeoutError:
            raise UsageError(f"no complete line within {timeout:g} s") from None
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise UsageError(f"longer than {MAX_REQUEST} bytes")
    return buf.split(b"\n", 1)[0]


def request(data_dir: Path, req: dict[str, Any], *, timeout: float = _TIMEOUT) -> dict[str, Any]:
    """Send ``req`` to the CAS serving ``data_dir`` and return its reply; a
    :class:`~confide.errors.UsageError` when there is no CAS or it refuses."""
    path = data_dir / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    with sock:
        try:
            address, fd = _address(path)
        except OSError as exc:
            raise UsageError(f"--data-dir {str(data_dir)!r}: {exc.strerror or exc}") from None
        try:
            sock.connect(address)
        except OSError as exc:
            raise UsageError(
                f"cannot reach the CAS at {str(path)!r} ({exc.strerror or exc}): is it running on this "
                "data directory, and are you its uid?"
            ) from None
        finally:
            if fd is not None:
                os.close(fd)
        with contextlib.suppress(OSError):  # a CAS that refuses may close first: read its reply
            sock.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        try:
            while b"\n" not in buf and len(buf) <= 1 << 16:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise UsageError(f"the CAS's admin channel failed: {exc.strerror or exc}") from None
    try:
        reply = jsonstrict.loads(buf.split(b"\n", 1)[0], structure="admin reply")
    except ParseError as exc:
        raise UsageError(f"the CAS's admin channel sent no valid reply ({exc.message})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise UsageError("the CAS's admin channel sent no valid reply")
    if not reply["ok"]:
        raise UsageError(f"the CAS refused: {reply.get('error')}")
    return reply
