"""Reading a TDX CC event log from disk (``confide evidence verify --platform tdx --event-log``).

``--event-log`` names a directory (or a single file). Recognised file names:

* ``ccel_table.dat``: the CCEL ACPI table, as the guest reads it from
  ``/sys/firmware/acpi/tables/CCEL`` (56 bytes, checksum verified);
* ``ccel_data.dat``: the log area, as read from ``/sys/firmware/acpi/tables/data/CCEL``
  (usually the whole LAML-sized area, padded with 0xFF);
* ``eventlog.bin``: a bare TCG crypto-agile event log (used only if ``ccel_data.dat`` is absent).

The table is optional: without it the log is parsed on its own (no LAML bound, no CC type
check). With a table but no log, or with neither, a :class:`UsageError` says what is missing.
The quote's RTMRs are compared by the caller through :func:`confide.verify.eventlog.verify_event_log`.
"""

from __future__ import annotations

from pathlib import Path

from confide.errors import UsageError
from confide.evidence.ccel import MAX_LOG_SIZE, CcelTable, EventLog

__all__ = ["EVENT_LOG_FILE_NAMES", "TABLE_FILE_NAME", "load_event_log"]

TABLE_FILE_NAME = "ccel_table.dat"
EVENT_LOG_FILE_NAMES = ("ccel_data.dat", "eventlog.bin")
_MAX_TABLE_FILE = 4096


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(f"{path} is larger than {limit} bytes")
    return data


def load_event_log(path: Path) -> EventLog:
    """Parse the CCEL table (if present) and the event log found at ``path``.

    ``path`` is a directory holding the files named in the module docstring, or a single
    event-log file. Raises :class:`UsageError` for missing/unreadable files and
    :class:`~confide.errors.ParseError` for malformed contents.
    """
    if path.is_file():
        return EventLog.from_bytes(_read(path, MAX_LOG_SIZE))
    if not path.is_dir():
        raise UsageError(f"event log {path} does not exist")
    table_path = path / TABLE_FILE_NAME
    table = CcelTable.from_bytes(_read(table_path, _MAX_TABLE_FILE)) if table_path.is_file() else None
    for name in EVENT_LOG_FILE_NAMES:
        log_path = path / name
        if log_path.is_file():
            return EventLog.from_bytes(_read(log_path, MAX_LOG_SIZE), table=table)
    raise UsageError(f"no event log in {path}: expected one of {', '.join(EVENT_LOG_FILE_NAMES)}")
