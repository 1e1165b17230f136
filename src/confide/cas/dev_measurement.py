"""The simulated measurement of a ``cas serve --dev`` process: the code the CAS runs.

A real TEE measures the code it loads (SGX MRENCLAVE, TDX MR_TD and RTMRs, the SEV-SNP launch
digest), not the operator's command line. :func:`cas_dev_measurement` does the same for the
development CAS: SHA-384 over the canonical JSON (:func:`confide.sim.measure.canonical_json`) of

    {"interpreter": SHA-384 of the Python executable, "kind": "confide-cas-dev-measurement",
     "package": [{"path": relative path, "sha384": ...}, ...], "version": 1}

where ``package`` lists every regular file of the installed ``confide`` package (sorted by
path, ``__pycache__`` and ``*.pyc`` left out: they are derived from the sources). Two dev CAS
processes running the same code on the same interpreter therefore report the same measurement,
whatever their data directories, addresses and options; a changed source file changes it.
Not covered (the simulator is no TEE): the other installed packages, shared libraries, the
environment. The attested master-key release (:mod:`confide.cas.key_release`) compares it, and
so does ``confide cas attest --measurement``; it is simulated evidence all the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import cache
from pathlib import Path

import confide
from confide.errors import UsageError
from confide.sim.measure import canonical_json

__all__ = ["MEASUREMENT_KIND", "cas_dev_measurement", "measure_package"]

MEASUREMENT_KIND = "confide-cas-dev-measurement"
_VERSION = 1
_MAX_FILES = 20000  # far above the package's few hundred files: bounds a wrong root


def _sha384(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha384").hexdigest()


def measure_package(package_dir: Path, interpreter: Path) -> bytes:
    """The 48-byte measurement of the code in ``package_dir`` run by ``interpreter`` (module
    docstring). Symbolic links inside the package are not followed (their target is not hashed)."""
    files: list[dict[str, str]] = []
    try:
        for root, dirs, names in os.walk(package_dir):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                path = Path(root) / name
                if name.endswith(".pyc") or path.is_symlink() or not path.is_file():
                    continue
                files.append({"path": path.relative_to(package_dir).as_posix(), "sha384": _sha384(path)})
                if len(files) > _MAX_FILES:
                    raise UsageError(f"{package_dir}: more than {_MAX_FILES} files, not a package directory")
        interpreter_sha = _sha384(interpreter)
    except OSError as exc:
        raise UsageError(f"cannot measure the CAS's code: {exc.strerror or exc}") from None
    files.sort(key=lambda f: f["path"])
    manifest = {
        "interpreter": interpreter_sha,
        "kind": MEASUREMENT_KIND,
        "package": files,
        "version": _VERSION,
    }
    return hashlib.sha384(canonical_json(manifest)).digest()


@cache
def cas_dev_measurement() -> bytes:
    """The measurement of this process's ``confide`` package and interpreter (computed once)."""
    return measure_package(Path(confide.__file__).resolve().parent, Path(os.path.realpath(sys.executable)))
