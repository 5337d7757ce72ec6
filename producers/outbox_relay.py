"""The transactional-outbox relay: publishes the ``outbox`` rows the service committed, then marks them.

Guarantees:

* **At least once.** A row is marked ``published_at`` only after the broker acknowledged it (idempotent
  producer, acks=all). A relay that dies between the broker's ack and the mark, or a failed delivery,
  leaves the row unpublished, and it is published again later. Every record carries its ``event_id``
  (Kafka header ``event_id``, and the field of the same name in the value): consumers de-duplicate on it.
* **Per-key order.** Rows are published in ``id`` order per key (the campaign id), and a row is never
  published while an earlier unpublished row with the same key is held by another relay or not yet
  visible: each round locks a batch with ``SELECT ... FOR UPDATE SKIP LOCKED`` and then publishes, per
  key, only the prefix of its rows with no unpublished row of that key before them that it does not hold.
  Several relays can therefore run at once (for throughput or availability) without reordering a
  campaign's events. This relies on the writers: the service allocates a campaign's outbox ids in commit
  order (see :mod:`campaigns.service`).
* **Poison rows do not stop the relay.** A row that cannot be encoded (unknown topic, payload not
  matching its schema) is logged and kept unpublished, and later rows *of the same key* wait behind it
  (publishing them would break the order); every other key keeps flowing. Fix or delete the row.

The logical topic stored in the row is resolved with ``settings.kafka.topic(name)``; the Avro record
follows from it (:data:`RECORD_FOR_TOPIC`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from campaigns.codec import Codec, get_codec
from campaigns.errors import CampaignError, SchemaError, ServiceUnavailable, SinkError
from campaigns.settings import Settings
from campaigns.topics import EVENTS, OUTCOMES, TOPICS
from producers.kafka import Delivery, Publisher

log = logging.getLogger(__name__)

# The topics the service writes outbox rows for, and their records (from the topic registry).
RECORD_FOR_TOPIC = {name: TOPICS[name].record for name in (EVENTS, OUTCOMES)}
"""Logical outbox topic -> the Avro record its payloads are."""

_SELECT_BATCH = """
SELECT id, event_id::text, topic, key, event_type, payload
FROM outbox
WHERE published_at IS NULL
ORDER BY id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

# Every unpublished row (locked by anyone or not) of the batch's keys up to the batch's last id: the
# relay walks it per key and stops a key at the first row it does not hold.
_SELECT_KEY_QUEUE = """
SELECT id, key FROM outbox
WHERE published_at IS NULL AND key = ANY(%s) AND id <= %s
ORDER BY id
"""

_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s) AND published_at IS NULL"


@dataclass(frozen=True)
class _Row:
    id: int
    event_id: str
    topic: str
    key: str
    event_type: str
    payload: dict[str, Any]


