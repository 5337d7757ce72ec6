"""Audience import: reading customer and segment CSV files and validating every row, with line numbers.

Pure: no database, no file opening (the caller passes an iterable of text lines, e.g. an open file, so a file
is read line by line and never held whole). The database side - staging, duplicates, unknown ids, the upsert -
is in ``sinks/customers.py``.

Guarantees:

* **Every problem, with its line.** :func:`check_customer` returns all the problems of a row (not the first),
  each a :class:`Problem` ``(line, column, message)``, printed ``line N: column: message``. ``line`` is the
  physical line of the file where the record starts (the header is line 1), also for records with quoted
  line breaks. Rows given inline (the command topic) are numbered 1.. in the order given.
* **Nothing is guessed.** A value is accepted only in its documented form (``docs/import.md``): E.164 phone
  numbers, ``a@b.c`` emails, language tags, IANA time zones known to ``zoneinfo``, the customer statuses and
  channel names of the schema, lengths within the columns' limits. Values are taken as written (no trimming,
  no case folding) so what is stored is what the file says.
* **Empty means "keep".** An empty cell (or a column the file does not have) leaves the customer's stored value
  as it is on update, and gives the column's default on insert (NULL; ``en``, ``UTC``, ``active``, no opt-outs,
  no attributes). An import never clears a value.
* **Attributes.** Every column that is not a profile column is an attribute: a key of ``customers.attributes``
  with the cell's text as a JSON string (no typing: ``"42"`` stays a string, so a template or segment rule
  sees exactly what the file said). Attribute keys are merged into the stored object.
* **Memory.** Nothing here keeps state across rows: duplicates of ``external_id`` are found in the staging
  table (:mod:`sinks.customers`), so a file of any length is checked in constant memory.
"""

from __future__ import annotations

import csv
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "ATTRIBUTE_KEY_MAX",
    "ATTRIBUTE_VALUE_MAX",
    "CHANNELS",
    "CUSTOMER_STATUSES",
    "PROFILE_COLUMNS",
    "CustomerRow",
    "ImportCommand",
    "ImportCounts",
    "Problem",
    "ProblemLog",
    "check_customer",
    "check_customer_header",
    "check_segment_header",
    "check_segment_member",
    "check_segment_name",
    "csv_records",
    "customer_rows",
    "format_problems",
    "parse_import_command",
    "row_values",
    "segment_members",
]

