"""Every Kafka topic of the pipeline, with explicit partitions and configs, and their idempotent creation.

The broker does not auto-create topics (``auto.create.topics.enable=false``): :func:`ensure_topics` must
run before producers and consumers start (``campaigns topics create``, the worker's start-up, tests).

Configs: every topic has ``cleanup.policy=delete`` with the retention from settings. None of these
topics is a changelog of keyed state, so none is compacted: ``campaign.analytics`` is keyed by campaign id
but carries one record per *window* (compaction by campaign id would keep only the last window), and the
rest are streams of facts or work items. Faust creates its own table changelog topics, compacted, itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from campaigns.core.vocabulary import CHANNELS
from campaigns.errors import ServiceUnavailable, SinkError
from campaigns.settings import KafkaSettings, Settings

# The names come from the topic registry; re-exported because callers that create topics read them here.
from campaigns.topics import (
    ANALYTICS,
    COMMANDS,
    COMMANDS_REJECTED,
    EVENTS,
    MESSAGES_DLQ,
    OUTCOMES,
    RECEIPTS,
    messages_topic,
    retry_topic,
)


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its logical ``name`` (prefix it with ``KafkaSettings.topic``), partitions and configs."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def logical_topic_names(settings: Settings) -> list[str]:
    """Every topic of the pipeline by its logical (unprefixed) name, in a stable order."""
    names = [COMMANDS, COMMANDS_REJECTED, EVENTS]
    for channel in CHANNELS:
        names.append(messages_topic(channel))
        names.extend(retry_topic(channel, tier) for tier in range(1, settings.sender.retry_tiers + 1))
    names += [MESSAGES_DLQ, OUTCOMES, ANALYTICS, RECEIPTS]
    return names


def all_topic_names(settings: Settings) -> list[str]:
    """Every topic of the pipeline by its physical name (``settings.kafka.topic(name)``, so prefixed)."""
    return [settings.kafka.topic(name) for name in logical_topic_names(settings)]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The specs :func:`ensure_topics` creates: ``settings.kafka.partitions`` partitions each, deleted
    after ``settings.kafka.retention_ms``."""
    config = MappingProxyType(
        {
            "cleanup.policy": "delete",
            "retention.ms": str(settings.kafka.retention_ms),
        }
    )
    return [TopicSpec(name, settings.kafka.partitions, config) for name in logical_topic_names(settings)]


def ensure_topics(
    kafka: KafkaSettings | Settings, specs: Iterable[TopicSpec] | None = None, *, timeout: float = 30.0
) -> list[str]:
    """Create every topic in ``specs`` (names are prefixed with ``kafka.topic``) that does not exist yet.

    ``ensure_topics(settings)`` with the whole :class:`Settings` and no specs creates every topic of the
    pipeline (:func:`topic_specs`). Idempotent: an existing topic is left as it is (its partitions and
    configs are not changed). Returns the physical names created by this call. Waits (at most
    ``timeout`` seconds) until the broker's metadata lists every topic, so producers and consumers can
    use them right away. Raises :class:`ServiceUnavailable` if the broker cannot be reached and
    :class:`SinkError` if a creation fails for another reason (e.g. an invalid config).
    """
    if isinstance(kafka, Settings):
        specs = topic_specs(kafka) if specs is None else specs
        kafka = kafka.kafka
    elif specs is None:
        raise TypeError("ensure_topics(kafka_settings, specs): give the specs, or pass the whole Settings")
    specs = list(specs)
    admin = AdminClient(kafka.as_librdkafka())
    new_topics = [
        NewTopic(
            kafka.topic(s.name),
            num_partitions=s.partitions,
            replication_factor=kafka.replication_factor,
            config=dict(s.config),
        )
        for s in specs
    ]
    if not new_topics:
        return []
    try:
        return _create(admin, kafka, new_topics, timeout)
    finally:
        admin.poll(0)  # hand librdkafka's log lines (e.g. a refused connection) to the project's logger


def _create(admin: AdminClient, kafka: KafkaSettings, new_topics: list[NewTopic], timeout: float) -> list[str]:
    try:
        futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException as exc:
        raise ServiceUnavailable(f"cannot create topics on {kafka.bootstrap_servers}: {exc}") from exc
    created: list[str] = []
    problems: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN):
                raise ServiceUnavailable(
                    f"cannot create topic {name} on {kafka.bootstrap_servers}: {exc}; is Kafka running?"
                ) from exc
            problems.append(f"{name}: {exc}")
    if problems:
        raise SinkError("could not create topics: " + "; ".join(problems))
    _wait_listed(admin, [t.topic for t in new_topics], timeout)
    return sorted(created)


def _wait_listed(admin: AdminClient, names: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing: set[str] = set(names)
    while True:
        try:
            metadata = admin.list_topics(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            raise ServiceUnavailable(f"cannot list topics: {exc}") from exc
        missing = {
            n
            for n in names
            if n not in metadata.topics
            or metadata.topics[n].error is not None
            or not metadata.topics[n].partitions
        }
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(
                f"topics not visible in metadata after {timeout}s: {sorted(missing)[:5]}"
            )
        time.sleep(0.05)
