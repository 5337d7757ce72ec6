"""SMS encoding and segment counting: the GSM-7 and UCS-2 boundaries and their property checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.sms import GSM7, GSM7_BASIC, GSM7_EXTENSION, UCS2, estimate


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", GSM7, 0, 1),
        ("a" * 160, GSM7, 160, 1),
        ("a" * 161, GSM7, 161, 2),
        ("a" * 306, GSM7, 306, 2),  # 2 x 153
        ("a" * 307, GSM7, 307, 3),
        ("a" * 1530, GSM7, 1530, 10),
        ("€" * 80, GSM7, 160, 1),  # extension characters count double
        ("€" * 81, GSM7, 162, 2),
        ("a" * 159 + "^", GSM7, 161, 2),
        ("Olà, ¿qué tal? Ñandù £5 @home", GSM7, 29, 1),
        ("Olá", UCS2, 3, 1),  # á is not GSM-7 (à is)
        ("ñ" * 70, GSM7, 70, 1),
        ("ç" * 70, UCS2, 70, 1),  # lower-case c-cedilla is not GSM-7 (only Ç is)
        ("ç" * 71, UCS2, 71, 2),
        ("ç" * 134, UCS2, 134, 2),  # 2 x 67
        ("ç" * 135, UCS2, 135, 3),
        ("Привет" * 10, UCS2, 60, 1),
        ("a" * 69 + "😀", UCS2, 71, 2),  # an emoji is two UTF-16 units
        ("😀" * 35, UCS2, 70, 1),
        ("back`tick", UCS2, 9, 1),  # ` is ASCII but not GSM-7
    ],
)
def test_known_examples(text: str, encoding: str, units: int, segments: int) -> None:
    found = estimate(text)
    assert (found.encoding, found.units, found.segments) == (encoding, units, segments)


def test_an_escape_pair_is_never_split_between_segments() -> None:
    # 152 plain septets then '€' (2 septets): the pair would straddle septets 153/154, so segment 1 ends at
    # 152 and the pair opens segment 2.
    text = "a" * 152 + "€" + "a" * 152
    assert estimate(text).units == 306
    assert estimate(text).segments == 3  # without the rule, 306 septets would fit 2 x 153
    assert estimate("a" * 151 + "€" + "a" * 152).segments == 2  # the pair ends segment 1 exactly


def test_a_surrogate_pair_is_never_split_between_segments() -> None:
    text = "ç" * 66 + "😀" + "ç" * 66
    assert estimate(text).units == 134
    assert estimate(text).segments == 3


gsm_text = st.text(alphabet=GSM7_BASIC + GSM7_EXTENSION, max_size=400)


@given(gsm_text)
def test_gsm_text_is_gsm7_and_segments_hold_it(text: str) -> None:
    found = estimate(text)
    assert found.encoding == GSM7
    assert found.units == len(text) + sum(ch in GSM7_EXTENSION for ch in text)
    assert found.segments == _reference_segments([2 if ch in GSM7_EXTENSION else 1 for ch in text], 160, 153)


def _reference_segments(widths: list[int], single: int, per_segment: int) -> int:
    """Greedy packing of characters (never split) into segments: the obvious, slow way."""
    if sum(widths) <= single:
        return 1
    segments, used = 1, 0
    for width in widths:
        if used + width > per_segment:
            segments, used = segments + 1, 0
        used += width
    return segments


@given(st.text(max_size=300))
def test_any_text_has_an_answer(text: str) -> None:
    found = estimate(text)
    assert found.segments >= 1
    assert found.encoding in (GSM7, UCS2)
    if found.encoding == UCS2:
        assert found.units == len(text.encode("utf-16-le", "surrogatepass")) // 2
        assert found.segments == _reference_segments([2 if ord(ch) > 0xFFFF else 1 for ch in text], 70, 67)


@given(gsm_text, st.sampled_from("çЖ😀"))
def test_one_non_gsm_character_switches_the_whole_text_to_ucs2(text: str, ch: str) -> None:
    assert estimate(text + ch).encoding == UCS2
