"""Streamlit operations dashboard (reads telemetry.db and audit.db only)."""
