"""Bulk loader for customers, segments and segment members (PostgreSQL COPY).

Every customer has a profile (:func:`profile_for`: a first name, except every ``no_name_every``-th, a last
name, and attributes ``{"tier": bronze|silver|gold, "points": 0..999}``) for personalised templates.

Deterministic: the same arguments give the same rows, so tests, the demo and benchmarks can compute the
expected audience without reading it back. 1,000,000 customers load in a few seconds.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2

CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class SeedPlan:
    """What to generate. Every ``*_every`` of N marks customer ids divisible by N (0 disables it)."""

    customers: int
    first_id: int = 1
    segments: int = 3
    segment_prefix: str = "segment"
    overlap_every: int = 7  # these customers are also in the next segment: audiences overlap
    opted_out_every: int = 50  # opted out of every channel
    inactive_every: int = 97
    no_whatsapp_every: int = 11  # no WhatsApp address
    invalid_every: int = 0  # address the provider simulator rejects permanently (see invalid_address)
    no_name_every: int = 13  # no first name (templates fall back to their default)

    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.customers)

    def segment_of(self, customer_id: int) -> list[int]:
        """Segment indexes (0-based) a customer belongs to."""
        home = customer_id % self.segments
        extra = [(home + 1) % self.segments] if self.overlap_every and customer_id % self.overlap_every == 0 else []
        return [home, *[s for s in extra if s != home]]


def _marked(customer_id: int, every: int) -> bool:
    return every > 0 and customer_id % every == 0


def phone_for(customer_id: int, plan: SeedPlan) -> str:
    prefix = "+1999" if _marked(customer_id, plan.invalid_every) else "+1555"
    return f"{prefix}{customer_id:09d}"


def email_for(customer_id: int, plan: SeedPlan) -> str:
    domain = "invalid.example" if _marked(customer_id, plan.invalid_every) else "example.com"
    return f"user{customer_id}@{domain}"


def invalid_addresses(plan: SeedPlan) -> set[str]:
    """The addresses a provider simulator should reject permanently for this plan."""
    out: set[str] = set()
    if plan.invalid_every:
        for cid in plan.ids():
            if cid % plan.invalid_every == 0:
                out.update((phone_for(cid, plan), email_for(cid, plan)))
    return out


FIRST_NAMES = ("Ana", "Bruno", "Chloé", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Inés", "João", "Kofi", "Lena",
               "Mateo", "Nadia", "Oskar", "Priya")
LAST_NAMES = ("Silva", "Müller", "García", "Okafor", "Tanaka", "Novak", "Rossi", "Dubois")
TIERS = ("bronze", "silver", "gold")


def profile_for(customer_id: int, plan: SeedPlan) -> tuple[str | None, str, dict[str, object]]:
    """(first name or None, last name, attributes) of a seeded customer."""
    first = None if _marked(customer_id, plan.no_name_every) else FIRST_NAMES[customer_id % len(FIRST_NAMES)]
    last = LAST_NAMES[(customer_id // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return first, last, {"tier": TIERS[customer_id % len(TIERS)], "points": customer_id % 1000}


def _customer_rows(plan: SeedPlan) -> Iterator[str]:
    for cid in plan.ids():
        phone = phone_for(cid, plan)
        whatsapp = r"\N" if _marked(cid, plan.no_whatsapp_every) else phone
        status = "inactive" if _marked(cid, plan.inactive_every) else "active"
        opt_outs = "{whatsapp,sms,email}" if _marked(cid, plan.opted_out_every) else "{}"
        first, last, attributes = profile_for(cid, plan)
        tier, points = attributes["tier"], attributes["points"]
        yield (f"{cid}\t{email_for(cid, plan)}\t{phone}\t{whatsapp}\t{status}\t{opt_outs}\t{first or chr(92) + 'N'}"
               f'\t{last}\t{{"tier": "{tier}", "points": {points}}}\n')


def _member_rows(plan: SeedPlan, segment_ids: list[int]) -> Iterator[str]:
    for cid in plan.ids():
        for index in plan.segment_of(cid):
            yield f"{segment_ids[index]}\t{cid}\n"


def _copy(cursor: psycopg2.extensions.cursor, sql: str, rows: Iterator[str]) -> None:
    buffer: list[str] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= CHUNK_ROWS:
            cursor.copy_expert(sql, io.StringIO("".join(buffer)))
            buffer.clear()
    if buffer:
        cursor.copy_expert(sql, io.StringIO("".join(buffer)))


def seed(dsn: str, plan: SeedPlan) -> list[int]:
    """Load the plan's customers, segments and memberships in one transaction; returns the segment ids.

    Segments are named ``{segment_prefix}-{index}`` and reused if they exist. Customer ids must be free.
    """
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        segment_ids = []
        for index in range(plan.segments):
            cur.execute(
                "INSERT INTO customer_segments (name) VALUES (%s) "
                "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                (f"{plan.segment_prefix}-{index}",),
            )
            segment_ids.append(cur.fetchone()[0])
        _copy(
            cur,
            "COPY customers (id, email, phone, whatsapp, status, opted_out_channels, first_name, last_name, "
            "attributes) FROM STDIN",
            _customer_rows(plan),
        )
        _copy(cur, "COPY segment_members (segment_id, customer_id) FROM STDIN", _member_rows(plan, segment_ids))
    conn.close()
    return segment_ids
