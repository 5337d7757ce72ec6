"""How fast the host's CPU is right now, for the kind of work the worker does.

This machine's speed drifts by the hour while its load average stays low: on 1 December the same code's cron loop
ran at 19,309/s at 09:34 UTC and 10,715/s at 12:52, and a rendering micro-benchmark gave 5.3-5.7 µs and then 6.8-9.6
µs 20 minutes apart. Rates from two runs compare only when the host was as fast in both, so each run times a fixed
piece of pure-Python work before its first round and after its last, and the report prints both beside the
figures.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from campaigns.codec import get_codec

PROBE_OPS = 5_000
PROBE_REPEATS = 5

# A typical email RecipientMessage (190 bytes encoded): the probe's, and the `limit` scenario's Python ceiling's.
SAMPLE_MESSAGE: dict[str, Any] = {
    "message_id": str(uuid.UUID(int=1)),
    "campaign_id": str(uuid.UUID(int=2)),
    "recipient_id": "10000001",
    "channel": "email",
    "address": "user10000001@example.com",
    "subject": "Spring sale",
    "body": "<p>Hello! 20% off everything this week.</p>",
    "template_name": None,
    "locale": "en",
    "attempt": 0,
    "not_before": 0,
    "created_at": 1_764_547_200_000,
    "last_error": None,
}


def cpu_probe_us(ops: int = PROBE_OPS, repeats: int = PROBE_REPEATS) -> float:
    """µs per Avro encode + decode of one RecipientMessage with the pipeline's codec, in this thread: the best of
    ``repeats`` timings of ``ops`` each (the best, so a moment of contention does not count; the drift it tracks
    lasts minutes to hours)."""
    codec = get_codec()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(ops):
            codec.decode(codec.encode("RecipientMessage", SAMPLE_MESSAGE), "RecipientMessage")
        best = min(best, time.perf_counter() - t0)
    return best / ops * 1e6
