"""The audit database's tables and triggers, and opening one (recognising files that are not ours).

Only ``seq``, ``body``, ``prev_hash`` and ``entry_hash`` are stored for a record; every other column
is a VIRTUAL generated column read out of the hashed body, so there is no second copy of any field
that could be altered without breaking the chain. (No indexes on them either, for the same reason.)
Nothing may call sqlite-utils' ``transform`` on these tables: it rebuilds them and drops the triggers.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path

import sqlite_utils

from sealinfer.runtime.errors import AuditIntegrityError, StoreError

KIND = "sealinfer-audit"
SCHEMA_VERSION = "1"
TABLES = ("audit_meta", "audit_keys", "audit_events", "audit_checkpoints")

_VIRTUAL = {
    "event_id": "$.event_id", "time": "$.time", "actor": "$.actor", "role": "$.role", "purpose": "$.purpose",
    "action": "$.action", "model_id": "$.model_id", "model_version": "$.model_version",
    "model_digest": "$.model_digest", "policy_id": "$.policy_id", "policy_version": "$.policy_version",
    "decision": "$.decision", "outcome": "$.outcome", "error_code": "$.error_code", "device": "$.device",
    "tenant": "$.tenant", "break_glass": "$.break_glass", "latency_us": "$.latency_us",
}

_TABLES_SQL = (
    "CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE audit_keys (key_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, added TEXT NOT NULL)",
    "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, prev_hash BLOB NOT NULL, "
    "entry_hash BLOB NOT NULL, "
    + ", ".join(f"{c} GENERATED ALWAYS AS (json_extract(body, '{p}')) VIRTUAL" for c, p in _VIRTUAL.items())
    + ")",
    "CREATE TABLE audit_checkpoints (tree_size INTEGER PRIMARY KEY, root BLOB NOT NULL, time TEXT NOT NULL, "
    "key_id TEXT NOT NULL, signature BLOB NOT NULL)",
)


def _triggers() -> list[str]:
    out = []
    for table in TABLES:
        for op in ("UPDATE", "DELETE"):
            out.append(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
            )
    return out


def genesis_hash(log_id: str) -> bytes:
    """``prev_hash`` of record 1: binds the chain to this log so records cannot be transplanted."""
    return hashlib.sha256(b"sealinfer-audit/v1 genesis " + log_id.encode()).digest()


def leaf_input(seq: int, prev_hash: bytes, body: bytes) -> bytes:
    """What a record's ``entry_hash`` covers (entry_hash = SHA-256(0x00 || this), an RFC 9162 leaf)."""
    return seq.to_bytes(8, "big") + prev_hash + body


class AuditSchemaError(AuditIntegrityError):
    """The file is an audit log but tables or metadata were removed."""


class NotAnAuditLogError(StoreError):
    """The path is missing, not SQLite, or a SQLite file of another kind."""

    code = "not_an_audit_log"
    exit_code = 2


def _not_audit(path: Path, why: str) -> StoreError:
    return NotAnAuditLogError(f"{path} is not a sealinfer audit log ({why}).",
                      hint="Pass the audit.db the runtime writes (policy profile: audit section).")


def check_kind(conn: sqlite3.Connection, path: Path) -> str | None:
    """The log id, None for a blank database; raise ``StoreError`` for any other file."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise _not_audit(path, f"not a SQLite database: {exc}") from None
    if not tables:
        return None
    if "audit_meta" not in tables:
        shown = ", ".join(sorted(tables)[:6])
        raise _not_audit(path, f"it holds tables {shown} and no audit_meta")
    meta = dict(conn.execute("SELECT key, value FROM audit_meta").fetchall())
    if meta.get("kind") != KIND:
        raise _not_audit(path, f"audit_meta.kind is {meta.get('kind')!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{path} is an audit log of schema version {meta.get('schema_version')!r}; "
                         f"this sealinfer reads version {SCHEMA_VERSION}.",
                         hint="Verify it with the sealinfer release that wrote it.")
    missing = [t for t in TABLES if t not in tables]
    if missing or "log_id" not in meta:
        raise AuditSchemaError(f"{path} is a damaged audit log: missing {', '.join(missing) or 'log_id'}.",
                               hint="Someone dropped parts of the log; restore it from the retention archive.")
    return meta["log_id"]


def create(conn: sqlite3.Connection, created: str) -> str:
    log_id = str(uuid.uuid4())
    db = sqlite_utils.Database(conn)
    with conn:
        for sql in (*_TABLES_SQL, *_triggers()):
            db.execute(sql)
        conn.executemany("INSERT INTO audit_meta (key, value) VALUES (?, ?)",
                         [("kind", KIND), ("schema_version", SCHEMA_VERSION), ("log_id", log_id),
                          ("created", created)])
    return log_id


def connect(path: str | os.PathLike[str], *, readonly: bool) -> sqlite3.Connection:
    p = Path(path)
    if readonly:
        if not p.is_file():
            raise NotAnAuditLogError(f"Audit log {p} does not exist.", hint="Check the --db path.")
        try:  # read-only still needs the WAL index; fall back to a normal open if the folder allows it
            conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return conn
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise _not_audit(p, f"not a SQLite database: {exc}") from None
            return sqlite3.connect(str(p), check_same_thread=False)
    if p.exists() and p.is_dir():
        raise StoreError(f"Audit log path {p} is a directory.", hint="Pass a file path such as audit.db.")
    try:
        return sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open audit log {p}: {exc}.", hint="Check the folder exists and is writable.") \
            from None


def open_readonly(path: str | os.PathLike[str]) -> tuple[sqlite3.Connection, str]:
    conn = connect(path, readonly=True)
    log_id = check_kind(conn, Path(path))
    if log_id is None:
        conn.close()
        raise _not_audit(Path(path), "the database is empty")
    return conn, log_id
