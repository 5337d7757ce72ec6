"""``sinks.audience.Attributes``: a customer's attributes parsed on first use read exactly as the parsed JSON
object did, and anything but an object as empty (what the claim gave templates before the parse was deferred)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from sinks.audience import Attributes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_an_object_reads_as_its_parsed_dict(attributes):
    lazy = Attributes(json.dumps(attributes))
    assert isinstance(lazy, Mapping)
    assert lazy == attributes and dict(lazy) == attributes and len(lazy) == len(attributes)
    for key, value in attributes.items():
        assert key in lazy and lazy.get(key) == value
    assert lazy.get("\x00absent") is None


@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_anything_but_an_object_reads_as_empty(value):
    assert Attributes(json.dumps(value)) == {}


def test_no_attributes_read_as_empty():
    assert Attributes(None) == {} and Attributes("").get("tier") is None
