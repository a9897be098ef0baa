"""Small inline SVG charts: no plotting library, nothing fetched, the same markup in HTML and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = {"allow": "#2e7d32", "deny": "#c62828", "error": "#ef6c00", "bar": "#1565c0"}


def hbar(items: Sequence[tuple[str, float]], *, width: int = 640, bar_height: int = 16, color: str = "#1565c0",
         label_width: int = 230) -> str:
    """Horizontal bars with labels and values; an empty list renders a 'no data' note."""
    if not items:
        return '<p class="nodata">No data in the period.</p>'
    peak = max(v for _, v in items) or 1
    plot = width - label_width - 60
    height = len(items) * (bar_height + 6) + 6
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = 6 + i * (bar_height + 6)
        w = max(1.0, plot * value / peak)
        text = label if len(label) <= 38 else label[:35] + "..."
        parts.append(f'<text x="{label_width - 6}" y="{y + bar_height - 4}" font-size="11" text-anchor="end">'
                     f'{escape(text)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" fill="{color}"/>')
        parts.append(f'<text x="{label_width + w + 4:.1f}" y="{y + bar_height - 4}" font-size="11">'
                     f'{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_columns(rows: Sequence[dict[str, object]], series: Sequence[str], *, key: str = "day",
                    width: int = 640, height: int = 200) -> str:
    """Columns per ``key`` stacked by ``series`` (e.g. allow / deny / error per day), with a legend."""
    if not rows:
        return '<p class="nodata">No data in the period.</p>'
    totals = [sum(float(r.get(s) or 0) for s in series) for r in rows]
    peak = max(totals) or 1
    left, bottom, top = 50, 30, 24
    plot_w, plot_h = width - left - 10, height - bottom - top
    step = plot_w / len(rows)
    col = max(1.0, step * 0.8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#555"/>',
             f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{peak:g}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>']
    for i, series_name in enumerate(series):
        parts.append(f'<rect x="{left + i * 90}" y="4" width="10" height="10" '
                     f'fill="{PALETTE.get(series_name, "#777")}"/>'
                     f'<text x="{left + i * 90 + 14}" y="13" font-size="11">{escape(series_name)}</text>')
    label_every = max(1, len(rows) // 8)
    for i, row in enumerate(rows):
        x = left + i * step + (step - col) / 2
        y = top + plot_h
        for s in series:
            h = plot_h * float(row.get(s) or 0) / peak
            if h > 0:
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{col:.1f}" height="{h:.1f}" '
                             f'fill="{PALETTE.get(s, "#777")}"/>')
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="9">{escape(str(row[key]))}</text>')
    parts.append("</svg>")
    return "".join(parts)