CUSTOMER_STATUSES = ("active", "inactive", "blocked")  # ck_customers_status
CHANNELS = ("whatsapp", "sms", "email")  # ck_customers_opt_outs
PROFILE_COLUMNS = (
    "external_id",
    "email",
    "phone",
    "whatsapp",
    "first_name",
    "last_name",
    "locale",
    "timezone",
    "status",
    "opted_out_channels",
)
EXTERNAL_ID_MAX = 128  # customers.external_ref
EMAIL_MAX = 320  # customers.email
NAME_MAX = 128  # first_name, last_name
LOCALE_MAX = 16  # customers.locale
ATTRIBUTE_KEY_MAX = 64
ATTRIBUTE_VALUE_MAX = 1024
OPT_OUT_SEPARATOR = ";"

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# Deliberately simple: one @, no spaces or controls, a dot in the domain. The provider decides the rest.
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f.]+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input: ``line`` (1 = the header; 0 = the file as a whole), the column, what."""

    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.message}" if self.line else f"{self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class CustomerRow:
    """A valid customer row. ``None`` (and an empty ``attributes``) means "not given": keep the stored value."""

    line: int
    external_id: str
    email: str | None = None
    phone: str | None = None
    whatsapp: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    status: str | None = None
    opted_out_channels: tuple[str, ...] | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ProblemLog:
    """Problems collected while reading: the first ``keep`` in full, and how many there were in all (a file of a
    million bad rows must not hold a million messages)."""

    keep: int = 1000
    problems: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            self.total += 1
            if len(self.problems) < self.keep:
                self.problems.append(problem)

    def __bool__(self) -> bool:
        return self.total > 0


def format_problems(problems: Sequence[str], total: int, limit: int = 50) -> list[str]:
    """Lines to show a person: the first ``limit`` problems (already in line order), then how many more there
    were in all (``total`` counts the problems that were not kept too)."""
    shown = list(problems[:limit])
    if total > len(shown):
        shown.append(f"... and {total - len(shown)} more ({total} problems in all)")
    return shown


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def csv_records(lines: Iterable[str], log: ProblemLog) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, its fields) for every record of a CSV text, header first.

    Blank lines are skipped. Quoting follows RFC 4180 (Python's ``csv`` excel dialect, strict). A record the
    reader cannot parse (a quote left open, a quote inside an unquoted field) is a problem in ``log`` and ends
    the records: what follows it cannot be told apart reliably."""
    reader = csv.reader(lines, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            log.add((Problem(start, "csv", f"not valid CSV ({exc}); nothing after this line was read"),))
            return
        line, start = start, reader.line_num + 1
        if fields:
            yield line, fields


def _header_problems(header: Sequence[str], required: str) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for index, name in enumerate(header, 1):
        if name in seen:
            problems.append(Problem(1, name or f"column {index}", "appears twice in the header"))
        seen.add(name)
    if required not in seen:
        problems.append(Problem(1, required, f"the header must have a column {required!r}"))
    return problems


def check_customer_header(header: Sequence[str]) -> list[Problem]:
    """Problems of a customer file's header (line 1): ``external_id`` missing, a name twice, an empty name, an
    attribute key that is not ``[A-Za-z_][A-Za-z0-9_.-]*`` of at most 64 characters."""
    problems = _header_problems(header, "external_id")
    for index, name in enumerate(header, 1):
        if name in PROFILE_COLUMNS:
            continue
        if not name:
            problems.append(Problem(1, f"column {index}", "has no name (an attribute needs one)"))
        elif len(name) > ATTRIBUTE_KEY_MAX or not _ATTRIBUTE_KEY.fullmatch(name):
            problems.append(
                Problem(
                    1,
                    name[:ATTRIBUTE_KEY_MAX],
                    f"not a valid attribute name: letters, digits, _ . - (starting with a letter "
                    f"or _), at most {ATTRIBUTE_KEY_MAX} characters",
                )
            )
    return problems


def check_segment_header(header: Sequence[str]) -> list[Problem]:
    """Problems of a segment file's header: it is exactly ``external_id``."""
    problems = _header_problems(header, "external_id")
    problems += [
        Problem(1, name or f"column {i}", "a segment file has one column, external_id")
        for i, name in enumerate(header, 1)
        if name != "external_id"
    ]
    return problems


def _text(problems: list[Problem], line: int, column: str, value: str, limit: int) -> None:
    if len(value) > limit:
        problems.append(Problem(line, column, f"{len(value)} characters, at most {limit}"))
    if _CONTROL.search(value):
        problems.append(Problem(line, column, "contains a control character (tab, line break, NUL ...)"))


def _external_id(problems: list[Problem], line: int, value: str | None) -> None:
    if not value:
        problems.append(Problem(line, "external_id", "required (the customer's id in your system)"))
        return
    _text(problems, line, "external_id", value, EXTERNAL_ID_MAX)
    if value != value.strip():
        problems.append(Problem(line, "external_id", "has leading or trailing spaces"))


def _phone(problems: list[Problem], line: int, column: str, value: str) -> None:
    if not _E164.fullmatch(value):
        problems.append(
            Problem(line, column, f"{_shown(value)} is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)")
        )


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}..."