class OutboxRelay:
    """Publishes unpublished outbox rows to Kafka in batches. See the module docstring for guarantees.

    ``sessions_or_dsn``: a SQLAlchemy ``sessionmaker`` or ``Engine`` (connections come from its pool), or
    a libpq DSN string (one connection, re-opened after an error). ``producer``: a
    :class:`~producers.kafka.Publisher` (:class:`~producers.kafka.KafkaProducer`, or the fake).
    """

    def __init__(
        self,
        settings: Settings,
        sessions_or_dsn: sessionmaker[Session] | Engine | str,
        producer: Publisher,
        *,
        codec: Codec | None = None,
        flush_timeout: float = 30.0,
    ) -> None:
        self._settings = settings
        self._publisher = producer
        self._codec = codec or get_codec()
        self._flush_timeout = flush_timeout
        self._engine: Engine | None = None
        self._dsn: str | None = None
        if isinstance(sessions_or_dsn, str):
            self._dsn = sessions_or_dsn
        elif isinstance(sessions_or_dsn, Engine):
            self._engine = sessions_or_dsn
        else:
            bind = sessions_or_dsn.kw.get("bind")
            if not isinstance(bind, Engine):
                raise TypeError("OutboxRelay needs a sessionmaker bound to an Engine, an Engine, or a DSN")
            self._engine = bind
        self._conn: psycopg2.extensions.connection | None = None
        self.published = 0  # rows marked published by this relay
        self.stuck: dict[int, str] = {}  # poison rows met in the last round: outbox id -> why

    # --- one round -------------------------------------------------------------------------------

    def run_once(self, limit: int = 500) -> int:
        """Publish up to ``limit`` rows; returns how many were published and marked.

        Raises :class:`SinkError` when some deliveries failed (the ones acknowledged before them are still
        marked) and :class:`ServiceUnavailable` when PostgreSQL cannot be reached. Rows not marked stay
        for the next round.
        """
        try:
            with self._connection() as conn:
                return self._round(conn, limit)
        except (
            psycopg2.OperationalError,
            psycopg2.InterfaceError,
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,
        ) as exc:
            self._drop_connection()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(f"outbox relay cannot reach PostgreSQL: {detail}") from exc

    def _round(self, conn: psycopg2.extensions.connection, limit: int) -> int:
        try:
            with conn.cursor() as cur:
                cur.execute(_SELECT_BATCH, (limit,))
                rows = [_Row(*r) for r in cur.fetchall()]
                if not rows:
                    conn.rollback()
                    return 0
                held = {row.id: row for row in rows}
                cur.execute(_SELECT_KEY_QUEUE, (sorted({row.key for row in rows}), max(held)))
                publishable, blocked = [], set()
                for row_id, key in cur.fetchall():
                    if key in blocked:
                        continue
                    if row_id in held:
                        publishable.append(held[row_id])
                    else:
                        blocked.add(key)  # an earlier row of this key is someone else's: wait for it
                sent = self._produce(publishable)
                failure: SinkError | None = None
                try:
                    self._publisher.flush(self._flush_timeout)
                except SinkError as exc:
                    failure = exc
                acked = _acknowledged_prefixes(sent)
                if acked:
                    cur.execute(_MARK, (acked,))
            conn.commit()
        except BaseException:
            _rollback_quietly(conn)
            raise
        self.published += len(acked)
        if failure is not None:
            raise SinkError(
                f"outbox relay: {len(sent) - len(acked)} of {len(sent)} events not delivered; "
                f"they stay in the outbox and are retried ({failure})"
            ) from failure
        return len(acked)

    def _produce(self, rows: list[_Row]) -> list[tuple[_Row, Delivery]]:
        poisoned: set[str] = set()
        stuck, self.stuck = self.stuck, {}
        sent: list[tuple[_Row, Delivery]] = []
        for row in rows:
            if row.key in poisoned:
                continue
            try:
                value = self._encode(row)
            except SchemaError as exc:
                poisoned.add(row.key)
                if row.id not in stuck:  # once per row, not every round
                    log.error(
                        "outbox row %s (%s, key %s) cannot be published and holds back its key: %s",
                        row.id,
                        row.topic,
                        row.key,
                        exc,
                    )
                self.stuck[row.id] = str(exc)
                continue
            delivery = self._publisher.produce_tracked(
                self._settings.kafka.topic(row.topic),
                row.key,
                value,
                headers={"event_id": row.event_id, "event_type": row.event_type},
            )
            sent.append((row, delivery))
        return sent

    def _encode(self, row: _Row) -> bytes:
        record = RECORD_FOR_TOPIC.get(row.topic)
        if record is None:
            known = ", ".join(sorted(RECORD_FOR_TOPIC))
            raise SchemaError(f"no record schema for outbox topic {row.topic!r} (known: {known})")
        return self._codec.encode(record, row.payload)

    # --- loop ------------------------------------------------------------------------------------

    def run_forever(self, stop_event: threading.Event, idle_sleep: float = 0.05, limit: int = 500) -> None:
        """Publish until ``stop_event`` is set. Sleeps ``idle_sleep`` when there was nothing to publish and
        backs off (up to 5 s) while Kafka or PostgreSQL fail; never gives up on its own."""
        backoff = 0.0
        while not stop_event.is_set():
            try:
                published = self.run_once(limit)
                backoff = 0.0
            except CampaignError as exc:  # SinkError, ServiceUnavailable: rows stay, retried next round
                backoff = min(5.0, max(0.1, backoff * 2))
                log.warning("outbox relay round failed (retrying in %.1fs): %s", backoff, exc)
                stop_event.wait(backoff)
                continue
            if published < limit:
                stop_event.wait(idle_sleep)

    def close(self) -> None:
        """Deliver what is queued and release the database connection."""
        self._publisher.close()
        self._drop_connection()

    # --- connections -----------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg2.extensions.connection]:
        if self._engine is not None:
            raw = self._engine.raw_connection()
            try:
                yield raw.driver_connection
            finally:
                raw.close()  # back to the pool (SQLAlchemy rolls back anything left open)
            return
        if self._conn is None or self._conn.closed:
            assert self._dsn is not None
            self._conn = psycopg2.connect(self._dsn)
        yield self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None


def _acknowledged_prefixes(sent: list[tuple[_Row, Delivery]]) -> list[int]:
    """Ids of the rows to mark: per key, the acknowledged rows before that key's first unacknowledged one.

    A later row of a key is not marked while an earlier one must be re-sent, so the re-sent sequence is
    complete and in order. (If Kafka acknowledged a later record of a partition after failing an earlier
    one, a reader sees the later one first, then the re-sent pair; the idempotent producer makes that
    unlikely, since it fails a partition's queue from the first failed batch on.)"""
    failed_keys: set[str] = set()
    acked: list[int] = []
    for row, delivery in sent:
        if row.key in failed_keys:
            continue
        if delivery.ok:
            acked.append(row.id)
        else:
            failed_keys.add(row.key)
    return acked


def _rollback_quietly(conn: psycopg2.extensions.connection) -> None:
    try:
        conn.rollback()
    except psycopg2.Error:
        pass
