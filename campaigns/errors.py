"""The project's one error hierarchy.

Every error the project raises on purpose derives from :class:`CampaignError`, so callers (the CLI, the
command consumer, the agents) can tell "our" failures from bugs. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class CampaignError(Exception):
    """Root of every error raised on purpose by this project."""


class ValidationError(CampaignError):
    """Input that breaks a rule: a bad payload, template variables missing, an oversized field.

    ``problems`` lists every problem found (``"field: what is wrong"``), not only the first.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid input: " + "; ".join(self.problems))


class ImportRejected(ValidationError):
    """An audience import refused as a whole (nothing was imported): ``problems`` holds the first problems found
    (``"line N: column: what"``), ``total`` how many there were in all."""

    SHOWN = 5  # problems in the message itself; the CLI prints more from ``problems``

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = list(problems)
        self.total = total
        shown = "; ".join(self.problems[: self.SHOWN])
        more = f"; ... ({total} problems in all)" if total > min(len(self.problems), self.SHOWN) else ""
        CampaignError.__init__(self, f"import refused, nothing was imported: {shown}{more}")


class PermissionDenied(CampaignError):
    """The acting principal is unknown or lacks the permission the operation needs."""

    def __init__(self, principal: str, permission: str, reason: str | None = None) -> None:
        self.principal = principal
        self.permission = permission
        detail = reason or f"principal {principal!r} lacks permission {permission!r}"
        super().__init__(f"{detail}; grant a role that has {permission!r} (campaigns principal add ...)")


class AccessRefused(PermissionDenied):
    """Refused before any permission is looked at: no API token, an invalid, expired or revoked one, a token of
    another principal than ``--as`` names, or a bootstrap on a database that already has principals. The
    message is complete (it says what to do); exit code 3 like every :class:`PermissionDenied`."""

    def __init__(self, message: str, principal: str = "(unauthenticated)") -> None:
        self.principal = principal
        self.permission = ""
        CampaignError.__init__(self, message)


class NotFound(CampaignError):
    """A campaign, template, channel, segment or principal that does not exist."""


class TransitionNotAllowed(CampaignError):
    """A campaign state change the state machine refuses (e.g. resuming a completed campaign)."""


class ConcurrentUpdate(TransitionNotAllowed):
    """Another writer changed the campaign first (optimistic concurrency lost); re-read and retry."""


class SchemaError(CampaignError):
    """Bytes that cannot be encoded or decoded with the project's Avro schemas."""


class DeliveryError(CampaignError):
    """A provider call that did not deliver."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: timeouts, 5xx, connection errors. ``retry_after`` in seconds if the provider said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class ThrottledError(TransientDeliveryError):
    """The provider throttled us (HTTP 429, WhatsApp 130429): retry, and slow down."""


class PermanentDeliveryError(DeliveryError):
    """Will never succeed as is: invalid address, rejected content, 4xx other than throttling."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ProviderAccountError(PermanentDeliveryError):
    """The provider refused our account, not the recipient (bad credential, account without permission):
    every call on the channel would fail alike, so the channel pauses instead of failing recipients."""


class SinkError(CampaignError):
    """A batch could not be written to PostgreSQL or Kafka; the batch is retried as a whole."""


class DeliveryFailed(SinkError):
    """Kafka did not acknowledge records a stage produced (failed, or still queued at the flush timeout):
    the work they stand for must not be committed; it is redone, and consumers de-duplicate by id."""


class ServiceUnavailable(CampaignError):
    """Kafka or PostgreSQL cannot be reached (after the bounded wait)."""
