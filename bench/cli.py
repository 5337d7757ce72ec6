"""``python -m bench [scenario ...] [--runs N] [--quick] [--all] [--json PATH]``: run the benchmarks, write
``bench/results/<time>.json`` and the tables in ``docs/benchmarks.md``.

Rounds are interleaved: round 1 of every scenario, then round 2 of every scenario, and so on, so that load
from other processes on a shared machine falls on all of them alike; each figure is the median of its
rounds. Exit code 0 when every run completed and passed its correctness checks (speed targets are
reported, not enforced); 2, before anything runs, when a chosen scenario lacks what it needs
(:func:`missing_prerequisites`: redis-server and the ``bench`` extra for the BullMQ baseline, java and
Kafka's jars for the limit): a baseline is never skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import report
from .env import RESULTS_DIR, BenchEnv, machine_description
from .probe import cpu_probe_us
from .warmup import warm_up_broker

log = logging.getLogger("bench")

SCENARIOS = ("e2e", "latency", "expansion", "simulator", "bullmq", "cron", "limit")
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
# Figures are published only from a machine that was idle before the run: above this 1-minute load
# average per core, other processes take a share of the CPU large enough to make the figures noise.
MAX_LOAD_PER_CORE = 1.5
BATCH_SIZES = (100, 1000, 5000)


@dataclass(frozen=True)
class Case:
    scenario: str
    key: str
    run: Callable[[BenchEnv, Any], dict[str, Any]]
    once: bool = False  # one round only (e.g. the cron latency: several minutes of mostly waiting)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the campaign pipeline, its alternatives and the broker's own limit; "
        "writes bench/results/*.json and the tables of docs/benchmarks.md.",
    )
    p.add_argument("scenarios", nargs="*", metavar="scenario", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--runs", type=int, default=None, help="rounds per figure (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="1 round, small sizes (the CI smoke test)")
    p.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        default=os.environ.get("BENCH_WARM_UP", "1") != "0",
        help="do not push records through the broker until its rate settles before measuring (bench.warmup; "
        "skipped with --quick; BENCH_WARM_UP=0, which bench.compare sets for its rounds after its own warm-up)",
    )
    p.add_argument(
        "--all",
        dest="full",
        action="store_true",
        help="the full grid: every size x every batch size (e2e and expansion)",
    )
    p.add_argument("--sizes", default=None, help="e2e audience sizes, e.g. 100000,1000000")
    p.add_argument("--batch-sizes", default=None, help="campaign batch sizes for the e2e grid, e.g. 100,1000")
    p.add_argument("--workers", type=int, default=1, help="e2e: worker processes (default 1)")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e2e: extra environment for the workers, e.g. CAMPAIGNS_SENDER__BATCH_SIZE=2000 (repeatable)",
    )
    p.add_argument("--profile", action="store_true", help="e2e: py-spy the worker and sample PostgreSQL")
    p.add_argument(
        "--postgres",
        choices=("durable", "fast"),
        default="durable",
        help="durable (default, the headline: fsync, synchronous_commit and full_page_writes on for the run, "
        "restored afterwards) or fast (the test cluster's own settings, all three off; labelled as such)",
    )
    p.add_argument(
        "--publish-loaded",
        action="store_true",
        help="update docs/benchmarks.md even if the machine was busy before the run (see MAX_LOAD_PER_CORE)",
    )
    p.add_argument("--baseline-n", type=int, default=None, help="audience of the BullMQ runs (default 10000)")
    p.add_argument("--bullmq-variants", default="docs,tuned")
    p.add_argument("--sim-n", type=int, default=None, help="audience of the simulator run (default 100000)")
    p.add_argument("--sim-channel", default="sms", choices=("sms", "whatsapp"))
    p.add_argument("--cron-n", type=int, default=None, help="audience of the cron throughput run (default 100000)")
    p.add_argument("--cron-period", type=float, default=None, help="cron period in s (default 60; 5 with --quick)")
    p.add_argument("--limit-records", type=int, default=None, help="records for the Kafka perf tools (default 1M)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    p.add_argument("--markdown", type=Path, default=report.DOC, help="Markdown report to update")
    p.add_argument("--no-markdown", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument(
        "--merge",
        action="append",
        default=[],
        type=Path,
        metavar="JSON",
        help="add the runs of an earlier results file to the tables (repeatable), e.g. a 1M run to a 100k one",
    )
    p.add_argument("--report-only", action="store_true", help="run nothing: tables from --merge files only")
    p.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    p.add_argument(
        "--install-missing",
        action="store_true",
        help="install what the chosen scenarios lack and the project can install (redis-server from the OS "
        "packages: ops/redis/redis.sh install); `make bench` passes it",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _ints(text: str | None, default: tuple[int, ...]) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",")] if text else list(default)


def plan_cases(args: argparse.Namespace) -> list[Case]:
    from . import baseline_bullmq, baseline_cron, kafka_limit, pipeline

    chosen = args.scenarios or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    quick = args.quick
    cases: list[Case] = []
    if "e2e" in chosen:
        sizes = _ints(args.sizes, (10_000,) if quick else DEFAULT_SIZES)
        if args.batch_sizes or args.full:
            grid = [(n, b) for n in sizes for b in _ints(args.batch_sizes, BATCH_SIZES)]
        elif quick:
            grid = [(n, 1000) for n in sizes]
        else:  # every size at 1000, and the batch-size sweep at 100k
            grid = [(n, 1000) for n in sizes] + [(100_000, b) for b in (100, 5000) if 100_000 in sizes]
        suffix = f"-w{args.workers}" if args.workers > 1 else ""
        suffix += "".join(f"-{kv}" for kv in args.worker_env)
        worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
        for n, b in grid:
            cases.append(
                Case(
                    "e2e",
                    f"{n}x{b}{suffix}",
                    lambda env, _r, n=n, b=b: pipeline.e2e_run(
                        env, n, b, workers=args.workers, worker_env=worker_env, profile=args.profile
                    ),
                )
            )
    if "latency" in chosen:
        k = 5 if quick else 10
        cases.append(Case("latency", f"{k}x50", lambda env, _r, k=k: pipeline.latency_run(env, campaigns=k)))
    if "expansion" in chosen:
        if quick:
            grid = [(10_000, 1000)]
        elif args.full:
            grid = [(n, b) for n in _ints(args.sizes, DEFAULT_SIZES) for b in BATCH_SIZES]
        else:
            grid = [(100_000, b) for b in BATCH_SIZES]
        for n, b in grid:
            cases.append(Case("expansion", f"{n}x{b}", lambda env, _r, n=n, b=b: pipeline.expansion_run(env, n, b)))
    if "simulator" in chosen:
        # 100,000: a per-worker rate is a steady one; a 20,000 run is 4-6 s, a third of it ramp-up and completion.
        n = args.sim_n or (2_000 if quick else 100_000)
        ch = args.sim_channel
        cases.append(Case("simulator", f"{ch}-{n}", lambda env, _r, n=n, ch=ch: pipeline.simulator_run(env, n, ch)))
    if "bullmq" in chosen:
        n = args.baseline_n or (2_000 if quick else 10_000)
        for name in args.bullmq_variants.split(","):
            variant = baseline_bullmq.VARIANTS[name]
            cases.append(
                Case(
                    "bullmq",
                    f"{name}-{n}",
                    lambda env, redis, v=variant, n=n: baseline_bullmq.run(env, redis, v, n),
                )
            )
    if "cron" in chosen:
        n = args.cron_n or (10_000 if quick else 100_000)
        cases.append(Case("cron", f"throughput-{n}", lambda env, _r, n=n: baseline_cron.throughput_run(env, n, 1000)))
        period = args.cron_period or (5.0 if quick else 60.0)
        k = 3 if quick else 8
        cases.append(
            Case(
                "cron",
                f"latency-{k}x{period:g}s",
                lambda env, _r, k=k, p=period: baseline_cron.latency_run(env, k, p),
                once=True,
            )
        )
    if "limit" in chosen:
        records = args.limit_records or (100_000 if quick else 1_000_000)
        cases.append(Case("limit", f"kafka-perf-{records}", lambda env, _r, m=records: kafka_limit.run(env, m)))
        cases.append(
            Case(
                "limit",
                f"python-client-{records // 5}",
                lambda env, _r, m=records // 5: pipeline.python_client_ceiling(env, m),
            )
        )
    return cases


def missing_prerequisites(scenarios: set[str]) -> list[str]:
    """What the chosen scenarios need and this machine lacks, one sentence each saying how to get it.

    Checked before anything runs: a baseline is run or the harness stops, never skipped."""
    import importlib.util
    import shutil

    from .kafka_limit import LIBS

    missing = []
    if "bullmq" in scenarios:
        packages = [name for name in ("bullmq", "redis") if importlib.util.find_spec(name) is None]
        if packages:
            missing.append(
                f"the bullmq baseline needs the Python package(s) {', '.join(packages)}: "
                "pip install -e '.[bench]' (make bench does)"
            )
        if shutil.which("redis-server") is None:
            missing.append(
                "the bullmq baseline needs redis-server, which is not on PATH: "
                "ops/redis/redis.sh install (apt-get install redis-server; make bench does)"
            )
    if "limit" in scenarios:
        if shutil.which("java") is None:
            missing.append("the limit scenario runs Kafka's perf tools and needs java on PATH (a Java 17+ JDK)")
        if not LIBS.is_dir():
            missing.append(
                f"the limit scenario needs Kafka's jars in {LIBS}: ops/kafka/kafka.sh fetch (make bench does)"
            )
    return missing


def _install_missing(scenarios: set[str]) -> None:
    """Install redis-server if the BullMQ baseline is chosen and it is missing (the script's own error,
    e.g. no apt-get, is printed; :func:`missing_prerequisites` then stops the run)."""
    import shutil
    import subprocess

    from .env import REPO_ROOT

    if "bullmq" in scenarios and shutil.which("redis-server") is None:
        subprocess.run([str(REPO_ROOT / "ops" / "redis" / "redis.sh"), "install"], check=False)  # noqa: S603


def _failed_checks(result: dict[str, Any]) -> list[str]:
    return [k for k, ok in (result.get("checks") or {}).items() if not ok]


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m bench`` and ``campaigns bench``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    log.setLevel(logging.INFO)
    runs = args.runs or (1 if args.quick else 3)
    started = datetime.now(UTC)
    outside_load = os.getloadavg()[0] / (os.cpu_count() or 1)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    failures: list[str] = []
    if args.report_only:
        if not args.merge:
            raise SystemExit("bench: --report-only needs at least one --merge JSON")
        meta: dict[str, Any] = {}
    else:
        cases = plan_cases(args)
        missing = missing_prerequisites({c.scenario for c in cases})
        if missing and args.install_missing:
            _install_missing({c.scenario for c in cases})
            missing = missing_prerequisites({c.scenario for c in cases})
        if missing:
            chosen = sorted({c.scenario for c in cases}, key=SCENARIOS.index)
            for problem in missing:
                print(f"bench: cannot start: {problem}", file=sys.stderr)
            print(
                f"bench: nothing was run; scenarios chosen: {' '.join(chosen)} "
                "(name the ones to run, e.g. `python -m bench e2e latency`)",
                file=sys.stderr,
            )
            return 2
        meta, failures = _run(args, runs, started, command, results, cases)
    invocations = [] if args.report_only else [report.invocation(meta)]
    for path in args.merge:
        earlier = json.loads(path.read_text())
        invocations += earlier["meta"].get("invocations") or [report.invocation(earlier["meta"])]
        meta = meta or dict(earlier["meta"], commands=[])
        meta.setdefault("commands", []).extend(
            c for c in earlier["meta"].get("commands") or [earlier["meta"]["command"]] if c not in meta["commands"]
        )
        meta["runs"] = max(meta.get("runs", 1), earlier["meta"].get("runs", 1))
        meta["started_at"] = min(meta["started_at"], earlier["meta"]["started_at"])
        for scenario, cases in earlier["results"].items():
            for key, earlier_runs in cases.items():
                own = results.setdefault(scenario, {}).setdefault(key, [])
                own[:0] = earlier_runs
        failures += earlier.get("failures", [])
    if not args.report_only:
        meta.setdefault("commands", []).append(command)
    meta["invocations"] = sorted(invocations, key=lambda i: i["started_at"])
    meta["finished_at"] = datetime.now(UTC).isoformat()
    summary = report.summarise(results)
    document = {
        "meta": meta,
        "summary": summary,
        "targets": report.targets(summary),
        "results": results,
        "failures": failures,
    }
    path = args.json or RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str))
    print(f"wrote {path}")
    if args.no_markdown:
        pass
    elif (outside_load > MAX_LOAD_PER_CORE and args.markdown == report.DOC and not args.report_only
          and not args.publish_loaded):  # the published document; a --markdown elsewhere is the caller's
        print(
            f"bench: NOT publishing to {args.markdown}: the load before the run was {outside_load:.2f} per core "
            f"(limit {MAX_LOAD_PER_CORE}); figures from a busy machine are noise. Rerun on an idle machine.",
            file=sys.stderr,
        )
    else:
        report.write_markdown(args.markdown, document)
        print(f"updated {args.markdown}")
    print(report.render_tables(document))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def _run(
    args: argparse.Namespace,
    runs: int,
    started: datetime,
    command: str,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    cases: list[Case],
) -> tuple[dict[str, Any], list[str]]:
    """Run every planned case ``runs`` times, interleaved; fills ``results``, returns (meta, failures)."""
    failures: list[str] = []
    needs_redis = any(c.scenario == "bullmq" for c in cases)
    with durability(args.postgres), BenchEnv(keep_db=args.keep_db) as env:
        meta = {
            "postgres_mode": args.postgres,
            "started_at": started.isoformat(),
            "command": command,
            "runs": runs,
            "quick": args.quick,
            "machine": machine_description(env.base),
            "database": env.dbname,
            "settings": {
                "partitions": env.base.kafka.partitions,
                "sender_batch_size": env.base.sender.batch_size,
                "sender_max_in_flight": env.base.sender.max_in_flight,
            },
        }
        redis = _redis() if needs_redis else None
        meta["cpu_probe_us"] = {"start": cpu_probe_us()}
        try:
            if args.warm_up and not args.quick:
                print("warming the broker up ...", flush=True)
                meta["broker_warmup"] = warm_up_broker(env).as_dict()
            for round_no in range(runs):
                for case in cases:
                    if case.once and round_no > 0:
                        continue
                    label = f"[round {round_no + 1}/{runs}] {case.scenario} {case.key}"
                    print(f"{label} ...", flush=True)
                    t0 = time.monotonic()
                    try:
                        result = case.run(env, redis)
                    except Exception as exc:
                        traceback.print_exc()
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                        failures.append(f"{label}: {result['error']}")
                    result["round"] = round_no + 1
                    result["harness_s"] = time.monotonic() - t0
                    bad = _failed_checks(result)
                    if bad:
                        failures.append(f"{label}: failed checks {bad}")
                    results.setdefault(case.scenario, {}).setdefault(case.key, []).append(result)
                    print(f"{label}: {report.one_line(case.scenario, result)}", flush=True)
            meta["cpu_probe_us"]["end"] = cpu_probe_us()
        finally:
            if redis is not None:
                redis.__exit__(None, None, None)
    return meta, failures


@contextlib.contextmanager
def durability(mode: str) -> Iterator[None]:
    """PostgreSQL durable (fsync, synchronous_commit, full_page_writes on) or as the test cluster has it for
    the run, through ``ops/postgres/postgres.sh durability`` (a reload, no restart); the state found is put
    back afterwards, whatever happens."""
    from .env import REPO_ROOT

    script = [str(REPO_ROOT / "ops" / "postgres" / "postgres.sh"), "durability"]
    found = subprocess.run(script, check=True, capture_output=True, text=True).stdout  # noqa: S603
    was_on = "fsync=on" in found
    wanted_on = mode == "durable"
    if wanted_on != was_on:
        subprocess.run([*script, "on" if wanted_on else "off"], check=True, capture_output=True)  # noqa: S603
    try:
        yield
    finally:
        if wanted_on != was_on:
            subprocess.run([*script, "on" if was_on else "off"], check=False, capture_output=True)  # noqa: S603


def _redis() -> Any:
    """A started RedisServer (its prerequisites were checked by :func:`missing_prerequisites`); one that
    does not start fails the run here, before any case."""
    from .baseline_bullmq import RedisServer

    try:
        return RedisServer().__enter__()
    except Exception as exc:
        raise SystemExit(f"bench: cannot start redis-server for the bullmq baseline: {exc}") from exc
