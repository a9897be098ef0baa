"""Cached access to the stores for the pages: SQL aggregation in :mod:`sealinfer.runtime.telemetry.queries`,
cached here with ``st.cache_data`` (ttl = the refresh interval, keyed by path and time window)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from sealinfer.dashboard import sources
from sealinfer.runtime.telemetry import queries as tq
from sealinfer.runtime.telemetry.schema import open_readonly

TTL_S = 15.0


def _with_conn(path: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    conn = open_readonly(path)
    try:
        return fn(conn, *args, **kwargs)
    finally:
        conn.close()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def check_telemetry(path: str) -> None:
    """Raises StoreError when the telemetry database is missing, empty or of the wrong kind."""
    _with_conn(path, lambda conn: None)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def counts_by_priority(path: str, since: int | None) -> pd.DataFrame:
    return _with_conn(path, tq.counts_by_priority, since)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def histograms(path: str, by: tuple[str, ...], since: int | None) -> tq.Histograms:
    """One pass over the latency rollup; pages derive quantiles, SLOs, ECDFs and boxes from it."""
    return _with_conn(path, tq.histograms, list(by), since)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def config_model_sums(path: str, since: int | None) -> pd.DataFrame:
    return _with_conn(path, tq.config_model_sums, since)


def totals(path: str, since: int | None) -> dict[str, float]:
    return tq.totals_from(counts_by_priority(path, since))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def rate_series(path: str, since: int | None, max_points: int = 400) -> pd.DataFrame:
    # ~400 steps is as fine as a chart a screen wide can show; SQL merges minutes into steps.
    return _with_conn(path, tq.rate_series, since, max_points)


def latency_quantiles(path: str, by: tuple[str, ...], since: int | None) -> pd.DataFrame:
    """Quantiles per group of ``by``, merged from the per-priority histograms (no extra pass)."""
    hists = histograms(path, ("priority",), since)
    return tq.quantile_table(tq.project(hists, [0] if by == ("priority",) else []), by)


def slo_attainment(path: str, deadlines_ms: tuple[tuple[str, float], ...], since: int | None) -> pd.DataFrame:
    return tq.slo_table(counts_by_priority(path, since), histograms(path, ("priority",), since),
                        dict(deadlines_ms))


def phase_breakdown(path: str, since: int | None) -> pd.DataFrame:
    return tq.phase_table(config_model_sums(path, since))


def overhead(path: str, baseline: str, since: int | None) -> pd.DataFrame:
    return tq.overhead_table(config_model_sums(path, since), baseline)


def _config_model_hists(path: str, by: tuple[str, ...], since: int | None) -> tq.Histograms:
    hists = histograms(path, ("config", "model"), since)
    keep = [("config", "model").index(c) for c in by]
    return hists if keep == [0, 1] else tq.project(hists, keep)


def ecdf(path: str, by: tuple[str, ...], since: int | None) -> pd.DataFrame:
    return tq.ecdf_table(_config_model_hists(path, by, since), by)


def box_stats(path: str, by: tuple[str, ...], since: int | None) -> pd.DataFrame:
    return tq.box_table(_config_model_hists(path, by, since), by)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def placements(path: str, since: int | None) -> pd.DataFrame:
    return _with_conn(path, tq.placements, since)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def predicted_vs_measured(path: str, since: int | None) -> pd.DataFrame:
    return _with_conn(path, tq.predicted_vs_measured, since)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def utilization(path: str, since: int | None) -> pd.DataFrame:
    return _with_conn(path, tq.utilization, since)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def models(path: str) -> pd.DataFrame:
    return _with_conn(path, tq.models)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def configurations(path: str) -> pd.DataFrame:
    return _with_conn(path, tq.configurations)


@st.cache_data(ttl=60, show_spinner=False)
def audit_overview(path: str) -> dict[str, Any]:
    return sources.audit_overview(Path(path))


@st.cache_data(ttl=60, show_spinner=False)
def verify_chain(path: str) -> dict[str, Any]:
    return sources.verify_chain(Path(path))


@st.cache_data(ttl=60, show_spinner=False)
def ledger_summary(path: str | None) -> tuple[pd.DataFrame | None, str]:
    return sources.ledger_summary(Path(path) if path else None)
