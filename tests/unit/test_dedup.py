"""streams.dedup: the packed batch values (and the JSON of earlier versions, still read) and the on-disk index."""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.dedup import DIGEST_SIZE, DedupIndex, SqliteMapping, SqliteStore, outcome_digest, pack_batch, unpack_batch

offsets_ = st.lists(st.integers(0, 2**62), min_size=1, max_size=50, unique=True).map(sorted)


@given(st.integers(-2**62, 2**62), offsets_)
def test_a_packed_batch_unpacks_to_what_was_packed(occurred_ms, offsets):
    digests = [outcome_digest(f"o{offset}") for offset in offsets]
    value = pack_batch(occurred_ms, digests, offsets)
    assert unpack_batch(value, unknown_ms=0) == (occurred_ms, digests, offsets)
    assert value[:1] not in (b"{", b"[")  # never taken for the JSON of earlier versions


def test_a_batch_costs_sixteen_bytes_an_outcome_when_its_offsets_are_close():
    offsets = list(range(1_000_000, 1_000_500))
    value = pack_batch(0, [outcome_digest(str(o)) for o in offsets], offsets)
    assert len(value) - len(pack_batch(0, [outcome_digest("x")], [0])) == 499 * (DIGEST_SIZE + 4)


def test_values_of_earlier_versions_are_read_as_json():
    timed = json.dumps({"occurred_ms": 5, "ids": ["a", "b"], "offsets": [7, 9]}).encode()
    assert unpack_batch(timed, unknown_ms=1) == (5, [outcome_digest("a"), outcome_digest("b")], [7, 9])
    untimed = json.dumps([["a", 7]]).encode()  # before allowed lateness: no time
    assert unpack_batch(untimed, unknown_ms=1) == (1, [outcome_digest("a")], [7])


def test_digests_differ_for_ids_that_differ_by_a_character():
    ids = [f"{'0' * 36}:{attempt}:{status}" for attempt in range(3) for status in ("sent", "failed", "delivered")]
    assert len({outcome_digest(i) for i in ids}) == len(ids)
    assert all(len(outcome_digest(i)) == DIGEST_SIZE for i in ids)


def test_the_index_keeps_the_first_position_and_removes_only_an_exact_one():
    index = DedupIndex()
    a, b = outcome_digest("a"), outcome_digest("b")
    index.add([(a, 0, 10), (b, 1, 3)])
    index.add([(a, 2, 99)])  # indexed already: keeps (0, 10)
    assert index.positions([a, b, outcome_digest("c")]) == {a: (0, 10), b: (1, 3)}
    index.remove([(a, 2, 99)])  # not where a is indexed: nothing
    assert "a" in index and len(index) == 2
    index.remove([(a, 0, 10)])
    assert "a" not in index and "b" in index
    index.clear()
    assert len(index) == 0
    index.close()


def test_the_index_looks_up_more_digests_than_one_query_takes():
    index = DedupIndex()
    rows = [(outcome_digest(str(i)), i % 3, i) for i in range(2_345)]
    index.add(rows)
    assert index.positions(d for d, _, _ in rows) == {d: (p, o) for d, p, o in rows}


def test_the_index_lives_on_disk_its_memory_bounded_by_its_page_cache():
    """500,000 ids (~0.24 kB each as Python objects: ~120 MB; ~15 MB as SQLite rows) grow the process by about
    the page cache (1 MB)."""
    def rss_kib() -> int:  # now, not the peak: earlier tests of this process may have peaked higher
        with open(f"/proc/{os.getpid()}/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])

    index = DedupIndex(cache_kib=1024)
    digest = outcome_digest("warm")
    index.add([(digest, 0, 0)])
    before = rss_kib()
    for start in range(0, 500_000, 1_000):  # generated a batch at a time, as the counter adds them
        index.add((outcome_digest(str(i)), 0, i) for i in range(start, start + 1_000))
    assert len(index) == 500_001
    grown = rss_kib() - before
    assert grown < 4 * 1024, f"grew {grown} KiB"


def test_the_mapping_is_a_mapping_of_str_to_bytes_or_none():
    mapping = SqliteMapping()
    mapping["a"] = b"1"
    mapping.update({"b": None, "c": b"3"})
    assert dict(mapping.items()) == {"a": b"1", "b": None, "c": b"3"} and len(mapping) == 3
    assert "a" in mapping and "z" not in mapping and mapping.get("z") is None
    assert mapping.pop("a") == b"1" and sorted(mapping) == ["b", "c"]
    del mapping["b"]
    with pytest.raises(KeyError):
        del mapping["b"]
    with pytest.raises(TypeError):
        mapping["d"] = "not bytes"  # type: ignore[assignment]
    mapping.clear()
    assert not mapping


def test_the_dedup_table_keeps_its_values_on_disk_and_recovers_them_as_faust_s_memory_store_does():
    """The analytics app's ``batch_to_counted`` is a SqliteStore; Faust's changelog batches (a value, then a
    tombstone for another key written before) leave the same entries as in the in-memory store."""
    from campaigns.settings import KafkaSettings, Settings
    from streams.tally import DEDUP_TABLE, build_app

    async def main() -> None:
        tally = build_app(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="unit.")))
        store = tally.app.tables[DEDUP_TABLE].data
        assert isinstance(store, SqliteStore) and isinstance(store.data, SqliteMapping)
        kept, gone = pack_batch(1, [outcome_digest("a")], [7]), pack_batch(2, [outcome_digest("b")], [9])
        store["0|9"] = gone

        def event(key: str, value: bytes | None, offset: int) -> Any:
            return SimpleNamespace(key=key, value=value, message=SimpleNamespace(partition=0, value=value,
                                                                                 offset=offset))

        store.apply_changelog_batch([event("0|7", kept, 0), event("0|9", None, 1)], lambda k: k, lambda v: v)
        assert dict(store.items()) == {"0|7": kept}

    asyncio.run(main())
