"""The registry's tables (``model_versions``, ``model_aliases``): versions, aliases and the event outbox."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.db.models import EventRecord, ModelAlias, ModelVersion, utcnow
from driftloop.errors import DriftloopError, NotFoundError
from driftloop.events import Envelope, Event

CHAMPION = "champion"
# JSON (and PostgreSQL's json type) has no NaN: an unscorable challenger's NaN score is stored as this marker.
_NON_FINITE = {"$float": "nan"}


class AliasMoved(DriftloopError):
    """The champion alias moved while the gate was running: the decision must be taken again."""


def event_to_json(event: Event) -> dict[str, Any]:
    env = event.envelope
    return {
        "envelope": {
            "event_id": env.event_id,
            "event_type": env.event_type,
            "occurred_at": int(env.occurred_at.timestamp() * 1000),
            "caused_by": env.caused_by,
            "cascade_id": env.cascade_id,
            "producer": env.producer,
        },
        "data": {k: _NON_FINITE if isinstance(v, float) and math.isnan(v) else v for k, v in event.data.items()},
    }


def event_from_json(stored: dict[str, Any]) -> Event:
    data = {k: math.nan if v == _NON_FINITE else v for k, v in stored["data"].items()}
    return Event(envelope=Envelope.from_avro(stored["envelope"]), data=data)


class Registry:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.Session = session_factory

    # --- reads -------------------------------------------------------------------------------------------

    def by_run(self, run_id: str) -> ModelVersion | None:
        with self.Session() as session:
            return session.scalars(sa.select(ModelVersion).where(ModelVersion.run_id == run_id)).one_or_none()

    def get_version(self, model: str, version: int) -> ModelVersion:
        with self.Session() as session:
            found = session.get(ModelVersion, (model, version))
        if found is None:
            if not self.model_exists(model):
                raise NotFoundError(f"unknown model {model!r}: no version of it has been registered")
            raise NotFoundError(f"model {model!r} has no version {version}")
        return found

    def model_exists(self, model: str) -> bool:
        with self.Session() as session:
            return session.scalar(sa.select(sa.func.count()).where(ModelVersion.model == model)) > 0

    def versions(self, model: str) -> list[ModelVersion]:
        with self.Session() as session:
            rows = list(
                session.scalars(
                    sa.select(ModelVersion).where(ModelVersion.model == model).order_by(ModelVersion.version)
                )
            )
        if not rows:
            raise NotFoundError(f"unknown model {model!r}: no version of it has been registered")
        return rows

    def models(self) -> list[dict[str, Any]]:
        """Every model with its version count, latest version and champion version."""
        with self.Session() as session:
            counts = session.execute(
                sa.select(ModelVersion.model, sa.func.count(), sa.func.max(ModelVersion.version))
                .group_by(ModelVersion.model)
                .order_by(ModelVersion.model)
            ).all()
            champions = dict(
                session.execute(sa.select(ModelAlias.model, ModelAlias.version).where(ModelAlias.alias == CHAMPION))
                .tuples()
                .all()
            )
        return [
            {"model": name, "versions": count, "latest_version": latest, "champion_version": champions.get(name)}
            for name, count, latest in counts
        ]

    def alias(self, model: str, alias: str) -> ModelAlias | None:
        with self.Session() as session:
            return session.get(ModelAlias, (model, alias))

    def aliases(self, model: str) -> dict[str, int]:
        with self.Session() as session:
            rows = session.execute(sa.select(ModelAlias.alias, ModelAlias.version).where(ModelAlias.model == model))
            return dict(rows.tuples().all())

    def champion(self, model: str) -> ModelVersion | None:
        with self.Session() as session:
            alias = session.get(ModelAlias, (model, CHAMPION))
            return session.get(ModelVersion, (model, alias.version)) if alias else None

    def cause_chain(self, event_id: str | None, limit: int = 25) -> list[dict[str, Any]]:
        """The causes of an event, nearest first, as far as the shared event log knows them."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        with self.Session() as session:
            while event_id and event_id not in seen and len(chain) < limit:
                seen.add(event_id)
                record = session.get(EventRecord, event_id)
                if record is None:
                    chain.append({"event_id": event_id, "event_type": None, "note": "not in the event log"})
                    break
                chain.append(
                    {
                        "event_id": record.event_id,
                        "event_type": record.event_type,
                        "producer": record.producer,
                        "occurred_at": record.occurred_at.isoformat() if record.occurred_at else None,
                    }
                )
                event_id = record.caused_by
        return chain

    # --- writes ------------------------------------------------------------------------------------------

    def register(self, row: dict[str, Any], make_registered_event: Any) -> tuple[ModelVersion, bool]:
        """Insert the next version of ``row["model"]`` unless its run is already registered.
        ``make_registered_event(version) -> Event`` builds the ModelRegistered event stored in the outbox.
        Returns the version and whether it was created now."""
        for _attempt in range(3):
            existing = self.by_run(row["run_id"])
            if existing is not None:
                return existing, False
            try:
                with self.Session.begin() as session:
                    latest = session.scalar(
                        sa.select(sa.func.max(ModelVersion.version)).where(ModelVersion.model == row["model"])
                    )
                    version = (latest or 0) + 1
                    event = make_registered_event(version)
                    created = ModelVersion(
                        **row, version=version, status="registered", outbox=[event_to_json(event)], created_at=utcnow()
                    )
                    session.add(created)
                return created, True
            except sa.exc.IntegrityError:
                continue  # another writer took this version number or run: look again
        raise DriftloopError(f"could not register run {row['run_id']} of model {row['model']}")

    def decide(
        self,
        model: str,
        version: int,
        *,
        promote: bool,
        gate: dict[str, Any],
        expected_champion: int | None,
        decision_event: Event,
    ) -> None:
        """Record the gate's decision; on promotion move the champion alias in the same transaction. Raises
        ``AliasMoved`` if the champion is no longer ``expected_champion`` (the gate compared against another)."""
        with self.Session.begin() as session:
            row = session.get(ModelVersion, (model, version), with_for_update=True)
            if row is None:
                raise NotFoundError(f"model {model!r} has no version {version}")
            alias = session.get(ModelAlias, (model, CHAMPION), with_for_update=True)
            current = alias.version if alias else None
            if current != expected_champion:
                raise AliasMoved(f"champion of {model} is v{current}, the gate compared against v{expected_champion}")
            row.gate = gate
            row.status = "promoted" if promote else "rejected"
            row.decided_at = datetime.now(tz=UTC)
            row.outbox = [*row.outbox, event_to_json(decision_event)]
            if promote:
                if alias is None:
                    session.add(
                        ModelAlias(
                            model=model,
                            alias=CHAMPION,
                            version=version,
                            event_id=decision_event.id,
                            updated_at=utcnow(),
                        )
                    )
                else:
                    alias.version = version
                    alias.event_id = decision_event.id
                    alias.updated_at = utcnow()
