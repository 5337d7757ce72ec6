"""``python -m bench.compare REV [REV ...] [--rounds 3] [--size 100000] [--scenario e2e|simulator|expansion]``: the
e2e (or over-HTTP ``simulator``, or ``expansion`` alone at batch 1,000) figure of several versions of the code, side
by side, interleaved round by round (REV1, REV2, ..., then again), on the same broker and database.

A REV may carry settings for its run: ``HEAD+CAMPAIGNS_SENDER__CONSUMERS=2`` (``+NAME=VALUE``, repeatable) runs
HEAD's tree with that environment, so one version can be compared with itself under another configuration.

Each REV is checked out in a temporary git worktree and runs that tree's own harness (``python -m bench e2e``,
its own migrations into its own private database, its own worker) with this virtualenv's Python. Trees from
before the least-privilege roles (migration 0006) expect one database role for everything: they run as the
schema owner (``CAMPAIGNS_DATABASE__USER``/``__PASSWORD`` from ``CAMPAIGNS_PG_OWNER``, default
``campaigns_owner``). PostgreSQL is made durable for the whole comparison and restored afterwards. The broker is
warmed up once first (``bench.warmup``; not with ``BENCH_WARM_UP=0``, for a caller that just did), and the rounds
run with ``BENCH_WARM_UP=0``. Prints one line per run (with the host's speed before it: its harness's CPU probe,
``bench.probe``, so a round taken while the host sped up or slowed down shows as such) and a summary (median
recipients/s, or messages/s over HTTP, and worker and PostgreSQL CPU seconds per 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .cli import durability
from .env import REPO_ROOT, BenchEnv
from .warmup import warm_up_broker


def variant(spec: str) -> tuple[str, dict[str, str]]:
    """``REV+NAME=VALUE+...`` as (REV, {NAME: VALUE})."""
    rev, *settings = spec.split("+")
    env = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"bench.compare: {spec!r}: expected REV+NAME=VALUE")
        env[name] = value
    return rev, env


def _argv(scenario: str, size: int, out: Path) -> list[str]:
    if scenario == "simulator":  # the production worker entry point over real HTTP to the provider simulator
        return [sys.executable, "-m", "bench", "simulator", "--sim-n", str(size), "--runs", "1", "--no-markdown",
                "--json", str(out)]
    if scenario == "expansion":  # the harness's expansion grid: 100,000 recipients at each batch size
        return [sys.executable, "-m", "bench", "expansion", "--runs", "1", "--no-markdown", "--json", str(out)]
    return [sys.executable, "-m", "bench", "e2e", "--sizes", str(size), "--batch-sizes", "1000", "--runs", "1",
            "--no-markdown", "--json", str(out)]


def _case(scenario: str, cases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The run compared: expansion's at batch 1,000 (its target's), else the scenario's one case."""
    if scenario == "expansion":
        return next(runs[0] for key, runs in cases.items() if key.endswith("x1000"))
    return next(iter(cases.values()))[0]


def _figures(scenario: str, result: dict[str, Any]) -> dict[str, float]:
    """``per_s`` (recipients/s end to end, messages/s over HTTP), the CPU seconds per 1,000 recipients, and the
    peak RSS in MB of the worker and of its analytics process (0 if the tree's harness does not measure it)."""
    if scenario == "expansion":  # one thread of this process: no worker, no PostgreSQL figure
        return {"per_s": result["recipients_per_s"],
                "worker_cpu_s_per_1k": result["expander_cpu_s"] * 1000 / result["n"], "postgres_cpu_s_per_1k": 0.0,
                "peak_rss_mb": 0.0, "analytics_peak_rss_mb": 0.0}
    if scenario == "simulator":
        per_1k = 1000 / result["total_recipients"]
        return {"per_s": result["messages_per_s"], "worker_cpu_s_per_1k": result["worker_cpu_s"] * per_1k,
                "postgres_cpu_s_per_1k": result["postgres_cpu_s"] * per_1k, "peak_rss_mb": result["peak_rss_mb"],
                "analytics_peak_rss_mb": result.get("analytics_peak_rss_mb") or 0.0}
    return {"per_s": result["recipients_per_s"], "worker_cpu_s_per_1k": result["worker_cpu_s_per_1k"],
            "postgres_cpu_s_per_1k": result["postgres_cpu_s_per_1k"], "peak_rss_mb": result["peak_rss_mb"],
            "analytics_peak_rss_mb": result.get("analytics_peak_rss_mb") or 0.0}


