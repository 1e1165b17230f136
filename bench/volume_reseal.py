"""Unmount of a writable tmpfs/shm volume mount after a small change to a large file: the
chunked file's changed chunks re-sealed (compared with the sealed chunks) vs the file
re-encrypted whole into a new object, in the same run.

    .venv/bin/python bench/volume_reseal.py [--size-mib 64] [--chunk-kib 64] [--rounds 9] [--workdir /var/tmp]

A protected volume (encrypted region) under --workdir (a disk file system by default, so the
fsyncs are real) holds two files of --size-mib MiB with the same bytes: ``db.bin``, chunked
(format version 3; converted by a writable FUSE session's operations, not timed), and
``whole.bin``, one object (version 2). The volume is decrypted into a directory under
/dev/shm as a writable tmpfs mount does (``open_volume``, then the mount's snapshot of
inodes, sizes and times), and per round, alternating, 100 bytes are written in place at a
random offset of one of the two files, then the unmount's re-seal runs
(``mount._reseal_tree``: walk, per changed file the new objects, the manifest sealed, the
unreferenced objects deleted), timed:

  * "chunked": ``db.bin`` changed: its chunks are compared with the authenticated sealed
    chunks and only the differing one is sealed as a new chunk object;
  * "one object": ``whole.bin`` changed: re-encrypted whole under a new file id (what the
    tmpfs mounts did for every changed file, chunked ones included, before).

Printed: median and min milliseconds per unmount re-seal, bytes written to the objects
directory, and the ratio (one object / chunked). The mount's own decryption and teardown
are not timed (the same for both).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from confide.volume import VolumeKey, add_sources, create_volume, open_volume, seal_volume
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.mount import _reseal_tree, _snapshot
from confide.volume.reader import VolumeReader
from confide.volume.store import OBJECTS_DIR, load_sealed

MiB = 1 << 20


def _objects(vol: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (vol / OBJECTS_DIR).iterdir()}


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:9.2f} ms (min {min(samples) * 1e3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    size, cs = args.size_mib * MiB, args.chunk_kib * 1024
    rng = random.Random(2)
    with (
        tempfile.TemporaryDirectory(prefix="confide-bench-reseal-", dir=args.workdir) as tmp,
        tempfile.TemporaryDirectory(prefix="confide-bench-reseal-", dir="/dev/shm") as shm,
    ):
        root, tree = Path(tmp), Path(shm) / "tree"
        src = root / "src"
        src.mkdir()
        (src / "db.bin").write_bytes(rng.randbytes(size))
        os.link(src / "db.bin", src / "whole.bin")
        key = VolumeKey.generate()
        vol = root / "vol"
        create_volume(vol, key, chunk_size=cs)
        add_sources(vol, key, [src])
        tag = seal_volume(vol, key)
        reader = VolumeReader(vol, key, tag)
        fs = VolumeFS(reader, key, writable=True)
        fh = fs.open("/db.bin", os.O_RDWR)
        fs.write("/db.bin", b"x", 0, fh)  # the conversion to chunks: not timed
        fs.release("/db.bin", fh)
        tag = seal(fs)
        reader.close()
        manifest, tag = load_sealed(vol, key, tag)
        assert manifest.by_path()["db.bin"].chunks is not None
        assert manifest.by_path()["whole.bin"].chunks is None

        open_volume(vol, key, tree, tag)
        times: dict[str, list[float]] = {"db.bin": [], "whole.bin": []}
        written: dict[str, list[int]] = {"db.bin": [], "whole.bin": []}
        for i in range(2 * args.rounds):
            path = "db.bin" if i % 2 == 0 else "whole.bin"
            baseline = _snapshot(tree)
            before = _objects(vol)
            fd = os.open(tree / path, os.O_RDWR)
            try:
                os.pwrite(fd, rng.randbytes(100), rng.randrange(size - 100))
            finally:
                os.close(fd)
            t = time.perf_counter()
            new_tag = _reseal_tree(vol, key, manifest, tag, tree, baseline)
            times[path].append(time.perf_counter() - t)
            after = _objects(vol)
            written[path].append(sum(n for name, n in after.items() if name not in before))
            assert new_tag != tag
            manifest, tag = load_sealed(vol, key, new_tag)
        chunked_after = manifest.by_path()["db.bin"].chunks is not None  # no with the previous code

        print(
            f"file {args.size_mib} MiB, chunk {args.chunk_kib} KiB, {args.rounds} rounds each, workdir {tmp}"
        )
        for label, path in (("db.bin, chunked file   ", "db.bin"), ("whole.bin, one object  ", "whole.bin")):
            print(
                f"unmount re-seal, {label}  {_ms(times[path])}  {statistics.median(written[path]):>12,.0f} bytes"
            )
        ratio = statistics.median(times["whole.bin"]) / statistics.median(times["db.bin"])
        bytes_ratio = statistics.median(written["whole.bin"]) / statistics.median(written["db.bin"])
        print(f"ratio whole.bin / db.bin (one object / chunked): {ratio:.1f}x time, {bytes_ratio:.0f}x bytes")
        print(f"db.bin still chunked after the re-seals: {'yes' if chunked_after else 'no'}")


if __name__ == "__main__":
    main()
