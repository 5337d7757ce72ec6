"""The audience of a campaign, read in keyset pages: the union of its segments and its manual list,
de-duplicated, ordered by customer id.

Each page costs one query whatever the audience size: for every source (each segment, the manual list)
the index on (segment_id, customer_id) yields the next ``limit`` ids after the cursor, and the smallest
``limit`` distinct ids of those are exactly the next page of the union. Nothing loads the whole audience.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg2.extensions import cursor as Cursor

PAGE_SQL = """
WITH ids AS (
    SELECT DISTINCT id FROM (
        SELECT m.customer_id AS id
        FROM unnest(%(segments)s::bigint[]) AS s(segment_id)
        CROSS JOIN LATERAL (
            SELECT customer_id FROM segment_members
            WHERE segment_id = s.segment_id AND customer_id > %(after)s
            ORDER BY customer_id LIMIT %(limit)s
        ) AS m
        UNION ALL
        (SELECT customer_id FROM campaign_manual_recipients
         WHERE campaign_id = %(campaign_id)s AND customer_id > %(after)s
         ORDER BY customer_id LIMIT %(limit)s)
    ) AS candidates
    ORDER BY id LIMIT %(limit)s
)
SELECT c.id, c.status, c.opted_out_channels, c.locale, c.email, c.phone, c.whatsapp
FROM ids JOIN customers AS c ON c.id = ids.id
ORDER BY c.id
"""

ADDRESS_COLUMN = {"email": 4, "sms": 5, "whatsapp": 6}


@dataclass(frozen=True, slots=True)
class Recipient:
    customer_id: int
    locale: str
    address: str | None
    skip_reason: str | None  # None: send; else why not (inactive, opted_out, no_address)


def fetch_page(
    cur: Cursor, campaign_id: uuid.UUID, segments: list[int], channel: str, after: int, limit: int
) -> list[Recipient]:
    """The next page of recipients with id > ``after``; empty when the audience is exhausted."""
    cur.execute(PAGE_SQL, {"segments": segments, "after": after, "limit": limit, "campaign_id": str(campaign_id)})
    column = ADDRESS_COLUMN[channel]
    page = []
    for row in cur.fetchall():
        address = row[column]
        if row[1] != "active":
            reason: str | None = f"customer_{row[1]}"
        elif channel in row[2]:
            reason = "opted_out"
        elif not address:
            reason = "no_address"
        else:
            reason = None
        page.append(Recipient(customer_id=row[0], locale=row[3], address=address, skip_reason=reason))
    return page
