"""confide.runtime.run: exit status, injection failures, the measured program, malformed releases."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from confide.runtime.run import Launch, supervise


def test_supervise_reports_a_program_killed_by_a_signal_as_128_plus_n() -> None:
    plan = Launch(["/bin/sh", "-c", "kill -KILL $$"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 128 + signal.SIGKILL  # type: ignore[arg-type]  # no volumes: no CAS call
    plan = Launch(["/bin/sh", "-c", "exit 3"], {"PATH": "/bin:/usr/bin"}, {}, None)
    assert supervise(plan, None) == 3  # type: ignore[arg-type]
