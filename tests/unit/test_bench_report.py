"""The memory target is judged on a worker's two processes: its own and its Faust analytics child's."""

from __future__ import annotations

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
