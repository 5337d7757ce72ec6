"""The live view: a Faust app that keeps windowed per-campaign analytics and serves them over HTTP.

Input: ``campaign.analytics`` (``CampaignAnalytics``, key = campaign id), the absolute ``campaign_analytics``
rows - per window, and the running totals - that the analytics publish after each write to PostgreSQL (and
the receipts stage after each receipt batch). PostgreSQL (``campaign_analytics``) stays the source of truth;
this view answers "how is campaign X doing right now" without a database query, for ``campaigns status
--watch`` and dashboards.

* Agent ``count_outcomes`` takes micro-batches (``take_events(batch_size, within=batch_within_s)``), decodes
  them with the project codec (raw Kafka values, ``campaigns.codec``), groups them per (campaign, window) and
  keeps the newest values (``campaigns.core.live.merge``): ONE table update per (campaign, window) and one per
  campaign per batch - a Faust table update per record costs ~70 us (an early prototype, not kept in the
  repository).
* Table ``campaign_to_window_counts``: tumbling windows of ``settings.analytics.window_s`` seconds (epoch
  aligned, the same windows as the analytics), keyed by campaign id; the event time is the row's
  ``window_start``, not the Kafka timestamp. Windows expire after ``window_s * live.windows_kept``.
* Table ``campaign_to_totals``: the newest totals row per campaign.
* View ``GET /campaigns/{campaign_id}/live[?at=<epoch s | ISO-8601>]``: totals, the current and previous
  window, sends/s. ``GET /live/stats``: what the agent has done (records, batches, table updates).

Guarantee: the tables hold, per key, the field-wise maximum of every row read for it; rows are absolute and
only grow, so that is the newest row, whatever the order, duplicates or re-deliveries (``merge`` is
idempotent). A crash between Faust's changelog flush and its offset commit re-delivers rows: harmless. A row
the analytics never published (they crashed between their database write and the send) is missing here until
the next change of that key publishes a newer one (PostgreSQL has it).

Nothing is built at import: :func:`build_app` makes the app from a :class:`Settings`; :func:`main` is the
``python -m streams.live worker -l info`` entry (settings from the environment).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables.wrappers import WindowWrapper
from faust.types import TP, EventT
from mode import want_seconds

from campaigns.codec import Codec, get_codec
from campaigns.core.live import merge, snapshot
from campaigns.core.windows import EPOCH, window_start_ms
from campaigns.errors import SchemaError
from campaigns.settings import Settings, load_settings
from producers.topics import ANALYTICS, TopicSpec, ensure_topics, topic_specs

log = logging.getLogger(__name__)

APP_NAME = "campaigns-live"
WINDOWS_TABLE = "campaign_to_window_counts"
TOTALS_TABLE = "campaign_to_totals"
LIVE_PATH = "/campaigns/{campaign_id}/live"
STATS_PATH = "/live/stats"

_MILLISECOND = timedelta(milliseconds=1)

# The source partition of the records being applied (see SourcePartitionedTable).
_source_partition: ContextVar[int | None] = ContextVar("live_source_partition", default=None)


class SourcePartitionedTable(faust.Table[Any, Any]):
    """A Faust table whose changes can be written outside Faust's per-event context.

    Faust sends a table change to the changelog partition of ``current_event()`` - the source record being
    processed - so that changelog partition N belongs to whichever worker owns source partition N. A batched
    agent (``take_events``) runs outside that context (the stream is drained by another task), so
    :meth:`LiveCounts.apply` names the source partition explicitly; without one, Faust's rule applies.
    """

    def partition_for_key(self, key: Any) -> int | None:
        partition = _source_partition.get()
        return super().partition_for_key(key) if partition is None else partition


@dataclass
class LiveStats:
    """What the agent has done since start (exposed on ``GET /live/stats``)."""

    records: int = 0  # campaign.analytics rows decoded
    stale: int = 0  # rows that raised nothing (re-delivered after a restart, or older than one already kept)
    undecodable: int = 0
    batches: int = 0
    window_updates: int = 0
    totals_updates: int = 0
    busy_s: float = 0.0  # time spent applying batches (decode + merge + table updates)
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["records_per_busy_s"] = self.records / self.busy_s if self.busy_s else None
        return out


class LiveCounts:
    """Keeps the newest ``campaign.analytics`` row per (campaign, window) and per campaign (the agent's body)."""

    def __init__(self, windows: WindowWrapper, totals: faust.Table[str, Any], window_s: int, codec: Codec) -> None:
        self.windows = windows
        self.totals = totals
        self.window_s = window_s
        self.codec = codec
        self.stats = LiveStats()

    def apply(self, events: Sequence[EventT[Any]]) -> None:
        """Decode, group per (campaign, window) - ``None`` for the totals rows - and update each key once."""
        started = time.perf_counter()
        stats = self.stats
        grouped: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        partition_of: dict[tuple[str, int | None], int] = {}
        for event in events:
            message = event.message
            try:
                row = self.codec.decode(event.value, "CampaignAnalytics")
            except SchemaError as exc:  # never stops the partition: log, count, move on
                stats.undecodable += 1
                log.warning("live: skipping undecodable record at %s[%d]@%d: %s",
                            message.topic, message.partition, message.offset, exc)
                continue
            stats.records += 1
            start = row["window_start"]
            # The table's window holding the row's window (the same one when both use analytics.window_s).
            start_ms = None if start is None else window_start_ms((start - EPOCH) // _MILLISECOND, self.window_s)
            key = (row["campaign_id"], start_ms)
            grouped.setdefault(key, []).append(row)
            partition_of[key] = message.partition
        for (campaign_id, start_ms), rows in grouped.items():
            with _writing_to(partition_of[(campaign_id, start_ms)]):
                if start_ms is None:
                    state = merge(self.totals[campaign_id], rows)
                    if state is not None:
                        self.totals[campaign_id] = state
                        stats.totals_updates += 1
                else:
                    windowed = self.windows.relative_to(start_ms / 1000)
                    state = merge(windowed[campaign_id].value(), rows)
                    if state is not None:
                        windowed[campaign_id] = state
                        stats.window_updates += 1
            if state is None:
                stats.stale += len(rows)
        stats.batches += 1
        stats.busy_s += time.perf_counter() - started

    def view(self, campaign_id: str, at_ms: int) -> dict[str, Any]:
        """The live-view JSON for one campaign at ``at_ms`` (epoch ms), from this worker's tables."""
        current_start = window_start_ms(at_ms, self.window_s)
        previous_start = current_start - self.window_s * 1000
        totals = self.totals[campaign_id]
        current = self.windows.relative_to(current_start / 1000)[campaign_id].value()
        previous = self.windows.relative_to(previous_start / 1000)[campaign_id].value()
        out = snapshot(campaign_id, totals, current, previous, window_s=self.window_s,
                       current_start_ms=current_start, at_ms=at_ms)
        out["seen"] = bool(totals)
        return out


@contextmanager
def _writing_to(partition: int) -> Iterator[None]:
    """Table changes made inside go to changelog ``partition`` (the source partition of the records)."""
    token = _source_partition.set(partition)
    try:
        yield
    finally:
        _source_partition.reset(token)


@dataclass
class LiveApp:
    """The built app and its parts (tests and the CLI reach the tables through this)."""

    app: faust.App
    settings: Settings
    counts: LiveCounts
    source_topic: str


def key_partition(campaign_id: str, partitions: int) -> int:
    """The partition the pipeline's producers put a campaign id in: librdkafka's default partitioner
    (``consistent_random``: CRC-32 of the key, modulo the partition count)."""
    return zlib.crc32(campaign_id.encode()) % partitions


def data_dir(settings: Settings) -> Path:
    """Faust's data directory for the live app, created with its parents.

    ``live.datadir``, else ``<system temp>/campaigns-live/<app id>``. Faust itself creates only the last level
    (``Path.mkdir`` without ``parents``) when the app starts, so a default or configured path whose parent does
    not exist yet (a fresh machine, a new ``/var/lib/...``) would crash the worker at start. With the ``memory://``
    store nothing but Faust's empty version and table directories lives there.
    """
    app_id = settings.kafka.topic(APP_NAME)
    path = Path(settings.live.datadir) if settings.live.datadir else Path(tempfile.gettempdir()) / APP_NAME / app_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_app(settings: Settings) -> LiveApp:
    """Build the Faust app, its tables, the ``count_outcomes`` agent and the web views from ``settings``."""
    kafka, live = settings.kafka, settings.live
    window_s = settings.analytics.window_s
    app_id = kafka.topic(APP_NAME)
    datadir = data_dir(settings)
    app = faust.App(
        app_id,
        broker=kafka.faust_broker,
        broker_credentials=kafka.faust_credentials(),  # the same SASL/TLS as the other clients, or None
        store=live.store,
        datadir=datadir,
        autodiscover=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",  # a new live app rebuilds what the topic still holds
        broker_session_timeout=live.session_timeout_s,
        topic_disable_leader=True,  # no leader-only timers here: skip the __assignor-__leader topic
        web_enabled=True,
        web_bind=live.web_host,
        web_host=live.web_host,
        web_port=live.web_port,
        Table=SourcePartitionedTable,
    )
    source_name = kafka.topic(ANALYTICS)
    source = app.topic(source_name, key_serializer="raw", value_serializer="raw")
    windows = app.Table(
        WINDOWS_TABLE, default=dict, partitions=kafka.partitions,
        help="The newest campaign.analytics row per campaign and tumbling window (event time = its window_start).",
    ).tumbling(timedelta(seconds=window_s), expires=timedelta(seconds=window_s * live.windows_kept))
    totals = app.Table(
        TOTALS_TABLE, default=dict, partitions=kafka.partitions,
        help="The newest campaign.analytics totals row per campaign.",
    )
    assert isinstance(windows, WindowWrapper) and isinstance(totals, faust.Table)  # for the type checker
    counts = LiveCounts(windows, totals, window_s, get_codec())

    @app.agent(source, name="count_outcomes")
    async def count_outcomes(stream: faust.StreamT[Any]) -> None:
        async for events in cast(faust.Stream[Any], stream).take_events(live.batch_size, within=live.batch_within_s):
            counts.apply(events)

    totals_changelog = totals.changelog_topic.get_topic_name()

    @app.page(LIVE_PATH)
    async def campaign_live(view: faust.web.View, request: faust.web.Request, campaign_id: str) -> Any:
        try:
            at_ms = _parse_at(request.query.get("at"))
        except ValueError as exc:
            return view.error(400, f"bad 'at': {exc}; give epoch seconds or an ISO-8601 time with a zone")
        if not app.tables.recovery.completed.is_set() or app.in_recovery or app.rebalancing:  # type: ignore[attr-defined]
            return view.json({"error": "the live view is recovering its tables; retry shortly"},
                             status=503, headers={"Retry-After": "1"})
        partition = key_partition(campaign_id, kafka.partitions)
        if not app.assignor.is_active(TP(totals_changelog, partition)):
            owner = next((url for url, topics in app.router.table_metadata(TOTALS_TABLE).items()
                          if partition in topics.get(totals_changelog, ())), None)
            if owner is None or str(owner).rstrip("/") == str(app.conf.canonical_url).rstrip("/"):
                return view.json({"error": f"partition {partition} is not assigned yet; retry shortly"},
                                 status=503, headers={"Retry-After": "1"})
            location = str(owner).rstrip("/") + str(request.rel_url)
            return view.json({"error": f"served by {owner}", "location": location},
                             status=307, headers={"Location": location})
        return view.json(counts.view(campaign_id, at_ms))

    @app.page(STATS_PATH)
    async def live_stats(view: faust.web.View, request: faust.web.Request) -> Any:
        return view.json({"app_id": app_id, "window_s": window_s, **counts.stats.as_dict()})

    return LiveApp(app=app, settings=settings, counts=counts, source_topic=source_name)


def _parse_at(raw: str | None) -> int:
    """``at`` as epoch milliseconds; now if absent."""
    if raw is None or raw == "":
        return time.time_ns() // 1_000_000
    try:
        return int(float(raw) * 1000)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("naive time")
    return (parsed.astimezone(UTC) - EPOCH) // _MILLISECOND


def source_topic_spec(settings: Settings) -> TopicSpec:
    """The spec ``producers.topics`` creates ``campaign.analytics`` with."""
    return next(spec for spec in topic_specs(settings) if spec.name == ANALYTICS)


def topic_specs_of(live: LiveApp) -> list[TopicSpec]:
    """Every topic the live app needs: its source and its tables' changelogs (logical names, unprefixed).

    The changelog specs carry the configs Faust would create them with (its aiokafka driver's
    ``_topic_config``: ``cleanup.policy`` from compacting/deleting, ``retention.ms`` from the window expiry).
    """
    kafka = live.settings.kafka
    specs = [source_topic_spec(live.settings)]
    for table in live.app.tables.values():
        topic = table.changelog_topic
        name = topic.get_topic_name()
        assert name.startswith(kafka.topic_prefix)
        flags = sorted(flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on)
        config = {"cleanup.policy": ",".join(flags)} if flags else {}
        if topic.retention:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        config.update({k: str(v) for k, v in (topic.config or {}).items()})
        specs.append(TopicSpec(name[len(kafka.topic_prefix):], topic.partitions or kafka.partitions, config))
    return specs


def ensure_live_topics(live: LiveApp) -> list[str]:
    """Create the live app's topics that do not exist yet and wait until the broker lists them.

    Faust creates its changelog topics itself, but joins the consumer group right away; on a KRaft broker the
    new topics may not be in the metadata yet, Faust then leaves their partitions unassigned ("Ignoring missing
    topic") and the tables are neither recovered nor served until the next rebalance. Creating them first
    (``producers.topics.ensure_topics`` waits for the metadata) removes that race.
    """
    return ensure_topics(live.settings.kafka, topic_specs_of(live))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.live worker -l info``: Faust's command line for the live app.

    Settings come from the environment (``CAMPAIGNS_*``). Before a ``worker`` starts, the source topic is
    created if missing, and so are the changelog topics (see :func:`ensure_live_topics`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    live = build_app(settings)
    if args[:1] == ["worker"]:
        ensure_live_topics(live)
    sys.argv = [sys.argv[0], *args]  # Faust's click command line reads sys.argv
    live.app.main()


if __name__ == "__main__":
    main()
