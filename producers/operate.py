"""Operator tools: replay a topic range, list and redrive the dead-letter topic, read the rejected
commands and the campaign events, watch a campaign.

Replays and redrives are safe by construction: senders claim (campaign, recipient) before sending, so a
re-driven message whose recipient already has a row is dropped, never sent twice; analytics dedupe
outcome ids, so a replayed ``delivery.outcomes`` range changes no count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from campaigns.codec import get_codec
from campaigns.errors import SchemaError, ValidationError
from campaigns.settings import Settings
from campaigns.topics import COMMANDS_REJECTED, EVENTS, MESSAGES_DLQ, TOPICS, record_for
from producers.kafka import KafkaProducer


@dataclass(frozen=True)
class Range:
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    from_time: datetime | None = None
    to_time: datetime | None = None


def _operator_consumer(settings: Settings) -> Any:
    return Consumer(settings.kafka.as_librdkafka(**{
        "group.id": f"{settings.kafka.topic('operator')}-{time.monotonic_ns()}", "enable.auto.commit": False}))


def _existing_topic(consumer: Any, topic: str, *, wait_s: float = 0.0) -> Any:
    """The topic's metadata; ValidationError if the broker does not have it (the broker does not create topics on
    demand here, so a producer would wait for it until its delivery timeout). ``wait_s``: how long to wait for a
    topic created moments ago to reach this broker's metadata (it propagates asynchronously)."""
    deadline = time.monotonic() + wait_s
    while True:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None:
            return metadata
        if time.monotonic() >= deadline:
            raise ValidationError(f"topic {topic!r} does not exist (create the pipeline's topics with "
                                  "`campaigns topics create`; CAMPAIGNS_KAFKA__TOPIC_PREFIX names them)")
        time.sleep(0.2)


def read_range(settings: Settings, topic: str, span: Range, *, timeout_s: float = 30.0) -> Iterator[Any]:
    """Every record of ``topic`` in ``span`` (offsets inclusive, or a time range), partition by partition.

    Reads up to the high watermark seen at the start, so it always ends."""
    consumer = _operator_consumer(settings)
    try:
        metadata = _existing_topic(consumer, topic)
        partitions = [span.partition] if span.partition is not None else sorted(metadata.partitions)
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, p))
            start, end = low, high  # end exclusive
            if span.from_offset is not None:
                start = max(low, span.from_offset)
            if span.to_offset is not None:
                end = min(high, span.to_offset + 1)
            if span.from_time is not None:
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, int(span.from_time.timestamp() * 1000))], timeout=10)[0].offset
                start = max(start, high if found in (-1, OFFSET_END) else found)
            if span.to_time is not None:
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, int(span.to_time.timestamp() * 1000) + 1)], timeout=10)[0].offset
                end = min(end, high if found in (-1, OFFSET_END) else found)
            if end > start:
                starts[p], ends[p] = start, end
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() or msg.partition() not in ends:
                    continue
                if msg.offset() < ends[msg.partition()]:
                    yield msg
                if msg.offset() + 1 >= ends[msg.partition()]:
                    del ends[msg.partition()]
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, partition: TopicPartition, timeout_s: float = 15.0) -> tuple[int, int]:
    """Low and high watermarks; a partition whose leader is still being elected (a new topic, a broker
    restart) is asked again until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=5)
        except KafkaException as exc:
            retriable = exc.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def campaign_of(record_name: str | None, value: bytes) -> str | None:
    if record_name is None:
        return None
    try:
        return get_codec().decode(value, record_name).get("campaign_id")
    except SchemaError:
        return None


@dataclass
class ReplayReport:
    read: int = 0
    matched: int = 0
    produced: int = 0


def replay(
    settings: Settings, topic: str, span: Range, *, campaign: str | None = None, to_topic: str | None = None,
    dry_run: bool = False, rate_per_s: float | None = None, on_record: Callable[[Any], None] | None = None,
) -> ReplayReport:
    """Re-produce the records of a range (same key, value, headers) to ``to_topic`` (default: the same)."""
    record_name = record_for(topic, settings.kafka.topic_prefix)
    if campaign is not None and record_name is None:
        raise ValidationError(f"--campaign: records of {topic!r} carry no campaign id")
    report = ReplayReport()
    if to_topic is not None and not dry_run:  # fail before reading anything, not after a delivery timeout
        checker = _operator_consumer(settings)
        try:
            _existing_topic(checker, to_topic, wait_s=5.0)
        finally:
            checker.close()
    producer = None if dry_run else KafkaProducer(settings.kafka)
    started = time.monotonic()
    for msg in read_range(settings, topic, span):
        report.read += 1
        if campaign is not None and campaign_of(record_name, msg.value()) != campaign:
            continue
        report.matched += 1
        if on_record is not None:
            on_record(msg)
        if producer is not None:
            producer.produce(to_topic or topic, msg.key() or b"", msg.value(), headers=msg.headers())
            report.produced += 1
            _pace(started, report.produced, rate_per_s)
    if producer is not None:
        producer.flush()
    return report


def _pace(started: float, done: int, rate_per_s: float | None) -> None:
    if rate_per_s:
        ahead = done / rate_per_s - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def dead_letters(settings: Settings, *, campaign: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
    """Decoded DLQ records (with their topic position), filtered by campaign and reason."""
    codec = get_codec()
    out = []
    for msg in read_range(settings, settings.kafka.topic(MESSAGES_DLQ), Range()):
        try:
            record = codec.decode(msg.value(), "DeadLetter")
        except SchemaError as exc:
            record = {"reason": "undecodable_dead_letter", "detail": str(exc), "original_value": msg.value()}
        if campaign is not None and record.get("campaign_id") != campaign:
            continue
        if reason is not None and not str(record.get("reason", "")).startswith(reason):
            continue
        record["_position"] = f"{msg.partition()}@{msg.offset()}"
        out.append(record)
    return out


def redrive(
    settings: Settings, *, campaign: str | None = None, reason: str | None = None, rate_per_s: float | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Re-produce dead-lettered messages to the topic they came from, at ``rate_per_s``.

    A recipient whose row is terminal (``failed`` after a permanent error or exhausted retries) is not
    re-sent: the claim drops the message. Redrive is for records that never reached a claim (poison
    records after a fix, unknown campaigns created since); to retry failed recipients, create a follow-up
    campaign for them."""
    report = ReplayReport()
    producer = None if dry_run else KafkaProducer(settings.kafka)
    started = time.monotonic()
    for record in dead_letters(settings, campaign=campaign, reason=reason):
        report.read += 1
        value = record.get("original_value")
        source = record.get("source_topic")
        if not value or not source:
            continue
        report.matched += 1
        if producer is not None:
            producer.produce(source, (record.get("recipient_id") or "").encode(), value)
            report.produced += 1
            _pace(started, report.produced, rate_per_s)
    if producer is not None:
        producer.flush()
    return report


