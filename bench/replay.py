"""Prequential replay: a table streamed through a running stack, row by row in event-time order, as a user would.

    .venv/bin/python bench/replay.py auto sea [--json]             # river's SEA, an abrupt change
    .venv/bin/python bench/replay.py auto agrawal [--json]         # river's Agrawal, a gradual change
    .venv/bin/python bench/replay.py auto hyperplane [--json]      # river's rotating hyperplane, gradual
    .venv/bin/python bench/replay.py auto demo [--json]            # the demo's transactions and its own pipeline
    .venv/bin/python bench/replay.py PIPELINE.yaml FILE.csv|FILE.parquet --change-at ROW [--json]

Starts an embedded stack of its own (free ports, a temporary home; stopped by PID at the end), then:
1. bootstrap: the first ``--bootstrap-rows`` records into the stream's topic; the loop trains and promotes v1;
2. live: the rest in batches of ``--batch`` rows: the records into the topic (so they land and are cut), one
   prediction per row from serving (``POST /v1/models/{m}/predict``), and each row's label as feedback
   (``POST /v1/models/{m}/feedback`` by request id) ``--feedback-delay`` rows later; the replay waits for the monitor
   to have taken in the served predictions before the next batch (so a slow consumer is not a late detection);
   by default as fast as the stack takes the rows in, at ``--rows-per-second`` like a stream with a pace of its own
   (in rows, the loop's seconds from a change to a new model weigh as much as the stream is fast: a stack that takes
   rows in faster runs the same seconds of Spark over more rows);
3. reads the event log and prints, per segment (before / after the change) and overall: false alarms before the
   change, detection delay in rows, retrains and why, versions promoted / rejected, prequential accuracy / AUC of
   what was served vs the never-retrained model (the first champion, scored offline on the same rows), and for the
   generated streams a model trained on post-change data from the start (the target), and wall time.

The AUCs: all three models scored on the same rows, the same way. ``*_auc`` is the prequential AUC (the mean AUC
over tumbling windows of ``--window`` rows, as stream evaluators such as MOA's windowed evaluator report it: the
served scores, as they were served, are ranked only against scores of their window, mostly one model's);
``*_auc_pooled`` is one AUC over all the segment's rows (it ranks one model's scores against another's, whose
scale differs: biased). The target is a LightGBM of the same parameters trained on ``--target-rows`` rows of the
stream's own post-change concept that the stream never used. A gradual change of ``--width`` rows begins
``width/2`` rows before ``--change-at`` (its midpoint): alarms from there on detect it, earlier ones are false.

Generated streams (``auto``): the pipeline is written by the replay (numeric features, a count window of
``--window`` predictions, performance windows of 200 labels with a threshold 0.04 below the bootstrap model's
offline holdout AUC and river's ADWIN on the labeled errors (``--adwin-delta``, ``--adwin-clock``), dataset
versions cut every ``--cut-every`` rows as a window of the newest ``--window-rows``, a cooldown in rows; after a
located change a first retrain on ``--min-rows-after-change`` post-change rows and follow-ups on the same change
``--followup-rows`` rows later (each on ``--followup-growth`` times its previous run's post-change rows at least),
the rows after the change weighing from ``--post-change-oldest-weight`` up to 1).
A CSV/Parquet file needs its pipeline (``stream.event_time``, ``stream.label``, ``stream.entity_key``) and
``--change-at`` (the row of the documented change point).

JSON keys (``--json``): ``false_alarms``, ``detection_delay_rows``, ``retrains``, ``retrains_on_identical_data``,
``served_auc_after_change``, ``never_retrained_auc_after_change``, ``rows_to_post_change_model``,
``seconds_to_post_change_model`` and more.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

GENERATORS = ("sea", "agrawal", "hyperplane", "demo")
DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "transactions.yaml"
ENTITY = "entity"
EVENT_TIME = "event_time"
LABEL = "label"
ALARM_TYPES = ("DriftDetected", "PerformanceDegraded")


# --- streams ------------------------------------------------------------------------------------------------


def generate(name: str, rows: int, change_at: int, width: int = 0, seed: int = 7) -> pd.DataFrame:
    """``rows`` rows of river's synthetic stream ``name`` whose concept changes at row ``change_at``: abruptly
    (``width`` 0) or gradually (each row drawn from the new concept with a probability rising along a sigmoid of
    ``width`` rows centred on ``change_at``). Columns: the features, ``entity``, ``event_time`` (one row a
    second, ending now) and ``label`` (0/1)."""
    before, after = _concepts(name, seed)
    rng = np.random.default_rng(seed)
    old, new = iter(before), iter(after)
    records = []
    for i in range(rows):
        share = (1.0 if i >= change_at else 0.0) if width <= 0 else _sigmoid((i - change_at) / (width / 8))
        x, y = next(new) if rng.random() < share else next(old)
        records.append({f"x{k}": float(v) for k, v in enumerate(x.values())} | {LABEL: int(y)})
    frame = pd.DataFrame(records)
    start = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(seconds=rows + 60)
    frame.insert(0, EVENT_TIME, [start + timedelta(seconds=i) for i in range(rows)])
    frame.insert(0, ENTITY, [f"e{i % 500}" for i in range(rows)])
    return frame


def generate_demo(rows: int, change_at: int, seed: int = 7) -> pd.DataFrame:
    """The demo's transactions (``driftloop.ops.demo``): amounts, categories and what fraud follows change at row
    ``change_at``. Event times one a second, ending now, like the generated streams."""
    from driftloop.ops.demo import make_records

    rng = np.random.default_rng(seed)
    start = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(seconds=rows + 60)
    records = make_records(change_at, False, rng, start) + make_records(rows - change_at, True, rng, start)
    frame = pd.DataFrame(records)
    frame["event_time"] = [start + timedelta(seconds=i) for i in range(rows)]
    return frame


def post_change_sample(name: str, rows: int, skip: int, seed: int = 7) -> pd.DataFrame:
    """``rows`` rows of the stream's own post-change concept that the stream never used (to train the target: a
    model trained on post-change data from the start). The same generator with the same seed as ``generate`` (a
    rotating hyperplane's seed IS its concept: another seed is another hyperplane), past the first ``skip`` draws
    (the most a stream of ``skip`` rows can take from it)."""
    _, after = _concepts(name, seed)
    draws = after.take(skip + rows)
    records = [
        {f"x{k}": float(v) for k, v in enumerate(x.values())} | {LABEL: int(y)}
        for i, (x, y) in enumerate(draws)
        if i >= skip
    ]
    return pd.DataFrame(records)


def _concepts(name: str, seed: int) -> tuple[Any, Any]:
    from river.datasets import synth

    if name == "sea":  # threshold 8 -> 9.5 on x0 + x1, 5% label noise
        return synth.SEA(variant=0, noise=0.05, seed=seed), synth.SEA(variant=3, noise=0.05, seed=seed + 1)
    if name == "agrawal":  # loan-approval function 0 -> 2
        return (
            synth.Agrawal(classification_function=0, seed=seed),
            synth.Agrawal(classification_function=2, seed=seed + 1),
        )
    if name == "hyperplane":  # the hyperplane turns: another weight vector
        return (
            synth.Hyperplane(n_features=5, noise_percentage=0.05, seed=seed),
            synth.Hyperplane(n_features=5, noise_percentage=0.05, seed=seed + 6),
        )
    raise SystemExit(f"unknown generator {name!r}: use one of {', '.join(GENERATORS)}")


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def read_table(path: Path, event_time: str) -> pd.DataFrame:
    """A CSV or Parquet table, in event-time order."""
    frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    frame[event_time] = pd.to_datetime(frame[event_time], utc=True)
    return frame.sort_values(event_time, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class LoopPolicy:
    """How the generated pipelines adapt after a change (``--min-rows-after-change`` and the rest)."""

    min_rows_after_change: int = 300
    followup_rows: tuple[int, ...] = (500, 1500, 3500)
    window_rows: int = 4000
    adwin_delta: float = 0.01
    adwin_clock: int = 1
    # The first rows after a located gradual change still mix the old concept in: they weigh less.
    post_change_oldest_weight: float = 0.2
    followup_growth: float = 1.5


def generated_pipeline(
    name: str,
    frame: pd.DataFrame,
    *,
    window: int,
    cut_every: int,
    threshold: float | None,
    policy: LoopPolicy = LoopPolicy(),
) -> dict[str, Any]:
    """The pipeline of a generated stream: every feature numeric, count windows, a cooldown in rows; after a
    located change, a first retrain on ``min_rows_after_change`` post-change rows and follow-ups as more land
    (``followup_rows``), in versions that keep the newest ``window_rows`` rows (the post-change rows grow)."""
    features = [c for c in frame.columns if c not in (ENTITY, EVENT_TIME, LABEL)]
    # The change detector reads each label as it comes: a rise of the error is found (and located) without
    # waiting for a window of 200 labels to be past the threshold.
    performance: dict[str, Any] = {
        "window_size": 200,
        "change_detector": "adwin",
        "adwin_delta": policy.adwin_delta,
        "adwin_clock": policy.adwin_clock,
    }
    if threshold is not None:
        performance["threshold"] = round(threshold, 3)
    return {
        "stream": {
            "name": f"replay_{name}",
            "fields": [
                {"name": ENTITY, "type": "string", "nullable": False},
                {"name": EVENT_TIME, "type": "timestamp", "nullable": False},
                *({"name": f, "type": "double", "nullable": False} for f in features),
                {"name": LABEL, "type": "int"},
            ],
            "entity_key": ENTITY,
            "event_time": EVENT_TIME,
            "label": LABEL,
        },
        "dataset": {
            "cut_every_rows": cut_every,
            "mode": "window",
            "window_rows": max(cut_every, policy.window_rows),
            "landing_batch_rows": 200,
            "landing_batch_seconds": 1,
            "min_rows_after_change": policy.min_rows_after_change,
        },
        "features": [{"name": f} for f in features],
        "model": {
            "name": f"replay-{name}",
            "params": {"num_leaves": 15},
            "post_change_oldest_weight": policy.post_change_oldest_weight,
        },
        "gate": {"metric": "roc_auc", "min_improvement": 0.0},
        "triggers": {
            "new_data": {"enabled": True, "only_without_champion": True},
            "drift": {"enabled": True, "wait_for_fresh_data": True},
            "cooldown_by": "rows",
            "cooldown_rows": cut_every,
            "after_change": {
                "followup_rows": list(policy.followup_rows),
                "followup_growth": policy.followup_growth,
            },
        },
        "monitor": {"window_size": window, "psi_threshold": 0.1, "reference_rows": 1000, "performance": performance},
    }


def offline_auc(frame: pd.DataFrame, features: list[str], label: str) -> float:
    """Holdout AUC of a LightGBM on ``frame`` (first 75% / last 25%): how good a model of the bootstrap can be."""
    model = fit(frame.iloc[: int(len(frame) * 0.75)], features, label)
    test = frame.iloc[int(len(frame) * 0.75) :]
    return auc(test[label].to_numpy(), model.predict(test[features].to_numpy(dtype="float64")))


def fit(frame: pd.DataFrame, features: list[str], label: str) -> Any:
    import lightgbm as lgb

    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 15, "seed": 3}
    data = lgb.Dataset(frame[features].to_numpy(dtype="float64"), label=frame[label].to_numpy())
    return lgb.train(params, data, num_boost_round=100)


# --- metrics and the summary (pure: no stack) ---------------------------------------------------------------


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from driftloop.contracts.evaluation import score

    y = np.asarray(y)
    return score("roc_auc", y, np.asarray(p)) if 0 < y.sum() < y.size else None


def accuracy(y: np.ndarray, p: np.ndarray) -> float | None:
    from driftloop.contracts.evaluation import score

    return score("accuracy", np.asarray(y), np.asarray(p)) if len(y) else None


def windowed_auc(y: np.ndarray, p: np.ndarray, window: int) -> float | None:
    """Prequential AUC as stream evaluators report it (MOA's windowed evaluator): the mean AUC over tumbling
    windows of ``window`` consecutive rows (a last, shorter window counts if it has half as many; windows with
    one class only are left out). Scores of different models are ranked against each other only within a window,
    so a switch of served model (another score scale) does not bias it as one AUC over all rows would."""
    y, p = np.asarray(y), np.asarray(p)
    values = []
    for start in range(0, len(y), window):
        end = min(start + window, len(y))
        if end - start < window // 2 and values:
            continue
        value = auc(y[start:end], p[start:end])
        if value is not None:
            values.append(value)
    return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class Served:
    """One live row as it was answered."""

    row: int
    wall: float  # epoch seconds when it was answered
    version: int
    prediction: float


def row_at(served: list[Served], when: float) -> int:
    """The last row answered at or before ``when`` (epoch seconds); the first live row before any."""
    answered = [s.row for s in served if s.wall <= when]
    return answered[-1] if answered else served[0].row


# The first windows after the change listed one by one in the summary (where adaptation shows).
WINDOWS_SHOWN = 6


def summarize(
    labels: np.ndarray,
    served: list[Served],
    baseline: np.ndarray,
    events: list[dict[str, Any]],
    change_row: int,
    change_time: datetime,
    target: np.ndarray | None = None,
    *,
    stable_until: int | None = None,
    window: int = 500,
) -> dict[str, Any]:
    """The replay's figures from what was served and the event log (``events``: ``event_type``,
    ``occurred_at`` (epoch seconds), ``payload``). ``baseline``/``target``: scores of the never-retrained model and
    of a model trained on post-change data, for every row of ``labels``. ``stable_until``: the first row that is
    not of the old concept alone (a gradual change begins before ``change_row``, its midpoint): alarms before it
    are false, alarms from it on detect the change (the delay, from ``change_row``, may be negative); default
    ``change_row``. AUCs per segment: ``*_auc`` is the prequential AUC (``windowed_auc`` over ``window`` rows),
    ``*_auc_pooled`` one AUC over all the segment's rows; all three models on the same rows, the same way."""
    stable_until = change_row if stable_until is None else stable_until
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(events, key=lambda e: e["occurred_at"]):
        by_type.setdefault(event["event_type"], []).append(event)
    first_live = served[0].row
    alarms = [
        {
            "type": e["event_type"],
            "version": e["payload"].get("version"),
            "row": row_at(served, e["occurred_at"]),
            "what": e["payload"].get("drifted_features") or e["payload"].get("reason") or e["payload"].get("metric"),
        }
        for t in ALARM_TYPES
        for e in by_type.get(t, [])
        if e["occurred_at"] >= served[0].wall
    ]
    alarms.sort(key=lambda a: a["row"])
    false_alarms = [a for a in alarms if a["row"] < stable_until]
    detected = next((a for a in alarms if a["row"] >= stable_until), None)
    requests = [
        {
            "row": row_at(served, e["occurred_at"]) if e["occurred_at"] >= served[0].wall else None,
            "trigger": e["payload"]["trigger"],
            "reason": e["payload"]["reason"],
        }
        for e in by_type.get("TrainingRequested", [])
    ]
    completed = Counter(e["payload"]["dataset_version_id"] for e in by_type.get("TrainingCompleted", []))
    data_end: dict[str, datetime] = {}
    for e in by_type.get("DatasetVersionCreated", []):
        if e["payload"].get("max_event_time") is not None:
            data_end[e["payload"]["dataset_version_id"]] = _time(e["payload"]["max_event_time"])
    trained_on = {
        e["payload"]["version"]: e["payload"]["dataset_version_id"] for e in by_type.get("ModelRegistered", [])
    }
    post_change_versions = {v for v, d in trained_on.items() if d in data_end and data_end[d] >= change_time}
    first_post_served = next((s for s in served if s.row >= change_row and s.version in post_change_versions), None)
    first_post = first_post_served.row if first_post_served is not None else None
    change_served = next((s for s in served if s.row >= change_row), None)
    rows = np.array([s.row for s in served])
    scores = np.array([s.prediction for s in served])
    y = labels[rows]
    after = rows >= change_row
    decisions = Counter(e["payload"]["decision"] for e in by_type.get("RetrainDecision", []))
    segments = {}
    for name, mask in (("before_change", ~after), ("after_change", after), ("overall", np.ones_like(after))):
        segments[name] = {
            "rows": int(mask.sum()),
            "alarms": sum(1 for a in alarms if (a["row"] >= change_row) == (name == "after_change"))
            if name != "overall"
            else len(alarms),
            "served_accuracy": accuracy(y[mask], scores[mask]),
            "never_retrained_accuracy": accuracy(y[mask], baseline[rows][mask]),
        }
        models = {"served": scores, "never_retrained": baseline[rows]}
        if target is not None:
            models["post_change_model"] = target[rows]
        for model, p in models.items():
            segments[name][f"{model}_auc"] = windowed_auc(y[mask], p[mask], window)
            segments[name][f"{model}_auc_pooled"] = auc(y[mask], p[mask])
    # Where the served model loses to the post-change one: the first windows after the change, one by one.
    versions = np.array([s.version for s in served])
    windows_after = []
    for start in range(change_row, int(rows.max()) + 1 if len(rows) else change_row, window):
        in_window = (rows >= start) & (rows < start + window)
        if not in_window.any():
            continue
        entry: dict[str, Any] = {
            "rows": [start, start + window],
            "versions_served": sorted({int(v) for v in versions[in_window]}),
            "served_auc": auc(y[in_window], scores[in_window]),
        }
        if target is not None:
            entry["post_change_model_auc"] = auc(y[in_window], target[rows][in_window])
        windows_after.append(entry)
    return {
        "live_rows": len(served),
        "first_live_row": first_live,
        "change_row": change_row,
        "stable_until_row": stable_until,
        "auc_window_rows": window,
        "false_alarms": len(false_alarms),
        "false_alarm_list": false_alarms,
        "detection_delay_rows": detected["row"] - change_row if detected else None,
        "first_alarm_after_change": detected,
        "retrains": len(requests),
        "retrain_list": requests,
        "retrains_on_identical_data": sum(n - 1 for n in completed.values() if n > 1),
        "decisions": dict(decisions),
        "versions_promoted": [
            e["payload"]["version"]
            for e in by_type.get("ModelPromoted", [])
            if e["payload"].get("alias") == "champion" and not e["payload"].get("rollback")
        ],
        "versions_rejected": [e["payload"]["version"] for e in by_type.get("ModelRejected", [])],
        "rollbacks": [
            e["payload"]["version"] for e in by_type.get("ModelPromoted", []) if e["payload"].get("rollback")
        ],
        "served_auc_after_change": segments["after_change"]["served_auc"],
        "never_retrained_auc_after_change": segments["after_change"]["never_retrained_auc"],
        "post_change_model_auc_after_change": segments["after_change"].get("post_change_model_auc"),
        "served_auc_after_change_pooled": segments["after_change"]["served_auc_pooled"],
        "never_retrained_auc_after_change_pooled": segments["after_change"]["never_retrained_auc_pooled"],
        "post_change_model_auc_after_change_pooled": segments["after_change"].get("post_change_model_auc_pooled"),
        "rows_to_post_change_model": first_post - change_row if first_post is not None else None,
        # Wall seconds from the change's first row answered to the first row a post-change model answered.
        "seconds_to_post_change_model": round(first_post_served.wall - change_served.wall, 1)
        if first_post_served is not None and change_served is not None
        else None,
        "segments": segments,
        "windows_after_change": windows_after[:WINDOWS_SHOWN],
    }


def _time(value: Any) -> datetime:
    """A timestamp as the event log keeps it (ISO text or epoch milliseconds)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def render(summary: dict[str, Any], title: str) -> str:
    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"replay of {title}: {summary['live_rows']} live rows, change at row {summary['change_row']}"]
    lines.append(
        f"  {'segment':<15}{'rows':>7}{'alarms':>8}{'served acc':>12}{'served AUC':>12}{'never-retr. AUC':>17}"
    )
    for name, seg in summary["segments"].items():
        lines.append(
            f"  {name:<15}{seg['rows']:>7}{seg['alarms']:>8}{num(seg['served_accuracy']):>12}"
            f"{num(seg['served_auc']):>12}{num(seg['never_retrained_auc']):>17}"
        )
    for key in (
        "false_alarms",
        "detection_delay_rows",
        "retrains",
        "retrains_on_identical_data",
        "rows_to_post_change_model",
        "seconds_to_post_change_model",
        "served_auc_after_change",
        "never_retrained_auc_after_change",
        "post_change_model_auc_after_change",
        "served_auc_after_change_pooled",
        "never_retrained_auc_after_change_pooled",
        "post_change_model_auc_after_change_pooled",
        "versions_promoted",
        "versions_rejected",
        "rollbacks",
        "decisions",
        "wall_seconds",
    ):
        if key in summary:
            lines.append(f"  {key}: {num(summary[key])}")
    for r in summary["retrain_list"]:
        lines.append(f"    retrain at row {r['row']} ({r['trigger']}): {r['reason']}")
    for a in summary["false_alarm_list"]:
        lines.append(f"    false alarm at row {a['row']}: {a['type']} v{a['version']} {a['what']}")
    for w in summary.get("windows_after_change", []):
        lines.append(
            f"    rows {w['rows'][0]}-{w['rows'][1]}: served AUC {num(w['served_auc'])} (v{w['versions_served']}), "
            f"post-change model {num(w.get('post_change_model_auc'))}"
        )
    return "\n".join(lines)


# --- the stack ----------------------------------------------------------------------------------------------


class Replay:
    """Drives a running stack: records into the stream, predictions and feedback over HTTP."""

    def __init__(self, settings: Any, pipeline: Any) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer

        from driftloop.clients.credentials import client_token, schema_registry_client_config
        from driftloop.clients.http import ServiceClient

        self.settings = settings
        self.pipeline = pipeline
        self.model = pipeline.model.name
        self.stream = pipeline.stream
        token = partial(client_token, settings)
        self.serving = ServiceClient("serving", settings, token=token, timeout=60.0)
        self.monitor = ServiceClient("monitor", settings, token=token, timeout=30.0)
        self.serializer = AvroSerializer(
            SchemaRegistryClient(schema_registry_client_config(settings)), json.dumps(self.stream.avro_schema())
        )
        self.producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "linger.ms": 20}))
        self.served: list[Served] = []
        self.answers: dict[int, tuple[str, int]] = {}  # row -> (request_id, index)
        self.fed_through = -1
        self.per_version: Counter[int] = Counter()
        self.unstored: Counter[int] = Counter()  # served predictions the monitor never stored, per version

    def produce(self, frame: pd.DataFrame) -> None:
        from confluent_kafka.serialization import MessageField, SerializationContext

        ctx = SerializationContext(self.stream.topic, MessageField.VALUE)
        for record in frame.to_dict("records"):
            record = {k: (v.to_pydatetime() if isinstance(v, pd.Timestamp) else _plain(v)) for k, v in record.items()}
            key = str(record[self.stream.entity_key]).encode()
            self.producer.produce(self.stream.topic, key=key, value=self.serializer(record, ctx))
            self.producer.poll(0)
        self.producer.flush(60)

    def served_version(self) -> int | None:
        from driftloop.errors import DriftloopError

        try:
            version = self.serving.get(f"/v1/models/{self.model}").get("version")
        except DriftloopError:
            return None
        return int(version) if version is not None else None

    def predict(self, frame: pd.DataFrame, first_row: int) -> None:
        skip = {self.stream.label, self.stream.event_time}
        instances = [{k: _plain(v) for k, v in r.items() if k not in skip} for r in frame.to_dict("records")]
        answer = self.serving.post(f"/v1/models/{self.model}/predict", json={"instances": instances})
        now = time.time()
        for i, p in enumerate(answer["predictions"]):
            self.served.append(Served(first_row + i, now, int(answer["version"]), float(p)))
            self.answers[first_row + i] = (answer["request_id"], i)
        self.per_version[int(answer["version"])] += len(instances)

    def feed_back(self, labels: np.ndarray, through_row: int) -> None:
        rows = [r for r in range(self.fed_through + 1, through_row + 1) if r in self.answers]
        if rows:
            feedback = [
                {"request_id": self.answers[r][0], "index": self.answers[r][1], "actual": float(labels[r])}
                for r in rows
            ]
            self.serving.post(f"/v1/models/{self.model}/feedback", json={"feedback": feedback})
        self.fed_through = max(self.fed_through, through_row)

    def wait_for_monitor(self, timeout: float = 60.0, stalled: float = 3.0) -> None:
        """Until the monitor has stored the predictions the champion it watches served, or its count has not moved
        for ``stalled`` seconds, or ``timeout``. A prediction served in the instant of a switch, before the monitor
        watched its version, is never stored: it is counted as such and not waited for again (waiting for it would
        pause the stream a minute a batch and let the loop catch up, which flatters the figures)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            status = self.monitor.get(f"/v1/monitor/{self.model}")
            if status.get("version") is None:
                return
            version, stored = int(status["version"]), int(status.get("predictions_stored", 0))
            expected = self.per_version.get(version, 0) - self.unstored[version]
            if stored >= expected:
                return
            if stored != last:
                last, since = stored, time.monotonic()
            elif time.monotonic() - since >= stalled:
                self.unstored[version] += expected - stored
                print(f"  the monitor never stored {expected - stored} prediction(s) of v{version}", flush=True)
                return
            time.sleep(0.2)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_events(settings: Any, model: str, stream: str) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from driftloop.clients.db import create_engine_for
    from driftloop.clients.db.models import EventRecord

    engine = create_engine_for(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EventRecord).where(
                sa.or_(EventRecord.model == model, EventRecord.stream == stream),
                EventRecord.event_type.not_in(["PredictionLogged", "FeedbackReceived"]),
            )
        ).all()
    engine.dispose()
    return [
        {
            "event_type": r.event_type,
            "occurred_at": (r.occurred_at if r.occurred_at.tzinfo else r.occurred_at.replace(tzinfo=UTC)).timestamp(),
            "payload": r.payload,
        }
        for r in rows
    ]


