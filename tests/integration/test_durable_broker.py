"""The durable embedded broker (``kafka.embedded_storage = "s3rver"``): ``driftloop up`` starts s3rver (data under
``<home>/broker``) and Tansu on its ``s3://`` engine; after ``down`` and ``up`` the topics, their records and the
groups' committed offsets are still there. Needs the s3rver command (``npm install -g s3rver@3.7.1``, or
``S3RVER_COMMAND`` naming it): skipped without it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, pid_alive
from driftloop.ops.stack import Stack

pytestmark = pytest.mark.integration

S3RVER = os.environ.get("S3RVER_COMMAND") or shutil.which("s3rver")


def read_all(settings: Settings, topic: str, group: str, commit: bool) -> list[bytes]:
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 2000,
            }
        )
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 20
    last = None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value())
            last = msg
            deadline = min(deadline, time.monotonic() + 3)
    if commit and last is not None:
        consumer.commit(message=last, asynchronous=False)
    consumer.close()
    return values


@pytest.mark.skipif(S3RVER is None, reason="s3rver is not installed (npm install -g s3rver@3.7.1)")
def test_topics_records_and_offsets_survive_down_and_up(tmp_path: Path) -> None:
    registry_port = free_port()
    settings = Settings(
        home=tmp_path / "home",
        kafka={
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "session_timeout_ms": 2000,
            "embedded_storage": "s3rver",
            "s3rver_command": S3RVER,
            "s3rver_port": free_port(),
            "partitions": 1,
        },
        schema_registry={"url": f"http://127.0.0.1:{registry_port}"},
        services={"schemaregistry_port": registry_port},
        supervisor={"enabled": False},
    )
    stack = Stack(settings)
    topic = "driftloop.stream.durable-test"
    try:
        components = stack.up(timeout=120, services=())
        assert [c.name for c in components][:2] == ["s3rver", "broker"]
        producer = Producer(settings.kafka_config())
        for i in range(10):
            producer.produce(topic, key=b"k", value=b"v%d" % i)
        assert producer.flush(10) == 0
        assert len(read_all(settings, topic, "durable-group", commit=True)) == 10
        producer.produce(topic, key=b"k", value=b"after-commit")
        assert producer.flush(10) == 0

        stack.down()
        stack.up(timeout=120, services=())
        # The group goes on from its committed offset; a new group reads every record (a rebalance while it reads,
        # with nothing committed, may show some twice).
        assert set(read_all(settings, topic, "durable-group", commit=False)) == {b"after-commit"}
        everything = {b"v%d" % i for i in range(10)} | {b"after-commit"}
        assert set(read_all(settings, topic, "another-group", commit=False)) == everything
        assert (settings.home / "broker" / "tansu").is_dir()
    finally:
        started = stack.components()
        stack.down()
    assert not any(pid_alive(c.pid) for c in started)
