"""One PostgreSQL connection a sink store owns, and its transactions (``with conn.transaction() as cur``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2


class StoreConnection:
    """A psycopg2 connection; :meth:`transaction` commits what its block did, or rolls it back if the block raises
    (the connection is then usable again, or the stage is rebuilt if PostgreSQL went away)."""

    def __init__(self, dsn: str) -> None:
        self.raw = psycopg2.connect(dsn)

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
