"""Compliance reports (HTML, PDF, JSON) built from the audit and telemetry stores."""
