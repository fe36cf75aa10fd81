"""Inline SVG line charts (no library, nothing fetched by the browser)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# No red: red marks alarms (drifted or degraded windows) and thresholds.
PALETTE = ("#2563eb", "#7c3aed", "#059669", "#d97706", "#0891b2", "#4b5563", "#be185d", "#65a30d")


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y); x is a window index or a time
    marked: Sequence[bool] = ()  # points drawn as alarms (e.g. a drifted window)


def line_chart(
    title: str,
    series: list[Series],
    *,
    width: int = 460,
    height: int = 180,
    y_label: str = "",
    x_label: str = "",
    threshold: float | None = None,
    log_y: bool = False,
    chart_id: str = "",
) -> str:
    """One SVG chart; each series a polyline, alarm points red, an optional dashed threshold line."""
    left, right, top, bottom = 48, 10, 22, 30
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float | None:
        if not math.isfinite(value):
            return None
        if log_y:
            return math.log10(max(value, 1e-12))
        return value

    xs = [x for s in series for x, _ in s.points]
    ys = [v for s in series for _, y in s.points if (v := y_of(y)) is not None]
    if threshold is not None and (t := y_of(threshold)) is not None:
        ys.append(t)
    attrs = f'class="chart" data-title="{escape(title)}"' + (f' id="{escape(chart_id)}"' if chart_id else "")
    head = f'<svg {attrs} width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
    head += f'<title>{escape(title)}</title><text x="{left}" y="14" class="chart-title">{escape(title)}</text>'
    if not xs or not ys:
        return head + f'<text x="{left}" y="{top + plot_h / 2}" class="empty">no data yet</text></svg>'
    x_min, x_max = min(xs), max(xs)
    y_min, y_max = min(ys), max(ys)
    if x_max == x_min:
        x_max = x_min + 1
    if y_max == y_min:
        y_min, y_max = y_min - 0.5, y_max + 0.5

    def px(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * plot_w

    def py(v: float) -> float:
        return top + plot_h - (v - y_min) / (y_max - y_min) * plot_h

    def label(v: float) -> str:
        return f"1e{v:.0f}" if log_y else f"{v:.3g}"

    parts = [head]
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>'
        f'<text x="{left - 4}" y="{top + 4}" class="tick" text-anchor="end">{label(y_max)}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" class="tick" text-anchor="end">{label(y_min)}</text>'
        f'<text x="{left}" y="{height - 14}" class="tick">{x_min:g}</text>'
        f'<text x="{left + plot_w}" y="{height - 14}" class="tick" text-anchor="end">{x_max:g}</text>'
        f'<text x="{left + plot_w / 2}" y="{height - 3}" class="tick" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="4" y="{top + plot_h / 2}" class="tick">{escape(y_label)}</text>'
    )
    if threshold is not None and (t := y_of(threshold)) is not None:
        parts.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" class="threshold">'
            f"<title>threshold {threshold:g}</title></line>"
        )
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        coords = [(px(x), py(v)) for x, y in s.points if (v := y_of(y)) is not None]
        if len(coords) > 1:
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5" '
                f'data-series="{escape(s.name)}"/>'
            )
        for j, (x, y) in enumerate(s.points):
            v = y_of(y)
            if v is None:
                continue
            alarm = j < len(s.marked) and s.marked[j]
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="{3.5 if alarm else 2}" '
                f'fill="{"#dc2626" if alarm else color}" class="{"alarm" if alarm else "point"}">'
                f"<title>{escape(s.name)} @ {x:g}: {y:.4g}{' (alarm)' if alarm else ''}</title></circle>"
            )
    legend_x = left + 8
    for i, s in enumerate(series):
        parts.append(
            f'<text x="{legend_x}" y="{top + 12 + 12 * i}" class="legend" fill="{PALETTE[i % len(PALETTE)]}">'
            f"{escape(s.name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
