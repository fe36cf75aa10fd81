"""What the :class:`~driftloop.client.Client` returns: the services' JSON answers as small frozen, typed models.

Each model types the fields a service documents; a field the client does not know (a newer server) is ignored, never
an error, and the answer as it came stays readable as :attr:`Entity.raw`. Times are ``datetime``s, versions ``int``s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidatorFunctionWrapHandler, model_validator

JSON = dict[str, Any]


class Entity(BaseModel):
    """One answer (or one item of it), typed. ``raw`` is the JSON object it was read from, unknown fields included."""

    # extra="ignore": servers evolve, a new field must not break a deployed client. No ``model_`` namespace guard:
    # the protocol's own names (``model_name``, ``model_version``) are fields here.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, protected_namespaces=())

    _raw: JSON = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        entity = handler(data)
        if isinstance(data, dict) and isinstance(entity, Entity):
            entity._raw = data  # a private attribute: not a field, so a frozen model may hold it
        return entity

    @property
    def raw(self) -> JSON:
        """The service's JSON object as it came (e.g. to print it, or to read a field this client does not know)."""
        return self._raw


# --- streams, records, dead letters, datasets (ingestion) -------------------------------------------------------


class StreamField(Entity):
    name: str
    type: str
    nullable: bool = True
    doc: str = ""


class Stream(Entity):
    """A stream: its topic, the model trained on it, its fields and dataset rules."""

    stream: str
    topic: str
    model: str
    fields: list[StreamField]
    dataset: JSON = Field(default_factory=dict)


class StreamContract(Entity):
    """The producer contract of a stream: the Avro value schema, registered under ``subject``."""

    stream: str
    topic: str
    subject: str
    avro_schema: JSON = Field(alias="schema")
    entity_key: str | None = None
    event_time: str | None = None
    label: str | None = None


class Rejection(Entity):
    """A record refused by ingestion (also kept as a dead letter): its position in the batch and why."""

    index: int
    reason: str
    field: str | None = None
    message: str = ""


class IngestResult(Entity):
    """The answer to posted records: how many landed, which were refused. ``replayed``: a retried batch (same
    ``Idempotency-Key``) got the first answer back and landed nothing."""

    request_id: str
    accepted: int
    rejected: list[Rejection] = Field(default_factory=list)
    object_key: str | None = None
    replayed: bool = False
    idempotency_key: str | None = None


class DeadLetter(Entity):
    id: int
    reason: str
    field: str | None = None
    message: str = ""
    source: str = ""
    schema_id: int | None = None
    event_id: str | None = None
    created_at: datetime | None = None
    replayed_into: str | None = None
    replayed_at: datetime | None = None
    original_base64: str | None = None


class DeadLetterCounts(Entity):
    open: int
    by_reason: dict[str, int] = Field(default_factory=dict)
    replayed: int = 0


class DeadLetters(Entity):
    """The open dead letters of a stream (newest first) and the counts by reason."""

    stream: str
    counts: DeadLetterCounts
    dead_letters: list[DeadLetter]


class ReplayResult(Entity):
    """Dead letters re-validated: ``replayed`` landed (``replayed_ids``), the others still failing with why."""

    stream: str
    selected: int
    replayed: int
    replayed_ids: list[int] = Field(default_factory=list)
    still_failing: list[JSON] = Field(default_factory=list)
    object_key: str | None = None


class DatasetVersion(Entity):
    """A dataset version ``STREAM@vN``: content hash, rows, schema, profile, event-time range, parent. ``sources``
    (the landed batches it took in) only in :meth:`Client.dataset`'s answer."""

    dataset_version_id: str
    stream: str
    version: int
    uri: str | None = None
    content_hash: str | None = None
    row_count: int
    new_rows: int | None = None
    parent_version_id: str | None = None
    mode: str | None = None
    dataset_schema: Any = Field(default=None, alias="schema")
    profile: JSON | None = None
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None
    event_id: str | None = None
    created_at: datetime | None = None
    checks: JSON | None = None
    sources: list[JSON] | None = None


class DatasetDiff(Entity):
    """Two versions of a stream compared: rows added/removed (by content) and the profile change per column."""

    stream: str
    from_version: str = Field(alias="from")
    to_version: str = Field(alias="to")
    same_content: bool
    rows: dict[str, int]
    rows_added: int
    rows_removed: int
    rows_unchanged: int
    new_is_descendant: bool | None = None
    profile_changes: dict[str, JSON] = Field(default_factory=dict)


# --- predictions, inference, feedback (serving) -----------------------------------------------------------------


class Prediction(Entity):
    """Predictions of one request, one per row, by ``version``; feedback refers to ``request_id`` (+ row index)."""

    model: str
    version: int
    request_id: str
    predictions: list[float]


class Tensor(Entity):
    """An Open Inference Protocol tensor (``data`` flat, row-major)."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = Field(default_factory=list)
    parameters: JSON | None = None


class InferResponse(Entity):
    """An Open Inference Protocol (v2) inference response; ``parameters["request_id"]`` is what feedback refers to."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: JSON = Field(default_factory=dict)
    outputs: list[Tensor]


class TensorMetadata(Entity):
    name: str
    datatype: str
    shape: list[int]
    parameters: JSON = Field(default_factory=dict)


