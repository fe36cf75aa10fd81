"""Every topic of the platform and the event schema it carries, declared once.

A topic carries exactly one event type (Confluent TopicNameStrategy: subject ``<topic>-value``).
``key`` names the payload field used as the message key, so that all events of one model (or stream)
land in one partition and keep their order. ``in_event_log``: whether the bus copies the topic's events to the
database's event log (``events``); a topic whose rows are kept in their owner's own table is not copied twice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    event_type: str
    key: str
    in_event_log: bool = True

    @property
    def subject(self) -> str:
        return f"{self.name}-value"


RECORD_REJECTED = Topic("driftloop.records.rejected", "RecordRejected", key="stream")
DATASET_CUT_STARTED = Topic("driftloop.datasets.cut-started", "DatasetCutStarted", key="stream")
DATASET_VERSION_CREATED = Topic("driftloop.datasets.version-created", "DatasetVersionCreated", key="stream")
FEATURES_MATERIALIZED = Topic("driftloop.features.materialized", "FeaturesMaterialized", key="stream")
TRAINING_REQUESTED = Topic("driftloop.training.requested", "TrainingRequested", key="model")
RUN_STATE_CHANGED = Topic("driftloop.training.run-state-changed", "RunStateChanged", key="model")
TRAINING_COMPLETED = Topic("driftloop.training.completed", "TrainingCompleted", key="model")
MODEL_REGISTERED = Topic("driftloop.models.registered", "ModelRegistered", key="model")
MODEL_PROMOTED = Topic("driftloop.models.promoted", "ModelPromoted", key="model")
MODEL_REJECTED = Topic("driftloop.models.rejected", "ModelRejected", key="model")
ALIAS_MOVE_REFUSED = Topic("driftloop.models.alias-move-refused", "AliasMoveRefused", key="model")
# One event per answered row: its database record is serving's ``serving_predictions`` row (with the row's inputs),
# so a copy in the event log would only write each row twice.
PREDICTION_LOGGED = Topic("driftloop.serving.prediction-logged", "PredictionLogged", key="model", in_event_log=False)
FEEDBACK_RECEIVED = Topic("driftloop.serving.feedback-received", "FeedbackReceived", key="model")
SERVING_SWITCHED = Topic("driftloop.serving.switched", "ServingSwitched", key="model")
ROLLOUT_STEPPED = Topic("driftloop.serving.rollout-stepped", "RolloutStepped", key="model")
ROLLOUT_ROLLED_BACK = Topic("driftloop.serving.rollout-rolled-back", "RolloutRolledBack", key="model")
DRIFT_DETECTED = Topic("driftloop.monitor.drift-detected", "DriftDetected", key="model")
PERFORMANCE_DEGRADED = Topic("driftloop.monitor.performance-degraded", "PerformanceDegraded", key="model")
EXTERNAL_TRIGGER = Topic("driftloop.triggers.external", "ExternalTrigger", key="model")
RETRAIN_DECISION = Topic("driftloop.triggers.retrain-decision", "RetrainDecision", key="model")
# Compacted (``kafka.compacted_topics``): the last event per model is the model's pipeline.
PIPELINE_APPLIED = Topic("driftloop.pipelines.applied", "PipelineApplied", key="model")

EVENT_TOPICS: tuple[Topic, ...] = (
    RECORD_REJECTED,
    DATASET_CUT_STARTED,
    DATASET_VERSION_CREATED,
    FEATURES_MATERIALIZED,
    TRAINING_REQUESTED,
    RUN_STATE_CHANGED,
    TRAINING_COMPLETED,
    MODEL_REGISTERED,
    MODEL_PROMOTED,
    MODEL_REJECTED,
    ALIAS_MOVE_REFUSED,
    PREDICTION_LOGGED,
    FEEDBACK_RECEIVED,
    SERVING_SWITCHED,
    ROLLOUT_STEPPED,
    ROLLOUT_ROLLED_BACK,
    DRIFT_DETECTED,
    PERFORMANCE_DEGRADED,
    EXTERNAL_TRIGGER,
    RETRAIN_DECISION,
    PIPELINE_APPLIED,
)

# Not an event topic: messages keyed by the process that rang, their value why (empty, or ``DOORBELL_RECORDS``). A
# process that publishes after a quiet spell rings it; every process's pipeline follower hears it and wakes its
# resting consumers (``kafka.rest_after_seconds``).
BUS_DOORBELL_TOPIC = "driftloop.bus.doorbell"
# The doorbell's reason when stream records arrive at ingestion: a cut, and maybe a training, follow.
DOORBELL_RECORDS = "records"

TOPIC_BY_EVENT_TYPE: dict[str, Topic] = {t.event_type: t for t in EVENT_TOPICS}

STREAM_TOPIC_PREFIX = "driftloop.stream."


def stream_topic(stream: str) -> str:
    """The topic producers write a stream's records to (Avro, subject ``<topic>-value``)."""
    return STREAM_TOPIC_PREFIX + stream
