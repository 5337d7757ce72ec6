"""``campaign.commands``: the consumer that applies upstream commands (a stage on :mod:`streams.runtime`).

The helpers that build and send commands are in :mod:`producers.commands`.

:class:`CommandConsumer` guarantees:

* **Same rules as the API.** Each command is applied through
  :meth:`CampaignService.execute_command <campaigns.service.CampaignService.execute_command>`: the acting
  principal's permissions, payload validation, template approval and the state machine apply exactly as
  for an API call.
* **Imports too.** ``IMPORT_CUSTOMERS`` / ``IMPORT_SEGMENT`` (rows inline in ``payload_json``, at most
  ``commands.import_max_rows``) go through the same row checks and sink as ``campaigns import``
  (:mod:`sinks.customers`), in one transaction opened by :meth:`CampaignService.run_import
  <campaigns.service.CampaignService.run_import>` with the command-id claim and the ``customers.import`` check:
  all rows or none; a refused import is rejected (``invalid``) with its problems (``docs/import.md``).
* **Exactly once per command id.** The command id is claimed in the same database transaction as the
  change; a repeated id (a redelivery, or an upstream retry) is a no-op.
* **A bad command never stops the partition.** A record that cannot be decoded, or a command that is
  refused (invalid, permission denied, not found, transition not allowed, lost a race three times), is
  published to ``campaign.commands.rejected`` as a ``DeadLetter`` with a machine-readable ``reason``, a
  human-readable ``detail`` and the original bytes, and the consumer moves on.
* **At least once, offsets last.** The stage runtime's order: offsets are committed after the batch's changes
  are committed and its rejections are acknowledged by Kafka. A crash before the commit re-reads the batch:
  applied commands are duplicates (no-ops), and rejections are re-published with the same
  ``dead_letter_id`` (derived from the source partition and offset), so readers can de-duplicate.
* **Infrastructure failures are retried, not rejected.** If PostgreSQL cannot be reached the consumer
  commits what it finished, rewinds to the first unfinished record and raises
  :class:`~campaigns.errors.ServiceUnavailable`; the worker rebuilds the stage with its backoff (the one
  restart policy, :mod:`streams.runtime`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Message, TopicPartition
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from campaigns.codec import Codec, get_codec
from campaigns.core import importing, signing
from campaigns.errors import (
    CampaignError,
    ConcurrentUpdate,
    ImportRejected,
    NotFound,
    PermissionDenied,
    SchemaError,
    ServiceUnavailable,
    TransitionNotAllowed,
    ValidationError,
)
from campaigns.service import IMPORT_COMMAND_TYPES, CommandRequest, CommandResult
from campaigns.settings import Settings
from producers.commands import COMMAND_RECORD, command_group_id, command_request
from producers.dead_letters import DeadLetters
from producers.kafka import KafkaProducer, Publisher
from producers.topics import COMMANDS, COMMANDS_REJECTED
from sinks.customers import import_customers, import_segment
from streams.runtime import ConsumerPort, Offsets, StageRuntime, Unfinished, build_consumer, records, where

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    """Why a command record was refused: ``reason`` is machine-readable, ``detail`` says what to fix."""

    reason: str
    detail: str
    command_id: str | None = None
    campaign_id: str | None = None


class CommandService(Protocol):
    """What the command consumer needs of :class:`~campaigns.service.CampaignService` (the port its unit tests fake)."""

    def command_key(self, key_id: str) -> tuple[str, str] | None: ...

    def execute_command(self, command: CommandRequest) -> CommandResult: ...

    def record_rejected_command(self, command_id: str, reason: str) -> bool: ...

    def run_import(self, actor: str, operation: str, work: Callable[[Any], Any], describe: Callable[[Any], Any], *,
                   command_id: str | None = None) -> tuple[str, Any]: ...


class CommandConsumer:
    """Consumes ``campaign.commands`` and applies each command via the service (see module docstring).

    ``publisher`` publishes the rejections (a :class:`~producers.kafka.KafkaProducer` is built if none is
    given). ``group_id`` defaults to :func:`command_group_id`. Not thread-safe: one thread drives it.
    """

    def __init__(
        self,
        settings: Settings,
        service: CommandService,
        publisher: Publisher | None = None,
        *,
        group_id: str | None = None,
        codec: Codec | None = None,
        batch_size: int = 100,
        conflict_retries: int = 3,
        clock: Callable[[], datetime] | None = None,
        consumer: ConsumerPort | None = None,
        metrics: Any = None,
    ) -> None:
        self._settings = settings
        self._service = service
        self._publisher = publisher if publisher is not None else KafkaProducer(settings.kafka)
        self._codec = codec or get_codec()
        self._conflict_retries = conflict_retries
        self._clock = clock or (lambda: datetime.now(UTC))
        self._keys: dict[str, tuple[float, tuple[str, str] | None]] = {}  # key id -> (read at, key)
        self._rejections = DeadLetters(self._publisher, settings.kafka.topic(COMMANDS_REJECTED),
                                       lambda: self._clock().timestamp(), self._codec)
        self._consumer = consumer or build_consumer(
            settings.kafka, group_id or command_group_id(settings), **{"isolation.level": "read_committed"})
        self.runtime = StageRuntime("command consumer", self._consumer, self._publisher, self, batch_size=batch_size,
                                    poll_timeout_s=1.0, observe=metrics.stage_batch if metrics is not None else None)
        self.runtime.subscribe([settings.kafka.topic(COMMANDS)])
        self.applied = 0
        self.duplicates = 0
        self.rejected = 0

    # --- one batch -------------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> int:
        """Consume one batch (waiting at most ``timeout`` seconds for it) and process it; returns how many
        records it took. Raises ServiceUnavailable (after committing what it finished) if PostgreSQL is down."""
        if timeout is not None:
            self.runtime.poll_timeout_s = timeout
        return self.runtime.run_once()

    def handle(self, messages: list[Message]) -> Offsets | Unfinished:
        """Apply each command or reject it; publish the rejections and, once Kafka has them, record their ids."""
        done: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to commit
        rejections: list[Rejection] = []
        rejected_ids: set[str] = set()
        # Partitions to rewind to their first unfinished record (PostgreSQL was unreachable for it).
        unfinished: dict[tuple[str, int], Message] = {}
        failure: Exception | None = None
        for msg in records(messages, "command consumer"):
            tp = (msg.topic(), msg.partition())
            if tp in unfinished:
                continue  # this partition is rewound to its first unfinished record
            try:
                rejection = self._handle(msg, rejected_ids)
            except ServiceUnavailable as exc:
                unfinished[tp], failure = msg, exc
                continue
            except Exception as exc:  # whatever one record does to the code, it never stops the partition
                log.exception("command at %s broke the consumer; rejecting it", where(msg))
                rejection = Rejection("internal_error", f"{type(exc).__name__} while handling the record")
            if rejection is not None:
                rejections.append(rejection)
                if rejection.command_id:
                    rejected_ids.add(rejection.command_id)
                self._publish_rejection(msg, rejection)
            done[tp] = msg.offset() + 1
        if rejections:
            # A command id is recorded as rejected only once its rejection is on its topic.
            self._publisher.flush(30.0)
            for rejection in rejections:
                if rejection.command_id:
                    self._record_rejection(rejection)
        self.rejected += len(rejections)
        if not unfinished:
            return done
        for msg in unfinished.values():
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        at = ", ".join(where(m) for m in unfinished.values())
        return Unfinished(done, ServiceUnavailable(f"command consumer: will retry from {at}: {failure}"))

    def _handle(self, msg: Message, rejected_in_batch: set[str]) -> Rejection | None:
        """Apply one record; a :class:`Rejection` if it is refused. Raises ServiceUnavailable only.

        ``rejected_in_batch``: command ids rejected earlier in this batch (their rejection is recorded in
        the database only after the batch's rejections are acknowledged); a repeat of one is a no-op.
        """
        raw = msg.value()
        if not raw:
            return Rejection("undecodable", "empty record value (expected an Avro CampaignCommand)")
        # An unauthenticated record carries no command id into the rejection: it must not be able to mark a
        # genuine command's id as rejected (and so block it).
        principal, refused = self._authenticate(msg, raw)
        if refused is not None:
            return Rejection("unauthenticated", refused)
        try:
            record = self._codec.decode(raw, COMMAND_RECORD)
        except SchemaError as exc:
            return Rejection("undecodable", f"not a CampaignCommand: {exc}")
        if record.get("principal") and record["principal"] != principal:
            return Rejection("unauthenticated", f"the record names principal {str(record['principal'])[:64]!r} "
                             f"but is signed with a key of {principal!r}")
        record = {**record, "principal": principal}  # the key's principal acts, never the payload's claim
        command_id = record.get("command_id") or None
        campaign_id = record.get("campaign_id")
        if command_id in rejected_in_batch:
            self.duplicates += 1
            log.info("command %s is a repeat (first rejected); nothing done", command_id)
            return None
        try:
            request = command_request(record)
        except ValidationError as exc:
            return Rejection("invalid", str(exc), command_id, campaign_id)
        for attempt in range(self._conflict_retries + 1):
            try:
                result = self._execute(request)
            except ConcurrentUpdate as exc:
                if attempt < self._conflict_retries:
                    continue  # lost an optimistic-concurrency race: re-read and try again
                return Rejection("concurrent_update", str(exc), command_id, campaign_id)
            except ImportRejected as exc:  # every problem the detail can hold, not only the message's first few
                detail = f"import refused, nothing was imported ({exc.total} problems): " + "; ".join(exc.problems)
                return Rejection("invalid", detail, command_id, campaign_id)
            except CampaignError as exc:
                return Rejection(_reason(exc), str(exc), command_id, campaign_id)
            except (OperationalError, InterfaceError, DisconnectionError, PoolTimeout) as exc:
                raise ServiceUnavailable(f"PostgreSQL unreachable: {type(exc).__name__}") from exc
            except DBAPIError as exc:  # data the database refuses (too long, out of range): the input's fault
                return Rejection(
                    "invalid",
                    f"the database refused the command ({type(exc.orig).__name__}); "
                    "check field lengths and ranges",
                    command_id,
                    campaign_id,
                )
            except Exception as exc:
                log.exception("command %s failed unexpectedly; rejecting it", command_id)
                return Rejection("internal_error", f"{type(exc).__name__}: {exc}", command_id, campaign_id)
            self._count(result)
            return None
        raise AssertionError("unreachable")

    def _execute(self, request: CommandRequest) -> CommandResult:
        """A campaign command through the service; an import through :mod:`sinks.customers` in the service's
        transaction (:meth:`CampaignService.run_import`: permission, command-id claim, audit row, all or nothing)."""
        if request.command_type not in IMPORT_COMMAND_TYPES:
            return self._service.execute_command(request)
        kind = "customers" if request.command_type == "IMPORT_CUSTOMERS" else "segment"
        parsed = importing.parse_import_command(kind, request.payload, self._settings.commands.import_max_rows)
        if isinstance(parsed, list):
            raise ValidationError(parsed)
        log = importing.ProblemLog()

        def work(cur: Any) -> importing.ImportCounts:
            if parsed.kind == "customers":
                return import_customers(cur, importing.command_customer_rows(parsed, log), log)
            assert parsed.segment is not None
            return import_segment(cur, parsed.segment, importing.command_segment_members(parsed, log), log,
                                  replace=parsed.replace)

        outcome, _counts = self._service.run_import(request.principal, f"import_{kind}", work,
                                                    lambda counts: counts.as_dict(), command_id=request.command_id)
        return CommandResult(request.command_id, outcome)

    def _authenticate(self, msg: Message, raw: bytes) -> tuple[str, str | None]:
        """(the principal of the key the record is signed with, None) or ("", why it is refused)."""
        signed = signing.claimed(msg.headers())
        if signed is None:
            return "", ("unsigned: a command needs the headers x-campaigns-key-id, x-campaigns-timestamp and "
                        "x-campaigns-signature (docs/security.md)")
        key = self._key(signed.key_id)
        if key is None:
            return "", f"unknown or revoked command key {signed.key_id[:40]!r}"
        principal, secret = key
        window_ms = int(self._settings.commands.signature_window_s * 1000)
        why = signing.verify(secret, signed, msg.key(), raw, now_ms=int(self._clock().timestamp() * 1000),
                             window_ms=window_ms)
        if why == "stale":
            return "", (f"signed at {signed.timestamp_ms} ms, outside the {window_ms // 1000} s window: a replay, or "
                        "a producer whose clock is off")
        if why is not None:
            return "", "the signature does not match the record (wrong secret, or the record was altered)"
        return principal, None

    def _key(self, key_id: str) -> tuple[str, str] | None:
        """(principal, secret) of a live key, cached ``commands.key_cache_s`` (misses too)."""
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and now - cached[0] < self._settings.commands.key_cache_s:
            return cached[1]
        try:
            found = self._service.command_key(key_id)
        except (OperationalError, InterfaceError, DisconnectionError, PoolTimeout) as exc:
            raise ServiceUnavailable(f"PostgreSQL unreachable: {type(exc).__name__}") from exc
        if len(self._keys) > 10_000:  # bogus key ids cannot grow the cache without bound
            self._keys.clear()
        self._keys[key_id] = (now, found)
        return found

    def _count(self, result: CommandResult) -> None:
        if result.outcome == "duplicate":
            self.duplicates += 1
            log.info(
                "command %s is a repeat (first %s); nothing done", result.command_id, result.previous_outcome
            )
        elif result.campaign_id is None:  # an import
            self.applied += 1
            log.info("command %s applied", result.command_id)
        else:
            self.applied += 1
            log.info(
                "command %s applied to campaign %s (version %s)",
                result.command_id,
                result.campaign_id,
                result.version,
            )

    def _publish_rejection(self, msg: Message, rejection: Rejection) -> None:
        log.warning("command rejected (%s) at %s: %s", rejection.reason, where(msg), rejection.detail)
        self._rejections.write(
            msg, rejection.reason, rejection.detail,
            message_id=rejection.command_id,  # a command's message id is its command id
            campaign_id=rejection.campaign_id,
            key=msg.key() or (rejection.command_id.encode() if rejection.command_id else None),
        )

    def _record_rejection(self, rejection: Rejection) -> None:
        assert rejection.command_id is not None
        try:
            self._service.record_rejected_command(
                rejection.command_id, f"{rejection.reason}: {rejection.detail}"
            )
        except (OperationalError, InterfaceError, DisconnectionError, PoolTimeout) as exc:
            raise ServiceUnavailable(f"PostgreSQL unreachable: {type(exc).__name__}") from exc

    # --- loop ------------------------------------------------------------------------------------

    def run_forever(self, stop_event: threading.Event) -> None:
        """Process commands until ``stop_event`` is set; never stops on a bad command. On every exit the consumer
        leaves the group (its partitions move at once) and queued rejections are delivered; an exception (PostgreSQL
        or Kafka down) then propagates and the worker rebuilds the stage with its backoff."""
        self.runtime.run_forever(stop_event)

    def close(self) -> None:
        """Leave the group (so partitions move at once) and deliver queued rejections. Idempotent."""
        self.runtime.close()

    def release(self) -> None:
        self._publisher.close()


def _reason(error: CampaignError) -> str:
    if isinstance(error, ValidationError):
        return "invalid"
    if isinstance(error, PermissionDenied):
        return "permission_denied"
    if isinstance(error, NotFound):
        return "not_found"
    if isinstance(error, TransitionNotAllowed):
        return "transition_not_allowed"
    return type(error).__name__
