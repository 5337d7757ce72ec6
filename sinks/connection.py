"""One PostgreSQL connection a sink store owns, and its transactions (``with conn.transaction() as cur``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

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


class StoreConnection:
    """A psycopg2 connection; :meth:`transaction` commits what its block did, or rolls it back if the block raises
    (the connection is then usable again, or the stage is rebuilt if PostgreSQL went away)."""

    def __init__(self, dsn: str, *, options: str | None = None) -> None:
        """``options``: server settings for this connection's sessions (libpq ``options``, e.g.
        :data:`KEY_LOOKUPS`)."""
        self.raw = psycopg2.connect(dsn, options=options) if options else psycopg2.connect(dsn)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        try:
            with self.raw.cursor() as cur:
                yield cur
            self.raw.commit()
        except BaseException:
            if not self.raw.closed:
                self.raw.rollback()
            raise

    def close(self) -> None:
        self.raw.close()
