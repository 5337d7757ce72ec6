"""Private Kafka and PostgreSQL instances for the scenarios that stop, kill and restart them.

They run through the project's own ops scripts (``ops/kafka/kafka.sh``, ``ops/postgres/postgres.sh``) with
their own state directory and ports, so a broker or database restart never disturbs the services every
other test (or anyone else on this machine) is using. Everything is bounded: every start waits for the
service to answer, every stop for it to be gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.procs import REPO_ROOT, free_port


def _state_dir(kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"campaigns-faults-{kind}-", dir="/tmp"))
    path.chmod(0o755)  # the postgres OS user (when tests run as root) must reach it
    return path


class _OpsService:
    script: str

    def __init__(self, kind: str, env: dict[str, str]) -> None:
        self.state = _state_dir(kind)
        self.env = {**os.environ, "PYTHON": sys.executable, "CAMPAIGNS_STATE_DIR": str(self.state), **env}

    def _run(self, action: str, timeout: float) -> None:
        result = subprocess.run([str(REPO_ROOT / self.script), action], env=self.env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{self.script} {action} failed ({result.returncode}): "
                                 f"{result.stderr[-2000:]}{result.stdout[-1000:]}")

    def start(self, timeout: float = 240.0) -> float:
        """Start and wait until it answers; returns the seconds it took."""
        started = time.monotonic()
        self._run("start", timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 120.0) -> None:
        self._run("stop", timeout)


class PrivateKafka(_OpsService):
    """A one-node KRaft broker of the project's pinned version, on free ports."""

    script = "ops/kafka/kafka.sh"

    def __init__(self) -> None:
        self.port = free_port()
        super().__init__("kafka", {"CAMPAIGNS_KAFKA_PORT": str(self.port),
                                   "CAMPAIGNS_KAFKA_CONTROLLER_PORT": str(free_port()),
                                   "CAMPAIGNS_KAFKA_START_TIMEOUT": "200"})
        self.bootstrap = f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int((self.state / "kafka" / "kafka.pid").read_text().strip())

    def kill9(self, timeout: float = 30.0) -> None:
        """SIGKILL the broker process (no clean shutdown) and wait until it is gone."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"broker {pid} still alive {timeout}s after SIGKILL")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.state, ignore_errors=True)


class PrivatePostgres(_OpsService):
    """A private PostgreSQL cluster (initdb of the OS packages) with the ``campaigns`` role and database."""

    script = "ops/postgres/postgres.sh"

    def __init__(self) -> None:
        self.port = free_port()
        super().__init__("postgres", {"CAMPAIGNS_PG_PORT": str(self.port)})
        if os.geteuid() == 0:
            # As root the script falls back to a directory shared per checkout when the postgres user cannot
            # reach the state directory; that would be the shared cluster. Refuse rather than touch it.
            reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(self.state)],
                                       capture_output=True, check=False).returncode == 0
            if not reachable:
                raise AssertionError(f"the postgres OS user cannot reach {self.state}; not starting a cluster")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            data = self.state / "postgres"
            if data.is_symlink():  # never remove a cluster this object did not create
                raise AssertionError(f"{data} is a symlink: refusing to delete it")
            shutil.rmtree(self.state, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
