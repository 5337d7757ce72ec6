"""An in-process transport for tests of the sender, retry and analytics stages (a fake, not a mock).

It records every attempt and every accepted message, and fails on demand: per address (always or a
number of times), on given call numbers, or on the next N calls. Failures are delivery-error
instances; each raise uses a fresh copy, so one configured error can be raised many times.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import Counter

from campaigns.errors import DeliveryError

from .base import OutgoingMessage, SendReceipt


class FakeTransport:
    """Records sends; fails as configured. Check order per call: call number, next-N, address."""

    def __init__(self, channel: str = "sms", *, latency_s: float = 0.0, concurrency: int | None = None) -> None:
        self.channel = channel
        self.latency_s = latency_s
        self.concurrency = concurrency  # as a pooled transport declares it (the Transport port); not enforced here
        self.in_flight = self.peak_in_flight = 0  # calls running now, and the most ever running at once
        self.attempts: list[OutgoingMessage] = []  # every call to send, in call order
        self.sent: list[OutgoingMessage] = []  # only the accepted ones
        self.closed = False
        self._by_call: dict[int, DeliveryError] = {}
        self._next: list[DeliveryError] = []
        self._by_address: dict[str, tuple[DeliveryError, int | None]] = {}
        self._each_message: tuple[DeliveryError, int] | None = None
        self._calls_per_message: Counter[str] = Counter()
        # A worker's sender consumers of one channel (threads, each with its own event loop) may share one fake:
        # a call's number, its failure and its record are taken together.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        counts = f"attempts={len(self.attempts)}, sent={len(self.sent)}"
        return f"FakeTransport(channel={self.channel!r}, {counts})"

    # --- configuring failures ---
    def fail_address(self, address: str, error: DeliveryError, *, times: int | None = None) -> None:
        """Fail sends to ``address`` with ``error``: ``times`` times, or always when ``None``."""
        self._by_address[address] = (error, times)

    def fail_call(self, call_number: int, error: DeliveryError) -> None:
        """Fail the ``call_number``-th call to ``send`` (1-based, counting every attempt)."""
        self._by_call[call_number] = error

    def fail_next(self, count: int, error: DeliveryError) -> None:
        """Fail the next ``count`` calls, whatever their address."""
        self._next.extend([error] * count)

    def fail_each_message(self, times: int, error: DeliveryError) -> None:
        """Fail the first ``times`` calls for every message id (e.g. each first attempt, then its retry works)."""
        self._each_message = (error, times)

    def clear_failures(self) -> None:
        self._each_message = None
        self._by_call.clear()
        self._next.clear()
        self._by_address.clear()

    # --- inspecting ---
    def sent_to(self, address: str) -> list[OutgoingMessage]:
        return [m for m in self.sent if m.address == address]

    def duplicate_message_ids(self) -> dict[str, int]:
        """Message ids accepted more than once, with their counts (an empty dict is what tests want)."""
        counts = Counter(m.message_id for m in self.sent)
        return {mid: n for mid, n in counts.items() if n > 1}

    # --- Transport ---
    def _failure_for(self, call_number: int, message: OutgoingMessage) -> DeliveryError | None:
        error = self._by_call.pop(call_number, None)
        if error is not None:
            return error
        if self._next:
            return self._next.pop(0)
        self._calls_per_message[message.message_id] += 1
        if self._each_message is not None and self._calls_per_message[message.message_id] <= self._each_message[1]:
            return self._each_message[0]
        entry = self._by_address.get(message.address)
        if entry is None:
            return None
        error, times = entry
        if times is not None:
            if times <= 1:
                del self._by_address[message.address]
            else:
                self._by_address[message.address] = (error, times - 1)
        return error

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        if self.closed:
            raise RuntimeError("FakeTransport is closed")
        with self._lock:
            self.attempts.append(message)
            call_number = len(self.attempts)
            error = self._failure_for(call_number, message)
        if self.latency_s > 0:
            with self._lock:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.latency_s)
            finally:
                with self._lock:
                    self.in_flight -= 1
        if error is not None:
            raise copy.copy(error)
        with self._lock:
            self.sent.append(message)
        return SendReceipt(provider_message_id=f"fake-{self.channel}-{call_number}")

    async def aclose(self) -> None:
        self.closed = True
