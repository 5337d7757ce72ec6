"""Engines, sessions and migrations. Nothing here runs at import; callers pass the settings in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from campaigns.settings import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_engine(db: DatabaseSettings) -> Engine:
    return create_engine(
        db.sqlalchemy_url(),
        pool_size=db.pool_size,
        max_overflow=db.pool_size,
        pool_pre_ping=True,
        # The password never shows in logs or reprs (SQLAlchemy masks it; hide_parameters keeps row
        # values, e.g. addresses, out of error messages too).
        hide_parameters=True,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception. The caller owns it, not repos."""
    with factory() as session, session.begin():
        yield session


def alembic_config(db: DatabaseSettings) -> Config:
    """Alembic's configuration for ``db`` (the application's settings): it connects as the migration role
    (:meth:`~campaigns.settings.DatabaseSettings.for_migrations`, the schema owner) and grants the application
    role (``db.user``) data access only (migration 0006)."""
    from alembic.config import Config  # imported here: alembic costs every CLI call 0.3 s, and few migrate

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    # ConfigParser interpolation would eat a '%' in the password (the URL percent-escapes special characters).
    config.set_main_option("sqlalchemy.url", db.for_migrations().url().replace("%", "%%"))
    config.attributes["app_role"] = db.user
    return config


def upgrade(db: DatabaseSettings, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(db), revision)


def downgrade(db: DatabaseSettings, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(db), revision)
