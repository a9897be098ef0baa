"""Realistic telemetry and audit databases for the dashboard's tests, demo and benchmark.

The telemetry goes through :class:`TelemetryStore` (the runtime's own write path), so rollups are
built exactly as in production. Shapes follow a hospital day: three models of very different size, a
ladder of security configurations each adding its phase cost, three priority classes, a few devices,
rare denials and errors. Seeded: the same arguments give the same database.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sealinfer.runtime.telemetry.record import TelemetryRecord
from sealinfer.runtime.telemetry.store import TelemetryStore


@dataclass(frozen=True)
class _Model:
    name: str
    version: str
    param_bytes: int
    inference_us: float  # median on cpu
    dp_epsilon: float | None
    watermark: str


MODELS = (
    _Model("sepsis-risk", "3.1.0", 180_000, 350.0, 3.0, "verified"),
    _Model("cxr-triage", "1.4.2", 44_700_000, 24_000.0, None, "verified"),
    _Model("note-classifier", "0.9.0", 268_000_000, 82_000.0, 6.5, "missing"),
)
# (config label, features, extra µs per phase: authorize, validate, guard, record)
CONFIGS = (
    ("plain", {"sealed": False, "authz": False, "audit_mode": "off", "guards": False}, (0, 5, 0, 4)),
    ("sealed", {"sealed": True, "authz": False, "audit_mode": "off", "guards": False}, (0, 25, 0, 4)),
    ("sealed+authz", {"sealed": True, "authz": True, "audit_mode": "off", "guards": False}, (70, 25, 0, 4)),
    ("sealed+authz+audit(process)", {"sealed": True, "authz": True, "audit_mode": "process", "guards": False},
     (70, 25, 0, 140)),
    ("sealed+authz+audit(power)", {"sealed": True, "authz": True, "audit_mode": "power", "guards": False},
     (70, 25, 0, 2_100)),
    ("sealed+authz+audit(process)+guards", {"sealed": True, "authz": True, "audit_mode": "process",
                                            "guards": True}, (70, 25, 45, 140)),
)
DEVICES = (("cpu-0", 1.0), ("cpu-1", 1.0), ("gpu-0", 0.25))
PRIORITIES = (("stat", 0.1), ("routine", 0.7), ("batch", 0.2))
TENANTS = ("icu", "radiology", "research")


def model_digest(name: str, version: str) -> str:
    return hashlib.sha256(f"{name}:{version}".encode()).hexdigest()


def telemetry_records(n: int, *, seed: int = 7, end_ts: float = 1_780_000_000.0, span_s: float = 86_400.0
                      ) -> list[TelemetryRecord]:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(end_ts - span_s, end_ts, n))
    mi = rng.choice(len(MODELS), n, p=[0.55, 0.3, 0.15])
    ci = rng.integers(0, len(CONFIGS), n)
    di = rng.choice(len(DEVICES), n, p=[0.4, 0.4, 0.2])
    pi = rng.choice(len(PRIORITIES), n, p=[p for _, p in PRIORITIES])
    ti = rng.integers(0, len(TENANTS), n)
    noise = rng.lognormal(0.0, 0.25, n)
    pred_noise = rng.lognormal(0.0, 0.15, n)
    has_pred = rng.random(n) < 0.9
    queue = rng.exponential(1.0, n) * np.array([300.0, 4_000.0, 40_000.0])[pi]
    roll = rng.random(n)
    batch = np.where(pi == 2, rng.integers(1, 65, n), 1)
    out: list[TelemetryRecord] = []
    for k in range(n):
        model = MODELS[mi[k]]
        config, features, (auth, val, guard, rec) = CONFIGS[ci[k]]
        device, speed = DEVICES[di[k]]
        priority = PRIORITIES[pi[k]][0]
        infer = model.inference_us * speed * noise[k] * (1 + 0.02 * (batch[k] - 1))
        outcome, code = "ok", None
        if features["authz"] and roll[k] < 0.03:
            outcome, code = "denied", "denied"
        elif roll[k] > 0.995:
            outcome, code = "error", "input_invalid"
        ok = outcome == "ok"
        out.append(TelemetryRecord(
            ts=float(ts[k]), request_id=f"req-{seed}-{k}", model=model.name, model_version=model.version,
            model_digest=model_digest(model.name, model.version), config=config, features=features,
            device=device, tenant=TENANTS[ti[k]], priority=priority, outcome=outcome, error_code=code,
            batch=int(batch[k]), queue_us=float(queue[k]), authorize_us=float(auth * noise[k]),
            validate_us=float(val * noise[k]) if outcome != "denied" else 0.0,
            inference_us=float(infer) if ok else 0.0, guard_us=float(guard * noise[k]) if ok else 0.0,
            record_us=float(rec * noise[k]), model_param_bytes=model.param_bytes,
            predicted_us=float(model.inference_us * speed * pred_noise[k]) if has_pred[k] else None,
        ))
    return out


def make_telemetry_db(path: str | Path, n: int = 5_000, *, seed: int = 7, end_ts: float = 1_780_000_000.0,
                      span_s: float = 86_400.0, chunk: int = 100_000) -> Path:
    """Write ``n`` requests and the three models into a new telemetry database at ``path``."""
    path = Path(path)
    with TelemetryStore(path, max_buffer=max(chunk, 1), flush_interval_s=3600) as store:
        for start in range(0, n, chunk):
            # Chunks with distinct seeds keep memory flat at a million rows.
            recs = telemetry_records(min(chunk, n - start), seed=seed * 1_000_003 + start,
                                     end_ts=end_ts - span_s * start / n,
                                     span_s=span_s * min(chunk, n - start) / n)
            store.record_many(recs)
            store.flush()
        for m in MODELS:
            store.record_model(model_digest(m.name, m.version), m.name, m.version, signer_key_id="site-signing-1",
                               signature_ok=True, watermark_status=m.watermark, dp_epsilon=m.dp_epsilon,
                               param_bytes=m.param_bytes, loaded_at=end_ts - span_s)
    return path


def audit_events(n: int, *, seed: int = 11) -> list[dict[str, object]]:
    """Access events: mostly clinicians treating, researchers often denied, rare break-glass."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for _ in range(n):
        role = ["physician", "nurse", "researcher", "radiologist"][int(rng.integers(0, 4))]
        break_glass = bool(rng.random() < 0.02)
        denied = (not break_glass) and bool(role == "researcher" and rng.random() < 0.5 or rng.random() < 0.03)
        out.append({
            "actor": f"user-{int(rng.integers(1, 40)):03d}", "role": role,
            "purpose": "research" if role == "researcher" else "treatment", "action": "infer",
            "model_id": MODELS[int(rng.integers(0, 3))].name, "decision": "deny" if denied else "allow",
            "reasons": ["policy:research-needs-deidentified"] if denied else ["policy:treatment"],
            "outcome": "denied" if denied else "ok", "error_code": "denied" if denied else None,
            "break_glass": break_glass,
        })
    return out


