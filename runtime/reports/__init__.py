"""Compliance reports (HTML, PDF, JSON) built from the audit and telemetry stores.

    from sealinfer.runtime.reports import build_report, render_html, render_pdf
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"build_report": "evidence", "Report": "evidence", "render_html": "html", "render_pdf": "pdf",
            "SAFEGUARDS": "safeguards"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: WeasyPrint is imported only when a PDF is rendered
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
