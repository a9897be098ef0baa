"""Shared builders for the audit tests: real SQLite logs, real Ed25519 keys, raw tampering."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.record import AuditEvent
from sealinfer.runtime.keys.signing import Signer, TrustStore

SEED_KEY = bytes(range(32))  # deterministic test key


def make_signer(key_id: str = "audit-test-1", seed: bytes = SEED_KEY) -> Signer:
    return Signer(key_id, Ed25519PrivateKey.from_private_bytes(seed))


def trust_for(signer: Signer) -> TrustStore:
    return TrustStore.of({signer.key_id: signer.public_key_bytes()})


def make_event(i: int, rng: random.Random | None = None) -> AuditEvent:
    rng = rng or random.Random(i)
    deny = i % 7 == 3
    return AuditEvent(
        actor=f"user{i % 5}", role=["clinician", "researcher", "ops"][i % 3],
        purpose=["treatment", "research", "operations"][i % 3], action="load" if i % 11 == 0 else "infer",
        model_id="sepsis-risk", model_version="1.2", model_digest=f"{rng.getrandbits(256):064x}",
        policy_id="hipaa", policy_version="2026.11.1" if i % 2 else "2026.11.2",
        decision="deny" if deny else "allow", reasons=["phi_requires_treatment_purpose"] if deny else [],
        outcome="denied" if deny else "ok", error_code="denied" if deny else None, device="cpu:0",
        input_digest=f"{rng.getrandbits(256):064x}", output_digest=None if deny else f"{rng.getrandbits(256):064x}",
        latency_us=rng.randrange(50, 5000), tenant="icu", break_glass=(i % 13 == 5),
        details={"signature": "valid", "signer_key_id": "model-signer-1", "watermark": "verified",
                 "dp_epsilon": 3.0} if i % 11 == 0 else {"placement": {"device": "cpu:0"}},
    )


def build_log(path: Path, n: int, *, signer: Signer | None = None, checkpoint_every: int = 10) -> Path:
    with AuditLog(path, signer=signer or make_signer(), checkpoint_every=checkpoint_every) as log:
        for i in range(n):
            log.append(make_event(i))
    return path


class Raw:
    """A raw connection that drops the append-only triggers, as an attacker with file access would."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.triggers = [r[0] for r in self.conn.execute("SELECT sql FROM sqlite_master WHERE type='trigger'")]
        for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            self.conn.execute(f"DROP TRIGGER {name}")

    def row(self, seq: int) -> tuple[int, bytes, bytes, bytes]:
        r = self.conn.execute("SELECT seq, CAST(body AS BLOB), prev_hash, entry_hash FROM audit_events "
                              "WHERE seq = ?", [seq]).fetchone()
        return r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])

    def close(self) -> None:
        for sql in self.triggers:  # put the triggers back so nothing looks touched
            self.conn.execute(sql)
        self.conn.close()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()
