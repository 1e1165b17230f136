"""What the test processes share with the user and with each other (pytest-xdist runs them at
once): nothing under the user's home directory (tests/conftest.py ``_own_cache_home``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confide.collateral import cache_dir
from confide.image.sconify import _cache_dir


def test_the_caches_are_not_the_users() -> None:
    home = Path.home()
    for where in (cache_dir("kds"), cache_dir("pcs"), _cache_dir()):
        assert not where.is_relative_to(home / ".cache"), where
    # and the confide processes the tests start inherit it
    out = subprocess.run(
        [sys.executable, "-c", "from confide.collateral import cache_dir; print(cache_dir('kds'))"],
        capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    ).stdout.strip()  # fmt: skip
    assert Path(out) == cache_dir("kds")
    assert not Path(out).is_relative_to(home / ".cache")
