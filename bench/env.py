"""What every scenario shares: a private database, seeded audiences, topic prefixes, processes and the
numbers read from ``/proc`` (CPU seconds, peak RSS).

Isolation: each ``python -m bench`` invocation migrates a database of its own (``campaigns_bench_<hex>``,
dropped at the end unless ``--keep-db``) and each run uses a fresh topic prefix (its topics and consumer
groups are deleted after the run), so runs never see each other's records, offsets or rows. Between runs
the per-recipient tables are truncated, so run 3 of a scenario starts from the same state as run 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction, upgrade
from campaigns.db.seed import SeedPlan, seed
from campaigns.service import CampaignService
from campaigns.settings import Settings, load_settings

log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
ACTOR = "bench-marketer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Seed blocks: audience N lives at ids [block_start(N), block_start(N) + N), one segment per N.
BLOCK = 10_000_000


def median(values: Sequence[float]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, min(len(vals), int(-(-q * len(vals) // 100))))
    return vals[rank - 1]


# Whether a campaign's analytics totals equal its recipient log, status by status.
CAUGHT_UP_SQL = """
SELECT coalesce(a.sent, 0) = l.sent AND coalesce(a.failed, 0) = l.failed AND coalesce(a.skipped, 0) = l.skipped
       AND coalesce(a.cancelled, 0) = l.cancelled
FROM (SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) FILTER (WHERE status = 'failed') AS failed,
             count(*) FILTER (WHERE status = 'skipped') AS skipped,
             count(*) FILTER (WHERE status = 'cancelled') AS cancelled
      FROM campaign_recipient_log WHERE campaign_id = %(campaign)s) AS l
LEFT JOIN campaign_analytics AS a ON a.campaign_id = %(campaign)s AND a.window_start IS NULL
"""


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"bench: timed out after {timeout:.0f}s waiting for {what} (last: {result!r})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- /proc ------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MiB."""
    return proc_status_kb(pid, "VmHWM") / 1024


