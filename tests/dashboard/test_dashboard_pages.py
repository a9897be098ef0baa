"""Every dashboard page under ``AppTest`` with fixture databases: no exception, the expected charts, and
figures that match values computed independently from the raw rows."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import sealinfer.dashboard
from sealinfer.dashboard.fixtures import make_foreign_audit_db

APP = Path(sealinfer.dashboard.__file__).parent / "app.py"
DEADLINES_MS = {"stat": 200.0, "routine": 2000.0, "batch": 60000.0}  # the defaults


@pytest.fixture(autouse=True)
def _fresh_cache():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def open_page(
    monkeypatch, page: str, *, telemetry: Path | str | None, audit: Path | None = None, privacy: Path | None = None
) -> AppTest:
    monkeypatch.setenv("SEALINFER_TELEMETRY_DB", str(telemetry or ""))
    monkeypatch.setenv("SEALINFER_AUDIT_DB", str(audit or ""))
    monkeypatch.setenv("SEALINFER_PRIVACY_DB", str(privacy or ""))
    monkeypatch.setenv("SEALINFER_DASHBOARD_PROFILE", "")  # default deadlines
    monkeypatch.setenv("SEALINFER_DASHBOARD_REFRESH_S", "0")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page != "page_overview.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+) (ms|s)", text).groups()
    return float(value) * (1000 if unit == "s" else 1)


def test_overview(monkeypatch, telemetry_db: Path, raw) -> None:
    at = open_page(monkeypatch, "page_overview.py", telemetry=telemetry_db)
    m = metrics(at)
    outcome = raw["outcome"]
    assert m["Requests"] == f"{len(outcome):,}"
    assert m["Errors"] == f"{int((outcome == 'error').sum()):,}"
    assert m["Denials"] == f"{int((outcome == 'denied').sum()):,}"
    ok_ms = raw["total_us"][outcome == "ok"].astype(float) / 1000
    for q in (50, 95, 99):
        exact = float(np.quantile(ok_ms, q / 100))
        assert exact / 1.25 <= ms(m[f"p{q} latency"]) <= exact * 1.25, (q, exact, m[f"p{q} latency"])
    for prio, deadline in DEADLINES_MS.items():
        mine = raw["priority"] == prio
        served = mine & (outcome != "denied")
        met = mine & (outcome == "ok") & (raw["total_us"].astype(float) <= deadline * 1000)
        assert m[f"SLO {prio} (≤ {deadline:g} ms)"] == f"{met.sum() / served.sum() * 100:.2f} %"
    specs = charts(at)
    assert len(specs) == 3
    assert {t["name"] for t in specs[0]["data"]} == {"ok", "denied", "errors"}
    assert all(len(t.get("x", [])) <= 10_000 for s in specs for t in s["data"])


def test_overhead(monkeypatch, telemetry_db: Path, raw) -> None:
    at = open_page(monkeypatch, "page_overhead.py", telemetry=telemetry_db)
    m = metrics(at)
    assert m["Configurations"] == str(len(set(raw["config"])))
    assert m["Models"] == str(len(set(raw["model"])))
    ok = raw["outcome"] == "ok"
    service = raw["total_us"].astype(float) - raw["queue_us"].astype(float)
    means = {
        (c, mo): service[ok & (raw["config"] == c) & (raw["model"] == mo)].mean()
        for c in set(raw["config"])
        for mo in set(raw["model"])
    }
    worst = max((v / means[("plain", mo)] - 1) * 100 for (c, mo), v in means.items())
    assert float(m["Largest overhead"].rstrip(" %")) == pytest.approx(worst, abs=0.051)
    specs = charts(at)
    assert len(specs) == 4
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert titles[0].startswith("Latency ECDF") and "phase" in titles[2] and "model size" in titles[3]
    assert {t["name"] for t in specs[0]["data"]} == set(raw["config"])
    assert {t["type"] for t in specs[1]["data"]} == {"box"}
    # Narrowing to one model re-renders every chart for that model only.
    at.selectbox(key="overhead_model").set_value("cxr-triage").run()
    assert not at.exception
    assert len(charts(at)) == 4
    table = at.dataframe[0].value
    assert set(table["model"]) == {"cxr-triage"}


def test_scheduler(monkeypatch, telemetry_db: Path, raw) -> None:
    at = open_page(monkeypatch, "page_scheduler.py", telemetry=telemetry_db)
    m = metrics(at)
    devices = sorted(set(raw["device"]))
    assert m["Devices used"] == str(len(devices))
    ok = raw["outcome"] == "ok"
    busy = {d: raw["inference_us"][ok & (raw["device"] == d)].astype(float).sum() for d in devices}
    assert m["Busiest device"] == max(busy, key=busy.get)
    specs = charts(at)
    assert len(specs) == 3
    assert {d for t in specs[0]["data"] for d in t["x"]} == set(devices)
    assert {t["name"] for t in specs[0]["data"]} == set(raw["model"])
    assert any(t.get("name") == "prediction = measurement" for t in specs[1]["data"])


def test_privacy_without_ledger(monkeypatch, telemetry_db: Path) -> None:
    at = open_page(monkeypatch, "page_privacy.py", telemetry=telemetry_db)
    conn = sqlite3.connect(telemetry_db)
    eps = [r[0] for r in conn.execute("SELECT dp_epsilon FROM models")]
    with_dp = [e for e in eps if e is not None]
    m = metrics(at)
    assert m["Models trained with DP"] == f"{len(with_dp)} of {len(eps)}"
    assert m["Largest ε"] == f"{max(with_dp):g}"
    assert len(charts(at)) == 1
    assert any("No DP ledger configured" in i.value for i in at.info)


def test_privacy_with_ledger(monkeypatch, telemetry_db: Path, tmp_path: Path) -> None:
    from sealinfer.privacy import ledger as ledger_mod

    path = tmp_path / "ledger.db"
    ledger = ledger_mod.BudgetLedger(path)
    summary = ledger.summary()
    at = open_page(monkeypatch, "page_privacy.py", telemetry=telemetry_db, privacy=path)
    if summary:
        spent = sum(r["spent_epsilon"] for r in summary)
        assert metrics(at)["Budget used (all datasets)"].startswith(f"{spent:g} of")
    else:
        assert any("no DP queries recorded yet" in i.value for i in at.info)


def test_audit_and_models(monkeypatch, telemetry_db: Path, audit_db: Path) -> None:
    from sealinfer.runtime.audit.verify import verify_log

    at = open_page(monkeypatch, "page_audit.py", telemetry=telemetry_db, audit=audit_db)
    res = verify_log(audit_db)
    conn = sqlite3.connect(audit_db)
    count = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    m = metrics(at)
    assert m["Audit chain"] == ("verified" if res.ok else "broken")
    assert m["Audit records"] == f"{count('SELECT count(*) FROM audit_events'):,}"
    assert m["Checkpoints"] == str(res.checkpoints) and res.checkpoints >= 3
    assert m["Denials"] == str(count("SELECT count(*) FROM audit_events WHERE json_extract(body,'$.decision')='deny'"))
    assert m["Break-glass events"] == str(
        count("SELECT count(*) FROM audit_events WHERE json_extract(body,'$.break_glass')")
    )
    assert m["Models with a valid signature"] == "3 of 3"
    denials = at.dataframe[0].value
    assert len(denials) > 0 and set(denials["decision"]) == {"deny"}
    assert "input_digest" not in denials.columns and "body" not in denials.columns  # no PHI-adjacent data
    models = at.dataframe[-1].value
    assert set(models["signature"]) == {"valid"} and "ε = 3" in set(models["dp"])
    assert len(charts(at)) == 1


def test_audit_db_the_verifier_does_not_recognise(monkeypatch, telemetry_db: Path, tmp_path: Path) -> None:
    foreign = make_foreign_audit_db(tmp_path / "foreign.db", 120)
    at = open_page(monkeypatch, "page_audit.py", telemetry=telemetry_db, audit=foreign)
    m = metrics(at)
    assert m["Audit chain"] == "unreadable"
    assert m["Audit records"] == "120"
    assert any("could not read this log" in w.value for w in at.warning)


@pytest.mark.parametrize(
    "page", ["page_overview.py", "page_overhead.py", "page_scheduler.py", "page_privacy.py", "page_audit.py"]
)
def test_bad_databases_give_messages_not_tracebacks(monkeypatch, tmp_path: Path, audit_db: Path, page: str) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 200)
    cases = {
        tmp_path / "missing.db": "does not exist",
        empty: "empty file",
        garbage: "not a SQLite database",
        audit_db: "not a sealinfer telemetry database",
    }
    for path, message in cases.items():
        st.cache_data.clear()
        at = open_page(monkeypatch, page, telemetry=path)
        assert any(message in e.value for e in at.error), (path, [e.value for e in at.error])
    at = open_page(monkeypatch, page, telemetry=None)
    assert any("No telemetry database configured" in i.value for i in at.info)


def test_empty_store_says_no_requests(monkeypatch, tmp_path: Path) -> None:
    from sealinfer.runtime.telemetry.store import TelemetryStore

    TelemetryStore(tmp_path / "t.db").close()
    for page in ("page_overview.py", "page_overhead.py", "page_scheduler.py"):
        at = open_page(monkeypatch, page, telemetry=tmp_path / "t.db")
        assert any("No " in i.value and "recorded in this time window" in i.value for i in at.info)
        assert not charts(at)


def test_time_window_filters(monkeypatch, telemetry_db: Path) -> None:
    # The fixture's traffic is in the past; a "last 15 minutes" window is empty, not an error.
    at = open_page(monkeypatch, "page_overview.py", telemetry=telemetry_db)
    at.sidebar.selectbox(key="window").set_value("Last 15 minutes").run()
    assert not at.exception
    assert any("recorded in this time window" in i.value for i in at.info)
