"""Engines and schema migrations.

SQLite is set up for several processes at once: WAL journal, a busy timeout,
foreign keys on, and write transactions that take the write lock when they
begin (``BEGIN IMMEDIATE``) so two writers queue up instead of failing midway.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from registry.errors import DatabaseUnavailableError, InvalidInputError, SchemaOutOfDateError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: a server or CLI command that only reads pays nothing for it.

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_registry_engine(url: str, *, password: str | None = None) -> Engine:
    """An engine for ``url``; ``password``, if given, replaces the URL's (and needs no URL-encoding)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInputError(
            "malformed database URL (REGISTRY_DATABASE_URL): expected dialect+driver://user@host:port/database"
        ) from None
    if password is not None:
        parsed = parsed.set(password=password)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise InvalidInputError(f"unsupported database URL {parsed!r}: {exc}") from None
    if is_sqlite:
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def write_engine(engine: Engine) -> Engine:
    """The same engine, but its transactions take SQLite's write lock up front."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


def alembic_config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def check_schema(engine: Engine) -> None:
    """Raise unless the database schema is exactly what this code expects."""
    try:
        current = current_revision(engine)
    except Exception as exc:  # any driver error here means the database cannot be used
        raise DatabaseUnavailableError(
            f"cannot reach the registry database {redact(engine)}: {first_line(exc)}"
        ) from exc
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutOfDateError(
            f"the registry database {redact(engine)} has no schema yet: run `registry db upgrade`"
        )
    raise SchemaOutOfDateError(
        f"the registry database schema is at revision {current}, this code needs {head}: run `registry db upgrade`"
    )


def redact(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
