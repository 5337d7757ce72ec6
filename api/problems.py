"""RFC 9457 problem details, with the exit codes the CLI maps the same errors to.

Every error answer is ``application/problem+json``: ``type`` (a URI reference, ``/problems/<code>``), ``title``,
``status``, ``detail``, ``instance`` (the request path), and two extension members: ``code`` (the same slug as in
``type``) and ``exit_code`` (what ``campaigns`` exits with for the same error: 2 invalid input, 3 permission
denied, 4 not found or transition not allowed, 5 a service unreachable; absent for errors the CLI has no
equivalent of, such as rate limits). Validation problems carry ``errors``: every problem found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from campaigns.errors import (
    AccessRefused,
    CampaignError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TransitionNotAllowed,
    ValidationError,
)

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class ProblemKind:
    code: str
    status: int
    title: str
    exit_code: int | None


MALFORMED = ProblemKind("malformed-request", 400, "The request body is not well-formed JSON", 2)
UNAUTHENTICATED = ProblemKind("unauthenticated", 401, "No valid API token", 3)
PERMISSION_DENIED = ProblemKind("permission-denied", 403, "Permission denied", 3)
NOT_FOUND = ProblemKind("not-found", 404, "Not found", 4)
METHOD_NOT_ALLOWED = ProblemKind("method-not-allowed", 405, "Method not allowed", 2)
TRANSITION = ProblemKind("transition-not-allowed", 409, "Transition not allowed", 4)
IDEMPOTENCY_IN_PROGRESS = ProblemKind("idempotency-key-in-progress", 409,
                                      "A request with this Idempotency-Key is still in progress", None)
TOO_LARGE = ProblemKind("request-too-large", 413, "Request body too large", 2)
UNSUPPORTED_MEDIA = ProblemKind("unsupported-media-type", 415, "Request body must be application/json", 2)
INVALID = ProblemKind("invalid-input", 422, "Invalid input", 2)
IDEMPOTENCY_REUSED = ProblemKind("idempotency-key-reused", 422,
                                 "This Idempotency-Key was used with a different request", 2)
RATE_LIMITED = ProblemKind("rate-limited", 429, "Too many requests", None)
INTERNAL = ProblemKind("internal-error", 500, "Internal error", 1)
UNAVAILABLE = ProblemKind("service-unavailable", 503, "A service (PostgreSQL or Kafka) is unavailable", 5)

KINDS = (MALFORMED, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, METHOD_NOT_ALLOWED, TRANSITION,
         IDEMPOTENCY_IN_PROGRESS, TOO_LARGE, UNSUPPORTED_MEDIA, INVALID, IDEMPOTENCY_REUSED, RATE_LIMITED,
         INTERNAL, UNAVAILABLE)


@dataclass
class Problem(Exception):
    kind: ProblemKind
    detail: str
    errors: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"/problems/{self.kind.code}", "title": self.kind.title,
                                "status": self.kind.status, "detail": self.detail, "code": self.kind.code}
        if instance:
            body["instance"] = instance
        if self.kind.exit_code is not None:
            body["exit_code"] = self.kind.exit_code
        if self.errors:
            body["errors"] = self.errors
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), status_code=self.kind.status, media_type=PROBLEM_JSON,
                            headers=self.headers or None)


def problem_for(error: CampaignError) -> Problem:
    """The problem a service error becomes (the CLI's ``exit_code_for``, as HTTP)."""
    if isinstance(error, ValidationError):
        return Problem(INVALID, str(error), errors=list(error.problems))
    if isinstance(error, AccessRefused):
        return Problem(UNAUTHENTICATED, str(error), headers={"WWW-Authenticate": 'Bearer realm="campaigns"'})
    if isinstance(error, PermissionDenied):
        return Problem(PERMISSION_DENIED, str(error))
    if isinstance(error, NotFound):
        return Problem(NOT_FOUND, str(error))
    if isinstance(error, TransitionNotAllowed):
        return Problem(TRANSITION, str(error))
    if isinstance(error, ServiceUnavailable):
        return Problem(UNAVAILABLE, str(error))
    return Problem(INTERNAL, str(error))


def problem_schema() -> dict[str, Any]:
    """The OpenAPI schema of a problem details object."""
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "string", "enum": [k.code for k in KINDS]},
            "exit_code": {"type": "integer", "description": "what `campaigns` exits with for the same error"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    }
