"""Support for the monitor and triggers integration tests: run a service's consumers in threads of the test
process (real broker, registry and database), and read events of one model back from a topic; the demo pipeline
under other names; the triggers service under test with the events its tests publish."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from fastapi.testclient import TestClient
from pipeline_support import wait_for

from driftloop.clients.db import migrate
from driftloop.contracts.events import Event, new_event, payload_type
from driftloop.contracts.payloads import DriftDetected, FeaturesMaterialized, FeatureTest, ModelPromoted
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import TRAINING_REQUESTED, Topic
from driftloop.runtime.bus import EventBus
from driftloop.runtime.service import Runtime, ServiceSpec
from driftloop.services.monitor.service import build as build_monitor

__all__ = ["wait_for"]  # re-exported: the tests of this folder take it from here

PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"
DEMO = load_pipeline(PIPELINES_DIR / "transactions.yaml")


@dataclass
class RunningService:
    runtime: Runtime
    spec: ServiceSpec
    threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> None:
        self.runtime.bus.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
        self.runtime.bus.close()


def start_service(
    name: str,
    settings: Settings,
    pipelines: dict[str, PipelineConfig],
    build: Callable[[Runtime], ServiceSpec],
    group_suffix: str,
    run_loops: bool = False,
) -> RunningService:
    """Build the service and run its consumers in threads; a group suffix keeps tests sharing a broker apart.
    ``run_loops``: run the service's loops too (the monitor's faust engine is a loop, in its own group)."""
    runtime = Runtime(name=name, settings=settings, pipelines=pipelines, bus=EventBus(settings, producer_name=name))
    spec = build(runtime)
    running = RunningService(runtime, spec)
    for consumer in spec.consumers:
        thread = threading.Thread(
            target=runtime.bus.run_consumer,
            args=(f"{consumer.group}-{group_suffix}", consumer.handlers),
            daemon=True,
        )
        thread.start()
        running.threads.append(thread)
    for loop in spec.loops if run_loops else []:
        thread = threading.Thread(target=loop, args=(runtime.bus.stop_event,), daemon=True)
        thread.start()
        running.threads.append(thread)
    return running


def read_events(settings: Settings, bus: EventBus, topic: Topic, model: str) -> list[Event]:
    """Every event of ``model`` on ``topic`` now, read from the beginning to the end of each partition."""
    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False, "enable.partition.eof": True}
        )
    )
    try:
        metadata = consumer.list_topics(topic.name, timeout=10)
        partitions = [TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in metadata.topics[topic.name].partitions]
        consumer.assign(partitions)
        at_end: set[int] = set()
        events: list[Event] = []
        deadline = time.monotonic() + 30
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            _, record = bus.codec.decode(msg.value())
            event = Event.from_avro(record, payload_type(topic.event_type))
            if getattr(event.payload, "model", None) == model:
                events.append(event)
        return events
    finally:
        consumer.close()


def demo_config(stream: str, model: str, **updates: Any) -> PipelineConfig:
    """The demo pipeline with its stream and model renamed; ``updates`` replace further sections."""
    return DEMO.model_copy(
        update={
            "stream": DEMO.stream.model_copy(update={"name": stream}),
            "model": DEMO.model.model_copy(update={"name": model}),
            **updates,
        }
    )


def broker_settings(home: Path, bootstrap_servers: str, schema_registry_url: str) -> Settings:
    """Settings of a service under test on the session's broker; a short session timeout keeps rebalances quick."""
    return Settings(
        home=home,
        pipelines_dir=PIPELINES_DIR,
        kafka={"bootstrap_servers": bootstrap_servers, "session_timeout_ms": 2000},
        schema_registry={"url": schema_registry_url},
    )


def features_materialized(cfg: PipelineConfig, version: int) -> Event:
    """``FeaturesMaterialized`` of version ``version`` of ``cfg``'s stream."""
    stream = cfg.stream.name
    payload = FeaturesMaterialized(
        stream=stream,
        dataset_version_id=f"{stream}@v{version}",
        feature_set_uri=f"file:///objects/features/{stream}/v{version:06d}/",
        feature_names=cfg.feature_names,
        row_count=3000,
        online_entities=120,
    )
    return new_event(payload, producer="test-features")


