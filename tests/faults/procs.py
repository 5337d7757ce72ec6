"""Real processes for fault scenarios: workers (``python -m streams.worker``) and the provider simulator
(``python -m simulator``), started as subprocesses so a scenario can SIGKILL, SIGSTOP and restart them.

Every process is configured only through ``CAMPAIGNS_*`` environment variables (as in production), logs to
its own file (never a pipe a test could forget to drain), and is ended by :meth:`Cluster.close` by its pid.
Secrets are unique canary strings per test, so :meth:`Cluster.leaked_secrets` can grep every log for them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaigns.settings import Settings
from tests.helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Secrets:
    """Canary credentials: if one of these strings shows up in a log or on /metrics, a secret leaked.

    The database password is a canary too: the test cluster authenticates by ``trust``, so any password
    connects, and a leak of the DSN would show it."""

    whatsapp_token: str = field(default_factory=lambda: f"wa-canary-{uuid.uuid4().hex}")
    sms_auth_token: str = field(default_factory=lambda: f"sms-canary-{uuid.uuid4().hex}")
    smtp_password: str = field(default_factory=lambda: f"smtp-canary-{uuid.uuid4().hex}")
    db_password: str = field(default_factory=lambda: f"db-canary-{uuid.uuid4().hex}")

    def all(self) -> dict[str, str]:
        return {
            "whatsapp_token": self.whatsapp_token, "sms_auth_token": self.sms_auth_token,
            "smtp_password": self.smtp_password, "db_password": self.db_password,
        }


class Proc:
    """One subprocess with its log file. Signals go to its pid only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # closed by kill/terminate
        self.popen = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.metrics_port: int | None = None

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, rc={self.popen.poll()})"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap: no handler runs, nothing is flushed or committed."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._log.close()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 45.0) -> int:
        """SIGTERM (the worker's graceful stop), SIGKILL if it has not exited within ``timeout``."""
        if self.alive:
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._log.close()
        return int(self.popen.returncode)

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (the worker logs one object per line); other lines are skipped."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


class Simulator:
    """The provider simulator subprocess and its HTTP control API."""

    def __init__(self, proc: Proc, http_port: int, smtp_port: int) -> None:
        self.proc = proc
        self.http_port = http_port
        self.smtp_port = smtp_port
        self.url = f"http://127.0.0.1:{http_port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/_control/health", timeout=1.0).get("ok"))
        except OSError:
            return False

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_control/config", changes)

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        stats = self._call("GET", "/_control/stats")
        return stats[channel] if channel else stats

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        query = f"?channel={channel}" if channel else ""
        return self._call("GET", f"/_control/messages{query}", timeout=30.0)["messages"]

    def accepted_ids(self, channel: str) -> Counter[str]:
        """Message id -> how many times the provider accepted it (2+ = the customer got it twice)."""
        return Counter(m["message_id"] for m in self.messages(channel))

    def accepted_count(self, channel: str) -> int:
        return int(self.stats(channel)["accepted"])


