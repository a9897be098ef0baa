"""Plotly figures built from the small aggregated frames of :mod:`sealinfer.runtime.telemetry.queries`."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from sealinfer.runtime.telemetry.record import PHASES

# SVG, not WebGL: plotly switches to WebGL above 1,000 points, which headless browsers and thin clients
# without a GPU may not draw; every chart here stays under ~10,000 points anyway.

PRIORITY_ORDER = ["stat", "routine", "batch"]
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "legend_title_text": ""}


def request_rate(df: pd.DataFrame) -> go.Figure:
    long = df.melt(id_vars=["time"], value_vars=["ok", "denied", "errors"], var_name="outcome",
                   value_name="req_per_s")
    fig = px.area(long, x="time", y="req_per_s", color="outcome", title="Request rate (req/s)",
                  color_discrete_map={"ok": "#2a9d8f", "denied": "#e9c46a", "errors": "#e76f51"})
    fig.update_traces(line_width=0.6)
    return fig.update_layout(**_LAYOUT, yaxis_title="req/s", xaxis_title=None)


def latency_by_priority(df: pd.DataFrame) -> go.Figure:
    long = df.melt(id_vars=["priority"], value_vars=["p50_ms", "p95_ms", "p99_ms"], var_name="quantile",
                   value_name="ms")
    fig = px.bar(long, x="priority", y="ms", color="quantile", barmode="group", log_y=True,
                 title="Latency by priority class (successful requests)",
                 category_orders={"priority": PRIORITY_ORDER})
    return fig.update_layout(**_LAYOUT, yaxis_title="ms")


def slo(df: pd.DataFrame) -> go.Figure:
    d = df.dropna(subset=["attainment"]).assign(pct=lambda x: x["attainment"] * 100)
    fig = px.bar(d, x="priority", y="pct", text=d["pct"].map(lambda v: f"{v:.2f} %"),
                 title="SLO attainment by priority class", range_y=[0, 105],
                 category_orders={"priority": PRIORITY_ORDER})
    return fig.update_layout(**_LAYOUT, yaxis_title="% within deadline")


def ecdf(df: pd.DataFrame) -> go.Figure:
    fig = px.line(df, x="latency_ms", y="fraction", color="config", line_shape="hv", log_x=True,
                  title="Latency ECDF per configuration", render_mode="svg")
    return fig.update_layout(**_LAYOUT, xaxis_title="latency (ms, log)", yaxis_title="fraction ≤ x")


def boxes(df: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for model, part in df.groupby("model", sort=True):
        fig.add_trace(go.Box(
            name=str(model), x=part["config"], q1=part["p25"], median=part["p50"], q3=part["p75"],
            lowerfence=part["p5"], upperfence=part["p95"], boxpoints=False,
        ))
    fig.update_layout(**_LAYOUT, boxmode="group", yaxis_type="log", yaxis_title="ms (p5–p95 whiskers)",
                      title="Latency distribution per configuration and model")
    return fig


def phases(df: pd.DataFrame) -> go.Figure:
    long = df.melt(id_vars=["config", "model"], value_vars=[f"{p}_ms" for p in PHASES], var_name="phase",
                   value_name="ms")
    long["phase"] = long["phase"].str.removesuffix("_ms")
    fig = px.bar(long, x="config", y="ms", color="phase", facet_col="model", facet_col_wrap=3,
                 title="Mean time per phase (stacked)", category_orders={"phase": list(PHASES)})
    fig.update_yaxes(matches=None, showticklabels=True)
    return fig.update_layout(**_LAYOUT, height=480)


def overhead_vs_size(df: pd.DataFrame) -> go.Figure:
    d = df[df["baseline_ms"].notna()]
    fig = px.scatter(d, x="param_bytes", y="overhead_pct", color="config", symbol="model", log_x=True,
                     hover_data=["model", "service_ms", "baseline_ms"],
                     title="Security overhead vs model size (service time over plain)", render_mode="svg")
    fig.update_traces(marker={"size": 11})
    return fig.update_layout(**_LAYOUT, xaxis_title="model parameters (bytes, log)", yaxis_title="overhead %")


def placements(df: pd.DataFrame) -> go.Figure:
    fig = px.bar(df, x="device", y="requests", color="model", title="Placements per device")
    return fig.update_layout(**_LAYOUT)


def predicted_vs_measured(df: pd.DataFrame) -> go.Figure:
    fig = px.scatter(df, x="predicted_ms", y="measured_ms", color="device", symbol="model", log_x=True,
                     log_y=True, opacity=0.6, title="Predicted vs measured inference time",
                     render_mode="svg")
    lo = float(min(df["predicted_ms"].min(), df["measured_ms"].min()))
    hi = float(max(df["predicted_ms"].max(), df["measured_ms"].max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="prediction = measurement",
                             line={"dash": "dash", "color": "grey"}))
    return fig.update_layout(**_LAYOUT, xaxis_title="predicted (ms)", yaxis_title="measured (ms)")


def utilization(df: pd.DataFrame) -> go.Figure:
    fig = px.line(df, x="time", y="utilization", color="device", title="Device utilization (inference busy share)",
                  render_mode="svg")
    return fig.update_layout(**_LAYOUT, yaxis_tickformat=".1%", xaxis_title=None)


def epsilon(df: pd.DataFrame, max_epsilon: float | None) -> go.Figure:
    d = df.assign(label=df["name"] + " " + df["version"].fillna(""))
    fig = px.bar(d, x="label", y="dp_epsilon", title="Differential-privacy ε per model (lower is stronger)")
    if max_epsilon is not None:
        fig.add_hline(y=max_epsilon, line_dash="dash", annotation_text=f"policy max ε = {max_epsilon:g}")
    return fig.update_layout(**_LAYOUT, xaxis_title=None, yaxis_title="ε")


def budget(df: pd.DataFrame) -> go.Figure:
    long = df.melt(id_vars=["dataset"], value_vars=["spent_epsilon", "budget_epsilon"], var_name="kind",
                   value_name="epsilon")
    fig = px.bar(long, x="dataset", y="epsilon", color="kind", barmode="group",
                 title="DP-statistics budget per dataset")
    return fig.update_layout(**_LAYOUT)


def audit_per_day(df: pd.DataFrame) -> go.Figure:
    long = df.melt(id_vars=["day"], value_vars=["denials", "break_glass"], var_name="kind", value_name="events")
    fig = px.bar(long, x="day", y="events", color="kind", barmode="group", title="Denials and break-glass per day")
    return fig.update_layout(**_LAYOUT, xaxis_title=None)
