"""The :class:`Client`: one method per thing a user does with the platform, over the services' HTTP APIs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from driftloop.client._models import (
    Alias,
    AliasMove,
    Cascade,
    DatasetDiff,
    DatasetVersion,
    DeadLetters,
    Entity,
    FeedbackResult,
    InferResponse,
    IngestResult,
    ModelMetadata,
    ModelVersion,
    Prediction,
    RegisteredModel,
    ReplayResult,
    Rerun,
    Run,
    RunAbort,
    Served,
    ServedModels,
    Stream,
    StreamContract,
    TrainingRequest,
)
from driftloop.clients.http import DEFAULT_TIMEOUT, ServiceClient
from driftloop.contracts.settings import Settings, load_settings
from driftloop.errors import ServiceError

JSON = dict[str, Any]
# Calls that run Spark (a dataset cut, a diff, a compaction) take minutes on a busy machine or a large stream.
LONG_TIMEOUT = 900.0


E = TypeVar("E", bound=Entity)


def _segment(value: str | int) -> str:
    """A path segment, escaped (a stream, model or run id is never read as more path)."""
    return quote(str(value), safe="")


class Client:
    """A platform's services, reached at the URLs and with the token of ``settings`` (default: the settings of this
    environment, ``DRIFTLOOP_*`` variables and ``driftloop.yaml``, so the token ``driftloop up`` wrote).

    ``urls`` overrides the URL of some services (``{"serving": "https://..."}``), ``token`` the bearer token (a
    string, or a function asked before every request). ``timeout`` is the default of every call in seconds; ``retries``
    how often a connection failure of an idempotent call is retried; ``transport`` an ``httpx`` transport (e.g.
    ``httpx.MockTransport`` in tests). Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        urls: Mapping[str, str] | None = None,
        token: str | Callable[[], str | None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._urls = dict(urls or {})
        self._token = token
        self._timeout = timeout
        self._retries = retries
        self._services: dict[str, ServiceClient] = {}

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceClient:
        client = self._services.get(name)
        if client is None:
            settings = self._settings
            if settings is None and (name not in self._urls or self._token is None):
                settings = self._settings = load_settings()
            client = ServiceClient(
                name,
                settings,
                base_url=self._urls.get(name),
                token=self._token,
                timeout=self._timeout,
                retries=self._retries,
                transport=self._transport,
            )
            self._services[name] = client
        return client

    def _call(self, service: str, method: str, path: str, **kwargs: Any) -> Any:
        return self._service(service).call(method, path, **kwargs)

    def _one(self, kind: type[E], service: str, method: str, path: str, **kwargs: Any) -> E:
        """The answer of a call, read as ``kind``."""
        return _read(kind, service, path, self._call(service, method, path, **kwargs))

    def _many(self, kind: type[E], key: str, service: str, method: str, path: str, **kwargs: Any) -> list[E]:
        """The items under ``key`` of the answer of a call, each read as ``kind``."""
        answer = self._call(service, method, path, **kwargs)
        items = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise _unexpected(service, path, f"expected an object with a list {key!r}")
        return [_read(kind, service, path, item) for item in items]

    def close(self) -> None:
        for client in self._services.values():
            client.close()
        self._services.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- streams: records, the producer contract, dead letters (ingestion) -------------------------------------

    def streams(self) -> list[Stream]:
        """Every stream: topic, model, fields, dataset rules."""
        return self._many(Stream, "streams", "ingestion", "GET", "/v1/streams")

    def stream_schema(self, stream: str) -> StreamContract:
        """The producer contract of ``stream``: ``avro_schema``, ``subject``, ``topic`` and the field roles."""
        return self._one(StreamContract, "ingestion", "GET", f"/v1/streams/{_segment(stream)}/schema")

    def ingest(
        self, stream: str, records: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> IngestResult:
        """Post records (JSON objects of the stream's fields; timestamps ISO-8601 with a zone or epoch millis).
        The answer counts ``accepted`` and lists ``rejected`` records with their reason (also dead letters). With
        ``idempotency_key`` a retried batch lands once."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"records": [dict(r) for r in records]}
        path = f"/v1/streams/{_segment(stream)}/records"
        return self._one(IngestResult, "ingestion", "POST", path, json=body, headers=headers)

    def stream_stats(self, stream: str) -> JSON:
        """Records in, landed, dead-lettered (by reason), pending and freshness of ``stream`` (a report: JSON)."""
        return self._call("ingestion", "GET", f"/v1/streams/{_segment(stream)}/stats")

    def dead_letters(self, stream: str, *, reason: str | None = None, limit: int = 100) -> DeadLetters:
        """The open dead letters of ``stream``, newest first, with the counts by reason."""
        params: JSON = {"limit": limit, **({"reason": reason} if reason else {})}
        path = f"/v1/streams/{_segment(stream)}/dead-letters"
        return self._one(DeadLetters, "ingestion", "GET", path, params=params)

    def replay_dead_letters(
        self,
        stream: str,
        *,
        ids: list[int] | None = None,
        reason: str | None = None,
        fixes: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> ReplayResult:
        """Re-validate dead letters (``ids`` and/or ``reason``; all if neither), ``fixes`` replacing originals by id;
        land those that pass, once."""
        body: JSON = {}
        if ids is not None:
            body["ids"] = ids
        if reason:
            body["reason"] = reason
        if fixes:
            body["fixes"] = {str(k): dict(v) for k, v in fixes.items()}
        path = f"/v1/streams/{_segment(stream)}/dead-letters/replay"
        return self._one(ReplayResult, "ingestion", "POST", path, json=body)

    # --- datasets (ingestion) ----------------------------------------------------------------------------------

    def datasets(self, stream: str) -> list[DatasetVersion]:
        """The dataset versions of ``stream``, oldest first."""
        return self._many(DatasetVersion, "versions", "ingestion", "GET", f"/v1/streams/{_segment(stream)}/datasets")

    def dataset(self, version_id: str) -> DatasetVersion:
        """A dataset version (``STREAM@vN``) with its lineage and the landed batches it took in (``sources``)."""
        return self._one(DatasetVersion, "ingestion", "GET", f"/v1/datasets/{_segment(version_id)}")

    def cut_dataset(self, stream: str) -> DatasetVersion:
        """Cut a dataset version of ``stream`` now (``ConflictError`` when nothing new landed)."""
        path = f"/v1/streams/{_segment(stream)}/datasets"
        return self._one(DatasetVersion, "ingestion", "POST", path, timeout=LONG_TIMEOUT)

    def diff_datasets(self, stream: str, from_version: str | None = None, to_version: str | None = None) -> DatasetDiff:
        """Rows added/removed between two versions (``vN``; default the newest and the one before) and the profile
        change per column."""
        params = {k: v for k, v in {"from": from_version, "to": to_version}.items() if v}
        path = f"/v1/streams/{_segment(stream)}/datasets/diff"
        return self._one(DatasetDiff, "ingestion", "GET", path, params=params, timeout=LONG_TIMEOUT)

    def compact_datasets(self, stream: str, *, keep_versions: int = 2) -> JSON:
        """Retention: compact the landed batches of all but the newest ``keep_versions`` versions (a report: JSON)."""
        return self._call(
            "ingestion",
            "POST",
            f"/v1/streams/{_segment(stream)}/datasets/compact",
            params={"keep_versions": keep_versions},
            timeout=LONG_TIMEOUT,
        )

    # --- predictions and feedback (serving) --------------------------------------------------------------------

    def predict(self, model: str, instances: Iterable[Mapping[str, Any]]) -> Prediction:
        """Predictions of the served version of ``model`` for rows of the stream's raw fields: ``predictions``,
        ``version`` and the ``request_id`` feedback refers to."""
        body = {"instances": [dict(i) for i in instances]}
        return self._one(Prediction, "serving", "POST", f"/v1/models/{_segment(model)}/predict", json=body)

    def predict_entities(self, model: str, entities: Iterable[str]) -> Prediction:
        """Predictions for entity keys, from each entity's latest features in the online store."""
        body = {"entities": list(entities)}
        return self._one(Prediction, "serving", "POST", f"/v1/models/{_segment(model)}/predict", json=body)

    def infer(
        self,
        model: str,
        inputs: list[Mapping[str, Any]],
        *,
        version: int | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        outputs: list[Mapping[str, Any]] | None = None,
    ) -> InferResponse:
        """An Open Inference Protocol (v2) inference request: ``inputs`` are tensors ``{"name", "shape",
        "datatype", "data"}``; with ``version``, that version's route."""
        path = f"/v2/models/{_segment(model)}" + (f"/versions/{_segment(version)}" if version is not None else "")
        body: JSON = {"inputs": [dict(t) for t in inputs]}
        if request_id is not None:
            body["id"] = request_id
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if outputs is not None:
            body["outputs"] = [dict(o) for o in outputs]
        return self._one(InferResponse, "serving", "POST", f"{path}/infer", json=body)

    def model_metadata(self, model: str) -> ModelMetadata:
        """Open Inference Protocol metadata of ``model``: its inputs (name, datatype, shape) and versions."""
        return self._one(ModelMetadata, "serving", "GET", f"/v2/models/{_segment(model)}")

    @overload
    def served(self, model: None = None) -> ServedModels: ...

    @overload
    def served(self, model: str) -> Served: ...

    def served(self, model: str | None = None) -> Served | ServedModels:
        """What serving answers with: every model (:class:`ServedModels`), or ``model``'s champion, rollout and last
        refusal (:class:`Served`)."""
        if model is None:
            return self._one(ServedModels, "serving", "GET", "/v1/models")
        return self._one(Served, "serving", "GET", f"/v1/models/{_segment(model)}")

    def feedback(self, model: str, rows: Iterable[Mapping[str, Any]]) -> FeedbackResult:
        """Actual outcomes: each row ``{"actual", "request_id", "index"}`` or ``{"actual", "entity", "at"}``."""
        body = {"feedback": [dict(r) for r in rows]}
        return self._one(FeedbackResult, "serving", "POST", f"/v1/models/{_segment(model)}/feedback", json=body)

    # --- models, versions, aliases (registry) ------------------------------------------------------------------

    def models(self) -> list[RegisteredModel]:
        """Registered models: version count, latest version and champion."""
        return self._many(RegisteredModel, "models", "registry", "GET", "/v1/models")

    def versions(self, model: str) -> list[ModelVersion]:
        """Versions of ``model``, oldest first, with metrics, lineage, gate numbers and aliases."""
        return self._many(ModelVersion, "versions", "registry", "GET", f"/v1/models/{_segment(model)}/versions")

    def version(self, model: str, version: int) -> ModelVersion:
        """One version of ``model``."""
        path = f"/v1/models/{_segment(model)}/versions/{_segment(version)}"
        return self._one(ModelVersion, "registry", "GET", path)

    def annotate(
        self, model: str, version: int, *, tags: Mapping[str, str | None] | None = None, description: str | None = None
    ) -> ModelVersion:
        """Set tags (``None`` deletes one) and/or replace the description of a version; the version as it is now."""
        body: JSON = {}
        if tags:
            body["tags"] = dict(tags)
        if description is not None:
            body["description"] = description
        path = f"/v1/models/{_segment(model)}/versions/{_segment(version)}"
        return self._one(ModelVersion, "registry", "PATCH", path, json=body)

    def aliases(self, model: str) -> list[Alias]:
        """Every alias of ``model`` and the version it points to."""
        return self._many(Alias, "aliases", "registry", "GET", f"/v1/models/{_segment(model)}/aliases")

    def alias(self, model: str, alias: str) -> Alias:
        """Where ``alias`` (e.g. ``champion``) of ``model`` points, with that version (``model_version``)."""
        return self._one(Alias, "registry", "GET", f"/v1/models/{_segment(model)}/aliases/{_segment(alias)}")

    def set_alias(self, model: str, alias: str, version: int, *, reason: str) -> AliasMove:
        """Move ``alias`` to ``version`` (moving ``champion`` moves what serving answers with)."""
        body = {"version": version, "reason": reason}
        path = f"/v1/models/{_segment(model)}/aliases/{_segment(alias)}"
        return self._one(AliasMove, "registry", "PUT", path, json=body)

    def rollback(self, model: str, *, to: int | None = None, reason: str = "") -> AliasMove:
        """Move the champion back to the previous champion, or to version ``to``."""
        body: JSON = {"reason": reason, **({"to": to} if to is not None else {})}
        return self._one(AliasMove, "registry", "POST", f"/v1/models/{_segment(model)}/rollback", json=body)

    # --- training runs (training, triggers) --------------------------------------------------------------------

    def retrain(self, model: str, *, reason: str = "manual", dataset: str | None = None) -> TrainingRequest:
        """Ask for a retrain of ``model`` now, optionally on a pinned dataset version (``STREAM@vN``)."""
        body: JSON = {"reason": reason, **({"dataset_version_id": dataset} if dataset else {})}
        return self._one(TrainingRequest, "triggers", "POST", f"/v1/models/{_segment(model)}/retrain", json=body)

    def runs(
        self,
        *,
        model: str | None = None,
        state: str | None = None,
        trigger: str | None = None,
        rerun_of: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Training runs, newest first, filtered by model, state, trigger or the run they rerun."""
        filters = {"model": model, "state": state, "trigger": trigger, "rerun_of": rerun_of}
        params: JSON = {"limit": limit, **{k: v for k, v in filters.items() if v}}
        return self._many(Run, "runs", "training", "GET", "/v1/runs", params=params)

    def run(self, run_id: str) -> Run:
        """Everything recorded about a run: params, metrics, trials, artifacts, provenance, resources."""
        return self._one(Run, "training", "GET", f"/v1/runs/{_segment(run_id)}")

    def run_logs(self, run_id: str) -> str:
        """A run's log text (so far, while it runs)."""
        return self._service("training").request("GET", f"/v1/runs/{_segment(run_id)}/logs").text

    def abort_run(self, run_id: str) -> RunAbort:
        """Abort a pending or running run."""
        return self._one(RunAbort, "training", "POST", f"/v1/runs/{_segment(run_id)}/abort")

    def rerun(self, run_id: str, *, reason: str = "rerun") -> Rerun:
        """Re-execute a completed run from its record (same data, features, params, seed)."""
        path = f"/v1/runs/{_segment(run_id)}/rerun"
        return self._one(Rerun, "training", "POST", path, json={"reason": reason})

    # --- the timeline (dashboard) ------------------------------------------------------------------------------

    def timeline(self, model: str) -> list[Cascade]:
        """The causal chain of every cascade of ``model``, newest first: trigger, run, gate, promotion, rollout,
        serving switch, each step with its event id, time and cause."""
        return self._many(Cascade, "cascades", "dashboard", "GET", f"/v1/timeline/{_segment(model)}")


def _read(kind: type[E], service: str, path: str, data: Any) -> E:
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the answer'}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
        )
        raise _unexpected(service, path, f"{problems} (reading a {kind.__name__})") from None


def _unexpected(service: str, path: str, why: str) -> ServiceError:
    # A server this client does not understand (another major version, a proxy's page): 502, like a bad gateway.
    return ServiceError(
        f"{service} answered {path} with JSON this client cannot read: {why}; is the client's driftloop version "
        "the platform's?",
        status_code=502,
        code="unexpected_answer",
    )
