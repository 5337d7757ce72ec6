"""One PostgreSQL connection a sink store owns, and its transactions (``with conn.transaction() as cur``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

# For a connection whose every statement looks up at most a batch of keys through an index (the senders'
# store): never a sequential scan when an index can serve. PostgreSQL's cost model (random_page_cost 4) prices
# 1,000 probes of the log's unique index above one scan of a log of ~100,000 rows, and with statistics gathered
# before the log held claimed rows it chose "scan the table, hash the batch" for the result write: 44 ms a batch
# of 1,000 against 12 ms through the index, measured (docs/benchmarks.md). It is a cost penalty, not a ban: a
# statement with no usable index still runs.
KEY_LOOKUPS = "-c enable_seqscan=off"
# The same for one transaction, on a connection that also runs other statements (the analytics store's reads of
# a batch's recipient-log rows: 30 ms scanned and hashed against 1.5 ms through the index, 1,000 keys in a log of
# 100,000 rows with an emptied log's statistics).
KEY_LOOKUPS_HERE = "SET LOCAL enable_seqscan = off"


class _BeginningCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """A cursor of :meth:`StoreConnection.transaction`: its first ``execute`` opens the transaction in the same
    round trip (``BEGIN;`` and the statement in one query string), where psycopg2 sends ``BEGIN`` on its own."""

    begun = False

    def execute(self, query: Any, vars: Any = None) -> None:
        if not self.begun:
            self.begun = True
            if isinstance(query, str):
                query = "BEGIN;" + query
            elif isinstance(query, bytes):
                query = b"BEGIN;" + query
            else:  # a psycopg2.sql.Composable: rendered by the driver, so BEGIN goes first on its own
                super().execute("BEGIN")
        super().execute(query, vars)


class StoreConnection:
    """A psycopg2 connection; :meth:`transaction` commits what its block did, or rolls it back if the block raises
    (the connection is then usable again, or the stage is rebuilt if PostgreSQL went away); :meth:`statement` runs
    one statement, committed on its own.

    Round trips are what a sender's batch waits for (each one also waits for the GIL on the way back, up to the
    interpreter's switch interval while another thread runs Python), so the connection is in autocommit mode and
    sends them itself: ``BEGIN`` travels with a transaction's first statement, and a single statement needs no
    ``BEGIN``/``COMMIT`` at all (one round trip instead of three)."""

    def __init__(self, dsn: str, *, options: str | None = None) -> None:
        """``options``: server settings for this connection's sessions (libpq ``options``, e.g.
        :data:`KEY_LOOKUPS`)."""
        self.raw = psycopg2.connect(dsn, options=options) if options else psycopg2.connect(dsn)
        self.raw.autocommit = True

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor whose statements run in one transaction, committed when the block ends, rolled back if it
        raises."""
        cur = self.raw.cursor(cursor_factory=_BeginningCursor)
        try:
            yield cur
            if cur.begun:
                cur.execute("COMMIT")
        except BaseException:
            if cur.begun and not self.raw.closed:
                try:
                    with self.raw.cursor() as rollback:
                        rollback.execute("ROLLBACK")
                except psycopg2.Error:  # the connection broke: the server ended the transaction; the cause is below
                    log.warning("cannot roll back: the connection to PostgreSQL is lost")
            raise
        finally:
            cur.close()

    @contextmanager
    def statement(self) -> Iterator[Any]:
        """A cursor for one statement, atomic and committed on its own before ``execute`` returns: what it returns
        (``RETURNING`` rows included) is durable once it is read. A block that runs two statements wants
        :meth:`transaction`."""
        with self.raw.cursor() as cur:
            yield cur

    def close(self) -> None:
        self.raw.close()
