"""RFC 9162 proofs for every tree size 1..70 and every index / size pair, against a reference
written here from the RFC text alone (not from confide's code, nor from tests/unit/_ledger_ref).

The reference *verifiers* follow the recursive definitions of PATH (§2.1.3.1) and SUBPROOF
(§2.1.4.1) backwards: they rebuild the roots a proof implies for a claimed (index, size) or
(size1, size2), consuming exactly one proof element per recursion level. confide's verifiers
follow the iterative algorithms of §2.1.3.2 and §2.1.4.2; for every claim tried here, right or
wrong, both must agree, and every wrong one must be refused: another leaf, another index,
another size, a proof one element too short or too long, any element changed.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import pytest

from confide.errors import ConsistencyError, EntryMismatchError
from confide.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    hash_leaf,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from confide.ledger.store import Ledger, connect, write_transaction

MAX_SIZE = 70
STORED = 530  # entries in the store test: two level-0 tiles and a partial third
LEAVES = [f"entry {i}".encode() for i in range(STORED)]
ZERO = bytes(32)


class Refused(Exception):
    """The reference refuses the proof's shape."""


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """RFC 9162 §2.1.1: "k be the largest power of two smaller than n (i.e., k < n <= 2k)"."""
    k = 1
    while 2 * k < n:
        k *= 2
    return k


@cache
def ref_mth(begin: int, end: int) -> bytes:
    """RFC 9162 §2.1.1 MTH(D[begin:end]) over LEAVES."""
    n = end - begin
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + LEAVES[begin])
    k = _split(n)
    return _h(b"\x01" + ref_mth(begin, begin + k) + ref_mth(begin + k, end))


def ref_path(m: int, begin: int, end: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[begin:end])."""
    n = end - begin
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*ref_path(m, begin, begin + k), ref_mth(begin + k, end)]
    return [*ref_path(m - k, begin + k, end), ref_mth(begin, begin + k)]


def ref_subproof(m: int, begin: int, end: int, b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[begin:end], b)."""
    n = end - begin
    if m == n:
        return [] if b else [ref_mth(begin, end)]
    k = _split(n)
    if m <= k:
        return [*ref_subproof(m, begin, begin + k, b), ref_mth(begin + k, end)]
    return [*ref_subproof(m - k, begin + k, end, False), ref_mth(begin, begin + k)]


def ref_inclusion_root(m: int, n: int, leaf_hash: bytes, proof: list[bytes]) -> bytes:
    """The root PATH(m, D[n]) = ``proof`` implies for the leaf: the definition read backwards
    (its last element is the sibling at the top)."""
    if not 0 <= m < n:
        raise Refused
    if n == 1:
        if proof:
            raise Refused
        return leaf_hash
    if not proof:
        raise Refused
    k = _split(n)
    if m < k:
        return _h(b"\x01" + ref_inclusion_root(m, k, leaf_hash, proof[:-1]) + proof[-1])
    return _h(b"\x01" + proof[-1] + ref_inclusion_root(m - k, n - k, leaf_hash, proof[:-1]))


def ref_consistency_roots(m: int, n: int, old_root: bytes, proof: list[bytes]) -> tuple[bytes, bytes]:
    """The (old, new) roots PROOF(m, D[n]) = ``proof`` implies, 0 < m < n: SUBPROOF read
    backwards; where the definition omits the old tree's own hash (b true and m = n), it is
    ``old_root``, which the verifier knows."""

    def sub(m: int, n: int, b: bool, proof: list[bytes]) -> tuple[bytes, bytes]:
        if m == n:
            if b:
                if proof:
                    raise Refused
                return old_root, old_root
            if len(proof) != 1:
                raise Refused
            return proof[0], proof[0]
        if not proof:
            raise Refused
        k = _split(n)
        if m <= k:
            old, new = sub(m, k, b, proof[:-1])
            return old, _h(b"\x01" + new + proof[-1])
        old, new = sub(m - k, n - k, False, proof[:-1])
        return _h(b"\x01" + proof[-1] + old), _h(b"\x01" + proof[-1] + new)

    if not 0 < m < n:
        raise Refused
    return sub(m, n, True, proof)


