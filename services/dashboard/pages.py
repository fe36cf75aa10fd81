"""HTML pages of the dashboard, rendered on the server (the browser needs no script to show them).

Each function gathers what its template shows (``templates/``, Jinja2 with autoescape): a page is ``base.html``
with its content; the model page puts together the fragments the other functions render.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from driftloop.contracts.pipeline import PipelineConfig

from .charts import Series, line_chart
from .handlers import Cascade
from .rendering import render
from .sources import Answer

DRIFT_CHART_WIDTH = 330  # three charts per feature on one line
_OVERVIEW_COLUMNS = ("model", "stream", "champion", "served", "versions", "last_cascade")
_GATE_KEYS = ("metric", "challenger_score", "champion_score", "champion_version", "min_improvement")


def unavailable(answer: Answer) -> Markup:
    return render("unavailable.html", error=answer.error)


def overview(models: list[dict[str, Any]], registry_error: str | None, refresh: int = 0) -> str:
    """The list of models; ``refresh`` > 0 reloads the page every that many seconds (a wall screen)."""
    rows = [{column: m.get(column) for column in _OVERVIEW_COLUMNS} for m in models]
    return render(
        "overview.html", title="driftloop — models", refresh=refresh, models=rows, registry_error=registry_error
    )


def versions_table(answer: Answer) -> Markup:
    if not answer.ok:
        return unavailable(answer)
    rows = []
    for v in sorted(answer.data.get("versions", []), key=lambda v: v["version"], reverse=True):
        gate = v.get("gate") or {}
        rows.append(
            {
                "version": v["version"],
                "aliases": v.get("aliases", []),
                "status": v["status"],
                "metrics": v.get("metrics"),
                "gate": [(k, gate[k]) for k in _GATE_KEYS if gate.get(k) is not None],
                "dataset_version_id": v.get("dataset_version_id") or "",
                "run_id": v.get("run_id") or "",
                "created_at": v.get("created_at") or "",
            }
        )
    return render("versions.html", versions=rows)


def runs_table(answer: Answer) -> Markup:
    if not answer.ok:
        return unavailable(answer)
    rows = [
        {
            "run_id": r.get("run_id") or "",
            "state": str(r.get("state")),
            "trigger": str(r.get("trigger")),
            "dataset_version_id": str(r.get("dataset_version_id")),
            "metrics": r.get("metrics"),
            "created_at": str(r.get("created_at")),
            "ended_at": str(r.get("ended_at") or ""),
        }
        for r in answer.data.get("runs", [])
    ]
    return render("runs.html", runs=rows)


def drift_charts(answer: Answer, pipeline: PipelineConfig) -> Markup:
    """Per feature, over windows (drifted windows in red): the test statistic, the corrected p-value against the
    model's alpha, and the effect sizes (PSI, normalized Wasserstein) when the monitor reports them."""
    if not answer.ok:
        return unavailable(answer)
    reports = sorted(
        answer.data.get("reports", []), key=lambda r: (r.get("window_index", 0), r.get("created_at") or "")
    )
    if not reports:
        return render("drift.html", windows=0, drifted=0, features=[])
    alpha = pipeline.monitor.alpha
    psi_threshold = getattr(pipeline.monitor, "psi_threshold", None)
    features = []
    for feature in pipeline.feature_names:
        stat: list[tuple[float, float]] = []
        p_adj: list[tuple[float, float]] = []
        psi: list[tuple[float, float]] = []
        wasserstein: list[tuple[float, float]] = []
        marked: list[bool] = []
        test_name = "statistic"
        for report in reports:
            test = next((t for t in report.get("tests", []) if t.get("feature") == feature), None)
            if test is None:
                continue
            x = float(report.get("window_index", len(marked)))
            test_name = str(test.get("test", test_name))
            stat.append((x, _float(test.get("statistic"))))
            p_adj.append((x, _float(test.get("adjusted_p_value"))))
            psi.append((x, _float(test.get("psi"))))
            wasserstein.append((x, _float(test.get("wasserstein"))))
            marked.append(bool(test.get("drifted")))
        effect = [Series(name, points, marked) for name, points in (("PSI", psi), ("Wasserstein / sd", wasserstein))]
        effect = [e for e in effect if any(y == y for _, y in e.points)]  # NaN != NaN: drop all-missing series
        charts = [
            line_chart(
                f"{feature}: {test_name}",
                [Series(test_name, stat, marked)],
                x_label="window",
                chart_id=f"drift-{feature}",
                width=DRIFT_CHART_WIDTH,
            ),
            line_chart(
                f"{feature}: corrected p-value (alpha {alpha:g})",
                [Series("p (corrected)", p_adj, marked)],
                x_label="window",
                threshold=alpha,
                log_y=True,
                width=DRIFT_CHART_WIDTH,
            ),
        ]
        if effect:
            charts.append(
                line_chart(
                    f"{feature}: effect size",
                    effect,
                    x_label="window",
                    threshold=psi_threshold,
                    width=DRIFT_CHART_WIDTH,
                )
            )
        features.append({"name": feature, "charts": charts})
    drifted = sum(1 for r in reports if r.get("drifted"))
    return render("drift.html", windows=len(reports), drifted=drifted, features=features)


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")


