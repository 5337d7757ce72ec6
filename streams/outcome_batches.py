"""The Faust analytics' forwarder: ``delivery.outcomes`` -> ``delivery.outcomes.batched``, one record per source
partition per batch.

Faust handles every record it reads as an event (a message, an event object, a stream step, an acknowledgement):
about 80 us of the analytics' ~130 us per outcome in the benchmark. The forwarder reads ``delivery.outcomes`` with
confluent-kafka (a few us a record), and writes each batch's records of source partition P, unchanged and with
their offsets, as one ``OutcomeBatch`` to partition P of ``delivery.outcomes.batched``. The analytics
(``streams/tally.py``) read that topic and count each outcome at its *source* position (P, offset), as they did
when they read ``delivery.outcomes`` itself: its dedup and its parts' ``src`` watermarks are unchanged.

Guarantees (what the analytics rely on):

* **Every record, in order.** A batch is forwarded on the stage runtime (``streams.runtime``): records produced,
  producer flushed, then offsets committed; a crash re-forwards from the committed offset. Each flush holds at
  most one OutcomeBatch per partition, so a failed one is never followed by a later one of its partition: the
  first time a source record appears on the batched topic, every earlier record of its partition has appeared
  before it. A record forwarded twice (a crash before the commit, two owners around a rebalance) comes again
  with its own source offset, at or below its parts' ``src``: the analytics skip it.
* **Nothing is decoded here.** Values are forwarded as bytes: a record that is no DeliveryOutcome is the
  analytics' to skip and count, as before; it never stops a partition. A value too large to forward
  (:data:`MAX_VALUE_BYTES`; no real outcome comes near it) is forwarded empty, which the analytics skip as
  undecodable.
* **With their timestamps.** Each record's timestamp travels with it (``timestamps``): the analytics judge an
  outcome late by it, the same way on every read (``campaigns.core.tally.late``).
* Records of source partition P go to partition P: the batched topic has the same partition count
  (``kafka.partitions``, created with the analytics' topics).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message
from confluent_kafka.admin import AdminClient

from campaigns.codec import Codec, get_codec
from campaigns.errors import ServiceUnavailable, SinkError
from campaigns.settings import KafkaSettings, Settings
from campaigns.topics import OUTCOME_BATCHES, OUTCOMES, TALLY_FORWARDER_GROUP
from producers.kafka import KafkaProducer, Publisher
from streams.runtime import StageRuntime, build_consumer, records

log = logging.getLogger(__name__)

STAGE = "analytics forwarder"
BATCH_RECORD = "OutcomeBatch"
MAX_BATCH_BYTES = 512 * 1024  # values per OutcomeBatch, under the broker's 1 MB record limit with room to spare
MAX_VALUE_BYTES = 256 * 1024  # a DeliveryOutcome is ~200 bytes; a value this large is no outcome
FORWARD_BATCH = 5000  # records taken per batch: the more, the fewer OutcomeBatch records (Faust events) a second
STOP_TIMEOUT_S = 15.0


Run = tuple[list[int], list[bytes], list[int]]  # consecutive records of one partition: offsets, values, timestamps


def chunks(offsets: list[int], values: list[bytes], timestamps: list[int],
           max_bytes: int = MAX_BATCH_BYTES) -> list[Run]:
    """The records cut into consecutive runs of at most ``max_bytes`` of values (at least one record each)."""
    out: list[Run] = []
    start, size = 0, 0
    for i, value in enumerate(values):
        if i > start and size + len(value) > max_bytes:
            out.append((offsets[start:i], values[start:i], timestamps[start:i]))
            start, size = i, 0
        size += len(value)
    if values:
        out.append((offsets[start:], values[start:], timestamps[start:]))
    return out


class OutcomeForwarder:
    """The forwarder as a stage of the runtime: ``handle`` groups a batch by source partition and produces one
    OutcomeBatch per partition (more, one per flush, if a partition's values exceed :data:`MAX_BATCH_BYTES`)."""

    def __init__(self, producer: Publisher, topic: str, codec: Codec) -> None:
        self._producer = producer
        self._topic = topic
        self._codec = codec
        self.emptied = 0  # values forwarded empty (none, or too large)

    def handle(self, messages: list[Message]) -> None:
        by_partition: dict[int, Run] = {}
        for msg in records(messages, STAGE):
            value = msg.value()
            if value is None or len(value) > MAX_VALUE_BYTES:
                self.emptied += 1
                log.warning("%s: forwarding %s[%d]@%d empty (%s)", STAGE, msg.topic(), msg.partition(), msg.offset(),
                            "no value" if value is None else f"{len(value)} bytes")
                value = b""
            offsets, values, timestamps = by_partition.setdefault(msg.partition(), ([], [], []))
            offsets.append(msg.offset())
            values.append(value)
            kind, timestamp = msg.timestamp()
            timestamps.append(timestamp if kind != TIMESTAMP_NOT_AVAILABLE else -1)
        runs = {partition: chunks(*run) for partition, run in by_partition.items()}
        for i in range(max((len(r) for r in runs.values()), default=0)):
            if i:
                self._producer.flush()  # one OutcomeBatch per partition in flight (module docstring)
            for partition, partition_runs in runs.items():
                if i < len(partition_runs):
                    offsets, values, timestamps = partition_runs[i]
                    batch = {"source_partition": partition, "offsets": offsets, "values": values,
                             "timestamps": timestamps}
                    self._producer.produce(self._topic, None, self._codec.encode(BATCH_RECORD, batch),
                                           partition=partition)
        return None  # every record given: the runtime flushes, then commits

    def release(self) -> None:
        """Nothing besides the consumer (closed by the runtime) and the producer (closed by its owner)."""


def partitions_refused(source: str, source_partitions: int, batched: str, batched_partitions: int) -> str | None:
    """Why the forwarder cannot run with these topics (None: it can): partition P of the source is written to
    partition P of the batched topic, which must have at least as many."""
    if batched_partitions >= source_partitions:
        return None
    return (f"{batched} has {batched_partitions} partitions and {source} {source_partitions}: the analytics' "
            f"forwarder writes partition P to partition P; give {batched} {source_partitions} partitions "
            f"(kafka-topics.sh --alter --partitions {source_partitions})")


def _partition_count(kafka: KafkaSettings, topic: str) -> int:
    metadata = AdminClient(kafka.as_librdkafka()).list_topics(topic, timeout=30).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ServiceUnavailable(f"{STAGE}: no metadata for {topic}: {metadata.error if metadata else 'absent'}")
    return len(metadata.partitions)


def start_forwarder(settings: Settings) -> Callable[[], None]:
    """Start the forwarder in a thread of this process (the analytics' own: ``python -m streams.tally worker``);
    returns the function that stops it (its consumer leaves the group). If it fails, this process gets SIGTERM,
    so its supervisor (the worker's ``tally`` stage) restarts the whole analytics, as for any failure of it.
    :class:`SinkError` at once if the topics' partition counts do not allow it (:func:`partitions_refused`)."""
    kafka = settings.kafka
    source, batched = kafka.topic(OUTCOMES), kafka.topic(OUTCOME_BATCHES)
    refused = partitions_refused(source, _partition_count(kafka, source), batched, _partition_count(kafka, batched))
    if refused is not None:
        raise SinkError(refused)
    producer = KafkaProducer(kafka)
    forwarder = OutcomeForwarder(producer, batched, get_codec())
    # The Faust app's session timeout (live.session_timeout_s), not the stages': after a crash of this process
    # both of its groups move their partitions as soon as each other.
    session_ms = round(settings.live.session_timeout_s * 1000)
    consumer = build_consumer(kafka, kafka.topic(TALLY_FORWARDER_GROUP), **{
        "session.timeout.ms": session_ms, "heartbeat.interval.ms": max(100, min(3_000, session_ms // 3))})
    runtime = StageRuntime(name=STAGE, consumer=consumer, producer=producer, stage=forwarder,
                           batch_size=FORWARD_BATCH)
    runtime.subscribe([source])
    stop = threading.Event()

    def run() -> None:
        try:
            runtime.run_forever(stop)
            producer.close()
        except BaseException:
            log.exception("%s: failed; ending the analytics process (its supervisor restarts it)", STAGE)
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, name="analytics-forwarder", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(STOP_TIMEOUT_S)

    return halt
