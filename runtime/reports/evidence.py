"""Gather compliance evidence for a period from the audit log (and telemetry), aggregated in SQL.

The period is located by binary search on ``time`` (the log keeps times non-decreasing along the
chain), then the period's records are read once into a temporary table of plain columns; every
aggregate after that is native SQLite. The chain is verified first and the verification result travels
with the report: evidence from a log that failed verification is marked as such, never passed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.record import rfc3339, to_rfc3339
from sealinfer.runtime.audit.verify import VerifyResult, verify_log
from sealinfer.runtime.errors import ConfigurationError, StoreError
from sealinfer.runtime.keys.signing import TrustStore
from sealinfer.runtime.reports.safeguards import SafeguardRow, assess_safeguards

_TOP = 50  # rows listed per table; totals always cover everything


@dataclass
class Report:
    period_start: str
    period_end: str
    generated_at: str
    audit_db: str
    verification: dict[str, Any]
    integrity: str  # VERIFIED | UNTRUSTED | FAILED
    events: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    by_decision: dict[str, int] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    actors: int = 0
    by_role: dict[str, int] = field(default_factory=dict)
    denials_by_reason: list[tuple[str, int]] = field(default_factory=list)
    denials_by_code: list[tuple[str, int]] = field(default_factory=list)
    break_glass_count: int = 0
    break_glass: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    daily: list[dict[str, Any]] = field(default_factory=list)
    logoff_events: int = 0
    keys: list[dict[str, Any]] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None
    safeguards: list[SafeguardRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.integrity == "FAILED"

    @property
    def empty(self) -> bool:
        return self.events == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


def _integrity(result: VerifyResult) -> str:
    if not result.ok:
        return "FAILED"
    return "VERIFIED" if result.keys_trusted else "UNTRUSTED"


def _first_seq_at(conn: sqlite3.Connection, moment: str, lo: int, hi: int) -> int:
    """Smallest seq in lo..hi+1 whose time is >= moment (times are non-decreasing along the chain)."""
    while lo <= hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT time FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT 1", [mid]).fetchone()
        if row is None or row[0] is None or row[0] >= moment:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


_MATERIALISE = """
CREATE TEMP TABLE ev AS SELECT seq, time, substr(time, 1, 10) AS day, action, decision, outcome, actor, role,
  purpose, policy_id, policy_version, model_id, model_version, model_digest, error_code, break_glass,
  CASE WHEN decision = 'deny' THEN json_extract(body, '$.reasons') END AS reasons,
  CASE WHEN action = 'load' THEN json_extract(body, '$.details') END AS details
