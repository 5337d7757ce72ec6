"""Channel senders against the provider simulator over real HTTP (issue: channel senders).

What the provider received is read from the simulator's log, so duplicates and the real rate are
measured where they matter: at the provider.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import psycopg2
import pytest

from campaigns.codec import get_codec
from campaigns.settings import ProviderSettings
from simulator.thread import SimulatorThread
from streams.worker import Worker
from tests.faults.procs import Proc, Simulator, free_port
from tests.helpers import consume_to_end, wait_for

STAGES = ("scheduler", "expander", "senders", "tally", "completion")

TERMINAL = ("sent", "failed", "skipped", "cancelled")


def log_counts(settings, campaign_id) -> dict[str, int]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s GROUP BY 1",
                    (str(campaign_id),))
        return dict(cur.fetchall())


def accepted_per_message(simulator, channel: str) -> collections.Counter:
    return collections.Counter(m.message_id for m in simulator.query(channel=channel))


def create(service, segments, channel="sms", **extra):
    payload = {"name": f"{channel}-test", "channel": channel, "content": {"body": "hello"},
               "segments": segments, "batch_size": 200,
               "retry_policy": {"max_retries": 4, "backoff_base_s": 0.2, "backoff_max_s": 1, "jitter": 0.1}}
    payload.update(extra)
    campaign_id = service.create_campaign("marketer-1", payload)
    service.schedule_campaign("marketer-1", campaign_id)
    return campaign_id


def set_rate(settings, channel: str, rate: float, burst: int) -> None:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("UPDATE channels SET rate_per_s = %s, burst = %s WHERE kind = %s AND enabled",
                    (rate, burst, channel))


class SimulatorProcess:
    """``python -m simulator`` in a process of its own, as a provider is: it stamps arrivals with no GIL shared with
    the workers. A simulator thread in the workers' process is starved by their threads while a campaign expands
    and stamps a backlog of requests at once: arrivals the provider would have seen spread out look bunched.
    (The process and its control API are the fault suite's ``Proc`` and ``Simulator``.)"""

    def __init__(self, log: Path) -> None:
        self._log = log

    def __enter__(self) -> Simulator:
        http_port, smtp_port = free_port(), free_port()
        argv = [sys.executable, "-m", "simulator", "--http-port", str(http_port), "--smtp-port", str(smtp_port)]
        self._proc = Proc("simulator", argv, dict(os.environ), self._log)
        simulator = Simulator(self._proc, http_port, smtp_port)
        wait_for(lambda: simulator.healthy() or not self._proc.alive, timeout=30, what="simulator health")
        assert self._proc.alive, self._proc.log_text()[-2000:]
        return simulator

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()


def provider_settings(simulator: Simulator, providers: ProviderSettings) -> ProviderSettings:
    """``providers`` pointed at ``simulator``."""
    return providers.model_copy(update={"sms_base_url": f"{simulator.url}/sms",
                                        "whatsapp_base_url": f"{simulator.url}/whatsapp",
                                        "smtp_port": simulator.smtp_port})


def accepted_at(simulator: Simulator, channel: str) -> list[float]:
    """When each accepted message arrived at ``simulator`` (epoch seconds), in order."""
    return sorted(m["accepted_at"] for m in simulator.messages(channel))


def finished(service, campaign_id):
    view = service.get_campaign("marketer-1", campaign_id)
    return view.status in ("completed", "failed", "cancelled") and view


def test_transient_failures_retried_then_sent_once_permanent_to_dlq(settings, service, audience):
    plan, segments = audience(300)
    bad_phone = f"+1555{plan.first_id + 1:09d}"
    with SimulatorThread(permanent_failures=frozenset({bad_phone}), fail_next={"sms": 40}) as simulator:
        campaign_id = create(service, segments)
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("sms",),
                    rate_limits=False) as worker:
            view = wait_for(lambda: finished(service, campaign_id), timeout=90, what="campaign finished")
        assert worker.errors == []
        accepted = accepted_per_message(simulator, "sms")
        stats = simulator.stats()["sms"]

    counts = log_counts(settings, campaign_id)
    assert view.status == "completed"
    assert stats["transient_errors"] == 40
    assert set(accepted.values()) == {1}, "every message accepted exactly once by the provider"
    assert counts["sent"] == len(accepted)
    assert counts["failed"] == 1
    assert sum(counts.values()) == view.total_recipients
    dead = [get_codec().decode(r.value(), "DeadLetter") for r in
            consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("campaign.messages.dlq"))]
    assert [(d["recipient_id"], d["reason"]) for d in dead] == [(str(plan.first_id + 1), "permanent_failure")]
    assert "invalid" in dead[0]["detail"] or "21211" in dead[0]["detail"] or dead[0]["detail"]