def check_customer(line: int, values: Mapping[str, str]) -> CustomerRow | list[Problem]:
    """The row as a :class:`CustomerRow`, or every problem it has. ``values``: column -> cell text (a CSV
    record zipped with its header, or an object given inline); empty cells mean "not given"."""
    problems: list[Problem] = []
    get = values.get
    external_id = get("external_id")
    _external_id(problems, line, external_id)
    email = get("email") or None
    if email is not None:
        if len(email) > EMAIL_MAX:
            problems.append(Problem(line, "email", f"{len(email)} characters, at most {EMAIL_MAX}"))
        elif not _EMAIL.fullmatch(email):
            problems.append(Problem(line, "email", f"{_shown(email)} is not an email address (name@domain.tld)"))
    phone = get("phone") or None
    if phone is not None:
        _phone(problems, line, "phone", phone)
    whatsapp = get("whatsapp") or None
    if whatsapp is not None:
        _phone(problems, line, "whatsapp", whatsapp)
    first_name = get("first_name") or None
    if first_name is not None:
        _text(problems, line, "first_name", first_name, NAME_MAX)
    last_name = get("last_name") or None
    if last_name is not None:
        _text(problems, line, "last_name", last_name, NAME_MAX)
    locale = get("locale") or None
    if locale is not None and (len(locale) > LOCALE_MAX or not _LOCALE.fullmatch(locale)):
        problems.append(
            Problem(
                line,
                "locale",
                f"{_shown(locale)} is not a language tag of at most {LOCALE_MAX} characters (en, pt-BR, zh-Hant-TW)",
            )
        )
    timezone = get("timezone") or None
    if timezone is not None and timezone not in _time_zones():
        problems.append(
            Problem(
                line,
                "timezone",
                f"{_shown(timezone)} is not an IANA time zone (e.g. Europe/Madrid, America/New_York, UTC)",
            )
        )
    status = get("status") or None
    if status is not None and status not in CUSTOMER_STATUSES:
        problems.append(Problem(line, "status", f"{_shown(status)} is not one of {', '.join(CUSTOMER_STATUSES)}"))
    opt_outs: tuple[str, ...] | None = None
    opt_out_text = get("opted_out_channels") or None
    if opt_out_text is not None:
        names = opt_out_text.split(OPT_OUT_SEPARATOR)
        unknown = [n for n in names if n not in CHANNELS]
        if unknown:
            problems.append(
                Problem(
                    line,
                    "opted_out_channels",
                    f"{', '.join(_shown(n) for n in unknown)}: channels are "
                    f"{', '.join(CHANNELS)}, separated by {OPT_OUT_SEPARATOR!r} (e.g. sms;email)",
                )
            )
        opt_outs = tuple(sorted(set(names)))
    attributes: dict[str, str] = {}
    for key, value in values.items():
        if key in PROFILE_COLUMNS or not value:
            continue
        if len(value) > ATTRIBUTE_VALUE_MAX:
            problems.append(Problem(line, key, f"{len(value)} characters, at most {ATTRIBUTE_VALUE_MAX}"))
        elif "\x00" in value:
            problems.append(Problem(line, key, "contains a NUL character"))
        attributes[key] = value
    if "\ufffd" in "".join(values.values()):
        problems.append(Problem(line, "encoding", "not UTF-8 text (or contains U+FFFD)"))
    if problems:
        return problems
    assert external_id is not None
    return CustomerRow(
        line, external_id, email, phone, whatsapp, first_name, last_name, locale, timezone, status, opt_outs, attributes
    )


def check_segment_member(line: int, external_id: str | None) -> list[Problem]:
    """Problems of one segment file row (its external id); empty if it is well-formed. Whether the customer
    exists is checked in the database."""
    problems: list[Problem] = []
    _external_id(problems, line, external_id)
    if external_id and "\ufffd" in external_id:
        problems.append(Problem(line, "encoding", "not UTF-8 text (or contains U+FFFD)"))
    return problems


def row_values(line: int, header: Sequence[str], fields: Sequence[str]) -> dict[str, str] | Problem:
    """A CSV record as column -> text, or the problem if it has not as many fields as the header."""
    if len(fields) != len(header):
        return Problem(line, "csv", f"{len(fields)} fields, the header has {len(header)}")
    return dict(zip(header, fields, strict=True))


SEGMENT_NAME_MAX = 128  # customer_segments.name


def check_segment_name(name: str) -> list[Problem]:
    """Problems of a segment name: 1..128 characters, no control characters, no surrounding spaces."""
    problems: list[Problem] = []
    if not name:
        problems.append(Problem(0, "segment", "a name is required"))
        return problems
    _text(problems, 0, "segment", name, SEGMENT_NAME_MAX)
    if name != name.strip():
        problems.append(Problem(0, "segment", "has leading or trailing spaces"))
    return problems


def customer_rows(
    records: Iterable[tuple[int, Sequence[str]]], header: Sequence[str], log: ProblemLog
) -> Iterator[CustomerRow]:
    """The valid rows of a customer file's records (after the header); every problem goes to ``log``."""
    for line, fields in records:
        values = row_values(line, header, fields)
        if isinstance(values, Problem):
            log.add((values,))
            continue
        checked = check_customer(line, values)
        if isinstance(checked, list):
            log.add(checked)
        else:
            yield checked


def segment_members(records: Iterable[tuple[int, Sequence[str]]], log: ProblemLog) -> Iterator[tuple[int, str]]:
    """(line, external id) of a segment file's well-formed records (after the header); problems go to ``log``."""
    for line, fields in records:
        if len(fields) != 1:
            log.add((Problem(line, "csv", f"{len(fields)} fields, a segment file has one (external_id)"),))
            continue
        problems = check_segment_member(line, fields[0])
        if problems:
            log.add(problems)
        else:
            yield line, fields[0]


@dataclass(frozen=True)
class ImportCounts:
    """What an import did. Customers: ``inserted`` + ``updated`` + ``unchanged`` = ``rows``. Segments:
    ``inserted`` members added, ``unchanged`` already members, ``removed`` members dropped by ``--replace``,
    ``created`` whether the segment was new."""

    kind: str  # "customers" or "segment"
    rows: int
    inserted: int
    updated: int
    unchanged: int
    removed: int = 0
    segment: str | None = None
    segment_id: int | None = None
    created: bool = False

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": self.kind,
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
        }
        if self.kind == "segment":
            out.update(removed=self.removed, segment=self.segment, segment_id=self.segment_id, created=self.created)
        return out


