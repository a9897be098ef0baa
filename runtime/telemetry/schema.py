"""The telemetry database's tables, and opening one safely (writable for the runtime, read-only for views).

A ``telemetry_meta`` row marks the file as ours, so a dashboard pointed at an audit log or any other
SQLite file says so instead of failing on a missing column later.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from sealinfer.runtime.errors import StoreError
from sealinfer.runtime.telemetry.record import PHASES

KIND = "sealinfer-telemetry"
SCHEMA_VERSION = 1

_REQUEST_COLUMNS: dict[str, type] = {
    "id": int, "ts": float, "request_id": str, "model": str, "model_version": str, "model_digest": str,
    "config": str, "features": str, "device": str, "tenant": str, "priority": str, "outcome": str,
    "error_code": str, "batch": int, **{f"{p}_us": float for p in PHASES}, "total_us": float,
    "model_param_bytes": int, "predicted_us": float,
}
_MODEL_COLUMNS: dict[str, type] = {
    "digest": str, "name": str, "version": str, "signer_key_id": str, "signature_ok": int,
    "watermark_status": str, "dp_epsilon": float, "param_bytes": int, "loaded_at": float,
}
ROLLUP_KEY = ("minute", "config", "model", "priority", "device")
#: Per-minute sums; latency sums cover successful requests only (denials never reach inference).
ROLLUP_VALUES = (
    "n", "ok", "denied", "errors", "total_sum", "total_min", "total_max",
    *(f"{p}_sum" for p in PHASES), "predicted_n", "predicted_sum", "predicted_inference_sum",
    "param_bytes",
)
HIST_KEY = ("minute", "config", "model", "priority", "bucket")


def create_schema(db: sqlite_utils.Database) -> None:
    db["telemetry_meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["requests"].create(_REQUEST_COLUMNS, pk="id", if_not_exists=True)
    db["requests"].create_index(["ts"], index_name="idx_requests_ts", if_not_exists=True)
    db["requests"].create_index(["config", "model"], index_name="idx_requests_config_model",
                                if_not_exists=True)
    db["requests"].create_index(["priority"], index_name="idx_requests_priority", if_not_exists=True)
    db["models"].create(_MODEL_COLUMNS, pk="digest", if_not_exists=True)
    value_cols = ", ".join(
        f"{c} {'REAL' if c.endswith(('_sum', '_min', '_max')) else 'INTEGER NOT NULL DEFAULT 0'}"
        for c in ROLLUP_VALUES
    )
    db.execute(
        f"CREATE TABLE IF NOT EXISTS rollup_minute (minute INTEGER NOT NULL, config TEXT NOT NULL, "
        f"model TEXT NOT NULL, priority TEXT NOT NULL, device TEXT NOT NULL, {value_cols}, "
        f"PRIMARY KEY ({', '.join(ROLLUP_KEY)})) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS rollup_latency (minute INTEGER NOT NULL, config TEXT NOT NULL, "
        "model TEXT NOT NULL, priority TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, "
        f"PRIMARY KEY ({', '.join(HIST_KEY)})) WITHOUT ROWID"
    )
    db.execute("INSERT OR IGNORE INTO telemetry_meta VALUES ('kind', ?)", [KIND])
    db.execute("INSERT OR IGNORE INTO telemetry_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])


def check_kind(conn: sqlite3.Connection, path: Path, *, allow_new: bool) -> bool:
    """Raise unless ``conn`` is a telemetry database; returns False for a blank file (``allow_new``)."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a SQLite database ({exc}).",
                         hint="Point --telemetry-db at the telemetry.db the runtime writes.") from exc
    if not tables:
        if allow_new:
            return False
        raise StoreError(f"{path} is an empty database: no telemetry has been recorded in it yet.",
                         hint="Run some requests (or `sealinfer bench`) with this telemetry path first.")
    kind = None
    if "telemetry_meta" in tables:
        row = conn.execute("SELECT value FROM telemetry_meta WHERE key='kind'").fetchone()
        kind = row[0] if row else None
    if kind != KIND:
        hint = ("This looks like an audit log; pass it as --audit-db instead."
                if "audit_events" in tables else "Point --telemetry-db at the telemetry.db the runtime writes.")
        raise StoreError(f"{path} is not a sealinfer telemetry database (tables: {', '.join(sorted(tables))}).",
                         hint=hint)
    return True


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to an existing telemetry database (views must never create or alter one)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"Telemetry database {path} does not exist.",
                         hint="Pass the telemetry.db the runtime writes, or run `sealinfer bench` to create one.")
    if path.stat().st_size == 0:
        raise StoreError(f"Telemetry database {path} is an empty file: no telemetry has been recorded yet.",
                         hint="Run some requests (or `sealinfer bench`) with this telemetry path first.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open telemetry database {path}: {exc}.",
                         hint="Check the file's permissions.") from exc
    try:
        check_kind(conn, path, allow_new=False)
    except BaseException:
        conn.close()
        raise
    return conn
