"""The pipeline config: a user's stream, features, model, gate, triggers and monitor, in one YAML file.

One file per stream/model in ``settings.pipelines_dir``; adding a stream is a new file, no code. Every model
forbids unknown keys, and errors point at the file and line of the bad key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from driftloop.contracts.fieldtypes import FIELD_TYPES, FieldType
from driftloop.contracts.searchspace import ModelFamily, SearchSpec
from driftloop.contracts.topics import stream_topic
from driftloop.errors import ConfigError, NotFoundError

# The label column of a training set built from feedback, when the stream has no label field.
FEEDBACK_LABEL_COLUMN = "label"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Field names are Avro names (they are the stream schema's field names): a letter or underscore, then letters,
# digits and underscores.
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class FieldSpec(_Strict):
    name: str
    type: FieldType
    nullable: bool = True
    doc: str = ""

    @field_validator("name")
    @classmethod
    def _avro_name(cls, name: str) -> str:
        if not FIELD_NAME.fullmatch(name):
            suggestion = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "field"
            if suggestion[0].isdigit():
                suggestion = f"_{suggestion}"
            raise ValueError(
                f"field name {name!r} is not an Avro name: use a letter or underscore, then letters, digits and "
                f"underscores (e.g. {suggestion!r})"
            )
        return name


class NotNullRule(_Strict):
    rule: Literal["not_null"]
    field: str


class RangeRule(_Strict):
    rule: Literal["range"]
    field: str
    min: float | None = None
    max: float | None = None


class AllowedValuesRule(_Strict):
    rule: Literal["allowed_values"]
    field: str
    values: list[str | int | float | bool]


QualityRule = Annotated[NotNullRule | RangeRule | AllowedValuesRule, Field(discriminator="rule")]


class StreamSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    fields: list[FieldSpec] = Field(min_length=1)
    entity_key: str
    event_time: str
    # The field holding the outcome. May be absent when the labels arrive later, as feedback
    # (``model.labels_from: feedback``).
    label: str | None = None
    # Records whose event time lies further ahead than this are dead-lettered (clock errors).
    max_future_seconds: int = Field(default=3600, ge=0)
    # Records larger than this (encoded) are dead-lettered.
    max_record_bytes: int = Field(default=65536, ge=64)

    @property
    def topic(self) -> str:
        return stream_topic(self.name)

    @property
    def subject(self) -> str:
        """The schema registry subject of the topic's values (Confluent TopicNameStrategy)."""
        return f"{self.topic}-value"

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @model_validator(mode="after")
    def _check_roles(self) -> StreamSpec:
        names = self.field_names
        if len(set(names)) != len(names):
            raise ValueError("stream.fields has duplicate names")
        for role in ("entity_key", "event_time", "label"):
            if role == "label" and self.label is None:
                continue
            if getattr(self, role) not in names:
                raise ValueError(f"stream.{role} {getattr(self, role)!r} is not one of the fields {names}")
        if self.field(self.event_time).type != "timestamp":
            raise ValueError(f"stream.event_time field {self.event_time!r} must have type 'timestamp'")
        return self

    def avro_schema(self) -> dict[str, Any]:
        """The Avro record schema producers use for this stream's topic."""
        fields = []
        for f in self.fields:
            avro_type = FIELD_TYPES[f.type].avro
            entry: dict[str, Any] = {"name": f.name, "type": ["null", avro_type] if f.nullable else avro_type}
            if f.nullable:
                entry["default"] = None
            if f.doc:
                entry["doc"] = f.doc
            fields.append(entry)
        record_name = "".join(part.capitalize() for part in self.name.replace("-", "_").split("_"))
        return {"type": "record", "name": record_name, "namespace": "driftloop.streams", "fields": fields}


