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


# One JSON parse per record: json_extract with many paths returns one JSON array per row, and rows are
# grouped (in Python) on that array's text. ``time`` comes first and is fixed-width (27 characters), so the day and
# the rest of the key are plain substrings; ``break_glass`` comes second so it can be tested the same way.
_PATHS = ("$.time", "$.break_glass", "$.action", "$.decision", "$.outcome", "$.actor", "$.role", "$.purpose",
          "$.policy_id", "$.policy_version", "$.model_id", "$.model_version", "$.model_digest", "$.error_code",
          "$.reasons", "$.details.signature", "$.details.signer_key_id", "$.details.watermark",
          "$.details.dp_epsilon")
_FIELDS = _PATHS[2:]
_ROWS = f"SELECT seq, json_extract(body, {', '.join(repr(p) for p in _PATHS)}) FROM audit_events " \
        "WHERE seq BETWEEN ? AND ? ORDER BY seq"


def _groups(conn: sqlite3.Connection, first: int, stop: int) -> dict[tuple[str, str], list[Any]]:
    """(day, rest of the key) -> [count, first time, last time, break-glass seqs], one parse per record.

    Grouping in Python instead of GROUP BY: SQLite would re-run json_extract for every reference to the
    extracted array and sort a million long keys. Times are non-decreasing along seq, so the first and
    last time seen in a group are its minimum and maximum.
    """
    groups: dict[tuple[str, str], list[Any]] = {}
    get = groups.get
    for seq, a in conn.execute(_ROWS, [first, stop]):
        key = (a[2:12], a[31:])
        g = get(key)
        if g is None:
            groups[key] = [1, a[2:29], a[2:29], [seq] if a[31] == "t" else None]
        else:
            g[0] += 1
            g[2] = a[2:29]
            if g[3] is not None:
                g[3].append(seq)
    return groups


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


def _bump(counter: dict[Any, int], key: Any, n: int) -> None:
    counter[key] = counter.get(key, 0) + n


def _gather(conn: sqlite3.Connection, r: Report, lo_t: str, hi_t: str, records: int) -> None:
    last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
    first = _first_seq_at(conn, lo_t, 1, last)
    stop = _first_seq_at(conn, hi_t, first, last) - 1
    if stop < first:
        return
    actors: set[str] = set()
    reasons: dict[str, int] = {}
    codes: dict[str, int] = {}
    daily: dict[str, dict[str, Any]] = {}
    policies: dict[tuple[str, str], dict[str, Any]] = {}
    models: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    glass_seqs: list[int] = []
    for (day, rest), (n, t0, t1, glass) in _groups(conn, first, stop).items():
        values = json.loads("[" + rest)
        f = dict(zip(_FIELDS, values[1:], strict=True))
        r.events += n
        _bump(r.by_action, f["$.action"], n)
        _bump(r.by_decision, f["$.decision"], n)
        _bump(r.by_outcome, f["$.outcome"], n)
        _bump(r.by_role, f["$.role"], n)
        actors.add(f["$.actor"])
        d = daily.setdefault(day, {"day": day, "allow": 0, "deny": 0, "error": 0})
        if f["$.decision"] == "deny":
            d["deny"] += n
            for reason in f["$.reasons"] or ["(no reason recorded)"]:
                _bump(reasons, reason, n)
        elif f["$.outcome"] == "error":
            d["error"] += n
        else:
            d["allow"] += n
        if f["$.outcome"] != "ok":
            _bump(codes, f["$.error_code"] or "(none)", n)
        if values[0]:
            r.break_glass_count += n
            glass_seqs.extend(glass[:_TOP])
        pol = policies.setdefault((f["$.policy_id"] or "(none)", f["$.policy_version"] or "(none)"), {
            "policy_id": f["$.policy_id"] or "(none)", "policy_version": f["$.policy_version"] or "(none)",
            "records": 0, "first": t0, "last": t1})
        pol["records"] += n
        pol["first"], pol["last"] = min(pol["first"], t0), max(pol["last"], t1)
        if f["$.action"] in ("logoff", "session_timeout"):
            r.logoff_events += n
        if f["$.action"] in ("load", "infer") and (f["$.action"] == "infer" or f["$.outcome"] == "ok"):
            key = (f["$.model_id"], f["$.model_version"], f["$.model_digest"])
            m = models.setdefault(key, {
                "model_id": key[0], "model_version": key[1], "model_digest": key[2],
                "signature": "NO LOAD RECORD IN PERIOD", "signer_key_id": None,
                "watermark": "NO LOAD RECORD IN PERIOD", "dp_epsilon": None, "loads": 0, "first_load": None,
                "last_load": None, "inferences": 0})
            if f["$.action"] == "infer":
                m["inferences"] += n
            else:
                m["loads"] += n
                m["signature"] = f["$.details.signature"] or "NOT RECORDED"
                m["signer_key_id"] = f["$.details.signer_key_id"]
                m["watermark"] = f["$.details.watermark"] or "NOT RECORDED"
                m["dp_epsilon"] = f["$.details.dp_epsilon"]
                m["first_load"] = min(filter(None, (m["first_load"], t0)))
                m["last_load"] = max(filter(None, (m["last_load"], t1)))
    r.actors = len(actors)
    r.by_action = dict(sorted(r.by_action.items(), key=lambda kv: -kv[1]))
    r.by_role = dict(sorted(r.by_role.items(), key=lambda kv: -kv[1]))
    r.denials_by_reason = sorted(reasons.items(), key=lambda kv: -kv[1])[:_TOP]
    r.denials_by_code = sorted(codes.items(), key=lambda kv: -kv[1])[:_TOP]
    r.daily = [daily[k] for k in sorted(daily)]
    r.policies = sorted(policies.values(), key=lambda p: p["first"])
    r.models = sorted(models.values(), key=lambda m: (m["first_load"] or "~", str(m["model_id"])))[:_TOP]
    shown = sorted(glass_seqs)[:_TOP]
    if shown:
        marks = ",".join("?" * len(shown))
        r.break_glass = [dict(zip(("seq", "time", "actor", "role", "purpose", "action", "model", "decision"), x,
                                  strict=True)) for x in conn.execute(
            f"SELECT seq, time, actor, role, purpose, action, model_id, decision FROM audit_events "
            f"WHERE seq IN ({marks}) ORDER BY seq", shown)]


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
