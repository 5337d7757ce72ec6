"""API tokens: format, parsing, hashing (campaigns/core/tokens.py)."""

from __future__ import annotations

import pytest

from campaigns.core import tokens


def test_format_is_prefix_id_secret_and_round_trips() -> None:
    token = tokens.format_token(bytes(range(8)), bytes(range(32)))
    text = tokens.text(token)
    assert text.startswith("cmpt_0001020304050607_") and len(text) == 5 + 16 + 1 + 43
    assert tokens.parse(text) == token
    assert tokens.parse(f"  {text}\n") == token  # as read from a file or an environment variable


def test_new_tokens_are_random() -> None:
    assert len({tokens.text(tokens.new_token()) for _ in range(100)}) == 100


@pytest.mark.parametrize("value", [None, "", "cmpt_", "cmpt_0001020304050607", "cmpt_XYZ_" + "a" * 43,
                                   "cmpt_0001020304050607_" + "a" * 42, "cmpt_0001020304050607_" + "a" * 44,
                                   "xmpt_0001020304050607_" + "a" * 43, "cmpt_0001020304050607_" + "*" * 43, 42])
def test_malformed_tokens_parse_to_none(value: object) -> None:
    assert tokens.parse(value) is None  # type: ignore[arg-type]


def test_only_a_hash_is_compared_and_the_secret_never_shows_in_repr() -> None:
    token = tokens.new_token()
    stored = tokens.secret_hash(token.secret)
    assert len(stored) == 64 and token.secret not in stored
    assert tokens.verify(token.secret, stored)
    assert not tokens.verify(tokens.new_token().secret, stored)
    assert token.secret not in repr(token)


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        tokens.format_token(b"short", bytes(32))