class DatasetSpec(_Strict):
    # Cut a new dataset version after this many newly landed rows (0: only on demand). While a cut after a change
    # waits for its rows, a periodic cut waits for it (one cut holds both), `min_rows_after_change` rows at most.
    cut_every_rows: int = Field(default=5000, ge=0)
    # cumulative: parent + new rows; window: only the newest `window_rows` rows.
    mode: Literal["cumulative", "window"] = "cumulative"
    window_rows: int = Field(default=20000, ge=1)
    # Micro-batches land when either limit is reached.
    landing_batch_rows: int = Field(default=500, ge=1)
    landing_batch_seconds: float = Field(default=2.0, gt=0)
    # Uniqueness: fields whose values identify a record, e.g. [customer_id, event_time]. A version keeps one row
    # per key (the earliest landed) and reports how many duplicates it dropped. Empty: no uniqueness rule.
    unique_by: list[str] = Field(default_factory=list)
    # Freshness: the stream is stale when its newest landed event time is older than this (0: no rule).
    freshness_seconds: int = Field(default=0, ge=0)
    # Retention: after each cut, compact the landed batches of all but the newest N versions (0: only on demand).
    keep_landed_versions: int = Field(default=0, ge=0)
    # A cut on demand after a located change (``POST /v1/streams/{stream}/datasets`` with ``since``, or a training
    # request carrying ``change_started_at``) waits until this many rows with an event time at or after the change
    # have landed.
    min_rows_after_change: int = Field(default=500, ge=1)


AggregateFunction = Literal["count", "mean", "sum", "min", "max", "last"]

_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def window_seconds(window: str) -> int:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``, ``"7d"``, ``"2w"`` -> seconds."""
    return int(window[:-1]) * _WINDOW_UNITS[window[-1]]


class FeatureSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Pass-through of a stream field (default: the field of the same name) ...
    source: str | None = None
    # ... or a derived column: a pandas expression over stream fields, e.g. "log1p(amount)" ...
    expr: str | None = None
    # ... or a per-entity aggregate of `source` over the event-time window ending at each record (inclusive):
    # e.g. {name: amount_mean_1d, aggregate: mean, source: amount, window: 1d}. `count` without a source counts
    # records; `last` is the newest non-null value (ties at one event time: the greatest value).
    aggregate: AggregateFunction | None = None
    window: str | None = Field(default=None, pattern=r"^[1-9][0-9]*[smhdw]$")
    kind: Literal["numeric", "categorical"] = "numeric"

    @model_validator(mode="after")
    def _one_of(self) -> FeatureSpec:
        if self.source and self.expr:
            raise ValueError(f"feature {self.name!r}: give either 'source' or 'expr', not both")
        if self.aggregate is not None:
            if self.expr is not None:
                raise ValueError(f"feature {self.name!r}: an aggregate reads a 'source' field, not an 'expr'")
            if self.window is None:
                raise ValueError(f"feature {self.name!r}: an aggregate needs a 'window', e.g. 1h, 1d, 7d")
            if self.source is None and self.aggregate != "count":
                raise ValueError(f"feature {self.name!r}: aggregate {self.aggregate!r} needs a 'source' field")
            if self.kind == "categorical" and self.aggregate != "last":
                raise ValueError(f"feature {self.name!r}: only 'last' can be categorical, not {self.aggregate!r}")
        elif self.window is not None:
            raise ValueError(f"feature {self.name!r}: 'window' applies only to an 'aggregate' feature")
        return self

    @property
    def window_seconds(self) -> int | None:
        return None if self.window is None else window_seconds(self.window)


class ModelSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    # lightgbm, xgboost, sklearn_linear (logistic / ridge regression), sklearn_random_forest.
    family: ModelFamily = "lightgbm"
    task: Literal["classification", "regression"] = "classification"
    params: dict[str, Any] = Field(default_factory=dict)
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 42
    search: SearchSpec | None = None
    # Where the labels come from: ``stream`` (the stream's `label` field) or ``feedback`` (outcomes posted to
    # ``/v1/models/{name}/feedback``, joined to the inputs of the predictions they answer; see the README).
    labels_from: Literal["stream", "feedback"] = "stream"
    # A request that carries a change point (``change_started_at``) trains on the rows at or after it; rows before
    # it are dropped (0) or kept with this sample weight (e.g. 0.2: down-weighted).
    pre_change_weight: float = Field(default=0.0, ge=0, le=1)
    # The rows at or after the change weigh from this (the change's own instant) rising linearly with event time to
    # 1 (the newest): after a gradual change the first of them still mix the old concept in. 1: all alike.
    post_change_oldest_weight: float = Field(default=1.0, gt=0, le=1)
    # How long such a run waits for ``dataset.min_rows_after_change`` post-change rows in a feature set.
    change_wait_seconds: float = Field(default=600.0, ge=0)


class GateSpec(_Strict):
    metric: Literal["roc_auc", "accuracy", "f1", "log_loss", "rmse", "mae", "r2"] = "roc_auc"
    direction: Literal["maximize", "minimize"] = "maximize"
    # The challenger must beat the champion by at least this much (in the metric's units).
    min_improvement: float = Field(default=0.0, ge=0)
    # The first version is promoted only if its score passes this absolute threshold.
    first_version_threshold: float | None = None
    # Absolute floor on the gate metric for EVERY challenger, champion or not (a ceiling when minimizing): a
    # challenger that beats a weak champion but misses the floor is rejected.
    floor: float | None = None


class NewDataTrigger(_Strict):
    enabled: bool = True
    # Retrain on a new dataset version only while the model has no champion (bootstrap).
    only_without_champion: bool = False
    # 0: every new dataset version is a cause; N: only once N new rows have landed since the last request.
    every_n_rows: int = Field(default=0, ge=0)


class DriftTrigger(_Strict):
    enabled: bool = True
    # Wait for fresh data after the drift, so that the retrain sees post-drift data ...
    wait_for_fresh_data: bool = True
    # ... where fresh data comes from. next_cut: the next dataset version cut after the drift (cut_every_rows).
    # change: a drift located in time (its window's start) goes to training at once, which asks ingestion to cut
    # once dataset.min_rows_after_change rows landed after the change and trains on those (sooner than the next
    # periodic cut when cuts are large).
    fresh_data: Literal["next_cut", "change"] = "next_cut"
    # Retrain on a DriftDetected of prediction drift alone (no feature drifted); false: recorded as suppressed.
    on_prediction_drift: bool = True


class ScheduleTrigger(_Strict):
    # A cron expression in UTC (5 fields, e.g. "0 3 * * *"); unset: no scheduled retrains.
    cron: str | None = None

    @model_validator(mode="after")
    def _check_cron(self) -> ScheduleTrigger:
        if self.cron is not None:
            from croniter import croniter  # imported here: only pipelines with a schedule need it

            if not croniter.is_valid(self.cron):
                raise ValueError(f"schedule.cron {self.cron!r} is not a valid cron expression")
        return self


class LabelsTrigger(_Strict):
    # Retrain after every N labels (FeedbackReceived) of the model; 0: off.
    every_n_labels: int = Field(default=0, ge=0)


class PerformanceTrigger(_Strict):
    # Retrain on PerformanceDegraded (the monitor's performance threshold, see monitor.performance).
    enabled: bool = True


RetrainSignal = Literal["drift", "performance", "drift_confirmed_by_performance", "drift_confirmed_by_estimate"]
# By default a feature shift that leaves measured or estimated performance intact is reported, not retrained on.
DEFAULT_RETRAIN_SIGNALS: tuple[RetrainSignal, ...] = (
    "performance",
    "drift_confirmed_by_performance",
    "drift_confirmed_by_estimate",
)


class GuardSpec(_Strict):
    """After a promotion, the new champion's first window of labeled predictions is scored against the previous
    champion's predictions on the same rows; worse past ``max_drop`` rolls the champion back (registry API)."""

    enabled: bool = True
    # How much worse (in the performance metric's units) the new champion may be than the previous one.
    max_drop: float = Field(default=0.02, ge=0)


