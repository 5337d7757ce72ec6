"""The worker process (``campaigns worker``): every stage of the pipeline, each in its own thread.

| stage      | runs on                               | why                                              |
|------------|---------------------------------------|--------------------------------------------------|
| scheduler  | a loop over the due-campaign index    | conditional UPDATE: activated once by any number |
| expander   | PostgreSQL keyset pages -> librdkafka | one query and one flush per page                 |
| senders    | batched confluent-kafka consumers     | per-event Faust machinery capped this stage at ~4.5k/s |
| tally      | Faust worker, a supervised child      | windowed Faust tables -> campaign_analytics      |
| completion | NOTIFY of new totals + a 2 s sweep    | completion + the backstop failure threshold      |
| receipts   | batched confluent-kafka consumer      | provider receipts applied once per row, in PostgreSQL |
| relay      | outbox -> campaign.events             | transactional outbox                             |

Several workers scale out through Kafka partitions (senders, tally) and PostgreSQL locks (expander).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg2
import sqlalchemy.exc
from confluent_kafka import KafkaException

from campaigns.core.breaker import CampaignBreakers
from campaigns.core.vocabulary import CHANNELS
from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction
from campaigns.errors import ServiceUnavailable, SinkError
from campaigns.service import CampaignService
from campaigns.settings import Settings
from campaigns.transports import build_transports
from campaigns.transports.base import Transport
from producers.kafka import KafkaProducer
from streams.expansion import Expander
from streams.sender import ChannelSender

log = logging.getLogger(__name__)

# A stage crashing this often in a minute is reported as crash-looping (error level, with its restarts metric).
MAX_RESTARTS_PER_MINUTE = 5
MAX_RESTART_BACKOFF_S = 10.0
# Why a stage may fail to build or run that a restart will fix once the service is back.
UNREACHABLE = (psycopg2.OperationalError, sqlalchemy.exc.OperationalError, KafkaException, ServiceUnavailable,
               SinkError, OSError)

STAGES = ("scheduler", "expander", "senders", "tally", "completion", "receipts", "relay", "commands")


@dataclass
class Worker:
    """Starts the chosen stages in threads; :meth:`stop` stops them and waits (bounded)."""

    settings: Settings
    stages: Iterable[str] = STAGES
    channels: Iterable[str] = CHANNELS
    transports: dict[str, Transport] | None = None
    rate_limits: bool = True
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    senders: dict[str, list[ChannelSender]] = field(default_factory=dict)  # channel -> its sender consumers
    expander: Expander | None = None
    commands: Any = None  # streams.commands.CommandConsumer of the commands stage, once built
    errors: list[BaseException] = field(default_factory=list)
    metrics: Any = None  # campaigns.metrics.PipelineMetrics, optional
    restarts: dict[str, int] = field(default_factory=dict)  # stage -> crashes survived by a restart
    failed: str | None = None  # why the worker stopped itself (a stage that cannot run), else None

    def start(self) -> Worker:
        from producers.topics import ensure_topics, topic_specs

        stages = set(self.stages)
        unknown = stages - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
        self.channels = tuple(self.channels)  # iterated more than once below
        if self.metrics is None and self.settings.metrics_enabled:
            from campaigns.metrics import PipelineMetrics

            self.metrics = PipelineMetrics(self.settings, channels=self.channels)
        ensure_topics(self.settings.kafka, topic_specs(self.settings))
        engine = make_engine(self.settings.database)
        sessions = make_sessionmaker(engine)
        service = CampaignService(sessions, clock=self.clock)
        producer_for = lambda: KafkaProducer(self.settings.kafka)  # noqa: E731 - one producer per thread

        if "scheduler" in stages:
            self._spawn("scheduler", lambda: lambda: self._schedule(service, sessions))
        if "expander" in stages:
            def expander() -> Callable[[], None]:
                self.expander = Expander(self.settings, producer_for(), clock=self.clock,
                                         metrics=self.metrics)
                return lambda: self.expander.run_forever(self.stop_event)  # type: ignore[union-attr]

            self._spawn("expander", expander)
        if "senders" in stages:
            with transaction(sessions) as session:
                limits = repo.channel_limits(session)
            transports = self.transports
            consumers = self.settings.sender.consumers
            for channel in self.channels:
                rate, burst = limits.get(channel, (None, None)) if self.rate_limits else (None, None)
                self.senders[channel] = []
                breakers = CampaignBreakers()  # one set per channel, shared by its consumers (and their rebuilds)
                if self.metrics is not None:
                    self.metrics.watch_rate_limiter(channel, partial(_combined_rate, self.senders[channel]))
                for i in range(consumers):
                    def sender(channel: str = channel, rate: float | None = rate, burst: int | None = burst,
                               i: int = i, breakers: CampaignBreakers = breakers):  # type: ignore[no-untyped-def]
                        transport = (transports or build_transports(self.settings.providers))[channel]
                        built = ChannelSender(self.settings, channel, transport, producer_for(),
                                              rate_per_s=rate, burst=burst, campaigns=service, metrics=self.metrics,
                                              breakers=breakers)
                        built.slot = i
                        running = self.senders[channel]  # a rebuilt sender replaces the one of its slot
                        running[:] = [s for s in running if s.slot != i] + [built]
                        return lambda: built.run_forever(self.stop_event)

                    self._spawn(f"sender-{channel}" if consumers == 1 else f"sender-{channel}-{i}", sender)
        if "receipts" in stages:
            from streams.receipts import ReceiptsStage

            def receipts() -> Callable[[], None]:
                built = ReceiptsStage(self.settings, producer_for(), metrics=self.metrics)
                return lambda: built.run_forever(self.stop_event)

            self._spawn("receipts", receipts)
        if "tally" in stages:
            from streams.tally import TallyProcess

            def tally() -> Callable[[], None]:
                built = TallyProcess(self.settings)
                return lambda: built.run_forever(self.stop_event)

            self._spawn("tally", tally)
        if "completion" in stages:
            from streams.completion import CompletionStage

            def completion() -> Callable[[], None]:
                built = CompletionStage(self.settings, service, metrics=self.metrics)
                return lambda: built.run_forever(self.stop_event)

            self._spawn("completion", completion)
        if "relay" in stages:
            from producers.outbox_relay import OutboxRelay

            def relay() -> Callable[[], None]:
                built = OutboxRelay(self.settings, sessions, KafkaProducer(self.settings.kafka))
                return lambda: built.run_forever(self.stop_event)

            self._spawn("relay", relay)
        if "commands" in stages:
            from streams.commands import CommandConsumer

            def commands() -> Callable[[], None]:
                built = self.commands = CommandConsumer(self.settings, service, metrics=self.metrics)
                return lambda: built.run_forever(self.stop_event)

            self._spawn("commands", commands)
        if self.metrics is not None and self.settings.metrics_enabled:
            try:
                self.metrics.start_http_server(self.settings.metrics_host, self.settings.metrics_port)
            except OSError as exc:  # e.g. a second worker on this host: keep working, without /metrics
                log.error("metrics endpoint %s:%d unavailable (%s); set CAMPAIGNS_METRICS_PORT",
                          self.settings.metrics_host, self.settings.metrics_port, exc)
        return self

    def _schedule(self, service: CampaignService, sessions) -> None:  # type: ignore[no-untyped-def]
        """Activate due campaigns; wake at the next start time (or every ``scheduler_interval_s``)."""
        interval = self.settings.scheduler_interval_s
        while not self.stop_event.is_set():
            activated = service.activate_due()
            if activated and self.metrics is not None:
                self.metrics.campaign_transition("active", len(activated))
            with transaction(sessions) as session:
                upcoming = repo.next_start_at(session)
            wait = interval
            if upcoming is not None:
                wait = min(interval, max(0.0, (upcoming - self.clock()).total_seconds()))
            self.stop_event.wait(wait)

    def _spawn(self, name: str, build: Callable[[], Callable[[], None]]) -> None:
        """Run a stage in a thread; if it crashes, count it, log it at error level and build it afresh.

        Never a silent crash loop: every restart is counted (``restarts``, ``campaigns_stage_restarts_total``)
        and logged, with a backoff from 1 s doubling to ``MAX_RESTART_BACKOFF_S``; a stage crashing
        ``MAX_RESTARTS_PER_MINUTE`` times in a minute is reported as crash-looping (error level). A stage that
        cannot even be *built* for a reason other than an unreachable service (a programming or configuration
        error, which a restart cannot fix) is fatal: the worker stops every stage and ``failed`` is set, so
        ``campaigns worker`` exits non-zero. An unreachable PostgreSQL or Kafka is ridden out, not fatal.
        """

        def run() -> None:
            crashes: list[float] = []
            backoff = 1.0
            while not self.stop_event.is_set():
                try:
                    body = build()
                except UNREACHABLE as exc:
                    crashes = self._crashed(name, exc, crashes, backoff, "could not be built")
                except Exception as exc:
                    self._fatal(name, exc, "could not be built")
                    return
                else:
                    try:
                        body()
                        return
                    except Exception as exc:
                        crashes = self._crashed(name, exc, crashes, backoff, "crashed")
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S) if len(crashes) > 1 else 1.0

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _crashed(self, name: str, exc: BaseException, crashes: list[float], backoff: float, what: str) -> list[float]:
        self.errors.append(exc)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if self.metrics is not None:
            self.metrics.stage_restarted(name)
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < 60.0] + [now]
        if len(crashes) >= MAX_RESTARTS_PER_MINUTE:
            log.error("stage %s is crash-looping: %d crashes in a minute (last: %s: %s); retrying in %.0f s",
                      name, len(crashes), type(exc).__name__, exc, backoff, extra={"stage": name})
        else:
            log.exception("stage %s %s; restarting in %.0f s", name, what, backoff, extra={"stage": name})
        return crashes

    def _fatal(self, name: str, exc: BaseException, what: str) -> None:
        self.errors.append(exc)
        self.failed = f"stage {name} {what}: {type(exc).__name__}: {exc}"
        log.critical("%s; stopping the worker", self.failed, exc_info=exc, extra={"stage": name})
        self.stop_event.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            log.warning("stages still running after %.0fs: %s", timeout, alive)
        if self.metrics is not None:
            self.metrics.stop_http_server()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _combined_rate(senders: list[ChannelSender]) -> Any:
    """One channel's rate limiter as the sum of its sender consumers' (each has its partitions' share)."""
    from campaigns.metrics import RateLimiterState

    states = [s for s in (sender.rate_limiter_state() for sender in list(senders)) if s is not None]
    if not states:
        return None
    return RateLimiterState(rate=sum(s.rate for s in states), share=sum(s.share for s in states),
                            channel_rate=states[0].channel_rate, tokens=sum(s.tokens for s in states))


def main(argv: list[str] | None = None) -> int:
    """``campaigns worker`` / ``python -m streams.worker``: run stages until SIGINT/SIGTERM."""
    import argparse
    import signal
    import sys

    from campaigns.collector import tune_collector
    from campaigns.logs import configure_logging
    from campaigns.settings import load_settings

    parser = argparse.ArgumentParser(prog="campaigns worker", description="run pipeline stages")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--channels", default=",".join(CHANNELS), help="channels to send (senders stage)")
    parser.add_argument("--no-rate-limits", action="store_true", help="ignore the channels' rate limits (benchmarks)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of the /metrics endpoint (default: CAMPAIGNS_METRICS_PORT, 9108)")
    parser.add_argument("--no-metrics", action="store_true", help="no metrics, no /metrics endpoint")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.metrics_port is not None or args.no_metrics:
        update = {"metrics_enabled": not args.no_metrics}
        if args.metrics_port is not None:
            update["metrics_port"] = args.metrics_port
        settings = settings.model_copy(update=update)
    configure_logging(settings.log_level)
    tune_collector(settings.gc_young_threshold)
    worker = Worker(settings, stages=args.stages.split(","), channels=args.channels.split(","),
                    rate_limits=not args.no_rate_limits)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    log.info("worker running stages %s", args.stages)
    while not stop.wait(0.5) and not worker.stop_event.is_set():
        pass
    worker.stop()
    if worker.failed:
        print(f"error: {worker.failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
