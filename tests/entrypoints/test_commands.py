"""``campaigns commands`` on its own (no worker), as an upstream system's operator starts it: a signed command from
``campaigns command-key create`` is applied, an unsigned one is rejected onto ``campaign.commands.rejected``, no
stage restarts, and SIGTERM stops it cleanly with its summary."""

from __future__ import annotations

import json
import uuid

import pytest

from campaigns.settings import Settings
from producers.commands import SigningKey, send_command
from producers.kafka import KafkaProducer
from producers.topics import COMMANDS_REJECTED
from tests.entrypoints.conftest import REPO_ROOT, EntryPoints
from tests.helpers import consume_to_end, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _status(entry: EntryPoints, campaign_id: str) -> str:
    return json.loads(entry.cli("status", campaign_id, "--json", actor="alice").stdout)["status"]


def test_commands_alone_applies_signed_commands_and_rejects_the_rest(entry: EntryPoints, settings: Settings):
    entry.cli("topics", "create")
    entry.cli("principal", "add", "alice", "--role", "marketer")
    entry.cli("channel", "add", "sms")
    entry.cli("template", "add", str(REPO_ROOT / "examples" / "template-sms.json"), "--approve")
    entry.cli("seed", "--customers", "10")
    campaign_id = entry.cli("create", str(REPO_ROOT / "examples" / "campaign-sms.json"), actor="alice").stdout.strip()
    key = SigningKey(*entry.cli("command-key", "create", "alice").stdout.split())

    consumer = entry.start("commands", "commands")
    producer = KafkaProducer(settings.kafka)
    try:
        send_command(producer, settings, {"command_type": "SCHEDULE", "campaign_id": uuid.UUID(campaign_id)}, key=key)
        unsigned = send_command(producer, settings, {"command_type": "CANCEL", "campaign_id": uuid.UUID(campaign_id)},
                                key=None)
    finally:
        producer.close()

    def scheduled() -> bool:
        assert consumer.alive, f"campaigns commands exited:\n{consumer.log_text()[-3000:]}"
        return _status(entry, campaign_id) == "scheduled"

    wait_for(scheduled, timeout=60, interval=0.25, what="the signed SCHEDULE applied")
    rejected = wait_for(lambda: [r for r in consume_to_end(settings.kafka.bootstrap_servers,
                                                            settings.kafka.topic(COMMANDS_REJECTED))
                                 if r.headers() and dict(r.headers()).get("reason") == b"unauthenticated"],
                        timeout=60, interval=0.25, what="the unsigned CANCEL rejected")
    assert len(rejected) == 1 and _status(entry, campaign_id) == "scheduled", unsigned

    assert consumer.terminate(timeout=30) == 0, consumer.log_text()[-3000:]
    log = consumer.log_text()
    assert "stopped: 1 applied, 0 repeats, 1 rejected" in log, log[-3000:]
    assert "crashed" not in log and "Traceback" not in log, log[-3000:]
