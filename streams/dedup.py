"""The Faust analytics' dedup state, compact: what ``batch_to_counted`` stores per batch, and the index over it.

Exact dedup over the allowed lateness holds every outcome id counted in the last hour or so (``streams.tally``):
millions at a few thousand outcomes a second. As Python objects (an id string, a tuple, a dict entry) that cost
~0.24 kB each; here it costs 16 bytes in memory and the rest on disk:

* An outcome id is kept as its **digest** (BLAKE2b, 12 bytes). Two ids share a digest with probability about
  n^2 / 2^97: below 1e-13 for the 100 million ids of a day, so a genuine outcome is not taken for a copy in
  practice. (The id itself can be any string of up to 128 characters: outcomes of external producers.)
* A batch's value (:func:`pack_batch`) is one ``bytes``: a header, the digests, then the offsets as 32-bit
  deltas from the first (64-bit if a batch ever spans more). The Faust table keeps its values on disk
  (:class:`SqliteStore`, ``store="sqlite://temporary"``): Faust's in-memory store over a private temporary SQLite
  database instead of a dict, rebuilt from the changelog at start as the in-memory store is.
* The index from digest to the (partition, offset) that counted it (:class:`DedupIndex`) is another such
  database, rebuilt from the table after every assignment.

Private temporary SQLite databases (``sqlite3.connect("")``): on disk, unjournalled, unsynced, memory bounded by
their page cache whatever their size; SQLite removes the file when the process ends.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import struct
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from faust.stores import STORES
from faust.stores import memory as faust_memory

DIGEST_SIZE = 12
_HEADER = struct.Struct("<Bqqi")  # format, latest occurred_at (ms), first offset, number of outcomes
_DELTA_FORMATS = {1: "I", 2: "Q"}  # format -> struct code of the offset deltas
_LOOKUP_CHUNK = 500  # digests per SELECT ... IN (...)


def outcome_digest(outcome_id: str) -> bytes:
    """What the dedup keeps of an outcome id."""
    return hashlib.blake2b(outcome_id.encode(), digest_size=DIGEST_SIZE).digest()


def pack_batch(occurred_ms: int, digests: Sequence[bytes], offsets: Sequence[int]) -> bytes:
    """A ``batch_to_counted`` value: the digests of the outcomes a batch counted, their source offsets (ascending,
    at least one) and the latest time any of them occurred."""
    first, count = offsets[0], len(offsets)
    deltas = [offset - first for offset in offsets]
    kind = 1 if deltas[-1] < 2**32 else 2
    return b"".join((_HEADER.pack(kind, occurred_ms, first, count), *digests,
                     struct.pack(f"<{count}{_DELTA_FORMATS[kind]}", *deltas)))


def unpack_batch(value: Any, unknown_ms: int) -> tuple[int, list[bytes], list[int]]:
    """(latest occurred_at, digests, offsets) of a ``batch_to_counted`` value. Values written by earlier versions
    are JSON: ``{"occurred_ms", "ids", "offsets"}``, or ``[[outcome id, offset], ...]`` (before allowed lateness,
    no time: taken as occurring at ``unknown_ms``)."""
    if isinstance(value, bytes | bytearray) and value[:1] not in (b"{", b"["):
        kind, occurred_ms, first, count = _HEADER.unpack_from(value)
        end = _HEADER.size + count * DIGEST_SIZE
        digests = [bytes(value[i:i + DIGEST_SIZE]) for i in range(_HEADER.size, end, DIGEST_SIZE)]
        deltas = struct.unpack_from(f"<{count}{_DELTA_FORMATS[kind]}", value, end)
        return occurred_ms, digests, [first + delta for delta in deltas]
    legacy = json.loads(value) if isinstance(value, bytes | bytearray) else value
    if isinstance(legacy, Mapping):
        return (int(legacy["occurred_ms"]), [outcome_digest(i) for i in legacy["ids"]],
                [int(offset) for offset in legacy["offsets"]])
    return unknown_ms, [outcome_digest(i) for i, _ in legacy], [int(offset) for _, offset in legacy]


def private_database(cache_kib: int) -> sqlite3.Connection:
    """A private temporary SQLite database; writes are in one transaction per ``with`` block (the module's
    implicit BEGIN before DML). Not journalled or synced: what it holds is rebuilt from Kafka after a restart."""
    db = sqlite3.connect("", check_same_thread=False)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{int(cache_kib)}"):
        db.execute(f"PRAGMA {pragma}")
    return db


class DedupIndex:
    """Outcome digest -> the (partition, offset) of the record that counted it.

    Derived state, rebuilt from ``batch_to_counted`` after every assignment, in a private temporary database.
    Its memory is the page cache (``cache_kib``) whatever its size."""

    def __init__(self, cache_kib: int = 2048) -> None:
        self._db = private_database(cache_kib)
        self._db.execute("CREATE TABLE counted (digest BLOB PRIMARY KEY, part INTEGER NOT NULL, "
                         "offset INTEGER NOT NULL) WITHOUT ROWID")

    def positions(self, digests: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
        """Where each of ``digests`` that is indexed was counted."""
        wanted = list(set(digests))
        found: dict[bytes, tuple[int, int]] = {}
        for i in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[i:i + _LOOKUP_CHUNK]
            rows = self._db.execute(f"SELECT digest, part, offset FROM counted WHERE digest IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            found.update((digest, (part, offset)) for digest, part, offset in rows)
        return found

    def add(self, rows: Iterable[tuple[bytes, int, int]]) -> None:
        """Index (digest, partition, offset) rows; a digest already indexed keeps its position."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO counted VALUES (?, ?, ?)", rows)

    def remove(self, rows: Iterable[tuple[bytes, int, int]]) -> None:
        """Drop those (digest, partition, offset) rows; a digest indexed at another position stays."""
        with self._db:
            self._db.executemany("DELETE FROM counted WHERE digest = ? AND part = ? AND offset = ?", rows)

    def clear(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM counted")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM counted").fetchone()[0])

    def __contains__(self, outcome_id: object) -> bool:
        """Whether ``outcome_id`` (the id, not its digest) is indexed."""
        return isinstance(outcome_id, str) and bool(self.positions([outcome_digest(outcome_id)]))

    def close(self) -> None:
        self._db.close()


