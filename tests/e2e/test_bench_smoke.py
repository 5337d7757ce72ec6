"""The benchmark harness measures what it claims to: a small end-to-end scenario through ``bench.main``
(one round, 10,000 recipients, a real worker process on real Kafka and PostgreSQL) must leave every
recipient with exactly one terminal row, send nobody twice, and write its JSON and Markdown. Speed is not
checked here; ``python -m bench`` measures it."""

from __future__ import annotations

import json

import bench
from bench.env import BenchEnv
from bench.pipeline import e2e_run


def test_bench_quick_e2e_writes_results(settings, tmp_path):
    out, doc = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    code = bench.main(["e2e", "--quick", "--json", str(out), "--markdown", str(doc)])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    (run,) = result["results"]["e2e"]["10000x1000"]
    assert run["status"] == "completed"
    assert run["checks"] == {
        "completed": True, "every_recipient_terminal": True, "no_duplicate_sends": True,
        "one_call_per_sent_row": True, "analytics_equal_log": True,
    }
    assert run["total_recipients"] == 10_000
    assert sum(run["log_counts"].values()) == 10_000
    assert run["transport_duplicates"] == 0
    assert run["transport_calls"] == run["log_counts"]["sent"]
    assert run["recipients_per_s"] > 0 and run["peak_rss_mb"] > 0 and run["worker_cpu_s"] > 0
    assert run["analytics_peak_rss_mb"] > 0  # the worker's Faust analytics child, measured on its own
    assert run["analytics_after_completion_s"] >= 0  # waited for, not read at completion (None: never caught up)
    assert result["meta"]["machine"]["cores"] >= 1
    text = doc.read_text()
    assert "<!-- bench:begin" in text and "| 10,000 | 1,000 | 1 worker | 1 |" in text


def test_two_workers_share_a_campaign_without_duplicates(settings):
    """The harness's own duplicate accounting across worker processes (each has its own transport)."""
    with BenchEnv(settings) as env:
        run = e2e_run(env, 3000, 500, workers=2)
    assert all(run["checks"].values()), run["checks"]
    assert run["transport_duplicates"] == 0
    assert sum(run["log_counts"].values()) == run["total_recipients"] == 3000


def test_a_full_run_warms_the_broker_up_first_and_says_so(settings, tmp_path):
    """Not --quick: the broker is warmed up until its rate settles before the first round, and the report says
    how (a cold broker JVM halved every figure of a run while the load average stayed at 0.5)."""
    out, doc = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    code = bench.main(["latency", "--runs", "1", "--json", str(out), "--markdown", str(doc), "--publish-loaded"])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    warm_up = result["meta"]["broker_warmup"]
    assert 3 <= len(warm_up["produce_per_s"]) <= 8 and all(rate > 0 for rate in warm_up["produce_per_s"])
    assert warm_up["broker_up_s"] is None or warm_up["broker_up_s"] > 0
    assert "| broker warm-up | " in doc.read_text()
    probe = result["meta"]["cpu_probe_us"]
    assert probe["start"] > 0 and probe["end"] > 0 and "| CPU probe (bench.probe) | Avro encode" in doc.read_text()


def test_the_seeded_audience_is_vacuumed_and_analyzed_before_any_design_reads_it(settings):
    """Every design reads a steady-state audience (statistics, all-visible pages), not the first reader after a
    bulk import paying for it alone; the harness's ANALYZE as the application role was skipped with a WARNING."""
    with BenchEnv(settings) as env:
        env.audience(500)
        with env.connect() as conn, conn.cursor() as cur:
            # The catalogue, not pg_stat_user_tables: VACUUM and ANALYZE write pg_class and pg_statistic when they
            # commit, while the statistics views hear of them only when the ended session's backend flushes its
            # counters, after the client has moved on (CI once read them stale).
            cur.execute("SELECT c.relname, c.relallvisible = c.relpages AND c.relpages > 0,"
                        " EXISTS (SELECT FROM pg_stats s WHERE s.tablename = c.relname)"
                        " FROM pg_class c WHERE c.relname IN ('customers', 'segment_members') ORDER BY c.relname")
            assert cur.fetchall() == [("customers", True, True), ("segment_members", True, True)]
