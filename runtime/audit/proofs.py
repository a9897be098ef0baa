"""Inclusion and consistency proofs read from an audit database, and their verification.

An inclusion proof carries the record itself (seq, prev_hash, body), so a verifier recomputes the leaf
hash from the record rather than trusting a hash handed to it; anchored to a signed checkpoint of the
same tree size, it shows an auditor that this exact record is part of the history the log committed to.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.checkpoint import Checkpoint
from sealinfer.runtime.audit.merkle import MerkleTree, verify_consistency, verify_inclusion
from sealinfer.runtime.errors import AuditIntegrityError, StoreError


@dataclass(frozen=True)
class InclusionProof:
    seq: int
    tree_size: int
    prev_hash: bytes
    body: bytes
    path: list[bytes]
    root: bytes
    checkpoint: Checkpoint | None = None

    @property
    def leaf_hash(self) -> bytes:
        return hashlib.sha256(b"\x00" + schema.leaf_input(self.seq, self.prev_hash, self.body)).digest()

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "tree_size": self.tree_size, "prev_hash": self.prev_hash.hex(),
                "body": self.body.decode("utf-8", "replace"),
                "body_b64": base64.b64encode(self.body).decode(), "leaf_hash": self.leaf_hash.hex(),
                "path": [p.hex() for p in self.path], "root": self.root.hex(),
                "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InclusionProof:
        cp = data.get("checkpoint")
        return cls(int(data["seq"]), int(data["tree_size"]), bytes.fromhex(data["prev_hash"]),
                   base64.b64decode(data["body_b64"]), [bytes.fromhex(p) for p in data["path"]],
                   bytes.fromhex(data["root"]), Checkpoint.from_dict(cp) if cp else None)


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: list[bytes]

    def to_dict(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size, "old_root": self.old_root.hex(),
                "new_root": self.new_root.hex(), "path": [p.hex() for p in self.path]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsistencyProof:
        return cls(int(data["old_size"]), int(data["new_size"]), bytes.fromhex(data["old_root"]),
                   bytes.fromhex(data["new_root"]), [bytes.fromhex(p) for p in data["path"]])


def _load(db_path: str | os.PathLike[str]) -> tuple[MerkleTree, dict[int, Checkpoint], Any, str]:
    conn, log_id = schema.open_readonly(db_path)
    leaves = [bytes(r[0]) for r in conn.execute("SELECT entry_hash FROM audit_events ORDER BY seq")]
    cps = {int(r[0]): Checkpoint(log_id, int(r[0]), bytes(r[1]), r[2], r[3], bytes(r[4])) for r in conn.execute(
        "SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints")}
    return MerkleTree(leaves), cps, conn, log_id


def _pick_size(size: int, tree: MerkleTree, cps: dict[int, Checkpoint], at_least: int) -> int:
    if size is not None:
        if not at_least <= size <= tree.size:
            raise StoreError(f"Tree size {size} is outside {at_least}..{tree.size}.",
                             hint="Pick a size between the record's seq and the log's record count.")
        return size
    anchored = [s for s in cps if at_least <= s <= tree.size]  # prefer a size a signature vouches for
    return max(anchored) if anchored else tree.size


def inclusion_proof(db_path: str | os.PathLike[str], seq: int, tree_size: int | None = None) -> InclusionProof:
    """Prove record ``seq`` is in the tree of ``tree_size`` (default: the newest checkpoint covering it)."""
    tree, cps, conn, _ = _load(db_path)
    try:
        if not 1 <= seq <= tree.size:
            raise StoreError(f"The audit log has no record {seq} (it holds 1..{tree.size}).",
                             hint="Pick a seq from `sealinfer audit verify` output or the report.")
        size = _pick_size(tree_size, tree, cps, seq)  # type: ignore[arg-type]
        row = conn.execute("SELECT prev_hash, CAST(body AS BLOB) FROM audit_events WHERE seq = ?", [seq]).fetchone()
    finally:
        conn.close()
    return InclusionProof(seq, size, bytes(row[0]), bytes(row[1]), tree.inclusion_proof(seq - 1, size),
                          tree.root(size), cps.get(size))


def consistency_proof(db_path: str | os.PathLike[str], old_size: int, new_size: int | None = None) -> ConsistencyProof:
    """Prove the tree of ``old_size`` records is a prefix of the tree of ``new_size`` records."""
    tree, _, conn, _ = _load(db_path)
    conn.close()
    new_size = tree.size if new_size is None else new_size
    if not 1 <= old_size <= new_size <= tree.size:
        raise StoreError(f"Sizes must satisfy 1 <= OLD <= NEW <= {tree.size}; got {old_size}, {new_size}.",
                         hint="Use tree sizes of two checkpoints (sealinfer audit verify --json lists them).")
    return ConsistencyProof(old_size, new_size, tree.root(old_size), tree.root(new_size),
                            tree.consistency_proof(old_size, new_size))


def verify_inclusion_proof(proof: InclusionProof, root: bytes | None = None) -> None:
    """Raise ``AuditIntegrityError`` unless the record is in the tree with ``root`` (default: proof.root).

    Pass the root from a checkpoint you verified (or trust) - the proof's own root only shows internal
    consistency.
    """
    expected = proof.root if root is None else root
    if proof.checkpoint is not None and (proof.checkpoint.root != expected
                                         or proof.checkpoint.tree_size != proof.tree_size):
        raise AuditIntegrityError("The inclusion proof's checkpoint does not match its root or tree size.",
                                  hint="The proof was altered; regenerate it with `sealinfer audit prove`.")
    if not verify_inclusion(proof.seq - 1, proof.tree_size, proof.leaf_hash, proof.path, expected):
        raise AuditIntegrityError(f"Record {proof.seq} is NOT included in the tree of size {proof.tree_size} "
                                  f"with root {expected.hex()[:16]}...",
                                  hint="The record or the proof was altered; run `sealinfer audit verify`.")


def verify_consistency_proof(proof: ConsistencyProof, old_root: bytes | None = None,
                             new_root: bytes | None = None) -> None:
    """Raise ``AuditIntegrityError`` unless the old tree is a prefix of the new one."""
    old = proof.old_root if old_root is None else old_root
    new = proof.new_root if new_root is None else new_root
    if not verify_consistency(proof.old_size, proof.new_size, old, new, proof.path):
        raise AuditIntegrityError(f"The log of {proof.new_size} records is NOT an extension of the log of "
                                  f"{proof.old_size} records: history between them was rewritten.",
                                  hint="Treat the log as tampered; restore it from the retention archive.")
