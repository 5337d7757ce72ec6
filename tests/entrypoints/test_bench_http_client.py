"""``python -m bench.http_client``, the HTTP transports' cost per request, runs as documented (docs/benchmarks.md):
real requests from the real transports to a ``python -m simulator`` subprocess, at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "http.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bench.http_client", *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_sms_rounds_reach_the_simulator_for_each_backend_and_a_git_revision(tmp_path: Path) -> None:
    args = ("-n", "40", "--rounds", "2", "--lanes", "8", "--connections", "4", "--backends", "aiohttp,http1")
    figures, stdout = _run(tmp_path, *args, "--compare", "HEAD")
    codes = ["HEAD", "this tree (aiohttp)", "this tree (http1)"]
    assert [(r["round"], r["code"]) for r in figures["rounds"]] == [(n, c) for n in (1, 2) for c in codes]
    for row in figures["rounds"]:
        assert row["accepted_by_simulator"] == 40  # read from the simulator's own /_control/stats
        if row["code"] != "HEAD":  # HEAD runs with its own default backend
            assert row["backend"] == row["code"].removeprefix("this tree (").removesuffix(")")
        assert row["client_cpu_s_per_1k"] > 0 and row["messages_per_s"] > 0
        assert row["simulator_cpu_s_per_1k"] >= 0  # /proc counts 10 ms ticks: 40 requests may not reach one
    assert "client CPU per request 1.00x HEAD's" in stdout


@pytest.mark.parametrize("backend", ["aiohttp", "http1"])
def test_whatsapp_reaches_the_simulator(tmp_path: Path, backend: str) -> None:
    figures, _ = _run(
        tmp_path, "-n", "12", "--rounds", "1", "--lanes", "3", "--channel", "whatsapp", "--backends", backend
    )
    (row,) = figures["rounds"]
    assert row["code"] == f"this tree ({backend})" and row["backend"] == backend and row["accepted_by_simulator"] == 12
