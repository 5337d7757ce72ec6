"""``python -m bench.render``, the rendering micro-benchmark, runs as documented (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_render_reports_microseconds_per_message_for_every_channel():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bench.render", "--n", "300", "--repeat", "1", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert set(figures["us_per_message"]) == {"whatsapp", "sms", "email"}
    assert all(us > 0 for us in figures["us_per_message"].values())
    assert figures["n"] == 300