def make_audit_db(path: str | Path, n: int = 400, *, seed: int = 11, checkpoint_every: int = 100) -> Path:
    """A real audit log written by ``AuditLog`` (hash chain, signed checkpoints every ``checkpoint_every``)."""
    from sealinfer.runtime.audit.log import AuditLog
    from sealinfer.runtime.audit.record import AuditEvent
    from sealinfer.runtime.keys.signing import Signer

    signer = Signer.generate("site-signing-1")
    with AuditLog(path, signer=signer, checkpoint_every=checkpoint_every, checkpoint_seconds=3600) as log:
        events = [AuditEvent(**ev) for ev in audit_events(n, seed=seed)]  # type: ignore[arg-type]
        for start in range(0, n, checkpoint_every):
            log.append_many(events[start:start + checkpoint_every])
    return Path(path)


def make_foreign_audit_db(path: str | Path, n: int = 400, *, seed: int = 11, start_ts: float = 1_779_913_600.0,
                          checkpoint_every: int = 100) -> Path:
    """Tables named like the audit store's but written by something else (a plain SHA-256 chain).

    The real verifier does not recognise it; the dashboard must still show counts and say the chain
    could not be verified, not crash.
    """
    import datetime as dt

    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, time TEXT, actor TEXT, role TEXT, purpose TEXT,"
        " action TEXT, model_id TEXT, decision TEXT, reasons TEXT, outcome TEXT, error_code TEXT,"
        " break_glass INTEGER, input_digest TEXT, prev_hash TEXT, hash TEXT);"
        "CREATE TABLE audit_checkpoints (seq INTEGER PRIMARY KEY, time TEXT, head_hash TEXT, key_id TEXT,"
        " signature TEXT);"
    )
    prev = "0" * 64
    for seq, ev in enumerate(audit_events(n, seed=seed), start=1):
        when = dt.datetime.fromtimestamp(start_ts + seq * 30, dt.UTC).isoformat()
        row = {"seq": seq, "time": when, **ev, "reasons": json.dumps(ev["reasons"]),
               "break_glass": int(bool(ev["break_glass"])),
               "input_digest": hashlib.sha256(f"in{seq}".encode()).hexdigest(), "prev_hash": prev}
        prev = hashlib.sha256((prev + json.dumps(row, sort_keys=True)).encode()).hexdigest()
        row["hash"] = prev
        conn.execute(f"INSERT INTO audit_events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
        if seq % checkpoint_every == 0:
            conn.execute("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)",
                         (seq, when, prev, "site-signing-1", "00" * 64))
    conn.commit()
    conn.close()
    return Path(path)
