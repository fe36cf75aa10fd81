"""The dashboard's pages and explanations from plain answers and event-log steps (no service running)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from model_factory import make_pipeline

from driftloop.runtime.timeline import Step, describe
from driftloop.services.dashboard import pages
from driftloop.services.dashboard.charts import Series, line_chart
from driftloop.services.dashboard.handlers import explain
from driftloop.services.dashboard.sources import Answer

PIPELINE = make_pipeline(model="fraud-ui", stream="tx-ui")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def step(event_type: str, payload: dict, i: int, caused_by: str | None) -> Step:
    return Step(
        f"e{i}", event_type, T0 + timedelta(seconds=i), caused_by, "e0", "test", describe(event_type, payload), payload
    )


def drift_payload() -> dict:
    return {
        "model": "fraud-ui",
        "version": 1,
        "reference_dataset_version_id": "tx-ui@v1",
        "window_size": 400,
        "window_index": 7,
        "alpha": 0.01,
        "correction": "bonferroni",
        "drifted_features": ["amount"],
        "tests": [
            {
                "feature": "amount",
                "test": "ks",
                "statistic": 0.61,
                "p_value": 1e-9,
                "adjusted_p_value": 5e-9,
                "drifted": True,
            },
            {
                "feature": "hour",
                "test": "ks",
                "statistic": 0.05,
                "p_value": 0.4,
                "adjusted_p_value": 1.0,
                "drifted": False,
            },
        ],
    }


def test_a_drift_cascade_explains_why_which_gate_numbers_and_the_switch() -> None:
    gate = {
        "metric": "roc_auc",
        "challenger_score": 0.91,
        "champion_score": 0.82,
        "champion_version": 1,
        "min_improvement": 0.01,
        "holdout_rows": 750,
    }
    steps = [
        step("DriftDetected", drift_payload(), 0, None),
        step(
            "TrainingRequested",
            {
                "request_id": "r",
                "model": "fraud-ui",
                "trigger": "drift",
                "reason": "drift e0",
                "dataset_version_id": "tx-ui@v2",
            },
            1,
            "e0",
        ),
        step(
            "TrainingCompleted",
            {
                "run_id": "run-abcdef12",
                "model": "fraud-ui",
                "dataset_version_id": "tx-ui@v2",
                "metrics": {"roc_auc": 0.91},
            },
            2,
            "e1",
        ),
        step(
            "ModelPromoted",
            {
                "model": "fraud-ui",
                "version": 2,
                "alias": "champion",
                "previous_version": 1,
                "reason": "better",
                "gate_json": json.dumps(gate),
            },
            3,
            "e2",
        ),
        step(
            "ServingSwitched",
            {"model": "fraud-ui", "version": 2, "previous_version": 1, "replica": "r1", "load_seconds": 0.2},
            4,
            "e3",
        ),
    ]
    sentences, outcome = explain(steps)
    assert outcome == "promoted v2"
    text = "\n".join(sentences)
    assert "Why: drift detected on v1 in window 7 (400 predictions) against dataset tx-ui@v1: amount (ks 0.6100" in text
    assert "hour" not in sentences[0]  # only drifted features are named
    assert "Retrain: requested by the 'drift' trigger on tx-ui@v2" in text
    assert "Training: run run-abcd fit on tx-ui@v2 (roc_auc 0.9100)" in text
    assert (
        "Gate: v2 promoted on roc_auc: challenger 0.9100, champion v1 0.8200, required improvement 0.0100, "
        "same holdout of 750 rows"
    ) in text
    assert "Serving: replica r1 switched to v2 (was v1)" in text


def test_a_failed_run_and_a_rejection_are_the_outcome() -> None:
    root = step("ExternalTrigger", {"model": "m", "reason": "nightly", "details_json": "{}"}, 0, None)
    failed = step("RunStateChanged", {"run_id": "run-1", "model": "m", "state": "failed", "message": "OOM"}, 1, "e0")
    sentences, outcome = explain([root, failed])
    assert outcome == "run failed" and "Why: an external system asked for it: nightly." in sentences
    assert any("OOM" in s for s in sentences)
    rejected = step(
        "ModelRejected",
        {
            "model": "m",
            "version": 3,
            "reason": "not better",
            "gate_json": json.dumps({"metric": "rmse", "challenger_score": 2.0}),
        },
        2,
        "e0",
    )
    sentences, outcome = explain([root, rejected])
    assert outcome == "rejected v3" and any(
        s.startswith("Gate: v3 rejected on rmse: challenger 2.0000") for s in sentences
    )


def test_runs_table_shows_each_run_with_its_metrics() -> None:
    html = pages.runs_table(
        Answer(
            data={
                "runs": [
                    {
                        "run_id": "0123456789",
                        "state": "succeeded",
                        "trigger": "drift",
                        "dataset_version_id": "tx@v2",
                        "metrics": {"roc_auc": 0.9, "log_loss": 0.3},
                        "created_at": "2026-01-01T00:00:00",
                        "ended_at": None,
                    },
                ]
            }
        )
    )
    assert "data-run-id='0123456789'" in html and "roc_auc 0.9000" in html and "log_loss 0.3000" in html
    assert "succeeded" in html and "drift" in html


def test_a_service_that_does_not_answer_is_shown_not_raised() -> None:
    down = Answer(error="training unavailable (ConnectError)")
    assert "training unavailable" in pages.runs_table(down)
    assert "training unavailable" in pages.performance_charts(down)
    assert "training unavailable" in pages.drift_charts(down, PIPELINE)


def test_drift_charts_per_feature_mark_drifted_windows_and_show_effect_sizes() -> None:
    reports = []
    for window in range(3):
        drifted = window == 2
        reports.append(
            {
                "window_index": window,
                "drifted": drifted,
                "created_at": f"2026-01-01T00:0{window}:00",
                "tests": [
                    {
                        "feature": f,
                        "test": "ks",
                        "statistic": 0.9 if drifted else 0.05,
                        "adjusted_p_value": 1e-8 if drifted else 0.9,
                        "drifted": drifted and f == "amount",
                        "psi": 0.4 if drifted else 0.01,
                        "wasserstein": None,
                    }
                    for f in PIPELINE.feature_names
                ],
            }
        )
    html = pages.drift_charts(Answer(data={"reports": reports}), PIPELINE)
    assert "3 windows tested, 1 drifted" in html
    for feature in PIPELINE.feature_names:
        assert f"data-feature='{feature}'" in html
    amount = html.split("data-feature='amount'")[1].split("data-feature=")[0]
    assert amount.count('class="alarm"') == 3  # statistic, p-value and effect-size charts mark window 2
    assert "effect size" in amount and 'data-series="PSI"' in amount
    assert 'data-series="Wasserstein / sd"' not in amount  # reported as missing for every window
    assert 'class="threshold"' in amount  # alpha on the p-value chart


def test_performance_chart_has_the_threshold_and_degraded_windows() -> None:
    reports = [
        {
            "window_index": i,
            "metric": "f1",
            "value": v,
            "threshold": 0.7,
            "degraded": v < 0.7,
            "metrics": {"f1": v, "accuracy": v + 0.1},
        }
        for i, v in enumerate([0.8, 0.75, 0.6])
    ]
    html = pages.performance_charts(Answer(data={"model": "m", "reports": reports}))
    assert "3 feedback windows, 1 degraded" in html
    assert 'id="perf-f1"' in html and 'id="perf-accuracy"' in html and 'class="threshold"' in html
    assert html.count('class="alarm"') == 2  # window 2 on both charts


def test_charts_survive_missing_values_and_no_data() -> None:
    assert "no data yet" in line_chart("empty", [Series("s", [])])
    svg = line_chart("gaps", [Series("s", [(0, 1.0), (1, float("nan")), (2, 3.0)])])
    assert svg.count("<circle") == 2  # the missing value is skipped, not drawn at 0


def test_refresh_reloads_the_page() -> None:
    assert "http-equiv='refresh' content='15'" in pages.overview([], None, refresh=15)
    assert "http-equiv" not in pages.overview([], None)


def test_rollout_steps_and_a_rollback_are_explained() -> None:
    root = step("ExternalTrigger", {"model": "m", "reason": "new model", "details_json": "{}"}, 0, None)
    promoted = step(
        "ModelPromoted",
        {"model": "m", "version": 2, "alias": "champion", "previous_version": 1, "reason": "better", "gate_json": "{}"},
        1,
        "e0",
    )
    stepped = step(
        "RolloutStepped",
        {
            "model": "m",
            "version": 2,
            "champion_version": 1,
            "mode": "canary",
            "action": "start",
            "step": 0,
            "share": 0.1,
            "replica": "r1",
            "stats_json": json.dumps({"challenger_errors": 0}),
        },
        2,
        "e1",
    )
    rolled = step(
        "RolloutRolledBack",
        {
            "model": "m",
            "version": 2,
            "champion_version": 1,
            "mode": "canary",
            "reason": "error rate 0.30 above 0.05",
            "replica": "r1",
            "stats_json": "{}",
        },
        3,
        "e1",
    )
    sentences, outcome = explain([root, promoted, stepped, rolled])
    assert outcome == "rolled back v2"
    assert (
        "Rollout: canary rollout of m v2 (champion v1): start step 0 at 10% of traffic on replica r1 "
        "(challenger_errors 0)." in sentences
    )
    assert "Rollback: canary rollout of m v2 rolled back to v1 on replica r1: error rate 0.30 above 0.05." in sentences
