"""A ready-to-use CampaignService world on the session's test database (helpers, not fixtures).

The test database is shared by the whole session, so every name made here (principals, templates,
segments, customer ids) is unique per call: tests never see each other's rows by accident.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from campaigns.core.vocabulary import CHANNELS
from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction
from campaigns.db.seed import SeedPlan, seed
from campaigns.service import CampaignService
from campaigns.settings import DatabaseSettings


class FakeClock:
    """An aware UTC clock the test moves by hand (thread-safe)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@dataclass
class ServiceEnv:
    engine: Engine
    sessions: sessionmaker[Session]
    service: CampaignService
    clock: FakeClock
    tag: str
    admin: str
    marketer: str
    auditor: str
    segment_ids: list[int]
    customer_ids: list[int]
    templates: dict[str, str] = field(default_factory=dict)  # channel -> approved template name

    def payload(self, channel: str = "sms", **overrides: object) -> dict[str, object]:
        """A valid create payload using this env's approved template and first segment."""
        base: dict[str, object] = {
            "name": f"campaign {self.tag} {uuid.uuid4().hex[:6]}",
            "channel": channel,
            "template": {"name": self.templates[channel]},
            "variables": {"discount": "20%"},
            "segments": [self.segment_ids[0]],
        }
        base.update(overrides)
        return base

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]


def build_env(db: DatabaseSettings, clock: Callable[[], datetime] | None = None) -> ServiceEnv:
    """Channels for every kind, three principals (admin, marketer, auditor), one approved template per
    channel, and 30 seeded customers in two segments - all uniquely named."""
    engine = make_engine(db.model_copy(update={"pool_size": 4}))
    sessions = make_sessionmaker(engine)
    fake = clock if isinstance(clock, FakeClock) else FakeClock()
    service = CampaignService(sessions, clock=fake)
    tag = uuid.uuid4().hex[:8]
    with transaction(sessions) as session:
        for kind in CHANNELS:
            # One enabled channel per kind (a partial unique index); every env shares these rows.
            if repo.enabled_channel(session, kind) is None:
                repo.upsert_channel(
                    session, id=kind, kind=kind, provider="simulator", rate_per_s=1000, burst=100
                )
    names = {role: f"{role}-{tag}" for role in ("admin", "marketer", "auditor")}
    for role, name in names.items():
        service.bootstrap_principal(name, role)
    env_templates = {}
    for channel in CHANNELS:
        name = f"promo-{channel}-{tag}"
        subject = "{{ discount }} off" if channel == "email" else None
        service.add_template(
            names["admin"],
            name=name,
            channel=channel,
            body="Save {{ discount }} today!",
            subject=subject,
            approve=True,
        )
        env_templates[channel] = name
    first_id = random.randrange(10**9, 10**12)
    plan = SeedPlan(customers=30, first_id=first_id, segments=2, segment_prefix=f"seg-{tag}")
    segment_ids = seed(db.dsn(), plan)
    return ServiceEnv(
        engine=engine,
        sessions=sessions,
        service=service,
        clock=fake,
        tag=tag,
        admin=names["admin"],
        marketer=names["marketer"],
        auditor=names["auditor"],
        segment_ids=segment_ids,
        customer_ids=list(plan.ids()),
        templates=env_templates,
    )
