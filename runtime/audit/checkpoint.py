"""Signed checkpoints: "log L had N records with Merkle root R at time T", signed with Ed25519.

The signed statement is a small text note (in the spirit of the transparency-log "signed note"
format) so a checkpoint copied out of the database - to a ticket, a WORM bucket, a witness - can be
checked years later with any Ed25519 tool. Exported checkpoints are what make truncation visible even
to an attacker who also deletes the checkpoints stored in the log.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealinfer.runtime.errors import InvalidSignatureError, StoreError
from sealinfer.runtime.keys.signing import Signer, TrustStore

STATEMENT_HEADER = "sealinfer-audit-checkpoint/v1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    log_id: str
    tree_size: int
    root: bytes
    time: str
    key_id: str
    signature: bytes

    def statement(self) -> bytes:
        return statement(self.log_id, self.tree_size, self.root, self.time, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = self.root.hex()
        data["signature"] = base64.b64encode(self.signature).decode()
        data["format"] = STATEMENT_HEADER
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        try:
            if data.get("format", STATEMENT_HEADER) != STATEMENT_HEADER:
                raise ValueError(f"unknown format {data.get('format')!r}")
            return cls(str(data["log_id"]), int(data["tree_size"]), bytes.fromhex(data["root"]),
                       str(data["time"]), str(data["key_id"]), base64.b64decode(data["signature"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"Not a sealinfer audit checkpoint ({exc}).",
                             hint="Pass the JSON written by `sealinfer audit checkpoint`.") from None


def statement(log_id: str, tree_size: int, root: bytes, time: str, key_id: str) -> bytes:
    return (f"{STATEMENT_HEADER}\nlog {log_id}\nsize {tree_size}\nroot {root.hex()}\n"
            f"time {time}\nkey {key_id}\n").encode()


def sign_checkpoint(signer: Signer, log_id: str, tree_size: int, root: bytes, time: str) -> Checkpoint:
    sig = signer.sign(statement(log_id, tree_size, root, time, signer.key_id))
    return Checkpoint(log_id, tree_size, root, time, signer.key_id, sig)


def verify_with_key(checkpoint: Checkpoint, public_key: bytes) -> None:
    """Raise ``InvalidSignatureError`` unless the checkpoint is signed by ``public_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(checkpoint.signature, checkpoint.statement())
    except (InvalidSignature, ValueError):
        raise InvalidSignatureError(
            f"Checkpoint at tree size {checkpoint.tree_size} has an invalid signature by {checkpoint.key_id!r}.",
            hint="The checkpoint or the key was altered; treat the log as tampered and restore from the archive.",
        ) from None


def verify_trusted(checkpoint: Checkpoint, trust_store: TrustStore) -> None:
    """Raise ``UntrustedSignerError`` / ``KeyRevokedError`` / ``InvalidSignatureError`` unless trusted."""
    trust_store.verify(checkpoint.key_id, checkpoint.signature, checkpoint.statement())