FROM audit_events WHERE seq BETWEEN ? AND ?
"""


def build_report(
    audit_db: str | os.PathLike[str],
    *,
    telemetry_db: str | os.PathLike[str] | None = None,
    start: datetime,
    end: datetime,
    trust_store: TrustStore | None = None,
    keys: list[dict[str, Any]] | None = None,
) -> Report:
    """Verify the log, then gather the evidence for ``start <= time < end``."""
    if end <= start:
        raise ConfigurationError(f"The report period ends ({end}) before it starts ({start}).",
                                 hint="Pass --from earlier than --to.")
    result = verify_log(audit_db, trust_store)
    lo_t, hi_t = to_rfc3339(start), to_rfc3339(end)
    report = Report(period_start=lo_t, period_end=hi_t, generated_at=rfc3339(_now_ns()),
                    audit_db=str(Path(audit_db)), verification=result.to_dict(), integrity=_integrity(result),
                    keys=[_key_row(k) for k in (keys or [])])
    conn, _ = schema.open_readonly(audit_db)
    try:
        conn.execute("PRAGMA temp_store = MEMORY")
        try:
            _gather(conn, report, lo_t, hi_t, result.records)
        except sqlite3.DatabaseError as exc:  # a damaged body (verify has already said FAILED)
            report.warnings.append(f"evidence could not be read from the log: {exc}")
    finally:
        conn.close()
    if telemetry_db is not None:
        report.telemetry = _telemetry(Path(telemetry_db), start, end)
    if report.empty:
        report.warnings.append(f"no audit records between {lo_t} and {hi_t}")
    if report.integrity == "FAILED":
        report.warnings.insert(0, f"AUDIT LOG INTEGRITY FAILED: {result.problem}")
    elif report.integrity == "UNTRUSTED":
        report.warnings.insert(0, "checkpoint signatures were checked only against keys stored in the log; "
                                  "pass the keyring's trust store for an independently verified report")
    report.safeguards = assess_safeguards(report)
    return report


def _key_row(key: dict[str, Any]) -> dict[str, Any]:
    row = {name: key.get(name) for name in ("id", "kind", "status", "created", "rotated_from", "retired_at",
                                            "revoked_at")}
    row["id"] = row["id"] or key.get("key_id") or "(unnamed)"
    return row


def _now_ns() -> int:
    import time

    return time.time_ns()


def _gather(conn: sqlite3.Connection, r: Report, lo_t: str, hi_t: str, records: int) -> None:
    last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
    first = _first_seq_at(conn, lo_t, 1, last)
    stop = _first_seq_at(conn, hi_t, first, last) - 1
    if stop < first:
        return
    conn.execute(_MATERIALISE, [first, stop])
    q = conn.execute
    r.events = q("SELECT count(*) FROM ev").fetchone()[0]
    r.by_action = dict(q("SELECT action, count(*) FROM ev GROUP BY action ORDER BY 2 DESC").fetchall())
    r.by_decision = dict(q("SELECT decision, count(*) FROM ev GROUP BY decision").fetchall())
    r.by_outcome = dict(q("SELECT outcome, count(*) FROM ev GROUP BY outcome").fetchall())
    r.actors = q("SELECT count(DISTINCT actor) FROM ev").fetchone()[0]
    r.by_role = dict(q("SELECT role, count(*) FROM ev GROUP BY role ORDER BY 2 DESC").fetchall())
    r.denials_by_reason = [tuple(x) for x in q(
        "SELECT j.value, count(*) FROM ev, json_each(ev.reasons) AS j WHERE ev.decision = 'deny' "
        "GROUP BY j.value ORDER BY 2 DESC LIMIT ?", [_TOP])]
    unexplained = q("SELECT count(*) FROM ev WHERE decision = 'deny' AND json_array_length(reasons) = 0"
                    ).fetchone()[0]
    if unexplained:
        r.denials_by_reason.append(("(no reason recorded)", unexplained))
    r.denials_by_code = [tuple(x) for x in q(
        "SELECT coalesce(error_code, '(none)'), count(*) FROM ev WHERE outcome != 'ok' GROUP BY 1 ORDER BY 2 DESC "
        "LIMIT ?", [_TOP])]
    r.break_glass_count = q("SELECT count(*) FROM ev WHERE break_glass").fetchone()[0]
    r.break_glass = [dict(zip(("seq", "time", "actor", "role", "purpose", "action", "model", "decision"), x,
                              strict=True)) for x in q(
        "SELECT seq, time, actor, role, purpose, action, model_id, decision FROM ev WHERE break_glass "
        "ORDER BY seq LIMIT ?", [_TOP])]
    r.policies = [dict(zip(("policy_id", "policy_version", "records", "first", "last"), x, strict=True)) for x in q(
        "SELECT coalesce(policy_id, '(none)'), coalesce(policy_version, '(none)'), count(*), min(time), max(time) "
        "FROM ev GROUP BY 1, 2 ORDER BY 4")]
    loads = {}
    for model_id, version, digest, details, n, t0, t1 in q(
            "SELECT model_id, model_version, model_digest, details, count(*), min(time), max(time) FROM ev "
            "WHERE action = 'load' AND outcome = 'ok' GROUP BY 1, 2, 3, 4 ORDER BY 6"):
        d = json.loads(details) if details else {}
        loads[(model_id, version, digest)] = {
            "model_id": model_id, "model_version": version, "model_digest": digest,
            "signature": d.get("signature", "NOT RECORDED"), "signer_key_id": d.get("signer_key_id"),
            "watermark": d.get("watermark", "NOT RECORDED"), "dp_epsilon": d.get("dp_epsilon"),
            "loads": n, "first_load": t0, "last_load": t1, "inferences": 0}
    for model_id, version, digest, n in q(
            "SELECT model_id, model_version, model_digest, count(*) FROM ev WHERE action = 'infer' "
            "GROUP BY 1, 2, 3"):
        entry = loads.setdefault((model_id, version, digest), {
            "model_id": model_id, "model_version": version, "model_digest": digest,
            "signature": "NO LOAD RECORD IN PERIOD", "signer_key_id": None, "watermark": "NO LOAD RECORD IN PERIOD",
            "dp_epsilon": None, "loads": 0, "first_load": None, "last_load": None, "inferences": 0})
        entry["inferences"] = n
    r.models = list(loads.values())[:_TOP]
    r.daily = [dict(zip(("day", "allow", "deny", "error"), x, strict=True)) for x in q(
        "SELECT day, sum(decision = 'allow' AND outcome = 'ok'), sum(decision = 'deny'), "
        "sum(outcome = 'error') FROM ev GROUP BY day ORDER BY day")]
    r.logoff_events = q("SELECT count(*) FROM ev WHERE action IN ('logoff', 'session_timeout')").fetchone()[0]


def _telemetry(path: Path, start: datetime, end: datetime) -> dict[str, Any]:
    if not path.is_file():
        raise StoreError(f"Telemetry database {path} does not exist.", hint="Check --telemetry-db.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a telemetry database ({exc}).", hint="Check --telemetry-db.") from None
    try:
        if "requests" not in tables or "models" not in tables:
            raise StoreError(f"{path} is not a sealinfer telemetry database (no requests/models tables).",
                             hint="Pass the telemetry.db the runtime writes.")
        t0, t1 = start.timestamp(), end.timestamp()
        out: dict[str, Any] = {"requests": conn.execute(
            "SELECT count(*) FROM requests WHERE ts >= ? AND ts < ?", [t0, t1]).fetchone()[0]}
        out["by_outcome"] = dict(conn.execute(
            "SELECT outcome, count(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY 1", [t0, t1]).fetchall())
        out["by_device"] = dict(conn.execute(
            "SELECT device, count(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY 1", [t0, t1]).fetchall())
        cols = ("digest", "name", "version", "signer_key_id", "signature_ok", "watermark_status", "dp_epsilon")
        out["models"] = [dict(zip(cols, row, strict=True)) for row in conn.execute(
            f"SELECT {', '.join(cols)} FROM models ORDER BY loaded_at LIMIT {_TOP}")]
        return out
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"Telemetry database {path} could not be read ({exc}).",
                         hint="Check it is the telemetry.db of this sealinfer version.") from None
    finally:
        conn.close()
