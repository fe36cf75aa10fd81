"""The pipelines a service process holds: one ``PipelineCatalog`` per process (``Runtime.pipelines``), loaded from
``pipelines_dir`` at start and kept current by the ``PipelineApplied`` events of ``driftloop pipeline apply |
remove`` (``follow``), so a running service takes a new or changed pipeline without a restart.

The catalog is a read-only mapping (model name -> ``PipelineConfig``) whose contents are swapped whole: a reader
(a route, a handler, a loop) looks a pipeline up each time and sees either the set before a change or the set
after it, never half of one. Code that derived something from the pipelines at start (the ingestion intake's
topic subscription) registers a listener (``on_change``) and re-derives it.

An event is taken only if its document is a valid pipeline (its checksum matches, it parses, its stream is not
another model's and every ``check`` passes); anything else is logged and ignored: a bad document never stops a
service, which goes on with what it had. ``pipelines_dir`` is the truth at start (``apply`` writes the file before
it announces it): a process takes only the events from its load on (``LOAD_MARGIN`` before it, for clocks and the
millisecond timestamps), so neither an old history on the compacted topic nor another deployment's changes on a
shared broker are replayed into it; and an event older than the last one taken for its model is ignored.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from driftloop.contracts.events import Event
from driftloop.contracts.payloads import PipelineApplied
from driftloop.contracts.pipeline import PipelineConfig, load_pipelines, parse_pipeline
from driftloop.contracts.topics import PIPELINE_APPLIED
from driftloop.errors import ConfigError
from driftloop.runtime.bus import ConsumerStatus, EventBus

log = logging.getLogger(__name__)

# Consumer group prefix of the catalog's follower: a fresh group per process (every process takes every change).
GROUP_PREFIX = "driftloop-pipelines-"
# Events from this long before the catalog was loaded are still taken (the same file again: "unchanged").
LOAD_MARGIN = timedelta(seconds=5)


def document_sha256(document: str) -> str:
    """The checksum a ``PipelineApplied`` carries: SHA-256 (hex) of the document's UTF-8 bytes."""
    return hashlib.sha256(document.encode()).hexdigest()