class RetrainPolicy(_Strict):
    """Which alarms retrain (the rest are reported: a RetrainDecision ``suppressed`` with the numbers).

    - ``drift``: any DriftDetected retrains.
    - ``performance``: a PerformanceDegraded (measured from labels) retrains.
    - ``drift_confirmed_by_performance``: a drift retrains when the version's last measured performance window is
      degraded (monitor.performance.threshold); a degradation after an unconfirmed drift of the version retrains.
    - ``drift_confirmed_by_estimate``: a drift retrains when the performance estimated from the window's predicted
      probabilities (CBPE, classifiers) dropped more than ``estimate_max_drop`` below the version's first window.
    Default: a feature shift that leaves measured or estimated performance intact is reported, not retrained on."""

    retrain_on: list[RetrainSignal] = Field(default_factory=lambda: list(DEFAULT_RETRAIN_SIGNALS))
    # Estimated (CBPE) metric of classifiers: expected AUC or accuracy from the predicted probabilities.
    estimate_metric: Literal["roc_auc", "accuracy"] = "roc_auc"
    estimate_max_drop: float = Field(default=0.05, gt=0)
    guard: GuardSpec = GuardSpec()


class AfterChangeSpec(_Strict):
    """Retrains after a located change (a request carrying ``change_started_at``). The first trains on the first
    ``dataset.min_rows_after_change`` rows after the change: soon, on few rows. Follow-ups train again on the
    rows at or after the same change as more land (a growing post-change window), so the small first model does
    not serve until the next alarm; one cause, a bounded number of runs, each a request of its own (trigger
    ``followup``) and a ``RetrainDecision`` with its reason."""

    # Rows landed in the stream since the change's first request at which to retrain again, increasing, e.g.
    # [500, 1500, 3500]; [] (the default): the first retrain only. Follow-ups need no cooldown (they are the
    # change's own plan) but wait for an active run and its gate; a later located change replaces the plan.
    followup_rows: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    # A follow-up trains on at least this many times the post-change rows the change's previous run trained on, when
    # that run's model was promoted: one brought forward (that model weak at the gate, or degraded) waits for them
    # instead of learning from a few more rows. 1: at once, on whatever landed since.
    followup_growth: float = Field(default=1.5, ge=1)

    @field_validator("followup_rows")
    @classmethod
    def _increasing(cls, rows: list[int]) -> list[int]:
        if any(b <= a for a, b in pairwise(rows)):
            raise ValueError(f"triggers.after_change.followup_rows must increase, got {rows}")
        return rows


