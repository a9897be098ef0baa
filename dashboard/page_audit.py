"""Audit and models: is the audit chain intact, who was denied, who broke the glass, what is loaded."""

from __future__ import annotations

import streamlit as st

from sealinfer.dashboard import charts, queries, ui
from sealinfer.runtime.errors import SealinferError


def _audit(path: str) -> None:
    chain = queries.verify_chain(path)
    ov = queries.audit_overview(path)
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Audit chain", chain["status"], help=chain.get("detail") or None)
    c2.metric("Audit records", ui.fmt_int(ov["records"]))
    c3.metric("Checkpoints", ui.fmt_int(chain.get("checkpoints", ov["checkpoints"])))
    c4.metric("Denials", ui.fmt_int(ov["denials"]))
    c5.metric("Break-glass events", ui.fmt_int(ov["break_glass"]))
    last = chain.get("last_checkpoint_time") or ov["last_checkpoint_time"]
    st.caption(f"Last checkpoint: {last or 'none'}"
               + (f" (seq {ov['last_checkpoint_seq']})" if ov["last_checkpoint_seq"] is not None else ""))
    if chain["status"] == "broken":
        st.error(f"The audit chain does not verify: {chain.get('detail') or 'see `sealinfer audit verify`'}")
    elif chain["status"] == "unreadable":
        st.warning(f"The audit verifier could not read this log: {chain.get('detail')}")
    elif chain["status"] == "not verified":
        st.warning(f"Chain not verified here ({chain.get('detail')}); run `sealinfer audit verify`.")
    if not ov["denials_per_day"].empty:
        st.plotly_chart(charts.audit_per_day(ov["denials_per_day"]), key="audit_days")
    st.subheader("Recent denials")
    st.dataframe(ov["recent_denials"], hide_index=True, key="denials_table")
    st.subheader("Break-glass events")
    if ov["recent_break_glass"].empty:
        st.info("No break-glass events.")
    else:
        st.dataframe(ov["recent_break_glass"], hide_index=True, key="glass_table")


def _models(path: str) -> None:
    models = queries.models(path)
    if models.empty:
        st.info("No models recorded in the telemetry database yet.")
        return
    view = models.assign(
        signature=models["signature_ok"].map({1: "valid", 0: "INVALID"}).fillna("unknown"),
        watermark=models["watermark_status"].fillna("unknown"),
        dp=models["dp_epsilon"].map(lambda e: f"ε = {e:g}" if e == e and e is not None else "no DP"),
    )
    c1, c2 = st.columns(2)
    c1.metric("Models with a valid signature", f"{int((models['signature_ok'] == 1).sum())} of {len(models)}")
    c2.metric("Watermark verified", f"{int((models['watermark_status'] == 'verified').sum())} of {len(models)}")
    st.dataframe(view[["name", "version", "digest", "signer_key_id", "signature", "watermark", "dp",
                       "param_bytes"]], hide_index=True, key="models_table")


def render() -> None:
    st.title("Audit and models")
    cfg = ui.config()
    st.subheader("Audit log")
    if cfg.audit_db is None:
        st.info("No audit database configured. Start the dashboard with `--audit-db audit.db`.")
    else:
        try:
            _audit(str(cfg.audit_db))
        except SealinferError as exc:
            st.error(str(exc))
    st.subheader("Sealed models")
    path = ui.telemetry_path(cfg)
    if path is not None:
        _models(path)


ui.run_page(render)
