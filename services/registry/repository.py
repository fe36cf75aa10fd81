"""The registry's tables (``model_versions``, ``model_aliases``): versions, aliases and the event outbox."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import EventRecord, ModelAlias, ModelVersion, utcnow
from driftloop.clients.retry import retry
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.events import Event
from driftloop.contracts.payloads import ModelPromoted, ModelRejected, Payload
from driftloop.errors import ConflictError, DriftloopError, NotFoundError

# Status of a promoted version that serving rolled back (its canary/shadow was judged worse): not a default
# rollback target any more (an explicit ``to`` still is); moving ``champion`` to it again makes it ``promoted``.
ROLLED_BACK = "rolled_back"
PROMOTED = "promoted"
# JSON (and PostgreSQL's json type) has no NaN: an unscorable challenger's NaN score is stored as this marker.
_NON_FINITE = {"$float": "nan"}


class AliasMoved(ConflictError):
    """The champion alias moved while the gate was running: the decision must be taken again."""

    default_code = "alias_moved"


class AliasConflict(ConflictError):
    """An alias move asked for ``expected_version`` but the alias points elsewhere (optimistic concurrency)."""

    default_code = "alias_conflict"


def event_to_json(event: Event[Payload]) -> dict[str, Any]:
    """The outbox's JSON of an event: the envelope (time in epoch millis) and the payload's Avro record."""
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
        "data": {
            k: _NON_FINITE if isinstance(v, float) and math.isnan(v) else v for k, v in event.payload.to_avro().items()
        },
    }


def event_from_json(stored: dict[str, Any]) -> Event[Any]:
    data = {k: math.nan if v == _NON_FINITE else v for k, v in stored["data"].items()}
    return Event.from_avro({**data, "envelope": stored["envelope"]})


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
            return (session.scalar(sa.select(sa.func.count()).where(ModelVersion.model == model)) or 0) > 0

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

    def alias_rows(self, model: str) -> list[ModelAlias]:
        with self.Session() as session:
            return list(
                session.scalars(sa.select(ModelAlias).where(ModelAlias.model == model).order_by(ModelAlias.alias))
            )

    def alias_history(self, model: str, alias: str, limit: int) -> list[dict[str, Any]]:
        """Every move of ``alias`` (gate promotions, user moves, rollbacks), newest first, from the event log."""
        with self.Session() as session:
            records = session.scalars(
                sa.select(EventRecord)
                .where(EventRecord.event_type == "ModelPromoted", EventRecord.model == model)
                .order_by(EventRecord.occurred_at.desc())
            )
            moves = []
            for record in records:
                payload = record.payload or {}
                if payload.get("alias") != alias:
                    continue
                moves.append(
                    {
                        "version": payload.get("version"),
                        "previous_version": payload.get("previous_version"),
                        "moved_by": payload.get("moved_by", "registry"),
                        "reason": payload.get("reason"),
                        "rollback": bool(payload.get("rollback", False)),
                        "event_id": record.event_id,
                        "occurred_at": record.occurred_at.isoformat() if record.occurred_at else None,
                    }
                )
                if len(moves) >= limit:
                    break
        return moves

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

        def register_once() -> tuple[ModelVersion, bool]:
            existing = self.by_run(row["run_id"])
            if existing is not None:
                return existing, False
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

        what = f"registering run {row['run_id']} of model {row['model']}"
        try:
            # Another writer took this version number or run: look again.
            return retry(register_once, attempts=3, retry_on=(sa.exc.IntegrityError,), first_delay=0.05, what=what)
        except sa.exc.IntegrityError as exc:
            raise DriftloopError(f"could not register run {row['run_id']} of model {row['model']}") from exc

    def decide(
        self,
        model: str,
        version: int,
        *,
        promote: bool,
        gate: dict[str, Any],
        expected_champion: int | None,
        decision_event: Event[ModelPromoted] | Event[ModelRejected],
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
                promoted = decision_event.payload
                if not isinstance(promoted, ModelPromoted):
                    raise TypeError(f"a promotion is announced by ModelPromoted, not {decision_event.type}")
                if alias is None:
                    alias = ModelAlias(model=model, alias=CHAMPION)
                    session.add(alias)
                alias.version = version
                alias.event_id = decision_event.id
                alias.event = event_to_json(decision_event)
                alias.moved_by = promoted.moved_by
                alias.reason = promoted.reason
                alias.updated_at = utcnow()

    def move_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        moved_by: str,
        reason: str,
        make_event: Any,
        expected_version: int | object | None = ...,
    ) -> tuple[ModelAlias, Event[ModelPromoted], bool]:
        """Point ``alias`` of ``model`` at ``version`` in one transaction (row locks on alias and version).
        ``make_event(previous_version) -> Event`` builds the ModelPromoted event stored on the alias row.
        ``expected_version`` (if given) must be where the alias points now, else ``AliasConflict``.
        Returns the alias, the event to publish, and whether it moved (False: it already pointed there; the
        stored event is returned again so that a retried request re-sends the same event id)."""
        with self.Session.begin() as session:
            target = session.get(ModelVersion, (model, version), with_for_update=True)
            if target is None:
                if not session.scalar(sa.select(sa.func.count()).where(ModelVersion.model == model)):
                    raise NotFoundError(f"unknown model {model!r}: no version of it has been registered")
                raise NotFoundError(f"model {model!r} has no version {version}")
            row = session.get(ModelAlias, (model, alias), with_for_update=True)
            current = row.version if row else None
            if expected_version is not ... and current != expected_version:
                raise AliasConflict(
                    f"alias {alias!r} of {model} points at v{current}, the request expected v{expected_version}"
                )
            if row is not None and current == version and row.event:
                return row, event_from_json(row.event), False
            event = make_event(current)
            if row is None:
                row = ModelAlias(model=model, alias=alias, version=version)
                session.add(row)
            row.version = version
            row.event_id = event.id
            row.event = event_to_json(event)
            row.moved_by = moved_by
            row.reason = reason
            row.updated_at = utcnow()
            if alias == CHAMPION and target.status == ROLLED_BACK:
                target.status = PROMOTED  # a person made it the champion again: it is a rollback target again
        return row, event, True

    def follow_rollout_rollback(
        self,
        model: str,
        *,
        rolled_back_version: int,
        kept_version: int,
        promotion_event_id: str,
        rollback_event_id: str,
        moved_by: str,
        reason: str,
        make_event: Any,
    ) -> tuple[str, Event[ModelPromoted] | None, ModelAlias | None]:
        """Move ``champion`` back to ``kept_version`` after serving rolled back the promotion
        ``promotion_event_id`` (of ``rolled_back_version``), in one transaction with the alias row locked.

        Returns ``(outcome, event, alias)``:
        - ``"moved"``: the alias still held that promotion and now points at ``kept_version``; ``event`` (built by
          ``make_event(previous_version, kept_version_row)``) is stored on the alias row and must be published;
        - ``"already"``: the alias already points at ``kept_version`` (another replica's rollback, a redelivery
          of this one, or a user did it): nothing moves; ``event`` is the stored one when this very rollback moved
          it (re-sent, same id: its first publish may have failed), else None;
        - ``"moved_elsewhere"``: the alias moved since that promotion (a newer promotion, a user): it stays;
        - ``"unknown_version"``: serving kept a version this registry does not have: it stays.
        """
        with self.Session.begin() as session:
            row = session.get(ModelAlias, (model, CHAMPION), with_for_update=True)
            if row is not None and row.event_id == promotion_event_id and row.version == rolled_back_version:
                target = session.get(ModelVersion, (model, kept_version), with_for_update=True)
                if target is None:
                    return "unknown_version", None, row  # serving kept a version this registry does not know
                event = make_event(row.version, target)
                _mark_rolled_back(session, model, rolled_back_version)
                row.version = kept_version
                row.event_id = event.id
                row.event = event_to_json(event)
                row.moved_by = moved_by
                row.reason = reason
                row.updated_at = utcnow()
                return "moved", event, row
            if row is not None and row.version == kept_version:
                _mark_rolled_back(session, model, rolled_back_version)  # e.g. a user moved it back first
                stored = event_from_json(row.event) if row.event else None
                resend = stored is not None and stored.envelope.caused_by == rollback_event_id
                return "already", stored if resend else None, row
            return "moved_elsewhere", None, row

    def previous_champion(self, model: str, before: int) -> ModelVersion | None:
        """The newest promoted version older than ``before`` (the rollback target when none is named); versions
        serving rolled back (status ``rolled_back``) are skipped."""
        with self.Session() as session:
            return session.scalars(
                sa.select(ModelVersion)
                .where(ModelVersion.model == model, ModelVersion.version < before, ModelVersion.status == PROMOTED)
                .order_by(ModelVersion.version.desc())
                .limit(1)
            ).one_or_none()

    def annotate(
        self, model: str, version: int, *, tags: dict[str, str | None] | None, description: str | None
    ) -> ModelVersion:
        """Merge ``tags`` into the version's tags (a None value deletes the tag); replace the description."""
        with self.Session.begin() as session:
            row = session.get(ModelVersion, (model, version), with_for_update=True)
            if row is None:
                raise NotFoundError(f"model {model!r} has no version {version}")
            if tags is not None:
                merged = dict(row.tags or {})
                for key, value in tags.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                row.tags = merged
            if description is not None:
                row.description = description
        return self.get_version(model, version)


def _mark_rolled_back(session: Session, model: str, version: int) -> None:
    """Serving judged ``version`` worse and the champion is back on the kept one: a promoted version becomes
    ``rolled_back`` (registered/rejected ones keep their status)."""
    row = session.get(ModelVersion, (model, version), with_for_update=True)
    if row is not None and row.status == PROMOTED:
        row.status = ROLLED_BACK
