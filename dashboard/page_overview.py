"""Overview: request rate, latency quantiles, errors and denials, SLO attainment by priority class."""

from __future__ import annotations

import streamlit as st

from sealinfer.dashboard import charts, queries, ui
from sealinfer.dashboard.config import deadlines


def _live(path: str, deadlines_ms: dict[str, float]) -> None:
    since = ui.since_minute()
    tot = queries.totals(path, since)
    if not tot["requests"]:
        ui.no_data()
        return
    overall = queries.latency_quantiles(path, (), since)
    q = overall.iloc[0] if len(overall) else None
    cols = st.columns(7)
    cols[0].metric("Requests", ui.fmt_int(tot["requests"]))
    cols[1].metric("Request rate", f"{tot['rate_per_s']:.2f}/s")
    cols[2].metric("p50 latency", ui.fmt_ms(q["p50_ms"] if q is not None else None))
    cols[3].metric("p95 latency", ui.fmt_ms(q["p95_ms"] if q is not None else None))
    cols[4].metric("p99 latency", ui.fmt_ms(q["p99_ms"] if q is not None else None))
    cols[5].metric("Errors", ui.fmt_int(tot["errors"]))
    cols[6].metric("Denials", ui.fmt_int(tot["denied"]))

    slo = queries.slo_attainment(path, tuple(sorted(deadlines_ms.items())), since)
    slo_cols = st.columns(max(len(slo), 1))
    for col, row in zip(slo_cols, slo.itertuples(), strict=False):
        label = f"SLO {row.priority}" + (f" (≤ {row.deadline_ms:g} ms)" if row.deadline_ms == row.deadline_ms else "")
        col.metric(label, ui.fmt_pct(row.attainment), help=f"{ui.fmt_int(row.served)} served, "
                   f"{ui.fmt_int(row.errors)} errors; denials excluded. "
                   + ("Exact (deadline is a bucket edge)." if row.exact else "Interpolated within a bucket."))

    st.plotly_chart(charts.request_rate(queries.rate_series(path, since)), key="rate")
    left, right = st.columns(2)
    by_prio = queries.latency_quantiles(path, ("priority",), since)
    left.plotly_chart(charts.latency_by_priority(by_prio), key="lat_prio")
    right.plotly_chart(charts.slo(slo), key="slo")
    st.caption("Latency figures cover successful requests and are read from 25 %-wide buckets "
               "(log-interpolated), so a quantile is within one bucket of the exact value.")


def render() -> None:
    st.title("Overview")
    cfg = ui.config()
    path = ui.telemetry_path(cfg)
    if path is None:
        return
    deadlines_ms, source = deadlines(cfg.profile)
    st.caption(f"Deadlines from {source}: "
               + ", ".join(f"{k} {v:g} ms" for k, v in sorted(deadlines_ms.items())))
    live = st.fragment(run_every=cfg.refresh_s or None)(_live)
    live(path, deadlines_ms)


ui.run_page(render)
