"""Callgrind's client requests for the benchmarks that count instructions: zero the counters
before a measured part and dump them after it (``CALLGRIND_ZERO_STATS``,
``CALLGRIND_DUMP_STATS_AT``), so a run's dumps hold only the measured parts, every thread
included. The macros are inline assembly (valgrind/callgrind.h), so a four-line C library is
compiled on first use with the machine's C compiler (and ``CALLGRIND_START_INSTRUMENTATION``, for
a process started with instrumentation off); outside valgrind the requests do nothing.
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

_SOURCE = """
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *what) { CALLGRIND_DUMP_STATS_AT(what); }
int cg_running(void) { return RUNNING_ON_VALGRIND; }
"""


class Callgrind:
    def __init__(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="confide-callgrind-"))
        (work / "cg.c").write_text(_SOURCE)
        try:
            subprocess.run(
                ["cc", "-shared", "-fPIC", "-O1", "-o", str(work / "cg.so"), str(work / "cg.c")],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"--callgrind needs a C compiler and valgrind's headers: {exc}") from None
        self._lib = ctypes.CDLL(str(work / "cg.so"))
        self._lib.cg_dump.argtypes = [ctypes.c_char_p]
        if not self._lib.cg_running():
            raise SystemExit(
                "--callgrind: run under `valgrind --tool=callgrind` (bench/attest_instructions.py)"
            )

    def start(self) -> None:
        """Instrumentation on (for a process started with ``--instr-atstart=no``)."""
        self._lib.cg_start()

    def zero(self) -> None:
        self._lib.cg_zero()

    def dump(self, what: str) -> None:
        self._lib.cg_dump(what.encode())
