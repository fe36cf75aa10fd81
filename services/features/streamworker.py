"""The streaming-feature worker: a faust-streaming app inside the features service process (a ``ServiceSpec``
loop thread with its own event loop), one agent per stream topic, applying records to the online store
through ``StreamAggregator`` in small batches (at most ``BATCH_SECONDS`` of waiting), so within about a second.

Consumer group ``driftloop-features-stream`` (the faust app id). Kafka offsets are committed by faust after a
record is processed; a record redelivered after a crash is recognised by its offset in the database, so nothing
is counted twice. Undecodable records are skipped (ingestion dead-letters them with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.clients.retry import Backoff
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.runtime.bus import calm_faust_fetcher, faust_broker_options, heartbeat_interval_ms
from driftloop.runtime.service import Runtime

from .onlinestore import OnlineStoreUnavailable, open_online_store
from .streaming import StreamAggregator

log = logging.getLogger(__name__)

STREAM_GROUP = "driftloop-features-stream"


# Records applied per database transaction, and the longest a record waits for its batch to fill.
BATCH_RECORDS = 200
BATCH_SECONDS = 0.5
# Backoff while the online store's server (Redis) does not answer.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0


# How often a stopped worker looks whether its process woke (the doorbell), and a running one whether to stop.
WATCH_SECONDS = 0.5


@dataclass
class StreamWorkerStatus:
    """What the worker is doing: ``waiting`` (no stream yet), ``running``, ``resting`` (stopped with its resting
    process, ``kafka.rest_after_seconds``) or ``stopped``; ``rests`` counts its rests."""

    state: str = "waiting"
    rests: int = 0


def _agent_for(
    aggregator: StreamAggregator, decode: Callable[[bytes], Any], note_activity: Callable[[], None]
) -> Callable[[Any], Any]:
    async def apply_records(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(BATCH_RECORDS, within=BATCH_SECONDS):
            note_activity()  # records flowing keep the process (and so this worker) awake
            batch = []
            for event in events:
                message = event.message
                try:
                    _, record = decode(event.value)
                except Exception as exc:  # a bad record must not stop the stream
                    aggregator.skipped += 1
                    log.debug("skipped %s/%s/%s: %r", message.topic, message.partition, message.offset, exc)
                    continue
                batch.append((f"{message.topic}/{message.partition}/{message.offset}", record))
            # Database work off the event loop, so the consumer's heartbeats keep going.
            backoff = Backoff(first_delay=RETRY_FIRST_SECONDS, max_delay=RETRY_MAX_SECONDS)
            while True:
                try:
                    await loop.run_in_executor(None, aggregator.apply, batch)
                    break
                except OnlineStoreUnavailable as exc:
                    # Redis down: hold the batch (the stream waits, offsets uncommitted) rather than let the agent
                    # crash past it. A retry is safe: records are stored once by offset, values recomputed.
                    delay = backoff.next_delay()
                    log.warning("streaming features: %s; retrying the batch in %.1fs", exc, delay)
                    await asyncio.sleep(delay)

    return apply_records


def stream_worker_loop(
    runtime: Runtime,
    group: str = STREAM_GROUP,
    pipelines: list[PipelineConfig] | None = None,
    status: StreamWorkerStatus | None = None,
) -> Callable[[threading.Event], None]:
    """A loop for ``ServiceSpec.loops``: runs the faust worker until ``stop`` is set. Without a fixed ``pipelines``
    list it follows the service's pipeline catalog: when a pipeline applied live adds, removes or renames a stream,
    or changes a stream's features, the worker stops and starts again with one agent per stream of the new set
    (faust's agents are fixed at start; offsets are committed, so the new worker carries on where the old one was).

    The worker rests with its process (``kafka.rest_after_seconds``): a faust app at rest still wakes several times
    a second (its sensor, thread keepalives, fetches, heartbeats), so when the process has taken no event and no
    record for that long the worker stops, and it starts again when the process wakes: records arriving at
    ingestion ring the bus's doorbell. Offsets are committed, so it carries on where it stopped; the first records
    after a rest wait for its start and group join (a few seconds)."""
    changed = threading.Event()
    status = status if status is not None else StreamWorkerStatus()
    bus = runtime.bus

    def current() -> list[PipelineConfig]:
        return pipelines if pipelines is not None else sorted(runtime.pipelines.values(), key=lambda p: p.stream.topic)

    running: list[PipelineConfig] = []

    def streams_changed() -> None:
        if current() != running:  # a stream added or removed, or its features changed
            changed.set()

    if pipelines is None:
        runtime.pipelines.on_change(streams_changed)

    def run_worker(stop: threading.Event) -> None:
        nonlocal running
        while not stop.is_set():
            changed.clear()
            running = current()
            if running:
                status.state = "running"
                if _run_faust_worker(runtime, group, running, stop, changed):
                    status.state, status.rests = "resting", status.rests + 1
                    log.info("streaming-feature worker %s rests with its process until it wakes", group)
                    while not stop.is_set() and not changed.is_set() and bus.resting():
                        stop.wait(WATCH_SECONDS)
                    if not stop.is_set():
                        log.info("streaming-feature worker %s: its process woke, starting it again", group)
                    continue
            status.state = "waiting"
            if pipelines is not None:
                break
            while not stop.is_set() and not changed.wait(WATCH_SECONDS):
                pass  # no stream yet, or the worker ended by itself: wait for a change
            if changed.is_set() and not stop.is_set():
                log.info("streaming-feature worker %s: the streams changed, starting it again", group)
        status.state = "stopped"

    run_worker.__name__ = "features_stream_worker"
    return run_worker


def _run_faust_worker(
    runtime: Runtime, group: str, chosen: list[PipelineConfig], stop: threading.Event, changed: threading.Event
) -> bool:
    """One faust worker with an agent per stream of ``chosen``, until ``stop`` or ``changed`` is set, or its process
    rests (then True)."""
    import faust

    settings = runtime.settings
    datadir = Path(settings.home) / "faust" / group
    datadir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App(
        group,
        **faust_broker_options(settings),  # brokers and their authentication (kafka.* settings)
        loop=loop,
        datadir=str(datadir),
        web_enabled=False,
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=heartbeat_interval_ms(settings) / 1000,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
    )
    calm_faust_fetcher(app)
    online = open_online_store(settings, runtime.engine)
    decode = runtime.bus.codec.decode
    for pipeline in chosen:
        topic = app.topic(pipeline.stream.topic, value_type=bytes, value_serializer="raw", key_serializer="raw")
        aggregator = StreamAggregator(runtime.engine, pipeline, online)
        agent = _agent_for(aggregator, decode, runtime.bus.note_activity)
        app.agent(topic, name=f"features-stream-{pipeline.stream.name}")(agent)

    class ThreadWorker(faust.Worker):
        def install_signal_handlers(self) -> None:
            """Signals belong to the service's main thread; ``stop`` ends this worker."""

    worker = ThreadWorker(app, loop=loop, override_logging=False, redirect_stdouts=False, quiet=True)
    done = threading.Event()

    rested = threading.Event()

    def stop_when_asked() -> None:
        bus = runtime.bus
        while not done.is_set() and not stop.is_set() and not changed.is_set():
            if bus.resting():
                rested.set()
                break
            done.wait(WATCH_SECONDS)
        if not done.is_set() and not loop.is_closed():
            loop.call_soon_threadsafe(worker._schedule_shutdown, signal.SIGTERM)

    threading.Thread(target=stop_when_asked, name="features-stream-stopper", daemon=True).start()
    try:
        with contextlib.suppress(SystemExit):  # how a mode worker ends
            worker.execute_from_commandline()
    finally:
        done.set()
    log.info("streaming-feature worker %s stopped", group)
    return rested.is_set()
