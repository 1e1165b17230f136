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


def test_a_file_that_cannot_be_read_or_holds_no_number_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not a UnicodeDecodeError or an OSError escaping from the key-release route (a 500):
    bytes that are not text, a directory, a text too long to be a number of seconds."""
    skew = tmp_path / "skew"
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(skew))
    clock = _key_release_clock(dev=True)
    for bad in (b"\xff\xfe", b"12\x00", b"1" * 65):
        skew.write_bytes(bad)
        with pytest.raises(UsageError, match="is not a number of seconds"):
            clock()
    skew.unlink()
    skew.mkdir()
    with pytest.raises(UsageError, match="cannot read"):
        clock()
    skew.rmdir()
    skew.write_bytes(b" 60\n")  # what `echo 60 > FILE` writes
    before = time.time()
    assert before + 60 <= clock() <= time.time() + 60


def test_the_clock_is_never_set_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The spent nonces' and evidence's rows are swept on the system clock: a key-release clock
    behind it would find them swept while they still verify (docs/cas.md "Test knobs")."""
    skew = tmp_path / "skew"
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(skew))
    clock = _key_release_clock(dev=True)
    skew.write_text("-3600")
    with pytest.raises(UsageError, match=r"is not a number of seconds \(0 or more\)"):
        clock()
    skew.write_text("0")
    before = time.time()
    assert before <= clock() <= time.time()


def test_a_bad_file_refuses_the_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    skew = tmp_path / "skew"
    skew.write_text("soon")
    monkeypatch.setenv(DEV_KEY_RELEASE_CLOCK_SKEW_ENV, str(skew))
    with pytest.raises(UsageError, match="is not a number of seconds"):
        _key_release_clock(dev=True)
