"""Deterministic message ids."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.ids import MESSAGE_NAMESPACE, message_id


def test_namespace_is_pinned() -> None:
    assert str(MESSAGE_NAMESPACE) == "ea4ecd33-fb30-5296-bea4-04119659d194"
    assert uuid.uuid5(uuid.NAMESPACE_URL, "urn:campaigns:message-id") == MESSAGE_NAMESPACE


def test_pinned_value() -> None:
    # If this changes, every message id already claimed or sent changes: duplicates on replay.
    assert message_id("42", "cust-1") == "9e398780-d614-5762-9203-c83eff28ce5d"


def test_is_uuid5_over_the_namespace() -> None:
    mid = message_id("c-1", "r-1")
    parsed = uuid.UUID(mid)
    assert parsed.version == 5
    assert parsed == uuid.uuid5(MESSAGE_NAMESPACE, "c-1:r-1")
    assert mid == str(parsed)  # canonical lower-case hyphenated form


def test_different_pairs_differ() -> None:
    assert message_id("1", "2") != message_id("2", "1")
    assert message_id("1", "2") != message_id("1", "3")


def test_colon_in_recipient_is_fine() -> None:
    assert message_id("1", "a:b") != message_id("1", "a")


@pytest.mark.parametrize(("campaign_id", "recipient_id"), [("", "r"), ("c", ""), ("a:b", "c")])
def test_invalid_ids(campaign_id: str, recipient_id: str) -> None:
    with pytest.raises(ValueError):
        message_id(campaign_id, recipient_id)


ids = st.text(min_size=1, max_size=20)


@given(ids.filter(lambda s: ":" not in s), ids)
def test_deterministic(campaign_id: str, recipient_id: str) -> None:
    assert message_id(campaign_id, recipient_id) == message_id(campaign_id, recipient_id)


@given(ids.filter(lambda s: ":" not in s), ids, ids.filter(lambda s: ":" not in s), ids)
def test_injective(c1: str, r1: str, c2: str, r2: str) -> None:
    if (c1, r1) != (c2, r2):
        assert message_id(c1, r1) != message_id(c2, r2)


@given(st.text(min_size=1).filter(lambda s: ":" not in s), st.text(min_size=1))
def test_equals_the_standard_library_uuid5_for_any_pair(campaign_id: str, recipient_id: str) -> None:
    assert message_id(campaign_id, recipient_id) == str(uuid.uuid5(MESSAGE_NAMESPACE, f"{campaign_id}:{recipient_id}"))