def test_pause_then_resume_sends_every_recipient_exactly_once(settings, service, audience):
    _, segments = audience(600)
    set_rate(settings, "sms", 150, 20)
    with SimulatorThread() as simulator:
        campaign_id = create(service, segments)
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("sms",)):
            wait_for(lambda: len(simulator.query(channel="sms")) >= 100, timeout=60, what="100 sent")
            service.pause_campaign("marketer-1", campaign_id)
            # In flight when the pause landed: at most the batch being sent plus one campaign-state TTL.
            wait_for(lambda: (n := len(simulator.query(channel="sms"))) == len(simulator.query(channel="sms"))
                     and n, timeout=5, what="sends settle")
            at_pause = len(simulator.query(channel="sms"))
            service.resume_campaign("marketer-1", campaign_id)
            view = wait_for(lambda: finished(service, campaign_id), timeout=90, what="campaign finished")
        accepted = accepted_per_message(simulator, "sms")

    assert view.status == "completed"
    assert at_pause < view.total_recipients
    assert set(accepted.values()) == {1}
    counts = log_counts(settings, campaign_id)
    assert counts["sent"] == len(accepted)
    assert sum(counts.values()) == view.total_recipients


def test_cancel_mid_campaign_records_the_rest_cancelled(settings, service, audience):
    _, segments = audience(800)
    set_rate(settings, "sms", 100, 10)
    with SimulatorThread() as simulator:
        campaign_id = create(service, segments)
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("sms",)):
            wait_for(lambda: len(simulator.query(channel="sms")) >= 100, timeout=60, what="100 sent")
            service.cancel_campaign("marketer-1", campaign_id)
            view = service.get_campaign("marketer-1", campaign_id)
            wait_for(lambda: sum(log_counts(settings, campaign_id).get(s, 0) for s in TERMINAL)
                     == (service.get_campaign("marketer-1", campaign_id).total_recipients or -1),
                     timeout=60, what="every recipient terminal")
        accepted = accepted_per_message(simulator, "sms")

    counts = log_counts(settings, campaign_id)
    assert view.status == "cancelled"
    assert counts["cancelled"] > 0
    assert set(counts) <= set(TERMINAL)
    assert counts["sent"] == len(accepted) and set(accepted.values()) == {1}


@pytest.mark.parametrize(("workers", "resume"), [(1, False), (2, False), (1, True)])
def test_rate_limit_held_at_the_provider(settings, service, audience, workers, resume, tmp_path):
    """Arrivals at the provider in any 1 s window, from the campaign's first message: at a start (records are
    taken for tokens there are, never ahead of them), at a resume (1 worker) and across the rebalance of a
    second worker joining (2 workers), each with the default sender consumers per channel."""
    rate, burst = 60.0, 6
    _, segments = audience(850)  # > 12 s at the rate: a steady state with two 10 s windows
    set_rate(settings, "sms", rate, burst)
    with SimulatorProcess(tmp_path / "simulator.log") as simulator:
        campaign_id = create(service, segments)
        worker_settings = settings.model_copy(update={"providers": provider_settings(simulator, settings.providers)})
        stages = STAGES
        runners = [Worker(worker_settings, stages=stages if i == 0 else ("senders",), channels=("sms",))
                   for i in range(workers)]
        for runner in runners:
            runner.start()
        try:
            if resume:  # the limit holds at a resume too (the bucket refilled while paused)
                wait_for(lambda: len(accepted_at(simulator, "sms")) >= 300, timeout=60, what="300 sent")
                service.pause_campaign("marketer-1", campaign_id)
                service.resume_campaign("marketer-1", campaign_id)
            wait_for(lambda: finished(service, campaign_id), timeout=120, what="campaign finished")
        finally:
            for runner in runners:
                runner.stop()
        times = accepted_at(simulator, "sms")

    assert len(times) > 12 * rate
    start, end = times[0], times[-1]
    # Never more than rate + burst in any 1 s window (sliding, anchored at every send).
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        assert i - j + 1 <= rate + burst, f"{i - j + 1} sends in the 1 s before {t - start:.2f}s"
    # Over 10 s windows of the steady state: never above the rate (+5%). How close below the rate it gets is
    # a benchmark measurement (bench: rate scenario): a loaded machine can only slow the sender down, so a
    # lower bound here would judge the machine, not the code.
    window_start = start + 1.0
    while window_start + 10.0 <= end - 1.0:
        per_s = sum(1 for t in times if window_start <= t < window_start + 10.0) / 10.0
        assert per_s <= 1.05 * rate, f"{per_s:.1f}/s over [{window_start - start:.0f}s, +10s)"
        window_start += 2.0
