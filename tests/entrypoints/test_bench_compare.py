"""The benchmark's documented helpers as users run them: ``ops/postgres/postgres.sh durability on|off`` and
``python -m bench.compare REV`` (a tree from its own git worktree, on a durable PostgreSQL, put back afterwards)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.entrypoints.conftest import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SCRIPT = REPO_ROOT / "ops" / "postgres" / "postgres.sh"


def _durability(*args: str) -> str:
    result = subprocess.run(["bash", str(SCRIPT), "durability", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_durability_switches_and_compare_restores_it(settings):
    found = _durability()
    try:
        assert _durability("on") == "fsync=on full_page_writes=on synchronous_commit=on"
        assert _durability("off") == "fsync=off full_page_writes=off synchronous_commit=off"
        variant = "HEAD+CAMPAIGNS_SENDER__CONSUMERS=2"  # the same tree under other settings
        result = subprocess.run([sys.executable, "-m", "bench.compare", "HEAD", variant, "--rounds", "1",
                                 "--size", "2000"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "broker warmed up: " in result.stdout.splitlines()[0], result.stdout  # once, before any round
        assert "round 1 HEAD: " in result.stdout and "\nHEAD: median " in result.stdout, result.stdout
        assert "µs before it)" in result.stdout.split("round 1 HEAD: ")[1].splitlines()[0], "each round's CPU probe"
        assert f"round 1 {variant}: " in result.stdout and f"\n{variant}: median " in result.stdout, result.stdout
        # Over real HTTP: the production worker entry point against the provider simulator, messages/s. The broker
        # was just warmed up above (up to 8 passes of 200,000 records on a host whose rate does not settle).
        result = subprocess.run([sys.executable, "-m", "bench.compare", "HEAD", "--scenario", "simulator",
                                 "--rounds", "1", "--size", "1000"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=900, env=dict(os.environ, BENCH_WARM_UP="0"))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert result.stdout.startswith("broker warm-up skipped (BENCH_WARM_UP=0)"), result.stdout
        assert "round 1 HEAD: " in result.stdout and "\nHEAD: median " in result.stdout, result.stdout
        # The expansion alone (the harness's grid, 100,000 recipients; the figure at batch 1,000).
        result = subprocess.run([sys.executable, "-m", "bench.compare", "HEAD", "--scenario", "expansion",
                                 "--rounds", "1"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=900, env=dict(os.environ, BENCH_WARM_UP="0"))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "round 1 HEAD: " in result.stdout and "\nHEAD: median " in result.stdout, result.stdout
        assert _durability() == "fsync=off full_page_writes=off synchronous_commit=off"  # put back as found
        worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        assert "bench-compare-" not in worktrees  # its worktree is gone
    finally:
        _durability("on" if "fsync=on" in found else "off")
