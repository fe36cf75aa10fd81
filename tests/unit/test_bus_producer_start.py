"""A service connects its bus's producer at start (``EventBus.connect_producer``), so that the first event it
publishes on a cascade's path does not wait for a connection and a producer id; a broker that does not answer yet
leaves that to the first publish instead of failing the start."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from driftloop.contracts.settings import Settings
from driftloop.runtime.bus import EventBus


def test_a_broker_not_answering_leaves_the_connection_to_the_first_publish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    bus = EventBus(Settings(home=tmp_path, kafka={"bootstrap_servers": f"127.0.0.1:{port}"}), producer_name="test")
    try:
        with caplog.at_level(logging.INFO, logger="driftloop.runtime.bus"):
            bus.connect_producer(timeout=0.3)
        assert "producer not connected at start" in caplog.text
        assert bus._producer is not None  # made, and trying its broker in the background
    finally:
        bus.close()
