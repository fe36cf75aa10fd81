"""The monitor's faust-streaming engine (``monitor.stream_engine = "faust"``): one faust agent consumes the
monitor's topics and hands each event to the same handlers as the bus consumer.

faust is the stream processor here, not the state store: on the embedded broker a faust Table is not restored
correctly after a restart, so the windows stay in the database (see ``handlers.py``), keyed by event id. faust
commits offsets after the agent acknowledges an event; what a crash redelivers is recognised by its event id.
The app runs in a thread with its own event loop (``app.start()``, not the faust Worker, which wants the main
thread's signals); the blocking handlers run in an executor so heartbeats keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import faust

from driftloop.bus import EventBus, ensure_topics
from driftloop.events import Event
from driftloop.topics import Topic

log = logging.getLogger(__name__)


class FaustEngine:
    """Run ``handlers`` (by topic) as one faust agent of consumer group ``group`` until the stop event is set."""

    def __init__(self, bus: EventBus, group: str, handlers: dict[Topic, Callable[[Event], None]]) -> None:
        self.bus = bus
        self.group = group
        self.handlers = {topic.name: handler for topic, handler in handlers.items()}
        self.started = threading.Event()
        self.handled = 0
        self.failed = 0
        self.last_error: str | None = None

    def _app(self, loop: asyncio.AbstractEventLoop) -> faust.App:
        settings = self.bus.settings
        datadir = settings.home / "faust" / self.group
        # faust creates only the last level of its data folder.
        datadir.parent.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            self.group,
            broker=[f"kafka://{server}" for server in settings.kafka.bootstrap_servers.split(",")],
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            autodiscover=False,
            # No leader topic, no tables: nothing of faust's own must survive a restart.
            topic_disable_leader=True,
            broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(0.5, settings.kafka.session_timeout_ms / 4000),
            consumer_auto_offset_reset="earliest",
            datadir=str(datadir),
            loop=loop,
        )
        topic = app.topic(*self.handlers, key_serializer="raw", value_serializer="raw")

        @app.agent(topic, name=f"{self.group}-agent")
        async def monitor_agent(stream: faust.StreamT) -> None:
            async for record in stream.events():
                await loop.run_in_executor(None, self._handle, record.message.topic, record.value)

        return app

    def _handle(self, topic: str, value: bytes) -> None:
        """Decode and handle one record like the bus consumer: once per event id, failures logged, never fatal."""
        try:
            _, avro = self.bus.codec.decode(value)
            event = Event.from_avro(avro)
        except Exception as exc:  # an undecodable record is skipped, as on the bus
            self.failed += 1
            self.last_error = f"undecodable record on {topic}: {exc}"
            log.error("monitor (faust): %s", self.last_error)
            return
        if self.bus.already_processed(self.group, event.id):
            return
        try:
            self.handlers[topic](event)
        except Exception as exc:
            self.failed += 1
            self.last_error = f"{event.type} {event.id}: {exc!r}"
            log.exception("monitor (faust): handler failed on %s %s", event.type, event.id)
            return
        self.bus.mark_processed(self.group, event.id)
        self.handled += 1

    def run(self, stop: threading.Event) -> None:
        """A service loop: start the faust app in this thread's own event loop, stop it when ``stop`` is set."""
        ensure_topics(self.bus.settings, list(self.handlers))
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = self._app(loop)

        async def main() -> None:
            await app.start()
            self.started.set()
            log.info("monitor (faust): agent of group %s consuming %s", self.group, sorted(self.handlers))
            while not stop.is_set():
                await asyncio.sleep(0.2)
            await app.stop()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
