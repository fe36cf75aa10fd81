"""Retention of the high-volume tables: batched deletes, the purge loop each owning service runs, and the counter
of purged rows. What may go is decided by each owner (serving, monitor, ``driftloop.runtime.bus``); this module only
deletes in short transactions so that the database (SQLite in the embedded stack) is never locked for long."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.orm import InstrumentedAttribute

from driftloop.clients.db import create_engine_for
from driftloop.contracts.settings import Settings

log = logging.getLogger(__name__)

ROWS_PURGED = Counter("driftloop_rows_purged_total", "Rows deleted by retention purges, by table", ["table"])


def cutoff(now: datetime, days: float) -> datetime | None:
    """The time before which rows are older than ``days``; None when ``days`` is 0 (keep for ever)."""
    return None if days <= 0 else now - timedelta(days=days)


def purge_in_batches(
    engine: sa.Engine,
    table: str,
    key: InstrumentedAttribute[Any],
    expired: sa.ColumnElement[bool],
    batch_rows: int,
) -> int:
    """Delete the rows of ``key``'s ORM class that match ``expired``, in transactions of at most ``batch_rows``
    distinct keys; each delete repeats the condition, so that a row changed meanwhile stays. Returns the rows
    deleted, also counted in ``driftloop_rows_purged_total{table}``."""
    select_keys = sa.select(key).where(expired).distinct()
    deleted = 0
    while True:
        with engine.begin() as conn:
            keys = list(conn.execute(select_keys.limit(batch_rows)).scalars())
            if not keys:
                break
            count = conn.execute(sa.delete(key.class_).where(key.in_(keys), expired)).rowcount or 0
        deleted += count
        ROWS_PURGED.labels(table).inc(count)
        if len(keys) < batch_rows or count == 0:
            break
    return deleted


def purge_loop(
    name: str, purge: Callable[[], dict[str, int]], interval_seconds: float
) -> Callable[[threading.Event], None]:
    """A service loop running ``purge`` once at start and then every ``interval_seconds`` until stopped; a failed
    purge is logged and tried again at the next tick (retention must never stop a service)."""

    def run(stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            try:
                purged = purge()
                if any(purged.values()):
                    log.info("%s retention purge: %s", name, purged)
            except Exception:
                log.exception("%s retention purge failed; retrying in %.0f s", name, interval_seconds)
            if stop_event.wait(interval_seconds):
                return

    return run


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


def purge_task(purge: Callable[[sa.Engine, Settings], Mapping[str, int]]) -> Callable[[Settings], dict[str, int]]:
    """A service's ``purge`` task (``python -m driftloop.services.NAME purge``, run by ``driftloop db purge``):
    ``purge`` once on an engine of its own."""

    def task(settings: Settings) -> dict[str, int]:
        engine = create_engine_for(settings.database_url)
        try:
            return dict(purge(engine, settings))
        finally:
            engine.dispose()

    return task
