"""Every SQL statement of the registry. Functions take an open session and return ORM rows;
`registry.service` turns them into plain objects before they leave the package."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry.orm import Alias, AliasHistory, ModelVersion, RegisteredModel, VersionArtifact, utcnow


def get_model(session: Session, name: str, *, for_update: bool = False) -> RegisteredModel | None:
    stmt = select(RegisteredModel).where(RegisteredModel.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).one_or_none()


def list_models(session: Session) -> Sequence[RegisteredModel]:
    return session.scalars(select(RegisteredModel).order_by(RegisteredModel.name)).all()


def ensure_model(session: Session, name: str, description: str) -> None:
    """Create the model row unless it exists; safe when several processes race."""
    values = {"name": name, "description": description, "last_version": 0, "created_at": utcnow()}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(RegisteredModel).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(RegisteredModel).values(**values).on_conflict_do_nothing())
    else:  # pragma: no cover - other dialects are not supported
        raise NotImplementedError(dialect)


def allocate_version(session: Session, model_id: int) -> int:
    """Bump the model's counter and return the new number.

    The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite, inside
    ``BEGIN IMMEDIATE``) until commit, so concurrent registrations queue up and
    each gets the next number; a rolled-back registration leaves a gap, never a reuse.
    """
    stmt = (
        update(RegisteredModel)
        .where(RegisteredModel.id == model_id)
        .values(last_version=RegisteredModel.last_version + 1)
        .returning(RegisteredModel.last_version)
    )
    return int(session.execute(stmt).scalar_one())


def add_version(session: Session, row: ModelVersion, extras: Sequence[VersionArtifact]) -> None:
    session.add(row)
    session.flush()
    session.add_all(extras)
    session.flush()


def get_version(session: Session, model_id: int, version: int) -> ModelVersion | None:
    return session.get(ModelVersion, (model_id, version))


def list_versions(session: Session, model_id: int) -> Sequence[ModelVersion]:
    stmt = select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.version)
    return session.scalars(stmt).all()


def latest_active_version(session: Session, model_id: int) -> ModelVersion | None:
    """The highest-numbered version that is not archived."""
    stmt = (
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id, ModelVersion.status != "archived")
        .order_by(ModelVersion.version.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_extras(session: Session, model_id: int, version: int | None = None) -> Sequence[VersionArtifact]:
    stmt = select(VersionArtifact).where(VersionArtifact.model_id == model_id)
    if version is not None:
        stmt = stmt.where(VersionArtifact.version == version)
    return session.scalars(stmt.order_by(VersionArtifact.version, VersionArtifact.name)).all()


def all_versions_with_names(session: Session) -> Sequence[tuple[str, ModelVersion]]:
    stmt = (
        select(RegisteredModel.name, ModelVersion)
        .join(ModelVersion, ModelVersion.model_id == RegisteredModel.id)
        .order_by(RegisteredModel.name, ModelVersion.version)
    )
    return [(name, row) for name, row in session.execute(stmt)]


def all_extras_with_names(session: Session) -> Sequence[tuple[str, VersionArtifact]]:
    stmt = (
        select(RegisteredModel.name, VersionArtifact)
        .join(VersionArtifact, VersionArtifact.model_id == RegisteredModel.id)
        .order_by(RegisteredModel.name, VersionArtifact.version, VersionArtifact.name)
    )
    return [(name, row) for name, row in session.execute(stmt)]


def referenced_shas(session: Session) -> set[str]:
    shas = set(session.scalars(select(ModelVersion.sha256)).all())
    shas.update(session.scalars(select(VersionArtifact.sha256)).all())
    return shas


def aliases_of_model(session: Session, model_id: int) -> dict[str, int]:
    stmt = select(Alias.alias, Alias.version).where(Alias.model_id == model_id).order_by(Alias.alias)
    return {alias: version for alias, version in session.execute(stmt)}


def aliases_by_model(session: Session) -> dict[int, dict[str, int]]:
    result: dict[int, dict[str, int]] = {}
    for model_id, alias, version in session.execute(
        select(Alias.model_id, Alias.alias, Alias.version).order_by(Alias.alias)
    ):
        result.setdefault(model_id, {})[alias] = version
    return result


def get_alias(session: Session, model_id: int, alias: str) -> Alias | None:
    return session.get(Alias, (model_id, alias))


def set_alias(session: Session, model_id: int, alias: str, version: int) -> None:
    row = session.get(Alias, (model_id, alias))
    if row is None:
        session.add(Alias(model_id=model_id, alias=alias, version=version, updated_at=utcnow()))
    else:
        row.version = version
        row.updated_at = utcnow()
    session.flush()


def delete_alias(session: Session, model_id: int, alias: str) -> None:
    session.execute(delete(Alias).where(Alias.model_id == model_id, Alias.alias == alias))


def append_history(session: Session, entry: AliasHistory) -> None:
    session.add(entry)
    session.flush()


def history(session: Session, model_id: int, alias: str | None = None) -> Sequence[AliasHistory]:
    stmt = select(AliasHistory).where(AliasHistory.model_id == model_id)
    if alias is not None:
        stmt = stmt.where(AliasHistory.alias == alias)
    return session.scalars(stmt.order_by(AliasHistory.id)).all()


def count_versions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(ModelVersion)) or 0)
