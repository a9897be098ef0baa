"""RFC 9162 (Certificate Transparency v2) Merkle tree hashes, inclusion and consistency proofs.

The audit log's ``entry_hash`` *is* the RFC 9162 leaf hash ``SHA-256(0x00 || leaf_input)``, so the tree
is built straight from stored hashes. ``MerkleTree`` keeps every level of complete (power-of-two,
aligned) subtrees, computed level by level in list comprehensions; the root of any prefix and every
proof node then come from O(log n) lookups instead of re-hashing, which is what lets ``verify_log``
check a thousand checkpoints over a million records in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(leaf_input: bytes) -> bytes:
    return _sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """All complete subtrees over a list of leaf hashes."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.levels: list[Sequence[bytes]] = [leaves]
        current = leaves
        sha = _sha256
        while len(current) > 1:
            current = [sha(b"\x01" + a + b).digest() for a, b in zip(current[0::2], current[1::2], strict=False)]
            self.levels.append(current)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def _check(self, n: int) -> None:
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} outside 0..{self.size}")

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]); in RFC 9162 recursion every left part is complete and aligned."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self.levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def root(self, n: int | None = None) -> bytes:
        n = self.size if n is None else n
        self._check(n)
        return self.subtree(0, n)

    def inclusion_proof(self, index: int, n: int | None = None) -> list[bytes]:
        n = self.size if n is None else n
        self._check(n)
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} outside tree of size {n}")
        path: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:  # walk down, collecting siblings; the proof lists them bottom-up
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self.subtree(lo + k, hi))
                hi = lo + k
            else:
                path.append(self.subtree(lo, lo + k))
                lo = lo + k
        path.reverse()
        return path

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        n = self.size if n is None else n
        self._check(n)
        if not 0 < m <= n:
            raise ValueError(f"old size {m} must be in 1..{n}")
        proof: list[bytes] = []
        lo, hi, complete = 0, n, True
        while True:  # SUBPROOF(m, D[lo:hi], complete), iteratively; nodes collected top-down
            if m == hi - lo:
                if not complete:
                    proof.append(self.subtree(lo, hi))
                break
            k = _split(hi - lo)
            if m <= k:
                proof.append(self.subtree(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self.subtree(lo, lo + k))
                m -= k
                lo = lo + k
                complete = False
        proof.reverse()
        return proof


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2."""
    if old_size < 0 or new_size < old_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class Frontier:
    """The roots of the complete subtrees of a growing tree: O(log n) state, amortised one hash a leaf."""

    def __init__(self) -> None:
        self.nodes: list[tuple[int, bytes]] = []  # (height, hash), heights strictly decreasing
        self.size = 0

    def copy(self) -> Frontier:
        other = Frontier()
        other.nodes = list(self.nodes)
        other.size = self.size
        return other

    def append(self, leaf: bytes) -> None:
        nodes = self.nodes
        height, h = 0, leaf
        while nodes and nodes[-1][0] == height:
            h = node_hash(nodes.pop()[1], h)
            height += 1
        nodes.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r
