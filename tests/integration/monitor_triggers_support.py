"""Support for the monitor and triggers integration tests: run a service's consumers in threads of the test
process (real broker, registry and database), and read events of one model back from a topic."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from driftloop.bus import EventBus
from driftloop.events import Event
from driftloop.pipeline import PipelineConfig
from driftloop.service import Runtime, ServiceSpec
from driftloop.settings import Settings
from driftloop.topics import Topic


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
    ``run_loops``: run the service's loops too (the monitor's default faust engine is a loop, in its own group)."""
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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
            event = Event.from_avro(record)
            if event.data.get("model") == model:
                events.append(event)
        return events
    finally:
        consumer.close()
