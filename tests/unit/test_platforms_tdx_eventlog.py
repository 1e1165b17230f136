"""Loading a CC event log from disk (confide.platforms.tdx_eventlog)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from confide.errors import ParseError, UsageError
from confide.platforms.tdx_eventlog import load_event_log
from confide.verify.eventlog import replay

ASSETS = Path(__file__).parent.parent / "assets" / "tdx-eventlog"
DATA = (ASSETS / "ccel_data.dat").read_bytes()


def _copy(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copyfile(ASSETS / name, tmp_path / name)
    return tmp_path


def test_directory_with_table_and_data(tmp_path: Path) -> None:
    log = load_event_log(_copy(tmp_path, "ccel_table.dat", "ccel_data.dat"))
    assert log.table is not None
    assert log.table.cc_type == 2
    assert len(log.events) == 43


def test_directory_with_data_only(tmp_path: Path) -> None:
    log = load_event_log(_copy(tmp_path, "ccel_data.dat"))
    assert log.table is None
    assert len(log.events) == 43


def test_directory_with_bare_eventlog_bin(tmp_path: Path) -> None:
    (tmp_path / "eventlog.bin").write_bytes(DATA[:18101])
    log = load_event_log(tmp_path)
    assert replay(log) == replay(load_event_log(_copy(tmp_path, "ccel_data.dat")))


def test_single_file(tmp_path: Path) -> None:
    assert len(load_event_log(ASSETS / "ccel_data.dat").events) == 43


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_event_log(tmp_path / "nope")
    _copy(tmp_path, "ccel_table.dat")
    with pytest.raises(UsageError, match=r"ccel_data\.dat, eventlog\.bin"):
        load_event_log(tmp_path)


def test_bad_table_in_directory(tmp_path: Path) -> None:
    _copy(tmp_path, "ccel_data.dat")
    table = bytearray((ASSETS / "ccel_table.dat").read_bytes())
    table[9] ^= 0xFF
    (tmp_path / "ccel_table.dat").write_bytes(bytes(table))
    with pytest.raises(ParseError, match="checksum"):
        load_event_log(tmp_path)


def test_garbage_log_file(tmp_path: Path) -> None:
    (tmp_path / "eventlog.bin").write_bytes(b"\x01\x00\x00\x00garbage")
    with pytest.raises(ParseError):
        load_event_log(tmp_path)
