"""Structured JSON logs: one object per line, with ``campaign_id`` / ``message_id`` when a record has them.

Secrets never reach a log line: settings hold them as ``SecretStr`` and transports never format them.

librdkafka's own log (connection failures, retried broker errors) goes through the logger
``campaigns.librdkafka`` (:class:`LibrdkafkaLog`, set as the ``logger`` of every confluent-kafka client by
:meth:`~campaigns.settings.KafkaSettings.as_librdkafka`), never as raw ``%4|...`` lines on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("campaign_id", "message_id", "channel", "stage")
LIBRDKAFKA_LOGGER = "campaigns.librdkafka"

# Conditions librdkafka reports at warning level although it retries them itself and they clear on their
# own (a broker that has just started is still loading its coordinator state): (facility, text) pairs
# reported at INFO, so a normal start shows no warning.
TRANSIENT_LIBRDKAFKA = (
    ("GETPID", "Coordinator load in progress"),
    ("GETPID", "Coordinator not available"),
)


class LibrdkafkaLog:
    """The ``logger`` of a confluent-kafka client: librdkafka's log lines as records of the
    ``campaigns.librdkafka`` logger, at librdkafka's own severity (confluent-kafka maps syslog levels to
    ``logging`` levels), except :data:`TRANSIENT_LIBRDKAFKA`, which are INFO.

    confluent-kafka calls :meth:`log` from the thread that polls the client (``poll``, ``consume``,
    ``flush``), so a record carries that thread's name. Picklable (it holds only the logger name)."""

    def __init__(self, name: str = LIBRDKAFKA_LOGGER) -> None:
        self.name = name

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, text).
        if level > logging.INFO and len(args) == 3:
            facility, _, text = args
            if any(facility == fac and part in str(text) for fac, part in TRANSIENT_LIBRDKAFKA):
                level = logging.INFO
        logging.getLogger(self.name).log(level, msg, *args, **kwargs)

    def __repr__(self) -> str:
        return f"LibrdkafkaLog({self.name!r})"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # librdkafka and httpx chatter is not ours to show at info.
    for noisy in ("httpx", "httpcore", "aiokafka", "mode", "faust"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
