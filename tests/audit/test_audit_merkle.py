"""RFC 9162 tree hashes and proofs against the RFC's recursive definitions, and proofs from a real log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealinfer.runtime.audit.merkle import (
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from sealinfer.runtime.audit.proofs import (
    ConsistencyProof,
    InclusionProof,
    consistency_proof,
    inclusion_proof,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from sealinfer.runtime.errors import AuditIntegrityError, StoreError

from .conftest import build_log


def _mth(d: list[bytes]) -> bytes:  # RFC 9162 §2.1.1, literally
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: list[bytes]) -> list[bytes]:  # §2.1.3.1
    if len(d) <= 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return _path(m, d[:k]) + [_mth(d[k:])] if m < k else _path(m - k, d[k:]) + [_mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:  # §2.1.4.1
    if m == len(d):
        return [] if b else [_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return _subproof(m, d[:k], b) + [_mth(d[k:])] if m <= k else _subproof(m - k, d[k:], False) + [_mth(d[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 70), data=st.data())
def test_tree_and_proofs_match_rfc_9162(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    size = data.draw(st.integers(1, n), label="size")
    assert tree.root(size) == _mth(leaves[:size])
    frontier = Frontier()
    for leaf in leaves[:size]:
        frontier.append(leaf)
    assert frontier.root() == tree.root(size)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion_proof(index, size)
    assert proof == _path(index, leaves[:size])
    assert verify_inclusion(index, size, leaves[index], proof, tree.root(size))
    old = data.draw(st.integers(1, size), label="old")
    cproof = tree.consistency_proof(old, size)
    assert cproof == _subproof(old, leaves[:size], True)
    assert verify_consistency(old, size, tree.root(old), tree.root(size), cproof)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(2, 70), data=st.data())
def test_tampered_proofs_fail(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    proof = tree.inclusion_proof(index)
    root = tree.root()
    assert not verify_inclusion(index, n, leaf_hash(b"forged"), proof, root)
    assert not verify_inclusion((index + 1) % n, n, leaves[index], proof, root) or leaves[index] == leaves[
        (index + 1) % n]
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="node")
        bad = list(proof)
        bad[j] = hashlib.sha256(bad[j]).digest()
        assert not verify_inclusion(index, n, leaves[index], bad, root)
        assert not verify_inclusion(index, n, leaves[index], proof[:-1], root)
    old = data.draw(st.integers(1, n - 1), label="old")
    cproof = tree.consistency_proof(old)
    assert not verify_consistency(old, n, tree.root(old), hashlib.sha256(root).digest(), cproof)
    assert not verify_consistency(old, n, hashlib.sha256(tree.root(old)).digest(), root, cproof)
    if cproof:
        k = data.draw(st.integers(0, len(cproof) - 1), label="cnode")
        bad = list(cproof)
        bad[k] = hashlib.sha256(bad[k]).digest()
        assert not verify_consistency(old, n, tree.root(old), root, bad)


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_log(tmp_path_factory.mktemp("proofs") / "audit.db", 37, checkpoint_every=8)


def test_inclusion_proof_from_log_anchored_to_checkpoint(log_path: Path) -> None:
    proof = inclusion_proof(log_path, 5)
    assert proof.tree_size == 37 and proof.checkpoint is not None and proof.checkpoint.tree_size == 37
    verify_inclusion_proof(proof)
    verify_inclusion_proof(InclusionProof.from_dict(proof.to_dict()))
    older = inclusion_proof(log_path, 5, tree_size=16)
    assert older.checkpoint is not None  # 16 is a checkpoint size
    verify_inclusion_proof(older)
    forged = InclusionProof(proof.seq, proof.tree_size, proof.prev_hash,
                            proof.body.replace(b"user", b"mallory"), proof.path, proof.root, proof.checkpoint)
    with pytest.raises(AuditIntegrityError, match="NOT included"):
        verify_inclusion_proof(forged)
    with pytest.raises(AuditIntegrityError):
        verify_inclusion_proof(proof, root=hashlib.sha256(b"x").digest())


def test_consistency_proof_from_log(log_path: Path) -> None:
    proof = consistency_proof(log_path, 16, 37)
    verify_consistency_proof(proof)
    verify_consistency_proof(ConsistencyProof.from_dict(proof.to_dict()))
    with pytest.raises(AuditIntegrityError, match="rewritten"):
        verify_consistency_proof(proof, old_root=hashlib.sha256(b"other").digest())


def test_proof_arguments_are_checked(log_path: Path) -> None:
    with pytest.raises(StoreError, match="no record 99"):
        inclusion_proof(log_path, 99)
    with pytest.raises(StoreError, match="OLD <= NEW"):
        consistency_proof(log_path, 30, 20)
