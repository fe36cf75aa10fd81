"""``driftloop pipeline apply | remove``: put a pipeline file into ``pipelines_dir`` after checking it, and prepare
the bus for its stream (topic created, value schema registered under its subject).

Checks before anything is written: the file parses (errors name the file and line); its stream and model names do
not collide with another pipeline's; a changed stream's schema is compatible with the versions registered under its
subject (the registry's own check, at the subject's level), so producers already writing keep landing.

With the stack running, the change is announced on the bus (``PipelineApplied`` on the compacted
``driftloop.pipelines.applied`` topic, keyed by model): every running service takes it at once
(``driftloop.runtime.pipelines``); a service started later reads ``pipelines_dir``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError, ConflictError, NotFoundError


@dataclass
class Applied:
    """What ``apply_pipeline`` did."""

    model: str
    stream: str
    path: Path
    change: str  # "created", "changed" or "unchanged"
    bus: list[str] = field(default_factory=list)  # what was done on the broker and registry


def pipeline_files(directory: Path) -> dict[str, Path]:
    """The file of each model in ``directory``."""
    files: dict[str, Path] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):  # the files load_pipelines reads
        files[load_pipeline(path).model.name] = path
    return files


def check_against(cfg: PipelineConfig, existing: dict[str, PipelineConfig]) -> None:
    """Refuse a pipeline whose stream is another model's stream (one stream, one model)."""
    for model, other in existing.items():
        if model != cfg.model.name and other.stream.name == cfg.stream.name:
            raise ConflictError(
                f"stream {cfg.stream.name!r} is already the stream of model {model!r}: one stream feeds one model; "
                "name the stream differently or change that model's file"
            )


def schema_problems(settings: Settings, cfg: PipelineConfig) -> list[str]:
    """Why the registry would refuse the stream's schema under its subject (empty: compatible, or a new subject)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from driftloop.clients.credentials import schema_registry_client_config

    registry = SchemaRegistryClient(schema_registry_client_config(settings))
    try:
        compatible = registry.test_compatibility(
            cfg.stream.subject, Schema(json.dumps(cfg.stream.avro_schema()), "AVRO")
        )
    except SchemaRegistryError as exc:
        if getattr(exc, "http_status_code", None) == 404:  # no version registered yet
            return []
        raise
    return [] if compatible else [f"the schema of stream {cfg.stream.name} is not compatible with {cfg.stream.subject}"]


def apply_pipeline(settings: Settings, file: Path, *, bus: bool) -> Applied:
    """Check ``file`` and store it in ``pipelines_dir`` (as ``<model>.yaml``, or over the model's existing file);
    with ``bus``, also create the stream's topic and register its schema (the broker and registry must answer)."""
    from driftloop.contracts.pipeline import load_pipelines

    cfg = load_pipeline(file)
    directory = settings.pipelines_dir
    existing = load_pipelines(directory) if Path(directory).is_dir() else {}
    check_against(cfg, existing)
    if bus:
        problems = schema_problems(settings, cfg)
        if problems:
            raise ConflictError("; ".join(problems) + ": producers writing the registered schema would be refused")
    target = pipeline_files(directory).get(cfg.model.name) or Path(directory) / f"{cfg.model.name}.yaml"
    before = existing.get(cfg.model.name)
    change = "created" if before is None else ("unchanged" if before == cfg else "changed")
    text = Path(file).read_text()
    if Path(file).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, target)
    applied = Applied(cfg.model.name, cfg.stream.name, target, change)
    if bus:
        from driftloop.ops.stack import register_stream_schemas
        from driftloop.runtime.bus import EventBus, ensure_topics

        ensure_topics(settings, [cfg.stream.topic])
        applied.bus.append(f"topic {cfg.stream.topic}")
        event_bus = EventBus(settings, producer_name="driftloop-cli")
        try:
            problems = register_stream_schemas(event_bus, [cfg])
        finally:
            event_bus.close()
        if problems:
            raise ConflictError("; ".join(problems))
        applied.bus.append(f"schema under {cfg.stream.subject}")
        announce(settings, model=cfg.model.name, stream=cfg.stream.name, document=text)
        applied.bus.append("running services told")
    return applied


def announce(settings: Settings, *, model: str, stream: str, document: str | None) -> None:
    """Publish the ``PipelineApplied`` of ``model`` (``document`` None: removed) and wait for the broker to have
    it; running services take it from there."""
    from driftloop.contracts.events import new_event
    from driftloop.contracts.payloads import PipelineApplied
    from driftloop.contracts.topics import PIPELINE_APPLIED
    from driftloop.runtime.bus import EventBus, ensure_topics
    from driftloop.runtime.pipelines import document_sha256

    ensure_topics(settings, [PIPELINE_APPLIED.name])
    payload = PipelineApplied(
        model=model,
        stream=stream,
        document=document or "",
        sha256=document_sha256(document) if document is not None else "",
        removed=document is None,
    )
    event_bus = EventBus(settings, producer_name="driftloop-cli")
    try:
        event_bus.publish(new_event(payload, producer="driftloop-cli"))
    finally:
        event_bus.close()


def remove_pipeline(settings: Settings, model: str, *, served_version: int | None, force: bool, bus: bool) -> Path:
    """Delete ``model``'s pipeline file; refused while serving answers with a version of it, unless ``force``.
    With ``bus``, running services are told (they drop the model at once)."""
    path = pipeline_files(settings.pipelines_dir).get(model)
    if path is None:
        raise NotFoundError(f"no pipeline file of model {model!r} in {settings.pipelines_dir}")
    if served_version is not None and not force:
        raise ConflictError(
            f"model {model!r} is served (v{served_version}): its clients would get 404s once it is removed; "
            "remove it with --force if that is what you want"
        )
    if len(pipeline_files(settings.pipelines_dir)) == 1:
        raise ConfigError(f"{path} is the last pipeline: the services need at least one")
    stream = load_pipeline(path).stream.name
    path.unlink()
    if bus:
        announce(settings, model=model, stream=stream, document=None)
    return path
