"""The models this replica serves: one immutable ``ServedModel`` per model name, swapped by one reference
assignment under a lock. A request takes the reference once, so it finishes on the model it started with."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.pipeline import PipelineConfig

from .encode import MatrixEncoder
from .rowpredict import SingleRowPredictor


@dataclass(frozen=True)
class ServedModel:
    model: str
    version: int
    sha256: str
    artifact_uri: str
    artifact: ModelArtifact
    pipeline: PipelineConfig
    loaded_at: datetime
    load_seconds: float
    promoted_event_id: str

    @cached_property
    def encoder(self) -> MatrixEncoder | None:
        """The pandas-free path for this model's requests (None: its family takes the DataFrame path)."""
        return MatrixEncoder.build(self.pipeline, self.artifact)

    @cached_property
    def row_predictor(self) -> SingleRowPredictor | None:
        """One-row requests without LightGBM's per-call setup (None: ``Booster.predict`` answers them)."""
        return SingleRowPredictor.for_booster(self.artifact.model) if self.encoder is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "artifact_uri": self.artifact_uri,
            "loaded_at": self.loaded_at.isoformat(),
            "load_seconds": self.load_seconds,
            "promoted_event_id": self.promoted_event_id,
            "feature_names": self.artifact.feature_names,
        }


@dataclass
class LoadProblem:
    version: int
    sha256: str
    reason: str
    at: datetime


@dataclass
class ModelTable:
    """Served models by name, and the last refused load per model (e.g. a sha256 mismatch)."""

    _served: dict[str, ServedModel] = field(default_factory=dict)
    _problems: dict[str, LoadProblem] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, model: str) -> ServedModel | None:
        with self._lock:
            return self._served.get(model)

    def swap(self, served: ServedModel) -> ServedModel | None:
        """Serve ``served`` from now on; returns the model it replaced."""
        with self._lock:
            previous = self._served.get(served.model)
            self._served[served.model] = served
            return previous

    def refuse(self, model: str, problem: LoadProblem) -> None:
        with self._lock:
            self._problems[model] = problem

    def problem(self, model: str) -> LoadProblem | None:
        with self._lock:
            return self._problems.get(model)

    def all(self) -> list[ServedModel]:
        with self._lock:
            return sorted(self._served.values(), key=lambda s: s.model)

    def loaded_count(self) -> int:
        with self._lock:
            return len(self._served)
