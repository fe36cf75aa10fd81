"""``driftloop.client``: talk to a driftloop platform from Python.

>>> from driftloop.client import Client
>>> with Client() as dl:                                     # the settings' URLs and token (driftloop up's)
...     dl.ingest("transactions", [{"customer_id": "c1", "event_time": "2026-12-03T10:00:00Z", "amount": 12.5}])
...     dl.predict("fraud-detector", [{"customer_id": "c1", "amount": 12.5, ...}]).predictions

One class, :class:`Client`; every method is one call to one service and returns its answer typed: a small frozen
model (:class:`Prediction`, :class:`ModelVersion`, :class:`Run`, ...) or a list of them. A model types the fields the
service documents, ignores fields it does not know (a newer server), and keeps the JSON it was read from as ``.raw``.
Reports whose shape is the data's (``stream_stats``, ``compact_datasets``) stay JSON dicts; ``run_logs`` is text.

Auth (a bearer token), timeouts, retries of connection failures (idempotent calls only) and the mapping of error
answers all live in :class:`driftloop.clients.http.ServiceClient`: an error answer raises from the one exception tree,
``driftloop.errors`` (``NotFoundError`` for a 404, ``ConflictError`` for a 409, ``ValidationFailed`` for a 422, ...;
every one a ``DriftloopError`` with ``status_code`` and ``code``); a service that does not answer raises
``ServiceError`` with code ``unreachable`` or ``timeout``; an answer the client cannot read (a field of the wrong
type, a required one missing) raises ``ServiceError`` with code ``unexpected_answer``.
"""

from driftloop.client._models import (
    Alias,
    AliasMove,
    Cascade,
    DatasetDiff,
    DatasetVersion,
    DeadLetter,
    DeadLetterCounts,
    DeadLetters,
    Entity,
    FeedbackResult,
    InferResponse,
    IngestResult,
    LoadRefusal,
    ModelMetadata,
    ModelVersion,
    Prediction,
    RegisteredModel,
    Rejection,
    ReplayResult,
    Rerun,
    Rollout,
    Run,
    RunAbort,
    Served,
    ServedModels,
    Stream,
    StreamContract,
    StreamField,
    Tensor,
    TensorMetadata,
    TimelineEvent,
    TrainingRequest,
)
from driftloop.client.client import Client

__all__ = [
    "Alias",
    "AliasMove",
    "Cascade",
    "Client",
    "DatasetDiff",
    "DatasetVersion",
    "DeadLetter",
    "DeadLetterCounts",
    "DeadLetters",
    "Entity",
    "FeedbackResult",
    "InferResponse",
    "IngestResult",
    "LoadRefusal",
    "ModelMetadata",
    "ModelVersion",
    "Prediction",
    "RegisteredModel",
    "Rejection",
    "ReplayResult",
    "Rerun",
    "Rollout",
    "Run",
    "RunAbort",
    "Served",
    "ServedModels",
    "Stream",
    "StreamContract",
    "StreamField",
    "Tensor",
    "TensorMetadata",
    "TimelineEvent",
    "TrainingRequest",
]
