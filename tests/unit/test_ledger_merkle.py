"""RFC 9162 Merkle tree: published vectors, corruption probes, properties, a differential oracle."""

from __future__ import annotations

import pytest
from _ledger_ref import MemNodes, ref_mth
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from confide.errors import ConsistencyError, EntryMismatchError
from confide.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    hash_children,
    hash_leaf,
    inclusion_proof,
    mth,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle proof/verify_test.go (Apache-2.0): the 8-leaf reference tree of
# the certificate-transparency test suites, its roots for sizes 1..8 and known proofs.
LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]]  # fmt: skip
# (leaf number 1-based, tree size, proof)
INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]), literally."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*_ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*_ref_path(m - k, d[k:]), ref_mth(d[:k])]


def _ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b), literally."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*_ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*_ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def _leaves(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


# --- published vectors -----------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert (
        mth([])
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_tree_roots(size: int) -> None:
    assert mth(LEAVES[:size]) == ROOTS[size - 1]
    assert mth(LEAVES[:size]) != mth(LEAVES[: size - 1])  # negative twin: one leaf fewer


@pytest.mark.parametrize(("leaf", "size", "proof_hex"), INCLUSION)
def test_reference_inclusion_proofs(leaf: int, size: int, proof_hex: list[str]) -> None:
    proof = [bytes.fromhex(p) for p in proof_hex]
    assert inclusion_proof(MemNodes(LEAVES), leaf - 1, size) == proof
    leaf_hash = hash_leaf(LEAVES[leaf - 1])
    verify_inclusion(leaf - 1, size, leaf_hash, proof, ROOTS[size - 1])
    # Corruption probes of transparency-dev/merkle's verifierCheck: each must fail.
    root = ROOTS[size - 1]
    probes = [
        (leaf - 2, size, leaf_hash, proof, root),
        (leaf, size, leaf_hash, proof, root),
        ((leaf - 1) ^ 2, size, leaf_hash, proof, root),
        (leaf - 1, size * 2, leaf_hash, proof, root),
        (leaf - 1, size // 2, leaf_hash, proof, root),
        (leaf - 1, size, hash_leaf(b"WrongLeaf"), proof, root),
        (leaf - 1, size, leaf_hash, proof, EMPTY_ROOT),
        (leaf - 1, size, leaf_hash, proof, SOME_HASH),
        (leaf - 1, size, leaf_hash, [*proof, root], root),
        (leaf - 1, size, leaf_hash, [root, *proof], root),
        (leaf - 1, size, leaf_hash, proof[:-1], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((leaf - 1, size, leaf_hash, bad, root))
    for index, sz, lh, pr, rt in probes:
        if index < 0:
            continue
        with pytest.raises(EntryMismatchError):
            verify_inclusion(index, sz, lh, pr, rt)


@pytest.mark.parametrize(("size1", "size2", "proof_hex"), CONSISTENCY)
def test_reference_consistency_proofs(size1: int, size2: int, proof_hex: list[str]) -> None:
    proof = [bytes.fromhex(p) for p in proof_hex]
    assert consistency_proof(MemNodes(LEAVES), size1, size2) == proof
    root1, root2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    verify_consistency(size1, size2, root1, root2, proof)
    probes = [
        (size1 - 1, size2, root1, root2, proof),
        (size1 + 1, size2, root1, root2, proof),
        (size1 ^ 2, size2, root1, root2, proof),
        (size1, size2 * 2, root1, root2, proof),
        (size1, size2 // 2, root1, root2, proof),
        (size1, size2, SOME_HASH, root2, proof),
        (size1, size2, root1, SOME_HASH, proof),
        (size1, size2, root2, root1, proof),
        (size1, size2, root1, root2, []),
        (size1, size2, root1, root2, [*proof, root1]),
        (size1, size2, root1, root2, [*proof, root2]),
        (size1, size2, root1, root2, [root1, *proof]),
        (size1, size2, root1, root2, [root2, *proof]),
        (size1, size2, root1, root2, [proof[0], *proof]),
        (size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((size1, size2, root1, root2, bad))
    for s1, s2, r1, r2, pr in probes:
        with pytest.raises(ConsistencyError):
            verify_consistency(s1, s2, r1, r2, pr)


def test_trivial_consistency_cases() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ConsistencyError):
        verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])  # same size, different root: fork
    with pytest.raises(ConsistencyError):
        verify_consistency(3, 3, ROOTS[2], ROOTS[2], [EMPTY_ROOT])
    with pytest.raises(ConsistencyError):
        verify_consistency(0, 1, EMPTY_ROOT, ROOTS[0], [EMPTY_ROOT])
    with pytest.raises(ConsistencyError):
        verify_consistency(2, 1, ROOTS[1], ROOTS[0], [])  # time travel
    with pytest.raises(ConsistencyError):
        verify_consistency(1, 2, ROOTS[0], ROOTS[1], [b"short"])


def test_single_leaf_inclusion() -> None:
    h = hash_leaf(b"data")
    verify_inclusion(0, 1, h, [], h)
    with pytest.raises(EntryMismatchError):
        verify_inclusion(0, 1, h, [], b"")
    with pytest.raises(EntryMismatchError):
        verify_inclusion(0, 1, b"", [], h)
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        with pytest.raises(EntryMismatchError):
            verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)


# --- all sizes and indices ---------------------------------------------------------------


def test_all_proofs_up_to_64_leaves_match_the_rfc_definitions() -> None:
    leaves = _leaves(64)
    src = MemNodes(leaves)
    for n in range(1, 65):
        d = tuple(leaves[:n])
        root = ref_mth(d)
        for m in range(n):
            proof = inclusion_proof(src, m, n)
            assert proof == _ref_path(m, d)
            assert root_from_inclusion_proof(m, n, hash_leaf(leaves[m]), proof) == root
        for m in range(n + 1):
            proof = consistency_proof(src, m, n)
            assert proof == ([] if m in (0, n) else _ref_subproof(m, d, True))
            verify_consistency(m, n, ref_mth(tuple(leaves[:m])), root, proof)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_proofs_property(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 400), label="size")
    m = data.draw(st.integers(0, n - 1), label="index")
    leaves = _leaves(n)
    src = MemNodes(leaves)
    proof = inclusion_proof(src, m, n)
    assert src.reads <= 2 * n.bit_length() + 2  # O(log n) node reads, never the whole tree
    root = ref_mth(tuple(leaves))
    verify_inclusion(m, n, hash_leaf(leaves[m]), proof, root)
    other = data.draw(st.integers(0, n - 1), label="other index")
    if other != m:
        with pytest.raises(EntryMismatchError):
            verify_inclusion(other, n, hash_leaf(leaves[m]), proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="flip")
        bad = list(proof)
        bad[i] = hash_children(bad[i], bad[i])
        with pytest.raises(EntryMismatchError):
            verify_inclusion(m, n, hash_leaf(leaves[m]), bad, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_proofs_property(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 400), label="size2")
    m = data.draw(st.integers(1, n), label="size1")
    leaves = _leaves(n)
    proof = consistency_proof(MemNodes(leaves), m, n)
    r1, r2 = ref_mth(tuple(leaves[:m])), ref_mth(tuple(leaves))
    verify_consistency(m, n, r1, r2, proof)
    # A fork: the same sizes over a history with one entry changed must not verify.
    j = data.draw(st.integers(0, m - 1), label="forked entry")
    forked = list(leaves)
    forked[j] = b"forked"
    fr2 = ref_mth(tuple(forked))
    fproof = consistency_proof(MemNodes(forked), m, n)
    with pytest.raises(ConsistencyError):
        verify_consistency(m, n, r1, fr2, fproof)
    if m < n:
        with pytest.raises(ConsistencyError):
            verify_consistency(m, n, r1, fr2, proof)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=300))
def test_roots_match_pymerkle(entries: list[bytes]) -> None:
    tree = InmemoryTree(algorithm="sha256")  # RFC 6962 mode: 0x00/0x01 prefixes (the default)
    for e in entries:
        tree.append_entry(e)
    rng = CompactRange()
    for size, e in enumerate(entries, start=1):
        rng.append(hash_leaf(e))
        if size in (1, 2, 3, len(entries)) or size % 37 == 0:
            assert rng.root() == tree.get_root(size) == mth(entries[:size])
    assert mth(entries) == (tree.get_root(len(entries)) if entries else EMPTY_ROOT)
    if entries:
        assert mth([*entries[:-1], entries[-1] + b"x"]) != tree.get_root(len(entries))


def test_generation_rejects_bad_arguments() -> None:
    src = MemNodes(_leaves(4))
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(src, 4, 4)
    with pytest.raises(ValueError, match="must not decrease"):
        consistency_proof(src, 3, 2)
