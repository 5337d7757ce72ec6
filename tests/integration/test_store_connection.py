"""sinks.connection.StoreConnection on PostgreSQL: a transaction is one (BEGIN sent with its first statement),
committed when its block ends and rolled back when it raises; a statement commits on its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from psycopg2 import sql

from sinks.connection import StoreConnection


@pytest.fixture
def table(database_server) -> Iterator[tuple[str, StoreConnection, psycopg2.extensions.connection]]:
    """A table of its own, the store's connection and an observer's (autocommit: each read sees what committed),
    as the schema owner (the application role may not create tables)."""
    dsn = database_server.for_migrations().dsn()
    name = f"store_connection_{uuid.uuid4().hex[:12]}"
    observer = psycopg2.connect(dsn)
    observer.autocommit = True
    with observer.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (n int PRIMARY KEY)")
    store = StoreConnection(dsn)
    try:
        yield name, store, observer
    finally:
        store.close()
        with observer.cursor() as cur:
            cur.execute(f"DROP TABLE {name}")
        observer.close()


def _rows(observer, name: str) -> list[int]:
    with observer.cursor() as cur:
        cur.execute(f"SELECT n FROM {name} ORDER BY n")
        return [n for (n,) in cur.fetchall()]


def test_a_transaction_commits_when_its_block_ends_and_not_before(table) -> None:
    name, store, observer = table
    with store.transaction() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (1)")
        cur.execute(f"INSERT INTO {name} VALUES (2)")
        assert _rows(observer, name) == []
    assert _rows(observer, name) == [1, 2]


def test_its_statements_are_one_transaction_whatever_form_the_first_takes(table) -> None:
    _, store, _ = table
    for first in ("SELECT txid_current()", b"SELECT txid_current()", sql.SQL("SELECT txid_current()")):
        with store.transaction() as cur:
            cur.execute(first)
            opened = cur.fetchone()[0]
            cur.execute("SELECT txid_current()")
            assert cur.fetchone()[0] == opened
            cur.execute("SELECT now() = statement_timestamp()")  # the transaction started before this statement
            assert cur.fetchone()[0] is False


def test_a_block_that_raises_is_rolled_back_and_the_connection_goes_on(table) -> None:
    name, store, observer = table
    with pytest.raises(RuntimeError), store.transaction() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (1)")
        raise RuntimeError("the stage failed half way")
    with pytest.raises(psycopg2.errors.UniqueViolation), store.transaction() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (2)")
        cur.execute(f"INSERT INTO {name} VALUES (2)")
    assert _rows(observer, name) == []
    with store.transaction() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (3)")
    assert _rows(observer, name) == [3]


def test_a_block_without_statements_sends_nothing(table) -> None:
    """A block that ran no statement opened no transaction: it ends, or fails, without a ROLLBACK that PostgreSQL
    would answer with a warning (there is no transaction in progress) and leaves the connection idle."""
    _, store, _ = table
    with store.transaction():
        pass
    with pytest.raises(RuntimeError), store.transaction():
        raise RuntimeError("failed before its first statement")
    assert store.raw.notices == []
    assert store.raw.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_a_statement_is_committed_once_it_returns(table) -> None:
    name, store, observer = table
    with store.statement() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (1), (2) RETURNING n")
        assert sorted(n for (n,) in cur.fetchall()) == [1, 2]
        assert _rows(observer, name) == [1, 2]  # durable before the block ends
        cur.execute("SELECT txid_current()")
        first = cur.fetchone()[0]
        cur.execute("SELECT txid_current()")
        assert cur.fetchone()[0] != first  # each statement its own transaction
    with pytest.raises(psycopg2.errors.UniqueViolation), store.statement() as cur:
        cur.execute(f"INSERT INTO {name} VALUES (3), (1)")
    assert _rows(observer, name) == [1, 2]  # atomic: none of a failed statement's rows
