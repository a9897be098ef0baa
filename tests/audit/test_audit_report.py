"""Compliance reports: every safeguard row in the PDF, plain NO EVIDENCE, FAILED when the log is bad."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.record import AuditEvent
from sealinfer.runtime.errors import ConfigurationError, StoreError
from sealinfer.runtime.reports.evidence import build_report
from sealinfer.runtime.reports.html import render_html
from sealinfer.runtime.reports.pdf import render_pdf
from sealinfer.runtime.reports.safeguards import SAFEGUARDS

from .conftest import Raw, build_log, make_signer, trust_for

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
KEYS = [{"id": "kek-2", "kind": "kek", "status": "active", "created": "2026-06-01T00:00:00Z",
         "rotated_from": "kek-1"},
        {"id": "kek-1", "kind": "kek", "status": "retired", "created": "2025-06-01T00:00:00Z"}]


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_log(tmp_path_factory.mktemp("report") / "audit.db", 200)


def _report(path: Path, **kw):
    return build_report(path, start=NOW - DAY, end=NOW + DAY, trust_store=trust_for(make_signer()), keys=KEYS, **kw)


def test_report_evidence_matches_the_log(log_path: Path) -> None:
    r = _report(log_path)
    conn = sqlite3.connect(log_path)
    q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    assert r.integrity == "VERIFIED" and r.events == q("SELECT count(*) FROM audit_events")
    assert r.by_decision["deny"] == q("SELECT count(*) FROM audit_events WHERE decision = 'deny'")
    assert r.break_glass_count == q("SELECT count(*) FROM audit_events WHERE break_glass")
    assert dict(r.denials_by_reason) == {"phi_requires_treatment_purpose": r.by_decision["deny"]}
    assert {(p["policy_id"], p["policy_version"]) for p in r.policies} == {("hipaa", "2026.11.1"),
                                                                          ("hipaa", "2026.11.2")}
    loaded = [m for m in r.models if m["loads"]]
    assert len(loaded) == q("SELECT count(*) FROM audit_events WHERE action = 'load' AND outcome = 'ok'")
    assert all(m["signature"] == "valid" and m["watermark"] == "verified" and m["dp_epsilon"] == 3.0 for m in loaded)
    status = {s.ref: s.status for s in r.safeguards}
    assert [s.ref for s in r.safeguards] == [ref for ref, _ in SAFEGUARDS]
    assert status["164.312(b)"] == "EVIDENCE" and status["164.312(a)(2)(iii)"] == "NO EVIDENCE"
    assert json.loads(r.to_json())["verification"]["head_hash"] == r.verification["head_hash"]


def test_pdf_contains_every_safeguard_row(log_path: Path, tmp_path: Path) -> None:
    out = render_pdf(_report(log_path), tmp_path / "report.pdf")
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for ref, name in SAFEGUARDS:
        assert f"§{ref}" in flat.replace(" ", "") or ref in flat.replace(" ", ""), ref
        assert " ".join(name.split()[:2]) in flat, name
    assert "AUDIT LOG INTEGRITY: VERIFIED" in flat and "kek-2" in flat
    assert "<svg" in render_html(_report(log_path))  # charts are inline, nothing to fetch


def test_empty_period_says_no_evidence(log_path: Path) -> None:
    r = build_report(log_path, start=NOW - 10 * DAY, end=NOW - 9 * DAY, trust_store=trust_for(make_signer()))
    assert r.empty and r.events == 0
    status = {s.ref: s.status for s in r.safeguards}
    for ref in ("164.312(a)(1)", "164.312(a)(2)(i)", "164.312(a)(2)(ii)", "164.312(d)"):
        assert status[ref] == "NO EVIDENCE"
    assert "NO EVIDENCE" in render_html(r) and any("no audit records" in w for w in r.warnings)
    with pytest.raises(ConfigurationError, match="before it starts"):
        build_report(log_path, start=NOW, end=NOW - DAY)


def test_tampered_log_report_says_failed(log_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    shutil.copy(log_path, path)
    raw = Raw(path)
    raw.conn.execute("DELETE FROM audit_events WHERE seq = 17")
    raw.close()
    r = _report(path)
    assert r.failed and r.verification["first_bad_seq"] == 17
    status = {s.ref: s.status for s in r.safeguards}
    assert status["164.312(b)"] == "FAILED" and status["164.312(c)(1)/(c)(2)"] == "FAILED"
    assert "EVIDENCE" not in status.values()  # nothing passes on an unverified log
    out = render_pdf(r, tmp_path / "bad.pdf")
    first_page = subprocess.run(["pdftotext", "-l", "1", str(out), "-"], capture_output=True, text=True).stdout
    assert "INTEGRITY: FAILED" in " ".join(first_page.split())


def test_untrusted_keys_are_not_reported_as_verified(log_path: Path) -> None:
    r = build_report(log_path, start=NOW - DAY, end=NOW + DAY)
    assert r.integrity == "UNTRUSTED"
    assert {s.ref: s.status for s in r.safeguards}["164.312(b)"] == "PARTIAL"


def test_models_without_load_details_are_not_passed(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, signer=make_signer()) as log:
        log.append(AuditEvent(actor="svc", role="service", purpose="operations", action="load", model_id="cxr",
                              model_version="3", details={}))
        log.append(AuditEvent(actor="dr", role="clinician", purpose="treatment", action="infer", model_id="cxr",
                              model_version="3"))
    r = _report(path)
    m = r.models[0]
    assert m["signature"] == "NOT RECORDED" and m["watermark"] == "NOT RECORDED" and m["inferences"] == 1
    status = {s.ref: s.status for s in r.safeguards}
    assert status["164.312(a)(2)(iv)"] == "PARTIAL" and status["164.312(a)(1)"] == "PARTIAL"  # no denial shown


def test_telemetry_db_is_read_and_checked(log_path: Path, tmp_path: Path) -> None:
    tele = tmp_path / "telemetry.db"
    conn = sqlite3.connect(tele)
    conn.execute("CREATE TABLE requests (ts REAL, outcome TEXT, device TEXT)")
    conn.execute("CREATE TABLE models (digest TEXT, name TEXT, version TEXT, signer_key_id TEXT, signature_ok INT, "
                 "watermark_status TEXT, dp_epsilon REAL, param_bytes INT, loaded_at REAL)")
    conn.executemany("INSERT INTO requests VALUES (?, ?, ?)", [(NOW.timestamp(), "ok", "cpu:0")] * 3)
    conn.commit()
    conn.close()
    r = _report(log_path, telemetry_db=tele)
    assert r.telemetry["requests"] == 3 and r.telemetry["by_device"] == {"cpu:0": 3}
    with pytest.raises(StoreError, match="not a sealinfer telemetry"):
        _report(log_path, telemetry_db=log_path)
