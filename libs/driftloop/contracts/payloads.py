"""Typed event payloads: the fields of each event type, as in its Avro schema (the envelope apart).

GENERATED from schemas/events/*.avsc by ``python -m driftloop.contracts.codegen``: do not edit by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from driftloop.contracts import topics
from driftloop.contracts.topics import Topic


def _timestamp(value: Any) -> datetime:
    """An Avro timestamp-millis as a datetime: fastavro already gives one; a record built by hand may hold millis,
    one read back from the event log (JSON) an ISO-8601 string."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _optional(decode: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else decode(value)


class Payload:
    """The fields of one event type. Each subclass knows its ``event_type`` and ``topic``."""

    __slots__ = ()
    event_type: ClassVar[str]
    topic: ClassVar[Topic]

    def to_avro(self) -> dict[str, Any]:
        """The fields as an Avro record (without the envelope)."""
        raise NotImplementedError

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        """The payload of a decoded Avro record (the envelope, if present, is ignored)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasMoveRefused(Payload):
    """The registry was asked to move an alias (e.g. champion back after a serving rollback) but did not: the alias had
    moved elsewhere meanwhile.
    """

    event_type: ClassVar[str] = "AliasMoveRefused"
    topic: ClassVar[Topic] = topics.ALIAS_MOVE_REFUSED

    model: str
    alias: str
    #: Where the alias would have moved.
    requested_version: int
    #: Where the alias points (and stays).
    current_version: int | None = None
    #: Where the request expected the alias to point.
    expected_version: int | None = None
    #: Who asked: 'serving' (a rollout rolled back) or a token name.
    requested_by: str
    reason: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "requested_version": self.requested_version,
            "current_version": self.current_version,
            "expected_version": self.expected_version,
            "requested_by": self.requested_by,
            "reason": self.reason,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            alias=record["alias"],
            requested_version=record["requested_version"],
            current_version=record.get("current_version"),
            expected_version=record.get("expected_version"),
            requested_by=record["requested_by"],
            reason=record["reason"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetCutStarted(Payload):
    """Ingestion began cutting the next dataset version of a stream (its DatasetVersionCreated follows when the cut is
    stored). A sign that work comes: the training service starts an idle Ray on it.
    """

    event_type: ClassVar[str] = "DatasetCutStarted"
    topic: ClassVar[Topic] = topics.DATASET_CUT_STARTED

    stream: str
    #: STREAM@vN: the version being cut.
    dataset_version_id: str
    version: int
    #: Rows landed since the previous version, which this cut takes.
    new_rows: int

    def to_avro(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "dataset_version_id": self.dataset_version_id,
            "version": self.version,
            "new_rows": self.new_rows,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            stream=record["stream"],
            dataset_version_id=record["dataset_version_id"],
            version=record["version"],
            new_rows=record["new_rows"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetVersionCreated(Payload):
    """An immutable dataset version was cut from landed records."""

    event_type: ClassVar[str] = "DatasetVersionCreated"
    topic: ClassVar[Topic] = topics.DATASET_VERSION_CREATED

    stream: str
    #: STREAM@vN
    dataset_version_id: str
    version: int
    #: Object-store prefix of the version's Parquet files.
    uri: str
    #: sha256 over the rows, independent of their order.
    content_hash: str
    row_count: int
    #: Rows landed since the parent version.
    new_rows: int
    parent_version_id: str | None = None
    #: cumulative or window.
    mode: str
    #: Avro schema of the rows.
    schema_json: str
    #: Per-column profile: counts, nulls, min/max/mean, quantiles, top values.
    profile_json: str
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "dataset_version_id": self.dataset_version_id,
            "version": self.version,
            "uri": self.uri,
            "content_hash": self.content_hash,
            "row_count": self.row_count,
            "new_rows": self.new_rows,
            "parent_version_id": self.parent_version_id,
            "mode": self.mode,
            "schema_json": self.schema_json,
            "profile_json": self.profile_json,
            "min_event_time": self.min_event_time,
            "max_event_time": self.max_event_time,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            stream=record["stream"],
            dataset_version_id=record["dataset_version_id"],
            version=record["version"],
            uri=record["uri"],
            content_hash=record["content_hash"],
            row_count=record["row_count"],
            new_rows=record["new_rows"],
            parent_version_id=record.get("parent_version_id"),
            mode=record["mode"],
            schema_json=record["schema_json"],
            profile_json=record["profile_json"],
            min_event_time=_optional(_timestamp, record.get("min_event_time")),
            max_event_time=_optional(_timestamp, record.get("max_event_time")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureTest:
    feature: str
    #: ks or chi2
    test: str
    statistic: float
    p_value: float
    adjusted_p_value: float
    drifted: bool

    def to_avro(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "drifted": self.drifted,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            feature=record["feature"],
            test=record["test"],
            statistic=record["statistic"],
            p_value=record["p_value"],
            adjusted_p_value=record["adjusted_p_value"],
            drifted=record["drifted"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionTest:
    #: ks
    test: str
    statistic: float
    p_value: float
    psi: float
    #: In baseline standard deviations.
    wasserstein: float
    drifted: bool

    def to_avro(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "psi": self.psi,
            "wasserstein": self.wasserstein,
            "drifted": self.drifted,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            test=record["test"],
            statistic=record["statistic"],
            p_value=record["p_value"],
            psi=record["psi"],
            wasserstein=record["wasserstein"],
            drifted=record["drifted"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftDetected(Payload):
    """A monitoring window's feature distributions, or the model's predictions, differ from the reference (baseline)."""

    event_type: ClassVar[str] = "DriftDetected"
    topic: ClassVar[Topic] = topics.DRIFT_DETECTED

    model: str
    version: int
    reference_dataset_version_id: str
    window_size: int
    window_index: int
    alpha: float
    correction: str
    drifted_features: list[str]
    tests: list[FeatureTest]
    #: The window's predictions drifted from the champion's baseline window past monitor.prediction_drift
    #: (drifted_features may then be empty).
    prediction_drifted: bool = False
    #: The prediction drift test of the window (null: no baseline yet).
    prediction_test: PredictionTest | None = None
    #: Event time of the window's first prediction (null: unknown).
    window_start_time: datetime | None = None
    #: Event time of the window's last prediction (null: unknown).
    window_end_time: datetime | None = None
    #: Event time of the first prediction of the window's shifted part, located inside the window by its drifted
    #: features (null: the window's start, or unknown).
    shift_started_time: datetime | None = None
    #: Metric of the version's last labeled window (null: no labels yet).
    performance_metric: str | None = None
    #: Its value.
    performance_value: float | None = None
    #: Whether that window was past monitor.performance.threshold (null: unknown).
    performance_degraded: bool | None = None
    #: Classifiers: the metric estimated from predicted probabilities (CBPE), without labels.
    estimated_metric: str | None = None
    #: Its estimate on this window.
    estimated_value: float | None = None
    #: Its estimate on the version's first window (the baseline).
    estimated_reference: float | None = None
    #: Whether the estimate fell more than monitor.estimation.max_drop below the baseline.
    estimated_degraded: bool | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "reference_dataset_version_id": self.reference_dataset_version_id,
            "window_size": self.window_size,
            "window_index": self.window_index,
            "alpha": self.alpha,
            "correction": self.correction,
            "drifted_features": self.drifted_features,
            "tests": [v.to_avro() for v in self.tests],
            "prediction_drifted": self.prediction_drifted,
            "prediction_test": None if self.prediction_test is None else self.prediction_test.to_avro(),
            "window_start_time": self.window_start_time,
            "window_end_time": self.window_end_time,
            "shift_started_time": self.shift_started_time,
            "performance_metric": self.performance_metric,
            "performance_value": self.performance_value,
            "performance_degraded": self.performance_degraded,
            "estimated_metric": self.estimated_metric,
            "estimated_value": self.estimated_value,
            "estimated_reference": self.estimated_reference,
            "estimated_degraded": self.estimated_degraded,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            reference_dataset_version_id=record["reference_dataset_version_id"],
            window_size=record["window_size"],
            window_index=record["window_index"],
            alpha=record["alpha"],
            correction=record["correction"],
            drifted_features=record["drifted_features"],
            tests=[FeatureTest.from_avro(v) for v in record["tests"]],
            prediction_drifted=record.get("prediction_drifted", False),
            prediction_test=_optional(PredictionTest.from_avro, record.get("prediction_test")),
            window_start_time=_optional(_timestamp, record.get("window_start_time")),
            window_end_time=_optional(_timestamp, record.get("window_end_time")),
            shift_started_time=_optional(_timestamp, record.get("shift_started_time")),
            performance_metric=record.get("performance_metric"),
            performance_value=record.get("performance_value"),
            performance_degraded=record.get("performance_degraded"),
            estimated_metric=record.get("estimated_metric"),
            estimated_value=record.get("estimated_value"),
            estimated_reference=record.get("estimated_reference"),
            estimated_degraded=record.get("estimated_degraded"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalTrigger(Payload):
    """Something outside driftloop asks for a retrain."""

    event_type: ClassVar[str] = "ExternalTrigger"
    topic: ClassVar[Topic] = topics.EXTERNAL_TRIGGER

    model: str
    reason: str
    details_json: str = "{}"

    def to_avro(self) -> dict[str, Any]:
        return {"model": self.model, "reason": self.reason, "details_json": self.details_json}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(model=record["model"], reason=record["reason"], details_json=record.get("details_json", "{}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class FeaturesMaterialized(Payload):
    """Features of a dataset version are in the offline and online stores."""

    event_type: ClassVar[str] = "FeaturesMaterialized"
    topic: ClassVar[Topic] = topics.FEATURES_MATERIALIZED

    stream: str
    dataset_version_id: str
    #: Object-store prefix of the offline feature set (Parquet).
    feature_set_uri: str
    feature_names: list[str]
    row_count: int
    #: Entities whose latest values were upserted online.
    online_entities: int

    def to_avro(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "dataset_version_id": self.dataset_version_id,
            "feature_set_uri": self.feature_set_uri,
            "feature_names": self.feature_names,
            "row_count": self.row_count,
            "online_entities": self.online_entities,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            stream=record["stream"],
            dataset_version_id=record["dataset_version_id"],
            feature_set_uri=record["feature_set_uri"],
            feature_names=record["feature_names"],
            row_count=record["row_count"],
            online_entities=record["online_entities"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackReceived(Payload):
    """The actual outcome for an earlier prediction."""

    event_type: ClassVar[str] = "FeedbackReceived"
    topic: ClassVar[Topic] = topics.FEEDBACK_RECEIVED

    request_id: str
    model: str
    index: int = 0
    actual: float

    def to_avro(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "model": self.model, "index": self.index, "actual": self.actual}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            request_id=record["request_id"],
            model=record["model"],
            index=record.get("index", 0),
            actual=record["actual"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPromoted(Payload):
    """An alias (champion, challenger, any name) moved to a model version: by the gate, a user, or a rollback."""

    event_type: ClassVar[str] = "ModelPromoted"
    topic: ClassVar[Topic] = topics.MODEL_PROMOTED

    model: str
    version: int
    alias: str
    previous_version: int | None = None
    artifact_uri: str
    artifact_sha256: str
    dataset_version_id: str
    feature_set_uri: str
    reason: str
    #: The gate's numbers: metric, scores, margin, holdout.
    gate_json: str
    #: Who moved the alias: 'registry' (the gate) or the name of the API token.
    moved_by: str = "registry"
    #: The move is a rollback of champion to an earlier version.
    rollback: bool = False

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "previous_version": self.previous_version,
            "artifact_uri": self.artifact_uri,
            "artifact_sha256": self.artifact_sha256,
            "dataset_version_id": self.dataset_version_id,
            "feature_set_uri": self.feature_set_uri,
            "reason": self.reason,
            "gate_json": self.gate_json,
            "moved_by": self.moved_by,
            "rollback": self.rollback,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            alias=record["alias"],
            previous_version=record.get("previous_version"),
            artifact_uri=record["artifact_uri"],
            artifact_sha256=record["artifact_sha256"],
            dataset_version_id=record["dataset_version_id"],
            feature_set_uri=record["feature_set_uri"],
            reason=record["reason"],
            gate_json=record["gate_json"],
            moved_by=record.get("moved_by", "registry"),
            rollback=record.get("rollback", False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRegistered(Payload):
    """A model version entered the registry."""

    event_type: ClassVar[str] = "ModelRegistered"
    topic: ClassVar[Topic] = topics.MODEL_REGISTERED

    model: str
    version: int
    run_id: str
    artifact_uri: str
    artifact_sha256: str
    dataset_version_id: str
    metrics: dict[str, float]

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "artifact_uri": self.artifact_uri,
            "artifact_sha256": self.artifact_sha256,
            "dataset_version_id": self.dataset_version_id,
            "metrics": self.metrics,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            run_id=record["run_id"],
            artifact_uri=record["artifact_uri"],
            artifact_sha256=record["artifact_sha256"],
            dataset_version_id=record["dataset_version_id"],
            metrics=record["metrics"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRejected(Payload):
    """The gate kept the champion: the challenger was not good enough."""

    event_type: ClassVar[str] = "ModelRejected"
    topic: ClassVar[Topic] = topics.MODEL_REJECTED

    model: str
    version: int
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None = None
    champion_version: int | None = None
    gate_json: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "metric": self.metric,
            "challenger_score": self.challenger_score,
            "champion_score": self.champion_score,
            "champion_version": self.champion_version,
            "gate_json": self.gate_json,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            reason=record["reason"],
            metric=record["metric"],
            challenger_score=record["challenger_score"],
            champion_score=record.get("champion_score"),
            champion_version=record.get("champion_version"),
            gate_json=record["gate_json"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceDegraded(Payload):
    """Performance measured from feedback fell below its threshold."""

    event_type: ClassVar[str] = "PerformanceDegraded"
    topic: ClassVar[Topic] = topics.PERFORMANCE_DEGRADED

    model: str
    version: int
    metric: str
    value: float
    threshold: float
    window_size: int
    #: Event time of the window's first prediction (null: unknown).
    window_start_time: datetime | None = None
    #: Event time of the window's last prediction (null: unknown).
    window_end_time: datetime | None = None
    #: Guard after a promotion: the previous champion, scored on the same labeled traffic.
    previous_version: int | None = None
    #: The previous champion's metric on those rows (the threshold is it minus monitor.guard.max_drop).
    previous_value: float | None = None
    #: threshold (the window is past monitor.performance.threshold), guard (worse than the previous champion) or change
    #: (the change detector: value is the error since the change, threshold the error before, window_start_time where it
    #: began).
    reason: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "window_size": self.window_size,
            "window_start_time": self.window_start_time,
            "window_end_time": self.window_end_time,
            "previous_version": self.previous_version,
            "previous_value": self.previous_value,
            "reason": self.reason,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            metric=record["metric"],
            value=record["value"],
            threshold=record["threshold"],
            window_size=record["window_size"],
            window_start_time=_optional(_timestamp, record.get("window_start_time")),
            window_end_time=_optional(_timestamp, record.get("window_end_time")),
            previous_version=record.get("previous_version"),
            previous_value=record.get("previous_value"),
            reason=record.get("reason"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineApplied(Payload):
    """A pipeline file was applied (`driftloop pipeline apply`) or removed (`pipeline remove`): running services take
    the document in place of the model's pipeline, or drop the model. Compacted by model: the last one per model is
    the model's pipeline.
    """

    event_type: ClassVar[str] = "PipelineApplied"
    topic: ClassVar[Topic] = topics.PIPELINE_APPLIED

    model: str
    stream: str
    #: The pipeline file's text (YAML); empty when removed.
    document: str
    #: SHA-256 (hex) of the document's UTF-8 bytes; empty when removed.
    sha256: str
    #: The model's pipeline was removed: services drop the model.
    removed: bool = False

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stream": self.stream,
            "document": self.document,
            "sha256": self.sha256,
            "removed": self.removed,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            stream=record["stream"],
            document=record["document"],
            sha256=record["sha256"],
            removed=record.get("removed", False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionLogged(Payload):
    """One served prediction, with the inputs the model saw."""

    event_type: ClassVar[str] = "PredictionLogged"
    topic: ClassVar[Topic] = topics.PREDICTION_LOGGED

    request_id: str
    model: str
    version: int
    #: Row within the request.
    index: int
    inputs: dict[str, bool | int | float | str | None]
    prediction: float
    entity: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "index": self.index,
            "inputs": self.inputs,
            "prediction": self.prediction,
            "entity": self.entity,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            request_id=record["request_id"],
            model=record["model"],
            version=record["version"],
            index=record["index"],
            inputs=record["inputs"],
            prediction=record["prediction"],
            entity=record.get("entity"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordRejected(Payload):
    """A record failed decoding, the schema or a data-quality rule: the dead letter."""

    event_type: ClassVar[str] = "RecordRejected"
    topic: ClassVar[Topic] = topics.RECORD_REJECTED

    stream: str
    #: Machine-readable reason code, e.g. out_of_range, bad_magic_byte.
    reason: str
    #: The offending field, when one is to blame.
    field: str | None = None
    #: Human-readable explanation.
    message: str
    #: Where it came from: kafka:TOPIC/PARTITION/OFFSET or http:REQUEST_ID/INDEX.
    source: str
    #: Writer schema id from the wire format, if it could be read.
    schema_id: int | None = None
    #: The record exactly as received (wire bytes or JSON).
    original: bytes

    def to_avro(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "source": self.source,
            "schema_id": self.schema_id,
            "original": self.original,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            stream=record["stream"],
            reason=record["reason"],
            field=record.get("field"),
            message=record["message"],
            source=record["source"],
            schema_id=record.get("schema_id"),
            original=record["original"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainDecision(Payload):
    """The triggers service decided what to do with a cause: retrain, suppress (with why), drop as stale, coalesce into
    a pending request, or roll back.
    """

    event_type: ClassVar[str] = "RetrainDecision"
    topic: ClassVar[Topic] = topics.RETRAIN_DECISION

    model: str
    #: The cause's kind: drift, performance, guard, new_data, labels, schedule, external, manual.
    trigger: str
    #: retrain, pending, coalesced, suppressed, stale or rollback.
    decision: str
    #: The cause, in words.
    reason: str
    #: Why this decision, in words.
    note: str
    #: The model version the cause is about (alarms); null: not about a version.
    version: int | None = None
    #: The champion the triggers service knew when deciding.
    champion_version: int | None = None
    #: The training request this decision made, fired or merged into.
    request_id: str | None = None
    #: The event that caused the decision.
    cause_event_id: str | None = None
    #: The numbers behind the decision (metric values, thresholds, rows, seconds), as JSON.
    numbers_json: str = "{}"

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "trigger": self.trigger,
            "decision": self.decision,
            "reason": self.reason,
            "note": self.note,
            "version": self.version,
            "champion_version": self.champion_version,
            "request_id": self.request_id,
            "cause_event_id": self.cause_event_id,
            "numbers_json": self.numbers_json,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            trigger=record["trigger"],
            decision=record["decision"],
            reason=record["reason"],
            note=record["note"],
            version=record.get("version"),
            champion_version=record.get("champion_version"),
            request_id=record.get("request_id"),
            cause_event_id=record.get("cause_event_id"),
            numbers_json=record.get("numbers_json", "{}"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRolledBack(Payload):
    """A serving replica stopped a challenger's rollout: the champion answers every request again."""

    event_type: ClassVar[str] = "RolloutRolledBack"
    topic: ClassVar[Topic] = topics.ROLLOUT_ROLLED_BACK

    model: str
    #: The challenger rolled back.
    version: int
    champion_version: int
    mode: str
    reason: str
    replica: str
    stats_json: str
    #: Why this replica stopped the rollout: 'verdict' (it judged the challenger worse: the registry moves champion
    #: back), 'followed' (another replica rolled it back), 'superseded' (a newer promotion replaced it) or
    #: 'champion_moved' (the champion moved by other means).
    origin: str = "verdict"

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "champion_version": self.champion_version,
            "mode": self.mode,
            "reason": self.reason,
            "replica": self.replica,
            "stats_json": self.stats_json,
            "origin": self.origin,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            champion_version=record["champion_version"],
            mode=record["mode"],
            reason=record["reason"],
            replica=record["replica"],
            stats_json=record["stats_json"],
            origin=record.get("origin", "verdict"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutStepped(Payload):
    """A serving replica moved a challenger's rollout on: started, stepped up its canary share, or completed it (the
    challenger now answers every request).
    """

    event_type: ClassVar[str] = "RolloutStepped"
    topic: ClassVar[Topic] = topics.ROLLOUT_STEPPED

    model: str
    #: The challenger.
    version: int
    champion_version: int
    #: canary or shadow.
    mode: str
    #: started, stepped or completed.
    action: str
    #: Index into canary_steps (0 for shadow).
    step: int
    #: The challenger's share of answered requests from now on (shadow: 0 until completed).
    share: float
    replica: str
    #: Per arm: requests, errors, error rate, p95 latency, mean prediction of the step just judged.
    stats_json: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "champion_version": self.champion_version,
            "mode": self.mode,
            "action": self.action,
            "step": self.step,
            "share": self.share,
            "replica": self.replica,
            "stats_json": self.stats_json,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            champion_version=record["champion_version"],
            mode=record["mode"],
            action=record["action"],
            step=record["step"],
            share=record["share"],
            replica=record["replica"],
            stats_json=record["stats_json"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStateChanged(Payload):
    """A training run moved between pending, running, completed, aborted and failed."""

    event_type: ClassVar[str] = "RunStateChanged"
    topic: ClassVar[Topic] = topics.RUN_STATE_CHANGED

    run_id: str
    model: str
    state: str
    previous_state: str | None = None
    dataset_version_id: str | None = None
    #: Error or note for the change.
    message: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "state": self.state,
            "previous_state": self.previous_state,
            "dataset_version_id": self.dataset_version_id,
            "message": self.message,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            run_id=record["run_id"],
            model=record["model"],
            state=record["state"],
            previous_state=record.get("previous_state"),
            dataset_version_id=record.get("dataset_version_id"),
            message=record.get("message"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingSwitched(Payload):
    """A serving replica now answers with another model version."""

    event_type: ClassVar[str] = "ServingSwitched"
    topic: ClassVar[Topic] = topics.SERVING_SWITCHED

    model: str
    version: int
    previous_version: int | None = None
    artifact_sha256: str
    replica: str
    load_seconds: float

    def to_avro(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "previous_version": self.previous_version,
            "artifact_sha256": self.artifact_sha256,
            "replica": self.replica,
            "load_seconds": self.load_seconds,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            model=record["model"],
            version=record["version"],
            previous_version=record.get("previous_version"),
            artifact_sha256=record["artifact_sha256"],
            replica=record["replica"],
            load_seconds=record["load_seconds"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingCompleted(Payload):
    """A run finished and produced a model artifact."""

    event_type: ClassVar[str] = "TrainingCompleted"
    topic: ClassVar[Topic] = topics.TRAINING_COMPLETED

    run_id: str
    request_id: str
    model: str
    trigger: str
    dataset_version_id: str
    feature_set_uri: str
    artifact_uri: str
    artifact_sha256: str
    #: Holdout metrics of the run.
    metrics: dict[str, float]
    params_json: str
    #: How the holdout was drawn (fraction, seed, rows).
    holdout_json: str
    feature_names: list[str]

    def to_avro(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "request_id": self.request_id,
            "model": self.model,
            "trigger": self.trigger,
            "dataset_version_id": self.dataset_version_id,
            "feature_set_uri": self.feature_set_uri,
            "artifact_uri": self.artifact_uri,
            "artifact_sha256": self.artifact_sha256,
            "metrics": self.metrics,
            "params_json": self.params_json,
            "holdout_json": self.holdout_json,
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            run_id=record["run_id"],
            request_id=record["request_id"],
            model=record["model"],
            trigger=record["trigger"],
            dataset_version_id=record["dataset_version_id"],
            feature_set_uri=record["feature_set_uri"],
            artifact_uri=record["artifact_uri"],
            artifact_sha256=record["artifact_sha256"],
            metrics=record["metrics"],
            params_json=record["params_json"],
            holdout_json=record["holdout_json"],
            feature_names=record["feature_names"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRequested(Payload):
    """A trigger asks for a model to be retrained."""

    event_type: ClassVar[str] = "TrainingRequested"
    topic: ClassVar[Topic] = topics.TRAINING_REQUESTED

    #: Idempotency key: one request gives at most one run.
    request_id: str
    model: str
    #: manual, schedule, new_data, labels, performance, drift, external, guard (a rollback by the guard after a
    #: promotion), followup (a planned retrain after a located change) or rerun (a run asked again by hand).
    trigger: str
    #: Why, in words.
    reason: str
    #: Train on this version; null means the latest materialized one.
    dataset_version_id: str | None = None
    #: Re-execute this run: same dataset version, features, params and seed, no search.
    rerun_of: str | None = None
    #: Event time where the change that caused this request began (drift/degradation located by the monitor): training
    #: then uses a dataset version cut from this point once enough rows landed after it, and trains on the rows after
    #: it. Null: no change point.
    change_started_at: datetime | None = None
    #: True: train on exactly dataset_version_id (a rerun, a person's pin). Null/false: dataset_version_id is the
    #: version known when the request was made; the run trains on the newest usable version at its start.
    pinned: bool | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "trigger": self.trigger,
            "reason": self.reason,
            "dataset_version_id": self.dataset_version_id,
            "rerun_of": self.rerun_of,
            "change_started_at": self.change_started_at,
            "pinned": self.pinned,
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            request_id=record["request_id"],
            model=record["model"],
            trigger=record["trigger"],
            reason=record["reason"],
            dataset_version_id=record.get("dataset_version_id"),
            rerun_of=record.get("rerun_of"),
            change_started_at=_optional(_timestamp, record.get("change_started_at")),
            pinned=record.get("pinned"),
        )


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    "AliasMoveRefused": AliasMoveRefused,
    "DatasetCutStarted": DatasetCutStarted,
    "DatasetVersionCreated": DatasetVersionCreated,
    "DriftDetected": DriftDetected,
    "ExternalTrigger": ExternalTrigger,
    "FeaturesMaterialized": FeaturesMaterialized,
    "FeedbackReceived": FeedbackReceived,
    "ModelPromoted": ModelPromoted,
    "ModelRegistered": ModelRegistered,
    "ModelRejected": ModelRejected,
    "PerformanceDegraded": PerformanceDegraded,
    "PipelineApplied": PipelineApplied,
    "PredictionLogged": PredictionLogged,
    "RecordRejected": RecordRejected,
    "RetrainDecision": RetrainDecision,
    "RolloutRolledBack": RolloutRolledBack,
    "RolloutStepped": RolloutStepped,
    "RunStateChanged": RunStateChanged,
    "ServingSwitched": ServingSwitched,
    "TrainingCompleted": TrainingCompleted,
    "TrainingRequested": TrainingRequested,
}
