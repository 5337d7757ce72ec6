"""The audience import's pure checks (campaigns/core/importing.py): every problem of every row, with the file line
it starts on, and the shapes of import commands."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.importing import (
    CustomerRow,
    ProblemLog,
    check_customer,
    check_customer_header,
    check_segment_header,
    check_segment_name,
    csv_records,
    customer_rows,
    format_problems,
    parse_import_command,
    segment_members,
)

FULL = (
    "external_id,email,phone,whatsapp,first_name,last_name,locale,timezone,status,opted_out_channels,plan\n"
    "c1,a@example.com,+14155550100,+14155550101,Ana,Díaz,es-ES,Europe/Madrid,active,sms;email,gold\n"
)


def read(text: str) -> tuple[list[CustomerRow], ProblemLog]:
    log = ProblemLog()
    records = csv_records(io.StringIO(text, newline=""), log)
    _, header = next(records)
    log.add(check_customer_header(header))
    return list(customer_rows(records, header, log)), log


def problems_of(text: str) -> list[str]:
    return [str(p) for p in read(text)[1].problems]


def test_a_full_row_is_read_as_written():
    rows, log = read(FULL)
    assert not log
    assert rows == [
        CustomerRow(
            2,
            "c1",
            "a@example.com",
            "+14155550100",
            "+14155550101",
            "Ana",
            "Díaz",
            "es-ES",
            "Europe/Madrid",
            "active",
            ("email", "sms"),
            {"plan": "gold"},
        )
    ]


def test_empty_cells_mean_not_given():
    rows, log = read("external_id,email,first_name,plan\nc1,,,\n")
    assert not log
    assert rows == [CustomerRow(2, "c1")]


def test_every_problem_of_a_row_is_reported_with_its_column():
    bad = (
        "external_id,email,phone,whatsapp,first_name,last_name,locale,timezone,status,opted_out_channels,plan\n"
        "c1,not-an-email,0034600,+1 415,Ana\x07,,english-with-a-long-tag,Mars/Base,gone,sms;fax;pigeon,gold\n"
    )
    assert problems_of(bad) == [
        "line 2: email: 'not-an-email' is not an email address (name@domain.tld)",
        "line 2: phone: '0034600' is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)",
        "line 2: whatsapp: '+1 415' is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)",
        "line 2: first_name: contains a control character (tab, line break, NUL ...)",
        "line 2: locale: 'english-with-a-long-tag' is not a language tag of at most 16 characters (en, pt-BR, "
        "zh-Hant-TW)",
        "line 2: timezone: 'Mars/Base' is not an IANA time zone (e.g. Europe/Madrid, America/New_York, UTC)",
        "line 2: status: 'gone' is not one of active, inactive, blocked",
        "line 2: opted_out_channels: 'fax', 'pigeon': channels are whatsapp, sms, email, separated by ';' "
        "(e.g. sms;email)",
    ]


def test_line_numbers_count_physical_lines_blank_lines_and_quoted_line_breaks():
    text = (
        "external_id,email,note\n"  # line 1
        "c1,a@example.com,ok\n"  # 2
        "\n"  # 3 (blank: skipped)
        'c2,b@example.com,"two\nlines"\n'  # 4-5
        "c3,bad,x\n"  # 6
        "c4,d@example.com\n"  # 7: a field short
        ",e@example.com,y\n"  # 8: no external id
    )
    rows, log = read(text)
    assert [r.line for r in rows] == [2, 4]
    assert rows[1].attributes == {"note": "two\nlines"}
    assert [str(p) for p in log.problems] == [
        "line 6: email: 'bad' is not an email address (name@domain.tld)",
        "line 7: csv: 2 fields, the header has 3",
        "line 8: external_id: required (the customer's id in your system)",
    ]


def test_over_long_fields_are_reported():
    long_id, long_name = "x" * 129, "n" * 129
    text = f"external_id,first_name,email,plan\n{long_id},{long_name},{'a' * 320}@b.co,{'v' * 1025}\n"
    assert problems_of(text) == [
        "line 2: external_id: 129 characters, at most 128",
        "line 2: email: 325 characters, at most 320",
        "line 2: first_name: 129 characters, at most 128",
        "line 2: plan: 1025 characters, at most 1024",
    ]


def test_invalid_utf8_shows_as_a_problem_on_its_line():
    raw = b"external_id,first_name\nc1,Ana\nc2,Jos\xe9\n"
    log = ProblemLog()
    records = csv_records(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="replace", newline=""), log)
    _, header = next(records)
    list(customer_rows(records, header, log))
    assert [str(p) for p in log.problems] == ["line 3: encoding: not UTF-8 text (or contains U+FFFD)"]


def test_an_unclosed_quote_ends_reading_with_a_problem():
    rows, log = read('external_id,first_name\nc1,Ana\nc2,"Bo\nc3,Cy\n')
    assert [r.external_id for r in rows] == ["c1"]
    assert [str(p) for p in log.problems] == [
        "line 3: csv: not valid CSV (unexpected end of data); nothing after this line was read"
    ]


def test_header_problems():
    assert [str(p) for p in check_customer_header(["email", "email", "", "bad key", "x" * 65])] == [
        "line 1: email: appears twice in the header",
        "line 1: external_id: the header must have a column 'external_id'",
        "line 1: column 3: has no name (an attribute needs one)",
        "line 1: bad key: not a valid attribute name: letters, digits, _ . - (starting with a letter or _), at most "
        "64 characters",
        "line 1: " + "x" * 64 + ": not a valid attribute name: letters, digits, _ . - (starting with a letter or "
        "_), at most 64 characters",
    ]
    assert [str(p) for p in check_segment_header(["external_id", "email"])] == [
        "line 1: email: a segment file has one column, external_id"
    ]
    assert check_segment_header(["external_id"]) == []
    assert [str(p) for p in check_segment_name(" vip")] == ["segment: has leading or trailing spaces"]


def test_segment_rows():
    log = ProblemLog()
    records = csv_records(io.StringIO("external_id\na\n b\nc,d\n\nz\n", newline=""), log)
    next(records)
    assert list(segment_members(records, log)) == [(2, "a"), (6, "z")]
    assert [str(p) for p in log.problems] == [
        "line 3: external_id: has leading or trailing spaces",
        "line 4: csv: 2 fields, a segment file has one (external_id)",
    ]


def test_problem_log_keeps_the_first_and_counts_all_and_the_printout_is_capped():
    text = "external_id,email\n" + "".join(f"c{n},bad\n" for n in range(30))
    log = ProblemLog(keep=10)
    records = csv_records(io.StringIO(text, newline=""), log)
    _, header = next(records)
    assert list(customer_rows(records, header, log)) == []
    assert (len(log.problems), log.total) == (10, 30)
    shown = format_problems([str(p) for p in log.problems], log.total, limit=3)
    assert shown[0].startswith("line 2: email:") and shown[2].startswith("line 4: email:")
    assert shown[3] == "... and 27 more (30 problems in all)"


def test_import_command_shapes():
    ok = parse_import_command("customers", {"rows": [{"external_id": "a", "email": None, "plan": "x"}]}, 10)
    assert not isinstance(ok, list) and ok.rows == ((1, {"external_id": "a", "email": "", "plan": "x"}),)
    assert parse_import_command("customers", {"rows": [{"external_id": 1}], "extra": 1}, 10) == [
        "payload_json.extra: unknown key (an IMPORT_CUSTOMERS payload has rows)",
        "payload_json.rows[0]: an object whose values are strings (or null)",
    ]
    assert parse_import_command("customers", {"rows": [{}] * 11}, 10) == [
        "payload_json.rows: 11 rows, at most 10 per command (send several commands, or import a file with "
        "`campaigns import customers`)"
    ]
    assert parse_import_command("segment", {"segment": "", "external_ids": [], "replace": "yes"}, 10) == [
        "payload_json.segment: a name is required",
        "payload_json.replace: true or false",
        "payload_json.external_ids: a non-empty array of strings",
    ]
    seg = parse_import_command("segment", {"segment": "vip", "external_ids": ["a", "b"], "replace": True}, 10)
    assert not isinstance(seg, list) and seg.external_ids == ((1, "a"), (2, "b")) and seg.replace


VALID_PHONE = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)


@given(phone=VALID_PHONE, line=st.integers(min_value=2, max_value=10**7))
def test_any_e164_number_passes(phone: str, line: int):
    checked = check_customer(line, {"external_id": "c", "phone": phone, "whatsapp": phone})
    assert isinstance(checked, CustomerRow) and checked.phone == phone and checked.line == line


@given(value=st.text(max_size=30), line=st.integers(min_value=2, max_value=10**7))
def test_a_row_either_passes_or_every_problem_names_its_line(value: str, line: int):
    checked = check_customer(
        line,
        {
            "external_id": value,
            "email": value,
            "phone": value,
            "locale": value,
            "timezone": value,
            "status": value,
            "opted_out_channels": value,
            "note": value,
        },
    )
    if isinstance(checked, list):
        assert checked and all(p.line == line for p in checked)
        assert all(str(p).startswith(f"line {line}: ") for p in checked)
    else:
        assert checked.external_id == value
