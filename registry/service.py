"""`Registry`: the Python API that training, the server and the CLI share."""

from __future__ import annotations

import getpass
import io
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from core.contract import contract_changes
from registry import repository as repo
from registry.artifacts import ArtifactStore, open_store
from registry.check import ContractMismatchError, check_servable
from registry.db import check_schema, create_registry_engine, first_line, redact, write_engine
from registry.errors import (
    ArtifactCheckError,
    ConflictError,
    DatabaseUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from registry.orm import AliasHistory, ModelVersion, RegisteredModel, VersionArtifact
from registry.schemas import (
    ALIAS_RE,
    MAX_VERSION,
    MODEL_NAME_RE,
    AliasMove,
    ArtifactRef,
    ModelInfo,
    VersionInfo,
    VersionMetadata,
)
from registry.settings import RegistrySettings

GC_GRACE_SECONDS = 3600


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def validate_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name) or len(name) > 200:
        raise InvalidInputError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    if not ALIAS_RE.fullmatch(alias) or len(alias) > 100:
        raise InvalidInputError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' or '-', starting with a letter"
        )
    return alias


def parse_metadata(raw: Mapping[str, Any] | VersionMetadata) -> VersionMetadata:
    if isinstance(raw, VersionMetadata):
        return raw
    try:
        return VersionMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "metadata"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidInputError(f"invalid metadata: {where}: {first['msg']}{more}") from None


class _Move(Protocol):  # a history row, or an AliasMove
    @property
    def action(self) -> str: ...

    @property
    def to_version(self) -> int | None: ...


def alias_stack(moves: Iterable[_Move]) -> list[int]:
    """The versions an alias has pointed to, oldest first, as rollback sees them: the history of one
    alias replayed as a stack (a promotion pushes, a rollback pops, a removal clears)."""
    stack: list[int] = []
    for move in moves:
        if move.action == "promote" and move.to_version is not None:
            stack.append(move.to_version)
        elif move.action == "rollback" and stack:
            stack.pop()
        elif move.action == "remove":
            stack.clear()
    return stack


