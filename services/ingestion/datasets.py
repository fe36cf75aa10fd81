"""Dataset versions: cut an immutable version from the rows landed since the last one, record it, announce it.

A cut happens when the unversioned rows of a stream reach ``dataset.cut_every_rows`` (checked after each
landing, in a background loop so that Kafka intake never waits for Spark) or on demand over HTTP.

A cut on demand after a change (``cut_after_change``: an event-time point ``since`` where a change began) is made
once ``dataset.min_rows_after_change`` rows with an event time at or after ``since`` have landed: at once if they
have, else by the background loop when a landing brings the count there. The version holds every row as usual
(cumulative or window); whoever trains on it keeps the rows after ``since``.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from driftloop.clients.db.models import DatasetVersion, LandedBatch
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.events import Event, new_event, stored_event
from driftloop.contracts.layout import dataset_prefix, dataset_version_id
from driftloop.contracts.payloads import DatasetCutStarted, DatasetVersionCreated
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_stream
from driftloop.contracts.settings import Settings
from driftloop.errors import ConflictError, NotFoundError
from driftloop.runtime.bus import EventBus

log = logging.getLogger(__name__)
Clock = Literal["event", "arrival"]
# The process's one SparkSession: its name, and Parquet timestamps in milliseconds (Avro's timestamp-millis).
SPARK_APP = "driftloop-ingestion"
PARQUET_TIMESTAMP: Final = "TIMESTAMP_MILLIS"


class NoNewData(ConflictError):
    """A cut was asked for but nothing landed since the last version (HTTP 409)."""

    default_code = "no_new_data"


def version_to_dict(row: DatasetVersion) -> dict[str, Any]:
    return {
        "dataset_version_id": row.id,
        "stream": row.stream,
        "version": row.version,
        "uri": row.uri,
        "content_hash": row.content_hash,
        "row_count": row.row_count,
        "new_rows": row.new_rows,
        "parent_version_id": row.parent_id,
        "mode": row.mode,
        "schema": row.schema_json,
        "profile": row.profile,
        "min_event_time": _iso(row.min_event_time),
        "max_event_time": _iso(row.max_event_time),
        "event_id": row.event_id,
        "created_at": _iso(row.created_at),
        "checks": row.checks,
    }


def created_event(row: DatasetVersion, producer: str) -> Event[DatasetVersionCreated]:
    """The ``DatasetVersionCreated`` of a stored version, with the id it was first published with."""
    occurred_at = _as_utc(row.created_at) or datetime.now(tz=UTC)
    return stored_event(_created(row), event_id=row.event_id, occurred_at=occurred_at, producer=producer)


def _created(row: DatasetVersion) -> DatasetVersionCreated:
    return DatasetVersionCreated(
        stream=row.stream,
        dataset_version_id=row.id,
        version=row.version,
        uri=row.uri,
        content_hash=row.content_hash,
        row_count=row.row_count,
        new_rows=row.new_rows,
        parent_version_id=row.parent_id,
        mode=row.mode,
        schema_json=json.dumps(row.schema_json),
        profile_json=json.dumps(row.profile),
        min_event_time=_as_utc(row.min_event_time),
        max_event_time=_as_utc(row.max_event_time),
    )


def _iso(value: datetime | None) -> str | None:
    as_utc = _as_utc(value)
    return as_utc.isoformat() if as_utc else None


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class DatasetCutter:
    """Cuts dataset versions; one cut at a time per process (Spark is shared and versions are sequential)."""

    def __init__(
        self, settings: Settings, pipelines: Mapping[str, PipelineConfig], bus: EventBus, store: ObjectStore
    ) -> None:
        self.settings = settings
        self.pipelines = pipelines
        self.bus = bus
        self.store = store
        self.Session = bus.Session
        self._lock = threading.Lock()
        self._checks: queue.Queue[str] = queue.Queue()
        self.last_error: str | None = None
        # Cuts on demand waiting for rows after a change: stream -> (since, rows needed, since's clock).
        self._change_cuts: dict[str, tuple[datetime, int, Clock]] = {}
        self._change_lock = threading.Lock()
        self._put_off: set[str] = set()  # streams whose periodic cut waits for a cut after a change (logged once)

    # --- automatic cuts -------------------------------------------------------------------------------------

    def request_check(self, stream: str) -> None:
        """Ask the background loop to cut ``stream`` if enough rows have landed (cheap, non-blocking)."""
        self._checks.put(stream)

    def unversioned_rows(self, stream: str) -> int:
        with self.Session() as session:
            total = session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(
                    LandedBatch.stream == stream, LandedBatch.dataset_version_id.is_(None)
                )
            )
        return int(total or 0)

    def maybe_cut(self, stream: str) -> DatasetVersion | None:
        with self._change_lock:
            waiting = self._change_cuts.get(stream)
        threshold = pipeline_for_stream(self.pipelines, stream).dataset.cut_every_rows
        put_off_until = threshold
        if waiting is not None:
            since, needed, clock = waiting
            event_since = self.event_time_since(stream, since, clock)
            if event_since is not None and self.rows_since(stream, event_since) >= needed:
                with self._change_lock:
                    self._change_cuts.pop(stream, None)
                self._put_off.discard(stream)
                try:
                    return self.cut(stream)
                except NoNewData:
                    return None
            # A periodic cut due now would be followed, within ``needed`` rows, by the cut after the change, which
            # holds the same rows: two cuts and materializations back to back, the first delaying the one a
            # retrain waits for on a busy machine. The periodic cut waits for it, ``needed`` rows at most.
            put_off_until = threshold + needed
        if threshold <= 0:
            return None
        unversioned = self.unversioned_rows(stream)
        if unversioned < put_off_until:
            if unversioned >= threshold and stream not in self._put_off:
                self._put_off.add(stream)
                log.info(
                    "periodic cut of %s (%d rows landed, cut_every_rows %d) put off: a cut after a change is due "
                    "within dataset.min_rows_after_change rows and will hold them",
                    stream,
                    unversioned,
                    threshold,
                )
            return None
        self._put_off.discard(stream)
        try:
            return self.cut(stream)
        except NoNewData:
            return None  # another cut took the rows first

    def loop(self, stop_event: threading.Event) -> None:
        """Background loop: serve cut checks until stopped. At start it checks every stream, so rows landed before
        a restart are not left waiting. (A version whose event never arrived is announced by the outbox.)"""
        for cfg in self.pipelines.values():
            self.request_check(cfg.stream.name)
        while not stop_event.is_set():
            try:
                stream = self._checks.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.maybe_cut(stream)
                self.last_error = None
            except Exception as exc:
                self.last_error = f"automatic cut of {stream} failed: {exc!r}"
                log.exception("automatic dataset cut of %s failed", stream)

    # --- cuts after a change ------------------------------------------------------------------------------

    def rows_since(self, stream: str, since: datetime) -> int:
        """Rows of ``stream`` landed so far (in a version or not) with an event time at or after ``since``:
        whole batches from their bounds, the batches straddling ``since`` by reading their event times. (Rows of
        a straddling batch already compacted are not counted: a conservative count.)"""
        since = _as_utc(since) or since
        event_time = pipeline_for_stream(self.pipelines, stream).stream.event_time
        with self.Session() as session:
            batches = session.execute(
                sa.select(
                    LandedBatch.object_key,
                    LandedBatch.rows,
                    LandedBatch.min_event_time,
                    LandedBatch.max_event_time,
                    LandedBatch.compacted_into,
                ).where(LandedBatch.stream == stream)
            ).all()
        total = 0
        for key, rows, low, high in ((b[0], b[1], _as_utc(b[2]), _as_utc(b[3])) for b in batches if not b[4]):
            if high is None or high < since:
                continue
            if low is not None and low >= since:
                total += int(rows)
                continue
            table = pq.read_table(io.BytesIO(self.store.get_bytes(key)), columns=[event_time])
            times = pc.cast(table.column(0), pa.timestamp("ms", tz="UTC"))
            total += int(pc.sum(pc.greater_equal(times, pa.scalar(since, pa.timestamp("ms", tz="UTC")))).as_py() or 0)
        return total

    def event_time_since(self, stream: str, since: datetime, clock: Clock) -> datetime | None:
        """``since`` on the stream's event-time clock. ``arrival``: the earliest event time of the rows landed at
        or after ``since`` (None: none landed yet). A change is seen in predictions, timed by the platform's clock;
        the stream's event times may run on another (a backfill, a replay, a producer's lag)."""
        since = _as_utc(since) or since
        if clock == "event":
            return since
        with self.Session() as session:
            earliest = session.scalar(
                sa.select(sa.func.min(LandedBatch.min_event_time)).where(
                    LandedBatch.stream == stream, LandedBatch.landed_at >= since
                )
            )
        return _as_utc(earliest)

    def cut_after_change(
        self, stream: str, since: datetime, min_rows: int | None = None, *, clock: Clock = "event"
    ) -> dict[str, Any]:
        """Cut a version for training after a change at ``since`` (on ``clock``: see ``event_time_since``), once
        ``min_rows`` (default ``dataset.min_rows_after_change``) rows at or after it have landed. Returns
        ``status``: ``cut`` (the new version), ``covered`` (nothing landed since the newest version, which holds
        enough such rows) or ``waiting`` (too few rows yet: the cut is made when a landing brings them), and
        ``since`` in event time (null while no row landed after an ``arrival`` point)."""
        needed = min_rows or pipeline_for_stream(self.pipelines, stream).dataset.min_rows_after_change
        since = _as_utc(since) or since
        event_since = self.event_time_since(stream, since, clock)
        rows = self.rows_since(stream, event_since) if event_since is not None else 0
        answer: dict[str, Any] = {
            "stream": stream,
            "since": event_since.isoformat() if event_since is not None else None,
            "rows_after_change": rows,
            "needed": needed,
        }
        if rows < needed:
            with self._change_lock:
                self._change_cuts[stream] = (since, needed, clock)
            return {**answer, "status": "waiting"}
        with self._change_lock:
            self._change_cuts.pop(stream, None)
        try:
            return {**answer, "status": "cut", "version": version_to_dict(self.cut(stream))}
        except NoNewData:
            latest = self.latest(stream)
            return {**answer, "status": "covered", "version": version_to_dict(latest) if latest else None}

    # --- the cut --------------------------------------------------------------------------------------------

    def latest(self, stream: str) -> DatasetVersion | None:
        with self.Session() as session:
            return session.scalars(
                sa.select(DatasetVersion).where(DatasetVersion.stream == stream).order_by(DatasetVersion.version.desc())
            ).first()

    def cut(self, stream: str) -> DatasetVersion:
        """Cut the next version of ``stream`` now. Raises NoNewData when nothing landed since the last one."""
        from driftloop.clients.spark import spark_session

        from .spark_jobs import build_version

        cfg = pipeline_for_stream(self.pipelines, stream)
        with self._lock:
            with self.Session() as session:
                new_keys = list(
                    session.scalars(
                        sa.select(LandedBatch.object_key)
                        .where(LandedBatch.stream == stream, LandedBatch.dataset_version_id.is_(None))
                        .order_by(LandedBatch.landed_at, LandedBatch.object_key)
                    )
                )
                new_rows = int(
                    session.scalar(
                        sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(
                            LandedBatch.object_key.in_(new_keys)
                        )
                    )
                    or 0
                )
            if not new_keys or new_rows == 0:
                raise NoNewData(
                    f"no new data for stream {stream!r}: nothing landed since the last dataset version; "
                    "send records to its topic or POST them to /v1/streams/{stream}/records first"
                )
            parent = self.latest(stream)
            version = parent.version + 1 if parent else 1
            parent_keys = (
                [k for k in self.store.list(dataset_prefix(stream, parent.version)) if k.endswith(".parquet")]
                if parent
                else []
            )
            prefix = dataset_prefix(stream, version)
            version_id = dataset_version_id(stream, version)
            self._announce_cut(stream, version_id, version, new_rows)
            result = build_version(
                spark_session(self.settings, SPARK_APP, parquet_timestamp=PARQUET_TIMESTAMP),
                self.store,
                cfg.stream,
                parent_keys=parent_keys,
                new_keys=new_keys,
                mode=cfg.dataset.mode,
                window_rows=cfg.dataset.window_rows,
                prefix=prefix,
                unique_by=cfg.dataset.unique_by,
            )
            event_time = result.profile[cfg.stream.event_time]
            min_time, max_time = _as_utc(event_time.get("min")), _as_utc(event_time.get("max"))
            uri = self.store.uri(prefix)
            schema = cfg.stream.avro_schema()
            manifest = {
                "dataset_version_id": version_id,
                "stream": stream,
                "version": version,
                "mode": cfg.dataset.mode,
                "window_rows": cfg.dataset.window_rows if cfg.dataset.mode == "window" else None,
                "row_count": result.row_count,
                "new_rows": new_rows,
                "content_hash": result.content_hash,
                "parent_version_id": parent.id if parent else None,
                "files": result.files,
                "landed_batches": new_keys,
                "schema": schema,
                "profile": result.profile,
                "checks": result.checks,
                "created_at": datetime.now(tz=UTC).isoformat(),
            }
            self.store.put_bytes(prefix + "manifest.json", json.dumps(manifest, indent=2).encode())
            row = DatasetVersion(
                id=version_id,
                stream=stream,
                version=version,
                uri=uri,
                content_hash=result.content_hash,
                row_count=result.row_count,
                new_rows=new_rows,
                parent_id=parent.id if parent else None,
                mode=cfg.dataset.mode,
                schema_json=schema,
                profile=result.profile,
                min_event_time=min_time,
                max_event_time=max_time,
                event_id="",
                checks=result.checks,
            )
            event = new_event(_created(row), producer=self.bus.producer_name)
            row.event_id = event.id
            # Version row and batch assignment in one transaction; the event after it, so that whoever reacts to
            # the event finds the version in the API.
            with self.Session.begin() as session:
                session.add(row)
                session.execute(
                    sa.update(LandedBatch)
                    .where(LandedBatch.object_key.in_(new_keys))
                    .values(dataset_version_id=version_id)
                )
            self.bus.publish(event)
            log.info(
                "cut %s: %d rows (%d new), hash %s; Spark %s",
                version_id,
                result.row_count,
                new_rows,
                result.content_hash,
                ", ".join(f"{step} {seconds:.2f}s" for step, seconds in result.seconds.items()),
            )
            if cfg.dataset.keep_landed_versions:
                from .versioning import compact

                try:
                    compact(self.Session, self.store, cfg.stream, cfg.dataset.keep_landed_versions)
                except Exception:
                    # Retention is housekeeping: the version stands; the next cut (or the API) compacts again.
                    log.exception("compacting the landed batches of %s failed", stream)
            return row

    # --- reads ----------------------------------------------------------------------------------------------

    def _announce_cut(self, stream: str, version_id: str, version: int, new_rows: int) -> None:
        """Publish that the cut began, without waiting: the training service starts an idle Ray on it, so that Ray
        is up when the version's training is asked for. Only a sign: a failure is logged, the cut goes on."""
        started = DatasetCutStarted(stream=stream, dataset_version_id=version_id, version=version, new_rows=new_rows)
        try:
            self.bus.publish(new_event(started, producer=self.bus.producer_name), wait=False)
        except Exception:
            log.warning("announcing the cut of %s failed", version_id, exc_info=True)

    def list_versions(self, stream: str) -> list[DatasetVersion]:
        with self.Session() as session:
            return list(
                session.scalars(
                    sa.select(DatasetVersion).where(DatasetVersion.stream == stream).order_by(DatasetVersion.version)
                )
            )

    def get(self, version_id: str) -> DatasetVersion:
        with self.Session() as session:
            row = session.get(DatasetVersion, version_id)
        if row is None:
            raise NotFoundError(f"unknown dataset version {version_id!r} (ids look like STREAM@vN)")
        return row
