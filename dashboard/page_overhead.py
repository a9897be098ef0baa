"""Security overhead vs latency: what each protection costs, per configuration and model."""

from __future__ import annotations

import streamlit as st

from sealinfer.dashboard import charts, queries, ui

BASELINE = "plain"


def render() -> None:
    st.title("Security overhead vs latency")
    cfg = ui.config()
    path = ui.telemetry_path(cfg)
    if path is None:
        return
    since = ui.since_minute()
    over = queries.overhead(path, BASELINE, since)
    if over.empty:
        ui.no_data("successful requests")
        return
    models = sorted(over["model"].unique())
    choice = st.selectbox("Model", ["All models", *models], key="overhead_model")
    pick = (lambda df: df) if choice == "All models" else (lambda df: df[df["model"] == choice])

    worst = pick(over).dropna(subset=["overhead_pct"])
    c1, c2, c3 = st.columns(3)
    c1.metric("Configurations", ui.fmt_int(over["config"].nunique()))
    c2.metric("Models", ui.fmt_int(len(models)))
    if not worst.empty:
        top = worst.loc[worst["overhead_pct"].idxmax()]
        c3.metric("Largest overhead", f"{top['overhead_pct']:+.1f} %", help=f"{top['config']} on {top['model']}")
    else:
        c3.metric("Largest overhead", "–", help=f"No '{BASELINE}' baseline runs recorded.")

    ecdf = queries.ecdf(path, ("config",) if choice == "All models" else ("config", "model"), since)
    st.plotly_chart(charts.ecdf(pick(ecdf) if choice != "All models" else ecdf), key="ecdf")
    st.plotly_chart(charts.boxes(pick(queries.box_stats(path, ("config", "model"), since))), key="box")
    st.plotly_chart(charts.phases(pick(queries.phase_breakdown(path, since))), key="phases")
    st.plotly_chart(charts.overhead_vs_size(pick(over)), key="overhead_size")
    st.subheader("Overhead per configuration")
    st.dataframe(pick(over)[["model", "config", "ok", "service_ms", "baseline_ms", "overhead_pct", "param_bytes"]],
                 hide_index=True, key="overhead_table")
    st.subheader("Configurations and the protections in force")
    st.dataframe(queries.configurations(path), hide_index=True, key="configs_table")
    st.caption(f"Overhead = mean service time (latency minus queueing) over the '{BASELINE}' "
               "configuration of the same model.")


ui.run_page(render)