class PipelineCatalog(Mapping[str, PipelineConfig]):
    """The current pipelines by model name; see the module docstring."""

    def __init__(
        self, pipelines: Mapping[str, PipelineConfig] | None = None, loaded_at: datetime | None = None
    ) -> None:
        self._current: dict[str, PipelineConfig] = dict(pipelines or {})
        # Events from before the load are in the files already (None: every event is news).
        self._floor = loaded_at - LOAD_MARGIN if loaded_at is not None else None
        # The time of the last event taken per model: an event from before it is stale. A removed model keeps its
        # time, so an older apply does not bring it back.
        self._since: dict[str, datetime] = {}
        self._lock = threading.Lock()  # one change at a time; readers never wait
        self._listeners: list[Callable[[], None]] = []
        self._checks: list[Callable[[PipelineConfig], None]] = []
        self.changes = 0  # changes taken since the process started
        self.follower: ConsumerStatus | None = None  # set by ``follow``

    @classmethod
    def load(cls, directory: Path) -> PipelineCatalog:
        """The pipelines of ``directory`` (``load_pipelines``: a bad file is a ConfigError, the service does not
        start)."""
        loaded_at = datetime.now(tz=UTC)
        return cls(load_pipelines(directory), loaded_at)

    # --- the mapping: reads of the current set, never blocked ----------------------------------------------------

    def __getitem__(self, model: str) -> PipelineConfig:
        return self._current[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current)  # the set of now: a later change swaps the dict, never changes this one

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, model: object) -> bool:
        return model in self._current

    def snapshot(self) -> dict[str, PipelineConfig]:
        """The current set, as a dict that no change touches."""
        return self._current

    def keys(self) -> Any:
        return self._current.keys()

    def values(self) -> Any:
        return self._current.values()

    def items(self) -> Any:
        return self._current.items()

    def describe(self) -> dict[str, Any]:
        """For ``/healthz``: the models held, the changes taken, and whether the follower is consuming."""
        follower = self.follower
        return {
            "models": sorted(self._current),
            "changes": self.changes,
            "following": follower is not None and follower.assigned,
            "last_error": follower.last_error if follower is not None else None,
        }

    # --- changes ---------------------------------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each change (in the thread that made it: keep it short)."""
        self._listeners.append(listener)

    def add_check(self, check: Callable[[PipelineConfig], None]) -> None:
        """A service's own check of a pipeline (raises ConfigError): a new document failing it is not taken."""
        self._checks.append(check)

    def put(self, cfg: PipelineConfig, *, at: datetime | None = None) -> None:
        """Take ``cfg`` as its model's pipeline (ConfigError when its stream is another model's or a check
        fails)."""
        for model, other in self._current.items():
            if model != cfg.model.name and other.stream.name == cfg.stream.name:
                raise ConfigError(f"stream {cfg.stream.name!r} is already the stream of model {model!r}")
        for check in self._checks:
            check(cfg)
        self._swap(cfg.model.name, cfg, at)

    def drop(self, model: str, *, at: datetime | None = None) -> bool:
        """Forget ``model``; False when it was not there."""
        if model not in self._current:
            return False
        self._swap(model, None, at)
        return True

    def _swap(self, model: str, cfg: PipelineConfig | None, at: datetime | None) -> None:
        with self._lock:
            current = dict(self._current)
            if cfg is None:
                current.pop(model, None)
            else:
                current[model] = cfg
            self._current = current  # one reference assignment: readers see the old set or the new one
            if at is not None:
                self._since[model] = at
            self.changes += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("pipelines: a listener failed on the change of model %s", model)

    def take(self, applied: PipelineApplied, occurred_at: datetime) -> str:
        """Take one ``PipelineApplied``; returns what was done ("applied", "removed", "unchanged", "stale" or
        "refused: <why>"), never raises."""
        model = applied.model
        since = self._since.get(model)
        if (since is not None and occurred_at < since) or (self._floor is not None and occurred_at < self._floor):
            return "stale"
        if applied.removed:
            if not self.drop(model, at=occurred_at):
                self._since[model] = occurred_at
                return "unchanged"
            return "removed"
        if document_sha256(applied.document) != applied.sha256:
            return "refused: the document does not match its sha256"
        try:
            cfg = parse_pipeline(applied.document, source=f"PipelineApplied({model})")
            if cfg.model.name != model:
                raise ConfigError(f"the document is the pipeline of model {cfg.model.name!r}, not {model!r}")
            if self._current.get(model) == cfg:
                self._since[model] = occurred_at
                return "unchanged"
            self.put(cfg, at=occurred_at)
        except ConfigError as exc:
            return f"refused: {exc}"
        return "applied"

    def handle(self, event: Event[PipelineApplied]) -> None:
        """The bus handler of ``PIPELINE_APPLIED``: takes the event (a bad document is logged and ignored)."""
        outcome = self.take(event.payload, event.envelope.occurred_at)
        level = logging.ERROR if outcome.startswith("refused") else logging.INFO
        log.log(level, "pipeline of model %s (event %s): %s", event.payload.model, event.id, outcome)


def follow(catalog: PipelineCatalog, bus: EventBus, service: str) -> Callable[[threading.Event], None]:
    """A loop that keeps ``catalog`` current: consumes ``PIPELINE_APPLIED`` in a group of its own (every process of
    every service takes every change; a ``broadcast`` consumer, without group membership) from the topic's start,
    until the bus stops. Its consumer's state is
    ``catalog.follower`` (shown on ``/healthz`` under ``pipelines``, apart from the service's own consumers)."""
    group = f"{GROUP_PREFIX}{service}-{uuid.uuid4().hex[:12]}"
    catalog.follower = ConsumerStatus(group=group, topics=[PIPELINE_APPLIED.name])

    def follow_pipelines(_stop: threading.Event) -> None:
        bus.run_consumer(
            group,
            {PIPELINE_APPLIED: catalog.handle},
            status=catalog.follower,
            broadcast=True,
            fetch_wait_ms=bus.settings.kafka.follower_fetch_wait_ms,  # changes are rare; held fetches cost the broker
            doorbell=True,  # the process's one consumer that never rests: it hears the doorbell that wakes the others
        )

    return follow_pipelines