class ModelMetadata(Entity):
    """Open Inference Protocol model metadata: the model's input and output tensors and its loaded versions."""

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str = ""
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Rollout(Entity):
    """A running canary or shadow rollout of a challenger version."""

    mode: str
    challenger_version: int
    step: int
    share: float
    stats: JSON = Field(default_factory=dict)


class LoadRefusal(Entity):
    """A version serving refused to load (e.g. its artifact's sha256 did not match) and why."""

    version: int
    sha256: str
    reason: str
    at: datetime


class Served(Entity):
    """What a serving replica answers ``model`` with: the version, its artifact, when it was loaded, the running
    rollout; ``replica`` and ``last_refused`` in the answer for one model."""

    model: str
    version: int
    sha256: str
    artifact_uri: str
    loaded_at: datetime
    load_seconds: float
    promoted_event_id: str
    feature_names: list[str] = Field(default_factory=list)
    rollout: Rollout | None = None
    replica: str | None = None
    last_refused: LoadRefusal | None = None


class ServedModels(Entity):
    """Every model a serving replica answers with."""

    replica: str
    models: list[Served]


class FeedbackResult(Entity):
    """Actual outcomes stored, each joined with its prediction."""

    model: str
    accepted: int
    feedback: list[JSON] = Field(default_factory=list)


# --- models, versions, aliases (registry) -----------------------------------------------------------------------


class RegisteredModel(Entity):
    model: str
    versions: int
    latest_version: int | None = None
    champion_version: int | None = None


class ModelVersion(Entity):
    """A registered version: artifact and its sha256, signature, metrics, lineage, gate numbers, tags, aliases."""

    model: str
    version: int
    status: str
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    signature: JSON = Field(default_factory=dict)
    run_id: str | None = None
    artifact_uri: str
    artifact_sha256: str
    dataset_version_id: str | None = None
    feature_set_uri: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    lineage: JSON = Field(default_factory=dict)
    gate: JSON = Field(default_factory=dict)
    created_at: datetime | None = None
    decided_at: datetime | None = None


class Alias(Entity):
    """Where an alias of a model points, who moved it there and why. :meth:`Client.alias` also gives ``model`` and
    the version itself (``model_version``)."""

    alias: str
    version: int
    moved_by: str | None = None
    reason: str | None = None
    event_id: str | None = None
    cascade_id: str | None = None
    caused_by: str | None = None
    updated_at: datetime | None = None
    model: str | None = None
    model_version: ModelVersion | None = None


class AliasMove(Entity):
    """An alias moved (or a rollback of ``champion``): from ``previous_version`` to ``version``, announced by the
    ``ModelPromoted`` event ``event_id``. ``moved`` is false when the alias already pointed there."""

    model: str
    alias: str
    version: int
    previous_version: int | None = None
    moved: bool = True
    moved_by: str | None = None
    reason: str | None = None
    event_id: str
    event: JSON = Field(default_factory=dict)


# --- training runs (triggers, training) -------------------------------------------------------------------------


class TrainingRequest(Entity):
    """A retrain asked for: ``status`` ``requested`` once its ``TrainingRequested`` event is out."""

    request_id: str
    model: str
    trigger: str
    reason: str | None = None
    status: str
    note: str | None = None
    cause_event_id: str | None = None
    cascade_id: str | None = None
    dataset_version_id: str | None = None
    event_id: str | None = None
    version: int | None = None
    created_at: datetime | None = None


class Run(Entity):
    """A training run: what it trained on, its params, metrics, trials and artifacts, provenance and resources."""

    run_id: str
    request_id: str
    model: str
    state: str
    trigger: str
    cause_event_id: str | None = None
    cascade_id: str | None = None
    dataset_version_id: str | None = None
    params: JSON = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    artifact_uri: str | None = None
    artifact_sha256: str | None = None
    code_version: str | None = None
    environment: JSON = Field(default_factory=dict)
    resources: JSON = Field(default_factory=dict)
    error: str | None = None
    log_uri: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    feature_set_uri: str | None = None
    holdout: JSON = Field(default_factory=dict)
    trials: list[JSON] | None = None
    search: JSON | None = None
    artifacts: JSON | None = None
    rerun_of: str | None = None
    fingerprint: str | None = None
    skip_reason: str | None = None
    attempts: int = 1


class RunAbort(Entity):
    """An abort asked for: the run ends in state ``aborted`` shortly."""

    run_id: str
    state: str
    abort_requested: bool


class Rerun(Entity):
    """A rerun asked for: the new run has ``request_id`` and ``rerun_of`` = the run it re-executes."""

    request_id: str
    rerun_of: str
    model: str


# --- the timeline (dashboard) -----------------------------------------------------------------------------------


class TimelineEvent(Entity):
    """One step of a cascade: an event, when, what caused it, and a sentence about it."""

    event_id: str
    event_type: str
    occurred_at: datetime
    caused_by: str | None = None
    cascade_id: str | None = None
    producer: str = ""
    summary: str = ""


class Cascade(Entity):
    """Everything one cause set off (trigger, run, gate, promotion, rollout, serving switch), oldest step first."""

    cascade_id: str
    root_event_type: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    explanation: list[str] = Field(default_factory=list)
    steps: list[TimelineEvent]
