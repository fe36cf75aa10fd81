"""Pipeline configs and in-process services for the integration tests.

- ``stream_pipeline(stream, ...)``: a small pipeline on a transactions-like stream (entity ``customer_id``, event
  time ``event_time``, an ``amount``, label ``is_fraud``); keyword arguments set what a test changes.
- ``demo_pipeline(stream, model, ...)``: the demo pipeline (``pipelines/transactions.yaml``) under other names.
- ``write_pipeline(directory, name, config)``: the config as ``<directory>/<name>.yaml``, loaded back (a bad
  config fails there, not in the service).
- ``service_runtime(name, settings)``: migrated database and a service ``Runtime``; its bus closed at the end.
- ``consuming(runtime, consumer, suffix)``: a service's handlers consuming in a thread under a group of the
  test's own (the broker is shared by the session's tests).
- ``InProcessService``: settings, runtime and HTTP client of a service under test; files subclass it with what
  their tests need.
- ``collect_events(bus, topic, want, count)``: the events a test waits for, read by a consumer group of its own.
- ``wait_for(condition, what)``: poll a condition until it holds; an AssertionError naming ``what`` after a timeout.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Message
from fastapi.testclient import TestClient

from driftloop.clients.db import migrate
from driftloop.contracts.events import Event
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.runtime.bus import EventBus
from driftloop.runtime.service import ConsumerSpec, Runtime, make_runtime

REPO = Path(__file__).resolve().parents[1]
DEMO_PIPELINE = REPO / "pipelines" / "transactions.yaml"

# Fields the small stream may carry between ``amount`` and the label, by name.
OPTIONAL_FIELDS: dict[str, dict[str, Any]] = {
    "age": {"name": "age", "type": "int"},
    "category": {"name": "category", "type": "string"},
}
# A quality rule of the small stream: no negative amount (such records become dead letters out_of_range).
AMOUNT_NOT_NEGATIVE: dict[str, Any] = {"rule": "range", "field": "amount", "min": 0}


def stream_pipeline(
    stream: str,
    *,
    optional_fields: Sequence[str] = ("age", "category"),
    leading_fields: Sequence[dict[str, Any]] = (),
    quality: list[dict[str, Any]] | None = None,
    dataset: dict[str, Any] | None = None,
    features: list[dict[str, Any]] | None = None,
    model: dict[str, Any] | None = None,
    **stream_options: Any,
) -> dict[str, Any]:
    """The pipeline of a small test stream as a dict. ``dataset`` keys are added to ``cut_every_rows: 0`` (tests
    cut versions by hand unless they say otherwise); ``stream_options`` are further stream keys
    (``max_future_seconds``, ``max_record_bytes``...). The model is ``model-<stream>`` unless ``model`` is given.
    ``leading_fields``: fields before ``customer_id`` (an ``id`` of the records, say)."""
    fields = [
        *leading_fields,
        {"name": "customer_id", "type": "string", "nullable": False},
        {"name": "event_time", "type": "timestamp", "nullable": False},
        {"name": "amount", "type": "double", "nullable": False},
        *(OPTIONAL_FIELDS[name] for name in optional_fields),
        {"name": "is_fraud", "type": "int"},
    ]
    config: dict[str, Any] = {
        "stream": {
            "name": stream,
            "fields": fields,
            "entity_key": "customer_id",
            "event_time": "event_time",
            "label": "is_fraud",
            **stream_options,
        },
        "dataset": {"cut_every_rows": 0, **(dataset or {})},
        "features": features if features is not None else [{"name": "amount"}],
        "model": model if model is not None else {"name": f"model-{stream}"},
    }
    if quality is not None:
        config["quality"] = quality
    return config


def demo_pipeline(stream: str, model: str, /, **sections: Any) -> dict[str, Any]:
    """The demo pipeline as a dict, with its stream and model renamed. A section given as a dict updates the
    demo's (``model={"search": {...}}`` adds a search to the demo model); any other value replaces it."""
    config: dict[str, Any] = yaml.safe_load(DEMO_PIPELINE.read_text())
    for key, value in copy.deepcopy(sections).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    config["stream"]["name"] = stream
    config["model"]["name"] = model
    return config


def write_pipeline(directory: Path, name: str, config: dict[str, Any]) -> PipelineConfig:
    """Write ``config`` as ``<directory>/<name>.yaml`` (the folder is created) and load it back."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_pipeline(path)


@contextmanager
def service_runtime(name: str, settings: Settings) -> Iterator[Runtime]:
    """The service ``name``'s runtime on a migrated database; its bus is closed on the way out."""
    migrate(settings.database_url)
    runtime = make_runtime(name, settings)
    try:
        yield runtime
    finally:
        runtime.bus.close()


@contextmanager
def consuming(runtime: Runtime, consumer: ConsumerSpec, suffix: str, join_timeout: float = 30) -> Iterator[None]:
    """``consumer``'s handlers consuming in a thread under the group ``<its group>-<suffix>`` until the block
    ends; then the bus's stop event is set and the thread joined."""
    worker = threading.Thread(
        target=runtime.bus.run_consumer, args=(f"{consumer.group}-{suffix}", consumer.handlers), daemon=True
    )
    worker.start()
    try:
        yield
    finally:
        runtime.bus.stop_event.set()
        worker.join(timeout=join_timeout)


@dataclass
class InProcessService:
    """A service under test in this process: its settings, runtime and a client of its HTTP app."""

    settings: Settings
    runtime: Runtime
    client: TestClient


def collect_events(
    bus: EventBus,
    topic: str,
    want: Callable[[Event], bool],
    count: int = 1,
    *,
    group: str | None = None,
    timeout: float = 60,
    linger: float = 0,
) -> list[Event]:
    """The events on ``topic`` that ``want`` accepts, once there are ``count`` of them, read from the start of the
    topic by ``group`` (a new one unless given). ``linger``: seconds to read on after that, so that a duplicate
    would show. An AssertionError after ``timeout`` seconds with fewer."""
    consumer = Consumer(bus.consumer_config(group or f"test-reader-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    found: list[Event] = []

    def take(msg: Message | None) -> None:
        if msg is not None and not msg.error():
            event = Event.from_avro(bus.codec.decode(msg.value())[1])
            if want(event):
                found.append(event)

    try:
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} event(s) on {topic} after {timeout:.0f}s")
            take(consumer.poll(0.5))
        end = time.monotonic() + linger
        while time.monotonic() < end:
            take(consumer.poll(0.3))
    finally:
        consumer.close()
    return found


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    """Poll ``condition`` until it gives a true value, and return that value; an AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
