"""Render a ``Report`` to PDF with WeasyPrint; every URL fetch is refused so nothing leaves the machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sealinfer.runtime.errors import ConfigurationError
from sealinfer.runtime.reports.evidence import Report
from sealinfer.runtime.reports.html import render_html


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise ValueError(f"report rendering does not fetch resources ({url})")


def render_pdf(report: Report, path: str | os.PathLike[str]) -> Path:
    import weasyprint  # heavy: imported only when a PDF is asked for

    out = Path(path)
    if out.parent and not out.parent.is_dir():
        raise ConfigurationError(f"Folder {out.parent} does not exist.", hint="Create it or choose another -o path.")
    weasyprint.HTML(string=render_html(report), url_fetcher=_no_fetch, base_url=None).write_pdf(out)
    return out
