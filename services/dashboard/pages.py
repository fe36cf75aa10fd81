"""HTML pages of the dashboard, rendered on the server (the browser needs no script to show them)."""

from __future__ import annotations

from html import escape
from typing import Any

from driftloop.contracts.pipeline import PipelineConfig

from .charts import Series, line_chart
from .handlers import Cascade
from .sources import Answer

NONE = "&ndash;"  # shown for a missing value
DRIFT_CHART_WIDTH = 330  # three charts per feature on one line

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#111827;color:#f9fafb;padding:10px 20px}header a{color:#93c5fd;margin-right:14px}
main{padding:14px 20px;max-width:1400px}h2{margin-top:28px;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;font-size:13px;background:#fff}td,th{border:1px solid #e5e7eb;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f4f6}.alias{background:#dbeafe;border-radius:8px;
padding:0 6px;margin-right:4px}.status-promoted{color:#047857;font-weight:600}.status-rejected{color:#b91c1c}
.unavailable{color:#b45309;font-style:italic}.cascade{background:#fff;border:1px solid #e5e7eb;margin:10px 0;
padding:8px 12px}.cascade h3{margin:4px 0;font-size:15px}.outcome{font-weight:600}.why li{margin:2px 0}
.steps{margin-top:6px}.mono{font-family:ui-monospace,monospace;font-size:12px}.charts{display:flex;
flex-wrap:wrap;gap:10px}.chart{background:#fff;border:1px solid #e5e7eb}.chart-title{font-size:12px;
font-weight:600}.tick,.legend{font-size:10px}.axis{stroke:#9ca3af}.threshold{stroke:#dc2626;
stroke-dasharray:4 3}.empty{font-size:12px;fill:#6b7280}.feature-drift{display:flex;gap:6px}
"""


def page(title: str, body: str, refresh: int = 0) -> str:
    """A whole page; ``refresh`` > 0 reloads it every that many seconds (a wall screen)."""
    reload = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh > 0 else ""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{reload}"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><strong>driftloop</strong> &nbsp; <a href='/'>models</a>"
        f"<a href='/docs'>API</a><a href='/metrics'>metrics</a></header><main>{body}</main></body></html>"
    )


def unavailable(answer: Answer) -> str:
    return f"<p class='unavailable'>{escape(answer.error or 'no answer')}</p>"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape(str(value)) if value is not None else NONE


def _metrics(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return NONE
    return ", ".join(f"{escape(str(k))} {_num(v)}" for k, v in sorted(metrics.items()) if not isinstance(v, dict))


def overview(models: list[dict[str, Any]], registry_error: str | None, refresh: int = 0) -> str:
    rows = []
    for m in models:
        rows.append(
            f"<tr class='model' data-model='{escape(m['model'])}'><td><a href='/models/{escape(m['model'])}'>"
            f"{escape(m['model'])}</a></td><td>{escape(m['stream'])}</td><td>{_num(m.get('champion'))}</td>"
            f"<td>{_num(m.get('served'))}</td><td>{_num(m.get('versions'))}</td>"
            f"<td>{(escape(m.get('last_cascade') or '') or NONE)}</td></tr>"
        )
    error = f"<p class='unavailable'>{escape(registry_error)}</p>" if registry_error else ""
    body = (
        "<h1>Models</h1>"
        + error
        + "<table id='models'><tr><th>model</th><th>stream</th><th>champion</th><th>served</th>"
        "<th>versions</th><th>latest cascade</th></tr>" + "".join(rows) + "</table>"
    )
    return page("driftloop — models", body, refresh)


def versions_table(answer: Answer) -> str:
    if not answer.ok:
        return unavailable(answer)
    rows = []
    for v in sorted(answer.data.get("versions", []), key=lambda v: v["version"], reverse=True):
        aliases = "".join(f"<span class='alias'>{escape(a)}</span>" for a in v.get("aliases", []))
        gate = v.get("gate") or {}
        gate_text = ", ".join(
            f"{k} {_num(gate[k])}"
            for k in ("metric", "challenger_score", "champion_score", "champion_version", "min_improvement")
            if gate.get(k) is not None
        )
        rows.append(
            f"<tr class='version' data-version='{v['version']}'><td>v{v['version']}</td><td>{aliases}</td>"
            f"<td class='status-{escape(v['status'])}'>{escape(v['status'])}</td><td>{_metrics(v.get('metrics'))}</td>"
            f"<td>{escape(gate_text) or NONE}</td><td class='mono'>{escape(v.get('dataset_version_id') or '')}</td>"
            f"<td class='mono'>{escape((v.get('run_id') or '')[:8])}</td>"
            f"<td>{escape(v.get('created_at') or '')}</td></tr>"
        )
    return (
        "<table id='versions'><tr><th>version</th><th>aliases</th><th>status</th><th>metrics</th><th>gate</th>"
        "<th>dataset version</th><th>run</th><th>registered</th></tr>" + "".join(rows) + "</table>"
    )


def runs_table(answer: Answer) -> str:
    if not answer.ok:
        return unavailable(answer)
    rows = []
    for r in answer.data.get("runs", []):
        rows.append(
            f"<tr class='run' data-run-id='{escape(r.get('run_id', ''))}'>"
            f"<td class='mono'>{escape(r.get('run_id', '')[:8])}</td>"
            f"<td>{escape(str(r.get('state')))}</td><td>{escape(str(r.get('trigger')))}</td>"
            f"<td class='mono'>{escape(str(r.get('dataset_version_id')))}</td><td>{_metrics(r.get('metrics'))}</td>"
            f"<td>{escape(str(r.get('created_at')))}</td><td>{(escape(str(r.get('ended_at') or '')) or NONE)}</td></tr>"
        )
    return (
        "<table id='runs'><tr><th>run</th><th>state</th><th>trigger</th><th>dataset version</th><th>metrics</th>"
        "<th>created</th><th>ended</th></tr>" + "".join(rows) + "</table>"
    )


def drift_charts(answer: Answer, pipeline: PipelineConfig) -> str:
    """Per feature, over windows (drifted windows in red): the test statistic, the corrected p-value against the
    model's alpha, and the effect sizes (PSI, normalized Wasserstein) when the monitor reports them."""
    if not answer.ok:
        return unavailable(answer)
    reports = sorted(
        answer.data.get("reports", []), key=lambda r: (r.get("window_index", 0), r.get("created_at") or "")
    )
    if not reports:
        return "<p class='empty'>no drift window closed yet</p>"
    alpha = pipeline.monitor.alpha
    psi_threshold = getattr(pipeline.monitor, "psi_threshold", None)
    charts = []
    for feature in pipeline.feature_names:
        stat, p_adj, psi, wasserstein, marked = [], [], [], [], []
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
        charts.append(
            f"<div class='feature-drift' data-feature='{escape(feature)}'>"
            + line_chart(
                f"{feature}: {test_name}",
                [Series(test_name, stat, marked)],
                x_label="window",
                chart_id=f"drift-{feature}",
                width=DRIFT_CHART_WIDTH,
            )
            + line_chart(
                f"{feature}: corrected p-value (alpha {alpha:g})",
                [Series("p (corrected)", p_adj, marked)],
                x_label="window",
                threshold=alpha,
                log_y=True,
                width=DRIFT_CHART_WIDTH,
            )
            + (
                line_chart(
                    f"{feature}: effect size",
                    effect,
                    x_label="window",
                    threshold=psi_threshold,
                    width=DRIFT_CHART_WIDTH,
                )
                if effect
                else ""
            )
            + "</div>"
        )
    drifted = sum(1 for r in reports if r.get("drifted"))
    return (
        f"<p>{len(reports)} windows tested, {drifted} drifted (red points).</p>"
        f"<div class='charts'>{''.join(charts)}</div>"
    )


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")


def performance_charts(answer: Answer) -> str:
    """The monitored metric per feedback window against its threshold (degraded windows in red), and every other
    metric the monitor computed for the window."""
    if not answer.ok:
        return unavailable(answer)
    reports = [r for r in answer.data.get("reports", []) if isinstance(r, dict)]
    if not reports:
        return "<p class='empty'>no performance window yet (it needs feedback)</p>"
    reports.sort(key=lambda r: r.get("window_index", 0))
    xs = [float(r.get("window_index", i)) for i, r in enumerate(reports)]
    marked = [bool(r.get("degraded")) for r in reports]
    metric = str(reports[-1].get("metric", "value"))
    thresholds = [r.get("threshold") for r in reports if isinstance(r.get("threshold"), int | float)]
    charts = [
        line_chart(
            f"{metric} per window",
            [Series(metric, [(x, _float(r.get("value"))) for x, r in zip(xs, reports, strict=True)], marked)],
            x_label="feedback window",
            threshold=float(thresholds[-1]) if thresholds else None,
            chart_id=f"perf-{metric}",
        )
    ]
    others = sorted({k for r in reports for k in (r.get("metrics") or {}) if k != metric})
    for name in others:
        points = [(x, _float((r.get("metrics") or {}).get(name))) for x, r in zip(xs, reports, strict=True)]
        charts.append(
            line_chart(name, [Series(name, points, marked)], x_label="feedback window", chart_id=f"perf-{name}")
        )
    degraded = sum(marked)
    return (
        f"<p>{len(reports)} feedback windows, {degraded} degraded (red points).</p>"
        f"<div class='charts' id='performance-charts'>{''.join(charts)}</div>"
    )


def timeline_section(cascades: list[Cascade]) -> str:
    if not cascades:
        return "<p class='empty'>no cascade yet</p>"
    blocks = []
    for c in cascades:
        why = "".join(f"<li>{escape(s)}</li>" for s in c.explanation)
        steps = "".join(
            f"<tr class='step' data-event-type='{escape(s.event_type)}'>"
            f"<td>{escape(s.occurred_at.isoformat(timespec='seconds'))}</td>"
            f"<td>{escape(s.event_type)}</td><td class='mono'>{escape(s.event_id)}</td>"
            f"<td class='mono'>{(escape((s.caused_by or '')[:12]) or NONE)}</td><td>{escape(s.producer)}</td>"
            f"<td>{escape(s.summary)}</td></tr>"
            for s in c.steps
        )
        blocks.append(
            f"<section class='cascade' data-cascade-id='{escape(c.cascade_id)}'>"
            f"<h3>{escape(c.steps[0].event_type)} at {escape(c.steps[0].occurred_at.isoformat(timespec='seconds'))}"
            f" — <span class='outcome'>{escape(c.outcome)}</span></h3>"
            f"<ul class='why'>{why}</ul>"
            "<details class='steps'><summary>" + f"{len(c.steps)} events</summary>"
            "<table><tr><th>time</th><th>event</th><th>event id</th><th>caused by</th><th>producer</th>"
            f"<th>what happened</th></tr>{steps}</table></details></section>"
        )
    return "".join(blocks)


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
    alias_text = ", ".join(f"{escape(a)} → v{v}" for a, v in sorted(aliases.items())) or "none"
    body = (
        f"<h1 id='model' data-model='{escape(model)}'>{escape(model)}</h1>"
        f"<p>stream <b>{escape(pipeline.stream.name)}</b>, {escape(pipeline.model.family)} "
        f"{escape(pipeline.model.task)}, gate {escape(pipeline.gate.metric)} ({escape(pipeline.gate.direction)}). "
        f"Aliases: <span id='aliases'>{alias_text}</span>. Serving answers with <b id='served'>{served_text}</b>"
        + ("" if served.ok else f" <span class='unavailable'>({escape(served.error or '')})</span>")
        + f".</p><p><a href='/v1/timeline/{escape(model)}'>timeline as JSON</a></p>"
        "<h2>Cascades — why each retrain happened</h2><div id='timeline'>"
        + timeline_section(cascades)
        + "</div><h2>Versions</h2>"
        + versions_table(versions)
        + "<h2>Drift per feature</h2><div id='drift'>"
        + drift_charts(drift, pipeline)
        + "</div><h2>Performance</h2><div id='performance'>"
        + performance_charts(performance)
        + "</div><h2>Runs</h2>"
        + runs_table(runs)
    )
    return page(f"driftloop — {model}", body, refresh)
