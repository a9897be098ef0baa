"""Scheduler and devices: where requests ran, how good the latency predictions were, device load."""

from __future__ import annotations

import streamlit as st

from sealinfer.dashboard import charts, queries, ui


def _live(path: str) -> None:
    since = ui.since_minute()
    places = queries.placements(path, since)
    if places.empty:
        ui.no_data()
        return
    pvm = queries.predicted_vs_measured(path, since)
    util = queries.utilization(path, since)
    c1, c2, c3 = st.columns(3)
    c1.metric("Devices used", ui.fmt_int(places["device"].nunique()))
    if not pvm.empty:
        err = ((pvm["measured_ms"] / pvm["predicted_ms"] - 1).abs() * pvm["requests"]).sum() / pvm["requests"].sum()
        c2.metric("Mean prediction error", f"{err * 100:.1f} %",
                  help="|measured / predicted − 1|, weighted by requests.")
    else:
        c2.metric("Mean prediction error", "–", help="No request carried a scheduler prediction.")
    # Rank by total busy time: a device idle for whole steps has no rows there, so a mean would flatter it.
    steps = max(util["minute"].nunique(), 1)
    busiest = util.groupby("device")["utilization"].sum().sort_values(ascending=False)
    c3.metric("Busiest device", str(busiest.index[0]) if len(busiest) else "–",
              help=f"mean utilization {busiest.iloc[0] / steps:.2%}" if len(busiest) else None)
    st.plotly_chart(charts.placements(places), key="placements")
    if not pvm.empty:
        st.plotly_chart(charts.predicted_vs_measured(pvm), key="pvm")
    else:
        st.info("No scheduler predictions recorded.")
    st.plotly_chart(charts.utilization(util), key="util")


def render() -> None:
    st.title("Scheduler and devices")
    cfg = ui.config()
    path = ui.telemetry_path(cfg)
    if path is None:
        return
    st.fragment(run_every=cfg.refresh_s or None)(_live)(path)


ui.run_page(render)
