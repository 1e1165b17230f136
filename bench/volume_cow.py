"""A small change + fsync to a large file in a writable session: chunk copy-on-write (format
version 3) vs the whole-file rewrite of the previous format, in the same run.

    .venv/bin/python bench/volume_cow.py [--size-mib 64] [--chunk-kib 64] [--rounds 15] [--workdir /var/tmp]

One file of --size-mib MiB in a protected volume (encrypted region) under --workdir (a disk
file system by default, so the fsyncs are real). A writable session (the FUSE server's
operations, ``VolumeFS``, driven in-process: the commit path without the kernel round trips)
first converts the file to chunks (not timed). Then, alternating per round:

  * "chunked commit": write 100 bytes at a random offset, then ``fsync``: the commit seals the
    one changed chunk as a new chunk object (what the writable mount does now);
  * "whole-file rewrite": the same write, then the previous format's commit: the whole file
    encrypted under a new file id into a new object (``write_object``, the code the writable
    mount ran before version 3), that object deleted afterwards.

Printed: median and min milliseconds per commit, bytes written to the volume directory per
commit, and the ratio (whole-file / chunked). Also the read side, --reads rounds: the whole
file read sequentially through ``VolumeReader.read_into`` in 1 MiB pieces, stored as one
object (version 2) and as chunk objects (version 3), in MiB/s; each round opens a new
reader (nothing cached: "first read") and reads both, in alternating order, then reads the
chunked file again through the same reader ("re-read": chunk keys cached). With /dev/fuse
usable, also the end-to-end cost through a real writable FUSE mount (``pwrite`` + ``fsync``
of 100 bytes, chunked only), and the FUSE read path: per round a fresh read-only mount
(empty kernel page cache) and both files read through it with 1 MiB reads, in alternating
order (every byte decrypted and authenticated by the FUSE server). And both files
authenticated and decrypted into /dev/shm the way ``open_volume`` (and so a tmpfs mount)
does it per file, one thread, alternating.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from confide.volume import VolumeKey, add_sources, create_volume, seal_volume
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.check import _check_file
from confide.volume.format import FILE_ID_SIZE
from confide.volume.mount import fuse_usable, mount_volume
from confide.volume.reader import VolumeReader
from confide.volume.store import load_sealed, object_path, write_object

MiB = 1 << 20


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:9.2f} ms (min {min(samples) * 1e3:.2f})"


def _runs(rates: list[float]) -> str:
    return " ".join(f"{x:.0f}" for x in rates)


def _file_rate(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(MiB)
        t = time.perf_counter()
        total = 0
        while n := os.readv(fd, [buf]):
            total += n
        return total / MiB / (time.perf_counter() - t)
    finally:
        os.close(fd)


def _read_rate(reader: VolumeReader, path: str) -> float:
    e = reader.entry(path)
    buf = memoryview(bytearray(MiB))
    t = time.perf_counter()
    off = 0
    while n := reader.read_into(e, off, buf):
        off += n
    return off / MiB / (time.perf_counter() - t)


def _decrypt_rates(
    vol: Path, key: VolumeKey, tag: str, rounds: int, size: int
) -> tuple[list[float], list[float]]:
    """Each file authenticated and decrypted into a new /dev/shm file (the step ``open_volume``
    and the tmpfs mounts run per file; no thread pool), alternating order; MiB/s."""
    m, _ = load_sealed(vol, key, tag)
    rates: dict[str, list[float]] = {"whole.bin": [], "db.bin": []}
    with tempfile.TemporaryDirectory(prefix="confide-bench-cow-", dir="/dev/shm") as shm:
        for i in range(rounds):
            for path in ("whole.bin", "db.bin") if i % 2 == 0 else ("db.bin", "whole.bin"):
                out = Path(shm) / path
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    t = time.perf_counter()
                    _check_file(vol, key, m, m.by_path()[path], out_fd=fd, pool=None)
                    rates[path].append(size / MiB / (time.perf_counter() - t))
                finally:
                    os.close(fd)
                    out.unlink()
    return rates["whole.bin"], rates["db.bin"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reads", type=int, default=7, help="rounds of the read comparison")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    size, cs = args.size_mib * MiB, args.chunk_kib * 1024
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="confide-bench-cow-", dir=args.workdir) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        (src / "db.bin").write_bytes(rng.randbytes(size))
        key = VolumeKey.generate()
        vol = root / "vol"
        create_volume(vol, key, chunk_size=cs)
        os.link(src / "db.bin", src / "whole.bin")  # the same bytes, kept as one object
        add_sources(vol, key, [src])
        tag = seal_volume(vol, key)

        reader = VolumeReader(vol, key, tag)
        fs = VolumeFS(reader, key, writable=True)
        fh = fs.open("/db.bin", os.O_RDWR)
        fs.write("/db.bin", b"x", 0, fh)
        fs.fsync("/db.bin", 0, fh)  # the conversion to chunks: not timed
        node = fs._fh[fh]
        chunked: list[float] = []
        whole: list[float] = []
        chunked_bytes: list[int] = []
        whole_bytes: list[int] = []
        for i in range(2 * args.rounds):
            off = rng.randrange(size - 100)
            fs.write("/db.bin", rng.randbytes(100), off, fh)
            if i % 2 == 0:
                before = fs.bytes_written
                t = time.perf_counter()
                fs.fsync("/db.bin", 0, fh)
                chunked.append(time.perf_counter() - t)
                chunked_bytes.append(fs.bytes_written - before)
            else:
                fid = secrets.token_bytes(FILE_ID_SIZE)
                assert node.buf_fd is not None
                t = time.perf_counter()
                src_fd = os.dup(node.buf_fd)  # as the previous _commit did
                try:
                    os.lseek(src_fd, 0, os.SEEK_SET)
                    write_object(vol, key, fs.manifest, fid, node.region, src_fd)
                finally:
                    os.close(src_fd)
                whole.append(time.perf_counter() - t)
                whole_bytes.append(object_path(vol, fid).stat().st_size)
                object_path(vol, fid).unlink()
                fs.fsync("/db.bin", 0, fh)  # keep the chunked version in step (not timed)
        fs.release("/db.bin", fh)
        tag = seal(fs)
        reader.close()
        read_whole: list[float] = []
        read_chunked: list[float] = []
        reread_chunked: list[float] = []
        for i in range(args.reads):
            with VolumeReader(vol, key, tag) as r:
                if i % 2 == 0:
                    read_whole.append(_read_rate(r, "whole.bin"))
                    read_chunked.append(_read_rate(r, "db.bin"))
                else:
                    read_chunked.append(_read_rate(r, "db.bin"))
                    read_whole.append(_read_rate(r, "whole.bin"))
                reread_chunked.append(_read_rate(r, "db.bin"))

        print(
            f"file {args.size_mib} MiB, chunk {args.chunk_kib} KiB, {args.rounds} rounds each, workdir {tmp}"
        )
        print(
            f"chunked commit (version 3)      {_ms(chunked)}  {statistics.median(chunked_bytes):>12,.0f} bytes"
        )
        print(f"whole-file rewrite (version 2)  {_ms(whole)}  {statistics.median(whole_bytes):>12,.0f} bytes")
        ratio = statistics.median(whole) / statistics.median(chunked)
        print(f"ratio whole-file / chunked: {ratio:.1f}x time, "
              f"{statistics.median(whole_bytes) / statistics.median(chunked_bytes):.0f}x bytes")  # fmt: skip
        rw, rc = statistics.median(read_whole), statistics.median(read_chunked)
        rr = statistics.median(reread_chunked)
        print(f"VolumeReader read, one object (version 2)  {rw:6.0f} MiB/s  (runs {_runs(read_whole)})")
        print(f"VolumeReader read, chunk objects (version 3) {rc:6.0f} MiB/s  (runs {_runs(read_chunked)})")
        print(f"VolumeReader re-read, chunk objects          {rr:6.0f} MiB/s  (runs {_runs(reread_chunked)})")
        print(f"ratio chunked / one object: first read {rc / rw:.2f}, re-read {rr / rw:.2f}")
        shm_whole, shm_chunked = _decrypt_rates(vol, key, tag, args.reads, size)
        sw, sc = statistics.median(shm_whole), statistics.median(shm_chunked)
        print(f"decrypt into /dev/shm (open_volume's per-file step, one thread): one object {sw:6.0f} MiB/s, "
              f"chunked {sc:6.0f} MiB/s; ratio {sc / sw:.2f}")  # fmt: skip

        why = fuse_usable()
        if why is not None:
            print(f"FUSE rows: skipped ({why})")
            return
        mnt = root / "mnt"
        mnt.mkdir()
        fuse_whole: list[float] = []
        fuse_chunked: list[float] = []
        for i in range(args.reads):
            with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse"):
                if i % 2 == 0:
                    fuse_whole.append(_file_rate(mnt / "whole.bin"))
                    fuse_chunked.append(_file_rate(mnt / "db.bin"))
                else:
                    fuse_chunked.append(_file_rate(mnt / "db.bin"))
                    fuse_whole.append(_file_rate(mnt / "whole.bin"))
        fw, fc = statistics.median(fuse_whole), statistics.median(fuse_chunked)
        print(f"FUSE read (fresh read-only mount), one object  {fw:6.0f} MiB/s  (runs {_runs(fuse_whole)})")
        print(f"FUSE read (fresh read-only mount), chunked     {fc:6.0f} MiB/s  (runs {_runs(fuse_chunked)})")
        print(f"ratio FUSE chunked / one object: {fc / fw:.2f}")
        with mount_volume(vol, key, mnt, expected_tag=tag, mode="fuse", writable=True):
            fd = os.open(mnt / "db.bin", os.O_RDWR)
            try:
                e2e: list[float] = []
                for _ in range(args.rounds):
                    data, off = rng.randbytes(100), rng.randrange(size - 100)
                    t = time.perf_counter()
                    os.pwrite(fd, data, off)
                    os.fsync(fd)
                    e2e.append(time.perf_counter() - t)
            finally:
                os.close(fd)
        print(f"FUSE end to end, pwrite 100 B + fsync (chunked)  {_ms(e2e)}")


if __name__ == "__main__":
    main()
