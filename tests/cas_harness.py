"""Test harness: real CAS processes over TLS, on SQLite or on a throwaway PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def refusing_port() -> Iterator[int]:
    """A TCP port of 127.0.0.1 that refuses connections while the block runs: bound, never
    listening. (A port found free and closed at once could meanwhile be taken by a server that
    binds port 0, another test's fixture in this process, and then answer.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb in a temp dir, run as the postgres user when root).
    Local connections are trusted; with ``password``, every connection must give it instead
    (SCRAM-SHA-256, the superuser ``postgres``'s password), and :meth:`new_database` URLs leave
    it out (clients give it as libpq's ``PGPASSWORD``)."""

    def __init__(self, password: str | None = None) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="confide-pg-"))
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.password = password
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(password + "\n")
            if self._as_user:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        data = self.dir / "data"
        self._run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            *auth,
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        for attempt in range(5):  # a port found free is not reserved: taken meanwhile, take another
            self.port = free_port()
            try:
                self._run(
                    str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "-o",
                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    "start",
                )  # fmt: skip
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
        self.data = data
        self._n = 0

    def _run(self, *args: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password} if self.password is not None else None
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120, env=env)

    def new_database(self) -> str:
        self._n += 1
        name = f"cas_{os.getpid()}_{self._n}"
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class CasProcess:
    data_dir: Path
    db_url: str | None
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    extra_args: tuple[str, ...] = ()
    pythonpath: Path | None = None  # the confide sources to run (default: this checkout's src)

    def start(self) -> CasProcess:
        env_file = self.data_dir / "client.env"
        env_file.unlink(missing_ok=True)
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        args = [sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", "--dev"]  # fmt: skip
        if self.db_url:
            args += ["--db", self.db_url]
        args += list(self.extra_args)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(self.pythonpath or ROOT / "src")},
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            if env_file.exists():
                self.env = {}
                for line in env_file.read_text().splitlines():
                    key, _, value = line.removeprefix("export ").partition("=")
                    self.env[key] = value.strip("'")
                if self._ready():
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"CAS exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)  # started in about a second: a coarser poll adds its half on average
        raise RuntimeError("CAS did not start")

    def _ready(self) -> bool:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=self.env["CONFIDE_CAS_CERT"])
        try:
            with urllib.request.urlopen(
                self.env["CONFIDE_CAS_URL"] + "/v1/health", context=ctx, timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_with_public_listener(data_dir: Path) -> tuple[CasProcess, str]:
    """A CAS (SQLite, no extra options) serving its public HTTP listener on a port found free, or
    on another when that one was taken before the CAS bound it (its URL goes into certificates,
    so the CAS cannot pick it itself); the CAS and the listener's base URL."""
    for attempt in range(5):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        args = ("--public-http-listen", f"127.0.0.1:{port}", "--public-url", base)
        try:
            return CasProcess(data_dir, None, extra_args=args).start(), base
        except RuntimeError as exc:
            if "--public-http-listen: cannot bind" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("not reached")


@contextmanager
def running_cas(data_dir: Path, db_url: str | None) -> Iterator[CasProcess]:
    cas = CasProcess(data_dir, db_url).start()
    try:
        yield cas
    finally:
        cas.stop()


def log_size(env: dict[str, str]) -> int:
    """The tree size of the CAS log's latest signed checkpoint (0 when there is none yet)."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=env["CONFIDE_CAS_CERT"])
    try:
        with urllib.request.urlopen(env["CONFIDE_LOG_URL"] + "/checkpoint", context=ctx, timeout=30) as r:
            return int(r.read().decode().split("\n")[1])
    except urllib.error.HTTPError:
        return 0


def wait_for_log(env: dict[str, str], min_size: int, timeout: float = 30.0) -> int:
    """Wait until a signed checkpoint covers ``min_size`` entries (the CAS signs within a second;
    a loaded CI machine may take longer)."""
    deadline = time.time() + timeout
    while True:
        size = log_size(env)
        if size >= min_size or time.time() > deadline:
            return size
        time.sleep(0.05)
