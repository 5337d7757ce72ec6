"""Whole-pipeline fixtures usable from any test layer: a seeded audience, channels, a principal, a service.

Import them where needed (``tests/e2e/conftest.py`` does)::

    from tests.pipeline_fixtures import audience, service, sessions  # noqa: F401 (fixtures)

Each test has its own database (``tests/conftest.py``), so ids are deterministic.
"""

from __future__ import annotations

import itertools

import pytest

from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction
from campaigns.db.seed import SeedPlan, seed
from campaigns.service import CampaignService

_next_block = itertools.count(1)  # each test has its own database; blocks only separate audiences within one


@pytest.fixture
def sessions(settings):
    engine = make_engine(settings.database)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def service(sessions):
    service = CampaignService(sessions)
    with transaction(sessions) as session:
        for kind, rate, burst in (("email", 1000, 100), ("sms", 100, 10), ("whatsapp", 80, 80)):
            repo.upsert_channel(session, id=f"{kind}-main", kind=kind, provider="simulator",
                                rate_per_s=rate, burst=burst)
        # The pipeline tests send inline content as a marketer: this test database lets marketers send
        # unapproved content (off by default; the RBAC tests use the default roles).
        repo.grant_permission(session, "marketer", "content.send_unapproved")
    service.provision_principal("marketer-1", "marketer")
    return service


@pytest.fixture
def audience(settings):
    """A function seeding a fresh block of customers (ids never collide between tests)."""

    def make(customers: int, **overrides) -> tuple[SeedPlan, list[int]]:
        block = next(_next_block)
        plan = SeedPlan(customers=customers, first_id=block * 10_000_000, segment_prefix=f"seg-{block}", **overrides)
        return plan, seed(settings.database.dsn(), plan)

    return make