class TriggerSpec(_Strict):
    new_data: NewDataTrigger = NewDataTrigger()
    drift: DriftTrigger = DriftTrigger()
    schedule: ScheduleTrigger = ScheduleTrigger()
    labels: LabelsTrigger = LabelsTrigger()
    performance: PerformanceTrigger = PerformanceTrigger()
    policy: RetrainPolicy = RetrainPolicy()
    after_change: AfterChangeSpec = AfterChangeSpec()
    # After an automatic training request (any kind), the model cools down: causes arriving meanwhile are
    # coalesced into one pending request that fires when the cooldown ends (if its cause is still valid).
    # wall_time / event_time: `cooldown_seconds` of wall-clock time / of the stream's event time (replays,
    # backfills); rows: `cooldown_rows` rows landed in the stream.
    cooldown_by: Literal["wall_time", "event_time", "rows"] = "wall_time"
    cooldown_seconds: float = Field(default=300.0, ge=0)
    cooldown_rows: int = Field(default=0, ge=0)
    # A cause arriving while a run is active (or waits for the gate): true queues one request (later causes are
    # coalesced into it) that fires when the run ends; false records it as suppressed (merged into that run).
    queue_while_running: bool = True


class PerformanceSpec(_Strict):
    # Metric over windows of labeled predictions; default: roc_auc (classification) or rmse (regression).
    metric: Literal["roc_auc", "accuracy", "f1", "rmse", "mae"] | None = None
    # Labeled predictions (FeedbackReceived joined with PredictionLogged by request id) per tumbling window.
    window_size: int = Field(default=200, ge=10)
    # PerformanceDegraded when a window's metric is below this (above, for rmse/mae); unset: no alarm.
    threshold: float | None = None
    # Classification: probability at or above which a prediction counts as the positive class (accuracy, F1).
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    # adwin: a change detector (river's ADWIN) reads the version's labeled errors one by one (0/1 at
    # decision_threshold for classifiers, absolute error for regressors) and emits PerformanceDegraded (reason:
    # change) as soon as the error rose, located where it began: training then waits for post-change rows only.
    # none: the tumbling windows and their threshold only.
    change_detector: Literal["none", "adwin"] = "none"
    # ADWIN's confidence: smaller, fewer false alarms and later detection.
    adwin_delta: float = Field(default=0.002, gt=0, lt=1)
    # ADWIN looks for a cut every this many labels (river's `clock`): 1 sees a change as soon as the labels show
    # it; larger is cheaper and up to that many labels later.
    adwin_clock: int = Field(default=32, ge=1)


class PredictionDriftSpec(_Strict):
    """When the drift of the model's predictions (a window's against the champion's first window) alarms."""

    # false: prediction drift is still computed and reported, but never emits DriftDetected.
    enabled: bool = True
    # KS p-value of the window's predictions below this (unset: monitor.alpha) ...
    alpha: float | None = Field(default=None, gt=0, lt=1)
    # ... and, when set, their PSI above this and their Wasserstein distance (in baseline standard deviations)
    # above this: effect sizes, so that a large window does not alarm on a negligible shift.
    psi_threshold: float | None = Field(default=0.2, gt=0)
    wasserstein_threshold: float | None = Field(default=None, gt=0)


