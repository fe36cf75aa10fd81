"""The monitor's stream engine: one faust-streaming agent consumes the monitor's topics and hands each event to
the handlers (``handlers.py``), once per event id, like the platform's bus consumers.

faust is the stream processor here, not the state store: on the embedded broker a faust Table is not restored
correctly after a restart, so the windows stay in the database (see ``handlers.py``), keyed by event id. faust
commits offsets after the agent acknowledges an event (within a quarter second, so a crash redelivers little);
what a crash redelivers is recognised by its event id. The app runs in a thread with its own event loop
(``app.start()``, not the faust Worker, which wants the main thread's signals); the blocking handlers run in an
executor so heartbeats keep flowing.

Why the agent used to "stop fetching" on the embedded broker, and what keeps it from happening again:

- Tansu keeps a consumer group's assignment protocol after every member has left (Apache Kafka resets an empty
  group). A faust member (assignor ``faust``) joining a group last used by a confluent-kafka consumer (``range``,
  ``roundrobin``) gets ``InconsistentGroupProtocolError`` -- reproduced every time: a bus consumer, then faust, in
  the same group. aiokafka treats it as fatal and parks the error for the next ``getmany``, but faust only calls
  ``getmany`` for assigned partitions and there are none: the app looks started and never consumes. That is what
  happened when the monitor had a second, confluent-kafka engine sharing its group. Hence the group of its own,
  ``driftloop-monitor-faust``, used by nothing else.
- Nothing watched the app: after a refused join ``app.start()`` never returns (the process stays up, never ready,
  and never says why); a faust service that crashed later left an agent that consumed nothing while ready. Now
  the engine is a consumer like the bus ones (``/healthz`` ``consumers``: ``assigned`` only while partitions are
  assigned; ``driftloop_events_consumed_total``, ``driftloop_consumer_lag``), and a supervisor replaces the app
  (new consumer, new join, resume at the committed offsets) when it crashed or holds no assignment for
  ``join_timeout`` seconds, with the reason in ``last_error`` (and the aiokafka error when there is one).
- The restart test published predictions before the champion's promotion was handled; topics have no order
  between them, so the engine could handle predictions first and skip them (no champion watched yet): the test
  then waited for predictions that looked "not fetched". The test now waits for the champion first.

Measured (2 cores, shared with other test runs): the refusal above in every try (a bus consumer, then faust, same
group; ``test_faust_engine_refused_...`` checks it is now reported and survived); the kill -9 restart test, 11
runs: 10 green, 1 failed because ``handlers.py`` was edited under the running test; a harness killing (-9) or
stopping this engine mid-stream and restarting it, 47 cycles, no record lost; a kill -9 redelivers ~40 records
(~300 with faust's default 2.8 s commit interval); ``bench/monitor_engine_restart.py`` measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import faust

from driftloop.clients.retry import Backoff
from driftloop.contracts.events import Event
from driftloop.contracts.payloads import Payload
from driftloop.contracts.topics import Topic
from driftloop.runtime.bus import (
    ConsumerStatus,
    EventBus,
    calm_faust_fetcher,
    ensure_topics,
    faust_broker_options,
    heartbeat_interval_ms,
)
from driftloop.runtime.metrics import CONSUMER_COMMITTED_OFFSET, CONSUMER_LAG, EVENT_HANDLE_SECONDS, EVENTS_CONSUMED

log = logging.getLogger(__name__)

# How often a started app is checked (stop asked, crashed, assignment held); this bounds how late those are seen.
WATCH_SECONDS = 1.0
# The longest wait before a replaced app is started again (the wait doubles from 1 s, with jitter).
MAX_RESTART_DELAY = 30.0
# The longest wait for a faust app to stop (its consumer leaves the group, offsets are committed).
STOP_TIMEOUT = 30.0
# What ``_run_app`` returns when the app stopped because its process rests (not a failure).
RESTS = "the process rests"


class FaustEngine:
    """Run ``handlers`` (by topic) as one faust agent of consumer group ``group`` until the stop event is set.

    ``join_timeout``: seconds without an assignment after which the app is replaced (default: ten session
    timeouts, at least 30 s; a join on the embedded broker waits half a session timeout)."""

    def __init__(
        self,
        bus: EventBus,
        group: str,
        handlers: dict[Topic, Callable[[Event], None]],
        join_timeout: float | None = None,
    ) -> None:
        self.bus = bus
        self.group = group
        self.handlers = {topic.name: handler for topic, handler in handlers.items()}
        session_timeout = bus.settings.kafka.session_timeout_ms / 1000
        self.join_timeout = join_timeout if join_timeout is not None else max(30.0, 10 * session_timeout)
        # Set while a started app is running (cleared while it is being replaced).
        self.started = threading.Event()
        self.restarts = 0
        # Shown on /healthz with the bus consumers; ``assigned`` is true while partitions are assigned.
        self.status = ConsumerStatus(group=group, topics=sorted(self.handlers))
        bus.consumers.append(self.status)
        self._assigned: set[tuple[str, int]] = set()
        self._unassigned_since = time.monotonic()
        self._restart_backoff = Backoff(first_delay=1.0, max_delay=MAX_RESTART_DELAY)

    @property
    def handled(self) -> int:
        return self.status.handled

    @property
    def failed(self) -> int:
        return self.status.failed

    @property
    def last_error(self) -> str | None:
        return self.status.last_error

    def _app(self, loop: asyncio.AbstractEventLoop) -> faust.App:
        settings = self.bus.settings
        datadir = settings.home / "faust" / self.group
        # faust creates only the last level of its data folder.
        datadir.parent.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            self.group,
            **faust_broker_options(settings),  # brokers and their authentication (kafka.* settings)
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            autodiscover=False,
            # No leader topic, no tables: nothing of faust's own must survive a restart.
            topic_disable_leader=True,
            broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=heartbeat_interval_ms(settings) / 1000,
            # Commit as soon as events are acknowledged (faust checks the count when the next record is fetched, the
            # interval covers a stream at rest): a crash redelivers little, and redeliveries are skipped by event id.
            # The interval's timer (and a livelock check at 2.5 times it) wakes the idle app: at 0.25 s that was
            # a fifth of its CPU at rest.
            broker_commit_every=1,
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            datadir=str(datadir),
            loop=loop,
        )
        topic = app.topic(*self.handlers, key_serializer="raw", value_serializer="raw")

        @app.agent(topic, name=f"{self.group}-agent")
        async def monitor_agent(stream: faust.StreamT) -> None:
            async for record in stream.events():
                message = record.message
                await loop.run_in_executor(None, self._handle, message.topic, record.value)
                self._handled_offset(app, message.tp, message.offset)

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's signal type has no place for the set
        async def on_revoked(_app: faust.App, revoked: set[Any], **_: Any) -> None:
            self._assigned.difference_update((tp.topic, tp.partition) for tp in revoked)
            for tp in revoked:
                for gauge in (CONSUMER_LAG, CONSUMER_COMMITTED_OFFSET):
                    with contextlib.suppress(KeyError):
                        gauge.remove(self.group, tp.topic, str(tp.partition))
            # A rebalance: no partitions until the next assignment.
            self.status.assigned = False
            self._unassigned_since = time.monotonic()

        @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # as above
        async def on_assigned(_app: faust.App, assigned: set[Any], **_: Any) -> None:
            self._assigned = {(tp.topic, tp.partition) for tp in assigned}
            self.status.assigned = True
            self.status.extra["resting"] = False
            log.info("monitor (faust): group %s assigned %d partitions", self.group, len(assigned))

        calm_faust_fetcher(app)
        return app

    def _handle(self, topic: str, value: bytes) -> None:
        """Decode and handle one record like the bus consumer: once per event id, failures logged, never fatal."""
        self.bus.note_activity()  # an event taken: the process (and this app) stays awake
        status = self.status
        try:
            _, avro = self.bus.codec.decode(value)
            event: Event[Payload] = Event.from_avro(avro)
        except Exception as exc:  # an undecodable record is skipped, as on the bus
            EVENTS_CONSUMED.labels(self.group, topic, "", "undecodable").inc()
            status.failed += 1
            status.last_error = f"undecodable record on {topic}: {exc}"
            log.error("monitor (faust): %s", status.last_error)
            return
        if self.bus.already_processed(self.group, event.id):
            EVENTS_CONSUMED.labels(self.group, topic, event.type, "duplicate").inc()
            return
        started = time.perf_counter()
        try:
            self.handlers[topic](event)
        except Exception as exc:
            EVENTS_CONSUMED.labels(self.group, topic, event.type, "failed").inc()
            status.failed += 1
            status.last_error = f"{event.type} {event.id}: {exc!r}"
            log.exception("monitor (faust): handler failed on %s %s", event.type, event.id)
            return
        EVENT_HANDLE_SECONDS.labels(self.group, event.type).observe(time.perf_counter() - started)
        self.bus.mark_processed(self.group, event.id)
        EVENTS_CONSUMED.labels(self.group, topic, event.type, "handled").inc()
        status.handled += 1

    def _handled_offset(self, app: faust.App, tp: Any, offset: int) -> None:
        """Consumer lag after a handled record: the high watermark carried by fetched records (aiokafka's
        ``highwater``, right on Tansu unlike a queried one) minus the next offset (faust commits it right after)."""
        if (tp.topic, tp.partition) not in self._assigned:
            return  # revoked meanwhile
        labels = (self.group, tp.topic, str(tp.partition))
        CONSUMER_COMMITTED_OFFSET.labels(*labels).set(offset + 1)
        try:
            high = app.consumer.highwater(tp)
        except Exception:  # no fetch position known: no lag to show
            return
        if high is not None and high >= 0:
            CONSUMER_LAG.labels(*labels).set(max(0, high - offset - 1))

    def run(self, stop: threading.Event) -> None:
        """A service loop: run a faust app until ``stop`` is set, replacing it when it crashed or cannot join.

        The app rests with its process (``kafka.rest_after_seconds``): a faust app at rest still wakes several
        times a second (its sensor, thread keepalives, fetches, heartbeats), so it stops once the process has taken
        and published nothing for that long, and a new one starts when the process wakes (the doorbell rung by the
        process that publishes next, e.g. serving's first logged predictions). Offsets are committed: it carries on
        where it stopped. Resting counts as ready on ``/healthz`` until the new app is assigned."""
        ensure_topics(self.bus.settings, list(self.handlers))
        while not stop.is_set():
            reason = self._run_app(stop)
            if reason is None:
                return
            if reason == RESTS:
                self._rest(stop)
                continue
            self.status.extra["resting"] = False
            self.restarts += 1
            self.status.last_error = reason
            delay = self._restart_backoff.next_delay()
            log.error("monitor (faust): %s; a new faust app starts in %.1f s", reason, delay)
            stop.wait(delay)

    def _rest(self, stop: threading.Event) -> None:
        """Wait, the app stopped, until the process wakes; resting (ready) until the next app is assigned."""
        self.status.extra["resting"] = True
        log.info("monitor (faust): group %s rests with its process until it wakes", self.group)
        while not stop.is_set() and self.bus.resting():
            stop.wait(WATCH_SECONDS)
        if not stop.is_set():
            log.info("monitor (faust): its process woke; group %s starts again", self.group)

    def _run_app(self, stop: threading.Event) -> str | None:
        """Run one faust app in a new event loop until ``stop`` (None), its process rests (``RESTS``) or it must be
        replaced (why)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = self._app(loop)
        self.status.assigned = False
        self._assigned = set()

        async def main() -> str | None:
            self._unassigned_since = time.monotonic()
            # start() returns only once partitions are assigned: a refused join would block it for ever.
            starting = asyncio.ensure_future(app.start())
            try:
                while not stop.is_set():
                    # Short while starting (readiness follows it); then only a stop or a crash is waited for.
                    await asyncio.sleep(WATCH_SECONDS if self.started.is_set() else 0.2)
                    if starting.done() and not self.started.is_set():
                        starting.result()  # a failed start raises here
                        self.started.set()
                        log.info("monitor (faust): agent of group %s consuming %s", self.group, sorted(self.handlers))
                    if app.crashed:
                        return f"the faust app crashed: {app.crash_reason!r}"
                    if self.status.assigned and self.bus.resting():
                        return RESTS
                    waited = time.monotonic() - self._unassigned_since
                    if not self.status.assigned and waited > self.join_timeout:
                        return (
                            f"no partitions of group {self.group} assigned for {waited:.0f} s"
                            f" ({_join_error(app) or 'no error from the group coordinator'})"
                        )
                return None
            finally:
                self.started.clear()
                self.status.assigned = False
                if not starting.done():
                    starting.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await starting
                try:
                    await asyncio.wait_for(app.stop(), timeout=STOP_TIMEOUT)
                except Exception:
                    log.exception("monitor (faust): the faust app of group %s did not stop cleanly", self.group)

        try:
            return loop.run_until_complete(main())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _join_error(app: faust.App) -> str | None:
    """The error aiokafka keeps for the next fetch (e.g. ``InconsistentGroupProtocolError``), which faust never
    makes without assigned partitions. Best effort: private attributes of faust's consumer thread and aiokafka."""
    try:
        consumer: Any = app.consumer  # private attributes: not in faust's types
        coordinator = consumer._thread._consumer._coordinator
        error = coordinator._pending_exception
        if error is None and coordinator._coordination_task.done():
            error = coordinator._coordination_task.exception()
    except Exception:
        return None
    return repr(error) if error is not None else None
