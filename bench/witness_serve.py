"""add-checkpoint requests a second through `confide ledger witness serve`, against a peer: the
same command from another source tree (``--baseline-src``, e.g. a checkout from before the
witness moved off the standard library's threading server) in the same run.

Each of ``--clients`` threads is one log (its own origin and key, all pinned by the witness)
posting consecutive checkpoints (size n-1 -> n, with the consistency proof) over one kept-alive
connection, for ``--seconds``; every request is a full cosignature (log signature check, proof
check, the witness's durable state write, cosignature). Bodies are built before timing. The
state write (fsync of a file and its directory, under the witness's lock) bounds both servers
on a disk; ``--state-dir /dev/shm`` takes the disk out. Prints
cosignatures a second for each server and the ratio candidate/baseline. The load generator
runs in this process (Python threads, one GIL): read the ratio, not the absolute numbers.

    flock -x /tmp/confide-cpu.lock .venv/bin/python bench/witness_serve.py --baseline-src ../main/src

A peer that has rate limits too is run without them: ``--baseline-args="--request-rate 0"``.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.merkle import consistency_proof, hash_children, hash_leaf
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner

SRC = Path(__file__).resolve().parents[1] / "src"


class _Nodes:
    """A memoised NodeSource over in-memory leaves (RFC 9162 §2.1.1)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.cache: dict[tuple[int, int], bytes] = {}

    def node(self, height: int, index: int) -> bytes:
        key = (height, index)
        value = self.cache.get(key)
        if value is None:
            if height == 0:
                value = hash_leaf(self.leaves[index])
            else:
                value = hash_children(self.node(height - 1, 2 * index), self.node(height - 1, 2 * index + 1))
            self.cache[key] = value
        return value


def _root(nodes: _Nodes, size: int) -> bytes:
    # MTH of the first `size` leaves from the memoised full subtrees (RFC 9162 §2.1.1).
    parts: list[bytes] = []
    start = 0
    for height in range(size.bit_length() - 1, -1, -1):
        if size & (1 << height):
            parts.append(nodes.node(height, start >> height))
            start += 1 << height
    root = parts[-1]
    for part in reversed(parts[:-1]):
        root = hash_children(part, root)
    return root


def _bodies(log: NoteSigner, count: int) -> list[bytes]:
    leaves = [i.to_bytes(8, "big") for i in range(count + 1)]
    nodes = _Nodes(leaves)
    out = []
    for n in range(1, count + 1):
        note = sign_checkpoint(Checkpoint(log.name, n, _root(nodes, n)), log)
        proof = consistency_proof(nodes, n - 1, n) if n > 1 else []
        lines = [f"old {n - 1}\n".encode()] + [base64.b64encode(p) + b"\n" for p in proof]
        out.append(b"".join(lines) + b"\n" + note)
    return out


def _run(
    src: Path,
    extra: list[str],
    logs: list[NoteSigner],
    bodies: list[list[bytes]],
    seconds: float,
    state_dir: str | None,
) -> float:
    with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
        witness = NoteSigner.generate("bench.example/witness", SIG_TYPE_COSIGNATURE_V1)
        key = Path(tmp) / "w.key"
        key.write_text(witness.skey + "\n")
        argv = [sys.executable, "-m", "confide", "ledger", "witness", "serve", "--state", f"{tmp}/w.json"]
        argv += ["--key", str(key), "--listen", "127.0.0.1:0", *extra]
        for log in logs:
            argv += ["--log", log.verifier.vkey]
        proc = subprocess.Popen(
            argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(src)}
        )
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        url = banner.split(" at ", 1)[1].strip()
        done = [0] * len(logs)
        stop = threading.Event()
        start = threading.Barrier(len(logs) + 1)

        def client(i: int) -> None:
            with httpx2.Client(timeout=30) as http:
                start.wait()
                for body in bodies[i]:
                    if stop.is_set():
                        break
                    resp = http.post(url, content=body)
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    done[i] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(logs))]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
        return sum(done) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the peer's src directory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--per-log", type=int, default=6000, help="checkpoints prepared per log")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--state-dir", help="where the witness state is written (default: $TMPDIR; /dev/shm: no disk flush)"
    )
    parser.add_argument(
        "--baseline-args",
        default="",
        help='options for the peer\'s witness serve ("--request-rate 0" for a peer with rate limits)',
    )
    args = parser.parse_args()
    logs = [NoteSigner.generate(f"bench.example/log{i}") for i in range(args.clients)]
    bodies = [_bodies(log, args.per_log) for log in logs]
    for r in range(args.rounds):
        base = _run(
            args.baseline_src.resolve(),
            args.baseline_args.split(),
            logs,
            bodies,
            args.seconds,
            args.state_dir,
        )
        cand = _run(SRC, ["--request-rate", "0"], logs, bodies, args.seconds, args.state_dir)
        print(
            f"round {r + 1}: {args.clients} logs, add-checkpoint/s: baseline {base:.0f}, "
            f"this tree {cand:.0f}, ratio {cand / base:.2f}x"
        )


if __name__ == "__main__":
    main()
