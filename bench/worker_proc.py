"""``python -m bench.worker_proc``: the production worker (``streams.worker.Worker``) in its own process,
with the benchmark's :class:`~bench.transport.CountingTransport` instead of the real providers.

Everything but the transport is what ``python -m streams.worker --channels email --no-rate-limits`` runs:
the same stages, threads, settings from the environment and logging. It exists because a subprocess
cannot be handed an in-process transport; ``docs/benchmarks.md`` proposes a ``--transport null`` option
for ``streams.worker`` that would make this wrapper unnecessary. On SIGTERM it stops the worker and
writes the transport's counts (calls, duplicates, first call per campaign) to ``--report``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from campaigns.collector import tune_collector
    from campaigns.logs import configure_logging
    from campaigns.settings import load_settings
    from streams.worker import STAGES, Worker

    from .transport import CountingTransport

    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    parser.add_argument(
        "--stages",
        default="scheduler,expander,senders,tally,completion",
        help=f"comma-separated subset of {','.join(STAGES)}",
    )
    parser.add_argument("--channels", default="email")
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--first-id", type=int, default=0, help="recipient id range counted in a bytearray")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)

    _producer_overrides()
    _consumer_overrides()
    for module in filter(None, os.environ.get("BENCH_PRELOAD", "").split(",")):
        # Experiments only: a module imported before the worker starts (e.g. one that patches a stage, to
        # measure a proposed change against the current code in interleaved rounds).
        __import__(module.strip())
    settings = load_settings()
    configure_logging(settings.log_level)
    tune_collector(settings.gc_young_threshold)  # as streams.worker.main does
    channels = args.channels.split(",")
    transports = {c: CountingTransport(c, first_id=args.first_id, count=args.count) for c in channels}
    worker = Worker(
        settings,
        stages=args.stages.split(","),
        channels=channels,
        transports=transports,
        rate_limits=not args.no_rate_limits,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    stop.wait()
    worker.stop()
    report = {
        "transports": {c: t.report() for c, t in transports.items()},
        "errors": [repr(e) for e in worker.errors],
        "sender_stats": {c: [dict(vars(s.stats)) for s in running] for c, running in worker.senders.items()},
    }
    args.report.write_text(json.dumps(report))
    return 0


def _producer_overrides() -> None:
    """Experiments only: ``BENCH_PRODUCER_OVERRIDES="linger.ms=20,compression.type=none"`` changes the
    librdkafka configuration of every ``KafkaProducer`` in this process (there is no setting for it)."""
    text = os.environ.get("BENCH_PRODUCER_OVERRIDES", "").strip()
    if not text:
        return
    import producers.kafka

    conf = dict(item.split("=", 1) for item in text.split(","))
    original = producers.kafka.KafkaProducer.__init__

    def patched(self: Any, kafka: Any, **overrides: Any) -> None:
        original(self, kafka, **{**conf, **overrides})

    producers.kafka.KafkaProducer.__init__ = patched  # type: ignore[method-assign]


def _consumer_overrides() -> None:
    """Experiments only: ``BENCH_CONSUMER_OVERRIDES="queued.max.messages.kbytes=8192"`` adds librdkafka
    configuration to every stage's consumer (``streams.runtime.build_consumer``)."""
    text = os.environ.get("BENCH_CONSUMER_OVERRIDES", "").strip()
    if not text:
        return
    import confluent_kafka

    import streams.runtime

    conf = dict(item.split("=", 1) for item in text.split(","))

    def consumer(config: dict[str, Any]) -> Any:
        return confluent_kafka.Consumer({**config, **conf})

    streams.runtime.Consumer = consumer  # type: ignore[assignment,misc]


if __name__ == "__main__":
    raise SystemExit(main())
