"""Reading the audit log and the DP budget ledger, defensively.

Both stores belong to other parts of sealinfer. Their verifiers are used when importable; otherwise
the tables are read directly and the chain is labelled "not verified". Only counts, ids, roles and
decisions leave this module — never input digests' preimages or anything else about patients.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from sealinfer.runtime.errors import AuditIntegrityError, StoreError

#: Audit columns safe and useful to show; anything else the audit store adds is left out.
EVENT_COLUMNS = ("seq", "time", "actor", "role", "purpose", "action", "model_id", "decision", "outcome",
                 "error_code", "break_glass", "reasons")
MAX_EVENT_ROWS = 200


def _open_ro(path: Path, what: str) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"{what} {path} does not exist.", hint=f"Check the path given for the {what}.")
    if path.stat().st_size == 0:
        raise StoreError(f"{what} {path} is an empty file.", hint="Nothing has been recorded in it yet.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{what} {path} is not a SQLite database ({exc}).",
                         hint=f"Pass the {what} file written by sealinfer.") from exc
    return conn


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    # table_xinfo also lists generated columns (the audit store exposes body fields that way).
    return [r[1] for r in conn.execute(f"PRAGMA table_xinfo({table})")]


def verify_chain(path: Path) -> dict[str, Any]:
    """Chain status via the audit verifier if it is installed; ``status`` is verified/broken/not verified."""
    try:
        from sealinfer.runtime.audit.verify import verify_log
    except ImportError:
        return {"status": "not verified", "detail": "audit verifier not installed"}
    try:
        res = verify_log(path)
    except AuditIntegrityError as exc:
        return {"status": "broken", "detail": str(exc)}
    except Exception as exc:  # not a log the verifier recognises: say so rather than crash
        return {"status": "unreadable", "detail": str(exc)}
    trust = "" if getattr(res, "keys_trusted", False) else " Checkpoint keys read from the log itself."
    detail = res.summary() if hasattr(res, "summary") else (res.problem or "")
    return {
        "status": "verified" if res.ok else "broken", "detail": detail + (trust if res.ok else ""),
        "records": res.records, "first_bad_seq": res.first_bad_seq, "checkpoints": res.checkpoints,
        "last_checkpoint_time": res.last_checkpoint_time,
    }


def audit_overview(path: Path) -> dict[str, Any]:
    """Counts, checkpoints, denials per day and the latest denials / break-glass events."""
    conn = _open_ro(path, "audit database")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "audit_events" not in tables:
            raise StoreError(f"{path} is not a sealinfer audit database (no audit_events table).",
                             hint="Pass the audit.db the runtime writes as --audit-db.")
        cols = _columns(conn, "audit_events")
        shown = [c for c in EVENT_COLUMNS if c in cols]
        out: dict[str, Any] = {"records": conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]}
        deny = ("decision = 'deny'" if "decision" in cols
                else "outcome = 'denied'" if "outcome" in cols else "0")
        glass = "break_glass" if "break_glass" in cols else "0"
        out["denials"] = conn.execute(f"SELECT count(*) FROM audit_events WHERE {deny}").fetchone()[0]
        out["break_glass"] = conn.execute(
            f"SELECT count(*) FROM audit_events WHERE coalesce({glass}, 0) != 0").fetchone()[0]
        order = "seq" if "seq" in cols else "rowid"
        select = ", ".join(shown) or "rowid"
        out["recent_denials"] = pd.read_sql_query(
            f"SELECT {select} FROM audit_events WHERE {deny} ORDER BY {order} DESC LIMIT {MAX_EVENT_ROWS}", conn)
        out["recent_break_glass"] = pd.read_sql_query(
            f"SELECT {select} FROM audit_events WHERE coalesce({glass}, 0) != 0 ORDER BY {order} DESC "
            f"LIMIT {MAX_EVENT_ROWS}", conn)
        if "time" in cols:
            out["denials_per_day"] = pd.read_sql_query(
                f"SELECT substr(time, 1, 10) AS day, sum({deny}) AS denials, "
                f"sum(coalesce({glass}, 0) != 0) AS break_glass, count(*) AS total "
                f"FROM audit_events GROUP BY day ORDER BY day", conn)
        else:
            out["denials_per_day"] = pd.DataFrame(columns=["day", "denials", "break_glass", "total"])
        out["checkpoints"], out["last_checkpoint_time"], out["last_checkpoint_seq"] = 0, None, None
        if "audit_checkpoints" in tables:
            ccols = _columns(conn, "audit_checkpoints")
            out["checkpoints"] = conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0]
            seq_col = next((c for c in ("seq", "tree_size") if c in ccols), "rowid")
            time_col = "time" if "time" in ccols else "NULL"
            row = conn.execute(f"SELECT {seq_col}, {time_col} FROM audit_checkpoints "
                               f"ORDER BY {seq_col} DESC LIMIT 1").fetchone()
            if row is not None:
                out["last_checkpoint_seq"], out["last_checkpoint_time"] = row
        return out
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot read audit database {path}: {exc}.",
                         hint="Check that it is the audit.db sealinfer writes.") from exc
    finally:
        conn.close()


def ledger_summary(path: Path | None) -> tuple[pd.DataFrame | None, str]:
    """The DP-statistics budget per dataset, or ``None`` and a note saying why there is none."""
    if path is None:
        return None, "No DP ledger configured (start the dashboard with --privacy-db to show budgets)."
    try:
        from sealinfer.privacy.ledger import BudgetLedger
    except ImportError:
        return None, "No DP ledger configured: the privacy ledger module is not installed."
    if not Path(path).is_file():
        raise StoreError(f"DP ledger {path} does not exist.", hint="Check the path given as --privacy-db.")
    rows = BudgetLedger(path).summary()
    df = pd.DataFrame(rows, columns=["dataset", "budget_epsilon", "spent_epsilon", "queries"])
    df["used_pct"] = (df["spent_epsilon"] / df["budget_epsilon"] * 100.0).where(df["budget_epsilon"] > 0)
    return df, f"DP ledger {path}"
