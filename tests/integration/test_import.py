"""Audience import on real PostgreSQL (issue 17 part 4): ``campaigns import customers`` / ``import segment`` run
as subprocesses of the installed console script, the sink's upsert counts, all-or-nothing on a bad row, and
segment membership (add and --replace)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg2
import pytest

from campaigns.core.importing import ProblemLog, csv_records, customer_rows
from campaigns.errors import ImportRejected
from sinks.customers import import_customers
from tests.conftest import REPO_ROOT
from tests.integration.test_cli_integration import CAMPAIGNS, _env, db_token

pytestmark = pytest.mark.postgres

HEADER = "external_id,email,phone,whatsapp,first_name,last_name,locale,timezone,status,opted_out_channels,plan\n"


def campaigns(db, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env(db, CAMPAIGNS_TOKEN=token if token is not None else db_token(db))
    return subprocess.run([str(CAMPAIGNS), *argv], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def rows(db, sql: str, *params: object) -> list[tuple]:
    with psycopg2.connect(db.dsn()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        found = cur.fetchall()
    conn.close()
    return found


def customer_line(n: int, **over: str) -> str:
    values = {
        "external_id": f"crm-{n}",
        "email": f"u{n}@example.com",
        "phone": f"+1555{n:07d}",
        "whatsapp": f"+1555{n:07d}",
        "first_name": f"Name{n}",
        "last_name": "Doe",
        "locale": "es-ES",
        "timezone": "Europe/Madrid",
        "status": "active",
        "opted_out_channels": "",
        "plan": "gold",
    }
    values.update(over)
    return ",".join(values.values()) + "\n"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_then_reimport_counts_inserted_updated_unchanged(database_settings, tmp_path):
    db = database_settings
    first = write(tmp_path / "first.csv", HEADER + "".join(customer_line(n) for n in range(1, 101)))
    done = campaigns(db, "import", "customers", first)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"seconds": 0} == {
        "kind": "customers",
        "rows": 100,
        "inserted": 100,
        "updated": 0,
        "unchanged": 0,
        "seconds": 0,
    }
    assert "100 inserted" in done.stderr
    stored = rows(
        db, "SELECT email, phone, first_name, locale, timezone, attributes FROM customers WHERE external_ref = 'crm-7'"
    )
    assert stored == [("u7@example.com", "+15550000007", "Name7", "es-ES", "Europe/Madrid", {"plan": "gold"})]

    # Re-import: 10 changed (a new first name; one also an extra attribute and an opt-out), 5 new, the rest as is.
    changed = [customer_line(n, first_name=f"New{n}") for n in range(1, 11)]
    changed[0] = customer_line(1, first_name="New1", opted_out_channels="sms;email")
    second = write(
        tmp_path / "second.csv", HEADER + "".join(changed) + "".join(customer_line(n) for n in range(11, 106))
    )
    done = campaigns(db, "import", "customers", second)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["rows"], got["inserted"], got["updated"], got["unchanged"]) == (105, 5, 10, 90)
    assert rows(db, "SELECT first_name, opted_out_channels FROM customers WHERE external_ref = 'crm-1'") == [
        ("New1", ["email", "sms"])
    ]

    # Empty cells and absent columns keep stored values; attribute keys merge.
    third = write(tmp_path / "third.csv", "external_id,first_name,tier\ncrm-2,,silver\n")
    done = campaigns(db, "import", "customers", third)
    assert done.returncode == 0, done.stderr
    assert rows(db, "SELECT email, first_name, attributes FROM customers WHERE external_ref = 'crm-2'") == [
        ("u2@example.com", "New2", {"plan": "gold", "tier": "silver"})
    ]
    assert rows(db, "SELECT count(*), count(DISTINCT id) FROM customers") == [(105, 105)]
    audit = rows(db, "SELECT action, detail->>'inserted' FROM audit_log WHERE action = 'import_customers' ORDER BY id")
    assert audit == [("import_customers", "100"), ("import_customers", "5"), ("import_customers", "0")]


def test_new_customers_get_ids_above_existing_ones(database_settings, tmp_path):
    db = database_settings
    with psycopg2.connect(db.dsn()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customers (id, email) VALUES (1000, 'seeded@example.com')")
    conn.close()
    done = campaigns(db, "import", "customers", write(tmp_path / "c.csv", "external_id\na\nb\n"))
    assert done.returncode == 0, done.stderr
    assert rows(
        db,
        "SELECT id, external_ref, locale, timezone, status, opted_out_channels, attributes "
        "FROM customers WHERE external_ref IS NOT NULL ORDER BY id",
    ) == [(1001, "a", "en", "UTC", "active", [], {}), (1002, "b", "en", "UTC", "active", [], {})]


def test_one_bad_row_in_the_middle_imports_nothing_and_every_problem_is_reported(database_settings, tmp_path):
    db = database_settings
    lines = [customer_line(n) for n in range(1, 201)]
    lines[99] = customer_line(100, phone="555-0100", timezone="Mars/Olympus")  # file line 101
    lines[149] = customer_line(150, external_id="crm-3")  # line 151: duplicate of line 4
    bad = write(tmp_path / "bad.csv", HEADER + "".join(lines))
    done = campaigns(db, "import", "customers", bad)
    assert done.returncode == 2, done.stderr
    assert "line 101: phone: '555-0100' is not an E.164 number" in done.stderr
    assert "line 101: timezone: 'Mars/Olympus' is not an IANA time zone" in done.stderr
    assert "2 problem(s); nothing was imported" in done.stderr
    assert rows(db, "SELECT count(*) FROM customers") == [(0,)]
    # With the row checks passing, the duplicate is found in staging, and still nothing is imported.
    lines[99] = customer_line(100)
    dup = write(tmp_path / "dup.csv", HEADER + "".join(lines))
    done = campaigns(db, "import", "customers", dup)
    assert done.returncode == 2, done.stderr
    assert "line 151: external_id: 'crm-3' already on line 4" in done.stderr
    assert rows(db, "SELECT count(*) FROM customers") == [(0,)]


def test_many_problems_are_capped_in_the_output_with_the_total(database_settings, tmp_path):
    db = database_settings
    bad = write(tmp_path / "bad.csv", "external_id,email\n" + "".join(f"x{n},not-an-email\n" for n in range(300)))
    done = campaigns(db, "import", "customers", bad)
    assert done.returncode == 2
    shown = [line for line in done.stderr.splitlines() if line.startswith("line ")]
    assert len(shown) == 50 and shown[0].startswith("line 2: email:") and shown[-1].startswith("line 51: email:")
    assert "... and 250 more (300 problems in all)" in done.stderr


def test_header_and_csv_problems(database_settings, tmp_path):
    db = database_settings
    done = campaigns(db, "import", "customers", write(tmp_path / "h.csv", "email,email,bad key\nx,y,z\n"))
    assert done.returncode == 2
    assert "line 1: email: appears twice in the header" in done.stderr
    assert "line 1: external_id: the header must have a column 'external_id'" in done.stderr
    assert "line 1: bad key: not a valid attribute name" in done.stderr
    done = campaigns(db, "import", "customers", write(tmp_path / "q.csv", 'external_id,email\na,"x@y.z\n'))
    assert done.returncode == 2 and "line 2: csv: not valid CSV" in done.stderr
    done = campaigns(db, "import", "customers", write(tmp_path / "empty.csv", ""))
    assert done.returncode == 2 and "line 1: csv: no header" in done.stderr
    done = campaigns(db, "import", "customers", str(tmp_path / "missing.csv"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_segment_import_adds_or_replaces_and_refuses_unknown_ids(database_settings, tmp_path):
    db = database_settings
    done = campaigns(
        db, "import", "customers", write(tmp_path / "c.csv", "external_id\n" + "".join(f"k{n}\n" for n in range(1, 11)))
    )
    assert done.returncode == 0, done.stderr

    def members(name: str) -> list[str]:
        return [
            r[0]
            for r in rows(
                db,
                "SELECT c.external_ref FROM segment_members m JOIN customer_segments s ON "
                "s.id = m.segment_id JOIN customers c ON c.id = m.customer_id WHERE s.name = %s "
                "ORDER BY c.id",
                name,
            )
        ]

    done = campaigns(db, "import", "segment", "vip", write(tmp_path / "s1.csv", "external_id\nk1\nk2\nk3\n"))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["created"], got["inserted"], got["unchanged"], got["removed"]) == (True, 3, 0, 0)
    done = campaigns(db, "import", "segment", "vip", write(tmp_path / "s2.csv", "external_id\nk3\nk4\n"))
    got = json.loads(done.stdout)
    assert (got["created"], got["inserted"], got["unchanged"], got["removed"]) == (False, 1, 1, 0)
    assert members("vip") == ["k1", "k2", "k3", "k4"]
    done = campaigns(db, "import", "segment", "vip", write(tmp_path / "s3.csv", "external_id\nk4\nk5\n"), "--replace")
    got = json.loads(done.stdout)
    assert (got["inserted"], got["unchanged"], got["removed"]) == (1, 1, 3)
    assert members("vip") == ["k4", "k5"]

    done = campaigns(db, "import", "segment", "vip", write(tmp_path / "s4.csv", "external_id\nk6\nnope\nk7\nk6\n"))
    assert done.returncode == 2
    assert "line 3: external_id: no customer has external id 'nope'" in done.stderr
    assert "line 5: external_id: 'k6' already on line 2" in done.stderr
    assert members("vip") == ["k4", "k5"]
    done = campaigns(db, "import", "segment", "new-one", write(tmp_path / "s5.csv", "external_id\nzzz\n"))
    assert done.returncode == 2
    assert rows(db, "SELECT count(*) FROM customer_segments WHERE name = 'new-one'") == [(0,)]


def test_permission_is_checked_auditors_may_not_import(database_settings, tmp_path):
    db = database_settings
    from campaigns.db.engine import make_engine, make_sessionmaker
    from campaigns.service import CampaignService

    engine = make_engine(db)
    try:
        service = CampaignService(make_sessionmaker(engine))
        admin = "cli-admin"
        db_token(db)
        service.add_principal(admin, "aud", "auditor")
        token = service.create_token(admin, "aud")[1]
    finally:
        engine.dispose()
    done = campaigns(db, "import", "customers", write(tmp_path / "c.csv", "external_id\na\n"), token=token)
    assert done.returncode == 3 and "customers.import" in done.stderr
    done = campaigns(db, "import", "customers", write(tmp_path / "d.csv", "external_id\na\n"), token="")
    assert done.returncode == 3 and "no API token" in done.stderr
    assert rows(db, "SELECT count(*) FROM customers") == [(0,)]


def test_sink_never_commits_the_caller_decides(database_settings):
    db = database_settings
    conn = psycopg2.connect(db.dsn())
    try:
        with conn.cursor() as cur:
            log = ProblemLog()
            records = csv_records(iter(["external_id,first_name\n", "a,Ana\n", "b,Bo\n"]), log)
            header = next(records)[1]
            counts = import_customers(cur, customer_rows(records, header, log), log, chunk_rows=1)
            assert (counts.rows, counts.inserted) == (2, 2)
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM customers")
            assert cur.fetchone() == (0,)
            log = ProblemLog()
            records = csv_records(iter(["external_id,email\n", "a,bad\n"]), log)
            header = next(records)[1]
            with pytest.raises(ImportRejected) as refused:
                import_customers(cur, customer_rows(records, header, log), log)
            assert refused.value.problems == ["line 2: email: 'bad' is not an email address (name@domain.tld)"]
    finally:
        conn.close()


def test_the_seeder_gives_customers_their_profiles(database_settings):
    from campaigns.db.seed import SeedPlan, profile_for, seed

    db = database_settings
    plan = SeedPlan(customers=20, first_id=1, segments=1)
    seed(db.dsn(), plan)
    names = rows(db, "SELECT id, first_name, last_name FROM customers ORDER BY id")
    assert names == [(n, *profile_for(n, plan)[:2]) for n in range(1, 21)]
    assert len({first for _, first, _ in names if first}) > 10


def test_the_generated_file_imports_and_one_bad_line_in_it_imports_nothing(database_settings, tmp_path):
    """``python -m bench.customers_csv`` (the generator of docs/import.md's 1M-row figure) as a subprocess."""
    import sys

    db = database_settings
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    for path, extra in ((good, []), (bad, ["--bad-line", "2500"])):
        made = subprocess.run(
            [sys.executable, "-m", "bench.customers_csv", "5000", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert made.returncode == 0, made.stderr
    done = campaigns(db, "import", "customers", str(bad))
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("line ")] == [
        "line 2500: phone: '555-BAD' is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)",
        "line 2500: whatsapp: '555-BAD' is not an E.164 number (+ then 7 to 15 digits, e.g. +14155550100)",
    ]
    assert rows(db, "SELECT count(*) FROM customers") == [(0,)]
    done = campaigns(db, "import", "customers", str(good))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inserted"] == 5000
    assert rows(db, "SELECT count(*), count(*) FILTER (WHERE attributes ? 'city') FROM customers") == [(5000, 5000)]


def test_concurrent_imports_wait_for_each_other_and_never_share_an_id(database_settings, tmp_path):
    db = database_settings
    token = db_token(db)
    files = []
    for batch in range(3):
        lines = "".join(f"b{batch}-{n},b{batch}n{n}@example.com\n" for n in range(2000))
        files.append(write(tmp_path / f"b{batch}.csv", "external_id,email\n" + lines))
    procs = [
        subprocess.Popen(
            [str(CAMPAIGNS), "import", "customers", path],
            env=_env(db, CAMPAIGNS_TOKEN=token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        for path in files
    ]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], [err for _, _, err in outcomes]
    assert sorted(json.loads(out)["inserted"] for _, out, _ in outcomes) == [2000, 2000, 2000]
    assert rows(db, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM customers") == [(6000, 6000, 1, 6000)]
