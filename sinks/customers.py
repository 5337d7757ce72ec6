"""Audience import into ``customers`` and ``segment_members``: COPY into a temporary staging table, checks there,
then one set-based statement. Every function takes a psycopg2 cursor and never commits: the caller's transaction
makes an import all or nothing.

Guarantees:

* **All or nothing.** :func:`import_customers` and :func:`import_segment` raise
  :class:`~campaigns.errors.ImportRejected` if the input has any problem (the row checks of
  :mod:`campaigns.core.importing`, plus duplicates and unknown customers found in staging) and change nothing
  but the staging table, which the caller's rollback (or commit) drops.
* **Constant memory.** Rows are staged in chunks of :data:`CHUNK_ROWS` with COPY; duplicates are found in the
  staging table, not in Python.
* **Upsert by ``external_ref``.** One ``INSERT ... ON CONFLICT (external_ref) DO UPDATE ... WHERE (row differs)``:
  a row identical to the stored one is not rewritten and counts as ``unchanged``. Empty cells keep stored values
  (``campaigns.core.importing``), attribute keys are merged into the stored object.
* **New ids.** ``customers.id`` has no sequence (the seeder chooses its ids), so new customers get ids above
  the highest one, under ``LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE``: imports (and any other writer
  of customers) wait for each other; readers such as expansion do not.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from campaigns.core.importing import (
    CustomerRow,
    ImportCounts,
    Problem,
    ProblemLog,
    check_customer_header,
    check_segment_header,
    csv_records,
    customer_rows,
    segment_members,
)
from campaigns.errors import ImportRejected

CHUNK_ROWS = 50_000
SHOWN_PROBLEMS = 1000  # problems kept from the database checks (all are counted)

CREATE_CUSTOMER_STAGING_SQL = (
    "CREATE TEMPORARY TABLE import_customers (line integer NOT NULL, external_id text NOT NULL, email text, "
    "phone text, whatsapp text, first_name text, last_name text, locale text, timezone text, status text, "
    "opted_out_channels text[], attributes jsonb NOT NULL) ON COMMIT DROP"
)
COPY_CUSTOMERS_SQL = (
    "COPY import_customers (line, external_id, email, phone, whatsapp, first_name, last_name, locale, timezone, "
    "status, opted_out_channels, attributes) FROM STDIN"
)
ANALYZE_CUSTOMER_STAGING_SQL = "ANALYZE import_customers"  # temp tables get no autovacuum: plan the join on facts
COUNT_CUSTOMER_DUPLICATES_SQL = (
    "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM import_customers GROUP BY external_id "
    "HAVING count(*) > 1) d"
)
CUSTOMER_DUPLICATES_SQL = (
    "SELECT line, external_id, first FROM (SELECT line, external_id, min(line) OVER (PARTITION BY external_id) "
    "AS first FROM import_customers) d WHERE line > first ORDER BY line LIMIT %s"
)
LOCK_CUSTOMERS_SQL = "LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE"
UPSERT_CUSTOMERS_SQL = """
WITH upserted AS (
    INSERT INTO customers AS c (id, external_ref, email, phone, whatsapp, first_name, last_name, locale, timezone,
                                status, opted_out_channels, attributes)
    SELECT coalesce(o.id, top.id + row_number() OVER (PARTITION BY o.id IS NULL ORDER BY s.line)),
           s.external_id,
           coalesce(s.email, o.email), coalesce(s.phone, o.phone), coalesce(s.whatsapp, o.whatsapp),
           coalesce(s.first_name, o.first_name), coalesce(s.last_name, o.last_name),
           coalesce(s.locale, o.locale, 'en'), coalesce(s.timezone, o.timezone, 'UTC'),
           coalesce(s.status, o.status, 'active'), coalesce(s.opted_out_channels, o.opted_out_channels, '{}'),
           coalesce(o.attributes, '{}'::jsonb) || s.attributes
    FROM import_customers s
    LEFT JOIN customers o ON o.external_ref = s.external_id
    CROSS JOIN (SELECT coalesce(max(id), 0) AS id FROM customers) top
    ON CONFLICT (external_ref) DO UPDATE SET
        email = EXCLUDED.email, phone = EXCLUDED.phone, whatsapp = EXCLUDED.whatsapp,
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, locale = EXCLUDED.locale,
        timezone = EXCLUDED.timezone, status = EXCLUDED.status, opted_out_channels = EXCLUDED.opted_out_channels,
        attributes = EXCLUDED.attributes
    WHERE (c.email, c.phone, c.whatsapp, c.first_name, c.last_name, c.locale, c.timezone, c.status,
           c.opted_out_channels, c.attributes)
          IS DISTINCT FROM
          (EXCLUDED.email, EXCLUDED.phone, EXCLUDED.whatsapp, EXCLUDED.first_name, EXCLUDED.last_name,
           EXCLUDED.locale, EXCLUDED.timezone, EXCLUDED.status, EXCLUDED.opted_out_channels, EXCLUDED.attributes)
    RETURNING (c.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
"""

CREATE_MEMBER_STAGING_SQL = (
    "CREATE TEMPORARY TABLE import_members (line integer NOT NULL, external_id text NOT NULL) ON COMMIT DROP"
)
COPY_MEMBERS_SQL = "COPY import_members (line, external_id) FROM STDIN"
ANALYZE_MEMBER_STAGING_SQL = "ANALYZE import_members"
COUNT_MEMBER_DUPLICATES_SQL = COUNT_CUSTOMER_DUPLICATES_SQL.replace("import_customers", "import_members")
MEMBER_DUPLICATES_SQL = CUSTOMER_DUPLICATES_SQL.replace("import_customers", "import_members")
COUNT_UNKNOWN_MEMBERS_SQL = (
    "SELECT count(*) FROM import_members s WHERE NOT EXISTS "
    "(SELECT 1 FROM customers c WHERE c.external_ref = s.external_id)"
)
UNKNOWN_MEMBERS_SQL = (
    "SELECT s.line, s.external_id FROM import_members s WHERE NOT EXISTS "
    "(SELECT 1 FROM customers c WHERE c.external_ref = s.external_id) ORDER BY s.line LIMIT %s"
)
CREATE_SEGMENT_SQL = "INSERT INTO customer_segments (name) VALUES (%s) ON CONFLICT (name) DO NOTHING RETURNING id"
# The segment row's lock serialises imports into one segment (two --replace imports must not interleave).
LOCK_SEGMENT_SQL = "SELECT id FROM customer_segments WHERE name = %s FOR UPDATE"
REMOVE_OTHER_MEMBERS_SQL = (
    "DELETE FROM segment_members m WHERE m.segment_id = %s AND NOT EXISTS "
    "(SELECT 1 FROM import_members s JOIN customers c ON c.external_ref = s.external_id WHERE c.id = m.customer_id)"
)
ADD_MEMBERS_SQL = (
    "WITH added AS (INSERT INTO segment_members (segment_id, customer_id) "
    "SELECT %s, c.id FROM import_members s JOIN customers c ON c.external_ref = s.external_id "
    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM added"
)

# COPY text format. Rows are encoded with placeholders that no validated value contains (the row checks refuse
# control characters in every profile column, and JSON escapes them in attributes): NUL between fields, STX for
# NULL, ETX at the end of a row. A whole chunk is then escaped with a few C-speed passes instead of one Python
# call per field (this halved the client's CPU per row).
_FIELD, _NULL, _END = "\x00", "\x02", "\x03"
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _copy_chunk(encoded: str) -> str:
    """Rows encoded with the placeholders as COPY text: backslash, tab, LF and CR escaped, NULL as \\N."""
    return (
        encoded.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace(_FIELD, "\t")
        .replace(_NULL, "\\N")
        .replace(_END, "\n")
    )


def customer_copy_line(row: CustomerRow) -> str:
    """One row for the staging table, in the placeholder encoding :func:`_copy_chunk` turns into COPY text."""
    opt_outs = _NULL if row.opted_out_channels is None else "{" + ",".join(row.opted_out_channels) + "}"
    attributes = _encode_json(row.attributes) if row.attributes else "{}"
    return (
        _FIELD.join(
            (
                str(row.line),
                row.external_id,
                row.email or _NULL,
                row.phone or _NULL,
                row.whatsapp or _NULL,
                row.first_name or _NULL,
                row.last_name or _NULL,
                row.locale or _NULL,
                row.timezone or _NULL,
                row.status or _NULL,
                opt_outs,
                attributes,
            )
        )
        + _END
    )


def _member_copy_line(member: tuple[int, str]) -> str:
    return f"{member[0]}{_FIELD}{member[1]}{_END}"


def _copy_in_chunks(cur: Any, sql: str, lines: Iterator[str], chunk_rows: int) -> int:
    """COPY ``lines`` (placeholder-encoded rows) in chunks of ``chunk_rows``; returns how many were copied."""
    copied = 0
    buffer: list[str] = []
    for line in lines:
        buffer.append(line)
        if len(buffer) >= chunk_rows:
            cur.copy_expert(sql, io.StringIO(_copy_chunk("".join(buffer))))
            copied += len(buffer)
            buffer.clear()
    if buffer:
        cur.copy_expert(sql, io.StringIO(_copy_chunk("".join(buffer))))
        copied += len(buffer)
    return copied


def _staged(rows: Iterable[Any], log: ProblemLog, encode: Callable[[Any], str]) -> Iterator[str]:
    """COPY lines for ``rows`` until the first problem: after it nothing will be imported, so the rest is only
    read (to report every problem), not staged."""
    for row in rows:
        if not log:
            yield encode(row)


def _duplicates(cur: Any, count_sql: str, list_sql: str, log: ProblemLog) -> None:
    cur.execute(count_sql)
    total = int(cur.fetchone()[0])
    if not total:
        return
    cur.execute(list_sql, (SHOWN_PROBLEMS,))
    found = [
        Problem(line, "external_id", f"{external_id!r} already on line {first}")
        for line, external_id, first in cur.fetchall()
    ]
    log.add(found)
    log.total += total - len(found)


def _reject(log: ProblemLog) -> ImportRejected:
    ordered = sorted(log.problems, key=lambda p: p.line)
    return ImportRejected([str(p) for p in ordered], log.total)


def import_customers(
    cur: Any, rows: Iterable[CustomerRow], log: ProblemLog, *, chunk_rows: int = CHUNK_ROWS
) -> ImportCounts:
    """Upsert ``rows`` (validated by :func:`campaigns.core.importing.customer_rows`, which puts the problems of
    the rows it drops into ``log``) by external id. Raises ImportRejected if ``log`` has any problem once the
    rows are read, or if an external id appears twice; otherwise returns the counts."""
    cur.execute(CREATE_CUSTOMER_STAGING_SQL)
    staged = _copy_in_chunks(cur, COPY_CUSTOMERS_SQL, _staged(rows, log, customer_copy_line), chunk_rows)
    if log:
        raise _reject(log)
    _duplicates(cur, COUNT_CUSTOMER_DUPLICATES_SQL, CUSTOMER_DUPLICATES_SQL, log)
    if log:
        raise _reject(log)
    cur.execute(ANALYZE_CUSTOMER_STAGING_SQL)
    cur.execute(LOCK_CUSTOMERS_SQL)
    cur.execute(UPSERT_CUSTOMERS_SQL)
    inserted, updated = cur.fetchone()
    return ImportCounts("customers", staged, int(inserted), int(updated), staged - int(inserted) - int(updated))


def import_segment(
    cur: Any,
    segment: str,
    members: Iterable[tuple[int, str]],
    log: ProblemLog,
    *,
    replace: bool,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportCounts:
    """Make the customers named by external id (``members``: (line, external id)) members of ``segment``,
    creating it if missing; with ``replace`` the segment ends with exactly them (others are removed), else they
    are added. Raises ImportRejected for problems in ``log``, duplicates, or external ids of no customer."""

    cur.execute(CREATE_MEMBER_STAGING_SQL)
    staged = _copy_in_chunks(cur, COPY_MEMBERS_SQL, _staged(members, log, _member_copy_line), chunk_rows)
    if log:
        raise _reject(log)
    _duplicates(cur, COUNT_MEMBER_DUPLICATES_SQL, MEMBER_DUPLICATES_SQL, log)
    cur.execute(ANALYZE_MEMBER_STAGING_SQL)
    cur.execute(COUNT_UNKNOWN_MEMBERS_SQL)
    unknown = int(cur.fetchone()[0])
    if unknown:
        cur.execute(UNKNOWN_MEMBERS_SQL, (SHOWN_PROBLEMS,))
        found = [
            Problem(line, "external_id", f"no customer has external id {external_id!r}")
            for line, external_id in cur.fetchall()
        ]
        log.add(found)
        log.total += unknown - len(found)
    if log:
        raise _reject(log)
    cur.execute(CREATE_SEGMENT_SQL, (segment,))
    created = cur.fetchone() is not None
    cur.execute(LOCK_SEGMENT_SQL, (segment,))
    segment_id = int(cur.fetchone()[0])
    removed = 0
    if replace:
        cur.execute(REMOVE_OTHER_MEMBERS_SQL, (segment_id,))
        removed = cur.rowcount
    cur.execute(ADD_MEMBERS_SQL, (segment_id,))
    added = int(cur.fetchone()[0])
    return ImportCounts(
        "segment",
        staged,
        added,
        0,
        staged - added,
        removed=removed,
        segment=segment,
        segment_id=segment_id,
        created=created,
    )


def _csv_header(records: Iterator[tuple[int, list[str]]], log: ProblemLog) -> list[str]:
    first = next(records, None)
    if first is None:
        log.add((Problem(1, "csv", "no header (the first line names the columns)"),))
        raise _reject(log)
    return list(first[1])


def import_customer_csv(cur: Any, lines: Iterable[str]) -> ImportCounts:
    """:func:`import_customers` from the lines of a customer CSV (header first, read lazily): the header is
    checked first (nothing after a bad header can be read), then every row. Raises ImportRejected."""
    log = ProblemLog()
    records = csv_records(lines, log)
    header = _csv_header(records, log)
    log.add(check_customer_header(header))
    if log:
        raise _reject(log)
    return import_customers(cur, customer_rows(records, header, log), log)


def import_segment_csv(cur: Any, segment: str, lines: Iterable[str], *, replace: bool) -> ImportCounts:
    """:func:`import_segment` from the lines of a segment CSV (one column, ``external_id``)."""
    log = ProblemLog()
    records = csv_records(lines, log)
    log.add(check_segment_header(_csv_header(records, log)))
    if log:
        raise _reject(log)
    return import_segment(cur, segment, segment_members(records, log), log, replace=replace)
