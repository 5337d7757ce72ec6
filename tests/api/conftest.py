"""``campaigns api`` started as a subprocess the way a user runs it, on the real services.

Builds on ``tests/entrypoints/conftest.py`` (:class:`EntryPoints`: the test's database and topic prefix, the
``campaigns`` console script, processes ended afterwards, no secret in their logs). :class:`Api` is a small client
(httpx) that keeps the answer's status, headers and JSON together.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from campaigns.settings import Settings
from tests.entrypoints.conftest import EntryPoints, entry_points, query
from tests.faults.procs import Proc, Secrets, free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: Any

    @property
    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), (self.status, self.body)
        return self.body


class Api:
    """The API of one ``campaigns api`` process."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base, timeout=30)

    def call(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
             content: bytes | None = None, headers: dict[str, str] | None = None,
             params: Any = None) -> Answer:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            content = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        response = self.client.request(method, path, content=content, headers=all_headers, params=params)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Answer(response.status_code, response.headers, body)

    def first_event(self, path: str, token: str, timeout: float = 30) -> tuple[int, str, dict[str, Any] | None]:
        """Status, content type and the first ``snapshot`` event of a server-sent event stream."""
        with httpx.Client(base_url=self.base, timeout=timeout) as client, client.stream(
                "GET", path, headers={"Authorization": f"Bearer {token}"}) as response:
            kind = response.headers.get("content-type", "")
            if response.status_code != 200:
                response.read()
                return response.status_code, kind, response.json()
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "snapshot":
                    return 200, kind, json.loads(line[5:])
        return 200, kind, None

    def close(self) -> None:
        self.client.close()


def start_api(entry: EntryPoints, **env: str) -> Api:
    port = free_port()
    proc = entry.start("api", "api", "--port", str(port), **env)
    api = Api(proc, port)

    def healthy() -> bool:
        assert proc.alive, f"campaigns api exited:\n{proc.log_text()[-4000:]}"
        try:
            return api.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=60, interval=0.2, what="campaigns api answering /healthz")
    return api


@pytest.fixture
def entry(settings: Settings, tmp_path: Path) -> Iterator[EntryPoints]:
    with entry_points(settings, Secrets(), tmp_path / "logs") as procs:
        yield procs


@pytest.fixture
def api(entry: EntryPoints) -> Iterator[Api]:
    # Tests make requests much faster than a client would; the rate limit has its own test.
    server = start_api(entry, CAMPAIGNS_API__RATE_PER_S="1000", CAMPAIGNS_API__BURST="1000")
    try:
        yield server
    finally:
        server.close()
        log = server.proc.log_text()
        assert "Traceback" not in log, f"the API server logged a traceback:\n{log[-4000:]}"


def campaign_count(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM campaigns")[0][0])
