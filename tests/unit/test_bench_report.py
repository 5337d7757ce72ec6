"""The memory target is judged on a worker's two processes: its own and its Faust analytics child's."""

from __future__ import annotations

import json

from bench.cli import main
from bench.report import targets


def _summary(worker: tuple[float, float], analytics: tuple[float | None, float | None]) -> dict:
    runs = {f"{n}x1000": {"n": n, "peak_rss_mb": w, "analytics_peak_rss_mb": a, "recipients_per_s": 1.0,
                          "elapsed_s": 1.0, "runs": 1}
            for n, w, a in ((100_000, worker[0], analytics[0]), (1_000_000, worker[1], analytics[1]))}
    return {"e2e": runs}


def _memory(summary: dict) -> dict:
    (row,) = [r for r in targets(summary) if r["target"].startswith("worker peak RSS")]
    return row


def test_an_analytics_process_that_grows_with_the_audience_fails_the_target():
    row = _memory(_summary((141, 142), (90, 400)))
    assert row["met"] is False
    assert "its analytics process 100,000: 90 MB, 1,000,000: 400 MB (x4.44)" in row["measured"]


def test_both_processes_flat_and_small_meet_it():
    row = _memory(_summary((141, 142), (90, 95)))
    assert row["met"] is True


def test_a_run_that_did_not_measure_the_analytics_process_does_not_meet_it():
    row = _memory(_summary((141, 142), (None, None)))
    assert row["met"] is False and "its analytics process: not measured" in row["measured"]


def _results_file(path, started_at: str, load: float, probe: tuple[float, float], per_s: float):
    meta = {"started_at": started_at, "command": "python -m bench e2e --runs 1", "runs": 1, "quick": False,
            "postgres_mode": "durable", "settings": {"partitions": 6},
            "machine": {"cpu_model": "CPU", "cores": 2, "ram_gib": 1, "os": "OS", "kernel": "k", "versions": {},
                        "postgres_settings": "fsync=on", "load_average_at_start": [load, load, load]},
            "cpu_probe_us": {"start": probe[0], "end": probe[1]},
            "broker_warmup": {"produce_per_s": [1000.0], "seconds": 1.0, "steady": True}}
    run = {"n": 1000, "batch_size": 1000, "recipients_per_s": per_s, "elapsed_s": 1.0, "checks_ok": True}
    path.write_text(json.dumps({"meta": meta, "results": {"e2e": {"1000x1000": [run]}}, "failures": []}))
    return path


def test_a_merged_report_gives_each_run_s_machine_facts_and_counts_its_rounds(tmp_path):
    """Runs merged into one report (--merge) were taken at different times on a host whose speed drifts: the
    load, the broker warm-up and the CPU probe of each are shown, not the first one's alone."""
    first = _results_file(tmp_path / "a.json", "2026-12-02T16:37:38+00:00", 0.1, (8.25, 5.45), 9_559)
    second = _results_file(tmp_path / "b.json", "2026-12-02T16:49:15+00:00", 0.4, (5.53, 8.10), 8_627)
    doc = tmp_path / "report.md"
    assert main(["--report-only", "--merge", str(first), "--merge", str(second), "--markdown", str(doc),
                 "--json", str(tmp_path / "merged.json")]) == 0
    text = doc.read_text()
    assert "2 runs merged, started 2026-12-02T16:37:38Z, 2026-12-02T16:49:15Z, up to 2 round(s) per figure" in text
    assert "| load average at start | 16:37: 0.1, 0.1, 0.1; 16:49: 0.4, 0.4, 0.4 |" in text
    assert "16:37: Avro encode + decode of a RecipientMessage: 8.25 µs" in text
    assert "16:49: Avro encode + decode of a RecipientMessage: 5.53 µs before the first round, 8.10 µs" in text
    # Merged again, the merged file keeps both runs' facts.
    again = tmp_path / "again.md"
    assert main(["--report-only", "--merge", str(tmp_path / "merged.json"), "--markdown", str(again),
                 "--json", str(tmp_path / "again.json")]) == 0
    assert "16:37: 0.1, 0.1, 0.1; 16:49: 0.4, 0.4, 0.4" in again.read_text()
