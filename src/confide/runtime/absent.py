"""``confide run``: the rule for components the simulated TEE measured as absent.

``confide run --tee sim`` measures its command before it attests, so before any protected
volume is mounted; a program, ``#!`` interpreter or argument file that only the volume provides
is measured as *absent* (docs/simulator.md, "Absent components"). The measurement then says
nothing about its content: the volume's tag, which the CAS released, does. So after the volumes
are mounted, and before anything is executed:

- an absent program or interpreter must resolve (symlinks followed) to a regular file inside a
  protected volume mounted by this run;
- the ``#!`` chain of such a file (its interpreters, env's target) was not measured either:
  each link must be inside a protected volume too, or be a file the measurement covered (same
  resolved path, same SHA-384 now). Measuring it now would not be attestation (the evidence is
  already sent), so anything else is refused;
- an absent argument file that exists now must be inside a protected volume (one that is still
  missing is allowed: the program may create it, and it reads nothing unmeasured from it).

A violation is a :class:`~confide.errors.MeasurementError` with a one-line reason; nothing is
executed. For an absent program the resolved path that was checked is what is executed.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

from confide.errors import MeasurementError, UsageError
from confide.sim.measure import Measurement, is_under, measure_chain

__all__ = ["check_absent"]


def _inside(real: str, regions: Sequence[str]) -> bool:
    return any(is_under(real, region) for region in regions)


def _real(path: str) -> str | None:
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return None


def _check_chain(
    real: str, what: str, measured: Measurement, regions: Sequence[str], search_path: str | None, cwd: str
) -> None:
    present = {(link.path, link.sha384) for link in measured.chain if not link.absent}
    try:
        chain = measure_chain(real, search_path=search_path, cwd=cwd)
    except UsageError as exc:
        raise MeasurementError(
            f"{what} was measured as absent and cannot be checked now: {exc.message}"
        ) from None
    for link in chain:
        if not _inside(link.path, regions) and (link.path, link.sha384) not in present:
            raise MeasurementError(
                f"{what} was measured as absent; its {link.role} {link.path} is neither inside a protected "
                "volume nor part of the measurement (run it as INTERPRETER SCRIPT, or put the interpreter "
                "into the volume)"
            )


def check_absent(
    measured: Measurement,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    regions: Sequence[Path],
) -> str | None:
    """Apply the rule (module documentation) after the volumes in ``regions`` are mounted.

    ``argv`` is what will be executed (the measured command or the policy's, which the CAS
    already required to be the same program). Returns the real path to execute when the
    program was measured absent, else None (the usual resolution applies)."""
    if not measured.absent:
        return None
    base = cwd or os.getcwd()
    search_path = env.get("PATH")
    roots = [r for r in (_real(str(region)) for region in regions) if r is not None]
    executable: str | None = None
    for link in measured.chain:
        if not link.absent:
            continue
        what = f"the {link.role} {link.path}"
        real = _real(link.path)  # absolute: the path as named, joined to the measuring directory
        if link.role == "program" and real is not None:
            # what will be executed must be the file measured as absent (the policy may name it)
            run = _real(posixpath.join(base, argv[0])) if "/" in argv[0] else None
            if run != real:
                raise MeasurementError(
                    f"{what} was measured as absent, but {argv[0]} is to be run; they must be the same file"
                )
        if real is None:
            raise MeasurementError(
                f"{what} was measured as absent and does not exist after mounting the volumes"
            )
        if not _inside(real, roots):
            raise MeasurementError(
                f"{what} was measured as absent and resolves to {real}, which is not inside a protected "
                "volume mounted by this run"
            )
        if not os.path.isfile(real) or not os.access(real, os.X_OK):
            raise MeasurementError(f"{what} resolves to {real}, which is not an executable regular file")
        _check_chain(real, what, measured, roots, search_path, base)
        if link.role == "program":
            executable = real
    for item in measured.files:
        if not item.absent:
            continue
        real = _real(posixpath.join(base, measured.argv[item.arg]))
        if real is not None and not _inside(real, roots):
            raise MeasurementError(
                f"the argument file {measured.argv[item.arg]} was measured as absent and now resolves to "
                f"{real}, which is not inside a protected volume mounted by this run"
            )
    return executable
