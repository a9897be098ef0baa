"""sealinfer operations dashboard (``sealinfer dashboard``): entry script for ``streamlit run``.

Reads telemetry.db, audit.db and the DP ledger read-only; shows counts, timings, ids and digests only.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from sealinfer.dashboard import ui

HERE = Path(__file__).parent
PAGES = [
    st.Page(str(HERE / "page_overview.py"), title="Overview", icon=":material/monitoring:", default=True),
    st.Page(str(HERE / "page_overhead.py"), url_path="overhead", title="Security overhead",
            icon=":material/shield:"),
    st.Page(str(HERE / "page_scheduler.py"), url_path="scheduler", title="Scheduler and devices",
            icon=":material/memory:"),
    st.Page(str(HERE / "page_privacy.py"), url_path="privacy", title="Privacy", icon=":material/lock:"),
    st.Page(str(HERE / "page_audit.py"), url_path="audit", title="Audit and models", icon=":material/fact_check:"),
]

st.set_page_config(page_title="sealinfer operations", page_icon=":material/shield:", layout="wide")
cfg = ui.config()
if cfg.auth_required:
    if not st.user.is_logged_in:
        st.title("sealinfer operations")
        st.info("Sign in to view the dashboard.")
        st.button("Log in", on_click=st.login)
        st.stop()
    st.sidebar.button("Log out", on_click=st.logout)

page = st.navigation(PAGES)
st.sidebar.selectbox("Time window", list(ui.WINDOWS), key=ui.WINDOW_KEY)
st.sidebar.caption(
    f"Telemetry: `{cfg.telemetry_db or 'not configured'}`  \n"
    f"Audit: `{cfg.audit_db or 'not configured'}`  \n"
    f"DP ledger: `{cfg.privacy_db or 'not configured'}`"
)
page.run()
