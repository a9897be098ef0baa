"""First render of each dashboard page over a 1,000,000-row telemetry database (target < 2 s per page),
beside a naive baseline (pandas reads the whole ``requests`` table and aggregates in Python), and the
payload each page sends to the browser (serialized element protos) against raw points.

    python benchmarks/dashboard.py [--rows 1000000] [--db /tmp/sealinfer-bench-telemetry.db]

The database is built once through TelemetryStore (the runtime's write path) and reused when the file
already holds ``--rows`` requests.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_S = 2.0
PAGES = ["page_overview.py", "page_overhead.py", "page_scheduler.py", "page_privacy.py", "page_audit.py"]


def ensure_db(path: Path, rows: int) -> float:
    from sealinfer.dashboard.fixtures import make_telemetry_db

    if path.exists():
        try:
            if sqlite3.connect(path).execute("SELECT count(*) FROM requests").fetchone()[0] == rows:
                return 0.0
        except sqlite3.Error:
            pass
        path.unlink()
    t = time.perf_counter()
    make_telemetry_db(path, rows, seed=1)
    return time.perf_counter() - t


def payload_bytes(at) -> int:
    """Bytes of every element proto the page produced (what Streamlit serializes to the browser)."""
    total = 0
    stack = [at._tree]
    while stack:
        node = stack.pop()
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            total += len(proto.SerializeToString())
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            stack.extend(children.values())
    return total


def render_pages(db: Path, audit: Path) -> dict[str, tuple[float, int, int]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import sealinfer.dashboard

    os.environ.update({"SEALINFER_TELEMETRY_DB": str(db), "SEALINFER_AUDIT_DB": str(audit),
                       "SEALINFER_DASHBOARD_PROFILE": "", "SEALINFER_DASHBOARD_REFRESH_S": "0"})
    app = Path(sealinfer.dashboard.__file__).parent / "app.py"
    out = {}
    for page in PAGES:
        at = AppTest.from_file(str(app), default_timeout=120).run()
        st.cache_data.clear()  # cold: the first visit of this page
        t = time.perf_counter()
        at.switch_page(page).run()
        elapsed = time.perf_counter() - t
        assert not at.exception, [e.value for e in at.exception]
        out[page] = (elapsed, payload_bytes(at), len(at.get("plotly_chart")))
    return out


def naive_page(db: Path, page: str) -> tuple[float, int]:
    """What a dashboard without rollups does: read every row, aggregate in pandas, chart raw points."""
    t = time.perf_counter()
    df = pd.read_sql_query("SELECT * FROM requests", sqlite3.connect(db))
    ok = df[df["outcome"] == "ok"]
    raw_points = 0
    if page == "page_overview.py":
        df["minute"] = (df["ts"] // 60).astype(int)
        df.groupby(["minute", "outcome"]).size()
        ok.groupby("priority")["total_us"].quantile([0.5, 0.95, 0.99])
        raw_points = len(ok)  # a per-request latency chart
    elif page == "page_overhead.py":
        ok.groupby(["config", "model"])[[c for c in df.columns if c.endswith("_us")]].mean()
        ok.groupby(["config", "model"])["total_us"].quantile([0.05, 0.25, 0.5, 0.75, 0.95])
        raw_points = len(ok)  # ECDF of every request
    elif page == "page_scheduler.py":
        df.groupby(["device", "model"]).size()
        ok[ok["predicted_us"].notna()][["predicted_us", "inference_us"]]
        raw_points = int(ok["predicted_us"].notna().sum()) * 2  # predicted vs measured scatter
    else:
        df["model"].unique()
        raw_points = 0
    elapsed = time.perf_counter() - t
    size = len(json.dumps(ok["total_us"].head(raw_points).round(1).tolist())) if raw_points else 0
    if page == "page_scheduler.py":
        size = len(json.dumps(ok[["predicted_us", "inference_us"]].dropna().round(1).values.tolist()))
    return elapsed, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "sealinfer-bench-telemetry.db")
    args = ap.parse_args()
    from sealinfer.dashboard.fixtures import make_audit_db

    built = ensure_db(args.db, args.rows)
    conn = sqlite3.connect(args.db)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("requests", "rollup_minute", "rollup_latency")}
    print(f"telemetry db: {args.db} ({args.db.stat().st_size / 1e6:.0f} MB) rows: {counts}"
          + (f"; built in {built:.1f} s ({args.rows / built:,.0f} records/s via TelemetryStore)" if built else ""))
    with tempfile.TemporaryDirectory() as tmp:
        audit = make_audit_db(Path(tmp) / "audit.db", 2_000)
        ours = render_pages(args.db, audit)
    print(f"\n{'page':<20}{'first render':>14}{'target':>9}{'payload':>12}{'charts':>8}"
          f"{'naive':>10}{'naive raw pts payload':>24}{'speed-up':>10}")
    for page in PAGES:
        t, size, n_charts = ours[page]
        nt, nsize = naive_page(args.db, page)
        ok = "ok" if t < TARGET_S else "MISS"
        print(f"{page:<20}{t:>12.3f} s{'< 2 s ' + ok:>11}{size / 1024:>9.1f} KB{n_charts:>8}"
              f"{nt:>8.2f} s{nsize / 1024:>21.0f} KB{nt / t:>9.1f}x")
    print("\npayload = serialized element protos of the page (charts hold <= 10,000 points each);"
          " naive = pandas read of all rows + Python aggregation, payload if raw points were charted.")
    # Sanity: the raw table and the rollups agree on the total.
    assert counts["requests"] == conn.execute("SELECT sum(n) FROM rollup_minute").fetchone()[0]
    np.testing.assert_equal(counts["requests"], args.rows)


if __name__ == "__main__":
    main()
