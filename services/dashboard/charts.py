"""Inline SVG line charts (no library, nothing fetched by the browser), drawn by ``templates/chart.html``: this
module computes the geometry (numbers), the template escapes every text (titles, series names, labels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from .rendering import render

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
) -> Markup:
    """One SVG chart; each series a polyline, alarm points red, an optional dashed threshold line."""
    left, right, top, bottom = 48, 10, 22, 30
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float | None:
        if not math.isfinite(value):
            return None
        if log_y:
            return math.log10(max(value, 1e-12))
        return value

    frame: dict[str, Any] = {
        "title": title,
        "chart_id": chart_id,
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "right": left + plot_w,
        "bottom": top + plot_h,
        "middle": top + plot_h / 2,
        "center": left + plot_w / 2,
        "x_label": x_label,
        "y_label": y_label,
        "axes": None,
        "threshold": None,
        "series": [],
    }
    xs = [x for s in series for x, _ in s.points]
    ys = [v for s in series for _, y in s.points if (v := y_of(y)) is not None]
    if threshold is not None and (t := y_of(threshold)) is not None:
        ys.append(t)
    if not xs or not ys:
        return render("chart.html", **frame)
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

    frame["axes"] = {"y_max": label(y_max), "y_min": label(y_min), "x_min": f"{x_min:g}", "x_max": f"{x_max:g}"}
    if threshold is not None and (t := y_of(threshold)) is not None:
        frame["threshold"] = {"y": f"{py(t):.1f}", "value": f"{threshold:g}"}
    for i, s in enumerate(series):
        coords = [(px(x), py(v)) for x, y in s.points if (v := y_of(y)) is not None]
        points = [
            {
                "cx": f"{px(x):.1f}",
                "cy": f"{py(v):.1f}",
                "x": f"{x:g}",
                "y": f"{y:.4g}",
                "alarm": j < len(s.marked) and bool(s.marked[j]),
            }
            for j, (x, y) in enumerate(s.points)
            if (v := y_of(y)) is not None
        ]
        frame["series"].append(
            {
                "name": s.name,
                "color": PALETTE[i % len(PALETTE)],
                "path": " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords) if len(coords) > 1 else "",
                "points": points,
            }
        )
    return render("chart.html", **frame)