class MonitorSpec(_Strict):
    # count: windows of `window_size` predictions; time: windows of `window_seconds` by event time.
    window_by: Literal["count", "time"] = "count"
    window_size: int = Field(default=500, ge=20)
    window_seconds: float = Field(default=3600.0, gt=0)
    # Distance between window starts (rows or seconds); unset: tumbling (the window length), smaller: hopping.
    hop: float | None = Field(default=None, gt=0)
    # A time window with fewer predictions than this is reported without tests.
    min_window_rows: int = Field(default=20, ge=2)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    correction: Literal["bonferroni", "holm", "none"] = "bonferroni"
    # Drift is declared when at least this many features drift in one window.
    min_drifted_features: int = Field(default=1, ge=1)
    # Rows sampled from the champion's training features as the reference.
    reference_rows: int = Field(default=5000, ge=100)
    # Effect-size thresholds: when set, a feature drifts only if its corrected p-value is below alpha AND its
    # PSI (resp. Wasserstein distance in reference standard deviations) is above the threshold.
    psi_threshold: float | None = Field(default=None, gt=0)
    wasserstein_threshold: float | None = Field(default=None, gt=0)
    # Quantile bins of numeric features for PSI.
    psi_bins: int = Field(default=10, ge=2, le=100)
    performance: PerformanceSpec = PerformanceSpec()
    prediction_drift: PredictionDriftSpec = PredictionDriftSpec()

    @property
    def window_length(self) -> float:
        return float(self.window_size) if self.window_by == "count" else self.window_seconds

    @property
    def window_hop(self) -> float:
        return self.window_length if self.hop is None else self.hop

    @model_validator(mode="after")
    def _check_windows(self) -> MonitorSpec:
        if self.hop is not None:
            if self.hop > self.window_length:
                raise ValueError(f"monitor.hop {self.hop:g} is longer than the window ({self.window_length:g})")
            if self.window_by == "count" and self.hop != int(self.hop):
                raise ValueError("monitor.hop of count windows is a whole number of predictions")
        return self


class RolloutSpec(_Strict):
    """How serving rolls a newly promoted version out (see the README, "Rollout")."""

    # none: switch at once; canary: a share of requests to the challenger, stepped up while it behaves;
    # shadow: the challenger scores a copy of every request, answers come from the champion.
    mode: Literal["none", "canary", "shadow"] = "none"
    # Canary: the challenger's share of requests at each step; after the last step passes it becomes champion.
    canary_steps: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.1, 0.5], min_length=1)
    # Challenger requests judged per step (canary) or in all (shadow) before stepping up or completing.
    step_min_requests: int = Field(default=200, ge=1)
    # Roll back when the challenger's error rate exceeds the champion's by more than this.
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    # Roll back when the challenger's p95 latency is above this multiple of the champion's p95 ...
    max_latency_ratio: float = Field(default=3.0, ge=1)
    # ... and also slower than it by more than this many milliseconds (ignores noise on tiny latencies).
    latency_slack_ms: float = Field(default=5.0, ge=0)
    # Roll back when the mean prediction of the challenger differs from the champion's by more than this
    # (the monitored metric; null: not checked).
    max_mean_prediction_shift: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _increasing(self) -> RolloutSpec:
        if any(b <= a for a, b in zip(self.canary_steps, self.canary_steps[1:], strict=False)):
            raise ValueError(f"canary_steps must increase, got {self.canary_steps}")
        return self


class ServingSpec(_Strict):
    rollout: RolloutSpec = RolloutSpec()


