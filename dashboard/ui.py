"""Helpers every page shares: configuration, the time window, number formats and error display."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable

import streamlit as st

from sealinfer.dashboard import queries
from sealinfer.dashboard.config import DashboardConfig
from sealinfer.runtime.errors import SealinferError

WINDOWS: dict[str, int | None] = {
    "All data": None, "Last 15 minutes": 15, "Last hour": 60, "Last 24 hours": 1440, "Last 7 days": 10080,
}
WINDOW_KEY = "window"


def config() -> DashboardConfig:
    return DashboardConfig.from_env()


def since_minute() -> int | None:
    """Epoch minute where the selected window starts (None = everything retained)."""
    minutes = WINDOWS.get(st.session_state.get(WINDOW_KEY, "All data"))
    return None if minutes is None else int(time.time() // 60) - minutes


def telemetry_path(cfg: DashboardConfig) -> str | None:
    """The telemetry database to read, or None after telling the user why there is none."""
    if cfg.telemetry_db is None:
        st.info("No telemetry database configured. Start the dashboard with "
                "`sealinfer dashboard --telemetry-db telemetry.db`.")
        return None
    try:
        queries.check_telemetry(str(cfg.telemetry_db))
    except SealinferError as exc:
        st.error(str(exc))
        return None
    return str(cfg.telemetry_db)


def run_page(body: Callable[[], None]) -> None:
    """Run a page; a store problem becomes a message on the page, not a stack trace."""
    try:
        body()
    except SealinferError as exc:
        st.error(str(exc))
    except sqlite3.Error as exc:
        st.error(f"Could not read the database: {exc}. Check that the files are the ones sealinfer writes.")


def fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value < 10:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    return f"{value / 1000:.2f} s"


def fmt_pct(share: float | None) -> str:
    return "–" if share is None or math.isnan(share) else f"{share * 100:.2f} %"


def fmt_int(n: float) -> str:
    return f"{int(n):,}"


def no_data(what: str = "requests") -> None:
    st.info(f"No {what} recorded in this time window.")
