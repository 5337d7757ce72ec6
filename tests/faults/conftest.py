"""Fixtures for fault scenarios: a seeded audience, channels, a principal, and a :class:`Cluster` of real
worker and simulator subprocesses that is torn down (by pid) after the test, with its logs checked for
leaked secrets."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from campaigns.db import repository as repo
from campaigns.db.engine import transaction
from campaigns.db.seed import SeedPlan, seed
from campaigns.service import CampaignService
from campaigns.settings import Settings
from producers.topics import ensure_topics
from tests.faults.history import campaign_status
from tests.faults.procs import Cluster, Secrets
from tests.helpers import wait_for
from tests.pipeline_fixtures import service, sessions  # noqa: F401 (fixtures)

ACTOR = "marketer-1"  # the principal tests.pipeline_fixtures.service bootstraps
FINISHED = ("completed", "failed", "cancelled")


def set_channel(session_factory: Any, kind: str, rate: float, burst: int) -> None:
    """The channel's rate limit (read by a worker when it starts)."""
    with transaction(session_factory) as session:
        existing = repo.enabled_channel(session, kind)
        repo.upsert_channel(session, id=existing.id if existing else f"{kind}-main", kind=kind,
                            provider="simulator", rate_per_s=rate, burst=burst)


_next_block = itertools.count(5_000)


@pytest.fixture
def audience(settings: Settings) -> Callable[..., tuple[SeedPlan, list[int]]]:
    """Seeds a fresh block of customers. Ids stay below 1e11 so the seeded phone numbers (``+1555`` and
    the id) are valid E.164 (at most 15 digits) for WhatsApp and SMS, and never collide with the blocks of
    tests/e2e/conftest.py (below 1e10) or tests/pipeline_fixtures.py (from 1e12)."""

    def make(customers: int, **overrides: Any) -> tuple[SeedPlan, list[int]]:
        block = next(_next_block)
        plan = SeedPlan(customers=customers, first_id=block * 10_000_000 + (uuid.uuid4().int % 900) * 10_000,
                        segment_prefix=f"faults-{uuid.uuid4().hex[:8]}", **overrides)
        return plan, seed(settings.database.dsn(), plan)

    return make


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


@pytest.fixture
def cluster(settings: Settings, secrets: Secrets, tmp_path: Any) -> Iterator[Cluster]:
    """Subprocesses of one scenario. Topics exist before any worker starts (no creation race)."""
    ensure_topics(settings)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    group = Cluster(settings, secrets, log_dir)
    try:
        yield group
    finally:
        group.close()
    leaks = group.leaked_secrets()
    assert not leaks, f"secrets leaked into process logs: {leaks} (logs in {log_dir})"


def create_campaign(campaigns: CampaignService, channel: str, segments: list[int], *, batch_size: int = 250,
                    max_retries: int = 5, backoff_base_s: float = 0.05, backoff_max_s: float = 0.5,
                    failure_threshold: float = 0.9, **extra: Any) -> str:
    """Create and schedule (start now) a campaign; returns its id as a string."""
    content: dict[str, str] = {"body": "Spring offers inside"}
    if channel == "email":
        content = {"subject": "Spring", "body": "<p>Spring offers inside</p>"}
    campaign_id = campaigns.create_campaign(ACTOR, {
        "name": f"faults-{channel}", "channel": channel, "content": content, "segments": segments,
        "batch_size": batch_size, "failure_threshold": failure_threshold,
        "retry_policy": {"max_retries": max_retries, "backoff_base_s": backoff_base_s,
                         "backoff_max_s": backoff_max_s, "jitter": 0.1},
        **extra,
    })
    campaigns.schedule_campaign(ACTOR, campaign_id)
    return str(campaign_id)


def wait_finished(settings: Settings, campaign_id: str, *, timeout: float, cluster: Cluster | None = None) -> str:
    """Wait (bounded) until the campaign is completed/failed/cancelled; returns the status."""
    dsn = settings.database.dsn()

    def finished() -> str | None:
        status = campaign_status(dsn, campaign_id)
        return status if status in FINISHED else None

    try:
        return wait_for(finished, timeout=timeout, interval=0.25, what=f"campaign {campaign_id} finished")
    except AssertionError as exc:
        crashes = cluster.crashed_stages() if cluster else []
        raise AssertionError(f"{exc}; stage crashes: {crashes[-5:]}") from None


def wait_stable(read: Callable[[], Any], *, quiet_s: float, timeout: float, what: str) -> Any:
    """Wait until ``read()`` returns the same value for ``quiet_s`` seconds (bounded by ``timeout``).

    Used after a SIGKILL: requests the dead worker had already written may still reach the provider,
    so the provider's log is read once it stopped changing."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while True:
        time.sleep(0.1)
        current = read()
        now = time.monotonic()
        if current != value:
            value, since = current, now
        elif now - since >= quiet_s:
            return value
        if now > deadline:
            raise AssertionError(f"{what} kept changing for {timeout}s (last {value!r})")
