"""All tables, one module per service that owns (writes) them; ``events`` is the shared event log. A service reads
only its own tables and the shared event log; everything else it learns from events or another service's HTTP API.
Every table is importable from here (one metadata, migrated by Alembic)."""

from driftloop.clients.db.models._base import Base, utcnow
from driftloop.clients.db.models.events import EventRecord, ProcessedEvent
from driftloop.clients.db.models.features import FeatureSet, FeatureStreamEvent, OnlineFeatures
from driftloop.clients.db.models.ingestion import DatasetVersion, DeadLetter, IngestionIdempotencyKey, LandedBatch
from driftloop.clients.db.models.monitor import (
    DriftReport,
    MonitoredModel,
    MonitorFeedback,
    MonitorObservation,
    MonitorVersion,
    PerformanceReport,
)
from driftloop.clients.db.models.registry import ModelAlias, ModelVersion
from driftloop.clients.db.models.schemaregistry import RegistryConfig, RegistrySchema, RegistrySubjectVersion
from driftloop.clients.db.models.serving import PredictionFeedback, ServedPrediction
from driftloop.clients.db.models.training import Run
from driftloop.clients.db.models.triggers import TrainingRequest, TriggerModelState, TriggerStreamState

__all__ = [
    "Base",
    "DatasetVersion",
    "DeadLetter",
    "DriftReport",
    "EventRecord",
    "FeatureSet",
    "FeatureStreamEvent",
    "IngestionIdempotencyKey",
    "LandedBatch",
    "ModelAlias",
    "ModelVersion",
    "MonitorFeedback",
    "MonitorObservation",
    "MonitorVersion",
    "MonitoredModel",
    "OnlineFeatures",
    "PerformanceReport",
    "PredictionFeedback",
    "ProcessedEvent",
    "RegistryConfig",
    "RegistrySchema",
    "RegistrySubjectVersion",
    "Run",
    "ServedPrediction",
    "TrainingRequest",
    "TriggerModelState",
    "TriggerStreamState",
    "utcnow",
]
