"""Run the ``confide`` command line as a user would: a child process of this interpreter, with
``src`` on the path, output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_confide(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    drop: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``confide ARGS``; ``env`` adds to (and ``drop`` removes from) this process's environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update({"PYTHONPATH": str(SRC), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "confide", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False,
    )  # fmt: skip
