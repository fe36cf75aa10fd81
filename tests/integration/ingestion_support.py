"""An ingestion service in this process for the integration tests: its runtime, HTTP client and Kafka intake
(``ingestion``: a stream with quality rules and small landing batches), and the intake run in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pipeline_support import InProcessService, service_runtime, stream_pipeline, wait_for, write_pipeline

from driftloop.contracts.settings import Settings
from driftloop.services.ingestion.kafka_intake import KafkaIntake
from driftloop.services.ingestion.service import build


@dataclass
class Ingestion(InProcessService):
    intake: KafkaIntake
    stream: str

    @property
    def topic(self) -> str:
        return self.runtime.pipelines[f"model-{self.stream}"].stream.topic


@pytest.fixture
def ingestion(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Ingestion]:
    stream = f"pay-{unique}"
    pipeline = stream_pipeline(
        stream,
        max_future_seconds=3600,
        max_record_bytes=400,
        quality=[
            {"rule": "range", "field": "amount", "min": 0, "max": 10000},
            {"rule": "allowed_values", "field": "category", "values": ["food", "travel"]},
        ],
        dataset={"landing_batch_rows": 25, "landing_batch_seconds": 0.5},
    )
    write_pipeline(tmp_path / "pipelines", "pay", pipeline)
    settings = make_settings(pipelines_dir=tmp_path / "pipelines")
    with service_runtime("ingestion", settings) as runtime:
        spec = build(runtime)
        intake: KafkaIntake = spec.app.state.ingestion["intake"]
        with TestClient(spec.app) as client:
            yield Ingestion(settings, runtime, client, intake, stream)


def start_intake(intake: KafkaIntake) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: intake.assigned, "the ingestion consumer's assignment")
    return thread, stop