class PipelineConfig(_Strict):
    stream: StreamSpec
    quality: list[QualityRule] = Field(default_factory=list)
    dataset: DatasetSpec = DatasetSpec()
    features: list[FeatureSpec] = Field(min_length=1)
    model: ModelSpec
    gate: GateSpec = GateSpec()
    triggers: TriggerSpec = TriggerSpec()
    monitor: MonitorSpec = MonitorSpec()
    serving: ServingSpec = ServingSpec()

    @model_validator(mode="after")
    def _check_references(self) -> PipelineConfig:
        names = set(self.stream.field_names)
        for rule in self.quality:
            if rule.field not in names:
                raise ValueError(f"quality rule on unknown field {rule.field!r}; fields: {sorted(names)}")
            # A range compares numbers: on a string or timestamp field every record would fail to validate.
            kind = self.stream.field(rule.field).type
            if rule.rule == "range" and not FIELD_TYPES[kind].is_numeric:
                raise ValueError(f"range rule on {rule.field!r}: a {kind} field is not a number")
        for feature in self.features:
            if feature.aggregate is not None:
                if feature.source is not None and feature.source not in names:
                    raise ValueError(
                        f"aggregate feature {feature.name!r} reads field {feature.source!r}, "
                        f"which the stream does not have; fields: {sorted(names)}"
                    )
                if (
                    feature.source is not None
                    and feature.aggregate in ("mean", "sum", "min", "max")
                    and not FIELD_TYPES[self.stream.field(feature.source).type].is_numeric
                ):
                    raise ValueError(f"aggregate feature {feature.name!r}: {feature.aggregate} needs a numeric field")
                continue
            if feature.expr is None and (feature.source or feature.name) not in names:
                raise ValueError(
                    f"feature {feature.name!r} reads field {feature.source or feature.name!r}, "
                    f"which the stream does not have; fields: {sorted(names)}"
                )
        if self.stream.label is None and self.model.labels_from != "feedback":
            raise ValueError(
                "stream.label is missing: name the stream field holding the outcome, or set "
                "model.labels_from: feedback to train on the outcomes posted as feedback"
            )
        if self.label_column in {f.name for f in self.features}:
            raise ValueError(f"the label {self.label_column!r} cannot also be a feature")
        return self

    @property
    def label_column(self) -> str:
        """The label's column in a training set: the stream's label field, or ``label`` for feedback labels."""
        if self.model.labels_from == "feedback":
            return self.stream.label or FEEDBACK_LABEL_COLUMN
        assert self.stream.label is not None  # checked by _check_references
        return self.stream.label

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def aggregate_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.aggregate is not None]

    @property
    def feature_view_version(self) -> str:
        """A short content hash of the feature definitions: changes whenever a feature is added or redefined."""
        definitions = json.dumps([f.model_dump() for f in self.features], sort_keys=True)
        return hashlib.sha256(definitions.encode()).hexdigest()[:12]


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def parse_pipeline(text: str, source: str = "<string>") -> PipelineConfig:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline config is a mapping with keys stream, features, model, ...")
    lines = _line_index(node) if node is not None else {}
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _RULE_TAGS))
            line = None
            for depth in range(len(loc), -1, -1):
                line = lines.get(loc[:depth])
                if line is not None:
                    break
            key = ".".join(str(p) for p in loc) or "(top level)"
            msg = "unknown key (not allowed here)" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{source}:{line or '?'}: {key}: {msg}")
        raise ConfigError("invalid pipeline config:\n  " + "\n  ".join(problems)) from None


_RULE_TAGS = {"not_null", "range", "allowed_values"}


def load_pipeline(path: Path) -> PipelineConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline config {path}: {exc}") from None
    return parse_pipeline(text, source=str(path))


def load_pipelines(directory: Path) -> dict[str, PipelineConfig]:
    """All pipeline configs in a folder, by model name. Stream and model names must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"pipelines_dir {directory} is not a folder: set DRIFTLOOP_PIPELINES_DIR")
    pipelines: dict[str, PipelineConfig] = {}
    streams: dict[str, Path] = {}
    for path in sorted(directory.glob("*.y*ml")):
        cfg = load_pipeline(path)
        if cfg.model.name in pipelines:
            raise ConfigError(f"{path}: model {cfg.model.name!r} is already defined in another pipeline file")
        if cfg.stream.name in streams:
            raise ConfigError(f"{path}: stream {cfg.stream.name!r} is already defined in {streams[cfg.stream.name]}")
        streams[cfg.stream.name] = path
        pipelines[cfg.model.name] = cfg
    return pipelines


def pipeline_for_stream(pipelines: Mapping[str, PipelineConfig], stream: str) -> PipelineConfig:
    for cfg in pipelines.values():
        if cfg.stream.name == stream:
            return cfg
    raise NotFoundError(
        f"unknown stream {stream!r}; known streams: {sorted(c.stream.name for c in pipelines.values())}"
    )


def pipeline_for_model(pipelines: Mapping[str, PipelineConfig], model: str) -> PipelineConfig:
    try:
        return pipelines[model]
    except KeyError:
        raise NotFoundError(f"unknown model {model!r}; known models: {sorted(pipelines)}") from None
