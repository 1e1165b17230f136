"""Unmount of a writable tmpfs/shm volume mount: re-seal after a small change to a large file,
or after a touch that leaves its bytes as they were, against what the previous code did for
the same file (re-encrypt or copy it whole into a new object), in the same run.

    .venv/bin/python bench/volume_reseal.py [--size-mib 64] [--chunk-kib 64] [--rounds 5] [--workdir /var/tmp]

A protected volume (encrypted region, ``plain/`` unprotected) under --workdir (a disk file
system by default, so the fsyncs are real) holds files of --size-mib MiB with the same
bytes: ``db.bin`` chunked (format version 3; converted by a writable FUSE session's
operations, not timed), ``conv0`` .. ``conv<rounds-1>`` and ``ref.bin`` as one object
(version 2), and ``plain/u.bin`` (unprotected, one object). The volume is decrypted into a
directory under /dev/shm as a writable tmpfs mount does (``open_volume``, then the mount's
snapshot of inodes, sizes and times); per round each case below changes one file of the
copy, then the unmount's re-seal runs and is timed (``mount._reseal_tree``: walk, new
objects of the changed file, manifest sealed, unreferenced objects deleted):

  * "chunked, 100 B": 100 bytes written in place at a random offset of ``db.bin``: its
    chunks are compared with the authenticated sealed chunks, the differing one sealed anew;
  * "one object, 1st unmount": the same change to ``conv<round>`` (one object): converted to
    chunks (every chunk written once);
  * "one object, 2nd unmount": another 100-byte change of the same ``conv<round>``, now
    chunked: only the changed chunk is sealed;
  * "previous code, 100 B": the same change to ``ref.bin``, sealed the way the previous code
    did at every unmount: re-encrypted whole under a new file id (``store._store_file``),
    then the manifest sealed (``seal_entries``) — the same calls, without the walk of the
    eight files;
  * "touch": ``os.utime`` (now) of ``ref.bin`` or of ``plain/u.bin``, bytes unchanged:
    compared with the sealed object (protected: authenticated first) and kept, against the
    previous code's whole rewrite;
  * "unprotected, 100 B": 100 bytes changed in ``plain/u.bin``: compared (up to the first
    difference) then copied whole, against the copy alone.

Printed: median and min milliseconds per re-seal, median bytes written to the objects
directory, and the ratios. The mount's own decryption and teardown are not timed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from confide.volume import Region, RegionRule, VolumeKey, add_sources, create_volume, open_volume, seal_volume
from confide.volume._fusefs import VolumeFS, seal
from confide.volume.format import Manifest, clamp_mtime_ns
from confide.volume.mount import _reseal_tree, _snapshot
from confide.volume.reader import VolumeReader
from confide.volume.store import OBJECTS_DIR, _store_file, load_sealed, seal_entries

MiB = 1 << 20


def _objects(vol: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (vol / OBJECTS_DIR).iterdir()}


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:9.2f} ms (min {min(samples) * 1e3:8.2f})"


def _previous_reseal(vol: Path, key: VolumeKey, manifest: Manifest, tree: Path, path: str) -> str:
    """What the previous code's unmount did for one changed one-object file: a new object of
    the whole file under a new file id, then the manifest sealed."""
    prev = manifest.by_path()[path]
    p = tree / path
    fid, size, root, _ = _store_file(vol, key, manifest, path, p, region=prev.region, deterministic=False)
    st = p.lstat()
    e = replace(prev, file_id=fid, size=size, root=root, mtime_ns=clamp_mtime_ns(st.st_mtime_ns))
    return seal_entries(vol, key, manifest, [e if x.path == path else x for x in manifest.entries])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
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
        (src / "plain").mkdir(parents=True)
        (src / "db.bin").write_bytes(os.urandom(size))
        for name in [*(f"conv{i}" for i in range(args.rounds)), "ref.bin", "plain/u.bin"]:
            os.link(src / "db.bin", src / name)
        key = VolumeKey.generate()
        vol = root / "vol"
        create_volume(vol, key, chunk_size=cs, rules=[RegionRule("plain", Region.UNPROTECTED)])
        add_sources(vol, key, [src])
        tag = seal_volume(vol, key)
        reader = VolumeReader(vol, key, tag)
        fs = VolumeFS(reader, key, writable=True)
        fh = fs.open("/db.bin", os.O_RDWR)
        fs.write("/db.bin", reader.read("db.bin", 0, 1), 0, fh)  # the conversion to chunks: not timed
        fs.release("/db.bin", fh)
        tag = seal(fs)
        reader.close()
        manifest, tag = load_sealed(vol, key, tag)
        assert manifest.by_path()["db.bin"].chunks is not None
        assert manifest.by_path()["ref.bin"].chunks is None

        open_volume(vol, key, tree, tag)
        times: dict[str, list[float]] = {}
        written: dict[str, list[int]] = {}

        def change(path: str) -> None:
            fd = os.open(tree / path, os.O_RDWR)
            try:
                os.pwrite(fd, rng.randbytes(100), rng.randrange(size - 100))
            finally:
                os.close(fd)

        def touch(path: str) -> None:
            os.utime(tree / path)

        def case(label: str, path: str, edit: Callable[[str], None], previous: bool = False) -> None:
            nonlocal manifest, tag
            baseline = _snapshot(tree)
            before = _objects(vol)
            edit(path)
            t = time.perf_counter()
            if previous:
                new_tag = _previous_reseal(vol, key, manifest, tree, path)
            else:
                new_tag = _reseal_tree(vol, key, manifest, tag, tree, baseline)
            times.setdefault(label, []).append(time.perf_counter() - t)
            after = _objects(vol)
            written.setdefault(label, []).append(sum(n for name, n in after.items() if name not in before))
            assert new_tag != tag
            manifest, tag = load_sealed(vol, key, new_tag)

        for i in range(args.rounds):
            case("chunked, 100 B", "db.bin", change)
            case("previous code, 100 B", "ref.bin", change, previous=True)
            case("one object, 1st unmount (converted)", f"conv{i}", change)
            case("one object, 2nd unmount (chunked)", f"conv{i}", change)
            case("protected one object, touch", "ref.bin", touch)
            case("previous code, touch", "ref.bin", touch, previous=True)
            case("unprotected, touch", "plain/u.bin", touch)
            case("previous code, unprotected touch", "plain/u.bin", touch, previous=True)
            case("unprotected, 100 B", "plain/u.bin", change)
            case("previous code, unprotected 100 B", "plain/u.bin", change, previous=True)
        by_path = manifest.by_path()
        assert by_path["ref.bin"].chunks is None and all(
            by_path[f"conv{i}"].chunks for i in range(args.rounds)
        )

        print(f"file {args.size_mib} MiB, chunk {args.chunk_kib} KiB, {args.rounds} rounds, workdir {tmp}")
        for label, samples in times.items():
            print(f"re-seal, {label:<36} {_ms(samples)}  {statistics.median(written[label]):>12,.0f} bytes")

        def ratio(before: str, after: str) -> str:
            t = statistics.median(times[before]) / statistics.median(times[after])
            b, a = statistics.median(written[before]), statistics.median(written[after])
            return f"{t:.1f}x time, " + (f"{b / a:.0f}x bytes" if a else f"{b:,.0f} bytes -> 0")

        print(
            "ratio previous code / 2nd unmount after a 100-byte change:",
            ratio("previous code, 100 B", "one object, 2nd unmount (chunked)"),
        )
        print(
            "ratio previous code / 1st unmount (conversion):          ",
            ratio("previous code, 100 B", "one object, 1st unmount (converted)"),
        )
        print(
            "ratio previous code / chunked file, 100 B:               ",
            ratio("previous code, 100 B", "chunked, 100 B"),
        )
        print(
            "ratio previous code / now, touch of a protected file:   ",
            ratio("previous code, touch", "protected one object, touch"),
        )
        print(
            "ratio previous code / now, touch of an unprotected file:",
            ratio("previous code, unprotected touch", "unprotected, touch"),
        )
        print(
            "ratio previous code / now, unprotected 100 B:           ",
            ratio("previous code, unprotected 100 B", "unprotected, 100 B"),
        )


if __name__ == "__main__":
    main()
