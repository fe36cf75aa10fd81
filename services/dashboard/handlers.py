"""The dashboard's event logic: cascades read from the event log, each explained in a few sentences (why the
retrain happened, which drift, which gate numbers, what serving did)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from driftloop.runtime.timeline import Step, model_timeline

ROOT_CAUSES = {
    "DriftDetected": "drift",
    "PerformanceDegraded": "performance",
    "ExternalTrigger": "external",
    "DatasetVersionCreated": "new data",
    "FeaturesMaterialized": "new data",
    "TrainingRequested": "request",
}


@dataclass
class Cascade:
    cascade_id: str
    steps: list[Step]
    explanation: list[str] = field(default_factory=list)
    outcome: str = "in progress"

    @property
    def started_at(self) -> str:
        return self.steps[0].occurred_at.isoformat()

    def to_dict(self) -> dict[str, Any]:
        return {
            "cascade_id": self.cascade_id,
            "root_event_type": self.steps[0].event_type,
            "started_at": self.started_at,
            "ended_at": self.steps[-1].occurred_at.isoformat(),
            "outcome": self.outcome,
            "explanation": self.explanation,
            "steps": [s.to_dict() for s in self.steps],
        }


def _gate(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(payload.get("gate_json") or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def gate_sentence(payload: dict[str, Any], promoted: bool) -> str:
    g = _gate(payload)
    metric = g.get("metric", "the gate metric")
    verdict = "promoted" if promoted else "rejected"
    parts = [f"Gate: v{payload['version']} {verdict} on {metric}"]
    numbers = []
    if g.get("challenger_score") is not None:
        numbers.append(f"challenger {_fmt(g['challenger_score'])}")
    if g.get("champion_score") is not None:
        numbers.append(f"champion v{g.get('champion_version')} {_fmt(g['champion_score'])}")
    if g.get("min_improvement") is not None:
        numbers.append(f"required improvement {_fmt(g['min_improvement'])}")
    if g.get("holdout_rows") is not None:
        numbers.append(f"same holdout of {g['holdout_rows']} rows")
    if g.get("threshold") is not None and g.get("champion_score") is None:
        numbers.append(f"first-version threshold {_fmt(g['threshold'])}")
    if numbers:
        parts.append(": " + ", ".join(numbers))
    if payload.get("reason"):
        parts.append(f" — {payload['reason']}")
    return "".join(parts) + "."


def drift_sentence(p: dict[str, Any]) -> str:
    tests = {t["feature"]: t for t in p.get("tests", []) if isinstance(t, dict) and "feature" in t}
    described = []
    for feature in p.get("drifted_features", []):
        t = tests.get(feature)
        if t is None:
            described.append(feature)
            continue
        described.append(
            f"{feature} ({t.get('test', 'test')} {_fmt(t.get('statistic'))}, "
            f"corrected p {_fmt(t.get('adjusted_p_value'))})"
        )
    prediction = p.get("prediction_test") or {}
    if p.get("prediction_drifted"):
        described.append(
            f"the model's predictions (ks {_fmt(prediction.get('statistic'))}, p {_fmt(prediction.get('p_value'))}, "
            f"PSI {_fmt(prediction.get('psi'))} against the champion's first window)"
        )
    return (
        f"Why: drift detected on v{p.get('version')} in window {p.get('window_index')} "
        f"({p.get('window_size')} predictions) against dataset {p.get('reference_dataset_version_id')}: "
        f"{', '.join(described) or 'no feature named'} (alpha {p.get('alpha')}, {p.get('correction')} correction)."
    )


def explain(steps: list[Step]) -> tuple[list[str], str]:
    """Sentences telling the cascade's story, and its outcome (promoted vN / rejected vN / in progress...)."""
    sentences: list[str] = []
    outcome = "in progress"
    root = steps[0]
    p = root.payload
    if root.event_type == "DriftDetected":
        sentences.append(drift_sentence(p))
    elif root.event_type == "PerformanceDegraded":
        sentences.append(
            f"Why: {p.get('metric')} of v{p.get('version')} fell to {_fmt(p.get('value'))}, "
            f"below the threshold {_fmt(p.get('threshold'))}."
        )
    elif root.event_type == "ExternalTrigger":
        sentences.append(f"Why: an external system asked for it: {p.get('reason')}.")
    elif root.event_type in ("DatasetVersionCreated", "FeaturesMaterialized"):
        sentences.append(f"Why: new data — {root.summary}.")
    elif root.event_type == "TrainingRequested":
        sentences.append(f"Why: {p.get('trigger')} trigger — {p.get('reason')}.")
    else:
        sentences.append(f"Why: {root.event_type} — {root.summary}.")
    for step in steps:
        p = step.payload
        if step.event_type == "TrainingRequested":
            data = p.get("dataset_version_id") or "the latest dataset"
            sentences.append(f"Retrain: requested by the '{p.get('trigger')}' trigger on {data} ({p.get('reason')}).")
        elif step.event_type == "RunStateChanged" and p.get("state") in ("failed", "cancelled"):
            sentences.append(f"Run {str(p.get('run_id'))[:8]} {p.get('state')}: {p.get('message') or 'no message'}.")
            outcome = f"run {p.get('state')}"
        elif step.event_type == "TrainingCompleted":
            metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted((p.get("metrics") or {}).items()))
            sentences.append(
                f"Training: run {str(p.get('run_id'))[:8]} fit on {p.get('dataset_version_id')} ({metrics})."
            )
        elif step.event_type == "ModelPromoted" and p.get("rollback"):
            sentences.append(f"Registry: {step.summary}.")
            outcome = f"rolled back v{p.get('previous_version')}, champion v{p.get('version')}"
        elif step.event_type == "AliasMoveRefused":
            sentences.append(f"Registry: {step.summary}.")
        elif step.event_type == "ModelPromoted":
            sentences.append(gate_sentence(p, promoted=True))
            outcome = f"promoted v{p.get('version')}"
        elif step.event_type == "ModelRejected":
            sentences.append(gate_sentence(p, promoted=False))
            outcome = f"rejected v{p.get('version')}"
        elif step.event_type == "ServingSwitched":
            sentences.append(
                f"Serving: replica {p.get('replica')} switched to v{p.get('version')} "
                f"(was {'v' + str(p['previous_version']) if p.get('previous_version') is not None else 'nothing'}) "
                f"at {step.occurred_at.isoformat(timespec='seconds')}, loaded in {_fmt(p.get('load_seconds'))}s."
            )
        elif step.event_type == "RolloutStepped":
            sentences.append(f"Rollout: {step.summary}.")
        elif step.event_type == "RolloutRolledBack":
            sentences.append(f"Rollback: {step.summary}.")
            outcome = f"rolled back v{p.get('version')}"
    return sentences, outcome


def cascades(engine: sa.Engine, model: str) -> list[Cascade]:
    """The model's cascades, newest first, each explained."""
    found = []
    for steps in model_timeline(engine, model):
        sentences, outcome = explain(steps)
        found.append(Cascade(steps[0].cascade_id, steps, sentences, outcome))
    return list(reversed(found))
