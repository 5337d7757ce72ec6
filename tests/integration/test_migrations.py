"""Alembic: `upgrade head` on an empty database and `downgrade base` both work."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from campaigns.db.engine import downgrade, upgrade


@pytest.fixture
def empty_database(database_server):
    name = f"campaigns_mig_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(database_server.for_migrations().model_copy(update={"name": "postgres"}).dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_server.model_copy(update={"name": name})
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _tables(settings) -> set[str]:
    with psycopg2.connect(settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in cur.fetchall()}


def test_upgrade_from_empty_then_downgrade_to_base(empty_database):
    upgrade(empty_database)
    assert {
        "campaigns", "campaign_messages", "templates", "channels", "customers", "customer_segments",
        "segment_members", "campaign_manual_recipients", "campaign_recipient_log", "campaign_analytics",
        "outbox", "roles", "role_permissions", "principals", "audit_log",
    } <= _tables(empty_database)

    downgrade(empty_database)
    assert _tables(empty_database) <= {"alembic_version"}

    upgrade(empty_database)  # and back up again: downgrade left nothing behind that blocks it
    assert "campaign_recipient_log" in _tables(empty_database)


def test_timestamps_are_timestamptz(database_settings):
    with psycopg2.connect(database_settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = 'timestamp without time zone'"
        )
        assert cur.fetchall() == []


def test_the_models_are_what_the_migrations_make(database_settings):
    """Every table and column the models declare exists after `upgrade head`, with the same nullability, and the
    migrations make none the models lack (a column added to a model without its migration fails here)."""
    from sqlalchemy import create_engine, inspect

    from campaigns.db.models import Base

    engine = create_engine(database_settings.sqlalchemy_url())
    try:
        live = inspect(engine)
        declared = Base.metadata.tables
        assert set(declared) <= set(live.get_table_names())
        problems = []
        for name, table in declared.items():
            columns = {c["name"]: c for c in live.get_columns(name)}
            for column in table.columns:
                if column.name not in columns:
                    problems.append(f"{name}.{column.name}: declared, not migrated")
                elif columns[column.name]["nullable"] != column.nullable:
                    problems.append(f"{name}.{column.name}: nullable {column.nullable} in the model, "
                                    f"{columns[column.name]['nullable']} in the database")
            problems += [f"{name}.{c}: migrated, not declared" for c in set(columns) - set(table.columns.keys())]
        assert not problems, problems
    finally:
        engine.dispose()