@dataclass(frozen=True)
class Reference:
    """A parsed `NAME`, `NAME:VERSION` or `NAME@ALIAS`."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if "@" in text:
            name, alias = text.split("@", 1)
            return cls(validate_model_name(name), alias=validate_alias(alias))
        if ":" in text:
            name, version = text.split(":", 1)
            if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= MAX_VERSION:
                raise InvalidInputError(f"invalid version {version!r} in {text!r}: expected a positive integer")
            return cls(validate_model_name(name), version=int(version))
        return cls(validate_model_name(text))


@dataclass(frozen=True)
class Problem:
    """One artifact that failed verification."""

    model_name: str
    version: int
    artifact: str
    detail: str


class Registry:
    """Models, versions, aliases and their history in SQL; artifacts in a content-addressed store."""

    def __init__(
        self,
        *,
        database_url: str,
        artifacts_dir: Path | str,
        check: bool = True,
        database_password: str | None = None,
    ) -> None:
        self.engine: Engine = create_registry_engine(database_url, password=database_password)
        self._write_engine = write_engine(self.engine)
        # A directory, or a store URL such as s3://bucket/prefix.
        self.store: ArtifactStore = open_store(artifacts_dir)
        self._schema_checked = not check

    @classmethod
    def from_settings(cls, settings: RegistrySettings | None = None, *, check: bool = True) -> Registry:
        settings = settings or RegistrySettings()
        secret = settings.database_password.get_secret_value() if settings.database_password else ""
        password = secret or None  # an empty variable means none given
        return cls(
            database_url=settings.database_url,
            artifacts_dir=settings.artifacts_url or settings.artifacts_dir,
            check=check,
            database_password=password,
        )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions --------------------------------------------------------------------------

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        if not self._schema_checked:
            check_schema(self.engine)
            self._schema_checked = True
        bind = self._write_engine if write else self.engine
        try:
            with Session(bind, expire_on_commit=False) as session, session.begin():
                yield session
        except RegistryError:
            raise
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise DatabaseUnavailableError(
                    f"registry database {redact(self.engine)} failed: {first_line(exc)}"
                ) from exc
            raise

    def _model(self, session: Session, name: str, *, for_update: bool = False) -> RegisteredModel:
        validate_model_name(name)
        model = repo.get_model(session, name, for_update=for_update)
        if model is None:
            raise NotFoundError(f"no model named {name!r}")
        return model

    def _version_row(self, session: Session, model: RegisteredModel, version: int) -> ModelVersion:
        if not 1 <= version <= MAX_VERSION:  # the database's integer would overflow
            raise NotFoundError(f"model {model.name!r} has no version {version}")
        row = repo.get_version(session, model.id, version)
        if row is None:
            raise NotFoundError(f"model {model.name!r} has no version {version}")
        return row

    def _to_info(
        self, session: Session, model: RegisteredModel, row: ModelVersion, aliases: dict[str, int]
    ) -> VersionInfo:
        extras = repo.list_extras(session, model.id, row.version)
        return _version_info(model.name, row, extras, aliases)

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        *,
        name: str,
        onnx_path: Path | str,
        metadata: Mapping[str, Any] | VersionMetadata,
        extras: Mapping[str, Path | str] | None = None,
        actor: str | None = None,
        description: str | None = None,
        allow_contract_change: bool = False,
    ) -> VersionInfo:
        """Store the artifact and its extras, then add the next version in one transaction.

        A contract that differs from the latest unarchived version's (labels, output kind, input
        size) is refused with ConflictError unless ``allow_contract_change``; an allowed change is
        recorded with the version."""
        validate_model_name(name)
        meta = parse_metadata(metadata)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise InvalidInputError(f"model file {str(onnx_path)!r} does not exist")
        if onnx_path.stat().st_size == 0:
            raise InvalidInputError(f"model file {str(onnx_path)!r} is empty")
        extra_paths = {key: Path(value) for key, value in (extras or {}).items()}
        for key, path in extra_paths.items():
            if not key or "/" in key or key.startswith("."):
                raise InvalidInputError(f"invalid extra artifact name {key!r}")
            if not path.is_file():
                raise InvalidInputError(f"extra artifact {str(path)!r} does not exist")

        sha, size = self.store.put_file(onnx_path)
        stored_extras = {key: self.store.put_file(path) for key, path in extra_paths.items()}

        with self._session(write=True) as session:
            repo.ensure_model(session, name, description or meta.description)
        with self._session(write=True) as session:
            model = self._model(session, name, for_update=True)
            change = self._contract_change(session, model, meta, allow=allow_contract_change)
            number = repo.allocate_version(session, model.id)
            row = ModelVersion(
                model_id=model.id,
                version=number,
                status="ready",
                sha256=sha,
                size=size,
                format="onnx",
                meta=meta.model_dump(mode="json"),
                created_by=actor or default_actor(),
                contract_change=change,
            )
            extra_rows = [
                VersionArtifact(model_id=model.id, version=number, name=key, sha256=esha, size=esize)
                for key, (esha, esize) in sorted(stored_extras.items())
            ]
            repo.add_version(session, row, extra_rows)
            info = _version_info(name, row, extra_rows, {})
        # gc checks a blob's age just before deleting it; on a store where that check and the delete
        # are not one step (a bucket), a blob written again by this registration could still go.
        # Now that the version is committed no gc will delete it: put back whatever is missing.
        if not self.store.exists(sha):
            self.store.put_file(onnx_path)
        for key, (esha, _) in stored_extras.items():
            if not self.store.exists(esha):
                self.store.put_file(extra_paths[key])
        return info

    def _contract_change(
        self, session: Session, model: RegisteredModel, meta: VersionMetadata, *, allow: bool
    ) -> str | None:
        previous = repo.latest_active_version(session, model.id)
        if previous is None:
            return None
        old = VersionMetadata.model_validate(previous.meta).contract
        changes = contract_changes(old, meta.contract)
        if not changes:
            return None
        text = f"from v{previous.version}: " + "; ".join(changes)
        if not allow:
            raise ConflictError(
                f"the new version of {model.name!r} changes its contract {text}: "
                "clients and servers following its aliases would see that; allow it explicitly "
                "(--allow-contract-change) if that is intended"
            )
        return text

    # -- reading -----------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        with self._session() as session:
            aliases = repo.aliases_by_model(session)
            return [_model_info(m, aliases.get(m.id, {})) for m in repo.list_models(session)]

    def get_model(self, name: str) -> ModelInfo:
        with self._session() as session:
            model = self._model(session, name)
            return _model_info(model, repo.aliases_of_model(session, model.id))

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self._session() as session:
            model = self._model(session, name)
            aliases = repo.aliases_of_model(session, model.id)
            extras: dict[int, list[VersionArtifact]] = {}
            for extra in repo.list_extras(session, model.id):
                extras.setdefault(extra.version, []).append(extra)
            return [
                _version_info(name, row, extras.get(row.version, []), aliases)
                for row in repo.list_versions(session, model.id)
            ]

    def get_version(self, name: str, version: int) -> VersionInfo:
        with self._session() as session:
            model = self._model(session, name)
            row = self._version_row(session, model, version)
            return self._to_info(session, model, row, repo.aliases_of_model(session, model.id))

    def resolve(self, name: str, alias: str) -> VersionInfo:
        """The version an alias points to."""
        validate_alias(alias)
        with self._session() as session:
            model = self._model(session, name)
            aliases = repo.aliases_of_model(session, model.id)
            if alias not in aliases:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}")
            row = self._version_row(session, model, aliases[alias])
            return self._to_info(session, model, row, aliases)

    def get(self, reference: str | Reference) -> VersionInfo:
        """Look up `NAME:VERSION`, `NAME@ALIAS`, or `NAME` (its latest version)."""
        ref = Reference.parse(reference) if isinstance(reference, str) else reference
        if ref.alias is not None:
            return self.resolve(ref.name, ref.alias)
        if ref.version is not None:
            return self.get_version(ref.name, ref.version)
        versions = self.list_versions(ref.name)
        if not versions:
            raise NotFoundError(f"model {ref.name!r} has no versions")
        return versions[-1]

    def aliases(self, name: str) -> dict[str, int]:
        with self._session() as session:
            return repo.aliases_of_model(session, self._model(session, name).id)

    def history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        if alias is not None:
            validate_alias(alias)
        with self._session() as session:
            model = self._model(session, name)
            return [_move(name, entry) for entry in repo.history(session, model.id, alias)]

    def open_artifact(self, name: str, version: int) -> bytes:
        """The version's ONNX bytes, checked against the recorded sha256."""
        info = self.get_version(name, version)
        return self.store.read(info.sha256, what=f"{name} v{version}")

    def read_extra(self, name: str, version: int, extra: str) -> bytes:
        info = self.get_version(name, version)
        for ref in info.extras:
            if ref.name == extra:
                return self.store.read(ref.sha256, what=f"{name} v{version} extra {extra!r}")
        raise NotFoundError(f"{name} v{version} has no extra artifact {extra!r}")

    # -- alias moves ---------------------------------------------------------------------------

    def promote(
        self,
        *,
        name: str,
        version: int,
        alias: str = "production",
        actor: str | None = None,
        reason: str = "",
        check: bool = True,
    ) -> AliasMove:
        """Point ``alias`` at ``version``.

        With ``check`` (the default) the version must be servable first: its artifact intact,
        loadable by ONNX Runtime and true to its contract (`check_version`). Without, the move is
        recorded as unchecked."""
        validate_alias(alias)
        if check:
            self.check_version(name, version)
        with self._session(write=True) as session:
            model = self._model(session, name, for_update=True)
            row = self._version_row(session, model, version)
            if row.status == "archived":
                raise ConflictError(f"{name} v{version} is archived and cannot be promoted")
            current = repo.get_alias(session, model.id, alias)
            previous = current.version if current is not None else None
            if previous == version:
                raise ConflictError(f"alias {alias!r} of {name!r} already points to v{version}")
            return self._move(session, model, alias, previous, version, "promote", actor, reason, checked=check)

    def rollback(
        self,
        *,
        name: str,
        alias: str = "production",
        actor: str | None = None,
        reason: str = "",
        check: bool = True,
    ) -> AliasMove:
        """Move ``alias`` back to the version it held before its current one.

        The history is replayed as a stack: a promotion pushes, a rollback pops and a
        removal clears, so repeated rollbacks walk further back rather than flip-flop.
        The target is checked as a promotion's is, unless ``check`` is off.
        """
        validate_alias(alias)
        if check:
            with self._session() as session:
                target, _ = self._rollback_target(session, self._model(session, name), alias)
            self.check_version(name, target)
        with self._session(write=True) as session:
            model = self._model(session, name, for_update=True)
            moved_to, current = self._rollback_target(session, model, alias)
            if check and moved_to != target:
                raise ConflictError(f"alias {alias!r} of {name!r} moved while rolling back: try again")
            return self._move(session, model, alias, current, moved_to, "rollback", actor, reason, checked=check)

    def _rollback_target(self, session: Session, model: RegisteredModel, alias: str) -> tuple[int, int]:
        """(the version a rollback of ``alias`` goes to, the one it leaves)."""
        name = model.name
        current = repo.get_alias(session, model.id, alias)
        if current is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        stack = alias_stack(repo.history(session, model.id, alias))
        if len(stack) < 2 or stack[-1] != current.version:
            raise ConflictError(f"alias {alias!r} of {name!r} has no earlier version to roll back to")
        target = stack[-2]
        if self._version_row(session, model, target).status == "archived":
            raise ConflictError(f"cannot roll {alias!r} back to {name} v{target}: it is archived")
        return target, current.version

    def check_version(self, name: str, version: int) -> None:
        """Raise ArtifactCheckError unless ``name`` v``version`` can be served: its artifact is present
        and intact (sha256), ONNX Runtime loads it, and its graph matches its contract."""
        info = self.get_version(name, version)
        what = f"{name} v{version}"
        try:
            data = self.store.read(info.sha256, what=what)
        except (NotFoundError, IntegrityError) as exc:
            raise ArtifactCheckError(f"{what} cannot be served: {exc.message}") from None
        try:
            check_servable(data, info.contract)
        except ContractMismatchError as exc:
            raise ArtifactCheckError(f"{what} cannot be served: {exc}") from None
        except ImportError:
            raise ArtifactCheckError(
                f"cannot check {what}: ONNX Runtime is not installed here (install the `serve` extra), "
                "or skip the check with --no-check"
            ) from None

    def remove_alias(self, *, name: str, alias: str, actor: str | None = None, reason: str = "") -> AliasMove:
        validate_alias(alias)
        with self._session(write=True) as session:
            model = self._model(session, name, for_update=True)
            current = repo.get_alias(session, model.id, alias)
            if current is None:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}")
            return self._move(session, model, alias, current.version, None, "remove", actor, reason)

    def _move(
        self,
        session: Session,
        model: RegisteredModel,
        alias: str,
        from_version: int | None,
        to_version: int | None,
        action: str,
        actor: str | None,
        reason: str,
        *,
        checked: bool | None = None,
    ) -> AliasMove:
        if to_version is None:
            repo.delete_alias(session, model.id, alias)
        else:
            repo.set_alias(session, model.id, alias, to_version)
        entry = AliasHistory(
            model_id=model.id,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            action=action,
            actor=actor or default_actor(),
            reason=reason,
            checked=checked,
        )
        repo.append_history(session, entry)
        return _move(model.name, entry)

    def archive(self, *, name: str, version: int, actor: str | None = None, reason: str = "") -> VersionInfo:
        """Mark a version archived (it can no longer be promoted), and record who did it and why."""
        with self._session(write=True) as session:
            model = self._model(session, name, for_update=True)
            row = self._version_row(session, model, version)
            aliases = repo.aliases_of_model(session, model.id)
            holding = sorted(a for a, v in aliases.items() if v == version)
            if holding:
                raise ConflictError(
                    f"{name} v{version} is what {', '.join(holding)} points to: move the alias first, then archive"
                )
            if row.status == "archived":
                raise ConflictError(f"{name} v{version} is archived already")
            row.status = "archived"
            session.flush()
            repo.append_history(
                session,
                AliasHistory(
                    model_id=model.id,
                    alias=None,
                    from_version=version,
                    to_version=None,
                    action="archive",
                    actor=actor or default_actor(),
                    reason=reason,
                ),
            )
            return self._to_info(session, model, row, aliases)

    # -- maintenance ---------------------------------------------------------------------------

    def verify(self) -> tuple[int, list[Problem]]:
        """Re-hash every artifact; returns (number checked, problems)."""
        with self._session() as session:
            versions = repo.all_versions_with_names(session)
            extras = repo.all_extras_with_names(session)
        problems: list[Problem] = []
        for name, row in versions:
            if detail := self.store.verify(row.sha256):
                problems.append(Problem(name, row.version, "model.onnx", detail))
        for name, extra in extras:
            if detail := self.store.verify(extra.sha256):
                problems.append(Problem(name, extra.version, extra.name, detail))
        return len(versions) + len(extras), problems

    def copy_store(self, destination: ArtifactStore) -> tuple[int, int, list[Problem]]:
        """Copy every artifact a version references into ``destination`` (to move a deployment to a
        bucket): each is read sha256-checked and skipped when the destination already holds it
        intact. Returns (copied, already there, problems with the source's copies)."""
        with self._session() as session:
            wanted = [
                (name, row.version, "model.onnx", row.sha256) for name, row in repo.all_versions_with_names(session)
            ]
            wanted += [(name, e.version, e.name, e.sha256) for name, e in repo.all_extras_with_names(session)]
        copied = present = 0
        problems: list[Problem] = []
        done: set[str] = set()
        for name, version, artifact, sha in wanted:
            if sha in done:
                continue
            done.add(sha)
            if destination.verify(sha) is None:
                present += 1
                continue
            try:
                data = self.store.read(sha, what=f"{name} v{version} {artifact}")
            except (NotFoundError, IntegrityError) as exc:
                problems.append(Problem(name, version, artifact, exc.message))
                continue
            stored, _ = destination.put_stream(io.BytesIO(data))
            assert stored == sha
            copied += 1
        return copied, present, problems

    def gc(self, *, dry_run: bool = False, grace_seconds: float = GC_GRACE_SECONDS) -> list[tuple[str, int]]:
        """Delete blobs no version references; returns (sha256, bytes) of each.

        Blobs written in the last ``grace_seconds`` are kept: a registration in progress has
        written its blob (every registration writes it anew, even when the content is already
        stored) but not yet committed the version that references it. Uploads whose process died
        are removed whatever their age (see `ArtifactStore.remove_leftovers`).
        """
        with self._session() as session:
            referenced = repo.referenced_shas(session)
        cutoff = time.time() - grace_seconds
        removed: list[tuple[str, int]] = []
        for sha in list(self.store.iter_blobs()):
            if sha in referenced:
                continue
            if dry_run:
                try:
                    if self.store.modified_at(sha) < cutoff:
                        removed.append((sha, self.store.size_of(sha)))
                except (FileNotFoundError, NotFoundError):
                    continue
                continue
            size = self.store.delete_if_stale(sha, older_than=cutoff)
            if size is not None:
                removed.append((sha, size))
        if not dry_run:
            self.store.remove_leftovers(older_than=cutoff)
        return removed


def _model_info(model: RegisteredModel, aliases: dict[str, int]) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        description=model.description,
        created_at=model.created_at,
        latest_version=model.last_version,
        aliases=aliases,
    )


def _version_info(name: str, row: ModelVersion, extras: Any, aliases: dict[str, int]) -> VersionInfo:
    return VersionInfo(
        model_name=name,
        version=row.version,
        status=row.status,
        sha256=row.sha256,
        size=row.size,
        format=row.format,
        metadata=VersionMetadata.model_validate(row.meta),
        extras=[ArtifactRef(name=e.name, sha256=e.sha256, size=e.size) for e in extras],
        aliases=sorted(a for a, v in aliases.items() if v == row.version),
        created_at=row.created_at,
        created_by=row.created_by,
        contract_change=row.contract_change,
    )


def _move(name: str, entry: AliasHistory) -> AliasMove:
    return AliasMove(
        model_name=name,
        alias=entry.alias,
        from_version=entry.from_version,
        to_version=entry.to_version,
        action=entry.action,
        actor=entry.actor,
        reason=entry.reason,
        created_at=entry.created_at,
        checked=entry.checked,
    )