def ref_inclusion_ok(m: int, n: int, leaf_hash: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        return ref_inclusion_root(m, n, leaf_hash, proof) == root
    except Refused:
        return False


def ref_consistency_ok(m: int, n: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:
    if m == n:
        return not proof and root1 == root2
    if m == 0:
        return not proof and root1 == EMPTY_ROOT
    try:
        return ref_consistency_roots(m, n, root1, proof) == (root1, root2)
    except Refused:
        return False


def impl_inclusion_ok(m: int, n: int, leaf_hash: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        verify_inclusion(m, n, leaf_hash, proof, root)
    except EntryMismatchError:
        return False
    return True


def impl_consistency_ok(m: int, n: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:
    try:
        verify_consistency(m, n, root1, root2, proof)
    except ConsistencyError:
        return False
    return True


class MemNodes:
    """NodeSource from the reference MTH."""

    def node(self, height: int, index: int) -> bytes:
        begin = index << height
        end = begin + (1 << height)
        assert end <= STORED
        return ref_mth(begin, end)


def _mutations(proof: list[bytes], extra: bytes) -> list[list[bytes]]:
    """The proof one element shorter (either end), longer (either end), and with each element
    replaced."""
    out = [proof[1:], proof[:-1]] if proof else []
    out += [[*proof, extra], [extra, *proof]]
    out += [[*proof[:i], _h(p), *proof[i + 1 :]] for i, p in enumerate(proof)]
    return out


def test_roots_of_every_size_match_the_reference() -> None:
    assert ref_mth(0, 0) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    rng = CompactRange()
    assert rng.root() == EMPTY_ROOT
    for n in range(1, MAX_SIZE + 1):
        rng.append(hash_leaf(LEAVES[n - 1]))
        assert rng.root() == ref_mth(0, n)


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_every_inclusion_proof_of_sizes_1_to_70() -> None:
    nodes = MemNodes()
    roots = [ref_mth(0, n) for n in range(MAX_SIZE + 1)]
    checked = 0
    for n in range(1, MAX_SIZE + 1):
        for m in range(n):
            leaf = hash_leaf(LEAVES[m])
            proof = inclusion_proof(nodes, m, n)
            assert proof == ref_path(m, 0, n), (m, n)
            assert ref_inclusion_ok(m, n, leaf, proof, roots[n])
            verify_inclusion(m, n, leaf, proof, roots[n])
            # Another leaf at this index, this leaf's proof at every other index of this size,
            # and at this index in every other size, with that size's root.
            claims = [(m, n, hash_leaf(LEAVES[(m + 1) % MAX_SIZE] + b"x"), proof, roots[n])]
            claims += [(other, n, leaf, proof, roots[n]) for other in range(n) if other != m]
            claims += [(m, size, leaf, proof, roots[size]) for size in range(1, MAX_SIZE + 1) if size != n]
            claims += [(m, n, leaf, bad, roots[n]) for bad in _mutations(proof, roots[n])]
            # The index at or past the size, negative, size 0: refused before any hashing.
            claims += [(n, n, leaf, proof, roots[n]), (-1, n, leaf, proof, roots[n]), (0, 0, leaf, [], leaf)]
            for cm, cn, cleaf, cproof, croot in claims:
                expected = ref_inclusion_ok(cm, cn, cleaf, cproof, croot)
                assert impl_inclusion_ok(cm, cn, cleaf, cproof, croot) is expected, (m, n, cm, cn)
                assert not expected, (m, n, cm, cn)  # distinct leaves: none of these is true
                checked += 1
    assert checked > 250_000


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_every_consistency_proof_of_sizes_0_to_70() -> None:
    nodes = MemNodes()
    roots = [ref_mth(0, n) for n in range(MAX_SIZE + 1)]
    checked = 0
    for n in range(0, MAX_SIZE + 1):
        for m in range(0, n + 1):
            proof = consistency_proof(nodes, m, n)
            assert proof == ([] if m in (0, n) else ref_subproof(m, 0, n, True)), (m, n)
            assert ref_consistency_ok(m, n, roots[m], roots[n], proof)
            verify_consistency(m, n, roots[m], roots[n], proof)
            # This proof for every other old size, for every other new size (each with its
            # root), with the roots swapped or replaced, and one element short, long or changed.
            claims = [(other, n, roots[other], roots[n], proof) for other in range(n + 1) if other != m]
            claims += [
                (m, size, roots[m], roots[size], proof) for size in range(m, MAX_SIZE + 1) if size != n
            ]
            claims += [(m, n, roots[m], _h(roots[n]), proof), (m, n, _h(roots[m]), roots[n], proof)]
            claims += [(m, n, roots[m], roots[n], bad) for bad in _mutations(proof, roots[m])]
            if m < n:
                claims.append((n, m, roots[n], roots[m], proof))  # the sizes swapped: a rollback
            for c1, c2, r1, r2, cproof in claims:
                expected = c1 <= c2 and ref_consistency_ok(c1, c2, r1, r2, cproof)
                assert impl_consistency_ok(c1, c2, r1, r2, cproof) is expected, (m, n, c1, c2, len(cproof))
                if expected:  # only a true statement holds: the empty tree extends to any root
                    assert r1 == roots[c1] and (c1 == 0 or r2 == roots[c2]), (m, n, c1, c2)
                checked += 1
    assert checked > 150_000


def test_an_interior_node_is_not_a_leaf() -> None:
    """Second preimage (RFC 9162 §2.1.1 domain separation): the two children of an interior
    node, given as one entry, do not hash to that node, so the entry is not in the tree above."""
    n = 8
    left, right = hash_leaf(LEAVES[0]), hash_leaf(LEAVES[1])
    node = ref_mth(0, 2)
    assert node == _h(b"\x01" + left + right)
    forged_entry = left + right
    assert hash_leaf(forged_entry) != node
    # the proof of the interior node as if it were leaf 0 of a 4-leaf tree of nodes
    proof = [ref_mth(2, 4), ref_mth(4, 8)]
    for index in range(n):
        with pytest.raises(EntryMismatchError):
            verify_inclusion(index, n, hash_leaf(forged_entry), proof, ref_mth(0, n))
        with pytest.raises(EntryMismatchError):
            verify_inclusion(
                index, n, hash_leaf(forged_entry), inclusion_proof(MemNodes(), index, n), ref_mth(0, n)
            )


@pytest.mark.parametrize(
    ("size1", "size2"),
    [(-1, 5), (-4, -4), (-1, -1), (0, -1), (-8, 8), (-(1 << 70), 3), (3, -(1 << 70))],
)
def test_negative_tree_sizes_are_refused(size1: int, size2: int) -> None:
    """RFC 9162 §2.1.4.2 is defined for sizes 0 <= first <= second: anything else is refused,
    also when the roots are equal and the proof empty (the equal-size case)."""
    with pytest.raises(ConsistencyError):
        verify_consistency(size1, size2, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ConsistencyError):
        verify_consistency(size1, size2, ZERO, ZERO, [ZERO, ZERO])


def test_negative_or_past_the_end_indices_are_refused() -> None:
    leaf = hash_leaf(LEAVES[0])
    for index, size in [(-1, 1), (-1, 0), (0, -1), (1, 1), (5, 3), (1 << 64, 1 << 64), (0, -(1 << 64))]:
        with pytest.raises(EntryMismatchError):
            verify_inclusion(index, size, leaf, [], leaf)


def test_the_tree_of_size_0_has_one_root() -> None:
    """RFC 9162 §2.1.1: MTH({}) = SHA-256(). A "tree of size 0" with another root is not a
    prefix of anything (nor equal to itself): a checkpoint claiming it is refused."""
    other = ref_mth(0, 1)
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 1, EMPTY_ROOT, other, [])
    for size2, root2 in [(0, other), (1, other), (5, ref_mth(0, 5))]:
        with pytest.raises(ConsistencyError, match="size 0"):
            verify_consistency(0, size2, other, root2, [])


@pytest.mark.no_cover  # CPU-bound sweep: run untraced (conftest.py, "Coverage")
def test_the_stores_proofs_match_the_reference_across_tile_boundaries(tmp_path: Path) -> None:
    """The proofs the store computes (stored tiles and their interior nodes) and those a client
    computes from the C2SP tiles alone, for every size of 1..70 and around the 256- and
    512-leaf tile boundaries, equal the RFC's PATH and PROOF. Entries appended in uneven
    batches, so partial tiles grow in place across several appends."""
    conn = connect(tmp_path / "log.db", durable=False)
    Ledger.init_schema(conn)
    ledger = Ledger()
    start = 0
    for batch in [1, 2, 3, 60, 4, 180, 5, 1, 255, 19]:
        with write_transaction(conn):
            assert ledger.append_batch(conn, LEAVES[start : start + batch]) == start
        start += batch
    assert start == STORED == Ledger.size(conn)
    sizes = [*range(1, MAX_SIZE + 1), *range(250, 263), *range(509, STORED + 1)]
    for n in sizes:
        assert ledger.root(conn, n) == ref_mth(0, n), n
        tiles = Ledger.tile_nodes(conn, n)
        indices = (
            range(n)
            if n <= MAX_SIZE
            else sorted({0, 1, 127, 128, 255, 256, 257, 511, n - 2, n - 1} & set(range(n)))
        )
        for m in indices:
            expected = ref_path(m, 0, n)
            assert ledger.inclusion_proof(conn, m, n) == expected, (m, n)
            assert inclusion_proof(tiles, m, n) == expected, (m, n)
    for n in sizes[MAX_SIZE:]:
        tiles = Ledger.tile_nodes(conn, n)
        for m in [*range(0, MAX_SIZE + 1), *(x for x in sizes[MAX_SIZE:] if x <= n)]:
            expected = [] if m in (0, n) else ref_subproof(m, 0, n, True)
            assert ledger.consistency_proof(conn, m, n) == expected, (m, n)
            assert consistency_proof(tiles, m, n) == expected, (m, n)
    conn.close()
