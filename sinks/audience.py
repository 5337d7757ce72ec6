"""The audience of a campaign, read in keyset pages: the union of its segments and its manual list,
de-duplicated, ordered by customer id.

Each page costs one query whatever the audience size: for every source (each segment, the manual list)
the index on (segment_id, customer_id) yields the next ``limit`` ids after the cursor, and the smallest
``limit`` distinct ids of those are exactly the next page of the union. Nothing loads the whole audience.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extensions import cursor as Cursor

from sinks.arrays import plain_array_literal

# Whether the customer's address on the channel is on the suppression list (hard bounce, complaint, STOP reply,
# ...), in the list's normal form (campaigns.core.receipts.normalize_address: email lower-case, phones "+digits").
# A PK lookup per customer. Its own column, read by its name (``suppressed``), so the queries' other columns can
# change without touching it.
SUPPRESSED_COLUMN = """EXISTS (SELECT 1 FROM suppressions AS sup WHERE sup.channel_kind = {channel} AND sup.address =
    CASE {channel} WHEN 'email' THEN lower(btrim({customer}.email))
                   WHEN 'sms' THEN '+' || regexp_replace({customer}.phone, '[^0-9]', '', 'g')
                   ELSE '+' || regexp_replace({customer}.whatsapp, '[^0-9]', '', 'g') END) AS suppressed"""

# The next ``limit`` audience ids after the cursor (see the module docstring): the CTE both page queries share.
_PAGE_IDS = """
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
"""
# The ids alone: the segments' and the manual list's keys, not a row of ``customers`` (expansion: who the campaign
# goes to is decided here, whether and where each message goes at the sender's claim, ``resolve``).
PAGE_IDS_SQL = _PAGE_IDS + "SELECT id FROM ids ORDER BY id"
# The ids with what a loop that sends what it reads needs of each customer (the benchmark's baselines).
PAGE_SQL = _PAGE_IDS + """SELECT c.id, c.status, c.opted_out_channels, c.locale, c.email, c.phone, c.whatsapp,
    """ + SUPPRESSED_COLUMN.format(channel="%(channel)s::text", customer="c") + """
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
    # The profile a message is rendered with (campaigns.core.templates.PROFILE_FIELDS and ``attributes``);
    # filled by resolve (the sender's claim), empty from fetch_page.
    profile: dict[str, Any] = field(default_factory=dict)


class Attributes(Mapping[str, Any]):
    """A customer's free ``attributes`` as PostgreSQL sent them (JSON text), parsed on first use: most campaigns'
    templates read none, and parsing every claimed row's cost ~3 % of a sender's CPU. Anything but a JSON object
    reads as empty, as a row's attributes always did."""

    __slots__ = ("_parsed", "_text")

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._parsed: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._parsed is None:
            value = json.loads(self._text) if self._text else None
            self._parsed = value if isinstance(value, dict) else {}
        return self._parsed

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"Attributes({self._dict()!r})"


# The audience members among (campaign, recipient) pairs, with what a send needs of them now: a record on a
# message topic names the pair, PostgreSQL says whether it belongs to the campaign and where it goes.
RESOLVE_SQL = """
SELECT v.c::text, v.r, cu.status, cu.opted_out_channels, cu.locale, cu.email, cu.phone, cu.whatsapp,
       cu.first_name, cu.last_name, cu.timezone, cu.attributes::text,
    """ + SUPPRESSED_COLUMN.format(channel="%(channel)s::text", customer="cu") + """
FROM unnest(%(campaigns)s::uuid[], %(recipients)s::bigint[]) AS v(c, r) JOIN customers AS cu ON cu.id = v.r
WHERE EXISTS (SELECT 1 FROM campaign_segments AS cs JOIN segment_members AS sm
              ON sm.segment_id = cs.segment_id AND sm.customer_id = v.r WHERE cs.campaign_id = v.c)
   OR EXISTS (SELECT 1 FROM campaign_manual_recipients AS m WHERE m.campaign_id = v.c AND m.customer_id = v.r)
"""


def skip_reason(
    status: str, opted_out_channels: list[str], channel: str, address: str | None, suppressed: bool = False
) -> str | None:
    """Why a customer gets no message on ``channel`` (inactive, opted out, no address, the address suppressed),
    or None."""
    if status != "active":
        return f"customer_{status}"
    if channel in opted_out_channels:
        return "opted_out"
    if not address:
        return "no_address"
    if suppressed:
        return "suppressed"
    return None


def resolve(cur: Cursor, channel: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Recipient]:
    """The pairs whose customer is in the campaign's audience (segments or manual list), as they are now:
    address, locale and the profile messages are rendered with from ``customers``, and a skip reason if they
    may no longer be sent to. A pair that is not in the audience is absent. One statement for all the pairs
    (customers by primary key, membership by the segment_members / manual-list keys)."""
    if not keys:
        return {}
    campaigns, recipients = zip(*keys, strict=True)  # canonical UUIDs and ints (the sender checked them)
    cur.execute(RESOLVE_SQL, {"campaigns": plain_array_literal(campaigns),
                              "recipients": plain_array_literal(recipients), "channel": channel})
    column = ADDRESS_COLUMN[channel] + 1  # the resolve query has one more column before them than the page query
    suppressed = _column(cur, "suppressed")
    found = {}
    for row in cur.fetchall():
        address = row[column]
        profile = {"customer_id": str(row[1]), "locale": row[4], "email": row[5], "phone": row[6],
                   "whatsapp": row[7], "first_name": row[8], "last_name": row[9], "timezone": row[10],
                   "attributes": Attributes(row[11])}
        found[(row[0], row[1])] = Recipient(customer_id=row[1], locale=row[4], address=address,
                                            skip_reason=skip_reason(row[2], row[3], channel, address, row[suppressed]),
                                            profile=profile)
    return found


def _column(cur: Cursor, name: str) -> int:
    """The index of the result column ``name`` of the last query."""
    return [d.name for d in cur.description].index(name)


def page_ids(cur: Cursor, campaign_id: uuid.UUID, segments: list[int], after: int, limit: int) -> list[int]:
    """The next page of the audience: its customer ids above ``after``, ascending; empty when it is exhausted."""
    cur.execute(PAGE_IDS_SQL, {"segments": segments, "after": after, "limit": limit,
                               "campaign_id": str(campaign_id)})
    return [row[0] for row in cur.fetchall()]


def fetch_page(
    cur: Cursor, campaign_id: uuid.UUID, segments: list[int], channel: str, after: int, limit: int
) -> list[Recipient]:
    """The next page of recipients with id > ``after``, each with its address and skip reason on ``channel``;
    empty when the audience is exhausted. For a loop that sends what it reads (the benchmark's baselines); the
    pipeline's expansion reads :func:`page_ids` and its senders :func:`resolve`."""
    cur.execute(PAGE_SQL, {"segments": segments, "after": after, "limit": limit, "campaign_id": str(campaign_id),
                           "channel": channel})
    column = ADDRESS_COLUMN[channel]
    suppressed = _column(cur, "suppressed")
    page = []
    for row in cur.fetchall():
        address = row[column]
        page.append(Recipient(customer_id=row[0], locale=row[3], address=address,
                              skip_reason=skip_reason(row[1], row[2], channel, address, row[suppressed])))
    return page