class SqliteMapping(MutableMapping[str, bytes | None]):
    """A ``str -> bytes`` mapping in a private temporary SQLite database. ``None`` is a value too: Faust's in-memory
    store applies a changelog tombstone by storing None, then deleting the key."""

    def __init__(self, cache_kib: int = 2048) -> None:
        self._db = private_database(cache_kib)
        self._db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")

    def __getitem__(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM entries WHERE key = ?", (_text(key),)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __setitem__(self, key: str, value: bytes | None) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?)", (_text(key), _blob(value)))

    def __delitem__(self, key: str) -> None:
        with self._db:
            if self._db.execute("DELETE FROM entries WHERE key = ?", (_text(key),)).rowcount == 0:
                raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._db.execute(
            "SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        return (key for key, in self._db.execute("SELECT key FROM entries").fetchall())

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def update(self, other: Any = (), /, **kwargs: bytes | None) -> None:  # type: ignore[override]
        """One transaction: Faust's recovery applies a changelog batch with it."""
        items = other.items() if isinstance(other, Mapping) else other
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?)",
                                 ((_text(k), _blob(v)) for k, v in itertools.chain(items, kwargs.items())))

    def clear(self) -> None:
        with self._db:
            self._db.execute("DELETE FROM entries")

    def items(self) -> ItemsView[str, bytes | None]:
        return _Entries(self)

    def entries(self) -> Iterator[tuple[str, bytes | None]]:
        """Every entry, read a page at a time (not a query per key)."""
        cursor = self._db.execute("SELECT key, value FROM entries")
        while rows := cursor.fetchmany(1000):
            yield from rows


class _Entries(ItemsView[str, bytes | None]):
    _mapping: SqliteMapping

    def __iter__(self) -> Iterator[tuple[str, bytes | None]]:
        return self._mapping.entries()


def _text(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"SqliteMapping keys are str, not {type(key).__name__}")
    return key


def _blob(value: Any) -> bytes | None:
    if value is not None and not isinstance(value, bytes | bytearray):
        raise TypeError(f"SqliteMapping values are bytes or None, not {type(value).__name__}")
    return value


class SqliteStore(faust_memory.Store):  # type: ignore[misc]
    """Faust's in-memory table store with its entries on disk (:class:`SqliteMapping`) instead of in a dict: the same
    recovery (the whole changelog at every start; nothing persisted across restarts), for tables whose values
    add up to more than the process should hold. Keys str, values bytes (``value_type=bytes``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = SqliteMapping()


STORES.aliases.setdefault("sqlite", f"{__name__}:SqliteStore")  # faust.stores' registry: Table(store="sqlite://...")
