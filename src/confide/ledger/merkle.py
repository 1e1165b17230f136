"""RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

Hashing (RFC 9162 §2.1.1, identical to RFC 6962 §2.1)::

    MTH({})        = SHA-256()
    leaf hash      = SHA-256(0x00 || entry)
    node hash      = SHA-256(0x01 || left || right)
    MTH(D[0:n])    = node(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n

Proof *generation* reads hashes of complete subtrees through a :class:`NodeSource` (the
store answers from its tiles, a client from tiles fetched over the network), so it never
recomputes the tree: a proof costs O(log n) node reads.

Proof *verification* follows the algorithms of RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
(consistency) step by step; the step numbers are in the comments.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Protocol

from confide.errors import ConsistencyError, EntryMismatchError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "NodeSource",
    "consistency_proof",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "mth",
    "root_from_inclusion_proof",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def hash_leaf(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x00 || entry)``."""
    return _sha256(LEAF_PREFIX + entry).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _largest_pow2_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n`` >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class NodeSource(Protocol):
    """Read access to the hashes of *complete* subtrees of a tree.

    ``node(height, index)`` is ``MTH(D[index * 2**height : (index + 1) * 2**height])``;
    it is only asked for ranges that lie entirely within the tree.
    """

    def node(self, height: int, index: int) -> bytes: ...


def subtree_hash(source: NodeSource, begin: int, end: int) -> bytes:
    """``MTH(D[begin:end])`` for a range whose start is aligned as in RFC 9162's recursion.

    A complete aligned subtree is one node read; otherwise the range is split at the
    largest power of two below its size, as in §2.1.1, so at most O(log n) nodes are read.
    """
    n = end - begin
    if n <= 0:
        raise ValueError(f"empty range [{begin}, {end})")
    if n & (n - 1) == 0 and begin % n == 0:
        return source.node(n.bit_length() - 1, begin // n)
    k = _largest_pow2_below(n)
    return hash_children(subtree_hash(source, begin, begin + k), subtree_hash(source, begin + k, end))


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over entries held in memory (reference and tests)."""
    rng = CompactRange()
    for entry in leaves:
        rng.append(hash_leaf(entry))
    return rng.root()


class CompactRange:
    """Streaming MTH: the hashes of the perfect subtrees of ``D[0:size]``, O(log n) memory."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self.size = 0

    def append(self, leaf_hash: bytes) -> None:
        self._stack.append(leaf_hash)
        self.size += 1
        n = self.size
        while n & 1 == 0:
            right = self._stack.pop()
            left = self._stack.pop()
            self._stack.append(hash_children(left, right))
            n >>= 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            acc = hash_children(h, acc)
        return acc


# --- generation --------------------------------------------------------------------------


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(m, D[0:n])`` read from ``source``."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} not in a tree of size {size}")
    proof: list[bytes] = []
    begin, end, m = 0, size, index
    # Walk down from the root; collect siblings, then reverse (PATH lists leaf-side first).
    while end - begin > 1:
        k = _largest_pow2_below(end - begin)
        if m < k:
            proof.append(subtree_hash(source, begin + k, end))
            end = begin + k
        else:
            proof.append(subtree_hash(source, begin, begin + k))
            begin += k
            m -= k
    proof.reverse()
    return proof


def consistency_proof(source: NodeSource, size1: int, size2: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(m, D[0:n])`` read from ``source``.

    Empty for ``size1 == 0`` or ``size1 == size2`` (nothing to prove).
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"consistency proof from size {size1} to {size2}: sizes must not decrease")
    if size1 in (0, size2):
        return []
    proof: list[bytes] = []
    # SUBPROOF(m, D[begin:end], b), iteratively; the tail elements are collected reversed.
    begin, end, m, b = 0, size2, size1, True
    while m != end - begin:
        n = end - begin
        k = _largest_pow2_below(n)
        if m <= k:
            proof.append(subtree_hash(source, begin + k, end))
            end = begin + k
        else:
            proof.append(subtree_hash(source, begin, begin + k))
            begin += k
            m -= k
            b = False
    if not b:
        proof.append(subtree_hash(source, begin, end))
    proof.reverse()
    return proof