def performance_charts(answer: Answer) -> Markup:
    """The monitored metric per feedback window against its threshold (degraded windows in red), and every other
    metric the monitor computed for the window."""
    if not answer.ok:
        return unavailable(answer)
    reports = [r for r in answer.data.get("reports", []) if isinstance(r, dict)]
    if not reports:
        return render("performance.html", windows=0, degraded=0, charts=[])
    reports.sort(key=lambda r: r.get("window_index", 0))
    xs = [float(r.get("window_index", i)) for i, r in enumerate(reports)]
    marked = [bool(r.get("degraded")) for r in reports]
    metric = str(reports[-1].get("metric", "value"))
    thresholds = [float(t) for r in reports if isinstance(t := r.get("threshold"), int | float)]
    charts = [
        line_chart(
            f"{metric} per window",
            [Series(metric, [(x, _float(r.get("value"))) for x, r in zip(xs, reports, strict=True)], marked)],
            x_label="feedback window",
            threshold=thresholds[-1] if thresholds else None,
            chart_id=f"perf-{metric}",
        )
    ]
    others = sorted({k for r in reports for k in (r.get("metrics") or {}) if k != metric})
    for name in others:
        points = [(x, _float((r.get("metrics") or {}).get(name))) for x, r in zip(xs, reports, strict=True)]
        charts.append(
            line_chart(name, [Series(name, points, marked)], x_label="feedback window", chart_id=f"perf-{name}")
        )
    return render("performance.html", windows=len(reports), degraded=sum(marked), charts=charts)


def timeline_section(cascades: list[Cascade]) -> Markup:
    return render("timeline.html", cascades=cascades)


def model_page(
    model: str,
    pipeline: PipelineConfig,
    versions: Answer,
    served: Answer,
    runs: Answer,
    drift: Answer,
    performance: Answer,
    cascades: list[Cascade],
    refresh: int = 0,
) -> str:
    aliases = versions.data.get("aliases", {}) if versions.ok else {}
    served_text = (
        f"v{served.data.get('version')}" if served.ok and served.data.get("version") is not None else "nothing yet"
    )
    return render(
        "model.html",
        title=f"driftloop — {model}",
        refresh=refresh,
        model=model,
        pipeline=pipeline,
        aliases=sorted(aliases.items()),
        served=served_text,
        served_error=None if served.ok else (served.error or ""),
        timeline=timeline_section(cascades),
        versions=versions_table(versions),
        drift=drift_charts(drift, pipeline),
        performance=performance_charts(performance),
        runs=runs_table(runs),
    )
