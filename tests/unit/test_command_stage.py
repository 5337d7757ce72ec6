"""The command consumer's logic on fakes: an in-memory consumer and producer and a fake service (the
``CommandService`` port). The real-service tests are tests/integration/test_commands.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from campaigns.codec import get_codec
from campaigns.errors import ServiceUnavailable
from campaigns.service import CommandRequest, CommandResult
from campaigns.settings import Settings
from producers.commands import SigningKey, send_command
from producers.kafka import MemoryProducer
from producers.topics import COMMANDS, COMMANDS_REJECTED
from streams.commands import CommandConsumer
from streams.memory import MemoryConsumer

KEY = SigningKey("key-1", "s3cret")


@dataclass
class FakeService:
    """Applies commands in memory; ``down`` makes every call fail as an unreachable PostgreSQL does."""

    applied: list[CommandRequest] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    def command_key(self, key_id: str) -> tuple[str, str] | None:
        self._check()
        return ("marketer-1", KEY.secret) if key_id == KEY.key_id else None

    def execute_command(self, command: CommandRequest) -> CommandResult:
        self._check()
        if any(c.command_id == command.command_id for c in self.applied) or command.command_id in self.rejected:
            return CommandResult(command.command_id, "duplicate", command.campaign_id, None, "applied")
        self.applied.append(command)
        return CommandResult(command.command_id, "applied", command.campaign_id, 1)

    def record_rejected_command(self, command_id: str, reason: str) -> bool:
        self._check()
        self.rejected.setdefault(command_id, reason)
        return True

    def run_import(self, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        raise AssertionError("no imports in these tests")


@pytest.fixture
def settings() -> Settings:
    return Settings()


def _feed(settings: Settings, commands: list[dict[str, Any]], *, key: SigningKey | None = KEY) -> MemoryConsumer:
    """The commands as signed records on an in-memory ``campaign.commands`` (one partition)."""
    sent = MemoryProducer()
    for command in commands:
        send_command(sent, settings, command, key=key)
    consumer = MemoryConsumer()
    for topic, record_key, value, headers in sent.records:
        consumer.add(topic, value, key=record_key, headers=list(headers.items()))
    return consumer


def _stage(settings: Settings, consumer: MemoryConsumer, service: FakeService,
           ) -> tuple[CommandConsumer, MemoryProducer]:
    producer = MemoryProducer()
    return CommandConsumer(settings, service, producer, consumer=consumer), producer


def _rejections(settings: Settings, producer: MemoryProducer) -> list[dict[str, Any]]:
    topic = settings.kafka.topic(COMMANDS_REJECTED)
    return [get_codec().decode(v, "DeadLetter") for t, _, v, _ in producer.records if t == topic]


def _pause(campaign: uuid.UUID) -> dict[str, Any]:
    return {"command_type": "PAUSE", "campaign_id": campaign, "principal": "marketer-1"}


def test_a_command_nested_too_deeply_is_rejected_and_the_valid_one_behind_it_applied(settings: Settings) -> None:
    deep = {"command_type": "CREATE", "principal": "marketer-1", "payload_json": "[" * 200_000 + "]" * 200_000}
    campaign = uuid.uuid4()
    consumer = _feed(settings, [deep, _pause(campaign)])
    service = FakeService()
    stage, producer = _stage(settings, consumer, service)
    assert stage.run_once(0) == 2
    assert [c.campaign_id for c in service.applied] == [campaign]
    [rejection] = _rejections(settings, producer)
    assert rejection["reason"] == "invalid" and "nested too deeply" in rejection["detail"]
    assert service.rejected.keys() == {rejection["message_id"]}  # recorded once Kafka had the rejection
    assert consumer.committed == {(settings.kafka.topic(COMMANDS), 0): 2}


def test_unsigned_and_undecodable_records_are_rejected_without_stopping_the_partition(settings: Settings) -> None:
    campaign = uuid.uuid4()
    consumer = _feed(settings, [_pause(uuid.uuid4())], key=None)  # unsigned
    topic = settings.kafka.topic(COMMANDS)
    consumer.add(topic, b"\xc3\x01garbage")  # unsigned garbage
    signed = _feed(settings, [_pause(campaign)])
    for msg in signed.log[(topic, 0)]:
        consumer.add(topic, msg.value(), key=msg.key(), headers=msg.headers())
    service = FakeService()
    stage, producer = _stage(settings, consumer, service)
    stage.run_once(0)
    assert [r["reason"] for r in _rejections(settings, producer)] == ["unauthenticated", "unauthenticated"]
    assert [c.campaign_id for c in service.applied] == [campaign]
    assert service.rejected == {}  # an unauthenticated record cannot mark a command id as rejected
    assert consumer.committed == {(topic, 0): 3}


def test_a_repeated_command_id_is_applied_once(settings: Settings) -> None:
    command = {**_pause(uuid.uuid4()), "command_id": str(uuid.uuid4())}
    consumer = _feed(settings, [command, command])
    service = FakeService()
    stage, _ = _stage(settings, consumer, service)
    stage.run_once(0)
    assert len(service.applied) == 1 and stage.applied == 1 and stage.duplicates == 1


def test_a_database_outage_commits_what_was_done_and_rewinds_to_the_first_unfinished(settings: Settings) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    consumer = _feed(settings, [_pause(first), _pause(second)])
    service = FakeService()
    stage, producer = _stage(settings, consumer, service)
    topic = (settings.kafka.topic(COMMANDS), 0)
    original = service.execute_command

    def fail_on_second(command: CommandRequest) -> CommandResult:
        if command.campaign_id == second:
            service.down = True
        return original(command)

    service.execute_command = fail_on_second  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailable, match="will retry from"):
        stage.run_once(0)
    assert consumer.committed == {topic: 1} and consumer.positions[topic] == 1
    assert _rejections(settings, producer) == []  # an outage is never a rejection
    service.down = False
    service.execute_command = original  # type: ignore[method-assign]
    stage.run_once(0)
    assert [c.campaign_id for c in service.applied] == [first, second]
    assert consumer.committed == {topic: 2}


def test_an_invalid_command_is_rejected_and_close_leaves_the_group_once(settings: Settings) -> None:
    consumer = _feed(settings, [{**_pause(uuid.uuid4()), "payload_json": json.dumps({"name": 1})}])
    stage, producer = _stage(settings, consumer, FakeService())
    stage.run_once(0)
    assert [r["reason"] for r in _rejections(settings, producer)] == ["invalid"]
    stage.close()
    stage.close()  # idempotent: the runtime closes the consumer and releases the producer once
    assert consumer.closed
