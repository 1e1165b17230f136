"""The cost of the entry salt on the CAS's hot path: the two ledger entries of an accepted
attestation (``attestation`` and ``secret.released``, real payloads of a simulated attestation),
encoded as ``LedgerEventSink.record_many`` encodes them (one ``os.urandom`` draw for both salts,
then ``encode_entry`` per entry), against the peer: the same two entries encoded by another
checkout's ``encode_entry`` (``--base DIR``, e.g. a worktree of ``main``: unsalted version 1
entries), interleaved round by round in the same process.

Also printed: ``os.urandom(32)`` alone (the draw), and ``sha256(0x00 || entry)`` of both entries
(RFC 9162 §2.1.1: the leaf hashes the append computes, which grow with the entry).

    flock -x /tmp/confide-cpu.lock env PYTHONPATH=src .venv/bin/python bench/ledger_salt.py --base /work/main
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from confide.ledger import encoding

TIME = "2026-12-06T12:00:00.123456Z"
MEASUREMENT = "ab" * 48
POLICY_HASH = "ae1fe82187b7f6744d586b75c58d04f2778459c6152ebdd9bc95a6ff1b53c6cd"
ATTESTATION: dict[str, Any] = {
    "advisories": [], "debug": False, "measurement": MEASUREMENT, "platform": "sim",
    "evidence_sha256": "777098951ec01e1cf759d21b8e77505d80d803a555c8dd172e957cf7b194dca1",
    "policy_hash": POLICY_HASH, "service": "svc", "simulated": True, "tcb_status": None,
    "tolerated": ["simulation"], "verdict": "accepted",
}  # fmt: skip
RELEASE: dict[str, Any] = {
    "measurement": MEASUREMENT, "policy_hash": POLICY_HASH,
    "runtime_key_sha256": "d813925dbf8fc8648fee5a20e4acf4f670247c9110d3b0c4893d98a647aa4adc",
    "secrets": [{"name": "token", "policy": "app", "version": 1}], "service": "svc",
}  # fmt: skip


def _load(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("base_encoding", root / "src/confide/ledger/encoding.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def salted() -> None:
    # as LedgerEventSink.record_many: one draw for the change's entries, cut in SALT_SIZE pieces
    size = encoding.SALT_SIZE
    salts = os.urandom(2 * size)
    encoding.encode_entry(encoding.EntryType.ATTESTATION, TIME, "app", ATTESTATION, salts[:size])
    encoding.encode_entry(encoding.EntryType.SECRET_RELEASED, TIME, "app", RELEASE, salts[size : 2 * size])


def per_call(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout whose encode_entry is the peer")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("-n", type=int, default=20000, help="attestations per round")
    args = ap.parse_args()
    base = _load(args.base)
    base_types = base.EntryType

    def unsalted() -> None:
        base.encode_entry(base_types.ATTESTATION, TIME, "app", ATTESTATION)
        base.encode_entry(base_types.SECRET_RELEASED, TIME, "app", RELEASE)

    new_entries = [
        encoding.encode_entry(encoding.EntryType.ATTESTATION, TIME, "app", ATTESTATION)[0],
        encoding.encode_entry(encoding.EntryType.SECRET_RELEASED, TIME, "app", RELEASE)[0],
    ]
    old_entries = [
        base.encode_entry(base_types.ATTESTATION, TIME, "app", ATTESTATION)[0],
        base.encode_entry(base_types.SECRET_RELEASED, TIME, "app", RELEASE)[0],
    ]
    print(f"entry sizes: base {[len(e) for e in old_entries]}, salted {[len(e) for e in new_entries]} bytes")

    def hashes(entries: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for e in entries:
                hashlib.sha256(b"\x00" + e).digest()

        return run

    rows: dict[str, list[float]] = {"base": [], "salted": [], "urandom(32)": [], "leaf hashes base": [],
                                    "leaf hashes salted": []}  # fmt: skip
    for _ in range(args.rounds):
        rows["base"].append(per_call(unsalted, args.n))
        rows["salted"].append(per_call(salted, args.n))
        rows["urandom(32)"].append(per_call(lambda: os.urandom(32), args.n))
        rows["leaf hashes base"].append(per_call(hashes(old_entries), args.n))
        rows["leaf hashes salted"].append(per_call(hashes(new_entries), args.n))
    print(f"µs per attestation (two entries), {args.rounds} interleaved rounds of {args.n}: median (min)")
    for name, values in rows.items():
        print(f"  {name:20} {statistics.median(values):7.2f} ({min(values):.2f})")
    ratio = statistics.median(rows["salted"]) / statistics.median(rows["base"])
    extra = statistics.median(rows["salted"]) - statistics.median(rows["base"])
    print(f"salted / base: {ratio:.3f} (+{extra:.2f} µs per attestation)")


if __name__ == "__main__":
    main()
