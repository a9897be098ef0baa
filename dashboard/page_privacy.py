"""Privacy: each model's differential-privacy ε and the DP-statistics budget spent."""

from __future__ import annotations

import streamlit as st

from sealinfer.dashboard import charts, queries, ui


def _max_epsilon(profile: str | None) -> float | None:
    if not profile:
        return None
    try:
        from sealinfer.runtime.policy.profile import load_profile

        value = (load_profile(profile).raw.get("privacy") or {}).get("max_epsilon")
        return float(value) if value is not None else None
    except Exception:  # no policy module or an unusable profile: draw no limit line
        return None


def render() -> None:
    st.title("Privacy")
    cfg = ui.config()
    st.subheader("Models")
    path = ui.telemetry_path(cfg)
    if path is not None:
        models = queries.models(path)
        if models.empty:
            st.info("No models recorded in the telemetry database yet.")
        else:
            with_dp = models[models["dp_epsilon"].notna()]
            c1, c2 = st.columns(2)
            c1.metric("Models trained with DP", f"{len(with_dp)} of {len(models)}")
            c2.metric("Largest ε", f"{with_dp['dp_epsilon'].max():g}" if len(with_dp) else "–")
            if len(with_dp):
                st.plotly_chart(charts.epsilon(with_dp, _max_epsilon(cfg.profile)), key="epsilon")
            st.dataframe(models[["name", "version", "dp_epsilon", "digest"]], hide_index=True, key="eps_table")
    st.subheader("DP-statistics budget")
    ledger, note = queries.ledger_summary(str(cfg.privacy_db) if cfg.privacy_db else None)
    if ledger is None:
        st.info(note)
    elif ledger.empty:
        st.info(f"{note}: no DP queries recorded yet.")
    else:
        st.caption(note)
        st.metric("Budget used (all datasets)",
                  f"{ledger['spent_epsilon'].sum():g} of {ledger['budget_epsilon'].sum():g} ε")
        st.plotly_chart(charts.budget(ledger), key="budget")
        st.dataframe(ledger, hide_index=True, key="budget_table")


ui.run_page(render)