# --- verification ------------------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ConsistencyError(f"{what}: got {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-5: the root implied by an inclusion proof.

    Raises :class:`EntryMismatchError` when the proof has the wrong shape for
    ``(index, size)``.
    """
    # 1. leaf_index >= tree_size: fail.
    if not 0 <= index < size:
        raise EntryMismatchError(f"inclusion proof: leaf index {index} not in a tree of size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise EntryMismatchError(f"inclusion proof: leaf hash is {len(leaf_hash)} bytes, expected 32")
    # 2. fn = leaf_index, sn = tree_size - 1.
    fn, sn = index, size - 1
    # 3. r = hash.
    r = leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        if len(p) != HASH_SIZE:
            raise EntryMismatchError(f"inclusion proof: element of {len(p)} bytes, expected 32")
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            raise EntryMismatchError(f"inclusion proof for leaf {index} of {size}: too many elements")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. r = HASH(0x01 || p || r)
            r = hash_children(p, r)
            # ii. If LSB(fn) is not set, right-shift both fn and sn equally until either
            #     LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: r = HASH(0x01 || r || p)
            r = hash_children(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0 (the root comparison is done by the caller).
    if sn != 0:
        raise EntryMismatchError(f"inclusion proof for leaf {index} of {size}: too few elements")
    return r


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises :class:`EntryMismatchError` unless the proof holds."""
    computed = root_from_inclusion_proof(index, size, leaf_hash, proof)
    # 5. ... compare r against the root_hash; if equal, the proof has been verified.
    if not hmac.compare_digest(computed, root):
        raise EntryMismatchError(
            f"inclusion proof for leaf {index} of {size}: computed root {computed.hex()}, "
            f"expected {root.hex()}"
        )


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises :class:`ConsistencyError` unless ``root2`` extends ``root1``."""
    _check_hash(root1, "first root")
    _check_hash(root2, "second root")
    for p in proof:
        _check_hash(p, "consistency proof element")
    # §2.1.4.2 is defined for trees of sizes 0 <= first <= second; a negative size names no tree.
    if size1 < 0 or size2 < 0:
        raise ConsistencyError(f"consistency proof from size {size1} to {size2}: sizes must not be negative")
    if size1 > size2:
        raise ConsistencyError(f"consistency proof: size {size2} is smaller than {size1}")
    # §2.1.1: the tree of size 0 has one root, MTH({}) = SHA-256(); a "first tree" of size 0 with
    # any other root is no tree, and nothing is a prefix of it (sigsum's verifier asks the same).
    if size1 == 0 and not hmac.compare_digest(root1, EMPTY_ROOT):
        raise ConsistencyError(f"the tree of size 0 has root {EMPTY_ROOT.hex()}, got {root1.hex()}")
    if size1 == size2:
        if proof:
            raise ConsistencyError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(root1, root2):
            raise ConsistencyError(
                f"two different roots for tree size {size1}: {root1.hex()} and {root2.hex()}"
            )
        return
    if size1 == 0:
        # The empty tree is a prefix of every tree.
        if proof:
            raise ConsistencyError("consistency proof from the empty tree must be empty")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:
        raise ConsistencyError(f"empty consistency proof from {size1} to {size2}")
    path = list(proof)
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = size1 - 1, size2 - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ConsistencyError(f"consistency proof from {size1} to {size2}: too many elements")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr); set sr to HASH(0x01 || c || sr).
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: set sr to HASH(0x01 || sr || c).
            sr = hash_children(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. After completing iterating through the consistency_path array as described above,
    #    verify that the fr calculated is equal to the first_hash supplied, that the sr
    #    calculated is equal to the second_hash supplied, and that sn is 0.
    if sn != 0:
        raise ConsistencyError(f"consistency proof from {size1} to {size2}: too few elements")
    if not hmac.compare_digest(fr, root1):
        raise ConsistencyError(
            f"tree of size {size2} does not extend the tree of size {size1}: the proof gives "
            f"old root {fr.hex()}, expected {root1.hex()}"
        )
    if not hmac.compare_digest(sr, root2):
        raise ConsistencyError(
            f"tree of size {size2} does not extend the tree of size {size1}: the proof gives "
            f"new root {sr.hex()}, expected {root2.hex()}"
        )
