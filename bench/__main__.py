"""``python -m bench`` and ``campaigns bench``: the harness as a process of its own."""

from __future__ import annotations

import sys

from bench.cli import main as run_harness
from campaigns.collector import tune_collector
from campaigns.settings import load_settings

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The harness in this process (``bench.main`` without this set-up is for callers in a process of their own,
    such as the test suite). The expansion and cron scenarios run here: the collector is set up as the worker's
    (campaigns/collector.py), so the expander is measured as it runs in a worker and the cron loop gets what the
    pipeline gets."""
    tune_collector(load_settings().gc_young_threshold)
    return run_harness(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
