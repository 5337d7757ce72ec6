"""``campaigns live`` started with no live settings at all (default data dir, default batching), next to a
``campaigns worker``: it reads the pipeline's real, lz4-compressed ``campaign.analytics`` and serves
``/campaigns/{id}/live`` with the totals of ``campaign_analytics``."""

from __future__ import annotations

import json

import pytest

from campaigns.settings import Settings
from tests.entrypoints.conftest import (
    REPO_ROOT,
    EntryPoints,
    analytics_totals,
    get_json,
    wait_finished,
)
from tests.faults.procs import free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

COUNTERS = ("sent", "failed", "retried", "skipped", "cancelled", "delivered", "read", "clicked", "bounced")


def test_live_with_no_settings_serves_a_campaign_run_by_the_worker(entry: EntryPoints, settings: Settings,
                                                                   live_datadir, tmp_path):
    assert not any(k.startswith("CAMPAIGNS_LIVE__") for k in entry.env()), "the point: no live settings"
    port = free_port()  # --port is the command's own option; 6066 may be taken on a shared machine
    live = entry.start("live", "live", "--port", str(port))

    entry.cli("principal", "add", "alice", "--role", "marketer")
    entry.cli("channel", "add", "sms", "--rate", "200", "--burst", "50")
    segments = json.loads(entry.cli("seed", "--customers", "200").stdout)["segments"]
    payload = json.loads((REPO_ROOT / "examples" / "campaign-inline-sms.json").read_text())
    payload["segments"] = [segments[-1]]
    path = tmp_path / "campaign.json"
    path.write_text(json.dumps(payload))
    campaign_id = entry.cli("create", str(path), actor="alice").stdout.strip()
    entry.cli("approve", campaign_id)  # alice's inline content, approved by an admin
    entry.cli("schedule", campaign_id, "--at", "now", actor="alice")

    entry.start_simulator()
    entry.start_worker()
    wait_finished(settings, campaign_id, timeout=120, procs=entry)

    url = f"http://127.0.0.1:{port}/campaigns/{campaign_id}/live"

    def live_equals_analytics() -> dict | None:
        assert live.alive, f"campaigns live exited:\n{live.log_text()[-4000:]}"
        status, body = get_json(url)
        if status != 200:
            return None
        expected = analytics_totals(settings, campaign_id)
        got = {name: body["totals"].get(name, 0) for name in COUNTERS}
        return body if expected and got == expected else None

    try:
        body = wait_for(live_equals_analytics, timeout=120, interval=0.5,
                        what="the live view's totals equal campaign_analytics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; analytics {analytics_totals(settings, campaign_id)}; "
                             f"live {get_json(url)}; log:\n{live.log_text()[-4000:]}") from None
    assert body["seen"] is True and body["totals"]["sent"] > 0
    assert live_datadir.is_dir(), "the default data dir (<tmp>/campaigns-live/<app id>) was not the one used"
    log = live.log_text()
    assert "UnsupportedCodecError" not in log and "Traceback" not in log, log[-4000:]
    status, stats = get_json(f"http://127.0.0.1:{port}/live/stats")
    assert status == 200 and stats["undecodable"] == 0 and stats["records"] > 0, stats
    assert live.terminate(timeout=30) in (0, -15), live.log_text()[-3000:]