def _run(tree: Path, scenario: str, size: int, out: Path, as_owner: bool,
         extra: dict[str, str]) -> tuple[dict[str, float], float | None]:
    """The run's figures, and the host's speed before it (its harness's CPU probe, µs; None if that tree's harness
    has no probe)."""
    # The services are this checkout's (its .state): a newer tree's harness reads the cluster's state from there.
    env = dict(os.environ, PYTHONPATH=str(tree), CAMPAIGNS_STATE_DIR=str(REPO_ROOT / ".state"), BENCH_WARM_UP="0",
               **extra)
    if as_owner:
        env["CAMPAIGNS_DATABASE__USER"] = env["CAMPAIGNS_DATABASE__PASSWORD"] = os.environ.get(
            "CAMPAIGNS_PG_OWNER", "campaigns_owner")
    subprocess.run(_argv(scenario, size, out), cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    document = json.loads(out.read_text())
    probe = (document["meta"].get("cpu_probe_us") or {}).get("start")
    return _figures(scenario, _case(scenario, document["results"][scenario])), probe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("revs", nargs="+", help="git revisions (e.g. a53f88b HEAD), each optionally +NAME=VALUE settings")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=100_000, help="recipients per run")
    p.add_argument("--scenario", choices=("e2e", "simulator", "expansion"), default="e2e",
                   help="e2e (in-worker counting transport), simulator (real HTTP, messages/s) or expansion (alone, "
                        "100,000 recipients at batch 1,000 whatever --size; 'worker' is the expander's CPU)")
    args = p.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revs}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp, durability("durable"):
        trees: dict[str, Path] = {}
        try:
            for rev, _ in map(variant, args.revs):
                if rev not in trees:
                    tree = Path(tmp) / rev.replace("/", "_")
                    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev],  # noqa: S603,S607
                                   cwd=REPO_ROOT, check=True)
                    trees[rev] = tree
            if os.environ.get("BENCH_WARM_UP", "1") == "0":  # as `python -m bench`: the caller warmed it up
                print("broker warm-up skipped (BENCH_WARM_UP=0)", flush=True)
            else:
                with BenchEnv() as env:  # after the worktrees: a wrong revision fails before anything is run
                    warm = warm_up_broker(env)
                print(f"broker warmed up: {len(warm.produce_per_s)} pass(es), produce/s {warm.produce_per_s}",
                      flush=True)
            for round_no in range(1, args.rounds + 1):
                for n, spec in enumerate(args.revs):
                    rev, extra = variant(spec)
                    tree = trees[rev]
                    roles = tree / "migrations" / "versions" / "0006_api_tokens_and_least_privilege.py"
                    as_owner = not roles.exists()
                    out = Path(tmp) / f"run-{n}-{round_no}.json"
                    figures, probe = _run(tree, args.scenario, args.size, out, as_owner, extra)
                    results[spec].append(figures)
                    host = "" if probe is None else f", CPU probe {probe:.2f} µs before it"
                    print(f"round {round_no} {spec}: {figures['per_s']:,.0f}/s, worker "
                          f"{figures['worker_cpu_s_per_1k']:.3f}, PostgreSQL {figures['postgres_cpu_s_per_1k']:.3f} "
                          f"CPU s /1k, peak RSS {figures['peak_rss_mb']:.0f} MB, analytics "
                          f"{figures['analytics_peak_rss_mb']:.0f} MB (load {os.getloadavg()[0]:.2f}{host})",
                          flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)  # noqa: S603,S607
    for rev, runs in results.items():
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{rev}: median {median['per_s']:,.0f}/s, worker {median['worker_cpu_s_per_1k']:.3f}, "
              f"PostgreSQL {median['postgres_cpu_s_per_1k']:.3f} CPU s /1k, peak RSS {median['peak_rss_mb']:.0f} MB, "
              f"analytics {median['analytics_peak_rss_mb']:.0f} MB "
              f"over {len(runs)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
