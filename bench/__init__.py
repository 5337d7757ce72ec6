"""The benchmark harness: the pipeline end to end, its latency, expansion alone, over real HTTP, against a
BullMQ design and a cron + sendBatch design, and against the broker's own limit.

``python -m bench [scenario ...] [--runs N] [--quick] [--all] [--json PATH]`` or ``main(argv)``; see
``bench/cli.py`` and ``docs/benchmarks.md``. Nothing runs at import.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (the ``campaigns bench`` entry point); returns the process exit code."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
