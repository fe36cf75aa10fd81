"""The causal chain of every cascade of a model, read from the event log: which event caused which run, on
which dataset version, with which gate numbers, and when serving switched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from driftloop.clients.db.models import EventRecord

# Per-record events that would drown the chain; they are counted, not listed.
HIGH_VOLUME = ("PredictionLogged", "FeedbackReceived", "RecordRejected")


@dataclass(frozen=True)
class Step:
    event_id: str
    event_type: str
    occurred_at: datetime
    caused_by: str | None
    cascade_id: str
    producer: str
    summary: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at.isoformat(),
            "caused_by": self.caused_by,
            "cascade_id": self.cascade_id,
            "producer": self.producer,
            "summary": self.summary,
        }


def _gate(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(payload.get("gate_json") or "{}")
    except json.JSONDecodeError:
        return {}


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def describe(event_type: str, p: dict[str, Any]) -> str:
    if event_type == "DatasetCutStarted":
        return f"cut of dataset {p['dataset_version_id']} started: {p['new_rows']} new rows"
    if event_type == "DatasetVersionCreated":
        return (
            f"dataset {p['dataset_version_id']} cut ({p['mode']}): {p['row_count']} rows, {p['new_rows']} new, "
            f"hash {p['content_hash'][:12]}, parent {p.get('parent_version_id') or '-'}"
        )
    if event_type == "FeaturesMaterialized":
        return (
            f"features of {p['dataset_version_id']} materialized: {p['row_count']} rows, "
            f"{len(p['feature_names'])} features, {p['online_entities']} entities online"
        )
    if event_type == "DriftDetected":
        tests = {t["feature"]: t for t in p.get("tests", [])}
        drifted = ", ".join(
            f"{f} ({tests[f]['test']}={tests[f]['statistic']:.3f}, p_adj={tests[f]['adjusted_p_value']:.2g})"
            for f in p["drifted_features"]
            if f in tests
        )
        test = p.get("prediction_test") or {}
        if p.get("prediction_drifted"):
            shift = f"predictions (ks={_num(test.get('statistic'))}, psi={_num(test.get('psi'))})"
            drifted = f"{drifted} and {shift}" if drifted else shift
        return (
            f"drift on {p['model']} v{p['version']} in window {p['window_index']} of {p['window_size']} predictions "
            f"vs {p['reference_dataset_version_id']}: {drifted or p['drifted_features']} "
            f"(alpha {p['alpha']}, {p['correction']})"
        )
    if event_type == "PerformanceDegraded":
        return f"{p['model']} v{p['version']}: {p['metric']} {_num(p['value'])} below {_num(p['threshold'])}"
    if event_type == "ExternalTrigger":
        return f"external trigger for {p['model']}: {p['reason']}"
    if event_type == "RetrainDecision":
        about = f" v{p['version']}" if p.get("version") is not None else ""
        return f"{p['decision']}: {p['trigger']} cause of {p['model']}{about} ({p['reason']}): {p['note']}"
    if event_type == "TrainingRequested":
        return (
            f"training of {p['model']} requested by trigger '{p['trigger']}' on "
            f"{p.get('dataset_version_id') or 'the latest dataset'}: {p['reason']}"
        )
    if event_type == "RunStateChanged":
        note = f" ({p['message']})" if p.get("message") else ""
        return f"run {p['run_id'][:8]} {p.get('previous_state') or 'new'} -> {p['state']}{note}"
    if event_type == "TrainingCompleted":
        metrics = ", ".join(f"{k}={_num(v)}" for k, v in sorted(p.get("metrics", {}).items()))
        return f"run {p['run_id'][:8]} trained on {p['dataset_version_id']}: {metrics}"
    if event_type == "ModelRegistered":
        return f"registered {p['model']} v{p['version']} from run {p['run_id'][:8]} (data {p['dataset_version_id']})"
    if event_type == "ModelPromoted":
        g = _gate(p)
        numbers = _gate_numbers(g)
        prev = f"v{p['previous_version']}" if p.get("previous_version") is not None else "none"
        if p.get("rollback"):
            return (
                f"{p['alias']} of {p['model']} rolled back to v{p['version']} (was {prev}) by "
                f"{p.get('moved_by') or 'registry'}: {p['reason']}"
            )
        return f"{p['model']} v{p['version']} promoted to {p['alias']} (was {prev}): {numbers or p['reason']}"
    if event_type == "AliasMoveRefused":
        current = f"v{p['current_version']}" if p.get("current_version") is not None else "nothing"
        return (
            f"{p['alias']} of {p['model']} NOT moved to v{p['requested_version']} (asked by {p['requested_by']}); "
            f"it stays on {current}: {p['reason']}"
        )
    if event_type == "ModelRejected":
        numbers = _gate_numbers(_gate(p))
        return f"{p['model']} v{p['version']} rejected, champion kept: {numbers or p['reason']}"
    if event_type == "ServingSwitched":
        prev = f"v{p['previous_version']}" if p.get("previous_version") is not None else "nothing"
        return (
            f"serving replica {p['replica']} now answers with {p['model']} v{p['version']} (was {prev}), "
            f"loaded in {p['load_seconds']:.2f}s"
        )
    if event_type == "RolloutStepped":
        share = p.get("share")
        share_text = f" at {share:.0%} of traffic" if isinstance(share, int | float) else ""
        return (
            f"{p['mode']} rollout of {p['model']} v{p['version']} (champion v{p['champion_version']}): "
            f"{p['action']} step {p['step']}{share_text} on replica {p['replica']}{_stats(p)}"
        )
    if event_type == "RolloutRolledBack":
        return (
            f"{p['mode']} rollout of {p['model']} v{p['version']} rolled back to v{p['champion_version']} on replica "
            f"{p['replica']}: {p['reason']}{_stats(p)}"
        )
    return json.dumps(p, default=str)[:200]


def _stats(p: dict[str, Any]) -> str:
    try:
        stats = json.loads(p.get("stats_json") or "{}")
    except json.JSONDecodeError:
        return ""
    if not isinstance(stats, dict) or not stats:
        return ""
    shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(stats.items())]
    return " (" + ", ".join(shown) + ")"


def _gate_numbers(g: dict[str, Any]) -> str:
    if not g:
        return ""
    metric = g.get("metric", "score")
    parts = [f"{metric} challenger {_num(g.get('challenger_score'))}"]
    if g.get("champion_score") is not None:
        parts.append(f"champion v{g.get('champion_version')} {_num(g.get('champion_score'))}")
    if g.get("min_improvement") is not None:
        parts.append(f"min improvement {_num(g.get('min_improvement'))}")
    if g.get("holdout_rows") is not None:
        parts.append(f"same holdout of {g['holdout_rows']} rows")
    if g.get("threshold") is not None and g.get("champion_score") is None:
        parts.append(f"threshold {_num(g['threshold'])}")
    return ", ".join(parts)


def model_timeline(engine: sa.Engine, model: str) -> list[list[Step]]:
    """The model's cascades, oldest first; each cascade's steps in time order."""
    with engine.connect() as conn:
        cascade_ids = [
            row[0]
            for row in conn.execute(
                sa.select(EventRecord.cascade_id, sa.func.min(EventRecord.occurred_at).label("first"))
                .where(EventRecord.model == model, EventRecord.event_type.not_in(HIGH_VOLUME))
                .group_by(EventRecord.cascade_id)
                .order_by("first")
            )
        ]
        if not cascade_ids:
            return []
        rows = conn.execute(
            sa.select(EventRecord)
            .where(EventRecord.cascade_id.in_(cascade_ids), EventRecord.event_type.not_in(HIGH_VOLUME))
            .order_by(EventRecord.occurred_at)
        ).all()
    by_cascade: dict[str, list[Step]] = {cid: [] for cid in cascade_ids}
    for r in rows:
        payload = r.payload if isinstance(r.payload, dict) else json.loads(r.payload)
        by_cascade[r.cascade_id].append(
            Step(
                event_id=r.event_id,
                event_type=r.event_type,
                occurred_at=r.occurred_at,
                caused_by=r.caused_by,
                cascade_id=r.cascade_id,
                producer=r.producer,
                summary=describe(r.event_type, payload),
                payload=payload,
            )
        )
    return [steps for steps in by_cascade.values() if steps]


def lineage(engine: sa.Engine, event_id: str) -> list[Step]:
    """The chain of causes of an event, from the root cause to the event itself."""
    chain: list[Step] = []
    seen: set[str] = set()
    current: str | None = event_id
    with engine.connect() as conn:
        while current and current not in seen:
            seen.add(current)
            r = conn.execute(sa.select(EventRecord).where(EventRecord.event_id == current)).first()
            if r is None:
                break
            payload = r.payload if isinstance(r.payload, dict) else json.loads(r.payload)
            chain.append(
                Step(
                    r.event_id,
                    r.event_type,
                    r.occurred_at,
                    r.caused_by,
                    r.cascade_id,
                    r.producer,
                    describe(r.event_type, payload),
                    payload,
                )
            )
            current = r.caused_by
    return list(reversed(chain))