class Cluster:
    """The processes of one scenario: they share the test's settings and canary secrets."""

    def __init__(self, settings: Settings, secrets: Secrets, log_dir: Path, *, claim_lease_s: float = 2.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.secrets = secrets
        self.log_dir = log_dir
        self.claim_lease_s = claim_lease_s
        self.extra_env = dict(extra_env or {})
        self.procs: list[Proc] = []
        self.simulator: Simulator | None = None
        self.provider_urls: dict[str, str] = {}
        self._counter = Counter[str]()

    # --- environment -----------------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The child environment: inherited non-CAMPAIGNS_ variables plus this scenario's settings."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
        env.update({
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "CAMPAIGNS_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
            "CAMPAIGNS_KAFKA__PARTITIONS": str(s.kafka.partitions),
            "CAMPAIGNS_DATABASE__HOST": s.database.host,
            "CAMPAIGNS_DATABASE__PORT": str(s.database.port),
            "CAMPAIGNS_DATABASE__USER": s.database.user,
            "CAMPAIGNS_DATABASE__NAME": s.database.name,
            # The real password: PostgreSQL authenticates by scram-sha-256 since migration 0006 (the canary
            # db_password can no longer stand in for it; the test password is too common a word to watch for).
            "CAMPAIGNS_DATABASE__PASSWORD": s.database.password.get_secret_value(),
            "CAMPAIGNS_PROVIDERS__WHATSAPP_TOKEN": self.secrets.whatsapp_token,
            "CAMPAIGNS_PROVIDERS__SMS_AUTH_TOKEN": self.secrets.sms_auth_token,
            "CAMPAIGNS_PROVIDERS__SMTP_USERNAME": "campaigns-relay",
            "CAMPAIGNS_PROVIDERS__SMTP_PASSWORD": self.secrets.smtp_password,
            "CAMPAIGNS_SENDER__CLAIM_LEASE_S": str(self.claim_lease_s),
            # Evictions are what these scenarios exercise, not how long the default takes: a dead or frozen
            # member leaves its groups after 10 s instead of 45 s (the broker's floor is 6 s).
            "CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS": "10000",
            "CAMPAIGNS_LOG_LEVEL": "info",
        })
        env.update(self.provider_urls)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def _name(self, base: str) -> str:
        self._counter[base] += 1
        return f"{base}-{self._counter[base]}"

    # --- processes -------------------------------------------------------------------------------

    def start_simulator(self, *args: str, http_port: int | None = None, smtp_port: int | None = None,
                        timeout: float = 30.0) -> Simulator:
        """``python -m simulator`` with SMTP AUTH; the workers started afterwards send to it.

        The WhatsApp customer service window is open to every number: fault scenarios send free-form text to
        seeded audiences that never wrote in (the simulator refuses that by default, as the Cloud API does).
        Pass ``--template-file FILE`` in ``args`` for WhatsApp template campaigns.
        """
        http_port = http_port or free_port()
        smtp_port = smtp_port or free_port()
        name = self._name("simulator")
        argv = [sys.executable, "-m", "simulator", "--http-port", str(http_port), "--smtp-port", str(smtp_port),
                "--smtp-user", "campaigns-relay", "--smtp-password", self.secrets.smtp_password,
                "--open-service-window", *args]
        proc = Proc(name, argv, self.env(), self.log_dir / f"{name}.log")
        self.procs.append(proc)
        simulator = Simulator(proc, http_port, smtp_port)
        wait_for(lambda: simulator.healthy() or not proc.alive, timeout=timeout, interval=0.1,
                 what="provider simulator health")
        assert proc.alive, f"simulator exited: {proc.log_text()[-2000:]}"
        self.simulator = simulator
        self.point_providers_at(f"127.0.0.1:{http_port}", smtp_port)
        return simulator

    def point_providers_at(self, http_hostport: str, smtp_port: int) -> None:
        """Where workers started from now on send (e.g. through a fault-injecting proxy)."""
        self.provider_urls = {
            "CAMPAIGNS_PROVIDERS__WHATSAPP_BASE_URL": f"http://{http_hostport}/whatsapp",
            "CAMPAIGNS_PROVIDERS__SMS_BASE_URL": f"http://{http_hostport}/sms",
            "CAMPAIGNS_PROVIDERS__SMTP_HOST": "127.0.0.1",
            "CAMPAIGNS_PROVIDERS__SMTP_PORT": str(smtp_port),
        }

    def start_worker(self, stages: str, channels: str = "whatsapp", *, name: str | None = None,
                     rate_limits: bool = True, metrics_port: int | None = None, **env: str) -> Proc:
        """``python -m streams.worker --stages STAGES --channels CHANNELS`` (its own metrics port)."""
        name = self._name(name or stages.replace(",", "+"))
        metrics_port = metrics_port or free_port()
        argv = [sys.executable, "-m", "streams.worker", "--stages", stages, "--channels", channels,
                "--metrics-port", str(metrics_port)]
        if not rate_limits:
            argv.append("--no-rate-limits")
        proc = Proc(name, argv, self.env(**env), self.log_dir / f"{name}.log")
        proc.metrics_port = metrics_port
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive:
                proc.terminate(timeout=20.0)

    # --- inspection ------------------------------------------------------------------------------

    def crashed_stages(self) -> list[str]:
        """``stage ... crashed`` lines logged by any worker (a stage that died and was rebuilt)."""
        out = []
        for proc in self.procs:
            for record in proc.log_records():
                if "crashed" in str(record.get("msg", "")):
                    out.append(f"{proc.name}: {record.get('msg')} {str(record.get('exc', ''))[-300:]}")
        return out

    def leaked_secrets(self, extra_texts: dict[str, str] | None = None) -> list[str]:
        """Every (log or text, secret name) where a canary secret appears."""
        texts = {proc.name: proc.log_text() for proc in self.procs}
        texts.update(extra_texts or {})
        return [f"{secret} in {where}" for where, text in texts.items()
                for secret, value in self.secrets.all().items() if value in text]
