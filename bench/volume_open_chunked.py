"""``open_volume`` (what a tmpfs/shm mount runs) of a chunked file vs the same bytes stored as
one object, in the same run.

    .venv/bin/python bench/volume_open_chunked.py [--size-mib 256] [--chunk-kib 64] [--runs 5] [--workdir /var/tmp]

Two protected volumes (encrypted region) under --workdir hold one file of --size-mib MiB with
the same pseudo-random bytes: in ``one`` it is one object (written by ``add``, format version
2), in ``chunked`` it is chunked (format version 3, one object per chunk; converted by a
writable FUSE session's operations, not timed). Each run opens both volumes into fresh
directories under /dev/shm (``open_volume``: authenticate and decrypt every chunk, write the
plaintext), alternating which goes first, with 2 workers (the default on a 2-vCPU machine:
``min(4, cpu_count)``) and with 1 worker; 1 worker is what a chunked file got before, at
any worker count (it was decrypted in the calling thread). The backing files are warm in the
page cache (a read of every object before the runs), so this compares CPU paths.

Printed: median and best GiB/s per case, and the ratios chunked / one object (medians).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from confide.volume import VolumeKey, add_sources, create_volume, open_volume, seal_volume
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.reader import VolumeReader
from confide.volume.store import OBJECTS_DIR, load_sealed

MiB = 1 << 20


def _volume(root: Path, name: str, src: Path, cs: int, chunked: bool) -> tuple[Path, VolumeKey, str]:
    key = VolumeKey.generate()
    vol = root / name
    create_volume(vol, key, chunk_size=cs)
    add_sources(vol, key, [src])
    tag = seal_volume(vol, key)
    if chunked:
        reader = VolumeReader(vol, key, tag)
        fs = VolumeFS(reader, key, writable=True)
        fh = fs.open("/f.bin", os.O_RDWR)
        data = reader.read("f.bin", 0, 1)
        fs.write("/f.bin", data, 0, fh)  # same byte: the commit writes every chunk
        fs.release("/f.bin", fh)
        tag = seal(fs)
        reader.close()
    m, tag = load_sealed(vol, key, tag)
    assert (m.by_path()["f.bin"].chunks is not None) is chunked
    for p in (vol / OBJECTS_DIR).iterdir():  # warm the page cache
        p.read_bytes()
    return vol, key, tag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    size, cs = args.size_mib * MiB, args.chunk_kib * 1024
    with tempfile.TemporaryDirectory(prefix="confide-bench-open-", dir=args.workdir) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        (src / "f.bin").write_bytes(os.urandom(size))
        vols = {
            "one object": _volume(root, "one", src, cs, chunked=False),
            "chunked": _volume(root, "chunked", src, cs, chunked=True),
        }
        expect = (src / "f.bin").read_bytes()
        times: dict[tuple[str, int], list[float]] = {(k, w): [] for k in vols for w in (2, 1)}
        for run in range(args.runs):
            for workers in (2, 1):
                order = list(vols) if run % 2 == 0 else list(reversed(vols))
                for name in order:
                    vol, key, tag = vols[name]
                    out = Path(tempfile.mkdtemp(prefix="confide-bench-open-", dir="/dev/shm"))
                    try:
                        t = time.perf_counter()
                        open_volume(vol, key, out / "t", tag, workers=workers)
                        times[(name, workers)].append(time.perf_counter() - t)
                        if run == 0:
                            assert (out / "t" / "f.bin").read_bytes() == expect
                    finally:
                        shutil.rmtree(out)
        n_chunks = -(-size // cs)
        print(
            f"file {args.size_mib} MiB, chunk {args.chunk_kib} KiB ({n_chunks} chunk objects), {args.runs} runs"
        )
        gib = size / (1 << 30)
        for (name, workers), samples in times.items():
            med, best = gib / statistics.median(samples), gib / min(samples)
            print(f"open_volume, {name:<10}, {workers} worker(s): {med:6.2f} GiB/s median (best {best:.2f})")
        for workers in (2, 1):
            r = statistics.median(times[("one object", workers)]) / statistics.median(
                times[("chunked", workers)]
            )
            print(f"ratio chunked / one object, {workers} worker(s): {r:.2f}x")
        r = statistics.median(times[("chunked", 1)]) / statistics.median(times[("chunked", 2)])
        print(f"ratio chunked 2 workers / chunked 1 worker (the previous code's speed): {r:.2f}x")


if __name__ == "__main__":
    main()
