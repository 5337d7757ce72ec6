"""`campaigns bench` (what `make bench` runs) never skips a baseline: a chosen scenario whose prerequisites
are missing stops the harness at the start, with exit 2 and a line saying what to install, before it
touches any service. Run as the user runs it, with a PATH that has no redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.cli import missing_prerequisites

CAMPAIGNS = Path(sys.executable).with_name("campaigns")


def _env(path_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env["PATH"] = str(path_dir)
    # Nothing listens on port 1: had the harness gone on to its services, the error would be another one.
    env["CAMPAIGNS_DATABASE__PORT"] = "1"
    env["CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    return env


def test_without_redis_server_the_bullmq_baseline_stops_the_harness_at_the_start(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "results.json"
    done = subprocess.run(
        [str(CAMPAIGNS), "bench", "bullmq", "--quick", "--no-markdown", "--json", str(out)],
        env=_env(empty), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "bench: cannot start: the bullmq baseline needs redis-server, which is not on PATH" in done.stderr
    assert "ops/redis/redis.sh install" in done.stderr and "nothing was run" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_install_missing_without_apt_says_what_to_do_and_still_stops(tmp_path):
    """`make bench` passes --install-missing; where apt-get is missing too, the install script's error
    says what to do, and the harness still stops before running anything."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "mkdir", "id"):  # what ops/redis/redis.sh needs; no apt-get, no redis
        (tools / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(
        [str(CAMPAIGNS), "bench", "--install-missing", "bullmq", "--quick", "--no-markdown",
         "--json", str(tmp_path / "results.json")],
        env=_env(tools), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "error: redis-server is not installed and apt-get is missing" in done.stderr
    assert "BENCH_ARGS='e2e latency expansion simulator cron limit'" in done.stderr
    assert "bench: cannot start: the bullmq baseline needs redis-server" in done.stderr


def test_scenarios_without_prerequisites_need_nothing():
    assert missing_prerequisites({"e2e", "latency", "expansion", "simulator", "cron"}) == []
