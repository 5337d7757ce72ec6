"""``campaigns relay`` on its own (no worker) publishes the outbox to ``campaign.events``, in order per
campaign, including rows written while it runs, and stops cleanly on SIGTERM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaigns.settings import Settings
from tests.entrypoints.conftest import (
    REPO_ROOT,
    EntryPoints,
    campaign_events,
    outbox_events,
    unpublished_outbox,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_relay_alone_publishes_the_outbox(entry: EntryPoints, settings: Settings):
    entry.cli("topics", "create")  # what an operator runs before starting a relay on its own
    entry.cli("principal", "add", "alice", "--role", "marketer")
    entry.cli("channel", "add", "sms")
    entry.cli("template", "add", str(REPO_ROOT / "examples" / "template-sms.json"), "--approve")
    entry.cli("seed", "--customers", "10")
    campaign_id = entry.cli("create", str(REPO_ROOT / "examples" / "campaign-sms.json"), actor="alice").stdout.strip()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    entry.cli("schedule", campaign_id, "--at", later, actor="alice")  # no scheduler runs: it stays scheduled
    assert unpublished_outbox(settings) == 2

    relay = entry.start("relay", "relay")

    def published(n: int) -> list[tuple[str, str]] | None:
        assert relay.alive, f"campaigns relay exited:\n{relay.log_text()[-3000:]}"
        events = [(e["event_id"], e["event_type"]) for e in campaign_events(settings)
                  if e["campaign_id"] == campaign_id]
        return events if len(set(events)) >= n and unpublished_outbox(settings) == 0 else None

    wait_for(lambda: published(2), timeout=60, interval=0.25, what="the relay published the outbox")
    # Rows written while it runs are published too, after the earlier ones.
    entry.cli("pause", campaign_id, actor="alice")
    entry.cli("cancel", campaign_id, actor="alice")
    events = wait_for(lambda: published(4), timeout=60, interval=0.25, what="later outbox rows published")
    expected = outbox_events(settings, campaign_id)
    assert [t for _, t in expected] == ["CREATED", "SCHEDULED", "PAUSED", "CANCELLED"]
    assert list(dict.fromkeys(events)) == expected

    assert relay.terminate(timeout=30) == 0, relay.log_text()[-3000:]
    log = relay.log_text()
    assert "relay stopped after publishing 4 events" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
