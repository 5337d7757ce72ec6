"""When the harness deems the broker warm (bench.warmup.is_steady), and how the report says what it did and how
fast the host was (bench.probe)."""

from __future__ import annotations

from bench.probe import cpu_probe_us
from bench.report import _probe_line, _warm_up_line
from bench.warmup import MIN_PASSES, is_steady


def test_a_broker_still_speeding_up_is_not_warm():
    assert not is_steady([118_000, 144_000, 217_000])  # the third pass left the second far behind


def test_two_passes_near_the_fastest_are_warm_even_if_they_differ():
    assert is_steady([118_000, 144_000, 217_000, 185_000])  # both last passes within 15 % of 217k
    assert is_steady([195_000, 196_000, 167_000])


def test_fewer_than_the_minimum_passes_are_never_warm():
    assert not is_steady([200_000] * (MIN_PASSES - 1))
    assert is_steady([200_000] * MIN_PASSES)


def test_the_report_says_how_the_broker_was_warmed_up_or_that_it_was_not():
    line = _warm_up_line({"broker_up_s": 600.0, "produce_per_s": [150_000, 190_000, 195_000], "seconds": 9.6,
                          "steady": True})
    assert line == "broker up 10 min before it; 3 pass(es) in 10 s, produce/s 150,000, 190,000, 195,000: settled"
    assert "did not settle" in _warm_up_line({"broker_up_s": None, "produce_per_s": [1, 2], "seconds": 1,
                                              "steady": False})
    assert _warm_up_line(None).startswith("none")


def test_the_cpu_probe_times_the_codec_and_the_report_shows_it_before_and_after():
    assert 0 < cpu_probe_us(ops=200, repeats=2) < 10_000
    assert _probe_line({"start": 6.123, "end": 9.5}) == (
        "Avro encode + decode of a RecipientMessage: 6.12 µs before the first round, 9.50 µs after the last")
    assert _probe_line({"start": 6.0}).endswith("6.00 µs before the first round")  # a run that failed midway
    assert _probe_line(None).startswith("not taken")