@dataclass(frozen=True)
class ImportCommand:
    """An import carried by a command (``payload_json``): customer rows (column -> text), or a segment's
    members by external id. Rows are numbered from 1 in the order given; problems say ``line N`` for row N."""

    kind: str  # "customers" or "segment"
    rows: tuple[tuple[int, Mapping[str, str]], ...] = ()
    segment: str | None = None
    external_ids: tuple[tuple[int, str], ...] = ()
    replace: bool = False


def parse_import_command(kind: str, payload: object, max_rows: int) -> ImportCommand | list[str]:
    """The import a command's payload describes, or what is wrong with its shape (the rows themselves are
    checked by :func:`check_customer` / :func:`check_segment_member` like a file's).

    ``IMPORT_CUSTOMERS``: ``{"rows": [{"external_id": "...", "email": "...", ...}, ...]}``, values strings (null
    = empty). ``IMPORT_SEGMENT``: ``{"segment": "name", "external_ids": ["...", ...], "replace": false}``. At most
    ``max_rows`` rows or ids."""
    if not isinstance(payload, Mapping):
        return ["payload_json: must be a JSON object"]
    if kind == "customers":
        unknown = sorted(set(payload) - {"rows"})
        rows = payload.get("rows")
        problems = [f"payload_json.{k}: unknown key (an IMPORT_CUSTOMERS payload has rows)" for k in unknown]
        if not isinstance(rows, list) or not rows:
            return [*problems, "payload_json.rows: a non-empty array of objects (column -> text)"]
        if len(rows) > max_rows:
            return [
                *problems,
                f"payload_json.rows: {len(rows)} rows, at most {max_rows} per command (send several "
                "commands, or import a file with `campaigns import customers`)",
            ]
        parsed: list[tuple[int, Mapping[str, str]]] = []
        for index, row in enumerate(rows, 1):
            if not isinstance(row, Mapping) or not all(isinstance(v, str) or v is None for v in row.values()):
                problems.append(f"payload_json.rows[{index - 1}]: an object whose values are strings (or null)")
                continue
            bad_keys = check_customer_header([str(k) for k in row])
            problems += [
                f"payload_json.rows[{index - 1}]: {p.column}: {p.message}"
                for p in bad_keys
                if p.column != "external_id" or "header must have" not in p.message
            ]
            parsed.append((index, {str(k): v or "" for k, v in row.items()}))
        return problems or ImportCommand("customers", rows=tuple(parsed))
    unknown = sorted(set(payload) - {"segment", "external_ids", "replace"})
    problems = [
        f"payload_json.{k}: unknown key (an IMPORT_SEGMENT payload has segment, external_ids, replace)" for k in unknown
    ]
    segment, ids, replace = payload.get("segment"), payload.get("external_ids"), payload.get("replace", False)
    if not isinstance(segment, str):
        problems.append("payload_json.segment: the segment's name (a string)")
    else:
        problems += [f"payload_json.segment: {p.message}" for p in check_segment_name(segment)]
    if not isinstance(replace, bool):
        problems.append("payload_json.replace: true or false")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        problems.append("payload_json.external_ids: a non-empty array of strings")
    elif len(ids) > max_rows:
        problems.append(f"payload_json.external_ids: {len(ids)} ids, at most {max_rows} per command")
    if problems:
        return problems
    assert isinstance(segment, str) and isinstance(ids, list) and isinstance(replace, bool)
    return ImportCommand("segment", segment=segment, external_ids=tuple(enumerate(ids, 1)), replace=replace)


def command_customer_rows(command: ImportCommand, log: ProblemLog) -> Iterator[CustomerRow]:
    """The valid rows of an ``IMPORT_CUSTOMERS`` command; every problem goes to ``log``."""
    for line, values in command.rows:
        checked = check_customer(line, values)
        if isinstance(checked, list):
            log.add(checked)
        else:
            yield checked


def command_segment_members(command: ImportCommand, log: ProblemLog) -> Iterator[tuple[int, str]]:
    """(row, external id) of an ``IMPORT_SEGMENT`` command's well-formed ids; problems go to ``log``."""
    for line, external_id in command.external_ids:
        problems = check_segment_member(line, external_id)
        if problems:
            log.add(problems)
        else:
            yield line, external_id
