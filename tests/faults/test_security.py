"""Security: secrets never leave the process, and every service listens on loopback only.

Every fault scenario already greps its processes' logs for its canary secrets when it tears down (see
``tests/faults/conftest.py``). This test adds the paths most likely to leak: provider errors caused by a
wrong credential (a 401 for every call), SMTP with AUTH, the ``/metrics`` endpoint of every worker, the
failure reasons written to ``campaign_recipient_log`` and the dead letters. It also checks what every
process listens on: the provider simulator, the workers' metrics endpoints, and the project's Kafka
broker and PostgreSQL when they run from this checkout.
"""

from __future__ import annotations

import ipaddress
import urllib.request
import uuid
from pathlib import Path

import psutil
import psycopg2

from tests.faults.conftest import create_campaign, set_channel, wait_finished
from tests.faults.history import dead_letters
from tests.faults.procs import REPO_ROOT
from tests.helpers import wait_for


def _listening(pid: int) -> list[tuple[str, int]]:
    process = psutil.Process(pid)
    sockets = []
    for proc in [process, *process.children(recursive=True)]:
        sockets += [(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
    return sockets


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # a JVM binds 127.0.0.1 as ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _paused_reason(dsn: str, kind: str) -> str | None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT paused_reason FROM channels WHERE kind = %s AND enabled", (kind,))
        reason = cur.fetchone()[0]
    conn.close()
    return reason


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def test_secrets_stay_secret_and_services_bind_loopback(settings, service, sessions, audience, cluster, secrets):
    set_channel(sessions, "whatsapp", 500, 50)
    set_channel(sessions, "email", 500, 50)
    _plan, segments = audience(600)
    simulator = cluster.start_simulator("--seed", "11", "--transient-error-rate", "0.2")
    wrong_token = f"wa-wrong-canary-{uuid.uuid4().hex}"
    workers = [
        cluster.start_worker("scheduler,expander,tally,completion", "whatsapp,email"),
        # This worker's WhatsApp token is wrong: every WhatsApp call is refused with a 401.
        cluster.start_worker("senders", "whatsapp,email", CAMPAIGNS_PROVIDERS__WHATSAPP_TOKEN=wrong_token),
    ]
    refused = create_campaign(service, "whatsapp", segments[:1], failure_threshold=0.5)
    mailed = create_campaign(service, "email", segments[1:2])
    dsn = settings.database.dsn()
    # The 401 opens the WhatsApp channel's breaker: the channel pauses, nobody is failed for our credential.
    wait_for(lambda: _paused_reason(dsn, "whatsapp") == "unauthorized", timeout=120, what="whatsapp paused")
    wait_finished(settings, mailed, timeout=120, cluster=cluster)
    assert simulator.stats("whatsapp")["unauthorized"] > 0
    assert simulator.stats("email")["accepted"] > 0  # SMTP AUTH with the canary password worked

    canaries = {**secrets.all(), "wrong_whatsapp_token": wrong_token}
    texts: dict[str, str] = {}
    for worker in workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as response:
            texts[f"{worker.name} /metrics"] = response.read().decode()
        texts[f"{worker.name} log"] = worker.log_text()
    assert "refused our account (unauthorized)" in texts[f"{workers[1].name} log"]
    # The credential is fixed (the sender restarts with the right token): a half-open probe closes the
    # channel and the campaign completes.
    workers[1].terminate()
    workers.append(cluster.start_worker("senders", "whatsapp,email"))
    wait_finished(settings, refused, timeout=120, cluster=cluster)
    assert _paused_reason(dsn, "whatsapp") is None
    texts[f"{workers[1].name} log"] = workers[1].log_text()
    texts["simulator log"] = simulator.proc.log_text()
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(string_agg(DISTINCT failure_reason, '|'), '') FROM campaign_recipient_log")
        texts["campaign_recipient_log.failure_reason"] = cur.fetchone()[0]
        cur.execute("SELECT coalesce(string_agg(detail::text, '|'), '') FROM audit_log")
        texts["audit_log"] = cur.fetchone()[0]
    conn.close()
    texts["dead letters"] = "|".join(f"{d['reason']} {d['detail']}" for d in dead_letters(settings))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s GROUP BY 1",
                    (str(refused),))
        statuses = dict(cur.fetchall())
    conn.close()
    assert statuses.get("failed", 0) == 0 and statuses.get("sent", 0) > 0, statuses
    leaks = [f"{name} in {where}" for where, text in texts.items() for name, value in canaries.items()
             if value in text]
    assert not leaks, leaks

    # Listen addresses: loopback only.
    listeners = {"simulator": _listening(simulator.proc.pid)}
    for worker in (workers[0], workers[2]):
        listeners[worker.name] = _listening(worker.pid)
        assert listeners[worker.name], f"{worker.name} has no /metrics listener"
    for name, pid in (("kafka", _pid_file(REPO_ROOT / ".state" / "kafka" / "kafka.pid")),
                      ("postgres", _pid_file(REPO_ROOT / ".state" / "postgres" / "postmaster.pid"))):
        if pid is not None and psutil.pid_exists(pid):
            listeners[name] = _listening(pid)
    exposed = {name: [s for s in sockets if not _loopback(s[0])] for name, sockets in listeners.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"
    print(f"\nsecurity: {len(canaries)} canaries absent from {len(texts)} texts; listeners {listeners}")


def test_listen_address_is_configurable_but_loopback_by_default(cluster):
    """The simulator and a worker started with no address option listen on 127.0.0.1 only."""
    simulator = cluster.start_simulator()
    worker = cluster.start_worker("relay", "whatsapp")
    wait_for(lambda: _listening(worker.pid), timeout=60, what="the worker's /metrics listener")
    for name, pid in (("simulator", simulator.proc.pid), ("worker", worker.pid)):
        sockets = _listening(pid)
        assert sockets and all(_loopback(ip) for ip, _ in sockets), (name, sockets)