def baseline_scores(settings: Any, events: list[dict[str, Any]], model: str, features: pd.DataFrame) -> np.ndarray:
    """Scores of the first champion (never retrained) on every row, from its artifact."""
    from driftloop.clients.objectstore import open_object_store
    from driftloop.contracts.artifact import ModelArtifact

    first = min(
        (e for e in events if e["event_type"] == "ModelPromoted" and e["payload"].get("alias") == "champion"),
        key=lambda e: e["occurred_at"],
    )["payload"]
    store = open_object_store(settings)
    artifact = ModelArtifact.from_bytes(store.get_bytes(store.key_of(first["artifact_uri"])), first["artifact_sha256"])
    return np.asarray(artifact.predict(features), dtype="float64")


@dataclass
class Options:
    batch: int
    bootstrap_rows: int
    feedback_delay: int
    settle_seconds: float
    rows_per_second: float | None = None  # None: as fast as the stack takes them in


def run(
    settings: Any, pipeline: Any, frame: pd.DataFrame, change_row: int, options: Options
) -> tuple[list[Served], list[dict[str, Any]], np.ndarray]:
    """Stream ``frame`` through the running stack; what was served, the event log, the never-retrained scores."""
    from driftloop.contracts.featuredefs import compute_features

    stream = pipeline.stream
    labels = frame[stream.label].to_numpy()
    replay = Replay(settings, pipeline)
    replay.produce(frame.iloc[: options.bootstrap_rows])
    deadline = time.monotonic() + 600
    while replay.served_version() is None:
        if time.monotonic() > deadline:
            raise SystemExit("no version served 10 minutes after the bootstrap rows: see the stack's logs")
        time.sleep(1)
    print(f"  v{replay.served_version()} serves; streaming {len(frame) - options.bootstrap_rows} live rows", flush=True)
    live_started = time.monotonic()
    for start in range(options.bootstrap_rows, len(frame), options.batch):
        if options.rows_per_second:
            due = live_started + (start - options.bootstrap_rows) / options.rows_per_second
            time.sleep(max(0.0, due - time.monotonic()))
        chunk = frame.iloc[start : start + options.batch]
        replay.produce(chunk)
        replay.predict(chunk, start)
        replay.feed_back(labels, start + len(chunk) - 1 - options.feedback_delay)
        replay.wait_for_monitor()
        if (start - options.bootstrap_rows) % (options.batch * 10) == 0:
            print(f"  row {start}: serving v{replay.served[-1].version}", flush=True)
    replay.feed_back(labels, len(frame) - 1)
    time.sleep(options.settle_seconds)
    events = read_events(settings, pipeline.model.name, stream.name)
    features = compute_features(frame, pipeline)
    return replay.served, events, baseline_scores(settings, events, pipeline.model.name, features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline YAML of the table, or 'auto' for a generated stream")
    parser.add_argument("source", help=f"FILE.csv / FILE.parquet, or a generator: {', '.join(GENERATORS)}")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--rows", type=int, default=7000, help="generated rows (default 7000)")
    parser.add_argument("--change-at", type=int, default=None, help="row of the change (generated: 4500)")
    parser.add_argument("--width", type=int, default=None, help="generated: rows of a gradual change")
    parser.add_argument("--window", type=int, default=500, help="generated: monitor window (predictions)")
    parser.add_argument("--cut-every", type=int, default=1000, help="generated: rows per dataset version")
    parser.add_argument("--bootstrap-rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="rows per produce / predict round")
    parser.add_argument("--feedback-delay", type=int, default=100, help="rows between a prediction and its label")
    parser.add_argument("--settle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--rows-per-second", type=float, default=None, help="live rows a second (default: as fast as the stack takes)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running and keep its folder (home printed); without it, a replay that ended well "
        "removes its folder",
    )
    loop = LoopPolicy()
    parser.add_argument("--min-rows-after-change", type=int, default=loop.min_rows_after_change, help="generated")
    parser.add_argument(
        "--followup-rows",
        type=int,
        nargs="*",
        default=list(loop.followup_rows),
        help="generated: triggers.after_change.followup_rows (none: retrain once per change)",
    )
    parser.add_argument(
        "--followup-growth",
        type=float,
        default=loop.followup_growth,
        help="generated: triggers.after_change.followup_growth (1: a follow-up trains at once)",
    )
    parser.add_argument("--window-rows", type=int, default=loop.window_rows, help="generated: rows per version")
    parser.add_argument("--adwin-delta", type=float, default=loop.adwin_delta, help="generated")
    parser.add_argument("--adwin-clock", type=int, default=loop.adwin_clock, help="generated")
    parser.add_argument(
        "--post-change-oldest-weight",
        type=float,
        default=loop.post_change_oldest_weight,
        help="generated: model.post_change_oldest_weight (1: the rows after a change weigh alike)",
    )
    parser.add_argument(
        "--target-rows", type=int, default=2000, help="generated: post-change rows the target model is trained on"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import bench_folder, own_stack_settings

    from driftloop.contracts.pipeline import load_pipeline
    from driftloop.ops.procs import free_port
    from driftloop.ops.stack import SERVICES, Stack

    tmp = bench_folder("driftloop-replay-", keep=args.keep)
    pipelines_dir = tmp / "pipelines"
    pipelines_dir.mkdir()
    target = None
    stable_until = None
    if args.pipeline == "auto" and args.source == "demo":
        # The demo's own pipeline as it is (its first dataset version is cut after cut_every_rows records).
        change = 6000 if args.change_at is None else args.change_at
        path = pipelines_dir / DEMO_PIPELINE.name
        path.write_text(DEMO_PIPELINE.read_text())
        cut_every = load_pipeline(path).dataset.cut_every_rows or 0
        args.bootstrap_rows = max(args.bootstrap_rows, cut_every)
        frame = generate_demo(max(args.rows, change + 1000), change)
        title = "demo transactions (abrupt; its own pipeline)"
    elif args.pipeline == "auto":
        change = 4500 if args.change_at is None else args.change_at
        width = args.width if args.width is not None else (0 if args.source == "sea" else 600)
        frame = generate(args.source, args.rows, change, width)
        features = [c for c in frame.columns if c not in (ENTITY, EVENT_TIME, LABEL)]
        bootstrap = frame.iloc[: args.bootstrap_rows]
        threshold = offline_auc(bootstrap, features, LABEL) - 0.04
        policy = LoopPolicy(
            min_rows_after_change=args.min_rows_after_change,
            followup_rows=tuple(args.followup_rows),
            window_rows=args.window_rows,
            adwin_delta=args.adwin_delta,
            adwin_clock=args.adwin_clock,
            post_change_oldest_weight=args.post_change_oldest_weight,
            followup_growth=args.followup_growth,
        )
        config = generated_pipeline(
            args.source, frame, window=args.window, cut_every=args.cut_every, threshold=threshold, policy=policy
        )
        path = pipelines_dir / f"{args.source}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        target_model = fit(post_change_sample(args.source, args.target_rows, skip=args.rows), features, LABEL)
        target = target_model.predict(frame[features].to_numpy(dtype="float64"))
        title = f"river {args.source} ({'abrupt' if width == 0 else f'gradual over {width} rows'})"
        # A gradual change begins before its midpoint: an alarm within its transition detects it (not a false one).
        stable_until = change - width // 2
    else:
        if args.change_at is None:
            raise SystemExit("a table needs --change-at ROW (its documented change point)")
        change = args.change_at
        path = pipelines_dir / Path(args.pipeline).name
        path.write_text(Path(args.pipeline).read_text())
        title = Path(args.source).name
    pipeline = load_pipeline(path)
    if args.pipeline != "auto":
        frame = read_table(Path(args.source), pipeline.stream.event_time)
    change_time = pd.Timestamp(frame[pipeline.stream.event_time].iloc[change]).to_pydatetime()

    ports = {f"{name}_port": free_port() for name in ("schemaregistry", *SERVICES)}
    settings = own_stack_settings(tmp, ports).model_copy(update={"pipelines_dir": pipelines_dir})
    stack = Stack(settings, on_progress=lambda m: print(f"  {m}", flush=True))
    started = time.monotonic()
    print(f"replay: {title}; stack home {settings.home}", flush=True)
    try:
        stack.up()
        options = Options(
            args.batch, args.bootstrap_rows, args.feedback_delay, args.settle_seconds, args.rows_per_second
        )
        served, events, baseline = run(settings, pipeline, frame, change, options)
    finally:
        if not args.keep:
            stack.down()
    labels = frame[pipeline.stream.label].to_numpy()
    summary = summarize(
        labels, served, baseline, events, change, change_time, target, stable_until=stable_until, window=args.window
    )
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["rows_per_second"] = args.rows_per_second  # null: as fast as the stack took them in
    span = served[-1].wall - served[0].wall if len(served) > 1 else 0.0
    summary["live_rows_per_second"] = round(len(served) / span, 1) if span > 0 else None
    summary["source"] = title
    print(json.dumps(summary, indent=2, default=str) if args.json else render(summary, title))
    return 0


if __name__ == "__main__":
    from _common import tidy

    raise SystemExit(tidy(main()))
