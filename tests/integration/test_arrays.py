"""sinks.arrays: what PostgreSQL parses back from an array literal is exactly the values given."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.arrays import array_literal, plain_array_literal

# PostgreSQL text cannot hold NUL; everything else, quotes, backslashes, braces, commas and NULL-looking text included.
_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@pytest.fixture(scope="module")
def cursor(database_server):
    conn = psycopg2.connect(database_server.dsn())
    with conn.cursor() as cur:
        yield cur
    conn.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), _TEXT, st.sampled_from(["NULL", "null", '"', "\\", "{a,b}", " x "]))))
def test_text_round_trips(cursor, values):
    cursor.execute("SELECT %s::text[]", (array_literal(values),))
    assert cursor.fetchone()[0] == values


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))), st.lists(st.uuids().map(str), max_size=5))
def test_ints_timestamps_and_plain_keys_round_trip(cursor, ints, uuids):
    now = datetime(2026, 11, 30, 8, 30, 1, 123456, tzinfo=UTC)
    cursor.execute(
        "SELECT %s::bigint[], %s::timestamptz[], %s::uuid[]::text[], %s::bigint[]",
        (
            array_literal(ints),
            array_literal([now, None]),
            plain_array_literal(uuids),
            plain_array_literal(i for i in ints if i is not None),
        ),
    )
    got_ints, got_times, got_uuids, got_plain = cursor.fetchone()
    assert got_ints == ints
    assert got_times == [now, None]
    assert got_uuids == uuids
    assert got_plain == [i for i in ints if i is not None]


def test_unsupported_values_are_refused():
    with pytest.raises(TypeError):
        array_literal([1.5])
    with pytest.raises(TypeError):
        array_literal([True])


def test_equal_values_of_other_types_are_not_taken_for_each_other():
    with pytest.raises(TypeError):
        array_literal([1, True])
    with pytest.raises(TypeError):
        array_literal([1, 1.0])
