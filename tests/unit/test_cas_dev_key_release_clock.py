"""The clock of ``cas serve``'s key releases and successor documents
(``confide.cas.server._key_release_clock``): the system clock, moved by
``$CONFIDE_DEV_KEY_RELEASE_CLOCK_SKEW_FILE`` with ``--dev`` only (docs/cas.md "Test knobs")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from confide.cas.server import DEV_KEY_RELEASE_CLOCK_SKEW_ENV, _key_release_clock
from confide.errors import UsageError


def test_without_the_variable_the_clock_is_the_system_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, raising=False)
    assert _key_release_clock(dev=False) is time.time
    assert _key_release_clock(dev=True) is time.time


def test_the_variable_is_refused_without_dev(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(tmp_path / "skew"))
    with pytest.raises(UsageError, match="development knob: it needs --dev"):
        _key_release_clock(dev=False)


def test_with_dev_the_file_is_read_at_each_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    skew = tmp_path / "skew"
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(skew))
    clock = _key_release_clock(dev=True)
    before = time.time()
    assert before <= clock() <= time.time()  # no file yet: no skew
    skew.write_text("3600")
    before = time.time()
    assert before + 3600 <= clock() <= time.time() + 3600
    for bad in ("", "soon", "nan", "inf"):
        skew.write_text(bad)
        with pytest.raises(UsageError, match="is not a number of seconds"):
            clock()
