"""The one stage runtime: every consuming stage (senders, analytics, receipts, commands) runs its batches here.

Each batch follows one order, written once in :meth:`StageRuntime.run_once`:

1. **take** records from the consumer (by default up to ``batch_size``; the senders take only what they hold
   rate tokens for, see :class:`streams.sender.ChannelSender`);
2. **handle** them (the stage): decode each record, write the stage's sinks in its own PostgreSQL transaction
   (sinks never commit; the stage does, once per batch), and produce the derived records (outcomes, retries,
   dead letters, analytics rows) through the one producer;
3. **flush** the producer: every derived record is acknowledged by Kafka;
4. **commit** the offsets the stage says are done (by default everything it was given), asynchronously: the
   request is sent at once and the next batch does not wait for the broker's answer (:meth:`StageRuntime.commit`).

So an offset is committed only after the writes and records its record caused are durable, and a crash
anywhere before step 4 re-delivers the batch. Every stage's sinks are idempotent (claims, the dedupe of
outcome ids, command ids, receipt merges) and derived records carry deterministic ids, so handling a batch
again writes nothing twice and re-produces the same records under the same ids.

**A record never stops its partition.** :func:`decoded` turns *any* exception raised while decoding one
record into a call of the stage's ``reject`` (a dead letter, a rejection, or a counted skip) and moves on;
stages apply the same rule to handling one record. Consume errors are logged; a fatal one raises.

**One restart policy.** Anything the stage raises propagates after the consumer is closed (so the group
moves its partitions at once instead of holding them for ``max.poll.interval.ms``) and the stage's own
resources are released; the worker (:mod:`streams.worker`) rebuilds the stage with its backoff (1 s doubling
to 10 s, crash loops reported). The rebuilt consumer starts at the committed offsets: step 4 above.

:class:`ConsumerPort` is what a stage may do with its consumer; :func:`build_consumer` makes the real one
(``KafkaSettings.stage_consumer``: manual commits, earliest, bounded prefetch) and
:class:`streams.memory.MemoryConsumer` is the fake for unit tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from campaigns.errors import ServiceUnavailable
from campaigns.settings import KafkaSettings
from producers.kafka import Publisher

log = logging.getLogger(__name__)

Partition = tuple[str, int]
Offsets = Mapping[Partition, int]  # (topic, partition) -> the next offset to read (what a commit stores)
T = TypeVar("T")
# Told after every batch with records: (stage name, seconds in take, in handle, in flush): the worker's
# ``campaigns_stage_batch_seconds`` (campaigns.metrics.PipelineMetrics.stage_batch).
BatchObserver = Callable[[str, float, float, float], None]


class ConsumerPort(Protocol):
    """The part of a confluent-kafka ``Consumer`` the stages use."""

    def subscribe(self, topics: list[str], on_assign: Any = ..., on_revoke: Any = ...) -> None: ...

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...

    def poll(self, timeout: float = -1) -> Message | None: ...

    def commit(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> Any: ...

    def seek(self, partition: TopicPartition) -> None: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...

    def close(self) -> None: ...


def build_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    """The consumer of a stage: :meth:`KafkaSettings.stage_consumer` (the one configuration) for ``group_id``, whose
    asynchronous commits report their failures to the log (:func:`report_commit`)."""
    return Consumer({"on_commit": report_commit, **kafka.stage_consumer(group_id, **overrides)})


def report_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """The ``on_commit`` of a stage's consumer (called by a later ``consume``): a commit that failed, as a whole or
    for some partitions, is logged. Nothing else is needed: its batch is durable, and a redelivery of it (to this
    member or the partition's next owner) changes nothing."""
    failed = [f"{tp.topic}[{tp.partition}]@{tp.offset}: {tp.error}" for tp in partitions if tp.error is not None]
    if error is not None or failed:
        log.warning("offset commit failed (%s); those batches may be redelivered (harmless)",
                    "; ".join(failed) if failed else error)


@dataclass(frozen=True)
class Unfinished:
    """What a stage's ``handle`` returns when something outside the batch (PostgreSQL unreachable) stopped it part
    way: the offsets it did finish, committed as usual, and the failure, raised once they are. The stage has
    already rewound (``seek``) the partitions it could not finish."""

    done: Offsets
    failure: Exception


class Handler(Protocol):
    """A stage as the runtime drives it."""

    def handle(self, messages: list[Message]) -> Offsets | Unfinished | None:
        """Handle one batch (step 2 of the module docstring): write the sinks, produce the derived records.
        Return the offsets that are done, or None for every record given. Called with an empty batch too, so a
        stage can do due work (held receipts, a probe) when nothing arrives. A stage whose sink write depends on
        its records being acknowledged (the command consumer records a rejection only once it is on its topic)
        flushes the producer itself first."""
        ...

    def release(self) -> None:
        """Release what the stage holds besides the consumer (connections, event loop, its producer)."""
        ...


def offsets_after(messages: Iterable[Message]) -> dict[Partition, int]:
    """The offsets to commit once ``messages`` are done: per partition, one past the highest offset."""
    offsets: dict[Partition, int] = {}
    for msg in messages:
        if msg.error() is None:
            key = (msg.topic(), msg.partition())
            offset = msg.offset() + 1
            if offset > offsets.get(key, -1):
                offsets[key] = offset
    return offsets


def records(messages: Iterable[Message], stage: str) -> Iterator[Message]:
    """The records of a batch, without the consume errors (logged; a fatal one raises ServiceUnavailable so the
    stage is rebuilt). ``_PARTITION_EOF`` is not an error."""
    for msg in messages:
        error = msg.error()
        if error is None:
            yield msg
        elif error.fatal():
            raise ServiceUnavailable(f"{stage}: fatal Kafka error: {error.str()}")
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consume error %s", stage, error.str())


def decoded(
    messages: Iterable[Message], decode: Callable[[Message], T], reject: Callable[[Message, Exception], None],
    stage: str,
) -> Iterator[tuple[Message, T]]:
    """``(message, decode(message))`` for every record; a record whose decoding raises *anything* goes to
    ``reject`` (a dead letter, a rejection or a counted skip) and the batch goes on: a record never stops its
    partition, whatever it makes the decoder do (bad bytes, deep nesting, huge numbers)."""
    for msg in records(messages, stage):
        try:
            value = decode(msg)
        except Exception as exc:  # the rule: one record's failure is that record's alone
            reject(msg, exc)
            continue
        yield msg, value


def where(msg: Message) -> str:
    """``topic[partition]@offset`` of a record, for logs and dead-letter details."""
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


@dataclass
class StageRuntime:
    """Runs one stage's batches in the one order of the module docstring. Not thread-safe: one thread drives it.

    ``take`` replaces the default batch (``consumer.consume(batch_size, poll_timeout_s)``). ``observe`` is told how
    long each batch with records spent in take (waiting for its first record included), handle and flush."""

    name: str
    consumer: ConsumerPort
    producer: Publisher
    stage: Handler
    batch_size: int = 1000
    poll_timeout_s: float = 0.2
    take: Callable[[], list[Message]] | None = None
    observe: BatchObserver | None = None
    clock: Callable[[], float] = time.perf_counter  # what observe's durations are measured with
    _closed: bool = False

    def subscribe(self, topics: Sequence[str], **callbacks: Any) -> None:
        self.consumer.subscribe(list(topics), **callbacks)

    def run_once(self) -> int:
        """One batch: take, handle, flush, commit. Returns how many records it took."""
        started = self.clock()
        messages = self.take() if self.take is not None else self.consumer.consume(
            num_messages=self.batch_size, timeout=self.poll_timeout_s)
        taken = self.clock()
        try:
            done = self.stage.handle(messages)
            handled = self.clock()
            self.producer.flush()
        except BaseException:
            self.rewind(messages)
            raise
        if messages and self.observe is not None:
            self.observe(self.name, taken - started, handled - taken, self.clock() - handled)
        if isinstance(done, Unfinished):
            self.commit(done.done)
            raise done.failure
        self.commit(offsets_after(messages) if done is None else done)
        return len(messages)

    def rewind(self, messages: Iterable[Message]) -> None:
        """Seek each partition of ``messages`` back to its first record: a batch that failed is read again by this
        consumer if it is driven on (its rebuilt successor starts at the committed offsets anyway)."""
        first: dict[Partition, int] = {}
        for msg in messages:
            if msg.error() is None:
                first.setdefault((msg.topic(), msg.partition()), msg.offset())
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # e.g. the partition was revoked meanwhile: its new owner re-reads it
                log.warning("%s: cannot rewind %s[%d] (%s)", self.name, topic, partition, exc)

    def commit(self, offsets: Offsets) -> None:
        """Commit ``offsets`` asynchronously. The request leaves now, after the batch's writes and records are
        durable; waiting for the broker's answer cost every batch a round trip with nothing to gain (1.11x the
        pipeline's rate, docs/benchmarks.md, "Asynchronous offset commits"). librdkafka sends a consumer's commits
        in order, and closing the consumer waits for those in flight. A failed commit is logged, not raised (here if
        it fails at once, else by :func:`report_commit`): the batch is durable, and its redelivery (to this member
        or the partition's new owner) changes nothing, while crashing here would rebuild the consumer and hold up
        the group's next join for a session timeout."""
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=True)
        except KafkaException as exc:
            log.warning("%s: offset commit failed (%s); the batch may be redelivered (harmless)", self.name, exc)

    def run_forever(self, stop: threading.Event) -> None:
        """Batches until ``stop`` is set. On every exit, normal or not, the consumer is closed first, then the
        stage's resources released; an exception then propagates to the worker, which rebuilds the stage."""
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        """Leave the group (its partitions move at once), then release the stage's resources. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.consumer.close()
        finally:
            self.stage.release()
