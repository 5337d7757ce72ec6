"""The Faust analytics' dedup state, compact: what ``batch_to_counted`` stores per batch, and the index over it.

Exact dedup over the allowed lateness holds every outcome id counted in the last hour or so (``streams.tally``):
millions at a few thousand outcomes a second. As Python objects (an id string, a tuple, a dict entry) that cost
~0.24 kB each; here it costs 16 bytes in memory and the rest on disk:

* An outcome id is kept as its **digest** (BLAKE2b, 12 bytes). Two ids share a digest with probability about
  n^2 / 2^97: below 1e-13 for the 100 million ids of a day, so a genuine outcome is not taken for a copy in
  practice. (The id itself can be any string of up to 128 characters: outcomes of external producers.)
* A batch's value (:func:`pack_batch`) is one ``bytes``: a header, the digests, then the offsets as 32-bit
  deltas from the first (64-bit if a batch ever spans more). The Faust table (in memory, rebuilt from its
  changelog) holds that and nothing per outcome.
* The index from digest to the (partition, offset) that counted it (:class:`DedupIndex`) is a private temporary
  SQLite database: on disk, with a bounded page cache, deleted when the process ends (it is rebuilt from the table
  after every assignment anyway).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


class DedupIndex:
    """Outcome digest -> the (partition, offset) of the record that counted it.

    A private temporary SQLite database (SQLite deletes its file when the connection closes, or at once on POSIX),
    unjournalled and unsynced: it is derived state, rebuilt from ``batch_to_counted`` after every assignment.
    Its memory is the page cache (``cache_kib``) whatever its size."""

    def __init__(self, cache_kib: int = 4096) -> None:
        # Writes in one transaction per call (the module's implicit BEGIN before DML, committed by ``with``).
        self._db = sqlite3.connect("", check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{int(cache_kib)}"):
            self._db.execute(f"PRAGMA {pragma}")
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
