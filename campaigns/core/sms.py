"""SMS encoding and segment counting (3GPP TS 23.038 / 23.040), pure.

A text goes out as GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table,
else as UCS-2 (UTF-16 code units). A single message holds 160 GSM-7 septets or 70 UCS-2 units; a longer
text is sent as concatenated segments, each losing room to the concatenation header: 153 septets or 67 units
per segment. Providers bill per segment, so the segment count is the cost.

Guarantees:

* Extension-table characters (``^ { } \\ [ ~ ] | €`` and form feed) cost two septets (escape + character),
  and an escape pair is never split across two segments (a segment that would end between them ends one
  septet early), as handsets and SMSCs require.
* A UCS-2 character outside the Basic Multilingual Plane (most emoji) is two units, and a surrogate pair is
  never split across segments.
* :func:`estimate` is total: any ``str`` gives an answer; the empty text is one (empty) segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GSM7",
    "MAX_SEGMENTS",
    "UCS2",
    "SmsEstimate",
    "estimate",
]

GSM7: Literal["GSM-7"] = "GSM-7"
UCS2: Literal["UCS-2"] = "UCS-2"
MAX_SEGMENTS = 10
"""The most segments a campaign may allow (``campaigns.max_sms_segments`` is 1..10; 10 x 160 is the 1,600
characters providers accept)."""

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
).replace("\x1b", "")  # the escape itself is not a character a text may contain
GSM7_EXTENSION = "\f^{}\\[~]|€"

SINGLE = {GSM7: 160, UCS2: 70}
PER_SEGMENT = {GSM7: 153, UCS2: 67}

_NOT_GSM7 = re.compile("[^" + re.escape(GSM7_BASIC + GSM7_EXTENSION) + "]")
_EXTENSION = re.compile("[" + re.escape(GSM7_EXTENSION) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class SmsEstimate:
    """How a text goes out: ``encoding`` (GSM-7 or UCS-2), ``units`` (septets or UTF-16 code units) and
    ``segments`` (billed messages)."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int

    def as_dict(self) -> dict[str, object]:
        return {"encoding": self.encoding, "units": self.units, "segments": self.segments}


def _segments(unit_sizes_total: int, encoding: Literal["GSM-7", "UCS-2"], pairs: list[int] | None) -> int:
    """Segments for ``unit_sizes_total`` units; ``pairs`` lists the start offsets (in units) of two-unit
    characters that must not be split, or None when there are none."""
    if unit_sizes_total <= SINGLE[encoding]:
        return 1
    size = PER_SEGMENT[encoding]
    if not pairs:
        return -(-unit_sizes_total // size)
    segments, start = 1, 0
    pair_starts = set(pairs)
    position = 0
    while position < unit_sizes_total:
        width = 2 if position in pair_starts else 1
        if position + width - start > size:
            segments += 1
            start = position
        position += width
    return segments


def estimate(text: str) -> SmsEstimate:
    """The encoding, size in units and segment count of ``text`` sent as one SMS."""
    if _NOT_GSM7.search(text) is None:
        extensions = _EXTENSION.findall(text) if not text.isalnum() else []
        septets = len(text) + len(extensions)
        pairs: list[int] | None = None
        if extensions and septets > SINGLE[GSM7]:
            pairs, offset = [], 0
            for ch in text:
                if ch in GSM7_EXTENSION:
                    pairs.append(offset)
                    offset += 2
                else:
                    offset += 1
        return SmsEstimate(GSM7, septets, _segments(septets, GSM7, pairs))
    astral = _ASTRAL.findall(text)
    units = len(text) + len(astral)
    pairs = None
    if astral and units > SINGLE[UCS2]:
        pairs, offset = [], 0
        for ch in text:
            if ord(ch) > 0xFFFF:
                pairs.append(offset)
                offset += 2
            else:
                offset += 1
    return SmsEstimate(UCS2, units, _segments(units, UCS2, pairs))