def postgres_backend_cpu(dbname: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to ``dbname`` (this benchmark's, no one else's)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read()
            if cmd.startswith(b"postgres: ") and f" {dbname} ".encode() in cmd:
                total += proc_cpu_seconds(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return total


def kafka_broker_pid() -> int | None:
    pidfile = REPO_ROOT / ".state" / "kafka" / "kafka.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds of the worker process(es), our PostgreSQL backends, the broker and the whole machine."""

    dbname: str
    pids: list[int] = field(default_factory=list)
    _start: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        busy, total = machine_busy_seconds()
        sample = {
            "worker": sum(_safe_cpu(p) for pid in self.pids for p in _family(pid)),
            "postgres": postgres_backend_cpu(self.dbname),
            "machine_busy": busy,
            "machine_total": total,
            "wall": time.monotonic(),
        }
        broker = kafka_broker_pid()
        if broker is not None:
            sample["kafka"] = _safe_cpu(broker)
        return sample

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        d = {k: end[k] - self._start.get(k, end[k]) for k in end}
        out = {
            "worker_cpu_s": d["worker"],
            "postgres_cpu_s": d["postgres"],
            "wall_s": d["wall"],
            "machine_util": d["machine_busy"] / d["machine_total"] if d["machine_total"] else None,
        }
        if "kafka" in d:
            out["kafka_cpu_s"] = d["kafka"]
        return out


def family_peak_rss_mb(pid: int) -> tuple[float, float | None]:
    """Peak RSS (VmHWM, MiB) of ``pid`` and of its largest live descendant (the worker's Faust analytics child),
    or None without one. A worker's memory is both: its analytics run in a process of their own."""
    children = []
    for child in _family(pid)[1:]:
        try:
            children.append(proc_peak_rss_mb(child))
        except OSError:  # it ended since it was listed
            continue
    return proc_peak_rss_mb(pid), max(children, default=None)


def _family(pid: int) -> list[int]:
    """``pid`` and its live descendants (a worker's supervised children, such as the Faust analytics)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    return found


def _safe_cpu(pid: int) -> float:
    try:
        return proc_cpu_seconds(pid)
    except OSError:
        return 0.0


# --- machine description ----------------------------------------------------------------------------


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_description(settings: Settings) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    pg_version = pg_settings = ""
    with (
        contextlib.suppress(psycopg2.Error),
        psycopg2.connect(settings.database.dsn(), connect_timeout=5) as c,
    ):
        with c.cursor() as cur:
            cur.execute("SHOW server_version")
            pg_version = cur.fetchone()[0]
            cur.execute(
                "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name "
                "IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
            )
            pg_settings = cur.fetchone()[0]
        c.close()
    kafka_version = _cmd(["bash", str(REPO_ROOT / "ops" / "kafka" / "kafka.sh"), "version"]) or "unknown"
    server_log = REPO_ROOT / ".state" / "kafka" / "logs" / "server.log"
    if server_log.exists():
        with contextlib.suppress(OSError):
            match = re.search(r"Kafka version: (\S+)", server_log.read_text(errors="replace"))
            if match:
                kafka_version = match.group(1)
    versions = {"python": platform.python_version(), "kafka": kafka_version, "postgresql": pg_version}
    for module in ("confluent_kafka", "psycopg2", "bullmq", "redis", "hiredis"):
        with contextlib.suppress(Exception):
            mod = __import__(module)
            versions[module] = getattr(mod, "__version__", None) or getattr(mod, "version", lambda: "?")()
    with contextlib.suppress(Exception):
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    redis_server = _cmd(["redis-server", "--version"])
    if redis_server:
        match = re.search(r"v=(\S+)", redis_server)
        versions["redis_server"] = match.group(1) if match else redis_server
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()  # noqa: S607
    versions["java"] = java[0] if java else ""
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _cmd(["bash", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "versions": versions,
        "postgres_settings": pg_settings,
        "load_average_at_start": os.getloadavg(),
    }


# --- the benchmark environment -------------------------------------------------------------------------


class BenchEnv:
    """A private database (migrated, seeded on demand) and factories for per-run settings and campaigns."""

    def __init__(self, base: Settings | None = None, *, keep_db: bool = False, log_dir: Path | None = None) -> None:
        self.base = base or load_settings()
        self.keep_db = keep_db
        self.dbname = f"campaigns_bench_{uuid.uuid4().hex[:8]}"
        self.database = self.base.database.model_copy(update={"name": self.dbname})
        self.log_dir = log_dir or RESULTS_DIR / "logs"
        self._seeded: dict[int, tuple[SeedPlan, int]] = {}  # audience size -> (plan, segment id)
        self._engine = None
        self.service: CampaignService | None = None

    # lifecycle
    def __enter__(self) -> BenchEnv:
        admin = psycopg2.connect(self.base.database.for_migrations().model_copy(update={"name": "postgres"}).dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.dbname}"')
        admin.close()
        upgrade(self.database)
        self._engine = make_engine(self.database)
        sessions = make_sessionmaker(self._engine)
        self.service = CampaignService(sessions)
        with transaction(sessions) as session:
            for kind in ("email", "sms", "whatsapp"):
                repo.upsert_channel(
                    session,
                    id=f"{kind}-bench",
                    kind=kind,
                    provider="bench",
                    rate_per_s=1_000_000,
                    burst=1_000_000,
                )
            # The harness sends inline content as a marketer: its own database lets marketers send unapproved
            # content (off by default).
            repo.grant_permission(session, "marketer", "content.send_unapproved")
        self.service.provision_principal(ACTOR, "marketer")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self.keep_db:
            log.info("kept database %s", self.dbname)
            return
        admin = psycopg2.connect(self.base.database.for_migrations().model_copy(update={"name": "postgres"}).dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        admin.close()

    def dsn(self) -> str:
        return self.database.dsn()

    def connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.dsn())

    # settings and processes
    def settings(self, prefix: str) -> Settings:
        return self.base.model_copy(
            update={
                "database": self.database,
                "kafka": self.base.kafka.model_copy(update={"topic_prefix": prefix}),
            }
        )

    @staticmethod
    def new_prefix(tag: str) -> str:
        return f"bench-{tag}-{uuid.uuid4().hex[:8]}."

    def child_env(self, prefix: str, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that loads the same settings (our database, this run's topics)."""
        env = dict(os.environ)
        env.update(
            {
                "CAMPAIGNS_DATABASE__HOST": self.database.host,
                "CAMPAIGNS_DATABASE__PORT": str(self.database.port),
                "CAMPAIGNS_DATABASE__USER": self.database.user,
                "CAMPAIGNS_DATABASE__PASSWORD": self.database.password.get_secret_value(),
                "CAMPAIGNS_DATABASE__NAME": self.dbname,
                "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": self.base.kafka.bootstrap_servers,
                "CAMPAIGNS_KAFKA__TOPIC_PREFIX": prefix,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
                # Each worker its own /metrics port: several run at once (and other workers on this host).
                "CAMPAIGNS_METRICS_PORT": str(free_port()),
            }
        )
        env.update(extra)
        return env

    # audiences and campaigns
    def audience(self, n: int) -> tuple[SeedPlan, int]:
        """A segment of exactly ``n`` customers (seeded once per size; ~3% opted out or inactive)."""
        if n not in self._seeded:
            first = (len(self._seeded) + 1) * BLOCK
            while first < n:
                first += BLOCK
            plan = SeedPlan(customers=n, first_id=first, segments=1, segment_prefix=f"bench-{n}")
            started = time.monotonic()
            segment_ids = seed(self.dsn(), plan)
            log.info("seeded %d customers in %.1fs", n, time.monotonic() - started)
            self._settle_audience()
            self._seeded[n] = (plan, segment_ids[0])
        return self._seeded[n]

    def _settle_audience(self) -> None:
        """ANALYZE and VACUUM the audience tables as their owner: every design then reads them as a running
        deployment does, statistics current and pages all-visible (index-only scans, hint bits set), not as the
        first reader after a bulk import, who alone pays for the whole import's visibility checks. Without it
        the first round after a seed paid them (the page reads' PostgreSQL CPU in one run of the same code
        varied 0.34-4.25 s with autovacuum's timing), and the designs that read second got them for free.
        ``RuntimeError`` if PostgreSQL skipped a table (an ANALYZE by the application role is skipped with only
        a WARNING: the harness's ANALYZE did nothing before this, unseen)."""
        conn = psycopg2.connect(self.database.for_migrations().dsn())
        try:
            conn.autocommit = True  # VACUUM runs outside a transaction
            with conn.cursor() as cur:
                # VACUUM marks a page all-visible only once its rows' commit is flushed to the WAL (hint bits wait
                # for it), and the seed may have committed asynchronously (the tests' cluster runs with
                # synchronous_commit off): the ANALYZE's own synchronous commit flushes the WAL past the seed's.
                cur.execute("SET synchronous_commit = on")
                cur.execute("ANALYZE customers, segment_members")
                cur.execute("VACUUM customers, segment_members")
            skipped = [notice.strip() for notice in conn.notices if "skipping" in notice]
        finally:
            conn.close()
        if skipped:
            raise RuntimeError(f"bench: PostgreSQL did not vacuum the audience: {'; '.join(skipped)}")

    def create_campaign(
        self,
        *,
        channel: str,
        batch_size: int,
        segment: int | None = None,
        manual: Sequence[int] = (),
        name: str = "bench",
    ) -> uuid.UUID:
        assert self.service is not None
        content = (
            {"subject": "Spring sale", "body": "<p>Hello! 20% off everything this week.</p>"}
            if channel == "email"
            else {"body": "Hello! 20% off everything this week. Reply STOP to opt out."}
        )
        payload: dict[str, Any] = {
            "name": name,
            "channel": channel,
            "content": content,
            "batch_size": batch_size,
            "retry_policy": {"max_retries": 3, "backoff_base_s": 0.5, "backoff_max_s": 5},
        }
        if segment is not None:
            payload["segments"] = [str(segment)]
        if manual:
            payload["manual_recipients"] = [str(m) for m in manual]
        return self.service.create_campaign(ACTOR, payload)

    def schedule(self, campaign_id: uuid.UUID, start_at: datetime | None = None) -> None:
        assert self.service is not None
        self.service.schedule_campaign(ACTOR, campaign_id, start_at or datetime.now(UTC))

    def campaign_row(self, campaign_id: uuid.UUID) -> dict[str, Any]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT status, start_at, activated_at, finished_at, total_recipients, expansion_done "
                "FROM campaigns WHERE id = %s",
                (str(campaign_id),),
            )
            row = cur.fetchone()
        conn.close()
        keys = ("status", "start_at", "activated_at", "finished_at", "total_recipients", "expansion_done")
        return dict(zip(keys, row, strict=True))

    def wait_finished(
        self, campaign_ids: Sequence[uuid.UUID], timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> None:
        ids = [str(c) for c in campaign_ids]
        conn = self.connect()
        conn.autocommit = True
        try:

            def done() -> bool:
                if not alive():
                    raise RuntimeError("bench: the worker process exited during the run (see its log)")
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM campaigns WHERE id = ANY(%s::uuid[]) "
                        "AND status IN ('completed', 'failed', 'cancelled')",
                        (ids,),
                    )
                    return bool(cur.fetchone()[0] == len(ids))

            wait_for(done, timeout=timeout, interval=0.1, what=f"{len(ids)} campaign(s) to complete")
        finally:
            conn.close()

    def wait_analytics(self, campaign_id: uuid.UUID, timeout: float, alive: Callable[[], bool] = lambda: True
                       ) -> float | None:
        """Seconds until the campaign's analytics totals equal its recipient log, or None if they did not within
        ``timeout``. A campaign completes from the log (the completion sweep), so the Faust analytics may still be
        counting its last outcomes then: how long depends on the machine, and reading them at completion made
        the run's verdict depend on it (seen with 12 partitions: 82,196 of 96,990 sends counted at completion)."""
        t0 = time.monotonic()
        conn = self.connect()  # one connection for every poll: a new backend each time would be measured
        conn.autocommit = True

        def caught_up() -> bool:
            if not alive():
                raise RuntimeError("bench: the worker process exited during the run (see its log)")
            with conn.cursor() as cur:
                cur.execute(CAUGHT_UP_SQL, {"campaign": str(campaign_id)})
                return bool(cur.fetchone()[0])

        try:
            wait_for(caught_up, timeout=timeout, interval=0.1, what="analytics equal to the recipient log")
        except TimeoutError:
            return None
        finally:
            conn.close()
        return time.monotonic() - t0

    def log_counts(self, campaign_id: uuid.UUID) -> dict[str, int]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s GROUP BY status",
                (str(campaign_id),),
            )
            rows = dict(cur.fetchall())
        conn.close()
        return rows

    def analytics_totals(self, campaign_id: uuid.UUID) -> dict[str, int]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT sent, failed, skipped, cancelled FROM campaign_analytics "
                "WHERE campaign_id = %s AND window_start IS NULL",
                (str(campaign_id),),
            )
            row = cur.fetchone() or (0, 0, 0, 0)
        conn.close()
        return dict(zip(("sent", "failed", "skipped", "cancelled"), row, strict=True))

    def reset_tables(self) -> None:
        """Empty the per-recipient tables and retire unfinished campaigns, so every run starts from the same
        state (the seeded audiences stay)."""
        # TRUNCATE is the tables' owner's (the migration role); the application role may only delete rows.
        with psycopg2.connect(self.database.for_migrations().dsn()) as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE campaign_recipient_log, campaign_analytics, "
                        "campaign_analytics_parts, outbox")
            # A campaign a previous run left unfinished (the expansion scenario has no senders, a failed run
            # stops mid-way) must not be picked up by the next run's worker or poller.
            cur.execute(
                "UPDATE campaigns SET status = 'cancelled', expansion_done = true "
                "WHERE status IN ('scheduled', 'active', 'paused')"
            )
        conn.close()
        # Every run starts right after a checkpoint: otherwise a run that happens to meet one (every 5 min, or
        # on WAL volume) pays for the dirty pages of the runs before it, and full-page writes after it make its
        # WAL heavier (seen: PostgreSQL 0.06 -> 0.13 CPU s per 1,000 recipients from one round to the next).
        # The migration role may (GRANT pg_checkpoint, ops/postgres/postgres.sh).
        conn = psycopg2.connect(self.database.for_migrations().dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
        finally:
            conn.close()


def delete_run_topics(settings: Settings, prefix: str) -> None:
    """Delete every topic and consumer group whose name starts with ``prefix`` (best effort)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka.as_librdkafka())
    with contextlib.suppress(Exception):
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(30)
    with contextlib.suppress(Exception):
        groups = [g.group_id for g in admin.list_consumer_groups().result(10).valid if g.group_id.startswith(prefix)]
        if groups:
            for future in admin.delete_consumer_groups(groups).values():
                with contextlib.suppress(Exception):
                    future.result(10)


def wait_groups_ready(settings: Settings, groups: dict[str, str], timeout: float = 60.0) -> None:
    """Wait until each consumer group (name -> topic it consumes) owns every partition of its topic."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka.as_librdkafka())
    partitions = settings.kafka.partitions

    def ready() -> bool:
        try:
            described = admin.describe_consumer_groups(list(groups))
            for name, future in described.items():
                group = future.result(10)
                owned = {
                    (tp.topic, tp.partition)
                    for m in group.members
                    for tp in (m.assignment.topic_partitions if m.assignment else [])
                }
                if sum(1 for t, _ in owned if t == groups[name]) < partitions:
                    return False
            return True
        except Exception:  # the group does not exist yet
            return False

    wait_for(ready, timeout=timeout, interval=0.2, what=f"consumer groups {sorted(groups)} to be assigned")


@dataclass
class Subprocess:
    """A child process with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Subprocess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - the harness's own arguments, no shell
            self.args,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._out = out
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def running(sub: Subprocess) -> Iterator[Subprocess]:
    sub.start()
    try:
        yield sub
    finally:
        sub.stop()


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def python() -> str:
    return sys.executable
