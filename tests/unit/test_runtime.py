"""The stage runtime on fakes (``MemoryConsumer``, ``MemoryProducer``): the one batch order, the per-record rule,
the rewind of a failed batch, and a consumer closed on every exit path."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

import streams.runtime
from campaigns.errors import DeliveryFailed, ServiceUnavailable
from campaigns.settings import KafkaSettings
from producers.kafka import MemoryProducer
from streams.memory import MemoryConsumer
from streams.runtime import StageRuntime, Unfinished, build_consumer, decoded, offsets_after, report_commit

TOPIC = "in"


class LoggingProducer(MemoryProducer):
    def __init__(self, events: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def flush(self, timeout: float = 30.0) -> None:
        self.events.append("flush")
        super().flush(timeout)


@dataclass
class LoggingConsumer(MemoryConsumer):
    events: list[str] = field(default_factory=list)

    def commit(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> Any:
        self.events.append(f"commit {sorted((tp.partition, tp.offset) for tp in offsets)}")
        return super().commit(message, offsets, asynchronous)


@dataclass
class EchoStage:
    """Decodes UTF-8 integers, produces each doubled; a record that is not an integer is rejected."""

    producer: MemoryProducer
    events: list[str]
    rejected: list[int] = field(default_factory=list)
    released: int = 0
    fail_with: BaseException | None = None
    result: Any = None

    def handle(self, messages: list[Message]) -> Any:
        self.events.append(f"handle {len(messages)}")
        if self.fail_with is not None:
            raise self.fail_with
        for msg, n in decoded(messages, lambda m: int(m.value().decode()), self._reject, "echo"):
            self.producer.produce("out", msg.key(), str(n * 2).encode())
        return self.result

    def _reject(self, msg: Message, exc: Exception) -> None:
        self.rejected.append(msg.offset())

    def release(self) -> None:
        self.released += 1


def _runtime(values: list[bytes], partitions: int = 1, **stage: Any) -> tuple[StageRuntime, EchoStage, list[str]]:
    events: list[str] = []
    consumer = LoggingConsumer(events=events)
    for i, value in enumerate(values):
        consumer.add(TOPIC, value, key=str(i).encode(), partition=i % partitions)
    producer = LoggingProducer(events)
    echo = EchoStage(producer, events, **stage)
    runtime = StageRuntime("echo", consumer, producer, echo, batch_size=100)
    runtime.subscribe([TOPIC])
    return runtime, echo, events


def test_a_batch_is_handled_then_flushed_then_committed_one_past_its_last_record() -> None:
    runtime, _, events = _runtime([b"1", b"2", b"3", b"4"], partitions=2)
    assert runtime.run_once() == 4
    assert events == ["handle 4", "flush", "commit [(0, 2), (1, 2)]"]
    assert [v for _, _, v, _ in runtime.producer.records] == [b"2", b"6", b"4", b"8"]  # type: ignore[attr-defined]


def test_a_record_that_breaks_its_decoder_is_rejected_and_the_partition_flows() -> None:
    deep = b"[" * 200_000  # whatever the decoder raises (here ValueError), the record is the one rejected
    runtime, echo, events = _runtime([b"1", deep, b"\xff", b"4"])
    runtime.run_once()
    assert echo.rejected == [1, 2]
    assert [v for _, _, v, _ in runtime.producer.records] == [b"2", b"8"]  # type: ignore[attr-defined]
    assert events[-1] == "commit [(0, 4)]"


def test_decoded_turns_any_exception_into_a_rejection() -> None:
    consumer = MemoryConsumer()
    for value in (b"a", b"b", b"c"):
        consumer.add(TOPIC, value)
    consumer.subscribe([TOPIC])

    def decode(msg: Message) -> str:
        if msg.value() == b"b":
            raise RecursionError("nested too deeply")
        return msg.value().decode()

    rejected: list[tuple[int, str]] = []
    def reject(msg: Message, exc: Exception) -> None:
        rejected.append((msg.offset(), type(exc).__name__))

    got = [v for _, v in decoded(consumer.consume(10), decode, reject, "t")]
    assert got == ["a", "c"] and rejected == [(1, "RecursionError")]


def test_a_failed_flush_commits_nothing_and_rewinds_the_batch() -> None:
    runtime, _, events = _runtime([b"1", b"2"])
    runtime.producer.fail_topics.add("out")  # type: ignore[attr-defined]
    with pytest.raises(DeliveryFailed):
        runtime.run_once()
    consumer: LoggingConsumer = runtime.consumer  # type: ignore[assignment]
    assert not any(e.startswith("commit") for e in events) and consumer.committed == {}
    assert consumer.positions[(TOPIC, 0)] == 0  # read again if this consumer is driven on
    runtime.producer.fail_topics.clear()  # type: ignore[attr-defined]
    assert runtime.run_once() == 2 and consumer.committed == {(TOPIC, 0): 2}


def test_a_handler_that_raises_leaves_the_offsets_uncommitted_and_rewinds() -> None:
    runtime, _, events = _runtime([b"1", b"2", b"3"], fail_with=ServiceUnavailable("PostgreSQL down"))
    with pytest.raises(ServiceUnavailable):
        runtime.run_once()
    assert events == ["handle 3"]
    assert runtime.consumer.positions[(TOPIC, 0)] == 0  # type: ignore[attr-defined]


def test_an_unfinished_batch_commits_what_it_finished_then_raises() -> None:
    failure = ServiceUnavailable("PostgreSQL down at offset 1")
    runtime, _, events = _runtime([b"1", b"2"], result=Unfinished({(TOPIC, 0): 1}, failure))
    with pytest.raises(ServiceUnavailable) as raised:
        runtime.run_once()
    assert raised.value is failure
    assert events == ["handle 2", "flush", "commit [(0, 1)]"]


def test_a_failed_commit_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    runtime, _, _ = _runtime([b"1"])
    runtime.consumer.commit_fails = True  # type: ignore[attr-defined]
    assert runtime.run_once() == 1
    assert "offset commit failed" in caplog.text


@pytest.mark.parametrize("fail_with", [None, ServiceUnavailable("down"), RuntimeError("a bug")])
def test_run_forever_closes_the_consumer_and_releases_the_stage_on_every_exit(fail_with: BaseException | None) -> None:
    runtime, echo, _ = _runtime([b"1"], fail_with=fail_with)
    stop = threading.Event()
    run_once = runtime.run_once

    def one_batch_then_stop() -> int:
        try:
            return run_once()
        finally:
            stop.set()

    runtime.run_once = one_batch_then_stop  # type: ignore[method-assign]
    if fail_with is None:
        runtime.run_forever(stop)
    else:
        with pytest.raises(type(fail_with)):
            runtime.run_forever(stop)
    assert runtime.consumer.closed and echo.released == 1  # type: ignore[attr-defined]
    runtime.close()
    assert echo.released == 1  # idempotent


def test_offsets_after_skips_errors_and_takes_each_partitions_highest() -> None:
    consumer = MemoryConsumer()
    for p in (0, 1, 0, 0):
        consumer.add(TOPIC, b"x", partition=p)
    consumer.subscribe([TOPIC])
    assert offsets_after(consumer.consume(10)) == {(TOPIC, 0): 3, (TOPIC, 1): 1}


def test_a_commit_that_fails_later_is_logged_by_the_consumers_on_commit(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits are asynchronous: a failure the broker answers later reaches ``report_commit``, which every stage
    consumer gets as its ``on_commit``."""
    configs: list[dict[str, Any]] = []
    monkeypatch.setattr(streams.runtime, "Consumer", lambda conf: configs.append(conf))
    build_consumer(KafkaSettings(), "a-group")
    assert configs[0]["on_commit"] is report_commit and configs[0]["group.id"] == "a-group"

    report_commit(None, [TopicPartition(TOPIC, 0, 5)])
    assert "offset commit failed" not in caplog.text
    report_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition(TOPIC, 0, 5)])
    assert "offset commit failed" in caplog.text


def test_each_batch_with_records_is_observed_step_by_step() -> None:
    """``observe`` gets the stage's name and the seconds of take, handle and flush, read off the runtime's clock
    before and after each step; a batch that took nothing is not observed (idle polling is no batch)."""
    runtime, _, _ = _runtime([b"1", b"2"])
    ticks = iter([10.0, 11.0, 13.0, 16.0, 20.0, 21.0, 23.0, 26.0])
    seen: list[tuple[str, float, float, float]] = []
    runtime.clock = lambda: next(ticks)
    runtime.observe = lambda *batch: seen.append(batch)
    assert runtime.run_once() == 2
    assert seen == [("echo", 1.0, 2.0, 3.0)]
    assert runtime.run_once() == 0  # nothing left to take
    assert seen == [("echo", 1.0, 2.0, 3.0)]
