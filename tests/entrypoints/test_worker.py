"""``campaigns worker`` with its default stages (no ``--stages``), as a user starts it, against ``python -m
simulator``: one campaign per channel from ``examples/`` runs end to end, the campaign events reach
``campaign.events`` with no separate relay process, the outbox drains, and no stage ever restarts."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from campaigns.db.engine import make_engine, make_sessionmaker
from campaigns.service import CampaignService
from campaigns.settings import Settings
from campaigns.topics import messages_topic, sender_group
from tests.entrypoints.conftest import (
    REPO_ROOT,
    TERMINAL,
    EntryPoints,
    analytics_totals,
    campaign_events,
    metrics_up,
    outbox_events,
    recipient_counts,
    scrape,
    total_recipients,
    unpublished_outbox,
    wait_finished,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _shares(settings: Settings, channel: str) -> int:
    """How many members of the channel's sender group own partitions of ``campaign.messages.<channel>``, once the
    group is stable (-1 while it rebalances)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    group = settings.kafka.topic(sender_group(channel))
    main = settings.kafka.topic(messages_topic(channel))
    admin = AdminClient(settings.kafka.as_librdkafka())
    [description] = [f.result(30) for f in admin.describe_consumer_groups([group]).values()]
    if description.state != ConsumerGroupState.STABLE:
        return -1
    return sum(1 for m in description.members if any(tp.topic == main for tp in m.assignment.topic_partitions))

EXAMPLES = REPO_ROOT / "examples"
CHANNELS = ("sms", "email", "whatsapp")


def prepare(entry: EntryPoints, tmp_path: Path, customers: int) -> dict[str, str]:
    """Principal, channels, approved templates and customers through the CLI; one campaign per channel created
    from ``examples/campaign-<channel>.json`` (segments mapped onto the seeded ones) and scheduled now."""
    entry.cli("principal", "add", "alice", "--role", "marketer")
    for channel in CHANNELS:
        entry.cli("channel", "add", channel, "--rate", "200", "--burst", "50")
        entry.cli("template", "add", str(EXAMPLES / f"template-{channel}.json"), "--approve")
    seeded = json.loads(entry.cli("seed", "--customers", str(customers)).stdout)
    segments = seeded["segments"]
    ids = {}
    for channel in CHANNELS:
        payload = json.loads((EXAMPLES / f"campaign-{channel}.json").read_text())
        payload.pop("start_at", None)
        if "segments" in payload:  # the examples number segments 1..3, as a fresh database has them
            payload["segments"] = [segments[i - 1] for i in payload["segments"]]
        path = tmp_path / f"campaign-{channel}.json"
        path.write_text(json.dumps(payload))
        ids[channel] = entry.cli("create", str(path), actor="alice").stdout.strip()
        uuid.UUID(ids[channel])
        entry.cli("schedule", ids[channel], "--at", "now", actor="alice")
    return ids


def test_worker_with_default_stages_runs_campaigns_end_to_end(entry: EntryPoints, settings: Settings, tmp_path):
    """Every stage, default settings (two sender consumers per channel); one consumer is the rate-limit tests' and
    the sender stage's unit tests' case."""
    ids = prepare(entry, tmp_path, customers=300)
    # The WhatsApp template is registered with the provider, as it must be approved in a business account.
    simulator = entry.start_simulator("--template-file", str(EXAMPLES / "template-whatsapp.json"))
    # No --stages: every stage, the relay included.
    worker = entry.start_worker()
    wait_for(lambda: metrics_up(worker.metrics_port) or not worker.alive, timeout=60, interval=0.2,
             what="the worker's /metrics endpoint")
    assert worker.alive, f"the worker exited at start:\n{worker.log_text()[-3000:]}"

    for channel, campaign_id in ids.items():
        status = wait_finished(settings, campaign_id, timeout=120, procs=entry)
        counts = recipient_counts(settings, campaign_id)
        assert set(counts) <= set(TERMINAL), f"{channel}: recipients left in flight: {counts}"
        total = total_recipients(settings, campaign_id)
        assert sum(counts.values()) == total > 0, f"{channel}: {counts} vs {total} recipients"
        assert status == "completed", f"{channel}: {status}, {counts}"
        assert counts.get("failed", 0) == 0, f"{channel}: {counts}"
        assert simulator.stats(channel)["accepted"] >= counts.get("sent", 0) > 0

    # Receipts through the API's update_metrics reach analytics via the outbox (delivery.outcomes) too.
    engine = make_engine(settings.database)
    try:
        CampaignService(make_sessionmaker(engine)).update_metrics("alice", uuid.UUID(ids["sms"]), {"delivered": 3})
    finally:
        engine.dispose()
    wait_for(lambda: analytics_totals(settings, ids["sms"]).get("delivered") == 3, timeout=60, interval=0.25,
             what="update_metrics receipts counted by analytics")

    # With no separate relay process, every state change reached campaign.events and the outbox is empty.
    wait_for(lambda: unpublished_outbox(settings) == 0, timeout=60, interval=0.25, what="the outbox drained")
    events = campaign_events(settings)
    for channel, campaign_id in ids.items():
        expected = outbox_events(settings, campaign_id)
        published = [(e["event_id"], e["event_type"]) for e in events if e["campaign_id"] == campaign_id]
        assert [t for _, t in expected][:3] == ["CREATED", "SCHEDULED", "ACTIVATED"], expected
        assert expected[-1][1] in ("COMPLETED", "FAILED"), expected
        # At least once, in order: the outbox rows in id order are the topic's records, duplicates aside.
        assert list(dict.fromkeys(published)) == expected, f"{channel}: {published} vs {expected}"

    # Each sender consumer is a member of its channel's group and, once the group is stable, owns a share of its
    # main topic (the campaigns above can end before the last member's join has been rebalanced).
    consumers = settings.sender.consumers
    for channel in CHANNELS:
        wait_for(lambda channel=channel: _shares(settings, channel) == consumers, timeout=60, interval=0.5,
                 what=f"{consumers} {channel} sender consumers each owning partitions")

    restarts = scrape(worker.metrics_port, "campaigns_stage_restarts_total")
    assert all(value == 0 for value in restarts.values()), f"stages restarted: {restarts}"
    # Every channel's sender batches were timed step by step (the runtime's observer, wired by the worker).
    batches = scrape(worker.metrics_port, "campaigns_stage_batch_seconds_count")
    for channel in CHANNELS:
        counts = [batches.get(f'stage="{channel} sender",step="{step}"', 0) for step in ("take", "handle", "flush")]
        assert min(counts) > 0, f"{channel}: {batches}"
    assert entry.crashed_stages() == []
    assert "crashed" not in worker.log_text()
    # Its garbage collector is set up for batches (campaigns/collector.py), as the benchmark's worker's is.
    assert "a young collection every 50000 allocations" in worker.log_text()

    # SIGTERM stops it cleanly (exit 0) well before the SIGKILL fallback.
    started = time.monotonic()
    assert worker.terminate(timeout=45) == 0, worker.log_text()[-3000:]
    assert time.monotonic() - started < 40
