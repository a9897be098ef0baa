"""Tamper-evident audit log: hash chain, Merkle proofs, signed checkpoints, group commit."""