def champion_promoted(cfg: PipelineConfig, version: int = 1) -> Event:
    """``ModelPromoted``: version ``version`` of ``cfg``'s model the champion, trained on the stream's v1."""
    payload = ModelPromoted(
        model=cfg.model.name,
        version=version,
        alias="champion",
        previous_version=None,
        artifact_uri="file:///objects/model.zip",
        artifact_sha256="0" * 64,
        dataset_version_id=f"{cfg.stream.name}@v1",
        feature_set_uri=f"file:///objects/features/{cfg.stream.name}/v000001/",
        reason="first version",
        gate_json="{}",
    )
    return new_event(payload, producer="test-registry")


class TriggersUnderTest:
    """The triggers service running in this process, a producer of the events its tests publish, and reads of its
    HTTP API and of ``TrainingRequested`` by pipeline role."""

    def __init__(
        self, running: RunningService, producer: EventBus, settings: Settings, pipelines: dict[str, PipelineConfig]
    ) -> None:
        self.running = running
        self.client = TestClient(running.spec.app)
        self.producer = producer
        self.settings = settings
        self.pipelines = pipelines

    def publish(self, event: Event) -> Event:
        self.producer.publish(event)
        return event

    def model(self, role: str) -> str:
        return self.pipelines[role].model.name

    def state(self, role: str) -> dict[str, Any]:
        return self.client.get(f"/v1/models/{self.model(role)}/trigger-state").json()

    def requests(self, role: str) -> list[dict[str, Any]]:
        return self.client.get(f"/v1/models/{self.model(role)}/requests").json()["requests"]

    def training_requested(self, role: str) -> list[Event]:
        return read_events(self.settings, self.producer, TRAINING_REQUESTED, self.model(role))


@contextmanager
def running_triggers(
    settings: Settings,
    pipelines: dict[str, PipelineConfig],
    build: Callable[[Runtime], ServiceSpec],
    suffix: str,
    kind: type[TriggersUnderTest] = TriggersUnderTest,
) -> Iterator[Any]:
    """The triggers service (``build``) on a migrated database with ``pipelines`` by role, as a ``kind``."""
    migrate(settings.database_url)
    running = start_service("triggers", settings, {p.model.name: p for p in pipelines.values()}, build, suffix)
    producer = EventBus(settings, producer_name="test")
    try:
        yield kind(running, producer, settings, pipelines)
    finally:
        producer.close()
        running.stop()


# The monitor service under test: windows of WINDOW predictions, the demo pipeline under names of its own.
WINDOW = 200


@pytest.fixture
def monitor(make_settings: Callable[..., Settings], unique: str) -> Iterator[tuple[RunningService, PipelineConfig]]:
    settings = make_settings()
    migrate(settings.database_url)
    pipeline = DEMO.model_copy(
        update={
            "stream": DEMO.stream.model_copy(update={"name": f"tx-{unique}"}),
            "model": DEMO.model.model_copy(update={"name": f"fraud-{unique}"}),
            "monitor": DEMO.monitor.model_copy(update={"window_size": WINDOW, "reference_rows": 1000}),
        }
    )
    running = start_service("monitor", settings, {pipeline.model.name: pipeline}, build_monitor, unique, run_loops=True)
    yield running, pipeline
    running.stop()


def drift(cfg: PipelineConfig, window: int) -> Event:
    """A DriftDetected about v1 of ``cfg``'s model: window ``window``, ``amount`` drifted."""
    payload = DriftDetected(
        model=cfg.model.name,
        version=1,
        reference_dataset_version_id=f"{cfg.stream.name}@v1",
        window_size=400,
        window_index=window,
        alpha=0.01,
        correction="bonferroni",
        drifted_features=["amount"],
        tests=[
            FeatureTest(feature="amount", test="ks", statistic=0.4, p_value=1e-9, adjusted_p_value=5e-9, drifted=True)
        ],
    )
    return new_event(payload, producer="test-monitor")
