"""Tamper-evident audit log: hash chain, Merkle proofs, signed checkpoints, group commit.

    from sealinfer.runtime.audit import AuditLog, AuditEvent, verify_log
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditEvent": "record", "AuditLog": "log", "AuditReceipt": "log", "verify_log": "verify",
    "VerifyResult": "verify", "Checkpoint": "checkpoint", "inclusion_proof": "proofs",
    "consistency_proof": "proofs", "verify_inclusion_proof": "proofs", "verify_consistency_proof": "proofs",
    "export_log": "export", "verify_archive": "export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: importing the package stays cheap
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
