"""A CAS served as its own process (``cas serve --dev`` on a free loopback port), for the
benchmarks that load it over HTTPS (``attest_load.py``, ``online_rotation.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_cas(
    work: Path, *options: str, prefix: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """The CAS on ``work/cas`` (its log in ``work/cas.log``) with ``options`` added to ``cas
    serve``, run under ``prefix`` (e.g. ``taskset -c N``); returns the process and its
    ``client.env`` (``CONFIDE_CAS_URL``, ``CONFIDE_CAS_CERT``, ``CONFIDE_SIM_DIR``, ...), read
    once the CAS wrote it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "confide", "cas", "serve", "--data-dir", str(work / "cas"),
         "--listen", "127.0.0.1:0", "--dev", *options],
        stdout=subprocess.DEVNULL, stderr=(work / "cas.log").open("wb"), env=env,
    )  # fmt: skip
    client_env = work / "cas" / "client.env"
    for _ in range(600):
        if client_env.exists():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    out = {}
    for line in client_env.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        out[k] = v.strip("'")
    return proc, out
