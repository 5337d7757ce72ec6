"""The benchmark's provider: accepts every message at once and counts, in constant memory per recipient.

:class:`CountingTransport` is the bench's stand-in for :class:`~campaigns.transports.fake.FakeTransport`.
The fake keeps every :class:`OutgoingMessage` it saw (two lists), which is right for tests and wrong for a
benchmark that measures the worker's peak RSS at 1,000,000 recipients: the fake alone would add several
hundred MB. This one keeps one byte per recipient of the benchmark's id range (1 MB per million) to
detect duplicates, and the time of the first call per campaign (schedule-to-first-send latency).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from campaigns.transports.base import OutgoingMessage, SendReceipt


class CountingTransport:
    """Accepts every message; counts calls per recipient (duplicates) and the first call per campaign.

    ``first_id``/``count`` give the recipient id range to count in a bytearray; ids outside it are counted
    in a dict (correct, just bigger). Not thread-safe: the sender calls it from one event loop.
    """

    def __init__(self, channel: str = "email", *, first_id: int = 0, count: int = 0) -> None:
        self.channel = channel
        self.calls = 0
        self._first_id = first_id
        self._seen = bytearray(count)
        self._overflow: Counter[int] = Counter()
        self.duplicates = 0
        self.first_call_at: dict[str, float] = {}  # campaign id -> epoch seconds of its first send
        self.last_call_at = 0.0
        self.closed = False

    # Never suspends, so every call has ended long before any deadline: no timer is needed around it.
    honours_deadline = True

    async def send(self, message: OutgoingMessage, deadline: float | None = None) -> SendReceipt:
        now = time.time()
        self.calls += 1
        self.last_call_at = now
        if message.campaign_id not in self.first_call_at:
            self.first_call_at[message.campaign_id] = now
        rid = int(message.recipient_id)
        index = rid - self._first_id
        if 0 <= index < len(self._seen):
            if self._seen[index]:
                self.duplicates += 1
            self._seen[index] = min(self._seen[index] + 1, 255)
        else:
            if self._overflow[rid]:
                self.duplicates += 1
            self._overflow[rid] += 1
        return SendReceipt(provider_message_id=f"b{self.calls}")

    async def aclose(self) -> None:
        self.closed = True

    def report(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "duplicates": self.duplicates,
            "distinct_recipients": len(self._seen) - self._seen.count(0) + len(self._overflow),
            "first_call_at": dict(self.first_call_at),
            "last_call_at": self.last_call_at,
        }