def _decoded(settings: Settings, logical_topic: str, record_name: str, *, campaign: str | None,
             since: datetime | None) -> list[dict[str, Any]]:
    """Every record of a topic since ``since`` (Kafka timestamps), decoded, with ``_position``
    (``partition@offset``) and ``_timestamp`` (the record's Kafka time), oldest first; those of another
    campaign left out. An undecodable record is kept as ``{"undecodable": detail}`` (it cannot be matched
    to a campaign, so a campaign filter leaves it out)."""
    codec = get_codec()
    out = []
    for msg in read_range(settings, settings.kafka.topic(logical_topic), Range(from_time=since)):
        try:
            record = codec.decode(msg.value(), record_name)
        except SchemaError as exc:
            record = {"undecodable": str(exc)}
        if campaign is not None and record.get("campaign_id") != campaign:
            continue
        record["_position"] = f"{msg.partition()}@{msg.offset()}"
        record["_timestamp"] = datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC)
        out.append(record)
    out.sort(key=lambda r: (r["_timestamp"], r["_position"]))
    return out


def campaign_events(settings: Settings, *, campaign: str | None = None, since: datetime | None = None,
                    event_type: str | None = None) -> list[dict[str, Any]]:
    """The records of ``campaign.events`` (CampaignEvent: what happened to which campaign, when, by whom),
    oldest first, filtered by campaign id, Kafka time and event type (``CREATED``, ``COMPLETED``, ...)."""
    events = _decoded(settings, EVENTS, TOPICS[EVENTS].record, campaign=campaign, since=since)
    if event_type is not None:
        events = [e for e in events if e.get("event_type") == event_type.upper()]
    return events


def rejected_commands(settings: Settings, *, campaign: str | None = None, since: datetime | None = None,
                      reason: str | None = None) -> list[dict[str, Any]]:
    """The records of ``campaign.commands.rejected`` (DeadLetter: why a command was refused), oldest first,
    filtered by campaign id, Kafka time and reason prefix. Each carries ``command``: the refused command's
    ``command_id``, ``command_type`` and ``principal`` when its original bytes decode."""
    codec = get_codec()
    records = _decoded(settings, COMMANDS_REJECTED, TOPICS[COMMANDS_REJECTED].record, campaign=campaign, since=since)
    if reason is not None:
        records = [r for r in records if str(r.get("reason", "")).startswith(reason)]
    for record in records:
        original = record.get("original_value")
        record["command"] = None
        if original:
            try:
                command = codec.decode(original, "CampaignCommand")
            except SchemaError:
                continue
            record["command"] = {k: command.get(k) for k in ("command_id", "command_type", "principal")}
    return records
