"""Render a ``Report`` as one self-contained HTML page (inline CSS and SVG, no external resources)."""

from __future__ import annotations

from importlib import resources

import jinja2

from sealinfer.runtime.reports.charts import PALETTE, hbar, stacked_columns
from sealinfer.runtime.reports.evidence import Report


def _environment() -> jinja2.Environment:
    templates = resources.files("sealinfer.runtime.reports") / "templates"
    return jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: (templates / name).read_text("utf-8")),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def render_html(report: Report) -> str:
    charts = {
        "daily": stacked_columns(report.daily, ("allow", "deny", "error")),
        "actions": hbar(sorted(report.by_action.items(), key=lambda kv: -kv[1])),
        "denials": hbar([(str(k), float(n)) for k, n in report.denials_by_reason], color=PALETTE["deny"]),
    }
    return _environment().get_template("report.html.j2").render(r=report, v=report.verification, charts=charts)
