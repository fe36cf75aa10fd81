"""The Kafka settings reach every client: SASL/SCRAM and SSL properties in every librdkafka config (bus producer and
consumers, ingestion intake, admin), faust's broker credentials, and the topic configs topics are created with.
(No broker runs with SASL here: this checks the plumbing, not a handshake.)"""

from __future__ import annotations

import threading
from typing import Any

import faust
import pytest

from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError
from driftloop.runtime.bus import EventBus, faust_broker_options, topic_config
from driftloop.runtime.pipelines import PipelineCatalog, follow

SASL = {
    "bootstrap_servers": "k1:9093,k2:9093",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "driftloop-serving",
    "sasl_password": "s3cret-pass-word",
    "ssl_ca_location": "/etc/kafka/ca.pem",
}


def test_plaintext_adds_nothing() -> None:
    config = Settings().kafka_config(**{"group.id": "g"})
    # No security properties; client telemetry is off for every client (see ``Settings.kafka_config``).
    assert config == {"bootstrap.servers": "127.0.0.1:9092", "enable.metrics.push": False, "group.id": "g"}


def test_sasl_scram_reaches_producer_consumer_and_admin_configs(tmp_path) -> None:
    settings = Settings(home=tmp_path, kafka=SASL)
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "driftloop-serving",
        "sasl.password": "s3cret-pass-word",
        "ssl.ca.location": "/etc/kafka/ca.pem",
    }
    assert expected.items() <= settings.kafka_config().items()
    # The bus's consumers (and the ingestion intake, which uses bus.consumer_config) get them too.
    bus = EventBus.__new__(EventBus)
    bus.settings = settings
    consumer = bus.consumer_config("driftloop-ingestion")
    assert expected.items() <= consumer.items() and consumer["group.id"] == "driftloop-ingestion"
    # client_config still wins for anything librdkafka knows that has no setting of its own.
    tuned = Settings(home=tmp_path, kafka={**SASL, "client_config": {"sasl.mechanism": "PLAIN"}})
    assert tuned.kafka_config()["sasl.mechanism"] == "PLAIN"


def test_sasl_without_a_user_is_a_readable_error() -> None:
    settings = Settings(kafka={"security_protocol": "SASL_PLAINTEXT"})
    with pytest.raises(ConfigError, match="sasl_username"):
        settings.kafka_config()


def test_the_password_is_a_secret_in_the_settings() -> None:
    settings = Settings(kafka=SASL)
    assert "s3cret-pass-word" not in repr(settings.kafka)


def test_faust_workers_get_the_same_credentials() -> None:
    options = faust_broker_options(Settings(kafka={**SASL, "ssl_ca_location": ""}))  # the system's CAs
    assert options["broker"] == ["kafka://k1:9093", "kafka://k2:9093"]
    credentials = options["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "driftloop-serving" and credentials.password == "s3cret-pass-word"
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512" and credentials.ssl_context is not None
    assert "broker_credentials" not in faust_broker_options(Settings())


def test_topics_are_created_with_explicit_retention_or_compaction() -> None:
    settings = Settings(kafka={"event_retention_hours": 24, "stream_retention_hours": 0})
    assert topic_config(settings, "driftloop.models.promoted") == {"cleanup.policy": "compact"}
    assert topic_config(settings, "driftloop.training.requested") == {
        "cleanup.policy": "delete",
        "retention.ms": str(24 * 3_600_000),
    }
    assert topic_config(settings, "driftloop.stream.transactions") == {"cleanup.policy": "delete", "retention.ms": "-1"}


def test_a_prompt_consumer_lets_the_broker_hold_its_fetches_less_long(tmp_path) -> None:
    bus = EventBus.__new__(EventBus)
    bus.settings = Settings(home=tmp_path, kafka={"prompt_fetch_wait_ms": 300})
    assert bus.consumer_config("g")["fetch.wait.max.ms"] == Settings().kafka.fetch_wait_max_ms
    assert bus.consumer_config("g", prompt=True)["fetch.wait.max.ms"] == 300
    assert Settings().kafka.prompt_fetch_wait_ms < Settings().kafka.fetch_wait_max_ms


def test_the_pipeline_follower_lets_the_broker_hold_its_fetches_longest(tmp_path) -> None:
    """Every process has a follower and pipelines change rarely: its fetches are held ``follower_fetch_wait_ms``."""
    bus = EventBus.__new__(EventBus)
    bus.settings = Settings(home=tmp_path, kafka={"follower_fetch_wait_ms": 7000})
    calls: list[dict[str, Any]] = []
    bus.run_consumer = lambda group, handlers, **kwargs: calls.append(kwargs)  # type: ignore[method-assign]
    follow(PipelineCatalog({}), bus, "svc")(threading.Event())
    assert calls[0]["broadcast"] is True and calls[0]["fetch_wait_ms"] == 7000
    assert bus.consumer_config("g", prompt=True, fetch_wait_ms=7000)["fetch.wait.max.ms"] == 7000
    assert Settings().kafka.follower_fetch_wait_ms > Settings().kafka.fetch_wait_max_ms


def test_consumers_rest_on_the_embedded_broker_only_unless_told() -> None:
    assert Settings().kafka.consumers_rest_after == 60.0
    assert Settings(kafka={"embedded": False}).kafka.consumers_rest_after == 0.0
    assert Settings(kafka={"embedded": False, "rest_after_seconds": 30}).kafka.consumers_rest_after == 30.0
    assert Settings(kafka={"rest_after_seconds": 0}).kafka.consumers_rest_after == 0.0
