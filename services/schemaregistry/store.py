"""Schemas, subjects, versions and compatibility levels in the platform database."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import RegistryConfig, RegistrySchema, RegistrySubjectVersion
from driftloop.clients.retry import retry

from .compatibility import LEVELS, check, parse_avro
from .errors import (
    IncompatibleSchema,
    InvalidCompatibilityLevel,
    InvalidSchema,
    InvalidVersion,
    RegistryStoreError,
    SchemaNotFound,
    SubjectCompatibilityNotFound,
    SubjectNotFound,
    VersionNotFound,
)


def subject_not_found(subject: str) -> SubjectNotFound:
    return SubjectNotFound(f"Subject '{subject}' not found.")


def version_not_found(version: object) -> VersionNotFound:
    return VersionNotFound(f"Version {version} not found.")


def schema_not_found() -> SchemaNotFound:
    return SchemaNotFound("Schema not found")


def subject_compatibility_not_found(subject: str) -> SubjectCompatibilityNotFound:
    return SubjectCompatibilityNotFound(f"Subject '{subject}' does not have subject-level compatibility configured")


def _schema(s: Session, schema_id: int) -> RegistrySchema:
    found = s.get(RegistrySchema, schema_id)
    if found is None:  # a version row always points to a stored schema: this is a damaged database
        raise schema_not_found()
    return found


@dataclass(frozen=True)
class SubjectVersion:
    subject: str
    version: int
    schema_id: int
    schema: str


def fingerprint(schema_text: str) -> str:
    """Identity of a schema: its JSON with keys sorted and no whitespace, hashed."""
    try:
        normalized = json.dumps(json.loads(schema_text), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError as exc:
        raise InvalidSchema(f"Invalid schema: not JSON: {exc}") from exc
    return hashlib.sha256(normalized.encode()).hexdigest()


class SchemaStore:
    def __init__(self, session_factory: sessionmaker[Session], default_compatibility: str = "BACKWARD") -> None:
        self.Session = session_factory
        self.default_compatibility = default_compatibility

    # --- schemas ---------------------------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> str:
        with self.Session() as s:
            row = s.get(RegistrySchema, schema_id)
            if row is None:
                raise schema_not_found()
            return row.schema_text

    def subjects_of(self, schema_id: int) -> list[SubjectVersion]:
        self.schema_by_id(schema_id)
        with self.Session() as s:
            rows = s.scalars(
                sa.select(RegistrySubjectVersion)
                .where(RegistrySubjectVersion.schema_id == schema_id, RegistrySubjectVersion.deleted.is_(False))
                .order_by(RegistrySubjectVersion.subject, RegistrySubjectVersion.version)
            ).all()
            return [SubjectVersion(r.subject, r.version, r.schema_id, "") for r in rows]

    def _schema_id_for(self, s: Session, schema_text: str) -> int:
        fp = fingerprint(schema_text)
        existing = s.scalar(sa.select(RegistrySchema.id).where(RegistrySchema.fingerprint == fp))
        if existing is not None:
            return existing
        row = RegistrySchema(schema_type="AVRO", fingerprint=fp, schema_text=schema_text)
        s.add(row)
        s.flush()
        return row.id

    # --- subjects --------------------------------------------------------------------------------------

    def subjects(self, include_deleted: bool = False) -> list[str]:
        with self.Session() as s:
            q = sa.select(RegistrySubjectVersion.subject).distinct()
            if not include_deleted:
                q = q.where(RegistrySubjectVersion.deleted.is_(False))
            return sorted(s.scalars(q))

    def _versions(self, s: Session, subject: str, include_deleted: bool = False) -> list[RegistrySubjectVersion]:
        q = sa.select(RegistrySubjectVersion).where(RegistrySubjectVersion.subject == subject)
        if not include_deleted:
            q = q.where(RegistrySubjectVersion.deleted.is_(False))
        return list(s.scalars(q.order_by(RegistrySubjectVersion.version)))

    def versions(self, subject: str) -> list[int]:
        with self.Session() as s:
            rows = self._versions(s, subject)
            if not rows:
                raise subject_not_found(subject)
            return [r.version for r in rows]

    def get_version(self, subject: str, version: str | int) -> SubjectVersion:
        with self.Session() as s:
            rows = self._versions(s, subject)
            if not rows:
                raise subject_not_found(subject)
            if str(version) in {"latest", "-1"}:
                row = rows[-1]
            else:
                try:
                    wanted = int(version)
                except ValueError:
                    raise InvalidVersion(
                        "The specified version is not a valid version id: use a positive integer or latest"
                    ) from None
                found = next((r for r in rows if r.version == wanted), None)
                if found is None:
                    raise version_not_found(version)
                row = found
            return SubjectVersion(subject, row.version, row.schema_id, _schema(s, row.schema_id).schema_text)

    def lookup(self, subject: str, schema_text: str) -> SubjectVersion:
        fp = fingerprint(schema_text)
        with self.Session() as s:
            rows = self._versions(s, subject)
            if not rows:
                raise subject_not_found(subject)
            for r in rows:
                text = _schema(s, r.schema_id).schema_text
                if fingerprint(text) == fp:
                    return SubjectVersion(subject, r.version, r.schema_id, text)
        raise schema_not_found()

    def register(self, subject: str, schema_text: str) -> int:
        """Register under ``subject`` (idempotent: a known schema gets its existing id) after the
        compatibility check. Returns the schema id."""
        parse_avro(schema_text)
        try:
            # A concurrent registration won the race: look again.
            return retry(
                lambda: self._register_once(subject, schema_text),
                attempts=5,
                retry_on=(IntegrityError,),
                first_delay=0.05,
                what=f"registering a schema under {subject}",
            )
        except IntegrityError:
            raise RegistryStoreError("could not register the schema after concurrent updates; retry") from None

    def _register_once(self, subject: str, schema_text: str) -> int:
        fp = fingerprint(schema_text)
        with self.Session.begin() as s:
            rows = self._versions(s, subject)
            for r in rows:
                if _schema(s, r.schema_id).fingerprint == fp:
                    return r.schema_id
            level = self._compatibility(s, subject)
            problems = check(level, schema_text, [_schema(s, r.schema_id).schema_text for r in rows])
            if problems:
                raise IncompatibleSchema(
                    f'Schema being registered is incompatible with an earlier schema for subject "{subject}" '
                    f"(compatibility {level}): " + "; ".join(problems),
                )
            schema_id = self._schema_id_for(s, schema_text)
            all_rows = self._versions(s, subject, include_deleted=True)
            next_version = (all_rows[-1].version + 1) if all_rows else 1
            s.add(RegistrySubjectVersion(subject=subject, version=next_version, schema_id=schema_id))
            return schema_id

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        with self.Session.begin() as s:
            rows = self._versions(s, subject, include_deleted=permanent)
            if not rows:
                raise subject_not_found(subject)
            versions = [r.version for r in rows]
            for r in rows:
                if permanent:
                    s.delete(r)
                else:
                    r.deleted = True
            return versions

    def delete_version(self, subject: str, version: str | int, permanent: bool = False) -> int:
        found = self.get_version(subject, version) if not permanent else None
        with self.Session.begin() as s:
            wanted = found.version if found else int(version)
            row = s.get(RegistrySubjectVersion, (subject, wanted))
            if row is None:
                raise version_not_found(version)
            if permanent:
                s.delete(row)
            else:
                row.deleted = True
            return wanted

    def test_compatibility(self, subject: str, schema_text: str, version: str | int | None) -> list[str]:
        """Problems of ``schema_text`` against one version (or, with None, what the subject's level demands)."""
        parse_avro(schema_text)
        with self.Session() as s:
            level = self._compatibility(s, subject)
            rows = self._versions(s, subject)
            texts = [_schema(s, r.schema_id).schema_text for r in rows]
        if version is None:
            return check(level, schema_text, texts)
        target = self.get_version(subject, version)
        base = level.replace("_TRANSITIVE", "") if level != "NONE" else "BACKWARD"
        return check(base, schema_text, [target.schema])

    # --- config ----------------------------------------------------------------------------------------

    def _compatibility(self, s: Session, subject: str) -> str:
        row = s.get(RegistryConfig, subject) or s.get(RegistryConfig, "")
        return row.compatibility if row else self.default_compatibility

    def get_compatibility(self, subject: str | None, default_to_global: bool = False) -> str:
        with self.Session() as s:
            if subject is None:
                row = s.get(RegistryConfig, "")
                return row.compatibility if row else self.default_compatibility
            row = s.get(RegistryConfig, subject)
            if row is None:
                if default_to_global:
                    return self._compatibility(s, subject)
                raise subject_compatibility_not_found(subject)
            return row.compatibility

    def set_compatibility(self, subject: str | None, level: str) -> str:
        level = level.upper()
        if level not in LEVELS:
            raise InvalidCompatibilityLevel(f"Invalid compatibility level {level!r}: use one of {', '.join(LEVELS)}")
        with self.Session.begin() as s:
            key = subject or ""
            row = s.get(RegistryConfig, key)
            if row is None:
                s.add(RegistryConfig(subject=key, compatibility=level))
            else:
                row.compatibility = level
        return level

    def delete_compatibility(self, subject: str) -> str:
        with self.Session.begin() as s:
            row = s.get(RegistryConfig, subject)
            if row is None:
                raise subject_compatibility_not_found(subject)
            level = row.compatibility
            s.delete(row)
            return level
