"""Cost of restoring modification times in `open_volume`: many small files, with vs without.

    .venv/bin/python bench/volume_times.py [--files 4000] [--size 1024] [--rounds 15]

A volume of --files files of --size bytes (in 64 directories, plus one symlink per directory)
is opened into /dev/shm over and over. Variant A is `open_volume` as shipped (one `futimens`
per file, one `utimensat` per symlink and directory: docs/volume-format.md, "What verify/open
check"); variant B is the same call with `os.utime` replaced by a no-op for its duration, i.e.
the open of format version 1, which restored no times. The rounds alternate A and B; only the
`open_volume` call is timed (the removal of the output is not). Prints each variant's 10th
percentile and median, and the ratio B/A (1.0 = no cost).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from confide.volume import VolumeKey, add_sources, create_volume, open_volume, seal_volume


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--shm", type=Path, default=Path("/dev/shm"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="confide-bench-times-", dir=args.workdir))
    try:
        src = work / "src"
        for i in range(args.files):
            d = src / f"d{i % 64:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(i.to_bytes(4, "little") * (args.size // 4))
        for d in src.iterdir():
            os.symlink("f0", d / "link")
        key = VolumeKey.generate()
        vol = work / "vol"
        create_volume(vol, key)
        add_sources(vol, key, [src])
        tag = seal_volume(vol, key)
        real_utime = os.utime

        def no_utime(*_a: object, **_k: object) -> None:
            return None

        def one(restore_times: bool) -> float:
            target = Path(tempfile.mkdtemp(prefix="confide-bench-open-", dir=args.shm))
            os.rmdir(target)
            if not restore_times:
                os.utime = no_utime  # type: ignore[assignment]
            try:
                t = time.perf_counter()
                open_volume(vol, key, target, tag)
                dt = time.perf_counter() - t
            finally:
                os.utime = real_utime
                shutil.rmtree(target, ignore_errors=True)
            return dt

        one(True)
        one(False)  # warm-up
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(one(True))
            b.append(one(False))
        a.sort()
        b.sort()
        k = len(a) // 10
        n = args.files + 2 * 64
        print(f"open_volume of {args.files} files x {args.size} B + 64 dirs + 64 symlinks ({n} entries), "
              f"{args.rounds} alternating rounds")  # fmt: skip
        print(
            f"  A with times (shipped):     p10 {a[k] * 1e3:8.1f} ms  median {statistics.median(a) * 1e3:8.1f} ms"
        )
        print(
            f"  B without times (no utime): p10 {b[k] * 1e3:8.1f} ms  median {statistics.median(b) * 1e3:8.1f} ms"
        )
        print(f"  ratio B/A: p10 {b[k] / a[k]:.3f}  median {statistics.median(b) / statistics.median(a):.3f}")
        print(f"  per entry: {(a[k] - b[k]) / n * 1e6:+.2f} us (p10 difference)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
