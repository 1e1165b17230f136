"""Reference Merkle helpers for the ledger tests: the RFC 9162 definitions, literally."""

from __future__ import annotations

import hashlib
from functools import cache


@cache
def ref_mth(leaves: tuple[bytes, ...]) -> bytes:
    """RFC 9162 §2.1.1 MTH, literally."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


class MemNodes:
    """Reference NodeSource: node(h, k) straight from the RFC definition over in-memory leaves."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.reads = 0

    def node(self, height: int, index: int) -> bytes:
        self.reads += 1
        begin = index << height
        end = begin + (1 << height)
        assert end <= len(self.leaves), "asked for an incomplete subtree"
        return ref_mth(tuple(self.leaves[begin:end]))
